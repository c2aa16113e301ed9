//! The node agent: source -> engine -> datapath, continuously.
//!
//! Every change the source reports starts a short coalescing window; then the agent takes one
//! snapshot, computes the plan for this node and applies the difference to the maps. Nothing is
//! applied (so nothing pruned) before the source has synced; a source that fails keeps its last
//! objects, so a failing API server or a broken file never flushes the datapath. On SIGTERM or
//! SIGINT the agent exits and leaves the datapath programmed: connects keep working.
use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::{
    datapath::{Datapath, DatapathConfig, Desired, Maps, Object},
    engine::{self, NodeContext},
    metrics::{self, ConnectCounts, Metrics, SourceCounts},
    model::Inventory,
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
    /// Kernel object to load instead of the embedded one (`--object`, for upgrade tests).
    pub object: Option<PathBuf>,
}

enum Source {
    Files(FileSource),
    Kube(KubeSource),
}

impl Source {
    fn snapshot(&self) -> Inventory {
        match self {
            Source::Files(s) => s.snapshot(),
            Source::Kube(s) => s.snapshot(),
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

/// Runs until `shutdown` resolves.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let server = match config.metrics_addr {
        Some(addr) => Some(metrics::serve(addr, metrics.clone()).await?),
        None => None,
    };
    let mut datapath = install(&config).context("installing the datapath")?;
    tracing::info!(pin_dir = %config.datapath.pin_dir.display(), installed = ?datapath.installed(), "datapath ready");
    if let Ok(Some(state)) = crate::datapath::state::read(&config.datapath.pin_dir) {
        metrics.set_datapath_info(&state);
    }
    metrics.readiness().set_datapath_attached(true);
    let (frontends, backends) = datapath.writer().programmed();
    metrics.set_programmed(frontends, backends);

    let (source, mut changes) = start_source(&config.source, &config.node.name).await?;
    wire_counters(&metrics, &config.datapath, &source);

    tokio::pin!(shutdown);
    let mut resync = tokio::time::interval(config.resync);
    resync.tick().await;
    let mut pending_since: Option<Instant> = Some(Instant::now());
    loop {
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
        let since = pending_since.take().unwrap_or_else(Instant::now);
        let state = changes.borrow_and_update().clone();
        metrics
            .readiness()
            .set_source(state.synced, state.connected, state.last_error.clone());
        if !state.synced {
            tracing::info!(error = ?state.last_error, "waiting for the source to sync before programming");
            continue;
        }
        reconcile(&config, &source, &mut datapath, &metrics, since);
    }
    tracing::info!("shutting down; the datapath stays programmed");
    if let Some(server) = server {
        server.shutdown().await;
    }
    Ok(())
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
    since: Instant,
) {
    let started = Instant::now();
    let missing = datapath.missing_pins();
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "pinned objects were removed behind the agent's back; recreating them"
        );
        metrics.inc_error("pins_removed");
        if let Err(e) = datapath.repair(&config.datapath) {
            tracing::error!(error = %e, "recreating the datapath failed; will retry");
            metrics.inc_error("datapath");
            metrics.readiness().set_datapath_attached(false);
            return;
        }
        metrics.readiness().set_datapath_attached(true);
    }
    let inventory = source.snapshot();
    let plan = engine::plan(&inventory, &config.node);
    for skipped in &plan.skipped {
        tracing::warn!(object = %skipped.object, reason = %skipped.reason, "skipped");
    }
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    let desired = Desired::from_plan(&plan);
    match datapath.apply(&desired) {
        Ok(report) => {
            for e in &report.errors {
                tracing::error!(frontend = %e.frontend, reason = %e.reason, "not programmed");
                metrics.inc_error("datapath_capacity");
            }
            let (frontends, backends) = datapath.writer().programmed();
            metrics.set_programmed(frontends, backends);
            metrics.observe_sync(started.elapsed());
            metrics.observe_event_latency(since.elapsed());
            metrics
                .readiness()
                .set_last_apply(if report.errors.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{} frontends not programmed", report.errors.len()))
                });
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
            metrics.inc_error("datapath");
            metrics.readiness().set_last_apply(Err(e.to_string()));
        }
    }
}
