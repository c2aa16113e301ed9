//! The seam between the writer's logic and the maps: the four tables the writer programs
//! (`lb_services`, `lb_slots`, `lb_backends`, `lb_members`) as a small trait of batched
//! operations. `lb_backends` and `lb_slots` are arrays: deleting a backend clears its element's
//! `proto` (the rest stays until the id is reused), a freed range of slots is written as
//! zeroes, and a dump leaves the empty elements (`proto` 0, slot 0) out. Beside them the trait
//! writes and reads `lb_v4_filter` ([`super::filter`]) and `lb_tcp_backend_ports` (the
//! buckets of the TCP backends' ports), one element each, written whole.
//!
//! [`Maps`] implements it on the kernel's maps: the two hash maps with one
//! `BPF_MAP_UPDATE_BATCH` or `BPF_MAP_DELETE_BATCH` call per batch (`sys`), the two arrays
//! with plain stores through a read-write mapping of each (`BPF_F_MMAPABLE`), made on the
//! first write and kept as long as the maps. [`super::fake`] has an in-memory implementation
//! and a fault-injecting wrapper for the writer's unit tests.
//!
//! A batch is applied in order, one element at a time, each element written whole. A failing
//! element stops the batch: the elements before it are applied, the ones after it are not
//! attempted ([`BatchError::done`]). Deleting a key that is not there is not a failure.
use std::collections::BTreeMap;
use std::os::fd::AsFd as _;

use aya::maps::IterableMap as _;
use lb_common::{
    BACKENDS_MAP, Backend, MEMBERS_MAP, MemberKey, SERVICES_MAP, SLOTS_MAP, ServiceKey,
    ServiceValue, TCP_PORTS_MAP, V4_FILTER_MAP, V4_MASTERS_MAP, V4MasterEntry,
};

use super::{
    DatapathError,
    filter::V4Filter,
    maps::{Maps, TcpPortMarks},
    ports::PortMarks,
    sys, v4masters,
};

/// A batch that stopped at element `done` (the elements before it were applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchError {
    pub done: usize,
    pub reason: String,
}

/// Sizes of the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Elements of `lb_slots` (the backend ids of every frontend, a range each).
    pub slots: u32,
    /// Backends `lb_backends` can hold; backend ids are 1..=backends (the array has one
    /// element more, index 0, never used).
    pub backends: u32,
    /// Entries of `lb_members`.
    pub members: u32,
    /// Frontend ids are 1..frontends (the per-frontend counters' size).
    pub frontends: u32,
}

/// Everything the four tables hold, in key order (the arrays without their zero elements).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDump {
    /// Masters.
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// Non-zero elements of `lb_slots`: index -> backend id.
    pub slots: BTreeMap<u32, u32>,
    pub backends: BTreeMap<u32, Backend>,
    pub members: std::collections::BTreeSet<MemberKey>,
}

