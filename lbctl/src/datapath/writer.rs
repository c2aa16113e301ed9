//! Desired state -> ordered map writes.
//!
//! The writer keeps a mirror of what the maps hold (rebuilt from the maps when an agent adopts
//! them), diffs the desired state against it and writes only the difference, in the order of
//! `semantics.md`, so a concurrent `connect()` never sees a half-written service:
//! 1. new backends,
//! 2. slots 1..N and the memberships of new backends,
//! 3. the master with the new count (one update),
//! 4. slots above the new count and the memberships of removed backends,
//! 5. orphaned backends last.
//!
//! A deleted frontend loses its master first (connects then pass through), then its slots, then
//! its memberships.
//!
//! Memberships (`lb_members`, (frontend id, backend id)) tell the programs that a backend a
//! socket or a client remembers (UDP stickiness, session affinity) may still be used. A missing
//! one only costs a new selection; a stale one would keep a socket on a removed backend, so they
//! are removed in the same apply that removes the backend from the set.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use aya::maps::{IterableMap as _, MapError};
use lb_common::{
    BACKENDS_MAP, Backend, MEMBERS_MAP, MemberKey, SERVICES_MAP, ServiceKey, ServiceValue,
};

use super::{
    DatapathError,
    desired::{Desired, FrontendAddr, ServiceSpec, backend_addr, backend_value},
    maps::Maps,
};

/// What the maps hold for one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Programmed {
    master: ServiceValue,
    /// Backend id of slot `i + 1`.
    slots: Vec<u32>,
    /// The spec this was written from, when fully written by this writer: an unchanged spec
    /// then costs one comparison per apply, without touching the backend table.
    spec: Option<ServiceSpec>,
}

/// One frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedFrontend {
    pub frontend: FrontendAddr,
    pub frontend_id: u32,
    pub flags: u16,
    pub affinity_timeout: u32,
    /// In slot order.
    pub backends: Vec<std::net::SocketAddr>,
}

/// A frontend that could not be (fully) written, and why. Everything else was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendError {
    pub frontend: FrontendAddr,
    pub reason: String,
}

/// The outcome of one [`Writer::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub frontends_written: usize,
    pub frontends_deleted: usize,
    pub backends_written: usize,
    pub backends_deleted: usize,
    /// Map updates and deletions issued.
    pub map_operations: usize,
    pub errors: Vec<FrontendError>,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        self.map_operations == 0 && self.errors.is_empty()
    }
}

/// Id allocator: reuses freed ids (smallest first), else takes the next unused one. Ids start
/// at 1; 0 means "none" in the maps. Both operations are O(log n).
#[derive(Debug, Default)]
struct Ids {
    next: u32,
    free: BTreeSet<u32>,
    /// Ids must stay below this (the size of the table they index).
    limit: u32,
}

impl Ids {
    fn new(limit: u32) -> Self {
        Self {
            next: 1,
            free: BTreeSet::new(),
            limit,
        }
    }

    /// Marks an id found in adopted maps as taken.
    fn take(&mut self, id: u32) {
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.free.remove(&id);
        }
    }

    fn allocate(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        (self.next < self.limit).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    fn release(&mut self, id: u32) {
        if id != 0 && id < self.next {
            self.free.insert(id);
        }
    }
}

/// Writes desired states into the maps. Owns the maps while the agent runs.
pub struct Writer {
    maps: Maps,
    services: BTreeMap<FrontendAddr, Programmed>,
    /// Backend value -> id.
    backend_ids: HashMap<Backend, u32>,
    backend_values: HashMap<u32, Backend>,
    backend_alloc: Ids,
    frontend_alloc: Ids,
    /// Slots or masters found in the maps that belong to no consistent frontend (left by a
    /// crashed writer); removed by the next apply.
    stray_keys: Vec<ServiceKey>,
    /// (frontend id, backend id) pairs `lb_members` holds.
    members: BTreeSet<(u32, u32)>,
    /// Backend id -> number of slots (over all frontends) that refer to it.
    refs: HashMap<u32, u32>,
    /// Backends whose reference count dropped to zero (or that were never used): deleted by
    /// the next apply unless a slot refers to them again.
    maybe_orphans: BTreeSet<u32>,
    /// Frontend ids whose memberships may disagree with their slots (adopted, or a membership
    /// write failed): checked in full by the next apply. All others are known to agree, so an
    /// unchanged frontend costs one comparison.
    unsettled: BTreeSet<u32>,
    /// Memberships may exist for frontend ids no frontend has: scan them on the next apply.
    check_stray_members: bool,
}

