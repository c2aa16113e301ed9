//! The node agent: source -> engine -> datapath, continuously.
//!
//! Every change the source reports starts a short coalescing window; then the agent takes one
//! snapshot, computes the plan for this node and applies the difference to the maps. Nothing is
//! applied (so nothing pruned) before the source has synced; a source that fails keeps its last
//! objects, so a failing API server or a broken file never flushes the datapath. On SIGTERM or
//! SIGINT the agent exits and leaves the datapath programmed: connects keep working.
//!
//! The loop beats [`metrics::Liveness`] once per turn (`/healthz` fails when it stops), and
//! [`observe`] turns each sync into logs that say what changed, once.
pub mod observe;

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::{
    datapath::{Datapath, DatapathConfig, Desired, FrontendKey, Maps, Object},
    engine::{self, NodeContext},
    metrics::{
        self, ConnectCounts, ErrorKind, FrontendCounts, Metrics, NamedFrontend, ServicePort,
        SourceCounts,
    },
    model::Inventory,
    monitor::{MonitorServer, names::NamesWriter},
    plan::Frontend,
    source::{SourceState, files::FileSource, kube::KubeSource},
};

/// Where the agent reads cluster objects from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// The Kubernetes API (in-cluster config, or this kubeconfig file).
    Kubernetes { kubeconfig: Option<PathBuf> },
    /// Manifest files or directories, re-read when they change.
    Manifests(Vec<PathBuf>),
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: NodeContext,
    pub source: SourceConfig,
    pub datapath: DatapathConfig,
    /// How long to wait after a change for more changes before applying.
    pub coalesce: Duration,
    /// Re-apply this often even without changes (repairs maps changed behind the agent's back).
    pub resync: Duration,
    pub metrics_addr: Option<SocketAddr>,
    /// Serve `lbctl monitor` on this Unix socket ([`crate::monitor::socket_path`] by default).
    pub monitor_socket: PathBuf,
    /// Kernel-side debug logs (`--debug-bpf`), through tracing target `lbctl::bpf`.
    pub debug_bpf: bool,
    /// `/healthz` fails when the loop has not completed a turn for this long; must exceed
    /// `resync` (the longest the loop waits when nothing happens).
    pub stall_threshold: Duration,
    /// Test hook (`lbctl agent` reads it from [`STALL_FILE_ENV`]): while this file exists the
    /// loop stops before its next sync, as a hung apply would, so tests can see `/healthz` fail.
    /// `None` in production.
    pub stall_file: Option<PathBuf>,
    /// Kernel object to load instead of the embedded one (`--object`, for upgrade tests).
    pub object: Option<PathBuf>,
}

/// The environment variable `lbctl agent` takes [`AgentConfig::stall_file`] from (tests only).
pub const STALL_FILE_ENV: &str = "LBCTL_TEST_STALL_FILE";

enum Source {
    Files(FileSource),
    Kube(KubeSource),
}

impl Source {
    /// The objects now; the file source shares them (no copy).
    fn snapshot(&self) -> Arc<Inventory> {
        match self {
            Source::Files(s) => s.snapshot(),
            Source::Kube(s) => Arc::new(s.snapshot()),
        }
    }
}

async fn start_source(
    config: &SourceConfig,
    node: &str,
) -> Result<(Source, watch::Receiver<SourceState>)> {
    Ok(match config {
        SourceConfig::Manifests(paths) => {
            let (source, rx) = FileSource::start(paths.clone())?;
            (Source::Files(source), rx)
        }
        SourceConfig::Kubernetes { kubeconfig } => {
            let client = crate::source::kube::client_from(kubeconfig.clone()).await?;
            let (source, rx) = KubeSource::start(client, node)?;
            (Source::Kube(source), rx)
        }
    })
}

fn wire_counters(metrics: &Metrics, config: &DatapathConfig, source: &Source) {
    // Opened at each scrape, so the counters follow the maps even when they are recreated.
    let pin_dir = config.pin_dir.clone();
    metrics.set_connect_counts(move || {
        let c = Maps::open_read_only(&pin_dir).ok()?.counters().ok()?;
        Some(ConnectCounts {
            rewritten: c.rewritten,
            refused: c.refused,
            passed: c.passed,
        })
    });
    let pin_dir = config.pin_dir.clone();
    metrics.set_frontend_counts(move |ids| {
        let maps = Maps::open_read_only(&pin_dir).ok()?;
        ids.iter()
            .map(|id| {
                let c = maps.frontend_counters(*id).ok()?;
                Some(FrontendCounts {
                    rewritten: c.rewritten,
                    refused: c.refused,
                })
            })
            .collect()
    });
    if let Source::Kube(kube) = source {
        let handle = kube.handle();
        metrics.set_source_counts(move || {
            handle
                .stats()
                .into_iter()
                .map(|(resource, s)| SourceCounts {
                    resource: resource.to_string(),
                    events: s.events,
                    errors: s.errors,
                })
                .collect()
        });
    }
}

