//! Tables (markdown, also printed as the run goes), the JSON results, and the targets.
use std::{fmt, fs, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{
    arms::Arm,
    control::ControlResults,
    datapath::{DatapathResults, KernelFigure, Point},
    kernel_time::KernelTime,
    machine::Machine,
    stats::{Ratio, Verdict},
};

pub fn fmt_us(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else if us < 100.0 {
        format!("{us:.2} µs")
    } else {
        format!("{us:.1} µs")
    }
}

pub fn fmt_ms(ms: f64) -> String {
    if ms.is_nan() {
        "-".into()
    } else if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1e3)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

pub fn fmt_rate(per_sec: f64) -> String {
    format!("{per_sec:.0}")
}

/// A titled markdown table.
#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Lines printed under the table.
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .chain(std::iter::once(&self.headers[i]))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| -> fmt::Result {
            write!(f, "|")?;
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w - c.chars().count();
                write!(f, " {c}{} |", " ".repeat(pad))?;
            }
            writeln!(f)
        };
        writeln!(f, "\n#### {}\n", self.title)?;
        line(f, &self.headers)?;
        write!(f, "|")?;
        for w in &widths {
            write!(f, "{}|", "-".repeat(w + 2))?;
        }
        writeln!(f)?;
        for r in &self.rows {
            line(f, r)?;
        }
        if !self.notes.is_empty() {
            writeln!(f)?;
            for n in &self.notes {
                writeln!(f, "{n}")?;
            }
        }
        Ok(())
    }
}

/// Where a target stands after this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Met,
    Missed,
    /// The measured interval straddles the target: this run cannot tell.
    NotResolved,
    NotMeasured,
}

impl From<Verdict> for Status {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Met => Status::Met,
            Verdict::Missed => Status::Missed,
            Verdict::NotResolved => Status::NotResolved,
        }
    }
}

impl Status {
    pub fn from_bool(ok: bool) -> Self {
        if ok { Status::Met } else { Status::Missed }
    }

    fn label(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Missed => "MISSED",
            Status::NotResolved => "not resolved",
            Status::NotMeasured => "-",
        }
    }
}

/// One target (issue 12; the comparisons with the NAT arms from issue 7) and where this run
/// stands.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    pub status: Status,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: Machine,
    /// Load averages when the run ended (the start's are in `machine`).
    pub loadavg_at_end: String,
    /// `kernel.bpf_stats_enabled` at the end (the run switches statistics on around its
    /// kernel-time slots with `BPF_ENABLE_STATS` instead, which the sysctl does not show; when
    /// it is 1, the latency slots ran with them on too).
    pub bpf_stats_sysctl: String,
    pub command: String,
    pub duration_s: f64,
    pub datapath: Option<DatapathResults>,
    pub control_plane: Option<ControlResults>,
    pub churn: Option<super::churn::ChurnResults>,
    pub targets: Vec<Target>,
    pub skipped_arms: Vec<(Arm, String)>,
}

fn point(d: &DatapathResults, arm: Arm, services: usize) -> Option<&Point> {
    d.points
        .iter()
        .find(|p| p.arm == arm && p.services == services)
}

fn target(out: &mut Vec<Target>, name: &str, measured: Option<(String, Status)>) {
    let (measured, status) =
        measured.unwrap_or_else(|| ("not measured".into(), Status::NotMeasured));
    out.push(Target {
        target: name.into(),
        measured,
        status,
    });
}

/// The service counts issue 12 names for the connect ratio.
const ISSUE_COUNTS: [usize; 4] = [1, 1000, 10_000, 30_000];

/// `num`'s per-round p50s over `den`'s, paired round by round.
fn paired(num: &Point, den: &Point) -> Option<Ratio> {
    let p = |x: &Point| x.connect.reps.iter().map(|r| r.p50_us).collect::<Vec<_>>();
    Ratio::paired(&p(num), &p(den))
}

/// The worst of several statuses (missed, then not resolved, then met).
fn worst(statuses: impl IntoIterator<Item = Status>) -> Status {
    let mut out = Status::NotMeasured;
    for s in statuses {
        out = match (out, s) {
            (Status::Missed, _) | (_, Status::Missed) => Status::Missed,
            (Status::NotResolved, _) | (_, Status::NotResolved) => Status::NotResolved,
            (Status::Met, _) | (_, Status::Met) => Status::Met,
            _ => Status::NotMeasured,
        };
    }
    out
}

