//! Which endpoints a frontend may use: the Cluster set and the Local set (kube-proxy's
//! `CategorizeEndpoints`).
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointHints};

use super::{node::ThisNode, topology::TopologyFilter};

/// The conditions of an endpoint, with the API defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Conditions {
    /// `ready` true or unset.
    pub(crate) ready: bool,
    /// `serving` true or unset.
    pub(crate) serving: bool,
    /// `terminating` true (unset is false).
    pub(crate) terminating: bool,
}

impl Conditions {
    pub(crate) fn from_api(conditions: Option<&EndpointConditions>) -> Self {
        Conditions {
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        }
    }

    /// Usable as a fallback when no endpoint is ready (graceful termination, KEP-1669).
    pub(crate) fn serving_terminating(self) -> bool {
        self.serving && self.terminating
    }
}

/// The topology hints the EndpointSlice controller wrote on an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Hints {
    pub(crate) for_nodes: BTreeSet<String>,
    pub(crate) for_zones: BTreeSet<String>,
}

impl Hints {
    pub(crate) fn from_api(hints: Option<&EndpointHints>) -> Self {
        let Some(hints) = hints else {
            return Hints::default();
        };
        Hints {
            for_nodes: hints
                .for_nodes
                .iter()
                .flatten()
                .map(|h| h.name.clone())
                .collect(),
            for_zones: hints
                .for_zones
                .iter()
                .flatten()
                .map(|h| h.name.clone())
                .collect(),
        }
    }
}

/// One endpoint of an EndpointSlice, validated: its (first) address parsed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EndpointView {
    pub(crate) address: IpAddr,
    pub(crate) conditions: Conditions,
    pub(crate) node_name: Option<String>,
    pub(crate) hints: Hints,
}

impl EndpointView {
    pub(crate) fn new(address: IpAddr, endpoint: &Endpoint) -> Self {
        EndpointView {
            address,
            conditions: Conditions::from_api(endpoint.conditions.as_ref()),
            node_name: endpoint.node_name.clone(),
            hints: Hints::from_api(endpoint.hints.as_ref()),
        }
    }

    pub(crate) fn is_on(&self, node: &ThisNode) -> bool {
        self.node_name.as_deref() == Some(node.name.as_str())
    }
}

/// An endpoint with the backend port resolved for one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate<'a> {
    pub(crate) backend: SocketAddr,
    pub(crate) endpoint: &'a EndpointView,
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
                .then_with(|| usefulness(b.endpoint, node).cmp(&usefulness(a.endpoint, node)))
                .then_with(|| a.endpoint.cmp(b.endpoint))
        });
        candidates.dedup_by(|later, first| later.backend == first.backend);

        let filter = TopologyFilter::from_hints(
            candidates
                .iter()
                .map(|c| c.endpoint)
                .filter(|ep| ep.conditions.ready),
            node,
        );
        let cluster = first_non_empty(
            &candidates,
            |ep| ep.conditions.ready && filter.keeps(ep),
            |ep| ep.conditions.serving_terminating(),
        );
        let local = first_non_empty(
            &candidates,
            |ep| ep.is_on(node) && ep.conditions.ready,
            |ep| ep.is_on(node) && ep.conditions.serving_terminating(),
        );
        BackendSets { cluster, local }
    }
}

/// Ranks copies of the same backend: higher is more useful.
fn usefulness(ep: &EndpointView, node: &ThisNode) -> (bool, bool, bool) {
    (
        ep.conditions.ready,
        ep.conditions.serving_terminating(),
        ep.is_on(node),
    )
}

/// Backends matching `preferred`, or if there are none, those matching `fallback`. Sorted,
/// since `candidates` is sorted and de-duplicated by backend.
fn first_non_empty(
    candidates: &[Candidate<'_>],
    preferred: impl Fn(&EndpointView) -> bool,
    fallback: impl Fn(&EndpointView) -> bool,
) -> Vec<SocketAddr> {
    let select = |keep: &dyn Fn(&EndpointView) -> bool| -> Vec<SocketAddr> {
        candidates
            .iter()
            .filter(|c| keep(c.endpoint))
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
