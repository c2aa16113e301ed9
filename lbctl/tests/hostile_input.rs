//! Hostile and absurd input: the loader and the engine must never panic, never blow up, report
//! what they cannot use (naming the file and line, or the object in `plan.skipped`), and leave
//! every other service exactly as it would be without the bad one. Pure: no kernel.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lbctl::{
    engine::{NodeContext, plan},
    model::Inventory,
    plan::{Frontend, FrontendKind, Plan},
    source::manifests::{ManifestError, load_paths, load_str},
};
use proptest::{collection::vec, prelude::*, sample::select};

#[path = "../../fuzz/src/invariants.rs"]
mod invariants;

const NODE: &str = "n1";

fn node() -> NodeContext {
    NodeContext::new(NODE)
}

fn load(text: &str) -> Inventory {
    load_str(text, "hostile.yaml").unwrap_or_else(|e| panic!("does not load: {e}"))
}

/// Plans `text` for [`NODE`] and checks every invariant of the plan.
fn plan_checked(text: &str) -> Plan {
    let inventory = load(text);
    let node = node();
    let plan = plan(&inventory, &node);
    if let Err(e) = invariants::check_plan(&inventory, &node, &plan)
        .and_then(|()| invariants::check_order_independent(&inventory, &node, &plan))
    {
        panic!("{e}");
    }
    plan
}

fn service(name: &str, created: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n  \
         creationTimestamp: \"{created}\"\nspec:\n{spec}"
    )
}

/// A ClusterIP Service with one TCP port named http.
fn web(name: &str, created: &str, cluster_ip: &str, port: &str) -> String {
    service(
        name,
        created,
        &format!("  clusterIP: \"{cluster_ip}\"\n  ports:\n  - name: http\n    port: {port}\n"),
    )
}

/// An IPv4 slice of `service` with port `http` = `port` and `endpoints` (block YAML items).
fn slice(name: &str, service: &str, port: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\n\
         addressType: IPv4\nports:\n- name: http\n  port: {port}\n  protocol: TCP\n\
         endpoints:\n{endpoints}"
    )
}

fn endpoint(address: &str, node: &str) -> String {
    format!("- addresses: [\"{address}\"]\n  nodeName: {node}\n  conditions: {{ready: true}}\n")
}

/// A healthy Service that must come out the same whatever else is in the input.
fn bystander() -> String {
    [
        web("bystander", "2024-01-01T00:00:00Z", "10.96.0.200", "80"),
        slice(
            "bystander-1",
            "bystander",
            "8080",
            &[endpoint("10.244.9.1", NODE), endpoint("10.244.9.2", "n2")].concat(),
        ),
    ]
    .join("---\n")
}

fn frontends_of<'a>(plan: &'a Plan, service: &str) -> Vec<&'a Frontend> {
    plan.frontends
        .iter()
        .filter(|f| &*f.service.name == service)
        .collect()
}

/// Plans `hostile` next to the bystander and checks the bystander's frontends are exactly those
/// of a plan without `hostile`; returns the plan.
fn plan_beside_bystander(hostile: &str) -> Plan {
    let alone = plan_checked(&bystander());
    let together = plan_checked(&format!("{}\n---\n{hostile}", bystander()));
    assert_eq!(
        frontends_of(&together, "bystander"),
        frontends_of(&alone, "bystander"),
        "the hostile input changed another service"
    );
    assert!(!frontends_of(&together, "bystander").is_empty());
    together
}

fn skipped_for<'a>(plan: &'a Plan, object: &str) -> Vec<&'a str> {
    plan.skipped
        .iter()
        .filter(|s| s.object == object)
        .map(|s| s.reason.as_str())
        .collect()
}

fn assert_skipped(plan: &Plan, object: &str, reason_part: &str) {
    let reasons = skipped_for(plan, object);
    assert!(
        reasons.iter().any(|r| r.contains(reason_part)),
        "no skipped entry for {object} containing {reason_part:?}; skipped: {:#?}",
        plan.skipped
    );
}

