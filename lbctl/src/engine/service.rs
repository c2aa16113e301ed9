//! One Service -> its frontends on this node, each with the backend set its policy selects.
use std::net::{IpAddr, SocketAddr};

use super::{
    endpoints::{BackendSets, Candidate},
    node::ThisNode,
    ports::{Families, Family, PortSpec, service_ports, special_address},
    report::{Report, service_object, service_ref},
    slices::{SliceIndex, SliceView},
    topology::RequestedHints,
};
use crate::{
    model::{Address, Ingress, Service, ServiceSpec, ServiceType},
    plan::{BackendList, Frontend, FrontendKind, ServiceRef},
};

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours, as in the API).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// The API's upper bound for the affinity timeout (1 day).
const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

/// A frontend address that is not a cluster IP; these always use the Cluster set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ExternalAddress {
    kind: FrontendKind,
    address: IpAddr,
}

/// Everything about a Service that is the same for all its ports.
struct ServicePlan<'a> {
    svc_ref: ServiceRef,
    cluster_ips: Vec<IpAddr>,
    families: Families,
    internal_local: bool,
    node_ports_open: bool,
    external: Vec<ExternalAddress>,
    affinity: Option<u32>,
    slices: &'a [SliceView<'a>],
}

/// The frontends of `svc` on this node (possibly conflicting with other services: see
/// `claims`). Not captured, silently: ExternalName and headless services.
pub(crate) fn plan_service(
    svc: &Service,
    slices: &SliceIndex<'_>,
    node: &ThisNode,
    report: &mut Report,
) -> Vec<Frontend> {
    let svc_ref = service_ref(svc);
    // Named only when something is reported.
    let object = || service_object(&svc_ref);
    let Some(spec) = svc.spec.as_ref() else {
        report.skip(object(), "no spec");
        return Vec::new();
    };
    if spec.type_ == ServiceType::ExternalName {
        return Vec::new();
    }
    let Some(cluster_ips) = cluster_ips(spec, &object, report) else {
        return Vec::new();
    };
    let families: Families = cluster_ips.iter().map(|ip| Family::of(*ip)).collect();
    let ports = service_ports(&spec.ports, &object, report);
    if spec.ports.is_empty() {
        report.skip(object(), "no ports");
    }
    let external = external_addresses(svc, spec, &families, &object, report);
    let affinity = affinity_timeout(spec, &object, report);
    let service_slices = slices.for_service(&svc_ref);
    warn_if_hints_missing(svc, &svc_ref, service_slices, report);
    let plan = ServicePlan {
        cluster_ips,
        families,
        internal_local: spec.internal_traffic_local,
        node_ports_open: matches!(
            spec.type_,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ),
        external,
        affinity,
        slices: service_slices,
        svc_ref,
    };
    ports
        .iter()
        .flat_map(|port| plan.port_frontends(port, node, report))
        .collect()
}

