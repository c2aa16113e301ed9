//! Test kit for lbctl's real-kernel tests and the demo: scratch cgroups and pin directories that
//! clean up after themselves (also when a test fails), processes started inside a cgroup, and
//! backends that say who they are.
//!
//! Every kernel test needs root with CAP_BPF and CAP_SYS_ADMIN. Without them the kit fails
//! loudly ([`require_root`]): a kernel test never passes by skipping.
pub mod agent;
pub mod backends;
pub mod bench;
pub mod cgroup;
pub mod churn;
pub mod demo;
pub mod dns;
pub mod lifecycle;
pub mod monitor;
pub mod netns;
pub mod pins;
pub mod podman;
pub mod ports;
pub mod probe;
pub mod sockets;
pub mod topology;

use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test (in this or another process) uses: `lbctl-test-<pid>-<n>-<tag>`.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "lbctl-test-{}-{}-{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `bpftool` with `args` and returns what it printed; an error (with its stderr) when it
/// fails or is missing (`cargo xtask setup` installs it).
pub fn bpftool<I, S>(args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use anyhow::Context as _;
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = std::process::Command::new("bpftool")
        .args(&args)
        .output()
        .context("running bpftool (`cargo xtask setup` installs it)")?;
    if !out.status.success() {
        anyhow::bail!(
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The repository's root directory (README, docs/, manifests/).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(
            || std::path::PathBuf::from("."),
            std::path::Path::to_path_buf,
        )
}

/// A scratch directory under the system temp dir, removed (with its content) on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fails with a clear message when the process cannot touch BPF and cgroups.
pub fn require_root() {
    use std::os::unix::fs::MetadataExt;
    // The owner of /proc/self is the effective user of this process.
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    assert_eq!(
        euid, 0,
        "lbctl's kernel tests must run as root (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN); they never skip"
    );
}
