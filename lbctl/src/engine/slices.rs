//! EndpointSlices, validated once and grouped by the Service they belong to.
use super::{
    endpoints::EndpointView,
    ports::{Family, PortLabel, ProtocolProblem, parse_port, parse_protocol},
    report::{Report, slice_object},
};
use crate::{
    engine::SERVICE_NAME_LABEL,
    model::{AddressType, EndpointAddress, EndpointPort, EndpointSlice},
    plan::{Protocol, ServiceRef},
};

/// One port of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlicePort<'a> {
    /// Empty when unnamed.
    pub(crate) name: &'a str,
    /// `None` for protocols the socket hooks do not capture (SCTP) or unknown ones.
    pub(crate) protocol: Option<Protocol>,
    /// `None` when missing or out of range (already reported).
    pub(crate) port: Option<u16>,
}

/// A validated EndpointSlice (borrowing from the object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceView<'a> {
    pub(crate) ports: Vec<SlicePort<'a>>,
    pub(crate) endpoints: Vec<EndpointView<'a>>,
}

impl SliceView<'_> {
    /// The slice port a service port maps to: same name (unset = empty) and protocol.
    pub(crate) fn port_for(&self, name: &str, protocol: Protocol) -> Option<&SlicePort<'_>> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == Some(protocol))
    }
}

/// All usable slices, by Service: namespace, then name.
#[derive(Clone, Debug, Default)]
pub(crate) struct SliceIndex<'a> {
    /// The Service (namespace, name) of each view, sorted.
    keys: Vec<(&'a str, &'a str)>,
    /// The views, in the order of `keys` (one Service's in input order).
    views: Vec<SliceView<'a>>,
}

impl<'a> SliceIndex<'a> {
    pub(crate) fn build(
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        report: &mut Report,
    ) -> Self {
        let mut valid: Vec<((&'a str, &'a str), SliceView<'a>)> = slices
            .into_iter()
            .filter_map(|slice| validate(slice, report))
            .collect();
        // Stable: a Service's slices keep their input order.
        valid.sort_by_key(|(a, _)| *a);
        let (keys, views) = valid.into_iter().unzip();
        SliceIndex { keys, views }
    }

    pub(crate) fn for_service(&self, svc: &ServiceRef) -> &[SliceView<'a>] {
        let key = (&*svc.namespace, &*svc.name);
        let start = self.keys.partition_point(|k| *k < key);
        let end = start + self.keys[start..].partition_point(|k| *k <= key);
        &self.views[start..end]
    }
}

/// The object's name for reports, made only when something is reported.
struct LazyObject<'a> {
    slice: &'a EndpointSlice,
    name: Option<String>,
}

impl LazyObject<'_> {
    fn get(&mut self) -> &str {
        self.name.get_or_insert_with(|| slice_object(self.slice))
    }
}

fn validate<'a>(
    slice: &'a EndpointSlice,
    report: &mut Report,
) -> Option<((&'a str, &'a str), SliceView<'a>)> {
    let mut object = LazyObject { slice, name: None };
    let Some(service_name) = slice.service() else {
        report.skip(object.get(), format!("no {SERVICE_NAME_LABEL} label"));
        return None;
    };
    let family = match &slice.address_type {
        AddressType::IPv4 => Family::V4,
        AddressType::IPv6 => Family::V6,
        AddressType::Fqdn => {
            report.skip(object.get(), "addressType FQDN is not load-balanced");
            return None;
        }
        AddressType::Other(other) => {
            report.skip(object.get(), format!("unknown addressType {other:?}"));
            return None;
        }
    };
    let ports = slice
        .ports
        .iter()
        .map(|port| slice_port(port, &mut object, report))
        .collect();
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for endpoint in &slice.endpoints {
        // Addresses are fungible; like kube-proxy, only the first one is used.
        match endpoint.address() {
            EndpointAddress::Ip(ip) if Family::of(ip) == family => endpoints.push(EndpointView {
                address: ip,
                endpoint,
            }),
            EndpointAddress::Ip(ip) => report.skip(
                object.get(),
                format!(
                    "endpoint {:?}: not an {family} address (addressType {family})",
                    ip.to_string()
                ),
            ),
            EndpointAddress::OtherFamily(address) => report.skip(
                object.get(),
                format!("endpoint {address:?}: not an {family} address (addressType {family})"),
            ),
            EndpointAddress::Invalid(address) => report.skip(
                object.get(),
                format!("endpoint {address:?}: invalid IP address"),
            ),
            // Named by what it points to, not its position: the order of endpoints means nothing.
            EndpointAddress::Missing {
                target: Some(target),
            } => report.skip(object.get(), format!("endpoint for {target}: no address")),
            EndpointAddress::Missing { target: None } => {
                report.skip(object.get(), "an endpoint has no address")
            }
        }
    }
    let svc = (&*slice.namespace, service_name);
    Some((svc, SliceView { ports, endpoints }))
}
fn slice_port<'a>(
    port: &'a EndpointPort,
    object: &mut LazyObject<'_>,
    report: &mut Report,
) -> SlicePort<'a> {
    let name: &str = &port.name;
    let protocol_text = Some(port.protocol.as_str());
    let protocol = match parse_protocol(protocol_text) {
        Ok(protocol) => Some(protocol),
        // SCTP ports are valid; no service port of ours will look for them.
        Err(ProtocolProblem::NotCaptured) => None,
        Err(problem @ ProtocolProblem::Unknown(_)) => {
            let label = PortLabel::new(name, port.port, protocol_text);
            report.skip(object.get(), format!("{label}: {problem}"));
            None
        }
    };
    let number = match port.port {
        None => {
            let label = PortLabel::new(name, None, protocol_text);
            report.skip(object.get(), format!("{label}: no port number"));
            None
        }
        Some(number) => match parse_port(number) {
            Ok(number) => Some(number),
            Err(reason) => {
                let label = PortLabel::new(name, None, protocol_text);
                report.skip(object.get(), format!("{label}: {reason}"));
                None
            }
        },
    };
    SlicePort {
        name,
        protocol,
        port: number,
    }
}
