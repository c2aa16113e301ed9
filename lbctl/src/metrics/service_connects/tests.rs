//! Tables of frontend owners and kernel counter readings, and the per-Service-port totals they
//! must give.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use super::*;

type Counters = Arc<Mutex<Option<BTreeMap<u32, FrontendCounts>>>>;

/// The kernel's per-frontend counters, as the test sets them (`None`: unreadable), and the
/// reader the agent would be given.
struct Kernel(Counters, Box<FrontendCountsFn>);

impl Kernel {
    fn new() -> Self {
        let counters: Counters = Arc::new(Mutex::new(Some(BTreeMap::new())));
        let shared = counters.clone();
        let read = move |ids: &[u32]| {
            let counts = shared.lock().unwrap();
            let counts = counts.as_ref()?;
            Some(
                ids.iter()
                    .map(|id| counts.get(id).copied().unwrap_or_default())
                    .collect(),
            )
        };
        Self(counters, Box::new(read))
    }

    fn count(&self, id: u32, rewritten: u64, refused: u64) {
        self.0
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .insert(id, FrontendCounts { rewritten, refused });
    }

    fn unreadable(&self) {
        *self.0.lock().unwrap() = None;
    }

    fn readable(&self) {
        *self.0.lock().unwrap() = Some(BTreeMap::new());
    }

    fn read(&self) -> Option<&FrontendCountsFn> {
        Some(&*self.1)
    }
}

fn port(service: &str, port_name: &str) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        service: service.into(),
        port_name: port_name.into(),
    }
}

fn frontend(id: u32, service: &str, port_name: &str) -> NamedFrontend {
    NamedFrontend {
        id,
        service: port(service, port_name),
    }
}

/// `(service, port name, rewritten, refused)` of every Service port, in order.
fn totals(c: &ServiceConnects) -> Vec<(String, String, u64, u64)> {
    c.totals()
        .into_iter()
        .map(|(p, n)| {
            (
                p.service.to_string(),
                p.port_name.to_string(),
                n.rewritten,
                n.refused,
            )
        })
        .collect()
}

fn row(service: &str, port_name: &str, rewritten: u64, refused: u64) -> (String, String, u64, u64) {
    (service.into(), port_name.into(), rewritten, refused)
}

#[test]
fn counts_since_an_owner_took_its_id_go_to_its_service_port() {
    let kernel = Kernel::new();
    let mut c = ServiceConnects::default();
    // Counted before the agent named the ids: not the Services' doing.
    kernel.count(1, 5, 0);
    kernel.count(2, 7, 1);
    assert!(c.set(
        [frontend(1, "web", "http"), frontend(2, "web", "http")],
        kernel.read()
    ));
    assert_eq!(
        totals(&c),
        [row("web", "http", 0, 0)],
        "one series per port"
    );
    kernel.count(1, 8, 0);
    kernel.count(2, 9, 3);
    assert!(c.collect(kernel.read()));
    assert_eq!(
        totals(&c),
        [row("web", "http", 5, 2)],
        "both frontends of the port"
    );
    // The same set again reads nothing and keeps the baselines.
    assert!(c.set(
        [frontend(1, "web", "http"), frontend(2, "web", "http")],
        None
    ));
    kernel.count(1, 10, 0);
    assert!(c.collect(kernel.read()));
    assert_eq!(totals(&c), [row("web", "http", 7, 2)]);
}

#[test]
fn a_reused_id_counts_for_its_new_owner_only_from_the_moment_it_changed_hands() {
    let kernel = Kernel::new();
    let mut c = ServiceConnects::default();
    assert!(c.set([frontend(1, "old", "")], kernel.read()));
    kernel.count(1, 4, 0);
    // The id goes to another Service's frontend: the old owner keeps its 4 (credited at the
    // hand-over), and its port, now without frontends, goes.
    assert!(c.set([frontend(1, "new", "")], kernel.read()));
    assert_eq!(totals(&c), [row("new", "", 0, 0)]);
    kernel.count(1, 6, 1);
    assert!(c.collect(kernel.read()));
    assert_eq!(totals(&c), [row("new", "", 2, 1)]);
    // Another frontend of the same Service port under the id: it goes on counting for the
    // port (crediting one frontend and starting the next from the same reading adds the same).
    assert!(c.set([frontend(1, "new", "")], kernel.read()));
    kernel.count(1, 7, 1);
    assert!(c.collect(kernel.read()));
    assert_eq!(totals(&c), [row("new", "", 3, 1)]);
}