/// The tables the writer programs.
pub trait LbMaps {
    fn limits(&self) -> Limits;
    /// Reads every entry of the four tables.
    fn dump(&self) -> Result<MapDump, DatapathError>;
    /// Element `index` of `lb_slots`: a backend id, 0 when empty (or beyond the array). The
    /// writer reads a frontend's backend ids back from here rather than keeping a copy.
    fn slot(&self, index: u32) -> u32;
    /// The backend of id `index` in `lb_backends`, `None` when its element is empty (`proto`
    /// 0) or beyond the array. The writer reads backend values from here rather than keeping
    /// a copy.
    fn backend(&self, id: u32) -> Option<Backend>;
    /// Writes `ids[i]` into element `indexes[i]` of `lb_slots` (zero clears it).
    fn write_slots(&mut self, indexes: &[u32], ids: &[u32]) -> Result<(), BatchError>;
    /// Writes `values[i]` into element `ids[i]` of `lb_backends`. The writer writes a new
    /// backend as it gives it an id, one element per call: no reader reaches the element before
    /// a later write of `lb_slots` refers to it.
    fn update_backends(&mut self, ids: &[u32], values: &[Backend]) -> Result<(), BatchError>;
    fn delete_backends(&mut self, ids: &[u32]) -> Result<(), BatchError>;
    /// Writes masters.
    fn update_services(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Result<(), BatchError>;
    fn delete_services(&mut self, keys: &[ServiceKey]) -> Result<(), BatchError>;
    /// Adds memberships (value 1).
    fn update_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError>;
    fn delete_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError>;
    /// Writes `lb_v4_filter` whole (one element).
    fn write_v4_filter(&mut self, filter: &V4Filter) -> Result<(), String>;
    /// What `lb_v4_filter` holds (`None` when it cannot be read).
    fn v4_filter(&self) -> Option<V4Filter>;
    /// Writes `lb_tcp_backend_ports` whole (one element).
    fn write_tcp_ports(&mut self, marks: &TcpPortMarks) -> Result<(), String>;
    /// What `lb_tcp_backend_ports` holds (`None` when it cannot be read).
    fn tcp_ports(&self) -> Option<TcpPortMarks>;
}

fn failure(offset: usize, f: sys::BatchFailure) -> BatchError {
    BatchError {
        done: offset + f.done,
        reason: f.error.to_string(),
    }
}

/// Writes `keys[i] -> values[i]`. ENOMEM is retried from the failing element: a map without
/// preallocation (pinned by an older lbctl) allocates each element from per-CPU caches that
/// the kernel refills only between system calls, so a long batch can run them dry.
fn update<K: Copy, V: Copy>(
    fd: std::os::fd::BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    let mut start = 0;
    let mut stalls = 0;
    loop {
        match sys::map_update_batch(fd, &keys[start..], &values[start..]) {
            Ok(()) => return Ok(()),
            Err(f) if f.error.raw_os_error() == Some(libc::ENOMEM) && stalls < 3 => {
                stalls = if f.done == 0 { stalls + 1 } else { 0 };
                start += f.done;
            }
            Err(f) => return Err(failure(start, f)),
        }
    }
}

/// Deletes `keys`, skipping the ones that are not there (the kernel stops a batch at them).
fn delete<K: Copy>(fd: std::os::fd::BorrowedFd<'_>, keys: &[K]) -> Result<(), BatchError> {
    let mut start = 0;
    while start < keys.len() {
        match sys::map_delete_batch(fd, &keys[start..]) {
            Ok(()) => return Ok(()),
            Err(f) if f.error.raw_os_error() == Some(libc::ENOENT) => start += f.done + 1,
            Err(f) => return Err(failure(start, f)),
        }
    }
    Ok(())
}

/// The read-write mapping of `map`, made on first use.
fn mapping<'a>(
    mapping: &'a mut Option<sys::ArrayMapping>,
    map: &aya::maps::MapData,
    name: &str,
    value_size: usize,
) -> Result<&'a mut sys::ArrayMapping, BatchError> {
    if mapping.is_none() {
        let len = map.info().map_or(0, |i| i.max_entries());
        let made =
            sys::ArrayMapping::new(map.fd().as_fd(), len, value_size).map_err(|e| BatchError {
                done: 0,
                reason: format!("mapping {name}: {e}"),
            })?;
        *mapping = Some(made);
    }
    Ok(mapping
        .as_mut()
        .unwrap_or_else(|| unreachable!("made above")))
}

/// Writes `values[i]` into element `index(i)` of an array through its mapping (made on first
/// use); then, with `publish`, a fence, so the stores precede the caller's next system call.
fn write_array<V: Copy>(
    mapping_slot: &mut Option<sys::ArrayMapping>,
    map: &aya::maps::MapData,
    name: &str,
    index: impl Fn(usize) -> u32,
    values: &[V],
    publish: bool,
) -> Result<(), BatchError> {
    let mapping = mapping(mapping_slot, map, name, size_of::<V>())?;
    let mut result = Ok(());
    for (i, &v) in values.iter().enumerate() {
        if let Err(reason) = mapping.write(index(i), v) {
            result = Err(BatchError { done: i, reason });
            break;
        }
    }
    // SAFETY (of the ordering, no unsafe code here): the programs read these elements only
    // through a master (`lb_slots`) or a slot (`lb_backends`) published by a later `bpf()`
    // call of the writer, and this fence keeps every store above (the new backends' before
    // it too) before that call; the system call itself orders them for the other CPUs.
    if publish {
        sys::ArrayMapping::publish_fence();
    }
    result
}