/// BPF ns per connection at each count against `ceiling`, with the programs' shares at the
/// worst count (what bounds a miss).
fn kernel_target(figures: &[(usize, &KernelTime)], ceiling: f64) -> Option<(String, Status)> {
    let figures: Vec<(usize, &KernelTime)> = figures
        .iter()
        .copied()
        .filter(|(_, k)| k.ns_per_connection().is_finite())
        .collect();
    let (worst_n, worst_k) = figures
        .iter()
        .max_by(|a, b| a.1.ns_per_connection().total_cmp(&b.1.ns_per_connection()))?;
    let text: Vec<String> = figures
        .iter()
        .map(|(n, k)| format!("{:.0} ns at {n}", k.ns_per_connection()))
        .collect();
    let mut shares: Vec<(&String, f64)> = worst_k
        .programs
        .iter()
        .filter(|(_, p)| p.runs > 0)
        .map(|(name, p)| (name, worst_k.program_ns_per_connection(p)))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    let shares: Vec<String> = shares
        .iter()
        .map(|(name, ns)| format!("{name} {ns:.0}"))
        .collect();
    let status = worst(
        figures
            .iter()
            .map(|(_, k)| Status::from_bool(k.ns_per_connection() <= ceiling)),
    );
    Some((
        format!(
            "{}; at {worst_n}: {} ns/conn",
            text.join(", "),
            shares.join(", ")
        ),
        status,
    ))
}

/// A kernel-time target's text with the statistics' floor beside it (empty programs on the same
/// hooks, [`super::floor`]), when it was measured.
fn with_floor((text, status): (String, Status), d: Option<&DatapathResults>) -> (String, Status) {
    match d.and_then(|d| d.floor.as_ref()) {
        Some(f) if f.ns_per_connection().is_finite() => (
            format!(
                "{text}; empty programs on the same hooks (the statistics' floor): {:.0} ns/conn",
                f.ns_per_connection()
            ),
            status,
        ),
        _ => (text, status),
    }
}

fn services(n: usize) -> String {
    format!("{n} service{}", if n == 1 { "" } else { "s" })
}

