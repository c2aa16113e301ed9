//! `lb_v4_masters`: a direct-mapped cache of the IPv4 masters of `lb_services`
//! ([`lb_common::V4_MASTERS_MAP`]), which the forward hooks read before the hash map (an
//! inlined array lookup instead of a hash lookup: 25-45 ns of a service connect's BPF time,
//! BENCHMARKS.md). The kernel store ([`super::store`]) keeps it with every write of the masters: it
//! caches a master right after writing it and uncaches it right before deleting it, both within
//! the same call, so when a call returns the cache says what the hash map says. [`sync`] makes
//! it agree with the hash map whole, before the programs run on it (an upgrade, a restart after
//! a crash, a rollback through an older agent that did not keep it).
//!
//! Of two frontends with the same element ([`lb_common::v4_master_index`]) the one cached
//! first keeps it; the other is looked up in the hash map, as is every IPv6 frontend. An
//! element freed by a deletion is taken by the next frontend written there (or the next
//! [`sync`]).
//!
//! Each change of an element is three ordered stores ([`lb_common::V4MasterEntry`]), so a
//! program that reads an element while it changes either takes a whole master (the old one or
//! the new one) or falls back to the hash map.
use std::collections::BTreeMap;

use lb_common::{
    SCOPE_ANY, ServiceKey, ServiceValue, V4MasterEntry, is_v4_mapped, v4_master, v4_master_index,
    v4_master_word,
};

/// The elements of `lb_v4_masters` as the writer sees them: a shared mapping of the kernel's
/// array, or a vector in tests.
pub(crate) trait Elements {
    fn len(&self) -> u32;
    /// Element `index` (an empty one beyond the array).
    fn get(&self, index: u32) -> V4MasterEntry;
    fn set_word(&mut self, index: u32, word: u64);
    fn set_master(&mut self, index: u32, master: ServiceValue);
}

/// What a program compares: the key word of `key`'s frontend (with the valid bit), `None` for
/// a frontend the cache does not hold (IPv6, or another lookup scope).
pub fn word_of(key: &ServiceKey) -> Option<u64> {
    if !is_v4_mapped(&key.address) || key.scope != SCOPE_ANY {
        return None;
    }
    let [a, b, c, d] = [
        key.address[12],
        key.address[13],
        key.address[14],
        key.address[15],
    ];
    Some(v4_master_word(
        u32::from_ne_bytes([a, b, c, d]),
        key.port,
        key.proto,
    ))
}

/// The element index of a key word, when the array has that element.
fn index_of(elements: &impl Elements, word: u64) -> Option<u32> {
    let index = v4_master_index(word);
    (index < elements.len()).then_some(index)
}

fn holds(entry: &V4MasterEntry, word: u64) -> bool {
    entry.word & v4_master::KEY_MASK == word
}

fn is_valid(entry: &V4MasterEntry) -> bool {
    entry.word & v4_master::VALID != 0
}

/// Changes element `index` from `old` to `new` (a key word and its master; `None` clears it):
/// the bumped version without the valid bit, then the master, then the key with the valid bit
/// and that version. Each store is ordered after the one before it.
fn change(
    elements: &mut impl Elements,
    index: u32,
    old: &V4MasterEntry,
    new: Option<(u64, ServiceValue)>,
) {
    let version = ((old.word >> v4_master::VERSION_SHIFT) + 1) << v4_master::VERSION_SHIFT;
    elements.set_word(index, version);
    if let Some((word, master)) = new {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        elements.set_master(index, master);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        elements.set_word(index, word | version);
    }
}

/// Caches `master` as `key`'s when its element is empty or already holds `key`'s frontend;
/// whether the cache holds it now.
pub(crate) fn put(elements: &mut impl Elements, key: &ServiceKey, master: &ServiceValue) -> bool {
    let Some(word) = word_of(key) else {
        return false;
    };
    let Some(index) = index_of(elements, word) else {
        return false;
    };
    let entry = elements.get(index);
    if holds(&entry, word) {
        if entry.master != *master {
            change(elements, index, &entry, Some((word, *master)));
        }
        return true;
    }
    if is_valid(&entry) {
        // Another frontend's element: this one stays in the hash map alone.
        return false;
    }
    change(elements, index, &entry, Some((word, *master)));
    true
}

/// Uncaches `key`'s frontend (when its element holds it).
pub(crate) fn remove(elements: &mut impl Elements, key: &ServiceKey) {
    let Some(word) = word_of(key) else { return };
    let Some(index) = index_of(elements, word) else {
        return;
    };
    let entry = elements.get(index);
    if holds(&entry, word) {
        change(elements, index, &entry, None);
    }
}

