//! Part 1: connect latency, connections/s, the non-service tax and request/response round
//! trips of every arm, and the kernel time of lbctl's programs per connection.
//!
//! This VM's per-repetition latencies are bimodal (a whole repetition lands in a fast or a slow
//! mode, e.g. 6.4 against 10.2 µs), so a median of a few long repetitions per arm does not
//! resolve a few percent. Instead: many short rounds; in each round every measurement slot
//! (arm x destination) runs once, in an order shuffled per round (seeded, reproducible); every
//! client's measuring thread is pinned to the same CPU; and a comparison is the per-round
//! ratio of two slots of the same round, reported as the median of those ratios with its
//! interquartile range and a bootstrap 95% interval. A target is met or missed only when the
//! whole interval is on one side of it; otherwise this run did not resolve it.
//!
//! The latency slots run as a node runs: with the kernel's BPF run-time statistics off, which
//! cost every program run two clock reads. The lbctl arm has two more slots per round, its
//! **kernel-time slots**, the same connects with statistics switched on around them only; the run
//! time and run count of every program the lbctl arm attached are read before and after each
//! ([`kernel_time`]): BPF time per connection, per program and in total, for connects to a
//! service and connects to an address that is no service. Their latency, paired with the lbctl
//! slot's, is what the statistics themselves cost a connect.
use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context, Result};
use lbctl::datapath::Counters;
use serde::Serialize;

use super::{
    arms::{self, Arm, Programmed},
    client::{ClientProc, Request, Sample},
    floor::{self, EmptyPrograms},
    kernel_time::{self, Attached, KernelTime},
    monitor::MonitorFigure,
    netns::Topology,
    report::{Table, fmt_ms, fmt_rate, fmt_us},
    scratch::{self, BenchDatapath},
    services::{ServiceSet, TARGET_PORT},
    stats::{Aggregate, Ratio, Rng, Summary},
};

#[derive(Clone, Debug, Serialize)]
pub struct DatapathOptions {
    pub counts: Vec<usize>,
    pub endpoints: usize,
    /// Interleaved rounds per service count.
    pub rounds: usize,
    /// Measured connects per slot and round.
    pub connects: usize,
    /// Unmeasured connects before them.
    pub warmup: usize,
    /// Round trips per arm and round (request/response).
    pub rr_count: usize,
    pub rr_size: usize,
    /// The CPU every client's measuring thread is pinned to (`None`: not pinned).
    pub cpu: Option<usize>,
    /// Seed of the per-round orders.
    pub seed: u64,
}

/// Where a slot's connects go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dest {
    /// The measured service's ClusterIP (direct: one of its backends, chosen at random).
    Service,
    /// The measured service's backends directly, chosen at random as direct does: an address
    /// that is no service, through the arm's datapath (lbctl: from its cgroup).
    NonService,
}

impl Dest {
    fn label(self) -> &'static str {
        match self {
            Dest::Service => "service",
            Dest::NonService => "no service",
        }
    }
}

