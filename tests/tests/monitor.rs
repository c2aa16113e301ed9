//! `lbctl monitor` and `lbctl agent --debug-bpf` on the real kernel: the JSON contract field by
//! field for real connects and datagrams from a process in a test cgroup, the filters, several
//! monitors at once, a SIGKILLed monitor leaving nothing behind, and the kernel's debug logs.
use std::{fs, net::SocketAddr, os::unix::fs::MetadataExt, path::PathBuf, time::Duration};

use lb_common::meta;
use lbctl::{datapath::FrontendKey, inspect, plan::Protocol};
use serde_json::Value;
use testkit::{
    TempDir,
    agent::{AgentProcess, wait_until},
    backends::Backends,
    cgroup::CgroupGuard,
    lifecycle::{NODE, agent_args},
    monitor::{MonitorProcess, switches},
    pins::PinDirGuard,
    probe::{Outcome, Probe},
};

const ECONNREFUSED: i32 = 111;
/// How long a test waits for an event that must come.
const EVENT_WAIT: Duration = Duration::from_secs(5);
/// How long "no more events" is watched for.
const QUIET: Duration = Duration::from_millis(500);

/// Three Services on this node: `default/web` (TCP, port `http`, one endpoint), `default/empty`
/// (TCP, port `http`, no endpoint: refuses) and `default/dns` (UDP, port `dns`, one endpoint).
fn cluster_yaml(
    web: &str,
    web_ep: SocketAddr,
    empty: &str,
    dns: &str,
    dns_ep: SocketAddr,
) -> String {
    let service = |name: &str, vip: &str, port_name: &str, port: u16, proto: &str, target: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {vip}\n  clusterIPs: [{vip}]\n  ports: [{{name: {port_name}, port: {port}, protocol: {proto}, targetPort: {target}}}]\n---\n"
        )
    };
    let slice = |name: &str, port_name: &str, proto: &str, ep: Option<SocketAddr>| {
        let (port, endpoints) = match ep {
            Some(ep) => (
                ep.port(),
                format!(
                    "\n  - addresses: [\"{}\"]\n    nodeName: {NODE}\n    conditions: {{ready: true, serving: true, terminating: false}}",
                    ep.ip()
                ),
            ),
            None => (8080, " []".to_owned()),
        };
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-abc12\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: {port_name}, port: {port}, protocol: {proto}}}]\nendpoints:{endpoints}\n---\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}}}\nstatus: {{addresses: [{{type: InternalIP, address: 192.0.2.1}}]}}\n---\n{}{}{}{}{}{}",
        service("web", web, "http", 80, "TCP", web_ep.port()),
        slice("web", "http", "TCP", Some(web_ep)),
        service("empty", empty, "http", 80, "TCP", 8080),
        slice("empty", "http", "TCP", None),
        service("dns", dns, "dns", 53, "UDP", dns_ep.port()),
        slice("dns", "dns", "UDP", Some(dns_ep)),
    )
}

struct Setup {
    _dir: TempDir,
    manifest: PathBuf,
    pins: PinDirGuard,
    cgroup: CgroupGuard,
    tcp: Backends,
    udp: Backends,
    web: String,
    empty: String,
    dns: String,
}

impl Setup {
    /// Backends, manifests and the VIPs `10.97.<n>.{1,2,3}` (unique per test: tests run in
    /// parallel, each with its own cgroup and pins).
    fn new(tag: &str, n: u8) -> Self {
        let dir = TempDir::new(tag).unwrap();
        let manifest = dir.path().join("cluster.yaml");
        let tcp = Backends::tcp_same_port(&["b0"]).unwrap();
        let udp = Backends::udp("127.0.0.2".parse().unwrap(), &["d0"]).unwrap();
        let (web, empty, dns) = (
            format!("10.97.{n}.1"),
            format!("10.97.{n}.2"),
            format!("10.97.{n}.3"),
        );
        fs::write(
            &manifest,
            cluster_yaml(&web, tcp.addr("b0"), &empty, &dns, udp.addr("d0")),
        )
        .unwrap();
        Self {
            _dir: dir,
            manifest,
            pins: PinDirGuard::new(tag),
            cgroup: CgroupGuard::new(tag).unwrap(),
            tcp,
            udp,
            web,
            empty,
            dns,
        }
    }