impl Maps {
    /// Makes the mappings of `lb_slots` and `lb_backends` the writer reads its frontends'
    /// backend ids and the backends' values through (and writes through), so that reading
    /// them costs no system call. Unmappable arrays (a read-only descriptor) keep reading
    /// through lookups, and fail on the first write.
    pub(crate) fn for_writing(mut self) -> Self {
        let arrays = [
            (
                &mut self.slots_rw,
                self.slots.map(),
                SLOTS_MAP,
                size_of::<u32>(),
            ),
            (
                &mut self.backends_rw,
                self.backends.map(),
                BACKENDS_MAP,
                size_of::<Backend>(),
            ),
        ];
        for (slot, map, name, value_size) in arrays {
            if let Err(e) = mapping(slot, map, name, value_size) {
                tracing::debug!(reason = %e.reason, "{name} not mapped yet");
            }
        }
        self
    }

    /// Marks the port of every TCP backend `lb_backends` holds in `lb_tcp_backend_ports`
    /// ([`super::ports`]), before programs that mark none at connect run on maps whose older
    /// programs marked a port only once a TCP connect was sent to it. Returns the buckets
    /// marked, `None` when the maps have no such array.
    pub(crate) fn mark_backend_ports(&mut self) -> Result<Option<usize>, DatapathError> {
        if self.tcp_ports.is_none() {
            return Ok(None);
        }
        let backends = self.backend_entries()?;
        let marks = PortMarks::adopted(self.tcp_ports(), backends.iter().map(|(_, b)| b));
        if let Some(pending) = marks.pending() {
            self.write_tcp_ports(pending)
                .map_err(DatapathError::TcpPorts)?;
        }
        Ok(Some(marks.count()))
    }

    /// Makes `lb_v4_masters` agree with `lb_services` ([`super::v4masters::sync`]): before
    /// programs that read it are attached or swapped in, and whenever a writer opens maps it
    /// did not keep itself. `None` when the maps have no such array (pinned by an older lbctl,
    /// whose programs do not read it).
    pub(crate) fn sync_v4_masters(
        &mut self,
    ) -> Result<Option<v4masters::SyncReport>, DatapathError> {
        let Some(map) = &self.v4_masters else {
            return Ok(None);
        };
        let mut masters = BTreeMap::new();
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(|e| DatapathError::map(SERVICES_MAP, e))?;
            masters.insert(key, value);
        }
        let elements = mapping(
            &mut self.v4_masters_rw,
            map.map(),
            V4_MASTERS_MAP,
            size_of::<V4MasterEntry>(),
        )
        .map_err(|e| DatapathError::V4Masters(e.reason))?;
        let report = v4masters::sync(elements, &masters);
        sys::ArrayMapping::publish_fence();
        tracing::debug!(
            written = report.written,
            cleared = report.cleared,
            cached = report.cached,
            uncached = report.uncached,
            "{V4_MASTERS_MAP} synced with {SERVICES_MAP}"
        );
        Ok(Some(report))
    }

    /// The mapping of `lb_v4_masters` the writes of the masters keep it through, `None` when
    /// the maps have no such array; made on first use.
    fn v4_masters_elements(&mut self) -> Result<Option<&mut sys::ArrayMapping>, BatchError> {
        match &self.v4_masters {
            None => Ok(None),
            Some(map) => mapping(
                &mut self.v4_masters_rw,
                map.map(),
                V4_MASTERS_MAP,
                size_of::<V4MasterEntry>(),
            )
            .map(Some),
        }
    }
}

impl LbMaps for Maps {
    fn limits(&self) -> Limits {
        let entries =
            |info: Result<aya::maps::MapInfo, _>| info.map_or(u32::MAX, |i| i.max_entries());
        Limits {
            slots: self.slots.len(),
            // An array indexed by id, whose index 0 is never used.
            backends: self.backends.len().saturating_sub(1),
            members: entries(self.members.map().info()),
            frontends: self.frontend_stats.len(),
        }
    }

