//! `cargo xtask fuzz --seconds N`: runs each cargo-fuzz target of `fuzz/` for N seconds
//! (`cargo +nightly fuzz run TARGET -- -max_total_time=N`). `cargo xtask test` runs them for
//! [`TEST_SECONDS`] each after the cargo tests.
//!
//! The fuzz project is its own workspace, built with nightly and sanitizers into `fuzz/target`:
//! it never touches the main build. libFuzzer keeps what it learns in `fuzz/corpus/TARGET`
//! (local, ignored by git) and starts from the seeds in `fuzz/seeds/TARGET`; a crash leaves its
//! input in `fuzz/artifacts/TARGET/`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::run as exec;

/// The targets, in `fuzz/fuzz_targets/`.
pub const TARGETS: [&str; 2] = ["manifest_parse", "engine_plan"];

/// Seconds per target in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 20;

/// An input that takes over 10 s is a finding. Inputs up to 16 KiB: the seeds are a few KiB, and
/// much larger inputs reach the known quadratic cases of the YAML parser (see
/// `lbctl/tests/hostile_input.rs`) instead of new code.
const LIBFUZZER_OPTIONS: [&str; 2] = ["-timeout=10", "-max_len=16384"];

fn fuzz_dir() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("fuzz"))
        .context("the workspace root")
}

/// `cargo +nightly`, without what the stable `cargo xtask` run put in the environment (which
/// would select the stable compiler or the shared target directory).
fn cargo_nightly() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    // The targets never load the datapath: skip building the BPF object (fuzz/ has its own
    // target directory, so this never reaches the main build).
    cmd.env("AYA_BUILD_SKIP", "1");
    cmd
}

/// Runs every target for `seconds` seconds; fails on the first target that finds a crash.
pub fn run(seconds: u64) -> Result<()> {
    let dir = fuzz_dir()?;
    for target in TARGETS {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        eprintln!("fuzz: {target} for {seconds} s");
        exec(
            cargo_nightly()
                .current_dir(&dir)
                .args(["fuzz", "run", target])
                .arg(&corpus)
                .arg(dir.join("seeds").join(target))
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .args(LIBFUZZER_OPTIONS),
        )
        .with_context(|| {
            format!(
                "fuzz target {target} failed: its input is in fuzz/artifacts/{target}/; replay it \
                 with `cargo +nightly fuzz run {target} FILE` in fuzz/"
            )
        })?;
    }
    Ok(())
}
