//! Observability of the node agent: a Prometheus registry and a small HTTP server with
//! `/metrics`, `/healthz` and `/readyz`.
//!
//! The agent owns one `Arc<Metrics>`, updates it from its loop and hands it to [`serve`]:
//!
//! | metric | type | set by |
//! |---|---|---|
//! | `lbctl_sync_duration_seconds` | histogram | [`Metrics::observe_sync`] (one full plan + apply) |
//! | `lbctl_event_to_datapath_seconds` | histogram | [`Metrics::observe_event_latency`] (event received -> maps written) |
//! | `lbctl_frontends_programmed`, `lbctl_backends_programmed` | gauge | [`Metrics::set_programmed`] |
//! | `lbctl_errors_total{kind}` | counter | [`Metrics::inc_error`] |
//! | `lbctl_connects_total{verdict="rewritten\|refused\|passed"}` | counter | read at scrape time from [`Metrics::set_connect_counts`] (kernel counters) |
//! | `lbctl_source_events_total{resource}`, `lbctl_source_errors_total{resource}` | counter | read at scrape time from [`Metrics::set_source_counts`] |
//! | `lbctl_ready` | gauge | 1 when [`Readiness::check`] passes |
//!
//! Counters that live elsewhere (BPF maps, the Kubernetes source) are not copied into the
//! registry: a collector calls the provided closure on each scrape and reports its absolute
//! values, so they can never drift from their source.

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tracing::{error, info};

/// The content type of `/metrics` (what prometheus-client's text encoder produces).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Connect verdicts counted by the kernel hooks (absolute values since the maps were created).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectCounts {
    /// The destination was a service with backends and was rewritten.
    pub rewritten: u64,
    /// The destination was a service without usable backends: ECONNREFUSED.
    pub refused: u64,
    /// Not a service: left alone.
    pub passed: u64,
}

/// Counters of one watched resource of a source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceCounts {
    pub resource: String,
    pub events: u64,
    pub errors: u64,
}

type ConnectCountsFn = dyn Fn() -> Option<ConnectCounts> + Send + Sync;
type SourceCountsFn = dyn Fn() -> Vec<SourceCounts> + Send + Sync;

/// Closures read at scrape time.
#[derive(Default)]
struct Providers {
    connects: RwLock<Option<Box<ConnectCountsFn>>>,
    source: RwLock<Option<Box<SourceCountsFn>>>,
}

