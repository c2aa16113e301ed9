//! Scratch pin directories and datapaths attached to scratch cgroups.
use std::path::{Path, PathBuf};

use anyhow::Result;
use lbctl::datapath::{Capacity, Datapath, DatapathConfig, loader::SocketLbScope};

use crate::cgroup::CgroupGuard;

/// A pin directory under /sys/fs/bpf, uninstalled (links detached, maps unpinned) on drop,
/// with the monitor socket an agent serving it made (left behind when the agent was killed).
pub struct PinDirGuard {
    path: PathBuf,
}

impl PinDirGuard {
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        Self {
            path: Path::new(lbctl::datapath::system::BPFFS_ROOT).join(crate::unique_name(tag)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        if let Err(e) = lbctl::datapath::uninstall(&self.path) {
            eprintln!("warning: cleaning {}: {e}", self.path.display());
        }
        let _ = std::fs::remove_file(lbctl::monitor::socket_path(&self.path));
    }
}

/// Small maps: tests do not need the production sizes.
pub fn test_capacity() -> Capacity {
    Capacity {
        service_entries: 4096,
        backends: 1024,
        frontends: 1024,
        affinity: 1024,
        tcp_recent: 1024,
    }
}

/// A scratch cgroup with a datapath attached to it. Field order matters: the pins go (and the
/// programs detach) before the cgroup is removed.
pub struct Scratch {
    pub datapath: Datapath,
    pub pins: PinDirGuard,
    pub cgroup: CgroupGuard,
}

impl Scratch {
    pub fn new(tag: &str) -> Result<Self> {
        Self::with_scope(tag, SocketLbScope::All)
    }

    /// As [`Scratch::new`], with a socket LB scope.
    pub fn with_scope(tag: &str, scope: SocketLbScope) -> Result<Self> {
        let cgroup = CgroupGuard::new(tag)?;
        let pins = PinDirGuard::new(tag);
        let config = DatapathConfig {
            scope,
            ..Scratch::config_for(&pins, &cgroup)
        };
        let datapath = Datapath::install(&config)?;
        Ok(Self {
            datapath,
            pins,
            cgroup,
        })
    }

    pub fn config_for(pins: &PinDirGuard, cgroup: &CgroupGuard) -> DatapathConfig {
        DatapathConfig {
            pin_dir: pins.path().to_path_buf(),
            cgroup: cgroup.path().to_path_buf(),
            capacity: test_capacity(),
            scope: SocketLbScope::All,
        }
    }

    pub fn config(&self) -> DatapathConfig {
        Self::config_for(&self.pins, &self.cgroup)
    }
}