    fn start_agent(&self, extra: &[&str]) -> AgentProcess {
        let manifest = self.manifest.display().to_string();
        let args = agent_args(
            &["--manifests", &manifest],
            self.pins.path(),
            self.cgroup.path(),
            extra,
        );
        let agent = AgentProcess::start(&args).unwrap();
        let dns = FrontendKey::new(format!("{}:53", self.dns).parse().unwrap(), Protocol::Udp);
        let programmed = wait_until(Duration::from_secs(10), || {
            matches!(
                inspect::lookup(self.pins.path(), dns),
                Ok(inspect::Lookup::Rewritten { .. })
            ) && inspect::services(self.pins.path())
                .is_ok_and(|v| v.len() >= 3 && v.iter().all(|f| f.service.is_some()))
        });
        assert!(
            programmed,
            "agent did not program and name the frontends:\n{}",
            agent.log()
        );
        // An agent that adopts finds the frontends programmed by its predecessor: wait for its
        // own start too.
        assert!(
            wait_until(Duration::from_secs(10), || plain_log(&agent)
                .contains("monitor socket ready")),
            "{}",
            agent.log()
        );
        agent
    }

    fn monitor(&self, args: &[&str]) -> MonitorProcess {
        MonitorProcess::start(self.pins.path(), args).unwrap()
    }

    /// The cgroup's path as the monitor shows it: relative to the cgroup2 mount.
    fn cgroup_path(&self) -> String {
        let root = lbctl::datapath::system::cgroup2_root().unwrap();
        format!(
            "/{}",
            self.cgroup.path().strip_prefix(&root).unwrap().display()
        )
    }

    fn cgroup_id(&self) -> u64 {
        fs::metadata(self.cgroup.path()).unwrap().ino()
    }
}

/// Waits for the next event and fails with what came instead.
fn next(m: &MonitorProcess, what: &str) -> Value {
    m.next_event(EVENT_WAIT)
        .unwrap_or_else(|| panic!("no event for {what} within {EVENT_WAIT:?}"))
}

/// Checks the fields every event has, for a call made by `probe` from `s`'s cgroup.
fn assert_caller(e: &Value, s: &Setup, pid: u32) {
    assert_eq!(e["pid"], pid, "{e}");
    assert_eq!(e["comm"], "lb-probe", "{e}");
    assert_eq!(e["cgroup_id"], s.cgroup_id(), "{e}");
    assert_eq!(e["cgroup"], s.cgroup_path(), "{e}");
    assert!(e["socket_cookie"].as_u64().is_some_and(|c| c > 0), "{e}");
    let time = e["time"].as_str().expect("time is a string");
    let parsed: jiff_like::Rfc3339 = time.parse().unwrap_or_else(|_| panic!("time {time:?}"));
    assert!(parsed.is_recent(), "time {time:?} is not now");
}

/// A minimal RFC 3339 reader for the `time` field (the tests need no date crate).
mod jiff_like {
    pub struct Rfc3339 {
        year: i32,
    }

    impl std::str::FromStr for Rfc3339 {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            // 2026-12-01T15:10:24.123456789Z
            let bytes = s.as_bytes();
            if !s.ends_with('Z') || bytes.get(4) != Some(&b'-') || bytes.get(10) != Some(&b'T') {
                return Err(());
            }
            Ok(Self {
                year: s[..4].parse().map_err(|_| ())?,
            })
        }
    }

    impl Rfc3339 {
        /// In the year of the system clock (or the next one, around New Year).
        pub fn is_recent(&self) -> bool {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let year = 1970 + (secs / 31_556_952) as i32;
            (self.year - year).abs() <= 1
        }
    }
}

