//! Ordered maps rebuilt with full nodes after a bulk fill.
//!
//! A `BTreeMap` filled by inserting keys in ascending order (a full programming inserts every
//! frontend so: the planner's claims, the writer's programmed frontends, the names written)
//! keeps its nodes a little over half full: a node that overflows splits into six keys on the
//! left and the rest on the right, and ascending inserts never come back to the left one. Built
//! from a sorted sequence instead (`FromIterator`), every node but the right edge holds eleven
//! keys: at 30,000 frontends that is about 1.5 MB less for each such map.
use std::collections::BTreeMap;

/// Rebuilds `map` with full nodes when at least half of it is made of `added` keys inserted
/// since it was last built (a bulk fill), so that a few changes never cost a rebuild. Runs in
/// linear time; the old nodes are freed while the entries are collected.
pub(crate) fn refill_after<K: Ord, V>(map: &mut BTreeMap<K, V>, added: usize) {
    if worth_refilling(map.len(), added) {
        *map = std::mem::take(map).into_iter().collect();
    }
}

/// Whether a map of `len` keys, `added` of them inserted one by one, is worth rebuilding.
fn worth_refilling(len: usize, added: usize) -> bool {
    len >= 64 && added.saturating_mul(2) >= len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refilled_map_keeps_every_entry_in_order() {
        let mut map: BTreeMap<u32, String> = (0..1000).rev().map(|k| (k, k.to_string())).collect();
        let before: Vec<(u32, String)> = map.clone().into_iter().collect();
        refill_after(&mut map, 1000);
        assert_eq!(map.into_iter().collect::<Vec<_>>(), before);
    }

    #[test]
    fn only_a_bulk_fill_of_a_sizeable_map_is_rebuilt() {
        for (len, added, rebuilt) in [
            (0, 0, false),
            (63, 63, false),
            (64, 64, true),
            (30_000, 30_000, true),
            (30_000, 15_000, true),
            (30_000, 14_999, false),
            (30_000, 1, false),
        ] {
            assert_eq!(
                worth_refilling(len, added),
                rebuilt,
                "{len} keys, {added} added"
            );
        }
    }
}
