//! The Kubernetes source of the node agent: watches of Services, EndpointSlices and this
//! node's Node object, kept in stores of converted objects.
//!
//! # How it works
//! [`KubeSource::start`] spawns one task per resource. Each task runs a kube-rs
//! [`watcher`](kube::runtime::watcher()) in the default list-then-watch mode, with the default
//! client-go-like backoff ([`WatchStreamExt::default_backoff`]: 0.8 s doubling to 30 s, with
//! jitter), and applies its events to a [`super::store::Store`], which keeps, keyed by
//! namespace and name, an `Arc` of what the agent needs of each object (see [what the stores
//! keep](#what-the-stores-keep)) rather than the full k8s-openapi object.
//! Each object is converted as its event arrives and the k8s object dropped at once. The
//! watches:
//!
//! | resource | scope | selector |
//! |---|---|---|
//! | `v1/Service` | all namespaces | none |
//! | `discovery.k8s.io/v1/EndpointSlice` | all namespaces | none |
//! | `v1/Node` | cluster | `metadata.name=<node>` |
//!
//! The watcher resumes a dropped watch from the last resourceVersion it saw (bookmarks keep that
//! version fresh) and relists when the API server answers `410 Gone`. A relist is built as a new
//! set of converted objects beside the current one and swapped in atomically when complete
//! (the old set is freed then), so readers never see a half-listed store.
//!
//! # What the agent reads
//! - A [`tokio::sync::watch`] channel of [`SourceState`]: `generation` is bumped after every
//!   change to a store (and once per completed list), so the agent can wait for
//!   `changed()`, sleep a little to coalesce a burst, and read one [`KubeSource::snapshot`].
//!   A snapshot taken after observing generation `g` contains at least every change up to `g`.
//! - `synced` becomes true once *all three* stores have completed their initial list, and never
//!   goes back: the agent must not prune datapath state before that.
//! - `connected` is false while any watch is failing (`last_error` says why). Failures never
//!   clear a store: the last known objects stay in the snapshot until the API server says
//!   otherwise.
//! - [`KubeSourceHandle::take_changes`] says which Services changed since it was last called
//!   ([`Dirty`]) and gives just their objects: a Service event marks that Service, an
//!   EndpointSlice event the Service its `kubernetes.io/service-name` label names (and the one
//!   it named before, should the label change), a Node event or a completed (re)list marks
//!   everything. The marks are made before the generation is bumped, so a reader woken by a
//!   generation finds them.
//! - [`KubeSource::stats`] gives per-resource counters (events, errors, lists, expirations) for
//!   metrics.
//!
//! The source only reads; it never writes to the API server.
//!
//! # What the stores keep
//! Each object is converted to the compact model ([`crate::model`]) as it arrives, through an
//! [`Interner`] that the store's watch task owns for the life of the store (namespaces, node
//! names and zones are shared), and the k8s-openapi object is dropped at once. Reads hand out
//! an [`Inventory`] of clones of the stored `Arc`s, sorted by namespace and name: never deep
//! copies.

use std::{
    collections::BTreeSet,
    fmt::Debug,
    future::Future,
    hash::Hash,
    num::NonZeroU32,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use futures::StreamExt;
use http::{Request, Response};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, ResourceExt,
    client::Body,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    Dirty,
    owners::SliceOwners,
    store::{self, Applied, Store, Writer},
};
use crate::{
    model::{
        self, Interner, Inventory, k8s_service_ref as service_ref_of,
        k8s_slice_service as slice_service,
    },
    plan::ServiceRef,
};

/// Errors raised while building a client or starting the source. Watch failures at run time
/// are not errors of this type: they are reported through [`SourceState`] and retried.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("cannot load kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration: not in a cluster ({incluster}) and no usable kubeconfig ({inferred})"
    )]
    NoConfig { incluster: String, inferred: String },
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("invalid node name {0:?}: must be a non-empty DNS subdomain")]
    InvalidNodeName(String),
}

