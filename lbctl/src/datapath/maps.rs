//! Typed handles on the pinned maps, shared by the writer and the read-only inspection commands.
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapInfo, PerCpuArray};
use lb_common::{
    AFFINITY_MAP, AffinityKey, AffinityValue, BACKENDS_MAP, Backend, EVENTS_MAP,
    FRONTEND_STATS_MAP, FrontendName, FrontendStats, LAYOUT_VERSION, MEMBERS_MAP, META_MAP,
    MemberKey, NAMES_MAP, REVNAT_MAP, RevNat, SERVICES_MAP, STATS_MAP, ServiceKey, ServiceValue,
    meta, stat,
};

use super::DatapathError;

/// The maps this version of lbctl expects, with their key and value sizes.
pub(crate) const EXPECTED: [(&str, usize, usize); 10] = [
    (
        SERVICES_MAP,
        size_of::<ServiceKey>(),
        size_of::<ServiceValue>(),
    ),
    (BACKENDS_MAP, size_of::<u32>(), size_of::<Backend>()),
    (STATS_MAP, size_of::<u32>(), size_of::<u64>()),
    (
        FRONTEND_STATS_MAP,
        size_of::<u32>(),
        size_of::<FrontendStats>(),
    ),
    (META_MAP, size_of::<u32>(), size_of::<u32>()),
    (MEMBERS_MAP, size_of::<MemberKey>(), size_of::<u32>()),
    (REVNAT_MAP, size_of::<u64>(), size_of::<RevNat>()),
    (
        AFFINITY_MAP,
        size_of::<AffinityKey>(),
        size_of::<AffinityValue>(),
    ),
    (NAMES_MAP, size_of::<u32>(), size_of::<FrontendName>()),
    // A ring buffer has neither keys nor values.
    (EVENTS_MAP, 0, 0),
];

pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub stats: PerCpuArray<MapData, u64>,
    pub frontend_stats: PerCpuArray<MapData, FrontendStats>,
    pub meta: Array<MapData, u32>,
    /// (frontend id, backend id) -> 1: each frontend's current backend set.
    pub members: HashMap<MapData, MemberKey, u32>,
    /// Socket cookie -> the socket's last translation (LRU hash).
    pub revnat: HashMap<MapData, u64, RevNat>,
    /// Client of a frontend -> its backend (LRU hash).
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
}

/// Kernel counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub rewritten: u64,
    pub refused: u64,
    pub passed: u64,
    pub retried: u64,
    /// Replies (`recvmsg`) and peer addresses (`getpeername`) shown as the service address.
    pub reversed: u64,
    /// Frontend destinations left alone because the socket was in another network namespace
    /// (scope `host-only`).
    pub foreign_netns: u64,
    /// Connects and datagrams that kept their backend through session affinity.
    pub affinity: u64,
    /// Datagrams of unconnected UDP sockets that kept their socket's backend.
    pub sticky: u64,
}

/// How [`Maps`] opens pinned maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    ReadWrite,
    ReadOnly,
}

/// Checks one opened map against [`EXPECTED`].
fn check_layout(pin_dir: &Path, name: &str, data: &MapData) -> Result<(), DatapathError> {
    let info = data.info().map_err(|e| DatapathError::map(name, e))?;
    let Some((_, key, value)) = EXPECTED.iter().find(|(n, _, _)| *n == name) else {
        return Ok(());
    };
    if info.key_size() as usize != *key || info.value_size() as usize != *value {
        return Err(DatapathError::LayoutMismatch {
            pin_dir: pin_dir.to_path_buf(),
            detail: format!(
                "map {name} has key/value sizes {}/{}, this lbctl expects {key}/{value}",
                info.key_size(),
                info.value_size()
            ),
        });
    }
    Ok(())
}

pub(crate) fn pin_path(pin_dir: &Path, map: &str) -> PathBuf {
    pin_dir.join(map)
}

/// Checks that the map pinned at `path` has the key and value sizes this lbctl expects.
pub(crate) fn check_pinned_layout(pin_dir: &Path) -> Result<(), DatapathError> {
    for (name, key, value) in EXPECTED {
        let path = pin_path(pin_dir, name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| DatapathError::map(name, e))?;
        if info.key_size() as usize != key || info.value_size() as usize != value {
            return Err(DatapathError::LayoutMismatch {
                pin_dir: pin_dir.to_path_buf(),
                detail: format!(
                    "map {name} has key/value sizes {}/{}, this lbctl expects {key}/{value}",
                    info.key_size(),
                    info.value_size()
                ),
            });
        }
    }
    Ok(())
}

fn typed<T>(name: &str, map: Map) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|e| DatapathError::map(name, e))
}

