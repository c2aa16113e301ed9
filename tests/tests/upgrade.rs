//! Upgrades on the real kernel: an agent with another kernel object swaps the programs on the
//! pinned links (BPF_LINK_UPDATE) and keeps the maps; changed capacities and another map layout
//! are migrated to new maps. A client connects in a loop throughout: no connect may fail.
use std::{collections::BTreeSet, time::Duration};

use lbctl::datapath::{
    Datapath, Installed, Maps, Object,
    state::{self, State},
};
use testkit::{
    agent::{AgentProcess, wait_until},
    backends::Backends,
    lifecycle::{
        Node, one_service_yaml, reached, reached_after_mark, variant_b_object, wait_for_log,
    },
    pins::Scratch,
    probe::Probe,
};

const WAIT: Duration = Duration::from_secs(15);

fn distinct(names: &[String]) -> BTreeSet<String> {
    names.iter().cloned().collect()
}

/// The kernel id of a pinned map.
fn map_id(node: &Node, map: &str) -> u32 {
    aya::maps::MapInfo::from_pin(node.pins.path().join(map))
        .expect("pinned map")
        .id()
}

/// Stops a client loop: every connect it made reached a backend.
fn all_reached(mut probe: Probe) {
    let rest = probe.finish().unwrap();
    assert!(
        rest.iter()
            .all(|o| matches!(o, testkit::probe::Outcome::Reached(_))),
        "{rest:?}"
    );
}

fn recorded(node: &Node) -> State {
    state::read(node.pins.path())
        .expect("reading lb_state")
        .expect("the agent records its state")
}

/// A node whose agent (production object) serves `vip:80` with two backends, and a client
/// connecting to it in a loop (100 connects read, none failed).
struct Serving {
    node: Node,
    /// Keep it bound: the servers stop when it drops.
    backends: Backends,
    agent: AgentProcess,
    probe: Probe,
}

fn serving(tag: &str, vip: &str) -> Serving {
    let node = Node::new(tag).unwrap();
    let backends = Backends::tcp_same_port(&["b0", "b1"]).unwrap();
    node.write_manifest(&one_service_yaml(vip, &backends.addrs()))
        .unwrap();
    let agent = node.agent(&[]).unwrap();
    assert!(
        wait_until(WAIT, || node.programmed(vip).is_some_and(|v| v.len() == 2)),
        "{}",
        agent.log()
    );
    let mut probe = Probe::spawn(Some(&node.cgroup), &["loop", &format!("{vip}:80")]).unwrap();
    reached(&mut probe, 100).unwrap();
    Serving {
        node,
        backends,
        agent,
        probe,
    }
}

/// Object A (the production build) spreads connects over both backends; object B (the test
/// variant) sends every connect to slot 1. Switching A -> B -> A under a connect loop swaps the
/// programs on the same links, keeps the maps, and never fails a connect.
#[test]
fn another_object_replaces_the_programs_on_the_pinned_links_without_a_failed_connect() {
    let vip = "10.96.1.10";
    let Serving {
        node,
        mut agent,
        mut probe,
        backends: _backends,
    } = serving("upgrade-object", vip);
    let a_sha = Object::embedded().unwrap().sha256().to_owned();
    assert_eq!(recorded(&node).object_sha256, a_sha);
    let a_ids = node.program_ids();
    let links_before: Vec<Option<u32>> = node.status().links.iter().map(|l| l.link_id).collect();
    let services_map = node.status();
    let map_ids = (map_id(&node, "lb_services"), map_id(&node, "lb_backends"));

    let before = reached(&mut probe, 200).unwrap();
    assert_eq!(distinct(&before).len(), 2, "object A spreads: {before:?}");

    // Object B.
    assert!(agent.terminate(), "{}", agent.log());
    let variant = variant_b_object();
    let b_sha = Object::from_file(&variant).unwrap().sha256().to_owned();
    assert_ne!(a_sha, b_sha);
    let mut agent_b = node
        .agent(&["--object", &variant.display().to_string()])
        .unwrap();
    wait_for_log(&mut agent_b, "programs replaced on the pinned links", WAIT).unwrap();
    assert!(wait_until(WAIT, || recorded(&node).object_sha256 == b_sha));
    let after = reached_after_mark(&mut probe, 200).unwrap();
    assert_eq!(
        distinct(&after).len(),
        1,
        "object B sends every connect to slot 1: {after:?}"
    );
    let b_ids = node.program_ids();
    for (a, b) in a_ids.iter().zip(&b_ids) {
        assert_ne!(
            a, b,
            "every link runs a new program: {a_ids:?} -> {b_ids:?}"
        );
    }
    let status = node.status();
    assert_eq!(
        status.links.iter().map(|l| l.link_id).collect::<Vec<_>>(),
        links_before,
        "the same links, updated in place"
    );
    assert_eq!(status.frontends, services_map.frontends, "maps kept");
    assert_eq!(
        (map_id(&node, "lb_services"), map_id(&node, "lb_backends")),
        map_ids,
        "the same maps"
    );
    assert_eq!(node.programmed(vip).map(|v| v.len()), Some(2));

    // And back to A (a rollback is an upgrade too).
    assert!(agent_b.terminate(), "{}", agent_b.log());
    let mut agent_a = node.agent(&[]).unwrap();
    wait_for_log(&mut agent_a, "programs replaced on the pinned links", WAIT).unwrap();
    assert!(wait_until(WAIT, || recorded(&node).object_sha256 == a_sha));
    let back = reached_after_mark(&mut probe, 200).unwrap();
    assert_eq!(distinct(&back).len(), 2, "object A again: {back:?}");
    assert!(
        node.program_ids().iter().zip(&b_ids).all(|(x, y)| x != y),
        "A's programs are loaded anew"
    );

    // Restarting with the same object adopts: no program changes.
    let ids = node.program_ids();
    assert!(agent_a.terminate(), "{}", agent_a.log());
    let mut again = node.agent(&[]).unwrap();
    wait_for_log(&mut again, "Adopted", WAIT).unwrap();
    assert_eq!(node.program_ids(), ids);
    let rest = reached_after_mark(&mut probe, 50).unwrap();
    assert_eq!(rest.len(), 50);
}