/// One arm at one service count.
#[derive(Debug, Serialize)]
pub struct Point {
    pub arm: Arm,
    pub services: usize,
    /// Time to load the rules of this many services (lbctl: `Datapath::apply` from empty).
    pub program_ms: Option<f64>,
    /// Connects to the service; `reps` in round order.
    pub connect: Aggregate,
    /// p50 / direct's p50, paired round by round (`None` for direct).
    pub vs_direct: Option<Ratio>,
    /// Backend address -> connects that landed there (all rounds).
    pub reached: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct ArmFigure {
    pub arm: Arm,
    pub services: usize,
    pub latency: Aggregate,
    /// p50 / direct's p50 in the same rounds (`None` for direct).
    pub vs_direct: Option<Ratio>,
}

/// The kernel time of lbctl's programs at one service count.
#[derive(Debug, Serialize)]
pub struct KernelFigure {
    pub services: usize,
    /// The latency of the kernel-time slot's connects to the service (statistics on).
    pub service_latency: Aggregate,
    /// Its p50 over the lbctl slot's (statistics off), paired per round: what the statistics
    /// cost a connect.
    pub vs_statistics_off: Option<Ratio>,
    /// Its p50 over direct's, paired per round (comparable with runs before the statistics
    /// were confined to these slots).
    pub vs_direct: Option<Ratio>,
    /// The programs attached in the lbctl arm (pinned link name, program id).
    pub programs: Vec<Attached>,
    /// Connects to the measured service: connect + accept + close, client and accepted
    /// socket both in the lbctl cgroup.
    pub service: KernelTime,
    /// Connects to a backend directly from the lbctl cgroup.
    pub non_service: KernelTime,
}

#[derive(Debug, Serialize)]
pub struct DatapathResults {
    pub options: DatapathOptions,
    pub arms: Vec<Arm>,
    pub points: Vec<Point>,
    /// Connects to an address that is no service, at every count (direct: its service slot,
    /// which connects to the same backends).
    pub non_service: Vec<ArmFigure>,
    /// Round trips on one established connection to the measured service.
    pub request_response: Vec<ArmFigure>,
    /// lbctl's programs' run time per connection, at every count.
    pub kernel: Vec<KernelFigure>,
    /// lbctl's kernel counters at the end (rewritten / passed prove the arm went through it).
    pub lbctl_counters: Option<Counters>,
    /// lbctl's connects and `lb_connect4` run time without and with a monitor (smallest count).
    pub monitoring: Option<MonitorFigure>,
    /// The statistics' floor: the lbctl arm's non-service connects from a cgroup whose only
    /// programs are empty ones on the hooks lbctl's run on per TCP connection ([`floor`],
    /// smallest count).
    pub floor: Option<KernelTime>,
}

/// An arm's client, and its namespaces with the rules loaded. The client is declared first so it
/// exits before its namespaces are removed (a direct client in lbctl's namespaces may outlive
/// them by a moment, which `ip netns del` allows: a namespace goes with its last process).
struct Live {
    client: ClientProc,
    programmed: Programmed,
}

/// One measurement slot: a client (index into the live arms) and what it is asked.
struct Slot {
    live: usize,
    dest: Dest,
    request: Request,
    /// A kernel-time slot: BPF statistics on around it, the programs' run time read before and
    /// after (lbctl only). Its latencies are not the arm's.
    kernel_time: bool,
}

/// What one slot measured over all rounds.
#[derive(Default)]
struct SlotResult {
    /// One summary per round, in round order.
    summaries: Vec<Summary>,
    reached: BTreeMap<String, usize>,
    /// Kernel-time slots: the programs' run time.
    kernel: KernelTime,
}

/// Runs every slot once per round, in the order [`round_order`] draws. Around every kernel-time
/// slot, switches the BPF statistics on and snapshots the run time of `programs`.
fn measure_rounds(
    live: &mut [Live],
    slots: &[Slot],
    rounds: usize,
    rng: &mut Rng,
    programs: Option<&[Attached]>,
) -> Result<Vec<SlotResult>> {
    let mut out: Vec<SlotResult> = slots.iter().map(|_| SlotResult::default()).collect();
    let arms: Vec<Arm> = slots.iter().map(|s| live[s.live].programmed.arm).collect();
    for _ in 0..rounds {
        for i in round_order(&arms, rng) {
            let slot = &slots[i];
            let l = &mut live[slot.live];
            let programs = programs.filter(|_| slot.kernel_time);
            let statistics = programs.map(|_| kernel_time::enable()).transpose()?;
            let before = programs.map(kernel_time::snapshot).transpose()?;
            let Sample {
                latencies_ns,
                elapsed_ns,
                reached,
            } = l.client.request(&slot.request).with_context(|| {
                format!(
                    "arm {} ({}, {:?})",
                    l.programmed.arm,
                    slot.dest.label(),
                    slot.request
                )
            })?;
            if let (Some(programs), Some(before)) = (programs, before) {
                let after = kernel_time::snapshot(programs)?;
                let connections = match &slot.request {
                    Request::Connect { count, warmup, .. } => (count + warmup) as u64,
                    Request::Rr { .. } => 1,
                };
                out[i].kernel.add(&before, &after, connections);
            }
            drop(statistics);
            out[i]
                .summaries
                .push(Summary::from_ns(&latencies_ns, elapsed_ns));
            for (addr, n) in reached {
                *out[i].reached.entry(addr).or_insert(0) += n;
            }
        }
    }
    Ok(out)
}

/// The order of one round's slots (given by arm). Shuffled, except that the slots of direct
/// and lbctl, which the tightest targets compare, stay one block (shuffled inside, placed at a
/// random position among the others): at high service counts one slot of a NAT arm takes
/// seconds, and a pair of slots far apart in time is a weaker pair.
fn round_order(arms: &[Arm], rng: &mut Rng) -> Vec<usize> {
    let tight = |a: Arm| matches!(a, Arm::Direct | Arm::Lbctl);
    let mut block: Vec<usize> = (0..arms.len()).filter(|&i| tight(arms[i])).collect();
    let mut order: Vec<usize> = (0..arms.len()).filter(|&i| !tight(arms[i])).collect();
    rng.shuffle(&mut block);
    rng.shuffle(&mut order);
    let at = rng.below(order.len() + 1);
    order.splice(at..at, block);
    order
}

fn p50s(summaries: &[Summary]) -> Vec<f64> {
    summaries.iter().map(|s| s.p50_us).collect()
}

/// A row's paired ratio cell: `-` for the baseline itself.
fn ratio_cell(r: Option<&Ratio>) -> String {
    r.map_or("-".into(), Ratio::short)
}

fn latency_row(
    label: Vec<String>,
    g: &Aggregate,
    rate: bool,
    ratio: Option<&Ratio>,
) -> Vec<String> {
    let mut row = label;
    row.extend([
        fmt_us(g.p50_us),
        fmt_us(g.p99_us),
        format!("{}..{}", fmt_us(g.p50_q1_us), fmt_us(g.p50_q3_us)),
    ]);
    if rate {
        row.push(fmt_rate(g.per_sec));
    }
    row.push(ratio_cell(ratio));
    row
}

const RATIO_HEADER: &str = "p50 / direct, paired per round: median [95% CI]";

fn kernel_table(count: usize, k: &KernelFigure) -> Table {
    let mut t = Table::new(
        &format!(
            "BPF time per connection, lbctl's programs, {count} service{} (kernel statistics; connect + accept + close)",
            if count == 1 { "" } else { "s" }
        ),
        &[
            "program",
            "service: runs/conn",
            "ns/run",
            "ns/conn",
            "no service: runs/conn",
            "ns/run",
            "ns/conn",
        ],
    );
    let names: std::collections::BTreeSet<&String> = k
        .service
        .programs
        .keys()
        .chain(k.non_service.programs.keys())
        .collect();
    let cells = |kt: &KernelTime, name: &String| -> [String; 3] {
        match kt.programs.get(name) {
            Some(p) if p.runs > 0 => [
                format!("{:.2}", kt.runs_per_connection(p)),
                format!("{:.0}", p.ns_per_run()),
                format!("{:.1}", kt.program_ns_per_connection(p)),
            ],
            _ => ["0".into(), "-".into(), "0".into()],
        }
    };
    let mut idle = Vec::new();
    for name in names {
        let ran = |kt: &KernelTime| kt.programs.get(name).is_some_and(|p| p.runs > 0);
        if !ran(&k.service) && !ran(&k.non_service) {
            idle.push(name.as_str());
            continue;
        }
        let mut row = vec![name.clone()];
        row.extend(cells(&k.service, name));
        row.extend(cells(&k.non_service, name));
        t.row(row);
    }
    let spread = |kt: &KernelTime| {
        let mut v = kt.per_repetition_ns.clone();
        v.sort_by(f64::total_cmp);
        format!(
            "**{:.1}** (IQR over rounds {:.0}..{:.0})",
            kt.ns_per_connection(),
            super::stats::quantile(&v, 0.25),
            super::stats::quantile(&v, 0.75)
        )
    };
    t.row(vec![
        "all programs".into(),
        String::new(),
        String::new(),
        spread(&k.service),
        String::new(),
        String::new(),
        spread(&k.non_service),
    ]);
    if !idle.is_empty() {
        t.note(format!(
            "Attached but not run by TCP connects: {}.",
            idle.join(", ")
        ));
    }
    t.note(format!(
        "These connects, with the statistics on: p50 {}; p50 / lbctl's with them off (the latency table), paired per round: {}; p50 / direct: {}.",
        fmt_us(k.service_latency.p50_us),
        ratio_cell(k.vs_statistics_off.as_ref()),
        ratio_cell(k.vs_direct.as_ref()),
    ));
    t
}

/// The hooks a TCP connection through lbctl runs programs on (the client's connect, the accepted
/// socket's `getpeername` in `accept()`), each once.
const CONNECTION_HOOKS: [floor::Hook; 2] = [floor::CONNECT4, floor::GETPEERNAME4];

/// The statistics' floor: `opts.rounds` repetitions of the lbctl arm's non-service connects
/// (to `backends`, in a topology of its own) from a cgroup whose only programs are empty ones
/// on [`CONNECTION_HOOKS`].
fn measure_floor(
    count: usize,
    backends: &[std::net::SocketAddr],
    opts: &DatapathOptions,
) -> Result<KernelTime> {
    let topology = Topology::new(
        &format!("fl{count}"),
        &ServiceSet::measured_backends(opts.endpoints),
    )
    .context("building the topology of the floor measurement")?;
    let cgroup = scratch::cgroup("bench-empty")?;
    let empty = EmptyPrograms::attach(cgroup.path(), &CONNECTION_HOOKS)?;
    let mut client = ClientProc::spawn(&topology, cgroup.path(), TARGET_PORT, opts.cpu)
        .context("starting the client of the floor measurement")?;
    let request = Request::Connect {
        targets: backends.to_vec(),
        count: opts.connects,
        warmup: opts.warmup,
    };
    let mut k = KernelTime::default();
    let _statistics = kernel_time::enable()?;
    for _ in 0..opts.rounds {
        let before = kernel_time::snapshot(empty.attached())?;
        client.request(&request).context("the floor's connects")?;
        let after = kernel_time::snapshot(empty.attached())?;
        k.add(&before, &after, (opts.connects + opts.warmup) as u64);
    }
    // Before `empty`, `cgroup` and `topology` drop (reverse order of declaration): the client
    // leaves the cgroup and the namespaces first.
    drop(client);
    Ok(k)
}

fn floor_table(count: usize, floor: &KernelTime, lbctl: &KernelFigure) -> Table {
    let mut t = Table::new(
        &format!(
            "The floor of the BPF statistics: empty programs (`r0 = 1; exit`) on the hooks lbctl's run on per TCP connection, the same connects as lbctl's no-service slot, {}",
            if count == 1 {
                "1 service".to_owned()
            } else {
                format!("{count} services")
            }
        ),
        &["program", "runs/conn", "ns/run", "ns/conn"],
    );
    for (name, p) in &floor.programs {
        t.row(vec![
            name.clone(),
            format!("{:.2}", floor.runs_per_connection(p)),
            format!("{:.0}", p.ns_per_run()),
            format!("{:.1}", floor.program_ns_per_connection(p)),
        ]);
    }
    t.row(vec![
        "all".into(),
        String::new(),
        String::new(),
        format!("**{:.1}**", floor.ns_per_connection()),
    ]);
    t.note(format!(
        "lbctl above this floor at {count}: {:.0} ns per service connection, {:.0} ns per connection to no service (lbctl's figure minus the empty programs'; both run one program per hook per connection).",
        lbctl.service.ns_per_connection() - floor.ns_per_connection(),
        lbctl.non_service.ns_per_connection() - floor.ns_per_connection(),
    ));
    t
}

/// One slot's figures at one count.
struct SlotFigure {
    arm: Arm,
    latency: Aggregate,
    /// p50 / direct's p50 in the same rounds (`None` for direct).
    vs_direct: Option<Ratio>,
    reached: BTreeMap<String, usize>,
}

/// The figures of the slots going to `dest` (direct's service slot, which goes to the
/// backends, stands for both), each paired with direct's service slot round by round; the
/// kernel-time slots are left out.
fn figures(live: &[Live], slots: &[Slot], results: &[SlotResult], dest: Dest) -> Vec<SlotFigure> {
    let arm = |s: &Slot| live[s.live].programmed.arm;
    let direct = slots
        .iter()
        .zip(results)
        .find(|(s, _)| arm(s) == Arm::Direct && s.dest == Dest::Service)
        .map(|(_, r)| p50s(&r.summaries));
    slots
        .iter()
        .zip(results)
        .filter(|(s, _)| !s.kernel_time)
        .filter(|(s, _)| {
            if arm(s) == Arm::Direct {
                s.dest == Dest::Service
            } else {
                s.dest == dest
            }
        })
        .map(|(s, r)| SlotFigure {
            arm: arm(s),
            latency: Aggregate::new(r.summaries.clone()),
            vs_direct: if arm(s) == Arm::Direct {
                None
            } else {
                direct
                    .as_deref()
                    .and_then(|d| Ratio::paired(&p50s(&r.summaries), d))
            },
            reached: r.reached.clone(),
        })
        .collect()
}

pub fn run(opts: &DatapathOptions, arms: &[Arm]) -> Result<(DatapathResults, Vec<Table>)> {
    let plain = scratch::cgroup("bench-plain")?;
    let mut lb = if arms.contains(&Arm::Lbctl) {
        Some(BenchDatapath::new("bench-lb")?)
    } else {
        None
    };
    // The programs the lbctl arm attached, found from its pinned links.
    let programs = lb
        .as_ref()
        .map(|l| kernel_time::attached(l.pins.path()))
        .transpose()
        .context("finding the lbctl arm's programs")?;
    if let Some(p) = &programs {
        let names: Vec<&str> = p.iter().map(|a| a.name.as_str()).collect();
        eprintln!("   lbctl programs attached: {}", names.join(", "));
    }
    let mut rng = Rng::new(opts.seed);
    let max_count = opts.counts.iter().copied().max().unwrap_or(1);
    let min_count = opts.counts.iter().copied().min().unwrap_or(1);
    let mut monitoring = None;
    let mut floor_time = None;
    let mut points = Vec::new();
    let mut non_service = Vec::new();
    let mut request_response = Vec::new();
    let mut kernel = Vec::new();
    let mut tables = Vec::new();
    let backends: Vec<std::net::SocketAddr> = ServiceSet::measured_backends(opts.endpoints)
        .into_iter()
        .map(|ip| std::net::SocketAddr::from((ip, TARGET_PORT)))
        .collect();

    for &count in &opts.counts {
        let set = ServiceSet::new(count, opts.endpoints);
        eprintln!(
            "\n## {count} service{} x {} endpoints: programming",
            if count == 1 { "" } else { "s" },
            opts.endpoints
        );
        let mut programmed = Vec::new();
        for &arm in arms {
            let p = arms::program(arm, &set, lb.as_mut())?;
            if let Some(ms) = p.program_ms {
                eprintln!("   {arm:<16} programmed in {}", fmt_ms(ms));
            }
            programmed.push(p);
        }
        // The direct arm beside lbctl has no namespaces of its own: its client runs in lbctl's.
        let lbctl_topology = programmed
            .iter()
            .find(|p| p.arm == Arm::Lbctl)
            .and_then(|p| p.topology.as_ref());
        let lb_cgroup = lb.as_ref().map(|l| l.cgroup.path());
        let mut clients = Vec::new();
        for p in &programmed {
            let arm = p.arm;
            let topology = p
                .topology
                .as_ref()
                .or(lbctl_topology)
                .with_context(|| format!("no namespaces for the client of {arm}"))?;
            let cgroup = arms::cgroup_for(arm, plain.path(), lb_cgroup.unwrap_or(plain.path()));
            clients.push(
                ClientProc::spawn(topology, cgroup, p.port, opts.cpu)
                    .with_context(|| format!("starting the client of {arm}"))?,
            );
        }
        let mut live: Vec<Live> = programmed
            .into_iter()
            .zip(clients)
            .map(|(programmed, client)| Live { client, programmed })
            .collect();

        // Every arm to the service; every arm but direct (whose service slot already goes to
        // the backends) to the backends directly; lbctl's both again as kernel-time slots.
        let mut slots = Vec::new();
        for (i, l) in live.iter().enumerate() {
            let arm = l.programmed.arm;
            let kernel_time = if arm == Arm::Lbctl && programs.is_some() {
                &[false, true][..]
            } else {
                &[false][..]
            };
            for &kernel_time in kernel_time {
                slots.push(Slot {
                    live: i,
                    dest: Dest::Service,
                    request: Request::Connect {
                        targets: l.programmed.targets.clone(),
                        count: opts.connects,
                        warmup: opts.warmup,
                    },
                    kernel_time,
                });
                if arm != Arm::Direct {
                    slots.push(Slot {
                        live: i,
                        dest: Dest::NonService,
                        request: Request::Connect {
                            targets: backends.clone(),
                            count: opts.connects,
                            warmup: opts.warmup,
                        },
                        kernel_time,
                    });
                }
            }
        }
        let started = Instant::now();
        eprintln!(
            "   measuring connects: {} rounds of {} slots x {} connects",
            opts.rounds,
            slots.len(),
            opts.connects + opts.warmup
        );
        let results = measure_rounds(
            &mut live,
            &slots,
            opts.rounds,
            &mut rng,
            programs.as_deref(),
        )?;
        eprintln!("   ({:.1} s)", started.elapsed().as_secs_f64());

        let title = |what: &str| {
            format!(
                "{what}, {count} service{} ({} rounds of {} connects, arms interleaved in a random order per round{})",
                if count == 1 { "" } else { "s" },
                opts.rounds,
                opts.connects,
                opts.cpu
                    .map_or(String::new(), |c| format!(", clients pinned to CPU {c}"))
            )
        };
        let mut table = Table::new(
            &title("Connect latency (connect() to established)"),
            &[
                "arm",
                "to",
                "p50",
                "p99",
                "p50 IQR over rounds",
                "conn/s",
                RATIO_HEADER,
            ],
        );
        for SlotFigure {
            arm,
            latency: connect,
            vs_direct,
            reached,
        } in figures(&live, &slots, &results, Dest::Service)
        {
            let to = if arm == Arm::Direct {
                "a backend (the baseline of both)"
            } else {
                "the service"
            };
            table.row(latency_row(
                vec![arm.to_string(), to.into()],
                &connect,
                true,
                vs_direct.as_ref(),
            ));
            points.push(Point {
                arm,
                services: count,
                program_ms: live
                    .iter()
                    .find(|l| l.programmed.arm == arm)
                    .and_then(|l| l.programmed.program_ms),
                connect,
                vs_direct,
                reached,
            });
        }
        for SlotFigure {
            arm,
            latency,
            vs_direct,
            ..
        } in figures(&live, &slots, &results, Dest::NonService)
        {
            if arm != Arm::Direct {
                table.row(latency_row(
                    vec![arm.to_string(), "no service (a backend)".into()],
                    &latency,
                    true,
                    vs_direct.as_ref(),
                ));
            }
            non_service.push(ArmFigure {
                arm,
                services: count,
                latency,
                vs_direct,
            });
        }
        println!("{table}");
        tables.push(table);

        if let Some(programs) = &programs {
            let slot = |dest: Dest, kernel_time: bool| {
                slots.iter().zip(&results).find_map(|(s, r)| {
                    (live[s.live].programmed.arm == Arm::Lbctl
                        && s.dest == dest
                        && s.kernel_time == kernel_time)
                        .then_some(r)
                })
            };
            let take = |dest: Dest| {
                slot(dest, true)
                    .map(|r| r.kernel.clone())
                    .unwrap_or_default()
            };
            let on = slot(Dest::Service, true).map(|r| p50s(&r.summaries));
            let off = slot(Dest::Service, false).map(|r| p50s(&r.summaries));
            let direct = points
                .iter()
                .find(|p| p.arm == Arm::Direct && p.services == count)
                .map(|p| p50s(&p.connect.reps));
            let pair = |den: Option<Vec<f64>>| Ratio::paired(on.as_deref()?, den.as_deref()?);
            let figure = KernelFigure {
                services: count,
                service_latency: Aggregate::new(
                    slot(Dest::Service, true)
                        .map(|r| r.summaries.clone())
                        .unwrap_or_default(),
                ),
                vs_statistics_off: pair(off),
                vs_direct: pair(direct),
                programs: programs.clone(),
                service: take(Dest::Service),
                non_service: take(Dest::NonService),
            };
            // A service connect that ran none of lbctl's programs did not go through lbctl (or
            // statistics are off): the figures would be meaningless.
            let runs: u64 = figure.service.programs.values().map(|p| p.runs).sum();
            if figure.service.connections > 0 && runs < figure.service.connections {
                anyhow::bail!(
                    "the lbctl arm's {} service connects ran lbctl's programs only {runs} times: \
                     the connects did not go through lbctl, or BPF statistics are off",
                    figure.service.connections
                );
            }
            let table = kernel_table(count, &figure);
            println!("{table}");
            tables.push(table);
            kernel.push(figure);
        }

        if count == min_count
            && let Some(lbctl) = kernel.last()
        {
            eprintln!("   measuring the floor: empty programs on lbctl's hooks");
            let k = measure_floor(count, &backends, opts)?;
            let table = floor_table(count, &k, lbctl);
            println!("{table}");
            tables.push(table);
            floor_time = Some(k);
        }

        if count == min_count
            && let Some(lb) = &lb
            && let Some(l) = live.iter_mut().find(|l| l.programmed.arm == Arm::Lbctl)
        {
            eprintln!("   measuring lbctl with and without a monitor");
            let request = Request::Connect {
                targets: l.programmed.targets.clone(),
                count: opts.connects,
                warmup: opts.warmup,
            };
            let (figure, table) = super::monitor::measure(
                lb.pins.path(),
                &mut l.client,
                &request,
                count,
                opts.rounds.min(10),
            )?;
            println!("{table}");
            tables.push(table);
            monitoring = Some(figure);
        }

        if count == max_count {
            eprintln!("   measuring request/response");
            let slots: Vec<Slot> = live
                .iter()
                .enumerate()
                .map(|(i, l)| Slot {
                    live: i,
                    dest: Dest::Service,
                    request: Request::Rr {
                        target: l.programmed.targets[0],
                        count: opts.rr_count,
                        warmup: opts.warmup,
                        size: opts.rr_size,
                    },
                    kernel_time: false,
                })
                .collect();
            let results = measure_rounds(&mut live, &slots, opts.rounds, &mut rng, None)?;
            let mut table = Table::new(
                &format!(
                    "Request/response round trip ({} bytes) on an established service connection, {count} service{} ({} rounds of {} round trips)",
                    opts.rr_size,
                    if count == 1 { "" } else { "s" },
                    opts.rounds,
                    opts.rr_count
                ),
                &["arm", "p50", "p99", "p50 IQR over rounds", RATIO_HEADER],
            );
            for SlotFigure {
                arm,
                latency,
                vs_direct,
                ..
            } in figures(&live, &slots, &results, Dest::Service)
            {
                table.row(latency_row(
                    vec![arm.to_string()],
                    &latency,
                    false,
                    vs_direct.as_ref(),
                ));
                request_response.push(ArmFigure {
                    arm,
                    services: count,
                    latency,
                    vs_direct,
                });
            }
            println!("{table}");
            tables.push(table);
        }
    }

    let mut program = Table::new(
        "Programming time of the datapath arms (rules loaded from empty)",
        &["services", "arm", "time"],
    );
    for p in points.iter().filter(|p| p.program_ms.is_some()) {
        program.row(vec![
            p.services.to_string(),
            p.arm.to_string(),
            fmt_ms(p.program_ms.unwrap_or(f64::NAN)),
        ]);
    }
    println!("{program}");
    tables.push(program);

    let lbctl_counters = lb.as_ref().map(|l| l.datapath.counters()).transpose()?;
    Ok((
        DatapathResults {
            options: opts.clone(),
            arms: arms.to_vec(),
            points,
            non_service,
            request_response,
            kernel,
            lbctl_counters,
            monitoring,
            floor: floor_time,
        },
        tables,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_keeps_direct_and_lbctl_together_and_varies_the_rest() {
        use Arm::*;
        let arms = [
            Direct,
            Lbctl,
            Lbctl,
            IptablesNft,
            IptablesNft,
            Nftables,
            Nftables,
        ];
        let mut rng = Rng::new(3);
        let mut orders = std::collections::BTreeSet::new();
        let mut block_starts = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let order = round_order(&arms, &mut rng);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, (0..arms.len()).collect::<Vec<_>>(), "{order:?}");
            let tight: Vec<usize> = (0..order.len())
                .filter(|&k| matches!(arms[order[k]], Direct | Lbctl))
                .collect();
            assert_eq!(tight.len(), 3);
            assert_eq!(tight[2] - tight[0], 2, "not one block: {order:?}");
            block_starts.insert(tight[0]);
            orders.insert(order);
        }
        // The block lands at every position among the 4 other slots, and orders vary.
        assert_eq!(block_starts.len(), 5, "{block_starts:?}");
        assert!(orders.len() > 50, "only {} distinct orders", orders.len());
    }
}
