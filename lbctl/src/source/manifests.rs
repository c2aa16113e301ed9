//! Cluster objects from manifest files: what `kubectl get svc,endpointslices,nodes -A -o yaml`
//! (or `-o json`) prints, or hand-written YAML.
//!
//! Files or directories (every `*.yaml`, `*.yml` and `*.json` file in it, sorted by name, not
//! recursive, hidden files skipped); multi-document YAML; `kind: List` (items of other kinds
//! are ignored) and the typed `ServiceList`, `EndpointSliceList`, `NodeList`. Objects of other
//! kinds (Pod, Deployment, a Knative `Service`...) and documents that are not objects are
//! ignored. Loading is stateless: call [`load_paths`] again whenever a file changes.
//!
//! JSON is YAML: a `.yaml` file or standard input whose text starts with `{` (`kubectl get -o
//! json | lbctl plan -`) is read as JSON first, and as YAML if the JSON reader refuses it.
//!
//! A large `kind: List` (what `kubectl get -o yaml` prints) is cut into runs of whole items
//! that are read on several threads, one per CPU (`load_yaml_parallel`, `list_split`); a list
//! that cannot be cut safely, or any run that fails, is read whole as below. The limits below
//! then apply to each run, scaled to its size.
//!
//! A YAML file is first read once straight into the objects (`one_pass`), which succeeds for
//! well-formed manifests such as `kubectl get -o yaml` prints. Otherwise (and for JSON) each
//! file is read twice: once for its syntax and which kind and name each object has
//! (everything else skipped), then once more straight into the typed objects, so that an object
//! that does not deserialize is reported with the line and column of the offending field. YAML
//! is read by serde-saphyr within limits scaled to the text (see [`MAX_YAML_DEPTH`]): alias
//! bombs and absurd nesting are refused while parsing.
use std::{
    fmt,
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
};

mod block_json;
mod list_split;

use crate::model::{Interner, Inventory};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::{
    Deserialize, Deserializer,
    de::{DeserializeSeed, EnumAccess, IgnoredAny, MapAccess, SeqAccess, VariantAccess, Visitor},
};

/// File name extensions read from a directory.
pub const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// The path that means standard input.
pub const STDIN_PATH: &str = "-";

/// Where in a file something went wrong: `quote.yaml:12:7`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePos {
    /// The file (or the name given to [`load_str`]).
    pub origin: String,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based.
    pub column: Option<usize>,
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// The syntax a manifest is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// JSON for `*.json`, YAML otherwise.
    pub fn of(origin: &str) -> Self {
        if Path::new(origin)
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
        {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{origin}: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: invalid {format}: {message}")]
    Syntax {
        at: Box<SourcePos>,
        format: Format,
        message: String,
    },
    /// An object of a known kind that is not a valid object of that kind.
    #[error("{at}: {kind} {name}: {message}")]
    Object {
        at: Box<SourcePos>,
        /// `Service`, `EndpointSlice`, `Node` (or the list kind for a malformed list).
        kind: String,
        /// `namespace/name`, or `name` when the object names no namespace.
        name: String,
        message: String,
    },
}

impl ManifestError {
    /// Where the error is, when it is in a file's content.
    pub fn position(&self) -> Option<&SourcePos> {
        match self {
            ManifestError::Read { .. } => None,
            ManifestError::Syntax { at, .. } | ManifestError::Object { at, .. } => {
                Some(at.as_ref())
            }
        }
    }
}

/// Loads every object of `paths` (files, directories, or `-` for standard input).
pub fn load_paths(paths: &[PathBuf]) -> Result<Inventory, ManifestError> {
    let mut inventory = Inventory::default();
    for path in manifest_files(paths)? {
        let (origin, text) = read(&path)?;
        inventory.extend(load_str(&text, &origin)?);
    }
    Ok(inventory)
}

/// The files [`load_paths`] reads, in order: files as given, directories expanded (what a file
/// watcher should watch).
pub fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ManifestError> {
    let mut files = Vec::new();
    for path in paths {
        if path.as_os_str() != STDIN_PATH && path.is_dir() {
            files.extend(directory_files(path)?);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn directory_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_error = |source| ManifestError::Read {
        origin: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if is_manifest_name(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Whether a directory entry named `path` is one [`load_paths`] reads from a directory: not
/// hidden, with a [`MANIFEST_EXTENSIONS`] extension (by name only; the file need not exist).
pub fn is_manifest_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_none_or(|name| name.starts_with('.'));
    let manifest = path
        .extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| MANIFEST_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()));
    !hidden && manifest
}

fn read(path: &Path) -> Result<(String, String), ManifestError> {
    if path.as_os_str() == STDIN_PATH {
        let origin = "<stdin>".to_owned();
        let mut text = String::new();
        return match std::io::stdin().read_to_string(&mut text) {
            Ok(_) => Ok((origin, text)),
            Err(source) => Err(ManifestError::Read { origin, source }),
        };
    }
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((origin, text)),
        Err(source) => Err(ManifestError::Read { origin, source }),
    }
}

/// Loads the objects in `text`; `origin` names it in errors, and selects JSON when it ends
/// in `.json` (YAML otherwise; a YAML text that starts as a JSON object does is tried as JSON
/// first).
pub fn load_str(text: &str, origin: &str) -> Result<Inventory, ManifestError> {
    match Format::of(origin) {
        Format::Yaml => load_yaml(text, origin),
        Format::Json => load_json(text, origin),
    }
}

fn load_yaml(text: &str, origin: &str) -> Result<Inventory, ManifestError> {
    // JSON is YAML: a text that is one JSON object (`kubectl get -o json` piped into `lbctl
    // plan -`, or saved under a `.yaml` name) is read by the JSON reader, several times
    // faster. Anything that reader refuses is read as YAML, which reports the errors.
    if looks_like_json(text)
        && let Ok(inventory) = load_json(text, origin)
    {
        return Ok(inventory);
    }
    // kubectl's block YAML, the usual manifest, is rewritten as JSON and read by the JSON
    // reader, several times faster, when each of its nodes has one meaning in YAML (see
    // [`block_json`]): a large list in runs of items on several threads, anything else whole.
    // Anything else, and every error, is left to the YAML reads below.
    if let Some(inventory) = load_list_rewritten(text) {
        return Ok(inventory);
    }
    if let Some(json) = block_json::to_json(text)
        && let Ok(inventory) = load_json_objects(&json, origin)
    {
        return Ok(inventory);
    }
    // A large list is read on several threads when it can be (see [`load_yaml_parallel`]).
    if let Some(inventory) = load_yaml_parallel(text, parallel_parts(text.len())) {
        return Ok(inventory);
    }
    // One read straight into the objects when it can be done (see [`one_pass`]); anything it
    // cannot do, and every error, is left to the two reads that name the faulty object.
    if let Ok(inventory) = one_pass::load(text, yaml_options(text)) {
        return Ok(inventory);
    }
    load_yaml_careful(text, origin)
}

/// Whether `text` starts as a JSON object does (a byte order mark and blanks aside).
fn looks_like_json(text: &str) -> bool {
    text.trim_start_matches('\u{feff}')
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
}

/// A list's items are read in parallel only in runs of at least this many bytes: below it
/// a thread's start and the list's second look (its skeleton) are not worth it.
const MIN_PARALLEL_RUN_BYTES: usize = 1 << 20;

/// Threads a parallel read may use: one per CPU this process may run on, at most 8.
const MAX_PARALLEL_PARTS: usize = 8;

/// How many runs a YAML text of `len` bytes is read in (1: read whole).
fn parallel_parts(len: usize) -> usize {
    let most = (len / MIN_PARALLEL_RUN_BYTES).min(MAX_PARALLEL_PARTS);
    if most < 2 {
        // Not worth asking the system (it reads the cgroup's CPU quota) for a small file.
        return 1;
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    cpus.min(most)
}

/// A `kind: List` document (what `kubectl get -o yaml` prints) read in up to `parts` runs of
/// whole items at once, each on its own thread by [`one_pass::load_items`], after the list's
/// kind is read from the text around the items (see [`list_split`]). The objects are those of
/// the whole read, in the same order. `None` (the caller reads the text whole, which reports
/// errors where they are) when the text cannot be split, or any run fails to read.
fn load_yaml_parallel(text: &str, parts: usize) -> Option<Inventory> {
    let split = list_split::split(text, parts)?;
    let context = one_pass::list_items_context(&split.skeleton, yaml_options(&split.skeleton))?;
    let read = |run: &str| one_pass::load_items(run, context, yaml_options(run)).ok();
    let (first, rest) = split.runs.split_first()?;
    let inventories: Vec<Option<Inventory>> = std::thread::scope(|scope| {
        let threads: Vec<_> = rest
            .iter()
            .map(|run| {
                // The main thread's stack size: deep (but allowed) nesting fits as it does there.
                std::thread::Builder::new()
                    .name("lbctl-yaml".to_owned())
                    .stack_size(8 << 20)
                    .spawn_scoped(scope, move || read(run))
                    .map_err(|_| run)
            })
            .collect();
        let mut inventories = vec![read(first)];
        for thread in threads {
            inventories.push(match thread {
                Ok(thread) => thread.join().ok().flatten(),
                // No thread to be had: this one reads it.
                Err(run) => read(run),
            });
        }
        inventories
    });
    let mut inventory = Inventory::default();
    for part in inventories {
        inventory.extend(part?);
    }
    Some(inventory)
}

/// A list is rewritten as JSON in runs of about this many bytes, one per thread at a time: the
/// JSON of the runs being read is all the memory the rewrite adds.
const REWRITE_RUN_BYTES: usize = 4 << 20;

/// A `kind: List` document of at least 2 MiB, cut as [`load_yaml_parallel`] cuts it into runs of
/// about [`REWRITE_RUN_BYTES`], each run rewritten as a JSON array ([`block_json::items_to_json`])
/// and read as the list's items ([`one_pass::load_json_items`]) on one thread per CPU (at most
/// 8), each taking the next run. The objects are those of the whole read, in order. `None`
/// when the text cannot be split, or any run is outside the rewrite's subset or fails to read.
fn load_list_rewritten(text: &str) -> Option<Inventory> {
    let threads = parallel_parts(text.len());
    let runs = (text.len() / REWRITE_RUN_BYTES).max(threads);
    if runs < 2 {
        return None;
    }
    load_runs_rewritten(text, runs, threads)
}

/// [`load_list_rewritten`] in `runs` runs on `threads` threads.
fn load_runs_rewritten(text: &str, runs: usize, threads: usize) -> Option<Inventory> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let split = list_split::split(text, runs)?;
    let context = one_pass::list_items_context(&split.skeleton, yaml_options(&split.skeleton))?;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || {
        let mut read: Vec<(usize, Inventory)> = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(run) = split.runs.get(index) else {
                break;
            };
            match block_json::items_to_json(run)
                .and_then(|json| one_pass::load_json_items(&json, context).ok())
            {
                Some(inventory) => read.push((index, inventory)),
                None => failed.store(true, Ordering::Relaxed),
            }
        }
        read
    };
    let mut read: Vec<(usize, Inventory)> = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("lbctl-yaml".to_owned())
                    .stack_size(8 << 20)
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        let mut read = work();
        for helper in helpers {
            match helper.join() {
                Ok(more) => read.extend(more),
                Err(_) => failed.store(true, Ordering::Relaxed),
            }
        }
        read
    });
    if failed.load(Ordering::Relaxed) || read.len() != split.runs.len() {
        return None;
    }
    read.sort_unstable_by_key(|(index, _)| *index);
    let mut inventory = Inventory::default();
    for (_, part) in read {
        inventory.extend(part);
    }
    Some(inventory)
}

