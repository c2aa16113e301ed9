//! The traffic-policy engine: cluster objects + this node -> the [`Plan`] the datapath programs.
//!
//! Pure: no I/O, no async, no BPF, and deterministic (the order of the input objects does not
//! matter). Bad input never stops the rest: whatever cannot be used goes to `plan.skipped` with
//! the reason, and everything else is still planned. `docs/semantics.md` describes the rules.
mod claims;
mod endpoints;
mod incremental;
mod node;
mod ports;
mod report;
mod service;
mod slices;
mod topology;

use crate::{
    model::{Inventory, Service},
    plan::{Plan, ServiceRef},
};

pub use crate::model::{SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, ZONE_LABEL};
pub use incremental::{Planner, service_ref_of, slice_service};

/// Which node the plan is for, and which Services this proxy serves there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// `metadata.name` of this node's Node object (and `nodeName` of its endpoints).
    pub name: String,
    /// Overrides the Node's `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// `None`: serve only the Services without the [`SERVICE_PROXY_NAME_LABEL`] label (as
    /// kube-proxy does). `Some(name)`: serve only the Services whose label is `name` (Cilium's
    /// `k8s.serviceProxyName`).
    pub service_proxy_name: Option<String>,
}

impl NodeContext {
    pub fn new(name: impl Into<String>) -> Self {
        NodeContext {
            name: name.into(),
            zone: None,
            service_proxy_name: None,
        }
    }

    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    pub fn with_service_proxy_name(mut self, name: impl Into<String>) -> Self {
        self.service_proxy_name = Some(name.into());
        self
    }

    /// Whether this proxy serves `svc`, by its [`SERVICE_PROXY_NAME_LABEL`] label. A Service
    /// this proxy does not serve is left out silently, as kube-proxy never even sees it.
    pub fn serves(&self, svc: &Service) -> bool {
        svc.service_proxy_name() == self.service_proxy_name.as_deref()
    }
}

/// Computes what `node` must program for the objects in `inventory`.
pub fn plan(inventory: &Inventory, node: &NodeContext) -> Plan {
    let mut report = report::Report::default();
    let this_node = node::ThisNode::resolve(&inventory.nodes, node, &mut report);
    let slices = slices::SliceIndex::build(
        inventory.endpoint_slices.iter().map(|slice| &**slice),
        &mut report,
    );
    let mut claims = claims::Claims::default();
    let served = inventory
        .services
        .iter()
        .map(|svc| &**svc)
        .filter(|svc| node.serves(svc));
    for svc in services_in_claim_order(served, &mut report) {
        let frontends = service::plan_service(svc, &slices, &this_node, &mut report);
        claims.offer(frontends, &mut report);
    }
    let (skipped, warnings) = report.finish();
    Plan {
        node: node.name.clone(),
        frontends: claims.into_sorted_frontends(),
        skipped,
        warnings,
    }
}

/// Services in the order they claim frontends: the first claim of an (address, port, protocol)
/// wins. Older `creationTimestamp` first (missing timestamps last), then namespace/name, so an
/// existing Service cannot be hijacked by a newer one (CVE-2020-8554 style). Duplicate objects
/// (same namespace/name) are reduced to one.
fn services_in_claim_order<'a>(
    services: impl Iterator<Item = &'a Service>,
    report: &mut report::Report,
) -> Vec<&'a Service> {
    // Keyed by borrowed (namespace, name): the same order as `ServiceRef`, without copying
    // two strings per Service; copies of one Service end up adjacent.
    let mut all: Vec<((&str, &str), &Service)> = services
        .map(|svc| ((&*svc.namespace, svc.name()), svc))
        .collect();
    all.sort_unstable_by_key(|(a, _)| *a);
    let mut unique: Vec<((&str, &str), &Service)> = Vec::with_capacity(all.len());
    for copies in all.chunk_by(|(a, _), (b, _)| a == b) {
        let svc_ref = copies[0].0;
        let chosen = match copies {
            [(_, only)] => Some(*only),
            _ => report::pick_canonical(copies.iter().map(|(_, svc)| *svc).collect(), || {
                let (namespace, name) = svc_ref;
                report.skip(
                    report::service_object(&ServiceRef::new(namespace, name)),
                    "several different objects with this namespace/name; the one that sorts \
                     first as JSON was used",
                )
            }),
        };
        unique.extend(chosen.map(|svc| (svc_ref, svc)));
    }
    unique.sort_by(|(a_ref, a), (b_ref, b)| {
        let a_time = a.creation_timestamp.as_ref();
        let b_time = b.creation_timestamp.as_ref();
        a_time
            .is_none()
            .cmp(&b_time.is_none())
            .then_with(|| a_time.cmp(&b_time))
            .then_with(|| a_ref.cmp(b_ref))
    });
    unique.into_iter().map(|(_, svc)| svc).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{api::core::v1 as k8s, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    use super::*;

    #[test]
    fn which_services_a_proxy_serves() {
        let labelled = |value: Option<&str>| {
            Service::from(&k8s::Service {
                metadata: ObjectMeta {
                    labels: value.map(|v| {
                        BTreeMap::from([(SERVICE_PROXY_NAME_LABEL.to_owned(), v.to_owned())])
                    }),
                    ..ObjectMeta::default()
                },
                ..k8s::Service::default()
            })
        };
        let unlabelled_but_other = Service::from(&k8s::Service {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                ..ObjectMeta::default()
            },
            ..k8s::Service::default()
        });
        let default = NodeContext::new("w1");
        let named = NodeContext::new("w1").with_service_proxy_name("lbctl");
        let rows = [
            ("no labels", labelled(None), true, false),
            ("other labels only", unlabelled_but_other, true, false),
            ("label: lbctl", labelled(Some("lbctl")), false, true),
            (
                "label: another proxy",
                labelled(Some("other")),
                false,
                false,
            ),
            ("label present, empty", labelled(Some("")), false, false),
        ];
        for (name, svc, by_default, by_name) in rows {
            assert_eq!(default.serves(&svc), by_default, "{name}: default");
            assert_eq!(
                named.serves(&svc),
                by_name,
                "{name}: --service-proxy-name lbctl"
            );
        }
    }
}
