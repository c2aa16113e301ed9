//! Topology-aware routing of the Cluster set, decided only by the hints in the EndpointSlices
//! (kube-proxy's `topologyModeFromHints`), never by the Service fields. The Service fields are
//! only read to warn when a distribution is asked for and no hints are there.
use super::{endpoints::EndpointView, node::ThisNode};
use crate::model::{Service, TOPOLOGY_AWARE_HINTS_ANNOTATION, TOPOLOGY_MODE_ANNOTATION};

/// Which ready endpoints the Cluster set keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TopologyFilter<'n> {
    /// No usable hints: keep all.
    KeepAll,
    /// Keep the endpoints hinted for this node.
    SameNode(&'n str),
    /// Keep the endpoints hinted for this node's zone.
    SameZone(&'n str),
}

impl<'n> TopologyFilter<'n> {
    /// 1. every ready endpoint has node hints and one is for this node -> same node;
    /// 2. else every ready endpoint has zone hints and one is for this node's zone -> same zone;
    /// 3. else no filtering. The chosen filter always keeps at least one ready endpoint.
    pub(crate) fn from_hints<'a>(
        ready: impl Iterator<Item = EndpointView<'a>>,
        node: &'n ThisNode,
    ) -> Self {
        let mut all_have_node_hints = true;
        let mut one_for_node = false;
        let mut all_have_zone_hints = true;
        let mut one_for_zone = false;
        for ep in ready {
            if ep.for_nodes().is_empty() {
                all_have_node_hints = false;
            } else if has(ep.for_nodes(), &node.name) {
                one_for_node = true;
            }
            if ep.for_zones().is_empty() {
                all_have_zone_hints = false;
            } else if let Some(zone) = &node.zone
                && has(ep.for_zones(), zone)
            {
                one_for_zone = true;
            }
        }
        match &node.zone {
            _ if all_have_node_hints && one_for_node => TopologyFilter::SameNode(&node.name),
            Some(zone) if all_have_zone_hints && one_for_zone => TopologyFilter::SameZone(zone),
            _ => TopologyFilter::KeepAll,
        }
    }

    pub(crate) fn keeps(&self, ep: &EndpointView<'_>) -> bool {
        match self {
            TopologyFilter::KeepAll => true,
            TopologyFilter::SameNode(node) => has(ep.for_nodes(), node),
            TopologyFilter::SameZone(zone) => has(ep.for_zones(), zone),
        }
    }
}

