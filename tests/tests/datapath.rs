//! The connect-time datapath on the real kernel: real cgroups, real sockets, real maps.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use lbctl::{
    datapath::{Datapath, Desired, Installed},
    plan::Protocol,
};
use testkit::{
    backends::Backends,
    pins::Scratch,
    probe::{Outcome, Probe},
};

const LOCALHOST4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOCALHOST6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
const ECONNREFUSED: i32 = 111;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address literal")
}

fn reached(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for o in outcomes {
        match o {
            Outcome::Reached(name) => *counts.entry(name.clone()).or_default() += 1,
            other => panic!("expected only successful connects, got {other:?} in {outcomes:?}"),
        }
    }
    counts
}

#[test]
fn ipv4_frontend_is_rewritten_to_its_backend() {
    let mut s = Scratch::new("v4").unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0"]).unwrap();
    s.datapath
        .apply(Desired::default().insert(sa("10.96.0.10:80"), Protocol::Tcp, b.addrs()))
        .unwrap();

    let out = Probe::run(Some(&s.cgroup), &["tcp", "10.96.0.10:80", "5"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into()); 5]);
}

#[test]
fn ipv6_frontend_is_rewritten_to_its_backend() {
    let mut s = Scratch::new("v6").unwrap();
    let b = Backends::tcp(LOCALHOST6, &["b6"]).unwrap();
    s.datapath
        .apply(Desired::default().insert(sa("[fd00::10]:80"), Protocol::Tcp, b.addrs()))
        .unwrap();

    let out = Probe::run(Some(&s.cgroup), &["tcp", "[fd00::10]:80", "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b6".into()); 3]);
}

