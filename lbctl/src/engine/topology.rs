//! Topology-aware routing of the Cluster set, decided only by the hints in the EndpointSlices
//! (kube-proxy's `topologyModeFromHints`), never by the Service fields. The Service fields are
//! only read to warn when a distribution is asked for and no hints are there.
use k8s_openapi::api::core::v1::Service;

use super::{endpoints::EndpointView, node::ThisNode};

/// Annotation that asks the EndpointSlice controller for zone hints.
pub(crate) const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
/// Its deprecated predecessor.
pub(crate) const TOPOLOGY_AWARE_HINTS_ANNOTATION: &str =
    "service.kubernetes.io/topology-aware-hints";

/// Which ready endpoints the Cluster set keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TopologyFilter {
    /// No usable hints: keep all.
    KeepAll,
    /// Keep the endpoints hinted for this node.
    SameNode(String),
    /// Keep the endpoints hinted for this node's zone.
    SameZone(String),
}

impl TopologyFilter {
    /// 1. every ready endpoint has node hints and one is for this node -> same node;
    /// 2. else every ready endpoint has zone hints and one is for this node's zone -> same zone;
    /// 3. else no filtering. The chosen filter always keeps at least one ready endpoint.
    pub(crate) fn from_hints<'a>(
        ready: impl Iterator<Item = &'a EndpointView>,
        node: &ThisNode,
    ) -> Self {
        let mut all_have_node_hints = true;
        let mut one_for_node = false;
        let mut all_have_zone_hints = true;
        let mut one_for_zone = false;
        for ep in ready {
            if ep.hints.for_nodes.is_empty() {
                all_have_node_hints = false;
            } else if ep.hints.for_nodes.contains(&node.name) {
                one_for_node = true;
            }
            if ep.hints.for_zones.is_empty() {
                all_have_zone_hints = false;
            } else if let Some(zone) = &node.zone
                && ep.hints.for_zones.contains(zone)
            {
                one_for_zone = true;
            }
        }
        match &node.zone {
            _ if all_have_node_hints && one_for_node => TopologyFilter::SameNode(node.name.clone()),
            Some(zone) if all_have_zone_hints && one_for_zone => {
                TopologyFilter::SameZone(zone.clone())
            }
            _ => TopologyFilter::KeepAll,
        }
    }

    pub(crate) fn keeps(&self, ep: &EndpointView) -> bool {
        match self {
            TopologyFilter::KeepAll => true,
            TopologyFilter::SameNode(node) => ep.hints.for_nodes.contains(node),
            TopologyFilter::SameZone(zone) => ep.hints.for_zones.contains(zone),
        }
    }
}

/// The hints a Service asks the EndpointSlice controller to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestedHints {
    /// How the Service asks, for the warning (e.g. `trafficDistribution: PreferClose`).
    pub(crate) asked_by: String,
    pub(crate) kind: HintKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HintKind {
    Node,
    Zone,
}

impl HintKind {
    pub(crate) fn present_on(self, ep: &EndpointView) -> bool {
        match self {
            HintKind::Node => !ep.hints.for_nodes.is_empty(),
            HintKind::Zone => !ep.hints.for_zones.is_empty(),
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            HintKind::Node => "node hints (hints.forNodes)",
            HintKind::Zone => "zone hints (hints.forZones)",
        }
    }
}

impl RequestedHints {
    pub(crate) fn of(svc: &Service) -> Option<Self> {
        let distribution = svc
            .spec
            .as_ref()
            .and_then(|spec| spec.traffic_distribution.as_deref());
        let requested = |kind| {
            Some(RequestedHints {
                asked_by: format!("trafficDistribution: {}", distribution.unwrap_or_default()),
                kind,
            })
        };
        match distribution {
            Some("PreferSameNode") => return requested(HintKind::Node),
            Some("PreferSameZone" | "PreferClose") => return requested(HintKind::Zone),
            _ => {}
        }
        let annotations = svc.metadata.annotations.as_ref()?;
        [TOPOLOGY_MODE_ANNOTATION, TOPOLOGY_AWARE_HINTS_ANNOTATION]
            .into_iter()
            .find_map(|key| {
                let value = annotations.get(key)?;
                matches!(value.as_str(), "Auto" | "auto").then(|| RequestedHints {
                    asked_by: format!("annotation {key}: {value}"),
                    kind: HintKind::Zone,
                })
            })
    }
}
