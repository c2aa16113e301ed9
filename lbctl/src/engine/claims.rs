//! One frontend (address, port, protocol) leads to one service. Services offer their frontends
//! in claim order (see `services_in_claim_order`); the first claim wins, later ones are skipped.
use std::{collections::BTreeMap, net::SocketAddr};

use super::report::{Report, service_object};
use crate::plan::{Frontend, FrontendKey};

#[derive(Debug, Default)]
pub(crate) struct Claims {
    claimed: BTreeMap<FrontendKey, Frontend>,
}

impl Claims {
    /// Offers the frontends of one service. Within a service, ClusterIP comes before NodePort,
    /// ExternalIP and LoadBalancer, then port name order.
    pub(crate) fn offer(&mut self, mut frontends: Vec<Frontend>, report: &mut Report) {
        sort_offer(&mut frontends);
        for frontend in frontends {
            let key = frontend.key();
            match self.claimed.get(&key) {
                None => {
                    self.claimed.insert(key, frontend);
                }
                Some(owner) => report.skip(
                    service_object(&frontend.service),
                    lost_reason(&frontend, owner),
                ),
            }
        }
    }

    /// Sorted by service, kind, address, port, protocol.
    pub(crate) fn into_sorted_frontends(self) -> Vec<Frontend> {
        let mut frontends: Vec<Frontend> = self.claimed.into_values().collect();
        frontends.sort_by(|a, b| {
            (&a.service, a.kind, a.address, a.port, a.protocol)
                .cmp(&(&b.service, b.kind, b.address, b.port, b.protocol))
        });
        frontends
    }
}

/// The order in which one service offers its frontends.
pub(crate) fn sort_offer(frontends: &mut [Frontend]) {
    frontends.sort_by(|a, b| {
        (a.kind, &a.port_name, a.address, a.port, a.protocol).cmp(&(
            b.kind,
            &b.port_name,
            b.address,
            b.port,
            b.protocol,
        ))
    });
}

pub(crate) fn lost_reason(loser: &Frontend, owner: &Frontend) -> String {
    let port = if loser.port_name.is_empty() {
        format!("port {}/{}", loser.port, loser.protocol)
    } else {
        format!("port {:?}", loser.port_name)
    };
    let what = format!(
        "{} {}/{}",
        loser.kind,
        SocketAddr::new(loser.address, loser.port),
        loser.protocol
    );
    if owner.service == loser.service {
        format!(
            "{port}: {what} duplicates this Service's own {} frontend (port {:?}); planned once",
            owner.kind, owner.port_name
        )
    } else {
        format!(
            "{port}: {what} is already claimed by the {} frontend of Service {} (the older \
             Service wins, then namespace/name order)",
            owner.kind, owner.service
        )
    }
}