/// What the agent remembers between syncs to report changes once.
struct SyncState {
    reported: observe::Reported,
    refusals: observe::Refusals,
    triggers: observe::TriggerTimes,
}

/// Runs until `shutdown` resolves.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let started_at = SystemTime::now();
    let metrics = Arc::new(Metrics::new());
    metrics.liveness().set_threshold(config.stall_threshold);
    let server = match config.metrics_addr {
        Some(addr) => Some(metrics::serve(addr, metrics.clone()).await?),
        None => None,
    };
    let mut datapath = install(&config).context("installing the datapath")?;
    tracing::info!(
        pin_dir = %config.datapath.pin_dir.display(),
        installed = ?datapath.installed(),
        object_sha256 = crate::datapath::object_identity().unwrap_or("none"),
        "datapath ready"
    );
    if let Ok(Some(state)) = crate::datapath::state::read(&config.datapath.pin_dir) {
        metrics.set_datapath_info(&state);
    }
    metrics.readiness().set_datapath_attached(true);
    let (frontends, backends) = datapath.writer().programmed();
    metrics.set_programmed(frontends, backends);
    let mut monitoring = Monitoring {
        server: start_monitor(&config),
        names: NamesWriter::default(),
    };

    let (source, mut changes) = start_source(&config.source, &config.node.name).await?;
    wire_counters(&metrics, &config.datapath, &source);

    let mut state = SyncState {
        reported: observe::Reported::default(),
        refusals: observe::Refusals::default(),
        triggers: observe::TriggerTimes::new(started_at),
    };
    // The source error last logged while waiting for the first sync (logged once per change).
    let mut waiting_logged: Option<Option<String>> = None;
    tokio::pin!(shutdown);
    let mut resync = tokio::time::interval(config.resync);
    resync.tick().await;
    let mut pending_since: Option<Instant> = Some(Instant::now());
    loop {
        metrics.liveness().beat();
        if pending_since.is_none() {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        anyhow::bail!("the source stopped");
                    }
                    pending_since = Some(Instant::now());
                }
                _ = resync.tick() => pending_since = Some(Instant::now()),
                () = &mut shutdown => break,
            }
        }
        // Coalesce a burst: wait the window, absorbing further changes.
        tokio::select! {
            () = tokio::time::sleep(config.coalesce) => {}
            () = &mut shutdown => break,
        }
        if let Some(path) = &config.stall_file {
            tokio::select! {
                () = stall_while_exists(path) => {}
                () = &mut shutdown => break,
            }
        }
        let since = pending_since.take().unwrap_or_else(Instant::now);
        let source_state = changes.borrow_and_update().clone();
        metrics.readiness().set_source(
            source_state.synced,
            source_state.connected,
            source_state.last_error.clone(),
        );
        if !source_state.synced {
            if waiting_logged.as_ref() != Some(&source_state.last_error) {
                tracing::info!(error = ?source_state.last_error, "waiting for the source to sync before programming");
                waiting_logged = Some(source_state.last_error.clone());
            }
            continue;
        }
        waiting_logged = None;
        reconcile(
            &config,
            &source,
            &mut datapath,
            &metrics,
            &mut state,
            since,
            &mut monitoring,
        );
    }
    drop(monitoring);
    tracing::info!("shutting down; the datapath stays programmed");
    if let Some(server) = server {
        server.shutdown().await;
    }
    Ok(())
}

/// Serves `lbctl monitor` (and `--debug-bpf`); a failure costs monitoring, never the
/// datapath, so it is logged and the agent goes on.
fn start_monitor(config: &AgentConfig) -> Option<MonitorServer> {
    match MonitorServer::start(
        &config.datapath.pin_dir,
        &config.monitor_socket,
        config.debug_bpf,
    ) {
        Ok(server) => Some(server),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), socket = %config.monitor_socket.display(), "lbctl monitor is not served");
            None
        }
    }
}

/// What the agent keeps for `lbctl monitor` and `lbctl services`: the monitor socket's server
/// and the writer of the Service names map.
struct Monitoring {
    server: Option<MonitorServer>,
    names: NamesWriter,
}

