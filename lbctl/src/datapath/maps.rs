//! Typed handles on the pinned maps, shared by the writer and the read-only inspection commands.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData, MapInfo, PerCpuArray};
use lb_common::{
    AFFINITY_MAP, AffinityKey, AffinityValue, BACKENDS_MAP, Backend, DEPARTED_CAPACITY,
    DEPARTED_MAP, EVENTS_MAP, FRONTEND_STATS_MAP, FrontendName, FrontendStats, LAYOUT_VERSION,
    MEMBERS_MAP, META_MAP, MemberKey, NAMES_MAP, RevNat, SERVICES_MAP, SLOTS_MAP, SOCK_MAP,
    STATS_MAP, ServiceKey, ServiceValue, TCP_PORTS_MAP, TCP_RECENT_MAP, TcpRecent, V4_FILTER_MAP,
    V4_MASTERS_ENTRIES, V4_MASTERS_MAP, V4MasterEntry, meta, stat,
};

use super::{DatapathError, loader::Capacity};

/// One map of the layout this lbctl expects: its name (also its pin file name), key and value
/// sizes, and how many entries it gets under a [`Capacity`].
pub(crate) struct MapSpec {
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
    pub capacity: fn(&Capacity) -> u32,
}

/// The maps, written once: the loader pins these, [`Maps`] opens them, uninstall removes them.
pub(crate) const MAPS: [MapSpec; 16] = [
    MapSpec {
        name: SERVICES_MAP,
        key_size: size_of::<ServiceKey>(),
        value_size: size_of::<ServiceValue>(),
        // Masters only; each has a frontend id below `frontends`.
        capacity: |c| c.frontends,
    },
    // The IPv4 masters again, direct-mapped: a fixed size the programs' hash is made for.
    MapSpec {
        name: V4_MASTERS_MAP,
        key_size: size_of::<u32>(),
        value_size: size_of::<V4MasterEntry>(),
        capacity: |_| V4_MASTERS_ENTRIES,
    },
    // An array of backend ids, a range per frontend.
    MapSpec {
        name: SLOTS_MAP,
        key_size: size_of::<u32>(),
        value_size: size_of::<u32>(),
        capacity: |c| c.service_entries,
    },
    // An array indexed by backend id: ids 1..capacity (0 is never used).
    MapSpec {
        name: BACKENDS_MAP,
        key_size: size_of::<u32>(),
        value_size: size_of::<Backend>(),
        capacity: |c| c.backends,
    },
    MapSpec {
        name: STATS_MAP,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        capacity: |_| stat::COUNT,
    },
    MapSpec {
        name: FRONTEND_STATS_MAP,
        key_size: size_of::<u32>(),
        value_size: size_of::<FrontendStats>(),
        capacity: |c| c.frontends,
    },
    MapSpec {
        name: META_MAP,
        key_size: size_of::<u32>(),
        value_size: size_of::<u32>(),
        capacity: |_| meta::COUNT,
    },
    MapSpec {
        name: MEMBERS_MAP,
        key_size: size_of::<MemberKey>(),
        value_size: size_of::<u32>(),
        // One membership per backend slot, so as many as slots.
        capacity: |c| c.service_entries,
    },
    MapSpec {
        name: DEPARTED_MAP,
        key_size: size_of::<MemberKey>(),
        value_size: size_of::<u32>(),
        capacity: |_| DEPARTED_CAPACITY,
    },
    // Socket-local storage: one value per socket, no capacity (`max_entries` must be 0).
    MapSpec {
        name: SOCK_MAP,
        key_size: size_of::<i32>(),
        value_size: size_of::<RevNat>(),
        capacity: |_| 0,
    },
    // The latest TCP connects' translations, by the low bits of the socket cookie.
    MapSpec {
        name: TCP_RECENT_MAP,
        key_size: size_of::<u32>(),
        value_size: size_of::<TcpRecent>(),
        capacity: |c| c.tcp_recent,
    },
    // One element, a byte per bucket of ports.
    MapSpec {
        name: TCP_PORTS_MAP,
        key_size: size_of::<u32>(),
        value_size: lb_common::TCP_PORT_BUCKETS,
        capacity: |_| 1,
    },
    // One element, a bit per IPv4 /16.
    MapSpec {
        name: V4_FILTER_MAP,
        key_size: size_of::<u32>(),
        value_size: size_of::<V4FilterWords>(),
        capacity: |_| 1,
    },
    MapSpec {
        name: AFFINITY_MAP,
        key_size: size_of::<AffinityKey>(),
        value_size: size_of::<AffinityValue>(),
        capacity: |c| c.affinity,
    },
    MapSpec {
        name: NAMES_MAP,
        key_size: size_of::<u32>(),
        value_size: size_of::<FrontendName>(),
        capacity: |c| c.frontends,
    },
    // A ring buffer has neither keys nor values; its size is in bytes.
    MapSpec {
        name: EVENTS_MAP,
        key_size: 0,
        value_size: 0,
        capacity: |_| lb_common::EVENTS_RING_BYTES,
    },
];

