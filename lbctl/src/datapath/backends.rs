//! The writer's mirror of `lb_backends`: each backend id's value and how many slots refer to
//! it, in an array indexed by id (the writer allocates ids densely from 1; the array is made of
//! fixed chunks, so growing it never copies it), and an index of ids by the value they hold
//! that stores only the id. About 12 bytes per IPv4 backend in the array (28 for IPv6, whose
//! address is kept beside it) and 5 in the index, where two hash maps and a reference count
//! map took about 100 at 300,000 backends.
use std::{collections::BTreeMap, hash::BuildHasher};

use hashbrown::{DefaultHashBuilder, HashTable};
use lb_common::{Backend, is_v4_mapped, v4_mapped};

/// A backend, or none: an element with `proto == 0`, as in `lb_backends` itself (a backend
/// always has a protocol). Four bytes less than an `Option` for each of 300,000 entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Held(Backend);

impl Held {
    fn get(self) -> Option<Backend> {
        (self.0.proto != 0).then_some(self.0)
    }

    fn is_some(self) -> bool {
        self.0.proto != 0
    }

    /// Holds `value`; returns what was held.
    fn replace(&mut self, value: Backend) -> Option<Backend> {
        debug_assert!(value.proto != 0, "a backend has a protocol");
        std::mem::replace(self, Held(value)).get()
    }

    fn take(&mut self) -> Option<Backend> {
        std::mem::take(self).get()
    }
}

/// What one backend id holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    /// Empty: no backend has this id.
    value: Held,
    /// Slots (over all frontends) that refer to this id, whether or not it has a backend (a
    /// slot of adopted maps may refer to a missing one).
    refs: u32,
}

/// An [`Entry`] as the dense array holds it: 12 bytes. An IPv4 backend's address
/// (`::ffff:a.b.c.d`) is inline; any other sits in [`Entries::long`].
#[derive(Clone, Copy, Debug, Default)]
struct Packed {
    /// The IPv4 address, or the index of the address in [`Entries::long`] ([`LONG`] set).
    word: [u8; 4],
    port: u16,
    /// 0: no backend (the rest is then zero, as [`Held`] keeps an empty value).
    proto: u8,
    flags: u8,
    /// [`Entry::refs`], and [`LONG`].
    refs: u32,
}

// The array's cost per backend, as documented above.
const _: () = assert!(size_of::<Packed>() == 12);

/// In [`Packed::refs`]: the address is in [`Entries::long`]. Slots are far fewer than 2^31.
const LONG: u32 = 1 << 31;

/// Ids per chunk of the dense part (48 KiB chunks).
const CHUNK: usize = 4096;

/// Entries by id: dense below `limit` (the ids the writer allocates), in chunks of [`CHUNK`]
/// ids allocated as ids reach them (never reallocated or copied, at most one chunk more than
/// the highest id needs); sparse above (ids an adopted map sized differently may hold).
#[derive(Debug)]
struct Entries {
    chunks: Vec<Box<[Packed]>>,
    /// The addresses of dense entries that are not IPv4, by index; `free_long` lists the
    /// indexes no entry holds.
    long: Vec<[u8; 16]>,
    free_long: Vec<u32>,
    sparse: BTreeMap<u32, Entry>,
    limit: u32,
}

impl Entries {
    fn new(limit: u32) -> Self {
        Entries {
            chunks: Vec::new(),
            long: Vec::new(),
            free_long: Vec::new(),
            sparse: BTreeMap::new(),
            limit,
        }
    }

    fn get(&self, id: u32) -> Entry {
        if id < self.limit {
            let i = id as usize;
            self.chunks
                .get(i / CHUNK)
                .map_or_else(Entry::default, |chunk| self.unpack(chunk[i % CHUNK]))
        } else {
            self.sparse.get(&id).copied().unwrap_or_default()
        }
    }

    fn set(&mut self, id: u32, entry: Entry) {
        if id >= self.limit {
            if entry == Entry::default() {
                self.sparse.remove(&id);
            } else {
                self.sparse.insert(id, entry);
            }
            return;
        }
        let i = id as usize;
        if i / CHUNK >= self.chunks.len() {
            if entry == Entry::default() {
                return;
            }
            while i / CHUNK >= self.chunks.len() {
                self.chunks
                    .push(vec![Packed::default(); CHUNK].into_boxed_slice());
            }
        }
        let old = self.chunks[i / CHUNK][i % CHUNK];
        let held = (old.refs & LONG != 0).then(|| u32::from_ne_bytes(old.word));
        let packed = self.pack(entry, held);
        self.chunks[i / CHUNK][i % CHUNK] = packed;
    }

