//! What the agent tells the operator about each sync, once: frontends that start or stop
//! refusing (with the reason), skipped input and warnings as they appear and go away, and the
//! EndpointSlice trigger times whose programming latency the next apply completes.
//!
//! Everything here is state kept across syncs so that a resync that changes nothing logs
//! nothing.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::SystemTime,
};

use crate::{
    datapath::FrontendKey,
    metrics::TrafficPolicy,
    model::{AddressType, Conditions, EndpointSlice, Inventory, Service},
    plan::{Frontend, FrontendKind, Plan, Protocol, ServiceRef},
};

pub use crate::model::TRIGGER_TIME_ANNOTATION;

/// Why a frontend has no backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub policy: TrafficPolicy,
    pub reason: String,
}

/// One refusing frontend as last logged.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Refusing {
    service: ServiceRef,
    port_name: Arc<str>,
    refusal: Refusal,
}

impl Refusing {
    /// The one line that says a frontend started refusing (or refuses for another reason).
    fn log_start(&self, frontend: &FrontendKey) {
        tracing::warn!(
            frontend = %frontend,
            service = %self.service,
            port_name = %self.port_name,
            traffic_policy = %self.refusal.policy,
            reason = %self.refusal.reason,
            "frontend refuses connections (ECONNREFUSED)"
        );
    }
}

/// Which frontends refuse, across syncs: logs each start and end of a refusal once.
#[derive(Debug, Default)]
pub struct Refusals {
    refusing: BTreeMap<FrontendKey, Refusing>,
}

impl Refusals {
    /// Takes the frontends just programmed (`programmed`: those of the plan the datapath holds)
    /// and logs what changed. Returns the number of refusing frontends per traffic policy.
    pub fn update<'a>(
        &mut self,
        programmed: impl Iterator<Item = &'a Frontend>,
        inventory: &Inventory,
        node: &str,
    ) -> BTreeMap<TrafficPolicy, usize> {
        let mut now: BTreeMap<FrontendKey, Refusing> = BTreeMap::new();
        // Only the frontends that refused before and serve now: the rest cost nothing here.
        let mut serving: BTreeMap<FrontendKey, (&Frontend, usize)> = BTreeMap::new();
        let mut index: Option<Index> = None;
        for frontend in programmed {
            let has_backends = !frontend.backends.is_empty();
            if has_backends && self.refusing.is_empty() {
                continue;
            }
            let addr = frontend.key();
            if !has_backends {
                let index = index.get_or_insert_with(|| Index::new(inventory));
                now.insert(
                    addr,
                    Refusing {
                        service: frontend.service.clone(),
                        port_name: frontend.port_name.clone(),
                        refusal: index.explain(frontend, node),
                    },
                );
            } else if self.refusing.contains_key(&addr) {
                serving.insert(addr, (frontend, frontend.backends.len()));
            }
        }
        for (addr, r) in &now {
            if self.refusing.get(addr) != Some(r) {
                r.log_start(addr);
            }
        }
        for (addr, r) in &self.refusing {
            if let Some((frontend, backends)) = serving.get(addr) {
                tracing::info!(
                    frontend = %addr,
                    service = %frontend.service,
                    port_name = %frontend.port_name,
                    backends,
                    "frontend has backends again; connects are served"
                );
            } else if !now.contains_key(addr) {
                tracing::info!(
                    frontend = %addr,
                    service = %r.service,
                    port_name = %r.port_name,
                    "refusing frontend removed"
                );
            }
        }
        self.refusing = now;
        self.counts()
    }

    /// Like [`Refusals::update`] for some frontends only: each changed key with the frontend
    /// now programmed there (`None`: none is). `inventory` must hold the objects of the
    /// Services of the refusing ones (to explain them). Costs the keys given, not all
    /// frontends.
    pub fn update_changed<'a>(
        &mut self,
        changed: impl Iterator<Item = (FrontendKey, Option<&'a Frontend>)>,
        inventory: &Inventory,
        node: &str,
    ) -> BTreeMap<TrafficPolicy, usize> {
        let mut index: Option<Index> = None;
        for (addr, frontend) in changed {
            let old = self.refusing.remove(&addr);
            match frontend {
                Some(frontend) if frontend.backends.is_empty() => {
                    let index = index.get_or_insert_with(|| Index::new(inventory));
                    let now = Refusing {
                        service: frontend.service.clone(),
                        port_name: frontend.port_name.clone(),
                        refusal: index.explain(frontend, node),
                    };
                    if old.as_ref() != Some(&now) {
                        now.log_start(&addr);
                    }
                    self.refusing.insert(addr, now);
                }
                Some(frontend) => {
                    if old.is_some() {
                        tracing::info!(
                            frontend = %addr,
                            service = %frontend.service,
                            port_name = %frontend.port_name,
                            backends = frontend.backends.len(),
                            "frontend has backends again; connects are served"
                        );
                    }
                }
                None => {
                    if let Some(r) = old {
                        tracing::info!(
                            frontend = %addr,
                            service = %r.service,
                            port_name = %r.port_name,
                            "refusing frontend removed"
                        );
                    }
                }
            }
        }
        self.counts()
    }

    fn counts(&self) -> BTreeMap<TrafficPolicy, usize> {
        let mut counts = BTreeMap::new();
        for r in self.refusing.values() {
            *counts.entry(r.refusal.policy).or_insert(0) += 1;
        }
        counts
    }
}

