//! Which endpoints a frontend may use: the Cluster set and the Local set (kube-proxy's
//! `CategorizeEndpoints`).
use std::net::{IpAddr, SocketAddr};

use super::{node::ThisNode, topology::TopologyFilter};
pub(crate) use crate::model::Conditions;
use crate::model::EndpointRef;

/// One endpoint of an EndpointSlice, validated: its (first) address parsed and of the slice's
/// family. Ordered as the endpoint (address, conditions, node, hints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EndpointView<'a> {
    pub(crate) address: IpAddr,
    pub(crate) endpoint: EndpointRef<'a>,
}

impl<'a> EndpointView<'a> {
    pub(crate) fn conditions(&self) -> Conditions {
        self.endpoint.conditions()
    }

    pub(crate) fn is_on(&self, node: &ThisNode) -> bool {
        self.endpoint.node() == Some(node.name.as_str())
    }

    /// `hints.forNodes`, sorted.
    pub(crate) fn for_nodes(&self) -> &'a [std::sync::Arc<str>] {
        self.endpoint.for_nodes()
    }

    /// `hints.forZones`, sorted.
    pub(crate) fn for_zones(&self) -> &'a [std::sync::Arc<str>] {
        self.endpoint.for_zones()
    }
}

/// An endpoint with the backend port resolved for one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate<'a> {
    pub(crate) backend: SocketAddr,
    pub(crate) endpoint: EndpointView<'a>,
}

/// The backends a frontend may use, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BackendSets {
    /// For `Cluster` policies (and all external destinations).
    pub(crate) cluster: Vec<SocketAddr>,
    /// For `internalTrafficPolicy: Local`: never falls back to remote endpoints.
    pub(crate) local: Vec<SocketAddr>,
}

impl BackendSets {
    /// Categorizes the endpoints of one service port and one address family. The same backend
    /// listed in several slices counts once: the most usable copy is kept (ready, then
    /// serving+terminating, then on this node), whatever the input order.
    pub(crate) fn categorize(mut candidates: Vec<Candidate<'_>>, node: &ThisNode) -> Self {
        candidates.sort_by(|a, b| {
            a.backend
                .cmp(&b.backend)
                .then_with(|| usefulness(&b.endpoint, node).cmp(&usefulness(&a.endpoint, node)))
                .then_with(|| a.endpoint.cmp(&b.endpoint))
        });
        candidates.dedup_by(|later, first| later.backend == first.backend);

        let filter = TopologyFilter::from_hints(
            candidates
                .iter()
                .map(|c| c.endpoint)
                .filter(|ep| ep.conditions().ready),
            node,
        );
        let cluster = first_non_empty(
            &candidates,
            |ep| ep.conditions().ready && filter.keeps(ep),
            |ep| ep.conditions().serving_terminating(),
        );
        let local = first_non_empty(
            &candidates,
            |ep| ep.is_on(node) && ep.conditions().ready,
            |ep| ep.is_on(node) && ep.conditions().serving_terminating(),
        );
        BackendSets { cluster, local }
    }
}

/// Ranks copies of the same backend: higher is more useful.
fn usefulness(ep: &EndpointView<'_>, node: &ThisNode) -> (bool, bool, bool) {
    (
        ep.conditions().ready,
        ep.conditions().serving_terminating(),
        ep.is_on(node),
    )
}