#[test]
fn json_contract_of_a_rewritten_connect_field_by_field() {
    let s = Setup::new("mon-rewritten", 1);
    let _agent = s.start_agent(&[]);
    let m = s.monitor(&[]);

    // `peer` connects, asks getpeername(), reads the backend's name: one connect4 decision
    // (and one reverse translation, which the monitor hides without --reverse).
    let mut probe = Probe::spawn(
        Some(&s.cgroup),
        &["peer", "tcp", &format!("{}:80", s.web), "1"],
    )
    .unwrap();
    let pid = probe.pid();
    let out = probe.read_lines(1).unwrap();
    assert!(out[0].starts_with("ok b0 "), "{out:?}");
    let e = next(&m, "the connect");
    assert_eq!(e["verdict"], "rewritten", "{e}");
    assert_eq!(e["reverse"], false, "{e}");
    assert_eq!(e["hook"], "connect4", "{e}");
    assert_eq!(e["service"], "default/web", "{e}");
    assert_eq!(e["port_name"], "http", "{e}");
    assert_eq!(e["frontend"], format!("{}:80/tcp", s.web), "{e}");
    assert_eq!(e["backend"], s.tcp.addr("b0").to_string(), "{e}");
    assert_eq!(e["reason"], "random_backend", "{e}");
    assert!(e["frontend_id"].as_u64().is_some_and(|id| id > 0), "{e}");
    assert_caller(&e, &s, pid);
    assert!(
        m.events_until_quiet(QUIET).is_empty(),
        "one connect, one event (the getpeername is a reverse translation)"
    );
    drop(probe);

    // With --reverse the getpeername() shows up too, on the same socket (same cookie).
    let rev = s.monitor(&["--reverse"]);
    let mut probe = Probe::spawn(
        Some(&s.cgroup),
        &["peer", "tcp", &format!("{}:80", s.web), "1"],
    )
    .unwrap();
    let out = probe.read_lines(1).unwrap();
    assert!(
        out[0].ends_with(&format!(" {}:80", s.web)),
        "getpeername shows the service: {out:?}"
    );
    let connect = next(&rev, "the connect");
    let peer = next(&rev, "the getpeername");
    assert_eq!(connect["verdict"], "rewritten", "{connect}");
    assert_eq!(peer["verdict"], "reversed", "{peer}");
    assert_eq!(peer["reverse"], true, "{peer}");
    assert_eq!(peer["hook"], "getpeername", "{peer}");
    assert_eq!(peer["reason"], "getpeername", "{peer}");
    assert_eq!(peer["service"], "default/web", "{peer}");
    assert_eq!(peer["frontend"], connect["frontend"], "{peer}");
    assert_eq!(peer["backend"], connect["backend"], "{peer}");
    assert_eq!(
        peer["socket_cookie"], connect["socket_cookie"],
        "both events are about one socket: {connect} {peer}"
    );
    assert_caller(&peer, &s, probe.pid());
}