fn slot_key(base: &ServiceKey, slot: u32) -> ServiceKey {
    ServiceKey { slot, ..*base }
}

impl Writer {
    /// Rebuilds the mirror from what the maps hold, reusing frontend and backend ids.
    pub fn adopt(maps: Maps) -> Result<Self, DatapathError> {
        let backend_cap = maps
            .backends
            .map()
            .info()
            .map(|i| i.max_entries())
            .unwrap_or(u32::MAX);
        let frontend_cap = maps.frontend_stats.len();
        let mut writer = Self {
            services: BTreeMap::new(),
            backend_ids: HashMap::new(),
            backend_values: HashMap::new(),
            backend_alloc: Ids::new(backend_cap.saturating_add(1)),
            frontend_alloc: Ids::new(frontend_cap),
            stray_keys: Vec::new(),
            members: BTreeSet::new(),
            refs: HashMap::new(),
            maybe_orphans: BTreeSet::new(),
            unsettled: BTreeSet::new(),
            check_stray_members: true,
            maps,
        };
        for key in writer.maps.members.keys() {
            let key = key.map_err(|e| DatapathError::map(MEMBERS_MAP, e))?;
            writer.members.insert((key.frontend_id, key.backend_id));
        }
        for entry in writer.maps.backends.iter() {
            let (id, value) = entry.map_err(|e| DatapathError::map(BACKENDS_MAP, e))?;
            writer.backend_ids.insert(value, id);
            writer.backend_values.insert(id, value);
            writer.backend_alloc.take(id);
        }
        let mut masters = BTreeMap::new();
        let mut slots: HashMap<ServiceKey, BTreeMap<u32, u32>> = HashMap::new();
        for entry in writer.maps.services.iter() {
            let (key, value) = entry.map_err(|e| DatapathError::map(SERVICES_MAP, e))?;
            if key.slot == 0 {
                masters.insert(key, value);
            } else {
                slots
                    .entry(slot_key(&key, 0))
                    .or_default()
                    .insert(key.slot, value.backend_id);
            }
        }
        for (key, master) in masters {
            let mut found = slots.remove(&key).unwrap_or_default();
            let mut ids = Vec::with_capacity(usize::from(master.count));
            for slot in 1..=u32::from(master.count) {
                if let Some(id) = found.remove(&slot) {
                    ids.push(id);
                }
            }
            writer
                .stray_keys
                .extend(found.keys().map(|&slot| slot_key(&key, slot)));
            let Some(frontend) = FrontendAddr::from_key(&key) else {
                writer.stray_keys.push(key);
                writer.stray_keys.extend(
                    ids.iter()
                        .enumerate()
                        .map(|(i, _)| slot_key(&key, i as u32 + 1)),
                );
                continue;
            };
            writer.frontend_alloc.take(master.frontend_id);
            writer.unsettled.insert(master.frontend_id);
            // A master whose slots are incomplete is rewritten by the next apply.
            writer.set_programmed(
                frontend,
                Programmed {
                    master,
                    slots: ids,
                    spec: None,
                },
            );
        }
        for (key, rest) in slots {
            writer
                .stray_keys
                .extend(rest.keys().map(|&slot| slot_key(&key, slot)));
        }
        let unused: Vec<u32> = writer
            .backend_values
            .keys()
            .filter(|id| !writer.refs.contains_key(id))
            .copied()
            .collect();
        writer.maybe_orphans.extend(unused);
        Ok(writer)
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// Number of frontends and backends the maps hold.
    pub fn programmed(&self) -> (usize, usize) {
        (self.services.len(), self.backend_values.len())
    }

    /// Makes the maps hold exactly `desired`, writing only what differs.
    pub fn apply(&mut self, desired: &Desired) -> Result<ApplyReport, DatapathError> {
        let mut report = ApplyReport::default();

        // 1. Backends every desired frontend needs.
        let mut wanted_slots: BTreeMap<FrontendAddr, Vec<u32>> = BTreeMap::new();
        for (frontend, spec) in &desired.services {
            if self.services.get(frontend).is_some_and(|p| {
                p.spec.as_ref() == Some(spec) && !self.unsettled.contains(&p.master.frontend_id)
            }) {
                continue;
            }
            match self.ensure_backends(*frontend, spec, &mut report) {
                Ok(ids) => {
                    wanted_slots.insert(*frontend, ids);
                }
                Err(reason) => report.errors.push(FrontendError {
                    frontend: *frontend,
                    reason,
                }),
            }
        }

        // 2-4. Each frontend: slots, master, shrink.
        for (frontend, ids) in &wanted_slots {
            let spec = &desired.services[frontend];
            if let Err(reason) = self.write_frontend(*frontend, spec, ids, &mut report) {
                report.errors.push(FrontendError {
                    frontend: *frontend,
                    reason,
                });
            }
        }

        // Frontends no longer wanted: master first, then slots.
        let gone: Vec<FrontendAddr> = self
            .services
            .keys()
            .filter(|f| !desired.services.contains_key(f))
            .copied()
            .collect();
        for frontend in gone {
            if let Err(reason) = self.delete_frontend(frontend, &mut report) {
                report.errors.push(FrontendError { frontend, reason });
            }
        }
        for key in std::mem::take(&mut self.stray_keys) {
            match self.maps.services.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => report.map_operations += 1,
                Err(e) => return Err(DatapathError::map(SERVICES_MAP, e)),
            }
        }
        // Memberships of frontend ids no frontend has (a crashed writer, a failed delete).
        if std::mem::take(&mut self.check_stray_members) {
            self.remove_stray_members(&mut report)?;
        }

        // 5. Backends no slot refers to any more.
        let candidates: Vec<u32> = std::mem::take(&mut self.maybe_orphans)
            .into_iter()
            .collect();
        for (i, &id) in candidates.iter().enumerate() {
            if self.refs.contains_key(&id) || !self.backend_values.contains_key(&id) {
                continue;
            }
            match self.maps.backends.remove(&id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => {
                    // Tried again by the next apply.
                    self.maybe_orphans.extend(&candidates[i..]);
                    return Err(DatapathError::map(BACKENDS_MAP, e));
                }
            }
            report.map_operations += 1;
            report.backends_deleted += 1;
            if let Some(value) = self.backend_values.remove(&id) {
                self.backend_ids.remove(&value);
            }
            self.backend_alloc.release(id);
        }
        Ok(report)
    }

