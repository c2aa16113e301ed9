//! k8s-openapi objects -> the compact model. Lossless for what the engine and the agent read.
use std::{collections::HashSet, net::IpAddr, sync::Arc, time::SystemTime};

use k8s_openapi::{
    api::{core::v1 as core, discovery::v1 as discovery},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};

use crate::plan::ServiceRef;

use super::{
    Address, AddressType, Conditions, DEFAULT_NAMESPACE, Endpoint, EndpointAddress, EndpointPort,
    EndpointSlice, Hints, Ingress, Inventory, Node, NodeAddress, NodeAddressType, NodeName, Place,
    PortProtocol, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, Service, ServicePort, ServiceRare,
    ServiceSpec, ServiceType, SpecRare, TOPOLOGY_AWARE_HINTS_ANNOTATION, TOPOLOGY_MODE_ANNOTATION,
    TRIGGER_TIME_ANNOTATION, ZONE_LABEL,
};

/// Shares the strings and lists many objects repeat (namespaces, port names, node names, zones,
/// port lists): one allocation per distinct value. Owned by whoever converts: for one read, or for the life of a Kubernetes
/// source's store. Strings no object holds any more (a deleted namespace, a scaled-down node)
/// are dropped whenever the set has doubled since the last such sweep, so a long-lived interner
/// stays as bounded as the objects it serves, at an amortized constant cost per string.
#[derive(Debug, Default)]
pub struct Interner {
    strings: Pool<Arc<str>>,
    /// Node names of endpoints, behind thin pointers.
    node_names: Pool<NodeName>,
    /// Places of endpoints (node and hints), shared by the endpoints on one node with the same
    /// hints.
    places: Pool<Arc<Place>>,
    /// Port lists of Services and of EndpointSlices.
    service_ports: Pool<Arc<[ServicePort]>>,
    slice_ports: Pool<Arc<[EndpointPort]>>,
}

/// The smallest set an interner sweeps.
const MIN_SWEEP: usize = 1024;

/// A shared value that knows whether anything but its pool still holds it.
trait Pooled: Clone + Eq + std::hash::Hash {
    fn held_elsewhere(&self) -> bool;
}

impl<T: Eq + std::hash::Hash + ?Sized> Pooled for Arc<T> {
    fn held_elsewhere(&self) -> bool {
        Arc::strong_count(self) > 1
    }
}

impl Pooled for NodeName {
    fn held_elsewhere(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
}

/// One kind of shared value: one per distinct value, swept of the values nothing else holds
/// whenever the set has doubled since the last sweep.
#[derive(Debug)]
struct Pool<T> {
    set: HashSet<T>,
    /// The size at which the next sweep runs.
    sweep_at: usize,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self {
            set: HashSet::new(),
            sweep_at: MIN_SWEEP,
        }
    }
}

impl<T: Pooled> Pool<T> {
    /// The value equal to `key`, made by `make` when there is none yet.
    fn share<Q>(&mut self, key: &Q, make: impl FnOnce(&Q) -> T) -> T
    where
        T: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        if let Some(shared) = self.set.get(key) {
            return shared.clone();
        }
        if self.set.len() >= self.sweep_at {
            // Held only here: no object uses it any more.
            self.set.retain(Pooled::held_elsewhere);
            self.sweep_at = MIN_SWEEP.max(self.set.len() * 2);
        }
        let shared = make(key);
        self.set.insert(shared.clone());
        shared
    }
}

impl Interner {
    pub fn new() -> Self {
        Self::default()
    }

    /// As [`Interner::intern`], for the node name of an endpoint.
    pub fn node_name(&mut self, value: &str) -> NodeName {
        self.node_names
            .share(value, |name: &str| NodeName::from(name))
    }

    /// An endpoint's place, shared with the endpoints that have an equal one (unless it holds
    /// an address of its own).
    fn place(&mut self, place: Place) -> Arc<Place> {
        if !place.shareable() {
            return Arc::new(place);
        }
        self.places.share(&place, |place| Arc::new(place.clone()))
    }

    pub fn intern(&mut self, value: &str) -> Arc<str> {
        self.strings.share(value, |s: &str| Arc::from(s))
    }

    /// Distinct strings held.
    pub fn len(&self) -> usize {
        self.strings.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.set.is_empty()
    }

    /// A namespace, defaulted as `kubectl apply` does.
    fn namespace(&mut self, meta: &ObjectMeta) -> Arc<str> {
        self.intern(namespace_str(meta))
    }

