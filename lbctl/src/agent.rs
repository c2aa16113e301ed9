//! The node agent: source -> engine -> datapath, continuously.
//!
//! Every change the source reports starts a short coalescing window; then the agent asks the
//! source which Services changed ([`Dirty`]) and re-plans, writes and observes only those:
//! [`crate::engine::Planner`] re-decides the frontends the changed Services offered or offer now,
//! the desired state is patched for those frontends, and [`Datapath::apply_changed`] writes
//! just them (in the same safe order, with the same rollback). The cost follows the change,
//! not the number of Services. At start, on the resync timer, after a repair, and when the
//! source says everything may have changed (a relist, a Node change), the agent takes a whole
//! snapshot, plans everything and applies the whole desired state: the full path that the
//! incremental one must always agree with (a resync after changes writes nothing).
//!
//! Nothing is applied (so nothing pruned) before the source has synced; a source that fails
//! keeps its last objects, so a failing API server or a broken file never flushes the
//! datapath. On SIGTERM or SIGINT the agent exits and leaves the datapath programmed: connects
//! keep working.
//!
//! The loop beats [`metrics::Liveness`] once per turn (`/healthz` fails when it stops), and
//! [`observe`] turns each sync into logs that say what changed, once.
pub mod keep;
pub mod observe;
pub mod terminate;

