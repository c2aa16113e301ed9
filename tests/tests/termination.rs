//! Socket termination on the real kernel (issue 13): when a backend leaves a frontend's set, the
//! connected sockets lbctl translated to it fail at once, and nothing else is touched: not the
//! sockets of the remaining backend, not an unconnected UDP socket, not a socket connected
//! directly to the removed address. Through a real `lbctl agent --manifests`; the removed
//! backend's servers keep answering throughout, so only termination can make a socket fail.
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use testkit::{
    agent::{AgentProcess, wait_until},
    dns::{Dnsmasq, free_port_on},
    lifecycle::{NODE, Node, free_port, http_get, node_yaml},
    netns::NetnsGuard,
    probe::Probe,
};

/// UDP: the peer was disconnected by the abort, so `send` has no destination.
const EDESTADDRREQ: i32 = 89;
/// The error an aborted socket reports once (`recv`, `SO_ERROR`, or a TCP `write`).
const ECONNABORTED: i32 = 103;

const A: &str = "127.0.0.2";
const B: &str = "127.0.0.3";

/// A Service `svc` on `vip` with a UDP port 53 and a TCP port 80, both to `port` on the given
/// backend addresses, all on this node.
fn cluster(vip: &str, port: u16, backends: &[&str]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|ip| {
            format!(
                "  - addresses: [\"{ip}\"]\n    nodeName: {NODE}\n    conditions: {{ready: true, serving: true, terminating: false}}\n"
            )
        })
        .collect();
    format!(
        r#"{node}---
apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: default}}
spec:
  clusterIP: {vip}
  clusterIPs: [{vip}]
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: {port}}}
  - {{name: http, port: 80, protocol: TCP, targetPort: {port}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-abc12
  namespace: default
  labels: {{kubernetes.io/service-name: svc}}
addressType: IPv4
ports: [{{name: dns, port: {port}, protocol: UDP}}, {{name: http, port: {port}, protocol: TCP}}]
endpoints:
{endpoints}"#,
        node = node_yaml(NODE, "192.0.2.1"),
    )
}

/// The named servers `a` (on [`A`]) and `b` (on [`B`]), UDP and TCP (the TCP ones keep each
/// connection open), on `port`; started with `prefix` (e.g. inside a network namespace).
struct Servers {
    _udp: Probe,
    _tcp: Probe,
}

impl Servers {
    fn start(prefix: &[&str], port: u16) -> Self {
        let (a, b) = (format!("{A}:{port}"), format!("{B}:{port}"));
        let mut udp = Probe::spawn_via(prefix, None, &["serve", "udp", "a", &a, "b", &b]).unwrap();
        let mut tcp = Probe::spawn_via(prefix, None, &["serve-hold", "a", &a, "b", &b]).unwrap();
        assert_eq!(udp.read_lines(1).unwrap(), ["listening"]);
        assert_eq!(tcp.read_lines(1).unwrap(), ["listening"]);
        Self {
            _udp: udp,
            _tcp: tcp,
        }
    }
}

/// One `lb-probe hold` client: a connected socket held open.
struct Client {
    probe: Probe,
    /// The backend it reached at first.
    backend: String,
}

impl Client {
    fn connect(prefix: &[&str], node: &Node, proto: &str, target: &str) -> Self {
        Self::connect_with(prefix, node, proto, target, false)
    }

    /// `quiet`: the client never asks for its peer (`getpeername`), so a TCP client's
    /// translation stays in its element of `lb_tcp_recent` (no keeping pass is due in these
    /// tests).
    fn connect_with(prefix: &[&str], node: &Node, proto: &str, target: &str, quiet: bool) -> Self {
        let mut args = vec!["hold", proto, target];
        if quiet {
            args.push("quiet");
        }
        let mut probe = Probe::spawn_via(prefix, Some(&node.cgroup), &args).unwrap();
        let connected = probe.read_lines(1).unwrap();
        assert!(connected[0].starts_with("connected"), "{connected:?}");
        let backend = match Self::exchange(&mut probe)
            .split_whitespace()
            .collect::<Vec<_>>()[..]
        {
            ["ok", name, ..] => name.to_owned(),
            ref other => panic!("{proto} {target}: first exchange {other:?}"),
        };
        Self { probe, backend }
    }

