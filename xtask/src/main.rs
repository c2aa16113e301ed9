//! Developer and operator tasks: `cargo xtask setup | demo | test | lint`.
//!
//! This crate depends on nothing heavy on purpose: `setup` must build and run on a fresh
//! machine before anything that needs the eBPF toolchain can.
mod setup;

use std::process::Command;

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
            let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
            run(&mut Command::new(format!("{target}/debug/lb-demo")))
        }
        Task::Test { args } => {
            setup::run()?;
            // The kernel tests start the `lbctl`, `lb-probe` binaries: build every binary first.
            run(cargo().args(["build", "--workspace", "--bins"]))?;
            run(cargo().args(["test", "--workspace"]).args(args))
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
