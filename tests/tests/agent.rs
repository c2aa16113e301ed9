//! `lbctl agent` end to end on the real kernel, from manifest files: edits reprogram the node,
//! a Local service loses its last local endpoint and refuses, and a SIGKILLed agent restarts
//! without a single failed connect.
use std::{fs, net::SocketAddr, time::Duration};

use lbctl::inspect;
use testkit::{
    agent::{AgentProcess, wait_until},
    backends::Backends,
    lifecycle::{Endpoint as Ep, NODE, Node, node_yaml, reached_after_mark, service_yaml},
    probe::{Outcome, Probe},
};

const ECONNREFUSED: i32 = 111;

/// The cluster as `kubectl get -o yaml` would print it: two nodes, one TCP service `svc` on
/// `vip:80` with the given internalTrafficPolicy, one EndpointSlice.
fn cluster_yaml(itp: &str, vip: &str, endpoints: &[Ep]) -> String {
    [
        node_yaml(NODE, "192.0.2.1"),
        node_yaml("node-b", "192.0.2.2"),
        service_yaml("default", "svc", vip, itp, endpoints, &[]),
    ]
    .concat()
}

/// A Cluster service `vip:80` with one local endpoint `b0`, and an agent that has programmed it.
fn one_backend(tag: &str, vip: &str, extra: &[&str]) -> (Node, Backends, AgentProcess) {
    let s = Node::new(tag).unwrap();
    let b = Backends::tcp_same_port(&["b0"]).unwrap();
    let ep = Ep {
        addr: b.addr("b0"),
        node: NODE,
        ready: true,
    };
    s.write_manifest(&cluster_yaml("Cluster", vip, &[ep]))
        .unwrap();
    let agent = s.agent(extra).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || s.programmed(vip).is_some()),
        "{}",
        agent.log()
    );
    (s, b, agent)
}

fn names(addrs: &[SocketAddr]) -> Vec<String> {
    let mut v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

#[test]
fn editing_the_manifests_reprograms_the_node_within_a_second() {
    let s = Node::new("agent-edit").unwrap();
    let b = Backends::tcp_same_port(&["b0", "b1"]).unwrap();
    let vip = "10.96.0.10";
    let ep = |name: &str, node| Ep {
        addr: b.addr(name),
        node,
        ready: true,
    };
    s.write_manifest(&cluster_yaml(
        "Local",
        vip,
        &[ep("b0", NODE), ep("b1", "node-b")],
    ))
    .unwrap();
    let _agent = s.agent(&[]).unwrap();

    assert!(wait_until(Duration::from_secs(10), || s.programmed(vip)
        == Some(names(&[b.addr("b0")]))));
    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{vip}:80"), "5"]).unwrap();
    assert_eq!(
        out,
        vec![Outcome::Reached("b0".into()); 5],
        "ITP Local keeps only this node's endpoint"
    );

    // Move the local endpoint to b1: a client reaches b1 within a second of the write.
    s.write_manifest(&cluster_yaml(
        "Local",
        vip,
        &[ep("b1", NODE), ep("b0", "node-b")],
    ))
    .unwrap();
    let reached_b1 = wait_until(Duration::from_secs(1), || {
        Probe::run(Some(&s.cgroup), &["tcp", &format!("{vip}:80"), "1"]).unwrap()
            == vec![Outcome::Reached("b1".into())]
    });
    assert!(reached_b1, "the edit was not programmed within a second");

    // The last local endpoint goes away (the remote one stays): connects are refused.
    s.write_manifest(&cluster_yaml("Local", vip, &[ep("b0", "node-b")]))
        .unwrap();
    let refused = wait_until(Duration::from_secs(1), || {
        Probe::run(Some(&s.cgroup), &["tcp", &format!("{vip}:80"), "1"]).unwrap()
            == vec![Outcome::Failed(ECONNREFUSED)]
    });
    assert!(
        refused,
        "a Local service without local endpoints must refuse"
    );
}

#[test]
fn a_broken_manifest_keeps_the_last_programmed_state() {
    let vip = "10.96.0.11";
    let (s, b, mut agent) = one_backend("agent-broken", vip, &[]);

    s.write_manifest("apiVersion: v1\nkind: Service\nmetadata: [this is not: valid\n")
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .log()
            .contains("manifests unreadable")),
        "{}",
        agent.log()
    );
    assert!(agent.running());
    assert_eq!(
        s.programmed(vip),
        Some(names(&[b.addr("b0")])),
        "a broken file must not flush the datapath"
    );
    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{vip}:80"), "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into()); 3]);
}

