//! The writer's mirror of `lb_backends`: each backend id's value and how many slots refer to
//! it, in one array indexed by id (the writer allocates ids densely from 1), and the id of each
//! value. One entry costs about 28 bytes in the array plus one in the index, where two hash maps
//! and a reference count map cost about 100 at 300,000 backends.
use std::collections::{BTreeMap, HashMap};

use lb_common::Backend;

/// What one backend id holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    /// `None`: no backend has this id.
    value: Option<Backend>,
    /// Slots (over all frontends) that refer to this id, whether or not it has a backend (a
    /// slot of adopted maps may refer to a missing one).
    refs: u32,
}

/// Backend ids -> values and reference counts, and values -> ids.
#[derive(Debug)]
pub(crate) struct BackendTable {
    /// Entries of ids below `dense_limit`, indexed by id; grown as ids are used.
    dense: Vec<Entry>,
    /// Ids at or above `dense_limit` (only adopted maps sized differently hold any).
    sparse: BTreeMap<u32, Entry>,
    dense_limit: u32,
    index: HashMap<Backend, u32>,
}

impl BackendTable {
    /// `limit`: ids the writer allocates stay below it.
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            dense: Vec::new(),
            sparse: BTreeMap::new(),
            dense_limit: limit,
            index: HashMap::new(),
        }
    }

    fn entry(&self, id: u32) -> Entry {
        if id < self.dense_limit {
            self.dense.get(id as usize).copied().unwrap_or_default()
        } else {
            self.sparse.get(&id).copied().unwrap_or_default()
        }
    }

    fn set_entry(&mut self, id: u32, entry: Entry) {
        if id >= self.dense_limit {
            if entry == Entry::default() {
                self.sparse.remove(&id);
            } else {
                self.sparse.insert(id, entry);
            }
            return;
        }
        let i = id as usize;
        if i >= self.dense.len() {
            if entry == Entry::default() {
                return;
            }
            // Grow by a quarter at least (not doubling): the array stays within 25% of the
            // highest id in use.
            let len = self.dense.len();
            let want = (i + 1).max(len + len / 4).min(self.dense_limit as usize);
            self.dense.reserve_exact(want - len);
            self.dense.resize(i + 1, Entry::default());
        }
        self.dense[i] = entry;
    }

    /// The backend of `id`.
    pub(crate) fn get(&self, id: u32) -> Option<Backend> {
        self.entry(id).value
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        self.get(id).is_some()
    }

    /// The id holding `value`.
    pub(crate) fn id_of(&self, value: &Backend) -> Option<u32> {
        self.index.get(value).copied()
    }

    /// Number of backends.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Records that `id` holds `value` (an id holds one value; a value found under two ids in
    /// adopted maps is looked up by the last one).
    pub(crate) fn insert(&mut self, id: u32, value: Backend) {
        let mut entry = self.entry(id);
        if let Some(old) = entry.value.replace(value) {
            if self.index.get(&old) == Some(&id) {
                self.index.remove(&old);
            }
        }
        self.set_entry(id, entry);
        self.index.insert(value, id);
    }

    /// Forgets the backend of `id`, returning it.
    pub(crate) fn remove(&mut self, id: u32) -> Option<Backend> {
        let mut entry = self.entry(id);
        let value = entry.value.take()?;
        if self.index.get(&value) == Some(&id) {
            self.index.remove(&value);
        }
        self.set_entry(id, entry);
        Some(value)
    }

    /// Ids that hold a backend and no slot refers to.
    pub(crate) fn unreferenced(&self) -> Vec<u32> {
        self.index
            .values()
            .copied()
            .filter(|&id| self.entry(id).refs == 0)
            .collect()
    }

    pub(crate) fn is_referenced(&self, id: u32) -> bool {
        self.entry(id).refs > 0
    }

    pub(crate) fn add_ref(&mut self, id: u32) {
        let mut entry = self.entry(id);
        entry.refs += 1;
        self.set_entry(id, entry);
    }

    /// Drops one reference; true when it was the last.
    pub(crate) fn release_ref(&mut self, id: u32) -> bool {
        let mut entry = self.entry(id);
        if entry.refs == 0 {
            return false;
        }
        entry.refs -= 1;
        self.set_entry(id, entry);
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
        assert!(t.sparse.is_empty() || t.sparse.keys().all(|&id| id == 100));
        // A new value for an id replaces the old one in the index.
        t.insert(1, backend(200));
        assert_eq!(t.id_of(&backend(1)), None);
        assert_eq!(t.id_of(&backend(200)), Some(1));
        assert!(t.dense.len() <= 100);
    }
}
