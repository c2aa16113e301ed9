//! `lbctl agent` in Kubernetes mode on the real kernel, against the in-test API server (list,
//! watch, bookmarks, 410 expiry over HTTP; no real kube-apiserver can be installed on these
//! machines, see docs/kubernetes-source.md). Watch events reprogram the node; an erroring API
//! server leaves the datapath untouched and the agent not ready; recovery converges.
#[path = "../../lbctl/tests/support/fake_apiserver.rs"]
mod fake_apiserver;

use std::{net::SocketAddr, time::Duration};

use fake_apiserver::FakeApiServer;
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

const VIP: &str = "10.96.0.20";

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}},
           "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}})
}

fn service(port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "svc", "namespace": "default"},
           "spec": {"clusterIP": VIP, "clusterIPs": [VIP],
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": port}]}})
}

fn slice(endpoint: SocketAddr) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "svc-abc12", "namespace": "default",
                        "labels": {"kubernetes.io/service-name": "svc"}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": endpoint.port(), "protocol": "TCP"}],
           "endpoints": [{"addresses": [endpoint.ip().to_string()], "nodeName": "node-a",
                          "conditions": {"ready": true}}]})
}

/// Status code of `GET path` on the agent's metrics server (0 when unreachable).
fn http_status(addr: SocketAddr, path: &str) -> u16 {
    http_request(addr, path).map_or(0, |(status, _)| status)
}

fn reaches(cgroup: &CgroupGuard, name: &str) -> bool {
    Probe::run(Some(cgroup), &["tcp", &format!("{VIP}:80"), "1"]).unwrap()
        == vec![Outcome::Reached(name.into())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_program_the_node_and_api_errors_never_flush_it() {
    let cgroup = CgroupGuard::new("kube").unwrap();
    let pins = PinDirGuard::new("kube");
    let b = Backends::tcp_same_port(&["b0", "b1"]).unwrap();
    let api = FakeApiServer::start().await;
    api.apply(&node());
    api.apply(&service(b.addr("b0").port()));
    api.apply(&slice(b.addr("b0")));

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
        &["--metrics-addr", &metrics.to_string()],
    );
    let agent = AgentProcess::start(&args).unwrap();

    let target = FrontendKey::new(format!("{VIP}:80").parse().unwrap(), Protocol::Tcp);
    let programmed = || match inspect::lookup(pins.path(), target) {
        Ok(inspect::Lookup::Rewritten { frontend }) => frontend.backends,
        _ => vec![],
    };
    let ok = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(15), || {
            programmed() == vec![b.addr("b0").to_string()]
        })
    });
    assert!(ok, "initial sync not programmed:\n{}", agent.log());
    assert!(tokio::task::block_in_place(|| reaches(&cgroup, "b0")));
    assert!(tokio::task::block_in_place(|| wait_until(
        Duration::from_secs(5),
        || http_status(metrics, "/readyz") == 200
    )));

    // A watch event: the endpoint moves to b1; a client follows within a second.
    api.apply(&slice(b.addr("b1")));
    assert!(
        tokio::task::block_in_place(|| wait_until(Duration::from_secs(1), || reaches(
            &cgroup, "b1"
        ))),
        "watch event not programmed within a second:\n{}",
        agent.log()
    );

    // The API server errors: not ready, the datapath stays as it is.
    api.fail_with(Some(500));
    assert!(
        tokio::task::block_in_place(|| wait_until(Duration::from_secs(10), || http_status(
            metrics, "/readyz"
        ) == 503)),
        "agent stayed ready while the API server failed:\n{}",
        agent.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        programmed(),
        vec![b.addr("b1").to_string()],
        "a failing API server must not flush the maps"
    );
    assert!(tokio::task::block_in_place(|| reaches(&cgroup, "b1")));

    // History compacted while failing: the agent relists (410) after recovery and converges.
    api.apply(&slice(b.addr("b0")));
    api.compact();
    api.fail_with(None);
    assert!(
        tokio::task::block_in_place(|| wait_until(Duration::from_secs(20), || reaches(
            &cgroup, "b0"
        ))),
        "did not converge after the API server recovered:\n{}",
        agent.log()
    );
    assert!(tokio::task::block_in_place(|| wait_until(
        Duration::from_secs(10),
        || http_status(metrics, "/readyz") == 200
    )));

    // The API server goes away entirely (connection refused) for a minute: the datapath stays
    // untouched and serving throughout, the agent is not ready; when it is back, a change made
    // meanwhile is picked up.
    api.go_offline().await;
    assert!(tokio::task::block_in_place(|| wait_until(
        Duration::from_secs(10),
        || http_status(metrics, "/readyz") == 503
    )));
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            programmed(),
            vec![b.addr("b0").to_string()],
            "an unreachable API server must not flush the maps"
        );
        assert!(tokio::task::block_in_place(|| reaches(&cgroup, "b0")));
    }
    api.apply(&slice(b.addr("b1")));
    api.go_online().await;
    assert!(
        // The watcher's backoff grows to 30 s (with jitter) during the outage.
        tokio::task::block_in_place(|| wait_until(Duration::from_secs(90), || reaches(
            &cgroup, "b1"
        ))),
        "did not converge after the API server came back:\n{}",
        agent.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