#[test]
fn v4_mapped_destination_on_a_v6_socket_uses_the_ipv4_frontend() {
    let mut s = Scratch::new("mapped").unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0"]).unwrap();
    s.datapath
        .apply(Desired::default().insert(sa("10.96.0.10:80"), Protocol::Tcp, b.addrs()))
        .unwrap();

    // A v6 socket (the probe binds by the destination's family) connecting to ::ffff:10.96.0.10.
    let out = Probe::run(Some(&s.cgroup), &["tcp", "[::ffff:10.96.0.10]:80", "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into()); 3]);
}

#[test]
fn frontend_without_backends_refuses_with_econnrefused() {
    let mut s = Scratch::new("refuse").unwrap();
    let mut desired = Desired::default();
    desired.insert(sa("10.96.0.11:80"), Protocol::Tcp, vec![]);
    desired.insert(sa("[fd00::11]:80"), Protocol::Tcp, vec![]);
    desired.insert(sa("10.96.0.11:53"), Protocol::Udp, vec![]);
    s.datapath.apply(&desired).unwrap();

    for (mode, addr) in [
        ("tcp", "10.96.0.11:80"),
        ("tcp", "[fd00::11]:80"),
        ("udp", "10.96.0.11:53"),
    ] {
        let out = Probe::run(Some(&s.cgroup), &[mode, addr, "2"]).unwrap();
        assert_eq!(out, vec![Outcome::Failed(ECONNREFUSED); 2], "{mode} {addr}");
    }
    let c = s.datapath.counters().unwrap();
    assert_eq!(c.refused, 6, "{c:?}");
}

#[test]
fn destinations_that_are_no_frontend_are_untouched() {
    let mut s = Scratch::new("pass").unwrap();
    let frontends = Backends::tcp(LOCALHOST4, &["direct"]).unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0"]).unwrap();
    // Same address, another port, and another protocol on the same port: all different keys.
    let direct = frontends.addr("direct");
    let mut desired = Desired::default();
    desired.insert(
        SocketAddr::new(direct.ip(), direct.port().wrapping_add(1)),
        Protocol::Tcp,
        b.addrs(),
    );
    desired.insert(direct, Protocol::Udp, b.addrs());
    s.datapath.apply(&desired).unwrap();

    let out = Probe::run(Some(&s.cgroup), &["tcp", &direct.to_string(), "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("direct".into()); 3]);
    assert!(s.datapath.counters().unwrap().passed >= 3);
}

/// The programs skip the services table for a destination whose IPv4 /16 `lb_v4_filter` marks
/// as holding no frontend, and the bit they read is the one the writer sets: a master put into
/// `lb_services` behind the writer's back, in a /16 no frontend is in, is never used (the
/// connect goes to the address itself and is refused there); once the writer programs a
/// frontend in that /16, the same master rewrites connects.
#[test]
fn destinations_in_a_16_without_frontends_skip_the_services_table() {
    use lbctl::{datapath::FrontendKey, plan::Protocol};
    let mut s = Scratch::new("filter").unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0"]).unwrap();
    let a = sa("10.96.0.10:80");
    s.datapath
        .apply(Desired::default().insert(a, Protocol::Tcp, b.addrs()))
        .unwrap();
    // Nothing listens on 127.3.0.1:9: a connect that reaches it is refused by the kernel.
    let hidden = sa("127.3.0.1:9");
    let mut maps = lbctl::datapath::Maps::open(s.pins.path()).unwrap();
    let master = maps
        .services
        .get(&FrontendKey::new(a, Protocol::Tcp).key(), 0)
        .unwrap();
    maps.services
        .insert(FrontendKey::new(hidden, Protocol::Tcp).key(), master, 0)
        .unwrap();
    let filter = maps.v4_filter.as_ref().unwrap().get(&0, 0).unwrap();
    let skipped = |a: u8, b: u8| {
        let (word, bit) = lb_common::v4_filter_slot(u16::from_be_bytes([a, b]));
        filter[word] & bit != 0
    };
    assert!(!skipped(10, 96) && skipped(127, 3) && skipped(10, 97));
    let status = lbctl::inspect::status(s.pins.path()).unwrap();
    assert_eq!(status.v4_filter_held, Some(vec!["10.96.0.0/16".to_owned()]));
    assert_eq!(
        status.hidden_frontends, 1,
        "the master put behind the writer's back"
    );
    assert!(lbctl::inspect::status_text(&status).contains("WARNING: 1 frontends"));

    let out = Probe::run(Some(&s.cgroup), &["tcp", &hidden.to_string(), "2"]).unwrap();
    assert_eq!(
        out,
        vec![Outcome::Failed(ECONNREFUSED); 2],
        "the master is skipped"
    );
    let direct = Probe::run(Some(&s.cgroup), &["tcp", &b.addr("b0").to_string(), "2"]).unwrap();
    assert_eq!(direct, vec![Outcome::Reached("b0".into()); 2]);
    // Left alone at the filter, without a lookup: not counted as `passed`.
    let counters = s.datapath.counters().unwrap();
    assert_eq!(counters.passed, 0, "{counters:?}");

    // A frontend in 127.3/16: the /16 is held, and the master found.
    let mut desired = Desired::default();
    desired.insert(a, Protocol::Tcp, b.addrs());
    desired.insert(sa("127.3.0.2:80"), Protocol::Tcp, b.addrs());
    s.datapath.apply(&desired).unwrap();
    let out = Probe::run(Some(&s.cgroup), &["tcp", &hidden.to_string(), "2"]).unwrap();
    assert_eq!(
        out,
        vec![Outcome::Reached("b0".into()); 2],
        "the master is used"
    );
    let status = lbctl::inspect::status(s.pins.path()).unwrap();
    assert_eq!(
        (status.v4_filter_held, status.hidden_frontends),
        (
            Some(vec!["10.96.0.0/16".to_owned(), "127.3.0.0/16".to_owned()]),
            0
        )
    );
}

#[test]
fn processes_outside_the_cgroup_are_untouched() {
    let mut s = Scratch::new("outside").unwrap();
    let real = Backends::tcp(LOCALHOST4, &["real"]).unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0"]).unwrap();
    // The frontend is a real listener's address: inside the cgroup it leads to b0, outside it
    // stays the listener itself.
    s.datapath
        .apply(Desired::default().insert(real.addr("real"), Protocol::Tcp, b.addrs()))
        .unwrap();

    let inside = Probe::run(
        Some(&s.cgroup),
        &["tcp", &real.addr("real").to_string(), "3"],
    )
    .unwrap();
    assert_eq!(inside, vec![Outcome::Reached("b0".into()); 3]);
    let outside = Probe::run(None, &["tcp", &real.addr("real").to_string(), "3"]).unwrap();
    assert_eq!(outside, vec![Outcome::Reached("real".into()); 3]);
}

#[test]
fn connected_udp_reaches_the_backend() {
    let mut s = Scratch::new("udp").unwrap();
    let b = Backends::udp(LOCALHOST4, &["u0"]).unwrap();
    s.datapath
        .apply(Desired::default().insert(sa("10.96.0.53:53"), Protocol::Udp, b.addrs()))
        .unwrap();

    let out = Probe::run(Some(&s.cgroup), &["udp", "10.96.0.53:53", "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("u0".into()); 3]);
}

#[test]
fn connects_spread_over_all_backends() {
    let mut s = Scratch::new("spread").unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0", "b1", "b2"]).unwrap();
    s.datapath
        .apply(Desired::default().insert(sa("10.96.0.12:80"), Protocol::Tcp, b.addrs()))
        .unwrap();

    let out = Probe::run(Some(&s.cgroup), &["tcp", "10.96.0.12:80", "300"]).unwrap();
    let counts = reached(&out);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (name, n) in &counts {
        assert!(
            *n >= 60,
            "{name} got {n} of 300 connects (< 20%): {counts:?}"
        );
    }
}

/// Shrinks 3 -> 1 and grows 1 -> 3 while a client connects without pause: no connect fails,
/// and none that starts after a change lands on a backend the change removed.
#[test]
fn backends_change_under_a_connect_loop_without_failures() {
    let mut s = Scratch::new("churn").unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0", "b1", "b2"]).unwrap();
    let vip = sa("10.96.0.13:80");
    let set = |names: &[&str]| -> Vec<SocketAddr> { names.iter().map(|n| b.addr(n)).collect() };
    s.datapath
        .apply(Desired::default().insert(vip, Protocol::Tcp, set(&["b0", "b1", "b2"])))
        .unwrap();

    let mut probe = Probe::spawn(Some(&s.cgroup), &["loop", &vip.to_string()]).unwrap();
    let mut phases: Vec<(Vec<&str>, Vec<Outcome>)> = Vec::new();
    for names in [
        vec!["b1"],
        vec!["b0", "b1", "b2"],
        vec!["b2"],
        vec!["b0", "b2"],
    ] {
        probe.read(50).unwrap();
        s.datapath
            .apply(Desired::default().insert(vip, Protocol::Tcp, set(&names)))
            .unwrap();
        probe.send("mark").unwrap();
        // Everything up to the mark may still use the old set; after it, only the new one.
        let mut after = Vec::new();
        let mut seen_mark = false;
        while after.len() < 100 {
            for o in probe.read(1).unwrap() {
                match o {
                    Outcome::Mark => seen_mark = true,
                    Outcome::Failed(e) => {
                        panic!("a connect failed with errno {e} during a change to {names:?}")
                    }
                    Outcome::Reached(_) if seen_mark => after.push(o),
                    Outcome::Reached(_) => {}
                }
            }
        }
        phases.push((names, after));
    }
    let rest = probe.finish().unwrap();
    assert!(
        rest.iter().all(|o| matches!(o, Outcome::Reached(_))),
        "{rest:?}"
    );
    for (names, after) in phases {
        for o in &after {
            let Outcome::Reached(name) = o else {
                unreachable!()
            };
            assert!(
                names.contains(&name.as_str()),
                "reached {name} after it was removed (set {names:?})"
            );
        }
        if names.len() > 1 {
            assert!(
                reached(&after).len() > 1,
                "only one backend of {names:?} used: {after:?}"
            );
        }
    }
}

/// A frontend whose backend set changes 2,000 times (between 1 and 6 of 6 backends, about
/// 7,000 slots written in all, with room for 4,096): every change goes to a fresh range of
/// `lb_slots` and the replaced range is reused from the next apply on, so the ranges stay at the
/// bottom of the array and the table never fills. A client connecting throughout never fails,
/// and connects made after a change reach only the current set.
#[test]
fn a_frontend_changed_many_times_reaches_only_its_current_backends_and_reuses_its_ranges() {
    use lbctl::datapath::FrontendKey;
    let mut s = Scratch::new("ranges").unwrap();
    let names = ["b0", "b1", "b2", "b3", "b4", "b5"];
    let b = Backends::tcp(LOCALHOST4, &names).unwrap();
    let vip = sa("10.96.0.14:80");
    // Change i: a rotating window of 1 to 6 backends.
    let set = |i: usize| -> Vec<&str> {
        let len = 1 + i % names.len();
        (0..len).map(|k| names[(i / 3 + k) % names.len()]).collect()
    };
    let capacity = testkit::pins::test_capacity().service_entries as usize;
    let changes = 2000;
    let written: usize = (0..changes).map(|i| set(i).len()).sum();
    assert!(
        written > capacity,
        "{written} slots would fit without reuse"
    );
    let maps = lbctl::datapath::Maps::open_read_only(s.pins.path()).unwrap();
    let key = FrontendKey::new(vip, Protocol::Tcp).key();
    let mut highest = 0;
    let mut change = |s: &mut Scratch, i: usize| -> Vec<&str> {
        let current = set(i);
        let report = s
            .datapath
            .apply(Desired::default().insert(
                vip,
                Protocol::Tcp,
                current.iter().map(|n| b.addr(n)).collect(),
            ))
            .unwrap();
        assert!(report.errors.is_empty(), "change {i}: {:?}", report.errors);
        let master = maps.services.get(&key, 0).unwrap();
        assert_eq!(usize::from(master.count), current.len());
        highest = highest.max(master.slot_base + u32::from(master.count));
        current
    };
    // The frontend exists before the client starts: a connect before the first apply would
    // leave the node untranslated (and hang on whatever answers 10.96.0.14 upstream).
    change(&mut s, 0);
    let mut probe = Probe::spawn(Some(&s.cgroup), &["loop", &vip.to_string()]).unwrap();
    let mut seen = Vec::new();
    for i in 1..changes {
        let current = change(&mut s, i);
        if i % 100 == 1 {
            seen.extend(probe.read(10).unwrap());
            let out = Probe::run(Some(&s.cgroup), &["tcp", &vip.to_string(), "12"]).unwrap();
            for (name, _) in reached(&out) {
                assert!(
                    current.contains(&name.as_str()),
                    "change {i}: reached {name}, the set is {current:?}"
                );
            }
        }
    }
    // The live range, the one replaced by the last apply (not free yet) and the new one: with
    // first fit over freed ranges, never beyond three ranges of at most 6.
    assert!(highest <= 18, "ranges crept up to element {highest}");
    let slots = maps.slot_entries().unwrap();
    assert_eq!(
        slots.len(),
        set(changes - 1).len(),
        "stray slots: {slots:?}"
    );
    seen.extend(probe.finish().unwrap());
    assert!(seen.len() > 100, "the client barely ran: {}", seen.len());
    // Every connect was to the frontend: none may have found no master.
    let counters = maps.counters().unwrap();
    assert_eq!(counters.passed, 0, "untranslated connects: {counters:?}");
    assert!(
        seen.iter().all(|o| matches!(o, Outcome::Reached(_))),
        "a connect failed while the set changed: {:?}",
        seen.iter()
            .filter(|o| !matches!(o, Outcome::Reached(_)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn apply_writes_only_the_difference_and_deletes_what_is_gone() {
    let mut s = Scratch::new("diff").unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0", "b1"]).unwrap();
    let mut desired = Desired::default();
    desired.insert(sa("10.96.0.20:80"), Protocol::Tcp, b.addrs());
    desired.insert(sa("10.96.0.21:80"), Protocol::Tcp, vec![b.addr("b0")]);
    let first = s.datapath.apply(&desired).unwrap();
    assert_eq!((first.frontends_written, first.backends_written), (2, 2));
    assert!(s.datapath.apply(&desired).unwrap().is_noop());

    desired.services.remove(&lbctl::datapath::FrontendKey::new(
        sa("10.96.0.20:80"),
        Protocol::Tcp,
    ));
    let second = s.datapath.apply(&desired).unwrap();
    assert_eq!(
        (second.frontends_deleted, second.backends_deleted),
        (1, 1),
        "{second:?}"
    );
    assert_eq!(s.datapath.writer().programmed(), (1, 1));

    // The deleted frontend is no service any more: its connects pass through (and, with no route
    // to 10.96.0.20, fail some other way than a refusal); the kept one still works.
    let out = Probe::run(Some(&s.cgroup), &["tcp", "10.96.0.21:80", "2"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into()); 2]);
    assert_eq!(s.datapath.counters().unwrap().refused, 0);
}

/// `lb_backends` is an array: a removed backend's element has its `proto` cleared in the same
/// apply, and nothing else (a program reading it meanwhile never sees a half-cleared address);
/// neither the writer's dump, `lbctl status` nor `lbctl services` show it; the datapath treats
/// the empty element as no backend (the kept frontend still works).
#[test]
fn a_removed_backends_array_element_is_cleared_and_never_shown() {
    use lbctl::{datapath::LbMaps as _, inspect};
    let mut s = Scratch::new("zeroed").unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0", "b1"]).unwrap();
    let (vip, other) = (sa("10.96.0.22:80"), sa("10.96.0.23:80"));
    let mut desired = Desired::default();
    desired.insert(vip, Protocol::Tcp, b.addrs());
    desired.insert(other, Protocol::Tcp, vec![b.addr("b0")]);
    s.datapath.apply(&desired).unwrap();
    let maps = lbctl::datapath::Maps::open_read_only(s.pins.path()).unwrap();
    let id_of = |addr: SocketAddr| -> u32 {
        maps.backend_entries()
            .unwrap()
            .into_iter()
            .find(|(_, v)| lbctl::datapath::desired::backend_addr(v) == addr)
            .map(|(id, _)| id)
            .unwrap_or_else(|| panic!("{addr} in lb_backends"))
    };
    let removed = id_of(b.addr("b1"));
    let before = maps.backends.get(&removed, 0).unwrap();
    assert_ne!(before.proto, 0);

    desired.insert(vip, Protocol::Tcp, vec![b.addr("b0")]);
    let report = s.datapath.apply(&desired).unwrap();
    assert_eq!(report.backends_deleted, 1, "{report:?}");
    assert_eq!(
        maps.backends.get(&removed, 0).unwrap(),
        lb_common::Backend { proto: 0, ..before },
        "the removed backend's element has proto 0 and its address and port unchanged"
    );
    let dump = maps.dump().unwrap();
    assert_eq!(dump.backends.len(), 1);
    assert!(!dump.backends.contains_key(&removed));
    let status = inspect::status(s.pins.path()).unwrap();
    let fill = status
        .maps
        .iter()
        .find(|m| m.map == lb_common::BACKENDS_MAP)
        .unwrap();
    assert_eq!(fill.entries, 1, "status counts live backends only");
    let shown: Vec<String> = inspect::services(s.pins.path())
        .unwrap()
        .into_iter()
        .flat_map(|f| f.backends)
        .collect();
    assert_eq!(shown, vec![b.addr("b0").to_string(); 2]);
    let out = Probe::run(Some(&s.cgroup), &["tcp", &vip.to_string(), "4"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into()); 4]);
}

#[test]
fn a_restarted_agent_adopts_the_pinned_datapath() {
    let mut s = Scratch::new("adopt").unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0", "b1"]).unwrap();
    let mut desired = Desired::default();
    desired.insert(sa("10.96.0.30:80"), Protocol::Tcp, b.addrs());
    desired.insert(sa("10.96.0.31:80"), Protocol::Tcp, vec![]);
    s.datapath.apply(&desired).unwrap();
    let fe = lbctl::datapath::FrontendKey::new(sa("10.96.0.30:80"), Protocol::Tcp);
    let id = s.datapath.writer().frontend_id(&fe);

    // A new process would do exactly this: install finds the pinned links and adopts.
    let mut again = Datapath::install(&s.config()).unwrap();
    assert_eq!(again.installed(), Installed::Adopted);
    assert_eq!(
        again.writer().frontend_id(&fe),
        id,
        "frontend ids are reused"
    );
    assert!(
        again.apply(&desired).unwrap().is_noop(),
        "adopted state equals what was written"
    );
    drop(std::mem::replace(&mut s.datapath, again));

    let out = Probe::run(Some(&s.cgroup), &["tcp", "10.96.0.30:80", "20"]).unwrap();
    assert_eq!(reached(&out).values().sum::<usize>(), 20);
    let out = Probe::run(Some(&s.cgroup), &["tcp", "10.96.0.31:80", "1"]).unwrap();
    assert_eq!(out, vec![Outcome::Failed(ECONNREFUSED)]);
}

#[test]
fn uninstall_detaches_the_programs() {
    let mut s = Scratch::new("uninstall").unwrap();
    let real = Backends::tcp(LOCALHOST4, &["real"]).unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0"]).unwrap();
    let target = real.addr("real").to_string();
    s.datapath
        .apply(Desired::default().insert(real.addr("real"), Protocol::Tcp, b.addrs()))
        .unwrap();
    assert_eq!(
        Probe::run(Some(&s.cgroup), &["tcp", &target, "1"]).unwrap(),
        vec![Outcome::Reached("b0".into())]
    );

    lbctl::datapath::uninstall(s.pins.path()).unwrap();
    assert!(
        !s.pins.path().exists(),
        "uninstall removes the pin directory"
    );
    // Nothing holds the links any more: the programs are detached, the address is itself again.
    assert_eq!(
        Probe::run(Some(&s.cgroup), &["tcp", &target, "1"]).unwrap(),
        vec![Outcome::Reached("real".into())]
    );
}

#[test]
fn pinned_maps_carry_btf_field_names() {
    let mut s = Scratch::new("btf").unwrap();
    s.datapath
        .apply(Desired::default().insert(
            sa("10.96.0.40:80"),
            Protocol::Tcp,
            vec![sa("127.0.0.1:8080")],
        ))
        .unwrap();
    let path = s.pins.path().join(lb_common::SERVICES_MAP);
    let text = testkit::bpftool([
        "map".as_ref(),
        "dump".as_ref(),
        "pinned".as_ref(),
        path.as_os_str(),
    ])
    .unwrap();
    for field in [
        "address",
        "port",
        "proto",
        "slot_base",
        "count",
        "frontend_id",
        "affinity_timeout",
    ] {
        assert!(
            text.contains(&format!("\"{field}\"")),
            "bpftool output lacks field {field}:\n{text}"
        );
    }
    // lb_backends and lb_slots, arrays user space can map (BPF_F_MMAPABLE, 0x400: the writer
    // maps both read-write); lb_backends' elements (the empty ones too) print with their
    // fields, lb_slots' are backend ids.
    for map in [lb_common::BACKENDS_MAP, lb_common::SLOTS_MAP] {
        let path = s.pins.path().join(map);
        let show = testkit::bpftool([
            "map".as_ref(),
            "show".as_ref(),
            "pinned".as_ref(),
            path.as_os_str(),
        ])
        .unwrap();
        assert!(
            show.contains("array") && show.contains("flags 0x400"),
            "{map}: {show}"
        );
    }
    let path = s.pins.path().join(lb_common::BACKENDS_MAP);
    let mut args = vec![
        "map".as_ref(),
        "lookup".as_ref(),
        "pinned".as_ref(),
        path.as_os_str(),
    ];
    args.extend(["key", "1", "0", "0", "0"].map(std::ffi::OsStr::new));
    let text = testkit::bpftool(args).unwrap();
    for field in ["address", "port", "proto", "flags"] {
        assert!(
            text.contains(&format!("\"{field}\"")),
            "bpftool output of lb_backends lacks field {field}:\n{text}"
        );
    }
}

/// The attach point is verified and recorded: `lbctl status` shows the cgroup's path and id
/// (its directory's inode on cgroup2) and the kernel object, read from the pins alone; the
/// agent's metrics show the same.
#[test]
fn status_and_metrics_show_the_verified_attach_point() {
    use std::os::unix::fs::MetadataExt;
    use testkit::lifecycle::{Node, free_port, http_get};

    let node = Node::new("attach-status").unwrap();
    let b = Backends::tcp_same_port(&["b0"]).unwrap();
    node.write_manifest(&testkit::lifecycle::one_service_yaml(
        "10.96.2.10",
        &b.addrs(),
    ))
    .unwrap();
    let port = free_port().unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], port));
    let agent = node
        .agent(&["--metrics-addr", &metrics.to_string()])
        .unwrap();
    assert!(
        testkit::agent::wait_until(std::time::Duration::from_secs(10), || node
            .programmed("10.96.2.10")
            .is_some()),
        "{}",
        agent.log()
    );
    let id = std::fs::metadata(node.cgroup.path()).unwrap().ino();
    let sha = lbctl::datapath::Object::embedded()
        .unwrap()
        .sha256()
        .to_owned();

    let status = lbctl::inspect::status(node.pins.path()).unwrap();
    let recorded = status
        .datapath
        .as_ref()
        .expect("the attach point is recorded");
    assert_eq!(recorded.attach_point.path, node.cgroup.path());
    assert_eq!(recorded.attach_point.cgroup_id, id);
    assert!(!recorded.attach_point.is_root());
    assert_eq!(recorded.object_sha256, sha);
    let text = lbctl::inspect::status_text(&status);
    assert!(
        text.contains(&format!(
            "attach point: cgroup {} (id {id})",
            node.cgroup.path().display()
        )),
        "{text}"
    );

    let body = http_get(metrics, "/metrics").unwrap();
    let line = format!(
        "lbctl_datapath_info{{cgroup=\"{}\",cgroup_id=\"{id}\",object_sha256=\"{sha}\"}} 1",
        node.cgroup.path().display()
    );
    assert!(body.contains(&line), "{line} not in:\n{body}");
}

/// `--cgroup` must be a cgroup v2 directory: anything else is refused, naming it.
#[test]
fn a_directory_that_is_no_cgroup_is_refused() {
    let s = Scratch::new("attach-notcg").unwrap();
    let dir = testkit::TempDir::new("attach-notcg").unwrap();
    let config = lbctl::datapath::DatapathConfig {
        cgroup: dir.path().to_path_buf(),
        ..s.config()
    };
    let err = Datapath::install(&config)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(&dir.path().display().to_string()) && err.contains("not a cgroup v2"),
        "{err}"
    );
}

/// Runs `sh -c SCRIPT` (with `$LBCTL` set to the lbctl binary) until it exits, at most 20 s;
/// returns whether it succeeded and its stderr.
fn run_script(script: &str) -> (bool, String) {
    use std::{process::Stdio, time::Duration};
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("LBCTL", testkit::probe::sibling_binary("lbctl"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    let exited = testkit::agent::wait_until(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait");
    (
        exited && out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An agent in a private cgroup namespace whose only cgroup2 mount is its own (as in a pod
/// without the host's /sys/fs/cgroup) refuses to start, says what to mount, and attaches
/// nothing: it must never serve only itself by accident.
#[test]
fn an_agent_in_a_private_cgroup_namespace_refuses_its_own_cgroup() {
    let cgroup = testkit::cgroup::CgroupGuard::new("attach-ns").unwrap();
    let pins = testkit::pins::PinDirGuard::new("attach-ns");
    let dir = testkit::TempDir::new("attach-ns").unwrap();
    let manifest = dir.path().join("cluster.yaml");
    std::fs::write(&manifest, "").unwrap();
    let root = lbctl::datapath::system::cgroup2_root().unwrap();
    for cgroup_flag in ["", &format!("--cgroup {}", root.display())] {
        // Into the scratch cgroup, then a new cgroup namespace rooted there; in a private mount
        // namespace the host's cgroup2 is unmounted and the namespace's own mounted instead.
        let script = format!(
            "echo $$ > {procs} && exec unshare --cgroup --mount --propagation private sh -c \
             'umount -l {root} && mount -t cgroup2 cgroup2 {root} && exec \"$LBCTL\" agent --node n --manifests {manifest} \
             --pin-dir {pins} {cgroup_flag}'",
            procs = cgroup.path().join("cgroup.procs").display(),
            root = root.display(),
            manifest = manifest.display(),
            pins = pins.path().display(),
        );
        let (ok, stderr) = run_script(&script);
        assert!(
            !ok,
            "the agent started in its own cgroup namespace: {stderr}"
        );
        assert!(
            stderr.contains("refusing to attach")
                && stderr.contains("own cgroup")
                && stderr.contains("hostPath volume of the host's /sys/fs/cgroup"),
            "{stderr}"
        );
        assert!(
            !pins.path().exists(),
            "nothing may be pinned: {}",
            pins.path().display()
        );
    }
}

/// No bpffs at /sys/fs/bpf and no CAP_SYS_ADMIN to mount one (a container without the host's
/// bpffs): an immediate error that says what to mount on the host.
#[test]
fn missing_bpffs_without_cap_sys_admin_is_a_clear_error() {
    let cgroup = testkit::cgroup::CgroupGuard::new("bpffs-missing").unwrap();
    let dir = testkit::TempDir::new("bpffs-missing").unwrap();
    let manifest = dir.path().join("cluster.yaml");
    std::fs::write(&manifest, "").unwrap();
    // A private mount namespace where /sys/fs/bpf is a tmpfs, and an agent without SYS_ADMIN.
    let script = format!(
        "exec unshare --mount --propagation private sh -c \
         'mount -t tmpfs tmpfs /sys/fs/bpf && exec setpriv --bounding-set -sys_admin --inh-caps -sys_admin \
         \"$LBCTL\" agent --node n --manifests {manifest} --pin-dir /sys/fs/bpf/lbctl --cgroup {cgroup}'",
        manifest = manifest.display(),
        cgroup = cgroup.path().display(),
    );
    let (ok, stderr) = run_script(&script);
    assert!(!ok, "the agent started without bpffs: {stderr}");
    assert!(
        stderr.contains("bpffs is not mounted at /sys/fs/bpf")
            && stderr.contains("mount -t bpf bpffs /sys/fs/bpf")
            && stderr.contains("hostPath"),
        "{stderr}"
    );
}

/// Pinned links stay on the cgroup they were attached to: an install that names another
/// cgroup adopts them where they are, and the record (what `lbctl status` shows) keeps saying
/// where that is.
#[test]
fn the_record_keeps_the_cgroup_the_links_are_attached_to() {
    let s = Scratch::new("attach-moved").unwrap();
    let other = testkit::cgroup::CgroupGuard::new("attach-moved-other").unwrap();
    let config = lbctl::datapath::DatapathConfig {
        cgroup: other.path().to_path_buf(),
        ..s.config()
    };
    let again = Datapath::install(&config).unwrap();
    assert_eq!(again.installed(), Installed::Adopted);
    let recorded = lbctl::datapath::state::read(s.pins.path())
        .unwrap()
        .expect("recorded");
    assert_eq!(recorded.attach_point.path, s.cgroup.path());
}

/// What `lb_v4_masters` must say of `lb_services`: every master it caches is the one the hash
/// map holds for that frontend, and (`complete`) every element some IPv4 master belongs in
/// caches one of them. Returns the cached key words.
fn check_v4_masters(pins: &std::path::Path, complete: bool) -> BTreeMap<u64, u32> {
    use lbctl::datapath::{LbMaps as _, v4masters::word_of};
    let maps = lbctl::datapath::Maps::open_read_only(pins).unwrap();
    let masters: BTreeMap<u64, lb_common::ServiceValue> = maps
        .dump()
        .unwrap()
        .services
        .iter()
        .filter_map(|(k, v)| word_of(k).map(|w| (w, *v)))
        .collect();
    let cached = maps.cached_v4_masters().unwrap();
    for (word, master) in &cached {
        assert_eq!(
            masters.get(word),
            Some(master),
            "lb_v4_masters caches {word:#x} with {master:?}; lb_services holds another master or none"
        );
    }
    let elements: std::collections::BTreeSet<u32> = masters
        .keys()
        .map(|w| lb_common::v4_master_index(*w))
        .collect();
    if complete {
        assert_eq!(
            cached.len(),
            elements.len(),
            "every element an IPv4 master belongs in caches one"
        );
    }
    cached.iter().map(|(w, m)| (*w, m.frontend_id)).collect()
}

/// `lb_v4_masters`, the direct-mapped cache of the IPv4 masters the programs read before
/// `lb_services`, agrees with it through applies that add, change and delete frontends (with
/// pairs of frontends that share an element: one is cached, the other served from the hash
/// map alone, and both reach their own backends). A cache gone stale behind the agent's back
/// (what an older agent, which does not keep it, would leave) is used by the programs until an
/// agent starts on the maps and brings it back in step before anything else.
#[test]
fn the_v4_master_cache_agrees_with_the_services_table() {
    use lb_common::{IPPROTO_TCP, v4_master_index, v4_master_word};
    let mut s = Scratch::new("v4cache").unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0", "b1", "b2"]).unwrap();
    let names = ["b0", "b1", "b2"];
    let word = |vip: SocketAddr| {
        let IpAddr::V4(v4) = vip.ip() else {
            unreachable!()
        };
        v4_master_word(
            u32::from_ne_bytes(v4.octets()),
            vip.port().to_be(),
            IPPROTO_TCP,
        )
    };
    // 600 frontends in 10.97.0.0/16, and for 20 of them a frontend in 10.98.0.0/16 with the
    // same element (found by address and port).
    let plain: Vec<SocketAddr> = (0..600u32)
        .map(|i| SocketAddr::new(Ipv4Addr::new(10, 97, (i >> 8) as u8, i as u8).into(), 80))
        .collect();
    let twins: Vec<SocketAddr> = plain[..20]
        .iter()
        .enumerate()
        .map(|(i, vip)| {
            let index = v4_master_index(word(*vip));
            // About 65,536 candidates to try, on average.
            (0..=u8::MAX)
                .flat_map(|c| {
                    (1..=u16::MAX).map(move |port| {
                        SocketAddr::new(Ipv4Addr::new(10, 98, i as u8, c).into(), port)
                    })
                })
                .find(|twin| v4_master_index(word(*twin)) == index)
                .expect("a frontend that shares the element")
        })
        .collect();
    let mut desired = Desired::default();
    for (i, vip) in plain.iter().chain(&twins).enumerate() {
        desired.insert(*vip, Protocol::Tcp, vec![b.addr(names[i % 3])]);
    }
    desired.insert(sa("[fd00::40]:80"), Protocol::Tcp, b.addrs());
    s.datapath.apply(&desired).unwrap();
    // Every element some master belongs in caches one (a few of the 600 share one too).
    let cached = check_v4_masters(s.pins.path(), true);
    for (i, (vip, twin)) in plain.iter().zip(&twins).enumerate() {
        assert!(
            cached.contains_key(&word(*vip)) != cached.contains_key(&word(*twin)),
            "exactly one of {vip} and {twin} is cached"
        );
        for (j, addr) in [(i, vip), (600 + i, twin)] {
            let out = Probe::run(Some(&s.cgroup), &["tcp", &addr.to_string(), "1"]).unwrap();
            assert_eq!(out, vec![Outcome::Reached(names[j % 3].into())], "{addr}");
        }
    }

    // Change a third (new masters: new ranges, another backend), delete a third (some twins of
    // each pair among them), keep a third.
    let mut desired = Desired::default();
    for (i, vip) in plain.iter().chain(&twins).enumerate() {
        match i % 3 {
            0 => {}
            1 => {
                desired.insert(*vip, Protocol::Tcp, vec![b.addr(names[(i + 2) % 3])]);
            }
            _ => {
                desired.insert(*vip, Protocol::Tcp, vec![b.addr(names[i % 3])]);
            }
        }
    }
    desired.insert(sa("[fd00::40]:80"), Protocol::Tcp, b.addrs());
    s.datapath.apply(&desired).unwrap();
    check_v4_masters(s.pins.path(), false);
    for (i, vip) in plain.iter().chain(&twins).enumerate() {
        if i % 3 == 1 && i % 10 == 1 {
            let out = Probe::run(Some(&s.cgroup), &["tcp", &vip.to_string(), "1"]).unwrap();
            assert_eq!(
                out,
                vec![Outcome::Reached(names[(i + 2) % 3].into())],
                "{vip}"
            );
        }
    }

    // An element made stale behind the agent's back: a kept frontend's element holds another
    // frontend's master, which the programs take.
    let (victim, donor) = (plain[2], plain[4]);
    let (victim_reaches, donor_reaches) = (names[2], names[(4 + 2) % 3]);
    assert_ne!(victim_reaches, donor_reaches);
    {
        let mut maps = lbctl::datapath::Maps::open(s.pins.path()).unwrap();
        let donor_master = maps
            .services
            .get(&lb_key(donor), 0)
            .expect("the donor's master");
        let index = v4_master_index(word(victim));
        let array = maps.v4_masters.as_mut().expect("lb_v4_masters is pinned");
        let mut entry = array.get(&index, 0).unwrap();
        assert_eq!(entry.word & lb_common::v4_master::KEY_MASK, word(victim));
        entry.master = donor_master;
        array.set(index, entry, 0).unwrap();
    }
    let out = Probe::run(Some(&s.cgroup), &["tcp", &victim.to_string(), "1"]).unwrap();
    assert_eq!(
        out,
        vec![Outcome::Reached(donor_reaches.into())],
        "the programs read the cache"
    );
    let again = Datapath::install(&s.config()).unwrap();
    assert_eq!(again.installed(), Installed::Adopted);
    drop(std::mem::replace(&mut s.datapath, again));
    check_v4_masters(s.pins.path(), true);
    let out = Probe::run(Some(&s.cgroup), &["tcp", &victim.to_string(), "1"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached(victim_reaches.into())]);
}

/// The `lb_services` key of a TCP frontend.
fn lb_key(vip: SocketAddr) -> lb_common::ServiceKey {
    let IpAddr::V4(v4) = vip.ip() else {
        unreachable!()
    };
    lb_common::ServiceKey {
        address: lb_common::v4_mapped(v4.octets()),
        port: vip.port().to_be(),
        proto: lb_common::IPPROTO_TCP,
        scope: lb_common::SCOPE_ANY,
    }
}