    pub fn service(&mut self, svc: &core::Service) -> Service {
        let meta = &svc.metadata;
        let annotation = |key: &str| -> Option<Box<str>> {
            Some(meta.annotations.as_ref()?.get(key)?.as_str().into())
        };
        let label = |key: &str| -> Option<Box<str>> {
            Some(meta.labels.as_ref()?.get(key)?.as_str().into())
        };
        let load_balancer_ingress = svc
            .status
            .as_ref()
            .and_then(|status| status.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_deref())
            .unwrap_or_default()
            .iter()
            .filter_map(|entry| {
                // Hostname-only entries have nothing to capture.
                let ip = entry.ip.as_deref()?;
                match entry.ip_mode.as_deref() {
                    None | Some("VIP") => Some(Ingress::Vip(Address::parse(ip))),
                    // The load balancer proxies: traffic to it must leave the node.
                    Some("Proxy") => None,
                    Some(mode) => Some(Ingress::UnknownMode {
                        ip: ip.into(),
                        mode: mode.into(),
                    }),
                }
            })
            .collect();
        let rare = ServiceRare {
            topology_aware_hints: annotation(TOPOLOGY_AWARE_HINTS_ANNOTATION),
            topology_mode: annotation(TOPOLOGY_MODE_ANNOTATION),
            service_proxy_name: label(SERVICE_PROXY_NAME_LABEL),
            load_balancer_ingress,
        };
        Service {
            creation_timestamp: meta.creation_timestamp.clone(),
            name: meta.name.as_deref().map(Arc::from),
            namespace: self.namespace(meta),
            spec: svc.spec.as_ref().map(|spec| service_spec(self, spec)),
            rare: (rare != ServiceRare::default()).then(|| Box::new(rare)),
        }
    }

    pub fn endpoint_slice(&mut self, slice: &discovery::EndpointSlice) -> EndpointSlice {
        let meta = &slice.metadata;
        let address_type = match slice.address_type.as_str() {
            "IPv4" => AddressType::IPv4,
            "IPv6" => AddressType::IPv6,
            "FQDN" => AddressType::Fqdn,
            other => AddressType::Other(Box::new(other.into())),
        };
        EndpointSlice {
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: self.namespace(meta),
            service_name: meta
                .labels
                .as_ref()
                .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
                .map(|name| name.as_str().into()),
            ports: {
                let ports: Vec<EndpointPort> = slice
                    .ports
                    .iter()
                    .flatten()
                    .map(|port| EndpointPort {
                        name: self.intern(port.name.as_deref().unwrap_or_default()),
                        protocol: PortProtocol::parse(port.protocol.as_deref()),
                        port: port.port,
                    })
                    .collect();
                self.slice_ports
                    .share(&ports[..], |ports: &[EndpointPort]| Arc::from(ports))
            },
            endpoints: slice
                .endpoints
                .iter()
                .map(|endpoint| self.endpoint(endpoint, &address_type))
                .collect(),
            address_type,
            trigger_time: meta
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(TRIGGER_TIME_ANNOTATION))
                .and_then(|value| system_time(value.parse().ok()?)),
        }
    }

    fn endpoint(&mut self, endpoint: &discovery::Endpoint, family: &AddressType) -> Endpoint {
        let address = match endpoint.addresses.first() {
            Some(address) => match address.parse::<IpAddr>() {
                Ok(ip) if matches!(family, AddressType::IPv4) && !ip.is_ipv4() => {
                    EndpointAddress::OtherFamily(address.as_str().into())
                }
                Ok(ip) if matches!(family, AddressType::IPv6) && !ip.is_ipv6() => {
                    EndpointAddress::OtherFamily(address.as_str().into())
                }
                Ok(ip) => EndpointAddress::Ip(ip),
                Err(_) => EndpointAddress::Invalid(address.as_str().into()),
            },
            None => EndpointAddress::Missing {
                // Named by what it points to, not its position.
                target: endpoint.target_ref.as_ref().and_then(|target| {
                    Some(
                        format!("{} {}", target.kind.as_deref()?, target.name.as_deref()?)
                            .into_boxed_str(),
                    )
                }),
            },
        };
        let conditions = endpoint.conditions.as_ref();
        let hints = endpoint.hints.as_ref().and_then(|hints| {
            let for_nodes = self.sorted_names(hints.for_nodes.iter().flatten().map(|h| &h.name));
            let for_zones = self.sorted_names(hints.for_zones.iter().flatten().map(|h| &h.name));
            (!for_nodes.is_empty() || !for_zones.is_empty()).then_some(Hints {
                for_nodes,
                for_zones,
            })
        });
        let node_name = endpoint
            .node_name
            .as_deref()
            .map(|name| self.node_name(name));
        Endpoint::with_place(
            address,
            Conditions {
                ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            },
            node_name,
            hints,
            |place| self.place(place),
        )
    }

    fn sorted_names<'a>(&mut self, names: impl Iterator<Item = &'a String>) -> Box<[Arc<str>]> {
        let mut names: Vec<Arc<str>> = names.map(|name| self.intern(name)).collect();
        names.sort();
        names.dedup();
        names.into_boxed_slice()
    }

    pub fn node(&mut self, node: &core::Node) -> Node {
        let addresses = node
            .status
            .as_ref()
            .and_then(|status| status.addresses.as_deref())
            .unwrap_or_default()
            .iter()
            .filter_map(|addr| {
                let type_ = match addr.type_.as_str() {
                    "InternalIP" => NodeAddressType::InternalIP,
                    "ExternalIP" => NodeAddressType::ExternalIP,
                    // NodePorts are planned on these two kinds only.
                    _ => return None,
                };
                Some(NodeAddress {
                    address: Address::parse(&addr.address),
                    type_,
                })
            })
            .collect();
        Node {
            name: node.metadata.name.as_deref().map(Box::from),
            zone: node
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(ZONE_LABEL))
                .map(|zone| self.intern(zone)),
            addresses,
        }
    }
}