    fn remove_stray_members(&mut self, report: &mut ApplyReport) -> Result<(), DatapathError> {
        let live: BTreeSet<u32> = self
            .services
            .values()
            .map(|p| p.master.frontend_id)
            .collect();
        let stray: Vec<(u32, u32)> = self
            .members
            .iter()
            .filter(|(fid, _)| !live.contains(fid))
            .copied()
            .collect();
        for pair in stray {
            if let Err(e) = self.remove_member(pair, &mut report.map_operations) {
                self.check_stray_members = true;
                return Err(DatapathError::map(MEMBERS_MAP, e));
            }
        }
        Ok(())
    }

    /// Makes sure every backend of `spec` is in the backend table; returns their ids in slot
    /// order.
    fn ensure_backends(
        &mut self,
        frontend: FrontendAddr,
        spec: &ServiceSpec,
        report: &mut ApplyReport,
    ) -> Result<Vec<u32>, String> {
        if spec.backends.len() > usize::from(u16::MAX) {
            return Err(format!(
                "{} backends; a frontend holds at most {}",
                spec.backends.len(),
                u16::MAX
            ));
        }
        let mut ids = Vec::with_capacity(spec.backends.len());
        for addr in &spec.backends {
            if addr.is_ipv4() != frontend.address.is_ipv4() {
                return Err(format!(
                    "backend {addr} is not of the frontend's address family"
                ));
            }
            let value = backend_value(*addr, frontend.protocol);
            if let Some(&id) = self.backend_ids.get(&value) {
                ids.push(id);
                continue;
            }
            let id = self
                .backend_alloc
                .allocate()
                .ok_or_else(|| "the backend table is full".to_owned())?;
            if let Err(e) = self.maps.backends.insert(id, value, 0) {
                self.backend_alloc.release(id);
                return Err(format!("writing backend {addr}: {e}"));
            }
            report.map_operations += 1;
            report.backends_written += 1;
            self.backend_ids.insert(value, id);
            self.backend_values.insert(id, value);
            self.maybe_orphans.insert(id);
            ids.push(id);
        }
        Ok(ids)
    }