use std::{
    collections::BTreeSet,
    future::Future,
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::{
    datapath::{
        ApplyReport, Datapath, DatapathConfig, DesiredState, FrontendKey, Maps, Object, SpecRef,
    },
    engine::{NodeContext, Planner},
    metrics::{
        self, ConnectCounts, ErrorKind, FrontendCounts, Metrics, NamedFrontend, ServicePort,
        SourceCounts,
    },
    model::Inventory,
    monitor::{MonitorServer, names::NamesWriter},
    plan::{Frontend, Plan, ServiceRef},
    source::{
        Dirty, SourceState,
        files::FileSource,
        kube::{KubeSource, KubeSourceConfig},
    },
};

/// Where the agent reads cluster objects from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// The Kubernetes API (in-cluster config, or this kubeconfig file), listed in pages of
    /// `list_page_size` objects.
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        list_page_size: NonZeroU32,
    },
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
    /// Which connected sockets of removed backends are terminated, and in which namespaces.
    pub termination: crate::datapath::TerminationConfig,
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

    fn take_changes(&self) -> (Dirty, Arc<Inventory>) {
        match self {
            Source::Files(s) => s.take_changes(),
            Source::Kube(s) => {
                let (dirty, inventory) = s.take_changes();
                (dirty, Arc::new(inventory))
            }
        }
    }

    fn objects_of(&self, services: &BTreeSet<ServiceRef>) -> Inventory {
        match self {
            Source::Files(s) => s.objects_of(services),
            Source::Kube(s) => s.objects_of(services),
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
        SourceConfig::Kubernetes {
            kubeconfig,
            list_page_size,
        } => {
            let client = crate::source::kube::client_from(kubeconfig.clone()).await?;
            let config = KubeSourceConfig {
                page_size: *list_page_size,
                ..KubeSourceConfig::new(node)
            };
            let (source, rx) = KubeSource::start_with(client, config)?;
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
        frontend_counts(&maps, ids)
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

/// Fewer ids than this are read one lookup each; more (a full sync's baselines: every id is
/// new) are read as their id range, [`COUNTS_CHUNK`] per system call, where one lookup each
/// cost a system call per frontend.
const COUNTS_BATCH_FROM: usize = 64;
/// Per-frontend counters read per `BPF_MAP_LOOKUP_BATCH` (a buffer of this many values).
const COUNTS_CHUNK: usize = 4096;

/// The kernel's per-frontend counters of `ids`, summed over CPUs, in the order of `ids`.
fn frontend_counts(maps: &Maps, ids: &[u32]) -> Option<Vec<FrontendCounts>> {
    let one = |id: u32| {
        let c = maps.frontend_counters(id).ok()?;
        Some(FrontendCounts {
            rewritten: c.rewritten,
            refused: c.refused,
        })
    };
    let (Some(&lo), Some(&hi)) = (ids.iter().min(), ids.iter().max()) else {
        return Some(Vec::new());
    };
    let span = (hi - lo) as usize + 1;
    // Sparse ids would read mostly what nobody asked for.
    if ids.len() < COUNTS_BATCH_FROM || span > 8 * ids.len() {
        return ids.iter().map(|id| one(*id)).collect();
    }
    let sums: Vec<FrontendCounts> = maps
        .frontend_counters_range(lo, span, COUNTS_CHUNK)?
        .into_iter()
        .map(|c| FrontendCounts {
            rewritten: c.rewritten,
            refused: c.refused,
        })
        .collect();
    ids.iter()
        .map(|id| sums.get((id - lo) as usize).copied())
        .collect()
}

/// What the agent remembers between syncs: to report changes once, and to apply the next
/// change incrementally.
struct SyncState {
    reported: observe::Reported,
    refusals: observe::Refusals,
    triggers: observe::TriggerTimes,
    /// The plan by Service; `None` until the first full sync (and after a failed one). It is
    /// the desired state too ([`Planned`]): no copy of every frontend beside it.
    planner: Option<Planner>,
    /// Frontends the last apply could not program: named again by the next incremental apply.
    retry: BTreeSet<FrontendKey>,
}

/// The planned frontends as the desired state the writer reads.
struct Planned<'a>(&'a Planner);

impl DesiredState for Planned<'_> {
    fn frontends(&self) -> impl Iterator<Item = (&FrontendKey, SpecRef<'_>)> {
        self.0
            .keyed_frontends()
            .map(|(key, frontend)| (key, SpecRef::of(frontend)))
    }

    fn frontend(&self, key: &FrontendKey) -> Option<(&FrontendKey, SpecRef<'_>)> {
        self.0
            .keyed_frontend(key)
            .map(|(key, frontend)| (key, SpecRef::of(frontend)))
    }
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
    let mut termination = terminate::Termination::new(config.termination.clone());
    termination.refresh(&config.datapath, &datapath, &metrics);
    let mut keeping = keep::Keeping::new(config.termination.netns_dirs.clone());
    keeping.refresh(&config.datapath, &datapath, &metrics);

    let (source, mut changes) = start_source(&config.source, &config.node.name).await?;
    wire_counters(&metrics, &config.datapath, &source);

    let mut state = SyncState {
        reported: observe::Reported::default(),
        refusals: observe::Refusals::default(),
        triggers: observe::TriggerTimes::new(started_at),
        planner: None,
        retry: BTreeSet::new(),
    };
    // The first sync is a full one; so is every sync the resync timer starts.
    let mut full_due = true;
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
                _ = resync.tick() => {
                    full_due = true;
                    pending_since = Some(Instant::now());
                }
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
        let applied = reconcile(
            &config,
            &source,
            &mut datapath,
            &metrics,
            &mut state,
            since,
            &mut monitoring,
            std::mem::take(&mut full_due),
        );
        termination.refresh(&config.datapath, &datapath, &metrics);
        keeping.refresh(&config.datapath, &datapath, &metrics);
        if let Some(report) = &applied {
            termination.after_apply(report, &metrics);
        }
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

/// One sync: a full one when `full` (or when the source says everything changed, or there is
/// no incremental state yet), else only the Services the source names. Returns the apply's
/// report when it applied. A failed sync drops the incremental state, so the next one is full.
#[allow(clippy::too_many_arguments)]
fn reconcile(
    config: &AgentConfig,
    source: &Source,
    datapath: &mut Datapath,
    metrics: &Metrics,
    state: &mut SyncState,
    since: Instant,
    monitoring: &mut Monitoring,
    full: bool,
) -> Option<ApplyReport> {
    let started = Instant::now();
    let missing = datapath.missing_pins();
    let mut full = full;
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
            return None;
        }
        metrics.readiness().set_datapath_attached(true);
        // The maps may be new: serve the new events ring (monitors of the old one are
        // disconnected) and write the switches into the new lb_meta.
        monitoring.server = None;
        monitoring.server = start_monitor(config);
        full = true;
    }
    // A migration fills new maps from one full apply, and its completion may bring new maps
    // whose names and counters need a full observation.
    full |= datapath.migrating();
    let (dirty, inventory) = source.take_changes();
    let complete = dirty == Dirty::All;
    let dirty = if full { Dirty::All } else { dirty };
    let SyncState {
        reported,
        refusals,
        triggers,
        planner: planner_slot,
        retry,
    } = state;
    if let (Some(planner), Dirty::Services(services)) = (planner_slot.as_mut(), &dirty) {
        if services.is_empty() && retry.is_empty() {
            return None;
        }
        let parts = Parts {
            reported,
            refusals,
            triggers,
            retry,
        };
        let applied = reconcile_changed(
            config, source, datapath, metrics, parts, planner, services, inventory, started, since,
            monitoring,
        );
        if applied.is_none() {
            // Start over from a whole snapshot: the incremental state may be behind the maps.
            *planner_slot = None;
        }
        return applied;
    }
    // A full sync is due but the source gave only the changed objects: take them all.
    let inventory = if complete {
        inventory
    } else {
        source.snapshot()
    };
    reconcile_full(
        config, datapath, metrics, state, inventory, started, since, monitoring,
    )
}