/// Backends matching `preferred`, or if there are none, those matching `fallback`. Sorted,
/// since `candidates` is sorted and de-duplicated by backend.
fn first_non_empty(
    candidates: &[Candidate<'_>],
    preferred: impl Fn(&EndpointView<'_>) -> bool,
    fallback: impl Fn(&EndpointView<'_>) -> bool,
) -> Vec<SocketAddr> {
    let select = |keep: &dyn Fn(&EndpointView<'_>) -> bool| -> Vec<SocketAddr> {
        candidates
            .iter()
            .filter(|c| keep(&c.endpoint))
            .map(|c| c.backend)
            .collect()
    };
    let chosen = select(&preferred);
    if chosen.is_empty() {
        select(&fallback)
    } else {
        chosen
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! `BackendSets::categorize` stated directly: endpoint views in, the two sets out (in the
    //! style of kube-proxy's `TestCategorizeEndpoints`).
    use super::*;

    pub(crate) const READY: Conditions = Conditions {
        ready: true,
        serving: true,
        terminating: false,
    };
    pub(crate) const NOT_READY: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: false,
    };
    /// Serving and terminating: the graceful-termination fallback.
    pub(crate) const TERMINATING: Conditions = Conditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    pub(crate) const TERMINATING_NOT_SERVING: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: true,
    };

    use crate::model::{Endpoint, EndpointAddress};

    /// An endpoint on `node` ("" for none), without hints. Leaked: a test's endpoints live as
    /// long as the test.
    pub(crate) fn ep(address: &str, node: &str, conditions: Conditions) -> EndpointView<'static> {
        let address: IpAddr = address.parse().expect("test address");
        view(Endpoint::new(
            EndpointAddress::Ip(address),
            conditions,
            (!node.is_empty()).then(|| node.into()),
            None,
        ))
    }

    fn view(endpoint: Endpoint) -> EndpointView<'static> {
        let endpoint = Box::leak(Box::new(endpoint)).view();
        EndpointView {
            address: endpoint.ip().expect("test address"),
            endpoint,
        }
    }

    fn names(names: &[&str]) -> Box<[std::sync::Arc<str>]> {
        let mut names: Vec<std::sync::Arc<str>> = names.iter().map(|n| (*n).into()).collect();
        names.sort();
        names.dedup();
        names.into()
    }

    impl EndpointView<'static> {
        /// The endpoint it views, owned again.
        fn owned(self) -> Endpoint {
            let ep = self.endpoint;
            Endpoint::new(
                ep.address(),
                ep.conditions(),
                ep.node_name().cloned(),
                ep.hints().cloned(),
            )
        }

        pub(crate) fn with_zones(self, zones: &[&str]) -> Self {
            let mut endpoint = self.owned();
            endpoint.hints_mut().for_zones = names(zones);
            view(endpoint)
        }

        pub(crate) fn with_nodes(self, nodes: &[&str]) -> Self {
            let mut endpoint = self.owned();
            endpoint.hints_mut().for_nodes = names(nodes);
            view(endpoint)
        }
    }

    /// This node, `w1`, in `zone`.
    pub(crate) fn w1(zone: Option<&str>) -> ThisNode {
        ThisNode {
            name: "w1".to_owned(),
            zone: zone.map(str::to_owned),
            addresses: Vec::new(),
        }
    }

    struct Row {
        name: &'static str,
        node: ThisNode,
        endpoints: Vec<EndpointView<'static>>,
        /// Addresses (port 80) of the Cluster set.
        cluster: &'static [&'static str],
        /// Addresses (port 80) of the Local set.
        local: &'static [&'static str],
    }

    fn row(name: &'static str, endpoints: Vec<EndpointView<'static>>) -> Row {
        Row {
            name,
            node: w1(Some("zone-a")),
            endpoints,
            cluster: &[],
            local: &[],
        }
    }

    fn addresses(backends: &[SocketAddr]) -> Vec<String> {
        backends.iter().map(|b| b.ip().to_string()).collect()
    }

    #[test]
    fn categorize() {
        let rows = [
            Row {
                cluster: &["10.0.0.1", "10.0.0.2"],
                local: &["10.0.0.1"],
                ..row(
                    "ready endpoints: Cluster all, Local this node's",
                    vec![ep("10.0.0.1", "w1", READY), ep("10.0.0.2", "w2", READY)],
                )
            },
            Row {
                cluster: &["10.0.0.2"],
                local: &[],
                ..row(
                    "not ready is never used",
                    vec![ep("10.0.0.1", "w1", NOT_READY), ep("10.0.0.2", "w2", READY)],
                )
            },
            Row {
                cluster: &["10.0.0.2", "10.0.0.3"],
                local: &["10.0.0.3"],
                ..row(
                    "no ready endpoint: both sets fall back to serving+terminating",
                    vec![
                        ep("10.0.0.1", "w1", NOT_READY),
                        ep("10.0.0.2", "w2", TERMINATING),
                        ep("10.0.0.3", "w1", TERMINATING),
                        ep("10.0.0.4", "w1", TERMINATING_NOT_SERVING),
                    ],
                )
            },
            Row {
                cluster: &["10.0.0.2"],
                local: &["10.0.0.1"],
                ..row(
                    "Local falls back on its own, Cluster keeps the remote ready one",
                    vec![
                        ep("10.0.0.1", "w1", TERMINATING),
                        ep("10.0.0.2", "w2", READY),
                    ],
                )
            },
            Row {
                cluster: &["10.0.0.2", "10.0.0.3"],
                local: &["10.0.0.2"],
                ..row(
                    "both prefer ready endpoints over terminating ones",
                    vec![
                        ep("10.0.0.1", "w1", TERMINATING),
                        ep("10.0.0.2", "w1", READY),
                        ep("10.0.0.3", "w2", READY),
                    ],
                )
            },
            Row {
                cluster: &["10.0.0.2", "10.0.0.3"],
                local: &[],
                ..row(
                    "only remote endpoints: Local is empty, never remote",
                    vec![ep("10.0.0.2", "w2", READY), ep("10.0.0.3", "", READY)],
                )
            },
            Row {
                cluster: &[],
                local: &[],
                ..row("no endpoints", vec![])
            },
            Row {
                cluster: &["10.0.0.1", "10.0.0.3"],
                local: &["10.0.0.1", "10.0.0.2"],
                ..row(
                    "zone hints filter the Cluster set only",
                    vec![
                        ep("10.0.0.1", "w1", READY).with_zones(&["zone-a"]),
                        ep("10.0.0.2", "w1", READY).with_zones(&["zone-b"]),
                        ep("10.0.0.3", "w2", READY).with_zones(&["zone-a"]),
                        ep("10.0.0.4", "w3", READY).with_zones(&["zone-b"]),
                    ],
                )
            },
            Row {
                cluster: &["10.0.0.1", "10.0.0.2"],
                local: &["10.0.0.1"],
                ..row(
                    "a ready endpoint without hints: no filtering",
                    vec![
                        ep("10.0.0.1", "w1", READY).with_zones(&["zone-b"]),
                        ep("10.0.0.2", "w2", READY),
                    ],
                )
            },
            Row {
                cluster: &["10.0.0.2"],
                local: &[],
                ..row(
                    "hints of endpoints that are not ready do not count (zone-b's is dropped)",
                    vec![
                        ep("10.0.0.1", "w2", NOT_READY),
                        ep("10.0.0.2", "w2", READY).with_zones(&["zone-a"]),
                        ep("10.0.0.3", "w3", READY).with_zones(&["zone-b"]),
                    ],
                )
            },
            Row {
                cluster: &["10.0.0.1"],
                local: &[],
                ..row(
                    "duplicate backends count once, the most usable copy wins",
                    vec![
                        ep("10.0.0.1", "w2", NOT_READY),
                        ep("10.0.0.1", "w2", READY),
                        ep("10.0.0.1", "w2", TERMINATING),
                    ],
                )
            },
            Row {
                cluster: &["10.0.0.1"],
                local: &["10.0.0.1"],
                ..row(
                    "of two ready copies, the one on this node wins",
                    vec![ep("10.0.0.1", "w2", READY), ep("10.0.0.1", "w1", READY)],
                )
            },
        ];
        for row in rows {
            let candidates = row
                .endpoints
                .iter()
                .map(|endpoint| Candidate {
                    backend: SocketAddr::new(endpoint.address, 80),
                    endpoint: *endpoint,
                })
                .collect();
            let sets = BackendSets::categorize(candidates, &row.node);
            assert_eq!(
                addresses(&sets.cluster),
                row.cluster,
                "{}: cluster",
                row.name
            );
            assert_eq!(addresses(&sets.local), row.local, "{}: local", row.name);
            assert!(
                sets.cluster.iter().all(|b| b.port() == 80),
                "{}: backend port",
                row.name
            );
        }
    }
}
