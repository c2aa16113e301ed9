//! Part 1: connect latency, connections/s, the non-service tax and request/response round
//! trips of every arm, all measured in the same run with the arms interleaved repetition by
//! repetition (so slow drifts of a busy machine hit every arm alike).
use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::{Context, Result};
use lbctl::datapath::Counters;
use serde::Serialize;

use super::{
    arms::{self, Arm, Programmed},
    client::{ClientProc, Request, Sample},
    monitor::MonitorFigure,
    report::{Table, fmt_ms, fmt_rate, fmt_us},
    scratch::{self, BenchDatapath},
    services::ServiceSet,
    stats::{Aggregate, Summary},
};

#[derive(Clone, Debug, Serialize)]
pub struct DatapathOptions {
    pub counts: Vec<usize>,
    pub endpoints: usize,
    pub reps: usize,
    pub connects: usize,
    pub warmup: usize,
    pub rr_count: usize,
    pub rr_size: usize,
}

/// One arm at one service count.
#[derive(Debug, Serialize)]
pub struct Point {
    pub arm: Arm,
    pub services: usize,
    /// Time to load the rules of this many services (lbctl: `Datapath::apply` from empty).
    pub program_ms: Option<f64>,
    pub connect: Aggregate,
    /// Backend address -> connects that landed there (all repetitions).
    pub reached: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct ArmFigure {
    pub arm: Arm,
    pub services: usize,
    pub latency: Aggregate,
}

#[derive(Debug, Serialize)]
pub struct DatapathResults {
    pub options: DatapathOptions,
    pub arms: Vec<Arm>,
    pub points: Vec<Point>,
    /// Connects to an address that is no service, with the most services installed.
    pub non_service: Vec<ArmFigure>,
    /// Round trips on one established connection to the measured service.
    pub request_response: Vec<ArmFigure>,
    /// lbctl's kernel counters at the end (rewritten / passed prove the arm went through it).
    pub lbctl_counters: Option<Counters>,
    /// lbctl's connects and `lb_connect4` run time without and with a monitor (smallest count).
    pub monitoring: Option<MonitorFigure>,
}

struct Live {
    programmed: Programmed,
    client: ClientProc,
}

/// Per arm: one summary per repetition, and where the connects landed.
type PerArm = (Vec<Summary>, BTreeMap<String, usize>);

/// Runs `request(arm)` `reps` times for every arm, rotating the order each repetition.
fn measure(
    live: &mut [Live],
    reps: usize,
    request: impl Fn(&Programmed) -> Request,
) -> Result<Vec<PerArm>> {
    let mut out: Vec<PerArm> = (0..live.len()).map(|_| Default::default()).collect();
    for rep in 0..reps {
        for k in 0..live.len() {
            let i = (rep + k) % live.len();
            let l = &mut live[i];
            let req = request(&l.programmed);
            let Sample {
                latencies_ns,
                elapsed_ns,
                reached,
            } = l
                .client
                .request(&req)
                .with_context(|| format!("arm {} ({req:?})", l.programmed.arm))?;
            out[i].0.push(Summary::from_ns(&latencies_ns, elapsed_ns));
            for (addr, n) in reached {
                *out[i].1.entry(addr).or_insert(0) += n;
            }
        }
    }
    Ok(out)
}

fn latency_table(title: &str, rows: &[(Arm, &Aggregate)], rate: bool) -> Table {
    let direct = rows
        .iter()
        .find(|(a, _)| *a == Arm::Direct)
        .map(|(_, g)| g.p50_us);
    let mut headers = vec!["arm", "p50", "p99", "p50 min..max"];
    if rate {
        headers.push("conn/s");
    }
    headers.push("p50 / direct");
    let mut table = Table::new(title, &headers);
    for (arm, g) in rows {
        let mut row = vec![
            arm.to_string(),
            fmt_us(g.p50_us),
            fmt_us(g.p99_us),
            format!("{}..{}", fmt_us(g.p50_min_us), fmt_us(g.p50_max_us)),
        ];
        if rate {
            row.push(fmt_rate(g.per_sec));
        }
        row.push(direct.map_or("-".into(), |d| format!("{:.3}x", g.p50_us / d)));
        table.row(row);
    }
    table
}

pub fn run(opts: &DatapathOptions, arms: &[Arm]) -> Result<(DatapathResults, Vec<Table>)> {
    let plain = scratch::cgroup("bench-plain")?;
    let mut lb = if arms.contains(&Arm::Lbctl) {
        Some(BenchDatapath::new("bench-lb")?)
    } else {
        None
    };
    let max_count = opts.counts.iter().copied().max().unwrap_or(1);
    let min_count = opts.counts.iter().copied().min().unwrap_or(1);
    let mut monitoring = None;
    let mut points = Vec::new();
    let mut non_service = Vec::new();
    let mut request_response = Vec::new();
    let mut tables = Vec::new();

    for &count in &opts.counts {
        let set = ServiceSet::new(count, opts.endpoints);
        eprintln!(
            "\n## {count} services x {} endpoints: programming",
            opts.endpoints
        );
        let mut live = Vec::new();
        for &arm in arms {
            let programmed = arms::program(arm, &set, lb.as_mut())?;
            if let Some(ms) = programmed.program_ms {
                eprintln!("   {arm:<16} programmed in {}", fmt_ms(ms));
            }
            let lb_cgroup = lb.as_ref().map(|l| l.cgroup.path());
            let cgroup = arms::cgroup_for(arm, plain.path(), lb_cgroup.unwrap_or(plain.path()));
            let client = ClientProc::spawn(&programmed.topology, cgroup)
                .with_context(|| format!("starting the client of {arm}"))?;
            live.push(Live { programmed, client });
        }

        eprintln!("   measuring connects ({} reps)", opts.reps);
        let connects = measure(&mut live, opts.reps, |p| Request::Connect {
            targets: p.targets.clone(),
            count: opts.connects,
            warmup: opts.warmup,
        })?;
        let mut these = Vec::new();
        for (l, (reps, reached)) in live.iter().zip(connects) {
            these.push(Point {
                arm: l.programmed.arm,
                services: count,
                program_ms: l.programmed.program_ms,
                connect: Aggregate::new(reps),
                reached,
            });
        }
        let rows: Vec<(Arm, &Aggregate)> = these.iter().map(|p| (p.arm, &p.connect)).collect();
        let table = latency_table(
            &format!(
                "Connect latency, {count} service{} (measured service last)",
                if count == 1 { "" } else { "s" }
            ),
            &rows,
            true,
        );
        println!("{table}");
        tables.push(table);
        points.extend(these);

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
            let (figure, table) =
                super::monitor::measure(lb.pins.path(), &mut l.client, &request, count, opts.reps)?;
            println!("{table}");
            tables.push(table);
            monitoring = Some(figure);
        }

        if count == max_count {
            eprintln!("   measuring the non-service tax");
            let target: SocketAddr = set.non_service();
            let tax = measure(&mut live, opts.reps, |_| Request::Connect {
                targets: vec![target],
                count: opts.connects,
                warmup: opts.warmup,
            })?;
            for (l, (reps, _)) in live.iter().zip(tax) {
                non_service.push(ArmFigure {
                    arm: l.programmed.arm,
                    services: count,
                    latency: Aggregate::new(reps),
                });
            }
            let rows: Vec<(Arm, &Aggregate)> =
                non_service.iter().map(|f| (f.arm, &f.latency)).collect();
            let table = latency_table(
                &format!("Connect to a non-service address, {count} services installed"),
                &rows,
                true,
            );
            println!("{table}");
            tables.push(table);

            eprintln!("   measuring request/response");
            let rr = measure(&mut live, opts.reps, |p| Request::Rr {
                target: p.targets[0],
                count: opts.rr_count,
                warmup: opts.warmup,
                size: opts.rr_size,
            })?;
            for (l, (reps, _)) in live.iter().zip(rr) {
                request_response.push(ArmFigure {
                    arm: l.programmed.arm,
                    services: count,
                    latency: Aggregate::new(reps),
                });
            }
            let rows: Vec<(Arm, &Aggregate)> = request_response
                .iter()
                .map(|f| (f.arm, &f.latency))
                .collect();
            let table = latency_table(
                &format!(
                    "Request/response round trip ({} bytes) on an established connection, {count} services",
                    opts.rr_size
                ),
                &rows,
                false,
            );
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
            lbctl_counters,
            monitoring,
        },
        tables,
    ))
}
