//! A minimal but faithful Kubernetes API server for tests, over plain HTTP on 127.0.0.1.
//!
//! It serves LIST and WATCH for Services (`/api/v1/services`), EndpointSlices
//! (`/apis/discovery.k8s.io/v1/endpointslices`) and Nodes (`/api/v1/nodes`), also under
//! `/namespaces/<ns>/` for the namespaced kinds, in the real wire protocol:
//!
//! - LIST returns `{"kind":"ServiceList","apiVersion":"v1","metadata":{"resourceVersion":"N"},
//!   "items":[...]}` at the current resourceVersion, with `limit`/`continue` pagination (the
//!   server may return fewer items than `limit`, as the real one may; continue tokens expire
//!   with compaction: `410 Expired`).
//! - WATCH (`?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=T`) streams
//!   newline-delimited `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":...}`: the
//!   history after N, then live changes, with increasing resourceVersions; periodic BOOKMARKs
//!   when asked (and one when the timeout ends the watch); when N is older than the compaction
//!   point, a single `ERROR` event carrying a `410 Expired` Status, then the end of the stream,
//!   as the real watch cache does. `resourceVersion=0` starts with synthetic ADDED events for
//!   the current objects; `sendInitialEvents=true` (streaming lists) too, followed by a
//!   bookmark annotated `k8s.io/initial-events-end`.
//! - `fieldSelector` (`metadata.name`, `metadata.namespace`; `=`, `==`, `!=`) and equality
//!   `labelSelector` are honoured on lists and watches; other fields answer `400 BadRequest`.
//!
//! The test drives it: add/modify/delete objects, compact history, hold a resource's lists,
//! fail every request with a status code, drop every watch, or go offline (connection
//! refused) and come back on the same port. Every request is logged for assertions.
#![allow(dead_code)] // each test binary uses a different part of it

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode, body::Frame, body::Incoming, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{broadcast, mpsc, watch},
    task::{JoinHandle, JoinSet},
};

type Body = BoxBody<Bytes, Infallible>;

/// The kinds this server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
    fn namespaced(self) -> bool {
        self != Kind::Node
    }
    fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.kind() == kind)
    }
    fn from_path(group_version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == group_version && k.plural() == plural)
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub kind: Option<Kind>,
    pub watch: bool,
    pub status: u16,
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: Kind,
    event: &'static str,
    object: Value,
}

#[derive(Clone, Debug)]
struct Continuation {
    rv: u64,
    kind: Kind,
    remaining: Vec<Value>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    history: Vec<Change>,
    /// Events with `rv <= compacted` are gone; watching from an older version is `410`.
    compacted: u64,
    continuations: HashMap<String, Continuation>,
    next_token: u64,
    failure: Option<u16>,
    bookmarks_enabled: bool,
    bookmarks_sent: BTreeMap<Kind, u64>,
    requests: Vec<RequestRecord>,
    /// List requests waiting on `hold_lists`, per kind.
    lists_waiting: BTreeMap<Kind, usize>,
    uid: u64,
}

/// Server-side tunables.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// How often an open watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// At most this many items per list page, whatever `limit` the client asks.
    pub page_cap: Option<usize>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_millis(300),
            page_cap: None,
        }
    }
}