    fn write_frontend(
        &mut self,
        frontend: FrontendAddr,
        spec: &ServiceSpec,
        ids: &[u32],
        report: &mut ApplyReport,
    ) -> Result<(), String> {
        if let Some(p) = self.services.get(&frontend)
            && p.slots == ids
            && p.master.count as usize == ids.len()
            && p.master.flags == spec.flags()
            && p.master.affinity_timeout == spec.affinity_timeout.unwrap_or(0)
            && !self.unsettled.contains(&p.master.frontend_id)
        {
            return Ok(());
        }
        let base = frontend.key();
        let old = self.services.get(&frontend).cloned();
        let frontend_id = match &old {
            Some(p) => p.master.frontend_id,
            None => self
                .frontend_alloc
                .allocate()
                .ok_or_else(|| "no free frontend id (raise --max-frontends)".to_owned())?,
        };
        let master = ServiceValue {
            backend_id: 0,
            count: ids.len() as u16,
            flags: spec.flags(),
            frontend_id,
            affinity_timeout: spec.affinity_timeout.unwrap_or(0),
        };
        let old_slots = old.as_ref().map(|p| p.slots.clone()).unwrap_or_default();
        let wanted: BTreeSet<u32> = ids.iter().copied().collect();
        let held: BTreeSet<u32> = self.members_of(frontend_id).collect();
        if old
            .as_ref()
            .is_some_and(|p| p.master == master && p.slots == ids)
            && held == wanted
        {
            return Ok(());
        }

        // Slots first: every slot a reader may pick after seeing either master stays valid.
        let mut written = old_slots.clone();
        for (i, &id) in ids.iter().enumerate() {
            if old_slots.get(i) == Some(&id) {
                continue;
            }
            let value = ServiceValue {
                backend_id: id,
                ..ServiceValue::default()
            };
            if let Err(e) = self
                .maps
                .services
                .insert(slot_key(&base, i as u32 + 1), value, 0)
            {
                self.record(frontend, old.as_ref(), written);
                if old.is_none() {
                    self.rollback_new(frontend, &base, frontend_id, report);
                }
                return Err(format!("writing slot {}: {e}", i + 1));
            }
            report.map_operations += 1;
            if i < written.len() {
                written[i] = id;
            } else {
                written.push(id);
            }
        }

        // Memberships of the backends that join the set, before the master publishes it.
        for &id in wanted.difference(&held) {
            if let Err(e) = self.add_member((frontend_id, id), &mut report.map_operations) {
                self.unsettled.insert(frontend_id);
                self.record(frontend, old.as_ref(), written);
                if old.is_none() {
                    self.rollback_new(frontend, &base, frontend_id, report);
                }
                return Err(format!("writing a backend membership: {e}"));
            }
        }

        // The master, in one update: from here on readers use the new count.
        if let Err(e) = self.maps.services.insert(base, master, 0) {
            self.record(frontend, old.as_ref(), written);
            if old.is_none() {
                self.rollback_new(frontend, &base, frontend_id, report);
            }
            return Err(format!("writing the service entry: {e}"));
        }
        report.map_operations += 1;
        report.frontends_written += 1;

        // Slots above the new count; no reader can reach them any more.
        for slot in ids.len()..written.len() {
            match self.maps.services.remove(&slot_key(&base, slot as u32 + 1)) {
                Ok(()) | Err(MapError::KeyNotFound) => report.map_operations += 1,
                Err(e) => {
                    // The slot stays behind, harmless; retried on the next apply.
                    self.stray_keys.push(slot_key(&base, slot as u32 + 1));
                    tracing::warn!(%frontend, slot = slot + 1, error = %e, "could not delete a slot");
                }
            }
        }
        // Memberships of the backends that left the set: a socket or client that remembers
        // one selects anew from now on.
        let mut failed_member = false;
        for &id in held.difference(&wanted) {
            if let Err(e) = self.remove_member((frontend_id, id), &mut report.map_operations) {
                // Kept in the mirror: the next apply retries.
                failed_member = true;
                tracing::warn!(
                    %frontend, backend_id = id, error = %e,
                    "could not delete a backend membership"
                );
            }
        }
        self.set_programmed(
            frontend,
            Programmed {
                master,
                slots: ids.to_vec(),
                spec: Some(spec.clone()),
            },
        );
        if failed_member {
            self.unsettled.insert(frontend_id);
        } else {
            self.unsettled.remove(&frontend_id);
        }
        Ok(())
    }

