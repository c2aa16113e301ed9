//! `lbctl agent` end to end on the real kernel, from manifest files: edits reprogram the node,
//! a Local service loses its last local endpoint and refuses, and a SIGKILLed agent restarts
//! without a single failed connect.
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use lbctl::{datapath::FrontendAddr, inspect, plan::Protocol};
use testkit::{
    TempDir,
    agent::{AgentProcess, wait_until},
    backends::Backends,
    cgroup::CgroupGuard,
    pins::PinDirGuard,
    probe::{Outcome, Probe},
};

const NODE: &str = "node-a";
const ECONNREFUSED: i32 = 111;

/// One endpoint of the test service.
struct Ep<'a> {
    addr: SocketAddr,
    node: &'a str,
    ready: bool,
}

/// The cluster as `kubectl get -o yaml` would print it: two nodes, one TCP service on `vip:80`
/// with the given internalTrafficPolicy, one EndpointSlice.
fn cluster_yaml(itp: &str, vip: &str, endpoints: &[Ep]) -> String {
    let port = endpoints.first().map_or(8080, |e| e.addr.port());
    let mut eps = String::new();
    for e in endpoints {
        eps.push_str(&format!(
            "  - addresses: [\"{}\"]\n    nodeName: {}\n    conditions: {{ready: {}, serving: {}, terminating: false}}\n",
            e.addr.ip(),
            e.node,
            e.ready,
            e.ready
        ));
    }
    let endpoints_yaml = if endpoints.is_empty() {
        "  []\n".to_owned()
    } else {
        eps
    };
    format!(
        r#"apiVersion: v1
kind: Node
metadata: {{name: node-a, labels: {{topology.kubernetes.io/zone: z1}}}}
status: {{addresses: [{{type: InternalIP, address: 192.0.2.1}}]}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-b, labels: {{topology.kubernetes.io/zone: z1}}}}
status: {{addresses: [{{type: InternalIP, address: 192.0.2.2}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: default}}
spec:
  clusterIP: {vip}
  clusterIPs: [{vip}]
  internalTrafficPolicy: {itp}
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-abc12
  namespace: default
  labels: {{kubernetes.io/service-name: svc}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
{endpoints_yaml}"#
    )
}

/// Writes a file the way editors do: a new file renamed over the old one.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

struct Setup {
    dir: TempDir,
    pins: PinDirGuard,
    cgroup: CgroupGuard,
}

impl Setup {
    fn new(tag: &str) -> Self {
        let cgroup = CgroupGuard::new(tag).unwrap();
        let pins = PinDirGuard::new(tag);
        let dir = TempDir::new(tag).unwrap();
        Self { dir, pins, cgroup }
    }

    fn manifest(&self) -> PathBuf {
        self.dir.path().join("cluster.yaml")
    }

    fn start_agent(&self) -> AgentProcess {
        self.start_agent_with(&[])
    }

    fn start_agent_with(&self, extra: &[&str]) -> AgentProcess {
        let mut args: Vec<String> = vec![
            "--node".into(),
            NODE.into(),
            "--manifests".into(),
            self.manifest().display().to_string(),
            "--pin-dir".into(),
            self.pins.path().display().to_string(),
            "--cgroup".into(),
            self.cgroup.path().display().to_string(),
            "--coalesce-ms".into(),
            "10".into(),
            "--max-service-entries".into(),
            "4096".into(),
            "--max-backends".into(),
            "1024".into(),
            "--max-frontends".into(),
            "1024".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        AgentProcess::start(&args).unwrap()
    }

    /// A Cluster service `vip:80` with one local endpoint `b0`, and an agent that has
    /// programmed it.
    fn one_backend(tag: &str, vip: &str, extra: &[&str]) -> (Self, Backends, AgentProcess) {
        let s = Setup::new(tag);
        let b = Backends::tcp_same_port(&["b0"]).unwrap();
        let ep = Ep {
            addr: b.addr("b0"),
            node: NODE,
            ready: true,
        };
        write_atomically(&s.manifest(), &cluster_yaml("Cluster", vip, &[ep]));
        let agent = s.start_agent_with(extra);
        assert!(
            wait_until(Duration::from_secs(10), || s.programmed(vip).is_some()),
            "{}",
            agent.log()
        );
        (s, b, agent)
    }

    /// The backends the datapath has for `vip:80/tcp` now (None: not a frontend).
    fn programmed(&self, vip: &str) -> Option<Vec<String>> {
        let target = FrontendAddr::new(format!("{vip}:80").parse().unwrap(), Protocol::Tcp);
        match inspect::lookup(self.pins.path(), target).ok()? {
            inspect::Lookup::PassedThrough { .. } => None,
            inspect::Lookup::Refused { .. } => Some(vec![]),
            inspect::Lookup::Rewritten { frontend } => Some(frontend.backends),
        }
    }
}

fn names(addrs: &[SocketAddr]) -> Vec<String> {
    let mut v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

#[test]
fn editing_the_manifests_reprograms_the_node_within_a_second() {
    let s = Setup::new("agent-edit");
    let b = Backends::tcp_same_port(&["b0", "b1"]).unwrap();
    let vip = "10.96.0.10";
    let ep = |name: &str, node| Ep {
        addr: b.addr(name),
        node,
        ready: true,
    };
    write_atomically(
        &s.manifest(),
        &cluster_yaml("Local", vip, &[ep("b0", NODE), ep("b1", "node-b")]),
    );
    let _agent = s.start_agent();

    assert!(wait_until(Duration::from_secs(10), || s.programmed(vip)
        == Some(names(&[b.addr("b0")]))));
    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{vip}:80"), "5"]).unwrap();
    assert_eq!(
        out,
        vec![Outcome::Reached("b0".into()); 5],
        "ITP Local keeps only this node's endpoint"
    );

    // Move the local endpoint to b1: a client reaches b1 within a second of the write.
    write_atomically(
        &s.manifest(),
        &cluster_yaml("Local", vip, &[ep("b1", NODE), ep("b0", "node-b")]),
    );
    let reached_b1 = wait_until(Duration::from_secs(1), || {
        Probe::run(Some(&s.cgroup), &["tcp", &format!("{vip}:80"), "1"]).unwrap()
            == vec![Outcome::Reached("b1".into())]
    });
    assert!(reached_b1, "the edit was not programmed within a second");

    // The last local endpoint goes away (the remote one stays): connects are refused.
    write_atomically(
        &s.manifest(),
        &cluster_yaml("Local", vip, &[ep("b0", "node-b")]),
    );
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
    let (s, b, mut agent) = Setup::one_backend("agent-broken", vip, &[]);

    write_atomically(
        &s.manifest(),
        "apiVersion: v1\nkind: Service\nmetadata: [this is not: valid\n",
    );
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
    let s = Setup::new("agent-kill");
    let b = Backends::tcp_same_port(&["b0", "b1", "b2"]).unwrap();
    let vip = "10.96.0.12";
    let ep = |name: &str| Ep {
        addr: b.addr(name),
        node: NODE,
        ready: true,
    };
    write_atomically(
        &s.manifest(),
        &cluster_yaml("Cluster", vip, &[ep("b0"), ep("b1")]),
    );
    let mut agent = s.start_agent();
    assert!(wait_until(Duration::from_secs(10), || s
        .programmed(vip)
        .is_some_and(|b| b.len() == 2)));

    let mut probe = Probe::spawn(Some(&s.cgroup), &["loop", &format!("{vip}:80")]).unwrap();
    probe.read(50).unwrap();
    agent.kill9();
    // While the agent is down the datapath keeps serving the last state.
    probe.read(100).unwrap();
    write_atomically(
        &s.manifest(),
        &cluster_yaml("Cluster", vip, &[ep("b1"), ep("b2")]),
    );
    let _agent = s.start_agent();
    assert!(
        wait_until(Duration::from_secs(10), || s.programmed(vip)
            == Some(names(&[b.addr("b1"), b.addr("b2")]))),
        "restarted agent did not converge: {:?}",
        s.programmed(vip)
    );
    probe.send("mark").unwrap();
    let mut after_mark = Vec::new();
    let mut seen = false;
    while after_mark.len() < 100 {
        for o in probe.read(1).unwrap() {
            match o {
                Outcome::Mark => seen = true,
                Outcome::Failed(e) => {
                    panic!("a connect failed (errno {e}) across the agent restart")
                }
                Outcome::Reached(name) if seen => after_mark.push(name),
                Outcome::Reached(_) => {}
            }
        }
    }
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
            ("lb_services".to_owned(), 3),
            ("lb_backends".to_owned(), 2),
            // Every client socket is closed: no reverse-translation entry may be left.
            ("lb_revnat".to_owned(), 0),
            ("lb_affinity".to_owned(), 0),
        ]
    );
}

#[test]
fn sigterm_leaves_the_datapath_programmed() {
    let vip = "10.96.0.13";
    let (s, _b, mut agent) = Setup::one_backend("agent-term", vip, &[]);
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
    let (s, b, _agent) = Setup::one_backend("agent-pins", vip, &["--resync-seconds", "1"]);

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
    assert!(wait_until(Duration::from_secs(5), || s.programmed(vip)
        == Some(names(&[b.addr("b0")]))));
    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{vip}:80"), "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into()); 3]);
}
