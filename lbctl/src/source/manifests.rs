//! Cluster objects from manifest files: what `kubectl get svc,endpointslices,nodes -A -o yaml`
//! (or `-o json`) prints, or hand-written YAML.
//!
//! Files or directories (every `*.yaml`, `*.yml` and `*.json` file in it, sorted by name, not
//! recursive, hidden files skipped); multi-document YAML; `kind: List` (items of other kinds
//! are ignored) and the typed `ServiceList`, `EndpointSliceList`, `NodeList`. Objects of other
//! kinds (Pod, Deployment, a Knative `Service`...) and documents that are not objects are
//! ignored. Loading is stateless: call [`load_paths`] again whenever a file changes.
//!
//! Each file is read twice: once as a generic YAML/JSON value (syntax errors, and which kind each
//! object is), then once more straight into the typed objects, so that an object that does not
//! deserialize is reported with the line and column of the offending field.
use std::{
    fmt,
    io::Read,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::{
    Deserialize, Deserializer,
    de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use serde_yaml::{Mapping, Value};

use super::yaml_budget;
use crate::model::Inventory;

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
        let loaded = load_str(&text, &origin)?;
        inventory.services.extend(loaded.services);
        inventory.endpoint_slices.extend(loaded.endpoint_slices);
        inventory.nodes.extend(loaded.nodes);
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
        let hidden = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_none_or(|name| name.starts_with('.'));
        let manifest = path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| MANIFEST_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()));
        if !hidden && manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
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
/// in `.json` (YAML otherwise).
pub fn load_str(text: &str, origin: &str) -> Result<Inventory, ManifestError> {
    match Format::of(origin) {
        Format::Yaml => load_yaml(text, origin),
        Format::Json => load_json(text, origin),
    }
}

fn load_yaml(text: &str, origin: &str) -> Result<Inventory, ManifestError> {
    // Refuse documents that expand to absurd sizes, or nest absurdly deep, before parsing them.
    if let Some(line) = yaml_budget::too_deep(text) {
        return Err(syntax_error(
            origin,
            Format::Yaml,
            (Some(line), None),
            &format!(
                "flow collections nested deeper than {}; refused",
                yaml_budget::MAX_FLOW_DEPTH
            ),
        ));
    }
    for document in serde_yaml::Deserializer::from_str(text) {
        let mut budget = yaml_budget::budget_for(text.len());
        yaml_budget::NodeBudget(&mut budget)
            .deserialize(document)
            .map_err(|e| syntax_error(origin, Format::Yaml, yaml_position(&e), &e))?;
    }
    let mut shapes = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document)
            .map_err(|e| syntax_error(origin, Format::Yaml, yaml_position(&e), &e))?;
        shapes.push(DocShape::of(&value));
    }
    let mut collected = Collected::default();
    for (document, shape) in serde_yaml::Deserializer::from_str(text).zip(&shapes) {
        DocSeed {
            shape,
            out: &mut collected,
        }
        .deserialize(document)
        .map_err(|e| collected.object_error(shape, origin, yaml_position(&e), &e))?;
    }
    Ok(collected.inventory)
}

fn load_json(text: &str, origin: &str) -> Result<Inventory, ManifestError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| syntax_error(origin, Format::Json, json_position(&e), &e))?;
    let value = serde_yaml::to_value(value)
        .map_err(|e| syntax_error(origin, Format::Json, (None, None), &e))?;
    let shape = DocShape::of(&value);
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

type Position = (Option<usize>, Option<usize>);

fn yaml_position(error: &serde_yaml::Error) -> Position {
    error
        .location()
        .map_or((None, None), |at| (Some(at.line()), Some(at.column())))
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
enum KnownKind {
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
    fn of(kind: KnownKind, object: Option<&Mapping>) -> Self {
        Header {
            kind,
            name: display_name(object),
        }
    }
}

fn display_name(object: Option<&Mapping>) -> String {
    let metadata = object
        .and_then(|o| o.get("metadata"))
        .and_then(Value::as_mapping);
    let field = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_owned(),
        (_, None) => "<unnamed>".to_owned(),
    }
}

fn str_field<'a>(object: &'a Mapping, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
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
    fn of(document: &Value) -> Self {
        let Some(object) = document.as_mapping() else {
            return DocShape::Ignored;
        };
        let api_version = str_field(object, "apiVersion");
        let kind = str_field(object, "kind");
        if let Some(known) = KnownKind::of(api_version, kind) {
            return DocShape::Object(Header::of(known, Some(object)));
        }
        let Some(item_kind) = KnownKind::of_list(api_version, kind) else {
            return DocShape::Ignored;
        };
        let items = object
            .get("items")
            .and_then(Value::as_sequence)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let items = items
            .iter()
            .map(|item| {
                let item_object = item.as_mapping();
                let kind = match item_kind {
                    Some(kind) => Some(kind),
                    None => item_object.and_then(|o| {
                        KnownKind::of(str_field(o, "apiVersion"), str_field(o, "kind"))
                    }),
                };
                kind.map(|kind| Header::of(kind, item_object))
            })
            .collect();
        DocShape::List {
            list: ListHeader {
                kind: kind.unwrap_or_default().to_owned(),
                name: display_name(Some(object)),
            },
            items,
        }
    }
}

/// The objects read so far, and which list item is being read (to name it in errors).
#[derive(Debug, Default)]
struct Collected {
    inventory: Inventory,
    current_item: Option<usize>,
}

impl Collected {
    fn push<'de, D: Deserializer<'de>>(
        &mut self,
        kind: KnownKind,
        deserializer: D,
    ) -> Result<(), D::Error> {
        match kind {
            KnownKind::Service => self
                .inventory
                .services
                .push(Service::deserialize(deserializer)?),
            KnownKind::EndpointSlice => self
                .inventory
                .endpoint_slices
                .push(EndpointSlice::deserialize(deserializer)?),
            KnownKind::Node => self.inventory.nodes.push(Node::deserialize(deserializer)?),
        }
        Ok(())
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
            message: error.to_string(),
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