/// Builds a client: from `kubeconfig` when given (its current context), otherwise from the
/// in-cluster service account (the normal case for the DaemonSet), falling back to the default
/// kubeconfig lookup (`$KUBECONFIG`, `~/.kube/config`) for runs outside a cluster.
pub async fn client_from(kubeconfig: Option<PathBuf>) -> Result<Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                Kubeconfig::read_from(&path).map_err(|source| KubeSourceError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeSourceError::Kubeconfig { path, source })?
        }
        None => match Config::incluster() {
            Ok(config) => config,
            Err(incluster) => {
                debug!(error = %incluster, "no in-cluster configuration, trying kubeconfig");
                Config::infer()
                    .await
                    .map_err(|inferred| KubeSourceError::NoConfig {
                        incluster: incluster.to_string(),
                        inferred: inferred.to_string(),
                    })?
            }
        },
    };
    info!(server = %config.cluster_url, "Kubernetes API server");
    Client::try_from(config).map_err(KubeSourceError::Client)
}

/// The three resources the source watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchedResource {
    Services,
    EndpointSlices,
    Nodes,
}

impl WatchedResource {
    pub const ALL: [WatchedResource; 3] = [Self::Services, Self::EndpointSlices, Self::Nodes];

    /// The lower-case plural name, as used in metric labels and API paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::Nodes => "nodes",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Services => 0,
            Self::EndpointSlices => 1,
            Self::Nodes => 2,
        }
    }
}

impl std::fmt::Display for WatchedResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the agent loop watches: cheap to clone and compare.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// Bumped after every change to any store (including each completed list or relist).
    pub generation: u64,
    /// All three stores have completed their initial list. Never goes back to false.
    pub synced: bool,
    /// Every watch is currently healthy (false before the first successful contact and while
    /// any watch is failing; a routine `410 Gone` relist does not count as a failure).
    pub connected: bool,
    /// Why the failing watches fail (`"<resource>: <error>"`, joined by `"; "`); `None` when
    /// all are healthy.
    pub last_error: Option<String>,
}

/// Per-resource health and counters, monotonic for the life of the source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceStats {
    /// The initial list has completed.
    pub synced: bool,
    /// The last request or event succeeded.
    pub connected: bool,
    /// Objects currently in the store.
    pub objects: usize,
    /// Objects received: each listed object and each ADDED/MODIFIED/DELETED watch event.
    pub events: u64,
    /// Watch or list failures (including `410 Gone`).
    pub errors: u64,
    /// Completed lists (1 after the initial sync; each relist adds one).
    pub lists: u64,
    /// `410 Gone` answers (resourceVersion too old), each followed by a relist.
    pub expired: u64,
    /// The current error, `None` while connected.
    pub last_error: Option<String>,
}

/// Tunables of [`KubeSource::start_with`]; [`KubeSourceConfig::new`] gives the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeSourceConfig {
    /// This node's name (the `metadata.name` of its Node object).
    pub node_name: String,
    /// Server-side timeout of each watch request (`timeoutSeconds`); `None` keeps kube-rs'
    /// default of 290 s. The client also gives up on a silent watch after this plus 5 s.
    pub watch_timeout_secs: Option<u32>,
    /// Objects per list request ([`DEFAULT_LIST_PAGE_SIZE`] by default).
    pub page_size: NonZeroU32,
}

/// Objects per list request by default: 100, not kube-rs' (and client-go's) 500. A page is
/// read whole, decoded into k8s-openapi objects and converted one by one; those transient
/// objects interleave on the heap with the small converted ones the stores keep, and leave free
/// memory behind them when the page is dropped. Pages of 100 took the agent's peak RSS at
/// 30,000 Services x 10 endpoints down by 4-5 MiB (BENCHMARKS.md), for five times as many list
/// requests at start (300 of each resource at 30,000 objects), no slower here.
pub const DEFAULT_LIST_PAGE_SIZE: NonZeroU32 = NonZeroU32::new(100).unwrap();

