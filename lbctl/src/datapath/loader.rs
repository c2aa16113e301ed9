//! Loading, attaching and pinning the kernel programs, adopting what an earlier agent pinned,
//! and removing it all.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use lb_common::{BACKENDS_MAP, FRONTEND_STATS_MAP, SERVICES_MAP};

use super::{
    DatapathError,
    maps::{self, Maps},
    system,
};

/// The object built by `build.rs` from `lb-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The programs and the socket hook each one serves.
pub const PROGRAMS: [&str; 2] = ["lb_connect4", "lb_connect6"];

/// Map capacities, set when the maps are created (an adopted map keeps its size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Entries of `lb_services`: one master per frontend plus one slot per backend of it.
    pub service_entries: u32,
    /// Entries of `lb_backends`.
    pub backends: u32,
    /// Frontend ids (size of the per-frontend counters).
    pub frontends: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            service_entries: lb_common::DEFAULT_MAX_SERVICE_ENTRIES,
            backends: lb_common::DEFAULT_MAX_BACKENDS,
            frontends: lb_common::DEFAULT_MAX_FRONTENDS,
        }
    }
}

/// Where and how to install the datapath.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// bpffs directory for the pinned maps and links, e.g. `/sys/fs/bpf/lbctl`.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory whose processes (and descendants) get the socket load balancer.
    pub cgroup: PathBuf,
    pub capacity: Capacity,
}

/// How [`install`] found the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Programs loaded, attached and pinned just now.
    Fresh,
    /// Programs were already attached and pinned; their maps were adopted as they are.
    Adopted,
}

pub(crate) fn link_path(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join("links").join(program)
}

/// Loads and attaches the programs unless they are already pinned under `pin_dir`, in which case
/// the pinned maps are adopted (after a layout check) and nothing is detached: connects keep
/// working on the last programmed state throughout.
pub fn install(config: &DatapathConfig) -> Result<(Maps, Installed), DatapathError> {
    if OBJECT.is_empty() {
        return Err(DatapathError::NoObject);
    }
    system::ensure_pin_dir(&config.pin_dir)?;
    maps::check_pinned_layout(&config.pin_dir)?;
    let all_linked = PROGRAMS
        .iter()
        .all(|p| link_path(&config.pin_dir, p).exists());
    if all_linked {
        let mut maps = Maps::open(&config.pin_dir)?;
        maps.stamp_or_check_version(&config.pin_dir)?;
        return Ok((maps, Installed::Adopted));
    }

    let cgroup = fs::File::open(&config.cgroup)
        .map_err(|e| DatapathError::io(format!("opening cgroup {}", config.cgroup.display()), e))?;
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(&config.pin_dir)
        .map_max_entries(SERVICES_MAP, config.capacity.service_entries)
        .map_max_entries(BACKENDS_MAP, config.capacity.backends)
        .map_max_entries(FRONTEND_STATS_MAP, config.capacity.frontends);
    let pin_paths: Vec<(&str, PathBuf)> = maps::EXPECTED
        .iter()
        .map(|(name, _, _)| (*name, maps::pin_path(&config.pin_dir, name)))
        .collect();
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OBJECT).map_err(DatapathError::Load)?;
    let mut maps = Maps::take(&mut ebpf)?;
    maps.stamp_or_check_version(&config.pin_dir)?;

    system::create_private_dir(&config.pin_dir.join("links"))?;
    for name in PROGRAMS {
        let path = link_path(&config.pin_dir, name);
        if path.exists() {
            continue;
        }
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::MissingProgram(name.to_owned()))?
            .try_into()
            .map_err(|e| DatapathError::program(name, e))?;
        program
            .load()
            .map_err(|e| DatapathError::program(name, e))?;
        // bpf_link attachments to a cgroup always allow other programs beside them.
        let id = program
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| DatapathError::program(name, e))?;
        let link = program
            .take_link(id)
            .map_err(|e| DatapathError::program(name, e))?;
        let link: FdLink = link
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| DatapathError::Link {
                program: name.to_owned(),
                detail: e.to_string(),
            })?;
        link.pin(&path).map_err(|e| DatapathError::Link {
            program: name.to_owned(),
            detail: e.to_string(),
        })?;
    }
    tracing::info!(pin_dir = %config.pin_dir.display(), cgroup = %config.cgroup.display(), "datapath attached");
    Ok((maps, Installed::Fresh))
}

/// Detaches the programs (by removing their pinned links) and removes the pinned maps and the
/// pin directory. Safe to run twice; missing pieces are skipped.
pub fn uninstall(pin_dir: &Path) -> Result<(), DatapathError> {
    let rm = |path: &Path| match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::io(format!("removing {}", path.display()), e)),
    };
    for program in PROGRAMS {
        rm(&link_path(pin_dir, program))?;
    }
    for (name, _, _) in maps::EXPECTED {
        rm(&maps::pin_path(pin_dir, name))?;
    }
    for dir in [pin_dir.join("links"), pin_dir.to_path_buf()] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DatapathError::io(format!("removing {}", dir.display()), e)),
        }
    }
    Ok(())
}
