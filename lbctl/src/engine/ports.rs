//! Service ports, protocols, port numbers and address families.
use std::{fmt, net::IpAddr, sync::Arc};

use super::report::Report;
use crate::{model::ServicePort, plan::Protocol};

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// A set of families (no allocation, unlike a `BTreeSet`); iterates IPv4 first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    pub(crate) fn contains(&self, family: &Family) -> bool {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    pub(crate) fn iter(self) -> impl Iterator<Item = Family> {
        [(self.v4, Family::V4), (self.v6, Family::V6)]
            .into_iter()
            .filter_map(|(present, family)| present.then_some(family))
    }
}

impl FromIterator<Family> for Families {
    fn from_iter<I: IntoIterator<Item = Family>>(families: I) -> Self {
        let mut set = Families::default();
        for family in families {
            match family {
                Family::V4 => set.v4 = true,
                Family::V6 => set.v6 = true,
            }
        }
        set
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Why a protocol cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProtocolProblem {
    /// SCTP: valid, but the socket hooks do not see it.
    NotCaptured,
    Unknown(String),
}

impl fmt::Display for ProtocolProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolProblem::NotCaptured => {
                f.write_str("SCTP is not captured by the socket hooks; not load-balanced")
            }
            ProtocolProblem::Unknown(p) => write!(f, "unknown protocol {p:?}"),
        }
    }
}

/// `protocol` of a Service or EndpointSlice port; unset means TCP.
pub(crate) fn parse_protocol(protocol: Option<&str>) -> Result<Protocol, ProtocolProblem> {
    match protocol {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Err(ProtocolProblem::NotCaptured),
        Some(other) => Err(ProtocolProblem::Unknown(other.to_owned())),
    }
}

/// A port number from the API (`int32`), which must be 1..=65535.
pub(crate) fn parse_port(number: i32) -> Result<u16, String> {
    u16::try_from(number)
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| format!("port {number} is out of range 1-65535"))
}

/// How a port is named in reasons: `port "http"`, or `port 80/TCP` when unnamed. Formatted
/// only when a reason is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortLabel<'a> {
    name: &'a str,
    number: Option<i32>,
    protocol: Option<&'a str>,
}

impl<'a> PortLabel<'a> {
    pub(crate) fn new(name: &'a str, number: Option<i32>, protocol: Option<&'a str>) -> Self {
        PortLabel {
            name,
            number,
            protocol,
        }
    }
}

impl fmt::Display for PortLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name, self.number) {
            ("", Some(number)) => write!(f, "port {number}/{}", self.protocol.unwrap_or("TCP")),
            ("", None) => f.write_str("unnamed port"),
            (name, _) => write!(f, "port {name:?}"),
        }
    }
}

/// A validated Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PortSpec<'a> {
    /// Empty when unnamed. The Service object's (shared by the frontends of the port).
    pub(crate) name: &'a Arc<str>,
    pub(crate) protocol: Protocol,
    pub(crate) port: u16,
    /// Set and valid.
    pub(crate) node_port: Option<u16>,
    pub(crate) label: PortLabel<'a>,
}

/// The ports of a Service that can be planned; the others are reported against `object`.
pub(crate) fn service_ports<'a>(
    ports: &'a [ServicePort],
    object: &dyn Fn() -> String,
    report: &mut Report,
) -> Vec<PortSpec<'a>> {
    let mut specs = Vec::new();
    for port in ports {
        let protocol_text = Some(port.protocol.as_str());
        let label = PortLabel::new(&port.name, Some(port.port), protocol_text);
        let protocol = match parse_protocol(protocol_text) {
            Ok(protocol) => protocol,
            Err(problem) => {
                report.skip(object(), format!("{label}: {problem}"));
                continue;
            }
        };
        let number = match parse_port(port.port) {
            Ok(number) => number,
            Err(reason) => {
                report.skip(object(), format!("{label}: {reason}"));
                continue;
            }
        };
        let node_port = match port.node_port.map(parse_port).transpose() {
            Ok(node_port) => node_port,
            Err(reason) => {
                report.skip(
                    object(),
                    format!("{label}: nodePort: {reason}; no NodePort frontends"),
                );
                None
            }
        };
        specs.push(PortSpec {
            name: &port.name,
            protocol,
            port: number,
            node_port,
            label,
        });
    }
    specs
}

/// Why an address may not be a service frontend, as the API server's `ValidateNonSpecialIP`
/// refuses it for external IPs: capturing it would redirect a node's or a pod's own traffic
/// (localhost, the cloud metadata address, multicast) rather than a service's.
pub(crate) fn special_address(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 => v4,
    };
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    } {
        Some("link-local")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_must_be_1_to_65535() {
        let rows = [
            (1, Some(1)),
            (80, Some(80)),
            (65535, Some(65535)),
            (0, None),
            (-1, None),
            (65536, None),
            (i32::MAX, None),
            (i32::MIN, None),
        ];
        for (number, expected) in rows {
            assert_eq!(parse_port(number).ok(), expected, "{number}");
        }
        assert_eq!(parse_port(0).unwrap_err(), "port 0 is out of range 1-65535");
    }

    #[test]
    fn protocols() {
        let rows = [
            (None, Ok(Protocol::Tcp)),
            (Some("TCP"), Ok(Protocol::Tcp)),
            (Some("UDP"), Ok(Protocol::Udp)),
            (Some("SCTP"), Err(ProtocolProblem::NotCaptured)),
            (Some("tcp"), Err(ProtocolProblem::Unknown("tcp".to_owned()))),
            (Some(""), Err(ProtocolProblem::Unknown(String::new()))),
        ];
        for (protocol, expected) in rows {
            assert_eq!(parse_protocol(protocol), expected, "{protocol:?}");
        }
    }

    #[test]
    fn port_labels() {
        let rows = [
            ("http", Some(80), Some("UDP"), "port \"http\""),
            ("", Some(80), None, "port 80/TCP"),
            ("", Some(53), Some("UDP"), "port 53/UDP"),
            ("", None, None, "unnamed port"),
        ];
        for (name, number, protocol, expected) in rows {
            assert_eq!(PortLabel::new(name, number, protocol).to_string(), expected);
        }
    }

    #[test]
    fn special_addresses() {
        let rows = [
            ("10.96.0.10", None),
            ("fd00::10", None),
            ("203.0.113.7", None),
            ("0.0.0.0", Some("unspecified")),
            ("::", Some("unspecified")),
            ("127.0.0.1", Some("loopback")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("224.0.0.1", Some("multicast")),
            ("ff02::1", Some("multicast")),
            ("169.254.169.254", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("::ffff:169.254.169.254", Some("link-local")),
        ];
        for (address, expected) in rows {
            let ip: IpAddr = address.parse().expect("test address");
            assert_eq!(special_address(ip), expected, "{address}");
        }
    }
}
