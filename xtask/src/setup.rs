//! `cargo xtask setup`: everything a fresh Debian machine lacks to build and test lbctl.
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run as exec;

/// Debian packages: LLVM 22 for bpf-linker (and its `llvm-objcopy`, with which the build strips
/// the eBPF object's DWARF), the tools the tests and the demo drive.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
    "iptables",
    "nftables",
    "curl",
    "dnsmasq-base",
    "dnsutils",
    // libFuzzer (C++) for the fuzz targets: libfuzzer-sys builds it with the cc crate.
    "g++",
    // The real-runtime test (tests/tests/runtime.rs): `podman kube play` of the install's pod
    // spec, with runc (crun refuses hybrid cgroup layouts) and catatonit (podman's pause image).
    "podman",
    "runc",
    "catatonit",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The date of the nightly toolchain the kernel programs are built with (lbctl's build script
/// runs `cargo +nightly`); manifests/Dockerfile installs the same one.
const NIGHTLY_DATE: &str = "2026-05-20";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The toolchain called `nightly` must be the pinned one: a different nightly may build
/// different kernel programs (or none).
fn nightly_date() -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("no nightly toolchain: `rustup toolchain install nightly-{NIGHTLY_DATE}`")?;
    let manifest =
        std::path::Path::new(sysroot.trim()).join("lib/rustlib/multirust-channel-manifest.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let date = text
        .lines()
        .find_map(|l| l.strip_prefix("date = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .with_context(|| format!("no date in {}", manifest.display()))?;
    if date != NIGHTLY_DATE {
        bail!(
            "the `nightly` toolchain is of {date}, lbctl builds with nightly-{NIGHTLY_DATE}: \
             `rustup toolchain install nightly-{NIGHTLY_DATE}` and make it `nightly` \
             (or update NIGHTLY_DATE here and in manifests/Dockerfile)"
        );
    }
    Ok(())
}

fn rust_src() -> Result<()> {
    let have = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if have {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    exec(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
            ])
            .args(["--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

/// cargo-fuzz, for `cargo xtask fuzz` (it builds the targets with `cargo +nightly fuzz`).
fn cargo_fuzz() -> Result<()> {
    let cargo = || Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if output(cargo().args(["fuzz", "--version"])).is_some_and(|v| v.contains(CARGO_FUZZ_VERSION)) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    exec(cargo().args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]))
}

pub fn run() -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask setup installs Debian packages and the tests attach BPF programs: run it as root"
        );
    }
    apt().context("installing Debian packages")?;
    rust_src().context("installing rust-src for nightly")?;
    nightly_date().context("checking the nightly toolchain")?;
    bpf_linker().context("installing bpf-linker")?;
    cargo_fuzz().context("installing cargo-fuzz")?;
    Ok(())
}

/// The owner of `/proc/self` is the effective user of this process.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