/// What [`inspect_pinned`] found under a pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pinned {
    /// No map is pinned.
    Absent,
    /// The pinned maps have this lbctl's layout and the configured capacities: programs can
    /// use them as they are.
    Compatible,
    /// The pinned maps must be replaced (another layout, or other capacities): why.
    Replace(String),
}

/// Checks one map's kernel info against its [`MapSpec`].
fn check_layout(pin_dir: &Path, spec: &MapSpec, info: &MapInfo) -> Result<(), DatapathError> {
    if info.key_size() as usize != spec.key_size || info.value_size() as usize != spec.value_size {
        return Err(DatapathError::LayoutMismatch {
            pin_dir: pin_dir.to_path_buf(),
            detail: format!(
                "map {} has key/value sizes {}/{}, this lbctl expects {}/{}",
                spec.name,
                info.key_size(),
                info.value_size(),
                spec.key_size,
                spec.value_size
            ),
        });
    }
    Ok(())
}

pub(crate) fn pin_path(pin_dir: &Path, map: &str) -> PathBuf {
    pin_dir.join(map)
}

fn spec(name: &str) -> &'static MapSpec {
    MAPS.iter()
        .find(|m| m.name == name)
        .expect("every map name is in MAPS")
}

/// Compares the maps pinned under `pin_dir` with this lbctl's layout and `capacity`. Maps of a
/// newer layout version (pinned by a newer lbctl) are refused: their meaning is unknown.
pub(crate) fn inspect_pinned(pin_dir: &Path, capacity: &Capacity) -> Result<Pinned, DatapathError> {
    let mut any = false;
    for spec in &MAPS {
        let path = pin_path(pin_dir, spec.name);
        if !path.exists() {
            continue;
        }
        any = true;
        let info = MapInfo::from_pin(&path).map_err(|e| DatapathError::map(spec.name, e))?;
        if let Err(e) = check_layout(pin_dir, spec, &info) {
            return Ok(Pinned::Replace(e.to_string()));
        }
        let want = (spec.capacity)(capacity);
        if info.max_entries() != want {
            return Ok(Pinned::Replace(format!(
                "map {} has {} entries, {} asked for",
                spec.name,
                info.max_entries(),
                want
            )));
        }
    }
    if !any {
        return Ok(Pinned::Absent);
    }
    let meta_path = pin_path(pin_dir, META_MAP);
    if meta_path.exists() {
        let data = MapData::from_pin(&meta_path).map_err(|e| DatapathError::map(META_MAP, e))?;
        let meta: Array<MapData, u32> = typed(META_MAP, Map::Array(data))?;
        let found = meta
            .get(&meta::LAYOUT_VERSION, 0)
            .map_err(|e| DatapathError::map(META_MAP, e))?;
        if found > LAYOUT_VERSION {
            return Err(version_mismatch(pin_dir, found));
        }
        if found != 0 && found != LAYOUT_VERSION {
            return Ok(Pinned::Replace(format!(
                "maps carry layout version {found}, this lbctl writes {LAYOUT_VERSION}"
            )));
        }
    }
    Ok(Pinned::Compatible)
}

