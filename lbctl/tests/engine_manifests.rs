//! Loading cluster objects from manifest files.
use std::{
    fs,
    path::{Path, PathBuf},
};

use lbctl::source::manifests::{ManifestError, load_paths, load_str, manifest_files};

/// The names of converted objects.
trait Named {
    fn name(&self) -> String;
}

impl Named for lbctl::model::Service {
    fn name(&self) -> String {
        self.name.as_deref().unwrap_or_default().to_owned()
    }
}

impl Named for lbctl::model::EndpointSlice {
    fn name(&self) -> String {
        self.name.to_string()
    }
}

impl Named for lbctl::model::Node {
    fn name(&self) -> String {
        self.name.as_deref().unwrap_or_default().to_owned()
    }
}

fn names<T: Named>(objects: &[std::sync::Arc<T>]) -> Vec<String> {
    objects.iter().map(|o| o.name()).collect()
}

const MULTI_DOC: &str = r#"# comment before the first document
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: ignored-pod
spec:
  containers: []
---
# an empty document
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: knative-is-not-core
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
endpoints:
- addresses: ["10.244.1.1"]
  nodeName: w1
ports:
- name: http
  port: 8080
---
apiVersion: v1
kind: Node
metadata:
  name: w1
---
just a string
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ignored-deployment
"#;

#[test]
fn multi_document_yaml_keeps_known_kinds_only() {
    let inventory = load_str(MULTI_DOC, "multi.yaml").expect("loads");
    assert_eq!(names(&inventory.services), ["web"]);
    assert_eq!(names(&inventory.endpoint_slices), ["web-abc12"]);
    assert_eq!(names(&inventory.nodes), ["w1"]);
    let slice = &inventory.endpoint_slices[0];
    assert_eq!(
        slice.endpoints.get(0).and_then(|ep| ep.ip()),
        Some("10.244.1.1".parse().unwrap())
    );
    assert_eq!(slice.endpoints.get(0).and_then(|ep| ep.node()), Some("w1"));
}

const LIST: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: quote-001
- apiVersion: v1
  kind: Service
  metadata:
    name: a
    namespace: default
  spec:
    clusterIP: 10.96.0.1
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints: []
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: a
    name: a-xyz
    namespace: default
- apiVersion: v1
  kind: Node
  metadata:
    name: n1
- apiVersion: v1
  kind: Service
  metadata:
    name: b
    namespace: default
kind: List
metadata:
  resourceVersion: ""
"#;

#[test]
fn kind_list_as_kubectl_prints_it() {
    let inventory = load_str(LIST, "list.yaml").expect("loads");
    assert_eq!(names(&inventory.services), ["a", "b"]);
    assert_eq!(names(&inventory.endpoint_slices), ["a-xyz"]);
    assert_eq!(names(&inventory.nodes), ["n1"]);
}

#[test]
fn typed_lists_with_items_that_omit_kind() {
    let text = r#"
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: s1, namespace: default}
  spec: {clusterIP: 10.96.0.1}
- metadata: {name: s2, namespace: default}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata: {name: e1, namespace: default}
  addressType: IPv4
  endpoints: []
---
apiVersion: v1
kind: NodeList
items:
- metadata: {name: n1}
- metadata: {name: n2}
"#;
    let inventory = load_str(text, "typed.yaml").expect("loads");
    assert_eq!(names(&inventory.services), ["s1", "s2"]);
    assert_eq!(names(&inventory.endpoint_slices), ["e1"]);
    assert_eq!(names(&inventory.nodes), ["n1", "n2"]);
}

#[test]
fn empty_list_and_empty_file() {
    let inventory = load_str("apiVersion: v1\nkind: List\nitems: []\n", "e.yaml").expect("loads");
    assert!(inventory.services.is_empty());
    let inventory = load_str("apiVersion: v1\nkind: List\nitems: null\n", "e.yaml").expect("loads");
    assert!(inventory.services.is_empty());
    let inventory = load_str("", "empty.yaml").expect("loads");
    assert!(inventory.services.is_empty() && inventory.nodes.is_empty());
}