/// The metrics registry of the agent. Cheap to update from any task (`&self` everywhere).
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    event_to_datapath: Histogram,
    frontends: Gauge,
    backends: Gauge,
    errors: Family<Vec<(String, String)>, Counter>,
    /// 1, labelled with the attach point and the kernel object (datapath/state.rs).
    datapath_info: Family<Vec<(String, String)>, Gauge>,
    readiness: Arc<Readiness>,
    providers: Arc<Providers>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // 0.5 ms .. ~16 s
        let sync_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let event_to_datapath = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let frontends = Gauge::default();
        let backends = Gauge::default();
        let errors = Family::<Vec<(String, String)>, Counter>::default();
        let readiness = Arc::new(Readiness::default());
        let providers = Arc::new(Providers::default());

        registry.register_with_unit(
            "lbctl_sync_duration",
            "Duration of one full sync: plan computed from the inventory and applied to the maps",
            Unit::Seconds,
            sync_duration.clone(),
        );
        registry.register_with_unit(
            "lbctl_event_to_datapath",
            "Delay from a source event being received to the datapath maps being written",
            Unit::Seconds,
            event_to_datapath.clone(),
        );
        registry.register(
            "lbctl_frontends_programmed",
            "Service frontends currently programmed in the datapath",
            frontends.clone(),
        );
        registry.register(
            "lbctl_backends_programmed",
            "Backends currently programmed in the datapath",
            backends.clone(),
        );
        registry.register(
            "lbctl_errors",
            "Errors of the agent, by kind",
            errors.clone(),
        );
        let datapath_info = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "lbctl_datapath_info",
            "1, labelled with the cgroup the programs are attached to (path, cgroup id) and the kernel object's SHA-256",
            datapath_info.clone(),
        );
        registry.register_collector(Box::new(ScrapeTimeCollector {
            readiness: readiness.clone(),
            providers: providers.clone(),
        }));

        Self {
            registry,
            sync_duration,
            event_to_datapath,
            frontends,
            backends,
            errors,
            datapath_info,
            readiness,
            providers,
        }
    }

    /// Sets `lbctl_datapath_info` to the installed datapath's record.
    pub fn set_datapath_info(&self, state: &crate::datapath::state::State) {
        self.datapath_info.clear();
        let labels = vec![
            (
                "cgroup".to_owned(),
                state.attach_point.path.display().to_string(),
            ),
            (
                "cgroup_id".to_owned(),
                state.attach_point.cgroup_id.to_string(),
            ),
            ("object_sha256".to_owned(), state.object_sha256.clone()),
        ];
        self.datapath_info.get_or_create(&labels).set(1);
    }

    /// Records the duration of one full sync (plan + apply).
    pub fn observe_sync(&self, duration: Duration) {
        self.sync_duration.observe(duration.as_secs_f64());
    }

    /// Records the delay from an event being received to the maps being written.
    pub fn observe_event_latency(&self, duration: Duration) {
        self.event_to_datapath.observe(duration.as_secs_f64());
    }

    /// Sets the number of frontends and backends now in the maps.
    pub fn set_programmed(&self, frontends: usize, backends: usize) {
        self.frontends
            .set(i64::try_from(frontends).unwrap_or(i64::MAX));
        self.backends
            .set(i64::try_from(backends).unwrap_or(i64::MAX));
    }

    /// Counts one error of `kind` (e.g. `"apply"`, `"plan"`, `"read_counters"`).
    pub fn inc_error(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }

    /// Sets the closure that reads the kernel's connect counters at scrape time. Returning
    /// `None` (maps unreadable) omits `lbctl_connects_total` from that scrape.
    pub fn set_connect_counts(
        &self,
        read: impl Fn() -> Option<ConnectCounts> + Send + Sync + 'static,
    ) {
        *write_lock(&self.providers.connects) = Some(Box::new(read));
    }

    /// Sets the closure that reads the source's per-resource counters at scrape time.
    pub fn set_source_counts(&self, read: impl Fn() -> Vec<SourceCounts> + Send + Sync + 'static) {
        *write_lock(&self.providers.source) = Some(Box::new(read));
    }

    /// The readiness conditions served on `/readyz` and as `lbctl_ready`.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The registry in the OpenMetrics text format (what `/metrics` serves).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Emits the metrics whose values live elsewhere, read at scrape time.
struct ScrapeTimeCollector {
    readiness: Arc<Readiness>,
    providers: Arc<Providers>,
}

impl fmt::Debug for ScrapeTimeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrapeTimeCollector")
            .finish_non_exhaustive()
    }
}

impl Collector for ScrapeTimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let connects = read_lock(&self.providers.connects)
            .as_ref()
            .and_then(|read| read());
        if let Some(counts) = connects {
            let metric = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "lbctl_connects",
                "Connect/sendmsg verdicts of the socket hooks, by verdict (kernel counters)",
                None,
                metric.metric_type(),
            )?;
            for (verdict, value) in [
                ("rewritten", counts.rewritten),
                ("refused", counts.refused),
                ("passed", counts.passed),
            ] {
                let labels = [("verdict", verdict)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }

        let source = read_lock(&self.providers.source)
            .as_ref()
            .map(|read| read());
        if let Some(counts) = source.filter(|c| !c.is_empty()) {
            let metric = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "lbctl_source_events",
                "Objects received from the source (listed objects and watch events), by resource",
                None,
                metric.metric_type(),
            )?;
            for c in &counts {
                let labels = [("resource", c.resource.as_str())];
                ConstCounter::new(c.events).encode(family.encode_family(&labels)?)?;
            }
            let mut family = encoder.encode_descriptor(
                "lbctl_source_errors",
                "List and watch failures of the source, by resource",
                None,
                metric.metric_type(),
            )?;
            for c in &counts {
                let labels = [("resource", c.resource.as_str())];
                ConstCounter::new(c.errors).encode(family.encode_family(&labels)?)?;
            }
        }

        let ready = ConstGauge::new(i64::from(self.readiness.is_ready()));
        let metric = encoder.encode_descriptor(
            "lbctl_ready",
            "1 when the agent is ready (source synced and connected, datapath attached, last apply succeeded)",
            None,
            ready.metric_type(),
        )?;
        ready.encode(metric)
    }
}

