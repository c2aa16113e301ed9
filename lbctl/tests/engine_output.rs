//! Rendering a plan: the JSON shape and the table.
mod engine_support;

use engine_support::*;
use lbctl::{
    engine::NodeContext,
    output::{REFUSES, render_json, render_table},
    plan::Plan,
};
use serde_json::json;

fn sample() -> Plan {
    plan_for(
        &[
            node("w1", Some("zone-a"), &[("InternalIP", "192.168.0.1")]),
            web("quote-local", "10.96.0.10", "internalTrafficPolicy: Local"),
            slice(
                "quote-local-x7k2p",
                "quote-local",
                HTTP_8080,
                &[ep("10.244.1.6", "w1", READY), ep("10.244.1.5", "w1", READY)],
            ),
            svc(
                "v6",
                "clusterIPs: [\"fd00:96::5\"], sessionAffinity: ClientIP, ports: [{name: dns, port: 53, protocol: UDP}]",
            ),
            slice_typed(
                "v6-abcde",
                "v6",
                "IPv6",
                "{name: dns, port: 5353, protocol: UDP}",
                &[ep("fd00::5", "w2", READY)],
            ),
            web("empty", "10.96.0.11", ""),
            "{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: stray-1, namespace: default}, addressType: IPv4, endpoints: []}".to_owned(),
        ],
        NodeContext::new("w1"),
    )
}

#[test]
fn json_has_the_documented_shape() {
    let rendered = render_json(&sample());
    let value: serde_json::Value = serde_json::from_str(&rendered).expect("valid JSON");
    assert_eq!(
        value,
        json!({
            "node": "w1",
            "frontends": [
                {"service": "default/empty", "port_name": "http", "protocol": "TCP",
                 "kind": "ClusterIP", "address": "10.96.0.11", "port": 80,
                 "backends": [], "affinity_timeout_seconds": null},
                {"service": "default/quote-local", "port_name": "http", "protocol": "TCP",
                 "kind": "ClusterIP", "address": "10.96.0.10", "port": 80,
                 "backends": ["10.244.1.5:8080", "10.244.1.6:8080"],
                 "affinity_timeout_seconds": null},
                {"service": "default/v6", "port_name": "dns", "protocol": "UDP",
                 "kind": "ClusterIP", "address": "fd00:96::5", "port": 53,
                 "backends": ["[fd00::5]:5353"], "affinity_timeout_seconds": 10800}
            ],
            "skipped": [
                {"object": "EndpointSlice default/stray-1",
                 "reason": "no kubernetes.io/service-name label"}
            ]
        })
    );
}

#[test]
fn table_lists_frontends_refusals_and_skipped() {
    let table = render_table(&sample());
    for column in [
        "SERVICE",
        "PORT NAME",
        "KIND",
        "FRONTEND",
        "BACKENDS",
        "AFFINITY",
    ] {
        assert!(table.contains(column), "{column} in\n{table}");
    }
    for cell in [
        "default/quote-local",
        "10.96.0.10:80/TCP",
        "10.244.1.5:8080",
        "10.244.1.6:8080",
        "[fd00:96::5]:53/UDP",
        "[fd00::5]:5353",
        "ClientIP 10800s",
        REFUSES,
        "Skipped:",
        "EndpointSlice default/stray-1: no kubernetes.io/service-name label",
    ] {
        assert!(table.contains(cell), "{cell} in\n{table}");
    }
    // Rows follow the plan order.
    let empty = table.find("default/empty").expect("row");
    let local = table.find("default/quote-local").expect("row");
    assert!(empty < local, "{table}");
}

#[test]
fn table_of_an_empty_plan_with_warnings() {
    let plan = plan_for(&[], NodeContext::new("nowhere"));
    let table = render_table(&plan);
    assert!(table.contains("No frontends."), "{table}");
    assert!(table.contains("Warnings:"), "{table}");
    assert!(
        table.contains("Node nowhere is not in the input"),
        "{table}"
    );
    assert!(!render_json(&plan).contains("warnings"));
}