#[test]
fn invalid_yaml_names_the_file_and_line() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n   namespace: bad-indent\n";
    let err = load_str(text, "broken.yaml").expect_err("invalid YAML");
    match &err {
        ManifestError::Syntax { at, .. } => {
            assert_eq!(at.origin, "broken.yaml");
            assert_eq!(at.line, Some(5), "{err}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert!(err.to_string().starts_with("broken.yaml:5:"), "{err}");
}

#[test]
fn invalid_yaml_in_a_later_document_names_its_line() {
    let text = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\nkind: [unclosed\n";
    let err = load_str(text, "later.yaml").expect_err("invalid YAML");
    let at = err.position().expect("has a position");
    // The unclosed `[`, counted from the start of the file.
    assert_eq!(at.line, Some(5), "{err}");
}

#[test]
fn object_that_does_not_deserialize_names_file_kind_name_and_line() {
    let text = r#"apiVersion: v1
kind: Node
metadata:
  name: fine
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  ports:
  - name: http
    port: eighty
"#;
    let err = load_str(text, "svc.yaml").expect_err("port is not a number");
    match &err {
        ManifestError::Object { at, kind, name, .. } => {
            assert_eq!(at.origin, "svc.yaml");
            assert_eq!(kind, "Service");
            assert_eq!(name, "shop/web");
            assert_eq!(at.line, Some(14), "{err}");
        }
        other => panic!("expected an object error, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.starts_with("svc.yaml:14:"), "{shown}");
    assert!(shown.contains("Service shop/web"), "{shown}");
}

#[test]
fn bad_item_of_a_list_is_named() {
    let text = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: good
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: bad-endpoints
    namespace: default
  addressType: IPv4
  endpoints: {oops: 1}
kind: List
"#;
    let err = load_str(text, "list.yaml").expect_err("endpoints must be a list");
    match &err {
        ManifestError::Object {
            at,
            kind,
            name,
            message,
        } => {
            assert_eq!(kind, "EndpointSlice");
            assert_eq!(name, "default/bad-endpoints");
            assert!(message.contains("endpoints"), "{message}");
            assert_eq!(at.line, Some(13), "{err}");
        }
        other => panic!("expected an object error, got {other:?}"),
    }
}

#[test]
fn json_files_are_read_as_json() {
    let text = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {"apiVersion": "v1", "kind": "Service",
     "metadata": {"name": "web", "namespace": "default"},
     "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}},
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
  ]
}"#;
    let inventory = load_str(text, "all.json").expect("loads");
    assert_eq!(names(&inventory.services), ["web"]);
    assert_eq!(names(&inventory.nodes), ["n1"]);

    let bad =
        "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Node\",\n  \"metadata\": {\"name\": 5}\n}";
    let err = load_str(bad, "bad.json").expect_err("name is not a string");
    assert_eq!(err.position().and_then(|at| at.line), Some(4), "{err}");
    assert!(err.to_string().contains("Node"), "{err}");

    let err = load_str(
        "{\"apiVersion\": \"v1\",\n\"kind\" \"Node\"}",
        "syntax.json",
    )
    .expect_err("syntax");
    assert!(err.to_string().starts_with("syntax.json:2:"), "{err}");
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("nested")).expect("create scratch dir");
    dir
}

#[test]
fn directories_load_manifest_files_sorted_not_recursive() {
    let dir = scratch_dir("manifests-dir");
    let svc = |name: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n")
    };
    fs::write(dir.join("20-b.yml"), svc("b")).expect("write");
    fs::write(dir.join("10-a.yaml"), svc("a")).expect("write");
    fs::write(
        dir.join("30-c.json"),
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c"}}"#,
    )
    .expect("write");
    fs::write(dir.join("README.md"), "not a manifest").expect("write");
    fs::write(dir.join(".hidden.yaml"), svc("hidden")).expect("write");
    fs::write(dir.join("nested").join("00-deep.yaml"), svc("deep")).expect("write");

    let files = manifest_files(std::slice::from_ref(&dir)).expect("lists");
    let file_names: Vec<_> = files
        .iter()
        .filter_map(|f| f.file_name()?.to_str().map(str::to_owned))
        .collect();
    assert_eq!(file_names, ["10-a.yaml", "20-b.yml", "30-c.json"]);

    let inventory =
        load_paths(&[dir.clone(), dir.join("nested").join("00-deep.yaml")]).expect("loads");
    assert_eq!(names(&inventory.services), ["a", "b", "c", "deep"]);
}

#[test]
fn errors_in_files_name_the_file() {
    let dir = scratch_dir("manifests-bad");
    let bad = dir.join("bad.yaml");
    fs::write(&bad, "apiVersion: v1\nkind: Node\nmetadata: {name: [\n").expect("write");
    let err = load_paths(std::slice::from_ref(&dir)).expect_err("invalid YAML");
    let shown = err.to_string();
    assert!(shown.starts_with(&bad.display().to_string()), "{shown}");
    assert!(err.position().and_then(|at| at.line).is_some(), "{shown}");

    let missing = dir.join("missing.yaml");
    let err = load_paths(std::slice::from_ref(&missing)).expect_err("missing file");
    assert!(matches!(err, ManifestError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.yaml"), "{err}");
}

#[test]
fn the_scenario_fixture_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/quote.yaml");
    let inventory = load_paths(&[path]).expect("fixture loads");
    assert_eq!(names(&inventory.nodes), ["kind-worker", "kind-worker2"]);
    assert_eq!(names(&inventory.services), ["quote", "quote-local"]);
    assert_eq!(
        names(&inventory.endpoint_slices),
        ["quote-x7k2p", "quote-local-5dq8m"]
    );
}
