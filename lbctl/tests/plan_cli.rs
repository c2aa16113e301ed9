//! `lbctl plan --node NAME [--zone Z] [-o json|table] PATH...`: reads manifests, touches nothing.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

fn lbctl(args: &[&str]) -> Output {
    match Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(args)
        .output()
    {
        Ok(output) => output,
        Err(e) => panic!("cannot run lbctl: {e}"),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/examples/quote.yaml")
        .display()
        .to_string()
}

fn scratch(name: &str, content: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plan_cli");
    if let Err(e) = fs::create_dir_all(&dir) {
        panic!("create {}: {e}", dir.display());
    }
    let path = dir.join(name);
    if let Err(e) = fs::write(&path, content) {
        panic!("write {}: {e}", path.display());
    }
    path
}

fn json_plan(args: &[&str]) -> Value {
    let output = lbctl(args);
    assert!(
        output.status.success(),
        "lbctl {args:?} failed: {}",
        stderr(&output)
    );
    match serde_json::from_slice(&output.stdout) {
        Ok(value) => value,
        Err(e) => panic!("not JSON ({e}): {}", stdout(&output)),
    }
}

/// `service -> backends` of the plan's frontends.
fn backends_by_service(plan: &Value) -> Vec<(String, Vec<String>)> {
    plan["frontends"]
        .as_array()
        .map(|frontends| {
            frontends
                .iter()
                .map(|f| {
                    let backends = f["backends"]
                        .as_array()
                        .map(|b| {
                            b.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        f["service"].as_str().unwrap_or_default().to_owned(),
                        backends,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn json_plan_of_the_quote_scenario() {
    let plan = json_plan(&["plan", "--node", "kind-worker", "-o", "json", &fixture()]);
    assert_eq!(plan["node"], "kind-worker");
    assert_eq!(
        backends_by_service(&plan),
        [
            (
                "default/quote".to_owned(),
                vec![
                    "10.244.1.5:80".to_owned(),
                    "10.244.1.6:80".to_owned(),
                    "10.244.2.7:80".to_owned(),
                    "10.244.2.8:80".to_owned()
                ]
            ),
            (
                "default/quote-local".to_owned(),
                vec!["10.244.1.5:80".to_owned(), "10.244.1.6:80".to_owned()]
            ),
        ]
    );
    let first = &plan["frontends"][0];
    assert_eq!(first["kind"], "ClusterIP");
    assert_eq!(first["protocol"], "TCP");
    assert_eq!(first["address"], "10.96.125.108");
    assert_eq!(first["port"], 80);
    assert_eq!(first["port_name"], "http");
    assert!(first["affinity_timeout_seconds"].is_null());
    assert_eq!(plan["skipped"], Value::Array(Vec::new()));

    let plan = json_plan(&[
        "plan",
        "--node",
        "kind-worker2",
        "--output",
        "json",
        &fixture(),
    ]);
    assert_eq!(
        backends_by_service(&plan)[1],
        (
            "default/quote-local".to_owned(),
            vec!["10.244.2.7:80".to_owned(), "10.244.2.8:80".to_owned()]
        )
    );
}

#[test]
fn table_is_the_default_output() {
    let output = lbctl(&["plan", "--node", "kind-worker", &fixture()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = stdout(&output);
    for text in [
        "SERVICE",
        "BACKENDS",
        "default/quote-local",
        "10.96.77.212:80/TCP",
        "10.244.1.5:80",
        "10.244.1.6:80",
    ] {
        assert!(table.contains(text), "{text} in\n{table}");
    }
    let table = stdout(&lbctl(&[
        "plan",
        "--node",
        "kind-worker",
        "-o",
        "table",
        &fixture(),
    ]));
    assert!(table.contains("default/quote-local"), "{table}");
}

#[test]
fn directories_and_refusals() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let refusing = scratch(
        "refusing.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: lonely, namespace: default}\n\
         spec: {clusterIP: 10.96.0.99, internalTrafficPolicy: Local, ports: [{name: http, port: 80}]}\n",
    );
    let output = lbctl(&[
        "plan",
        "--node",
        "kind-worker",
        &dir.display().to_string(),
        &refusing.display().to_string(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = stdout(&output);
    assert!(table.contains("default/lonely"), "{table}");
    assert!(table.contains("(none: refuses)"), "{table}");
    assert!(table.contains("default/quote-local"), "{table}");
}

#[test]
fn zone_flag_overrides_the_node_label() {
    let hinted = scratch(
        "hinted.yaml",
        r#"apiVersion: v1
kind: Node
metadata: {name: w1, labels: {topology.kubernetes.io/zone: zone-a}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, trafficDistribution: PreferClose, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.1], nodeName: w1, hints: {forZones: [{name: zone-a}]}}
- {addresses: [10.244.2.1], nodeName: w2, hints: {forZones: [{name: zone-b}]}}
"#,
    );
    let path = hinted.display().to_string();
    let plan = json_plan(&["plan", "--node", "w1", "-o", "json", &path]);
    assert_eq!(backends_by_service(&plan)[0].1, ["10.244.1.1:8080"]);
    let plan = json_plan(&[
        "plan", "--node", "w1", "--zone", "zone-b", "-o", "json", &path,
    ]);
    assert_eq!(backends_by_service(&plan)[0].1, ["10.244.2.1:8080"]);
}

#[test]
fn skipped_input_is_listed_and_warnings_are_shown() {
    let messy = scratch(
        "messy.yaml",
        r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, trafficDistribution: PreferClose, ports: [{name: http, port: 80}, {name: big, port: 70000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.1], nodeName: w1}
"#,
    );
    let path = messy.display().to_string();
    let plan = json_plan(&["plan", "--node", "w1", "-o", "json", &path]);
    assert_eq!(backends_by_service(&plan)[0].1, ["10.244.1.1:8080"]);
    assert_eq!(plan["skipped"][0]["object"], "Service default/web");
    let reason = plan["skipped"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("port \"big\""), "{reason}");

    let output = lbctl(&["plan", "--node", "w1", &path]);
    assert!(output.status.success(), "{}", stderr(&output));
    let everything = stdout(&output) + &stderr(&output);
    assert!(
        everything.contains("Service default/web: port \"big\""),
        "{everything}"
    );
    assert!(
        everything.contains("trafficDistribution: PreferClose"),
        "{everything}"
    );
}

#[test]
fn invalid_yaml_fails_naming_file_and_line() {
    let bad = scratch(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n   namespace: x\n",
    );
    let output = lbctl(&["plan", "--node", "w1", &bad.display().to_string()]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains(&format!("{}:5:", bad.display())),
        "file and line 5 in {err}"
    );
}

#[test]
fn missing_file_and_missing_node_fail() {
    let output = lbctl(&["plan", "--node", "w1", "/nonexistent/lbctl-plan.yaml"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("/nonexistent/lbctl-plan.yaml"),
        "{}",
        stderr(&output)
    );

    let output = lbctl(&["plan", &fixture()]);
    assert!(!output.status.success(), "--node is required");
}

#[test]
fn service_proxy_name_selects_the_services_of_this_proxy() {
    let service = |name: &str, ip: &str, label: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n{label}\
             spec:\n  clusterIP: {ip}\n  ports:\n  - name: http\n    port: 80\n"
        )
    };
    let label =
        |proxy: &str| format!("  labels:\n    service.kubernetes.io/service-proxy-name: {proxy}\n");
    let manifest = scratch(
        "proxy-names.yaml",
        &[
            service("plain", "10.96.0.10", ""),
            service("mine", "10.96.0.11", &label("lbctl")),
            service("theirs", "10.96.0.12", &label("other")),
        ]
        .join("---\n"),
    );
    let path = manifest.display().to_string();
    let services = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["plan", "--node", "w1", "-o", "json"];
        args.extend_from_slice(extra);
        args.push(&path);
        backends_by_service(&json_plan(&args))
            .into_iter()
            .map(|(service, _)| service)
            .collect()
    };
    assert_eq!(services(&[]), ["default/plain"]);
    assert_eq!(
        services(&["--service-proxy-name", "lbctl"]),
        ["default/mine"]
    );
    let output = lbctl(&["plan", "--node", "w1", "--service-proxy-name", "", &path]);
    assert!(!output.status.success(), "an empty proxy name is refused");
}