/// SIGKILL the agent while a client connects in a loop, change the cluster while it is down,
/// restart it: no connect fails at any point, and the maps end exactly as desired.
#[test]
fn a_killed_agent_restarts_without_failed_connects_or_stale_entries() {
    let s = Node::new("agent-kill").unwrap();
    let b = Backends::tcp_same_port(&["b0", "b1", "b2"]).unwrap();
    let vip = "10.96.0.12";
    let ep = |name: &str| Ep {
        addr: b.addr(name),
        node: NODE,
        ready: true,
    };
    s.write_manifest(&cluster_yaml("Cluster", vip, &[ep("b0"), ep("b1")]))
        .unwrap();
    let mut agent = s.agent(&[]).unwrap();
    assert!(wait_until(Duration::from_secs(10), || s
        .programmed(vip)
        .is_some_and(|b| b.len() == 2)));

    let mut probe = Probe::spawn(Some(&s.cgroup), &["loop", &format!("{vip}:80")]).unwrap();
    probe.read(50).unwrap();
    agent.kill9();
    // While the agent is down the datapath keeps serving the last state.
    probe.read(100).unwrap();
    s.write_manifest(&cluster_yaml("Cluster", vip, &[ep("b1"), ep("b2")]))
        .unwrap();
    let _agent = s.agent(&[]).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || s.programmed(vip)
            == Some(names(&[b.addr("b1"), b.addr("b2")]))),
        "restarted agent did not converge: {:?}",
        s.programmed(vip)
    );
    let after_mark =
        reached_after_mark(&mut probe, 100).expect("no connect may fail across the agent restart");
    let rest = probe.finish().unwrap();
    assert!(
        rest.iter().all(|o| !matches!(o, Outcome::Failed(_))),
        "{rest:?}"
    );
    assert!(
        after_mark.iter().all(|n| n == "b1" || n == "b2"),
        "{after_mark:?}"
    );

    // No stale entries: exactly one frontend and the two backends it uses.
    let status = inspect::status(s.pins.path()).unwrap();
    let fill: Vec<(String, usize)> = status
        .maps
        .iter()
        .map(|m| (m.map.to_owned(), m.entries))
        .collect();
    assert_eq!(
        fill,
        vec![
            ("lb_services".to_owned(), 1),
            ("lb_v4_masters".to_owned(), 1),
            ("lb_slots".to_owned(), 2),
            ("lb_backends".to_owned(), 2),
            ("lb_affinity".to_owned(), 0),
        ]
    );
}

#[test]
fn sigterm_leaves_the_datapath_programmed() {
    let vip = "10.96.0.13";
    let (s, _b, mut agent) = one_backend("agent-term", vip, &[]);
    assert!(
        agent.terminate(),
        "agent did not exit cleanly on SIGTERM:\n{}",
        agent.log()
    );
    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{vip}:80"), "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into()); 3]);
}

#[test]
fn pins_removed_behind_the_agents_back_are_recreated() {
    let vip = "10.96.0.14";
    let (s, b, agent) = one_backend("agent-pins", vip, &["--resync-seconds", "1"]);

    // Someone removes a link pin: the program detaches; the agent re-attaches it.
    fs::remove_file(s.pins.path().join("links/lb_connect4")).unwrap();
    assert!(wait_until(Duration::from_secs(5), || s
        .pins
        .path()
        .join("links/lb_connect4")
        .exists()));
    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{vip}:80"), "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into()); 3]);

    // Someone removes a map pin: the agent rebuilds the datapath and programs it again.
    fs::remove_file(s.pins.path().join("lb_services")).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || s.programmed(vip)
            == Some(names(&[b.addr("b0")]))),
        "{}",
        agent.log()
    );
    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{vip}:80"), "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into()); 3]);
}
