//! The Kubernetes source against an in-test API server that speaks list/watch/bookmarks/410
//! over HTTP (see `support/fake_apiserver.rs`).

mod support;

use std::{collections::BTreeMap, future::Future, time::Duration};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use lbctl::{
    model::Inventory,
    source::Dirty,
    source::kube::{
        KubeSource, KubeSourceConfig, KubeSourceError, ResourceStats, SourceState, WatchedResource,
    },
};
use support::fake_apiserver::{FakeApiServer, FakeConfig, Kind};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);

fn service(ns: &str, name: &str, ip: &str, port: i32) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(ns: &str, name: &str, svc: &str, ips: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                svc.to_string(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.to_string()],
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn node(name: &str, zone: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "topology.kubernetes.io/zone".to_string(),
                zone.to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `namespace/name` of converted objects (Nodes have no namespace).
trait Named {
    fn namespaced_name(&self) -> String;
}

impl Named for lbctl::model::Service {
    fn namespaced_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name())
    }
}

impl Named for lbctl::model::EndpointSlice {
    fn namespaced_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Named for lbctl::model::Node {
    fn namespaced_name(&self) -> String {
        format!("/{}", self.name.as_deref().unwrap_or(""))
    }
}

fn names<K: Named>(objects: &[std::sync::Arc<K>]) -> Vec<String> {
    objects.iter().map(|o| o.namespaced_name()).collect()
}

/// (namespace/name, content) of every object: equal fingerprints mean equal content.
fn fingerprint(inv: &Inventory) -> Vec<(String, String)> {
    fn of<K: Named + std::fmt::Debug>(
        objects: &[std::sync::Arc<K>],
        out: &mut Vec<(String, String)>,
    ) {
        for o in objects {
            out.push((
                format!("{}/{}", std::any::type_name::<K>(), o.namespaced_name()),
                format!("{o:?}"),
            ));
        }
    }
    let mut out = Vec::new();
    of(&inv.services, &mut out);
    of(&inv.endpoint_slices, &mut out);
    of(&inv.nodes, &mut out);
    out
}

fn stats_of(source: &KubeSource, resource: WatchedResource) -> ResourceStats {
    source
        .stats()
        .into_iter()
        .find(|(r, _)| *r == resource)
        .map(|(_, s)| s)
        .expect("stats for every resource")
}

/// Polls `check` until it returns true, or panics with `what` and the source's state.
async fn wait_until(source: &KubeSource, what: &str, mut check: impl FnMut(&KubeSource) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check(source) {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}\nstate: {:?}\nstats: {:?}\nsnapshot: {:?}",
                source.state(),
                source.stats(),
                fingerprint(&source.snapshot())
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn populate(server: &FakeApiServer) {
    server.apply(&service("default", "web", "10.96.0.10", 80));
    server.apply(&service("kube-system", "dns", "10.96.0.53", 53));
    server.apply(&slice(
        "default",
        "web-abc",
        "web",
        &["10.244.1.5", "10.244.2.7"],
    ));
    server.apply(&slice("kube-system", "dns-xyz", "dns", &["10.244.1.2"]));
    server.apply(&node("node-a", "zone-1"));
    server.apply(&node("node-b", "zone-2"));
}

fn start(server: &FakeApiServer, node: &str) -> (KubeSource, watch::Receiver<SourceState>) {
    let config = KubeSourceConfig {
        watch_timeout_secs: Some(20),
        ..KubeSourceConfig::new(node)
    };
    KubeSource::start_with(server.client(), config).expect("start source")
}

async fn synced(server: &FakeApiServer, node: &str) -> (KubeSource, watch::Receiver<SourceState>) {
    let (source, mut rx) = start(server, node);
    within("initial sync", rx.wait_for(|s| s.synced && s.connected))
        .await
        .expect("source alive");
    (source, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_only_after_all_three_initial_lists() {
    // Pages of two items: the watcher must follow `continue` to see everything.
    let server = FakeApiServer::start_with(FakeConfig {
        page_cap: Some(2),
        ..FakeConfig::default()
    })
    .await;
    populate(&server);
    for i in 0..5 {
        server.apply(&service(
            "paged",
            &format!("svc-{i}"),
            &format!("10.96.1.{i}"),
            80,
        ));
    }
    server.hold_lists(Kind::EndpointSlice, true);

    let (source, rx) = start(&server, "node-a");
    wait_until(&source, "services and nodes listed", |s| {
        stats_of(s, WatchedResource::Services).synced && stats_of(s, WatchedResource::Nodes).synced
    })
    .await;
    // Give the held list every chance to be (wrongly) counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = source.state();
    assert!(
        !state.synced,
        "synced before the EndpointSlice list completed: {state:?}"
    );
    assert!(!rx.borrow().synced);
    assert!(!stats_of(&source, WatchedResource::EndpointSlices).synced);
    assert!(source.snapshot().endpoint_slices.is_empty());

    server.hold_lists(Kind::EndpointSlice, false);
    wait_until(&source, "synced", |s| s.state().synced).await;
    let inv = source.snapshot();
    assert_eq!(
        names(&inv.services),
        [
            "default/web",
            "kube-system/dns",
            "paged/svc-0",
            "paged/svc-1",
            "paged/svc-2",
            "paged/svc-3",
            "paged/svc-4"
        ]
    );
    assert_eq!(
        names(&inv.endpoint_slices),
        ["default/web-abc", "kube-system/dns-xyz"]
    );
    assert_eq!(names(&inv.nodes), ["/node-a"]);
    let web = &inv.endpoint_slices[0];
    assert_eq!(web.endpoints.len(), 2);
    assert_eq!(
        web.endpoints.get(1).and_then(|ep| ep.ip()),
        Some("10.244.2.7".parse().unwrap())
    );
    assert_eq!(
        inv.services[0]
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ips.first()),
        Some(&lbctl::model::Address::Ip("10.96.0.10".parse().unwrap()))
    );

    // 7 services in pages of 2: 4 list requests, the later ones with a continue token.
    let lists = server.lists(Kind::Service);
    assert_eq!(lists.len(), 4, "{lists:?}");
    assert!(lists[1..].iter().all(|r| r.query.contains_key("continue")));
    // Every page asks for the source's default page size (the server gives fewer here).
    let limit = lbctl::source::kube::DEFAULT_LIST_PAGE_SIZE.to_string();
    assert!(
        lists.iter().all(|r| r.query.get("limit") == Some(&limit)),
        "{lists:?}"
    );
    // Default list-then-watch mode, watches with bookmarks, from the listed version.
    let watches = server.watches(Kind::Service);
    assert!(!watches.is_empty());
    let w = &watches[0].query;
    assert_eq!(
        w.get("allowWatchBookmarks").map(String::as_str),
        Some("true")
    );
    assert_eq!(w.get("timeoutSeconds").map(String::as_str), Some("20"));
    assert!(!w.contains_key("sendInitialEvents"));
    let rv: u64 = w["resourceVersion"]
        .parse()
        .expect("numeric resourceVersion");
    assert!(rv >= 1000);
    let state = source.state();
    assert!(state.connected && state.last_error.is_none(), "{state:?}");
    for (resource, stats) in source.stats() {
        assert_eq!(stats.lists, 1, "{resource}");
        assert_eq!(stats.errors, 0, "{resource}");
    }
    assert_eq!(stats_of(&source, WatchedResource::Services).events, 7);
    assert_eq!(stats_of(&source, WatchedResource::Services).objects, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_modify_delete_are_reflected_and_signalled() {
    let server = FakeApiServer::start().await;
    populate(&server);
    let (source, mut rx) = synced(&server, "node-a").await;
    let g0 = rx.borrow_and_update().generation;

    // Add.
    server.apply(&service("default", "api", "10.96.0.20", 443));
    // The store changes before the generation is bumped, so each step waits for both: the
    // snapshot showing the change, and the generation counting it.
    let g_added = within("add signalled", rx.wait_for(|s| s.generation > g0))
        .await
        .expect("alive")
        .generation;
    assert_eq!(g_added, g0 + 1, "one generation for one change");
    wait_until(&source, "api added", |s| {
        names(&s.snapshot().services).contains(&"default/api".to_string())
    })
    .await;

    // Modify: new port, and one more endpoint.
    server.apply(&service("default", "api", "10.96.0.20", 8443));
    server.apply(&slice(
        "default",
        "web-abc",
        "web",
        &["10.244.1.5", "10.244.2.7", "10.244.3.9"],
    ));
    wait_until(&source, "api and web-abc modified", |s| {
        let inv = s.snapshot();
        let api_port = inv
            .services
            .iter()
            .find(|svc| svc.name.as_deref() == Some("api"))
            .and_then(|svc| svc.spec.as_ref()?.ports.first().map(|p| p.port));
        let web_endpoints = inv
            .endpoint_slices
            .iter()
            .find(|es| &*es.name == "web-abc")
            .map(|es| es.endpoints.len());
        api_port == Some(8443) && web_endpoints == Some(3)
    })
    .await;
    let g1 = within(
        "both modifications signalled",
        rx.wait_for(|s| s.generation >= g_added + 2),
    )
    .await
    .expect("alive")
    .generation;

    // Delete.
    server
        .delete(Kind::Service, "default", "web")
        .expect("web exists");
    server
        .delete(Kind::EndpointSlice, "kube-system", "dns-xyz")
        .expect("dns-xyz exists");
    wait_until(&source, "deletions", |s| {
        let inv = s.snapshot();
        names(&inv.services) == ["default/api", "kube-system/dns"]
            && names(&inv.endpoint_slices) == ["default/web-abc"]
    })
    .await;
    within(
        "one generation per deletion",
        rx.wait_for(|s| s.generation >= g1 + 2),
    )
    .await
    .expect("alive");

    // Every change was a watch event: still exactly one list per resource.
    for (resource, stats) in source.stats() {
        assert_eq!(stats.lists, 1, "{resource} relisted");
        assert!(stats.connected, "{resource}");
    }
    // 2 listed + api added + api modified + web deleted.
    assert_eq!(stats_of(&source, WatchedResource::Services).events, 5);
    assert_eq!(server.lists(Kind::Service).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_resource_version_relists_and_converges() {
    let server = FakeApiServer::start().await;
    populate(&server);
    let (source, _rx) = synced(&server, "node-a").await;

    // Cut the watches off, change things while the client cannot see, and compact the
    // history: on reconnect, its resourceVersion is older than the compaction point.
    server.fail_with(Some(500));
    wait_until(&source, "disconnected", |s| !s.state().connected).await;
    server.apply(&service("default", "new", "10.96.0.30", 80));
    server.delete(Kind::Service, "kube-system", "dns");
    server.apply(&slice("default", "web-abc", "web", &["10.244.9.9"]));
    server.apply(&node("node-a", "zone-9"));
    server.compact();
    let before = source.snapshot();
    assert_eq!(names(&before.services), ["default/web", "kube-system/dns"]);
    server.fail_with(None);

    wait_until(&source, "converged after relist", |s| {
        let inv = s.snapshot();
        names(&inv.services) == ["default/new", "default/web"]
            && inv.endpoint_slices.iter().any(|es| {
                es.endpoints.get(0).and_then(|e| e.ip()) == Some("10.244.9.9".parse().unwrap())
            })
            && inv.nodes.first().and_then(|n| n.zone.as_deref()) == Some("zone-9")
    })
    .await;
    wait_until(&source, "reconnected", |s| s.state().connected).await;

    for (resource, stats) in source.stats() {
        assert!(stats.expired >= 1, "{resource}: no 410 seen: {stats:?}");
        assert!(stats.lists >= 2, "{resource}: no relist: {stats:?}");
    }
    // The server saw the resumed watch from the stale version, then a fresh list.
    let kinds_relisted = Kind::ALL
        .iter()
        .filter(|k| server.lists(**k).len() >= 2)
        .count();
    assert_eq!(kinds_relisted, 3);
    let state = source.state();
    assert!(state.synced && state.last_error.is_none(), "{state:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_mark_disconnected_but_keep_the_inventory() {
    let server = FakeApiServer::start().await;
    populate(&server);
    let (source, mut rx) = synced(&server, "node-a").await;
    let before = fingerprint(&source.snapshot());
    assert_eq!(before.len(), 5);

    server.fail_with(Some(500));
    within(
        "disconnected with an error",
        rx.wait_for(|s| !s.connected && s.last_error.is_some()),
    )
    .await
    .expect("alive");
    let state = source.state();
    assert!(state.synced, "synced must not go back: {state:?}");
    let error = state.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("500") || error.contains("injected failure"),
        "{error}"
    );
    // Several retries fail; the stores keep the last known objects.
    wait_until(&source, "several failed retries", |s| {
        s.stats().iter().all(|(_, st)| st.errors >= 2)
    })
    .await;
    assert_eq!(
        fingerprint(&source.snapshot()),
        before,
        "inventory changed during the outage"
    );

    server.fail_with(None);
    within(
        "reconnected",
        rx.wait_for(|s| s.connected && s.last_error.is_none()),
    )
    .await
    .expect("alive");
    assert_eq!(fingerprint(&source.snapshot()), before);
    // Nothing was compacted: the watches resumed without relisting.
    for (resource, stats) in source.stats() {
        assert_eq!(stats.lists, 1, "{resource}");
        assert_eq!(stats.expired, 0, "{resource}");
    }
    // And changes flow again.
    server.apply(&service("default", "after", "10.96.0.40", 80));
    wait_until(&source, "change after recovery", |s| {
        names(&s.snapshot().services).contains(&"default/after".to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_offline_keeps_the_inventory_and_recovers() {
    let server = FakeApiServer::start().await;
    populate(&server);
    let (source, mut rx) = synced(&server, "node-a").await;
    let before = fingerprint(&source.snapshot());

    server.go_offline().await;
    within(
        "disconnected",
        rx.wait_for(|s| !s.connected && s.last_error.is_some()),
    )
    .await
    .expect("alive");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fingerprint(&source.snapshot()),
        before,
        "inventory changed while offline"
    );
    assert!(source.state().synced);

    // A change made while the client could not connect is picked up on resume.
    server.apply(&service("default", "while-offline", "10.96.0.50", 80));
    server.go_online().await;
    wait_until(&source, "reconnected and caught up", |s| {
        s.state().connected
            && names(&s.snapshot().services).contains(&"default/while-offline".to_string())
    })
    .await;
    assert!(source.state().last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_watch_is_limited_to_this_node() {
    let server = FakeApiServer::start().await;
    populate(&server);
    server.apply(&node("node-c", "zone-3"));
    let (source, _rx) = synced(&server, "node-b").await;
    assert_eq!(names(&source.snapshot().nodes), ["/node-b"]);

    // The selector went to the server on both the list and the watch.
    for r in server
        .lists(Kind::Node)
        .iter()
        .chain(server.watches(Kind::Node).iter())
    {
        assert_eq!(
            r.query.get("fieldSelector").map(String::as_str),
            Some("metadata.name=node-b"),
            "{r:?}"
        );
    }
    for r in server.lists(Kind::Service) {
        assert!(!r.query.contains_key("fieldSelector"), "{r:?}");
    }

    // Changes to other nodes are not seen; changes to ours are.
    let events_before = stats_of(&source, WatchedResource::Nodes).events;
    server.apply(&node("node-a", "zone-7"));
    server.apply(&node("node-d", "zone-4"));
    server.apply(&node("node-b", "zone-5"));
    // Events are counted after the store changes: wait for both. The watch delivers in order,
    // so node-a's and node-d's events, were they seen, would be counted before node-b's.
    wait_until(&source, "own node modified", |s| {
        s.snapshot()
            .nodes
            .first()
            .and_then(|n| Some(n.zone.as_deref()?.to_owned()))
            == Some("zone-5".to_string())
            && stats_of(s, WatchedResource::Nodes).events > events_before
    })
    .await;
    assert_eq!(names(&source.snapshot().nodes), ["/node-b"]);
    assert_eq!(
        stats_of(&source, WatchedResource::Nodes).events,
        events_before + 1
    );

    server.delete(Kind::Node, "", "node-b");
    wait_until(&source, "own node deleted", |s| {
        s.snapshot().nodes.is_empty()
    })
    .await;
}

/// Waits until every kind got `n` more bookmarks than `since`.
async fn bookmarks_delivered(server: &FakeApiServer, since: [u64; 3], n: u64) {
    within("bookmarks", async {
        while Kind::ALL
            .iter()
            .zip(since)
            .any(|(k, s)| server.bookmarks_sent(*k) < s + n)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn bookmark_counts(server: &FakeApiServer) -> [u64; 3] {
    Kind::ALL.map(|k| server.bookmarks_sent(k))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_keep_quiet_watches_resumable_after_compaction() {
    let server = FakeApiServer::start().await;
    populate(&server);
    let (source, _rx) = synced(&server, "node-a").await;

    // Only Services change: the EndpointSlice and Node watches see no event, but bookmarks
    // carry the newer resourceVersion to them.
    for i in 0..5 {
        server.apply(&service(
            "churn",
            &format!("s{i}"),
            &format!("10.96.2.{i}"),
            80,
        ));
    }
    let rv = server.resource_version();
    bookmarks_delivered(&server, bookmark_counts(&server), 2).await;
    let watches_before = Kind::ALL.map(|k| server.watches(k).len());
    server.compact();
    server.disconnect_watches();

    within("every watch resumed", async {
        while Kind::ALL
            .iter()
            .zip(watches_before)
            .any(|(k, before)| server.watches(*k).len() <= before)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for kind in Kind::ALL {
        let resumed = server.watches(kind).last().cloned().expect("a watch");
        let from: u64 = resumed.query["resourceVersion"].parse().expect("numeric");
        assert!(
            from >= rv,
            "{kind:?} resumed from {from}, before the compaction at {rv}"
        );
    }
    // Some time for a (wrong) 410 to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (resource, stats) in source.stats() {
        assert_eq!(stats.expired, 0, "{resource}: {stats:?}");
        assert_eq!(stats.lists, 1, "{resource}: {stats:?}");
    }
    assert_eq!(source.snapshot().services.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bookmarks_a_quiet_watch_relists_after_compaction() {
    // The control for the test above: same steps, the server sends no bookmarks, so the
    // quiet watches resume from a compacted version, get 410 Gone, and relist.
    let server = FakeApiServer::start().await;
    server.set_bookmarks(false);
    populate(&server);
    let (source, _rx) = synced(&server, "node-a").await;
    for i in 0..5 {
        server.apply(&service(
            "churn",
            &format!("s{i}"),
            &format!("10.96.2.{i}"),
            80,
        ));
    }
    wait_until(&source, "services seen", |s| {
        s.snapshot().services.len() == 7
    })
    .await;
    server.compact();
    server.disconnect_watches();
    wait_until(&source, "quiet watches relisted", |s| {
        stats_of(s, WatchedResource::EndpointSlices).lists == 2
            && stats_of(s, WatchedResource::Nodes).lists == 2
    })
    .await;
    assert!(stats_of(&source, WatchedResource::EndpointSlices).expired >= 1);
    assert!(stats_of(&source, WatchedResource::Nodes).expired >= 1);
    // The Services watch saw every event up to the compaction point: no relist.
    assert_eq!(stats_of(&source, WatchedResource::Services).lists, 1);
    let inv = source.snapshot();
    assert_eq!(
        (
            inv.services.len(),
            inv.endpoint_slices.len(),
            inv.nodes.len()
        ),
        (7, 2, 1)
    );
    wait_until(&source, "connected", |s| s.state().connected).await;
}

#[tokio::test]
async fn invalid_node_names_are_rejected() {
    let server = FakeApiServer::start().await;
    for bad in ["", "node-a,metadata.namespace=x", "Node-A"] {
        match KubeSource::start(server.client(), bad) {
            Err(KubeSourceError::InvalidNodeName(name)) => assert_eq!(name, bad),
            Err(other) => panic!("{bad:?}: unexpected error {other}"),
            Ok(_) => panic!("{bad:?} accepted"),
        }
    }
}

#[tokio::test]
async fn client_from_reads_a_kubeconfig_file() {
    let server = FakeApiServer::start().await;
    populate(&server);
    let dir = std::env::temp_dir().join(format!("lbctl-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("config");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: fake\n    user: nobody\nusers:\n- name: nobody\n  user: {{}}\n",
            server.url()
        ),
    )
    .expect("write kubeconfig");
    let client = lbctl::source::kube::client_from(Some(path.clone()))
        .await
        .expect("client from kubeconfig");
    let (source, mut rx) = KubeSource::start(client, "node-a").expect("start");
    within("sync via kubeconfig client", rx.wait_for(|s| s.synced))
        .await
        .expect("alive");
    assert_eq!(source.snapshot().services.len(), 2);

    let missing = lbctl::source::kube::client_from(Some(dir.join("missing"))).await;
    assert!(
        matches!(missing, Err(KubeSourceError::Kubeconfig { .. })),
        "{:?}",
        missing.as_ref().err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn svc_ref(ns: &str, name: &str) -> lbctl::plan::ServiceRef {
    lbctl::plan::ServiceRef {
        namespace: ns.into(),
        name: name.into(),
    }
}

/// Takes changes until they name `want` (marks of one change may arrive in two takes).
async fn take_until(
    source: &KubeSource,
    want: &std::collections::BTreeSet<lbctl::plan::ServiceRef>,
) -> (
    std::collections::BTreeSet<lbctl::plan::ServiceRef>,
    Inventory,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let (dirty, objects) = source.take_changes();
        let Dirty::Services(refs) = dirty else {
            panic!("a Service-level change was reported as everything");
        };
        seen.extend(refs);
        if want.is_subset(&seen) {
            return (seen, objects);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "changes never named {want:?} (saw {seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_name_the_services_they_touch_and_carry_only_their_objects() {
    use std::collections::BTreeSet;
    let server = FakeApiServer::start().await;
    populate(&server);
    let (source, _rx) = synced(&server, "node-a").await;
    // The first take is everything (the initial lists).
    let (dirty, inventory) = source.take_changes();
    assert_eq!(dirty, Dirty::All);
    assert_eq!(fingerprint(&inventory), fingerprint(&source.snapshot()));
    assert_eq!(source.take_changes().0, Dirty::Services(BTreeSet::new()));

    // An endpoint change of web: web only, with its Service, its slice and the Node.
    server.apply(&slice("default", "web-abc", "web", &["10.244.1.9"]));
    let (seen, objects) = take_until(&source, &BTreeSet::from([svc_ref("default", "web")])).await;
    assert_eq!(seen, BTreeSet::from([svc_ref("default", "web")]));
    assert_eq!(names(&objects.services), ["default/web"]);
    assert_eq!(names(&objects.endpoint_slices), ["default/web-abc"]);
    assert_eq!(names(&objects.nodes), ["/node-a"]);

    // A slice relabelled from web to api: both, and each gets what is its own now.
    server.apply(&service("default", "api", "10.96.0.20", 443));
    take_until(&source, &BTreeSet::from([svc_ref("default", "api")])).await;
    server.apply(&slice("default", "web-abc", "api", &["10.244.1.9"]));
    let (seen, objects) = take_until(
        &source,
        &BTreeSet::from([svc_ref("default", "web"), svc_ref("default", "api")]),
    )
    .await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(names(&objects.services), ["default/api", "default/web"]);
    assert_eq!(names(&objects.endpoint_slices), ["default/web-abc"]);
    let web_only = source.objects_of(&BTreeSet::from([svc_ref("default", "web")]));
    assert!(web_only.endpoint_slices.is_empty(), "web has no slice now");

    // A deleted slice and Service name their Service.
    server
        .delete(Kind::EndpointSlice, "default", "web-abc")
        .unwrap();
    let (_, objects) = take_until(&source, &BTreeSet::from([svc_ref("default", "api")])).await;
    assert!(objects.endpoint_slices.is_empty());
    server.delete(Kind::Service, "kube-system", "dns").unwrap();
    let (_, objects) = take_until(&source, &BTreeSet::from([svc_ref("kube-system", "dns")])).await;
    assert!(objects.services.is_empty());
    assert_eq!(names(&objects.endpoint_slices), ["kube-system/dns-xyz"]);

    // This Node changes: everything.
    server.apply(&node("node-a", "zone-9"));
    wait_until(&source, "everything marked", |s| {
        matches!(s.take_changes(), (Dirty::All, _))
    })
    .await;
}

/// The same stored objects, one for one (not copies of them).
fn shared<T>(a: &[std::sync::Arc<T>], b: &[std::sync::Arc<T>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| std::sync::Arc::ptr_eq(x, y))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_share_the_stored_objects_and_a_relist_replaces_them_whole() {
    use std::{collections::BTreeSet, sync::Arc};
    let server = FakeApiServer::start().await;
    populate(&server);
    let (source, _rx) = synced(&server, "node-a").await;

    // Two snapshots and the first take hand out the very objects the stores hold.
    let first = source.snapshot();
    let second = source.snapshot();
    assert_eq!(names(&first.services), ["default/web", "kube-system/dns"]);
    assert_eq!(
        names(&first.endpoint_slices),
        ["default/web-abc", "kube-system/dns-xyz"]
    );
    assert_eq!(names(&first.nodes), ["/node-a"]);
    assert!(shared(&first.services, &second.services));
    assert!(shared(&first.endpoint_slices, &second.endpoint_slices));
    assert!(shared(&first.nodes, &second.nodes));
    let (dirty, taken) = source.take_changes();
    assert_eq!(dirty, Dirty::All);
    assert!(shared(&taken.services, &first.services));
    assert!(shared(&taken.endpoint_slices, &first.endpoint_slices));
    assert!(shared(&taken.nodes, &first.nodes));
    assert_eq!(fingerprint(&taken), fingerprint(&first));

    // An apply of an existing object replaces that object and only it.
    server.apply(&service("default", "web", "10.96.0.10", 8080));
    let port = |objects: &Inventory| {
        objects.services[0]
            .spec
            .as_ref()
            .and_then(|s| s.ports.first().map(|p| p.port))
    };
    wait_until(&source, "web modified", |s| {
        port(&s.snapshot()) == Some(8080)
    })
    .await;
    let third = source.snapshot();
    assert_eq!(names(&third.services), ["default/web", "kube-system/dns"]);
    assert_eq!(stats_of(&source, WatchedResource::Services).objects, 2);
    assert!(!Arc::ptr_eq(&third.services[0], &first.services[0]));
    assert!(Arc::ptr_eq(&third.services[1], &first.services[1]), "dns");
    assert!(shared(&third.endpoint_slices, &first.endpoint_slices));
    let web = BTreeSet::from([svc_ref("default", "web")]);
    let of_web = source.objects_of(&web);
    assert!(shared(&of_web.services, &third.services[..1]));
    assert!(shared(&of_web.endpoint_slices, &third.endpoint_slices[..1]));
    assert!(shared(&of_web.nodes, &third.nodes));

    // A relist that drops objects, with the slices' list held half-way: while it is held the
    // old slices stay whole, then the listed set replaces them at once.
    server.fail_with(Some(500));
    wait_until(&source, "disconnected", |s| !s.state().connected).await;
    server.delete(Kind::Service, "kube-system", "dns").unwrap();
    server
        .delete(Kind::EndpointSlice, "kube-system", "dns-xyz")
        .unwrap();
    server.apply(&service("default", "api", "10.96.0.20", 443));
    server.apply(&slice("default", "web-abc", "api", &["10.244.1.5"]));
    server.compact();
    server.hold_lists(Kind::EndpointSlice, true);
    server.fail_with(None);
    // A list request waiting means its watcher has started the relist (`Init`).
    wait_until(&source, "Services relisted, slices listing", |s| {
        names(&s.snapshot().services) == ["default/api", "default/web"]
            && server.lists_waiting(Kind::EndpointSlice) == 1
    })
    .await;
    let during = source.snapshot();
    assert!(
        shared(&during.endpoint_slices, &first.endpoint_slices),
        "a held relist leaves the old slices in place: {:?}",
        names(&during.endpoint_slices)
    );
    assert_eq!(
        stats_of(&source, WatchedResource::EndpointSlices).objects,
        2
    );
    assert_eq!(
        names(&source.objects_of(&web).endpoint_slices),
        ["default/web-abc"],
        "ownership changes with the listed set, not before"
    );
    server.hold_lists(Kind::EndpointSlice, false);
    // A list is counted after its objects are swapped in: wait for both.
    wait_until(&source, "slices relisted", |s| {
        names(&s.snapshot().endpoint_slices) == ["default/web-abc"]
            && stats_of(s, WatchedResource::EndpointSlices).lists >= 2
    })
    .await;
    assert_eq!(
        stats_of(&source, WatchedResource::EndpointSlices).objects,
        1
    );
    // The relabelled slice now belongs to api; dns has nothing left.
    assert!(source.objects_of(&web).endpoint_slices.is_empty());
    let api = source.objects_of(&BTreeSet::from([svc_ref("default", "api")]));
    assert_eq!(names(&api.services), ["default/api"]);
    assert_eq!(names(&api.endpoint_slices), ["default/web-abc"]);
    let dns = source.objects_of(&BTreeSet::from([svc_ref("kube-system", "dns")]));
    assert!(dns.services.is_empty() && dns.endpoint_slices.is_empty());
    wait_until(&source, "relist marked everything", |s| {
        matches!(s.take_changes(), (Dirty::All, _))
    })
    .await;
}
