//! Observability of the node agent: a Prometheus registry and a small HTTP server with
//! `/metrics`, `/healthz` and `/readyz`.
//!
//! The agent owns one `Arc<Metrics>`, updates it from its loop and hands it to [`serve`]:
//!
//! | metric | type | set by |
//! |---|---|---|
//! | `lbctl_sync_duration_seconds` | histogram | [`Metrics::observe_sync`] (one reconcile up to the maps written) |
//! | `lbctl_event_to_datapath_seconds` | histogram | [`Metrics::observe_event_latency`] (event received -> maps written) |
//! | `lbctl_network_programming_duration_seconds` | histogram | [`Metrics::observe_programming`] (EndpointSlice trigger time -> maps written) |
//! | `lbctl_last_sync_timestamp_seconds` | gauge | [`Metrics::set_last_sync`] |
//! | `lbctl_frontends_programmed`, `lbctl_backends_programmed` | gauge | [`Metrics::set_programmed`] |
//! | `lbctl_frontends_refusing{traffic_policy}` | gauge | [`Metrics::set_refusing`] |
//! | `lbctl_skipped_objects` | gauge | [`Metrics::set_skipped`] |
//! | `lbctl_errors_total{kind}` | counter | [`Metrics::inc_error`], kinds of [`ErrorKind`] |
//! | `lbctl_connects_total{verdict="rewritten\|refused\|passed"}` | counter | read at scrape time from [`Metrics::set_connect_counts`] (kernel counters) |
//! | `lbctl_service_connects_total{namespace,service,port_name,verdict}` | counter | per-frontend kernel counters read through [`Metrics::set_frontend_counts`], named by [`Metrics::set_service_frontends`] |
//! | `lbctl_source_events_total{resource}`, `lbctl_source_errors_total{resource}` | counter | read at scrape time from [`Metrics::set_source_counts`] |
//! | `lbctl_build_info{version,object_sha256}` | info | at start |
//! | `lbctl_ready` | gauge | 1 when [`Readiness::check`] passes |
//!
//! Counters that live elsewhere (BPF maps, the Kubernetes source) are not copied into the
//! registry: a collector calls the provided closure on each scrape and reports its values, so
//! they can never drift from their source. `/healthz` fails when the reconcile loop stops
//! turning ([`Liveness`]).

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, RwLock, atomic::AtomicU64},
    time::{Duration, Instant, SystemTime},
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
        info::Info,
    },
    registry::{Registry, Unit},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tracing::{error, info};

mod service_connects;

use service_connects::ServiceConnects;

/// The content type of `/metrics` (what prometheus-client's text encoder produces).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/healthz` fails when the reconcile loop has not completed a turn for this long, unless the
/// agent sets another threshold (it uses 3 × `--resync-seconds`, which is this by default).
pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The kinds of `lbctl_errors_total{kind}`: every error the agent counts is one of these, and
/// every kind is served from the start (at 0), so an alert on any of them needs no `absent()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// Applying a plan to the maps failed as a whole; the agent retries at its next turn.
    Apply,
    /// One frontend could not be written (a map or the frontend ids are full); the others were.
    Capacity,
    /// Pinned maps or links were removed behind the agent's back; the agent recreates them.
    PinsRemoved,
    /// Recreating removed pins failed; the agent retries at its next turn.
    Repair,
    /// The kernel's per-frontend counters could not be read (for a scrape or after an apply).
    ReadCounters,
    /// A socket termination sweep failed in a network namespace, or the kernel refused to
    /// destroy a socket; the next removal sweeps again.
    Termination,
    /// Keeping TCP translations failed in a network namespace, the keeping iterator could not
    /// be loaded, or the kernel could not create a socket's storage.
    Keep,
}

impl ErrorKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Apply,
        ErrorKind::Capacity,
        ErrorKind::PinsRemoved,
        ErrorKind::Repair,
        ErrorKind::ReadCounters,
        ErrorKind::Termination,
        ErrorKind::Keep,
    ];

    /// The value of the `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Apply => "apply",
            ErrorKind::Capacity => "capacity",
            ErrorKind::PinsRemoved => "pins_removed",
            ErrorKind::Repair => "repair",
            ErrorKind::ReadCounters => "read_counters",
            ErrorKind::Termination => "termination",
            ErrorKind::Keep => "keep",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The traffic policy that left a frontend without backends (label `traffic_policy` of
/// `lbctl_frontends_refusing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrafficPolicy {
    /// The frontend may use every ready endpoint in the cluster, and none is.
    Cluster,
    /// `internalTrafficPolicy: Local`: only this node's endpoints count, and none is ready.
    Local,
}