impl ServicePlan<'_> {
    fn port_frontends(
        &self,
        port: &PortSpec<'_>,
        node: &ThisNode,
        report: &mut Report,
    ) -> Vec<Frontend> {
        if !self.slices.is_empty()
            && self
                .slices
                .iter()
                .all(|slice| slice.port_for(port.name, port.protocol).is_none())
        {
            report.skip(
                service_object(&self.svc_ref),
                format!(
                    "{}: no EndpointSlice of this Service has a {} port named {:?}; its \
                     frontends have no backends and refuse connections",
                    port.label, port.protocol, port.name
                ),
            );
        }
        let mut sets: [Option<BackendSets>; 2] = [None, None];
        for family in self.families.iter() {
            sets[family as usize] = Some(self.backend_sets(port, family, node));
        }
        // Each set made shareable once, when a frontend first uses it: the frontends of a
        // port that use the same set (cluster IP, node ports, external IPs) share one list.
        let mut shared: [[Option<BackendList>; 2]; 2] = Default::default();
        let mut backends_of = |address: IpAddr, local: bool| -> BackendList {
            let family = Family::of(address) as usize;
            shared[family][usize::from(local)]
                .get_or_insert_with(|| match &sets[family] {
                    Some(set) if local => BackendList::from(set.local.as_slice()),
                    Some(set) => BackendList::from(set.cluster.as_slice()),
                    None => BackendList::default(),
                })
                .clone()
        };

        let mut frontends = Vec::new();
        for address in &self.cluster_ips {
            let backends = backends_of(*address, self.internal_local);
            frontends.push(self.frontend(
                port,
                FrontendKind::ClusterIP,
                *address,
                port.port,
                backends,
            ));
        }
        if let Some(node_port) = port.node_port.filter(|_| self.node_ports_open) {
            for address in &node.addresses {
                if self.families.contains(&Family::of(*address)) {
                    let backends = backends_of(*address, false);
                    frontends.push(self.frontend(
                        port,
                        FrontendKind::NodePort,
                        *address,
                        node_port,
                        backends,
                    ));
                }
            }
        }
        for external in &self.external {
            let backends = backends_of(external.address, false);
            frontends.push(self.frontend(
                port,
                external.kind,
                external.address,
                port.port,
                backends,
            ));
        }
        frontends
    }

    fn frontend(
        &self,
        port: &PortSpec<'_>,
        kind: FrontendKind,
        address: IpAddr,
        number: u16,
        backends: BackendList,
    ) -> Frontend {
        Frontend {
            service: self.svc_ref.clone(),
            port_name: port.name.clone(),
            protocol: port.protocol,
            kind,
            address,
            port: number,
            backends,
            affinity_timeout_seconds: self.affinity,
        }
    }

    /// The endpoints of one family for one service port, from all slices, with the backend port
    /// resolved per slice (named target ports may differ between slices).
    fn backend_sets(&self, port: &PortSpec<'_>, family: Family, node: &ThisNode) -> BackendSets {
        let mut candidates =
            Vec::with_capacity(self.slices.iter().map(|s| s.endpoints.len()).sum());
        for slice in self.slices {
            let Some(backend_port) = slice
                .port_for(port.name, port.protocol)
                .and_then(|p| p.port)
            else {
                continue;
            };
            candidates.extend(
                slice
                    .endpoints
                    .iter()
                    .filter(|ep| Family::of(ep.address) == family)
                    .map(|ep| Candidate {
                        backend: SocketAddr::new(ep.address, backend_port),
                        endpoint: *ep,
                    }),
            );
        }
        BackendSets::categorize(candidates, node)
    }
}

/// The cluster IPs (`spec.clusterIPs`, else `spec.clusterIP`), or `None` when the Service is not
/// load-balanced: headless (silently) or no cluster IP at all (reported).
fn cluster_ips(
    spec: &ServiceSpec,
    object: &dyn Fn() -> String,
    report: &mut Report,
) -> Option<Vec<IpAddr>> {
    match spec.cluster_ips.first() {
        None => {
            report.skip(
                object(),
                "no cluster IP (spec.clusterIP unset: not allocated yet? use the objects as \
                 the API server returns them, e.g. kubectl get -o yaml)",
            );
            return None;
        }
        Some(Address::Invalid(first)) if &**first == "None" => return None,
        Some(_) => {}
    }
    let mut ips = Vec::with_capacity(spec.cluster_ips.len());
    for ip in &spec.cluster_ips {
        match ip {
            Address::Ip(ip) if let Some(why) = special_address(*ip) => report.skip(
                object(),
                format!("clusterIP {ip}: {why} address; a frontend there would capture the node's own traffic"),
            ),
            Address::Ip(ip) if !ips.contains(ip) => ips.push(*ip),
            Address::Ip(_) => {}
            Address::Invalid(ip) => {
                report.skip(object(), format!("clusterIP {ip:?}: invalid IP address"))
            }
        }
    }
    (!ips.is_empty()).then_some(ips)
}