/// Evaluates the targets against what was measured. A latency ratio is met (or missed) only
/// when its whole 95% interval is below (or above) the ceiling.
pub fn targets(d: Option<&DatapathResults>, c: Option<&ControlResults>) -> Vec<Target> {
    let mut out = Vec::new();
    let counts: Vec<usize> = d.map(|d| d.options.counts.clone()).unwrap_or_default();

    // Issue 12 item 1: the kernel's own accounting.
    let kernel = |f: fn(&KernelFigure) -> &KernelTime| -> Vec<(usize, &KernelTime)> {
        d.map(|d| d.kernel.iter().map(|k| (k.services, f(k))).collect())
            .unwrap_or_default()
    };
    target(
        &mut out,
        "BPF time per service connection <= 150 ns (connect + accept + close, all lbctl programs)",
        kernel_target(&kernel(|k| &k.service), 150.0).map(|t| with_floor(t, d)),
    );
    target(
        &mut out,
        "BPF time per connection to an address that is no service <= 50 ns (all lbctl programs)",
        kernel_target(&kernel(|k| &k.non_service), 50.0).map(|t| with_floor(t, d)),
    );
    // Issue 12 item 1: latency, paired with direct in the same rounds.
    for n in ISSUE_COUNTS
        .into_iter()
        .chain(counts.iter().copied().filter(|n| !ISSUE_COUNTS.contains(n)))
    {
        let r = d.and_then(|d| point(d, Arm::Lbctl, n)?.vs_direct.clone());
        // The same connects in the kernel-time slots, with the statistics' clock reads.
        let with_statistics = d
            .and_then(|d| {
                d.kernel
                    .iter()
                    .find(|k| k.services == n)?
                    .vs_direct
                    .as_ref()
                    .map(Ratio::short)
            })
            .map_or(String::new(), |r| {
                format!("; with the BPF statistics on: {r}")
            });
        target(
            &mut out,
            &format!(
                "lbctl connect p50 <= 1.03x direct at {} (aim 1.02x; BPF statistics off, as a node runs)",
                services(n)
            ),
            r.map(|r| {
                let aim = match r.verdict(1.02) {
                    Verdict::Met => "; aim 1.02x met",
                    Verdict::Missed => "; aim 1.02x missed",
                    Verdict::NotResolved => "; aim 1.02x not resolved",
                };
                (
                    format!("{}{aim}{with_statistics}", r.describe()),
                    r.verdict(1.03).into(),
                )
            }),
        );
    }
    for n in &counts {
        let r = d.and_then(|d| {
            d.non_service
                .iter()
                .find(|f| f.arm == Arm::Lbctl && f.services == *n)?
                .vs_direct
                .clone()
        });
        target(
            &mut out,
            &format!(
                "lbctl non-service connect p50 <= 1.01x direct ({} installed)",
                services(*n)
            ),
            r.map(|r| (r.describe(), r.verdict(1.01).into())),
        );
    }
    let rr = d.and_then(|d| {
        d.request_response
            .iter()
            .find(|f| f.arm == Arm::Lbctl)?
            .vs_direct
            .clone()
    });
    target(
        &mut out,
        "lbctl request/response p50 = direct (no cost after connect; within 5%)",
        rr.map(|r| {
            let status = if r.ci_low >= 0.95 && r.ci_high <= 1.05 {
                Status::Met
            } else if r.ci_high < 0.95 || r.ci_low > 1.05 {
                Status::Missed
            } else {
                Status::NotResolved
            };
            (r.describe(), status)
        }),
    );

    // Issue 7: against the NAT datapaths, paired in the same rounds.
    let at = if counts.contains(&10_000) || counts.is_empty() {
        10_000
    } else {
        counts.iter().copied().max().unwrap_or(10_000)
    };
    for ipt in [Arm::IptablesNft, Arm::IptablesLegacy] {
        let r = d.and_then(|d| paired(point(d, Arm::Lbctl, at)?, point(d, ipt, at)?));
        target(
            &mut out,
            &format!("lbctl p50 <= 0.4x {ipt} at {}", services(at)),
            r.map(|r| (r.describe(), r.verdict(0.4).into())),
        );
    }
    let nft: Vec<(usize, Ratio)> = counts
        .iter()
        .filter_map(|&n| {
            let d = d?;
            Some((
                n,
                paired(point(d, Arm::Lbctl, n)?, point(d, Arm::Nftables, n)?)?,
            ))
        })
        .collect();
    target(
        &mut out,
        "lbctl p50 <= 0.8x nftables at every service count",
        (!nft.is_empty()).then(|| {
            let text: Vec<String> = nft
                .iter()
                .map(|(n, r)| format!("{} at {n}", r.short()))
                .collect();
            (
                text.join(", "),
                worst(nft.iter().map(|(_, r)| r.verdict(0.8).into())),
            )
        }),
    );

    // Issues 12 items 2-4: the control plane. Full programming is judged on the agent's
    // reconcile up to the maps written (snapshot, plan, desired state, maps written: its
    // plan_us + write_us), as the issue defines it; the whole sync (took_us, with the names
    // and metrics after) and the writer alone are shown beside it.
    let scale = |n: usize| c.and_then(|c| c.lbctl.iter().find(|s| s.services == n));
    let agent = |n: usize| c.and_then(|c| c.agent.iter().find(|s| s.services == n));
    for (n, ceiling) in [(10_000, 100.0), (30_000, 300.0)] {
        target(
            &mut out,
            &format!(
                "full programming of {n} x 10 <= {ceiling} ms, as the agent's reconcile up to \
                 the maps written"
            ),
            agent(n).map(|a| {
                let writer = scale(n)
                    .map(|s| format!("; the writer alone {}", fmt_ms(s.full_apply_ms)))
                    .unwrap_or_default();
                let runs = &a.programmed_runs_ms;
                // Judged only when every run is on one side of the ceiling.
                let status = if runs.iter().all(|&ms| ms <= ceiling) {
                    Status::Met
                } else if runs.iter().all(|&ms| ms > ceiling) {
                    Status::Missed
                } else {
                    Status::NotResolved
                };
                (
                    format!(
                        "{} to the maps written, median of {} runs [{}]; whole sync with names \
                         and metrics {} [{}] (plan in-process {}{writer})",
                        fmt_ms(a.programmed_ms),
                        runs.len(),
                        super::control::fmt_range(runs),
                        fmt_ms(a.reconcile_ms),
                        super::control::fmt_range(&a.reconcile_runs_ms),
                        fmt_ms(a.plan_ms)
                    ),
                    status,
                )
            }),
        );
    }
    // Measured at a smaller scale (a quick run): the figure is shown, the target not judged.
    let big = scale(30_000).or_else(|| c.and_then(|c| c.lbctl.last()));
    let judged = |s: &super::control::LbctlScale, ok: bool| {
        if s.services >= 30_000 {
            Status::from_bool(ok)
        } else {
            Status::NotMeasured
        }
    };
    target(
        &mut out,
        "one endpoint change p99 <= 5 ms at 30,000 services (the writer's apply of the changed frontend, in-process)",
        big.map(|s| {
            (
                format!("{} (at {} services)", fmt_ms(s.change.p99_ms), s.services),
                judged(s, s.change.p99_ms <= 5.0),
            )
        }),
    );
    // The whole agent's RSS is judged in the churn part (Kubernetes source); this is the
    // writer's share.
    target(
        &mut out,
        "peak RSS of desired state + writer alone at 30,000 x 10 (reported)",
        big.map(|s| {
            (
                format!(
                    "{:.1} MiB ({} x {}; BPF maps {:.1} MiB besides)",
                    s.vm_hwm_kib as f64 / 1024.0,
                    s.services,
                    s.endpoints,
                    s.bpf_map_bytes as f64 / 1048576.0
                ),
                Status::NotMeasured,
            )
        }),
    );
    out
}

