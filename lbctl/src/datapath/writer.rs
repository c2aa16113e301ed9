//! Desired state -> ordered map writes.
//!
//! The writer keeps a mirror of what the maps hold (rebuilt from the maps when an agent adopts
//! them, [`super::decode`]; the arrays' contents, a frontend's backend ids and the backends'
//! values, are read back from the maps rather than copied), diffs the desired state against
//! it and writes only the difference through the [`LbMaps`] seam, in the order of
//! `semantics.md`, so a concurrent `connect()` never sees a half-written service. Each step is
//! one batch covering every frontend the apply changes (on the kernel maps:
//! `BPF_MAP_UPDATE_BATCH` or `BPF_MAP_DELETE_BATCH` for the hash maps, one call per
//! [`MAX_BATCH`] elements; plain stores through a mapping for the arrays `lb_backends` and
//! `lb_slots`), but the first:
//! 1. new backends, each written as the diff gives it an id (one element at a time: the writer
//!    keeps no copy of the values, it reads them from `lb_backends`, so the next frontend with
//!    the same backend finds it there),
//! 2. the memberships of the backends that join a set, then each changed frontend's backend
//!    ids into a fresh range of `lb_slots` (one no published master points to),
//! 3. `lb_v4_filter` with the /16s of the masters to publish held (when one is new), then the
//!    masters, each pointing to its new range (one element each),
//! 4. masters of deleted frontends, then `lb_v4_filter` with the /16s no master is left in
//!    skipped ([`super::filter`]),
//! 5. the ranges no master points to any more (replaced, deleted, rolled back) are cleared;
//!    they are reused no earlier than the next apply ([`crate::datapath::ranges`]),
//! 6. memberships of backends that left a set or belong to a deleted frontend,
//! 7. orphaned backends last.
//!
//! Why batching keeps the guarantee: a batch applies its elements in order, each one written
//! whole; a reader may see any prefix of a batch. Every step only relies on the steps before it
//! having completed, never on the order inside a step: a slot written in step 2 refers to a
//! backend of step 1, in a range no reader can reach yet; a master of step 3 publishes a range
//! that is complete, every backend of which is a member (where memberships are kept) before the
//! master is written, and until then readers follow the old master to its old range, untouched;
//! deletions (steps 4-7) only remove what no published master reaches any more.
//!
//! A frontend whose element fails is left out of the later steps (the rest of the batch goes
//! on in a new batch): a new frontend is rolled back (its range is cleared in step 5 and its
//! memberships deleted in step 6, no master was written), an existing one keeps its old master
//! and its old range, and is rewritten by the next apply. Deletions that fail are retried by
//! the next apply.
//!
//! Memberships (`lb_members`, (frontend id, backend id)) tell the programs that a backend a
//! socket or a client remembers (UDP stickiness, session affinity) may still be used. A missing
//! one only costs a new selection; a stale one would keep a socket on a removed backend, so they
//! are removed in the same apply that removes the backend from the set. Only UDP and
//! session-affinity frontends have them (`lb_common::needs_members`): a TCP frontend without
//! affinity costs no membership element, and the pairs an apply takes from TCP frontends are
//! reported instead ([`ApplyReport::departed`]) for the socket termination.
//!
//! `lb_backends` is an array indexed by backend id: a backend is deleted by clearing its
//! element's `proto` (step 7; one byte, so a concurrent reader never sees a half-cleared
//! address). An id is released only after that, when no slot refers to it any more, and is
//! allocated again no earlier than the next apply's diff: within one apply an id never changes
//! backend, so a program that read a slot before the apply removed it finds either that very
//! backend or an empty element (and retries), never another backend under the same id.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    Backend, IPPROTO_TCP, MemberKey, ServiceKey, ServiceValue, TCP_PORTS_MAP, V4_FILTER_MAP,
    needs_members,
};

use crate::{idset::IdSet, plan::Protocol};

use super::{
    DatapathError, FrontendKey,
    backends::BackendTable,
    decode::{FoundFrontend, ProgrammedFrontend, decode, frontends_of},
    desired::{DesiredState, SpecRef, backend_value, proto_number},
    filter::{V4Filter, prefix_of},
    ids::Ids,
    maps::Maps,
    ports::PortMarks,
    ranges::Ranges,
    store::{BatchError, LbMaps, Limits},
};

/// What the maps hold for one frontend. An unchanged spec is recognised by comparing it with
/// this (its master, and its backends as `lb_backends` holds them), so the writer keeps no copy
/// of the desired state. Its backend ids are the ones of its range in `lb_slots`, read back
/// from the map ([`Writer::slot_ids`]) rather than copied: the range is written before the
/// master that points to it, and changed only after that master is replaced or deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Programmed {
    /// Its range of `lb_slots` is `slot_base..slot_base + count`.
    master: ServiceValue,
    /// A digest of the range's elements when they were counted ([`range_digest`]): the range
    /// found otherwise when its references are dropped was changed behind the writer's back,
    /// and every count is taken again from the maps (never a backend deleted in use).
    digest: u32,
    /// Whether the range is this frontend's own in the allocator (false only for a range found
    /// overlapping another one when adopting maps: never freed, replaced by the next apply).
    owned: bool,
}

/// The elements of `lb_slots` `master` points to.
fn range_of(master: &ServiceValue) -> std::ops::Range<u32> {
    master.slot_base..master.slot_base.saturating_add(u32::from(master.count))
}

/// FNV-1a over the elements of a range, in order.
fn range_digest(elements: impl Iterator<Item = u32>) -> u32 {
    elements.fold(0x811c_9dc5, |h, e| (h ^ e).wrapping_mul(0x0100_0193))
}

impl Programmed {
    /// The range of `lb_slots` this frontend owns, if any.
    fn range(&self) -> Option<(u32, u32)> {
        (self.owned && self.master.count > 0)
            .then_some((self.master.slot_base, u32::from(self.master.count)))
    }
}

/// The master of a frontend of `spec` with `count` backends from `slot_base` on.
fn master_of(spec: SpecRef<'_>, count: usize, frontend_id: u32, slot_base: u32) -> ServiceValue {
    ServiceValue {
        slot_base,
        count: count as u16,
        flags: spec.flags(),
        frontend_id,
        affinity_timeout: spec.affinity_timeout.unwrap_or(0),
    }
}

/// A frontend that could not be (fully) written, and why. Everything else was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendError {
    pub frontend: FrontendKey,
    pub reason: String,
}

/// The outcome of one [`Writer::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub frontends_written: usize,
    pub frontends_deleted: usize,
    pub backends_written: usize,
    pub backends_deleted: usize,
    /// Map elements updated or deleted (each element of a batch counts once).
    pub map_operations: usize,
    /// Batches issued (on the kernel maps, one `bpf()` call each for the hash maps; a batch of
    /// `lb_backends` or `lb_slots` elements is plain stores through their mappings). New
    /// backends, written one at a time as they get their ids, are not counted here.
    pub map_calls: usize,
    /// Backend memberships removed (a backend left the set of a UDP or session-affinity
    /// frontend, or the frontend went).
    pub memberships_deleted: usize,
    /// (frontend id, backend id) pairs of TCP frontends this apply took out of reach: backends
    /// that left a set, and every backend of a deleted frontend. Sorted, once each. With
    /// `memberships_deleted`, what the socket termination sweeps for (TCP frontends keep no
    /// memberships, so their sweep is told the pairs instead, see `lb_common::DEPARTED_MAP`).
    pub departed: Vec<(u32, u32)>,
    pub errors: Vec<FrontendError>,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        self.map_operations == 0 && self.errors.is_empty()
    }
}