#[test]
fn a_port_that_only_changes_ids_keeps_its_counts() {
    let kernel = Kernel::new();
    let mut c = ServiceConnects::default();
    assert!(c.set([frontend(1, "web", "")], kernel.read()));
    kernel.count(1, 3, 0);
    kernel.count(2, 100, 0);
    // The frontend moves to id 2: what id 1 counted is credited, id 2 starts from its value.
    assert!(c.set([frontend(2, "web", "")], kernel.read()));
    assert_eq!(totals(&c), [row("web", "", 3, 0)]);
    kernel.count(2, 101, 0);
    assert!(c.collect(kernel.read()));
    assert_eq!(totals(&c), [row("web", "", 4, 0)]);
}

#[test]
fn a_counter_that_went_down_counts_from_zero() {
    let kernel = Kernel::new();
    let mut c = ServiceConnects::default();
    kernel.count(1, 50, 0);
    assert!(c.set([frontend(1, "web", "")], kernel.read()));
    // The maps were recreated: the counter restarted.
    kernel.count(1, 2, 0);
    assert!(c.collect(kernel.read()));
    assert_eq!(totals(&c), [row("web", "", 2, 0)]);
}

#[test]
fn patch_changes_only_the_named_ids() {
    let kernel = Kernel::new();
    let mut c = ServiceConnects::default();
    assert!(c.set(
        [
            frontend(1, "a", ""),
            frontend(2, "b", ""),
            frontend(3, "b", "")
        ],
        kernel.read()
    ));
    kernel.count(1, 1, 0);
    kernel.count(2, 2, 0);
    kernel.count(3, 3, 0);
    // Id 2 goes, id 4 is new, id 1 is named again unchanged.
    assert!(c.patch(
        &[2],
        [frontend(4, "c", ""), frontend(1, "a", "")],
        kernel.read()
    ));
    kernel.count(1, 2, 0);
    kernel.count(4, 5, 0);
    kernel.count(2, 50, 0);
    assert!(c.collect(kernel.read()));
    assert_eq!(
        totals(&c),
        [row("a", "", 2, 0), row("b", "", 5, 0), row("c", "", 5, 0)],
        "a: what id 1 counted; b: what id 2 counted until it went (not the 48 after) and \
         what id 3 counted; c: from its baseline at the patch"
    );
    kernel.count(3, 4, 0);
    assert!(c.collect(kernel.read()));
    assert_eq!(totals(&c)[1], row("b", "", 6, 0));
    // The last frontend of b goes: so does its series.
    assert!(c.patch(&[3], [], kernel.read()));
    assert_eq!(totals(&c), [row("a", "", 2, 0), row("c", "", 5, 0)]);
}

#[test]
fn unreadable_counters_are_reported_and_counted_later() {
    let kernel = Kernel::new();
    let mut c = ServiceConnects::default();
    assert!(c.set([frontend(1, "web", "")], kernel.read()));
    kernel.unreadable();
    assert!(!c.collect(kernel.read()));
    assert!(!c.collect(None), "no reader is unreadable too");
    kernel.readable();
    kernel.count(1, 6, 2);
    assert!(c.collect(kernel.read()));
    assert_eq!(totals(&c), [row("web", "", 6, 2)]);
}

#[test]
fn freed_port_slots_are_reused_without_mixing_ports() {
    let kernel = Kernel::new();
    let mut c = ServiceConnects::default();
    for round in 0..3u64 {
        let services: Vec<String> = (0..4).map(|i| format!("s{round}-{i}")).collect();
        let set: Vec<NamedFrontend> = services
            .iter()
            .enumerate()
            .map(|(i, s)| frontend(i as u32 + 1, s, "p"))
            .collect();
        assert!(c.set(set, kernel.read()));
        for i in 0..4u32 {
            let now = kernel.read().unwrap()(&[i + 1]).unwrap()[0];
            kernel.count(i + 1, now.rewritten + u64::from(i) + 1, 0);
        }
        assert!(c.collect(kernel.read()));
        let expected: Vec<_> = services
            .iter()
            .enumerate()
            .map(|(i, s)| row(s, "p", i as u64 + 1, 0))
            .collect();
        assert_eq!(totals(&c), expected, "round {round}");
    }
    assert_eq!(
        c.ports.len(),
        8,
        "a set holds its new ports before the old ones go; later sets reuse the freed slots"
    );
    assert!(c.set([], kernel.read()));
    assert!(totals(&c).is_empty());
    assert!(c.index.is_empty());
}

