//! Scratch cgroup v2 directories.
use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// A child cgroup of the cgroup2 root, removed on drop after its processes are killed.
pub struct CgroupGuard {
    path: PathBuf,
}

impl CgroupGuard {
    pub fn new(tag: &str) -> Result<Self> {
        crate::require_root();
        let root = lbctl::datapath::system::cgroup2_root()?;
        let path = root.join(crate::unique_name(tag));
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves a process into this cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", self.path.display()))
    }

    fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.pids().is_empty() || Instant::now() > deadline {
                break;
            }
            // cgroup.kill (5.14+) SIGKILLs every process in the cgroup at once.
            let _ = fs::write(self.path.join("cgroup.kill"), "1");
            thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..100 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}
