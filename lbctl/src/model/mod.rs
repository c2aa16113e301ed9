//! The cluster objects the policy engine reads, in a compact form: each object keeps exactly the
//! fields the engine (`engine/`) and the agent's log of refusals (`agent/observe.rs`) read,
//! and nothing else.
//!
//! A k8s-openapi `Endpoint` alone is ~350 bytes before its strings; the compact [`Endpoint`] is
//! 32 bytes (16 in a slice of IPv4 endpoints, see [`Endpoints`]), with its node name and hints
//! shared. The means:
//! - `Box<str>` / `Box<[T]>` rather than `String` / `Vec` (no spare capacity);
//! - namespaces, port names, node names and zones interned as `Arc<str>` by an [`Interner`]
//!   owned by whoever converts (one per manifest read, or the Kubernetes source's own), and
//!   the port lists of Services and of EndpointSlices interned as `Arc<[_]>` alike;
//! - only the labels and annotations the engine reads, as typed fields, not maps;
//! - values parsed once where the engine only ever uses them parsed (an IP address), keeping
//!   the raw text where the engine reports it ([`Address::Invalid`]), so every report stays word
//!   for word;
//! - an absent field stays distinguishable from an empty one wherever a reader distinguishes
//!   them (a Service without `spec`, an endpoint without an address).
//!
//! Conversions from the k8s-openapi types live in `convert`: `From<&k8s>` for one object and
//! [`Inventory::from_objects`] for many (sharing one interner). Sources convert each object as
//! they read it; the engine never sees a k8s-openapi object.
mod convert;
mod endpoints;
#[cfg(test)]
mod tests;

use std::{fmt, net::IpAddr, sync::Arc, time::SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Serialize, Serializer};
use smallvec::SmallVec;

#[cfg(test)]
pub(crate) use convert::system_time;
pub use convert::{Interner, k8s_service_ref, k8s_slice_service};
pub use endpoints::{EndpointRef, Endpoints};

/// A snapshot of the objects that matter to one node, from any source (Kubernetes watches or
/// manifest files). Objects are shared: a snapshot is a copy of pointers, not of objects.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub nodes: Vec<Arc<Node>>,
}

/// The label by which a Service names the proxy that serves it (kube-proxy's
/// `LabelServiceProxyName`): Services that carry it belong to another proxy, unless its value
/// is this proxy's `NodeContext::service_proxy_name`.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label that ties an EndpointSlice to its Service (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The Node label the zone hints are matched against.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Asks for topology-aware routing (zone hints), current name.
pub const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
/// Asks for topology-aware routing (zone hints), name before Kubernetes 1.27.
pub const TOPOLOGY_AWARE_HINTS_ANNOTATION: &str = "service.kubernetes.io/topology-aware-hints";
/// The annotation the EndpointSlice controller sets to the time of the change (pod, service)
/// that triggered the slice's last update.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Namespace of objects that do not name one (hand-written manifests), as `kubectl apply` does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// An IP address as written in an object: parsed, or the text that does not parse (kept for
/// the report that names it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Address {
    Ip(IpAddr),
    Invalid(Box<str>),
}

impl Address {
    pub fn parse(text: &str) -> Self {
        match text.parse() {
            Ok(ip) => Address::Ip(ip),
            Err(_) => Address::Invalid(text.into()),
        }
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Address::Ip(ip) => s.collect_str(ip),
            Address::Invalid(text) => s.serialize_str(text),
        }
    }
}

/// A port's `protocol`; absent is TCP (the API default, and how every reader takes it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
    /// Anything else, as written (reported).
    Other(Box<str>),
}

impl PortProtocol {
    pub fn parse(protocol: Option<&str>) -> Self {
        match protocol {
            None | Some("TCP") => PortProtocol::Tcp,
            Some("UDP") => PortProtocol::Udp,
            Some("SCTP") => PortProtocol::Sctp,
            Some(other) => PortProtocol::Other(other.into()),
        }
    }

    /// As written (`TCP` when it was absent).
    pub fn as_str(&self) -> &str {
        match self {
            PortProtocol::Tcp => "TCP",
            PortProtocol::Udp => "UDP",
            PortProtocol::Sctp => "SCTP",
            PortProtocol::Other(other) => other,
        }
    }
}