/// The parts of [`SyncState`] an incremental sync uses beside the planner.
struct Parts<'a> {
    reported: &'a mut observe::Reported,
    refusals: &'a mut observe::Refusals,
    triggers: &'a mut observe::TriggerTimes,
    retry: &'a mut BTreeSet<FrontendKey>,
}

/// The full sync: whole snapshot, whole plan, whole desired state, full apply and observation.
#[allow(clippy::too_many_arguments)]
fn reconcile_full(
    config: &AgentConfig,
    datapath: &mut Datapath,
    metrics: &Metrics,
    state: &mut SyncState,
    inventory: Arc<Inventory>,
    started: Instant,
    since: Instant,
    monitoring: &mut Monitoring,
) -> Option<ApplyReport> {
    // The old state goes first: the peak memory of a full sync holds one plan, not two.
    state.planner = None;
    state.retry.clear();
    let planner = Planner::new(&inventory, &config.node);
    report_skipped(&planner, config, metrics, &mut state.reported);
    state.triggers.note(&inventory.endpoint_slices);
    // From the planner's frontends directly: a materialized Plan or Desired would copy all of
    // them.
    let mut stages = Stages::planned(started);
    match datapath.apply(&Planned(&planner)) {
        Ok(report) => {
            stages.written();
            serve_current_ring(config, monitoring);
            // The programmed frontends with their ids, resolved once for the names, the
            // metrics and the refusals.
            let programmed_ids: Vec<(&FrontendKey, &Frontend, u32)> = datapath
                .writer()
                .frontend_ids(planner.keyed_frontends())
                .collect();
            if let Err(e) = monitoring.names.sync_frontends(
                datapath.pin_dir(),
                programmed_ids
                    .iter()
                    .map(|&(_, frontend, id)| (id, frontend)),
            ) {
                tracing::warn!(error = %e, "writing the Service names of the frontends");
            }
            let failed: BTreeSet<FrontendKey> = report.errors.iter().map(|e| e.frontend).collect();
            let programmed = after_apply(
                datapath,
                metrics,
                &mut state.triggers,
                &report,
                &stages,
                since,
            );
            observe_programmed(config, metrics, state, &programmed_ids, &inventory, &failed);
            drop(programmed_ids);
            log_update(datapath, &report, started, stages, "full", programmed);
            state.retry = failed;
            state.planner = Some(planner);
            Some(report)
        }
        Err(e) => {
            tracing::error!(error = %e, "applying the plan failed; will retry");
            metrics.inc_error(ErrorKind::Apply);
            metrics.readiness().set_last_apply(Err(e.to_string()));
            None
        }
    }
}

/// Logs what the plan skipped (each object once) and counts it.
fn report_skipped(
    planner: &Planner,
    config: &AgentConfig,
    metrics: &Metrics,
    reported: &mut observe::Reported,
) {
    let (skipped, warnings) = planner.report();
    metrics.set_skipped(skipped.len());
    reported.update(&Plan {
        node: config.node.name.clone(),
        frontends: Vec::new(),
        skipped,
        warnings,
    });
}