/// The two reads: the documents' shapes, then the typed objects (see the module doc).
fn load_yaml_careful(text: &str, origin: &str) -> Result<Inventory, ManifestError> {
    let syntax = |e: serde_saphyr::Error| {
        syntax_error(origin, Format::Yaml, yaml_position(&e), &yaml_message(&e))
    };
    // Empty and null documents are skipped by both reads alike, so shapes and documents pair up.
    let shapes: Vec<DocShape> =
        serde_saphyr::from_multiple_with_options(text, yaml_options(text)).map_err(syntax)?;
    let (result, pass) = TypedPass::run(shapes, || {
        serde_saphyr::from_multiple_with_options::<TypedDoc>(text, yaml_options(text))
    });
    match result {
        Ok(_) => Ok(pass.collected.inventory),
        Err(e) => Err(pass.collected.object_error(
            pass.current.as_ref().unwrap_or(&DocShape::Ignored),
            origin,
            yaml_position(&e),
            &yaml_message(&e),
        )),
    }
}

/// Nodes a YAML stream of `text_len` bytes may hold, aliases expanded: far above any real
/// manifest (the quote example has ~500 nodes per 10 KiB), far below what exhausts memory.
fn node_budget(text_len: usize) -> usize {
    1_000_000usize.max(text_len.saturating_mul(8))
}

/// Events aliases may replay in a stream of `text_len` bytes: generous for the anchors a
/// hand-written manifest shares (kubectl never writes any), and refused within a second for
/// alias bombs (billion laughs, n aliases to an n-element anchor).
fn alias_budget(text_len: usize) -> usize {
    100_000usize.max(text_len.saturating_mul(2))
}

/// Collections nested deeper than this are refused: Kubernetes objects nest about 10 deep, and
/// each level costs the deserializer stack (a debug build overflows a 2 MiB thread stack at
/// about 100 nested flow mappings). serde-saphyr's default.
pub const MAX_YAML_DEPTH: usize = 64;

/// The parser's limits, scaled to the text: a stream without aliases always fits them, and
/// one whose aliases expand it far beyond its size, or that nests absurdly deep, is refused
/// while it is parsed, in time linear in the text.
fn yaml_options(text: &str) -> serde_saphyr::Options {
    let nodes = node_budget(text.len());
    let aliases = alias_budget(text.len());
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = nodes;
    budget.max_events = nodes.saturating_mul(2);
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(text.len());
    // Each document takes some of the text: its size bounds them.
    budget.max_documents = usize::MAX;
    // Aliases are bounded by what they expand to, not by how many there are.
    budget.enforce_alias_anchor_ratio = false;
    budget.max_recorded_anchor_events = aliases;
    // Flow collections are counted by the scanner as well, which looks ahead (a flow collection
    // may be a key): its limit refuses them before they are parsed.
    budget.max_depth = MAX_YAML_DEPTH;
    budget.flow_nesting_limit = MAX_YAML_DEPTH;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = aliases;
    // Errors are reported as `file:line:column: message`, without a source excerpt.
    options.with_snippet = false;
    options
}

/// serde-saphyr's message, or ours for the limits above (stable wording, naming the limit).
fn yaml_message(error: &serde_saphyr::Error) -> String {
    use serde_saphyr::{
        Error, ExternalMessageSource, budget::BudgetBreach, granit_parser::ErrorKind,
    };
    let mut cause = error;
    while let Error::AliasError { error, .. } | Error::WithSnippet { error, .. } = cause {
        cause = error;
    }
    match cause {
        Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayStackDepthExceeded { .. }
        | Error::Budget {
            breach:
                BudgetBreach::Nodes { .. }
                | BudgetBreach::Events { .. }
                | BudgetBreach::Aliases { .. }
                | BudgetBreach::RecordedAnchorEvents { .. }
                | BudgetBreach::RecordedAnchorBytes { .. },
            ..
        } => "the document expands to too many nodes (alias repetition limit); refused".to_owned(),
        Error::Budget {
            breach: BudgetBreach::Depth { .. },
            ..
        } => format!("collections nested deeper than {MAX_YAML_DEPTH}; refused"),
        Error::ExternalMessage { source, .. }
            if matches!(&**source, ExternalMessageSource::Parser(scan)
                if matches!(scan.kind(), ErrorKind::RecursionLimitExceeded)) =>
        {
            format!("collections nested deeper than {MAX_YAML_DEPTH}; refused")
        }
        _ => error.to_string(),
    }
}

/// The typed read of a YAML stream. serde-saphyr reads a stream of documents into a
/// `Deserialize` type, not through a `DeserializeSeed`: each document's shape (from the first
/// read) and the objects read so far reach [`TypedDoc`] through this thread-local slot, set
/// only while [`TypedPass::run`] runs.
#[derive(Default)]
struct TypedPass {
    shapes: std::vec::IntoIter<DocShape>,
    /// The shape of the document being read (for errors).
    current: Option<DocShape>,
    collected: Collected,
}

thread_local! {
    static TYPED_PASS: std::cell::RefCell<Option<TypedPass>> =
        const { std::cell::RefCell::new(None) };
}

impl TypedPass {
    fn run<T>(shapes: Vec<DocShape>, read: impl FnOnce() -> T) -> (T, TypedPass) {
        let pass = TypedPass {
            shapes: shapes.into_iter(),
            ..TypedPass::default()
        };
        TYPED_PASS.set(Some(pass));
        let result = read();
        (result, TYPED_PASS.take().unwrap_or_default())
    }
}

/// One YAML document of the typed read (see [`TypedPass`]).
struct TypedDoc;

