//! Id allocation for frontends and backends.
use std::collections::BTreeSet;

/// Id allocator: reuses freed ids (smallest first), else takes the next unused one. Ids start
/// at 1; 0 means "none" in the maps. Both operations are O(log n).
#[derive(Debug, Default)]
pub(crate) struct Ids {
    next: u32,
    free: BTreeSet<u32>,
    /// Ids must stay below this (the size of the table they index).
    limit: u32,
}

impl Ids {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            next: 1,
            free: BTreeSet::new(),
            limit,
        }
    }

    /// Marks an id found in adopted maps as taken.
    pub(crate) fn take(&mut self, id: u32) {
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.free.remove(&id);
        }
    }

    /// Whether `id` is in use (taken or allocated, not released).
    pub(crate) fn is_taken(&self, id: u32) -> bool {
        id != 0 && id < self.next && !self.free.contains(&id)
    }

    pub(crate) fn allocate(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        (self.next < self.limit).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    pub(crate) fn release(&mut self, id: u32) {
        if id != 0 && id < self.next {
            self.free.insert(id);
        }
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
