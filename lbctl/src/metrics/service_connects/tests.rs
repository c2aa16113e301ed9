//! Tables of frontend owners and kernel counter readings, and the per-Service-port totals they
//! must give.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
};

use super::*;
use crate::plan::Protocol;

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

fn frontend(id: u32, last_octet: u8, service: &str, port_name: &str) -> NamedFrontend {
    NamedFrontend {
        id,
        frontend: FrontendKey {
            address: IpAddr::V4(Ipv4Addr::new(10, 96, 0, last_octet)),
            port: 80,
            protocol: Protocol::Tcp,
        },
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
        [frontend(1, 1, "web", "http"), frontend(2, 2, "web", "http")],
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
        [frontend(1, 1, "web", "http"), frontend(2, 2, "web", "http")],
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
    assert!(c.set([frontend(1, 1, "old", "")], kernel.read()));
    kernel.count(1, 4, 0);
    // The id goes to another Service's frontend: the old owner keeps its 4 (credited at the
    // hand-over), and its port, now without frontends, goes.
    assert!(c.set([frontend(1, 9, "new", "")], kernel.read()));
    assert_eq!(totals(&c), [row("new", "", 0, 0)]);
    kernel.count(1, 6, 1);
    assert!(c.collect(kernel.read()));
    assert_eq!(totals(&c), [row("new", "", 2, 1)]);
    // Same Service port, another frontend address under the id: a new owner too.
    assert!(c.set([frontend(1, 10, "new", "")], kernel.read()));
    kernel.count(1, 7, 1);
    assert!(c.collect(kernel.read()));
    assert_eq!(totals(&c), [row("new", "", 3, 1)]);
}

#[test]
fn a_port_that_only_changes_ids_keeps_its_counts() {
    let kernel = Kernel::new();
    let mut c = ServiceConnects::default();
    assert!(c.set([frontend(1, 1, "web", "")], kernel.read()));
    kernel.count(1, 3, 0);
    kernel.count(2, 100, 0);
    // The frontend moves to id 2: what id 1 counted is credited, id 2 starts from its value.
    let mut moved = frontend(2, 2, "web", "");
    moved.frontend = frontend(1, 1, "web", "").frontend;
    assert!(c.set([moved], kernel.read()));
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
    assert!(c.set([frontend(1, 1, "web", "")], kernel.read()));
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
            frontend(1, 1, "a", ""),
            frontend(2, 2, "b", ""),
            frontend(3, 3, "b", "")
        ],
        kernel.read()
    ));
    kernel.count(1, 1, 0);
    kernel.count(2, 2, 0);
    kernel.count(3, 3, 0);
    // Id 2 goes, id 4 is new, id 1 is named again unchanged.
    assert!(c.patch(
        &[2],
        [frontend(4, 4, "c", ""), frontend(1, 1, "a", "")],
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
    assert!(c.set([frontend(1, 1, "web", "")], kernel.read()));
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
            .map(|(i, s)| frontend(i as u32 + 1, i as u8 + 1, s, "p"))
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
