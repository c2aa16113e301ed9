//! Socket-level service semantics on the real kernel: unconnected UDP (`sendmsg`/`recvmsg`),
//! `getpeername`, session affinity, the socket LB scope, and the reverse map's cleanup on
//! socket close. Real cgroups, sockets, network namespaces, `dnsmasq` and `dig`.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    thread,
    time::Duration,
};

use lbctl::{
    datapath::{
        Datapath, Desired, FrontendKey, Object, ServiceSpec, TerminateSockets, TerminationConfig,
        Terminator, keep::Keeper, loader::SocketLbScope,
    },
    plan::{FrontendKind, Protocol},
};
use testkit::{
    backends::Backends,
    dns::Dnsmasq,
    netns::NetnsGuard,
    pins::Scratch,
    probe::{Outcome, Probe},
    sockets::Reply,
};

const LOCALHOST4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOCALHOST6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
const ECONNREFUSED: i32 = 111;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address literal")
}

/// One unconnected UDP socket in the probe, driven exchange by exchange.
struct Dgram(Probe);

impl Dgram {
    fn start(s: &Scratch, service: SocketAddr) -> Self {
        Self(Probe::spawn(Some(&s.cgroup), &["dgram", &service.to_string()]).unwrap())
    }

    /// `n` exchanges with the probe's address, or with `to`.
    fn exchange(&mut self, n: usize, to: Option<SocketAddr>) -> Vec<Reply> {
        let request = match to {
            Some(to) => format!("{n} {to}"),
            None => n.to_string(),
        };
        self.0.send(&request).unwrap();
        self.0
            .read_lines(n)
            .unwrap()
            .iter()
            .map(|l| Reply::parse(l).unwrap())
            .collect()
    }
}

/// The one backend all `replies` came from, each from `from`; panics otherwise.
fn one_backend(replies: &[Reply], from: SocketAddr) -> String {
    let names: BTreeSet<&str> = replies
        .iter()
        .map(|r| match &r.outcome {
            Outcome::Reached(name) => name.as_str(),
            other => panic!("an exchange failed ({other:?}) in {replies:?}"),
        })
        .collect();
    assert_eq!(names.len(), 1, "replies from several backends: {replies:?}");
    for r in replies {
        assert_eq!(r.from, Some(from), "reply source in {replies:?}");
    }
    names.into_iter().next().unwrap().to_owned()
}

/// The one backend all `outcomes` (TCP connects) reached.
fn one_name(outcomes: &[Outcome]) -> String {
    let names: BTreeSet<&str> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Reached(name) => name.as_str(),
            other => panic!("a connect failed ({other:?}) in {outcomes:?}"),
        })
        .collect();
    assert_eq!(
        names.len(),
        1,
        "connects reached several backends: {outcomes:?}"
    );
    names.into_iter().next().unwrap().to_owned()
}