/// `spec.externalIPs` and the LoadBalancer ingress IPs (not `ipMode: Proxy`), in the Service's
/// families only (like kube-proxy, which programs a family only for services with a cluster IP
/// of that family).
fn external_addresses(
    svc: &Service,
    spec: &ServiceSpec,
    families: &Families,
    object: &dyn Fn() -> String,
    report: &mut Report,
) -> Vec<ExternalAddress> {
    if spec.external_ips().is_empty() && svc.load_balancer_ingress().is_empty() {
        return Vec::new();
    }
    let mut listed: Vec<(FrontendKind, &Address)> = Vec::new();
    listed.extend(
        spec.external_ips()
            .iter()
            .map(|ip| (FrontendKind::ExternalIP, ip)),
    );
    for entry in svc.load_balancer_ingress() {
        match entry {
            Ingress::Vip(ip) => listed.push((FrontendKind::LoadBalancer, ip)),
            Ingress::UnknownMode { ip, mode } => report.skip(
                object(),
                format!("LoadBalancer ingress {ip:?}: unknown ipMode {mode:?}; not captured"),
            ),
        }
    }
    let mut addresses = Vec::new();
    for (kind, ip) in listed {
        match ip {
            Address::Ip(address) if let Some(why) = special_address(*address) => report.skip(
                object(),
                format!("{kind} {address}: {why} address; a frontend there would capture the node's own traffic"),
            ),
            Address::Ip(address) if families.contains(&Family::of(*address)) => {
                addresses.push(ExternalAddress { kind, address: *address });
            }
            Address::Ip(address) => report.skip(
                object(),
                format!(
                    "{kind} {address}: {} address, but the Service has no {} cluster IP",
                    Family::of(*address),
                    Family::of(*address)
                ),
            ),
            Address::Invalid(ip) => {
                report.skip(object(), format!("{kind} {ip:?}: invalid IP address"))
            }
        }
    }
    addresses
}

/// `sessionAffinity: ClientIP` -> its timeout (default 10800 s); otherwise none.
fn affinity_timeout(
    spec: &ServiceSpec,
    object: &dyn Fn() -> String,
    report: &mut Report,
) -> Option<u32> {
    if !spec.session_affinity_client_ip {
        return None;
    }
    let Some(configured) = spec.affinity_timeout_seconds else {
        return Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
    };
    match u32::try_from(configured) {
        Ok(seconds) if (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&seconds) => Some(seconds),
        _ => {
            report.skip(
                object(),
                format!(
                    "sessionAffinityConfig.clientIP.timeoutSeconds {configured} is out of range \
                     1-{MAX_AFFINITY_TIMEOUT_SECONDS}; using {DEFAULT_AFFINITY_TIMEOUT_SECONDS}"
                ),
            );
            Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
        }
    }
}

/// The proxy follows hints only; a Service that asks for a distribution but whose ready
/// endpoints carry no hints of that kind gets none (usually: hand-written slices).
fn warn_if_hints_missing(
    svc: &Service,
    svc_ref: &ServiceRef,
    slices: &[SliceView<'_>],
    report: &mut Report,
) {
    let Some(requested) = RequestedHints::of(svc) else {
        return;
    };
    let mut ready = slices
        .iter()
        .flat_map(|slice| &slice.endpoints)
        .filter(|ep| ep.conditions().ready)
        .peekable();
    if ready.peek().is_some() && !ready.any(|ep| requested.kind.present_on(ep)) {
        report.warn(format!(
            "Service {svc_ref} asks for {} but none of its ready endpoints carries {}: no \
             topology filtering (the EndpointSlice controller writes hints; hand-written \
             EndpointSlices must carry them)",
            requested.asked_by,
            requested.kind.describe()
        ));
    }
}