struct State {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch stream.
    disconnect: watch::Sender<u64>,
    /// Lists of these kinds wait until released.
    held: watch::Sender<Vec<Kind>>,
    config: FakeConfig,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The server. Dropping it stops it.
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<State>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl FakeApiServer {
    pub async fn start() -> Self {
        Self::start_with(FakeConfig::default()).await
    }

    pub async fn start_with(config: FakeConfig) -> Self {
        let (changes, _) = broadcast::channel(4096);
        let state = Arc::new(State {
            store: Mutex::new(Store {
                rv: 1000,
                bookmarks_enabled: true,
                ..Store::default()
            }),
            changes,
            disconnect: watch::channel(0).0,
            held: watch::channel(Vec::new()).0,
            config,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(accept_loop(listener, state.clone()));
        Self {
            addr,
            state,
            server: Mutex::new(Some(server)),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (plain HTTP, no auth).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }

    // ----- objects -----

    /// Creates or replaces an object (ADDED or MODIFIED), stamping a new resourceVersion.
    /// Returns that version.
    pub fn apply<T: Serialize>(&self, object: &T) -> u64 {
        let mut object = serde_json::to_value(object).expect("serialize");
        let kind = object["kind"]
            .as_str()
            .and_then(Kind::from_kind)
            .expect("object with a known kind");
        let (namespace, name) = key_of(&object);
        assert!(!name.is_empty(), "object without a name");
        assert_eq!(
            kind.namespaced(),
            !namespace.is_empty(),
            "namespace of {name}"
        );
        let mut store = self.state.lock();
        store.rv += 1;
        let rv = store.rv;
        let key = (kind, namespace, name);
        let event = if let Some(old) = store.objects.get(&key) {
            object["metadata"]["uid"] = old["metadata"]["uid"].clone();
            object["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            "MODIFIED"
        } else {
            store.uid += 1;
            object["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", store.uid));
            object["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
            "ADDED"
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.objects.insert(key, object.clone());
        self.record(
            &mut store,
            Change {
                rv,
                kind,
                event,
                object,
            },
        );
        rv
    }

    /// Deletes an object (DELETED); returns the new resourceVersion, or `None` if absent.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<u64> {
        let mut store = self.state.lock();
        let mut object = store
            .objects
            .remove(&(kind, namespace.to_string(), name.to_string()))?;
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(
            &mut store,
            Change {
                rv,
                kind,
                event: "DELETED",
                object,
            },
        );
        Some(rv)
    }

    fn record(&self, store: &mut Store, change: Change) {
        store.history.push(change.clone());
        // Sent under the store lock: a watch that subscribes under the lock sees exactly the
        // changes after its snapshot of the history.
        let _ = self.state.changes.send(change);
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.lock().rv
    }

    /// Forgets all history up to now: watching from any older version is `410 Gone`.
    pub fn compact(&self) {
        let mut store = self.state.lock();
        store.compacted = store.rv;
        let compacted = store.compacted;
        store.history.retain(|c| c.rv > compacted);
        store.continuations.retain(|_, c| c.rv >= compacted);
    }

    // ----- faults -----

    /// Answers every request with this HTTP status (a Kubernetes `Status` body) and ends every
    /// open watch; `None` heals.
    pub fn fail_with(&self, code: Option<u16>) {
        self.state.lock().failure = code;
        if code.is_some() {
            self.disconnect_watches();
        }
    }

    /// Ends every open watch stream cleanly (as an API server restart or a load balancer
    /// idle timeout would).
    pub fn disconnect_watches(&self) {
        self.state.disconnect.send_modify(|epoch| *epoch += 1);
    }

    /// Holds (or releases) list requests of `kind`: they wait until released.
    pub fn hold_lists(&self, kind: Kind, hold: bool) {
        self.state.held.send_modify(|held| {
            held.retain(|k| *k != kind);
            if hold {
                held.push(kind);
            }
        });
    }

    /// Stops sending bookmarks (as if `allowWatchBookmarks` were not honoured).
    pub fn set_bookmarks(&self, enabled: bool) {
        self.state.lock().bookmarks_enabled = enabled;
    }

    /// Closes the listener and every connection: clients get "connection refused".
    pub async fn go_offline(&self) {
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
        self.disconnect_watches();
    }

    /// Listens again on the same address.
    pub async fn go_online(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebind {}: {err}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("cannot rebind {}: {err}", self.addr),
            }
        };
        let server = tokio::spawn(accept_loop(listener, self.state.clone()));
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
    }

    // ----- observations -----

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.lock().requests.clone()
    }

    /// List requests of `kind` waiting now, held by [`FakeApiServer::hold_lists`].
    pub fn lists_waiting(&self, kind: Kind) -> usize {
        self.state
            .lock()
            .lists_waiting
            .get(&kind)
            .copied()
            .unwrap_or(0)
    }

    /// Successful list requests of `kind` (pages included).
    pub fn lists(&self, kind: Kind) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.kind == Some(kind) && !r.watch && r.status == 200)
            .collect()
    }