/// A Service: `metadata` (name, namespace, creation time, the service-proxy-name label, the
/// topology annotations), `spec` and the load balancer ingress of `status`. Held for every
/// Service of the cluster, so what most Services do not set is in one optional box.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub creation_timestamp: Option<Time>,
    /// `None` when the object names none (distinct from an empty name for the agent's log).
    /// Shared: the plan's [`crate::plan::ServiceRef`]s point at it.
    #[serde(serialize_with = "serialize_opt_arc")]
    pub name: Option<Arc<str>>,
    /// [`DEFAULT_NAMESPACE`] when absent or empty.
    #[serde(serialize_with = "serialize_arc")]
    pub namespace: Arc<str>,
    /// `None`: the object has no `spec` (reported). Inline: every Service but a malformed one
    /// has one, and a box of its own took an allocation more per Service.
    pub spec: Option<ServiceSpec>,
    /// `None` when it sets none of them.
    #[serde(flatten)]
    rare: Option<Box<ServiceRare>>,
}

/// The parts of a [`Service`] few set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceRare {
    /// `service.kubernetes.io/topology-aware-hints` annotation.
    topology_aware_hints: Option<Box<str>>,
    /// `service.kubernetes.io/topology-mode` annotation.
    topology_mode: Option<Box<str>>,
    /// `service.kubernetes.io/service-proxy-name` label.
    service_proxy_name: Option<Box<str>>,
    /// `status.loadBalancer.ingress` entries with an IP address that are not `ipMode: Proxy`
    /// (the others have nothing to capture), in order.
    load_balancer_ingress: Box<[Ingress]>,
}

#[cfg(target_pointer_width = "64")]
// The spec inline (72 bytes): 72 and a boxed spec before, 136 and the box when the rare parts
// were fields of their own.
const _: () = assert!(size_of::<Service>() == 136);

impl Service {
    /// `metadata.name`, empty when absent.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// `spec.internalTrafficPolicy: Local`.
    pub fn internal_traffic_local(&self) -> bool {
        self.spec
            .as_ref()
            .is_some_and(|spec| spec.internal_traffic_local)
    }

    /// The `service.kubernetes.io/topology-aware-hints` annotation.
    pub fn topology_aware_hints(&self) -> Option<&str> {
        self.rare.as_ref()?.topology_aware_hints.as_deref()
    }

    /// The `service.kubernetes.io/topology-mode` annotation.
    pub fn topology_mode(&self) -> Option<&str> {
        self.rare.as_ref()?.topology_mode.as_deref()
    }

    /// The `service.kubernetes.io/service-proxy-name` label.
    pub fn service_proxy_name(&self) -> Option<&str> {
        self.rare.as_ref()?.service_proxy_name.as_deref()
    }

