//! What every plan must satisfy, whatever the input: the fuzz targets and
//! `lbctl/tests/hostile_input.rs` (which includes this file) check it.
//!
//! Depends on `lbctl` and `std` only, so that it can be included by path.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use lbctl::{
    engine::{NodeContext, plan},
    model::{EndpointSlice, Inventory, Service},
    plan::{Frontend, FrontendKind, Plan, ServiceRef},
};

/// The object kinds `plan.skipped` may name.
const SKIPPED_KINDS: [&str; 3] = ["Service ", "EndpointSlice ", "Node "];

/// Checks every invariant of `plan`, computed from `inventory` for `node`; the error says which
/// one failed and where.
pub fn check_plan(inventory: &Inventory, node: &NodeContext, plan: &Plan) -> Result<(), String> {
    if plan.node != node.name {
        return Err(format!("plan.node {:?} != {:?}", plan.node, node.name));
    }
    check_frontend_order(&plan.frontends)?;
    check_skipped(plan)?;
    let sources = BackendSources::of(inventory, &node.name);
    let served: BTreeSet<ServiceRef> = inventory
        .services
        .iter()
        .filter(|svc| node.serves(svc))
        .map(|svc| service_ref(svc))
        .collect();
    for frontend in &plan.frontends {
        if !served.contains(&frontend.service) {
            return Err(format!(
                "{}: a frontend of a Service this proxy does not serve (service-proxy-name)",
                frontend.service
            ));
        }
        check_frontend(frontend, &sources)?;
    }
    Ok(())
}

/// The plan of the same objects in reverse order must be the same.
pub fn check_order_independent(
    inventory: &Inventory,
    node: &NodeContext,
    expected: &Plan,
) -> Result<(), String> {
    let reversed = Inventory {
        services: inventory.services.iter().rev().cloned().collect(),
        endpoint_slices: inventory.endpoint_slices.iter().rev().cloned().collect(),
        nodes: inventory.nodes.iter().rev().cloned().collect(),
    };
    let again = plan(&reversed, node);
    if &again != expected || again.warnings != expected.warnings {
        return Err(format!(
            "the plan depends on the input order:\n{expected:#?}\nreversed:\n{again:#?}"
        ));
    }
    Ok(())
}

/// Sorted by (service, kind, address, port, protocol); one frontend per (address, port,
/// protocol): one service per datapath key.
fn check_frontend_order(frontends: &[Frontend]) -> Result<(), String> {
    let sort_key = |f: &Frontend| (f.service.clone(), f.kind, f.address, f.port, f.protocol);
    if let Some(pair) = frontends
        .windows(2)
        .find(|pair| sort_key(&pair[0]) > sort_key(&pair[1]))
    {
        return Err(format!(
            "frontends not sorted: {:?} before {:?}",
            pair[0], pair[1]
        ));
    }
    let mut keys = BTreeSet::new();
    for f in frontends {
        if !keys.insert((f.address, f.port, f.protocol)) {
            return Err(format!(
                "two frontends for {}/{}",
                SocketAddr::new(f.address, f.port),
                f.protocol
            ));
        }
    }
    Ok(())
}

/// Sorted, de-duplicated, and each entry names an object.
fn check_skipped(plan: &Plan) -> Result<(), String> {
    let key = |s: &lbctl::plan::Skipped| (s.object.clone(), s.reason.clone());
    if let Some(pair) = plan.skipped.windows(2).find(|p| key(&p[0]) >= key(&p[1])) {
        return Err(format!(
            "skipped not sorted and de-duplicated: {:?} then {:?}",
            pair[0], pair[1]
        ));
    }
    if let Some(bad) = plan
        .skipped
        .iter()
        .find(|s| !SKIPPED_KINDS.iter().any(|k| s.object.starts_with(k)) || s.reason.is_empty())
    {
        return Err(format!(
            "skipped entry names no object or no reason: {bad:?}"
        ));
    }
    Ok(())
}