/// Writes desired states into the maps. Owns the maps while the agent runs.
pub struct Writer<M: LbMaps = Maps> {
    maps: M,
    limits: Limits,
    services: BTreeMap<FrontendKey, Programmed>,
    /// Ranges of `lb_slots`.
    ranges: Ranges,
    /// Ranges no master points to any more, to clear in step 5 (and retried there while
    /// clearing fails); out of the allocator until cleared.
    to_clear: Vec<(u32, u32)>,
    /// Cleared ranges, given back to the allocator when the next apply starts: a range a
    /// published master pointed to is never reused within the apply that replaced it.
    cleared: Vec<(u32, u32)>,
    /// Backend ids, values and how many slots refer to each.
    backends: BackendTable,
    backend_alloc: Ids,
    frontend_alloc: Ids,
    /// Masters found in the maps that belong to no frontend this lbctl knows (of an unknown
    /// protocol), or whose deletion failed; removed by the next apply.
    stray_keys: Vec<ServiceKey>,
    /// (frontend id, backend id) pairs `lb_members` holds.
    members: BTreeSet<(u32, u32)>,
    /// Backends whose reference count dropped to zero (or that were never used): deleted by
    /// the next apply unless a slot refers to them again.
    maybe_orphans: BTreeSet<u32>,
    /// A range was found changed behind the writer's back when its references were dropped:
    /// the counts are taken again from the maps before any backend is deleted.
    recount: bool,
    /// Frontend ids whose memberships may disagree with their slots (adopted, a membership
    /// write failed, or written part-way): checked in full by the next apply. All others are
    /// known to agree, so an unchanged frontend costs one comparison of its master and slots.
    unsettled: BTreeSet<u32>,
    /// Memberships may exist for frontend ids no frontend has: scan them on the next apply.
    check_stray_members: bool,
    /// Memberships whose deletion failed: retried by every apply; their backends stay until
    /// they are gone.
    undeleted_members: BTreeSet<(u32, u32)>,
    /// Frontend ids no frontend has that may still have memberships (a deleted frontend's, or
    /// stray ones found when adopting): kept out of the allocator until their memberships are
    /// gone. A new frontend given such an id would inherit them, and their retried deletion
    /// would then remove its own.
    reserved_ids: BTreeSet<u32>,
    /// Wall time of each part of the last apply ([`STEPS`]), microseconds.
    last_steps: [u64; STEPS.len()],
    /// What `lb_v4_filter` holds, as this writer wrote it; `None` until its first write (adopted
    /// or new maps) or after a write failed: then the next apply writes it whole, from the
    /// frontends programmed.
    v4_filter: Option<V4Filter>,
    /// The buckets of `lb_tcp_backend_ports` the TCP backends' ports need ([`super::ports`]):
    /// written before the masters that reach them.
    ports: PortMarks,
}

/// The backends of a TCP frontend's change, as `lb_backends` holds them (none for another
/// protocol).
fn tcp_backends<'a>(change: &'a Change<'_>) -> impl Iterator<Item = Backend> + 'a {
    let protocol = change.frontend.protocol;
    (protocol == Protocol::Tcp)
        .then(|| {
            change
                .spec
                .backends
                .iter()
                .map(move |a| backend_value(a, protocol))
        })
        .into_iter()
        .flatten()
}

/// `lb_tcp_backend_ports` could not be written ([`Writer::mark_ports`]).
struct PortsFailure {
    reason: String,
    /// The changes (indexes) whose marks the map held already: published anyway.
    held: BTreeSet<usize>,
}

/// The parts of an apply, as [`Writer::last_steps`] times them.
pub const STEPS: [&str; 9] = [
    "diff, 1 backends",
    "prepare",
    "2a memberships",
    "2b slots",
    "3 masters",
    "4 masters deleted",
    "5 slots cleared",
    "6 memberships deleted",
    "7 backends deleted",
];

/// Times consecutive parts of an apply.
struct Laps {
    last: std::time::Instant,
    us: [u64; STEPS.len()],
}

impl Laps {
    fn new() -> Self {
        Self {
            last: std::time::Instant::now(),
            us: [0; STEPS.len()],
        }
    }

    /// Ends part `i` (of [`STEPS`]).
    fn lap(&mut self, i: usize) {
        let now = std::time::Instant::now();
        self.us[i] = now.duration_since(self.last).as_micros() as u64;
        self.last = now;
    }
}

/// The backend ids an apply added, kept from step 1 to step 7: as they are when few (an
/// incremental apply's: its cost follows them, not the highest id), a bit each when many (a
/// full programming's 300,000 took 1.2 MB through the publish step, where the heap peaks).
enum NewIds {
    Few(Vec<u32>),
    Many(IdSet),
}

impl NewIds {
    /// Up to this many ids, a list (its walk in step 7 costs the ids alone); above, a bit set
    /// (a bit per id up to the highest: 32 KiB at 262,144 backends, against 4 bytes an id).
    const FEW: usize = 4096;

    fn from(ids: Vec<u32>) -> Self {
        if ids.len() <= Self::FEW {
            NewIds::Few(ids)
        } else {
            NewIds::Many(ids.into_iter().collect())
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match self {
            NewIds::Few(ids) => Box::new(ids.iter().copied()),
            NewIds::Many(ids) => Box::new(ids.iter()),
        }
    }
}

/// One changed frontend on its way through the steps.
struct Change<'a> {
    frontend: FrontendKey,
    spec: SpecRef<'a>,
    /// Backend ids in slot order.
    ids: Box<[u32]>,
    /// Boxed: `None` for most changes of a full programming, whose `Vec` is a few MB.
    old: Option<Box<Programmed>>,
    frontend_id: u32,
    master: ServiceValue,
    /// A range was allocated for the new backend ids (`master.slot_base`, written in step
    /// 2b); else the master keeps the old range (same backends) or has none (no backend).
    fresh: bool,
    /// `None` for a frontend without memberships before or after (TCP without session
    /// affinity: most of a full programming), so a change costs no three empty vectors.
    members: Option<Box<Memberships>>,
    failed: Option<String>,
}

/// How a change moves a frontend's memberships.
struct Memberships {
    /// Backend ids the frontend's memberships hold, and the ones its new master needs; both
    /// sorted.
    held: Vec<u32>,
    wanted: Vec<u32>,
    /// Backend ids that join the set before the slots are written, sorted: the slots' backends
    /// not held, when either the old or the new master needs memberships (until step 3 the
    /// old master is the one readers follow to the new slots).
    joined: Vec<u32>,
}

impl Change<'_> {
    /// Backends that join the set (step 2a), in order.
    fn joining(&self) -> impl Iterator<Item = u32> + '_ {
        self.members.iter().flat_map(|m| m.joined.iter().copied())
    }

    /// Backends that leave the set once the new master is published (held or joined, not
    /// wanted).
    fn leaving(&self) -> impl Iterator<Item = u32> + '_ {
        self.members.iter().flat_map(|m| {
            m.held
                .iter()
                .chain(&m.joined)
                .copied()
                .filter(|id| m.wanted.binary_search(id).is_err())
        })
    }
}

