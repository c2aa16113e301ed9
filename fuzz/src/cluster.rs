//! A cluster described compactly, so that libFuzzer's bytes (through `Arbitrary`) mostly make
//! objects that meet each other: names, addresses and ports come from small pools (services
//! collide, slices find their service, endpoints repeat across slices), with edge values and raw
//! strings mixed in.
use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeStatus,
            ObjectReference, Service, ServicePort, ServiceSpec, ServiceStatus,
            SessionAffinityConfig,
        },
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode,
            ForZone,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use lbctl::{
    engine::{NodeContext, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, ZONE_LABEL},
    model::Inventory,
};

const NAMES: [&str; 5] = ["web", "db", "dns", "a", ""];
/// Values of the service-proxy-name label and of `--service-proxy-name`.
const PROXY_NAMES: [&str; 3] = ["lbctl", "other", ""];
const NAMESPACES: [Option<&str>; 4] = [None, Some("default"), Some(""), Some("kube-system")];
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const ZONES: [&str; 3] = ["z1", "z2", ""];
const PORT_NAMES: [Option<&str>; 4] = [Some("http"), None, Some(""), Some("dns")];
const PROTOCOLS: [Option<&str>; 6] = [
    None,
    Some("TCP"),
    Some("UDP"),
    Some("SCTP"),
    Some("tcp"),
    Some("ICMP"),
];
const COMMON_PORTS: [i32; 4] = [80, 443, 8080, 53];
const EDGE_PORTS: [i32; 8] = [0, -1, 1, 65535, 65536, 30080, i32::MAX, i32::MIN];
const GARBAGE_IPS: [&str; 9] = [
    "None",
    "",
    "10.96.0.999",
    "010.96.0.1",
    "::ffff:10.96.0.1",
    "fd00::zz",
    "10.96.0.1/32",
    " 10.96.0.1",
    "0.0.0.0",
];
const SERVICE_TYPES: [&str; 5] = [
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "Odd",
];
const POLICIES: [&str; 3] = ["Cluster", "Local", "local"];
const DISTRIBUTIONS: [&str; 4] = ["PreferSameNode", "PreferSameZone", "PreferClose", "Odd"];
const IP_MODES: [&str; 3] = ["VIP", "Proxy", "Odd"];
const ADDRESS_TYPES: [&str; 4] = ["IPv4", "IPv6", "FQDN", "Odd"];
const NODE_ADDRESS_TYPES: [&str; 4] = ["InternalIP", "ExternalIP", "Hostname", "InternalDNS"];

fn pick<T: Copy>(pool: &[T], index: u8) -> T {
    pool[usize::from(index) % pool.len()]
}

fn owned(text: Option<&str>) -> Option<String> {
    text.map(str::to_owned)
}

/// An address: mostly from small pools of service, pod and node addresses of both families.
#[derive(Arbitrary, Debug, Clone)]
pub enum Ip {
    ClusterV4(u8),
    ClusterV6(u8),
    PodV4(u8),
    PodV6(u8),
    NodeV4(u8),
    Garbage(u8),
    Raw(String),
}

impl Ip {
    fn text(&self) -> String {
        match self {
            Ip::ClusterV4(n) => format!("10.96.0.{}", n % 4),
            Ip::ClusterV6(n) => format!("fd00:96::{}", n % 4),
            Ip::PodV4(n) => format!("10.244.{}.{}", n % 2, (n / 2) % 4),
            Ip::PodV6(n) => format!("fd00:244::{}", n % 8),
            Ip::NodeV4(n) => format!("192.168.0.{}", 1 + n % 3),
            Ip::Garbage(n) => pick(&GARBAGE_IPS, *n).to_owned(),
            Ip::Raw(text) => text.clone(),
        }
    }
}

/// A port number: common ones, edge values, or anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Port {
    Common(u8),
    Edge(u8),
    Raw(i32),
}