pub fn targets_table(targets: &[Target]) -> Table {
    let mut t = Table::new("Targets", &["target", "measured", "status"]);
    for x in targets {
        t.row(vec![
            x.target.clone(),
            x.measured.clone(),
            x.status.label().into(),
        ]);
    }
    t
}

/// Writes `results.json` and `summary.md` (every table of the run) into `dir`.
pub fn write(dir: &Path, results: &Results, tables: &[Table]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("results.json");
    fs::write(&json, serde_json::to_string_pretty(results)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let mut md = String::new();
    md.push_str(&format!(
        "Machine: {} cores, {}, kernel {}, {}, {}; tree {}\n\nLoad average (1, 5, 15 min): {} at the start, {} at the end\n\nCommand: `{}` ({:.0} s)\n",
        results.machine.nproc,
        results.machine.cpu_model,
        results.machine.kernel,
        results.machine.iptables,
        results.machine.nft,
        results.machine.commit,
        results.machine.loadavg_at_start,
        results.loadavg_at_end,
        results.command,
        results.duration_s
    ));
    if let Some(d) = &results.datapath {
        md.push_str(&format!(
            "\nDatapath: {} rounds per service count, {} connects (+{} warm-up) per arm and round, order shuffled per round with direct and lbctl kept adjacent (seed {}){}, clients {}; ratios are per-round p50 ratios paired within a round: median [bootstrap 95% interval]; a target is met or missed only when the whole interval is on one side of it. Latency slots run with the BPF statistics off (as a node runs); BPF times: the run time of every program attached in the lbctl arm, read before and after each of its kernel-time slots (the same connects, one more slot per destination and round, with the statistics on through BPF_ENABLE_STATS around the slot only)\n",
            d.options.rounds,
            d.options.connects,
            d.options.warmup,
            d.options.seed,
            if d.arms.contains(&Arm::Direct) && d.arms.contains(&Arm::Lbctl) {
                ", direct's client in lbctl's namespaces (outside lbctl's cgroup, its listener on another port)"
            } else {
                ""
            },
            d.options
                .cpu
                .map_or("not pinned".into(), |c| format!("pinned to CPU {c}"))
        ));
    }
    for t in tables {
        md.push_str(&t.to_string());
    }
    let summary = dir.join("summary.md");
    fs::write(&summary, md).with_context(|| format!("writing {}", summary.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_status_wins() {
        use Status::*;
        let cases: [(&[Status], Status); 6] = [
            (&[], NotMeasured),
            (&[Met, Met], Met),
            (&[Met, NotResolved], NotResolved),
            (&[NotResolved, Missed, Met], Missed),
            (&[NotMeasured, Met], Met),
            (&[Met, Missed], Missed),
        ];
        for (statuses, want) in cases {
            assert_eq!(worst(statuses.iter().copied()), want, "{statuses:?}");
        }
    }

    #[test]
    fn kernel_target_names_the_worst_count_and_its_programs() {
        let mut small = KernelTime::default();
        small.add(
            &Default::default(),
            &[
                ("lb_a".to_owned(), (1000, 10)),
                ("lb_b".to_owned(), (400, 20)),
            ]
            .into(),
            10,
        );
        let mut big = KernelTime::default();
        big.add(
            &Default::default(),
            &[
                ("lb_a".to_owned(), (1200, 10)),
                ("lb_b".to_owned(), (600, 20)),
            ]
            .into(),
            10,
        );
        let (text, status) = kernel_target(&[(1, &small), (1000, &big)], 150.0).unwrap();
        assert_eq!(
            text,
            "140 ns at 1, 180 ns at 1000; at 1000: lb_a 120, lb_b 60 ns/conn"
        );
        assert_eq!(status, Status::Missed);
        assert_eq!(
            kernel_target(&[(1, &small), (1000, &big)], 200.0)
                .unwrap()
                .1,
            Status::Met
        );
        assert!(kernel_target(&[], 150.0).is_none());
    }
}