impl KubeSourceConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            watch_timeout_secs: None,
            page_size: DEFAULT_LIST_PAGE_SIZE,
        }
    }

    fn watcher_config(&self) -> watcher::Config {
        let mut config = watcher::Config::default();
        if let Some(timeout) = self.watch_timeout_secs {
            config = config.timeout(timeout);
        }
        config.page_size(self.page_size.get())
    }
}

/// Watches of Services, EndpointSlices and this node's Node, kept in stores. Dropping it stops
/// the watches (the stores stay readable through any [`KubeSourceHandle`]).
pub struct KubeSource {
    handle: KubeSourceHandle,
    tasks: Vec<JoinHandle<()>>,
}

/// A cheap, cloneable read-only view of a [`KubeSource`] (stores, state and counters), e.g.
/// for a metrics collector.
#[derive(Clone)]
pub struct KubeSourceHandle {
    services: Store<model::Service>,
    endpoint_slices: Store<model::EndpointSlice>,
    nodes: Store<model::Node>,
    shared: Arc<Shared>,
}

impl KubeSource {
    /// Starts watching with default settings; see [`KubeSource::start_with`].
    pub fn start(
        client: Client,
        node_name: impl Into<String>,
    ) -> Result<(KubeSource, watch::Receiver<SourceState>), KubeSourceError> {
        Self::start_with(client, KubeSourceConfig::new(node_name))
    }

    /// Starts the three watches on the current tokio runtime and returns the source and a
    /// receiver of its [`SourceState`]. Fails only on an invalid node name: connection problems
    /// are reported through the state and retried with backoff, forever.
    pub fn start_with(
        client: Client,
        config: KubeSourceConfig,
    ) -> Result<(KubeSource, watch::Receiver<SourceState>), KubeSourceError> {
        validate_node_name(&config.node_name)?;
        let (tx, rx) = watch::channel(SourceState::default());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            tx,
        });
        let base = config.watcher_config();

        let mut interner = Interner::new();
        let (services, services_writer) = store::store(move |svc| interner.service(svc));
        let mut interner = Interner::new();
        let (endpoint_slices, slices_writer) =
            store::store(move |slice| interner.endpoint_slice(slice));
        let mut interner = Interner::new();
        let (nodes, nodes_writer) = store::store(move |node| interner.node(node));

        let tasks = vec![
            spawn_watch(
                Api::all(tapped_client(&client, WatchedResource::Services, &shared)),
                base.clone(),
                services_writer,
                WatchedResource::Services,
                shared.clone(),
                track_service,
            ),
            spawn_watch(
                Api::all(tapped_client(
                    &client,
                    WatchedResource::EndpointSlices,
                    &shared,
                )),
                base.clone(),
                slices_writer,
                WatchedResource::EndpointSlices,
                shared.clone(),
                track_slice,
            ),
            spawn_watch(
                Api::all(tapped_client(&client, WatchedResource::Nodes, &shared)),
                base.fields(&format!("metadata.name={}", config.node_name)),
                nodes_writer,
                WatchedResource::Nodes,
                shared.clone(),
                track_node,
            ),
        ];
        info!(node = %config.node_name, "watching Services, EndpointSlices and this Node");
        let handle = KubeSourceHandle {
            services,
            endpoint_slices,
            nodes,
            shared,
        };
        Ok((KubeSource { handle, tasks }, rx))
    }

    /// A cloneable read-only view of this source.
    pub fn handle(&self) -> KubeSourceHandle {
        self.handle.clone()
    }

    /// See [`KubeSourceHandle::snapshot`].
    pub fn snapshot(&self) -> Inventory {
        self.handle.snapshot()
    }

    /// See [`KubeSourceHandle::take_changes`].
    pub fn take_changes(&self) -> (Dirty, Inventory) {
        self.handle.take_changes()
    }

    /// See [`KubeSourceHandle::objects_of`].
    pub fn objects_of(&self, services: &BTreeSet<ServiceRef>) -> Inventory {
        self.handle.objects_of(services)
    }

    /// See [`KubeSourceHandle::state`].
    pub fn state(&self) -> SourceState {
        self.handle.state()
    }

    /// See [`KubeSourceHandle::stats`].
    pub fn stats(&self) -> Vec<(WatchedResource, ResourceStats)> {
        self.handle.stats()
    }

    /// Another receiver of the state channel.
    pub fn subscribe(&self) -> watch::Receiver<SourceState> {
        self.handle.subscribe()
    }

    /// Stops the watches now (dropping the source does the same).
    pub fn stop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.stop();
    }
}