#[test]
fn json_contract_of_a_refused_connect_and_a_udp_send() {
    let s = Setup::new("mon-refused", 2);
    let _agent = s.start_agent(&[]);
    let m = s.monitor(&["--reverse"]);

    let mut probe =
        Probe::spawn(Some(&s.cgroup), &["tcp", &format!("{}:80", s.empty), "1"]).unwrap();
    let pid = probe.pid();
    assert_eq!(probe.finish().unwrap(), vec![Outcome::Failed(ECONNREFUSED)]);
    let e = next(&m, "the refused connect");
    assert_eq!(e["verdict"], "refused", "{e}");
    assert_eq!(e["reverse"], false, "{e}");
    assert_eq!(e["service"], "default/empty", "{e}");
    assert_eq!(e["port_name"], "http", "{e}");
    assert_eq!(e["frontend"], format!("{}:80/tcp", s.empty), "{e}");
    assert!(
        e["backend"].is_null(),
        "a refused connect has no backend: {e}"
    );
    assert_eq!(e["reason"], "no_backends", "{e}");
    assert_caller(&e, &s, pid);

    // An unconnected UDP socket: sendto() a datagram (sendmsg4), the reply comes back from
    // the service address (recvmsg, a reverse translation), on the same socket.
    let mut probe = Probe::spawn(Some(&s.cgroup), &["dgram", &format!("{}:53", s.dns)]).unwrap();
    probe.send("1").unwrap();
    let out = probe.read_lines(1).unwrap();
    assert_eq!(out, vec![format!("ok d0 {}:53", s.dns)]);
    let send = next(&m, "the datagram");
    assert_eq!(send["verdict"], "rewritten", "{send}");
    assert_eq!(send["hook"], "sendmsg4", "{send}");
    assert_eq!(send["service"], "default/dns", "{send}");
    assert_eq!(send["port_name"], "dns", "{send}");
    assert_eq!(send["frontend"], format!("{}:53/udp", s.dns), "{send}");
    assert_eq!(send["backend"], s.udp.addr("d0").to_string(), "{send}");
    assert_caller(&send, &s, probe.pid());
    let reply = next(&m, "the reply");
    assert_eq!(reply["verdict"], "reversed", "{reply}");
    assert_eq!(reply["hook"], "recvmsg", "{reply}");
    assert_eq!(reply["reason"], "udp_reply", "{reply}");
    assert_eq!(reply["socket_cookie"], send["socket_cookie"], "{reply}");

    // The second datagram of the socket keeps its backend.
    probe.send("1").unwrap();
    probe.read_lines(1).unwrap();
    let again = next(&m, "the second datagram");
    assert_eq!(again["reason"], "udp_socket_backend", "{again}");
    assert_eq!(again["socket_cookie"], send["socket_cookie"], "{again}");
}