    /// Keeps the mirror true to the maps after a partial write of a frontend.
    fn record(&mut self, frontend: FrontendAddr, old: Option<&Programmed>, slots: Vec<u32>) {
        if let Some(old) = old {
            self.set_programmed(
                frontend,
                Programmed {
                    master: old.master,
                    slots,
                    spec: None,
                },
            );
        }
    }

    /// A new frontend failed before its master was written: remove the slots it got.
    fn rollback_new(
        &mut self,
        frontend: FrontendAddr,
        base: &ServiceKey,
        frontend_id: u32,
        report: &mut ApplyReport,
    ) {
        self.frontend_alloc.release(frontend_id);
        let members: Vec<u32> = self.members_of(frontend_id).collect();
        for id in members {
            if self
                .remove_member((frontend_id, id), &mut report.map_operations)
                .is_err()
            {
                tracing::warn!(%frontend, backend_id = id, "could not delete a backend membership");
            }
        }
        let mut slot = 1;
        while self.maps.services.get(&slot_key(base, slot), 0).is_ok() {
            if self.maps.services.remove(&slot_key(base, slot)).is_err() {
                self.stray_keys.push(slot_key(base, slot));
            }
            report.map_operations += 1;
            slot += 1;
        }
        tracing::debug!(%frontend, "rolled back a partially written frontend");
    }

    fn delete_frontend(
        &mut self,
        frontend: FrontendAddr,
        report: &mut ApplyReport,
    ) -> Result<(), String> {
        let base = frontend.key();
        match self.maps.services.remove(&base) {
            Ok(()) | Err(MapError::KeyNotFound) => report.map_operations += 1,
            Err(e) => return Err(format!("deleting the service entry: {e}")),
        }
        let Some(programmed) = self.remove_programmed(&frontend) else {
            return Ok(());
        };
        for slot in 1..=programmed.slots.len() {
            if let Err(e) = self.maps.services.remove(&slot_key(&base, slot as u32))
                && !matches!(e, MapError::KeyNotFound)
            {
                self.stray_keys.push(slot_key(&base, slot as u32));
            }
            report.map_operations += 1;
        }
        let frontend_id = programmed.master.frontend_id;
        let members: Vec<u32> = self.members_of(frontend_id).collect();
        for id in members {
            if let Err(e) = self.remove_member((frontend_id, id), &mut report.map_operations) {
                // Kept in the mirror; the next apply removes it as a stray membership.
                self.check_stray_members = true;
                tracing::warn!(
                    %frontend, backend_id = id, error = %e,
                    "could not delete a backend membership"
                );
            }
        }
        self.frontend_alloc.release(frontend_id);
        self.unsettled.remove(&frontend_id);
        report.frontends_deleted += 1;
        Ok(())
    }