impl KubeSourceHandle {
    /// The objects currently in the stores, each list sorted by namespace and name: the stored
    /// `Arc`s, no copies. Before [`SourceState::synced`] this may be incomplete; it is never
    /// emptied by a watch failure.
    pub fn snapshot(&self) -> Inventory {
        Inventory {
            services: self.services.all(),
            endpoint_slices: self.endpoint_slices.all(),
            nodes: self.nodes.all(),
        }
    }

    /// Which Services changed since the last call (everything on the first), and the objects
    /// the agent needs for them: the whole [`KubeSourceHandle::snapshot`] for [`Dirty::All`],
    /// else [`KubeSourceHandle::objects_of`] those Services. A change that lands while this
    /// runs is marked again and returned by the next call.
    pub fn take_changes(&self) -> (Dirty, Inventory) {
        let dirty = std::mem::take(&mut self.shared.lock().dirty);
        let objects = match &dirty {
            Dirty::All => self.snapshot(),
            Dirty::Services(refs) => self.objects_of(refs),
        };
        (dirty, objects)
    }

    /// The objects of `services` (each Service that exists and every EndpointSlice labelled
    /// with its name), and this Node; costs those objects, not the whole store. Services come
    /// in the order of `services` (namespace, name), each followed by its slices in name order.
    pub fn objects_of(&self, services: &BTreeSet<ServiceRef>) -> Inventory {
        let mut objects = Inventory {
            nodes: self.nodes.all(),
            ..Inventory::default()
        };
        let inner = self.shared.lock();
        for svc in services {
            if let Some(obj) = self.services.get(&svc.namespace, &svc.name) {
                objects.services.push(obj);
            }
            let names = inner.slice_owners.slices_of(svc);
            objects
                .endpoint_slices
                .extend(self.endpoint_slices.get_many(&svc.namespace, names));
        }
        objects
    }

    /// The current state (same value as the watch channel carries).
    pub fn state(&self) -> SourceState {
        self.shared.tx.borrow().clone()
    }

    /// Per-resource health and counters, in [`WatchedResource::ALL`] order.
    pub fn stats(&self) -> Vec<(WatchedResource, ResourceStats)> {
        let inner = self.shared.lock();
        WatchedResource::ALL
            .iter()
            .map(|&resource| {
                let status = &inner.resources[resource.index()];
                let objects = match resource {
                    WatchedResource::Services => self.services.len(),
                    WatchedResource::EndpointSlices => self.endpoint_slices.len(),
                    WatchedResource::Nodes => self.nodes.len(),
                };
                let stats = ResourceStats {
                    synced: status.synced,
                    connected: status.connected,
                    objects,
                    events: status.events,
                    errors: status.errors,
                    lists: status.lists,
                    expired: status.expired,
                    last_error: status.last_error.clone(),
                };
                (resource, stats)
            })
            .collect()
    }

    /// Another receiver of the state channel.
    pub fn subscribe(&self) -> watch::Receiver<SourceState> {
        self.shared.tx.subscribe()
    }
}

/// A node name goes into a field selector: reject what would change its meaning.
fn validate_node_name(name: &str) -> Result<(), KubeSourceError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if valid {
        Ok(())
    } else {
        Err(KubeSourceError::InvalidNodeName(name.to_string()))
    }
}

