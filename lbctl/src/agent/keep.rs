//! Keeping TCP translations ([`crate::datapath::keep`]): a task that watches the programs'
//! translation counter and runs a keeping pass on a blocking thread once a quarter of
//! `lb_tcp_recent`'s capacity of translations happened since the last one, or a second after it
//! once any did (and once when the keeper is loaded: an agent that was down missed the connects
//! in between).
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    datapath::{Datapath, DatapathConfig, Installed, Object, keep::Keeper},
    metrics::{ErrorKind, Metrics},
};

/// How often the task reads the counter. A pass is due after a quarter of the array's capacity
/// of connects: with the default 65,536 elements, a node opening more than about 65,000 TCP
/// connections a second through services outruns this period (and needs `--max-tcp-recent`).
const POLL: Duration = Duration::from_millis(250);

/// A pass is also due this long after the last one as soon as any translation happened since.
/// The count alone would leave a young socket's element unkept for as long as a quarter of the
/// capacity of connects takes, while socket cookies come in per-CPU batches of 4,096: on a node
/// with many CPUs, another CPU's connects can reach the same element much sooner. With this, a
/// socket's translation is kept within about a second and a quarter of its connect. The counter
/// counts UDP translations too, so a node with steady service traffic of either kind runs about
/// one pass a second: a walk of its TCP sockets.
const AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// What the last pass saw: the translation counter, and when.
#[derive(Clone, Copy, Debug)]
struct LastPass {
    translations: u64,
    at: Instant,
}

/// Whether a pass is due at `at`, with the counter at `translations`: the first one always; then
/// after `every` translations, or [`AT_LEAST_EVERY`] after the last pass once any happened.
fn due(last: Option<LastPass>, translations: u64, at: Instant, every: u64) -> bool {
    let Some(last) = last else {
        return true;
    };
    let grown = translations.saturating_sub(last.translations);
    grown >= every || (grown > 0 && at.saturating_duration_since(last.at) >= AT_LEAST_EVERY)
}

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
    let mut last: Option<LastPass> = None;
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
        let at = Instant::now();
        if !due(last, now, at, keeper.every()) {
            continue;
        }
        last = Some(LastPass {
            translations: now,
            at,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_is_due_first_then_on_count_or_after_a_second_of_any_translation() {
        let start = Instant::now();
        let last = Some(LastPass {
            translations: 100,
            at: start,
        });
        let later = |ms| start + Duration::from_millis(ms);
        // (last pass, counter now, time now, expected), with a pass due every 16 translations.
        let table = [
            (None, 0, start, true),
            (None, 500, later(10), true),
            (last, 100, later(10), false),
            (last, 100, later(60_000), false),
            (last, 101, later(999), false),
            (last, 101, later(1_000), true),
            (last, 115, later(250), false),
            (last, 116, later(250), true),
            (last, 5_000, later(0), true),
            // A counter that went back (maps replaced) is no growth.
            (last, 50, later(5_000), false),
        ];
        for (i, (last, translations, at, expected)) in table.into_iter().enumerate() {
            assert_eq!(
                due(last, translations, at, 16),
                expected,
                "row {i}: {last:?}, {translations} translations"
            );
        }
    }
}