/// The same named servers as `backends` (same addresses and ports) inside a network namespace,
/// so a client there reaches "the same" backends. Killed on drop.
fn serve_in(ns: &NetnsGuard, proto: &str, backends: &Backends) -> Probe {
    let mut args = vec!["serve".to_owned(), proto.to_owned()];
    for b in backends.all() {
        args.push(b.name.clone());
        args.push(b.addr.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut servers = Probe::spawn_via(&ns.exec_prefix(), None, &args).unwrap();
    assert_eq!(servers.read_lines(1).unwrap(), ["listening"]);
    servers
}

fn with_affinity(
    frontend: SocketAddr,
    protocol: Protocol,
    backends: Vec<SocketAddr>,
    seconds: u32,
) -> Desired {
    let mut desired = Desired::default();
    desired.services.insert(
        FrontendKey::new(frontend, protocol),
        ServiceSpec {
            backends: backends.into(),
            affinity_timeout: Some(seconds),
            kind: FrontendKind::ClusterIP,
        },
    );
    desired
}

/// A real resolver (`dig`) asks a real DNS server (`dnsmasq`) through a UDP ClusterIP, and
/// accepts the answer.
///
/// dig 9.18 connects its UDP socket (so `connect4` picks the backend) and then receives with
/// `recvmsg`, whose source `recvmsg4` shows as the service: the `reversed` counter proves that
/// translation ran for dig's answer. (A connected socket only receives from its peer, so dig
/// would accept the answer without it too; the source check is made by the `dgram` tests.)
#[test]
fn dig_resolves_through_a_udp_cluster_ip_served_by_dnsmasq() {
    let mut s = Scratch::new("dig").unwrap();
    let dns = Dnsmasq::start(
        Ipv4Addr::new(127, 0, 53, 1),
        &[("demo.test", Ipv4Addr::new(10, 1, 2, 3))],
    )
    .unwrap();
    s.datapath
        .apply(Desired::default().insert(sa("10.96.0.53:53"), Protocol::Udp, vec![dns.addr()]))
        .unwrap();
    assert_eq!(s.datapath.counters().unwrap().reversed, 0);

    let (status, out) = Probe::spawn(
        Some(&s.cgroup),
        &[
            "exec",
            "dig",
            "@10.96.0.53",
            "-p",
            "53",
            "demo.test",
            "+short",
            "+tries=1",
            "+time=2",
        ],
    )
    .unwrap()
    .finish_raw()
    .unwrap();
    assert!(status.success(), "dig failed ({status}): {out}");
    assert_eq!(out.trim(), "10.1.2.3", "dig output: {out}");
    let c = s.datapath.counters().unwrap();
    assert!(c.rewritten >= 1 && c.reversed >= 1, "{c:?}");
}

/// One unconnected UDP socket keeps its backend while the backend stays in the set, every
/// reply shows the service address, and a removed backend makes the next datagram go to a
/// current one.
#[test]
fn unconnected_udp_sticks_to_its_backend_until_the_backend_is_removed() {
    let mut s = Scratch::new("udp-sticky").unwrap();
    let b = Backends::udp(LOCALHOST4, &["u0", "u1", "u2", "u3"]).unwrap();
    let vip = sa("10.96.0.54:53");
    s.datapath
        .apply(Desired::default().insert(vip, Protocol::Udp, b.addrs()))
        .unwrap();

    let mut socket = Dgram::start(&s, vip);
    let first = one_backend(&socket.exchange(20, None), vip);
    assert!(s.datapath.counters().unwrap().sticky >= 19);

    // Other sockets spread: stickiness is per socket, not per service.
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let mut other = Dgram::start(&s, vip);
        seen.insert(one_backend(&other.exchange(1, None), vip));
    }
    assert!(seen.len() > 1, "40 sockets all used {seen:?}");

    let rest: Vec<SocketAddr> = b
        .all()
        .iter()
        .filter(|x| x.name != first)
        .map(|x| x.addr)
        .collect();
    s.datapath
        .apply(Desired::default().insert(vip, Protocol::Udp, rest))
        .unwrap();
    let second = one_backend(&socket.exchange(20, None), vip);
    assert_ne!(second, first, "the socket kept its removed backend");
}

/// sendmsg6/recvmsg6: an IPv6 service, and an IPv4 service used from a dual-stack socket
/// through its IPv4-mapped address.
#[test]
fn unconnected_udp_on_ipv6_and_v4_mapped_destinations() {
    let mut s = Scratch::new("udp-v6").unwrap();
    let b6 = Backends::udp(LOCALHOST6, &["v6a", "v6b"]).unwrap();
    let b4 = Backends::udp(LOCALHOST4, &["v4a", "v4b"]).unwrap();
    let mut desired = Desired::default();
    desired.insert(sa("[fd00::54]:53"), Protocol::Udp, b6.addrs());
    desired.insert(sa("10.96.0.57:53"), Protocol::Udp, b4.addrs());
    s.datapath.apply(&desired).unwrap();

    let mut v6 = Dgram::start(&s, sa("[fd00::54]:53"));
    let name = one_backend(&v6.exchange(5, None), sa("[fd00::54]:53"));
    assert!(name.starts_with("v6"), "{name}");
    let mapped = sa("[::ffff:10.96.0.57]:53");
    let mut dual = Dgram::start(&s, mapped);
    let name = one_backend(&dual.exchange(5, None), mapped);
    assert!(name.starts_with("v4"), "{name}");
}

/// A datagram to a service without backends fails at once with ECONNREFUSED, like a connect.
#[test]
fn datagram_to_a_service_without_backends_is_refused() {
    let mut s = Scratch::new("udp-refuse").unwrap();
    let mut desired = Desired::default();
    desired.insert(sa("10.96.0.58:53"), Protocol::Udp, vec![]);
    desired.insert(sa("[fd00::58]:53"), Protocol::Udp, vec![]);
    s.datapath.apply(&desired).unwrap();

    for vip in ["10.96.0.58:53", "[fd00::58]:53"] {
        let mut socket = Dgram::start(&s, sa(vip));
        let replies = socket.exchange(2, None);
        assert!(
            replies
                .iter()
                .all(|r| r.outcome == Outcome::Failed(ECONNREFUSED)),
            "{vip}: {replies:?}"
        );
    }
}

/// Reverse state is validated: once the service is deleted, a reply from the (former) backend
/// shows the backend's own address.
#[test]
fn reverse_state_of_a_deleted_service_is_not_used() {
    let mut s = Scratch::new("udp-stale").unwrap();
    let b = Backends::udp(LOCALHOST4, &["u0"]).unwrap();
    let vip = sa("10.96.0.56:53");
    s.datapath
        .apply(Desired::default().insert(vip, Protocol::Udp, b.addrs()))
        .unwrap();

    let mut socket = Dgram::start(&s, vip);
    assert_eq!(one_backend(&socket.exchange(2, None), vip), "u0");
    s.datapath.apply(&Desired::default()).unwrap();
    // The socket's entry still names u0, but its service is gone: no translation.
    let direct = b.addr("u0");
    assert_eq!(one_backend(&socket.exchange(2, Some(direct)), direct), "u0");
}

/// A connected socket (TCP, and connected UDP) reports the service as its peer.
#[test]
fn getpeername_reports_the_service_address() {
    let mut s = Scratch::new("peer").unwrap();
    let tcp4 = Backends::tcp(LOCALHOST4, &["t4"]).unwrap();
    let tcp6 = Backends::tcp(LOCALHOST6, &["t6"]).unwrap();
    let udp4 = Backends::udp(LOCALHOST4, &["u4"]).unwrap();
    let mut desired = Desired::default();
    desired.insert(sa("10.96.0.55:80"), Protocol::Tcp, tcp4.addrs());
    desired.insert(sa("[fd00::55]:80"), Protocol::Tcp, tcp6.addrs());
    desired.insert(sa("10.96.0.55:53"), Protocol::Udp, udp4.addrs());
    s.datapath.apply(&desired).unwrap();

    for (proto, vip, name) in [
        ("tcp", "10.96.0.55:80", "t4"),
        ("tcp", "[fd00::55]:80", "t6"),
        ("tcp", "[::ffff:10.96.0.55]:80", "t4"),
        ("udp", "10.96.0.55:53", "u4"),
    ] {
        let lines = Probe::spawn(Some(&s.cgroup), &["peer", proto, vip, "3"])
            .unwrap()
            .read_lines(3)
            .unwrap();
        let replies: Vec<Reply> = lines.iter().map(|l| Reply::parse(l).unwrap()).collect();
        assert_eq!(one_backend(&replies, sa(vip)), name, "{proto} {vip}");
    }
    // Outside the cgroup nothing is translated: a real listener reports itself.
    let lines = Probe::spawn(None, &["peer", "tcp", &tcp4.addr("t4").to_string(), "1"])
        .unwrap()
        .read_lines(1)
        .unwrap();
    assert_eq!(Reply::parse(&lines[0]).unwrap().from, Some(tcp4.addr("t4")));
}

/// Session affinity: every connect of one client (network namespace) reaches one backend;
/// clients in other network namespaces choose independently.
#[test]
fn affinity_keeps_each_network_namespace_on_its_backend() {
    let mut s = Scratch::new("affinity").unwrap();
    let b = Backends::tcp(LOCALHOST4, &["a0", "a1", "a2", "a3"]).unwrap();
    let vip = sa("10.96.0.60:80");
    s.datapath
        .apply(&with_affinity(vip, Protocol::Tcp, b.addrs(), 600))
        .unwrap();

    let host = one_name(&Probe::run(Some(&s.cgroup), &["tcp", &vip.to_string(), "30"]).unwrap());
    assert!(s.datapath.counters().unwrap().affinity >= 29);

    // Up to 8 namespaces; with 4 backends, all choosing the host's one by chance has a
    // probability of 4^-8.
    let mut others = Vec::new();
    for i in 0..8 {
        let ns = NetnsGuard::new(&format!("aff{i}")).unwrap();
        let _servers = serve_in(&ns, "tcp", &b);
        let mut probe = Probe::spawn_via(
            &ns.exec_prefix(),
            Some(&s.cgroup),
            &["tcp", &vip.to_string(), "20"],
        )
        .unwrap();
        let name = one_name(&probe.finish().unwrap());
        others.push(name.clone());
        if name != host {
            break;
        }
    }
    assert!(
        others.iter().any(|n| *n != host),
        "every namespace got the host's backend {host}: {others:?}"
    );
    let entries = s.datapath.writer().maps().affinity_entries();
    assert_eq!(entries, 1 + others.len(), "one affinity entry per client");
}

/// A client's backend is chosen anew when it leaves the set, and when the entry expired.
#[test]
fn affinity_selects_anew_after_removal_and_after_expiry() {
    let mut s = Scratch::new("affinity-expiry").unwrap();
    let b = Backends::tcp(LOCALHOST4, &["e0", "e1", "e2", "e3", "e4"]).unwrap();
    let vip = sa("10.96.0.61:80");
    let connect = |s: &Scratch, n: &str| {
        one_name(&Probe::run(Some(&s.cgroup), &["tcp", &vip.to_string(), n]).unwrap())
    };
    s.datapath
        .apply(&with_affinity(vip, Protocol::Tcp, b.addrs(), 1))
        .unwrap();
    let first = connect(&s, "10");

    let rest: Vec<SocketAddr> = b
        .all()
        .iter()
        .filter(|x| x.name != first)
        .map(|x| x.addr)
        .collect();
    s.datapath
        .apply(&with_affinity(vip, Protocol::Tcp, rest, 1))
        .unwrap();
    let mut current = connect(&s, "10");
    assert_ne!(current, first, "the client kept its removed backend");

    // After the timeout the next connect chooses among the 4 anew; choosing the same one 8
    // times in a row has a probability of 4^-8.
    let mut history = vec![current.clone()];
    for _ in 0..8 {
        thread::sleep(Duration::from_millis(1300));
        let next = connect(&s, "5");
        history.push(next.clone());
        if next != current {
            return;
        }
        current = next;
    }
    panic!("the client never changed backend after its entry expired: {history:?}");
}

/// Scope `host-only`: a process in another network namespace is left alone; switching the
/// adopted datapath back to `all` serves it again.
#[test]
fn host_only_scope_leaves_other_network_namespaces_alone() {
    let mut s = Scratch::with_scope("scope", SocketLbScope::HostOnly).unwrap();
    let real = Backends::tcp(LOCALHOST4, &["real"]).unwrap();
    let b = Backends::tcp(LOCALHOST4, &["b0"]).unwrap();
    let target = real.addr("real").to_string();
    s.datapath
        .apply(Desired::default().insert(real.addr("real"), Protocol::Tcp, b.addrs()))
        .unwrap();
    let ns = NetnsGuard::new("scope").unwrap();
    let _real_there = serve_in(&ns, "tcp", &real);
    let _b0_there = serve_in(&ns, "tcp", &b);
    let in_ns = |s: &Scratch| {
        Probe::spawn_via(&ns.exec_prefix(), Some(&s.cgroup), &["tcp", &target, "3"])
            .unwrap()
            .finish()
            .unwrap()
    };

    let host = Probe::run(Some(&s.cgroup), &["tcp", &target, "3"]).unwrap();
    assert_eq!(
        host,
        vec![Outcome::Reached("b0".into()); 3],
        "host namespace"
    );
    assert_eq!(
        in_ns(&s),
        vec![Outcome::Reached("real".into()); 3],
        "other namespace"
    );
    assert!(s.datapath.counters().unwrap().foreign_netns >= 3);

    // A restarted agent with scope `all` adopts the programs and serves every namespace.
    let config = lbctl::datapath::DatapathConfig {
        scope: SocketLbScope::All,
        ..s.config()
    };
    let again = Datapath::install(&config).unwrap();
    drop(std::mem::replace(&mut s.datapath, again));
    assert_eq!(
        in_ns(&s),
        vec![Outcome::Reached("b0".into()); 3],
        "scope all"
    );
}

/// A TCP connect records its translation in `lb_tcp_recent` (an element chosen by the socket
/// cookie's low bits), and the socket's storage keeps it for good once a keeping pass or the
/// socket's own first `getpeername` copied it there. After thousands of newer connections
/// through the node's services took every element of the array over (the test's array has
/// 1,024), a connection a pass kept and one that asked for its peer right after connecting
/// still report the service as their peer, and their exchanges keep working. A connection made
/// after the pass that asked for nothing lost its translation with its element and shows its
/// backend: the copy into the storage is what keeps the translation. UDP sockets keep theirs
/// in their storage from the first datagram.
#[test]
fn a_long_lived_connection_keeps_its_peer_through_many_newer_connections() {
    let mut s = Scratch::new("sock-state").unwrap();
    let held_at = SocketAddr::new(LOCALHOST4, testkit::ports::free_port().unwrap());
    let mut server = Probe::spawn(None, &["serve-hold", "h0", &held_at.to_string()]).unwrap();
    assert_eq!(server.read_lines(1).unwrap(), ["listening"]);
    let tcp = Backends::tcp(LOCALHOST4, &["t0"]).unwrap();
    let udp = Backends::udp(LOCALHOST4, &["u0", "u1"]).unwrap();
    let (vip_held, vip, vip_udp) = (
        sa("10.96.0.59:8080"),
        sa("10.96.0.59:80"),
        sa("10.96.0.59:53"),
    );
    s.datapath
        .apply(
            Desired::default()
                .insert(vip_held, Protocol::Tcp, vec![held_at])
                .insert(vip, Protocol::Tcp, tcp.addrs())
                .insert(vip_udp, Protocol::Udp, udp.addrs()),
        )
        .unwrap();
    let keeper = Keeper::load(&s.config(), &Object::embedded().unwrap(), &[]).unwrap();
    let recent = TcpRecentView::open(&s);

    let hold = |s: &Scratch, quiet: bool| hold_tcp(s, vip_held, quiet);
    let (mut kept, kept_cookie) = hold(&s, true);
    assert!(
        recent.holds(kept_cookie),
        "the connect recorded its translation in the array"
    );
    let pass = keeper.run();
    assert_eq!(
        (pass.kept, pass.failed, pass.namespaces),
        (1, 0, 1),
        "{pass:?}"
    );
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    let (mut late, late_cookie) = hold(&s, true);
    let (mut asked, asked_cookie) = hold(&s, false);

    take_elements_over(&s, &recent, vip, &[kept_cookie, late_cookie, asked_cookie]);
    let mut many = Probe::spawn(
        Some(&s.cgroup),
        &["dgram-many", &vip_udp.to_string(), "3000"],
    )
    .unwrap();
    assert_eq!(many.read_lines(1).unwrap(), ["done 3000 0"]);
    many.finish_raw().unwrap();
    assert!(s.datapath.counters().unwrap().rewritten >= 4_002);

    // Two exchanges, then the socket's peer as getpeername reports it (the quiet holders ask
    // for the first time here).
    let peer_is = |held: &mut Probe, peer: SocketAddr, why: &str| {
        held.send("2").unwrap();
        for line in held.read_lines(2).unwrap() {
            assert!(line.starts_with("ok h0"), "{line}");
        }
        held.send("peer").unwrap();
        assert_eq!(
            held.read_lines(1).unwrap(),
            [format!("peer {peer}")],
            "{why}"
        );
    };
    peer_is(
        &mut kept,
        vip_held,
        "the kept socket's peer is still the service",
    );
    peer_is(
        &mut asked,
        vip_held,
        "the socket that asked for its peer kept it",
    );
    peer_is(
        &mut late,
        held_at,
        "the socket no pass kept lost its translation with its element",
    );
    assert_eq!(keeper.run().kept, 0, "nothing is left to keep");
    kept.finish_raw().unwrap();
    late.finish_raw().unwrap();
    asked.finish_raw().unwrap();
}

/// A TCP connect records its translation in `lb_tcp_recent` only, also for a socket whose
/// storage holds an earlier one: kept, then disconnected (`connect(AF_UNSPEC)`) and connected to
/// another service. Every reader takes the element first while it holds the socket's cookie, and
/// keeping copies it over the storage. So such a socket reports its new service as its peer
/// (its `getpeername` keeps it), a keeping pass copies the new translation of one that did not
/// ask over its old one, both still report the new service after newer connections took their
/// elements over, and a sweep judges a socket by its new backend while its storage still holds
/// the old one.
#[test]
fn a_kept_socket_that_connects_again_is_judged_by_its_new_translation() {
    let mut s = Scratch::new("reconnect").unwrap();
    let at_a = SocketAddr::new(LOCALHOST4, testkit::ports::free_port().unwrap());
    let at_b = SocketAddr::new(LOCALHOST4, testkit::ports::free_port().unwrap());
    let mut server = Probe::spawn(
        None,
        &[
            "serve-hold",
            "h0",
            &at_a.to_string(),
            "h1",
            &at_b.to_string(),
        ],
    )
    .unwrap();
    assert_eq!(server.read_lines(1).unwrap(), ["listening"]);
    let tcp = Backends::tcp(LOCALHOST4, &["t0"]).unwrap();
    let (vip_a, vip_b, vip) = (
        sa("10.96.0.61:80"),
        sa("10.96.0.61:81"),
        sa("10.96.0.61:82"),
    );
    let desired = |b: SocketAddr| {
        let mut d = Desired::default();
        d.insert(vip_a, Protocol::Tcp, vec![at_a])
            .insert(vip_b, Protocol::Tcp, vec![b])
            .insert(vip, Protocol::Tcp, tcp.addrs());
        d
    };
    s.datapath.apply(&desired(at_b)).unwrap();
    let object = Object::embedded().unwrap();
    let keeper = Keeper::load(&s.config(), &object, &[]).unwrap();
    let terminator = Terminator::load(
        &s.config(),
        &object,
        &TerminationConfig {
            sockets: TerminateSockets::UdpTcp,
            netns_dirs: Vec::new(),
        },
    )
    .unwrap();
    let recent = TcpRecentView::open(&s);

    // A holder on `vip_a`, kept in its storage by its own getpeername (`asked`) or by a pass.
    let hold = |s: &Scratch, quiet: bool| hold_tcp(s, vip_a, quiet);
    let reconnect = |held: &mut Probe, quiet: bool| {
        held.send(&format!("reconnect {vip_b}")).unwrap();
        let connected = if quiet {
            "connected".to_owned()
        } else {
            format!("connected {vip_b}")
        };
        assert_eq!(
            held.read_lines(1).unwrap(),
            [connected],
            "the element's translation, not the storage's older one"
        );
        held.send("2").unwrap();
        for line in held.read_lines(2).unwrap() {
            assert!(line.starts_with("ok h1"), "{line}");
        }
    };
    let (mut asked, asked_cookie) = hold(&s, false);
    let (mut quiet, quiet_cookie) = hold(&s, true);
    let pass = keeper.run();
    assert_eq!((pass.kept, pass.failed), (1, 0), "{pass:?}");
    reconnect(&mut asked, false);
    reconnect(&mut quiet, true);
    assert_eq!(
        keeper.run().kept,
        1,
        "the pass copies the quiet socket's new translation over its old one"
    );

    take_elements_over(&s, &recent, vip, &[asked_cookie, quiet_cookie]);
    for (held, why) in [
        (&mut asked, "its getpeername kept the new translation"),
        (&mut quiet, "the pass kept the new translation"),
    ] {
        held.send("peer").unwrap();
        assert_eq!(
            held.read_lines(1).unwrap(),
            [format!("peer {vip_b}")],
            "{why}"
        );
    }

    // A third socket, kept on `vip_a` and connected again to `vip_b`: its storage still holds
    // `vip_a`'s translation. When `vip_b`'s backend leaves, the sweep ends all three.
    let (mut swept, _) = hold(&s, true);
    assert_eq!(keeper.run().kept, 1);
    reconnect(&mut swept, true);
    let report = s.datapath.apply(&desired(at_a)).unwrap();
    let sweep = terminator.sweep(&report.departed);
    assert!(sweep.errors.is_empty(), "{:?}", sweep.errors);
    assert_eq!(
        sweep.counts(),
        (0, 3),
        "every socket connected to vip_b's old backend, judged by its newest translation"
    );
    for held in [&mut asked, &mut quiet, &mut swept] {
        held.send("1").unwrap();
        let line = held.read_lines(1).unwrap().remove(0);
        assert!(line.starts_with("err "), "an aborted socket fails: {line}");
        held.finish_raw().unwrap();
    }
    drop(server);
}

/// A TCP connection to `service` from the scratch cgroup that stays open, and its socket
/// cookie. `quiet`: the probe does not ask for its peer when it connects.
fn hold_tcp(s: &Scratch, service: SocketAddr, quiet: bool) -> (Probe, u64) {
    let service_arg = service.to_string();
    let mut args = vec!["hold", "tcp", service_arg.as_str()];
    if quiet {
        args.push("quiet");
    }
    let mut held = Probe::spawn(Some(&s.cgroup), &args).unwrap();
    let connected = if quiet {
        "connected".to_owned()
    } else {
        format!("connected {service}")
    };
    assert_eq!(held.read_lines(1).unwrap(), [connected]);
    held.send("cookie").unwrap();
    let line = held.read_lines(1).unwrap().remove(0);
    let cookie: u64 = line.strip_prefix("cookie ").unwrap().parse().unwrap();
    (held, cookie)
}

/// Newer connections through `vip` (to its one backend, `t0`) until no element of
/// `lb_tcp_recent` holds any of `cookies` (consecutive cookies cover the array's 1,024
/// elements; a few more rounds allow for cookies from other CPUs).
fn take_elements_over(s: &Scratch, recent: &TcpRecentView, vip: SocketAddr, cookies: &[u64]) {
    let mut rounds = 0;
    while cookies.iter().any(|c| recent.holds(*c)) {
        rounds += 1;
        assert!(
            rounds <= 10,
            "10,000 newer connects left an element of a held socket alone"
        );
        let out = Probe::run(Some(&s.cgroup), &["peer", "tcp", &vip.to_string(), "1000"]).unwrap();
        assert_eq!(out.len(), 1000);
        assert!(
            out.iter().all(|o| *o == Outcome::Reached("t0".into())),
            "{out:?}"
        );
    }
}

/// Reads the elements of a scratch datapath's `lb_tcp_recent`.
struct TcpRecentView(aya::maps::Array<aya::maps::MapData, lb_common::TcpRecent>);

impl TcpRecentView {
    fn open(s: &Scratch) -> Self {
        let data =
            aya::maps::MapData::from_pin(s.pins.path().join(lb_common::TCP_RECENT_MAP)).unwrap();
        Self(aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap())
    }

    /// Whether the element of `cookie` holds that socket's translation.
    fn holds(&self, cookie: u64) -> bool {
        let capacity = testkit::pins::test_capacity().tcp_recent;
        let index = (cookie as u32) & (capacity - 1);
        self.0.get(&index, 0).unwrap().cookie == cookie
    }
}

/// `lb_members` holds exactly the current backend set of each UDP or affinity frontend, through
/// growth, shrink, deletion and adoption by a restarted agent, and nothing for a TCP frontend
/// without affinity.
#[test]
fn memberships_follow_the_backend_sets() {
    let mut s = Scratch::new("members").unwrap();
    let b = Backends::udp(LOCALHOST4, &["m0", "m1", "m2"]).unwrap();
    let vip = sa("10.96.0.62:53");
    let members = |d: &Datapath| -> BTreeSet<(u32, u32)> {
        d.writer()
            .maps()
            .members
            .keys()
            .map(|k| k.map(|k| (k.frontend_id, k.backend_id)).unwrap())
            .collect()
    };
    let fe = FrontendKey::new(vip, Protocol::Udp);

    s.datapath
        .apply(Desired::default().insert(vip, Protocol::Udp, b.addrs()))
        .unwrap();
    let id = s.datapath.writer().frontend_id(&fe).unwrap();
    let all = members(&s.datapath);
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|&(f, _)| f == id));

    s.datapath
        .apply(Desired::default().insert(vip, Protocol::Udp, vec![b.addr("m1")]))
        .unwrap();
    let one = members(&s.datapath);
    assert_eq!(one.len(), 1);
    assert!(one.is_subset(&all));

    let again = Datapath::install(&s.config()).unwrap();
    drop(std::mem::replace(&mut s.datapath, again));
    assert!(
        s.datapath
            .apply(Desired::default().insert(vip, Protocol::Udp, vec![b.addr("m1")]))
            .unwrap()
            .is_noop(),
        "the adopted memberships equal what was written"
    );

    // TCP frontends: memberships only with session affinity (the programs read them for
    // UDP stickiness and affinity only), written and removed as affinity comes and goes.
    let (plain, sticky) = (sa("10.96.0.63:80"), sa("10.96.0.64:80"));
    let with_tcp = |affinity: Option<u32>| {
        let mut d = Desired::default();
        d.insert(vip, Protocol::Udp, vec![b.addr("m1")]);
        d.insert(plain, Protocol::Tcp, b.addrs());
        d.services.insert(
            FrontendKey::new(sticky, Protocol::Tcp),
            ServiceSpec {
                backends: b.addrs().into(),
                affinity_timeout: affinity,
                kind: FrontendKind::ClusterIP,
            },
        );
        d
    };
    s.datapath.apply(&with_tcp(Some(60))).unwrap();
    let fid = |s: &Scratch, a| {
        s.datapath
            .writer()
            .frontend_id(&FrontendKey::new(a, Protocol::Tcp))
            .unwrap()
    };
    let (plain_id, sticky_id) = (fid(&s, plain), fid(&s, sticky));
    let by_frontend = |d: &Datapath, id: u32| members(d).iter().filter(|m| m.0 == id).count();
    assert_eq!(
        by_frontend(&s.datapath, plain_id),
        0,
        "a TCP frontend has none"
    );
    assert_eq!(
        by_frontend(&s.datapath, sticky_id),
        3,
        "a TCP affinity frontend has its set"
    );
    assert_eq!(
        by_frontend(&s.datapath, id),
        1,
        "the UDP frontend keeps its set"
    );
    s.datapath.apply(&with_tcp(None)).unwrap();
    assert_eq!(
        by_frontend(&s.datapath, sticky_id),
        0,
        "affinity off: memberships gone"
    );
    assert_eq!(members(&s.datapath).len(), 1);

    s.datapath.apply(&Desired::default()).unwrap();
    assert!(members(&s.datapath).is_empty());
}
