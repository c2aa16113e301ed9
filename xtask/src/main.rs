//! Developer and operator tasks: `cargo xtask setup | demo | test | lint | bench`.
//!
//! This crate depends on nothing heavy on purpose: `setup` must build and run on a fresh
//! machine before anything that needs the eBPF toolchain can.
mod fuzz;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "lbctl developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, rust-src for nightly,
    /// bpf-linker). Idempotent: a second run installs nothing.
    Setup,
    /// Set up, build, and run the demo on this machine (needs root).
    Demo,
    /// Set up, build, and run the whole test suite (needs root: the tests use the real kernel).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt --check and clippy with warnings as errors.
    Lint,
    /// Benchmarks (needs root; a report, not a test): lbctl vs kube-proxy-shaped iptables and
    /// nftables datapaths, and the control plane at scale. Writes bench-results/.
    Bench {
        /// Arguments for lb-bench (after `--`), e.g. `-- --quick` or `-- --rounds 20 --counts 1,10000`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Endpoint churn under continuous connects for a long time (needs root): prints connects,
    /// refusals, violations and RSS as it goes; fails on any violation.
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
    },
    /// Run each fuzz target (fuzz/: manifest_parse, engine_plan) for a while with cargo-fuzz
    /// (nightly); fails on the first crash, leaving its input in fuzz/artifacts/.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Builds these binaries of `lbctl-tests` in release mode; returns the path of the first.
fn build_release(bins: &[&str]) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "lbctl-tests"]);
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    run(&mut cmd)?;
    Ok(target_dir()
        .join("release")
        .join(bins.first().context("no binary named")?))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo => {
            setup::run()?;
            run(cargo().args([
                "build",
                "--quiet",
                "-p",
                "lbctl",
                "-p",
                "lbctl-tests",
                "--bins",
            ]))?;
            // Ctrl-C reaches lb-demo too, which cleans up before it exits: wait for it rather
            // than returning the prompt in the middle of its cleanup.
            ctrlc::set_handler(|| {}).context("installing the Ctrl-C handler")?;
            run(&mut Command::new(target_dir().join("debug/lb-demo")))
        }
        Task::Test { args } => {
            setup::run()?;
            // The kernel tests start the `lbctl`, `lb-probe` binaries: build every binary first.
            run(cargo().args(["build", "--workspace", "--bins"]))?;
            // The real-runtime test (tests/tests/runtime.rs) runs the release binary in the
            // image it builds, as the Dockerfile does.
            run(cargo().args(["build", "--release", "-p", "lbctl"]))?;
            let filtered = !args.is_empty();
            run(cargo().args(["test", "--workspace"]).args(args))?;
            // The fuzz targets, briefly, after the tests (not for a filtered run).
            if filtered {
                return Ok(());
            }
            fuzz::run(fuzz::TEST_SECONDS)?;
            // A closing line for whoever reads the end of the log: the fuzz targets ran clean.
            println!("fuzz: {} passed, 0 failed", fuzz::TARGETS.len());
            Ok(())
        }
        Task::Fuzz { seconds } => {
            setup::run()?;
            fuzz::run(seconds)
        }
        Task::Soak { minutes } => {
            setup::run()?;
            let soak = build_release(&["lb-soak", "lb-probe"])?;
            run(Command::new(soak).args(["--minutes", &minutes.to_string()]))
        }
        Task::Bench { args } => {
            setup::run()?;
            let bench = build_release(&["lb-bench"])?;
            // The control-plane and churn parts run the real agent: the release lbctl next to lb-bench.
            run(cargo().args(["build", "--release", "-p", "lbctl", "--bin", "lbctl"]))?;
            // From the workspace root, so bench-results/ lands there.
            run(Command::new(bench).args(args).current_dir(workspace_root()))
        }
        Task::Lint => {
            run(cargo().args(["fmt", "--all", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        }
    }
}
