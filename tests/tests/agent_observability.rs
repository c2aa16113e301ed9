//! What an operator sees of a running `lbctl agent` on the real kernel: per-Service counters
//! after real connects through the datapath, the refusing gauge and its log lines (once, not at
//! every resync), the network programming duration from an annotated EndpointSlice, and
//! `/healthz` failing while the reconcile loop is stuck.
use std::{
    fs,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use testkit::{
    agent::{AgentProcess, wait_until},
    backends::Backends,
    lifecycle::{Endpoint, NODE, Node, free_port, http_request, node_yaml, service_yaml},
    probe::{Outcome, Probe},
};

const ECONNREFUSED: i32 = 111;
const WEB_VIP: &str = "10.96.1.10";
const LOCAL_VIP: &str = "10.96.1.11";

/// One endpoint: address and node.
type Ep<'a> = (SocketAddr, &'a str);

/// A Service `shop/NAME` with one port `http` and one EndpointSlice of ready endpoints
/// (optionally stamped with a trigger time).
fn service(name: &str, vip: &str, itp: &str, eps: &[Ep], trigger: Option<&str>) -> String {
    let endpoints: Vec<Endpoint> = eps
        .iter()
        .map(|(addr, node)| Endpoint::ready(*addr, node))
        .collect();
    let annotations: Vec<(&str, &str)> = trigger
        .map(|t| ("endpoints.kubernetes.io/last-change-trigger-time", t))
        .into_iter()
        .collect();
    service_yaml("shop", name, vip, itp, &endpoints, &annotations)
}

fn nodes() -> String {
    node_yaml(NODE, "192.0.2.1") + &node_yaml("node-b", "192.0.2.2")
}

/// A Service the engine skips (its cluster IP is not an address).
const BROKEN: &str = r#"---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: shop}
spec:
  clusterIP: not-an-ip
  ports: [{name: http, port: 80, protocol: TCP}]
"#;

/// A scratch node whose agents resync every second and serve metrics on a free port.
struct Observed {
    node: Node,
    metrics: SocketAddr,
}

impl Observed {
    fn new(tag: &str) -> Self {
        Self {
            node: Node::new(tag).unwrap(),
            metrics: SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port"))),
        }
    }

    fn write(&self, yaml: &str) {
        self.node.write_manifest(yaml).unwrap();
    }

    fn agent(&self, extra: &[&str]) -> AgentProcess {
        self.agent_with_env(extra, &[])
    }

    fn agent_with_env(&self, extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> AgentProcess {
        let metrics = self.metrics.to_string();
        let mut args = vec!["--resync-seconds", "1", "--metrics-addr", &metrics];
        args.extend_from_slice(extra);
        self.node.agent_with_env(&args, env).unwrap()
    }

    /// `GET path`: status and body, or `None` when not listening.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_request(self.metrics, path).ok()
    }

    fn scrape(&self) -> String {
        match self.get("/metrics") {
            Some((200, body)) => body,
            other => panic!("GET /metrics: {other:?}"),
        }
    }

    /// The value of one sample in a fresh scrape.
    fn sample(&self, series: &str) -> Option<f64> {
        sample(&self.scrape(), series)
    }

    /// Waits until a scrape has the sample `series` (the agent has named the frontends).
    fn wait_for_series(&self, series: &str, agent: &AgentProcess) {
        assert!(
            wait_until(Duration::from_secs(15), || self
                .get("/metrics")
                .is_some_and(|(_, body)| sample(&body, series).is_some())),
            "{}",
            agent.log()
        );
    }

    /// Waits until the agent has completed `n` more syncs than now.
    fn wait_for_syncs(&self, n: f64, agent: &AgentProcess) {
        let start = self.sample(SYNCS).unwrap_or(0.0);
        assert!(
            wait_until(Duration::from_secs(20), || self
                .sample(SYNCS)
                .is_some_and(|c| c >= start + n)),
            "the agent did not sync {n} more times:\n{}",
            agent.log()
        );
    }
}

const SYNCS: &str = "lbctl_sync_duration_seconds_count";

fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn service_series(service: &str, verdict: &str) -> String {
    format!(
        "lbctl_service_connects_total{{namespace=\"shop\",service=\"{service}\",port_name=\"http\",verdict=\"{verdict}\"}}"
    )
}

fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

fn connect(obs: &Observed, vip: &str, n: usize) -> Vec<Outcome> {
    Probe::run(
        Some(&obs.node.cgroup),
        &["tcp", &format!("{vip}:80"), &n.to_string()],
    )
    .unwrap()
}