impl Port {
    fn number(self) -> i32 {
        match self {
            Port::Common(n) => pick(&COMMON_PORTS, n),
            Port::Edge(n) => pick(&EDGE_PORTS, n),
            Port::Raw(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct Meta {
    name: u8,
    namespace: u8,
    /// Minutes after a fixed instant.
    created: Option<u8>,
}

impl Meta {
    fn object_meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(pick(&NAMES, self.name).to_owned()),
            namespace: owned(pick(&NAMESPACES, self.namespace)),
            creation_timestamp: self.created.map(|minutes| {
                let second = 1_700_000_000 + i64::from(minutes) * 60;
                Time(Timestamp::from_second(second).unwrap_or_default())
            }),
            ..Default::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct SvcPort {
    name: u8,
    protocol: u8,
    port: Port,
    node_port: Option<Port>,
    target_port: Option<Port>,
}

impl SvcPort {
    fn build(&self) -> ServicePort {
        ServicePort {
            name: owned(pick(&PORT_NAMES, self.name)),
            protocol: owned(pick(&PROTOCOLS, self.protocol)),
            port: self.port.number(),
            node_port: self.node_port.map(Port::number),
            target_port: self.target_port.map(|p| IntOrString::Int(p.number())),
            ..Default::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct Ingress {
    ip: Option<Ip>,
    ip_mode: Option<u8>,
}

#[derive(Arbitrary, Debug)]
pub struct Svc {
    meta: Meta,
    /// `None`: a Service without spec.
    spec: Option<SvcSpec>,
    ingress: Vec<Ingress>,
    topology_annotation: bool,
    /// The service-proxy-name label.
    proxy_name: Option<u8>,
}

#[derive(Arbitrary, Debug)]
pub struct SvcSpec {
    type_: Option<u8>,
    cluster_ip: Option<Ip>,
    cluster_ips: Option<Vec<Ip>>,
    external_ips: Option<Vec<Ip>>,
    ports: Option<Vec<SvcPort>>,
    internal_policy: Option<u8>,
    external_policy: Option<u8>,
    distribution: Option<u8>,
    client_ip_affinity: bool,
    affinity_timeout: Option<i32>,
}

impl Svc {
    fn build(&self) -> Service {
        let mut metadata = self.meta.object_meta();
        if self.topology_annotation {
            metadata.annotations = Some(BTreeMap::from([(
                "service.kubernetes.io/topology-mode".to_owned(),
                "Auto".to_owned(),
            )]));
        }
        if let Some(proxy) = self.proxy_name {
            metadata.labels = Some(BTreeMap::from([(
                SERVICE_PROXY_NAME_LABEL.to_owned(),
                pick(&PROXY_NAMES, proxy).to_owned(),
            )]));
        }
        let ingress = self
            .ingress
            .iter()
            .map(|entry| LoadBalancerIngress {
                ip: entry.ip.as_ref().map(Ip::text),
                ip_mode: entry.ip_mode.map(|m| pick(&IP_MODES, m).to_owned()),
                ..Default::default()
            })
            .collect();
        Service {
            metadata,
            spec: self.spec.as_ref().map(SvcSpec::build),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(ingress),
                }),
                ..Default::default()
            }),
        }
    }
}

impl SvcSpec {
    fn build(&self) -> ServiceSpec {
        let ips = |list: &Option<Vec<Ip>>| list.as_ref().map(|l| l.iter().map(Ip::text).collect());
        ServiceSpec {
            type_: self.type_.map(|t| pick(&SERVICE_TYPES, t).to_owned()),
            cluster_ip: self.cluster_ip.as_ref().map(Ip::text),
            cluster_ips: ips(&self.cluster_ips),
            external_ips: ips(&self.external_ips),
            ports: self
                .ports
                .as_ref()
                .map(|ports| ports.iter().map(SvcPort::build).collect()),
            internal_traffic_policy: self.internal_policy.map(|p| pick(&POLICIES, p).to_owned()),
            external_traffic_policy: self.external_policy.map(|p| pick(&POLICIES, p).to_owned()),
            traffic_distribution: self
                .distribution
                .map(|d| pick(&DISTRIBUTIONS, d).to_owned()),
            session_affinity: self.client_ip_affinity.then(|| "ClientIP".to_owned()),
            session_affinity_config: self.affinity_timeout.map(|t| SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(t),
                }),
            }),
            ..Default::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct SlicePort {
    name: u8,
    protocol: u8,
    port: Option<Port>,
}

/// `hints.forNodes` and `hints.forZones`, as indexes into the pools.
#[derive(Arbitrary, Debug)]
pub struct Hints {
    nodes: Option<Vec<u8>>,
    zones: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
pub struct Ep {
    addresses: Vec<Ip>,
    /// ready, serving, terminating.
    conditions: Option<(Option<bool>, Option<bool>, Option<bool>)>,
    node: Option<u8>,
    hints: Option<Hints>,
    pod: Option<u8>,
}

impl Ep {
    fn build(&self) -> Endpoint {
        let names = |list: &Option<Vec<u8>>, pool: &[&str]| -> Option<Vec<String>> {
            list.as_ref()
                .map(|l| l.iter().map(|i| pick(pool, *i).to_owned()).collect())
        };
        Endpoint {
            addresses: self.addresses.iter().map(Ip::text).collect(),
            conditions: self
                .conditions
                .map(|(ready, serving, terminating)| EndpointConditions {
                    ready,
                    serving,
                    terminating,
                }),
            node_name: self.node.map(|n| pick(&NODES, n).to_owned()),
            hints: self.hints.as_ref().map(|hints| EndpointHints {
                for_nodes: names(&hints.nodes, &NODES)
                    .map(|n| n.into_iter().map(|name| ForNode { name }).collect()),
                for_zones: names(&hints.zones, &ZONES)
                    .map(|z| z.into_iter().map(|name| ForZone { name }).collect()),
            }),
            target_ref: self.pod.map(|p| ObjectReference {
                kind: Some("Pod".to_owned()),
                name: Some(format!("pod-{p}")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct Slice {
    meta: Meta,
    /// Index into the service names; `None`: no label.
    service: Option<u8>,
    address_type: u8,
    ports: Option<Vec<SlicePort>>,
    endpoints: Vec<Ep>,
}

impl Slice {
    fn build(&self) -> EndpointSlice {
        let mut metadata = self.meta.object_meta();
        metadata.labels = self
            .service
            .map(|s| BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), pick(&NAMES, s).to_owned())]));
        EndpointSlice {
            metadata,
            address_type: pick(&ADDRESS_TYPES, self.address_type).to_owned(),
            endpoints: self.endpoints.iter().map(Ep::build).collect(),
            ports: self.ports.as_ref().map(|ports| {
                ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: owned(pick(&PORT_NAMES, p.name)),
                        protocol: owned(pick(&PROTOCOLS, p.protocol)),
                        port: p.port.map(Port::number),
                        ..Default::default()
                    })
                    .collect()
            }),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct NodeObj {
    name: u8,
    zone: Option<u8>,
    addresses: Vec<(u8, Ip)>,
}

impl NodeObj {
    fn build(&self) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(pick(&NODES, self.name).to_owned()),
                labels: self
                    .zone
                    .map(|z| BTreeMap::from([(ZONE_LABEL.to_owned(), pick(&ZONES, z).to_owned())])),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    self.addresses
                        .iter()
                        .map(|(kind, ip)| NodeAddress {
                            type_: pick(&NODE_ADDRESS_TYPES, *kind).to_owned(),
                            address: ip.text(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A whole input of `engine::plan`: the objects and the node the plan is for.
#[derive(Arbitrary, Debug)]
pub struct Cluster {
    node: u8,
    zone: Option<u8>,
    services: Vec<Svc>,
    slices: Vec<Slice>,
    nodes: Vec<NodeObj>,
    /// `--service-proxy-name` (never empty: the CLI refuses an empty one).
    proxy_name: Option<u8>,
}

impl Cluster {
    pub fn inventory(&self) -> Inventory {
        let services: Vec<_> = self.services.iter().map(Svc::build).collect();
        let slices: Vec<_> = self.slices.iter().map(Slice::build).collect();
        let nodes: Vec<_> = self.nodes.iter().map(NodeObj::build).collect();
        Inventory::from_objects(&services, &slices, &nodes)
    }

    pub fn node(&self) -> NodeContext {
        let mut node = NodeContext::new(pick(&NODES, self.node));
        if let Some(zone) = self.zone {
            node = node.with_zone(pick(&ZONES, zone));
        }
        if let Some(proxy) = self.proxy_name {
            node = node.with_service_proxy_name(pick(&PROXY_NAMES[..2], proxy));
        }
        node
    }
}