/// New `--max-*` capacities: new maps are staged, filled from the agent's first desired state,
/// swapped in under the programs, and take the old maps' pin names. No connect fails.
#[test]
fn changed_capacities_migrate_to_new_maps_without_a_failed_connect() {
    let vip = "10.96.1.11";
    let Serving {
        node,
        mut agent,
        mut probe,
        backends: _backends,
    } = serving("upgrade-capacity", vip);
    assert_eq!(node.capacity("lb_backends"), 1024);
    let ids = node.program_ids();
    let old_map = map_id(&node, "lb_backends");
    assert!(agent.terminate(), "{}", agent.log());
    let mut bigger = node
        .agent(&["--max-backends", "2048", "--max-service-entries", "8192"])
        .unwrap();
    wait_for_log(&mut bigger, "migration complete", WAIT).unwrap();
    let after = reached_after_mark(&mut probe, 200).unwrap();
    assert_eq!(distinct(&after).len(), 2, "{after:?}");

    assert_eq!(node.capacity("lb_backends"), 2048);
    assert_eq!(node.capacity("lb_slots"), 8192);
    assert_ne!(map_id(&node, "lb_backends"), old_map, "a new map");
    let state = recorded(&node);
    assert_eq!(
        (state.capacity.backends, state.capacity.service_entries),
        (2048, 8192)
    );
    let new_ids = node.program_ids();
    assert!(
        ids.iter().zip(&new_ids).all(|(a, b)| a != b),
        "programs bound to the new maps: {ids:?} -> {new_ids:?}"
    );
    assert!(
        !node.pins.path().join("staging").exists(),
        "the staging directory is gone"
    );
    assert_eq!(node.programmed(vip).map(|v| v.len()), Some(2));
    all_reached(probe);
}

/// Maps of an older layout version are migrated the same way (the pinned version is set back by
/// hand: an older lbctl's maps). No connect fails; the new maps carry this lbctl's version.
#[test]
fn maps_of_an_older_layout_are_migrated_without_a_failed_connect() {
    let Serving {
        node,
        mut agent,
        mut probe,
        backends: _backends,
    } = serving("upgrade-layout", "10.96.1.12");
    assert!(agent.terminate(), "{}", agent.log());

    let mut maps = Maps::open(node.pins.path()).unwrap();
    maps.meta
        .set(
            lb_common::meta::LAYOUT_VERSION,
            lb_common::LAYOUT_VERSION - 1,
            0,
        )
        .unwrap();
    drop(maps);
    let mut agent = node.agent(&[]).unwrap();
    wait_for_log(&mut agent, "migration complete", WAIT).unwrap();
    assert!(agent.log().contains("layout version"), "{}", agent.log());
    let after = reached_after_mark(&mut probe, 200).unwrap();
    assert_eq!(distinct(&after).len(), 2, "{after:?}");
    let maps = Maps::open(node.pins.path()).unwrap();
    assert_eq!(
        maps.meta.get(&lb_common::meta::LAYOUT_VERSION, 0).unwrap(),
        lb_common::LAYOUT_VERSION
    );
}