/// The incremental sync: re-plans `services` from their objects (`inventory`), patches the
/// desired state and applies and observes only the frontends that may have changed.
#[allow(clippy::too_many_arguments)]
fn reconcile_changed(
    config: &AgentConfig,
    source: &Source,
    datapath: &mut Datapath,
    metrics: &Metrics,
    state: Parts<'_>,
    planner: &mut Planner,
    services: &BTreeSet<ServiceRef>,
    inventory: Arc<Inventory>,
    started: Instant,
    since: Instant,
    monitoring: &mut Monitoring,
) -> Option<ApplyReport> {
    let mut changed = planner.update(&inventory, services);
    report_skipped(planner, config, metrics, state.reported);
    state.triggers.note_changed(&inventory.endpoint_slices);
    changed.append(state.retry);
    // Ids before the apply: a frontend that goes away (or is rewritten under a new id) loses
    // its name and its per-Service counters.
    let old_ids: Vec<(FrontendKey, Option<u32>)> = changed
        .iter()
        .map(|key| (*key, datapath.writer().frontend_id(key)))
        .collect();
    let mut stages = Stages::planned(started);
    let report = match datapath.apply_changed(&Planned(planner), &changed) {
        Ok(report) => {
            stages.written();
            report
        }
        Err(e) => {
            tracing::error!(error = %e, "applying the changes failed; will retry in full");
            metrics.inc_error(ErrorKind::Apply);
            metrics.readiness().set_last_apply(Err(e.to_string()));
            return None;
        }
    };
    serve_current_ring(config, monitoring);
    let failed: BTreeSet<FrontendKey> = report.errors.iter().map(|e| e.frontend).collect();
    let writer = datapath.writer();
    let mut remove_ids: Vec<u32> = Vec::new();
    let mut names_write = Vec::new();
    let mut named = Vec::new();
    let mut programmed: Vec<(FrontendKey, Option<&Frontend>)> = Vec::new();
    for (key, old_id) in old_ids {
        let frontend = planner.frontend(&key);
        let id = writer.frontend_id(&key);
        if let Some(old_id) = old_id
            && id != Some(old_id)
        {
            remove_ids.push(old_id);
        }
        match (frontend, id) {
            (Some(frontend), Some(id)) => {
                names_write.push((id, frontend));
                named.push(named_frontend(id, frontend));
                let ok = !failed.contains(&key);
                programmed.push((key, ok.then_some(frontend)));
            }
            _ => programmed.push((key, None)),
        }
    }
    if let Err(e) = monitoring
        .names
        .update(datapath.pin_dir(), &remove_ids, &names_write)
    {
        tracing::warn!(error = %e, "writing the Service names of the frontends");
    }
    metrics.patch_service_frontends(&remove_ids, named);
    let programmed_triggers =
        after_apply(datapath, metrics, state.triggers, &report, &stages, since);
    // Explaining a refusal needs the objects of its Service, which may be one that did not
    // change (it just won a frontend another Service gave up).
    let others: BTreeSet<ServiceRef> = programmed
        .iter()
        .filter_map(|(_, f)| *f)
        .filter(|f| f.backends.is_empty() && !services.contains(&f.service))
        .map(|f| f.service.clone())
        .collect();
    let extra;
    let explain_from = if others.is_empty() {
        &inventory
    } else {
        let mut all = source.objects_of(&others);
        all.services.extend(inventory.services.iter().cloned());
        all.endpoint_slices
            .extend(inventory.endpoint_slices.iter().cloned());
        extra = all;
        &extra
    };
    let refusing =
        state
            .refusals
            .update_changed(programmed.into_iter(), explain_from, &config.node.name);
    metrics.set_refusing(&refusing);
    log_update(
        datapath,
        &report,
        started,
        stages,
        "changed",
        programmed_triggers,
    );
    *state.retry = failed;
    Some(report)
}

/// A migration that completed in this apply pinned new maps: serve the new ring.
fn serve_current_ring(config: &AgentConfig, monitoring: &mut Monitoring) {
    if monitoring
        .server
        .as_ref()
        .is_some_and(|server| !server.is_current())
    {
        monitoring.server = None;
        monitoring.server = start_monitor(config);
    }
}

/// The EndpointSlice trigger times a sync programmed: how many, and the longest latency
/// (trigger time to maps written).
#[derive(Clone, Copy, Debug, Default)]
struct Programmed {
    triggers: usize,
    max_latency: Duration,
}