impl Maps {
    /// Opens the maps pinned under `pin_dir` and checks their layout.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::open_with(pin_dir, Access::ReadWrite)
    }

    /// Opens the pinned maps through read-only file descriptors (`BPF_F_RDONLY`): what the
    /// inspection commands use, so they cannot change the datapath even by mistake.
    pub fn open_read_only(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::open_with(pin_dir, Access::ReadOnly)
    }

    fn open_with(pin_dir: &Path, access: Access) -> Result<Self, DatapathError> {
        if !pin_path(pin_dir, SERVICES_MAP).exists() {
            return Err(DatapathError::NotInstalled(pin_dir.to_path_buf()));
        }
        let open = |name: &str| -> Result<Map, DatapathError> {
            let path = pin_path(pin_dir, name);
            let data = match access {
                Access::ReadWrite => {
                    MapData::from_pin(&path).map_err(|e| DatapathError::map(name, e))?
                }
                Access::ReadOnly => {
                    let fd = super::sys::open_pinned_read_only(&path).map_err(|e| {
                        DatapathError::io(format!("opening {} read-only", path.display()), e)
                    })?;
                    MapData::from_fd(fd).map_err(|e| DatapathError::map(name, e))?
                }
            };
            check_layout(pin_dir, name, &data)?;
            Map::from_map_data(data).map_err(|e| DatapathError::map(name, e))
        };
        let maps = Self {
            services: typed(SERVICES_MAP, open(SERVICES_MAP)?)?,
            backends: typed(BACKENDS_MAP, open(BACKENDS_MAP)?)?,
            stats: typed(STATS_MAP, open(STATS_MAP)?)?,
            frontend_stats: typed(FRONTEND_STATS_MAP, open(FRONTEND_STATS_MAP)?)?,
            meta: typed(META_MAP, open(META_MAP)?)?,
            members: typed(MEMBERS_MAP, open(MEMBERS_MAP)?)?,
            revnat: typed(REVNAT_MAP, open(REVNAT_MAP)?)?,
            affinity: typed(AFFINITY_MAP, open(AFFINITY_MAP)?)?,
        };
        maps.check_version(pin_dir)?;
        Ok(maps)
    }

    /// Takes the maps out of a freshly loaded object.
    pub(crate) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DatapathError> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| DatapathError::MissingMap(name.to_owned()))
        };
        Ok(Self {
            services: typed(SERVICES_MAP, take(SERVICES_MAP)?)?,
            backends: typed(BACKENDS_MAP, take(BACKENDS_MAP)?)?,
            stats: typed(STATS_MAP, take(STATS_MAP)?)?,
            frontend_stats: typed(FRONTEND_STATS_MAP, take(FRONTEND_STATS_MAP)?)?,
            meta: typed(META_MAP, take(META_MAP)?)?,
            members: typed(MEMBERS_MAP, take(MEMBERS_MAP)?)?,
            revnat: typed(REVNAT_MAP, take(REVNAT_MAP)?)?,
            affinity: typed(AFFINITY_MAP, take(AFFINITY_MAP)?)?,
        })
    }

    /// Fresh maps get the layout version; adopted ones must carry ours.
    pub(crate) fn stamp_or_check_version(&mut self, pin_dir: &Path) -> Result<(), DatapathError> {
        match self
            .meta
            .get(&meta::LAYOUT_VERSION, 0)
            .map_err(|e| DatapathError::map(META_MAP, e))?
        {
            0 => self
                .meta
                .set(meta::LAYOUT_VERSION, LAYOUT_VERSION, 0)
                .map_err(|e| DatapathError::map(META_MAP, e)),
            _ => self.check_version(pin_dir),
        }
    }

    fn check_version(&self, pin_dir: &Path) -> Result<(), DatapathError> {
        let found = self
            .meta
            .get(&meta::LAYOUT_VERSION, 0)
            .map_err(|e| DatapathError::map(META_MAP, e))?;
        if found != LAYOUT_VERSION {
            return Err(DatapathError::LayoutMismatch {
                pin_dir: pin_dir.to_path_buf(),
                detail: format!(
                    "maps carry layout version {found}, this lbctl expects {LAYOUT_VERSION}"
                ),
            });
        }
        Ok(())
    }

    /// Sets the socket LB scope the programs read at every forward hook: the host network
    /// namespace's cookie first, then the scope that makes them use it.
    pub(crate) fn set_scope(
        &mut self,
        host_only: bool,
        host_netns_cookie: u64,
    ) -> Result<(), DatapathError> {
        let set = |maps: &mut Self, index: u32, value: u32| {
            maps.meta
                .set(index, value, 0)
                .map_err(|e| DatapathError::map(META_MAP, e))
        };
        set(self, meta::HOST_NETNS_COOKIE_LO, host_netns_cookie as u32)?;
        set(
            self,
            meta::HOST_NETNS_COOKIE_HI,
            (host_netns_cookie >> 32) as u32,
        )?;
        let scope = if host_only {
            meta::SCOPE_HOST_ONLY
        } else {
            meta::SCOPE_ALL
        };
        set(self, meta::SCOPE, scope)
    }

    /// Number of live reverse-translation entries (iterates the map: for inspection and tests).
    pub fn revnat_entries(&self) -> usize {
        self.revnat.keys().filter(Result::is_ok).count()
    }

    /// Number of live session affinity entries (iterates the map).
    pub fn affinity_entries(&self) -> usize {
        self.affinity.keys().filter(Result::is_ok).count()
    }

    /// Global kernel counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let sum = |index: u32| -> Result<u64, DatapathError> {
            let values = self
                .stats
                .get(&index, 0)
                .map_err(|e| DatapathError::map(STATS_MAP, e))?;
            Ok(values.iter().sum())
        };
        Ok(Counters {
            rewritten: sum(stat::REWRITTEN)?,
            refused: sum(stat::REFUSED)?,
            passed: sum(stat::PASSED)?,
            retried: sum(stat::RETRIED)?,
            reversed: sum(stat::REVERSED)?,
            foreign_netns: sum(stat::FOREIGN_NETNS)?,
            affinity: sum(stat::AFFINITY)?,
            sticky: sum(stat::STICKY)?,
        })
    }

    /// Counters of one frontend id, summed over CPUs.
    pub fn frontend_counters(&self, frontend_id: u32) -> Result<FrontendStats, DatapathError> {
        let values = self
            .frontend_stats
            .get(&frontend_id, 0)
            .map_err(|e| DatapathError::map(FRONTEND_STATS_MAP, e))?;
        Ok(values
            .iter()
            .fold(FrontendStats::default(), |acc, v| FrontendStats {
                rewritten: acc.rewritten + v.rewritten,
                refused: acc.refused + v.refused,
            }))
    }
}