impl TrafficPolicy {
    pub const ALL: [TrafficPolicy; 2] = [TrafficPolicy::Cluster, TrafficPolicy::Local];

    pub fn label(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

impl fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Connect verdicts counted by the kernel hooks (absolute values since the maps were created).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectCounts {
    /// The destination was a service with backends and was rewritten.
    pub rewritten: u64,
    /// The destination was a service without usable backends: ECONNREFUSED.
    pub refused: u64,
    /// Looked up and not a service: left alone (an IPv4 destination in a /16 without
    /// frontends is left alone without a lookup, and not counted).
    pub passed: u64,
}

/// The kernel's counters of one frontend id (absolute values since the maps were created).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendCounts {
    pub rewritten: u64,
    pub refused: u64,
}

/// A Service port: the unit of `lbctl_service_connects_total`. Its strings are shared with the
/// plan (the interned namespace, the Service's name and port name): the label set of every
/// frontend of a Service port is the same three pointers, not three copies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePort {
    pub namespace: Arc<str>,
    pub service: Arc<str>,
    /// The port's `name` (empty for the single unnamed port of a Service).
    pub port_name: Arc<str>,
}

/// A frontend programmed on this node, by its id in the maps, and the Service port it belongs
/// to: an id given to another Service port counts for that port from then on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedFrontend {
    pub id: u32,
    pub service: ServicePort,
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
/// Reads the counters of these frontend ids, in the same order (`None`: maps unreadable).
type FrontendCountsFn = dyn Fn(&[u32]) -> Option<Vec<FrontendCounts>> + Send + Sync;

/// Closures read at scrape time.
#[derive(Default)]
struct Providers {
    connects: RwLock<Option<Box<ConnectCountsFn>>>,
    source: RwLock<Option<Box<SourceCountsFn>>>,
    frontends: RwLock<Option<Box<FrontendCountsFn>>>,
}

/// Whether the reconcile loop still turns: it beats once per turn; `/healthz` fails when the
/// last beat is older than the threshold.
#[derive(Debug)]
pub struct Liveness {
    inner: Mutex<(Instant, Duration)>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            inner: Mutex::new((Instant::now(), DEFAULT_STALL_THRESHOLD)),
        }
    }
}

impl Liveness {
    fn lock(&self) -> MutexGuard<'_, (Instant, Duration)> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The loop completed a turn now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    /// The loop completed a turn at `at` (tests use a time in the past).
    pub fn beat_at(&self, at: Instant) {
        self.lock().0 = at;
    }

    /// How long without a turn means stuck.
    pub fn set_threshold(&self, threshold: Duration) {
        self.lock().1 = threshold;
    }

    pub fn threshold(&self) -> Duration {
        self.lock().1
    }

    /// `Ok` while the loop turns, else why not.
    pub fn check(&self) -> Result<(), String> {
        let (last, threshold) = *self.lock();
        let quiet = last.elapsed();
        if quiet > threshold {
            Err(format!(
                "the reconcile loop has not completed a turn for {:.1} s (threshold {} s)",
                quiet.as_secs_f64(),
                threshold.as_secs_f64()
            ))
        } else {
            Ok(())
        }
    }
}