    /// Records what the maps hold for a frontend, keeping backend reference counts.
    fn set_programmed(&mut self, frontend: FrontendAddr, programmed: Programmed) {
        for &id in &programmed.slots {
            *self.refs.entry(id).or_default() += 1;
        }
        if let Some(old) = self.services.insert(frontend, programmed) {
            self.release_refs(&old.slots);
        }
    }

    fn remove_programmed(&mut self, frontend: &FrontendAddr) -> Option<Programmed> {
        let old = self.services.remove(frontend)?;
        self.release_refs(&old.slots);
        Some(old)
    }

    fn release_refs(&mut self, slots: &[u32]) {
        for id in slots {
            if let Some(n) = self.refs.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(id);
                    self.maybe_orphans.insert(*id);
                }
            }
        }
    }

    /// Backend ids `lb_members` holds for a frontend id.
    fn members_of(&self, frontend_id: u32) -> impl Iterator<Item = u32> + '_ {
        self.members
            .range((frontend_id, 0)..=(frontend_id, u32::MAX))
            .map(|&(_, backend_id)| backend_id)
    }

    fn add_member(
        &mut self,
        (frontend_id, backend_id): (u32, u32),
        ops: &mut usize,
    ) -> Result<(), MapError> {
        let key = MemberKey {
            frontend_id,
            backend_id,
        };
        self.maps.members.insert(key, 1, 0)?;
        *ops += 1;
        self.members.insert((frontend_id, backend_id));
        Ok(())
    }

    fn remove_member(
        &mut self,
        (frontend_id, backend_id): (u32, u32),
        ops: &mut usize,
    ) -> Result<(), MapError> {
        let key = MemberKey {
            frontend_id,
            backend_id,
        };
        match self.maps.members.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
        *ops += 1;
        self.members.remove(&(frontend_id, backend_id));
        Ok(())
    }

    /// Frontends as the maps hold them, with backends decoded, in key order.
    pub fn frontends(&self) -> Vec<ProgrammedFrontend> {
        self.services
            .iter()
            .map(|(frontend, p)| ProgrammedFrontend {
                frontend: *frontend,
                frontend_id: p.master.frontend_id,
                flags: p.master.flags,
                affinity_timeout: p.master.affinity_timeout,
                backends: p
                    .slots
                    .iter()
                    .filter_map(|id| self.backend_values.get(id).map(backend_addr))
                    .collect(),
            })
            .collect()
    }

    /// The frontend id of a programmed frontend.
    pub fn frontend_id(&self, frontend: &FrontendAddr) -> Option<u32> {
        self.services.get(frontend).map(|p| p.master.frontend_id)
    }
}

#[cfg(test)]
mod tests {
    use super::Ids;

    #[test]
    fn ids_reuse_the_smallest_free_one() {
        let mut ids = Ids::new(4);
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(2));
        ids.release(1);
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(3));
        assert_eq!(ids.allocate(), None);
    }

    #[test]
    fn adopted_ids_leave_their_gaps_free() {
        let mut ids = Ids::new(100);
        ids.take(3);
        ids.take(5);
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(2));
        assert_eq!(ids.allocate(), Some(4));
        assert_eq!(ids.allocate(), Some(6));
    }
}