    /// Watch requests of `kind` that were answered 200.
    pub fn watches(&self, kind: Kind) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.kind == Some(kind) && r.watch && r.status == 200)
            .collect()
    }

    /// Bookmarks sent so far on watches of `kind`.
    pub fn bookmarks_sent(&self, kind: Kind) -> u64 {
        self.state
            .lock()
            .bookmarks_sent
            .get(&kind)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            server.abort();
        }
        self.disconnect_watches();
    }
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// Accepts connections; aborting this task drops the JoinSet, which aborts every connection.
async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // As Go's net/http (the real API server) does: without it, watch events
                // written back to back wait for the client's delayed ACK (Nagle), ~40 ms.
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

// ----- request handling -----

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap_or_else(|_| Response::new(full("")))
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &status_object(code, reason, message))
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        410 => "Expired",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect()
}

/// `(kind, namespace)` from the path.
fn route(path: &str) -> Option<(Kind, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    match rest {
        [plural] => Kind::from_path(&group_version, plural).map(|k| (k, None)),
        ["namespaces", ns, plural] => Kind::from_path(&group_version, plural)
            .filter(|k| k.namespaced())
            .map(|k| (k, Some(ns.to_string()))),
        _ => None,
    }
}

#[derive(Clone, Debug, Default)]
struct Selector {
    fields: Vec<(String, bool, String)>,
    labels: Vec<(String, bool, String)>,
}

fn parse_terms(s: &str) -> Result<Vec<(String, bool, String)>, String> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|term| {
            let term = term.trim();
            if let Some((k, v)) = term.split_once("!=") {
                Ok((k.trim().to_string(), false, v.trim().to_string()))
            } else if let Some((k, v)) = term.split_once("==") {
                Ok((k.trim().to_string(), true, v.trim().to_string()))
            } else if let Some((k, v)) = term.split_once('=') {
                Ok((k.trim().to_string(), true, v.trim().to_string()))
            } else {
                Err(format!("unsupported selector term {term:?}"))
            }
        })
        .collect()
}