/// The buckets of kube-proxy's `network_programming_duration_seconds`: 0.25 s and 0.5 s, every
/// second to 59 s, every 5 s to 115 s, every 30 s to 5 min.
fn programming_buckets() -> Vec<f64> {
    let mut buckets = vec![0.25, 0.5];
    buckets.extend((1..=59).map(f64::from));
    buckets.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    buckets.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    buckets
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The metrics registry of the agent. Cheap to update from any task (`&self` everywhere).
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    event_to_datapath: Histogram,
    programming: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    frontends: Gauge,
    backends: Gauge,
    refusing: Family<Labels, Gauge>,
    skipped: Gauge,
    errors: Family<Labels, Counter>,
    /// 1, labelled with the attach point and the kernel object (datapath/state.rs).
    datapath_info: Family<Labels, Gauge>,
    terminated: Family<Labels, Counter>,
    termination_available: Gauge,
    tcp_kept: Counter,
    readiness: Arc<Readiness>,
    liveness: Arc<Liveness>,
    providers: Arc<Providers>,
    service_connects: Arc<Mutex<ServiceConnects>>,
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
            .field("liveness", &self.liveness)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // 0.5 ms .. ~16 s
        let sync_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let event_to_datapath = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let programming = Histogram::new(programming_buckets());
        let last_sync = Gauge::<f64, AtomicU64>::default();
        let frontends = Gauge::default();
        let backends = Gauge::default();
        let refusing = Family::<Labels, Gauge>::default();
        for policy in TrafficPolicy::ALL {
            let _ = refusing.get_or_create(&labels(&[("traffic_policy", policy.label())]));
        }
        let skipped = Gauge::default();
        let errors = Family::<Labels, Counter>::default();
        for kind in ErrorKind::ALL {
            let _ = errors.get_or_create(&labels(&[("kind", kind.label())]));
        }
        let readiness = Arc::new(Readiness::default());
        let liveness = Arc::new(Liveness::default());
        let providers = Arc::new(Providers::default());
        let service_connects = Arc::new(Mutex::new(ServiceConnects::default()));

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
        registry.register_with_unit(
            "lbctl_network_programming_duration",
            "From an EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time to the apply \
             that wrote the change into the maps (as kube-proxy's network_programming_duration_seconds)",
            Unit::Seconds,
            programming.clone(),
        );
        registry.register_with_unit(
            "lbctl_last_sync_timestamp",
            "Unix time of the last sync that programmed every frontend of the plan (0: none yet)",
            Unit::Seconds,
            last_sync.clone(),
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
            "lbctl_frontends_refusing",
            "Programmed frontends without a usable backend (connects get ECONNREFUSED), by the \
             traffic policy that selected their endpoints",
            refusing.clone(),
        );
        registry.register(
            "lbctl_skipped_objects",
            "Input objects (or parts) the last plan left out; the agent logs each once",
            skipped.clone(),
        );
        registry.register(
            "lbctl_errors",
            "Errors of the agent, by kind",
            errors.clone(),
        );
        registry.register(
            "lbctl_build",
            "Version of lbctl and SHA-256 of the kernel object it embeds",
            Info::new(labels(&[
                ("version", env!("CARGO_PKG_VERSION")),
                (
                    "object_sha256",
                    crate::datapath::object_identity().unwrap_or("none"),
                ),
            ])),
        );
        let datapath_info = Family::<Labels, Gauge>::default();
        registry.register(
            "lbctl_datapath_info",
            "1, labelled with the cgroup the programs are attached to (path, cgroup id) and the kernel object's SHA-256",
            datapath_info.clone(),
        );
        let terminated = Family::<Labels, Counter>::default();
        for protocol in ["udp", "tcp"] {
            let _ = terminated.get_or_create(&labels(&[("protocol", protocol)]));
        }
        registry.register(
            "lbctl_sockets_terminated",
            "Connected sockets terminated because the backend lbctl had sent them to left the \
             frontend's set, by protocol",
            terminated.clone(),
        );
        let termination_available = Gauge::default();
        registry.register(
            "lbctl_socket_termination_available",
            "1 when this agent terminates sockets of removed backends (enabled, and the kernel \
             has BPF socket iterators and bpf_sock_destroy); 0 otherwise",
            termination_available.clone(),
        );
        let tcp_kept = Counter::default();
        registry.register(
            "lbctl_tcp_translations_kept",
            "TCP sockets whose translation the agent moved from the array of recent connects \
             (lb_tcp_recent) into the socket's own storage, so getpeername and termination find \
             it for the socket's life",
            tcp_kept.clone(),
        );
        registry.register_collector(Box::new(ScrapeTimeCollector {
            readiness: readiness.clone(),
            providers: providers.clone(),
            service_connects: service_connects.clone(),
            errors: errors.clone(),
        }));

        Self {
            registry,
            sync_duration,
            event_to_datapath,
            programming,
            last_sync,
            frontends,
            backends,
            refusing,
            skipped,
            errors,
            datapath_info,
            terminated,
            termination_available,
            tcp_kept,
            readiness,
            liveness,
            providers,
            service_connects,
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

    /// Records the duration of one sync up to the maps written (snapshot, plan, apply).
    pub fn observe_sync(&self, duration: Duration) {
        self.sync_duration.observe(duration.as_secs_f64());
    }

    /// Records the delay from an event being received to the maps being written.
    pub fn observe_event_latency(&self, duration: Duration) {
        self.event_to_datapath.observe(duration.as_secs_f64());
    }

    /// Records one network programming latency: from an EndpointSlice's trigger time to now
    /// (a trigger time in the future, clock skew, counts as 0).
    pub fn observe_programming(&self, trigger: SystemTime, programmed: SystemTime) {
        let latency = programmed.duration_since(trigger).unwrap_or_default();
        self.programming.observe(latency.as_secs_f64());
    }

    /// A sync programmed every frontend of the plan at `at`.
    pub fn set_last_sync(&self, at: SystemTime) {
        let seconds = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.last_sync.set(seconds);
    }

    /// Sets the number of frontends and backends now in the maps.
    pub fn set_programmed(&self, frontends: usize, backends: usize) {
        self.frontends
            .set(i64::try_from(frontends).unwrap_or(i64::MAX));
        self.backends
            .set(i64::try_from(backends).unwrap_or(i64::MAX));
    }

    /// Sets how many programmed frontends refuse connects under each traffic policy.
    pub fn set_refusing(&self, by_policy: &BTreeMap<TrafficPolicy, usize>) {
        for policy in TrafficPolicy::ALL {
            let count = by_policy.get(&policy).copied().unwrap_or(0);
            self.refusing
                .get_or_create(&labels(&[("traffic_policy", policy.label())]))
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Sets the number of skipped entries of the last plan.
    pub fn set_skipped(&self, skipped: usize) {
        self.skipped.set(i64::try_from(skipped).unwrap_or(i64::MAX));
    }

    /// Counts sockets terminated by one sweep.
    pub fn add_terminated(&self, udp: u64, tcp: u64) {
        for (protocol, n) in [("udp", udp), ("tcp", tcp)] {
            self.terminated
                .get_or_create(&labels(&[("protocol", protocol)]))
                .inc_by(n);
        }
    }

    /// Counts TCP translations kept by one pass.
    pub fn add_tcp_kept(&self, kept: u64) {
        self.tcp_kept.inc_by(kept);
    }

    /// Whether socket termination works on this agent.
    pub fn set_termination_available(&self, available: bool) {
        self.termination_available.set(i64::from(available));
    }

    /// Counts one error.
    pub fn inc_error(&self, kind: ErrorKind) {
        self.errors
            .get_or_create(&labels(&[("kind", kind.label())]))
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

    /// Sets the closure that reads the kernel's counters of the given frontend ids (in order;
    /// `None` when the maps cannot be read), used at each scrape and each
    /// [`Metrics::set_service_frontends`].
    pub fn set_frontend_counts(
        &self,
        read: impl Fn(&[u32]) -> Option<Vec<FrontendCounts>> + Send + Sync + 'static,
    ) {
        *write_lock(&self.providers.frontends) = Some(Box::new(read));
    }

    /// The frontends now programmed, with their Service ports (after each apply). Counts up to
    /// now go to the previous owners; see `ServiceConnects` for how ids are followed.
    pub fn set_service_frontends(&self, frontends: impl IntoIterator<Item = NamedFrontend>) {
        let read = read_lock(&self.providers.frontends);
        let ok = lock(&self.service_connects).set(frontends, read.as_deref());
        if !ok {
            self.inc_error(ErrorKind::ReadCounters);
        }
    }

    /// Changes the Service ports of some frontend ids only (see `set_service_frontends`):
    /// `remove` have no frontend any more, `upsert` are (re)named.
    pub fn patch_service_frontends(
        &self,
        remove: &[u32],
        upsert: impl IntoIterator<Item = NamedFrontend>,
    ) {
        let read = read_lock(&self.providers.frontends);
        let ok = lock(&self.service_connects).patch(remove, upsert, read.as_deref());
        if !ok {
            self.inc_error(ErrorKind::ReadCounters);
        }
    }

    /// The readiness conditions served on `/readyz` and as `lbctl_ready`.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The reconcile loop's heartbeat, served on `/healthz`.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// The registry in the OpenMetrics text format (what `/metrics` serves).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    service_connects: Arc<Mutex<ServiceConnects>>,
    errors: Family<Labels, Counter>,
}

impl fmt::Debug for ScrapeTimeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrapeTimeCollector")
            .finish_non_exhaustive()
    }
}

impl ScrapeTimeCollector {
    /// The per-Service-port totals, brought up to date, in Service port order.
    fn service_connects(&self) -> Vec<(ServicePort, FrontendCounts)> {
        let read = read_lock(&self.providers.frontends);
        let mut connects = lock(&self.service_connects);
        if !connects.collect(read.as_deref()) {
            self.errors
                .get_or_create(&labels(&[("kind", ErrorKind::ReadCounters.label())]))
                .inc();
        }
        connects.totals()
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

        let services = self.service_connects();
        if !services.is_empty() {
            let metric = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "lbctl_service_connects",
                "Connects and datagrams to the frontends of a Service port programmed on this node, \
                 by verdict, since the agent started (kernel per-frontend counters)",
                None,
                metric.metric_type(),
            )?;
            for (port, counts) in &services {
                for (verdict, value) in
                    [("rewritten", counts.rewritten), ("refused", counts.refused)]
                {
                    let labels = [
                        ("namespace", &*port.namespace),
                        ("service", &*port.service),
                        ("port_name", &*port.port_name),
                        ("verdict", verdict),
                    ];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
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
        .route("/healthz", get(healthz_handler))
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

async fn healthz_handler(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.liveness().check() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stuck: {reason}\n"),
        )
            .into_response(),
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