#[derive(Debug, Default)]
struct ResourceStatus {
    synced: bool,
    connected: bool,
    events: u64,
    errors: u64,
    lists: u64,
    expired: u64,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Inner {
    resources: [ResourceStatus; 3],
    generation: u64,
    /// Changes not yet taken by [`KubeSourceHandle::take_changes`].
    dirty: Dirty,
    slice_owners: SliceOwners,
    /// The owners of the slices listed so far by a (re)list in progress: they replace
    /// `slice_owners` when the list completes, as the listed slices replace the store's.
    listed_slice_owners: SliceOwners,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            resources: Default::default(),
            generation: 0,
            // Nothing was taken yet: the first reader plans everything.
            dirty: Dirty::All,
            slice_owners: SliceOwners::default(),
            listed_slice_owners: SliceOwners::default(),
        }
    }
}

impl Inner {
    fn state(&self) -> SourceState {
        let errors: Vec<String> = WatchedResource::ALL
            .iter()
            .filter_map(|&r| {
                let status = &self.resources[r.index()];
                match (&status.last_error, status.connected) {
                    (Some(error), false) => Some(format!("{r}: {error}")),
                    _ => None,
                }
            })
            .collect();
        SourceState {
            generation: self.generation,
            synced: self.resources.iter().all(|r| r.synced),
            connected: self.resources.iter().all(|r| r.connected),
            last_error: (!errors.is_empty()).then(|| errors.join("; ")),
        }
    }
}

/// State shared by the reflector tasks, the request taps and the handles.
struct Shared {
    inner: Mutex<Inner>,
    tx: watch::Sender<SourceState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections cannot panic half-way; a poisoned lock still holds sane data.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `f` and publishes the new state if it changed. The lock is held while
    /// publishing so that concurrent updates are published in order.
    fn update(&self, resource: WatchedResource, f: impl FnOnce(&mut ResourceStatus, &mut u64)) {
        let mut inner = self.lock();
        let Inner {
            resources,
            generation,
            ..
        } = &mut *inner;
        f(&mut resources[resource.index()], generation);
        let new = inner.state();
        self.tx.send_if_modified(|current| {
            if *current == new {
                false
            } else {
                *current = new;
                true
            }
        });
    }

    /// A list or watch request of `resource` got a successful answer.
    fn reachable(&self, resource: WatchedResource) {
        self.update(resource, |status, _| mark_connected(resource, status));
    }

    fn on_event<K: ResourceExt>(&self, resource: WatchedResource, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => debug!(%resource, "listing"),
            watcher::Event::InitApply(_) => self.update(resource, |status, _| status.events += 1),
            watcher::Event::InitDone => self.update(resource, |status, generation| {
                status.lists += 1;
                if status.synced {
                    info!(%resource, lists = status.lists, "relisted");
                } else {
                    info!(%resource, "initial list complete");
                }
                status.synced = true;
                mark_connected(resource, status);
                *generation += 1;
            }),
            watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => {
                let deleted = matches!(event, watcher::Event::Delete(_));
                debug!(%resource, name = %obj.name_any(), namespace = ?obj.namespace(), deleted, "event");
                self.update(resource, |status, generation| {
                    status.events += 1;
                    mark_connected(resource, status);
                    *generation += 1;
                });
            }
        }
    }

    fn on_error(&self, resource: WatchedResource, error: &watcher::Error) {
        let expired = matches!(error, watcher::Error::WatchError(status) if status.code == 410);
        self.update(resource, |status, _| {
            status.errors += 1;
            if expired {
                // Routine: the watch fell behind the server's history. The watcher relists; the
                // store keeps serving the old objects until the relist completes.
                status.expired += 1;
                info!(%resource, "resourceVersion expired (410 Gone): relisting");
            } else {
                let message = error_chain(error);
                if status.connected || status.last_error.as_deref() != Some(message.as_str()) {
                    warn!(%resource, error = %message, "watch failed; keeping the last known objects and retrying");
                }
                status.connected = false;
                status.last_error = Some(message);
            }
        });
    }
}