#[test]
fn per_service_counters_and_the_refusing_gauge_follow_real_connects_and_log_once() {
    let node = Observed::new("obs-counters");
    let b = Backends::tcp_same_port(&["b0"]).unwrap();
    let b0 = b.addr("b0");
    // web: Cluster, its endpoint on this node. local: Local, its only endpoint on node-b.
    node.write(
        &[
            nodes().as_str(),
            &service("web", WEB_VIP, "Cluster", &[(b0, NODE)], None),
            &service("local", LOCAL_VIP, "Local", &[(b0, "node-b")], None),
            BROKEN,
        ]
        .concat(),
    );
    let agent = node.agent(&[]);
    // The series exist once the agent has named the programmed frontends.
    node.wait_for_series(&service_series("local", "refused"), &agent);

    assert_eq!(
        connect(&node, WEB_VIP, 5),
        vec![Outcome::Reached("b0".into()); 5]
    );
    assert_eq!(
        connect(&node, LOCAL_VIP, 2),
        vec![Outcome::Failed(ECONNREFUSED); 2]
    );

    let body = node.scrape();
    assert_eq!(
        sample(&body, &service_series("web", "rewritten")),
        Some(5.0),
        "{body}"
    );
    assert_eq!(sample(&body, &service_series("web", "refused")), Some(0.0));
    assert_eq!(
        sample(&body, &service_series("local", "refused")),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, &service_series("local", "rewritten")),
        Some(0.0)
    );
    // Only programmed Service ports have series: the skipped one has none.
    assert!(!body.contains("service=\"broken\""), "{body}");
    assert_eq!(
        sample(&body, r#"lbctl_frontends_refusing{traffic_policy="Local"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            r#"lbctl_frontends_refusing{traffic_policy="Cluster"}"#
        ),
        Some(0.0)
    );
    assert_eq!(sample(&body, "lbctl_skipped_objects"), Some(1.0));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last_sync = sample(&body, "lbctl_last_sync_timestamp_seconds").expect("last sync");
    assert!(last_sync > 0.0 && last_sync <= now, "{last_sync} vs {now}");
    let object = lbctl::datapath::object_identity().expect("the agent embeds its object");
    assert!(
        body.contains(&format!("object_sha256=\"{object}\"")),
        "{body}"
    );

    // Several resyncs later, the refusal and the skipped Service were each logged once.
    node.wait_for_syncs(3.0, &agent);
    let log = agent.log();
    assert_eq!(lines_with(&log, "frontend refuses connections"), 1, "{log}");
    let refusal = log
        .lines()
        .find(|l| l.contains("frontend refuses connections"))
        .unwrap();
    for needle in [
        "10.96.1.11:80/tcp",
        "shop/local",
        "internalTrafficPolicy: Local and no ready endpoint on this node (1 ready on other nodes)",
    ] {
        assert!(refusal.contains(needle), "{needle} not in: {refusal}");
    }
    assert_eq!(
        lines_with(&log, "skipped object=Service shop/broken"),
        1,
        "{log}"
    );

    // The local endpoint moves to this node and the broken Service is fixed away: one line
    // each, the gauge drops, and the counters go on from where they were.
    node.write(
        &[
            nodes().as_str(),
            &service("web", WEB_VIP, "Cluster", &[(b0, NODE)], None),
            &service("local", LOCAL_VIP, "Local", &[(b0, NODE)], None),
        ]
        .concat(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || node
            .sample(r#"lbctl_frontends_refusing{traffic_policy="Local"}"#)
            == Some(0.0)),
        "{}",
        agent.log()
    );
    assert_eq!(
        connect(&node, LOCAL_VIP, 1),
        vec![Outcome::Reached("b0".into())]
    );
    let body = node.scrape();
    assert_eq!(
        sample(&body, &service_series("local", "rewritten")),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, &service_series("local", "refused")),
        Some(2.0)
    );
    assert_eq!(sample(&body, "lbctl_skipped_objects"), Some(0.0));
    node.wait_for_syncs(2.0, &agent);
    let log = agent.log();
    assert_eq!(lines_with(&log, "frontend has backends again"), 1, "{log}");
    assert_eq!(
        lines_with(&log, "no longer skipped object=Service shop/broken"),
        1,
        "{log}"
    );
    assert_eq!(lines_with(&log, "frontend refuses connections"), 1, "{log}");
}