/// Elements per map call: a step larger than this is split into several calls, all complete
/// before the next step starts (which is all the ordering needs), so the key and value arrays
/// the writer builds stay small.
pub const MAX_BATCH: usize = 16_384;

/// Runs items `0..len` (item `i` belonging to `owner(i)`) through `call` in batches of at
/// most [`MAX_BATCH`], in order. When item `i` fails, the later items of the same owner are
/// dropped and the rest goes on in the next batch. Returns which items were applied and, per
/// failed owner, its failing item and the reason.
fn batched(
    len: usize,
    owner: impl Fn(usize) -> usize,
    calls: &mut usize,
    mut call: impl FnMut(&[usize]) -> Result<(), BatchError>,
) -> (Vec<bool>, BTreeMap<usize, (usize, String)>) {
    let mut applied = vec![false; len];
    let mut failed: BTreeMap<usize, (usize, String)> = BTreeMap::new();
    let mut next = 0;
    let mut window = Vec::with_capacity(len.min(MAX_BATCH));
    loop {
        window.clear();
        while next < len && window.len() < MAX_BATCH {
            if !failed.contains_key(&owner(next)) {
                window.push(next);
            }
            next += 1;
        }
        if window.is_empty() {
            break;
        }
        *calls += 1;
        match call(&window) {
            Ok(()) => window.iter().for_each(|&i| applied[i] = true),
            Err(e) if e.done >= window.len() => window.iter().for_each(|&i| applied[i] = true),
            Err(e) => {
                window[..e.done].iter().for_each(|&i| applied[i] = true);
                let bad = window[e.done];
                failed.entry(owner(bad)).or_insert((bad, e.reason));
                // The items after the failing one were not attempted.
                next = bad + 1;
            }
        }
    }
    (applied, failed)
}

/// Adds to `departed` the pairs (frontend id, backend id) of the backends in `before` and not
/// in `after`, when `frontend` is a TCP one (a UDP frontend's sweep reads its memberships).
fn departed_from(
    departed: &mut Vec<(u32, u32)>,
    frontend: FrontendKey,
    frontend_id: u32,
    before: &[u32],
    after: &[u32],
) {
    if proto_number(frontend.protocol) != IPPROTO_TCP {
        return;
    }
    let mut after: Vec<u32> = after.to_vec();
    after.sort_unstable();
    departed.extend(
        before
            .iter()
            .filter(|id| after.binary_search(id).is_err())
            .map(|&id| (frontend_id, id)),
    );
}

fn member_key((frontend_id, backend_id): (u32, u32)) -> MemberKey {
    MemberKey {
        frontend_id,
        backend_id,
    }
}

