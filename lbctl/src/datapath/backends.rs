//! The writer's bookkeeping of `lb_backends`: how many slots refer to each backend id, in an
//! array indexed by id (the writer allocates ids densely from 1; the array is made of fixed
//! chunks, so growing it never copies it), and an index of ids by the value they hold that
//! stores only the id. The values themselves are not kept here: the table reads them from
//! `lb_backends` (through its mapping on the kernel maps) with the `read` function its methods
//! take, so the index compares and rehashes by what the map holds. 4 bytes per id in the array
//! and about 5 in the index, where a copy of every value beside its count took 12 (28 for
//! IPv6) and two hash maps and a reference count map about 100 before that.
use std::{collections::BTreeMap, hash::BuildHasher};

use hashbrown::{DefaultHashBuilder, HashTable};
use lb_common::Backend;

/// Ids per chunk of the reference counts (16 KiB chunks).
const CHUNK: usize = 4096;

/// Reference counts by id: dense below `limit` (the ids the writer allocates, and every id
/// `lb_backends` can hold), in chunks of [`CHUNK`] ids allocated as ids reach them (never
/// reallocated or copied, at most one chunk more than the highest id needs); sparse above
/// (a slot of adopted maps may refer to an id beyond the array).
#[derive(Debug)]
struct Refs {
    chunks: Vec<Box<[u32]>>,
    sparse: BTreeMap<u32, u32>,
    limit: u32,
}

impl Refs {
    fn get(&self, id: u32) -> u32 {
        if id < self.limit {
            let i = id as usize;
            self.chunks
                .get(i / CHUNK)
                .map_or(0, |chunk| chunk[i % CHUNK])
        } else {
            self.sparse.get(&id).copied().unwrap_or(0)
        }
    }

    fn set(&mut self, id: u32, refs: u32) {
        if id >= self.limit {
            if refs == 0 {
                self.sparse.remove(&id);
            } else {
                self.sparse.insert(id, refs);
            }
            return;
        }
        if refs != 0 || (id as usize) < self.dense_len() {
            self.reach(id);
            let i = id as usize;
            self.chunks[i / CHUNK][i % CHUNK] = refs;
        }
    }

    /// Makes the chunk of `id` (below `limit`) exist.
    fn reach(&mut self, id: u32) {
        while id as usize / CHUNK >= self.chunks.len() {
            self.chunks.push(vec![0; CHUNK].into_boxed_slice());
        }
    }

    /// Ids the chunks cover (from 0).
    fn dense_len(&self) -> usize {
        self.chunks.len() * CHUNK
    }
}

/// The hash of a backend value absent from the index, as [`BackendTable::find`] computed it:
/// [`BackendTable::record`] files the id that now holds the value under it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Absent(u64);

/// Backend ids -> reference counts, and values -> ids.
#[derive(Debug)]
pub(crate) struct BackendTable {
    refs: Refs,
    /// Ids by the value they hold (hashed by value, compared through `read`). A value held
    /// by two ids (adopted maps) is found under the last one recorded.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Ids recorded as holding a backend.
    len: usize,
}