/// Whether an endpoint may receive connects: ready (or unset), or serving while terminating
/// (the fallback when nothing is ready).
fn usable(conditions: Conditions) -> bool {
    conditions.ready || conditions.serving_terminating()
}

fn slice_family_matches(slice: &EndpointSlice, address: IpAddr) -> bool {
    match slice.address_type {
        AddressType::IPv4 => address.is_ipv4(),
        AddressType::IPv6 => address.is_ipv6(),
        _ => false,
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    protocol.as_str()
}

/// Services and their EndpointSlices by `namespace/name`, built once per sync that has
/// refusing frontends (explaining stays linear in the inventory).
struct Index<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> Index<'a> {
    fn new(inventory: &'a Inventory) -> Self {
        let mut services = HashMap::new();
        for svc in &inventory.services {
            if let Some(name) = svc.name.as_deref() {
                services.entry((&*svc.namespace, name)).or_insert(&**svc);
            }
        }
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in &inventory.endpoint_slices {
            if let Some(service) = slice.service_name.as_deref() {
                slices
                    .entry((&*slice.namespace, service))
                    .or_default()
                    .push(slice);
            }
        }
        Self { services, slices }
    }

    fn explain(&self, frontend: &Frontend, node: &str) -> Refusal {
        let key = (&*frontend.service.namespace, &*frontend.service.name);
        explain_from(
            frontend,
            self.services.get(&key).copied(),
            self.slices.get(&key).map_or(&[], Vec::as_slice),
            node,
        )
    }
}

/// Why `frontend` (which has no backend) refuses, from the objects it was planned from: the
/// decision itself is the engine's; this only names the likely cause for the log.
pub fn explain(frontend: &Frontend, inventory: &Inventory, node: &str) -> Refusal {
    Index::new(inventory).explain(frontend, node)
}

fn explain_from(
    frontend: &Frontend,
    service: Option<&Service>,
    slices: &[&EndpointSlice],
    node: &str,
) -> Refusal {
    let local = frontend.kind == FrontendKind::ClusterIP
        && service.is_some_and(Service::internal_traffic_local);
    let policy = if local {
        TrafficPolicy::Local
    } else {
        TrafficPolicy::Cluster
    };
    let refusal = |reason: String| Refusal { policy, reason };
    if slices.is_empty() {
        return refusal(
            "no EndpointSlice for this Service (no selector, or its selector matches no pod)"
                .to_owned(),
        );
    }
    let with_port: Vec<&&EndpointSlice> = slices
        .iter()
        .filter(|slice| {
            slice.ports.iter().any(|p| {
                *p.name == *frontend.port_name
                    && p.protocol.as_str() == protocol_name(frontend.protocol)
            })
        })
        .collect();
    if with_port.is_empty() {
        return refusal(format!(
            "no EndpointSlice of this Service has a {} port named {:?}",
            protocol_name(frontend.protocol),
            frontend.port_name
        ));
    }
    let endpoints: Vec<_> = with_port
        .iter()
        .filter(|slice| slice_family_matches(slice, frontend.address))
        .flat_map(|slice| slice.endpoints.iter())
        .collect();
    let family = if frontend.address.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    if endpoints.is_empty() {
        return refusal(format!(
            "the Service's EndpointSlices list no {family} endpoint"
        ));
    }
    let usable_anywhere = endpoints
        .iter()
        .filter(|ep| usable(ep.conditions()))
        .count();
    if local {
        let usable_here = endpoints
            .iter()
            .filter(|ep| usable(ep.conditions()) && ep.node() == Some(node))
            .count();
        if usable_here == 0 {
            return refusal(format!(
                "internalTrafficPolicy: Local and no ready endpoint on this node ({usable_anywhere} \
                 ready on other nodes)"
            ));
        }
    }
    if usable_anywhere == 0 {
        return refusal(format!(
            "no ready endpoint ({} listed, none ready or serving while terminating)",
            endpoints.len()
        ));
    }
    refusal("no usable endpoint for this frontend (see `lbctl plan`)".to_owned())
}