#[test]
fn filters_by_service_and_verdict() {
    let s = Setup::new("mon-filter", 3);
    let _agent = s.start_agent(&[]);
    let web_only = s.monitor(&["--service", "default/web"]);
    let refused_only = s.monitor(&["--verdict", "refused"]);
    let table = MonitorProcess::start_with_output(s.pins.path(), "table", &[] as &[&str]).unwrap();

    let web = Probe::run(Some(&s.cgroup), &["tcp", &format!("{}:80", s.web), "2"]).unwrap();
    assert_eq!(web, vec![Outcome::Reached("b0".into()); 2]);
    let empty = Probe::run(Some(&s.cgroup), &["tcp", &format!("{}:80", s.empty), "1"]).unwrap();
    assert_eq!(empty, vec![Outcome::Failed(ECONNREFUSED)]);

    let seen = web_only.events_until_quiet(Duration::from_secs(1));
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|e| e["service"] == "default/web"),
        "{seen:?}"
    );
    let seen = refused_only.events_until_quiet(Duration::from_secs(1));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["service"], "default/empty");

    // The table: a header, then one line per decision, naming Service and port.
    let mut lines = Vec::new();
    while let Some(line) = table.next_line(Duration::from_secs(1)) {
        lines.push(line);
    }
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("VERDICT"),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains("rewritten") && lines[1].contains("default/web:http"),
        "{lines:#?}"
    );
    assert!(
        lines[3].contains("refused") && lines[3].contains("default/empty:http"),
        "{lines:#?}"
    );
    assert!(
        lines[3].contains("no_backends") && lines[3].contains("lb-probe["),
        "{lines:#?}"
    );

    // `lbctl services` names the Services too, and `status` says a monitor is watching.
    let lbctl = |args: &[&str]| {
        let out = std::process::Command::new(testkit::probe::sibling_binary("lbctl"))
            .args(args)
            .arg("--pin-dir")
            .arg(s.pins.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let services: Value = serde_json::from_str(&lbctl(&["services", "-o", "json"])).unwrap();
    let web = services
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["frontend"] == format!("{}:80/tcp", s.web))
        .expect("web frontend listed");
    assert_eq!(web["service"], "default/web", "{web}");
    assert_eq!(web["port_name"], "http", "{web}");
    let table = lbctl(&["services"]);
    assert!(
        table.contains("SERVICE") && table.contains("default/dns:dns"),
        "{table}"
    );
    let status = lbctl(&["status"]);
    assert!(status.contains("monitor events: on"), "{status}");

    // A bad filter is refused with a clear message.
    let bad = std::process::Command::new(testkit::probe::sibling_binary("lbctl"))
        .args(["monitor", "--service", "web", "--pin-dir"])
        .arg(s.pins.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected NAMESPACE/NAME"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn two_monitors_see_every_event_and_a_killed_one_leaves_nothing_behind() {
    let s = Setup::new("mon-two", 4);
    let agent = s.start_agent(&[]);
    assert_eq!(
        switches(s.pins.path()).unwrap() & meta::DEBUG_EVENTS,
        0,
        "no monitor: no events"
    );
    let mut a = s.monitor(&[]);
    let b = s.monitor(&[]);
    assert_ne!(switches(s.pins.path()).unwrap() & meta::DEBUG_EVENTS, 0);

    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{}:80", s.web), "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into()); 3]);
    let cookies = |m: &MonitorProcess| -> Vec<u64> {
        let events = m.events_until_quiet(Duration::from_secs(1));
        events
            .iter()
            .map(|e| e["socket_cookie"].as_u64().unwrap())
            .collect()
    };
    let seen_a = cookies(&a);
    let seen_b = cookies(&b);
    assert_eq!(seen_a.len(), 3, "monitor A: {seen_a:?}");
    assert_eq!(seen_a, seen_b, "both monitors see the same three connects");

    // SIGKILL A: B keeps its events, the switch stays on for B.
    a.kill9();
    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{}:80", s.web), "1"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into())]);
    assert_eq!(cookies(&b).len(), 1);
    assert_ne!(switches(s.pins.path()).unwrap() & meta::DEBUG_EVENTS, 0);

    // SIGKILL B too: the switch goes off, nothing is left for the programs to write to.
    let mut b = b;
    b.kill9();
    assert!(
        wait_until(Duration::from_secs(5), || switches(s.pins.path()).unwrap()
            & meta::DEBUG_EVENTS
            == 0
            && plain_log(&agent).contains("monitor left monitors=0")),
        "the events switch stayed on after the last monitor was killed:\n{}",
        agent.log()
    );

    // And a new monitor works as the first did.
    let c = s.monitor(&[]);
    Probe::run(Some(&s.cgroup), &["tcp", &format!("{}:80", s.web), "1"]).unwrap();
    assert_eq!(
        next(&c, "a connect after the kills")["service"],
        "default/web"
    );
}

#[test]
fn count_exits_after_n_events_and_no_agent_is_a_clear_error() {
    let s = Setup::new("mon-count", 5);
    let agent = s.start_agent(&[]);
    let mut m = s.monitor(&["--count", "2"]);
    Probe::run(Some(&s.cgroup), &["tcp", &format!("{}:80", s.web), "3"]).unwrap();
    assert_eq!(
        m.wait(EVENT_WAIT),
        Some(true),
        "--count 2 exits after two events"
    );
    drop(agent);

    let out = std::process::Command::new(testkit::probe::sibling_binary("lbctl"))
        .args(["monitor", "--pin-dir"])
        .arg(s.pins.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("monitor socket") && err.contains("lbctl agent"),
        "{err}"
    );
}