/// What [`sync`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Elements written (a master cached, or another master for the same frontend).
    pub written: usize,
    /// Elements cleared (their frontend is no master, or not with that index).
    pub cleared: usize,
    /// IPv4 masters the cache holds after it.
    pub cached: usize,
    /// IPv4 masters left to the hash map (their element holds another frontend).
    pub uncached: usize,
}

/// Makes the cache agree with `masters` (what `lb_services` holds): every element holds a
/// master of its index, with that master, or nothing; an element that already holds one keeps
/// it (no write), the others take the first master of their index in key order.
pub(crate) fn sync(
    elements: &mut impl Elements,
    masters: &BTreeMap<ServiceKey, ServiceValue>,
) -> SyncReport {
    let mut by_index: BTreeMap<u32, Vec<(u64, ServiceValue)>> = BTreeMap::new();
    let mut v4 = 0;
    for (key, master) in masters {
        if let Some(word) = word_of(key)
            && let Some(index) = index_of(elements, word)
        {
            v4 += 1;
            by_index.entry(index).or_default().push((word, *master));
        }
    }
    let mut report = SyncReport::default();
    for index in 0..elements.len() {
        let entry = elements.get(index);
        let candidates = by_index.get(&index).map_or(&[][..], Vec::as_slice);
        let kept = candidates.iter().find(|(word, _)| holds(&entry, *word));
        match (kept, candidates.first()) {
            (Some((_, master)), _) if entry.master == *master => {}
            (Some(&(word, master)), _) | (None, Some(&(word, master))) => {
                change(elements, index, &entry, Some((word, master)));
                report.written += 1;
            }
            (None, None) if is_valid(&entry) => {
                change(elements, index, &entry, None);
                report.cleared += 1;
            }
            (None, None) => {}
        }
        if !candidates.is_empty() {
            report.cached += 1;
        }
    }
    report.uncached = v4 - report.cached;
    report
}

impl Elements for super::sys::ArrayMapping {
    fn len(&self) -> u32 {
        self.elements()
    }

    fn get(&self, index: u32) -> V4MasterEntry {
        self.read(index).unwrap_or_default()
    }

    fn set_word(&mut self, index: u32, word: u64) {
        // An index below `len` (every caller checks), so the write cannot fail.
        let _ = self.write_field(index, std::mem::offset_of!(V4MasterEntry, word), word);
    }