    /// `held`: the index in `long` the entry's previous value held, reused when the new value
    /// needs one (a reference count change keeps its place) and freed otherwise.
    fn pack(&mut self, entry: Entry, held: Option<u32>) -> Packed {
        debug_assert!(entry.refs < LONG, "slots are far fewer than 2^31");
        let b = entry.value.0;
        let long_address = b.proto != 0 && !is_v4_mapped(&b.address);
        if let (Some(at), false) = (held, long_address) {
            self.free_long.push(at);
        }
        let (word, long) = if b.proto == 0 {
            ([0; 4], 0)
        } else if !long_address {
            (
                [b.address[12], b.address[13], b.address[14], b.address[15]],
                0,
            )
        } else {
            let at = match held.or_else(|| self.free_long.pop()) {
                Some(at) => {
                    self.long[at as usize] = b.address;
                    at
                }
                None => {
                    self.long.push(b.address);
                    (self.long.len() - 1) as u32
                }
            };
            (at.to_ne_bytes(), LONG)
        };
        Packed {
            word,
            port: b.port,
            proto: b.proto,
            flags: b.flags,
            refs: entry.refs | long,
        }
    }

    fn unpack(&self, p: Packed) -> Entry {
        let refs = p.refs & !LONG;
        if p.proto == 0 {
            return Entry {
                value: Held::default(),
                refs,
            };
        }
        let address = if p.refs & LONG != 0 {
            self.long[u32::from_ne_bytes(p.word) as usize]
        } else {
            v4_mapped(p.word)
        };
        Entry {
            value: Held(Backend {
                address,
                port: p.port,
                proto: p.proto,
                flags: p.flags,
            }),
            refs,
        }
    }

    /// Every id below `limit` that may hold something, with its entry.
    fn dense(&self) -> impl Iterator<Item = (u32, Entry)> + '_ {
        self.chunks.iter().enumerate().flat_map(move |(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(move |(i, &p)| ((c * CHUNK + i) as u32, self.unpack(p)))
        })
    }
}

/// Backend ids -> values and reference counts, and values -> ids.
#[derive(Debug)]
pub(crate) struct BackendTable {
    entries: Entries,
    /// Ids by the value they hold (hashed by value, compared through `entries`). A value held
    /// by two ids (adopted maps) is found under the last one recorded.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Ids that hold a backend.
    len: usize,
}