    fn exchange(probe: &mut Probe) -> String {
        probe.send("1").unwrap();
        probe.read_lines(1).unwrap().remove(0)
    }

    /// One send and receive: `ok NAME PEER`, or `err send|recv ERRNO`.
    fn once(&mut self) -> String {
        Self::exchange(&mut self.probe)
    }

    fn recv(&mut self) -> String {
        self.probe.send("recv").unwrap();
        self.probe.read_lines(1).unwrap().remove(0)
    }
}

/// Connects clients until both backends hold at least `each` of them.
fn spread(prefix: &[&str], node: &Node, proto: &str, target: &str, each: usize) -> Vec<Client> {
    spread_with(prefix, node, proto, target, each, false)
}

/// As [`spread`], with clients that never ask for their peer (`quiet`).
fn spread_with(
    prefix: &[&str],
    node: &Node,
    proto: &str,
    target: &str,
    each: usize,
    quiet: bool,
) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..64 {
        let on = |name: &str| {
            clients
                .iter()
                .filter(|c: &&Client| c.backend == name)
                .count()
        };
        if on("a") >= each && on("b") >= each {
            return clients;
        }
        clients.push(Client::connect_with(prefix, node, proto, target, quiet));
    }
    panic!("64 connects through {target} did not spread over both backends");
}

/// Writes the cluster with both backends and starts an agent (`extra` flags, `env`) that has
/// programmed them.
fn agent_serving_both(
    node: &Node,
    vip: &str,
    port: u16,
    extra: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> AgentProcess {
    node.write_manifest(&cluster(vip, port, &[A, B])).unwrap();
    let agent = node.agent_with_env(extra, env).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || node
            .programmed(vip)
            .is_some_and(|b| b.len() == 2)),
        "{}",
        agent.log()
    );
    agent
}

/// Removes backend `a` and waits until the maps show it gone: the moment from which the
/// sockets connected to it must fail within a second.
fn remove_a(node: &Node, vip: &str, port: u16, agent: &AgentProcess) -> Instant {
    node.write_manifest(&cluster(vip, port, &[B])).unwrap();
    let only_b = vec![format!("{B}:{port}")];
    assert!(
        wait_until(Duration::from_secs(10), || node.programmed(vip).as_ref()
            == Some(&only_b)),
        "the removal was not programmed:\n{}",
        agent.log()
    );
    Instant::now()
}

