//! Keeping TCP translations. A TCP connect through a frontend records its translation in
//! `lb_tcp_recent`, an array indexed by the low bits of the socket cookie (a copy; creating
//! socket storage at every connect is an allocation that doubled the programs' time per
//! connection). A later connect whose cookie has the same low bits takes the element over, so
//! before that can happen the keeper runs `lb_iter_tcp_keep` (`lb-ebpf/src/iter.rs`): it copies
//! the translation of every TCP socket still connected to its backend into the socket's own
//! storage (`lb_sock`), where `getpeername` and termination find it for the socket's life.
//!
//! Connects write at most one element each, so a pass after every quarter of the array's
//! capacity of connects ([`Keeper::every`]), counted by the programs' `rewritten` counter (which
//! counts UDP translations too: more passes than needed, never fewer), keeps every socket whose
//! element was not taken over in the meantime.
use std::{os::fd::OwnedFd, path::PathBuf, sync::Mutex};

use aya::maps::{MapData, PerCpuArray};
use lb_common::{Kept, STATS_MAP, stat};

use super::{DatapathConfig, DatapathError, Object, loader, sweep};

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPass {
    /// Sockets whose translation moved into their storage.
    pub kept: u64,
    /// Sockets whose storage the kernel could not create (their translation stays in the array
    /// until a later connect takes the element over).
    pub failed: u64,
    /// Network namespaces walked, the agent's own included.
    pub namespaces: usize,
    /// Namespaces that could not be entered or walked, with why.
    pub errors: Vec<String>,
}

/// The keeping iterator, loaded on the pinned maps.
pub struct Keeper {
    // Owns the program the link runs.
    _ebpf: aya::Ebpf,
    link: OwnedFd,
    stats: PerCpuArray<MapData, u64>,
    netns_dirs: Vec<PathBuf>,
    every: u64,
    /// One pass at a time.
    running: Mutex<()>,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("netns_dirs", &self.netns_dirs)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl Keeper {
    /// Loads `object`'s keeping iterator on the maps pinned under `config.pin_dir` (which must
    /// all exist and have this object's layout: not during a migration). Its passes walk the
    /// agent's network namespace and those whose handles are under `netns_dirs`.
    pub fn load(
        config: &DatapathConfig,
        object: &Object,
        netns_dirs: &[PathBuf],
    ) -> Result<Self, DatapathError> {
        let (mut ebpf, _) = loader::load_on_pinned(config, object)?;
        let btf = aya::Btf::from_sys_fs().map_err(|e| DatapathError::Link {
            program: "lb_iter_tcp_keep".to_owned(),
            detail: format!("reading the kernel's BTF: {e}"),
        })?;
        let link = sweep::link(&mut ebpf, &btf, "lb_iter_tcp_keep", "tcp")?;
        let map = ebpf
            .take_map(STATS_MAP)
            .ok_or_else(|| DatapathError::MissingMap(STATS_MAP.to_owned()))?;
        let stats = PerCpuArray::try_from(map).map_err(|e| DatapathError::map(STATS_MAP, e))?;
        Ok(Self {
            _ebpf: ebpf,
            link,
            stats,
            netns_dirs: netns_dirs.to_vec(),
            every: u64::from(config.capacity.tcp_recent / 4).max(1),
            running: Mutex::new(()),
        })
    }

    /// Translations the programs made since the maps were created (TCP and UDP): a pass is due
    /// when this grew by [`Keeper::every`] since the last one.
    pub fn translations(&self) -> Result<u64, DatapathError> {
        let values = self
            .stats
            .get(&stat::REWRITTEN, 0)
            .map_err(|e| DatapathError::map(STATS_MAP, e))?;
        Ok(values.iter().sum())
    }

    /// A quarter of the array's capacity: the translations after which a pass is due.
    pub fn every(&self) -> u64 {
        self.every
    }

    /// One pass in every namespace to cover. Blocking: call it off the async runtime.
    pub fn run(&self) -> KeepPass {
        let _one = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut pass = KeepPass::default();
        let mut errors = Vec::new();
        let (namespaces, entering) = sweep::each_namespace(&self.netns_dirs, |namespace| {
            match sweep::run::<Kept>(&self.link) {
                Ok(records) => {
                    let failed = records.iter().filter(|k| k.failed != 0).count() as u64;
                    pass.failed += failed;
                    pass.kept += records.len() as u64 - failed;
                }
                Err(e) => errors.push(format!("keeping the TCP translations of {namespace}: {e}")),
            }
        });
        pass.namespaces = namespaces;
        pass.errors = errors;
        pass.errors.extend(entering);
        pass
    }
}
