//! When an apply removed backends from frontends, terminate the connected sockets lbctl had
//! sent to them ([`crate::datapath::terminate`]), off the reconcile loop: the sweep runs on a
//! blocking thread while the loop goes on, and reports into the metrics and the log.
use std::sync::Arc;

use crate::{
    datapath::{
        ApplyReport, Datapath, DatapathConfig, Installed, Object, TerminationConfig, Terminator,
        terminate::Unavailable,
    },
    metrics::{ErrorKind, Metrics},
};

/// The agent's socket termination: the loaded iterators, reloaded when the maps are replaced.
pub struct Termination {
    config: TerminationConfig,
    terminator: Option<Arc<Terminator>>,
    /// The datapath generation the iterators were loaded for.
    loaded_for: Option<u64>,
    /// Why termination is unavailable, as last logged (logged once per change).
    unavailable: Option<String>,
}

impl Termination {
    pub fn new(config: TerminationConfig) -> Self {
        Self {
            config,
            terminator: None,
            loaded_for: None,
            unavailable: None,
        }
    }

    /// Loads the iterators on the datapath's current maps, unless they are loaded for them
    /// already; a migration waits for its maps to be in place.
    pub fn refresh(&mut self, config: &DatapathConfig, datapath: &Datapath, metrics: &Metrics) {
        if datapath.installed() == Installed::Migrating
            || self.loaded_for == Some(datapath.generation())
        {
            return;
        }
        self.loaded_for = Some(datapath.generation());
        self.terminator = None;
        let object = match datapath.object().cloned().map_or_else(Object::embedded, Ok) {
            Ok(object) => object,
            Err(e) => return self.unavailable(metrics, &Unavailable::Load(e)),
        };
        match Terminator::load(config, &object, &self.config) {
            Ok(terminator) => {
                tracing::info!(
                    sockets = ?self.config.sockets,
                    netns_dirs = ?self.config.netns_dirs,
                    "socket termination ready: connected sockets of removed backends are terminated"
                );
                self.terminator = Some(Arc::new(terminator));
                self.unavailable = None;
                metrics.set_termination_available(true);
            }
            Err(e) => self.unavailable(metrics, &e),
        }
    }

    fn unavailable(&mut self, metrics: &Metrics, why: &Unavailable) {
        metrics.set_termination_available(false);
        let why = format!("{why:#}");
        if self.unavailable.as_ref() != Some(&why) {
            match why.contains("--terminate-sockets none") {
                true => tracing::info!("{why}"),
                false => tracing::warn!(
                    reason = %why,
                    "socket termination is unavailable: connected sockets keep a removed backend until they close; everything else works"
                ),
            }
            self.unavailable = Some(why);
        }
    }

    /// After an apply: when it took backends out of frontends' sets (memberships of UDP and
    /// affinity frontends removed, or pairs of TCP frontends departed), sweep on a blocking
    /// thread. The sweep is told the departed TCP pairs (TCP frontends keep no memberships).
    pub fn after_apply(&self, report: &ApplyReport, metrics: &Arc<Metrics>) {
        let Some(terminator) = self.terminator.clone() else {
            return;
        };
        if report.memberships_deleted == 0 && report.departed.is_empty() {
            return;
        }
        let departed = report.departed.clone();
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || {
            let sweep = terminator.sweep(&departed);
            let (udp, tcp) = sweep.counts();
            metrics.add_terminated(udp, tcp);
            for t in &sweep.terminated {
                let backend = std::net::SocketAddr::new(
                    crate::datapath::desired::ip_from16(t.backend_address),
                    u16::from_be(t.backend_port),
                );
                if t.error == 0 {
                    tracing::debug!(cookie = t.socket_cookie, frontend_id = t.frontend_id, %backend, proto = t.proto, "socket terminated: its backend left the set");
                } else {
                    metrics.inc_error(ErrorKind::Termination);
                    tracing::warn!(cookie = t.socket_cookie, %backend, errno = -t.error, "the kernel refused to terminate a socket of a removed backend");
                }
            }
            for e in &sweep.errors {
                metrics.inc_error(ErrorKind::Termination);
                tracing::warn!(error = %e, "socket termination sweep");
            }
            if udp + tcp > 0 {
                tracing::info!(
                    udp,
                    tcp,
                    namespaces = sweep.namespaces,
                    "terminated connected sockets whose backend left the set"
                );
            }
        });
    }
}