/// An lbctl whose programs kept TCP translations in socket storage but marked no backend ports
/// left TCP sockets whose `getpeername` must still show the service. An upgraded agent that
/// finds no `lb_tcp_backend_ports` beside the pinned `lb_sock` creates it with every port
/// marked: its programs look for a TCP translation only on a marked port.
#[test]
fn backend_ports_created_beside_kept_sockets_start_all_marked() {
    let vip = "10.96.1.14";
    let Serving {
        node,
        mut agent,
        probe,
        backends: _backends,
    } = serving("upgrade-ports", vip);
    let service = format!("{vip}:80");
    // Asks for its peer once connected: its translation is kept in its storage.
    let mut held = Probe::spawn(Some(&node.cgroup), &["hold", "tcp", &service]).unwrap();
    assert_eq!(
        held.read_lines(1).unwrap(),
        [format!("connected {service}")]
    );

    all_reached(probe);
    // What such an lbctl pinned: the same maps without the ports.
    assert!(agent.terminate(), "{}", agent.log());
    let ports = node.pins.path().join(lb_common::TCP_PORTS_MAP);
    std::fs::remove_file(&ports).unwrap();
    let variant = variant_b_object().display().to_string();
    let mut upgraded = node.agent(&["--object", &variant]).unwrap();
    wait_for_log(&mut upgraded, "every port marked", WAIT).unwrap();
    wait_for_log(&mut upgraded, "programs replaced on the pinned links", WAIT).unwrap();

    held.send("peer").unwrap();
    assert_eq!(
        held.read_lines(1).unwrap(),
        [format!("peer {service}")],
        "the kept socket's peer is still the service"
    );
    let marks: aya::maps::Array<_, [u8; 1024]> = aya::maps::Array::try_from(aya::maps::Map::Array(
        aya::maps::MapData::from_pin(&ports).unwrap(),
    ))
    .unwrap();
    let marked = marks.get(&0, 0).unwrap();
    assert!(
        marked.iter().all(|b| *b == 1),
        "every bucket marked: {} of 1024",
        marked.iter().filter(|b| **b == 1).count()
    );
    held.finish_raw().unwrap();
}

/// The element of the pinned `lb_tcp_backend_ports`.
fn port_marks(node: &Node) -> aya::maps::Array<aya::maps::MapData, [u8; 1024]> {
    let path = node.pins.path().join(lb_common::TCP_PORTS_MAP);
    aya::maps::Array::try_from(aya::maps::Map::Array(
        aya::maps::MapData::from_pin(&path).unwrap(),
    ))
    .unwrap()
}

/// The programs of an lbctl before 2026-12-04 marked a backend's port in
/// `lb_tcp_backend_ports` only when a TCP connect was sent to it; this one's mark none (the
/// writer marks every TCP backend's port before a master reaches it). An upgraded agent that
/// adopts maps with a TCP backend whose port no connect marked marks it: a new connection's
/// `getpeername` shows the service.
#[test]
fn an_upgrade_marks_the_ports_of_the_tcp_backends_it_adopts() {
    let vip = "10.96.1.15";
    let Serving {
        node,
        mut agent,
        probe,
        backends,
    } = serving("upgrade-marks", vip);
    let service = format!("{vip}:80");
    all_reached(probe);
    assert!(agent.terminate(), "{}", agent.log());
    // What such an lbctl left before any connect: no mark.
    let mut marks = port_marks(&node);
    marks.set(0, [0; 1024], 0).unwrap();
    let variant = variant_b_object().display().to_string();
    let mut upgraded = node.agent(&["--object", &variant]).unwrap();
    wait_for_log(&mut upgraded, "programs replaced on the pinned links", WAIT).unwrap();

    let marked = marks.get(&0, 0).unwrap();
    for addr in backends.addrs() {
        assert_eq!(
            marked[lb_common::tcp_port_bucket(addr.port().to_be())],
            1,
            "the port of backend {addr} is marked"
        );
    }
    let mut held = Probe::spawn(Some(&node.cgroup), &["hold", "tcp", &service]).unwrap();
    assert_eq!(
        held.read_lines(1).unwrap(),
        [format!("connected {service}")]
    );
    held.send("peer").unwrap();
    assert_eq!(
        held.read_lines(1).unwrap(),
        [format!("peer {service}")],
        "a new connection's peer is the service"
    );
    held.finish_raw().unwrap();
    drop(upgraded);
}