impl Selector {
    fn parse(query: &BTreeMap<String, String>) -> Result<Selector, String> {
        let fields = parse_terms(query.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
        for (field, _, _) in &fields {
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(format!("field label not supported: {field}"));
            }
        }
        let labels = parse_terms(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
        Ok(Selector { fields, labels })
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        let fields_ok = self.fields.iter().all(|(field, eq, value)| {
            let actual = match field.as_str() {
                "metadata.name" => meta["name"].as_str().unwrap_or_default(),
                _ => meta["namespace"].as_str().unwrap_or_default(),
            };
            (actual == value) == *eq
        });
        let labels_ok = self.labels.iter().all(|(label, eq, value)| {
            let actual = meta["labels"][label.as_str()].as_str();
            (actual == Some(value.as_str())) == *eq
        });
        fields_ok && labels_ok
    }
}

struct Scope {
    kind: Kind,
    namespace: Option<String>,
    selector: Selector,
}

impl Scope {
    fn matches(&self, kind: Kind, object: &Value) -> bool {
        kind == self.kind
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self.selector.matches(object)
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let routed = route(&path);
    let response = respond(&state, req.method(), routed.clone(), &query, watch).await;
    state.lock().requests.push(RequestRecord {
        method: req.method().to_string(),
        path,
        query,
        kind: routed.as_ref().map(|(kind, _)| *kind),
        watch,
        status: response.status().as_u16(),
    });
    response
}

async fn respond(
    state: &Arc<State>,
    method: &Method,
    routed: Option<(Kind, Option<String>)>,
    query: &BTreeMap<String, String>,
    watch: bool,
) -> Response<Body> {
    if let Some(code) = state.lock().failure {
        return status_response(code, reason_for(code), "injected failure");
    }
    let Some((kind, namespace)) = routed else {
        return status_response(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if method != Method::GET {
        return status_response(405, "MethodNotAllowed", "this fake only serves GET");
    }
    let selector = match Selector::parse(query) {
        Ok(selector) => selector,
        Err(message) => return status_response(400, "BadRequest", &message),
    };
    let scope = Scope {
        kind,
        namespace,
        selector,
    };
    if watch {
        watch_response(state, scope, query)
    } else {
        list_response(state, scope, query).await
    }
}

fn strip_type_meta(mut object: Value) -> Value {
    // Items of a typed list carry no kind/apiVersion on the wire.
    if let Some(map) = object.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    object
}

async fn list_response(
    state: &Arc<State>,
    scope: Scope,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    // Held lists wait for release.
    let mut held = state.held.subscribe();
    if held.borrow().contains(&scope.kind) {
        *state.lock().lists_waiting.entry(scope.kind).or_default() += 1;
        let _ = held.wait_for(|held| !held.contains(&scope.kind)).await;
        *state.lock().lists_waiting.entry(scope.kind).or_default() -= 1;
    }

    let mut store = state.lock();
    if let Some(code) = store.failure {
        return status_response(code, reason_for(code), "injected failure");
    }
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let limit = match (limit, state.config.page_cap) {
        (Some(l), Some(cap)) => Some(l.min(cap)),
        (None, Some(cap)) => Some(cap),
        (l, None) => l,
    };
    let (rv, mut items) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match store.continuations.remove(token) {
            Some(c) if c.kind == scope.kind => (c.rv, c.remaining),
            _ => {
                return status_response(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
        },
        None => {
            if let Some(requested) = query
                .get("resourceVersion")
                .filter(|v| !v.is_empty() && v.as_str() != "0")
            {
                match requested.parse::<u64>() {
                    Ok(v) if v > store.rv => {
                        return status_response(504, "Timeout", "Too large resource version");
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return status_response(400, "BadRequest", "invalid resourceVersion");
                    }
                }
            }
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|((kind, _, _), object)| scope.matches(*kind, object))
                .map(|(_, object)| strip_type_meta(object.clone()))
                .collect();
            (store.rv, items)
        }
    };
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if let Some(limit) = limit
        && items.len() > limit
    {
        let remaining = items.split_off(limit);
        store.next_token += 1;
        let token = format!("c{}-{}", rv, store.next_token);
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(remaining.len());
        store.continuations.insert(
            token,
            Continuation {
                rv,
                kind: scope.kind,
                remaining,
            },
        );
    }
    let body = json!({
        "kind": format!("{}List", scope.kind.kind()),
        "apiVersion": scope.kind.api_version(),
        "metadata": metadata,
        "items": items,
    });
    json_response(StatusCode::OK, &body)
}

fn event_line(event: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": event, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(kind: Kind, rv: u64, annotations: Option<Value>) -> Value {
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if let Some(annotations) = annotations {
        metadata["annotations"] = annotations;
    }
    json!({ "kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": metadata })
}

fn watch_response(
    state: &Arc<State>,
    scope: Scope,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let send_initial = query.get("sendInitialEvents").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let requested = query.get("resourceVersion").cloned().unwrap_or_default();

    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut initial = Vec::new();
    // Subscribed now, not when the streaming task starts: a disconnect between this request
    // and the task's first poll must still end this watch.
    let mut disconnect = state.disconnect.subscribe();
    disconnect.mark_unchanged();
    let (changes, start_rv, expired) = {
        let store = state.lock();
        // `fail_with` sets the failure before it disconnects: a request that got here after
        // that disconnect (which the subscription above missed) sees the failure.
        if let Some(code) = store.failure {
            return status_response(code, reason_for(code), "injected failure");
        }
        let changes = state.changes.subscribe();
        match requested.as_str() {
            "" | "0" => {
                if requested == "0" || send_initial {
                    for ((kind, _, _), object) in &store.objects {
                        if scope.matches(*kind, object) {
                            initial.push(event_line("ADDED", object));
                        }
                    }
                }
                if send_initial {
                    let annotations = json!({ "k8s.io/initial-events-end": "true" });
                    initial.push(event_line(
                        "BOOKMARK",
                        &bookmark(scope.kind, store.rv, Some(annotations)),
                    ));
                }
                (changes, store.rv, false)
            }
            v => match v.parse::<u64>() {
                Ok(from) if from < store.compacted => (changes, from, true),
                Ok(from) if from > store.rv => {
                    return status_response(504, "Timeout", "Too large resource version");
                }
                Ok(from) => {
                    for change in store.history.iter().filter(|c| c.rv > from) {
                        if scope.matches(change.kind, &change.object) {
                            initial.push(event_line(change.event, &change.object));
                        }
                    }
                    (changes, store.rv, false)
                }
                Err(_) => return status_response(400, "BadRequest", "invalid resourceVersion"),
            },
        }
    };

    if expired {
        let status = status_object(
            410,
            "Expired",
            &format!(
                "too old resource version: {requested} ({})",
                state.lock().compacted
            ),
        );
        initial.push(event_line("ERROR", &status));
        for line in initial {
            let _ = tx.try_send(line);
        }
    } else {
        tokio::spawn(stream_watch(
            state.clone(),
            scope,
            changes,
            disconnect,
            initial,
            start_rv,
            bookmarks,
            Duration::from_secs(timeout),
            tx,
        ));
    }

    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(full("")))
}

#[allow(clippy::too_many_arguments)]
async fn stream_watch(
    state: Arc<State>,
    scope: Scope,
    mut changes: broadcast::Receiver<Change>,
    mut disconnect: watch::Receiver<u64>,
    initial: Vec<Bytes>,
    start_rv: u64,
    bookmarks: bool,
    timeout: Duration,
    tx: mpsc::Sender<Bytes>,
) {
    for line in initial {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let mut last_rv = start_rv;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(state.config.bookmark_interval);
    ticker.tick().await;
    loop {
        // Biased, the disconnect first: a change committed after `fail_with` or
        // `disconnect_watches` must not reach a watch that was cut off before it (the
        // expired-version test compacts exactly those changes away).
        tokio::select! {
            biased;
            _ = disconnect.changed() => return,
            _ = &mut deadline => {
                // The real server sends a final bookmark when a watch times out.
                if bookmarks {
                    send_bookmark(&state, &scope, &mut changes, &mut last_rv, &tx).await;
                }
                return;
            }
            _ = ticker.tick(), if bookmarks => {
                if !send_bookmark(&state, &scope, &mut changes, &mut last_rv, &tx).await {
                    return;
                }
            }
            change = changes.recv() => match change {
                Ok(change) => {
                    if change.rv > last_rv {
                        last_rv = change.rv;
                        if scope.matches(change.kind, &change.object)
                            && tx.send(event_line(change.event, &change.object)).await.is_err()
                        {
                            return;
                        }
                    }
                }
                // Fell behind or closed: end the watch, the client resumes.
                Err(_) => return,
            },
        }
    }
}

/// Sends the changes already committed, then a bookmark at the current resourceVersion, so a
/// bookmark never skips an event this watch has not delivered.
async fn send_bookmark(
    state: &State,
    scope: &Scope,
    changes: &mut broadcast::Receiver<Change>,
    last_rv: &mut u64,
    tx: &mpsc::Sender<Bytes>,
) -> bool {
    let (pending, rv, enabled) = {
        let mut store = state.lock();
        let mut pending = Vec::new();
        while let Ok(change) = changes.try_recv() {
            pending.push(change);
        }
        if store.bookmarks_enabled {
            *store.bookmarks_sent.entry(scope.kind).or_default() += 1;
        }
        (pending, store.rv, store.bookmarks_enabled)
    };
    for change in pending {
        if change.rv > *last_rv {
            *last_rv = change.rv;
            if scope.matches(change.kind, &change.object)
                && tx
                    .send(event_line(change.event, &change.object))
                    .await
                    .is_err()
            {
                return false;
            }
        }
    }
    if !enabled {
        return true;
    }
    *last_rv = (*last_rv).max(rv);
    tx.send(event_line("BOOKMARK", &bookmark(scope.kind, rv, None)))
        .await
        .is_ok()
}
