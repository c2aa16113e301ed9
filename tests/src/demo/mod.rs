//! The pieces of `lb-demo` (`cargo xtask demo`): the cluster it simulates ([`cluster`]), the
//! machinery that makes it real on this machine ([`world`]: cgroups, network namespaces, a
//! bridge, HTTP servers, one `lbctl agent` per node), and its terminal output ([`style`]).
pub mod agent;
pub mod cluster;
pub mod style;
pub mod world;

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The demo was asked to stop (SIGINT, SIGTERM or SIGHUP); it unwinds and cleans up.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Called from the signal handler: the demo stops at its next check.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fails with [`Interrupted`] once a stop was asked for. The demo calls it between steps and
/// while it waits, so everything built so far is dropped (and removed) in order.
pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}