fn position(e: &ManifestError) -> (String, Option<usize>) {
    let at = e.position().unwrap_or_else(|| panic!("no position in {e}"));
    (at.origin.clone(), at.line)
}

// ---------------------------------------------------------------------------------------------
// Malformed files

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let cases: [(&str, usize); 5] = [
        // A key indented out of its mapping.
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n spec: {}\n",
            5,
        ),
        // An unclosed flow sequence: named where it opens.
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [1, 2\n",
            6,
        ),
        // A tab used for indentation.
        ("apiVersion: v1\nkind: Node\nmetadata:\n\tname: n1\n", 4),
        // Broken in the third document only (its unclosed `[`).
        (
            "kind: Pod\n---\napiVersion: v1\nkind: Node\n---\nkey: [\n---\n",
            6,
        ),
        // An alias to an anchor that does not exist.
        ("apiVersion: v1\nkind: Node\nmetadata: *nowhere\n", 3),
    ];
    for (text, line) in cases {
        let e = load_str(text, "broken.yaml").expect_err(text);
        assert!(
            matches!(e, ManifestError::Syntax { .. }),
            "{text:?}: not a syntax error: {e}"
        );
        assert_eq!(
            position(&e),
            ("broken.yaml".to_owned(), Some(line)),
            "{text:?}: {e}"
        );
        assert!(e.to_string().starts_with("broken.yaml:"), "{e}");
    }
}

#[test]
fn malformed_json_names_the_file_and_line() {
    let e = load_str(
        "{\n  \"kind\": \"Service\",\n  \"apiVersion\": v1\n}\n",
        "c.json",
    )
    .expect_err("invalid JSON");
    assert_eq!(position(&e), ("c.json".to_owned(), Some(3)), "{e}");
}

