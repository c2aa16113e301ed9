//! What one node must program: the output of the policy engine and the input of the datapath
//! writer. The two meet only here; nothing in this file knows Kubernetes objects or BPF.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::{Serialize, Serializer};

mod backends;

pub use backends::BackendList;

/// Transport protocol of a frontend. SCTP ports are not captured by the socket hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kind of service address a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    ExternalIP,
    LoadBalancer,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIP => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIP => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        })
    }
}

/// `namespace/name` of a Service. Both are shared strings: the namespace is the model's
/// interned one, the name the Service object's, so the many copies a plan holds (each frontend,
/// each claim, the metrics' and names' label sets) cost a pointer each, not an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceRef {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        ServiceRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Serialize for ServiceRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A frontend's identity: what the engine claims (one service per key) and what the datapath
/// keys its maps by (`datapath::desired` adds the BPF map encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl FrontendKey {
    pub fn new(addr: SocketAddr, protocol: Protocol) -> Self {
        FrontendKey {
            address: addr.ip(),
            port: addr.port(),
            protocol,
        }
    }
}

/// `10.96.0.10:80/tcp`, `[fd00::10]:53/udp`.
impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{}/{proto}", SocketAddr::new(self.address, self.port))
    }
}

/// One service address on this node and the backends a connect to it may reach. An empty
/// `backends` means the service exists but has no usable endpoint: connects are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frontend {
    pub service: ServiceRef,
    /// Shared with the Service object's port (and every frontend of that port).
    #[serde(serialize_with = "serialize_str")]
    pub port_name: Arc<str>,
    pub protocol: Protocol,
    pub kind: FrontendKind,
    pub address: IpAddr,
    pub port: u16,
    /// Sorted; IPv6 ones print as `[fd00::5]:8080`. Shared with the desired datapath state
    /// ([`crate::datapath::ServiceSpec::backends`]): one list per frontend, not two.
    pub backends: BackendList,
    /// `sessionAffinity: ClientIP` timeout, when set.
    pub affinity_timeout_seconds: Option<u32>,
}

impl Frontend {
    /// Its identity: address, port, protocol.
    pub fn key(&self) -> FrontendKey {
        FrontendKey {
            address: self.address,
            port: self.port,
            protocol: self.protocol,
        }
    }
}

fn serialize_str<S: Serializer>(value: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value)
}

/// An input object (or part of one) that was left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// e.g. `EndpointSlice default/quote-x7k2p`.
    pub object: String,
    pub reason: String,
}

/// Everything one node must program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub node: String,
    /// Sorted by service, kind, address, port, protocol.
    pub frontends: Vec<Frontend>,
    pub skipped: Vec<Skipped>,
    /// Advice for the operator (e.g. a Service asks for a traffic distribution but its slices
    /// carry no hints). Not part of the JSON output.
    #[serde(skip)]
    pub warnings: Vec<String>,
}
