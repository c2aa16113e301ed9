//! The seam between the writer's logic and the maps: the three tables the writer programs
//! (`lb_services`, `lb_backends`, `lb_members`) as a small trait of batched operations.
//! `lb_backends` is an array: deleting a backend writes its element as zeroes (one
//! `BPF_MAP_UPDATE_BATCH`, like a write), and a dump leaves the empty elements out.
//!
//! [`Maps`] implements it on the kernel's maps with one `BPF_MAP_UPDATE_BATCH` or
//! `BPF_MAP_DELETE_BATCH` call per batch (`sys`); [`super::fake`] has an in-memory
//! implementation and a fault-injecting wrapper for the writer's unit tests.
//!
//! A batch is applied in order, one element at a time, each element an ordinary single-element
//! update (atomic for a concurrent reader). A failing element stops the batch: the elements
//! before it are applied, the ones after it are not attempted ([`BatchError::done`]). Deleting a
//! key that is not there is not a failure.
use std::collections::BTreeMap;
use std::os::fd::AsFd as _;

use aya::maps::IterableMap as _;
use lb_common::{Backend, MEMBERS_MAP, MemberKey, SERVICES_MAP, ServiceKey, ServiceValue};

use super::{DatapathError, maps::Maps, sys};

/// A batch that stopped at element `done` (the elements before it were applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchError {
    pub done: usize,
    pub reason: String,
}

/// Sizes of the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries of `lb_services` (masters and slots).
    pub service_entries: u32,
    /// Backends `lb_backends` can hold; backend ids are 1..=backends (the array has one
    /// element more, index 0, never used).
    pub backends: u32,
    /// Entries of `lb_members`.
    pub members: u32,
    /// Frontend ids are 1..frontends (the per-frontend counters' size).
    pub frontends: u32,
}

/// Everything the three tables hold, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDump {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub members: std::collections::BTreeSet<MemberKey>,
}

/// The tables the writer programs.
pub trait LbMaps {
    fn limits(&self) -> Limits;
    /// Reads every entry of the three tables.
    fn dump(&self) -> Result<MapDump, DatapathError>;
    fn update_backends(&mut self, ids: &[u32], values: &[Backend]) -> Result<(), BatchError>;
    fn delete_backends(&mut self, ids: &[u32]) -> Result<(), BatchError>;
    fn update_services(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Result<(), BatchError>;
    fn delete_services(&mut self, keys: &[ServiceKey]) -> Result<(), BatchError>;
    /// Adds memberships (value 1).
    fn update_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError>;
    fn delete_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError>;
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

impl LbMaps for Maps {
    fn limits(&self) -> Limits {
        let entries =
            |info: Result<aya::maps::MapInfo, _>| info.map_or(u32::MAX, |i| i.max_entries());
        Limits {
            service_entries: entries(self.services.map().info()),
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
        dump.backends.extend(self.backend_entries()?);
        for key in self.members.keys() {
            dump.members
                .insert(key.map_err(|e| DatapathError::map(MEMBERS_MAP, e))?);
        }
        Ok(dump)
    }

    fn update_backends(&mut self, ids: &[u32], values: &[Backend]) -> Result<(), BatchError> {
        update(self.backends.map().fd().as_fd(), ids, values)
    }

    /// An array element cannot be deleted: it is zeroed (an empty element is no backend).
    fn delete_backends(&mut self, ids: &[u32]) -> Result<(), BatchError> {
        let zeroes = vec![Backend::default(); ids.len()];
        update(self.backends.map().fd().as_fd(), ids, &zeroes)
    }

    fn update_services(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Result<(), BatchError> {
        update(self.services.map().fd().as_fd(), keys, values)
    }

    fn delete_services(&mut self, keys: &[ServiceKey]) -> Result<(), BatchError> {
        delete(self.services.map().fd().as_fd(), keys)
    }

    fn update_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError> {
        let ones = vec![1u32; keys.len()];
        update(self.members.map().fd().as_fd(), keys, &ones)
    }

    fn delete_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError> {
        delete(self.members.map().fd().as_fd(), keys)
    }
}