impl BackendTable {
    /// `limit`: the length of `lb_backends`; ids that hold a backend stay below it.
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            refs: Refs {
                chunks: Vec::new(),
                sparse: BTreeMap::new(),
                limit,
            },
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            len: 0,
        }
    }

    /// The id holding `value` (as `read` gives each id's value), or where to file the id
    /// that will: one hash and one probe, shared with [`Self::record`].
    pub(crate) fn find(
        &self,
        value: &Backend,
        read: impl Fn(u32) -> Option<Backend>,
    ) -> Result<u32, Absent> {
        let hash = self.hasher.hash_one(value);
        self.index
            .find(hash, |&id| read(id).as_ref() == Some(value))
            .copied()
            .ok_or(Absent(hash))
    }

    /// Records that `id`, which held no backend, now holds the value `find` did not find (as
    /// `read` now gives it).
    pub(crate) fn record(
        &mut self,
        absent: Absent,
        id: u32,
        read: impl Fn(u32) -> Option<Backend>,
    ) {
        let Self {
            refs,
            index,
            hasher,
            len,
        } = self;
        if id < refs.limit {
            refs.reach(id);
        }
        *len += 1;
        index.insert_unique(absent.0, id, |&i| {
            hasher.hash_one(read(i).unwrap_or_default())
        });
    }

    /// Records that `id` holds `value` (found in adopted maps, where two ids may hold the same
    /// value: the last one recorded is the one found).
    pub(crate) fn adopt(&mut self, id: u32, value: Backend, read: impl Fn(u32) -> Option<Backend>) {
        let hash = self.hasher.hash_one(value);
        match self
            .index
            .find_mut(hash, |&i| i != id && read(i) == Some(value))
        {
            Some(other) => {
                *other = id;
                // The other id still holds a backend, now out of the index: deleted once no
                // slot refers to it.
                if id < self.refs.limit {
                    self.refs.reach(id);
                }
                self.len += 1;
            }
            None => self.record(Absent(hash), id, read),
        }
    }

    /// Makes room for `additional` more values in the index (4-5 bytes each), so that adding
    /// them does not rehash it again and again. The reference counts grow a chunk at a time as
    /// ids are used.
    pub(crate) fn reserve_index(
        &mut self,
        additional: usize,
        read: impl Fn(u32) -> Option<Backend>,
    ) {
        let Self { index, hasher, .. } = self;
        index.reserve(additional, |&i| {
            hasher.hash_one(read(i).unwrap_or_default())
        });
    }

    /// Number of backends.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Forgets that `id` holds `value` (which it must still hold for the index to find it,
    /// or have held when it was recorded).
    pub(crate) fn forget(&mut self, id: u32, value: &Backend) {
        if let Ok(found) = self
            .index
            .find_entry(self.hasher.hash_one(value), |&i| i == id)
        {
            found.remove();
        }
        self.len = self.len.saturating_sub(1);
    }

    /// Ids that hold a backend (as `read` tells) and no slot refers to.
    pub(crate) fn unreferenced(&self, read: impl Fn(u32) -> Option<Backend>) -> Vec<u32> {
        let dense = (1..self.refs.dense_len().min(self.refs.limit as usize)).map(|i| i as u32);
        dense
            .filter(|&id| self.refs.get(id) == 0 && read(id).is_some())
            .collect()
    }

    pub(crate) fn is_referenced(&self, id: u32) -> bool {
        self.refs.get(id) > 0
    }

    /// Sets every reference count to zero (before counting them all again).
    pub(crate) fn clear_refs(&mut self) {
        for chunk in &mut self.refs.chunks {
            chunk.fill(0);
        }
        self.refs.sparse.clear();
    }

    pub(crate) fn add_ref(&mut self, id: u32) {
        let refs = self.refs.get(id);
        debug_assert!(refs < u32::MAX, "slots are far fewer than 2^32");
        self.refs.set(id, refs + 1);
    }

    /// Drops one reference; true when it was the last.
    pub(crate) fn release_ref(&mut self, id: u32) -> bool {
        match self.refs.get(id) {
            0 => false,
            refs => {
                self.refs.set(id, refs - 1);
                refs == 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use lb_common::v4_mapped;

    use super::*;

    fn backend(n: u8) -> Backend {
        Backend {
            address: [n; 16],
            port: 80,
            proto: 6,
            flags: 0,
        }
    }

    /// `lb_backends` as the tests' table reads it.
    #[derive(Default)]
    struct Map(RefCell<BTreeMap<u32, Backend>>);

    impl Map {
        fn read(&self) -> impl Fn(u32) -> Option<Backend> + '_ {
            |id| self.0.borrow().get(&id).copied()
        }

        /// Writes `value` under `id` and records it, as the writer does with a new backend.
        fn add(&self, t: &mut BackendTable, id: u32, value: Backend) {
            let absent = t.find(&value, self.read()).expect_err("a new value");
            self.0.borrow_mut().insert(id, value);
            t.record(absent, id, self.read());
        }

        fn delete(&self, t: &mut BackendTable, id: u32) {
            let value = self.0.borrow_mut().remove(&id).expect("held");
            t.forget(id, &value);
        }
    }

    #[test]
    fn a_recorded_value_is_found_under_its_id_and_forgotten_with_it() {
        let (map, mut t) = (Map::default(), BackendTable::new(100));
        map.add(&mut t, 3, backend(3));
        map.add(&mut t, 10, backend(4));
        assert_eq!(t.find(&backend(3), map.read()).ok(), Some(3));
        assert_eq!(t.find(&backend(4), map.read()).ok(), Some(10));
        assert!(t.find(&backend(5), map.read()).is_err());
        assert_eq!(t.len(), 2);
        map.delete(&mut t, 3);
        assert!(t.find(&backend(3), map.read()).is_err());
        assert_eq!(t.len(), 1);
        // The id holds something else now: found under its new value only.
        map.add(&mut t, 3, backend(6));
        assert_eq!(t.find(&backend(6), map.read()).ok(), Some(3));
        assert!(t.find(&backend(3), map.read()).is_err());
    }

    #[test]
    fn an_id_is_found_only_for_the_value_the_map_holds() {
        let (map, mut t) = (Map::default(), BackendTable::new(100));
        map.add(&mut t, 7, backend(7));
        // Changed behind the table's back: the index compares what the map holds, so the id
        // is no longer found for its old value; for the new one it is found only if its old
        // hash happens to lead there, and then it does hold it. Never a wrong id.
        map.0.borrow_mut().insert(7, backend(8));
        assert!(t.find(&backend(7), map.read()).is_err());
        assert!(matches!(t.find(&backend(8), map.read()), Err(_) | Ok(7)));
        map.0.borrow_mut().remove(&7);
        assert!(t.find(&backend(8), map.read()).is_err());
    }

    #[test]
    fn reference_counts_dense_and_sparse_and_the_unreferenced_backends() {
        let (map, mut t) = (Map::default(), BackendTable::new(100));
        for id in [1, 7, 50, 99] {
            map.add(&mut t, id, backend(id as u8));
        }
        t.add_ref(7);
        t.add_ref(7);
        t.add_ref(50);
        // A slot may refer to an id without a backend, or beyond the array.
        t.add_ref(42);
        t.add_ref(5000);
        assert_eq!(t.unreferenced(map.read()), vec![1, 99]);
        assert!(t.is_referenced(5000) && t.is_referenced(42));
        assert!(!t.release_ref(7));
        assert!(t.release_ref(7));
        assert!(!t.release_ref(7), "no reference left to drop");
        assert!(t.release_ref(50));
        assert!(t.release_ref(5000));
        assert!(!t.is_referenced(5000));
        assert_eq!(t.unreferenced(map.read()), vec![1, 7, 50, 99]);
        t.add_ref(1);
        t.add_ref(6000);
        t.clear_refs();
        assert!(!t.is_referenced(1) && !t.is_referenced(6000));
        assert_eq!(t.refs.chunks.len(), 1);
    }

    #[test]
    fn a_value_under_two_ids_is_found_under_the_last_and_survives_removing_the_other() {
        let (map, mut t) = (Map::default(), BackendTable::new(100));
        for id in [3, 4] {
            map.0.borrow_mut().insert(id, backend(9));
            t.adopt(id, backend(9), map.read());
        }
        assert_eq!(t.find(&backend(9), map.read()).ok(), Some(4));
        assert_eq!(t.len(), 2);
        map.delete(&mut t, 3);
        assert_eq!(t.find(&backend(9), map.read()).ok(), Some(4));
        map.delete(&mut t, 4);
        assert!(t.find(&backend(9), map.read()).is_err());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn many_backends_keep_their_ids_through_the_index_growing() {
        let (map, mut t) = (Map::default(), BackendTable::new(1 << 20));
        let value = |id: u32| Backend {
            address: v4_mapped([10, (id >> 16) as u8, (id >> 8) as u8, id as u8]),
            port: 8080u16.to_be(),
            proto: 6,
            flags: 0,
        };
        t.reserve_index(1000, map.read());
        for id in 1..50_000 {
            map.add(&mut t, id, value(id));
        }
        for id in (1..50_000).step_by(7) {
            assert_eq!(t.find(&value(id), map.read()).ok(), Some(id));
        }
        assert_eq!(t.len(), 49_999);
        // Dense: as many chunks as the highest id needs.
        assert_eq!(t.refs.chunks.len(), 50_000usize.div_ceil(CHUNK));
    }
}