impl<M: LbMaps> Writer<M> {
    /// Rebuilds the mirror from what the maps hold, reusing frontend and backend ids.
    pub fn adopt(maps: M) -> Result<Self, DatapathError> {
        let limits = maps.limits();
        let decoded = decode(maps.dump()?);
        let ports = PortMarks::adopted(maps.tcp_ports(), decoded.backends.values());
        let mut writer = Self {
            services: BTreeMap::new(),
            ranges: Ranges::new(limits.slots),
            to_clear: Vec::new(),
            cleared: Vec::new(),
            backends: BackendTable::new(limits.backends.saturating_add(1)),
            backend_alloc: Ids::new(limits.backends.saturating_add(1)),
            frontend_alloc: Ids::new(limits.frontends),
            stray_keys: decoded.stray_keys,
            members: decoded.members,
            maybe_orphans: BTreeSet::new(),
            recount: false,
            unsettled: BTreeSet::new(),
            check_stray_members: true,
            undeleted_members: BTreeSet::new(),
            reserved_ids: BTreeSet::new(),
            last_steps: [0; STEPS.len()],
            v4_filter: None,
            ports,
            limits,
            maps,
        };
        for (id, value) in decoded.backends {
            let maps = &writer.maps;
            writer.backends.adopt(id, value, |i| maps.backend(i));
            writer.backend_alloc.take(id);
        }
        for FoundFrontend {
            frontend, master, ..
        } in decoded.frontends
        {
            writer.frontend_alloc.take(master.frontend_id);
            writer.unsettled.insert(master.frontend_id);
            let owned = writer
                .ranges
                .take(master.slot_base, u32::from(master.count));
            // A master whose range is incomplete or not its own is rewritten by the next apply.
            // Its backend ids are read back from the range when needed (the non-empty
            // elements, as the found `slots`, unless another process writes the maps meanwhile).
            writer.set_programmed(frontend, master, owned);
        }
        let adopted = writer.services.len();
        crate::compact::refill_after(&mut writer.services, adopted);
        // A filter that is exactly the one of the masters found is kept; any other (a new map,
        // one a failed write left wider) is written whole by the first apply.
        let expected = V4Filter::of(writer.services.keys());
        writer.v4_filter = writer.maps.v4_filter().filter(|found| *found == expected);
        // Filled elements no master reaches: cleared by the next apply, then free.
        for (start, len) in decoded.stray_slots {
            if writer.ranges.take(start, len) {
                writer.to_clear.push((start, len));
            }
        }
        let stray_ids: BTreeSet<u32> = writer
            .members
            .iter()
            .map(|&(fid, _)| fid)
            .filter(|fid| !writer.frontend_alloc.is_taken(*fid))
            .collect();
        for fid in stray_ids {
            writer.frontend_alloc.take(fid);
            writer.reserved_ids.insert(fid);
        }
        let unused = writer.backends.unreferenced(|id| writer.maps.backend(id));
        writer.maybe_orphans.extend(unused);
        Ok(writer)
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The maps, for tests that change them behind the writer's back.
    #[cfg(test)]
    pub(crate) fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Wall time of each part of the last apply, microseconds, with its name (a profile of
    /// where an apply's time goes: each numbered step writes one map).
    pub fn last_steps(&self) -> Vec<(&'static str, u64)> {
        STEPS.iter().copied().zip(self.last_steps).collect()
    }

    /// Number of frontends and backends the maps hold.
    pub fn programmed(&self) -> (usize, usize) {
        (self.services.len(), self.backends.len())
    }

    /// Makes the maps hold exactly `desired`, writing only what differs.
    pub fn apply(&mut self, desired: &impl DesiredState) -> Result<ApplyReport, DatapathError> {
        self.apply_scoped(desired, None)
    }

    /// Makes the maps hold what `desired` says for the frontends in `changed` (programming,
    /// rewriting or deleting each), in the same order and with the same rollback as
    /// [`Writer::apply`], and touches no other frontend: the cost follows `changed`, not the
    /// size of `desired`. Frontends outside `changed` must be as the maps hold them (the
    /// caller's full [`Writer::apply`] on its resync timer repairs anything else).
    pub fn apply_changed(
        &mut self,
        desired: &impl DesiredState,
        changed: &BTreeSet<FrontendKey>,
    ) -> Result<ApplyReport, DatapathError> {
        self.apply_scoped(desired, Some(changed))
    }

    fn apply_scoped(
        &mut self,
        desired: &impl DesiredState,
        scope: Option<&BTreeSet<FrontendKey>>,
    ) -> Result<ApplyReport, DatapathError> {
        let mut laps = Laps::new();
        // Ranges cleared by earlier applies may hold new backend lists from now on.
        for (start, len) in std::mem::take(&mut self.cleared) {
            self.ranges.free(start, len);
        }
        let mut new_backends: Vec<u32> = Vec::new();
        if scope.is_none() {
            // Room in the value index for the backends a full programming may add (an
            // overestimate where frontends share backends, at 5 bytes a slot), and in the list
            // of new ones (4 bytes each, rather than up to twice that from growing it).
            let listed: usize = desired.frontends().map(|(_, s)| s.backends.len()).sum();
            let room = (self.limits.backends as usize).saturating_sub(self.backends.len());
            let adding = listed.saturating_sub(self.backends.len()).min(room);
            let maps = &self.maps;
            self.backends.reserve_index(adding, |id| maps.backend(id));
            new_backends.reserve_exact(adding);
        }
        let mut report = ApplyReport::default();
        // Frontends new to `services` (see the refill at the end).
        let mut added = 0;
        let mut errors: BTreeMap<FrontendKey, String> = BTreeMap::new();

        // Which frontends change, and the backend ids they need.
        // Each candidate with what the maps hold for it: a full apply walks both tables in key
        // order (one merge, no look-up per frontend); a scoped one looks its few keys up.
        let pending: Vec<(&FrontendKey, SpecRef<'_>, Option<Box<Programmed>>)> = {
            let candidates: Box<dyn Iterator<Item = (_, _, Option<&Programmed>)>> = match scope {
                None => Box::new(self.programmed_in_order(desired.frontends())),
                Some(keys) => Box::new(
                    keys.iter()
                        .filter_map(|k| desired.frontend(k))
                        .map(|(frontend, spec)| (frontend, spec, self.services.get(frontend))),
                ),
            };
            candidates
                .filter(|(frontend, spec, old)| {
                    !old.is_some_and(|p| {
                        !self.unsettled.contains(&p.master.frontend_id)
                            && self.holds(frontend, p, *spec)
                    })
                })
                .map(|(frontend, spec, old)| (frontend, spec, old.cloned().map(Box::new)))
                .collect()
        };
        let mut changes: Vec<Change<'_>> = Vec::with_capacity(pending.len());
        for (frontend, spec, old) in pending {
            match self.backend_ids_for(*frontend, spec, &mut new_backends) {
                Ok(ids) => changes.push(Change {
                    frontend: *frontend,
                    spec,
                    ids: ids.into_boxed_slice(),
                    old,
                    frontend_id: 0,
                    master: ServiceValue::default(),
                    fresh: false,
                    members: None,
                    failed: None,
                }),
                Err(reason) => {
                    errors.insert(*frontend, reason);
                }
            }
        }

        // 1. New backends were written as they got their ids, above.
        report.backends_written = new_backends.len();
        report.map_operations += new_backends.len();
        // The new ids stay: step 7 deletes the ones no slot refers to after all (their
        // frontend failed).
        let new_backends = NewIds::from(new_backends);

        laps.lap(0);

        // What each change writes, within the tables' room.
        let mut member_entries = self.members.len();
        for change in &mut changes {
            if change.failed.is_some() {
                continue;
            }
            if let Err(reason) = self.prepare(change, &mut member_entries) {
                change.failed = Some(reason);
            }
        }
        let mut live: Vec<usize> = Vec::new();
        for (i, change) in changes.iter().enumerate() {
            match &change.failed {
                Some(reason) => {
                    errors.insert(change.frontend, reason.clone());
                }
                None if change.frontend_id != 0 => live.push(i),
                None => {}
            }
        }

        laps.lap(1);

        // 2a. Memberships of the backends that join a set: before any slot holds them.
        // (change, backend id) pairs, 8 bytes each.
        let joining: usize = live
            .iter()
            .filter(|&&c| changes[c].failed.is_none())
            .map(|&c| changes[c].joining().count())
            .sum();
        let mut joins: Vec<(u32, u32)> = Vec::with_capacity(joining);
        for &c in &live {
            let change = &changes[c];
            if change.failed.is_none() {
                joins.extend(change.joining().map(|id| (c as u32, id)));
            }
        }
        let maps = &mut self.maps;
        let member_of = |(c, id): (u32, u32)| (changes[c as usize].frontend_id, id);
        let (applied, failed) = batched(
            joins.len(),
            |i| joins[i].0 as usize,
            &mut report.map_calls,
            |items| {
                let keys: Vec<MemberKey> = items
                    .iter()
                    .map(|&i| member_key(member_of(joins[i])))
                    .collect();
                maps.update_members(&keys)
            },
        );
        let done = applied.iter().filter(|&&a| a).count();
        let joined = joins
            .iter()
            .enumerate()
            .filter(|&(i, _)| applied[i])
            .map(|(_, &join)| member_of(join));
        report.map_operations += done;
        if joins.len() >= self.members.len() / 8 {
            // Many (a full programming): built in bulk and merged, linear in both.
            let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(done);
            pairs.extend(joined);
            let mut joined = BTreeSet::from_iter(pairs);
            self.members.append(&mut joined);
        } else {
            self.members.extend(joined);
        }
        for (&c, (_, reason)) in &failed {
            self.unsettled.insert(changes[c].frontend_id);
            changes[c].failed = Some(format!("writing a backend membership: {reason}"));
        }

        drop((joins, applied, failed));

        laps.lap(2);

        // 2b. Slots: the new backend ids into each fresh range, of the frontends whose
        // memberships are written: (change, index in the range).
        let most: usize = live
            .iter()
            .filter(|&&c| changes[c].failed.is_none() && changes[c].fresh)
            .map(|&c| changes[c].ids.len())
            .sum();
        let mut slots: Vec<(u32, u32)> = Vec::with_capacity(most);
        for &c in &live {
            let change = &changes[c];
            if change.failed.is_none() && change.fresh {
                slots.extend((0..change.ids.len() as u32).map(|s| (c as u32, s)));
            }
        }
        let maps = &mut self.maps;
        let (applied, failed) = batched(
            slots.len(),
            |i| slots[i].0 as usize,
            &mut report.map_calls,
            |items| {
                let mut indexes: Vec<u32> = Vec::with_capacity(items.len());
                let mut ids: Vec<u32> = Vec::with_capacity(items.len());
                for &i in items {
                    let (c, s) = slots[i];
                    let change = &changes[c as usize];
                    indexes.push(change.master.slot_base + s);
                    ids.push(change.ids[s as usize]);
                }
                maps.write_slots(&indexes, &ids)
            },
        );
        report.map_operations += applied.iter().filter(|&&a| a).count();
        for (&c, (i, reason)) in &failed {
            changes[c].failed = Some(format!(
                "writing backend slot {}: {reason}",
                slots[*i].1 + 1
            ));
        }

        drop((slots, applied, failed));

        laps.lap(3);

        // 3. Masters: from here on readers use the new ranges.
        let mut publish: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&c| changes[c].failed.is_none())
            .collect();
        // First the ports of the TCP backends these masters reach are marked in
        // `lb_tcp_backend_ports`, so the reverse hooks look for the translations of the connects
        // sent to them. Where that fails, a master that reaches a backend whose mark the map
        // may not hold is not published (an existing frontend keeps its old master).
        if let Err(reason) = self.mark_ports(&publish, &changes, &mut report) {
            for &c in &publish {
                if !reason.held.contains(&c) {
                    changes[c].failed = Some(format!("writing {TCP_PORTS_MAP}: {}", reason.reason));
                }
            }
            publish.retain(|&c| changes[c].failed.is_none());
        }
        // Then the /16s of the masters to publish leave `lb_v4_filter`, so no connect skips
        // them. Where that fails, a new master in a /16 connects may skip is not published
        // (rolled back below; an existing one's /16 already holds it).
        let publishing: Vec<FrontendKey> = publish.iter().map(|&c| changes[c].frontend).collect();
        // What the map holds if the write fails (a failed write changes nothing).
        let known = self.v4_filter.clone();
        if let Err(reason) = self.hold_in_v4_filter(&publishing, &mut report) {
            let known = known.as_ref();
            for &c in &publish {
                let change = &mut changes[c];
                let skipped = prefix_of(&change.frontend).is_some()
                    && known.is_none_or(|f| f.skips_frontend(&change.frontend));
                if change.old.is_none() && skipped {
                    change.failed = Some(format!("writing {V4_FILTER_MAP}: {reason}"));
                }
            }
            publish.retain(|&c| changes[c].failed.is_none());
        }
        drop(publishing);
        let maps = &mut self.maps;
        let (applied, failed) = batched(
            publish.len(),
            |i| publish[i],
            &mut report.map_calls,
            |items| {
                let keys: Vec<ServiceKey> = items
                    .iter()
                    .map(|&i| changes[publish[i]].frontend.key())
                    .collect();
                let values: Vec<ServiceValue> =
                    items.iter().map(|&i| changes[publish[i]].master).collect();
                maps.update_services(&keys, &values)
            },
        );
        for (&c, (_, reason)) in &failed {
            changes[c].failed = Some(format!("writing the service entry: {reason}"));
        }

        let mut member_deletes: BTreeSet<(u32, u32)> = BTreeSet::new();
        let mut departed: Vec<(u32, u32)> = Vec::new();
        for (i, &c) in publish.iter().enumerate() {
            if !applied[i] {
                continue;
            }
            report.map_operations += 1;
            report.frontends_written += 1;
            let change = &mut changes[c];
            // The old range, when the new master points elsewhere: no reader reaches it once
            // the readers that read the old master are done, which clearing it (step 5) and
            // not reusing it before the next apply allow for.
            if change.fresh || change.ids.is_empty() {
                self.to_clear
                    .extend(change.old.as_deref().and_then(Programmed::range));
            }
            // Memberships of the backends that left the set.
            member_deletes.extend(change.leaving().map(|id| (change.frontend_id, id)));
            if let Some(old) = &change.old {
                let before: Vec<u32> = self.slot_ids(&old.master).collect();
                departed_from(
                    &mut departed,
                    change.frontend,
                    change.frontend_id,
                    &before,
                    &change.ids,
                );
            }
            let (frontend, master, frontend_id) =
                (change.frontend, change.master, change.frontend_id);
            // Published: its range holds the ids now; free the copy before the next change.
            change.ids = Box::default();
            added += usize::from(self.set_programmed(frontend, master, true));
            self.unsettled.remove(&frontend_id);
        }
        // The /16s of frontends rolled back or deleted: skipped again once no master is left
        // in them (after step 4).
        let mut released: BTreeSet<u16> = BTreeSet::new();
        // Frontends that failed part-way: an existing one keeps its old master and its old
        // range, untouched; a new one is rolled back. A fresh range (written in part or whole,
        // never published) is cleared in step 5.
        for &c in &live {
            let change = &mut changes[c];
            let Some(reason) = change.failed.take() else {
                continue;
            };
            errors.insert(change.frontend, reason);
            if change.fresh {
                self.to_clear
                    .push((change.master.slot_base, change.ids.len() as u32));
            }
            match change.old.take() {
                Some(old) => {
                    // The memberships of backends the old range does not hold (joined for the
                    // new one) go again.
                    let kept: BTreeSet<u32> = self.slot_ids(&old.master).collect();
                    member_deletes.extend(
                        self.members_of(change.frontend_id)
                            .filter(|id| !kept.contains(id))
                            .map(|id| (change.frontend_id, id)),
                    );
                    // Compared in full (memberships too) by the next apply.
                    self.unsettled.insert(change.frontend_id);
                }
                None => {
                    member_deletes.extend(
                        self.members_of(change.frontend_id)
                            .map(|id| (change.frontend_id, id)),
                    );
                    released.extend(prefix_of(&change.frontend));
                    self.frontend_alloc.release(change.frontend_id);
                    tracing::debug!(frontend = %change.frontend, "rolled back a partially written frontend");
                }
            }
        }
        // Done with: at 30,000 frontends it is a few MB, better not alive with what follows.
        drop(changes);

        laps.lap(4);

        // 4. Masters of frontends no longer wanted: their connects pass through from here on.
        let gone: Vec<FrontendKey> = match scope {
            None => {
                // Both in key order: one merge, no look-ups.
                let mut wanted = desired.frontends().map(|(key, _)| key).peekable();
                self.services
                    .keys()
                    .filter(|&f| {
                        while wanted.next_if(|&w| w < f).is_some() {}
                        wanted.peek() != Some(&f)
                    })
                    .copied()
                    .collect()
            }
            Some(keys) => keys
                .iter()
                .filter(|f| self.services.contains_key(f) && desired.frontend(f).is_none())
                .copied()
                .collect(),
        };
        // Masters of no known frontend (their ranges are free: nothing refers to them).
        let strays = std::mem::take(&mut self.stray_keys);
        let maps = &mut self.maps;
        let (applied, failed) = batched(
            gone.len() + strays.len(),
            |i| i,
            &mut report.map_calls,
            |items| {
                let keys: Vec<ServiceKey> = items
                    .iter()
                    .map(|&i| {
                        gone.get(i)
                            .map_or_else(|| strays[i - gone.len()], |f| f.key())
                    })
                    .collect();
                maps.delete_services(&keys)
            },
        );
        for (i, &key) in strays.iter().enumerate() {
            if applied[gone.len() + i] {
                report.map_operations += 1;
            } else {
                self.stray_keys.push(key);
            }
        }
        for (&g, (_, reason)) in &failed {
            if let Some(&frontend) = gone.get(g) {
                errors.insert(frontend, format!("deleting the service entry: {reason}"));
            }
        }
        for (g, frontend) in gone.iter().enumerate() {
            if !applied[g] {
                continue;
            }
            report.map_operations += 1;
            report.frontends_deleted += 1;
            let Some(programmed) = self.remove_programmed(frontend) else {
                continue;
            };
            released.extend(prefix_of(frontend));
            self.to_clear.extend(programmed.range());
            let frontend_id = programmed.master.frontend_id;
            let before: Vec<u32> = self.slot_ids(&programmed.master).collect();
            departed_from(&mut departed, *frontend, frontend_id, &before, &[]);
            member_deletes.extend(self.members_of(frontend_id).map(|id| (frontend_id, id)));
            // Released once its memberships are gone (after step 6).
            self.reserved_ids.insert(frontend_id);
            self.unsettled.remove(&frontend_id);
        }

        // The /16s no master is left in: connects skip the lookup there from here on.
        if let Err(reason) = self.release_in_v4_filter(&released, &mut report) {
            // Only the filter's gain is lost: written whole by the next apply.
            tracing::warn!("could not write {V4_FILTER_MAP}: {reason}");
        }

        laps.lap(5);

        // 5. Ranges no master points to any more: cleared, and free for the next apply.
        let to_clear = std::mem::take(&mut self.to_clear);
        let elements: Vec<(u32, u32)> = to_clear
            .iter()
            .enumerate()
            .flat_map(|(r, &(start, len))| (start..start + len).map(move |i| (r as u32, i)))
            .collect();
        let maps = &mut self.maps;
        let (applied, failed) = batched(
            elements.len(),
            |i| elements[i].0 as usize,
            &mut report.map_calls,
            |items| {
                let indexes: Vec<u32> = items.iter().map(|&i| elements[i].1).collect();
                maps.write_slots(&indexes, &vec![0; indexes.len()])
            },
        );
        report.map_operations += applied.iter().filter(|&&a| a).count();
        for (r, range) in to_clear.into_iter().enumerate() {
            if failed.contains_key(&r) {
                // Unreachable where it is; cleared again by the next apply, free after that.
                tracing::warn!(
                    start = range.0,
                    len = range.1,
                    "could not clear a slot range"
                );
                self.to_clear.push(range);
            } else {
                self.cleared.push(range);
            }
        }
        drop((elements, applied, failed));

        laps.lap(6);

        // 6. Memberships of backends that left a set, and of frontend ids no frontend has.
        if std::mem::take(&mut self.check_stray_members) {
            let live_ids: BTreeSet<u32> = self
                .services
                .values()
                .map(|p| p.master.frontend_id)
                .collect();
            // Memberships are sorted by frontend id: one look-up per frontend id.
            let mut last: Option<(u32, bool)> = None;
            member_deletes.extend(self.members.iter().copied().filter(|&(fid, _)| {
                let live = match last {
                    Some((f, live)) if f == fid => live,
                    _ => live_ids.contains(&fid),
                };
                last = Some((fid, live));
                !live
            }));
        }
        // A failed deletion is retried unless the backend is in its frontend's set again
        // (this apply counted it as held, so it wrote no membership for it).
        let undeleted = std::mem::take(&mut self.undeleted_members);
        if !undeleted.is_empty() {
            let wanted: BTreeSet<(u32, u32)> = self
                .services
                .iter()
                .filter(|(f, p)| needs_members(proto_number(f.protocol), p.master.flags))
                .flat_map(|(_, p)| {
                    self.slot_ids(&p.master)
                        .map(move |b| (p.master.frontend_id, b))
                })
                .collect();
            member_deletes.extend(undeleted.into_iter().filter(|m| !wanted.contains(m)));
        }
        let member_deletes: Vec<(u32, u32)> = member_deletes.into_iter().collect();
        let maps = &mut self.maps;
        let (applied, _) = batched(
            member_deletes.len(),
            |i| i,
            &mut report.map_calls,
            |items| {
                let keys: Vec<MemberKey> = items
                    .iter()
                    .map(|&i| member_key(member_deletes[i]))
                    .collect();
                maps.delete_members(&keys)
            },
        );
        for (i, &(fid, bid)) in member_deletes.iter().enumerate() {
            if applied[i] {
                report.map_operations += 1;
                report.memberships_deleted += 1;
                self.members.remove(&(fid, bid));
            } else {
                // Kept in the mirror; the next apply retries.
                tracing::warn!(
                    frontend_id = fid,
                    backend_id = bid,
                    "could not delete a backend membership"
                );
                self.undeleted_members.insert((fid, bid));
                // Its frontend (if it still has one) is checked in full next time.
                self.unsettled.insert(fid);
            }
        }

        // Frontend ids whose memberships are all gone may serve new frontends again.
        let free: Vec<u32> = self
            .reserved_ids
            .iter()
            .copied()
            .filter(|&fid| self.members_of(fid).next().is_none())
            .collect();
        for fid in free {
            self.reserved_ids.remove(&fid);
            self.frontend_alloc.release(fid);
        }

        laps.lap(7);

        // 7. Backends no slot refers to any more.
        if std::mem::take(&mut self.recount) {
            self.recount_refs();
        }
        let stray_refs: BTreeSet<u32> = self.undeleted_members.iter().map(|&(_, id)| id).collect();
        let mut orphans: Vec<u32> = Vec::new();
        // Their values, read before their elements are cleared, to take them out of the index.
        let mut orphaned: Vec<Backend> = Vec::new();
        let candidates = std::mem::take(&mut self.maybe_orphans);
        // A new backend is unused when its frontend failed: rare, so the check is a scan of
        // the new ids, not a set of them.
        let fresh = new_backends
            .iter()
            .filter(|&id| !candidates.contains(&id) && !self.backends.is_referenced(id));
        let unused: Vec<u32> = fresh.collect();
        for id in candidates.into_iter().chain(unused) {
            if stray_refs.contains(&id) {
                self.maybe_orphans.insert(id);
            } else if !self.backends.is_referenced(id)
                && let Some(value) = self.maps.backend(id)
            {
                orphans.push(id);
                orphaned.push(value);
            }
        }
        drop(new_backends);
        let maps = &mut self.maps;
        let (applied, _) = batched(
            orphans.len(),
            |i| i,
            &mut report.map_calls,
            |items| {
                let ids: Vec<u32> = items.iter().map(|&i| orphans[i]).collect();
                maps.delete_backends(&ids)
            },
        );
        for (i, &id) in orphans.iter().enumerate() {
            if !applied[i] {
                tracing::warn!(backend_id = id, "could not delete a backend");
                self.maybe_orphans.insert(id);
                continue;
            }
            report.map_operations += 1;
            report.backends_deleted += 1;
            self.backends.forget(id, &orphaned[i]);
            self.backend_alloc.release(id);
        }

        // A full programming inserted most frontends in key order: nodes half full otherwise.
        crate::compact::refill_after(&mut self.services, added);

        laps.lap(8);
        self.last_steps = laps.us;

        departed.sort_unstable();
        departed.dedup();
        report.departed = departed;
        report.errors = errors
            .into_iter()
            .map(|(frontend, reason)| FrontendError { frontend, reason })
            .collect();
        Ok(report)
    }

    /// The backend ids of `spec` in slot order. A backend not in `lb_backends` yet gets an id
    /// and is written there at once (step 1: no slot refers to the id yet, so no reader reaches
    /// it), and its id is added to `new`; the table finds it there from then on, for the next
    /// frontend that has it. A failed write gives the id back and fails the frontend (the
    /// backends it did write are deleted by step 7, unless another frontend uses them).
    fn backend_ids_for(
        &mut self,
        frontend: FrontendKey,
        spec: SpecRef<'_>,
        new: &mut Vec<u32>,
    ) -> Result<Vec<u32>, String> {
        if spec.backends.len() > usize::from(u16::MAX) {
            return Err(format!(
                "{} backends; a frontend holds at most {}",
                spec.backends.len(),
                u16::MAX
            ));
        }
        let mut ids = Vec::with_capacity(spec.backends.len());
        for addr in spec.backends.iter() {
            if addr.is_ipv4() != frontend.address.is_ipv4() {
                return Err(format!(
                    "backend {addr} is not of the frontend's address family"
                ));
            }
            let value = backend_value(addr, frontend.protocol);
            let Self {
                maps,
                backends,
                backend_alloc,
                ..
            } = self;
            let id = match backends.find(&value, |i| maps.backend(i)) {
                Ok(id) => id,
                Err(absent) => {
                    let id = backend_alloc
                        .allocate()
                        .ok_or_else(|| "the backend table is full".to_owned())?;
                    if let Err(e) = maps.update_backends(&[id], &[value]) {
                        backend_alloc.release(id);
                        return Err(format!("writing backend {addr}: {}", e.reason));
                    }
                    backends.record(absent, id, |i| maps.backend(i));
                    new.push(id);
                    id
                }
            };
            ids.push(id);
        }
        Ok(ids)
    }

    /// Fills in what `change` writes; an unchanged frontend gets frontend id 0 (nothing to
    /// write). Refuses a change the tables have no room for, before anything is written.
    fn prepare(
        &mut self,
        change: &mut Change<'_>,
        member_entries: &mut usize,
    ) -> Result<(), String> {
        let spec = change.spec;
        let ids = &change.ids;
        let master_of = |frontend_id, slot_base| master_of(spec, ids.len(), frontend_id, slot_base);
        // Memberships only where the programs read them (UDP, session affinity): computed per
        // frontend, so one that gains them gets them written before its master says so (step
        // 2a), and one that loses them has them deleted after (step 6).
        let proto = proto_number(change.frontend.protocol);
        let mut slot_ids: Vec<u32> = ids.to_vec();
        slot_ids.sort_unstable();
        slot_ids.dedup();
        let needs_now = needs_members(proto, spec.flags());
        let needed_before = change
            .old
            .as_ref()
            .is_some_and(|p| needs_members(proto, p.master.flags));
        let wanted: Vec<u32> = if needs_now {
            slot_ids.clone()
        } else {
            Vec::new()
        };
        // The old range serves the new master when it holds exactly the new backend ids.
        let keep_range = change.old.as_ref().is_some_and(|p| {
            p.owned
                && usize::from(p.master.count) == ids.len()
                && self.slot_ids(&p.master).eq(ids.iter().copied())
        });
        if let Some(p) = &change.old {
            let frontend_id = p.master.frontend_id;
            if keep_range
                && p.master == master_of(frontend_id, p.master.slot_base)
                && self.members_of(frontend_id).eq(wanted.iter().copied())
            {
                // Already as wanted: the next apply skips it.
                self.unsettled.remove(&frontend_id);
                return Ok(());
            }
        }
        let fresh = !keep_range && !ids.is_empty();
        let slot_base = if fresh {
            self.ranges.allocate(ids.len() as u32).ok_or_else(|| {
                format!(
                    "the slot table is full: no free range of {} backend slots \
                     (--max-service-entries {}, {} in use)",
                    ids.len(),
                    self.limits.slots,
                    self.ranges.used()
                )
            })?
        } else {
            change
                .old
                .as_ref()
                .filter(|_| keep_range)
                .map_or(0, |p| p.master.slot_base)
        };
        // Never written nor published: free at once when the change is refused below.
        let unallocate = |ranges: &mut Ranges| {
            if fresh {
                ranges.free(slot_base, ids.len() as u32);
            }
        };
        let frontend_id = match &change.old {
            Some(p) => p.master.frontend_id,
            None => match self.frontend_alloc.allocate() {
                Some(id) => id,
                None => {
                    unallocate(&mut self.ranges);
                    return Err("no free frontend id (raise --max-frontends)".to_owned());
                }
            },
        };
        let held: Vec<u32> = self.members_of(frontend_id).collect();
        let joined: Vec<u32> = if needs_now || needed_before {
            slot_ids
                .into_iter()
                .filter(|id| held.binary_search(id).is_err())
                .collect()
        } else {
            Vec::new()
        };
        let joining = joined.len();
        if *member_entries + joining > self.limits.members as usize {
            if change.old.is_none() {
                self.frontend_alloc.release(frontend_id);
            }
            unallocate(&mut self.ranges);
            return Err(format!(
                "the membership table is full ({} entries)",
                self.limits.members
            ));
        }
        *member_entries += joining;
        change.master = master_of(frontend_id, slot_base);
        change.frontend_id = frontend_id;
        change.fresh = fresh;
        change.members =
            (!(held.is_empty() && wanted.is_empty() && joined.is_empty())).then(|| {
                Box::new(Memberships {
                    held,
                    wanted,
                    joined,
                })
            });
        Ok(())
    }

    /// Whether the maps hold `spec` for `frontend` (as `p` records them): its master, and
    /// each slot's backend.
    fn holds(&self, frontend: &FrontendKey, p: &Programmed, spec: SpecRef<'_>) -> bool {
        p.owned
            && p.master
                == master_of(
                    spec,
                    spec.backends.len(),
                    p.master.frontend_id,
                    p.master.slot_base,
                )
            && {
                // One pass over the range: each slot's backend is the spec's, and no slot more.
                let mut ids = self.slot_ids(&p.master);
                spec.backends.iter().all(|addr| {
                    ids.next().is_some_and(|id| {
                        self.maps.backend(id) == Some(backend_value(addr, frontend.protocol))
                    })
                }) && ids.next().is_none()
            }
    }

    /// The backend ids of the range `master` points to, in slot order: the non-empty elements
    /// (a range the writer wrote has none empty; one found when adopting maps may).
    fn slot_ids(&self, master: &ServiceValue) -> impl Iterator<Item = u32> + '_ {
        range_of(master)
            .map(|index| self.maps.slot(index))
            .filter(|&id| id != 0)
    }