fn version_mismatch(pin_dir: &Path, found: u32) -> DatapathError {
    DatapathError::LayoutMismatch {
        pin_dir: pin_dir.to_path_buf(),
        detail: format!("maps carry layout version {found}, this lbctl expects {LAYOUT_VERSION}"),
    }
}

pub struct Maps {
    /// Frontend -> its master.
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    /// Backend ids of the frontends, a range each (an array: 0 is no backend).
    pub slots: Array<MapData, u32>,
    /// Backend id -> backend (an array: an element with `proto` 0 is no backend).
    pub backends: Array<MapData, Backend>,
    /// Read-write mappings of `slots` and `backends`, made by the writer's first write and
    /// kept as long as the maps ([`super::store`]).
    pub(crate) slots_rw: Option<super::sys::ArrayMapping>,
    pub(crate) backends_rw: Option<super::sys::ArrayMapping>,
    pub stats: PerCpuArray<MapData, u64>,
    pub frontend_stats: PerCpuArray<MapData, FrontendStats>,
    pub meta: Array<MapData, u32>,
    /// (frontend id, backend id) -> 1: the current backend set of each UDP or session-affinity
    /// frontend.
    pub members: HashMap<MapData, MemberKey, u32>,
    /// Client of a frontend -> its backend (LRU hash).
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    /// The IPv4 /16s without frontends ([`super::filter`]); `None` when opened on maps an
    /// lbctl without it pinned (read by the inspection commands only).
    pub v4_filter: Option<Array<MapData, V4FilterWords>>,
    /// The IPv4 masters, direct-mapped ([`super::v4masters`]); `None` when opened on maps an
    /// lbctl without it pinned, whose programs do not read it.
    pub v4_masters: Option<Array<MapData, V4MasterEntry>>,
    /// The buckets of the TCP backends' ports ([`lb_common::TCP_PORTS_MAP`]); `None` when
    /// opened on maps an lbctl without it pinned (read by the inspection commands only).
    pub tcp_ports: Option<Array<MapData, TcpPortMarks>>,
    /// Read-write mapping of `v4_masters`, made by [`Maps::sync_v4_masters`] or the first
    /// write of the masters ([`super::store`]).
    pub(crate) v4_masters_rw: Option<super::sys::ArrayMapping>,
}

/// The element of `lb_v4_filter`.
pub type V4FilterWords = [u64; lb_common::V4_FILTER_WORDS];
/// The element of `lb_tcp_backend_ports`: a byte per bucket, 1 when marked.
pub type TcpPortMarks = [u8; lb_common::TCP_PORT_BUCKETS];

/// Kernel counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub rewritten: u64,
    pub refused: u64,
    /// Destinations looked up that are no frontend (`lb_common::stat::PASSED`).
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
    /// Connected UDP sockets terminated because their backend left the set.
    pub terminated_udp: u64,
    /// Connected TCP sockets terminated (with `--terminate-sockets udp-tcp`).
    pub terminated_tcp: u64,
    /// Sockets to terminate that the kernel refused to destroy.
    pub terminate_failed: u64,
}