fn mark_connected(resource: WatchedResource, status: &mut ResourceStatus) {
    if !status.connected && status.last_error.is_some() {
        info!(%resource, "watch recovered");
    }
    status.connected = true;
    status.last_error = None;
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Marks what a Service event changed.
fn track_service(inner: &mut Inner, event: &watcher::Event<Service>, _: &Applied<model::Service>) {
    match event {
        watcher::Event::Apply(svc) | watcher::Event::Delete(svc) => {
            inner.dirty.service(service_ref_of(svc));
        }
        watcher::Event::InitDone => inner.dirty.all(),
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

/// Marks what an EndpointSlice event changed: the Service it belongs to now and the one it
/// belonged to before (by the stored slice the event replaced or removed); a completed
/// (re)list replaces the index of slices by Service by that of the listed slices.
fn track_slice(
    inner: &mut Inner,
    event: &watcher::Event<EndpointSlice>,
    applied: &Applied<model::EndpointSlice>,
) {
    let old = applied
        .previous
        .as_deref()
        .and_then(model::EndpointSlice::service_ref);
    match event {
        watcher::Event::Apply(_) => {
            if let Some(slice) = applied.current.as_deref() {
                let owner = slice.service_ref();
                inner
                    .slice_owners
                    .set(&slice.name, old.as_ref(), owner.clone());
                for svc in old.into_iter().chain(owner) {
                    inner.dirty.service(svc);
                }
            }
        }
        watcher::Event::Delete(slice) => {
            if let Some(removed) = applied.previous.as_deref() {
                inner.slice_owners.set(&removed.name, old.as_ref(), None);
            }
            for svc in old.into_iter().chain(slice_service(slice)) {
                inner.dirty.service(svc);
            }
        }
        watcher::Event::Init => inner.listed_slice_owners = SliceOwners::default(),
        watcher::Event::InitApply(_) => {
            if let Some(slice) = applied.current.as_deref() {
                inner
                    .listed_slice_owners
                    .set(&slice.name, None, slice.service_ref());
            }
        }
        watcher::Event::InitDone => {
            inner.listed_slice_owners.refill();
            inner.slice_owners = std::mem::take(&mut inner.listed_slice_owners);
            inner.dirty.all();
        }
    }
}

/// Any change to this Node may change every frontend (NodePort addresses, zone).
fn track_node(inner: &mut Inner, event: &watcher::Event<Node>, _: &Applied<model::Node>) {
    if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
        inner.dirty.all();
    }
}

// The stores key Services and slices by the name strings the converted objects hold.
impl store::SharedName for model::Service {
    fn shared_name(&self) -> Option<&Arc<str>> {
        self.name.as_ref()
    }

    fn share_with(&mut self, previous: &Self) {
        share(&mut self.name, &previous.name);
    }
}

impl store::SharedName for model::EndpointSlice {
    fn shared_name(&self) -> Option<&Arc<str>> {
        Some(&self.name)
    }

    /// Its name (the store's key and the slices-by-Service index hold it) and its Service's
    /// name (the index's key holds it).
    fn share_with(&mut self, previous: &Self) {
        share(&mut self.name, &previous.name);
        share(&mut self.service_name, &previous.service_name);
    }
}

/// Makes `string` the very allocation of `previous` when the two are equal.
fn share<S: Clone + PartialEq>(string: &mut S, previous: &S) {
    if string == previous {
        *string = previous.clone();
    }
}

impl store::SharedName for model::Node {}

fn spawn_watch<K, T>(
    api: Api<K>,
    config: watcher::Config,
    mut writer: Writer<K, T>,
    resource: WatchedResource,
    shared: Arc<Shared>,
    track: fn(&mut Inner, &watcher::Event<K>, &Applied<T>),
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
    T: store::SharedName + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let stream = watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    // The store first, then the marks, then the generation: whoever a mark or
                    // a generation wakes up finds the store changed.
                    let applied = writer.apply(&event);
                    track(&mut shared.lock(), &event, &applied);
                    shared.on_event(resource, &event);
                    // The k8s object goes here: only its conversion stays (and a replaced one
                    // goes with `applied`, outside the lock).
                    drop(event);
                    drop(applied);
                }
                Err(error) => shared.on_error(resource, &error),
            }
        }
        // kube's watcher never ends on its own; note it if it ever does.
        warn!(%resource, "watch stream ended");
    })
}

