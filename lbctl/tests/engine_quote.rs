//! The scenario of manifests/examples/quote.yaml: `quote` (internalTrafficPolicy Cluster) and
//! `quote-local` (Local) on a two-node kind cluster. quote-002 (10.244.1.5) and quote-canary
//! (10.244.1.6) run on kind-worker; quote-001 (10.244.2.7) and quote-003 (10.244.2.8) on
//! kind-worker2.
use std::path::Path;

use lbctl::{
    engine::{NodeContext, plan},
    model::Inventory,
    plan::{FrontendKind, Plan, Protocol},
    source::manifests::load_paths,
};

fn fixture() -> Inventory {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/quote.yaml");
    match load_paths(&[path]) {
        Ok(inventory) => inventory,
        Err(e) => panic!("fixture does not load: {e}"),
    }
}

/// The backends of a service's only frontend, as strings.
fn backends(plan: &Plan, service: &str) -> Vec<String> {
    let frontends: Vec<_> = plan
        .frontends
        .iter()
        .filter(|f| f.service.to_string() == service)
        .collect();
    assert_eq!(frontends.len(), 1, "{service} has one frontend: {plan:#?}");
    let frontend = frontends[0];
    assert_eq!(frontend.kind, FrontendKind::ClusterIP);
    assert_eq!(frontend.protocol, Protocol::Tcp);
    assert_eq!(frontend.port, 80);
    assert_eq!(&*frontend.port_name, "http");
    frontend.backends.iter().map(|b| b.to_string()).collect()
}

const ALL_QUOTE_PODS: [&str; 4] = [
    "10.244.1.5:80", // quote-002, kind-worker
    "10.244.1.6:80", // quote-canary, kind-worker
    "10.244.2.7:80", // quote-001, kind-worker2
    "10.244.2.8:80", // quote-003, kind-worker2
];

#[test]
fn from_kind_worker_quote_local_reaches_only_kind_workers_pods() {
    let plan = plan(&fixture(), &NodeContext::new("kind-worker"));
    assert_eq!(plan.node, "kind-worker");
    assert_eq!(
        backends(&plan, "default/quote-local"),
        ["10.244.1.5:80", "10.244.1.6:80"]
    );
    assert_eq!(backends(&plan, "default/quote"), ALL_QUOTE_PODS);
    assert!(plan.skipped.is_empty(), "{:#?}", plan.skipped);
    assert!(plan.warnings.is_empty(), "{:#?}", plan.warnings);
}

#[test]
fn from_kind_worker2_quote_local_reaches_only_kind_worker2s_pods() {
    let plan = plan(&fixture(), &NodeContext::new("kind-worker2"));
    assert_eq!(
        backends(&plan, "default/quote-local"),
        ["10.244.2.7:80", "10.244.2.8:80"]
    );
    assert_eq!(backends(&plan, "default/quote"), ALL_QUOTE_PODS);
    let addresses: Vec<String> = plan
        .frontends
        .iter()
        .map(|f| f.address.to_string())
        .collect();
    assert_eq!(addresses, ["10.96.125.108", "10.96.77.212"]);
}

#[test]
fn deleting_the_local_pods_makes_quote_local_refuse_on_that_node_only() {
    // "If we delete the two pods on the kind-worker node, the next connection attempt will
    // fail": connection refused, not a detour to kind-worker2.
    let mut inventory = fixture();
    for slice in &mut inventory.endpoint_slices {
        let slice = std::sync::Arc::make_mut(slice);
        let mut endpoints = slice.endpoints.to_vec();
        endpoints.retain(|ep| ep.view().node() != Some("kind-worker"));
        slice.endpoints = endpoints.into();
    }
    let on_worker = plan(&inventory, &NodeContext::new("kind-worker"));
    assert_eq!(
        backends(&on_worker, "default/quote-local"),
        Vec::<String>::new()
    );
    assert_eq!(
        backends(&on_worker, "default/quote"),
        ["10.244.2.7:80", "10.244.2.8:80"]
    );

    let on_worker2 = plan(&inventory, &NodeContext::new("kind-worker2"));
    assert_eq!(
        backends(&on_worker2, "default/quote-local"),
        ["10.244.2.7:80", "10.244.2.8:80"]
    );
}

#[test]
fn a_terminating_local_pod_still_serves_quote_local_until_it_is_gone() {
    let mut inventory = fixture();
    for slice in &mut inventory.endpoint_slices {
        let slice = std::sync::Arc::make_mut(slice);
        let mut endpoints = slice.endpoints.to_vec();
        for ep in &mut endpoints {
            if ep.view().node() == Some("kind-worker") {
                ep.conditions.ready = false;
                ep.conditions.serving = true;
                ep.conditions.terminating = true;
            }
        }
        slice.endpoints = endpoints.into();
    }
    let plan = plan(&inventory, &NodeContext::new("kind-worker"));
    assert_eq!(
        backends(&plan, "default/quote-local"),
        ["10.244.1.5:80", "10.244.1.6:80"]
    );
    // The Cluster set has ready endpoints elsewhere, so it does not use terminating ones.
    assert_eq!(
        backends(&plan, "default/quote"),
        ["10.244.2.7:80", "10.244.2.8:80"]
    );
}
