//! `lb-bench`: lbctl's socket LB side by side with kube-proxy-shaped iptables and nftables
//! datapaths, and lbctl's control plane at scale. A report, not a pass/fail test.
//!
//! Modules: [`services`] (the synthetic cluster), [`rules`] (kube-proxy-shaped rule text),
//! [`netns`] (namespaces and the veth topology), [`client`] (the measuring child process),
//! [`arms`] + [`datapath`] (part 1, with [`kernel_time`]: the programs' BPF time per connection,
//! and [`monitor`]: what `lbctl monitor` costs), [`control`] (part 2),
//! [`churn`] (part 3: endpoint churn through the Kubernetes source), [`report`] + [`svg`] (output),
//! [`cleanup`] + [`scratch`] (nothing outlives the run, also on Ctrl-C).
pub mod arms;
pub mod churn;
pub mod cleanup;
pub mod client;
pub mod control;
pub mod datapath;
pub mod floor;
pub mod kernel_time;
pub mod machine;
pub mod monitor;
pub mod netns;
pub mod report;
pub mod rules;
pub mod scratch;
pub mod services;
pub mod stats;
pub mod svg;

use std::{fs, path::PathBuf, time::Instant};

use anyhow::{Context, Result, bail};

use self::{
    arms::{ALL_ARMS, Arm},
    churn::ChurnOptions,
    control::ControlOptions,
    datapath::DatapathOptions,
    machine::Machine,
    report::{Results, Table},
};

/// What to run; `None` fields take the defaults of a full (or `--quick`) run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub quick: bool,
    pub rounds: Option<usize>,
    pub arms: Option<Vec<Arm>>,
    pub counts: Option<Vec<usize>>,
    pub endpoints: Option<usize>,
    pub connects: Option<usize>,
    /// The CPU the clients are pinned to (`None`: the last CPU this process may use).
    pub cpu: Option<usize>,
    /// Do not pin the clients.
    pub no_pin: bool,
    /// Seed of the per-round orders (`None`: from the clock; the report states it).
    pub seed: Option<u64>,
    pub skip_datapath: bool,
    pub skip_control_plane: bool,
    pub skip_churn: bool,
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

impl Options {
    fn datapath(&self) -> Result<DatapathOptions> {
        let q = self.quick;
        let cpu = if self.no_pin {
            None
        } else {
            match self.cpu {
                Some(c) => Some(c),
                None => Some(client::default_cpu()?),
            }
        };
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        Ok(DatapathOptions {
            counts: self.counts.clone().unwrap_or_else(|| {
                if q {
                    vec![1, 1000]
                } else {
                    vec![1, 1000, 10_000, 30_000]
                }
            }),
            endpoints: self.endpoints.unwrap_or(3),
            rounds: self.rounds.unwrap_or(if q { 6 } else { 40 }),
            connects: self.connects.unwrap_or(if q { 200 } else { 1000 }),
            warmup: if q { 20 } else { 100 },
            rr_count: if q { 300 } else { 2000 },
            rr_size: 64,
            cpu,
            seed,
        })
    }

    fn control(&self) -> ControlOptions {
        if self.quick {
            ControlOptions {
                services: vec![1000, 3000],
                endpoints: 10,
                changes: 30,
                tool_services: 1000,
                agent_runs: 2,
            }
        } else {
            ControlOptions {
                services: vec![10_000, 30_000],
                endpoints: 10,
                changes: 150,
                tool_services: 10_000,
                agent_runs: 5,
            }
        }
    }
}

