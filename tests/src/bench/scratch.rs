//! Scratch cgroups and pin directories for the benchmark: the test kit's guards, registered
//! for the Ctrl-C path.
use std::path::Path;

use anyhow::{Context, Result};
use lbctl::datapath::{Capacity, Datapath, DatapathConfig, loader::SocketLbScope};

use super::cleanup::{self, Resource, Tracked};
use crate::{cgroup::CgroupGuard, pins::PinDirGuard};

/// Map sizes big enough for 30,000 services x 10 endpoints (330,000 service entries, 300,000
/// distinct backends). The service and backend maps are `BPF_F_NO_PREALLOC`: their memory
/// follows what they hold (plus the bucket array), not these sizes.
pub fn bench_capacity() -> Capacity {
    Capacity {
        service_entries: 524_288,
        backends: 524_288,
        frontends: 65_536,
        ..Capacity::default()
    }
}

pub fn cgroup(tag: &str) -> Result<Tracked<CgroupGuard>> {
    cleanup::track(
        || CgroupGuard::new(tag),
        |g| Resource::Cgroup(g.path().to_path_buf()),
    )
    .with_context(|| format!("creating cgroup {tag}"))
}

pub fn pin_dir(tag: &str) -> Result<Tracked<PinDirGuard>> {
    cleanup::track(
        || Ok(PinDirGuard::new(tag)),
        |g| Resource::PinDir(g.path().to_path_buf()),
    )
}

pub fn config(pins: &Path, cgroup: &Path) -> DatapathConfig {
    DatapathConfig {
        pin_dir: pins.to_path_buf(),
        cgroup: cgroup.to_path_buf(),
        capacity: bench_capacity(),
        // Every namespace: the benchmark's clients live in namespaces of their own, as pods do.
        scope: SocketLbScope::All,
    }
}

/// A datapath attached to its own scratch cgroup. Field order matters: the maps close, then
/// the programs detach and the pins go, then the cgroup.
pub struct BenchDatapath {
    pub datapath: Datapath,
    pub pins: Tracked<PinDirGuard>,
    pub cgroup: Tracked<CgroupGuard>,
}

impl BenchDatapath {
    pub fn new(tag: &str) -> Result<Self> {
        let cgroup = cgroup(tag)?;
        let pins = pin_dir(tag)?;
        let datapath = Datapath::install(&config(pins.path(), cgroup.path()))
            .context("installing the lbctl datapath")?;
        Ok(Self {
            datapath,
            pins,
            cgroup,
        })
    }
}