/// Metrics and readiness of a successful apply: the sync's duration, the event latency and the
/// trigger latencies are measured to the moment the maps were written (`stages`), not to the
/// observation after.
fn after_apply(
    datapath: &Datapath,
    metrics: &Metrics,
    triggers: &mut observe::TriggerTimes,
    report: &ApplyReport,
    stages: &Stages,
    since: Instant,
) -> Programmed {
    let applied_at = stages.written_at_wall;
    for e in &report.errors {
        tracing::error!(frontend = %e.frontend, reason = %e.reason, "not programmed");
        metrics.inc_error(ErrorKind::Capacity);
    }
    let (frontends, backends) = datapath.writer().programmed();
    metrics.set_programmed(frontends, backends);
    metrics.observe_sync(stages.plan + stages.write);
    metrics.observe_event_latency(stages.written_at.saturating_duration_since(since));
    let mut programmed = Programmed::default();
    for trigger in triggers.take() {
        metrics.observe_programming(trigger, applied_at);
        programmed.triggers += 1;
        let latency = applied_at.duration_since(trigger).unwrap_or_default();
        programmed.max_latency = programmed.max_latency.max(latency);
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
    programmed
}

/// Where a sync's time went: until the desired state was ready (snapshot or changed objects,
/// plan, desired state), and the apply that wrote the maps. The rest of `took_us` is the
/// observation after it (names, metrics, refusals).
#[derive(Clone, Copy, Debug)]
struct Stages {
    plan: Duration,
    planned_at: Instant,
    write: Duration,
    /// When the maps were written (what the programming latencies are measured to).
    written_at: Instant,
    written_at_wall: SystemTime,
}

impl Stages {
    /// The plan and desired state of a sync that started at `started` are ready now.
    fn planned(started: Instant) -> Self {
        let now = Instant::now();
        Stages {
            plan: now.duration_since(started),
            planned_at: now,
            write: Duration::ZERO,
            written_at: now,
            written_at_wall: SystemTime::now(),
        }
    }

    /// The apply is done now.
    fn written(&mut self) {
        self.written_at = Instant::now();
        self.written_at_wall = SystemTime::now();
        self.write = self.written_at.duration_since(self.planned_at);
    }
}

/// The `datapath updated` line of a sync that wrote something: `sync` is `full` or
/// `changed`, `took_us` the sync's own time (snapshot or changed objects, plan, maps,
/// observation), of which `plan_us` until the desired state was ready and `write_us` the apply
/// that wrote the maps; `triggers` and `trigger_latency_max_us` the EndpointSlice trigger times
/// it programmed (see `lbctl_network_programming_duration_seconds`).
fn log_update(
    datapath: &Datapath,
    report: &ApplyReport,
    started: Instant,
    stages: Stages,
    sync: &'static str,
    programmed: Programmed,
) {
    if !report.is_noop() {
        let (frontends, backends) = datapath.writer().programmed();
        tracing::info!(
            frontends,
            backends,
            written = report.frontends_written,
            deleted = report.frontends_deleted,
            map_ops = report.map_operations,
            took_us = started.elapsed().as_micros() as u64,
            plan_us = stages.plan.as_micros() as u64,
            write_us = stages.write.as_micros() as u64,
            sync,
            triggers = programmed.triggers,
            trigger_latency_max_us = programmed.max_latency.as_micros() as u64,
            "datapath updated"
        );
    }
}

fn named_frontend(id: u32, frontend: &Frontend) -> NamedFrontend {
    NamedFrontend {
        id,
        service: ServicePort {
            namespace: frontend.service.namespace.clone(),
            service: frontend.service.name.clone(),
            port_name: frontend.port_name.clone(),
        },
    }
}

/// After an apply: names the programmed frontends for the per-Service counters, and reports
/// frontends that start or stop refusing.
fn observe_programmed(
    config: &AgentConfig,
    metrics: &Metrics,
    state: &mut SyncState,
    programmed_ids: &[(&FrontendKey, &Frontend, u32)],
    inventory: &Inventory,
    failed: &BTreeSet<FrontendKey>,
) {
    metrics.set_service_frontends(
        programmed_ids
            .iter()
            .map(|&(_, frontend, id)| named_frontend(id, frontend)),
    );
    let programmed = programmed_ids
        .iter()
        .filter(|(key, _, _)| !failed.contains(key))
        .map(|&(_, frontend, _)| frontend);
    let refusing = state
        .refusals
        .update(programmed, inventory, &config.node.name);
    metrics.set_refusing(&refusing);
}