/// Enough Services that the agent reads their counters as an id range in batches (it reads a
/// few ids one lookup each): the baselines a restarted agent reads, and every scrape, go through
/// the batch read.
const MANY: usize = 150;

fn many_vip(i: usize) -> String {
    format!("10.96.2.{}", i + 1)
}

#[test]
fn per_service_counters_of_many_services_start_from_the_kernel_counts_after_a_restart() {
    let node = Observed::new("obs-many");
    let b = Backends::tcp_same_port(&["b0"]).unwrap();
    let b0 = b.addr("b0");
    let mut yaml = nodes();
    for i in 0..MANY {
        yaml += &service(
            &format!("svc-{i}"),
            &many_vip(i),
            "Cluster",
            &[(b0, NODE)],
            None,
        );
    }
    node.write(&yaml);
    let (first, last) = ("svc-0", format!("svc-{}", MANY - 1));
    let counts = |node: &Observed| {
        let body = node.scrape();
        (
            sample(&body, &service_series(first, "rewritten")),
            sample(&body, &service_series(&last, "rewritten")),
        )
    };

    let mut agent = node.agent(&[]);
    node.wait_for_series(&service_series(&last, "rewritten"), &agent);
    assert_eq!(
        connect(&node, &many_vip(0), 3),
        vec![Outcome::Reached("b0".into()); 3]
    );
    assert_eq!(
        connect(&node, &many_vip(MANY - 1), 2),
        vec![Outcome::Reached("b0".into()); 2]
    );
    assert_eq!(counts(&node), (Some(3.0), Some(2.0)), "{}", agent.log());
    assert!(
        agent.terminate(),
        "the agent did not exit:\n{}",
        agent.log()
    );

    // The kernel's counters survive the restart; the new agent counts from their values then.
    let agent = node.agent(&[]);
    node.wait_for_series(&service_series(&last, "rewritten"), &agent);
    assert_eq!(counts(&node), (Some(0.0), Some(0.0)), "{}", agent.log());
    assert_eq!(
        connect(&node, &many_vip(0), 1),
        vec![Outcome::Reached("b0".into())]
    );
    assert_eq!(
        connect(&node, &many_vip(MANY - 1), 4),
        vec![Outcome::Reached("b0".into()); 4]
    );
    assert_eq!(counts(&node), (Some(1.0), Some(4.0)), "{}", agent.log());
    assert_eq!(
        node.sample(r#"lbctl_errors_total{kind="read_counters"}"#),
        Some(0.0)
    );
}

/// RFC 3339 in UTC with nanoseconds, as the EndpointSlice controller writes it.
fn rfc3339(at: SystemTime) -> String {
    let d = at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let ts = k8s_openapi::jiff::Timestamp::new(
        i64::try_from(d.as_secs()).unwrap(),
        i32::try_from(d.subsec_nanos()).unwrap(),
    )
    .unwrap();
    ts.to_string()
}

#[test]
fn network_programming_duration_is_measured_from_the_slice_trigger_time() {
    let node = Observed::new("obs-programming");
    let b = Backends::tcp_same_port(&["b0", "b1"]).unwrap();
    let (b0, b1) = (b.addr("b0"), b.addr("b1"));
    const COUNT: &str = "lbctl_network_programming_duration_seconds_count";
    const SUM: &str = "lbctl_network_programming_duration_seconds_sum";
    // A trigger time from before the agent started measures its absence, not programming.
    let before_start = "2020-01-01T00:00:00Z";
    let write = |eps: &[Ep], trigger: &str| {
        node.write(
            &[
                nodes().as_str(),
                &service("web", WEB_VIP, "Cluster", eps, Some(trigger)),
            ]
            .concat(),
        );
    };
    write(&[(b0, NODE)], before_start);
    let agent = node.agent(&[]);
    node.wait_for_series(&service_series("web", "rewritten"), &agent);
    assert_eq!(node.sample(COUNT), Some(0.0));

    // The controller stamps an update with the time of the pod change that caused it.
    let trigger = SystemTime::now();
    write(&[(b0, NODE), (b1, NODE)], &rfc3339(trigger));
    assert!(
        wait_until(Duration::from_secs(10), || node.sample(COUNT) == Some(1.0)),
        "{}",
        agent.log()
    );
    let observed = node.sample(SUM).expect("sum");
    let since_trigger = trigger.elapsed().unwrap().as_secs_f64();
    // Measured from the trigger to the apply: not negative, and not more than has elapsed.
    assert!(
        (0.0..=since_trigger).contains(&observed),
        "{observed} s observed, {since_trigger} s since the trigger"
    );
    let mut seen = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        seen = connect(&node, WEB_VIP, 1);
        seen == vec![Outcome::Reached("b1".into())]
    }));

    // Resyncs see the same trigger time again: it was measured once.
    node.wait_for_syncs(3.0, &agent);
    assert_eq!(node.sample(COUNT), Some(1.0));
    // A change stamped before the start is programmed but not measured.
    write(&[(b1, NODE)], before_start);
    assert!(wait_until(Duration::from_secs(10), || {
        connect(&node, WEB_VIP, 3) == vec![Outcome::Reached("b1".into()); 3]
    }));
    node.wait_for_syncs(2.0, &agent);
    assert_eq!(node.sample(COUNT), Some(1.0));
}