/// Pins what an lbctl before socket-local TCP state left: the maps `lb_revnat` and
/// `lb_peer_ports`, and a link pinned as `links/lb_sock_release` (here a second pin of the live
/// `lb_getpeername4` link: the pin, not the program, is what retiring removes).
fn pin_retired(node: &Node) {
    let pins = node.pins.path();
    for (map, kind, key, value, entries) in [
        ("lb_revnat", "lru_hash", "8", "48", "16"),
        ("lb_peer_ports", "array", "4", "4", "65536"),
    ] {
        let path = pins.join(map).display().to_string();
        let name = map.trim_start_matches("lb_");
        testkit::bpftool([
            "map", "create", &path, "type", kind, "key", key, "value", value, "entries", entries,
            "name", name,
        ])
        .unwrap();
    }
    let link = node
        .status()
        .links
        .iter()
        .find(|l| l.program == "lb_getpeername4")
        .and_then(|l| l.link_id)
        .expect("the getpeername link");
    let retired_link = pins.join("links/lb_sock_release").display().to_string();
    testkit::bpftool(["link", "pin", "id", &link.to_string(), &retired_link]).unwrap();
}

/// An agent upgraded from an lbctl that kept TCP reverse state in `lb_revnat` (and released it
/// with a `sock_release` program) retires what only that one used: the `lb_sock_release` link
/// and the two maps are unpinned once the new programs serve, connects never fail, and a TCP
/// socket still reports the service as its peer. `lbctl uninstall` removes such leftovers too.
#[test]
fn what_an_older_lbctl_pinned_and_this_one_no_longer_uses_is_retired() {
    let vip = "10.96.1.13";
    let Serving {
        node,
        mut agent,
        mut probe,
        backends: _backends,
    } = serving("upgrade-retire", vip);
    assert!(agent.terminate(), "{}", agent.log());
    pin_retired(&node);
    let pins = node.pins.path();
    let retired = [
        pins.join("lb_revnat"),
        pins.join("lb_peer_ports"),
        pins.join("links/lb_sock_release"),
    ];
    assert!(retired.iter().all(|p| p.exists()));

    let mut agent = node.agent(&[]).unwrap();
    wait_for_log(&mut agent, "retired what an earlier lbctl", WAIT).unwrap();
    for path in &retired {
        assert!(!path.exists(), "{} is still pinned", path.display());
    }
    let after = reached_after_mark(&mut probe, 200).unwrap();
    assert_eq!(distinct(&after).len(), 2, "{after:?}");
    let peers = Probe::spawn(
        Some(&node.cgroup),
        &["peer", "tcp", &format!("{vip}:80"), "3"],
    )
    .unwrap()
    .read_lines(3)
    .unwrap();
    let service: std::net::SocketAddr = format!("{vip}:80").parse().unwrap();
    for line in &peers {
        let reply = testkit::sockets::Reply::parse(line).unwrap();
        assert_eq!(
            reply.from,
            Some(service),
            "getpeername shows the service: {peers:?}"
        );
    }
    all_reached(probe);

    // Leftovers again, then an uninstall: nothing may stay pinned.
    assert!(agent.terminate(), "{}", agent.log());
    pin_retired(&node);
    lbctl::datapath::uninstall(pins).unwrap();
    assert!(!pins.exists(), "uninstall leaves no pin behind");
}

/// A migration interrupted before its first apply leaves staged maps; `uninstall` removes them
/// with everything else, and a new install starts over cleanly.
#[test]
fn uninstall_removes_staged_maps_and_the_state_record() {
    let s = Scratch::new("upgrade-staged").unwrap();
    let mut config = s.config();
    config.capacity.backends *= 2;
    let staged = Datapath::install(&config).unwrap();
    assert_eq!(staged.installed(), Installed::Migrating);
    let staging = s.pins.path().join("staging");
    assert!(staging.join("lb_backends").exists());
    drop(staged);
    // A new install discards the staged maps and stages afresh.
    let again = Datapath::install(&config).unwrap();
    assert_eq!(again.installed(), Installed::Migrating);
    drop(again);
    assert!(s.pins.path().join(state::STATE_MAP).exists());

    lbctl::datapath::uninstall(s.pins.path()).unwrap();
    assert!(
        !s.pins.path().exists(),
        "uninstall leaves no pin behind (state record, staged maps)"
    );
}
