//! Small builders of cluster objects (one-line YAML flow mappings) and plan summaries for the
//! engine tests.
#![allow(dead_code)]

use std::net::SocketAddr;

use lbctl::{
    engine::{NodeContext, plan},
    model::Inventory,
    plan::Plan,
    source::manifests::load_str,
};

pub const READY: &str = "conditions: {ready: true, serving: true, terminating: false}";
pub const NOT_READY: &str = "conditions: {ready: false, serving: false, terminating: false}";
/// Serving and terminating: the graceful-termination fallback.
pub const TERMINATING: &str = "conditions: {ready: false, serving: true, terminating: true}";
pub const TERMINATING_NOT_SERVING: &str =
    "conditions: {ready: false, serving: false, terminating: true}";
pub const NO_CONDITIONS: &str = "";

pub const HTTP_8080: &str = "{name: http, port: 8080, protocol: TCP}";

pub fn node(name: &str, zone: Option<&str>, addresses: &[(&str, &str)]) -> String {
    let labels = zone
        .map(|z| format!("labels: {{topology.kubernetes.io/zone: {z}}}, "))
        .unwrap_or_default();
    let addresses: Vec<String> = addresses
        .iter()
        .map(|(kind, ip)| format!("{{type: {kind}, address: \"{ip}\"}}"))
        .collect();
    format!(
        "{{apiVersion: v1, kind: Node, metadata: {{{labels}name: {name}}}, status: {{addresses: [{}]}}}}",
        addresses.join(", ")
    )
}

/// w1 (zone-a, 192.168.0.1) and w2 (zone-b, 192.168.0.2).
pub fn two_nodes() -> Vec<String> {
    vec![
        node("w1", Some("zone-a"), &[("InternalIP", "192.168.0.1")]),
        node("w2", Some("zone-b"), &[("InternalIP", "192.168.0.2")]),
    ]
}

/// A Service; `meta` is the inside of `metadata` (e.g. `name: web, namespace: default`), `spec`
/// and `status` the inside of theirs.
pub fn svc_doc(meta: &str, spec: &str, status: &str) -> String {
    format!(
        "{{apiVersion: v1, kind: Service, metadata: {{{meta}}}, spec: {{{spec}}}, status: {{{status}}}}}"
    )
}

/// A Service `default/NAME`.
pub fn svc(name: &str, spec: &str) -> String {
    svc_doc(&format!("name: {name}, namespace: default"), spec, "")
}

/// The usual ClusterIP Service: `default/NAME` on CLUSTER_IP:80 named http, plus `extra` spec.
pub fn web(name: &str, cluster_ip: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    svc(
        name,
        &format!(
            "clusterIP: \"{cluster_ip}\", ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]{extra}"
        ),
    )
}

pub fn slice_typed(
    name: &str,
    service: &str,
    address_type: &str,
    ports: &str,
    endpoints: &[String],
) -> String {
    format!(
        "{{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}, addressType: {address_type}, ports: [{ports}], endpoints: [{}]}}",
        endpoints.join(", ")
    )
}

/// An IPv4 EndpointSlice of `default/SERVICE`.
pub fn slice(name: &str, service: &str, ports: &str, endpoints: &[String]) -> String {
    slice_typed(name, service, "IPv4", ports, endpoints)
}

/// An endpoint; `extra` is more flow-mapping content (conditions, hints) or empty.
pub fn ep(address: &str, node: &str, extra: &str) -> String {
    let mut parts = vec![format!("addresses: [\"{address}\"]")];
    if !node.is_empty() {
        parts.push(format!("nodeName: {node}"));
    }
    if !extra.is_empty() {
        parts.push(extra.to_owned());
    }
    format!("{{{}}}", parts.join(", "))
}

pub fn zone_hints(zones: &[&str]) -> String {
    let zones: Vec<String> = zones.iter().map(|z| format!("{{name: {z}}}")).collect();
    format!("hints: {{forZones: [{}]}}", zones.join(", "))
}

pub fn node_hints(nodes: &[&str], zones: &[&str]) -> String {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("{{name: {n}}}")).collect();
    let zones: Vec<String> = zones.iter().map(|z| format!("{{name: {z}}}")).collect();
    format!(
        "hints: {{forNodes: [{}], forZones: [{}]}}",
        nodes.join(", "),
        zones.join(", ")
    )
}

pub fn with(conditions: &str, hints: &str) -> String {
    format!("{conditions}, {hints}")
}

pub fn inventory(docs: &[String]) -> Inventory {
    let text = docs.join("\n---\n");
    match load_str(&text, "test.yaml") {
        Ok(inventory) => inventory,
        Err(e) => panic!("test manifest does not load: {e}\n{text}"),
    }
}

pub fn plan_for(docs: &[String], node: NodeContext) -> Plan {
    plan(&inventory(docs), &node)
}

/// `default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080`, `-> refuse`
/// when empty, ` affinity=N` when set.
pub fn summary(plan: &Plan) -> Vec<String> {
    plan.frontends
        .iter()
        .map(|f| {
            let backends = if f.backends.is_empty() {
                "refuse".to_owned()
            } else {
                f.backends
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let affinity = f
                .affinity_timeout_seconds
                .map(|s| format!(" affinity={s}"))
                .unwrap_or_default();
            format!(
                "{} {} {}/{} -> {backends}{affinity}",
                f.service,
                f.kind,
                SocketAddr::new(f.address, f.port),
                f.protocol
            )
        })
        .collect()
}

/// `OBJECT: REASON` lines.
pub fn skipped(plan: &Plan) -> Vec<String> {
    plan.skipped
        .iter()
        .map(|s| format!("{}: {}", s.object, s.reason))
        .collect()
}

/// One table row: objects in, node, and what must come out. Rows state only what they are
/// about and take the rest from [`Case::default`]: the plan for w1, nothing skipped, no
/// warnings, no frontends.
pub struct Case<'a> {
    pub docs: Vec<String>,
    pub node: NodeContext,
    /// The whole plan, in order (see [`summary`]).
    pub frontends: &'a [&'a str],
    /// One substring per skipped entry, in the plan's (sorted) order; nothing else skipped.
    pub skipped: &'a [&'a str],
    /// One substring per warning, in order; no other warning.
    pub warnings: &'a [&'a str],
}

impl Default for Case<'_> {
    fn default() -> Self {
        Case {
            docs: Vec::new(),
            node: NodeContext::new("w1"),
            frontends: &[],
            skipped: &[],
            warnings: &[],
        }
    }
}

impl Case<'_> {
    pub fn check(self) -> Plan {
        let plan = plan_for(&self.docs, self.node.clone());
        let got = summary(&plan);
        assert_eq!(
            got, self.frontends,
            "frontends of the plan for {:?}",
            self.node
        );
        let got_skipped = skipped(&plan);
        assert_matches("skipped", &got_skipped, self.skipped);
        assert_matches("warnings", &plan.warnings, self.warnings);
        plan
    }
}

fn assert_matches(what: &str, got: &[String], expected: &[&str]) {
    let ok = got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|(line, want)| line.contains(want));
    assert!(
        ok,
        "{what}: expected entries containing {expected:#?}\ngot {got:#?}"
    );
}
