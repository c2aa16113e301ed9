//! Incremental syncs on the real kernel, through the Kubernetes source (the in-test API
//! server): an endpoint change is programmed by rewriting only its Service's frontend; a
//! Service that gives up a frontend it shared hands it to the next claimant; and the resync's
//! full plan and full apply after those changes find nothing to write, so the incremental path
//! left exactly the maps a full apply produces.
#[path = "../../lbctl/tests/support/fake_apiserver.rs"]
mod fake_apiserver;

use std::{net::SocketAddr, time::Duration};

use fake_apiserver::{FakeApiServer, Kind};
use lbctl::{datapath::FrontendKey, inspect, plan::Protocol};
use serde_json::{Value, json};
use testkit::{
    agent::{AgentProcess, wait_until},
    backends::Backends,
    cgroup::CgroupGuard,
    lifecycle::{agent_args, free_port, http_request},
    pins::PinDirGuard,
    probe::{Outcome, Probe},
};

const SHARED: &str = "10.96.0.30";
const OTHER: &str = "10.96.0.31";

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": "node-a"},
           "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}})
}

fn service(name: &str, vip: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"clusterIP": vip, "clusterIPs": [vip],
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": port}]}})
}

fn slice(service: &str, endpoint: SocketAddr) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-abc12"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": endpoint.port(), "protocol": "TCP"}],
           "endpoints": [{"addresses": [endpoint.ip().to_string()], "nodeName": "node-a",
                          "conditions": {"ready": true}}]})
}

fn reaches(cgroup: &CgroupGuard, vip: &str, name: &str) -> bool {
    Probe::run(Some(cgroup), &["tcp", &format!("{vip}:80"), "1"]).unwrap()
        == vec![Outcome::Reached(name.into())]
}

/// The "datapath updated" lines of a JSON agent log, as their fields.
fn updates(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|v| v["fields"].clone())
        .filter(|f| f["message"] == "datapath updated")
        .collect()
}

/// `lbctl_last_sync_timestamp_seconds` (0 when unreadable).
fn last_sync(metrics: SocketAddr) -> f64 {
    let Ok((_, body)) = http_request(metrics, "/metrics") else {
        return 0.0;
    };
    body.lines()
        .find_map(|l| l.strip_prefix("lbctl_last_sync_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn wait(secs: u64, f: impl FnMut() -> bool) -> bool {
    tokio::task::block_in_place(|| wait_until(Duration::from_secs(secs), f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_applied_by_service_and_the_resync_finds_nothing_to_write() {
    let cgroup = CgroupGuard::new("incr").unwrap();
    let pins = PinDirGuard::new("incr");
    let b = Backends::tcp_same_port(&["b0", "b1", "b2", "b3"]).unwrap();
    let port = b.addr("b0").port();
    let api = FakeApiServer::start().await;
    api.apply(&node());
    // "a" and "b" claim the same frontend: same age (the test server stamps one time), so
    // namespace/name order gives it to "a".
    api.apply(&service("a", SHARED, port));
    api.apply(&slice("a", b.addr("b0")));
    api.apply(&service("b", SHARED, port));
    api.apply(&slice("b", b.addr("b2")));
    api.apply(&service("c", OTHER, port));
    api.apply(&slice("c", b.addr("b3")));

    let dir = std::env::temp_dir().join(testkit::unique_name("kubeconfig"));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: t, user: {{}}}}]\ncontexts: [{{name: t, context: {{cluster: t, user: t}}}}]\n\
             current-context: t\n",
            api.url()
        ),
    )
    .unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let args = agent_args(
        &["--kubeconfig", &kubeconfig.display().to_string()],
        pins.path(),
        cgroup.path(),
        &[
            "--metrics-addr",
            &metrics.to_string(),
            "--resync-seconds",
            "1",
            "--log-format",
            "json",
        ],
    );
    let agent = AgentProcess::start(&args).unwrap();
    let shared = FrontendKey::new(format!("{SHARED}:80").parse().unwrap(), Protocol::Tcp);
    let programmed = |key| match inspect::lookup(pins.path(), key) {
        Ok(inspect::Lookup::Rewritten { frontend }) => frontend.backends,
        _ => vec![],
    };
    assert!(
        wait(15, || programmed(shared) == vec![b.addr("b0").to_string()]),
        "initial sync not programmed:\n{}",
        agent.log()
    );
    assert!(wait(5, || reaches(&cgroup, SHARED, "b0")));
    assert!(wait(5, || reaches(&cgroup, OTHER, "b3")));
    let first = updates(&agent.log());
    assert_eq!(first.len(), 1, "one full sync at start: {first:?}");
    assert_eq!(first[0]["sync"], "full");
    assert_eq!(first[0]["written"], 2);

    // An endpoint change of "a": only its frontend is written.
    api.apply(&slice("a", b.addr("b1")));
    assert!(
        wait(5, || reaches(&cgroup, SHARED, "b1")),
        "endpoint change not programmed:\n{}",
        agent.log()
    );
    // The agent logs a sync once it has also named what it wrote: after the maps change.
    assert!(
        wait(5, || updates(&agent.log()).len() >= 2),
        "no update logged for the endpoint change:\n{}",
        agent.log()
    );
    let seen = updates(&agent.log());
    let change = seen.last().unwrap();
    assert_eq!(change["sync"], "changed", "{seen:?}");
    assert_eq!(change["written"], 1, "{seen:?}");
    assert_eq!(change["deleted"], 0, "{seen:?}");

    // "a" goes: the shared frontend passes to "b" (its backend b2), in an incremental sync.
    api.delete(Kind::Service, "default", "a").unwrap();
    api.delete(Kind::EndpointSlice, "default", "a-abc12")
        .unwrap();
    assert!(
        wait(5, || reaches(&cgroup, SHARED, "b2")),
        "the shared frontend did not pass to b:\n{}",
        agent.log()
    );
    assert!(reaches(&cgroup, OTHER, "b3"));
    assert!(
        wait(5, || updates(&agent.log()).len() >= 3),
        "no update logged for the deletion:\n{}",
        agent.log()
    );
    let since_change = updates(&agent.log()).len();
    assert!(
        updates(&agent.log())[1..]
            .iter()
            .all(|u| u["sync"] == "changed"),
        "{:?}",
        updates(&agent.log())
    );

    // Resyncs (every second) plan and apply everything again: they must find nothing to
    // write. Each one that succeeds moves the last-sync time; incremental syncs without
    // changes do not run at all.
    let before = last_sync(metrics);
    assert!(before > 0.0, "no last-sync time");
    assert!(
        wait(10, || last_sync(metrics) >= before + 2.0),
        "no resync ran:\n{}",
        agent.log()
    );
    let after = updates(&agent.log());
    assert_eq!(
        after.len(),
        since_change,
        "a resync after incremental changes wrote something: {:?}",
        &after[since_change..]
    );
    assert_eq!(programmed(shared), vec![b.addr("b2").to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
}