fn check_frontend(frontend: &Frontend, sources: &BackendSources) -> Result<(), String> {
    let name = format!(
        "{} {} {}/{}",
        frontend.service,
        frontend.kind,
        SocketAddr::new(frontend.address, frontend.port),
        frontend.protocol
    );
    if frontend.port == 0 {
        return Err(format!("{name}: port 0"));
    }
    if let Some(pair) = frontend.backends.to_vec().windows(2).find(|p| p[0] >= p[1]) {
        return Err(format!(
            "{name}: backends not sorted and de-duplicated: {} then {}",
            pair[0], pair[1]
        ));
    }
    for backend in frontend.backends.iter() {
        if backend.is_ipv4() != frontend.address.is_ipv4() {
            return Err(format!("{name}: backend {backend} of the other family"));
        }
        if backend.port() == 0 {
            return Err(format!("{name}: backend {backend} with port 0"));
        }
        if !sources.any(&frontend.service).contains(&backend) {
            return Err(format!(
                "{name}: backend {backend} is no endpoint of this Service's slices"
            ));
        }
    }
    let local = frontend.kind == FrontendKind::ClusterIP && sources.is_local(&frontend.service);
    if local {
        let here = sources.on_this_node(&frontend.service);
        if let Some(remote) = frontend.backends.iter().find(|b| !here.contains(b)) {
            return Err(format!(
                "{name}: internalTrafficPolicy Local, but backend {remote} is not on this node"
            ));
        }
    }
    Ok(())
}

fn service_ref(svc: &Service) -> ServiceRef {
    ServiceRef::new(svc.namespace.clone(), svc.name())
}

/// Which (address, port) pairs each Service's slices offer: anywhere, and on this node.
#[derive(Default)]
struct BackendSources {
    any: BTreeMap<ServiceRef, BTreeSet<SocketAddr>>,
    here: BTreeMap<ServiceRef, BTreeSet<SocketAddr>>,
    /// Services all of whose copies say `internalTrafficPolicy: Local`.
    local: BTreeSet<ServiceRef>,
    empty: BTreeSet<SocketAddr>,
}

impl BackendSources {
    fn of(inventory: &Inventory, node: &str) -> Self {
        let mut sources = BackendSources::default();
        for slice in &inventory.endpoint_slices {
            sources.add_slice(slice, node);
        }
        let mut policies: BTreeMap<ServiceRef, Vec<bool>> = BTreeMap::new();
        for svc in &inventory.services {
            let local = svc.internal_traffic_local();
            policies.entry(service_ref(svc)).or_default().push(local);
        }
        sources.local = policies
            .into_iter()
            .filter(|(_, copies)| copies.iter().all(|local| *local))
            .map(|(svc, _)| svc)
            .collect();
        sources
    }

    fn add_slice(&mut self, slice: &EndpointSlice, node: &str) {
        let Some(service) = slice.service_name.as_deref() else {
            return;
        };
        let svc = ServiceRef::new(slice.namespace.clone(), service);
        let ports: Vec<u16> = slice
            .ports
            .iter()
            .filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok()))
            .collect();
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint.ip() else {
                continue;
            };
            let on_node = endpoint.node() == Some(node);
            for port in &ports {
                let backend = SocketAddr::new(ip, *port);
                self.any.entry(svc.clone()).or_default().insert(backend);
                if on_node {
                    self.here.entry(svc.clone()).or_default().insert(backend);
                }
            }
        }
    }

    fn any(&self, svc: &ServiceRef) -> &BTreeSet<SocketAddr> {
        self.any.get(svc).unwrap_or(&self.empty)
    }

    fn on_this_node(&self, svc: &ServiceRef) -> &BTreeSet<SocketAddr> {
        self.here.get(svc).unwrap_or(&self.empty)
    }

    fn is_local(&self, svc: &ServiceRef) -> bool {
        self.local.contains(svc)
    }
}