#[test]
fn many_ids_are_read_a_chunk_at_a_time_and_credited_across_chunks() {
    let kernel = Kernel::new();
    let calls: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
    let seen = calls.clone();
    let inner = kernel.1;
    let read = move |ids: &[u32]| {
        seen.lock().unwrap().push(ids.to_vec());
        inner(ids)
    };
    let kernel = Kernel(kernel.0, Box::new(read));
    let n = READ_CHUNK as u32 * 2 + 7;
    // Ports "p0".."p2" of one Service, frontends spread over them; every id counted before.
    let port_of = |id: u32| format!("p{}", id % 3);
    for id in 1..=n {
        kernel.count(id, 10, 0);
    }
    let mut c = ServiceConnects::default();
    assert!(c.set(
        (1..=n).map(|id| frontend(id, "web", &port_of(id))),
        kernel.read()
    ));
    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 3, "{n} baselines in chunks of {READ_CHUNK}");
        assert!(
            calls
                .iter()
                .all(|ids| ids.len() <= READ_CHUNK && ids.is_sorted())
        );
        let all: Vec<u32> = calls.concat();
        assert_eq!(
            all,
            (1..=n).collect::<Vec<_>>(),
            "each id read once, in order"
        );
    }
    assert_eq!(
        totals(&c),
        [
            row("web", "p0", 0, 0),
            row("web", "p1", 0, 0),
            row("web", "p2", 0, 0)
        ],
        "what was counted before the ids were named is nobody's"
    );
    // Every id counts 1; then each frontend moves to the id `n` above its own (ids the kernel
    // counted 100 on): the old ids are credited from the one reading of the move, and the new
    // ones start from theirs.
    for id in 1..=n {
        kernel.count(id, 11, 0);
        kernel.count(id + n, 100, 0);
    }
    calls.lock().unwrap().clear();
    assert!(c.set(
        (1..=n).map(|id| frontend(id + n, "web", &port_of(id))),
        kernel.read()
    ));
    assert_eq!(calls.lock().unwrap().concat().len(), 2 * n as usize);
    for id in 1..=n {
        kernel.count(id + n, 102, 0);
    }
    assert!(c.collect(kernel.read()));
    let per_port = |p: u32| (1..=n).filter(|id| id % 3 == p).count() as u64 * 3;
    assert_eq!(
        totals(&c),
        [
            row("web", "p0", per_port(0), 0),
            row("web", "p1", per_port(1), 0),
            row("web", "p2", per_port(2), 0)
        ]
    );
}

#[test]
fn a_chunk_that_cannot_be_read_leaves_the_others_counted() {
    let kernel = Kernel::new();
    let failing = Arc::new(Mutex::new(false));
    let fail = failing.clone();
    let inner = kernel.1;
    // Fails the chunk that holds id 1 while `failing` is set.
    let read = move |ids: &[u32]| {
        if *fail.lock().unwrap() && ids.contains(&1) {
            return None;
        }
        inner(ids)
    };
    let kernel = Kernel(kernel.0, Box::new(read));
    let n = READ_CHUNK as u32 + 1;
    let mut c = ServiceConnects::default();
    assert!(c.set(
        (1..=n).map(|id| frontend(id, if id == n { "last" } else { "web" }, "")),
        kernel.read()
    ));
    for id in 1..=n {
        kernel.count(id, 2, 0);
    }
    *failing.lock().unwrap() = true;
    assert!(!c.collect(kernel.read()), "one chunk failed");
    assert_eq!(
        totals(&c),
        [row("last", "", 2, 0), row("web", "", 0, 0)],
        "the chunk of id {n} alone was read"
    );
    *failing.lock().unwrap() = false;
    assert!(c.collect(kernel.read()));
    assert_eq!(
        totals(&c),
        [row("last", "", 2, 0), row("web", "", 2 * (n as u64 - 1), 0)]
    );
}