    /// Writes `lb_v4_filter` with the /16s of `publishing` held, when that changes it (or it is
    /// not known: then whole, from the frontends programmed and `publishing`).
    fn hold_in_v4_filter(
        &mut self,
        publishing: &[FrontendKey],
        report: &mut ApplyReport,
    ) -> Result<(), String> {
        let (mut next, mut changed) = match &self.v4_filter {
            Some(filter) => (filter.clone(), false),
            None => (V4Filter::of(self.services.keys()), true),
        };
        for frontend in publishing {
            changed |= next.hold(frontend);
        }
        if changed {
            self.write_v4_filter(next, report)?;
        }
        Ok(())
    }

    /// Writes `lb_v4_filter` with the /16s of `released` that no programmed frontend is in
    /// any more skipped, when that changes it (or it is not known: then whole).
    fn release_in_v4_filter(
        &mut self,
        released: &BTreeSet<u16>,
        report: &mut ApplyReport,
    ) -> Result<(), String> {
        let Some(mut next) = self.v4_filter.clone() else {
            let whole = V4Filter::of(self.services.keys());
            return self.write_v4_filter(whole, report);
        };
        let mut changed = false;
        for &prefix in released {
            if !self.holds_prefix(prefix) {
                changed |= next.release(prefix);
            }
        }
        if changed {
            self.write_v4_filter(next, report)?;
        }
        Ok(())
    }

