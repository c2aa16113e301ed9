//! This node: its name, zone and the addresses its NodePorts listen on.
use std::net::IpAddr;

use std::sync::Arc;

use crate::model::{Address, Node};

use super::{
    NodeContext,
    report::{Report, node_object, pick_canonical},
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ThisNode {
    pub(crate) name: String,
    /// From [`NodeContext::zone`], else the Node's zone label. Never empty.
    pub(crate) zone: Option<String>,
    /// InternalIP and ExternalIP addresses, sorted, de-duplicated.
    pub(crate) addresses: Vec<IpAddr>,
}

impl ThisNode {
    pub(crate) fn resolve(nodes: &[Arc<Node>], ctx: &NodeContext, report: &mut Report) -> ThisNode {
        let copies: Vec<&Node> = nodes
            .iter()
            .map(|n| &**n)
            .filter(|n| n.name.as_deref() == Some(ctx.name.as_str()))
            .collect();
        let node = pick_canonical(copies, || {
            report.skip(
                node_object(&ctx.name),
                "several different Node objects with this name; the one that sorts first as \
                 JSON was used",
            )
        });
        let label_zone = node.and_then(|n| Some(n.zone.as_deref()?.to_owned()));
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
    let mut addresses = Vec::new();
    for addr in &node.addresses {
        match &addr.address {
            Address::Ip(ip) => addresses.push(*ip),
            Address::Invalid(text) => report.skip(
                node_object(name),
                format!("address {:?} ({}): invalid IP address", text, addr.type_),
            ),
        }
    }
    addresses.sort();
    addresses.dedup();
    addresses
}
