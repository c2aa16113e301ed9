//! `cargo xtask soak --minutes N`: the churn test (see `testkit::churn`) for a long time,
//! printing running totals and this process's RSS (it plays the agent: engine + map writer).
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let minutes: f64 = match (args.next().as_deref(), args.next()) {
        (Some("--minutes"), Some(m)) => m.parse()?,
        (None, _) => 5.0,
        _ => bail!("usage: lb-soak [--minutes N]"),
    };
    let seed = testkit::churn::now_ns() as u64;
    println!(
        "soak: {minutes} min, {} services, seed {seed}",
        testkit::churn::SERVICES
    );
    let started = Instant::now();
    let mut last = Instant::now();
    let (totals, violations) = testkit::churn::run(
        Duration::from_secs_f64(minutes * 60.0),
        3,
        seed,
        |t| {
            if last.elapsed() >= Duration::from_secs(10) {
                last = Instant::now();
                println!(
                    "{:>5}s  changes {:>7}  connects {:>8}  refused {:>6}  violations {}  rss {} KiB",
                    started.elapsed().as_secs(),
                    t.changes,
                    t.connects,
                    t.refused,
                    t.violations,
                    rss_kib()
                );
            }
        },
    )?;
    println!(
        "total: {} changes, {} connects ({} reached, {} refused), {} violations, rss {} KiB",
        totals.changes,
        totals.connects,
        totals.reached,
        totals.refused,
        totals.violations,
        rss_kib()
    );
    for v in &violations {
        println!("violation: {v}");
    }
    if totals.violations > 0 {
        bail!("{} violations", totals.violations);
    }
    Ok(())
}
