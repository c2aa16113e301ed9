//! Per-Service-port connect counters, accumulated from the per-frontend kernel counters.
//!
//! The kernel counts by frontend id; ids are reused once a frontend is deleted, and a Service
//! port has several frontends (cluster IPs of both families, node ports, external IPs). So the
//! agent keeps, per id, the value it last read and adds the increase to the Service port that
//! owns the id. An id that changes owner (or is new) counts from its value at that moment, so
//! nothing of a previous owner leaks into a Service; a counter that went down (maps recreated)
//! counts from zero again. Series exist only for Service ports with a frontend programmed on
//! this node, and are dropped with their last frontend: at most one series per Service port and
//! verdict, bounded by the frontend ids (`--max-frontends`).
//!
//! Kept for every programmed frontend, so it is kept small: owners in a vector indexed by id
//! (ids are dense below the frontend capacity), each naming its Service port by its slot in a
//! table of ports, which holds each port's label strings once (shared with the plan) and is
//! indexed by value through a hash table of slot numbers. About 32 bytes per frontend and 80
//! per Service port, where a map of owners holding their own label sets took about 300 per
//! frontend. An owner is its Service port alone: an id that passes to another frontend of the
//! same port goes on counting for that port, which is what crediting the old frontend and
//! starting the new one from the same reading would give.
//!
//! The kernel's counters are read [`READ_CHUNK`] ids at a time, so that the readings of a full
//! sync (every id new) do not add a vector of every frontend's counters to its peak memory.
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{FrontendCounts, FrontendCountsFn, NamedFrontend, ServicePort};

/// Ids whose counters are read in one call of the reader.
const READ_CHUNK: usize = 4096;

/// The Service port that owns an id.
#[derive(Debug)]
struct Owner {
    /// Its Service port's slot in [`ServiceConnects::ports`].
    port: u32,
    /// The counters last read; `None` until the first read after the id got this owner.
    last: Option<FrontendCounts>,
}

// The cost per frontend documented above.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<Option<Owner>>() == 32);

/// What a Service port counted, and how many owners name it: the port is dropped when the
/// last one goes, without a walk of all the owners.
#[derive(Debug)]
struct PortTotal {
    port: ServicePort,
    counts: FrontendCounts,
    frontends: u32,
}

#[derive(Debug, Default)]
pub(super) struct ServiceConnects {
    /// By frontend id.
    owners: Vec<Option<Owner>>,
    /// Every Service port some owner names, and only those (`None`: a free slot).
    ports: Vec<Option<PortTotal>>,
    free_ports: Vec<u32>,
    /// Slots of `ports` by the port they hold (hashed by value, compared through `ports`).
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

fn increase(last: u64, now: u64) -> u64 {
    // A counter that went down was recreated (maps rebuilt): everything since counts.
    now.checked_sub(last).unwrap_or(now)
}

/// Reads the counters of `ids` (sorted, each once) [`READ_CHUNK`] at a time and hands each id's
/// reading to `each`, in id order. `false` when some could not be read (their ids are left
/// out); no reader reads nothing.
fn read_chunked(
    ids: &[u32],
    read: Option<&FrontendCountsFn>,
    mut each: impl FnMut(u32, FrontendCounts),
) -> bool {
    debug_assert!(ids.is_sorted(), "ids are read in order");
    let mut all_read = true;
    for chunk in ids.chunks(READ_CHUNK) {
        match read.and_then(|read| read(chunk)) {
            Some(counts) if counts.len() == chunk.len() => {
                for (&id, now) in chunk.iter().zip(counts) {
                    each(id, now);
                }
            }
            _ => all_read = false,
        }
    }
    all_read
}

impl ServiceConnects {
    fn owner(&self, id: u32) -> Option<&Owner> {
        self.owners.get(id as usize)?.as_ref()
    }

    fn take_owner(&mut self, id: u32) -> Option<Owner> {
        self.owners.get_mut(id as usize)?.take()
    }