impl<'de> Deserialize<'de> for TypedDoc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        TYPED_PASS.with_borrow_mut(|pass| {
            let pass = pass
                .as_mut()
                .ok_or_else(|| D::Error::custom("internal error: no typed read under way"))?;
            let shape = pass.shapes.next().ok_or_else(|| {
                D::Error::custom("internal error: more documents than in the first read")
            })?;
            let shape = pass.current.insert(shape);
            DocSeed {
                shape,
                out: &mut pass.collected,
            }
            .deserialize(deserializer)
            .map(|()| TypedDoc)
        })
    }
}

fn load_json(text: &str, origin: &str) -> Result<Inventory, ManifestError> {
    let syntax = |e: serde_json::Error| syntax_error(origin, Format::Json, json_position(&e), &e);
    // The syntax and the nesting first, keeping nothing (a `serde_json::Value` of a 36 MB list
    // took half a GiB): skipped fields are not checked for depth by the reads below.
    let mut deserializer = serde_json::Deserializer::from_str(text);
    JsonSyntax
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(syntax)?;
    load_json_objects(text, origin)
}

/// The shape and typed reads of [`load_json`], for a text whose syntax and nesting are known
/// to be good (also [`block_json`]'s rewrite, which nests at most 40 deep).
fn load_json_objects(text: &str, origin: &str) -> Result<Inventory, ManifestError> {
    let syntax = |e: serde_json::Error| syntax_error(origin, Format::Json, json_position(&e), &e);
    let shape =
        DocShape::deserialize(&mut serde_json::Deserializer::from_str(text)).map_err(syntax)?;
    let mut collected = Collected::default();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    DocSeed {
        shape: &shape,
        out: &mut collected,
    }
    .deserialize(&mut deserializer)
    .map_err(|e| collected.object_error(&shape, origin, json_position(&e), &e))?;
    Ok(collected.inventory)
}

/// Walks a JSON value keeping nothing, through `deserialize_any` all the way down, so that
/// serde_json refuses nesting deeper than 128 (its recursion limit) as it refused it into a
/// `serde_json::Value`, with the same message and position.
#[derive(Clone, Copy)]
struct JsonSyntax;

impl<'de> DeserializeSeed<'de> for JsonSyntax {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonSyntax {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

type Position = (Option<usize>, Option<usize>);

fn yaml_position(error: &serde_saphyr::Error) -> Position {
    let at = error.location();
    let number = |n: u64| usize::try_from(n).ok().filter(|n| *n > 0);
    (
        at.and_then(|at| number(at.line())),
        at.and_then(|at| number(at.column())),
    )
}

fn json_position(error: &serde_json::Error) -> Position {
    match error.line() {
        0 => (None, None),
        line => (Some(line), Some(error.column())),
    }
}

fn syntax_error(
    origin: &str,
    format: Format,
    (line, column): Position,
    error: &dyn fmt::Display,
) -> ManifestError {
    ManifestError::Syntax {
        at: Box::new(SourcePos {
            origin: origin.to_owned(),
            line,
            column,
        }),
        format,
        message: error.to_string(),
    }
}

/// The kinds the engine reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KnownKind {
    Service,
    EndpointSlice,
    Node,
}

impl KnownKind {
    fn of(api_version: Option<&str>, kind: Option<&str>) -> Option<Self> {
        match (api_version?, kind?) {
            ("v1", "Service") => Some(KnownKind::Service),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(KnownKind::EndpointSlice),
            ("v1", "Node") => Some(KnownKind::Node),
            _ => None,
        }
    }

    /// The item kind of a typed list; `None` for the untyped `v1 List`.
    fn of_list(api_version: Option<&str>, kind: Option<&str>) -> Option<Option<Self>> {
        match (api_version?, kind?) {
            ("v1", "List") => Some(None),
            ("v1", "ServiceList") => Some(Some(KnownKind::Service)),
            ("discovery.k8s.io/v1", "EndpointSliceList") => Some(Some(KnownKind::EndpointSlice)),
            ("v1", "NodeList") => Some(Some(KnownKind::Node)),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            KnownKind::Service => "Service",
            KnownKind::EndpointSlice => "EndpointSlice",
            KnownKind::Node => "Node",
        }
    }
}

/// A known object, as far as the generic first read can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    kind: KnownKind,
    /// `namespace/name` or `name`.
    name: String,
}

impl Header {
    fn of(kind: KnownKind, object: Option<&ObjectFields>) -> Self {
        let field =
            |get: fn(&ObjectFields) -> &Option<String>| object.and_then(|o| get(o).as_deref());
        let name = match (field(|o| &o.namespace), field(|o| &o.name)) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (None, Some(name)) => name.to_owned(),
            (_, None) => "<unnamed>".to_owned(),
        };
        Header { kind, name }
    }
}

/// What one document holds, from the first read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DocShape {
    /// Not an object of a kind we read.
    Ignored,
    Object(Header),
    /// `list` names the list for errors about the list itself; `items` has `None` for the items
    /// of kinds we do not read.
    List {
        list: ListHeader,
        items: Vec<Option<Header>>,
    },
}

/// A list document's own kind and name, for errors that are not about one item.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ListHeader {
    kind: String,
    name: String,
}

impl DocShape {
    fn of(object: &ObjectFields) -> Self {
        let api_version = object.api_version.as_deref();
        let kind = object.kind.as_deref();
        if let Some(known) = KnownKind::of(api_version, kind) {
            return DocShape::Object(Header::of(known, Some(object)));
        }
        let Some(item_kind) = KnownKind::of_list(api_version, kind) else {
            return DocShape::Ignored;
        };
        let items = object
            .items
            .iter()
            .flatten()
            .map(|item| {
                let kind = match item_kind {
                    Some(kind) => Some(kind),
                    None => item
                        .as_ref()
                        .and_then(|o| KnownKind::of(o.api_version.as_deref(), o.kind.as_deref())),
                };
                kind.map(|kind| Header::of(kind, item.as_ref()))
            })
            .collect();
        DocShape::List {
            list: ListHeader {
                kind: kind.unwrap_or_default().to_owned(),
                name: Header::of(item_kind.unwrap_or(KnownKind::Service), Some(object)).name,
            },
            items,
        }
    }
}

/// The first read of a document: any YAML or JSON value; only an object's kind, name and list
/// items are kept.
impl<'de> Deserialize<'de> for DocShape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(
            match Scan(Want::Object { items: true }).deserialize(deserializer)? {
                Scanned::Object(object) => DocShape::of(&object),
                _ => DocShape::Ignored,
            },
        )
    }
}

/// The fields of an object the first read keeps. Fields of other types than expected (a `kind`
/// that is a list, `metadata` that is a string) count as absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ObjectFields {
    api_version: Option<String>,
    kind: Option<String>,
    /// `metadata.name`.
    name: Option<String>,
    /// `metadata.namespace`.
    namespace: Option<String>,
    /// `Some` when `items` is a sequence: per item, its fields when it is a mapping.
    items: Option<Vec<Option<ObjectFields>>>,
}

/// What the first read looks for in a value.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// A string.
    Str,
    /// An object's [`ObjectFields`]; its `items` too when `items` is set.
    Object { items: bool },
    /// `metadata`: its `name` and `namespace`.
    Metadata,
    /// A list's `items`: a sequence of objects.
    Items,
}

/// A value as the first read saw it.
enum Scanned {
    Str(String),
    Object(ObjectFields),
    Items(Vec<Option<ObjectFields>>),
    /// Anything else, skipped.
    Other,
}

/// Reads any value, keeping what [`Want`] asks for and skipping the rest.
#[derive(Clone, Copy)]
struct Scan(Want);