/// A client that sends through `client` and reports every successful answer to a request of
/// `resource` as "reachable". kube's watcher does not surface a watch that restarts quietly
/// after an outage (no objects changed), so without this the source would stay "disconnected"
/// until the next change.
fn tapped_client(client: &Client, resource: WatchedResource, shared: &Arc<Shared>) -> Client {
    Client::new(
        Tap {
            client: client.clone(),
            resource,
            shared: shared.clone(),
        },
        client.default_namespace().to_string(),
    )
}

#[derive(Clone)]
struct Tap {
    client: Client,
    resource: WatchedResource,
    shared: Arc<Shared>,
}

impl tower_service::Service<Request<Body>> for Tap {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let tap = self.clone();
        Box::pin(async move {
            let response = tap.client.send(request).await?;
            if response.status().is_success() {
                tap.shared.reachable(tap.resource);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_validated() {
        assert!(validate_node_name("worker-1.example").is_ok());
        assert!(validate_node_name("").is_err());
        assert!(validate_node_name("a,metadata.name=b").is_err());
        assert!(validate_node_name("Upper").is_err());
    }

    #[test]
    fn state_requires_all_three_synced_and_connected() {
        let mut inner = Inner::default();
        inner.resources[0].synced = true;
        inner.resources[1].synced = true;
        assert!(!inner.state().synced);
        inner.resources[2].synced = true;
        assert!(inner.state().synced);
        for r in &mut inner.resources {
            r.connected = true;
        }
        inner.resources[1].connected = false;
        inner.resources[1].last_error = Some("boom".into());
        let state = inner.state();
        assert!(!state.connected);
        assert_eq!(state.last_error.as_deref(), Some("endpointslices: boom"));
    }

    #[test]
    fn a_new_version_shares_the_names_of_the_one_it_replaces() {
        use store::SharedName as _;
        let mut k8s = EndpointSlice::default();
        k8s.metadata.name = Some("web-abc".into());
        k8s.metadata.namespace = Some("default".into());
        k8s.metadata.labels = Some(
            [(model::SERVICE_NAME_LABEL.to_owned(), "web".to_owned())]
                .into_iter()
                .collect(),
        );
        k8s.address_type = "IPv4".into();
        let mut interner = Interner::new();
        let old = interner.endpoint_slice(&k8s);
        let mut new = interner.endpoint_slice(&k8s);
        assert!(!Arc::ptr_eq(&old.name, &new.name), "converted apart");
        new.share_with(&old);
        assert!(Arc::ptr_eq(&old.name, &new.name));
        assert!(Arc::ptr_eq(
            old.service_name.as_ref().unwrap(),
            new.service_name.as_ref().unwrap()
        ));
        // A slice that moved to another Service keeps its own Service name.
        k8s.metadata.labels = Some(
            [(model::SERVICE_NAME_LABEL.to_owned(), "api".to_owned())]
                .into_iter()
                .collect(),
        );
        let mut moved = interner.endpoint_slice(&k8s);
        moved.share_with(&old);
        assert_eq!(moved.service_name.as_deref(), Some("api"));
        assert!(Arc::ptr_eq(&old.name, &moved.name));

        let mut service = Service::default();
        service.metadata.name = Some("web".into());
        let old = interner.service(&service);
        let mut new = interner.service(&service);
        new.share_with(&old);
        assert!(Arc::ptr_eq(
            old.name.as_ref().unwrap(),
            new.name.as_ref().unwrap()
        ));
    }
}