    /// Gives `id` to `owner`; returns the owner it had.
    fn put_owner(&mut self, id: u32, owner: Owner) -> Option<Owner> {
        let i = id as usize;
        if i >= self.owners.len() {
            self.owners.resize_with(i + 1, || None);
        }
        self.owners[i].replace(owner)
    }

    fn port(&self, slot: u32) -> Option<&PortTotal> {
        self.ports.get(slot as usize)?.as_ref()
    }

    /// Whether `owner` is the Service port `port`.
    fn is(&self, owner: &Owner, port: &ServicePort) -> bool {
        self.port(owner.port).is_some_and(|p| p.port == *port)
    }

    /// One more owner names `port`: its slot.
    fn hold(&mut self, port: ServicePort) -> u32 {
        let hash = self.hasher.hash_one(&port);
        let Self {
            ports,
            free_ports,
            index,
            hasher,
            ..
        } = self;
        let found = index.find(hash, |&slot| {
            ports[slot as usize]
                .as_ref()
                .is_some_and(|p| p.port == port)
        });
        if let Some(&slot) = found {
            if let Some(total) = ports[slot as usize].as_mut() {
                total.frontends += 1;
            }
            return slot;
        }
        let total = PortTotal {
            port,
            counts: FrontendCounts::default(),
            frontends: 1,
        };
        let slot = match free_ports.pop() {
            Some(slot) => {
                ports[slot as usize] = Some(total);
                slot
            }
            None => {
                ports.push(Some(total));
                (ports.len() - 1) as u32
            }
        };
        index.insert_unique(hash, slot, |&slot| {
            ports[slot as usize]
                .as_ref()
                .map_or(0, |p| hasher.hash_one(&p.port))
        });
        slot
    }

    /// One owner less names the port in `slot`; the port goes with the last one.
    fn release(&mut self, slot: u32) {
        let Some(total) = self.ports.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        total.frontends = total.frontends.saturating_sub(1);
        if total.frontends > 0 {
            return;
        }
        let hash = self.hasher.hash_one(&total.port);
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        self.ports[slot as usize] = None;
        self.free_ports.push(slot);
    }

    /// Adds what `owner` counted between its last reading and `now` to its port.
    fn credit(&mut self, owner: &Owner, now: FrontendCounts) {
        if let Some(last) = owner.last
            && let Some(total) = self
                .ports
                .get_mut(owner.port as usize)
                .and_then(Option::as_mut)
        {
            total.counts.rewritten += increase(last.rewritten, now.rewritten);
            total.counts.refused += increase(last.refused, now.refused);
        }
    }

    /// Adds what the kernel counted since the last read to each id's owner. `false` when the
    /// counters could not be read (the ids not read keep their last reading).
    pub(super) fn collect(&mut self, read: Option<&FrontendCountsFn>) -> bool {
        let ids: Vec<u32> = self
            .owners
            .iter()
            .enumerate()
            .filter(|(_, owner)| owner.is_some())
            .map(|(id, _)| id as u32)
            .collect();
        read_chunked(&ids, read, |id, now| {
            let Some(owner) = self.take_owner(id) else {
                return;
            };
            self.credit(&owner, now);
            self.put_owner(
                id,
                Owner {
                    last: Some(now),
                    ..owner
                },
            );
        })
    }

