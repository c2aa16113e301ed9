//! The kernel's own accounting of lbctl's programs: the run time (`run_time_ns`) and run count
//! (`run_cnt`) of every program attached through a datapath's pinned links, read before and
//! after each measured repetition of the lbctl arm. Free of this VM's scheduling noise: what
//! the programs cost per connection, beside the latency ratios.
//!
//! The programs are discovered from the pinned links (`PIN_DIR/links/*`), never from a list
//! of names: whatever lbctl attaches is counted. Statistics are switched on with
//! `BPF_ENABLE_STATS` (the same kernel switch as the sysctl `kernel.bpf_stats_enabled`,
//! reference-counted): they stay on while the returned descriptor is open and go off when the
//! benchmark exits in any way, even by SIGKILL, and a concurrent writer of the sysctl cannot
//! switch them off under us.
use std::{
    collections::BTreeMap,
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
    sys::{Stats, enable_stats},
};
use serde::Serialize;

/// BPF run-time statistics switched on while this lives.
pub struct StatsOn {
    _fd: OwnedFd,
}

/// Switches the kernel's BPF run-time statistics on (`BPF_ENABLE_STATS`).
pub fn enable() -> Result<StatsOn> {
    let fd = enable_stats(Stats::RunTime)
        .context("enabling BPF run-time statistics (BPF_ENABLE_STATS, needs CAP_SYS_ADMIN)")?;
    Ok(StatsOn { _fd: fd })
}

/// The value of the `kernel.bpf_stats_enabled` sysctl (for the report: the sysctl is not
/// written by the benchmark).
pub fn sysctl_value() -> String {
    fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// One program attached by a datapath: the name of its pinned link and its program id.
#[derive(Clone, Debug, Serialize)]
pub struct Attached {
    pub name: String,
    pub id: u32,
}

/// Every program attached through the pinned links under `pin_dir/links`, by link name.
pub fn attached(pin_dir: &Path) -> Result<Vec<Attached>> {
    let dir: PathBuf = pin_dir.join("links");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let link = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening the pinned link {}", path.display()))?;
        let info = FdLink::from(link)
            .info()
            .with_context(|| format!("reading the link {}", path.display()))?;
        out.push(Attached {
            name,
            id: info.program_id(),
        });
    }
    if out.is_empty() {
        bail!(
            "no pinned link under {}: nothing is attached",
            dir.display()
        );
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Cumulated (run time ns, run count) of each of `programs`, by name.
pub type Snapshot = BTreeMap<String, (u64, u64)>;

/// Reads the run time and count of `programs` (one walk of the loaded programs).
pub fn snapshot(programs: &[Attached]) -> Result<Snapshot> {
    let mut by_id: BTreeMap<u32, &str> = programs.iter().map(|p| (p.id, p.name.as_str())).collect();
    let mut out = Snapshot::new();
    for info in loaded_programs() {
        let Ok(info) = info else {
            // A program unloaded during the walk: not one of ours (they are attached).
            continue;
        };
        if let Some(name) = by_id.remove(&info.id()) {
            out.insert(
                name.to_owned(),
                (info.run_time().as_nanos() as u64, info.run_count()),
            );
        }
    }
    if let Some((id, name)) = by_id.into_iter().next() {
        bail!("program {name} (id {id}) is no longer loaded");
    }
    Ok(out)
}

/// One program's share over the measured connections.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProgramTime {
    pub runs: u64,
    pub run_ns: u64,
}

impl ProgramTime {
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.run_ns as f64 / self.runs as f64
        }
    }
}

/// The programs' run time over a set of repetitions of `connections` connections in all.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelTime {
    /// Connections made (warm-up included: the statistics cover them too).
    pub connections: u64,
    pub programs: BTreeMap<String, ProgramTime>,
    /// BPF ns per connection of each repetition (all programs), for the spread.
    pub per_repetition_ns: Vec<f64>,
}

impl KernelTime {
    /// Adds one repetition of `connections` connections between two snapshots.
    pub fn add(&mut self, before: &Snapshot, after: &Snapshot, connections: u64) {
        let mut total = 0u64;
        for (name, &(t1, c1)) in after {
            let (t0, c0) = before.get(name).copied().unwrap_or((0, 0));
            let p = self.programs.entry(name.clone()).or_default();
            let dt = t1.saturating_sub(t0);
            p.run_ns += dt;
            p.runs += c1.saturating_sub(c0);
            total += dt;
        }
        self.connections += connections;
        self.per_repetition_ns
            .push(total as f64 / connections.max(1) as f64);
    }

    pub fn total_ns(&self) -> u64 {
        self.programs.values().map(|p| p.run_ns).sum()
    }

    /// All programs' run time per connection (ns).
    pub fn ns_per_connection(&self) -> f64 {
        if self.connections == 0 {
            f64::NAN
        } else {
            self.total_ns() as f64 / self.connections as f64
        }
    }

    pub fn program_ns_per_connection(&self, p: &ProgramTime) -> f64 {
        p.run_ns as f64 / self.connections.max(1) as f64
    }

    pub fn runs_per_connection(&self, p: &ProgramTime) -> f64 {
        p.runs as f64 / self.connections.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_sums_every_program_between_snapshots() {
        let before = Snapshot::from([("a".into(), (1000, 10)), ("b".into(), (50, 5))]);
        let after = Snapshot::from([("a".into(), (3000, 30)), ("b".into(), (450, 25))]);
        let mut k = KernelTime::default();
        k.add(&before, &after, 10);
        // a: 2000 ns over 20 runs, b: 400 ns over 20 runs; 10 connections.
        assert_eq!(k.total_ns(), 2400);
        assert_eq!(k.ns_per_connection(), 240.0);
        assert_eq!(k.programs["a"].ns_per_run(), 100.0);
        assert_eq!(k.runs_per_connection(&k.programs["b"]), 2.0);
        assert_eq!(k.per_repetition_ns, vec![240.0]);
        // A program that appeared between the snapshots counts from zero.
        let later = Snapshot::from([
            ("a".into(), (3000, 30)),
            ("b".into(), (450, 25)),
            ("c".into(), (100, 10)),
        ]);
        k.add(&after, &later, 10);
        assert_eq!(k.programs["c"].run_ns, 100);
        assert_eq!(k.ns_per_connection(), 2500.0 / 20.0);
    }
}