    /// Marks the ports of the TCP backends of the changes `publish` names
    /// ([`super::ports`]), writing `lb_tcp_backend_ports` when that changes it (or when the
    /// map is not known to hold the marks). On failure, the changes whose marks the map held
    /// already.
    fn mark_ports(
        &mut self,
        publish: &[usize],
        changes: &[Change<'_>],
        report: &mut ApplyReport,
    ) -> Result<(), PortsFailure> {
        let before = self.ports.clone();
        for &c in publish {
            for backend in tcp_backends(&changes[c]) {
                self.ports.want(&backend);
            }
        }
        let Some(&marks) = self.ports.pending() else {
            return Ok(());
        };
        report.map_calls += 1;
        match self.maps.write_tcp_ports(&marks) {
            Ok(()) => {
                report.map_operations += 1;
                self.ports.set_written(true);
                Ok(())
            }
            Err(reason) => {
                self.ports.set_written(false);
                let held = publish
                    .iter()
                    .copied()
                    .filter(|&c| tcp_backends(&changes[c]).all(|b| before.holds(&b)))
                    .collect();
                Err(PortsFailure { reason, held })
            }
        }
    }

    fn write_v4_filter(&mut self, next: V4Filter, report: &mut ApplyReport) -> Result<(), String> {
        report.map_calls += 1;
        match self.maps.write_v4_filter(&next) {
            Ok(()) => {
                report.map_operations += 1;
                self.v4_filter = Some(next);
                Ok(())
            }
            Err(reason) => {
                self.v4_filter = None;
                Err(reason)
            }
        }
    }

    /// Whether a programmed frontend has an address in the IPv4 /16 `prefix` (IPv4 keys sort
    /// by address, and the IPv4-mapped IPv6 ones of a /16 are together too: two range reads).
    fn holds_prefix(&self, prefix: u16) -> bool {
        let [a, b] = prefix.to_be_bytes();
        let first = std::net::Ipv4Addr::new(a, b, 0, 0);
        [IpAddr::V4(first), IpAddr::V6(first.to_ipv6_mapped())]
            .into_iter()
            .any(|address| {
                let from = FrontendKey {
                    address,
                    port: 0,
                    protocol: Protocol::Tcp,
                };
                self.services
                    .range(from..)
                    .next()
                    .is_some_and(|(k, _)| prefix_of(k) == Some(prefix))
            })
    }

    /// Records what the maps hold for a frontend, keeping backend reference counts: its range
    /// must hold its backend ids already, and the range of the record it replaces still.
    /// `true` when the frontend is new to the record.
    fn set_programmed(&mut self, frontend: FrontendKey, master: ServiceValue, owned: bool) -> bool {
        let Self { maps, backends, .. } = self;
        for id in range_of(&master)
            .map(|i| maps.slot(i))
            .filter(|&id| id != 0)
        {
            backends.add_ref(id);
        }
        let programmed = Programmed {
            master,
            digest: self.digest_of(&master),
            owned,
        };
        match self.services.insert(frontend, programmed) {
            Some(old) => {
                self.release_refs(&old);
                false
            }
            None => true,
        }
    }

    /// Forgets a frontend, whose range must still hold its backend ids.
    fn remove_programmed(&mut self, frontend: &FrontendKey) -> Option<Programmed> {
        let old = self.services.remove(frontend)?;
        self.release_refs(&old);
        Some(old)
    }

    /// Drops the references of the backend ids in `p`'s range, unless the range no longer
    /// holds what was counted (then every count is taken again: [`Writer::recount_refs`]).
    fn release_refs(&mut self, p: &Programmed) {
        if self.digest_of(&p.master) != p.digest {
            tracing::warn!(
                frontend_id = p.master.frontend_id,
                "lb_slots was changed behind the writer's back; counting backend references again"
            );
            self.recount = true;
            return;
        }
        let Self {
            maps,
            backends,
            maybe_orphans,
            ..
        } = self;
        for id in range_of(&p.master)
            .map(|i| maps.slot(i))
            .filter(|&id| id != 0)
        {
            if backends.release_ref(id) {
                maybe_orphans.insert(id);
            }
        }
    }

    /// The digest of the elements of `master`'s range as the maps hold them now.
    fn digest_of(&self, master: &ServiceValue) -> u32 {
        range_digest(range_of(master).map(|i| self.maps.slot(i)))
    }

    /// Takes every backend reference count again from the ranges as the maps hold them (and
    /// their digests); backends no range refers to become candidates for deletion.
    fn recount_refs(&mut self) {
        self.backends.clear_refs();
        let maps = &self.maps;
        let backends = &mut self.backends;
        for p in self.services.values_mut() {
            let elements: Vec<u32> = range_of(&p.master).map(|i| maps.slot(i)).collect();
            for &id in elements.iter().filter(|&&id| id != 0) {
                backends.add_ref(id);
            }
            p.digest = range_digest(elements.into_iter());
        }
        let unused = self.backends.unreferenced(|id| self.maps.backend(id));
        self.maybe_orphans.extend(unused);
    }

    /// Backend ids `lb_members` holds for a frontend id.
    fn members_of(&self, frontend_id: u32) -> impl Iterator<Item = u32> + '_ {
        self.members
            .range((frontend_id, 0)..=(frontend_id, u32::MAX))
            .map(|&(_, backend_id)| backend_id)
    }