impl Options {
    fn churn(&self) -> ChurnOptions {
        if self.quick {
            ChurnOptions {
                services: 3000,
                endpoints: 10,
                single_changes: 30,
                rates: vec![50, 200, 1000],
                window_s: 3.0,
                keep_log: Some(self.out.join("churn-agent.log")),
            }
        } else {
            ChurnOptions {
                services: 30_000,
                endpoints: 10,
                single_changes: 200,
                rates: vec![50, 100, 200, 500, 1000, 2000, 5000],
                window_s: 10.0,
                keep_log: Some(self.out.join("churn-agent.log")),
            }
        }
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

pub fn run(opts: &Options) -> Result<()> {
    if !is_root() {
        bail!("lb-bench creates network namespaces, cgroups and BPF programs: run it as root");
    }
    let datapath_opts = opts.datapath()?;
    if datapath_opts.counts.contains(&0)
        || datapath_opts.endpoints == 0
        || datapath_opts.rounds == 0
        || datapath_opts.connects == 0
    {
        bail!("--counts, --endpoints, --rounds and --connects must be at least 1");
    }
    if let Some(cpu) = datapath_opts.cpu
        && !client::allowed_cpus()?.contains(&cpu)
    {
        bail!("--cpu {cpu}: this process may not run on CPU {cpu}");
    }
    let most = datapath_opts.counts.iter().copied().max().unwrap_or(1);
    if most.saturating_mul(datapath_opts.endpoints) > 7_000_000 || datapath_opts.endpoints > 250 {
        bail!(
            "services x endpoints must stay under 7,000,000 and endpoints under 250 (room in the address plan)"
        );
    }
    cleanup::install_signal_handler()?;
    let started = Instant::now();
    let machine = Machine::probe();
    eprintln!(
        "lb-bench: {} cores, {}, kernel {}, load average {}",
        machine.nproc, machine.cpu_model, machine.kernel, machine.loadavg_at_start
    );
    // The latency slots measure the programs as a node runs them, with the BPF statistics off;
    // the kernel-time slots switch them on around themselves only (`BPF_ENABLE_STATS`: off again
    // when the slot ends, or when this process exits, however it exits). The sysctl is the
    // machine's: say so when it keeps them on.
    let sysctl = kernel_time::sysctl_value();
    if sysctl != "0" {
        eprintln!(
            "lb-bench: kernel.bpf_stats_enabled is {sysctl}: every program run pays the \
             statistics' clock reads, in the latency slots too"
        );
    }

    let mut arms = Vec::new();
    let mut skipped = Vec::new();
    for arm in opts.arms.clone().unwrap_or_else(|| ALL_ARMS.to_vec()) {
        match arm.available() {
            Ok(()) => arms.push(arm),
            Err(e) => {
                eprintln!("lb-bench: skipping the {arm} arm: {e:#}");
                skipped.push((arm, format!("{e:#}")));
            }
        }
    }
    let estimate = estimate_seconds(
        &datapath_opts,
        &arms,
        (!opts.skip_datapath, !opts.skip_control_plane),
        opts.quick,
    );
    eprintln!(
        "lb-bench: estimated duration {:.0} min {:02.0} s on a quiet 2-core VM (seed {}, clients {})",
        (estimate / 60.0).floor(),
        estimate % 60.0,
        datapath_opts.seed,
        datapath_opts
            .cpu
            .map_or("not pinned".into(), |c| format!("pinned to CPU {c}"))
    );
    let mut tables: Vec<Table> = Vec::new();

    let datapath = if opts.skip_datapath {
        None
    } else {
        let (results, t) = datapath::run(&datapath_opts, &arms)?;
        tables.extend(t);
        Some(results)
    };
    let control = if opts.skip_control_plane {
        None
    } else {
        let tool_arms: Vec<Arm> = arms
            .iter()
            .copied()
            .filter(|a| matches!(a, Arm::IptablesNft | Arm::IptablesLegacy | Arm::Nftables))
            .collect();
        let (results, t) = control::run(&opts.control(), &tool_arms)?;
        tables.extend(t);
        Some(results)
    };

    let churn = if opts.skip_churn {
        None
    } else {
        let (results, t) = churn::run(&opts.churn())?;
        tables.extend(t);
        Some(results)
    };

    let mut targets = report::targets(datapath.as_ref(), control.as_ref());
    targets.extend(churn.as_ref().map(churn::targets).unwrap_or_default());
    let table = report::targets_table(&targets);
    println!("{table}");
    tables.push(table);

    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    if let Some(d) = &datapath {
        let series: Vec<svg::Series> = d
            .arms
            .iter()
            .map(|&arm| svg::Series {
                name: arm.to_string(),
                points: d
                    .points
                    .iter()
                    .filter(|p| p.arm == arm)
                    .map(|p| (p.services as f64, p.connect.p50_us))
                    .collect(),
            })
            .collect();
        let chart = svg::line_chart(
            "connect() p50 latency vs services installed",
            "connect p50 (µs)",
            &series,
        );
        let path = opts.out.join("connect-latency.svg");
        fs::write(&path, chart).with_context(|| format!("writing {}", path.display()))?;
    }
    let results = Results {
        loadavg_at_end: machine::loadavg(),
        bpf_stats_sysctl: kernel_time::sysctl_value(),
        machine,
        command: opts.command.clone(),
        duration_s: started.elapsed().as_secs_f64(),
        datapath,
        control_plane: control,
        churn,
        targets,
        skipped_arms: skipped,
    };
    report::write(&opts.out, &results, &tables)?;
    eprintln!(
        "lb-bench: load average {} at the start, {} at the end",
        results.machine.loadavg_at_start, results.loadavg_at_end
    );
    eprintln!(
        "\nlb-bench: done in {:.0} s; results in {}/ (results.json, summary.md, connect-latency.svg)",
        results.duration_s,
        opts.out.display()
    );
    Ok(())
}

/// Rough duration of a run on this 2-core VM, from earlier runs: connect cycles (connect +
/// accept + close) of each arm as the rules grow, rule loading, and the control plane.
fn estimate_seconds(
    d: &DatapathOptions,
    arms: &[Arm],
    (datapath, control): (bool, bool),
    quick: bool,
) -> f64 {
    let mut s = 5.0;
    if datapath {
        let per_slot = (d.rounds * (d.connects + d.warmup)) as f64;
        for &n in &d.counts {
            let n = n as f64;
            for &arm in arms {
                // Seconds per connect cycle, and to load n services.
                let (cycle, load) = match arm {
                    Arm::Direct => (30e-6, 0.0),
                    Arm::Lbctl => (30e-6, 20e-6 * n),
                    Arm::IptablesNft => (35e-6 + 11e-9 * n, 0.6e-3 * n),
                    Arm::IptablesLegacy => (35e-6 + 22e-9 * n, 0.5e-3 * n),
                    Arm::Nftables => (40e-6, 0.125e-3 * n + 9.55e-8 * n * n),
                };
                // lbctl: its two latency slots and its two kernel-time slots.
                let slots = match arm {
                    Arm::Direct => 1.0,
                    Arm::Lbctl => 4.0,
                    _ => 2.0,
                };
                // + namespaces, client start, the per-round statistics reads.
                s += slots * per_slot * cycle + load + 1.0 + slots * d.rounds as f64 * 0.01;
            }
        }
        // Monitoring cost (its 0.3 s waits) and request/response.
        s += d.rounds.min(10) as f64 * 0.7 + d.rounds as f64 * arms.len() as f64 * 0.01;
    }
    if control {
        // The writer at each scale, 5 (2) runs of the whole agent per scale, iptables and nft.
        s += if quick { 25.0 } else { 280.0 };
    }
    s
}

/// `lbctl agent ARGS` with the allocator settings of the install's DaemonSet
/// ([`crate::podman::install_allocator_env`]): the agent's memory and times as deployed.
fn start_as_deployed<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<crate::agent::AgentProcess> {
    let env = crate::podman::install_allocator_env()?;
    let env: Vec<(&str, &std::ffi::OsStr)> = env
        .iter()
        .map(|(name, value)| (name.as_str(), std::ffi::OsStr::new(value)))
        .collect();
    crate::agent::AgentProcess::start_with_env(args, &env)
}