/// Exchanges on `client` until one fails (within a second of `since`); the failure.
fn fails_within_a_second(client: &mut Client, since: Instant, agent: &AgentProcess) -> String {
    loop {
        let reply = client.once();
        if reply.starts_with("err ") {
            return reply;
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "a socket of the removed backend still works a second after the removal: {reply}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Exchanges on a UDP socket of the removed backend until one fails (within a second of
/// `since`), and checks what a terminated socket shows: it is disconnected (a send fails with
/// EDESTADDRREQ) and reports ECONNABORTED once. The termination can land between the send and
/// the receive of one exchange: the receive then reports the abort first, and the next send
/// finds the socket disconnected.
fn assert_udp_terminated(client: &mut Client, since: Instant, agent: &AgentProcess) {
    let first = fails_within_a_second(client, since, agent);
    if first == format!("err recv {ECONNABORTED}") {
        assert_eq!(
            client.once(),
            format!("err send {EDESTADDRREQ}"),
            "a terminated UDP socket is disconnected"
        );
    } else {
        assert_eq!(
            first,
            format!("err send {EDESTADDRREQ}"),
            "a terminated UDP socket is disconnected"
        );
        assert_eq!(
            client.recv(),
            format!("err recv {ECONNABORTED}"),
            "and reports ECONNABORTED once"
        );
    }
}

fn assert_answers(client: &mut Client, name: &str, what: &str) {
    let reply = client.once();
    assert!(
        reply == format!("ok {name}") || reply.starts_with(&format!("ok {name} ")),
        "{what}: expected an answer from {name}, got {reply:?}"
    );
}

/// How many `lb_members` entries the TCP and the UDP frontend of `vip` (ports 80 and 53)
/// have, read from the pinned maps.
fn memberships(node: &Node, vip: &str) -> (usize, usize) {
    use lbctl::{
        datapath::{Maps, read_frontends},
        plan::{FrontendKey, Protocol},
    };
    let maps = Maps::open_read_only(node.pins.path()).unwrap();
    let frontends = read_frontends(&maps).unwrap();
    let keys: Vec<_> = maps.members.keys().map(Result::unwrap).collect();
    let count = |port: u16, protocol| {
        let key = FrontendKey::new(format!("{vip}:{port}").parse().unwrap(), protocol);
        let id = frontends
            .iter()
            .find(|f| f.frontend == key)
            .unwrap_or_else(|| panic!("{key} is programmed"))
            .frontend_id;
        keys.iter().filter(|k| k.frontend_id == id).count()
    };
    (count(80, Protocol::Tcp), count(53, Protocol::Udp))
}

fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let body = http_get(addr, "/metrics").ok()?;
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn connected_udp_sockets_of_a_removed_backend_fail_and_nothing_else_does() {
    let node = Node::new("term-udp").unwrap();
    let port = free_port().unwrap();
    let vip = "10.96.13.1";
    let _servers = Servers::start(&[], port);
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let agent = agent_serving_both(
        &node,
        vip,
        port,
        &["--metrics-addr", &metrics.to_string()],
        &[],
    );
    let service = format!("{vip}:53");
    let mapped = format!("[::ffff:{vip}]:53");

    // Connected sockets through the service, spread over both backends; AF_INET6 sockets to
    // the IPv4-mapped service address too; one socket connected to a's address directly; one
    // unconnected socket that has sent to the service.
    let mut clients = spread(&[], &node, "udp", &service, 3);
    let mut clients6 = spread(&[], &node, "udp", &mapped, 1);
    let mut direct = Client::connect(&[], &node, "udp", &format!("{A}:{port}"));
    assert_eq!(direct.backend, "a");
    let mut unconnected = Probe::spawn(Some(&node.cgroup), &["dgram", &service]).unwrap();
    unconnected.send("8").unwrap();
    let before: Vec<String> = unconnected.read_lines(8).unwrap();
    assert!(before.iter().all(|l| l.starts_with("ok ")), "{before:?}");
    // Every service socket reports the service as its peer (reverse translation).
    for c in clients.iter_mut() {
        let reply = c.once();
        assert!(reply.ends_with(&format!(" {service}")), "{reply}");
    }

    let removed = remove_a(&node, vip, port, &agent);
    let mut terminated = 0;
    for c in clients.iter_mut().chain(clients6.iter_mut()) {
        if c.backend == "a" {
            assert_udp_terminated(c, removed, &agent);
            terminated += 1;
        }
    }
    for c in clients.iter_mut().chain(clients6.iter_mut()) {
        if c.backend == "b" {
            assert_answers(c, "b", "a socket of the remaining backend");
        }
    }
    assert_answers(
        &mut direct,
        "a",
        "a socket connected directly to the removed address",
    );
    for _ in 0..4 {
        let mut fresh = Client::connect(&[], &node, "udp", &service);
        assert_eq!(
            fresh.backend, "b",
            "a new socket reaches the remaining backend"
        );
        assert_answers(&mut fresh, "b", "a new socket");
    }
    unconnected.send("8").unwrap();
    let after = unconnected.read_lines(8).unwrap();
    assert!(
        after.iter().all(|l| *l == format!("ok b {service}")),
        "the unconnected socket keeps working and reaches only the remaining backend: {after:?}"
    );

    // Counted in the datapath and in the metrics.
    assert!(
        wait_until(Duration::from_secs(5), || node
            .status()
            .counters
            .terminated_udp
            == terminated),
        "datapath counter: {:?}",
        node.status().counters
    );
    assert_eq!(node.status().counters.terminated_tcp, 0);
    assert!(
        wait_until(Duration::from_secs(5), || metric(
            metrics,
            "lbctl_sockets_terminated_total{protocol=\"udp\"}"
        ) == Some(terminated)),
        "metrics:\n{}",
        http_get(metrics, "/metrics").unwrap_or_default()
    );
    assert_eq!(
        metric(metrics, "lbctl_socket_termination_available"),
        Some(1)
    );
}

#[test]
fn tcp_connections_are_terminated_only_under_the_flag() {
    let node = Node::new("term-tcp").unwrap();
    let port = free_port().unwrap();
    let vip = "10.96.13.2";
    let _servers = Servers::start(&[], port);
    let service_tcp = format!("{vip}:80");
    let service_udp = format!("{vip}:53");

    // Default (UDP only): the TCP connections to the removed backend drain; the sweep did run,
    // as the UDP socket to it shows.
    {
        let mut agent = agent_serving_both(&node, vip, port, &[], &[]);
        let mut tcp = spread(&[], &node, "tcp", &service_tcp, 1);
        let mut udp = spread(&[], &node, "udp", &service_udp, 1);
        let removed = remove_a(&node, vip, port, &agent);
        for c in udp.iter_mut().filter(|c| c.backend == "a") {
            fails_within_a_second(c, removed, &agent);
        }
        for c in tcp.iter_mut() {
            let name = c.backend.clone();
            assert_answers(
                c,
                &name,
                "without --terminate-sockets udp-tcp a TCP connection drains",
            );
        }
        assert_eq!(node.status().counters.terminated_tcp, 0);
        assert!(agent.terminate());
    }

    // --terminate-sockets udp-tcp: established connections to the removed backend abort,
    // although a TCP frontend keeps no memberships (its sweep is told the departed pairs).
    let agent = agent_serving_both(&node, vip, port, &["--terminate-sockets", "udp-tcp"], &[]);
    assert_eq!(
        memberships(&node, vip),
        (0, 2),
        "memberships for the UDP frontend only"
    );
    let mut tcp = spread(&[], &node, "tcp", &service_tcp, 2);
    let mut tcp6 = spread(&[], &node, "tcp", &format!("[::ffff:{vip}]:80"), 1);
    // Clients that never ask for their peer: judged from their elements of lb_tcp_recent.
    let mut quiet = spread_with(&[], &node, "tcp", &service_tcp, 1, true);
    let mut direct = Client::connect(&[], &node, "tcp", &format!("{A}:{port}"));
    let removed = remove_a(&node, vip, port, &agent);
    let mut terminated = 0;
    for c in tcp
        .iter_mut()
        .chain(tcp6.iter_mut())
        .chain(quiet.iter_mut())
    {
        if c.backend == "a" {
            let failure = fails_within_a_second(c, removed, &agent);
            assert!(
                failure == format!("err send {ECONNABORTED}")
                    || failure == format!("err recv {ECONNABORTED}"),
                "an aborted TCP connection reports ECONNABORTED: {failure}"
            );
            terminated += 1;
        } else {
            assert_answers(c, "b", "a connection to the remaining backend");
        }
    }
    assert_answers(
        &mut direct,
        "a",
        "a connection made directly to the removed address",
    );
    let mut fresh = Client::connect(&[], &node, "tcp", &service_tcp);
    assert_eq!(fresh.backend, "b");
    assert!(
        wait_until(Duration::from_secs(5), || node
            .status()
            .counters
            .terminated_tcp
            == terminated),
        "{:?}",
        node.status().counters
    );

    // The TCP port leaves the Service: its frontend is deleted, so every connection through it
    // departed, those to the remaining backend too (the frontend never had a membership).
    let without_tcp = cluster(vip, port, &[B]).replace(
        &format!("  - {{name: http, port: 80, protocol: TCP, targetPort: {port}}}\n"),
        "",
    );
    assert!(!without_tcp.contains("protocol: TCP, targetPort"));
    node.write_manifest(&without_tcp).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || node.programmed(vip).is_none()),
        "the TCP frontend was not deleted:\n{}",
        agent.log()
    );
    let deleted = Instant::now();
    let on_b = tcp
        .iter_mut()
        .chain(tcp6.iter_mut())
        .chain(quiet.iter_mut())
        .filter(|c| c.backend == "b")
        .chain(std::iter::once(&mut fresh));
    let mut more = 0;
    for c in on_b {
        let failure = fails_within_a_second(c, deleted, &agent);
        assert!(failure.ends_with(&format!(" {ECONNABORTED}")), "{failure}");
        more += 1;
    }
    assert_answers(
        &mut direct,
        "a",
        "a direct connection after the frontend's deletion",
    );
    assert!(
        wait_until(Duration::from_secs(5), || node
            .status()
            .counters
            .terminated_tcp
            == terminated + more),
        "{:?}",
        node.status().counters
    );
}

/// A pod's sockets live in the pod's network namespace, which the agent enters only when told
/// where the namespace handles are (`--terminate-in-netns-dir`, here `ip netns`'s /run/netns).
#[test]
fn sockets_in_a_pod_network_namespace_are_terminated_when_the_agent_covers_it() {
    let node = Node::new("term-netns").unwrap();
    let netns = NetnsGuard::new("term-pod").unwrap();
    let prefix = netns.exec_prefix();
    let port = free_port().unwrap();
    let vip = "10.96.13.3";
    // The backends live in the pod's namespace (its loopback), as do the clients.
    let _servers = Servers::start(&prefix, port);
    let agent = agent_serving_both(
        &node,
        vip,
        port,
        &["--terminate-in-netns-dir", "/run/netns"],
        &[],
    );
    let service = format!("{vip}:53");
    let mut clients = spread(&prefix, &node, "udp", &service, 2);
    let mut direct = Client::connect(&prefix, &node, "udp", &format!("{A}:{port}"));

    let removed = remove_a(&node, vip, port, &agent);
    for c in clients.iter_mut() {
        if c.backend == "a" {
            assert_udp_terminated(c, removed, &agent);
        } else {
            assert_answers(c, "b", "a pod socket of the remaining backend");
        }
    }
    assert_answers(
        &mut direct,
        "a",
        "a pod socket connected directly to the removed address",
    );
    let fresh = Client::connect(&prefix, &node, "udp", &service);
    assert_eq!(fresh.backend, "b");
}

/// A real DNS server per backend (dnsmasq, answering `svc.test` with an address of its own) and
/// a resolver that keeps one connected UDP socket and reopens it after an error, as Go's
/// resolver or nginx do: once backend `a` is removed its socket fails, and every later answer
/// comes from `b`, while `a` itself still answers.
#[test]
fn a_resolver_with_a_long_lived_socket_moves_to_a_live_dns_server() {
    let node = Node::new("term-dns").unwrap();
    let (a_ip, b_ip): (Ipv4Addr, Ipv4Addr) = (A.parse().unwrap(), B.parse().unwrap());
    let port = free_port_on(&[a_ip, b_ip]).unwrap();
    let (from_a, from_b) = ("ok 192.0.2.10", "ok 192.0.2.11");
    let _a = Dnsmasq::start_on(a_ip, port, &[("svc.test", "192.0.2.10".parse().unwrap())]).unwrap();
    let _b = Dnsmasq::start_on(b_ip, port, &[("svc.test", "192.0.2.11".parse().unwrap())]).unwrap();
    let vip = "10.96.13.4";
    let agent = agent_serving_both(&node, vip, port, &[], &[]);
    let service = format!("{vip}:53");
    // A resolver whose socket went to `a`.
    let mut resolver = (0..64)
        .find_map(|_| {
            let mut r =
                Probe::spawn(Some(&node.cgroup), &["resolve", &service, "svc.test"]).unwrap();
            r.send("1").unwrap();
            (r.read_lines(1).unwrap() == [from_a]).then_some(r)
        })
        .expect("no resolver socket went to backend a in 64 tries");
    resolver.send("3").unwrap();
    assert_eq!(
        resolver.read_lines(3).unwrap(),
        [from_a; 3],
        "a connected socket sticks"
    );

    let removed = remove_a(&node, vip, port, &agent);
    loop {
        resolver.send("1").unwrap();
        let reply = resolver.read_lines(1).unwrap().remove(0);
        if reply.starts_with("err ") {
            break;
        }
        assert!(
            removed.elapsed() < Duration::from_secs(1),
            "the resolver still asks the removed server a second later: {reply}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    resolver.send("5").unwrap();
    assert_eq!(
        resolver.read_lines(5).unwrap(),
        [from_b; 5],
        "after reopening its socket the resolver asks the live server"
    );
}

/// On a kernel without `bpf_sock_destroy` (simulated with the agent's test hook): one clear log
/// line, `lbctl_socket_termination_available 0`, and everything else works: the object loads
/// with the kfunc calls patched out, services are balanced, and a socket of a removed backend
/// simply keeps its backend.
#[test]
fn without_kernel_support_one_log_line_a_metric_and_everything_else_works() {
    let node = Node::new("term-nokfunc").unwrap();
    let port = free_port().unwrap();
    let vip = "10.96.13.5";
    let _servers = Servers::start(&[], port);
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let agent = agent_serving_both(
        &node,
        vip,
        port,
        &["--metrics-addr", &metrics.to_string()],
        &[(
            lbctl::datapath::kfunc::HIDE_KFUNCS_ENV,
            std::ffi::OsStr::new("1"),
        )],
    );
    let mut clients = spread(&[], &node, "udp", &format!("{vip}:53"), 1);
    let removed = remove_a(&node, vip, port, &agent);
    while removed.elapsed() < Duration::from_millis(1500) {
        for c in clients.iter_mut() {
            let name = c.backend.clone();
            assert_answers(c, &name, "without kernel support no socket is terminated");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.log();
    assert_eq!(
        log.matches("socket termination is unavailable").count(),
        1,
        "one log line says why:\n{log}"
    );
    assert!(log.contains("bpf_sock_destroy"), "{log}");
    assert_eq!(
        metric(metrics, "lbctl_socket_termination_available"),
        Some(0)
    );
    let fresh = Client::connect(&[], &node, "udp", &format!("{vip}:53"));
    assert_eq!(fresh.backend, "b", "balancing works as ever");
}

/// An IPv6 Service whose backends are `[::1]` on the given ports, one EndpointSlice each (named
/// by the slice's suffix): an IPv6 backend's sockets are judged by their IPv6 peer address.
fn cluster_v6(vip: &str, slices: &[(&str, u16)]) -> String {
    let slice = |name: &str, port: u16| {
        format!(
            r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc6-{name}
  namespace: default
  labels: {{kubernetes.io/service-name: svc6}}
addressType: IPv6
ports: [{{name: dns, port: {port}, protocol: UDP}}]
endpoints:
  - addresses: ["::1"]
    nodeName: {NODE}
    conditions: {{ready: true, serving: true, terminating: false}}
"#
        )
    };
    format!(
        r#"{node}---
apiVersion: v1
kind: Service
metadata: {{name: svc6, namespace: default}}
spec:
  clusterIP: "{vip}"
  clusterIPs: ["{vip}"]
  ipFamilies: [IPv6]
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: dns}}
{slices}"#,
        node = node_yaml(NODE, "192.0.2.1"),
        slices = slices
            .iter()
            .map(|(name, port)| slice(name, *port))
            .collect::<String>(),
    )
}

#[test]
fn ipv6_sockets_of_a_removed_backend_are_terminated() {
    let node = Node::new("term-v6").unwrap();
    let (port_a, port_b) = (free_port().unwrap(), free_port().unwrap());
    let (a, b) = (format!("[::1]:{port_a}"), format!("[::1]:{port_b}"));
    let mut servers = Probe::spawn(None, &["serve", "udp", "a", &a, "b", &b]).unwrap();
    assert_eq!(servers.read_lines(1).unwrap(), ["listening"]);
    let vip = "fd00::13:6";
    node.write_manifest(&cluster_v6(vip, &[("a", port_a), ("b", port_b)]))
        .unwrap();
    let agent = node.agent(&[]).unwrap();
    let frontend = lbctl::datapath::FrontendKey::new(
        format!("[{vip}]:53").parse().unwrap(),
        lbctl::plan::Protocol::Udp,
    );
    let backends = |node: &Node| match lbctl::inspect::lookup(node.pins.path(), frontend) {
        Ok(lbctl::inspect::Lookup::Rewritten { frontend }) => frontend.backends.len(),
        _ => 0,
    };
    assert!(
        wait_until(Duration::from_secs(10), || backends(&node) == 2),
        "{}",
        agent.log()
    );
    let service = format!("[{vip}]:53");
    let mut clients = spread(&[], &node, "udp", &service, 1);
    let mut direct = Client::connect(&[], &node, "udp", &a);

    // Backend a's slice goes away.
    node.write_manifest(&cluster_v6(vip, &[("b", port_b)]))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || backends(&node) == 1),
        "{}",
        agent.log()
    );
    let removed = Instant::now();
    for c in clients.iter_mut() {
        if c.backend == "a" {
            assert_udp_terminated(c, removed, &agent);
        } else {
            assert_answers(c, "b", "an IPv6 socket of the remaining backend");
        }
    }
    assert_answers(
        &mut direct,
        "a",
        "an IPv6 socket connected directly to the removed backend",
    );
}