/// Whether sorted `names` holds `name`.
fn has(names: &[std::sync::Arc<str>], name: &str) -> bool {
    names.binary_search_by(|n| (**n).cmp(name)).is_ok()
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
    pub(crate) fn present_on(self, ep: &EndpointView<'_>) -> bool {
        match self {
            HintKind::Node => !ep.for_nodes().is_empty(),
            HintKind::Zone => !ep.for_zones().is_empty(),
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
            .and_then(|spec| spec.traffic_distribution());
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
        [
            (TOPOLOGY_MODE_ANNOTATION, svc.topology_mode()),
            (TOPOLOGY_AWARE_HINTS_ANNOTATION, svc.topology_aware_hints()),
        ]
        .into_iter()
        .find_map(|(key, value)| {
            let value = value?;
            matches!(value, "Auto" | "auto").then(|| RequestedHints {
                asked_by: format!("annotation {key}: {value}"),
                kind: HintKind::Zone,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    //! The topology rules stated directly: ready endpoint views and this node in, the filter
    //! out (in the style of kube-proxy's `topology_test.go`).
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::core::v1::{self as k8s, ServiceSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;
    use crate::engine::endpoints::tests::{READY, ep, w1};

    #[test]
    fn from_hints() {
        use TopologyFilter::{KeepAll, SameNode, SameZone};
        let same_zone = || SameZone("zone-a");
        let same_node = || SameNode("w1");
        let rows: Vec<(&str, Option<&str>, Vec<EndpointView<'_>>, TopologyFilter)> = vec![
            ("no endpoints", Some("zone-a"), vec![], KeepAll),
            (
                "every endpoint hinted, some for this zone",
                Some("zone-a"),
                vec![
                    ep("10.0.0.1", "w2", READY).with_zones(&["zone-a"]),
                    ep("10.0.0.2", "w3", READY).with_zones(&["zone-b"]),
                ],
                same_zone(),
            ),
            (
                "an endpoint with several zones counts for each",
                Some("zone-a"),
                vec![
                    ep("10.0.0.1", "w2", READY).with_zones(&["zone-b", "zone-a"]),
                    ep("10.0.0.2", "w3", READY).with_zones(&["zone-b"]),
                ],
                same_zone(),
            ),
            (
                "every endpoint hinted, none for this zone",
                Some("zone-a"),
                vec![ep("10.0.0.1", "w2", READY).with_zones(&["zone-b"])],
                KeepAll,
            ),
            (
                "one endpoint without hints",
                Some("zone-a"),
                vec![
                    ep("10.0.0.1", "w2", READY).with_zones(&["zone-a"]),
                    ep("10.0.0.2", "w3", READY),
                ],
                KeepAll,
            ),
            (
                "this node has no zone",
                None,
                vec![ep("10.0.0.1", "w2", READY).with_zones(&["zone-a"])],
                KeepAll,
            ),
            (
                "every endpoint has node hints, one for this node",
                Some("zone-a"),
                vec![
                    ep("10.0.0.1", "w1", READY)
                        .with_nodes(&["w1"])
                        .with_zones(&["zone-a"]),
                    ep("10.0.0.2", "w2", READY)
                        .with_nodes(&["w2"])
                        .with_zones(&["zone-a"]),
                ],
                same_node(),
            ),
            (
                "node hints without zone hints, and no zone: same node still",
                None,
                vec![ep("10.0.0.1", "w1", READY).with_nodes(&["w1"])],
                same_node(),
            ),
            (
                "node hints for other nodes only: fall back to zone hints",
                Some("zone-a"),
                vec![
                    ep("10.0.0.1", "w2", READY)
                        .with_nodes(&["w2"])
                        .with_zones(&["zone-a"]),
                    ep("10.0.0.2", "w3", READY)
                        .with_nodes(&["w3"])
                        .with_zones(&["zone-b"]),
                ],
                same_zone(),
            ),
            (
                "node hints missing on one endpoint: fall back to zone hints",
                Some("zone-a"),
                vec![
                    ep("10.0.0.1", "w1", READY)
                        .with_nodes(&["w1"])
                        .with_zones(&["zone-a"]),
                    ep("10.0.0.2", "w2", READY).with_zones(&["zone-b"]),
                ],
                same_zone(),
            ),
        ];
        for (name, zone, ready, expected) in rows {
            let node = w1(zone);
            let filter = TopologyFilter::from_hints(ready.iter().copied(), &node);
            assert_eq!(filter, expected, "{name}");
            // The chosen filter keeps at least one ready endpoint.
            if !ready.is_empty() {
                assert!(
                    ready.iter().any(|ep| filter.keeps(ep)),
                    "{name}: keeps none"
                );
            }
        }
    }

    #[test]
    fn keeps() {
        let hinted = ep("10.0.0.1", "w2", READY)
            .with_nodes(&["w2"])
            .with_zones(&["zone-b"]);
        let bare = ep("10.0.0.2", "w2", READY);
        let rows = [
            (TopologyFilter::KeepAll, true, true),
            (TopologyFilter::SameNode("w2"), true, false),
            (TopologyFilter::SameNode("w1"), false, false),
            (TopologyFilter::SameZone("zone-b"), true, false),
            (TopologyFilter::SameZone("zone-a"), false, false),
        ];
        for (filter, keeps_hinted, keeps_bare) in rows {
            assert_eq!(filter.keeps(&hinted), keeps_hinted, "{filter:?} hinted");
            assert_eq!(filter.keeps(&bare), keeps_bare, "{filter:?} without hints");
        }
    }

    #[test]
    fn requested_hints() {
        let service = |distribution: Option<&str>, annotation: Option<(&str, &str)>| {
            Service::from(&k8s::Service {
                metadata: ObjectMeta {
                    annotations: annotation
                        .map(|(k, v)| BTreeMap::from([(k.to_owned(), v.to_owned())])),
                    ..ObjectMeta::default()
                },
                spec: Some(ServiceSpec {
                    traffic_distribution: distribution.map(str::to_owned),
                    ..ServiceSpec::default()
                }),
                ..k8s::Service::default()
            })
        };
        let mode = |value| Some((TOPOLOGY_MODE_ANNOTATION, value));
        let rows = [
            (None, None, None),
            (Some("PreferSameNode"), None, Some(HintKind::Node)),
            (Some("PreferSameZone"), None, Some(HintKind::Zone)),
            (Some("PreferClose"), None, Some(HintKind::Zone)),
            (Some("Odd"), None, None),
            (None, mode("Auto"), Some(HintKind::Zone)),
            (None, mode("auto"), Some(HintKind::Zone)),
            (None, mode("aUto"), None),
            (None, mode("Disabled"), None),
            (
                None,
                Some((TOPOLOGY_AWARE_HINTS_ANNOTATION, "Auto")),
                Some(HintKind::Zone),
            ),
            // The field wins over the annotation.
            (Some("PreferSameNode"), mode("Auto"), Some(HintKind::Node)),
        ];
        for (distribution, annotation, expected) in rows {
            let got = RequestedHints::of(&service(distribution, annotation));
            assert_eq!(
                got.map(|r| r.kind),
                expected,
                "{distribution:?} {annotation:?}"
            );
        }
    }
}