#[test]
fn healthz_fails_while_the_reconcile_loop_is_stuck() {
    let node = Observed::new("obs-healthz");
    let b = Backends::tcp_same_port(&["b0"]).unwrap();
    node.write(
        &[
            nodes().as_str(),
            &service("web", WEB_VIP, "Cluster", &[(b.addr("b0"), NODE)], None),
        ]
        .concat(),
    );
    let stall = node.node.dir.path().join("stall");
    let mut agent = node.agent_with_env(
        &["--stall-seconds", "2"],
        &[(lbctl::agent::STALL_FILE_ENV, stall.as_os_str())],
    );
    assert!(
        wait_until(Duration::from_secs(15), || node
            .get("/healthz")
            .is_some_and(|(status, _)| status == 200)
            && node
                .sample("lbctl_last_sync_timestamp_seconds")
                .unwrap_or(0.0)
                > 0.0),
        "{}",
        agent.log()
    );

    // The loop hangs before its next sync, as a stuck apply would.
    fs::write(&stall, "").unwrap();
    let mut health = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            health = node.get("/healthz");
            health.as_ref().is_some_and(|(status, _)| *status == 503)
        }),
        "/healthz stayed {health:?}:\n{}",
        agent.log()
    );
    let (_, body) = health.unwrap();
    assert!(
        body.starts_with("stuck: the reconcile loop has not completed a turn for")
            && body.contains("threshold 2 s"),
        "{body}"
    );
    // The process is alive and still serves metrics: only the loop is stuck.
    assert!(agent.running());
    assert_eq!(node.get("/metrics").map(|(s, _)| s), Some(200));
    // While stuck, edits are not programmed. (The edit empties the Service: connects to it are
    // then refused by the datapath, and never leave the machine.)
    let syncs = node.sample(SYNCS);
    node.write(
        &[
            nodes().as_str(),
            &service("web", WEB_VIP, "Cluster", &[], None),
        ]
        .concat(),
    );
    thread_sleep_a_resync();
    assert_eq!(node.sample(SYNCS), syncs);

    // The loop turns again: healthy, and the edit is programmed.
    fs::remove_file(&stall).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || node
            .get("/healthz")
            .is_some_and(|(status, _)| status == 200)),
        "{}",
        agent.log()
    );
    assert!(wait_until(Duration::from_secs(10), || {
        connect(&node, WEB_VIP, 1) == vec![Outcome::Failed(ECONNREFUSED)]
    }));
}

/// Lets a resync period (1 s in these tests) pass; used only to give a stalled loop the chance
/// to (wrongly) sync, never as a pass/fail timing.
fn thread_sleep_a_resync() {
    std::thread::sleep(Duration::from_millis(1500));
}

/// Keeping passes count the connections they kept here.
const KEPT: &str = "lbctl_tcp_translations_kept_total";

/// A `serve-hold` server named h0 on a free loopback port, listening.
fn hold_server() -> (SocketAddr, Probe) {
    let at = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut server = Probe::spawn(None, &["serve-hold", "h0", &at.to_string()]).unwrap();
    assert_eq!(server.read_lines(1).unwrap(), ["listening"]);
    (at, server)
}

/// A TCP connection to `service` from the node's cgroup that never asks for its peer by itself.
fn hold_quietly(node: &Observed, service: &str) -> Probe {
    let mut held =
        Probe::spawn(Some(&node.node.cgroup), &["hold", "tcp", service, "quiet"]).unwrap();
    assert_eq!(held.read_lines(1).unwrap(), ["connected"]);
    held
}

fn wait_for_a_kept_connection(node: &Observed, agent: &AgentProcess) {
    assert!(
        wait_until(Duration::from_secs(10), || node
            .sample(KEPT)
            .is_some_and(|kept| kept >= 1.0)),
        "no pass kept the held connection:\n{}",
        agent.log()
    );
}