/// Returns once `path` does not exist (the test hook of [`AgentConfig::stall_file`]).
async fn stall_while_exists(path: &Path) {
    let mut logged = false;
    while path.exists() {
        if !logged {
            tracing::warn!(file = %path.display(), "stalling the reconcile loop while this file exists (test hook)");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Installs the embedded kernel object, or the one `--object` names; verifies the attach point.
fn install(config: &AgentConfig) -> Result<Datapath> {
    let object = match &config.object {
        Some(path) => Object::from_file(path)?,
        None => Object::embedded()?,
    };
    Ok(Datapath::install_object(&config.datapath, object)?)
}

fn reconcile(
    config: &AgentConfig,
    source: &Source,
    datapath: &mut Datapath,
    metrics: &Metrics,
    state: &mut SyncState,
    since: Instant,
    monitoring: &mut Monitoring,
) {
    let started = Instant::now();
    let missing = datapath.missing_pins();
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "pinned objects were removed behind the agent's back; recreating them"
        );
        metrics.inc_error(ErrorKind::PinsRemoved);
        if let Err(e) = datapath.repair(&config.datapath) {
            tracing::error!(error = %e, "recreating the datapath failed; will retry");
            metrics.inc_error(ErrorKind::Repair);
            metrics.readiness().set_datapath_attached(false);
            return;
        }
        metrics.readiness().set_datapath_attached(true);
        // The maps may be new: serve the new events ring (monitors of the old one are
        // disconnected) and write the switches into the new lb_meta.
        monitoring.server = None;
        monitoring.server = start_monitor(config);
    }
    let inventory = source.snapshot();
    let plan = engine::plan(&inventory, &config.node);
    state.reported.update(&plan);
    metrics.set_skipped(plan.skipped.len());
    state.triggers.note(&inventory.endpoint_slices);
    let desired = Desired::from_plan(&plan);
    match datapath.apply(&desired) {
        Ok(report) => {
            // A migration that completed in this apply pinned new maps: serve the new ring.
            if monitoring
                .server
                .as_ref()
                .is_some_and(|server| !server.is_current())
            {
                monitoring.server = None;
                monitoring.server = start_monitor(config);
            }
            if let Err(e) = monitoring
                .names
                .sync(datapath.pin_dir(), &plan, datapath.writer())
            {
                tracing::warn!(error = %e, "writing the Service names of the frontends");
            }
            let applied_at = SystemTime::now();
            for e in &report.errors {
                tracing::error!(frontend = %e.frontend, reason = %e.reason, "not programmed");
                metrics.inc_error(ErrorKind::Capacity);
            }
            let (frontends, backends) = datapath.writer().programmed();
            metrics.set_programmed(frontends, backends);
            metrics.observe_sync(started.elapsed());
            metrics.observe_event_latency(since.elapsed());
            for trigger in state.triggers.take() {
                metrics.observe_programming(trigger, applied_at);
            }
            if report.errors.is_empty() {
                metrics.set_last_sync(applied_at);
            }
            metrics
                .readiness()
                .set_last_apply(if report.errors.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{} frontends not programmed", report.errors.len()))
                });
            let failed: BTreeSet<FrontendKey> = report.errors.iter().map(|e| e.frontend).collect();
            observe_programmed(config, datapath, metrics, state, &plan, &inventory, &failed);
            if !report.is_noop() {
                tracing::info!(
                    frontends,
                    backends,
                    written = report.frontends_written,
                    deleted = report.frontends_deleted,
                    map_ops = report.map_operations,
                    took_us = started.elapsed().as_micros() as u64,
                    "datapath updated"
                );
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "applying the plan failed; will retry");
            metrics.inc_error(ErrorKind::Apply);
            metrics.readiness().set_last_apply(Err(e.to_string()));
        }
    }
}

/// After an apply: names the programmed frontends for the per-Service counters, and reports
/// frontends that start or stop refusing.
fn observe_programmed(
    config: &AgentConfig,
    datapath: &Datapath,
    metrics: &Metrics,
    state: &mut SyncState,
    plan: &crate::plan::Plan,
    inventory: &Inventory,
    failed: &BTreeSet<FrontendKey>,
) {
    let writer = datapath.writer();
    // The plan's frontend for each address (the first, as `Desired::from_plan` takes it).
    let mut by_addr: BTreeMap<FrontendKey, &Frontend> = BTreeMap::new();
    for frontend in &plan.frontends {
        by_addr.entry(frontend.key()).or_insert(frontend);
    }
    let named = by_addr
        .iter()
        .filter_map(|(addr, frontend)| {
            Some(NamedFrontend {
                id: writer.frontend_id(addr)?,
                frontend: addr.to_string(),
                service: ServicePort {
                    namespace: frontend.service.namespace.clone(),
                    service: frontend.service.name.clone(),
                    port_name: frontend.port_name.clone(),
                },
            })
        })
        .collect();
    metrics.set_service_frontends(named);
    let programmed = by_addr
        .iter()
        .filter(|(addr, _)| !failed.contains(addr) && writer.frontend_id(addr).is_some())
        .map(|(_, frontend)| *frontend);
    let refusing = state
        .refusals
        .update(programmed, inventory, &config.node.name);
    metrics.set_refusing(&refusing);
}