/// How [`Maps`] opens pinned maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    ReadWrite,
    ReadOnly,
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
        let present = |name: &str| pin_path(pin_dir, name).exists();
        let maps = Self::build(present, |name| {
            let path = pin_path(pin_dir, name);
            let data = match access {
                Access::ReadWrite => {
                    MapData::from_pin(&path).map_err(|e| DatapathError::map(name, e))?
                }
                Access::ReadOnly => {
                    let fd = super::sys::obj_get(&path, true).map_err(|e| {
                        DatapathError::io(format!("opening {} read-only", path.display()), e)
                    })?;
                    MapData::from_fd(fd).map_err(|e| DatapathError::map(name, e))?
                }
            };
            let info = data.info().map_err(|e| DatapathError::map(name, e))?;
            check_layout(pin_dir, spec(name), &info)?;
            Map::from_map_data(data).map_err(|e| DatapathError::map(name, e))
        })?;
        maps.check_version(pin_dir)?;
        Ok(maps)
    }

    /// Takes the maps out of a freshly loaded object.
    pub(crate) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DatapathError> {
        Self::build(
            |_| true,
            |name| {
                ebpf.take_map(name)
                    .ok_or_else(|| DatapathError::MissingMap(name.to_owned()))
            },
        )
    }

    /// The one place that names each map of [`MAPS`] with its type (`present`: whether a map
    /// an older lbctl may not have pinned is there).
    fn build(
        present: impl Fn(&'static str) -> bool,
        mut get: impl FnMut(&'static str) -> Result<Map, DatapathError>,
    ) -> Result<Self, DatapathError> {
        Ok(Self {
            services: typed(SERVICES_MAP, get(SERVICES_MAP)?)?,
            slots: typed(SLOTS_MAP, get(SLOTS_MAP)?)?,
            backends: typed(BACKENDS_MAP, get(BACKENDS_MAP)?)?,
            slots_rw: None,
            backends_rw: None,
            stats: typed(STATS_MAP, get(STATS_MAP)?)?,
            frontend_stats: typed(FRONTEND_STATS_MAP, get(FRONTEND_STATS_MAP)?)?,
            meta: typed(META_MAP, get(META_MAP)?)?,
            members: typed(MEMBERS_MAP, get(MEMBERS_MAP)?)?,
            affinity: typed(AFFINITY_MAP, get(AFFINITY_MAP)?)?,
            v4_filter: match present(V4_FILTER_MAP) {
                true => Some(typed(V4_FILTER_MAP, get(V4_FILTER_MAP)?)?),
                false => None,
            },
            v4_masters: match present(V4_MASTERS_MAP) {
                true => Some(typed(V4_MASTERS_MAP, get(V4_MASTERS_MAP)?)?),
                false => None,
            },
            v4_masters_rw: None,
            tcp_ports: match present(TCP_PORTS_MAP) {
                true => Some(typed(TCP_PORTS_MAP, get(TCP_PORTS_MAP)?)?),
                false => None,
            },
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
            return Err(version_mismatch(pin_dir, found));
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

    /// Tells the programs the size of `lb_tcp_recent` (a power of two: they index it by the
    /// socket cookie's low bits). Written before the programs are attached or swapped in.
    pub(crate) fn set_tcp_recent(&mut self, elements: u32) -> Result<(), DatapathError> {
        debug_assert!(elements.is_power_of_two());
        self.meta
            .set(meta::TCP_RECENT_MASK, elements - 1, 0)
            .map_err(|e| DatapathError::map(META_MAP, e))
    }

    /// Every backend the array holds (non-empty elements), by id, read through a mapping of
    /// the array (or in batches).
    pub fn backend_entries(&self) -> Result<Vec<(u32, Backend)>, DatapathError> {
        live_elements(self.backends.map(), BACKENDS_MAP, |b: &Backend| {
            b.proto != 0
        })
    }

    /// The IPv4 masters `lb_v4_masters` caches, by key word ([`super::v4masters::word_of`]),
    /// read through a mapping of the array (or in batches); empty when it is not pinned.
    pub fn cached_v4_masters(&self) -> Result<BTreeMap<u64, ServiceValue>, DatapathError> {
        let Some(map) = &self.v4_masters else {
            return Ok(BTreeMap::new());
        };
        let live = live_elements(map.map(), V4_MASTERS_MAP, |e: &V4MasterEntry| {
            e.word & lb_common::v4_master::VALID != 0
        })?;
        Ok(live
            .into_iter()
            .map(|(_, e)| (e.word & lb_common::v4_master::KEY_MASK, e.master))
            .collect())
    }

    /// Every non-zero element of `lb_slots` (index, backend id), read through a mapping of the
    /// array (or in batches).
    pub fn slot_entries(&self) -> Result<Vec<(u32, u32)>, DatapathError> {
        live_elements(self.slots.map(), SLOTS_MAP, |id: &u32| *id != 0)
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
            terminated_udp: sum(stat::TERMINATED_UDP)?,
            terminated_tcp: sum(stat::TERMINATED_TCP)?,
            terminate_failed: sum(stat::TERMINATE_FAILED)?,
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

    /// The counters of the `n` frontend ids from `lo`, each summed over CPUs, read in
    /// `BPF_MAP_LOOKUP_BATCH` calls of at most `chunk` ids (one lookup per id would be a system
    /// call each). `None` when the range cannot be read whole (ids beyond the array, a failed
    /// call), as a lookup of one such id fails.
    pub fn frontend_counters_range(
        &self,
        lo: u32,
        n: usize,
        chunk: usize,
    ) -> Option<Vec<FrontendStats>> {
        use std::os::fd::AsFd as _;
        let cpus = aya::util::nr_cpus().ok()?;
        let per_cpu = size_of::<FrontendStats>().next_multiple_of(8);
        let stride = per_cpu * cpus;
        let chunk = chunk.min(n).max(1);
        let mut keys = vec![0u32; chunk];
        let mut values = vec![0u8; chunk * stride];
        let fd = self.frontend_stats.map().fd().as_fd();
        let mut sums: Vec<FrontendStats> = Vec::with_capacity(n);
        while sums.len() < n {
            let next = lo + sums.len() as u32;
            let want = chunk.min(n - sums.len());
            let read = super::sys::array_lookup_batch(
                fd,
                next.checked_sub(1),
                &mut keys[..want],
                &mut values[..want * stride],
                stride,
            )
            .ok()?;
            if read == 0 {
                return None;
            }
            for (i, key) in keys[..read].iter().enumerate() {
                if *key != lo + sums.len() as u32 {
                    return None;
                }
                let mut sum = FrontendStats::default();
                for cpu in values[i * stride..(i + 1) * stride].chunks_exact(per_cpu) {
                    sum.rewritten += u64::from_ne_bytes(cpu[0..8].try_into().ok()?);
                    sum.refused += u64::from_ne_bytes(cpu[8..16].try_into().ok()?);
                }
                sums.push(sum);
            }
        }
        Some(sums)
    }
}

/// The elements of the array map `data` that `live` keeps (index, value). Through a mapping of
/// the array (it is `BPF_F_MMAPABLE`); batched lookups where it cannot be mapped (the kernel
/// refuses to map a map opened read-only, as the inspection commands open it).
pub(crate) fn live_elements<V: Copy>(
    data: &MapData,
    name: &str,
    live: impl Fn(&V) -> bool,
) -> Result<Vec<(u32, V)>, DatapathError> {
    use std::os::fd::AsFd as _;
    let fd = data.fd().as_fd();
    let len = data
        .info()
        .map_err(|e| DatapathError::map(name, e))?
        .max_entries();
    let mut kept = Vec::new();
    let mapped = super::sys::array_mmap_each(fd, len, |i, v: V| {
        if live(&v) {
            kept.push((i, v));
        }
    });
    if mapped.is_err() {
        kept.clear();
        super::sys::array_lookup_each(fd, len, |i, v: V| {
            if live(&v) {
                kept.push((i, v));
            }
        })
        .map_err(|e| DatapathError::io(format!("reading {name}"), e))?;
    }
    Ok(kept)
}