    /// Frontends as the maps hold them, with backends decoded, in key order.
    pub fn frontends(&self) -> Vec<ProgrammedFrontend> {
        frontends_of(
            self.services
                .iter()
                .map(|(f, p)| (*f, p.master, self.slot_ids(&p.master).collect())),
            |id| self.maps.backend(id),
        )
    }

    /// The frontend id of a programmed frontend.
    pub fn frontend_id(&self, frontend: &FrontendKey) -> Option<u32> {
        self.services.get(frontend).map(|p| p.master.frontend_id)
    }

    /// The ids of `frontends` that are programmed, which must come in key order (as the
    /// planner gives them): one merge with the programmed frontends, no look-up per frontend.
    pub fn frontend_ids<'a, T: 'a>(
        &'a self,
        frontends: impl Iterator<Item = (&'a FrontendKey, T)> + 'a,
    ) -> impl Iterator<Item = (&'a FrontendKey, T, u32)> + 'a {
        self.programmed_in_order(frontends)
            .filter_map(|(key, value, p)| Some((key, value, p?.master.frontend_id)))
    }

    /// Each of `frontends` (in key order) with what the maps hold for it, found by walking
    /// the programmed frontends alongside.
    fn programmed_in_order<'s, 'd: 's, T: 's>(
        &'s self,
        frontends: impl Iterator<Item = (&'d FrontendKey, T)> + 's,
    ) -> impl Iterator<Item = (&'d FrontendKey, T, Option<&'s Programmed>)> + 's {
        let mut programmed = self.services.iter().peekable();
        frontends.map(move |(key, value)| {
            while programmed.next_if(|(k, _)| *k < key).is_some() {}
            let found = programmed
                .peek()
                .filter(|(k, _)| *k == key)
                .map(|(_, p)| *p);
            (key, value, found)
        })
    }
}

#[cfg(test)]
mod tests;