    /// Replaces the programmed frontends: counts so far go to the old owners, new owners start
    /// from the current values, Service ports without a frontend are dropped. Reads only the
    /// ids whose owner changes (none when a sync changes no frontend's identity).
    pub(super) fn set(
        &mut self,
        frontends: impl IntoIterator<Item = NamedFrontend>,
        read: Option<&FrontendCountsFn>,
    ) -> bool {
        let mut old = std::mem::take(&mut self.owners);
        self.owners.reserve(old.len());
        // Owners that give up their id (to another frontend, or because it is gone), and the
        // ids of the new owners.
        let mut leaving: Vec<(u32, Owner)> = Vec::new();
        let mut fresh: Vec<u32> = Vec::new();
        for f in frontends {
            let previous = old.get_mut(f.id as usize).and_then(Option::take);
            match previous {
                Some(owner) if self.is(&owner, &f.service) => {
                    self.put_owner(f.id, owner);
                }
                previous => {
                    leaving.extend(previous.map(|owner| (f.id, owner)));
                    self.take_over(f, &mut leaving, &mut fresh);
                }
            }
        }
        leaving.extend(
            old.into_iter()
                .enumerate()
                .filter_map(|(id, owner)| Some((id as u32, owner?))),
        );
        self.settle(leaving, fresh, read)
    }

    /// Changes the owners of some ids only (what [`ServiceConnects::set`] does for all):
    /// `remove` lose theirs, `upsert` get (or keep) theirs. Costs the ids named.
    pub(super) fn patch(
        &mut self,
        remove: &[u32],
        upsert: impl IntoIterator<Item = NamedFrontend>,
        read: Option<&FrontendCountsFn>,
    ) -> bool {
        let mut leaving: Vec<(u32, Owner)> = Vec::new();
        let mut fresh: Vec<u32> = Vec::new();
        for &id in remove {
            leaving.extend(self.take_owner(id).map(|owner| (id, owner)));
        }
        for f in upsert {
            if self
                .owner(f.id)
                .is_some_and(|owner| self.is(owner, &f.service))
            {
                continue;
            }
            self.take_over(f, &mut leaving, &mut fresh);
        }
        self.settle(leaving, fresh, read)
    }

    /// Gives `f`'s id to `f` (baseline to be read: its id goes to `fresh`); the owner it had,
    /// if any, goes to `leaving`. The port is held before the leaving owners let go (in
    /// [`Self::settle`]), so a port that only changes ids keeps its counts.
    fn take_over(
        &mut self,
        f: NamedFrontend,
        leaving: &mut Vec<(u32, Owner)>,
        fresh: &mut Vec<u32>,
    ) {
        let port = self.hold(f.service);
        let owner = Owner { port, last: None };
        leaving.extend(self.put_owner(f.id, owner).map(|old| (f.id, old)));
        fresh.push(f.id);
    }

    /// With one reading of each id: credits the `leaving` owners' last counts to their ports
    /// and lets go of them, and gives the `fresh` owners their baselines.
    fn settle(
        &mut self,
        mut leaving: Vec<(u32, Owner)>,
        fresh: Vec<u32>,
        read: Option<&FrontendCountsFn>,
    ) -> bool {
        leaving.sort_unstable_by_key(|(id, _)| *id);
        let mut ids: Vec<u32> = fresh;
        ids.extend(leaving.iter().map(|(id, _)| *id));
        ids.sort_unstable();
        ids.dedup();
        // `leaving` is in id order, as the readings come: one pass over it.
        let mut next = 0;
        let read_ok = read_chunked(&ids, read, |id, now| {
            while let Some((leaver, owner)) = leaving.get(next)
                && *leaver <= id
            {
                if *leaver == id {
                    self.credit(owner, now);
                }
                next += 1;
            }
            // A fresh owner (still without a reading) starts from this one.
            if let Some(Some(owner)) = self.owners.get_mut(id as usize)
                && owner.last.is_none()
            {
                owner.last = Some(now);
            }
        });
        for (_, owner) in &leaving {
            self.release(owner.port);
        }
        read_ok
    }

    /// The Service ports and what each counted so far, in Service port order.
    pub(super) fn totals(&self) -> Vec<(ServicePort, FrontendCounts)> {
        let mut totals: Vec<(ServicePort, FrontendCounts)> = self
            .ports
            .iter()
            .flatten()
            .map(|total| (total.port.clone(), total.counts))
            .collect();
        totals.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        totals
    }
}

#[cfg(test)]
mod tests;