#[test]
fn a_broken_file_among_good_ones_is_named_by_path() {
    let dir = std::env::temp_dir().join(format!("lbctl-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("a-good.yaml"), bystander()).expect("write");
    std::fs::write(dir.join("b-bad.yaml"), "apiVersion: v1\nkind: [\n").expect("write");
    let e = load_paths(std::slice::from_ref(&dir)).expect_err("the bad file fails the load");
    let (origin, line) = position(&e);
    assert!(origin.ends_with("b-bad.yaml"), "{e}");
    // The unclosed `[`.
    assert_eq!(line, Some(2), "{e}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_number_too_big_for_its_field_names_the_object_and_line() {
    let text = web("big", "2024-01-01T00:00:00Z", "10.96.0.1", "99999999999");
    let e = load_str(&text, "big.yaml").expect_err("port does not fit an int32");
    match &e {
        ManifestError::Object { kind, name, .. } => {
            assert_eq!((kind.as_str(), name.as_str()), ("Service", "default/big"));
        }
        other => panic!("not an object error: {other}"),
    }
    assert_eq!(position(&e), ("big.yaml".to_owned(), Some(11)), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Size

/// `count` endpoints 10.(1+i/65536).x.y, every other one on this node.
fn many_endpoints(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let address = format!("10.{}.{}.{}", 1 + i / 65_536, (i / 256) % 256, i % 256);
            endpoint(&address, if i % 2 == 0 { NODE } else { "n2" })
        })
        .collect()
}

#[test]
fn ten_thousand_endpoints_in_one_slice_are_planned_once_each_and_fast() {
    let endpoints = many_endpoints(10_000);
    let local_spec = "  clusterIP: \"10.96.0.2\"\n  internalTrafficPolicy: Local\n  ports:\n  - name: http\n    port: 80\n";
    let text = [
        web("big", "2024-01-01T00:00:00Z", "10.96.0.1", "80"),
        slice("big-1", "big", "8080", &endpoints.concat()),
        service("big-local", "2024-01-01T00:00:00Z", local_spec),
        slice("big-local-1", "big-local", "8080", &endpoints.concat()),
    ]
    .join("---\n");
    let started = Instant::now();
    let inventory = load(&text);
    let plan = plan(&inventory, &node());
    let took = started.elapsed();
    eprintln!("10,000 endpoints x 2 services: loaded and planned in {took:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");

    let big = frontends_of(&plan, "big");
    assert_eq!(big.len(), 1);
    assert_eq!(big[0].backends.len(), 10_000);
    assert!(big[0].backends.to_vec().windows(2).all(|p| p[0] < p[1]));
    let local = frontends_of(&plan, "big-local");
    assert_eq!(local[0].backends.len(), 5_000, "only this node's half");
    assert!(plan.skipped.is_empty(), "{:#?}", plan.skipped);
    invariants::check_plan(&inventory, &node(), &plan).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn endpoints_duplicated_across_slices_count_once() {
    let endpoints = many_endpoints(3_000);
    // The same 3,000 endpoints: split into 30 slices of 100, again as one slice of 3,000, and
    // the first 100 listed twice in a slice of their own.
    let mut docs = vec![web("dup", "2024-01-01T00:00:00Z", "10.96.0.1", "80")];
    for (i, chunk) in endpoints.chunks(100).enumerate() {
        docs.push(slice(&format!("dup-{i}"), "dup", "8080", &chunk.concat()));
    }
    docs.push(slice("dup-all", "dup", "8080", &endpoints.concat()));
    let twice = [endpoints[..100].concat(), endpoints[..100].concat()].concat();
    docs.push(slice("dup-twice", "dup", "8080", &twice));
    let plan = plan_beside_bystander(&docs.join("---\n"));
    let dup = frontends_of(&plan, "dup");
    assert_eq!(dup[0].backends.len(), 3_000);
    assert!(skipped_for(&plan, "Service default/dup").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Absurd values

#[test]
fn absurd_service_ports_are_skipped_and_named() {
    let ports = [
        "{name: zero, port: 0}",
        "{name: above, port: 65536}",
        "{name: negative, port: -80}",
        "{name: max, port: 2147483647}",
        "{name: min, port: -2147483648}",
        "{name: np-high, port: 81, nodePort: 99999}",
        "{name: np-zero, port: 82, nodePort: 0}",
        "{name: np-negative, port: 83, nodePort: -30000}",
        "{name: huge-target, port: 84, targetPort: 2147483647}",
        "{name: string-target, port: 85, targetPort: a-very-long-named-port-that-is-invalid}",
        "{name: http, port: 80, nodePort: 30080}",
    ];
    let spec = format!(
        "  type: NodePort\n  clusterIP: \"10.96.0.1\"\n  ports:\n{}",
        ports.map(|p| format!("  - {p}\n")).concat()
    );
    let this_node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
                     status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}\n";
    let hostile = [
        service("ports", "2024-02-01T00:00:00Z", &spec),
        this_node.to_owned(),
    ]
    .join("---\n");
    let plan = plan_beside_bystander(&hostile);
    let object = "Service default/ports";
    for name in ["zero", "above", "negative", "max", "min"] {
        assert_skipped(&plan, object, &format!("port {name:?}: port "));
    }
    for name in ["np-high", "np-zero", "np-negative"] {
        assert_skipped(&plan, object, &format!("port {name:?}: nodePort: "));
    }
    // Bad nodePorts cost the NodePort frontends only; target ports are never used (backend
    // ports come from the slices), however absurd.
    let mut planned: Vec<(FrontendKind, u16)> = frontends_of(&plan, "ports")
        .iter()
        .map(|f| (f.kind, f.port))
        .collect();
    planned.sort_unstable();
    let cluster_ip = |port| (FrontendKind::ClusterIP, port);
    assert_eq!(
        planned,
        [
            cluster_ip(80),
            cluster_ip(81),
            cluster_ip(82),
            cluster_ip(83),
            cluster_ip(84),
            cluster_ip(85),
            (FrontendKind::NodePort, 30080),
        ]
    );
}

#[test]
fn absurd_slice_ports_are_skipped_and_named() {
    let text = [
        web("sliced", "2024-02-01T00:00:00Z", "10.96.0.1", "80"),
        slice("sliced-zero", "sliced", "0", &endpoint("10.244.1.1", NODE)),
        slice(
            "sliced-high",
            "sliced",
            "70000",
            &endpoint("10.244.1.2", NODE),
        ),
        slice("sliced-neg", "sliced", "-1", &endpoint("10.244.1.3", NODE)),
        slice("sliced-ok", "sliced", "8080", &endpoint("10.244.1.4", NODE)),
    ]
    .join("---\n");
    let plan = plan_beside_bystander(&text);
    for name in ["sliced-zero", "sliced-high", "sliced-neg"] {
        assert_skipped(
            &plan,
            &format!("EndpointSlice default/{name}"),
            "out of range 1-65535",
        );
    }
    let sliced = frontends_of(&plan, "sliced");
    let expected: SocketAddr = "10.244.1.4:8080".parse().expect("address");
    assert_eq!(sliced[0].backends, [expected]);
}

#[test]
fn huge_names_and_strings_do_not_break_anything() {
    let long_name = "n".repeat(300);
    let huge = "x".repeat(64 * 1024);
    let huge_label = format!("l{}", "y".repeat(64 * 1024));
    let text = [
        web(&long_name, "2024-03-01T00:00:00Z", "10.96.0.1", "80"),
        slice("long-1", &long_name, "8080", &endpoint("10.244.1.1", NODE)),
        // A 64 KiB name, namespace label value and port name.
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {huge}\n  namespace: {huge}\n  \
             labels: {{k: {huge_label}}}\nspec:\n  clusterIP: 10.96.0.2\n  ports:\n  - name: {huge}\n    port: 80\n"
        ),
        // A 64 KiB "address".
        web("huge-ip", "2024-03-01T00:00:00Z", &huge, "80"),
        // A 64 KiB node name on an endpoint.
        slice("huge-node", "bystander-x", "8080", &endpoint("10.244.1.9", &huge)),
    ]
    .join("---\n");
    let plan = plan_beside_bystander(&text);
    assert_eq!(frontends_of(&plan, &long_name)[0].backends.len(), 1);
    assert_eq!(frontends_of(&plan, &huge).len(), 1);
    assert_skipped(&plan, "Service default/huge-ip", "invalid IP address");
}

// ---------------------------------------------------------------------------------------------
// YAML tricks

/// The classic "billion laughs": nine levels of nine aliases (10^9 strings once expanded) in a
/// few hundred bytes.
fn billion_laughs() -> String {
    let mut text = String::from("apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n");
    text.push_str("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..10 {
        let p = level - 1;
        text.push_str(&format!(
            "l{level}: &l{level} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"
        ));
    }
    text
}

#[test]
fn billion_laughs_is_refused_quickly() {
    let started = Instant::now();
    let e = load_str(&billion_laughs(), "laughs.yaml").expect_err("refused");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(e.to_string().starts_with("laughs.yaml"), "{e}");
    assert!(e.to_string().contains("repetition limit"), "{e}");
}

/// One anchored sequence of `n` scalars and a sequence of `n` aliases to it: n^2 values once
/// expanded, from about 6n bytes. Unbounded, n = 10,000 (a 60 KB file) takes about 7 GB and
/// over a minute to load (it did with serde_yaml, whose alias limit does not catch it).
fn quadratic_aliases(n: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\na: &a [{}]\nb: [{}]\n",
        "1,".repeat(n),
        "*a,".repeat(n)
    )
}

#[test]
fn quadratic_alias_expansion_is_refused_with_a_clear_error() {
    // 10,000 aliases to a 10,000-element anchor: ~60 KB of text, 10^8 nodes expanded.
    let err = load_str(&quadratic_aliases(10_000), "quad.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("quad.yaml") && err.contains("too many nodes"),
        "{err}"
    );
}

#[test]
fn small_anchors_and_aliases_still_work() {
    // Anchors live within one document: here, one List.
    let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: one, namespace: default}
  spec:
    clusterIP: 10.96.0.1
    ports: &ports
    - {name: http, port: 80}
- apiVersion: v1
  kind: Service
  metadata: {name: two, namespace: default}
  spec:
    clusterIP: 10.96.0.2
    ports: *ports
";
    let plan = plan_checked(text);
    assert_eq!(frontends_of(&plan, "one").len(), 1);
    assert_eq!(frontends_of(&plan, "two").len(), 1);
}

/// `depth` nested flow sequences.
fn deep_flow_yaml(depth: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let depth = 2_000;
    let block: String = (0..depth)
        .map(|i| format!("{}a:\n", " ".repeat(i)))
        .collect();
    let cases = [
        (deep_flow_yaml(depth), "deep.yaml"),
        (
            format!(
                "apiVersion: v1\nkind: Node\nx: {}1{}\n",
                "{a: ".repeat(depth),
                "}".repeat(depth)
            ),
            "deep.yaml",
        ),
        (
            format!("apiVersion: v1\nkind: Node\nx:\n{block}"),
            "deep.yaml",
        ),
        (
            format!(
                "{{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"x\": {}{}}}",
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            "deep.json",
        ),
    ];
    for (text, origin) in cases {
        let started = Instant::now();
        let e = load_str(&text, origin).expect_err("too deep");
        let took = started.elapsed();
        eprintln!("{origin}, {} bytes: refused in {took:?}: {e}", text.len());
        assert!(e.to_string().starts_with(origin), "{e}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
}

/// Deep flow nesting must be refused as the scanner meets it: libyaml (under serde_yaml, used
/// before) parsed a whole document first, quadratic in the depth (80 KB of `[` took 2 s in
/// release, 200 KB about 14 s).
#[test]
fn deep_flow_nesting_is_refused_before_parsing() {
    let err = load_str(&deep_flow_yaml(100_000), "deep.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("deep.yaml") && err.contains("nested deeper"),
        "{err}"
    );
}

#[test]
fn odd_yaml_never_panics_and_errors_name_the_file() {
    let cases = [
        // Tags, binary, merge keys, explicit document ends, a byte order mark, CRLF.
        "apiVersion: !!str v1\nkind: !custom Node\nmetadata: {name: n1}\n",
        "apiVersion: v1\nkind: Node\nmetadata: !!binary aGVsbG8=\n",
        "base: &b {name: web}\n---\napiVersion: v1\nkind: Node\nmetadata: {<<: {name: n1}}\n",
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n...\n---\n...\n",
        "\u{feff}apiVersion: v1\r\nkind: Node\r\nmetadata:\r\n  name: n1\r\n",
        // Keys that are not strings, duplicate keys, null and numeric documents.
        "? [a, b]\n: c\n{x: 1}: 2\n",
        "apiVersion: v1\nkind: Node\nkind: Node\nmetadata: {name: n1}\n",
        "~\n---\n42\n---\n- a\n- b\n",
        // Kinds in odd places.
        "apiVersion: v1\nkind: List\nitems: 7\n",
        "apiVersion: v1\nkind: List\nitems: [1, [2], {kind: Service}, {apiVersion: v1, kind: Service}]\n",
        "apiVersion: v1\nkind: ServiceList\nitems: {a: b}\n",
        "apiVersion: [v1]\nkind: {Service: 1}\n",
        "apiVersion: v1\nkind: Service\nmetadata: []\n",
        "apiVersion: v1\nkind: Service\nspec: {ports: {name: http}}\n",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nendpoints: 5\n",
        // Control characters and a NUL.
        "apiVersion: v1\nkind: Node\nmetadata: {name: \"n\\0\\u0007\"}\n",
        "apiVersion: v1\u{0}\nkind: Node\n",
        "",
        "---\n---\n---\n",
        "%YAML 1.2\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
        "%TAG ! tag:example.com,2000:\n---\n!x a: b\n",
    ];
    for text in cases {
        match load_str(text, "odd.yaml") {
            Ok(inventory) => {
                let node = node();
                let plan = plan(&inventory, &node);
                invariants::check_plan(&inventory, &node, &plan)
                    .unwrap_or_else(|e| panic!("{text:?}: {e}"));
            }
            Err(e) => assert!(e.to_string().starts_with("odd.yaml"), "{text:?}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conflicts

#[test]
fn a_service_claiming_another_services_cluster_ip_loses() {
    let owner = [
        web("owner", "2024-01-01T00:00:00Z", "10.96.0.10", "80"),
        slice("owner-1", "owner", "8080", &endpoint("10.244.1.1", NODE)),
    ]
    .join("---\n");
    let thieves = [
        // The same cluster IP and port, created later.
        web("thief", "2024-06-01T00:00:00Z", "10.96.0.10", "80"),
        slice("thief-1", "thief", "9090", &endpoint("10.244.6.6", NODE)),
        // The owner's cluster IP as an external IP (the CVE-2020-8554 pattern).
        service(
            "thief-external",
            "2024-06-02T00:00:00Z",
            "  clusterIP: 10.96.0.11\n  externalIPs: [10.96.0.10]\n  ports:\n  - name: http\n    port: 80\n",
        ),
        slice(
            "thief-external-1",
            "thief-external",
            "9090",
            &endpoint("10.244.6.7", NODE),
        ),
    ]
    .join("---\n");
    let alone = plan_checked(&owner);
    let plan = plan_beside_bystander(&format!("{owner}---\n{thieves}"));
    assert_eq!(frontends_of(&plan, "owner"), frontends_of(&alone, "owner"));
    assert!(frontends_of(&plan, "thief").is_empty());
    assert_skipped(
        &plan,
        "Service default/thief",
        "is already claimed by the ClusterIP frontend of Service default/owner",
    );
    assert_skipped(
        &plan,
        "Service default/thief-external",
        "ExternalIP 10.96.0.10:80/TCP is already claimed",
    );
    // Its own cluster IP is still planned.
    assert_eq!(frontends_of(&plan, "thief-external").len(), 1);

    // The newer Service listed first, or without a timestamp: the owner still wins.
    let reordered = plan_checked(&format!("{thieves}---\n{owner}"));
    assert_eq!(
        frontends_of(&reordered, "owner"),
        frontends_of(&alone, "owner")
    );
    let untimed = thieves.replace("  creationTimestamp: \"2024-06-01T00:00:00Z\"\n", "");
    let untimed_plan = plan_checked(&format!("{untimed}---\n{owner}"));
    assert_eq!(
        frontends_of(&untimed_plan, "owner"),
        frontends_of(&alone, "owner")
    );
}

// ---------------------------------------------------------------------------------------------
// Anything

/// YAML-ish lines: Kubernetes keys, addresses, numbers, flow and block syntax, anchors, tags.
fn yamlish_line() -> impl Strategy<Value = String> {
    let indent = select(vec!["", "  ", "    ", "- ", "  - ", "\t"]);
    let key = select(vec![
        "apiVersion: v1",
        "apiVersion: discovery.k8s.io/v1",
        "kind: Service",
        "kind: EndpointSlice",
        "kind: Node",
        "kind: List",
        "items:",
        "metadata:",
        "name: web",
        "namespace: default",
        "labels: {kubernetes.io/service-name: web}",
        "spec:",
        "clusterIP: 10.96.0.1",
        "clusterIPs: [10.96.0.1, fd00::1]",
        "externalIPs: [10.96.0.1]",
        "type: NodePort",
        "internalTrafficPolicy: Local",
        "ports:",
        "port: 80",
        "port: 0",
        "port: -1",
        "nodePort: 99999",
        "name: http",
        "protocol: UDP",
        "addressType: IPv4",
        "endpoints:",
        "addresses: [10.244.1.1]",
        "nodeName: n1",
        "conditions: {ready: false, serving: true, terminating: true}",
        "hints: {forZones: [{name: z1}]}",
        "status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}",
        "---",
        "&a",
        "*a",
        "<<: *a",
        "!!binary",
        "[",
        "]",
        "{",
        "}",
        "|",
        ">-",
        "? ",
        "\"",
        "'",
        "#",
        "%YAML 1.2",
    ]);
    (indent, key, any::<String>(), 0u8..8).prop_map(|(indent, key, noise, which)| {
        if which == 0 {
            format!("{indent}{noise}")
        } else {
            format!("{indent}{key}")
        }
    })
}

/// The scenario manifest with a few random edits: lines cut, duplicated or replaced, and runs
/// of up to 24 lines repeated (whole endpoints, ports, objects: duplicates the engine must merge).
fn mutated_example() -> impl Strategy<Value = String> {
    let example = include_str!("../../manifests/examples/quote.yaml");
    let lines: Vec<String> = example.lines().map(str::to_owned).collect();
    let count = lines.len();
    let edit = (0..count, 0u8..4, 1usize..25, yamlish_line());
    vec(edit, 1..6).prop_map(move |edits| {
        let mut lines = lines.clone();
        for (at, how, run, replacement) in edits {
            let at = at % lines.len().max(1);
            match how {
                0 => {
                    lines.remove(at);
                }
                1 => {
                    let copy = lines[at].clone();
                    lines.insert(at, copy);
                }
                2 => {
                    let end = (at + run).min(lines.len());
                    let copy: Vec<String> = lines[at..end].to_vec();
                    lines.splice(end..end, copy);
                }
                _ => lines[at] = replacement,
            }
            if lines.is_empty() {
                break;
            }
        }
        lines.join("\n")
    })
}

fn never_panics(text: &str) -> Result<(), TestCaseError> {
    for origin in ["any.yaml", "any.json"] {
        match load_str(text, origin) {
            Ok(inventory) => {
                let node = node();
                let plan = plan(&inventory, &node);
                invariants::check_plan(&inventory, &node, &plan)
                    .and_then(|()| invariants::check_order_independent(&inventory, &node, &plan))
                    .map_err(TestCaseError::fail)?;
            }
            Err(e) => prop_assert!(e.to_string().starts_with(origin), "{}", e),
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn yamlish_text_never_panics(lines in vec(yamlish_line(), 0..40)) {
        never_panics(&lines.join("\n"))?;
    }

    #[test]
    fn mutated_manifests_never_panic(text in mutated_example()) {
        never_panics(&text)?;
    }
}

#[test]
fn special_addresses_are_never_frontends() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: sneaky, namespace: default}
spec:
  clusterIP: 10.96.0.50
  externalIPs: [127.0.0.1, 0.0.0.0, 169.254.169.254, 224.0.0.1, '::1', 'fe80::1', 192.0.2.10]
  ports: [{name: http, port: 80}]
";
    let plan = plan_checked(text);
    let addresses: Vec<String> = frontends_of(&plan, "sneaky")
        .iter()
        .map(|f| f.address.to_string())
        .collect();
    assert_eq!(addresses, vec!["10.96.0.50", "192.0.2.10"], "{plan:#?}");
    for special in ["127.0.0.1", "0.0.0.0", "169.254.169.254", "224.0.0.1"] {
        assert!(
            plan.skipped
                .iter()
                .any(|s| s.object == "Service default/sneaky" && s.reason.contains(special)),
            "{special} not reported: {:?}",
            plan.skipped
        );
    }
}