/// The agent's log without terminal colours.
fn plain_log(agent: &AgentProcess) -> String {
    let log = agent.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines the agent logged from the kernel programs.
fn bpf_lines(agent: &AgentProcess) -> Vec<String> {
    plain_log(agent)
        .lines()
        .filter(|l| l.contains("lbctl::bpf"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn debug_logs_appear_with_debug_bpf_and_not_without_also_on_adopted_programs() {
    let s = Setup::new("mon-debug", 6);
    let mut plain = s.start_agent(&[]);
    assert_eq!(switches(s.pins.path()).unwrap() & meta::DEBUG_LOGS, 0);
    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{}:80", s.web), "2"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into()); 2]);
    Probe::run(Some(&s.cgroup), &["tcp", &format!("{}:80", s.empty), "1"]).unwrap();
    assert!(bpf_lines(&plain).is_empty(), "{:?}", bpf_lines(&plain));

    // A new agent with --debug-bpf adopts the programs the first one attached and pinned.
    plain.kill9();
    let debug = s.start_agent(&["--debug-bpf"]);
    assert!(
        plain_log(&debug).contains("installed=Adopted"),
        "{}",
        debug.log()
    );
    assert_ne!(switches(s.pins.path()).unwrap() & meta::DEBUG_LOGS, 0);
    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{}:80", s.web), "1"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into())]);
    Probe::run(Some(&s.cgroup), &["tcp", &format!("{}:80", s.empty), "1"]).unwrap();
    let backend = s.tcp.addr("b0");
    let logged = wait_until(EVENT_WAIT, || {
        let lines = bpf_lines(&debug);
        lines.iter().any(|l| {
            l.contains("rewritten hook=connect4")
                && l.contains(&format!("{}]:80", s.web))
                && l.contains(&format!("{}]:{}", backend.ip(), backend.port()))
        }) && lines
            .iter()
            .any(|l| l.contains("refused hook=connect4") && l.contains("reason=no_backends"))
    });
    assert!(logged, "no kernel debug lines:\n{}", debug.log());
}

#[test]
fn an_agent_killed_while_watched_ends_its_monitors_and_the_next_agent_turns_events_off() {
    let s = Setup::new("mon-agent-kill", 7);
    let mut agent = s.start_agent(&[]);
    let mut m = s.monitor(&[]);
    assert_ne!(switches(s.pins.path()).unwrap() & meta::DEBUG_EVENTS, 0);

    agent.kill9();
    assert_eq!(
        m.wait(EVENT_WAIT),
        Some(false),
        "a monitor whose agent is gone exits with an error"
    );
    // The dead agent could not turn the events off; connects still work meanwhile.
    assert_ne!(switches(s.pins.path()).unwrap() & meta::DEBUG_EVENTS, 0);
    let out = Probe::run(Some(&s.cgroup), &["tcp", &format!("{}:80", s.web), "1"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("b0".into())]);

    let _next = s.start_agent(&[]);
    assert_eq!(
        switches(s.pins.path()).unwrap(),
        0,
        "the next agent clears the switches its predecessor left on"
    );
}

#[test]
fn an_ipv6_connect_is_reported_from_connect6_with_ipv6_addresses() {
    let s = Setup::new("mon-v6", 8);
    let b6 = Backends::tcp("::1".parse().unwrap(), &["v6"]).unwrap();
    let vip = "fd00::97:8";
    let extra = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web6, namespace: default}}\nspec:\n  ipFamilies: [IPv6]\n  clusterIP: \"{vip}\"\n  clusterIPs: [\"{vip}\"]\n  ports: [{{name: http, port: 80, protocol: TCP, targetPort: {port}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web6-abc12\n  namespace: default\n  labels: {{kubernetes.io/service-name: web6}}\naddressType: IPv6\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n  - addresses: [\"::1\"]\n    nodeName: {NODE}\n    conditions: {{ready: true, serving: true, terminating: false}}\n",
        port = b6.addr("v6").port()
    );
    let mut yaml = fs::read_to_string(&s.manifest).unwrap();
    yaml.push_str(&extra);
    fs::write(&s.manifest, yaml).unwrap();
    let _agent = s.start_agent(&[]);
    let target = FrontendKey::new(format!("[{vip}]:80").parse().unwrap(), Protocol::Tcp);
    assert!(
        wait_until(Duration::from_secs(10), || matches!(
            inspect::lookup(s.pins.path(), target),
            Ok(inspect::Lookup::Rewritten { .. })
        )),
        "the IPv6 Service was not programmed"
    );
    let m = s.monitor(&["--service", "default/web6"]);

    let mut probe = Probe::spawn(Some(&s.cgroup), &["tcp", &format!("[{vip}]:80"), "1"]).unwrap();
    let pid = probe.pid();
    assert_eq!(probe.finish().unwrap(), vec![Outcome::Reached("v6".into())]);
    let e = next(&m, "the IPv6 connect");
    assert_eq!(e["verdict"], "rewritten", "{e}");
    assert_eq!(e["hook"], "connect6", "{e}");
    assert_eq!(e["service"], "default/web6", "{e}");
    assert_eq!(e["port_name"], "http", "{e}");
    assert_eq!(e["frontend"], format!("[{vip}]:80/tcp"), "{e}");
    assert_eq!(e["backend"], b6.addr("v6").to_string(), "{e}");
    assert_caller(&e, &s, pid);
}

/// `lb_fe_names` is an array indexed by frontend id: a frontend that goes away leaves an empty
/// element behind (never shown by `lbctl services` or the monitor), and the other frontends keep
/// their names.
#[test]
fn a_removed_frontends_name_is_emptied_and_the_others_keep_theirs() {
    use aya::maps::{Array, Map, MapData};
    use lbctl::monitor::names;
    let s = Setup::new("mon-names", 9);
    let agent = s.start_agent(&[]);
    let before = names::read(s.pins.path()).unwrap();
    assert_eq!(before.len(), 3, "{before:?}");
    let dns_id = *before
        .iter()
        .find(|(_, n)| n.name == "dns")
        .expect("the dns frontend is named")
        .0;

    // The dns Service and its slice leave the manifest.
    let text = fs::read_to_string(&s.manifest).unwrap();
    let kept: Vec<&str> = text
        .split("---\n")
        .filter(|doc| !doc.contains("name: dns"))
        .collect();
    fs::write(&s.manifest, kept.join("---\n")).unwrap();
    let gone = wait_until(Duration::from_secs(10), || {
        names::read(s.pins.path()).is_ok_and(|n| n.len() == 2 && !n.contains_key(&dns_id))
    });
    assert!(gone, "the name stayed:\n{}", agent.log());
    let after = names::read(s.pins.path()).unwrap();
    let kept_names: Vec<String> = after.values().map(names::ServiceName::service).collect();
    assert_eq!(kept_names.len(), 2);
    assert!(
        kept_names.contains(&"default/web".to_owned())
            && kept_names.contains(&"default/empty".to_owned()),
        "{after:?}"
    );
    for (id, name) in &before {
        if *id != dns_id {
            assert_eq!(after.get(id), Some(name), "id {id} kept its name");
        }
    }

    // The element itself is all zero.
    let data = MapData::from_pin(s.pins.path().join(lb_common::NAMES_MAP)).unwrap();
    let map: Array<MapData, lb_common::FrontendName> =
        Array::try_from(Map::from_map_data(data).unwrap()).unwrap();
    let raw = map.get(&dns_id, 0).unwrap();
    assert!(
        raw.namespace
            .iter()
            .chain(&raw.name)
            .chain(&raw.port_name)
            .all(|b| *b == 0),
        "{raw:?}"
    );
    assert!(!names::is_named(&raw));
}