/// The conditions of readiness. All start false: the agent sets them as it comes up.
#[derive(Debug, Default)]
pub struct Readiness {
    inner: Mutex<ReadinessInner>,
}

#[derive(Debug, Default)]
struct ReadinessInner {
    source_synced: bool,
    source_connected: bool,
    source_error: Option<String>,
    datapath_attached: bool,
    /// `None` before the first apply.
    last_apply: Option<Result<(), String>>,
}

impl Readiness {
    fn lock(&self) -> MutexGuard<'_, ReadinessInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The source's state: all resources listed, watches healthy (else `error` says why).
    pub fn set_source(&self, synced: bool, connected: bool, error: Option<String>) {
        let mut inner = self.lock();
        inner.source_synced = synced;
        inner.source_connected = connected;
        inner.source_error = error;
    }

    /// The BPF programs are loaded and attached.
    pub fn set_datapath_attached(&self, attached: bool) {
        self.lock().datapath_attached = attached;
    }

    /// The outcome of the last apply of a plan to the maps.
    pub fn set_last_apply(&self, result: Result<(), String>) {
        self.lock().last_apply = Some(result);
    }

    /// `Ok` when ready, else every unmet condition, joined by `"; "`.
    pub fn check(&self) -> Result<(), String> {
        let inner = self.lock();
        let mut reasons = Vec::new();
        if !inner.source_synced {
            reasons.push("source not synced".to_string());
        }
        if !inner.source_connected {
            match &inner.source_error {
                Some(error) => reasons.push(format!("source not connected: {error}")),
                None => reasons.push("source not connected".to_string()),
            }
        }
        if !inner.datapath_attached {
            reasons.push("datapath not attached".to_string());
        }
        match &inner.last_apply {
            None => reasons.push("nothing applied yet".to_string()),
            Some(Err(error)) => reasons.push(format!("last apply failed: {error}")),
            Some(Ok(())) => {}
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }

    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }
}

/// The routes: `/metrics`, `/healthz`, `/readyz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_handler))
        .with_state(metrics)
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(err) => {
            error!(error = %err, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

async fn readyz_handler(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.readiness().check() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reasons}\n"),
        )
            .into_response(),
    }
}

/// A running metrics server. Dropping it (or [`MetricsServer::shutdown`]) stops it.
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, finishes in-flight requests and waits for the server to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // Dropping the sender resolves the graceful-shutdown future.
        self.stop.take();
    }
}

/// Binds `addr` and serves [`router`] on the current tokio runtime. Returns once listening;
/// binding errors are returned, serving errors are logged.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<MetricsServer, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(metrics);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(err) = result {
            error!(error = %err, "metrics server failed");
        }
    });
    info!(%local_addr, "serving /metrics, /healthz and /readyz");
    Ok(MetricsServer {
        local_addr,
        stop: Some(stop),
        task: Some(task),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_every_unmet_condition() {
        let r = Readiness::default();
        let reasons = r.check().unwrap_err();
        assert!(reasons.contains("source not synced"), "{reasons}");
        assert!(reasons.contains("datapath not attached"), "{reasons}");
        assert!(reasons.contains("nothing applied yet"), "{reasons}");
        r.set_source(true, true, None);
        r.set_datapath_attached(true);
        r.set_last_apply(Err("map full".into()));
        assert_eq!(r.check(), Err("last apply failed: map full".to_string()));
        r.set_last_apply(Ok(()));
        assert!(r.is_ready());
        r.set_source(true, false, Some("services: 500".into()));
        assert_eq!(
            r.check(),
            Err("source not connected: services: 500".to_string())
        );
    }
}