/// A Service's spec, its port names and port list interned in `strings`.
fn service_spec(strings: &mut Interner, spec: &core::ServiceSpec) -> ServiceSpec {
    let cluster_ips: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    ServiceSpec {
        cluster_ips: cluster_ips
            .into_iter()
            .filter(|ip| !ip.is_empty())
            .map(Address::parse)
            .collect(),
        internal_traffic_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        ports: {
            let ports: Vec<ServicePort> = spec
                .ports
                .iter()
                .flatten()
                .map(|port| ServicePort {
                    name: strings.intern(port.name.as_deref().unwrap_or_default()),
                    node_port: port.node_port,
                    port: port.port,
                    protocol: PortProtocol::parse(port.protocol.as_deref()),
                })
                .collect();
            strings
                .service_ports
                .share(&ports[..], |ports: &[ServicePort]| Arc::from(ports))
        },
        session_affinity_client_ip: spec.session_affinity.as_deref() == Some("ClientIP"),
        affinity_timeout_seconds: spec
            .session_affinity_config
            .as_ref()
            .and_then(|config| config.client_ip.as_ref())
            .and_then(|client_ip| client_ip.timeout_seconds),
        type_: match spec.type_.as_deref() {
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            _ => ServiceType::ClusterIP,
        },
        rare: {
            let rare = SpecRare {
                external_ips: spec
                    .external_ips
                    .iter()
                    .flatten()
                    .map(|ip| Address::parse(ip))
                    .collect(),
                traffic_distribution: spec.traffic_distribution.as_deref().map(Box::from),
            };
            (rare != SpecRare::default()).then(|| Box::new(rare))
        },
    }
}

/// The ref of a k8s-openapi Service, as `engine::service_ref_of` gives for its compact form
/// (for sources that key their stores by the API objects).
pub fn k8s_service_ref(svc: &core::Service) -> ServiceRef {
    ServiceRef::new(
        namespace_str(&svc.metadata),
        svc.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The Service a k8s-openapi EndpointSlice belongs to, as `engine::slice_service` gives for
/// its compact form.
pub fn k8s_slice_service(slice: &discovery::EndpointSlice) -> Option<ServiceRef> {
    let name = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .filter(|name| !name.is_empty())?;
    Some(ServiceRef::new(
        namespace_str(&slice.metadata),
        name.as_str(),
    ))
}

fn namespace_str(meta: &ObjectMeta) -> &str {
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns,
        _ => DEFAULT_NAMESPACE,
    }
}

/// A timestamp as `SystemTime` (`None` before 1970: no trigger time is).
pub(crate) fn system_time(at: Timestamp) -> Option<SystemTime> {
    let seconds = u64::try_from(at.as_second()).ok()?;
    let nanos = u32::try_from(at.subsec_nanosecond()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(seconds, nanos))
}

impl From<&core::Service> for Service {
    fn from(svc: &core::Service) -> Self {
        Interner::new().service(svc)
    }
}

impl From<&discovery::EndpointSlice> for EndpointSlice {
    fn from(slice: &discovery::EndpointSlice) -> Self {
        Interner::new().endpoint_slice(slice)
    }
}

impl From<&core::Node> for Node {
    fn from(node: &core::Node) -> Self {
        Interner::new().node(node)
    }
}

impl Inventory {
    /// Converts k8s-openapi objects (tests, and sources that hold them), sharing one interner.
    pub fn from_objects<'a>(
        services: impl IntoIterator<Item = &'a core::Service>,
        slices: impl IntoIterator<Item = &'a discovery::EndpointSlice>,
        nodes: impl IntoIterator<Item = &'a core::Node>,
    ) -> Self {
        let mut interner = Interner::new();
        Inventory {
            services: services
                .into_iter()
                .map(|svc| Arc::new(interner.service(svc)))
                .collect(),
            endpoint_slices: slices
                .into_iter()
                .map(|slice| Arc::new(interner.endpoint_slice(slice)))
                .collect(),
            nodes: nodes
                .into_iter()
                .map(|node| Arc::new(interner.node(node)))
                .collect(),
        }
    }

    /// Appends `other`'s objects.
    pub fn extend(&mut self, other: Inventory) {
        self.services.extend(other.services);
        self.endpoint_slices.extend(other.endpoint_slices);
        self.nodes.extend(other.nodes);
    }
}