/// Skipped input and warnings of the last plan: logs each once when it appears, and once when
/// it goes away.
#[derive(Debug, Default)]
pub struct Reported {
    skipped: BTreeSet<(String, String)>,
    warnings: BTreeSet<String>,
}

impl Reported {
    pub fn update(&mut self, plan: &Plan) {
        let skipped: BTreeSet<(String, String)> = plan
            .skipped
            .iter()
            .map(|s| (s.object.clone(), s.reason.clone()))
            .collect();
        for (object, reason) in skipped.difference(&self.skipped) {
            tracing::warn!(%object, %reason, "skipped");
        }
        for (object, reason) in self.skipped.difference(&skipped) {
            tracing::info!(%object, %reason, "no longer skipped");
        }
        let warnings: BTreeSet<String> = plan.warnings.iter().cloned().collect();
        for warning in warnings.difference(&self.warnings) {
            tracing::warn!("{warning}");
        }
        self.skipped = skipped;
        self.warnings = warnings;
    }
}

/// EndpointSlice trigger times not yet programmed, as kube-proxy tracks them for
/// `network_programming_duration_seconds`: a slice whose trigger time changed contributes that
/// time once, if it is later than the agent's start (older ones measure the agent's absence,
/// not programming); the next successful apply observes `now - trigger` for each.
#[derive(Debug)]
pub struct TriggerTimes {
    started: SystemTime,
    /// The trigger time seen last, by slice: keyed by a 64-bit hash of its namespace and
    /// name rather than copies of both (two slices of a cluster sharing a hash is about
    /// 1 in 10^10 at 30,000 slices, and would at worst count a trigger time twice). Ordered,
    /// built in bulk by each full note: 24 bytes a slice with full nodes, where a hash map sized
    /// for 30,000 took 65,536 buckets (1.6 MB).
    seen: BTreeMap<u64, SystemTime>,
    hasher: hashbrown::DefaultHashBuilder,
    pending: Vec<SystemTime>,
}

impl TriggerTimes {
    pub fn new(started: SystemTime) -> Self {
        Self {
            started,
            seen: BTreeMap::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            pending: Vec::new(),
        }
    }

    /// Notes the trigger times of the slices in this snapshot. A slice that disappeared is
    /// forgotten (a deletion carries no new trigger time).
    pub fn note(&mut self, slices: &[Arc<EndpointSlice>]) {
        let seen: BTreeMap<u64, SystemTime> = slices
            .iter()
            .filter_map(|slice| self.note_slice(slice))
            .collect();
        self.seen = seen;
    }

    /// Notes the trigger times of some slices (those of the Services that changed), keeping
    /// what was seen of the others. A deleted slice is forgotten by the next full
    /// [`TriggerTimes::note`] (the resync); until then its last trigger time is kept, which
    /// can only hide a change that carries the very same time.
    pub fn note_changed(&mut self, slices: &[Arc<EndpointSlice>]) {
        for slice in slices {
            if let Some((key, trigger)) = self.note_slice(slice) {
                self.seen.insert(key, trigger);
            }
        }
    }

    /// A slice's trigger time, pending when it is new since the agent started and differs
    /// from the one seen last; with the slice's key, to remember it by.
    fn note_slice(&mut self, slice: &EndpointSlice) -> Option<(u64, SystemTime)> {
        let trigger = slice.trigger_time?;
        let key = std::hash::BuildHasher::hash_one(&self.hasher, (&*slice.namespace, &*slice.name));
        if self.seen.get(&key) != Some(&trigger) && trigger > self.started {
            self.pending.push(trigger);
        }
        Some((key, trigger))
    }