    fn dump(&self) -> Result<MapDump, DatapathError> {
        let mut dump = MapDump::default();
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(|e| DatapathError::map(SERVICES_MAP, e))?;
            dump.services.insert(key, value);
        }
        dump.slots.extend(self.slot_entries()?);
        dump.backends.extend(self.backend_entries()?);
        for key in self.members.keys() {
            dump.members
                .insert(key.map_err(|e| DatapathError::map(MEMBERS_MAP, e))?);
        }
        Ok(dump)
    }

    /// Through the array's mapping once one is made (the first write makes it, and opening
    /// the maps for a writer does), else one lookup.
    fn slot(&self, index: u32) -> u32 {
        match &self.slots_rw {
            Some(mapping) => mapping.read(index).unwrap_or(0),
            None => self.slots.get(&index, 0).unwrap_or(0),
        }
    }

    /// Through the array's mapping once one is made, else one lookup.
    fn backend(&self, id: u32) -> Option<Backend> {
        let value = match &self.backends_rw {
            Some(mapping) => mapping.read::<Backend>(id),
            None => self.backends.get(&id, 0).ok(),
        };
        value.filter(|b| b.proto != 0)
    }

    fn write_slots(&mut self, indexes: &[u32], ids: &[u32]) -> Result<(), BatchError> {
        write_array(
            &mut self.slots_rw,
            self.slots.map(),
            SLOTS_MAP,
            |i| indexes[i],
            ids,
            true,
        )
    }

    /// Stores alone, no fence: the fence after the slots that refer to the new backends comes
    /// before any master publishes them.
    fn update_backends(&mut self, ids: &[u32], values: &[Backend]) -> Result<(), BatchError> {
        write_array(
            &mut self.backends_rw,
            self.backends.map(),
            BACKENDS_MAP,
            |i| ids[i],
            values,
            false,
        )
    }

    /// An array element cannot be deleted: its `proto` is cleared (an element with `proto` 0 is
    /// no backend), one byte, and nothing else. A program may still be reading the element
    /// (it read a slot before this apply cleared the range, then was preempted): it sees
    /// either the backend's `proto` and then its whole, unchanged address and port, or `proto`
    /// 0 (no backend: it retries), never a half-cleared address such as `0.0.0.0`, which
    /// would connect to the node itself. The stale address stays until the id is reused, no
    /// earlier than the next apply.
    fn delete_backends(&mut self, ids: &[u32]) -> Result<(), BatchError> {
        let mapping = mapping(
            &mut self.backends_rw,
            self.backends.map(),
            BACKENDS_MAP,
            size_of::<Backend>(),
        )?;
        let mut result = Ok(());
        for (i, &id) in ids.iter().enumerate() {
            if let Err(reason) = mapping.write_field(id, std::mem::offset_of!(Backend, proto), 0u8)
            {
                result = Err(BatchError { done: i, reason });
                break;
            }
        }
        sys::ArrayMapping::publish_fence();
        result
    }

    /// The masters, then their copies in `lb_v4_masters` (the ones written), so a program
    /// that takes a master from the cache takes one the hash map holds too (or held until this
    /// call: an apply frees a replaced master's range only after the call returns).
    fn update_services(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Result<(), BatchError> {
        // Mapped before anything is written: a cache that cannot be kept must not go stale.
        self.v4_masters_elements()?;
        let result = update(self.services.map().fd().as_fd(), keys, values);
        let written = result.as_ref().map_or_else(|e| e.done, |()| keys.len());
        if let Some(elements) = self.v4_masters_elements()? {
            for (key, value) in keys.iter().zip(values).take(written) {
                v4masters::put(elements, key, value);
            }
            sys::ArrayMapping::publish_fence();
        }
        result
    }

    /// The masters' copies in `lb_v4_masters` first, then the masters.
    fn delete_services(&mut self, keys: &[ServiceKey]) -> Result<(), BatchError> {
        if let Some(elements) = self.v4_masters_elements()? {
            for key in keys {
                v4masters::remove(elements, key);
            }
            sys::ArrayMapping::publish_fence();
        }
        delete(self.services.map().fd().as_fd(), keys)
    }

    fn update_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError> {
        let ones = vec![1u32; keys.len()];
        update(self.members.map().fd().as_fd(), keys, &ones)
    }

    fn delete_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError> {
        delete(self.members.map().fd().as_fd(), keys)
    }

    fn v4_filter(&self) -> Option<V4Filter> {
        let words = self.v4_filter.as_ref()?.get(&0, 0).ok()?;
        Some(V4Filter::from_words(words))
    }

    fn write_v4_filter(&mut self, filter: &V4Filter) -> Result<(), String> {
        match &mut self.v4_filter {
            Some(map) => map.set(0, filter.words(), 0).map_err(|e| e.to_string()),
            None => Err(format!("{V4_FILTER_MAP} is not open")),
        }
    }

    fn tcp_ports(&self) -> Option<TcpPortMarks> {
        self.tcp_ports.as_ref()?.get(&0, 0).ok()
    }

    fn write_tcp_ports(&mut self, marks: &TcpPortMarks) -> Result<(), String> {
        match &mut self.tcp_ports {
            Some(map) => map.set(0, marks, 0).map_err(|e| e.to_string()),
            None => Err(format!("{TCP_PORTS_MAP} is not open")),
        }
    }
}