impl BackendTable {
    /// `limit`: ids the writer allocates stay below it.
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            entries: Entries::new(limit),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            len: 0,
        }
    }

    /// The backend of `id`.
    pub(crate) fn get(&self, id: u32) -> Option<Backend> {
        self.entries.get(id).value.get()
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        self.get(id).is_some()
    }

    /// The id holding `value`.
    #[cfg(test)]
    pub(crate) fn id_of(&self, value: &Backend) -> Option<u32> {
        let entries = &self.entries;
        self.index
            .find(self.hasher.hash_one(value), |&id| {
                entries.get(id).value.get().as_ref() == Some(value)
            })
            .copied()
    }

    /// The id holding `value` (`false`), or else an id from `allocate`, recorded as holding
    /// it (`true`): one hash and one probe of the index either way, where a lookup and then
    /// [`Self::insert`] take two of each (a full programming adds every backend so).
    /// `None`: `value` has no id and `allocate` gave none.
    pub(crate) fn id_or_insert(
        &mut self,
        value: Backend,
        allocate: impl FnOnce() -> Option<u32>,
    ) -> Option<(u32, bool)> {
        let hash = self.hasher.hash_one(value);
        let Self {
            entries,
            index,
            hasher,
            len,
        } = self;
        if let Some(&id) = index.find(hash, |&id| entries.get(id).value.get() == Some(value)) {
            return Some((id, false));
        }
        let id = allocate()?;
        let mut entry = entries.get(id);
        if entry.value.is_some() {
            // Not what an allocator hands out; the general path keeps the index right.
            self.insert(id, value);
            return Some((id, true));
        }
        entry.value.replace(value);
        entries.set(id, entry);
        *len += 1;
        index.insert_unique(hash, id, |&i| hasher.hash_one(entries.get(i).value.0));
        Some((id, true))
    }

    /// Makes room for `additional` more values in the index (4-5 bytes each), so that adding
    /// them does not rehash it again and again. The id array grows a chunk at a time as ids
    /// are used: it costs 12 bytes an entry (more for IPv6), too much to reserve on an estimate.
    pub(crate) fn reserve_index(&mut self, additional: usize) {
        let Self {
            entries,
            index,
            hasher,
            ..
        } = self;
        index.reserve(additional, |&i| hasher.hash_one(entries.get(i).value.0));
    }

    /// Number of backends.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Removes `id` from the index, where it is found under `value`.
    fn unindex(&mut self, id: u32, value: &Backend) {
        if let Ok(found) = self
            .index
            .find_entry(self.hasher.hash_one(value), |&i| i == id)
        {
            found.remove();
        }
    }

    /// Records that `id` holds `value`.
    pub(crate) fn insert(&mut self, id: u32, value: Backend) {
        let mut entry = self.entries.get(id);
        match entry.value.replace(value) {
            Some(old) => self.unindex(id, &old),
            None => self.len += 1,
        }
        self.entries.set(id, entry);
        let hash = self.hasher.hash_one(value);
        let Self {
            entries,
            index,
            hasher,
            ..
        } = self;
        match index.find_mut(hash, |&i| {
            i != id && entries.get(i).value.get() == Some(value)
        }) {
            Some(other) => *other = id,
            None => {
                index.insert_unique(hash, id, |&i| hasher.hash_one(entries.get(i).value.0));
            }
        }
    }

    /// Forgets the backend of `id`, returning it.
    pub(crate) fn remove(&mut self, id: u32) -> Option<Backend> {
        let mut entry = self.entries.get(id);
        let value = entry.value.take()?;
        self.unindex(id, &value);
        self.entries.set(id, entry);
        self.len -= 1;
        Some(value)
    }

    /// Ids that hold a backend and no slot refers to.
    pub(crate) fn unreferenced(&self) -> Vec<u32> {
        let dense = self.entries.dense();
        let sparse = self.entries.sparse.iter().map(|(&id, &e)| (id, e));
        dense
            .chain(sparse)
            .filter(|(_, e)| e.value.is_some() && e.refs == 0)
            .map(|(id, _)| id)
            .collect()
    }

    pub(crate) fn is_referenced(&self, id: u32) -> bool {
        self.entries.get(id).refs > 0
    }

    /// Sets every reference count to zero (before counting them all again).
    pub(crate) fn clear_refs(&mut self) {
        let ids: Vec<u32> = self
            .entries
            .dense()
            .chain(self.entries.sparse.iter().map(|(&id, &e)| (id, e)))
            .filter(|(_, e)| e.refs > 0)
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            let mut entry = self.entries.get(id);
            entry.refs = 0;
            self.entries.set(id, entry);
        }
    }

    pub(crate) fn add_ref(&mut self, id: u32) {
        let mut entry = self.entries.get(id);
        entry.refs += 1;
        self.entries.set(id, entry);
    }

    /// Drops one reference; true when it was the last.
    pub(crate) fn release_ref(&mut self, id: u32) -> bool {
        let mut entry = self.entries.get(id);
        if entry.refs == 0 {
            return false;
        }
        entry.refs -= 1;
        self.entries.set(id, entry);
        entry.refs == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(n: u8) -> Backend {
        Backend {
            address: [n; 16],
            port: 80,
            proto: 6,
            flags: 0,
        }
    }

    #[test]
    fn id_or_insert_finds_a_held_value_and_records_a_new_one_once() {
        let mut t = BackendTable::new(100);
        t.insert(3, backend(3));
        let mut next = 10..;
        let mut allocate = || next.next();
        assert_eq!(t.id_or_insert(backend(3), &mut allocate), Some((3, false)));
        assert_eq!(t.id_or_insert(backend(4), &mut allocate), Some((10, true)));
        assert_eq!(t.id_or_insert(backend(4), &mut allocate), Some((10, false)));
        assert_eq!(
            (t.get(10), t.id_of(&backend(4)), t.len()),
            (Some(backend(4)), Some(10), 2)
        );
        // No id to give: nothing recorded.
        assert_eq!(t.id_or_insert(backend(5), || None), None);
        assert_eq!((t.id_of(&backend(5)), t.len()), (None, 2));
        // An allocator handing out an id that holds something: the old value is unindexed.
        assert_eq!(t.id_or_insert(backend(6), || Some(3)), Some((3, true)));
        assert_eq!(
            (t.id_of(&backend(3)), t.id_of(&backend(6)), t.len()),
            (None, Some(3), 2)
        );
    }

    #[test]
    fn values_ids_and_references_round_trip_dense_and_sparse() {
        let mut t = BackendTable::new(100);
        for id in [1, 7, 99, 100, 5000] {
            t.insert(id, backend(id as u8));
        }
        assert_eq!(t.len(), 5);
        for id in [1, 7, 99, 100, 5000] {
            assert_eq!(t.get(id), Some(backend(id as u8)));
            assert_eq!(t.id_of(&backend(id as u8)), Some(id));
        }
        assert_eq!(t.get(2), None);
        assert_eq!(t.get(6000), None);
        t.add_ref(7);
        t.add_ref(7);
        t.add_ref(5000);
        // A slot may refer to an id without a backend.
        t.add_ref(42);
        let mut unused = t.unreferenced();
        unused.sort_unstable();
        assert_eq!(unused, vec![1, 99, 100]);
        assert!(!t.release_ref(7));
        assert!(t.release_ref(7));
        assert!(!t.release_ref(7), "no reference left to drop");
        assert!(t.release_ref(5000));
        assert!(t.release_ref(42));
        assert_eq!(t.remove(5000), Some(backend(136)));
        assert_eq!(t.remove(5000), None);
        assert_eq!(t.id_of(&backend(136)), None);
        assert_eq!(t.entries.sparse.keys().collect::<Vec<_>>(), vec![&100]);
        // A new value for an id replaces the old one in the index.
        t.insert(1, backend(200));
        assert_eq!(t.id_of(&backend(1)), None);
        assert_eq!(t.id_of(&backend(200)), Some(1));
        assert_eq!(t.entries.chunks.len(), 1);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn ipv6_backends_round_trip_and_give_their_address_room_back() {
        let v6 = |n: u8| Backend {
            address: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n],
            port: 443u16.to_be(),
            proto: 17,
            flags: 0,
        };
        let v4 = |n: u8| Backend {
            address: v4_mapped([10, 0, 0, n]),
            ..v6(n)
        };
        let mut t = BackendTable::new(100);
        t.insert(1, v6(1));
        t.insert(2, v4(2));
        t.insert(3, v6(3));
        t.add_ref(3);
        assert_eq!(
            t.entries.long.len(),
            2,
            "one address aside per IPv6 backend"
        );
        for (id, value) in [(1, v6(1)), (2, v4(2)), (3, v6(3))] {
            assert_eq!((t.get(id), t.id_of(&value)), (Some(value), Some(id)));
        }
        // A reference count beside an address aside stays what it is.
        assert!(t.is_referenced(3));
        assert!(!t.is_referenced(1));
        // Removed, replaced by IPv4, replaced by IPv6 again: the room is reused.
        assert_eq!(t.remove(1), Some(v6(1)));
        t.insert(3, v4(3));
        assert_eq!(t.get(3), Some(v4(3)));
        assert!(t.is_referenced(3));
        t.insert(4, v6(4));
        t.insert(5, v6(5));
        assert_eq!(t.entries.long.len(), 2, "freed room is reused");
        assert_eq!(
            (t.get(4), t.get(5), t.get(1)),
            (Some(v6(4)), Some(v6(5)), None)
        );
        assert_eq!(t.id_of(&v6(3)), None);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_value_under_two_ids_is_found_under_the_last_and_survives_removing_the_other() {
        let mut t = BackendTable::new(100);
        t.insert(3, backend(9));
        t.insert(4, backend(9));
        assert_eq!(t.id_of(&backend(9)), Some(4));
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove(3), Some(backend(9)));
        assert_eq!(t.id_of(&backend(9)), Some(4));
        assert_eq!(t.remove(4), Some(backend(9)));
        assert_eq!(t.id_of(&backend(9)), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn many_backends_keep_their_ids_through_the_index_growing() {
        let mut t = BackendTable::new(1 << 20);
        let value = |id: u32| Backend {
            address: [
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0xff,
                0xff,
                10,
                (id >> 16) as u8,
                (id >> 8) as u8,
                id as u8,
            ],
            port: 8080u16.to_be(),
            proto: 6,
            flags: 0,
        };
        for id in 1..50_000 {
            t.insert(id, value(id));
        }
        for id in (1..50_000).step_by(7) {
            assert_eq!(t.id_of(&value(id)), Some(id));
            assert_eq!(t.get(id), Some(value(id)));
        }
        assert_eq!(t.len(), 49_999);
        // Dense: as many chunks as the highest id needs.
        assert_eq!(t.entries.chunks.len(), 50_000usize.div_ceil(CHUNK));
    }
}