    /// The trigger times the apply that just succeeded has programmed.
    pub fn take(&mut self) -> Vec<SystemTime> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::BackendList;
    use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};

    use super::*;

    fn slice(name: &str, trigger: Option<&str>) -> Arc<EndpointSlice> {
        let mut s = discovery::EndpointSlice::default();
        s.metadata.name = Some(name.to_owned());
        s.metadata.namespace = Some("default".to_owned());
        if let Some(t) = trigger {
            s.metadata.annotations = Some(
                [(TRIGGER_TIME_ANNOTATION.to_owned(), t.to_owned())]
                    .into_iter()
                    .collect(),
            );
        }
        Arc::new((&s).into())
    }

    fn at(rfc3339: &str) -> SystemTime {
        crate::model::system_time(rfc3339.parse().unwrap()).unwrap()
    }

    fn service(itp: &str) -> core::Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "internalTrafficPolicy": itp,
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap()
    }

    fn endpoint_slice(port_name: &str, endpoints: serde_json::Value) -> discovery::EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
        .unwrap()
    }

    fn refusing_frontend(kind: FrontendKind) -> Frontend {
        Frontend {
            service: ServiceRef {
                namespace: "shop".into(),
                name: "web".into(),
            },
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            kind,
            address: "10.96.0.10".parse().unwrap(),
            port: 80,
            backends: BackendList::default(),
            affinity_timeout_seconds: None,
        }
    }

    fn explained(itp: &str, slices: Vec<discovery::EndpointSlice>, kind: FrontendKind) -> Refusal {
        let inventory = Inventory::from_objects([&service(itp)], &slices, []);
        explain(&refusing_frontend(kind), &inventory, "node-a")
    }

    #[test]
    fn refusals_name_the_policy_and_what_is_missing() {
        let elsewhere = serde_json::json!([
            {"addresses": ["10.244.2.5"], "nodeName": "node-b", "conditions": {"ready": true}},
            {"addresses": ["10.244.2.6"], "nodeName": "node-b", "conditions": {"ready": true}}
        ]);
        let r = explained(
            "Local",
            vec![endpoint_slice("http", elsewhere.clone())],
            FrontendKind::ClusterIP,
        );
        assert_eq!(r.policy, TrafficPolicy::Local);
        assert_eq!(
            r.reason,
            "internalTrafficPolicy: Local and no ready endpoint on this node (2 ready on other nodes)"
        );
        // A node port of the same Service uses the Cluster set: the policy does not apply.
        let r = explained(
            "Local",
            vec![endpoint_slice("http", serde_json::json!([]))],
            FrontendKind::NodePort,
        );
        assert_eq!(r.policy, TrafficPolicy::Cluster);
        assert_eq!(
            r.reason,
            "the Service's EndpointSlices list no IPv4 endpoint"
        );

        let r = explained("Cluster", vec![], FrontendKind::ClusterIP);
        assert_eq!(r.policy, TrafficPolicy::Cluster);
        assert!(
            r.reason.starts_with("no EndpointSlice for this Service"),
            "{}",
            r.reason
        );

        let r = explained(
            "Cluster",
            vec![endpoint_slice("metrics", elsewhere)],
            FrontendKind::ClusterIP,
        );
        assert_eq!(
            r.reason,
            "no EndpointSlice of this Service has a TCP port named \"http\""
        );

        let not_ready = serde_json::json!([
            {"addresses": ["10.244.1.5"], "nodeName": "node-a",
             "conditions": {"ready": false, "serving": false, "terminating": true}}
        ]);
        let r = explained(
            "Cluster",
            vec![endpoint_slice("http", not_ready)],
            FrontendKind::ClusterIP,
        );
        assert_eq!(
            r.reason,
            "no ready endpoint (1 listed, none ready or serving while terminating)"
        );
    }

    #[test]
    fn trigger_times_count_once_and_only_after_the_start() {
        let start = at("2026-01-01T10:00:00Z");
        let mut t = TriggerTimes::new(start);
        t.note(&[
            slice("old", Some("2026-01-01T09:59:59Z")),
            slice("new", Some("2026-01-01T10:00:01.5Z")),
            slice("none", None),
            slice("bad", Some("yesterday")),
        ]);
        assert_eq!(t.take(), vec![at("2026-01-01T10:00:01.5Z")]);
        // A resync with the same objects adds nothing.
        t.note(&[
            slice("old", Some("2026-01-01T09:59:59Z")),
            slice("new", Some("2026-01-01T10:00:01.5Z")),
        ]);
        assert!(t.take().is_empty());
        // An update of the slice does; pending times wait for a successful apply.
        t.note(&[slice("new", Some("2026-01-01T10:00:07Z"))]);
        t.note(&[slice("new", Some("2026-01-01T10:00:07Z"))]);
        assert_eq!(t.take(), vec![at("2026-01-01T10:00:07Z")]);
        // A slice deleted and created again with its old annotation counts again, as a new
        // object would.
        t.note(&[]);
        t.note(&[slice("new", Some("2026-01-01T10:00:07Z"))]);
        assert_eq!(t.take(), vec![at("2026-01-01T10:00:07Z")]);
    }
}