impl<'de> DeserializeSeed<'de> for Scan {
    type Value = Scanned;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Scanned, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan {
    type Value = Scanned;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_str<E>(self, v: &str) -> Result<Scanned, E> {
        Ok(match self.0 {
            Want::Str => Scanned::Str(v.to_owned()),
            _ => Scanned::Other,
        })
    }
    fn visit_bool<E>(self, _: bool) -> Result<Scanned, E> {
        Ok(Scanned::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Scanned, E> {
        Ok(Scanned::Other)
    }
    fn visit_i128<E>(self, _: i128) -> Result<Scanned, E> {
        Ok(Scanned::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Scanned, E> {
        Ok(Scanned::Other)
    }
    fn visit_u128<E>(self, _: u128) -> Result<Scanned, E> {
        Ok(Scanned::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Scanned, E> {
        Ok(Scanned::Other)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Scanned, E> {
        Ok(Scanned::Other)
    }
    fn visit_unit<E>(self) -> Result<Scanned, E> {
        Ok(Scanned::Other)
    }
    fn visit_none<E>(self) -> Result<Scanned, E> {
        Ok(Scanned::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scanned, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Scanned, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Scanned, A::Error> {
        // A tagged value (`!custom x`): not one we read.
        let (IgnoredAny, variant) = data.variant()?;
        variant.newtype_variant::<IgnoredAny>()?;
        Ok(Scanned::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scanned, A::Error> {
        let Want::Items = self.0 else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Scanned::Other);
        };
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Scan(Want::Object { items: false }))? {
            items.push(match item {
                Scanned::Object(object) => Some(object),
                _ => None,
            });
        }
        Ok(Scanned::Items(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scanned, A::Error> {
        let with_items = match self.0 {
            Want::Object { items } => items,
            Want::Metadata => false,
            Want::Str | Want::Items => {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(Scanned::Other);
            }
        };
        let metadata = matches!(self.0, Want::Metadata);
        let mut fields = ObjectFields::default();
        while let Some(key) = map.next_key_seed(Scan(Want::Str))? {
            let key = match key {
                Scanned::Str(key) => key,
                _ => String::new(),
            };
            let string = |value| match value {
                Scanned::Str(value) => Some(value),
                _ => None,
            };
            match (metadata, key.as_str()) {
                (false, "apiVersion") => {
                    fields.api_version = string(map.next_value_seed(Scan(Want::Str))?)
                }
                (false, "kind") => fields.kind = string(map.next_value_seed(Scan(Want::Str))?),
                (false, "metadata") => {
                    if let Scanned::Object(meta) = map.next_value_seed(Scan(Want::Metadata))? {
                        fields.name = meta.name;
                        fields.namespace = meta.namespace;
                    }
                }
                (false, "items") if with_items => {
                    if let Scanned::Items(items) = map.next_value_seed(Scan(Want::Items))? {
                        fields.items = Some(items);
                    }
                }
                (true, "name") => fields.name = string(map.next_value_seed(Scan(Want::Str))?),
                (true, "namespace") => {
                    fields.namespace = string(map.next_value_seed(Scan(Want::Str))?)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Scanned::Object(fields))
    }
}

/// The objects read so far, and which list item is being read (to name it in errors).
#[derive(Debug, Default)]
struct Collected {
    inventory: Inventory,
    /// Shares namespaces, node names and zones among the objects of this read.
    interner: Interner,
    current_item: Option<usize>,
    /// Where in the object the typed read failed (`spec.ports[0].port`).
    failed_at: Option<String>,
}

impl Collected {
    fn push<'de, D: Deserializer<'de>>(
        &mut self,
        kind: KnownKind,
        deserializer: D,
    ) -> Result<(), D::Error> {
        let mut track = serde_path_to_error::Track::new();
        let deserializer = serde_path_to_error::Deserializer::new(deserializer, &mut track);
        // Each object is converted as soon as it is read: the API object is dropped here.
        let (inventory, interner) = (&mut self.inventory, &mut self.interner);
        let pushed = match kind {
            KnownKind::Service => Service::deserialize(deserializer)
                .map(|object| inventory.services.push(Arc::new(interner.service(&object)))),
            KnownKind::EndpointSlice => EndpointSlice::deserialize(deserializer).map(|object| {
                inventory
                    .endpoint_slices
                    .push(Arc::new(interner.endpoint_slice(&object)))
            }),
            KnownKind::Node => Node::deserialize(deserializer)
                .map(|object| inventory.nodes.push(Arc::new(interner.node(&object)))),
        };
        if pushed.is_err() {
            self.failed_at = Some(track.path().to_string());
        }
        pushed
    }

    fn object_error(
        &self,
        shape: &DocShape,
        origin: &str,
        (line, column): Position,
        error: &dyn fmt::Display,
    ) -> ManifestError {
        let (kind, name) = match shape {
            DocShape::Object(header) => (header.kind.as_str().to_owned(), header.name.clone()),
            DocShape::List { list, items } => {
                match self
                    .current_item
                    .and_then(|i| items.get(i))
                    .and_then(Option::as_ref)
                {
                    Some(header) => (header.kind.as_str().to_owned(), header.name.clone()),
                    None => (list.kind.clone(), list.name.clone()),
                }
            }
            DocShape::Ignored => (String::new(), String::new()),
        };
        ManifestError::Object {
            at: Box::new(SourcePos {
                origin: origin.to_owned(),
                line,
                column,
            }),
            kind,
            name,
            message: match self.failed_at.as_deref() {
                Some(path) if path != "." => format!("{path}: {error}"),
                _ => error.to_string(),
            },
        }
    }
}

/// The second, typed read of one document, guided by its [`DocShape`].
struct DocSeed<'a> {
    shape: &'a DocShape,
    out: &'a mut Collected,
}

impl<'de> DeserializeSeed<'de> for DocSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.shape {
            DocShape::Ignored => IgnoredAny::deserialize(deserializer).map(drop),
            DocShape::Object(header) => self.out.push(header.kind, deserializer),
            DocShape::List { items, .. } => deserializer.deserialize_map(ListVisitor {
                items,
                out: self.out,
            }),
        }
    }
}

struct ListVisitor<'a> {
    items: &'a [Option<Header>],
    out: &'a mut Collected,
}

impl<'de> Visitor<'de> for ListVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                map.next_value_seed(ItemsSeed {
                    items: self.items,
                    out: &mut *self.out,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct ItemsSeed<'a> {
    items: &'a [Option<Header>],
    out: &'a mut Collected,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of objects")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for (index, item) in self.items.iter().enumerate() {
            self.out.current_item = Some(index);
            let more = match item {
                Some(header) => seq
                    .next_element_seed(ItemSeed {
                        kind: header.kind,
                        out: &mut *self.out,
                    })?
                    .is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                break;
            }
        }
        self.out.current_item = None;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

struct ItemSeed<'a> {
    kind: KnownKind,
    out: &'a mut Collected,
}

impl<'de> DeserializeSeed<'de> for ItemSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.out.push(self.kind, deserializer)
    }
}

/// The fast read of a YAML stream: one pass straight into the objects, for the usual case of
/// well-formed objects whose `apiVersion` and `kind` come before their `spec` and `status`
/// (`kubectl get -o yaml` sorts keys: a slice's `endpoints` and a list's `items`, which come
/// before `kind`, are read speculatively and kept only if the kind turns out to want them).
///
/// It succeeds only where the two-pass read would return the same objects (each field is read
/// by the same `Deserialize` impl, ignored fields are ignored alike); anything it is unsure of
/// (a document that is not a mapping, a `spec` before the `kind`, a repeated key, a typed list
/// whose items name another kind, any error) makes it fail, and the caller reads the text again
/// the careful way.
mod one_pass {
    use k8s_openapi::{
        api::{
            core::v1::{Node, NodeSpec, NodeStatus, Service, ServiceSpec, ServiceStatus},
            discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };
    use serde::{
        Deserialize, Deserializer,
        de::{DeserializeSeed, Error, IgnoredAny, MapAccess, SeqAccess, Visitor},
    };

    use std::{cell::RefCell, sync::Arc};

    use super::KnownKind;
    use crate::model::{Interner, Inventory};

    thread_local! {
        /// The interner of the read under way (serde-saphyr reads documents through
        /// `Deserialize`, which takes no state): set only while [`load`] runs.
        static INTERNER: RefCell<Interner> = RefCell::new(Interner::new());
    }

    pub(super) fn load(
        text: &str,
        options: serde_saphyr::Options,
    ) -> Result<Inventory, serde_saphyr::Error> {
        INTERNER.set(Interner::new());
        let docs = serde_saphyr::from_multiple_with_options::<Doc>(text, options);
        // Not kept past the read: the objects hold what they share.
        INTERNER.set(Interner::new());
        let mut inventory = Inventory::default();
        for Doc(objects) in docs? {
            inventory.extend(objects);
        }
        Ok(inventory)
    }

    /// The objects of one document, in order.
    struct Doc(Inventory);

    impl<'de> Deserialize<'de> for Doc {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let parts = PartsSeed(Context::TopLevel).deserialize(deserializer)?;
            let mut out = Inventory::default();
            INTERNER
                .with_borrow_mut(|interner| parts.resolve(Context::TopLevel, &mut out, interner))
                .map_err(D::Error::custom)?;
            Ok(Doc(out))
        }
    }

    /// Where an object sits, which decides how its kind is found (as [`super::DocShape`] does).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Context {
        /// A document: an object of a known kind, or a list.
        TopLevel,
        /// An item of `v1 List` (or of a list whose kind is not read yet): its own kind.
        ListItem,
        /// An item of a typed list (`ServiceList`...): that kind, whatever it says.
        TypedItem(KnownKind),
    }

    /// What an object is, as far as its kind fields tell.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Class {
        Object(KnownKind),
        /// A list; `None`: the untyped `v1 List`.
        List(Option<KnownKind>),
        Ignored,
    }

    fn classify(context: Context, api_version: Option<&str>, kind: Option<&str>) -> Class {
        match context {
            Context::TypedItem(kind) => Class::Object(kind),
            Context::ListItem => {
                KnownKind::of(api_version, kind).map_or(Class::Ignored, Class::Object)
            }
            Context::TopLevel => match KnownKind::of(api_version, kind) {
                Some(kind) => Class::Object(kind),
                None => KnownKind::of_list(api_version, kind).map_or(Class::Ignored, Class::List),
            },
        }
    }

    /// One object's fields, read in one pass. The objects' parts are boxed: a list item that
    /// does not name its own kind is held until the list's kind is known (the others are
    /// converted to the compact model as soon as they are read: [`Item`]), and unboxed they
    /// take kilobytes each.
    #[derive(Default)]
    struct Parts {
        api_version: Option<String>,
        kind: Option<String>,
        metadata: Option<Box<ObjectMeta>>,
        service_spec: Option<Box<ServiceSpec>>,
        service_status: Option<Box<ServiceStatus>>,
        node_spec: Option<Box<NodeSpec>>,
        node_status: Option<Box<NodeStatus>>,
        address_type: Option<String>,
        endpoints: Option<Vec<Endpoint>>,
        ports: Option<Vec<EndpointPort>>,
        /// `Some` when read as a list's items (speculatively, or for a list).
        items: Option<Vec<Item>>,
        /// The classes fields were read under once the class was known: all must agree with
        /// the final one.
        assumed: Vec<Class>,
    }

    impl Parts {
        fn class_now(&self, context: Context) -> Option<Class> {
            match context {
                Context::TypedItem(kind) => Some(Class::Object(kind)),
                _ if self.api_version.is_some() && self.kind.is_some() => Some(classify(
                    context,
                    self.api_version.as_deref(),
                    self.kind.as_deref(),
                )),
                _ => None,
            }
        }

        /// The objects this stands for, into `out`; an error when the one-pass read cannot
        /// be sure of them.
        fn resolve(
            self,
            context: Context,
            out: &mut Inventory,
            interner: &mut Interner,
        ) -> Result<(), &'static str> {
            let class = match context {
                Context::TypedItem(kind) => {
                    // The typed read checks the item's own kind fields against the list's.
                    let own = KnownKind::of(
                        Some(self.api_version.as_deref().unwrap_or(api_version_of(kind))),
                        Some(self.kind.as_deref().unwrap_or(kind.as_str())),
                    );
                    if own != Some(kind) {
                        return Err("a typed list's item names another kind");
                    }
                    Class::Object(kind)
                }
                _ => classify(context, self.api_version.as_deref(), self.kind.as_deref()),
            };
            if self.assumed.iter().any(|assumed| *assumed != class) {
                return Err("fields were read for another kind");
            }
            match class {
                Class::Ignored => {}
                Class::Object(KnownKind::Service) => {
                    out.services.push(Arc::new(interner.service(&Service {
                        metadata: self.metadata.map(|m| *m).unwrap_or_default(),
                        spec: self.service_spec.map(|s| *s),
                        status: self.service_status.map(|s| *s),
                    })))
                }
                Class::Object(KnownKind::Node) => out.nodes.push(Arc::new(interner.node(&Node {
                    metadata: self.metadata.map(|m| *m).unwrap_or_default(),
                    spec: self.node_spec.map(|s| *s),
                    status: self.node_status.map(|s| *s),
                }))),
                Class::Object(KnownKind::EndpointSlice) => {
                    out.endpoint_slices
                        .push(Arc::new(interner.endpoint_slice(&EndpointSlice {
                            address_type: self.address_type.unwrap_or_default(),
                            endpoints: self.endpoints.unwrap_or_default(),
                            metadata: self.metadata.map(|m| *m).unwrap_or_default(),
                            ports: self.ports,
                        })))
                }
                Class::List(item_kind) => {
                    let item_context = item_kind.map_or(Context::ListItem, Context::TypedItem);
                    resolve_items(self.items.unwrap_or_default(), item_context, out, interner)?;
                }
            }
            Ok(())
        }
    }

    /// The objects a list's `items` stand for, into `out`, once the list's kind is known.
    fn resolve_items(
        items: Vec<Item>,
        item_context: Context,
        out: &mut Inventory,
        interner: &mut Interner,
    ) -> Result<(), &'static str> {
        for item in items {
            match item {
                // Items read before the list's kind was known were read as `v1 List` items:
                // a typed list's items must then name its kind themselves (a converted item
                // named its kind).
                Item::Converted(kind, objects) => {
                    if let Context::TypedItem(list_kind) = item_context
                        && kind != list_kind
                    {
                        return Err("a typed list's item names another kind");
                    }
                    out.extend(objects);
                }
                Item::Pending(parts) => parts.resolve(item_context, out, interner)?,
            }
        }
        Ok(())
    }

    /// How the items of a list are read, from the list's own kind fields (see
    /// [`list_items_context`]).
    #[derive(Clone, Copy, Debug)]
    pub(super) struct ItemsContext(Context);

    /// How the items of the list `skeleton` (one document, the list with `items: []`) are
    /// read; `None` when it is no list or anything about it is unsure.
    pub(super) fn list_items_context(
        skeleton: &str,
        options: serde_saphyr::Options,
    ) -> Option<ItemsContext> {
        let parts = serde_saphyr::with_deserializer_from_str_with_options(
            skeleton,
            options,
            |deserializer| PartsSeed(Context::TopLevel).deserialize(deserializer),
        )
        .ok()?;
        let Some(Class::List(item_kind)) = parts.class_now(Context::TopLevel) else {
            return None;
        };
        // The rest of the document as the whole read would judge it (no objects: no items).
        let mut none = Inventory::default();
        parts
            .resolve(Context::TopLevel, &mut none, &mut Interner::new())
            .ok()?;
        Some(ItemsContext(
            item_kind.map_or(Context::ListItem, Context::TypedItem),
        ))
    }

    /// The objects of `run`, some of a list's items written as a block sequence, read as
    /// that list's items.
    pub(super) fn load_items(
        run: &str,
        context: ItemsContext,
        options: serde_saphyr::Options,
    ) -> Result<Inventory, serde_saphyr::Error> {
        let ItemsContext(context) = context;
        INTERNER.set(Interner::new());
        let items =
            serde_saphyr::with_deserializer_from_str_with_options(run, options, |deserializer| {
                ItemsSeed(context).deserialize(deserializer)
            });
        let mut out = Inventory::default();
        let resolved = items.and_then(|items| {
            INTERNER
                .with_borrow_mut(|interner| resolve_items(items, context, &mut out, interner))
                .map_err(serde_saphyr::Error::custom)
        });
        // Not kept past the read: the objects hold what they share.
        INTERNER.set(Interner::new());
        resolved.map(|()| out)
    }

    /// The objects of `json`, a JSON array of some of a list's items (a run of them rewritten
    /// by `block_json::items_to_json`), read as that list's items.
    pub(super) fn load_json_items(
        json: &str,
        context: ItemsContext,
    ) -> Result<Inventory, serde_json::Error> {
        let ItemsContext(context) = context;
        INTERNER.set(Interner::new());
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let items = ItemsSeed(context)
            .deserialize(&mut deserializer)
            .and_then(|items| deserializer.end().map(|()| items));
        let mut out = Inventory::default();
        let resolved = items.and_then(|items| {
            INTERNER
                .with_borrow_mut(|interner| resolve_items(items, context, &mut out, interner))
                .map_err(serde::de::Error::custom)
        });
        INTERNER.set(Interner::new());
        resolved.map(|()| out)
    }

    fn api_version_of(kind: KnownKind) -> &'static str {
        match kind {
            KnownKind::Service | KnownKind::Node => "v1",
            KnownKind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    /// Reads one object (a mapping; anything else is left to the careful read).
    struct PartsSeed(Context);

    impl<'de> DeserializeSeed<'de> for PartsSeed {
        type Value = Parts;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Parts, D::Error> {
            deserializer.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for PartsSeed {
        type Value = Parts;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
            let context = self.0;
            let mut parts = Parts::default();
            let mut seen: Vec<String> = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                let special = matches!(
                    key.as_str(),
                    "apiVersion"
                        | "kind"
                        | "metadata"
                        | "spec"
                        | "status"
                        | "addressType"
                        | "endpoints"
                        | "ports"
                        | "items"
                );
                if special {
                    if seen.contains(&key) {
                        return Err(A::Error::custom("repeated key"));
                    }
                    seen.push(key.clone());
                }
                let class = parts.class_now(context);
                match key.as_str() {
                    "apiVersion" => parts.api_version = Some(map.next_value()?),
                    "kind" => parts.kind = Some(map.next_value()?),
                    "metadata" => parts.metadata = map.next_value()?,
                    "spec" | "status" => {
                        let Some(class) = class else {
                            return Err(A::Error::custom("spec or status before the kind"));
                        };
                        parts.assumed.push(class);
                        match (class, key.as_str()) {
                            (Class::Object(KnownKind::Service), "spec") => {
                                parts.service_spec = map.next_value()?
                            }
                            (Class::Object(KnownKind::Service), _) => {
                                parts.service_status = map.next_value()?
                            }
                            (Class::Object(KnownKind::Node), "spec") => {
                                parts.node_spec = map.next_value()?
                            }
                            (Class::Object(KnownKind::Node), _) => {
                                parts.node_status = map.next_value()?
                            }
                            _ => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    "addressType" | "endpoints" | "ports" => {
                        if let Some(class) = class {
                            parts.assumed.push(class);
                        }
                        match (class, key.as_str()) {
                            (
                                None | Some(Class::Object(KnownKind::EndpointSlice)),
                                "addressType",
                            ) => parts.address_type = map.next_value()?,
                            (None | Some(Class::Object(KnownKind::EndpointSlice)), "endpoints") => {
                                parts.endpoints = map.next_value()?
                            }
                            (None | Some(Class::Object(KnownKind::EndpointSlice)), _) => {
                                parts.ports = map.next_value()?
                            }
                            _ => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    "items" => {
                        if let Some(class) = class {
                            parts.assumed.push(class);
                        }
                        match class {
                            None => {
                                parts.items =
                                    Some(map.next_value_seed(ItemsSeed(Context::ListItem))?)
                            }
                            Some(Class::List(kind)) => {
                                let context = kind.map_or(Context::ListItem, Context::TypedItem);
                                parts.items = Some(map.next_value_seed(ItemsSeed(context))?);
                            }
                            Some(_) => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(parts)
        }
    }

    /// One item of a list, converted as soon as its kind is sure (the API object is dropped
    /// then), else kept until the list's kind is known.
    enum Item {
        /// An object whose own fields name its kind: the same object whatever the list turns
        /// out to be, if the list accepts that kind.
        Converted(KnownKind, Inventory),
        Pending(Parts),
    }

    /// A list's `items`: a sequence of objects, or null.
    struct ItemsSeed(Context);

    impl<'de> DeserializeSeed<'de> for ItemsSeed {
        type Value = Vec<Item>;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Item>, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for ItemsSeed {
        type Value = Vec<Item>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence of objects")
        }

        fn visit_unit<E>(self) -> Result<Vec<Item>, E> {
            Ok(Vec::new())
        }

        fn visit_none<E>(self) -> Result<Vec<Item>, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Item>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element_seed(PartsSeed(self.0))? {
                let kind = match item.class_now(self.0) {
                    Some(Class::Object(kind))
                        if item.assumed.iter().all(|a| *a == Class::Object(kind)) =>
                    {
                        kind
                    }
                    _ => {
                        items.push(Item::Pending(item));
                        continue;
                    }
                };
                let mut objects = Inventory::default();
                INTERNER
                    .with_borrow_mut(|interner| item.resolve(self.0, &mut objects, interner))
                    .map_err(A::Error::custom)?;
                items.push(Item::Converted(kind, objects));
            }
            Ok(items)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with(extra: &str) -> String {
        format!("apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\n{extra}")
    }

    fn nested(depth: usize) -> String {
        // `x` is at depth 1; each `[` one deeper.
        node_with(&format!(
            "x: {}1{}\n",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        ))
    }

    #[test]
    fn nesting_up_to_the_limit_loads_beyond_is_refused() {
        let inventory = load_str(&nested(MAX_YAML_DEPTH), "ok.yaml").expect("at the limit");
        assert_eq!(inventory.nodes.len(), 1);
        let err = load_str(&nested(MAX_YAML_DEPTH + 1), "deep.yaml")
            .expect_err("beyond the limit")
            .to_string();
        assert!(err.starts_with("deep.yaml:4:"), "{err}");
        assert!(err.contains("nested deeper than 64"), "{err}");
    }

    #[test]
    fn ordinary_anchors_and_aliases_load() {
        let text = node_with("x: &x {a: 1, b: [1, 2]}\ny: *x\nz: [*x, *x]\n");
        assert_eq!(load_str(&text, "a.yaml").expect("loads").nodes.len(), 1);
    }

    #[test]
    fn the_alias_budget_grows_with_the_text() {
        // n aliases to an n-element anchor replay n^2 events: refused at n = 400 in a small
        // file, loaded when the same aliases sit in a file large enough to pay for them.
        let quadratic = |n: usize| {
            node_with(&format!(
                "a: &a [{}]\nb: [{}]\n",
                "1,".repeat(n),
                "*a,".repeat(n)
            ))
        };
        let err = load_str(&quadratic(400), "quad.yaml")
            .expect_err("160,000 replayed events from 2.5 KB")
            .to_string();
        assert!(err.contains("too many nodes"), "{err}");
        let padded = format!("{}# {}\n", quadratic(400), "x".repeat(200_000));
        load_str(&padded, "big.yaml").expect("a 200 KB file may replay 400,000 events");
    }

    /// The fast read returns what the careful one does, or nothing.
    #[test]
    fn the_one_pass_read_agrees_with_the_two_reads() {
        let svc = |name: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\n\
                 spec: {{clusterIP: 10.96.0.1, ports: [{{port: 80, targetPort: http}}]}}\n"
            )
        };
        let slice = "addressType: IPv4\napiVersion: discovery.k8s.io/v1\nendpoints:\n\
                     - addresses: [10.0.0.1]\n  conditions: {ready: true}\n  nodeName: n1\n\
                     kind: EndpointSlice\nmetadata:\n  name: a-1\n  labels: \
                     {kubernetes.io/service-name: a}\nports: [{name: http, port: 8080}]\n";
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.0.0.0/24}\n\
                    status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}\n";
        let indent = |doc: &str| {
            doc.lines()
                .enumerate()
                .map(|(i, l)| format!("{}{l}\n", if i == 0 { "- " } else { "  " }))
                .collect::<String>()
        };
        let list = |kind: &str, items: &[&str], items_first: bool| {
            let items: String = items.iter().map(|d| indent(d)).collect();
            if items_first {
                format!("apiVersion: v1\nitems:\n{items}kind: {kind}\nmetadata: {{}}\n")
            } else {
                format!("apiVersion: v1\nkind: {kind}\nmetadata: {{}}\nitems:\n{items}")
            }
        };
        let a = svc("a");
        let fast = [
            format!("{a}---\n{slice}---\n{node}"),
            list("List", &[&a, slice, node], true),
            list("List", &[&a, slice, node], false),
            list("ServiceList", &[&a, &svc("b")], false),
            list("ServiceList", &[&a, &svc("b")], true),
            // Other kinds and lists nested in lists are ignored, as the careful read does.
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec: {{replicas: 1}}\n---\n{a}"
            ),
            list("List", &[&list("List", &[&a], false), slice], true),
            // A Service's stray slice fields are ignored.
            format!("endpoints: []\n{a}"),
        ];
        for text in &fast {
            let careful = load_yaml_careful(text, "t.yaml").expect("the careful read loads it");
            let one = one_pass::load(text, yaml_options(text))
                .unwrap_or_else(|e| panic!("the fast read fails on\n{text}\n{e}"));
            assert_eq!(one.services, careful.services, "{text}");
            assert_eq!(one.endpoint_slices, careful.endpoint_slices, "{text}");
            assert_eq!(one.nodes, careful.nodes, "{text}");
            assert!(
                careful.services.len() + careful.endpoint_slices.len() > 0,
                "{text}"
            );
        }
        let no_kind = "apiVersion: v1\nmetadata: {name: x}\nspec: {clusterIP: 10.96.0.2}\n";
        let unsure = [
            // spec before kind.
            "apiVersion: v1\nspec: {clusterIP: 10.96.0.1}\nkind: Service\nmetadata: {name: a}\n"
                .to_owned(),
            // A typed list whose items do not say their kind, read before the list's kind.
            list("ServiceList", &[no_kind], true),
            // A typed list's item of another kind.
            list("ServiceList", &[node], false),
            // Not a mapping.
            format!("[1, 2]\n---\n{a}"),
            // A repeated key.
            format!("{a}kind: Service\n"),
        ];
        for text in &unsure {
            assert!(
                one_pass::load(text, yaml_options(text)).is_err(),
                "the fast read should leave this to the careful one:\n{text}"
            );
            // The public entry point still answers as the careful read does.
            let careful = load_yaml_careful(text, "t.yaml").map(|i| i.services);
            let public = load_str(text, "t.yaml").map(|i| i.services);
            assert_eq!(
                careful.as_ref().map_err(ToString::to_string),
                public.as_ref().map_err(ToString::to_string)
            );
        }
    }

    /// A list item: `doc` as a column-0 block sequence entry.
    fn as_item(doc: &str) -> String {
        doc.lines()
            .enumerate()
            .map(|(i, l)| format!("{}{l}\n", if i == 0 { "- " } else { "  " }))
            .collect()
    }

    fn service_doc(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: ns\n\
             spec:\n  clusterIP: 10.96.0.1\n  ports:\n  - port: 80\n    targetPort: http\n"
        )
    }

    fn slice_doc(name: &str) -> String {
        format!(
            "addressType: IPv4\napiVersion: discovery.k8s.io/v1\nendpoints:\n\
             - addresses: [10.0.0.1]\n  conditions: {{ready: true}}\n  nodeName: n1\n\
             kind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: ns\n  labels: \
             {{kubernetes.io/service-name: {name}}}\nports: [{{name: http, port: 8080}}]\n"
        )
    }

    /// The parallel read returns what the whole read does (every object, in order), or
    /// nothing, however the items are cut.
    #[test]
    fn the_parallel_read_agrees_with_the_whole_read() {
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
                    status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}\n";
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        let mut mixed = vec![node.to_owned(), deployment.to_owned()];
        for i in 0..6 {
            mixed.push(service_doc(&format!("s{i}")));
            mixed.push(slice_doc(&format!("s{i}")));
        }
        let items = |docs: &[String]| docs.iter().map(|d| as_item(d)).collect::<String>();
        let services: Vec<String> = (0..5).map(|i| service_doc(&format!("t{i}"))).collect();
        // A Service item that does not name its kind: a ServiceList's item all the same.
        let kindless = "apiVersion: v1\nmetadata: {name: k, namespace: ns}\n\
                        spec: {clusterIP: 10.96.0.9}\n";
        let agreeing = [
            // kubectl's order: items between apiVersion and kind.
            format!(
                "apiVersion: v1\nitems:\n{}kind: List\nmetadata:\n  resourceVersion: \"\"\n",
                items(&mixed)
            ),
            format!(
                "apiVersion: v1\nkind: List\nmetadata: {{}}\nitems:\n{}",
                items(&mixed)
            ),
            // Comments and blank lines between items.
            format!(
                "apiVersion: v1\nkind: List\nitems:\n# first\n{}\n# more\n\n{}",
                items(&mixed[..3]),
                items(&mixed[3..])
            ),
            format!(
                "apiVersion: v1\nitems:\n{}kind: ServiceList\n",
                items(&services)
            ),
            format!(
                "apiVersion: v1\nkind: ServiceList\nitems:\n{}{}",
                items(&services),
                as_item(kindless)
            ),
        ];
        for text in &agreeing {
            let whole = load_yaml_careful(text, "t.yaml").expect("the whole read loads it");
            assert!(whole.services.len() >= 5, "{text}");
            for parts in 2..=4 {
                let parallel = load_yaml_parallel(text, parts)
                    .unwrap_or_else(|| panic!("not read in {parts} parts:\n{text}"));
                assert_eq!(parallel.services, whole.services, "{parts} parts:\n{text}");
                assert_eq!(parallel.endpoint_slices, whole.endpoint_slices, "{text}");
                assert_eq!(parallel.nodes, whole.nodes, "{text}");
            }
        }

        // Left to the whole read: what a run cannot read alone, and cuts that do not fall
        // between items.
        let svc = |i: usize| as_item(&service_doc(&format!("u{i}")));
        let declined = [
            // An alias to an anchor in another run, and to one before the items.
            format!(
                "kind: List\napiVersion: v1\nitems:\n- &a\n{}{}{}- *a\n",
                &svc(0)[2..],
                svc(1),
                svc(2)
            ),
            format!(
                "apiVersion: v1\nkind: List\nx: &ns ns\nitems:\n{}{}- apiVersion: v1\n  \
                 kind: Service\n  metadata: {{name: z, namespace: *ns}}\n",
                svc(0),
                svc(1)
            ),
            // A typed list's item of another kind; an item that is no object.
            format!(
                "apiVersion: v1\nkind: ServiceList\nitems:\n{}{}",
                svc(0),
                as_item(node)
            ),
            format!(
                "apiVersion: v1\nkind: List\nitems:\n{}- just text\n",
                svc(0)
            ),
            // A quoted scalar whose second line sits at column 0 and looks like an item (the
            // whole read takes it as `x - y`): the only place to cut, inside the string.
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  \
             metadata:\n    name: q\n    annotations:\n      a: \"x\n- y\"\n"
                .to_owned(),
            // Not a list.
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nitems:\n{}{}",
                svc(0),
                svc(1)
            ),
        ];
        for text in &declined {
            assert!(
                load_yaml_parallel(text, 2).is_none(),
                "should be left to the whole read:\n{text}"
            );
            // The public entry point still answers as the whole read does.
            let whole = load_yaml_careful(text, "t.yaml").map(|i| i.services);
            let public = load_str(text, "t.yaml").map(|i| i.services);
            assert_eq!(
                whole.as_ref().map_err(ToString::to_string),
                public.as_ref().map_err(ToString::to_string),
                "{text}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever the list holds and however its lines are disturbed at column 0 (where the
        /// cut looks), the parallel read gives the whole read's objects, or declines.
        #[test]
        fn the_parallel_read_never_differs_from_the_whole_read(
            picks in proptest::collection::vec(0usize..16, 2..10),
            items_first in proptest::bool::ANY,
            typed in proptest::bool::ANY,
            inserts in proptest::collection::vec((0usize..400, 0usize..8), 0..2),
            parts in 2usize..5,
        ) {
            let pool = [
                service_doc("a"),
                slice_doc("a"),
                service_doc("b"),
                "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n".to_owned(),
                "apiVersion: v1\nmetadata: {name: k, namespace: ns}\nspec: {clusterIP: 10.96.0.9}\n"
                    .to_owned(),
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: q\n  namespace: ns\n  \
                 annotations:\n    a: \"x\n- y\"\nspec: {clusterIP: 10.96.0.7}\n"
                    .to_owned(),
                "apiVersion: v1\nkind: Service\nmetadata: &m {name: m, namespace: ns}\n".to_owned(),
                "apiVersion: v1\nkind: Service\nmetadata: *m\n".to_owned(),
            ];
            // Most items are ordinary objects; the pool's odd ones come up now and then.
            let ordinary = |i: usize| {
                if i.is_multiple_of(2) {
                    service_doc(&format!("o{i}"))
                } else {
                    slice_doc(&format!("o{i}"))
                }
            };
            let body: String = picks
                .iter()
                .map(|&i| as_item(pool.get(i).cloned().unwrap_or_else(|| ordinary(i)).as_str()))
                .collect();
            let kind = if typed { "ServiceList" } else { "List" };
            let mut text = if items_first {
                format!("apiVersion: v1\nitems:\n{body}kind: {kind}\nmetadata: {{}}\n")
            } else {
                format!("apiVersion: v1\nkind: {kind}\nitems:\n{body}")
            };
            // Lines dropped in at column 0 (at line starts), the cut's landmarks among them.
            let lines = [
                "- apiVersion: v1\n",
                "-\n",
                "# c\n",
                "\n",
                "items:\n",
                "kind: List\n",
                "- \"open\n",
                "  x: 1\n",
            ];
            for &(at, line) in &inserts {
                let starts: Vec<usize> = std::iter::once(0)
                    .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                    .filter(|&i| i < text.len())
                    .collect();
                let at = starts[at % starts.len()];
                text.insert_str(at, lines[line]);
            }
            if let Some(parallel) = load_yaml_parallel(&text, parts) {
                let whole = load_yaml_careful(&text, "t.yaml");
                proptest::prop_assert!(
                    whole.is_ok(),
                    "the whole read fails, the parallel one not:\n{}",
                    text
                );
                let whole = whole.expect("checked");
                proptest::prop_assert_eq!(&parallel.services, &whole.services, "{}", text);
                proptest::prop_assert_eq!(&parallel.endpoint_slices, &whole.endpoint_slices);
                proptest::prop_assert_eq!(&parallel.nodes, &whole.nodes);
            }
        }
    }

    /// JSON under a YAML name (or on standard input) is read as JSON: the same objects; and
    /// JSON's nesting limit (128) applies, not YAML's (64), which shows the reader used.
    #[test]
    fn json_text_under_a_yaml_name_is_read_as_json() {
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}
        });
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [service]});
        let text = format!("\n  {}", serde_json::to_string_pretty(&list).expect("json"));
        let as_json = load_str(&text, "x.json").expect("JSON");
        let as_yaml = load_str(&text, "x.yaml").expect("read as JSON");
        assert_eq!(as_yaml.services, as_json.services);
        assert_eq!(as_yaml.services.len(), 1);
        assert_eq!(
            load_str(&text, STDIN_PATH).expect("stdin").services,
            as_json.services
        );

        let deep = format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {{\"name\": \"n\"}}, \
             \"x\": {}1{}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(
            load_str(&deep, "deep.yaml")
                .expect("JSON's limit")
                .nodes
                .len(),
            1
        );
        let err = load_yaml_careful(&deep, "deep.yaml")
            .expect_err("YAML's limit")
            .to_string();
        assert!(err.contains("nested deeper than 64"), "{err}");

        // What the JSON reader refuses is read as YAML, whose error is reported.
        let broken =
            "{\"apiVersion\": \"v1\", \"kind\": \"Service\",\n \"metadata\": {\"name\": \"a\"";
        let err = load_str(broken, "b.yaml").expect_err("broken").to_string();
        let yaml_err = load_yaml_careful(broken, "b.yaml")
            .expect_err("broken")
            .to_string();
        assert_eq!(err, yaml_err);
        assert!(looks_like_json("\u{feff}\r\n {}") && !looks_like_json("kind: List\n{"));
    }

    /// A list large enough to be read in parallel where this machine has two CPUs or more:
    /// the public entry point returns the whole read's objects.
    #[test]
    fn a_large_list_loads_as_the_whole_read_does() {
        let mut text = String::from("apiVersion: v1\nitems:\n");
        let mut count = 0;
        while text.len() < 2 * MIN_PARALLEL_RUN_BYTES + 4096 {
            text.push_str(&as_item(&service_doc(&format!("s{count}"))));
            text.push_str(&as_item(&slice_doc(&format!("s{count}"))));
            count += 1;
        }
        text.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
        let loaded = load_str(&text, "big.yaml").expect("loads");
        let whole = load_yaml_careful(&text, "big.yaml").expect("loads");
        assert_eq!(loaded.services.len(), count);
        assert_eq!(loaded.services, whole.services);
        assert_eq!(loaded.endpoint_slices, whole.endpoint_slices);
        let parallel = load_yaml_parallel(&text, 3).expect("read in three parts");
        assert_eq!(parallel.services, whole.services);
        assert_eq!(parallel.endpoint_slices, whole.endpoint_slices);

        // A bad object in the last run: the whole read's error, at the line of the value.
        let last = format!("name: s{}\n", count - 1);
        let at = text.rfind(&last).expect("the last Service");
        let port = at + text[at..].find("port: 80\n").expect("its port");
        let bad = format!("{}port: eighty\n{}", &text[..port], &text[port + 9..]);
        let err = load_str(&bad, "big.yaml")
            .expect_err("a bad port")
            .to_string();
        let line = bad[..port].matches('\n').count() + 1;
        assert!(
            err.starts_with(&format!("big.yaml:{line}:"))
                && err.contains(&format!("Service ns/s{}: spec.ports[0].port", count - 1)),
            "{err}"
        );
    }

    /// A list as `kubectl get -o yaml` prints it (block style throughout).
    fn kubectl_list(services: usize) -> String {
        let mut text = String::from(
            "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata:\n    \
             name: n1\n    labels:\n      topology.kubernetes.io/zone: zone-a\n  status:\n    \
             addresses:\n    - address: 192.0.2.10\n      type: InternalIP\n\
             - apiVersion: apps/v1\n  kind: Deployment\n  metadata:\n    name: d\n    \
             annotations:\n      kubectl.kubernetes.io/last-applied-configuration: |\n        \
             {\"kind\":\"Deployment\"}\n  spec:\n    replicas: 2\n",
        );
        for i in 0..services {
            text.push_str(&format!(
                "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: s{i}\n    \
                 namespace: ns\n    uid: 00000000-0000-4000-8000-{i:012x}\n    \
                 resourceVersion: \"{i}\"\n    annotations:\n      note: 'it''s s{i}'\n  \
                 spec:\n    clusterIP: 10.96.{}.{}\n    clusterIPs:\n    - 10.96.{}.{}\n    \
                 internalTrafficPolicy: Cluster\n    ports:\n    - name: http\n      \
                 port: 80\n      protocol: TCP\n      targetPort: 8080\n    - name: named\n      \
                 port: 81\n      targetPort: web\n    sessionAffinity: None\n    type: ClusterIP\n  \
                 status:\n    loadBalancer: {{}}\n\
                 - addressType: IPv4\n  apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  \
                 endpoints:\n  - addresses:\n    - 10.1.{}.{}\n    conditions:\n      \
                 ready: true\n      serving: true\n      terminating: false\n    nodeName: n1\n    \
                 zone: zone-a\n  - addresses:\n    - 10.2.{}.{}\n    conditions:\n      \
                 ready: false\n    nodeName: n2\n  metadata:\n    labels:\n      \
                 kubernetes.io/service-name: s{i}\n    name: s{i}-x\n    namespace: ns\n  \
                 ports:\n  - name: http\n    port: 8080\n    protocol: TCP\n  - name: named\n    \
                 port: 8081\n",
                i / 256, i % 256, i / 256, i % 256, i / 256, i % 256, i / 256, i % 256,
            ));
        }
        text.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
        text
    }

    /// kubectl's YAML is read through its JSON rewrite, to the objects the YAML reads give; an
    /// error in it is still the YAML reader's, at its line.
    #[test]
    fn kubectl_yaml_is_read_through_json_as_the_yaml_reads_read_it() {
        let text = kubectl_list(40);
        let json = block_json::to_json(&text).expect("kubectl's YAML is in the subset");
        let rewritten = load_json(&json, "k.yaml").expect("the rewrite loads");
        let careful = load_yaml_careful(&text, "k.yaml").expect("the YAML loads");
        assert_eq!(rewritten.services.len(), 40);
        assert_eq!(rewritten.services, careful.services);
        assert_eq!(rewritten.endpoint_slices, careful.endpoint_slices);
        assert_eq!(rewritten.nodes, careful.nodes);
        let public = load_str(&text, "k.yaml").expect("loads");
        assert_eq!(public.services, careful.services);
        assert_eq!(public.endpoint_slices, careful.endpoint_slices);

        for (runs, threads) in [(2, 1), (3, 2), (7, 3), (40, 2)] {
            let read = load_runs_rewritten(&text, runs, threads)
                .unwrap_or_else(|| panic!("not read in {runs} runs on {threads} threads"));
            assert_eq!(read.services, careful.services, "{runs} runs");
            assert_eq!(read.endpoint_slices, careful.endpoint_slices, "{runs} runs");
            assert_eq!(read.nodes, careful.nodes, "{runs} runs");
        }
        // A run outside the subset (an anchor) leaves the list to the reads after.
        let anchored = text.replacen("  kind: Deployment\n", "  kind: &k Deployment\n", 1);
        assert!(load_runs_rewritten(&anchored, 3, 2).is_none());
        assert_eq!(
            load_str(&anchored, "k.yaml").expect("loads").services,
            careful.services
        );

        // A port the JSON reader refuses (a string) but the YAML reader takes: read as YAML,
        // the same objects. One neither takes: the YAML reader's error, at its line.
        let at = text.find("    name: s39\n").expect("the last Service");
        let port = at + text[at..].find("port: 80\n").expect("its port");
        let with = |value: &str| format!("{}port: {value}\n{}", &text[..port], &text[port + 9..]);
        let quoted = with("\"80\"");
        assert!(
            load_json(
                &block_json::to_json(&quoted).expect("in the subset"),
                "k.yaml"
            )
            .is_err()
        );
        assert_eq!(
            load_str(&quoted, "k.yaml").expect("loads").services,
            careful.services
        );
        let broken = with("eighty");
        let err = load_str(&broken, "k.yaml")
            .expect_err("a bad port")
            .to_string();
        let line = broken[..port].matches('\n').count() + 1;
        assert!(
            err.starts_with(&format!("k.yaml:{line}:"))
                && err.contains("Service ns/s39: spec.ports[0].port"),
            "{err}"
        );
    }

    #[test]
    fn object_errors_name_the_field() {
        let text = node_with("spec: {podCIDRs: 5}\n");
        let err = load_str(&text, "n.yaml")
            .expect_err("not a list")
            .to_string();
        assert!(err.starts_with("n.yaml:4:"), "{err}");
        assert!(err.contains("Node n1: spec.podCIDRs: "), "{err}");
    }
}
