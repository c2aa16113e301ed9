//! The writer against in-memory maps: tables of desired states and the map dump they must
//! produce, with faults injected at every element of every operation.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use lb_common::{MemberKey, ServiceValue, needs_members};

use super::{ApplyReport, Writer};
use crate::{
    datapath::{
        decode::read_frontends,
        desired::{Desired, ServiceSpec, backend_value},
        fake::{FaultyMaps, MemMaps, Op},
        filter::V4Filter,
        store::{LbMaps, Limits, MapDump},
    },
    plan::{FrontendKey, FrontendKind, Protocol},
};

const LIMITS: Limits = Limits {
    slots: 4096,
    backends: 4096,
    members: 4096,
    frontends: 1024,
};

fn fe(s: &str) -> FrontendKey {
    let (addr, proto) = s.split_once('/').unwrap();
    let protocol = if proto == "udp" {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    FrontendKey::new(addr.parse().unwrap(), protocol)
}

/// (frontend "addr:port/proto", backends, affinity timeout)
type Case<'a> = &'a [(&'a str, &'a [&'a str], Option<u32>)];

fn desired(services: Case<'_>) -> Desired {
    Desired {
        services: services
            .iter()
            .map(|(f, backends, affinity)| {
                (
                    fe(f),
                    ServiceSpec {
                        backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
                        affinity_timeout: *affinity,
                        kind: FrontendKind::ClusterIP,
                    },
                )
            })
            .collect(),
    }
}

/// Every master's range is filled (no zero element) and overlaps no other master's; every
/// slot's backend exists; every backend of the range of a UDP or affinity master is a member of
/// its frontend; every membership belongs to a master and to an existing backend, and
/// (`strict`: unless a membership deletion failed) to a backend its frontend's range holds;
/// frontend ids are distinct.
fn check_consistent(t: &MapDump, strict: bool, context: &str) {
    let mut ids = BTreeSet::new();
    // Frontend id -> backend ids of its range.
    let mut held: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for (key, master) in &t.services {
        assert!(
            ids.insert(master.frontend_id),
            "{context}: frontend id {} twice",
            master.frontend_id
        );
        let end = master.slot_base + u32::from(master.count);
        if master.count > 0 {
            ranges.push((master.slot_base, end));
        }
        for index in master.slot_base..end {
            let &backend_id = t.slots.get(&index).unwrap_or_else(|| {
                panic!("{context}: master {master:?} lacks slot {index} of its range",)
            });
            assert!(
                t.backends.contains_key(&backend_id),
                "{context}: slot {index} refers to missing backend {backend_id}",
            );
            assert!(
                !needs_members(key.proto, master.flags)
                    || t.members.contains(&MemberKey {
                        frontend_id: master.frontend_id,
                        backend_id
                    }),
                "{context}: backend {backend_id} of slot {index} is no member of frontend {}",
                master.frontend_id
            );
            held.entry(master.frontend_id)
                .or_default()
                .insert(backend_id);
        }
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{context}: ranges {:?} and {:?} overlap",
            pair[0],
            pair[1]
        );
    }
    let fids: BTreeSet<u32> = t.services.values().map(|v| v.frontend_id).collect();
    for member in &t.members {
        assert!(
            t.backends.contains_key(&member.backend_id),
            "{context}: {member:?}"
        );
        if !strict {
            continue;
        }
        assert!(
            fids.contains(&member.frontend_id),
            "{context}: membership {member:?} of no frontend"
        );
        assert!(
            held.get(&member.frontend_id)
                .is_some_and(|ids| ids.contains(&member.backend_id)),
            "{context}: membership {member:?} of a backend its frontend never held"
        );
    }
}

/// The tables hold exactly `want`: its frontends with their backends in slot order and their
/// flags, the memberships of the backends of its UDP and affinity frontends, and no other entry
/// (no stray slot, membership or backend; no membership of a TCP frontend without affinity).
fn check_exact(maps: &impl LbMaps, want: &Desired, context: &str) {
    let t = maps.dump().unwrap();
    check_consistent(&t, true, context);
    check_ports_safe(maps, context);
    assert_eq!(
        maps.v4_filter(),
        Some(V4Filter::of(want.services.keys())),
        "{context}: lb_v4_filter skips exactly the /16s without frontends"
    );
    let found: BTreeMap<FrontendKey, (Vec<SocketAddr>, u16, u32)> = read_frontends(maps)
        .unwrap()
        .into_iter()
        .map(|f| (f.frontend, (f.backends, f.flags, f.affinity_timeout)))
        .collect();
    let expected: BTreeMap<FrontendKey, (Vec<SocketAddr>, u16, u32)> = want
        .services
        .iter()
        .map(|(f, s)| {
            (
                *f,
                (
                    s.backends.to_vec(),
                    s.flags(),
                    s.affinity_timeout.unwrap_or(0),
                ),
            )
        })
        .collect();
    assert_eq!(found, expected, "{context}");
    let slots: usize = want.services.values().map(|s| s.backends.len()).sum();
    assert_eq!(
        t.services.len(),
        want.services.len(),
        "{context}: stray masters"
    );
    assert_eq!(t.slots.len(), slots, "{context}: stray slots");
    let members: usize = want
        .services
        .iter()
        .filter(|(f, s)| needs_members(f.key().proto, s.flags()))
        .map(|(_, s)| s.backends.iter().collect::<BTreeSet<_>>().len())
        .sum();
    assert_eq!(t.members.len(), members, "{context}: stray memberships");
    for (key, master) in &t.services {
        if !needs_members(key.proto, master.flags) {
            assert!(
                !t.members
                    .iter()
                    .any(|m| m.frontend_id == master.frontend_id),
                "{context}: memberships of a TCP frontend without affinity"
            );
        }
    }
    let backends: BTreeSet<_> = want
        .services
        .iter()
        .flat_map(|(f, s)| s.backends.iter().map(|b| backend_value(b, f.protocol)))
        .collect();
    let held: BTreeSet<_> = t.backends.values().copied().collect();
    assert_eq!(held, backends, "{context}: backend table");
    assert_eq!(
        t.backends.len(),
        backends.len(),
        "{context}: duplicate backends"
    );
}

/// Every TCP backend a master the maps hold reaches has its port's bucket marked in
/// `lb_tcp_backend_ports`: `getpeername` on a socket a connect sent there looks for its
/// translation.
fn check_ports_safe(maps: &impl LbMaps, context: &str) {
    let marks = maps.tcp_ports().unwrap();
    let t = maps.dump().unwrap();
    for (key, master) in &t.services {
        if key.proto != lb_common::IPPROTO_TCP {
            continue;
        }
        for index in master.slot_base..master.slot_base + u32::from(master.count) {
            let Some(backend) = t.slots.get(&index).and_then(|id| t.backends.get(id)) else {
                continue;
            };
            assert_eq!(
                marks[lb_common::tcp_port_bucket(backend.port)],
                1,
                "{context}: backend port {} of {key:?} not marked",
                u16::from_be(backend.port)
            );
        }
    }
}

/// The apply that made `report` wrote nothing but one element of `op` (a one-element map).
fn assert_only_call(maps: &MemMaps, op: Op, report: &ApplyReport) {
    assert_eq!(
        maps.log,
        [crate::datapath::fake::Call { op, len: 1 }],
        "{report:?}"
    );
}

/// No connect skips a master the maps hold: its /16 is held in `lb_v4_filter`.
fn check_filter_safe(maps: &impl LbMaps, context: &str) {
    let filter = maps.v4_filter().unwrap();
    for key in maps.dump().unwrap().services.keys() {
        if let Some(frontend) = FrontendKey::from_key(key) {
            assert!(
                !filter.skips_frontend(&frontend),
                "{context}: connects to {frontend} skip its master: {filter:?}"
            );
        }
    }
}

fn no_errors(report: &ApplyReport, context: &str) {
    assert!(report.errors.is_empty(), "{context}: {:?}", report.errors);
}

const A: &str = "10.96.0.1:80/tcp";
const B: &str = "10.96.0.2:80/tcp";
const C: &str = "10.96.0.3:53/udp";
const V6: &str = "[fd00::1]:80/tcp";

/// (name, before, after)
const CASES: &[(&str, Case<'static>, Case<'static>)] = &[
    (
        "from empty",
        &[],
        &[
            (
                A,
                &["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"],
                None,
            ),
            (B, &[], None),
            (C, &["10.0.0.1:8080"], Some(30)),
        ],
    ),
    (
        "grow",
        &[(A, &["10.0.0.1:8080"], None)],
        &[(
            A,
            &["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"],
            None,
        )],
    ),
    (
        "shrink",
        &[(
            A,
            &["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"],
            None,
        )],
        &[(A, &["10.0.0.3:8080"], None)],
    ),
    (
        "replace",
        &[(A, &["10.0.0.1:8080", "10.0.0.2:8080"], None)],
        &[(A, &["10.0.0.3:8080", "10.0.0.4:8080"], None)],
    ),
    (
        "delete",
        &[(A, &["10.0.0.1:8080"], None), (B, &["10.0.0.2:8080"], None)],
        &[(B, &["10.0.0.2:8080"], None)],
    ),
    (
        "delete all",
        &[(A, &["10.0.0.1:8080"], None), (C, &["10.0.0.2:53"], None)],
        &[],
    ),
    (
        "shared backends move",
        &[
            (A, &["10.0.0.1:8080", "10.0.0.2:8080"], None),
            (B, &["10.0.0.2:8080"], None),
        ],
        &[
            (A, &["10.0.0.2:8080"], None),
            (B, &["10.0.0.2:8080", "10.0.0.3:8080"], None),
        ],
    ),
    (
        "affinity on",
        &[(A, &["10.0.0.1:8080"], None)],
        &[(A, &["10.0.0.1:8080"], Some(10800))],
    ),
    (
        "mixed",
        &[
            (A, &["10.0.0.1:8080", "10.0.0.2:8080"], None),
            (B, &["10.0.0.5:8080"], None),
            (V6, &["[fd00::10]:8080"], None),
        ],
        &[
            (A, &["10.0.0.2:8080", "10.0.0.6:8080"], None),
            (C, &["10.0.0.7:53", "10.0.0.8:53"], None),
            (V6, &["[fd00::10]:8080", "[fd00::11]:8080"], None),
        ],
    ),
];

#[test]
fn tables_reach_the_desired_dump() {
    for (name, before, after) in CASES {
        let (before, after) = (desired(before), desired(after));
        let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
        no_errors(&w.apply(&before).unwrap(), name);
        check_exact(w.maps(), &before, &format!("{name}, before"));
        let report = w.apply(&after).unwrap();
        no_errors(&report, name);
        check_exact(w.maps(), &after, &format!("{name}, after"));
        assert_eq!(
            report.map_calls,
            w.maps().batches() - {
                // Calls of the first apply.
                let mut fresh = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
                fresh.apply(&before).unwrap();
                fresh.maps().batches()
            }
        );
        let again = w.apply(&after).unwrap();
        assert!(again.is_noop() && again.map_calls == 0, "{name}: {again:?}");
        // A new writer adopting the maps changes nothing either.
        let mut adopted = Writer::adopt(w.maps().clone()).unwrap();
        let report = adopted.apply(&after).unwrap();
        assert_eq!(report.map_operations, 0, "{name}: adopted: {report:?}");
        check_exact(adopted.maps(), &after, &format!("{name}, adopted"));
    }
}

const OPS: [Op; 9] = [
    Op::WriteSlot,
    Op::UpdateBackend,
    Op::UpdateService,
    Op::UpdateMember,
    Op::DeleteService,
    Op::DeleteMember,
    Op::DeleteBackend,
    Op::WriteFilter,
    Op::WritePorts,
];

#[test]
fn a_fault_at_any_element_leaves_a_consistent_state_and_the_next_apply_repairs_it() {
    let mut tried = 0;
    for (name, before, after) in CASES {
        let (before, after) = (desired(before), desired(after));
        // How many elements of each operation the change takes.
        let mut clean = Writer::adopt(FaultyMaps::new(MemMaps::new(LIMITS), [])).unwrap();
        clean.apply(&before).unwrap();
        let start = OPS.map(|op| clean.maps().seen(op));
        clean.apply(&after).unwrap();
        for (k, op) in OPS.into_iter().enumerate() {
            for n in 0..clean.maps().seen(op) - start[k] {
                tried += 1;
                let context = format!("{name}: {op:?} element {n} fails");
                let maps = FaultyMaps::new(MemMaps::new(LIMITS), [(op, start[k] + n)]);
                let mut w = Writer::adopt(maps).unwrap();
                no_errors(&w.apply(&before).unwrap(), &context);
                let report = w.apply(&after).unwrap();
                check_consistent(&w.maps().inner.tables, op != Op::DeleteMember, &context);
                check_filter_safe(w.maps(), &context);
                check_ports_safe(w.maps(), &context);
                if matches!(op, Op::UpdateBackend | Op::UpdateService | Op::UpdateMember) {
                    assert!(
                        report
                            .errors
                            .iter()
                            .any(|e| e.reason.contains("injected fault")),
                        "{context}: {report:?}"
                    );
                }
                // The frontends without error are as wanted.
                let failed: BTreeSet<FrontendKey> =
                    report.errors.iter().map(|e| e.frontend).collect();
                let programmed = read_frontends(w.maps()).unwrap();
                for (f, spec) in after.services.iter().filter(|(f, _)| !failed.contains(f)) {
                    let p = programmed.iter().find(|p| p.frontend == *f);
                    assert_eq!(
                        p.map(|p| &p.backends),
                        Some(&spec.backends.to_vec()),
                        "{context}: {f}"
                    );
                }
                // A restarted agent adopting these maps repairs them.
                let mut adopted = Writer::adopt(w.maps().inner.clone()).unwrap();
                no_errors(&adopted.apply(&after).unwrap(), &context);
                check_exact(adopted.maps(), &after, &format!("{context}, adopted"));
                // So does the same writer once the fault is gone.
                w.maps_mut().faults.clear();
                no_errors(&w.apply(&after).unwrap(), &context);
                check_exact(w.maps(), &after, &format!("{context}, repaired"));
            }
        }
    }
    assert!(tried > 50, "only {tried} faults injected");
}

#[test]
fn a_full_slot_table_refuses_whole_frontends_and_keeps_the_rest() {
    let limits = Limits { slots: 5, ..LIMITS };
    let mut w = Writer::adopt(MemMaps::new(limits)).unwrap();
    let all = desired(&[
        (A, &["10.0.0.1:80", "10.0.0.2:80"], None),
        (B, &["10.0.0.3:80", "10.0.0.4:80"], None),
        (C, &["10.0.0.5:53", "10.0.0.6:53"], None),
    ]);
    let report = w.apply(&all).unwrap();
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(report.errors[0].frontend, fe(C));
    assert!(report.errors[0].reason.contains("full"), "{report:?}");
    let mut written = all.clone();
    written.services.remove(&fe(C));
    check_exact(w.maps(), &written, "full");
    // Room made by deleting one: the next apply writes the refused one.
    let mut fewer = all.clone();
    fewer.services.remove(&fe(A));
    // The deletion frees its entries only after the writes: C waits for the next apply.
    let report = w.apply(&fewer).unwrap();
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(report.frontends_deleted, 1, "{report:?}");
    no_errors(&w.apply(&fewer).unwrap(), "after a deletion");
    check_exact(w.maps(), &fewer, "after a deletion");
}

#[test]
fn adopting_a_crashed_writers_leftovers_removes_them() {
    let want = desired(&[(A, &["10.0.0.1:80", "10.0.0.2:80"], None)]);
    let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
    w.apply(&want).unwrap();
    let mut maps = w.maps().clone();
    let orphan = backend_value("10.0.0.9:80".parse().unwrap(), Protocol::Tcp);
    maps.update_backends(&[77], &[orphan]).unwrap();
    // A range filled and never published (two runs), a master of no known protocol, a
    // membership of no frontend.
    let a = maps.tables.slots.values().next().copied().unwrap();
    maps.write_slots(&[100, 101, 102, 200], &[a, 77, a, 77])
        .unwrap();
    let mut unknown = fe(B).key();
    unknown.proto = 47;
    maps.update_services(
        &[unknown],
        &[ServiceValue {
            slot_base: 100,
            count: 0,
            frontend_id: 500,
            ..ServiceValue::default()
        }],
    )
    .unwrap();
    maps.update_members(&[MemberKey {
        frontend_id: 99,
        backend_id: 77,
    }])
    .unwrap();
    let mut adopted = Writer::adopt(maps).unwrap();
    no_errors(&adopted.apply(&want).unwrap(), "adopted");
    check_exact(adopted.maps(), &want, "adopted");
    // The cleared elements serve new frontends from the next apply on.
    let more = wide(1, 4000);
    no_errors(&adopted.apply(&more).unwrap(), "the whole table");
    check_exact(adopted.maps(), &more, "the whole table");
}

#[test]
fn a_full_programming_is_one_batch_per_step() {
    let services: Vec<(String, Vec<String>)> = (0..100)
        .map(|i| {
            (
                format!("10.96.1.{i}:80/tcp"),
                (0..3).map(|j| format!("10.1.{i}.{j}:8080")).collect(),
            )
        })
        .collect();
    let want = Desired {
        services: services
            .iter()
            .map(|(f, b)| {
                (
                    fe(f),
                    ServiceSpec {
                        backends: b.iter().map(|b| b.parse().unwrap()).collect(),
                        affinity_timeout: None,
                        kind: FrontendKind::ClusterIP,
                    },
                )
            })
            .collect(),
    };
    let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
    let report = w.apply(&want).unwrap();
    no_errors(&report, "full");
    check_exact(w.maps(), &want, "full");
    // Each new backend written as it got its id, before any slot; then one batch of slots and
    // one of masters: TCP frontends without affinity get no memberships.
    let log = &w.maps().log;
    assert!(
        log[..300]
            .iter()
            .all(|c| (c.op, c.len) == (Op::UpdateBackend, 1))
    );
    // And one write of `lb_tcp_backend_ports` and one of `lb_v4_filter`, before the masters.
    assert_eq!((report.map_calls, w.maps().batches()), (4, 4), "{report:?}");
    assert_eq!(report.map_operations, 300 + 300 + 1 + 1 + 100);
    assert!(w.maps().tables.members.is_empty());
    assert_eq!(
        (report.frontends_written, report.backends_written),
        (100, 300)
    );
}

#[test]
fn a_large_step_is_split_into_calls_and_a_fault_in_a_later_call_is_contained() {
    use super::MAX_BATCH;
    let limits = Limits {
        slots: 1 << 16,
        backends: 1 << 16,
        members: 1 << 16,
        frontends: 4096,
    };
    // 2,000 frontends x 10 backends: 20,000 elements per step, more than one call's worth.
    let want = wide(2000, 10);
    let per_step = 20_000usize.div_ceil(MAX_BATCH);
    let mut w = Writer::adopt(MemMaps::new(limits)).unwrap();
    let report = w.apply(&want).unwrap();
    no_errors(&report, "large");
    check_exact(w.maps(), &want, "large");
    // Slots: split; the port marks and the filter, one call each; masters (2,000) fit one
    // call; no memberships (TCP); the new backends are written one at a time, not in batches.
    assert_eq!(report.map_calls, per_step + 3, "{report:?}");
    // A slot write failing in the second call: only its frontend fails.
    let mut w = Writer::adopt(FaultyMaps::new(
        MemMaps::new(limits),
        [(Op::WriteSlot, MAX_BATCH + 5)],
    ))
    .unwrap();
    let report = w.apply(&want).unwrap();
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    check_consistent(&w.maps().inner.tables, true, "large, fault");
    // The failed frontend's range was cleared: no slot outside the published ranges.
    assert_eq!(w.maps().inner.tables.slots.len(), 1999 * 10);
    assert_eq!(report.frontends_written, 1999);
    w.maps_mut().faults.clear();
    no_errors(&w.apply(&want).unwrap(), "large, repaired");
    check_exact(w.maps(), &want, "large, repaired");
}

/// A master whose publication fails leaves the frontend on its old master and old range,
/// untouched; the fresh range it was to point to is cleared and given back by the next apply,
/// which reuses it.
#[test]
fn a_failed_publish_leaves_the_old_range_live_and_frees_the_new_one() {
    let before = desired(&[(A, &["10.0.0.1:80", "10.0.0.2:80"], None)]);
    let after = desired(&[(A, &["10.0.0.3:80"], None)]);
    let mut w = Writer::adopt(FaultyMaps::new(
        MemMaps::new(LIMITS),
        [(Op::UpdateService, 1)],
    ))
    .unwrap();
    no_errors(&w.apply(&before).unwrap(), "before");
    let old = w.maps().inner.tables.services[&fe(A).key()];
    let old_slots = w.maps().inner.tables.slots.clone();
    assert_eq!((old.slot_base, old.count), (0, 2));

    let report = w.apply(&after).unwrap();
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(
        report.errors[0].reason.contains("injected fault"),
        "{report:?}"
    );
    // The published state is the old one, whole.
    let t = &w.maps().inner.tables;
    assert_eq!(t.services[&fe(A).key()], old);
    assert_eq!(
        t.slots, old_slots,
        "the old range untouched, the new one cleared"
    );
    check_consistent(t, true, "failed publish");
    // The new range (one element, after the old one) is out of the allocator until the next
    // apply: cleared, not yet free.
    assert_eq!(w.cleared, vec![(2, 1)]);
    assert!(w.to_clear.is_empty());
    assert_eq!(w.ranges.used(), 3);

    w.maps_mut().faults.clear();
    no_errors(&w.apply(&after).unwrap(), "repaired");
    check_exact(w.maps(), &after, "repaired");
    let new = w.maps().inner.tables.services[&fe(A).key()];
    assert_eq!((new.slot_base, new.count), (2, 1), "the freed range reused");
    // Now the old range waits for the next apply.
    assert_eq!(w.cleared, vec![(0, 2)]);
    assert_eq!(w.ranges.used(), 3);
    w.apply(&after).unwrap();
    assert_eq!(w.ranges.used(), 1, "no element leaked");
}

/// `count` frontends with `per` backends each, all distinct.
fn wide(count: u32, per: u32) -> Desired {
    Desired {
        services: (0..count)
            .map(|i| {
                (
                    FrontendKey::new(
                        SocketAddr::from(([10, 96, (i >> 8) as u8, i as u8], 80)),
                        Protocol::Tcp,
                    ),
                    ServiceSpec {
                        backends: (0..per)
                            .map(|j| {
                                SocketAddr::from((
                                    [10, 1, (i >> 8) as u8, i as u8],
                                    8000 + j as u16,
                                ))
                            })
                            .collect(),
                        affinity_timeout: None,
                        kind: FrontendKind::ClusterIP,
                    },
                )
            })
            .collect(),
    }
}

#[test]
fn steps_larger_than_a_call_are_written_whole_and_in_step_order() {
    use super::MAX_BATCH;
    use crate::datapath::fake::Call;
    let limits = Limits {
        slots: 1 << 16,
        backends: 1 << 16,
        members: 1 << 16,
        frontends: 4096,
    };
    let call = |op, len| Call { op, len };
    // 2,000 frontends x 10 backends: 20,000 elements in each step but the masters'.
    let want = wide(2000, 10);
    let rest = 20_000 - MAX_BATCH;
    let mut w = Writer::adopt(MemMaps::new(limits)).unwrap();
    no_errors(&w.apply(&want).unwrap(), "full");
    check_exact(w.maps(), &want, "full");
    // Every backend before any slot (each written as it got its id), every slot before any
    // master; no call carries more than MAX_BATCH elements; TCP frontends without affinity
    // get no memberships.
    let (backends, batches) = w.maps().log.split_at(20_000);
    assert!(backends.iter().all(|&c| c == call(Op::UpdateBackend, 1)));
    assert_eq!(
        batches,
        vec![
            call(Op::WriteSlot, MAX_BATCH),
            call(Op::WriteSlot, rest),
            call(Op::WritePorts, 1),
            call(Op::WriteFilter, 1),
            call(Op::UpdateService, 2000),
        ]
    );
    // Deleting everything: masters first, then the filter skips their /16 again, then their
    // ranges are cleared, then backends.
    w.maps_mut().log.clear();
    let report = w.apply(&Desired::default()).unwrap();
    no_errors(&report, "empty");
    assert_eq!(w.maps().tables, MapDump::default());
    assert_eq!(w.programmed(), (0, 0));
    assert_eq!(
        w.maps().log,
        vec![
            call(Op::DeleteService, 2000),
            call(Op::WriteFilter, 1),
            call(Op::WriteSlot, MAX_BATCH),
            call(Op::WriteSlot, rest),
            call(Op::DeleteBackend, MAX_BATCH),
            call(Op::DeleteBackend, rest),
        ]
    );
    assert_eq!(
        (
            report.frontends_deleted,
            report.backends_deleted,
            report.memberships_deleted,
            report.departed.len()
        ),
        (2000, 20_000, 0, 20_000)
    );
    // And again from empty: the ids freed are reused, the same dump results.
    no_errors(&w.apply(&want).unwrap(), "again");
    check_exact(w.maps(), &want, "again");
}

/// The backend id the maps hold for `addr` (of a TCP or UDP frontend).
fn backend_id(maps: &MemMaps, addr: &str, protocol: Protocol) -> u32 {
    let value = backend_value(addr.parse().unwrap(), protocol);
    *maps
        .tables
        .backends
        .iter()
        .find(|(_, v)| **v == value)
        .unwrap_or_else(|| panic!("backend {addr} in the table"))
        .0
}

#[test]
fn tcp_frontends_report_departed_pairs_and_udp_frontends_delete_memberships() {
    let before = desired(&[
        (A, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], None),
        (C, &["10.0.0.1:53", "10.0.0.2:53"], None),
    ]);
    let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
    no_errors(&w.apply(&before).unwrap(), "before");
    let (a, c) = (
        w.frontend_id(&fe(A)).unwrap(),
        w.frontend_id(&fe(C)).unwrap(),
    );
    let tcp = |w: &Writer<MemMaps>, addr| backend_id(w.maps(), addr, Protocol::Tcp);
    let udp = |w: &Writer<MemMaps>, addr| backend_id(w.maps(), addr, Protocol::Udp);
    // Only the UDP frontend has memberships.
    let members: BTreeSet<(u32, u32)> = w
        .maps()
        .tables
        .members
        .iter()
        .map(|m| (m.frontend_id, m.backend_id))
        .collect();
    assert_eq!(
        members,
        BTreeSet::from([(c, udp(&w, "10.0.0.1:53")), (c, udp(&w, "10.0.0.2:53"))])
    );
    let (t1, t2, u1) = (
        tcp(&w, "10.0.0.1:80"),
        tcp(&w, "10.0.0.2:80"),
        udp(&w, "10.0.0.1:53"),
    );

    // A shrinks: its two departed pairs are reported; C's departed backend is a deleted
    // membership (its sweep reads lb_members), not a departed pair.
    let after = desired(&[(A, &["10.0.0.3:80"], None), (C, &["10.0.0.2:53"], None)]);
    let report = w.apply(&after).unwrap();
    no_errors(&report, "shrink");
    check_exact(w.maps(), &after, "shrink");
    assert_eq!(report.departed, vec![(a, t1), (a, t2)]);
    assert_eq!(report.memberships_deleted, 1);
    assert!(!w.maps().tables.members.contains(&MemberKey {
        frontend_id: c,
        backend_id: u1
    }));
    // Nothing changed: nothing departed.
    assert!(w.apply(&after).unwrap().departed.is_empty());

    // A deleted: every backend it had departed.
    let t3 = tcp(&w, "10.0.0.3:80");
    let report = w.apply(&desired(&[(C, &["10.0.0.2:53"], None)])).unwrap();
    no_errors(&report, "delete");
    assert_eq!(report.departed, vec![(a, t3)]);
    assert_eq!(report.memberships_deleted, 0);
}

#[test]
fn a_frontend_gaining_affinity_gets_memberships_before_its_master_and_loses_them_after() {
    use crate::datapath::fake::Call;
    let call = |op, len| Call { op, len };
    let plain = desired(&[(A, &["10.0.0.1:80", "10.0.0.2:80"], None)]);
    let sticky = desired(&[(A, &["10.0.0.1:80", "10.0.0.2:80"], Some(60))]);
    let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
    no_errors(&w.apply(&plain).unwrap(), "plain");
    assert!(w.maps().tables.members.is_empty());

    w.maps_mut().log.clear();
    let report = w.apply(&sticky).unwrap();
    no_errors(&report, "affinity on");
    check_exact(w.maps(), &sticky, "affinity on");
    assert_eq!(
        w.maps().log,
        vec![call(Op::UpdateMember, 2), call(Op::UpdateService, 1)],
        "memberships first, then the master with the affinity flag"
    );
    assert!(report.departed.is_empty());

    w.maps_mut().log.clear();
    let report = w.apply(&plain).unwrap();
    no_errors(&report, "affinity off");
    check_exact(w.maps(), &plain, "affinity off");
    assert_eq!(
        w.maps().log,
        vec![call(Op::UpdateService, 1), call(Op::DeleteMember, 2)],
        "the master without the flag first, then the memberships go"
    );
    // The backends stay in the set: no socket is to be terminated.
    assert!(report.departed.is_empty());
    assert_eq!(report.memberships_deleted, 2);
}

/// The frontends whose spec differs between two desired states.
fn changed_keys(before: &Desired, after: &Desired) -> BTreeSet<FrontendKey> {
    before
        .services
        .keys()
        .chain(after.services.keys())
        .filter(|k| before.services.get(k) != after.services.get(k))
        .copied()
        .collect()
}

#[test]
fn applying_only_the_changed_frontends_reaches_the_same_dump() {
    for (name, before, after) in CASES {
        let (before, after) = (desired(before), desired(after));
        let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
        no_errors(&w.apply(&before).unwrap(), name);
        let changed = changed_keys(&before, &after);
        no_errors(&w.apply_changed(&after, &changed).unwrap(), name);
        check_exact(w.maps(), &after, &format!("{name}, changed only"));
        // The full apply (the resync) finds nothing to do.
        let full = w.apply(&after).unwrap();
        assert!(full.is_noop(), "{name}: resync after the change: {full:?}");
    }
}

#[test]
fn frontends_outside_the_change_are_not_touched() {
    let before = desired(&[(A, &["10.0.0.1:8080"], None), (B, &["10.0.0.2:8080"], None)]);
    // B differs too, but only A is named as changed: B stays as programmed.
    let after = desired(&[(A, &["10.0.0.3:8080"], None), (B, &[], None)]);
    let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
    no_errors(&w.apply(&before).unwrap(), "before");
    let report = w.apply_changed(&after, &BTreeSet::from([fe(A)])).unwrap();
    no_errors(&report, "after");
    let programmed: BTreeMap<FrontendKey, Vec<SocketAddr>> = read_frontends(w.maps())
        .unwrap()
        .into_iter()
        .map(|f| (f.frontend, f.backends))
        .collect();
    assert_eq!(programmed[&fe(A)], vec!["10.0.0.3:8080".parse().unwrap()]);
    assert_eq!(programmed[&fe(B)], vec!["10.0.0.2:8080".parse().unwrap()]);
    assert_eq!(report.frontends_written, 1);
    // A deleted frontend named as changed is deleted; one not named stays.
    let gone = desired(&[(A, &["10.0.0.3:8080"], None)]);
    let report = w.apply_changed(&gone, &BTreeSet::new()).unwrap();
    assert!(report.is_noop(), "{report:?}");
    let report = w.apply_changed(&gone, &BTreeSet::from([fe(B)])).unwrap();
    assert_eq!(report.frontends_deleted, 1);
    check_exact(w.maps(), &gone, "B deleted");
}

mod incremental {
    use proptest::prelude::*;

    use super::*;

    const FRONTENDS: [&str; 4] = [A, B, C, V6];

    /// One desired state over a small universe: each frontend absent or with up to three of
    /// four backends (shared between frontends, so backends are reused and orphaned).
    fn state() -> impl Strategy<Value = Desired> {
        prop::collection::vec(
            prop::option::of((prop::collection::vec(0..4u8, 0..4), any::<bool>())),
            4,
        )
        .prop_map(|specs| {
            let mut d = Desired::default();
            for (f, spec) in FRONTENDS.iter().zip(specs) {
                let Some((backends, affinity)) = spec else {
                    continue;
                };
                let v6 = *f == V6;
                let backends = backends
                    .iter()
                    .map(|b| {
                        if v6 {
                            format!("[fd00::{}]:8080", b + 1)
                        } else {
                            format!("10.0.0.{}:8080", b + 1)
                        }
                        .parse()
                        .unwrap()
                    })
                    .collect();
                d.services.insert(
                    fe(f),
                    ServiceSpec {
                        backends,
                        affinity_timeout: affinity.then_some(60),
                        kind: FrontendKind::ClusterIP,
                    },
                );
            }
            d
        })
    }

    proptest! {
        /// A sequence of changes applied frontend by frontend ends in exactly the maps a full
        /// apply of the last state produces, and the resync's full apply then changes nothing;
        /// also when one element of the sequence's map operations fails on the way.
        #[test]
        fn changes_applied_incrementally_end_in_the_full_apply(
            states in prop::collection::vec(state(), 1..8),
            fault in prop::option::of((0..OPS.len(), 0..40usize)),
        ) {
            let faults: Vec<(Op, usize)> = fault.map(|(op, n)| (OPS[op], n)).into_iter().collect();
            let mut w = Writer::adopt(FaultyMaps::new(MemMaps::new(LIMITS), faults)).unwrap();
            let mut last = Desired::default();
            // Frontends that failed are named again by the next change, as the agent does.
            let mut retry: BTreeSet<FrontendKey> = BTreeSet::new();
            for next in &states {
                let mut changed = changed_keys(&last, next);
                changed.append(&mut retry);
                let report = w.apply_changed(next, &changed).unwrap();
                retry = report.errors.iter().map(|e| e.frontend).collect();
                check_consistent(&w.maps().inner.tables, false, "incremental");
                check_filter_safe(w.maps(), "incremental");
                check_ports_safe(w.maps(), "incremental");
                // No range leaks: every element in use is a frontend's range or waits to be
                // cleared or freed.
                let held: u32 = w
                    .services
                    .values()
                    .filter_map(|p| p.range())
                    .chain(w.to_clear.iter().copied())
                    .chain(w.cleared.iter().copied())
                    .map(|(_, len)| len)
                    .sum();
                prop_assert_eq!(w.ranges.used(), held, "elements of lb_slots in use");
                last = next.clone();
            }
            w.maps_mut().faults.clear();
            let mut full = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
            full.apply(&last).unwrap();
            check_exact(full.maps(), &last, "full");
            let resync = w.apply(&last).unwrap();
            prop_assert!(resync.errors.is_empty(), "{:?}", resync.errors);
            check_exact(w.maps(), &last, "incremental, after the resync");
            if retry.is_empty() && fault.is_none() {
                prop_assert!(resync.is_noop(), "the resync wrote {:?}", resync);
            }
        }
    }
}

#[test]
fn frontend_ids_of_key_ordered_frontends_are_the_programmed_ones() {
    // A full slot table refuses the frontend that does not fit: it is planned but has no id.
    let limits = Limits { slots: 4, ..LIMITS };
    let want = desired(&[
        ("10.96.0.1:80/tcp", &["10.0.0.1:80", "10.0.0.2:80"], None),
        ("10.96.0.2:80/tcp", &["10.0.0.3:80", "10.0.0.4:80"], None),
        ("10.96.0.3:80/tcp", &["10.0.0.5:80"], None),
    ]);
    let mut w = Writer::adopt(MemMaps::new(limits)).unwrap();
    let report = w.apply(&want).unwrap();
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    // Planned frontends in key order, with some that were never applied around them.
    let mut planned: Vec<FrontendKey> = want.services.keys().copied().collect();
    planned.extend(["10.96.0.0:80/tcp", "10.96.0.2:81/tcp", "10.96.0.9:80/udp"].map(fe));
    planned.sort();
    let merged: Vec<(FrontendKey, u32)> = w
        .frontend_ids(planned.iter().map(|key| (key, ())))
        .map(|(key, (), id)| (*key, id))
        .collect();
    let looked_up: Vec<(FrontendKey, u32)> = planned
        .iter()
        .filter_map(|key| Some((*key, w.frontend_id(key)?)))
        .collect();
    assert_eq!(merged, looked_up);
    assert_eq!(merged.len(), 2, "two of the three fit: {merged:?}");
}

/// The writer reads a frontend's backend ids back from its range in `lb_slots` (it keeps no
/// copy): a slot changed behind its back is seen, and the next full apply rewrites the
/// frontend, with the backend reference counts kept right throughout.
#[test]
fn a_slot_changed_behind_the_writers_back_is_rewritten() {
    let (mut w, want) = a_and_b_programmed();
    let master = w.maps().tables.services[&fe(A).key()];
    let b_master = w.maps().tables.services[&fe(B).key()];
    let b_backend = w.maps().tables.slots[&b_master.slot_base];
    // A's second slot now names B's backend.
    w.maps_mut()
        .write_slots(&[master.slot_base + 1], &[b_backend])
        .unwrap();
    let report = w.apply(&want).unwrap();
    no_errors(&report, "repair");
    assert_eq!(report.frontends_written, 1, "A alone: {report:?}");
    check_exact(w.maps(), &want, "repaired");
    // Its backends are still counted right: dropping A removes A's backends alone, and
    // dropping B then leaves no backend.
    let only_b = desired(&[(B, &["10.0.0.3:80"], None)]);
    no_errors(&w.apply(&only_b).unwrap(), "A gone");
    no_errors(&w.apply(&only_b).unwrap(), "A gone, settled");
    check_exact(w.maps(), &only_b, "A gone");
    empty_and_check(&mut w);
}

/// A (two backends) and B (one) programmed, and the desired state that has them.
fn a_and_b_programmed() -> (Writer<MemMaps>, Desired) {
    let want = desired(&[
        (A, &["10.0.0.1:80", "10.0.0.2:80"], None),
        (B, &["10.0.0.3:80"], None),
    ]);
    let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
    no_errors(&w.apply(&want).unwrap(), "first");
    (w, want)
}

/// Deletes everything (a second apply settles what the first left for it) and checks that
/// the maps and the writer's record are empty.
fn empty_and_check(w: &mut Writer<MemMaps>) {
    let none = desired(&[]);
    no_errors(&w.apply(&none).unwrap(), "all gone");
    no_errors(&w.apply(&none).unwrap(), "all gone, settled");
    check_exact(w.maps(), &none, "all gone");
    assert_eq!(w.programmed(), (0, 0));
}

/// The writer reads backend values from `lb_backends` rather than keeping a copy: a backend
/// changed behind its back (here to another frontend's backend) is seen by the next full
/// apply, which gives its frontend a fresh id with the right value and deletes the changed one.
#[test]
fn a_backend_changed_behind_the_writers_back_is_rewritten() {
    let (mut w, want) = a_and_b_programmed();
    let master = w.maps().tables.services[&fe(A).key()];
    let b_master = w.maps().tables.services[&fe(B).key()];
    let changed = w.maps().tables.slots[&(master.slot_base + 1)];
    let b_value = w.maps().tables.backends[&w.maps().tables.slots[&b_master.slot_base]];
    w.maps_mut()
        .update_backends(&[changed], &[b_value])
        .unwrap();
    let report = w.apply(&want).unwrap();
    no_errors(&report, "repair");
    assert_eq!(
        (
            report.frontends_written,
            report.backends_written,
            report.backends_deleted
        ),
        (1, 1, 1),
        "A alone, with a new id for its second backend: {report:?}"
    );
    check_exact(w.maps(), &want, "repaired");
    assert!(!w.maps().tables.backends.contains_key(&changed));
    // The same value does not get the changed id back from the index later.
    let more = desired(&[
        (A, &["10.0.0.1:80", "10.0.0.2:80"], None),
        (B, &["10.0.0.3:80"], None),
        (C, &["10.0.0.2:53", "10.0.0.3:53", "10.0.0.9:53"], None),
    ]);
    no_errors(&w.apply(&more).unwrap(), "more");
    check_exact(w.maps(), &more, "more");
    empty_and_check(&mut w);
}

fn prefix(a: u8, b: u8) -> u16 {
    u16::from_be_bytes([a, b])
}

/// `lb_v4_filter` holds a /16 before the first master there is published, and skips it again
/// only after the last master there is deleted; a change inside held /16s writes no filter.
#[test]
fn a_16_is_held_before_its_first_master_and_skipped_after_its_last_one_goes() {
    const C97: &str = "10.97.0.1:80/tcp";
    let one = |f| (f, &["10.0.0.1:8080"][..], None);
    let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
    no_errors(&w.apply(&desired(&[one(A)])).unwrap(), "A");
    let filter = w.maps().v4_filter.clone().unwrap();
    assert!(!filter.skips(prefix(10, 96)) && filter.skips(prefix(10, 97)));

    // A master in a new /16: the filter first.
    w.maps_mut().log.clear();
    no_errors(&w.apply(&desired(&[one(A), one(C97)])).unwrap(), "A, C97");
    let ops: Vec<Op> = w.maps().log.iter().map(|c| c.op).collect();
    let filter_at = ops.iter().position(|&op| op == Op::WriteFilter);
    let master_at = ops.iter().position(|&op| op == Op::UpdateService);
    assert!(filter_at.is_some() && filter_at < master_at, "{ops:?}");
    assert!(!w.maps().skips(&fe(C97)));

    // Another master in a held /16, and one of two masters of a /16 deleted: no filter write.
    w.maps_mut().log.clear();
    no_errors(
        &w.apply(&desired(&[one(A), one(B), one(C97)])).unwrap(),
        "A, B, C97",
    );
    no_errors(&w.apply(&desired(&[one(B), one(C97)])).unwrap(), "B, C97");
    assert!(!w.maps().log.iter().any(|c| c.op == Op::WriteFilter));
    assert!(!w.maps().skips(&fe(B)));

    // The last master of 10.97/16 deleted: the filter after the master.
    w.maps_mut().log.clear();
    no_errors(&w.apply(&desired(&[one(B)])).unwrap(), "B");
    let ops: Vec<Op> = w.maps().log.iter().map(|c| c.op).collect();
    let deleted_at = ops.iter().position(|&op| op == Op::DeleteService);
    let filter_at = ops.iter().position(|&op| op == Op::WriteFilter);
    assert!(deleted_at.is_some() && deleted_at < filter_at, "{ops:?}");
    assert!(w.maps().skips(&fe(C97)) && !w.maps().skips(&fe(B)));
    check_exact(w.maps(), &desired(&[one(B)]), "B");
}

/// When the filter cannot be written before the masters, a new master in a /16 connects skip
/// is not published (the frontend fails, as any failed write does), while a changed master in
/// a held /16 is; the next apply programs the rest.
#[test]
fn a_failed_filter_write_publishes_no_master_connects_would_skip() {
    const C97: &str = "10.97.0.1:80/tcp";
    let maps = FaultyMaps::new(MemMaps::new(LIMITS), [(Op::WriteFilter, 1)]);
    let mut w = Writer::adopt(maps).unwrap();
    let before = desired(&[(A, &["10.0.0.1:8080"], None)]);
    no_errors(&w.apply(&before).unwrap(), "A");
    let after = desired(&[
        (A, &["10.0.0.2:8080"], None),
        (C97, &["10.0.0.1:8080"], None),
    ]);
    let report = w.apply(&after).unwrap();
    let failed: Vec<(FrontendKey, &str)> = report
        .errors
        .iter()
        .map(|e| (e.frontend, e.reason.as_str()))
        .collect();
    assert_eq!(failed.len(), 1, "{report:?}");
    assert_eq!(failed[0].0, fe(C97));
    assert!(failed[0].1.contains("lb_v4_filter"), "{report:?}");
    let programmed = read_frontends(w.maps()).unwrap();
    assert_eq!(programmed.len(), 1, "no master for C97: {programmed:?}");
    assert_eq!(programmed[0].backends, ["10.0.0.2:8080".parse().unwrap()]);
    check_filter_safe(w.maps(), "after the failure");

    no_errors(&w.apply(&after).unwrap(), "the next apply");
    check_exact(w.maps(), &after, "repaired");
}

/// An agent that adopts maps whose filter is exactly the masters' writes nothing for it; one
/// that finds another filter (a new map, all zero: nothing skipped) writes it whole first.
#[test]
fn an_adopted_filter_is_kept_when_exact_and_written_whole_otherwise() {
    let want = desired(&[
        (A, &["10.0.0.1:8080"], None),
        ("10.97.3.3:53/udp", &["10.0.0.2:53"], None),
    ]);
    let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
    no_errors(&w.apply(&want).unwrap(), "first");

    let mut kept = Writer::adopt(w.maps().clone()).unwrap();
    assert_eq!(kept.apply(&want).unwrap().map_calls, 0);

    let mut new_map = w.maps().clone();
    new_map.v4_filter = None;
    new_map.log.clear();
    let mut whole = Writer::adopt(new_map).unwrap();
    let report = whole.apply(&want).unwrap();
    assert_only_call(whole.maps(), Op::WriteFilter, &report);
    check_exact(whole.maps(), &want, "written whole");
}

/// The port of every TCP backend is marked before the master that reaches it is published (one
/// write of `lb_tcp_backend_ports` per apply that needs a new mark, none otherwise), UDP
/// backends' ports are not, and marks stay when their backends go.
#[test]
fn tcp_backend_ports_are_marked_before_their_masters() {
    let want = desired(&[
        (A, &["10.0.0.1:8080", "10.0.0.2:8443"], None),
        ("10.97.3.3:53/udp", &["10.0.0.3:5353"], None),
    ]);
    let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
    no_errors(&w.apply(&want).unwrap(), "first");
    let ops: Vec<Op> = w.maps().log.iter().map(|c| c.op).collect();
    let ports_at = ops.iter().position(|&op| op == Op::WritePorts).unwrap();
    let masters_at = ops.iter().position(|&op| op == Op::UpdateService).unwrap();
    assert!(ports_at < masters_at, "{ops:?}");
    let port = |p: u16| p.to_be();
    let maps = w.maps();
    assert!(maps.tcp_port_marked(port(8080)) && maps.tcp_port_marked(port(8443)));
    let udp_only = lb_common::tcp_port_bucket(port(5353));
    assert!(
        [8080, 8443]
            .map(|p| lb_common::tcp_port_bucket(port(p)))
            .contains(&udp_only)
            || !maps.tcp_port_marked(port(5353)),
        "a UDP backend's port is not marked"
    );

    // A change on known ports writes no marks; a new port writes them once.
    w.maps_mut().log.clear();
    let moved = desired(&[(A, &["10.0.0.9:8080"], None)]);
    no_errors(&w.apply(&moved).unwrap(), "same port");
    assert!(!w.maps().log.iter().any(|c| c.op == Op::WritePorts));
    assert!(w.maps().tcp_port_marked(port(8443)), "marks stay");
    let new_port = desired(&[(A, &["10.0.0.9:9090"], None)]);
    no_errors(&w.apply(&new_port).unwrap(), "new port");
    assert_eq!(
        w.maps()
            .log
            .iter()
            .filter(|c| c.op == Op::WritePorts)
            .count(),
        1
    );
    assert!(w.maps().tcp_port_marked(port(9090)));
}

const D: &str = "10.96.0.4:80/tcp";

/// When `lb_tcp_backend_ports` cannot be written, a master that needs a new mark is not
/// published (an existing frontend keeps its old backends), the rest are, and the next apply
/// writes the marks and publishes it.
#[test]
fn a_failed_port_marks_write_holds_back_only_the_masters_that_need_it() {
    let before = desired(&[(A, &["10.0.0.1:8080"], None)]);
    let after = desired(&[
        (A, &["10.0.0.1:8080", "10.0.0.2:9090"], None),
        (B, &["10.0.0.3:8080"], None),
        (D, &["10.0.0.4:7070"], None),
        ("10.97.3.3:53/udp", &["10.0.0.5:5353"], None),
    ]);
    let maps = FaultyMaps::new(MemMaps::new(LIMITS), [(Op::WritePorts, 1)]);
    let mut w = Writer::adopt(maps).unwrap();
    no_errors(&w.apply(&before).unwrap(), "before");
    let report = w.apply(&after).unwrap();
    let failed: BTreeSet<FrontendKey> = report.errors.iter().map(|e| e.frontend).collect();
    assert_eq!(failed, BTreeSet::from([fe(A), fe(D)]), "{report:?}");
    assert!(
        report
            .errors
            .iter()
            .all(|e| e.reason.contains("lb_tcp_backend_ports")),
        "{report:?}"
    );
    check_ports_safe(w.maps(), "after the failure");
    let programmed = read_frontends(w.maps()).unwrap();
    let backends_of = |f: &str| {
        programmed
            .iter()
            .find(|p| p.frontend == fe(f))
            .map(|p| p.backends.clone())
    };
    assert_eq!(backends_of(A), Some(vec!["10.0.0.1:8080".parse().unwrap()]));
    assert_eq!(backends_of(B), Some(vec!["10.0.0.3:8080".parse().unwrap()]));
    assert_eq!(backends_of(D), None);
    no_errors(&w.apply(&after).unwrap(), "the next apply");
    check_exact(w.maps(), &after, "repaired");
}

/// Maps an older lbctl programmed hold TCP backends whose ports its programs marked only once a
/// connect went there: an agent that adopts them marks them all with its first apply, even one
/// that changes nothing else.
#[test]
fn adopted_tcp_backends_get_their_ports_marked() {
    let want = desired(&[(A, &["10.0.0.1:8080"], None), (B, &["10.0.0.2:8443"], None)]);
    let mut w = Writer::adopt(MemMaps::new(LIMITS)).unwrap();
    no_errors(&w.apply(&want).unwrap(), "first");
    let mut old = w.maps().clone();
    old.tcp_ports = [0; lb_common::TCP_PORT_BUCKETS];
    old.log.clear();
    let mut adopted = Writer::adopt(old).unwrap();
    let report = adopted.apply(&want).unwrap();
    no_errors(&report, "adopted");
    assert_only_call(adopted.maps(), Op::WritePorts, &report);
    check_exact(adopted.maps(), &want, "adopted");
}
