//! `lb-bench`: lbctl's socket LB side by side with kube-proxy-shaped iptables and nftables
//! datapaths, and lbctl's control plane at scale. A report, not a pass/fail test.
//!
//! Modules: [`services`] (the synthetic cluster), [`rules`] (kube-proxy-shaped rule text),
//! [`netns`] (namespaces and the veth topology), [`client`] (the measuring child process),
//! [`arms`] + [`datapath`] (part 1, with [`monitor`]: what `lbctl monitor` costs), [`control`] (part 2),
//! [`churn`] (part 3: endpoint churn through the Kubernetes source), [`report`] + [`svg`] (output),
//! [`cleanup`] + [`scratch`] (nothing outlives the run, also on Ctrl-C).
pub mod arms;
pub mod churn;
pub mod cleanup;
pub mod client;
pub mod control;
pub mod datapath;
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
    pub reps: Option<usize>,
    pub arms: Option<Vec<Arm>>,
    pub counts: Option<Vec<usize>>,
    pub endpoints: Option<usize>,
    pub connects: Option<usize>,
    pub skip_datapath: bool,
    pub skip_control_plane: bool,
    pub skip_churn: bool,
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

impl Options {
    fn datapath(&self) -> DatapathOptions {
        let q = self.quick;
        DatapathOptions {
            counts: self.counts.clone().unwrap_or_else(|| {
                if q {
                    vec![1, 1000]
                } else {
                    vec![1, 1000, 10_000, 30_000]
                }
            }),
            endpoints: self.endpoints.unwrap_or(3),
            reps: self.reps.unwrap_or(if q { 2 } else { 5 }),
            connects: self.connects.unwrap_or(if q { 500 } else { 5000 }),
            warmup: if q { 50 } else { 500 },
            rr_count: if q { 1000 } else { 10_000 },
            rr_size: 64,
        }
    }

    fn control(&self) -> ControlOptions {
        if self.quick {
            ControlOptions {
                services: vec![1000, 3000],
                endpoints: 10,
                changes: 30,
                tool_services: 1000,
            }
        } else {
            ControlOptions {
                services: vec![10_000, 30_000],
                endpoints: 10,
                changes: 150,
                tool_services: 10_000,
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
    let datapath_opts = opts.datapath();
    if datapath_opts.counts.contains(&0) || datapath_opts.endpoints == 0 || datapath_opts.reps == 0
    {
        bail!("--counts, --endpoints and --reps must be at least 1");
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
        "\nlb-bench: done in {:.0} s; results in {}/ (results.json, summary.md, connect-latency.svg)",
        results.duration_s,
        opts.out.display()
    );
    Ok(())
}
