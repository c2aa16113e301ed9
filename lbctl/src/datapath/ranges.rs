//! Ranges of `lb_slots`: each frontend's backend ids are a contiguous range of the array that
//! its master names (`slot_base`, `count`). First fit over the free ranges, kept sorted by
//! start and coalesced with their neighbours when freed, so a full programming from empty
//! takes each range from the front of one free range (constant time) and churn does not
//! fragment the array into pieces smaller than what was freed.
//!
//! The allocator only does arithmetic: when a range may be reused is the writer's business (a
//! range a published master pointed to is freed no earlier than the next apply).
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ranges {
    /// Free ranges, start -> length, disjoint and never adjacent (adjacent ones are merged).
    free: BTreeMap<u32, u32>,
    /// Elements not free.
    used: u32,
    capacity: u32,
}

impl Ranges {
    /// All of `0..capacity` free.
    pub fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Self {
            free,
            used: 0,
            capacity,
        }
    }

    /// Elements in use.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// Number of free ranges (how fragmented the free space is).
    #[cfg(test)]
    pub fn free_ranges(&self) -> usize {
        self.free.len()
    }

    /// The start of a range of `len` elements (`len > 0`), the lowest free range that fits.
    pub fn allocate(&mut self, len: u32) -> Option<u32> {
        debug_assert!(len > 0);
        let (&start, &have) = self.free.iter().find(|&(_, &have)| have >= len)?;
        self.free.remove(&start);
        if have > len {
            self.free.insert(start + len, have - len);
        }
        self.used += len;
        Some(start)
    }

    /// Marks `start..start + len` used (adopting ranges found in the maps). False, changing
    /// nothing, when any part of it is not free (or beyond the capacity).
    pub fn take(&mut self, start: u32, len: u32) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = start.checked_add(len).filter(|&e| e <= self.capacity) else {
            return false;
        };
        let Some((&s, &have)) = self.free.range(..=start).next_back() else {
            return false;
        };
        if s + have < end {
            return false;
        }
        self.free.remove(&s);
        if s < start {
            self.free.insert(s, start - s);
        }
        if end < s + have {
            self.free.insert(end, s + have - end);
        }
        self.used += len;
        true
    }

    /// Returns `start..start + len` (which must be in use) to the free ranges, merged with its
    /// free neighbours.
    pub fn free(&mut self, start: u32, len: u32) {
        if len == 0 {
            return;
        }
        debug_assert!(
            self.free
                .range(..start + len)
                .next_back()
                .is_none_or(|(&s, &l)| s + l <= start),
            "freeing a range that is (partly) free: {start}+{len}"
        );
        self.used -= len;
        let (mut start, mut len) = (start, len);
        if let Some((&s, &l)) = self.free.range(..start).next_back()
            && s + l == start
        {
            self.free.remove(&s);
            start = s;
            len += l;
        }
        if let Some(l) = self.free.remove(&(start + len)) {
            len += l;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_from_the_front() {
        let mut r = Ranges::new(100);
        assert_eq!(r.allocate(10), Some(0));
        assert_eq!(r.allocate(5), Some(10));
        assert_eq!(r.allocate(85), Some(15));
        assert_eq!(r.used(), 100);
        assert_eq!(r.allocate(1), None);
    }

    #[test]
    fn a_request_larger_than_every_free_range_fails_even_with_enough_free_elements() {
        let mut r = Ranges::new(30);
        let a = r.allocate(10).unwrap();
        let _b = r.allocate(10).unwrap();
        let c = r.allocate(10).unwrap();
        r.free(a, 10);
        r.free(c, 10);
        assert_eq!(r.used(), 10);
        assert_eq!(
            r.allocate(11),
            None,
            "20 free elements, in two pieces of 10"
        );
        assert_eq!(r.allocate(10), Some(0), "the lowest fit");
    }

    #[test]
    fn freeing_coalesces_with_both_neighbours() {
        let mut r = Ranges::new(30);
        let a = r.allocate(10).unwrap();
        let b = r.allocate(10).unwrap();
        let c = r.allocate(10).unwrap();
        r.free(a, 10);
        r.free(c, 10);
        assert_eq!(r.free_ranges(), 2);
        r.free(b, 10);
        assert_eq!(r.free_ranges(), 1);
        assert_eq!(r.used(), 0);
        assert_eq!(r.allocate(30), Some(0), "one range again");
    }

    #[test]
    fn freeing_merges_with_the_tail() {
        let mut r = Ranges::new(50);
        let a = r.allocate(10).unwrap();
        let b = r.allocate(10).unwrap();
        r.free(b, 10);
        assert_eq!(r.free_ranges(), 1, "merged with the free tail 20..50");
        r.free(a, 10);
        assert_eq!(r.allocate(50), Some(0));
    }

    #[test]
    fn take_carves_adopted_ranges_and_refuses_overlaps() {
        let mut r = Ranges::new(100);
        assert!(r.take(10, 5));
        assert!(r.take(50, 50));
        assert!(!r.take(12, 2), "inside a taken range");
        assert!(!r.take(45, 10), "overlaps a taken range");
        assert!(!r.take(95, 10), "beyond the capacity");
        assert!(r.take(0, 0));
        assert_eq!(r.used(), 55);
        assert_eq!(r.allocate(10), Some(0));
        assert_eq!(r.allocate(10), Some(15));
        assert_eq!(r.allocate(30), None);
        assert_eq!(r.allocate(25), Some(25));
        r.free(10, 5);
        assert_eq!(r.allocate(5), Some(10));
    }

    /// Any sequence of allocations and frees keeps the free list disjoint, coalesced and in
    /// agreement with a per-element model; nothing is handed out twice.
    #[test]
    fn matches_a_per_element_model() {
        use proptest::prelude::*;
        proptest!(|(ops in proptest::collection::vec((any::<bool>(), 1u32..20, any::<u16>()), 1..200))| {
            let mut r = Ranges::new(200);
            let mut owner = [false; 200];
            let mut live: Vec<(u32, u32)> = Vec::new();
            for (alloc, len, pick) in ops {
                if alloc || live.is_empty() {
                    if let Some(s) = r.allocate(len) {
                        for i in s..s + len {
                            prop_assert!(!owner[i as usize], "element {i} handed out twice");
                            owner[i as usize] = true;
                        }
                        live.push((s, len));
                    } else {
                        // No run of `len` free elements exists.
                        let longest = owner
                            .split(|&o| o)
                            .map(<[bool]>::len)
                            .max()
                            .unwrap_or(0);
                        prop_assert!((longest as u32) < len);
                    }
                } else {
                    let (s, len) = live.swap_remove(pick as usize % live.len());
                    r.free(s, len);
                    for i in s..s + len {
                        owner[i as usize] = false;
                    }
                }
                prop_assert_eq!(r.used() as usize, owner.iter().filter(|&&o| o).count());
                let mut last_end: Option<u32> = None;
                for (&s, &l) in &r.free {
                    prop_assert!(last_end.is_none_or(|e| e < s), "free ranges touch or overlap");
                    prop_assert!((s..s + l).all(|i| !owner[i as usize]));
                    last_end = Some(s + l);
                }
            }
        });
    }
}
