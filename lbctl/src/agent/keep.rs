//! Keeping TCP translations ([`crate::datapath::keep`]): a task that watches the programs'
//! translation counter and runs a keeping pass on a blocking thread once a quarter of
//! `lb_tcp_recent`'s capacity of translations happened since the last one (and once when the
//! keeper is loaded: an agent that was down missed the connects in between).
use std::{sync::Arc, time::Duration};

use crate::{
    datapath::{Datapath, DatapathConfig, Installed, Object, keep::Keeper},
    metrics::{ErrorKind, Metrics},
};

/// How often the task reads the counter. A pass is due after a quarter of the array's capacity
/// of connects: with the default 65,536 elements, a node opening more than about 65,000 TCP
/// connections a second through services outruns this period (and needs `--max-tcp-recent`).
const POLL: Duration = Duration::from_millis(250);

/// The agent's keeping task, restarted on the datapath's current maps when they are replaced.
pub struct Keeping {
    netns_dirs: Vec<std::path::PathBuf>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The datapath generation the keeper was loaded for.
    loaded_for: Option<u64>,
}

impl Drop for Keeping {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Keeping {
    /// Passes walk the agent's network namespace and those whose handles are under
    /// `netns_dirs` (`--terminate-in-netns-dir`).
    pub fn new(netns_dirs: Vec<std::path::PathBuf>) -> Self {
        Self {
            netns_dirs,
            task: None,
            loaded_for: None,
        }
    }

    /// Loads the keeper on the datapath's current maps and starts its task, unless it runs on
    /// them already; a migration waits for its maps to be in place.
    pub fn refresh(
        &mut self,
        config: &DatapathConfig,
        datapath: &Datapath,
        metrics: &Arc<Metrics>,
    ) {
        if datapath.installed() == Installed::Migrating
            || self.loaded_for == Some(datapath.generation())
        {
            return;
        }
        self.loaded_for = Some(datapath.generation());
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let keeper = datapath
            .object()
            .cloned()
            .map_or_else(Object::embedded, Ok)
            .and_then(|object| Keeper::load(config, &object, &self.netns_dirs));
        match keeper {
            Ok(keeper) => {
                tracing::debug!(every = keeper.every(), "keeping TCP translations");
                self.task = Some(tokio::spawn(watch(Arc::new(keeper), metrics.clone())));
            }
            Err(e) => {
                metrics.inc_error(ErrorKind::Keep);
                tracing::warn!(
                    error = format!("{e:#}"),
                    "TCP translations are not kept by passes: a TCP socket that has not asked for \
                     its peer yet shows its backend as its peer (getpeername) and escapes \
                     termination once later connects took its element of lb_tcp_recent over; \
                     everything else works"
                );
            }
        }
    }
}

/// Runs a pass now and then whenever one is due, until aborted.
async fn watch(keeper: Arc<Keeper>, metrics: Arc<Metrics>) {
    let mut last: Option<u64> = None;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        let now = match keeper.translations() {
            Ok(now) => now,
            Err(e) => {
                metrics.inc_error(ErrorKind::Keep);
                tracing::warn!(error = %e, "reading the translation counter");
                continue;
            }
        };
        if last.is_some_and(|last| now.saturating_sub(last) < keeper.every()) {
            continue;
        }
        last = Some(now);
        let runner = keeper.clone();
        let Ok(pass) = tokio::task::spawn_blocking(move || runner.run()).await else {
            metrics.inc_error(ErrorKind::Keep);
            continue;
        };
        metrics.add_tcp_kept(pass.kept);
        if pass.failed > 0 {
            metrics.inc_error(ErrorKind::Keep);
            tracing::warn!(
                sockets = pass.failed,
                "the kernel could not create socket storage to keep TCP translations"
            );
        }
        for e in &pass.errors {
            metrics.inc_error(ErrorKind::Keep);
            tracing::warn!(error = %e, "keeping TCP translations");
        }
        tracing::debug!(
            kept = pass.kept,
            namespaces = pass.namespaces,
            translations = now,
            "kept TCP translations"
        );
    }
}