fn assert_no_keep_errors(node: &Observed, agent: &AgentProcess) {
    assert_eq!(
        node.sample("lbctl_errors_total{kind=\"keep\"}"),
        Some(0.0),
        "{}",
        agent.log()
    );
}

/// A pass is also due a second after the last one once any translation happened: a lone
/// connection is kept without the quarter of `lb_tcp_recent`'s capacity of connects (16,384 at
/// the default) that the count alone waits for.
#[test]
fn the_agent_keeps_a_lone_tcp_connection_within_seconds() {
    const HELD_VIP: &str = "10.96.1.13";
    let node = Observed::new("obs-keep-time");
    let (held_at, _server) = hold_server();
    node.write(
        &[
            nodes().as_str(),
            &service("held", HELD_VIP, "Cluster", &[(held_at, NODE)], None),
        ]
        .concat(),
    );
    let agent = node.agent(&[]);
    node.wait_for_series(&service_series("held", "rewritten"), &agent);
    assert_eq!(node.sample(KEPT), Some(0.0));

    let service = format!("{HELD_VIP}:80");
    let mut held = hold_quietly(&node, &service);
    wait_for_a_kept_connection(&node, &agent);
    held.send("peer").unwrap();
    assert_eq!(held.read_lines(1).unwrap(), [format!("peer {service}")]);
    held.finish_raw().unwrap();
    assert_no_keep_errors(&node, &agent);
}

/// The agent keeps the translation of a long-lived TCP connection: once a quarter of
/// `lb_tcp_recent`'s capacity (here 64 elements) of newer translations happened (or a second
/// after the last pass, whichever comes first: which pass is due when is the table test of
/// `lbctl::agent::keep`), its keeping pass copies the translation into the socket's storage and
/// counts it in `lbctl_tcp_translations_kept_total`; after hundreds of newer connects took every element
/// over, the connection still reports the service as its peer and works. The translations that
/// make the pass due are UDP datagrams, which write no element: a TCP connect between the held
/// one and the pass could take its element over first (consecutive cookies of another CPU run
/// through the 64 elements from anywhere), which a pass cannot prevent.
#[test]
fn the_agent_keeps_the_translation_of_a_long_lived_tcp_connection() {
    const HELD_VIP: &str = "10.96.1.12";
    let node = Observed::new("obs-keep");
    let (held_at, _server) = hold_server();
    let b = Backends::tcp_same_port(&["b0"]).unwrap();
    let u = Backends::udp(std::net::IpAddr::from([127, 0, 0, 1]), &["u0"]).unwrap();
    node.write(
        &[
            nodes().as_str(),
            &service("held", HELD_VIP, "Cluster", &[(held_at, NODE)], None),
            &service("web", WEB_VIP, "Cluster", &[(b.addr("b0"), NODE)], None),
            &service("dns", LOCAL_VIP, "Cluster", &[(u.addr("u0"), NODE)], None)
                .replace("protocol: TCP", "protocol: UDP"),
        ]
        .concat(),
    );
    let agent = node.agent(&["--max-tcp-recent", "64"]);
    node.wait_for_series(&service_series("held", "rewritten"), &agent);
    assert_eq!(node.sample(KEPT), Some(0.0));

    let service = format!("{HELD_VIP}:80");
    // Quiet: a socket that asks for its peer keeps its translation by itself.
    let mut held = hold_quietly(&node, &service);
    // 16 translations make a pass due (the agent looks every 250 ms): datagrams.
    let mut datagrams = Probe::spawn(
        Some(&node.node.cgroup),
        &["dgram-many", &format!("{LOCAL_VIP}:80"), "20"],
    )
    .unwrap();
    assert_eq!(datagrams.read_lines(1).unwrap(), ["done 20 0"]);
    datagrams.finish_raw().unwrap();
    wait_for_a_kept_connection(&node, &agent);
    let out = connect(&node, WEB_VIP, 640);
    assert!(
        out.iter().all(|o| *o == Outcome::Reached("b0".into())),
        "{out:?}"
    );

    held.send("2").unwrap();
    assert_eq!(held.read_lines(2).unwrap(), ["ok h0", "ok h0"]);
    held.send("peer").unwrap();
    assert_eq!(
        held.read_lines(1).unwrap(),
        [format!("peer {service}")],
        "the held connection's peer is still the service"
    );
    held.finish_raw().unwrap();
    assert_no_keep_errors(&node, &agent);
}
