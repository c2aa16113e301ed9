//! Scratch pin directories and datapaths attached to scratch cgroups.
use std::path::{Path, PathBuf};

use anyhow::Result;
use lbctl::datapath::{Capacity, Datapath, DatapathConfig};

use crate::cgroup::CgroupGuard;

/// A pin directory under /sys/fs/bpf, uninstalled (links detached, maps unpinned) on drop.
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
    }
}

/// Small maps: tests do not need the production sizes.
pub fn test_capacity() -> Capacity {
    Capacity {
        service_entries: 4096,
        backends: 1024,
        frontends: 1024,
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
        let cgroup = CgroupGuard::new(tag)?;
        let pins = PinDirGuard::new(tag);
        let datapath = Datapath::install(&Scratch::config_for(&pins, &cgroup))?;
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
        }
    }

    pub fn config(&self) -> DatapathConfig {
        Self::config_for(&self.pins, &self.cgroup)
    }
}
