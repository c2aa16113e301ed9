//! Tables (markdown, also printed as the run goes), the JSON results, and the targets.
use std::{fmt, fs, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{arms::Arm, control::ControlResults, datapath::DatapathResults, machine::Machine};

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
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
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
        Ok(())
    }
}

/// One target of issue 7 and where this run stands.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub command: String,
    pub duration_s: f64,
    pub datapath: Option<DatapathResults>,
    pub control_plane: Option<ControlResults>,
    pub churn: Option<super::churn::ChurnResults>,
    pub targets: Vec<Target>,
    pub skipped_arms: Vec<(Arm, String)>,
}

fn p50(d: &DatapathResults, arm: Arm, services: usize) -> Option<f64> {
    d.points
        .iter()
        .find(|p| p.arm == arm && p.services == services)
        .map(|p| p.connect.p50_us)
}

fn target(out: &mut Vec<Target>, name: &str, measured: Option<(String, bool)>) {
    out.push(match measured {
        Some((m, ok)) => Target {
            target: name.into(),
            measured: m,
            met: Some(ok),
        },
        None => Target {
            target: name.into(),
            measured: "not measured".into(),
            met: None,
        },
    });
}

/// Evaluates the targets of issue 7 against what was measured.
pub fn targets(d: Option<&DatapathResults>, c: Option<&ControlResults>) -> Vec<Target> {
    let mut out = Vec::new();
    let counts: Vec<usize> = d.map(|d| d.options.counts.clone()).unwrap_or_default();
    let ratio = |arm: Arm, base: Arm, n: usize| -> Option<f64> {
        let d = d?;
        Some(p50(d, arm, n)? / p50(d, base, n)?)
    };
    // Socket LB vs direct, at every count.
    let worst = counts
        .iter()
        .filter_map(|&n| ratio(Arm::Lbctl, Arm::Direct, n).map(|r| (n, r)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    target(
        &mut out,
        "lbctl p50 <= 1.05x direct at every service count",
        worst.map(|(n, r)| (format!("worst {r:.3}x (at {n} services)"), r <= 1.05)),
    );
    let (lo, hi) = (
        counts.iter().copied().min().unwrap_or(1),
        counts.iter().copied().max().unwrap_or(30_000),
    );
    let flat = d.and_then(|d| Some(p50(d, Arm::Lbctl, hi)? / p50(d, Arm::Lbctl, lo)?));
    target(
        &mut out,
        &format!("lbctl p50 at {hi} services <= 1.05x p50 at {lo}"),
        flat.map(|r| (format!("{r:.3}x"), r <= 1.05)),
    );
    let at = if counts.contains(&10_000) || counts.is_empty() {
        10_000
    } else {
        hi
    };
    for ipt in [Arm::IptablesNft, Arm::IptablesLegacy] {
        target(
            &mut out,
            &format!("lbctl p50 <= 0.4x {ipt} at {at} services"),
            ratio(Arm::Lbctl, ipt, at).map(|r| (format!("{r:.3}x"), r <= 0.4)),
        );
    }
    let worst_nft = counts
        .iter()
        .filter_map(|&n| ratio(Arm::Lbctl, Arm::Nftables, n).map(|r| (n, r)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    target(
        &mut out,
        "lbctl p50 <= 0.8x nftables at every service count",
        worst_nft.map(|(n, r)| (format!("worst {r:.3}x (at {n} services)"), r <= 0.8)),
    );
    let tax = d.and_then(|d| {
        let get = |arm| {
            d.non_service
                .iter()
                .find(|f| f.arm == arm)
                .map(|f| f.latency.p50_us)
        };
        Some((
            get(Arm::Lbctl)? / get(Arm::Direct)?,
            d.non_service.first()?.services,
        ))
    });
    target(
        &mut out,
        "lbctl non-service connect p50 <= 1.02x direct (most services installed)",
        tax.map(|(r, n)| (format!("{r:.3}x (at {n} services)"), r <= 1.02)),
    );
    let rr = d.and_then(|d| {
        let get = |arm| {
            d.request_response
                .iter()
                .find(|f| f.arm == arm)
                .map(|f| f.latency.p50_us)
        };
        Some(get(Arm::Lbctl)? / get(Arm::Direct)?)
    });
    target(
        &mut out,
        "lbctl request/response p50 = direct (no cost after connect; within 5%)",
        rr.map(|r| (format!("{r:.3}x"), (0.95..=1.05).contains(&r))),
    );
    let scale = |n: usize| c.and_then(|c| c.lbctl.iter().find(|s| s.services == n));
    let first = c.and_then(|c| c.lbctl.first());
    let full = scale(10_000).or(first);
    target(
        &mut out,
        "full programming of 10,000 x 10 <= 100 ms",
        full.map(|s| {
            (
                format!(
                    "{} ({} x {}, {} map operations)",
                    fmt_ms(s.full_apply_ms),
                    s.services,
                    s.endpoints,
                    s.full_map_operations
                ),
                s.full_apply_ms <= 100.0,
            )
        }),
    );
    let big = scale(30_000).or_else(|| c.and_then(|c| c.lbctl.last()));
    target(
        &mut out,
        "one endpoint change p99 <= 10 ms at 30,000 services",
        big.map(|s| {
            (
                format!("{} (at {} services)", fmt_ms(s.change.p99_ms), s.services),
                s.change.p99_ms <= 10.0,
            )
        }),
    );
    target(
        &mut out,
        "agent peak RSS <= 100 MiB at 10,000 x 10",
        full.map(|s| {
            let mib = s.vm_hwm_kib as f64 / 1024.0;
            (
                format!(
                    "{mib:.1} MiB ({} x {}; BPF maps {:.1} MiB besides)",
                    s.services,
                    s.endpoints,
                    s.bpf_map_bytes as f64 / 1048576.0
                ),
                mib <= 100.0,
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
            match x.met {
                Some(true) => "met".into(),
                Some(false) => "MISSED".into(),
                None => "-".into(),
            },
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
        "Machine: {} cores, {}, kernel {}, {}, {}; load average at start {}; tree {}\n\nCommand: `{}` ({:.0} s)\n",
        results.machine.nproc,
        results.machine.cpu_model,
        results.machine.kernel,
        results.machine.iptables,
        results.machine.nft,
        results.machine.loadavg_at_start,
        results.machine.commit,
        results.command,
        results.duration_s
    ));
    for t in tables {
        md.push_str(&t.to_string());
    }
    let summary = dir.join("summary.md");
    fs::write(&summary, md).with_context(|| format!("writing {}", summary.display()))?;
    Ok(())
}