    /// `status.loadBalancer.ingress` entries with an IP address that are not `ipMode: Proxy`
    /// (the others have nothing to capture), in order.
    pub fn load_balancer_ingress(&self) -> &[Ingress] {
        self.rare
            .as_ref()
            .map_or(&[], |rare| &rare.load_balancer_ingress)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ServiceType {
    /// `ClusterIP`, absent, or a value the engine does not distinguish.
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// Held for every Service (inline in it): one cluster IP is inline too, and what few set is in
/// one optional box.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `spec.clusterIPs` when not empty, else `spec.clusterIP`; empty strings left out. The
    /// first being `None` (invalid, as written) means headless.
    pub cluster_ips: SmallVec<[Address; 1]>,
    /// `internalTrafficPolicy: Local`.
    pub internal_traffic_local: bool,
    /// Absent and empty alike (the engine reports "no ports" for both). Shared: the converter
    /// interns port lists, which repeat across Services (`http` on 80).
    pub ports: Arc<[ServicePort]>,
    /// `sessionAffinity: ClientIP`.
    pub session_affinity_client_ip: bool,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`, as written.
    pub affinity_timeout_seconds: Option<i32>,
    #[serde(rename = "type")]
    pub type_: ServiceType,
    /// `None` when it sets none of them.
    #[serde(flatten)]
    rare: Option<Box<SpecRare>>,
}

/// The parts of a [`ServiceSpec`] few set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct SpecRare {
    external_ips: Box<[Address]>,
    traffic_distribution: Option<Box<str>>,
}

#[cfg(target_pointer_width = "64")]
// 80 bytes and a boxed slice per cluster IP list when every field was its own.
const _: () = assert!(size_of::<ServiceSpec>() == 72);

impl ServiceSpec {
    /// `spec.externalIPs`.
    pub fn external_ips(&self) -> &[Address] {
        self.rare.as_ref().map_or(&[], |rare| &rare.external_ips)
    }

    /// `spec.trafficDistribution`.
    pub fn traffic_distribution(&self) -> Option<&str> {
        self.rare.as_ref()?.traffic_distribution.as_deref()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Empty when unnamed. Shared: each frontend of the port points at it, and the converter
    /// interns port names, which repeat across a cluster.
    #[serde(serialize_with = "serialize_arc")]
    pub name: Arc<str>,
    pub node_port: Option<i32>,
    pub port: i32,
    pub protocol: PortProtocol,
}

/// One load balancer ingress entry worth planning or reporting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Ingress {
    /// `ipMode` absent or `VIP`: a frontend.
    Vip(Address),
    /// An `ipMode` the engine does not know (reported, not captured), with the IP as written.
    UnknownMode { ip: Box<str>, mode: Box<str> },
}

/// An EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    /// `metadata.name`, empty when absent. Shared: the Kubernetes source's index of the slices
    /// of each Service holds this very string.
    pub name: Arc<str>,
    /// [`DEFAULT_NAMESPACE`] when absent or empty.
    pub namespace: Arc<str>,
    /// The `kubernetes.io/service-name` label, as written (possibly empty). Shared by the
    /// [`ServiceRef`](crate::plan::ServiceRef)s made of it ([`EndpointSlice::service_ref`]).
    pub service_name: Option<Arc<str>>,
    pub address_type: AddressType,
    /// Shared: the converter interns port lists, which every slice of a Service repeats (and
    /// Services often repeat between them).
    pub ports: Arc<[EndpointPort]>,
    pub endpoints: Endpoints,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` annotation, when present and
    /// valid (RFC 3339, not before 1970).
    pub trigger_time: Option<SystemTime>,
}

#[cfg(target_pointer_width = "64")]
// 128 bytes when the address type held its text as a fat pointer.
const _: () = assert!(size_of::<EndpointSlice>() == 120);

impl EndpointSlice {
    /// The Service label, unless empty (the engine's test for "belongs to a Service").
    pub fn service(&self) -> Option<&str> {
        self.service_name.as_deref().filter(|name| !name.is_empty())
    }

    /// The Service it belongs to, by [`EndpointSlice::service`], made of the slice's own
    /// strings (no allocation).
    pub fn service_ref(&self) -> Option<crate::plan::ServiceRef> {
        let name = self.service_name.as_ref().filter(|name| !name.is_empty())?;
        Some(crate::plan::ServiceRef {
            namespace: self.namespace.clone(),
            name: name.clone(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressType {
    IPv4,
    IPv6,
    Fqdn,
    /// As written; behind a thin pointer, so the type takes 16 bytes in every slice, not 24.
    Other(Box<Box<str>>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointPort {
    /// Empty when unnamed. Shared: the converter interns port names, which repeat across a
    /// cluster (`http`, `metrics`, ...).
    pub name: Arc<str>,
    pub protocol: PortProtocol,
    /// As written (checked by the engine).
    pub port: Option<i32>,
}

/// One endpoint, as built: its first address (all the engine uses, like kube-proxy),
/// conditions, node and hints. A slice holds its endpoints packed ([`Endpoints`]) and hands
/// out [`EndpointRef`] views, as [`Endpoint::view`] does.
///
/// The common case is inline (an IP address and conditions) and the rest behind one pointer to
/// a [`Place`] that endpoints on the same node with the same hints share (the converter interns
/// it): 32 bytes, 16 in a slice of IPv4 endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The address when it is [`EndpointAddress::Ip`]; unspecified IPv4 otherwise (the place
    /// holds the address then).
    ip: IpAddr,
    pub conditions: Conditions,
    /// `None` when the address is an IP and there is neither node name nor hints.
    place: Option<Arc<Place>>,
}

/// What an [`Endpoint`] holds besides its IP and conditions: its node, its topology hints, and
/// an address that is not an IP of the slice's family. Equal places are shared.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Place {
    node_name: Option<NodeName>,
    /// `None` when it has neither node nor zone hints.
    hints: Option<Hints>,
    /// Set when the address is not an IP of the slice's family (never [`EndpointAddress::Ip`]).
    address: Option<EndpointAddress>,
}

impl Place {
    /// Whether it holds anything at all (an endpoint needs no place otherwise).
    fn is_empty(&self) -> bool {
        *self == Place::default()
    }

    /// Whether endpoints may share it: one with an address of its own is unique.
    pub(crate) fn shareable(&self) -> bool {
        self.address.is_none()
    }
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<Endpoint>() == 32);

/// A node's name as endpoints hold it: a shared string behind a thin pointer, 8 bytes in each
/// endpoint where an `Arc<str>` takes 16 (300,000 endpoints: 2.4 MB). Interned by the
/// converter ([`Interner`]), so endpoints on one node share one allocation. Compares, orders
/// and hashes as its text.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(Arc<Box<str>>);

impl NodeName {
    /// Whether `a` and `b` are the same allocation (interned alike).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl std::ops::Deref for NodeName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeName {
    fn from(name: &str) -> Self {
        NodeName(Arc::new(name.into()))
    }
}

impl std::fmt::Debug for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl Endpoint {
    /// `hints`: `None` (or empty ones) when it has neither node nor zone hints.
    pub fn new(
        address: EndpointAddress,
        conditions: Conditions,
        node_name: Option<NodeName>,
        hints: Option<Hints>,
    ) -> Self {
        Self::with_place(address, conditions, node_name, hints, Arc::new)
    }

    /// As [`Endpoint::new`], with its place (when it needs one) made by `share`: the
    /// converter hands out an equal place it already holds.
    pub(crate) fn with_place(
        address: EndpointAddress,
        conditions: Conditions,
        node_name: Option<NodeName>,
        hints: Option<Hints>,
        share: impl FnOnce(Place) -> Arc<Place>,
    ) -> Self {
        let hints = hints.filter(|h| !(h.for_nodes.is_empty() && h.for_zones.is_empty()));
        let (ip, odd) = match address {
            EndpointAddress::Ip(ip) => (ip, None),
            odd => (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), Some(odd)),
        };
        let place = Place {
            node_name,
            hints,
            address: odd,
        };
        Endpoint {
            ip,
            conditions,
            place: (!place.is_empty()).then(|| share(place)),
        }
    }

    /// A view of it, as [`Endpoints`] hands out.
    pub fn view(&self) -> EndpointRef<'_> {
        EndpointRef::new(self.ip, self.conditions, self.place.as_deref())
    }

    /// Its hints, made empty ones first when it has none (the engine's tests add hints so).
    #[cfg(test)]
    pub(crate) fn hints_mut(&mut self) -> &mut Hints {
        Arc::make_mut(self.place.get_or_insert_with(Default::default))
            .hints
            .get_or_insert_with(Hints::default)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointAddress {
    /// Of the slice's `addressType` (any family when that is not IPv4 or IPv6).
    Ip(IpAddr),
    /// A valid address of the other family than the slice's `addressType`, as written.
    OtherFamily(Box<str>),
    /// Not an IP address, as written.
    Invalid(Box<str>),
    /// `addresses` empty; `target` is `"<kind> <name>"` of its `targetRef` when it has both.
    Missing { target: Option<Box<str>> },
}

/// The conditions of an endpoint, with the API defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conditions {
    /// `ready` true or unset.
    pub ready: bool,
    /// `serving` true or unset.
    pub serving: bool,
    /// `terminating` true (unset is false).
    pub terminating: bool,
}

impl Conditions {
    /// Usable as a fallback when no endpoint is ready (graceful termination, KEP-1669).
    pub fn serving_terminating(self) -> bool {
        self.serving && self.terminating
    }
}

/// The topology hints the EndpointSlice controller wrote on an endpoint: sorted, de-duplicated.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hints {
    pub for_nodes: Box<[Arc<str>]>,
    pub for_zones: Box<[Arc<str>]>,
}

/// A Node: its name, zone label and the addresses NodePorts listen on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: Option<Box<str>>,
    /// The `topology.kubernetes.io/zone` label, as written (possibly empty).
    #[serde(serialize_with = "serialize_opt_arc")]
    pub zone: Option<Arc<str>>,
    /// The `InternalIP` and `ExternalIP` entries of `status.addresses`, in order.
    pub addresses: Box<[NodeAddress]>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeAddress {
    pub address: Address,
    #[serde(rename = "type")]
    pub type_: NodeAddressType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NodeAddressType {
    InternalIP,
    ExternalIP,
}

impl fmt::Display for NodeAddressType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeAddressType::InternalIP => "InternalIP",
            NodeAddressType::ExternalIP => "ExternalIP",
        })
    }
}

fn serialize_arc<S: Serializer>(value: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value)
}

fn serialize_opt_arc<S: Serializer>(value: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => s.serialize_some(&**value),
        None => s.serialize_none(),
    }
}
