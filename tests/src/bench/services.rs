//! The synthetic cluster every arm programs: `count` TCP services on port 80 with ClusterIPs
//! 10.96.0.1, 10.96.0.2, ..., each with `endpoints` endpoints on port 8080. The measured
//! service is the LAST one (highest ClusterIP, last rule of KUBE-SERVICES); its endpoints are
//! real (10.244.2.1.., answered by the server namespace). The others' endpoints are distinct
//! addresses in 10.128.0.0/9 that nothing answers for.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use lbctl::{datapath::Desired, plan::Protocol};

pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
/// The port the direct arm's client listens on when it shares the lbctl arm's namespaces (the
/// lbctl client's listener holds [`TARGET_PORT`] there).
pub const DIRECT_PORT: u16 = TARGET_PORT + 1;
/// The pod network of the synthetic cluster (kube-proxy's `--cluster-cidr`).
pub const CLUSTER_CIDR: &str = "10.128.0.0/9";
pub const NAMESPACE: &str = "bench";

const SERVICE_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const ENDPOINT_BASE: u32 = u32::from_be_bytes([10, 128, 0, 0]);
const MEASURED_BASE: u32 = u32::from_be_bytes([10, 244, 2, 0]);

#[derive(Clone, Copy, Debug)]
pub struct ServiceSet {
    pub count: usize,
    pub endpoints: usize,
}

/// One service as the generators see it.
pub struct Service {
    pub index: usize,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub endpoints: Vec<SocketAddrV4>,
}

impl ServiceSet {
    pub fn new(count: usize, endpoints: usize) -> Self {
        assert!(count >= 1 && endpoints >= 1 && count < 1 << 20);
        Self { count, endpoints }
    }

    pub fn cluster_ip(index: usize) -> Ipv4Addr {
        Ipv4Addr::from(SERVICE_BASE + index as u32 + 1)
    }

    /// The measured service: the last one.
    pub fn measured(&self) -> SocketAddr {
        SocketAddr::from((Self::cluster_ip(self.count - 1), SERVICE_PORT))
    }

    /// Backend addresses the server namespace must answer for.
    pub fn measured_backends(endpoints: usize) -> Vec<Ipv4Addr> {
        (0..endpoints)
            .map(|j| Ipv4Addr::from(MEASURED_BASE + j as u32 + 1))
            .collect()
    }

    /// A destination that is no service: the first backend of the measured service, directly.
    pub fn non_service(&self) -> SocketAddr {
        SocketAddr::from((Self::measured_backends(1)[0], TARGET_PORT))
    }

    pub fn endpoint(&self, index: usize, j: usize) -> SocketAddrV4 {
        let ip = if index == self.count - 1 {
            MEASURED_BASE + j as u32 + 1
        } else {
            ENDPOINT_BASE + (index * self.endpoints + j) as u32 + 1
        };
        SocketAddrV4::new(Ipv4Addr::from(ip), TARGET_PORT)
    }

    pub fn service(&self, index: usize) -> Service {
        Service {
            index,
            name: format!("svc-{index}"),
            cluster_ip: Self::cluster_ip(index),
            endpoints: (0..self.endpoints)
                .map(|j| self.endpoint(index, j))
                .collect(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Service> + '_ {
        (0..self.count).map(|i| self.service(i))
    }

    /// The lbctl form: one TCP frontend per service.
    pub fn desired(&self) -> Desired {
        let mut desired = Desired::default();
        for svc in self.iter() {
            desired.insert(
                SocketAddr::from((svc.cluster_ip, SERVICE_PORT)),
                Protocol::Tcp,
                svc.endpoints.iter().map(|e| SocketAddr::V4(*e)).collect(),
            );
        }
        desired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measured_service_is_last_and_real() {
        let set = ServiceSet::new(30_000, 10);
        assert_eq!(set.measured().to_string(), "10.96.117.48:80");
        assert_eq!(set.endpoint(29_999, 2).to_string(), "10.244.2.3:8080");
        assert_eq!(set.endpoint(0, 0).to_string(), "10.128.0.1:8080");
        // Synthetic endpoints stay below the measured ones.
        assert!(*set.endpoint(29_998, 9).ip() < Ipv4Addr::new(10, 244, 0, 0));
        assert_eq!(set.desired().services.len(), 30_000);
    }
}