    fn set_master(&mut self, index: u32, master: ServiceValue) {
        let _ = self.write_field(index, std::mem::offset_of!(V4MasterEntry, master), master);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{IPPROTO_TCP, IPPROTO_UDP, V4_MASTERS_ENTRIES, v4_mapped};

    /// The array in memory, with every store logged (index, which field, value).
    #[derive(Clone)]
    struct Mem {
        elements: Vec<V4MasterEntry>,
        stores: Vec<(u32, Store)>,
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Store {
        Word(u64),
        Master(ServiceValue),
    }

    impl Mem {
        fn new(len: u32) -> Self {
            Self {
                elements: vec![V4MasterEntry::default(); len as usize],
                stores: Vec::new(),
            }
        }
    }

    impl Elements for Mem {
        fn len(&self) -> u32 {
            self.elements.len() as u32
        }
        fn get(&self, index: u32) -> V4MasterEntry {
            self.elements
                .get(index as usize)
                .copied()
                .unwrap_or_default()
        }
        fn set_word(&mut self, index: u32, word: u64) {
            self.elements[index as usize].word = word;
            self.stores.push((index, Store::Word(word)));
        }
        fn set_master(&mut self, index: u32, master: ServiceValue) {
            self.elements[index as usize].master = master;
            self.stores.push((index, Store::Master(master)));
        }
    }

    /// The master a program would take for `key`: what the element holds for its frontend.
    fn lookup(elements: &impl Elements, key: &ServiceKey) -> Option<ServiceValue> {
        let word = word_of(key)?;
        let entry = elements.get(index_of(elements, word)?);
        holds(&entry, word).then_some(entry.master)
    }

    /// The IPv4 masters the cache holds, by key word.
    fn cached(elements: &impl Elements) -> BTreeMap<u64, ServiceValue> {
        (0..elements.len())
            .map(|i| elements.get(i))
            .filter(is_valid)
            .map(|e| (e.word & v4_master::KEY_MASK, e.master))
            .collect()
    }

    fn key(ip: [u8; 4], port: u16, proto: u8) -> ServiceKey {
        ServiceKey {
            address: v4_mapped(ip),
            port: port.to_be(),
            proto,
            scope: SCOPE_ANY,
        }
    }

    fn master(id: u32) -> ServiceValue {
        ServiceValue {
            slot_base: id * 10,
            count: 2,
            flags: 0,
            frontend_id: id,
            affinity_timeout: 0,
        }
    }

    /// Two keys with the same element (found by search over addresses and ports).
    fn colliding() -> (ServiceKey, ServiceKey) {
        let a = key([10, 96, 0, 1], 80, IPPROTO_TCP);
        let index = v4_master_index(word_of(&a).unwrap());
        let b = (0..=u8::MAX)
            .flat_map(|d| (1..=u16::MAX).map(move |p| key([10, 96, 7, d], p, IPPROTO_TCP)))
            .find(|k| v4_master_index(word_of(k).unwrap()) == index)
            .expect("a colliding key");
        (a, b)
    }

    #[test]
    fn the_word_is_what_the_programs_compute_from_the_context() {
        let k = key([10, 96, 0, 10], 443, IPPROTO_TCP);
        // The programs load the address as a native u32 of its network-order bytes, and the
        // port as the context's network-order u16.
        let ip4 = u32::from_ne_bytes([10, 96, 0, 10]);
        assert_eq!(
            word_of(&k),
            Some(v4_master_word(ip4, 443u16.to_be(), IPPROTO_TCP))
        );
        let mut v6 = k;
        v6.address[0] = 0xfd;
        assert_eq!(word_of(&v6), None);
        let mut scoped = k;
        scoped.scope = 1;
        assert_eq!(word_of(&scoped), None);
        assert!(v4_master_index(word_of(&k).unwrap()) < V4_MASTERS_ENTRIES);
    }

    /// ClusterIPs allocated in sequence (how a bench, and some clusters, number them) spread
    /// like random keys: 10,000 of them take about 92.7% as many elements (65,536 x (1 -
    /// e^(-10,000/65,536)) / 10,000), as do 30,000 (about 80%).
    #[test]
    fn sequential_cluster_ips_spread_like_random_keys() {
        for (n, at_least) in [(10_000u32, 0.91), (30_000, 0.79)] {
            let elements: std::collections::BTreeSet<u32> = (0..n)
                .map(|i| {
                    let [a, b, c, d] = (u32::from_be_bytes([10, 96, 0, 0]) + i + 1).to_be_bytes();
                    v4_master_index(word_of(&key([a, b, c, d], 80, IPPROTO_TCP)).unwrap())
                })
                .collect();
            let spread = elements.len() as f64 / f64::from(n);
            assert!(spread >= at_least, "{n} sequential ClusterIPs: {spread:.3}");
        }
    }

    #[test]
    fn put_update_remove_and_collisions() {
        let mut m = Mem::new(V4_MASTERS_ENTRIES);
        let (a, b) = colliding();
        assert!(put(&mut m, &a, &master(1)));
        assert_eq!(lookup(&m, &a), Some(master(1)));
        // The colliding frontend stays in the hash map.
        assert!(!put(&mut m, &b, &master(2)));
        assert_eq!(lookup(&m, &b), None);
        assert_eq!(lookup(&m, &a), Some(master(1)));
        // A new master for the same frontend replaces the cached one; the same one is no write.
        let stores = m.stores.len();
        assert!(put(&mut m, &a, &master(1)));
        assert_eq!(m.stores.len(), stores);
        assert!(put(&mut m, &a, &master(4)));
        assert_eq!(lookup(&m, &a), Some(master(4)));
        // Removing another frontend of the element leaves it; removing its own clears it, and
        // the colliding one takes it on its next write.
        remove(&mut m, &b);
        assert_eq!(lookup(&m, &a), Some(master(4)));
        remove(&mut m, &a);
        assert_eq!(lookup(&m, &a), None);
        assert!(put(&mut m, &b, &master(2)));
        assert_eq!(lookup(&m, &b), Some(master(2)));
    }

    #[test]
    fn every_change_bumps_the_version() {
        let mut m = Mem::new(V4_MASTERS_ENTRIES);
        let a = key([10, 96, 0, 1], 80, IPPROTO_TCP);
        let index = v4_master_index(word_of(&a).unwrap());
        let mut words = vec![m.get(index).word];
        for id in 1..200 {
            put(&mut m, &a, &master(id));
            words.push(m.get(index).word);
            if id % 7 == 0 {
                remove(&mut m, &a);
                words.push(m.get(index).word);
            }
        }
        for pair in words.windows(2) {
            assert_ne!(pair[0], pair[1], "a change left the word as it was");
        }
    }

    /// A program's read of an element (word, master, word again), with the writer's stores
    /// of one change run up to a point before each of its three loads: whatever the
    /// interleaving, the program takes the old master, the new one, or none (the hash map).
    #[test]
    fn a_read_crossing_a_change_takes_a_whole_master_or_none() {
        let a = key([10, 96, 0, 1], 80, IPPROTO_TCP);
        let index = v4_master_index(word_of(&a).unwrap());
        let changes: [(Option<ServiceValue>, Option<ServiceValue>); 4] = [
            (Some(master(1)), Some(master(2))),
            (Some(master(1)), Some(master(1))),
            (None, Some(master(2))),
            (Some(master(1)), None),
        ];
        for (old, new) in changes {
            let mut before = Mem::new(V4_MASTERS_ENTRIES);
            if let Some(old) = old {
                put(&mut before, &a, &old);
            }
            let mut after = before.clone();
            after.stores.clear();
            match new {
                Some(new) if Some(new) == old => {
                    // Rewriting the same master: forced, to check the ABA case.
                    let entry = after.get(index);
                    change(&mut after, index, &entry, Some((word_of(&a).unwrap(), new)));
                }
                Some(new) => {
                    put(&mut after, &a, &new);
                }
                None => remove(&mut after, &a),
            }
            let stores = after.stores.clone();
            // The writer's master store lands in two halves (a torn 16-byte store).
            let mut steps = Vec::new();
            for (i, s) in &stores {
                match s {
                    Store::Word(w) => steps.push((*i, Store::Word(*w), None)),
                    Store::Master(m) => {
                        let mut half = before.get(*i).master;
                        half.slot_base = m.slot_base;
                        half.count = m.count;
                        half.flags = m.flags;
                        steps.push((*i, Store::Master(half), None));
                        steps.push((*i, Store::Master(*m), Some(())));
                    }
                }
            }
            let state = |n: usize| {
                let mut e = before.get(index);
                for (_, s, _) in &steps[..n] {
                    match s {
                        Store::Word(w) => e.word = *w,
                        Store::Master(m) => e.master = *m,
                    }
                }
                e
            };
            let want = word_of(&a).unwrap();
            for r1 in 0..=steps.len() {
                for r2 in r1..=steps.len() {
                    for r3 in r2..=steps.len() {
                        let w1 = state(r1).word;
                        if w1 & v4_master::KEY_MASK != want {
                            continue;
                        }
                        let taken = state(r2).master;
                        if state(r3).word != w1 {
                            continue;
                        }
                        assert!(
                            Some(taken) == old || Some(taken) == new,
                            "took {taken:?} reading at {r1}/{r2}/{r3} of {steps:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn sync_agrees_with_the_masters_and_keeps_what_is_right() {
        let mut m = Mem::new(V4_MASTERS_ENTRIES);
        let (a, b) = colliding();
        let c = key([10, 96, 0, 3], 53, IPPROTO_UDP);
        let gone = key([10, 96, 0, 4], 80, IPPROTO_TCP);
        let mut v6 = key([0, 0, 0, 0], 80, IPPROTO_TCP);
        v6.address = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        // A stale cache: b holds the shared element, c an outdated master, `gone` is no
        // master any more.
        put(&mut m, &b, &master(2));
        put(&mut m, &c, &master(30));
        put(&mut m, &gone, &master(9));
        let masters: BTreeMap<_, _> = [
            (a, master(1)),
            (b, master(2)),
            (c, master(3)),
            (v6, master(6)),
        ]
        .into_iter()
        .collect();
        m.stores.clear();
        let report = sync(&mut m, &masters);
        assert_eq!(
            report,
            SyncReport {
                written: 1,
                cleared: 1,
                cached: 2,
                uncached: 1,
            }
        );
        // b kept its element (no write), c got its master, `gone` was cleared, a stays out.
        assert_eq!(lookup(&m, &b), Some(master(2)));
        assert_eq!(lookup(&m, &c), Some(master(3)));
        assert_eq!(lookup(&m, &gone), None);
        assert_eq!(lookup(&m, &a), None);
        assert_eq!(cached(&m).len(), 2);
        // Once it agrees, a sync writes nothing.
        m.stores.clear();
        let again = sync(&mut m, &masters);
        assert_eq!((again.written, again.cleared), (0, 0));
        assert!(m.stores.is_empty());
    }
}
