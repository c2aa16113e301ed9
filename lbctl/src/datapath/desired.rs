//! The desired datapath state: frontends keyed by (address, port, protocol), each with its
//! backends. Built from a [`Plan`]; knows nothing of Kubernetes.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::{Backend, IPPROTO_TCP, IPPROTO_UDP, SCOPE_ANY, ServiceKey, service_flags};

use crate::plan::{BackendList, Frontend, FrontendKey, FrontendKind, Plan, Protocol};

/// The BPF map encoding of a frontend key.
impl FrontendKey {
    /// The master key of this frontend (`lb_services`).
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            address: addr16(self.address),
            port: self.port.to_be(),
            proto: proto_number(self.protocol),
            scope: SCOPE_ANY,
        }
    }

    pub fn from_key(key: &ServiceKey) -> Option<Self> {
        let protocol = match key.proto {
            IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        Some(Self {
            address: ip_from16(key.address),
            port: u16::from_be(key.port),
            protocol,
        })
    }
}

/// What one frontend must lead to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Empty: the frontend refuses connects. Shared with the plan's
    /// [`Frontend::backends`]: the desired state adds no copy of the backend lists.
    pub backends: BackendList,
    /// Session affinity timeout, seconds.
    pub affinity_timeout: Option<u32>,
    pub kind: FrontendKind,
}

impl ServiceSpec {
    /// The map form of a planned frontend (its backend list shared, not copied).
    pub fn of(fe: &Frontend) -> Self {
        SpecRef::of(fe).to_spec()
    }

    /// This spec, borrowed as the writer reads it.
    pub fn view(&self) -> SpecRef<'_> {
        SpecRef {
            backends: &self.backends,
            affinity_timeout: self.affinity_timeout,
            kind: self.kind,
        }
    }

    pub fn flags(&self) -> u16 {
        self.view().flags()
    }
}

/// A [`ServiceSpec`] borrowed from whatever holds it: a [`Desired`], or the planned frontends
/// themselves (the agent hands the writer its planner, so that it keeps no second copy of
/// every frontend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecRef<'a> {
    pub backends: &'a BackendList,
    pub affinity_timeout: Option<u32>,
    pub kind: FrontendKind,
}

impl<'a> SpecRef<'a> {
    /// The spec of a planned frontend.
    pub fn of(fe: &'a Frontend) -> Self {
        SpecRef {
            backends: &fe.backends,
            affinity_timeout: fe.affinity_timeout_seconds,
            kind: fe.kind,
        }
    }

    pub fn to_spec(self) -> ServiceSpec {
        ServiceSpec {
            backends: self.backends.clone(),
            affinity_timeout: self.affinity_timeout,
            kind: self.kind,
        }
    }

    /// The master's `flags` (`lb_common::service_flags`).
    pub fn flags(self) -> u16 {
        let mut flags = 0;
        if self.affinity_timeout.is_some() {
            flags |= service_flags::AFFINITY;
        }
        match self.kind {
            FrontendKind::ClusterIP => {}
            FrontendKind::NodePort => flags |= service_flags::NODE_PORT,
            FrontendKind::ExternalIP | FrontendKind::LoadBalancer => {
                flags |= service_flags::EXTERNAL
            }
        }
        flags
    }
}

/// What the writer reads a desired state through: every frontend in key order, and one by its
/// key. [`Desired`] is one; so is anything else that holds frontends by key (the agent's
/// planner), which then needs no [`Desired`] copy beside it.
pub trait DesiredState {
    /// Every frontend, in key order, each key once.
    fn frontends(&self) -> impl Iterator<Item = (&FrontendKey, SpecRef<'_>)>;

    /// The frontend of `key`, with the key as held.
    fn frontend(&self, key: &FrontendKey) -> Option<(&FrontendKey, SpecRef<'_>)>;
}

impl DesiredState for Desired {
    fn frontends(&self) -> impl Iterator<Item = (&FrontendKey, SpecRef<'_>)> {
        self.services.iter().map(|(key, spec)| (key, spec.view()))
    }

    fn frontend(&self, key: &FrontendKey) -> Option<(&FrontendKey, SpecRef<'_>)> {
        self.services
            .get_key_value(key)
            .map(|(key, spec)| (key, spec.view()))
    }
}

/// Every frontend this node must program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<FrontendKey, ServiceSpec>,
}

impl Desired {
    /// The frontends of a plan. The engine guarantees one frontend per (address, port,
    /// protocol); should two collide anyway, the first in plan order wins.
    pub fn from_plan(plan: &Plan) -> Self {
        Self::from_frontends(&plan.frontends)
    }

    /// The frontends given, the first of each (address, port, protocol) winning.
    pub fn from_frontends<'a>(frontends: impl IntoIterator<Item = &'a Frontend>) -> Self {
        let mut services = BTreeMap::new();
        for fe in frontends {
            services
                .entry(fe.key())
                .or_insert_with(|| ServiceSpec::of(fe));
        }
        Self { services }
    }

    /// Adds (or replaces) a ClusterIP-style frontend; handy for tests and tools.
    pub fn insert(
        &mut self,
        frontend: SocketAddr,
        protocol: Protocol,
        backends: Vec<SocketAddr>,
    ) -> &mut Self {
        self.services.insert(
            FrontendKey::new(frontend, protocol),
            ServiceSpec {
                backends: backends.into(),
                affinity_timeout: None,
                kind: FrontendKind::ClusterIP,
            },
        );
        self
    }
}

pub(crate) fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// 16-byte map form of an address: IPv4 as `::ffff:a.b.c.d`.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Inverse of [`addr16`].
pub fn ip_from16(a: [u8; 16]) -> IpAddr {
    std::net::Ipv6Addr::from(a).to_canonical()
}

/// The backend table value for an address.
pub fn backend_value(addr: SocketAddr, protocol: Protocol) -> Backend {
    Backend {
        address: addr16(addr.ip()),
        port: addr.port().to_be(),
        proto: proto_number(protocol),
        flags: 0,
    }
}

/// Inverse of [`backend_value`].
pub fn backend_addr(b: &Backend) -> SocketAddr {
    SocketAddr::new(ip_from16(b.address), u16::from_be(b.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_both_families() {
        for s in ["10.96.0.10:80", "[fd00::10]:53"] {
            let fe = FrontendKey::new(s.parse().unwrap(), Protocol::Udp);
            assert_eq!(FrontendKey::from_key(&fe.key()), Some(fe));
        }
        let v4 = FrontendKey::new("10.96.0.10:80".parse().unwrap(), Protocol::Tcp).key();
        assert_eq!(&v4.address[10..], &[0xff, 0xff, 10, 96, 0, 10]);
        assert_eq!(v4.port, 80u16.to_be());
        let b: SocketAddr = "[fd00::5]:8080".parse().unwrap();
        assert_eq!(backend_addr(&backend_value(b, Protocol::Tcp)), b);
    }
}
