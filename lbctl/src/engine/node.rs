//! This node: its name, zone and the addresses its NodePorts listen on.
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use super::{
    NodeContext,
    report::{Report, node_object, pick_canonical},
};

/// The Node label the zone hints are matched against.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Node address types NodePort frontends are planned for.
const NODE_PORT_ADDRESS_TYPES: [&str; 2] = ["InternalIP", "ExternalIP"];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ThisNode {
    pub(crate) name: String,
    /// From [`NodeContext::zone`], else the Node's zone label. Never empty.
    pub(crate) zone: Option<String>,
    /// InternalIP and ExternalIP addresses, sorted, de-duplicated.
    pub(crate) addresses: Vec<IpAddr>,
}

impl ThisNode {
    pub(crate) fn resolve(nodes: &[Node], ctx: &NodeContext, report: &mut Report) -> ThisNode {
        let copies: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.metadata.name.as_deref() == Some(ctx.name.as_str()))
            .collect();
        let node = pick_canonical(copies, || {
            report.skip(
                node_object(&ctx.name),
                "several different Node objects with this name; the one that sorts first as \
                 JSON was used",
            )
        });
        let label_zone = node.and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned());
        let zone = ctx
            .zone
            .clone()
            .or(label_zone)
            .filter(|zone| !zone.is_empty());
        let addresses = match node {
            Some(node) => node_port_addresses(node, &ctx.name, report),
            None => {
                report.warn(format!(
                    "Node {} is not in the input: no NodePort frontends are planned and its \
                     zone is {}",
                    ctx.name,
                    zone.as_deref()
                        .map_or("unknown".to_owned(), |z| format!("{z:?} (from --zone)"))
                ));
                Vec::new()
            }
        };
        ThisNode {
            name: ctx.name.clone(),
            zone,
            addresses,
        }
    }
}

fn node_port_addresses(node: &Node, name: &str, report: &mut Report) -> Vec<IpAddr> {
    let listed = node
        .status
        .as_ref()
        .and_then(|status| status.addresses.as_deref())
        .unwrap_or_default();
    let mut addresses = Vec::new();
    for addr in listed {
        if !NODE_PORT_ADDRESS_TYPES.contains(&addr.type_.as_str()) {
            continue;
        }
        match addr.address.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(_) => report.skip(
                node_object(name),
                format!(
                    "address {:?} ({}): invalid IP address",
                    addr.address, addr.type_
                ),
            ),
        }
    }
    addresses.sort();
    addresses.dedup();
    addresses
}
