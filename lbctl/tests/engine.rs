//! The traffic-policy rules (docs/semantics.md), one table row per test.
mod engine_support;

use engine_support::*;
use lbctl::engine::NodeContext;

fn w1() -> NodeContext {
    NodeContext::new("w1")
}

fn w2() -> NodeContext {
    NodeContext::new("w2")
}

fn docs(parts: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut all = two_nodes();
    all.extend(parts);
    all
}

/// [`web`] and its one slice `NAME-a` (port http 8080) with `endpoints`.
fn web_sliced(name: &str, cluster_ip: &str, extra: &str, endpoints: &[String]) -> [String; 2] {
    [
        web(name, cluster_ip, extra),
        slice(&format!("{name}-a"), name, HTTP_8080, endpoints),
    ]
}

// ---- Which endpoints are usable ----------------------------------------------------------

#[test]
fn ready_true_or_unset_is_ready() {
    Case {
        docs: docs(web_sliced(
            "web",
            "10.96.0.10",
            "",
            &[
                ep("10.244.1.1", "w1", READY),
                ep("10.244.1.2", "w1", NO_CONDITIONS),
                ep("10.244.1.3", "w1", "conditions: {serving: true}"),
                ep("10.244.2.1", "w2", NOT_READY),
            ],
        )),
        frontends: &[
            "default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080 10.244.1.2:8080 10.244.1.3:8080",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn cluster_set_falls_back_to_serving_terminating() {
    Case {
        docs: docs(web_sliced(
            "web",
            "10.96.0.10",
            "",
            &[
                ep("10.244.1.1", "w1", NOT_READY),
                ep("10.244.2.1", "w2", TERMINATING),
                ep("10.244.2.2", "w2", TERMINATING_NOT_SERVING),
                // serving unset means serving.
                ep(
                    "10.244.2.3",
                    "w2",
                    "conditions: {ready: false, terminating: true}",
                ),
            ],
        )),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.2.1:8080 10.244.2.3:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn cluster_set_prefers_ready_over_terminating() {
    Case {
        docs: docs(web_sliced(
            "web",
            "10.96.0.10",
            "",
            &[
                ep("10.244.1.1", "w1", TERMINATING),
                ep("10.244.2.1", "w2", READY),
            ],
        )),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.2.1:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn terminating_but_not_serving_is_never_used() {
    Case {
        docs: docs([
            web("web", "10.96.0.10", ""),
            web("web-local", "10.96.0.11", "internalTrafficPolicy: Local"),
            slice(
                "web-a",
                "web",
                HTTP_8080,
                &[
                    ep("10.244.1.1", "w1", TERMINATING_NOT_SERVING),
                    ep("10.244.1.2", "w1", NOT_READY),
                ],
            ),
            slice(
                "web-local-a",
                "web-local",
                HTTP_8080,
                &[
                    ep("10.244.1.1", "w1", TERMINATING_NOT_SERVING),
                    ep("10.244.1.2", "w1", NOT_READY),
                ],
            ),
        ]),
        frontends: &[
            "default/web ClusterIP 10.96.0.10:80/TCP -> refuse",
            "default/web-local ClusterIP 10.96.0.11:80/TCP -> refuse",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn service_without_endpoint_slices_refuses() {
    Case {
        docs: docs([web("web", "10.96.0.10", "")]),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> refuse"],
        ..Case::default()
    }
    .check();
}

// ---- internalTrafficPolicy -----------------------------------------------------------------

fn local_and_remote() -> Vec<String> {
    docs([
        web("web", "10.96.0.10", "internalTrafficPolicy: Cluster"),
        web("web-local", "10.96.0.11", "internalTrafficPolicy: Local"),
        slice(
            "web-a",
            "web",
            HTTP_8080,
            &[ep("10.244.1.1", "w1", READY), ep("10.244.2.1", "w2", READY)],
        ),
        slice(
            "web-local-a",
            "web-local",
            HTTP_8080,
            &[ep("10.244.1.1", "w1", READY), ep("10.244.2.1", "w2", READY)],
        ),
    ])
}

#[test]
fn itp_local_uses_only_this_nodes_endpoints() {
    Case {
        docs: local_and_remote(),
        frontends: &[
            "default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080",
            "default/web-local ClusterIP 10.96.0.11:80/TCP -> 10.244.1.1:8080",
        ],
        ..Case::default()
    }
    .check();
    Case {
        docs: local_and_remote(),
        node: w2(),
        frontends: &[
            "default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080",
            "default/web-local ClusterIP 10.96.0.11:80/TCP -> 10.244.2.1:8080",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn itp_local_without_local_endpoints_refuses_never_remote() {
    Case {
        docs: docs(web_sliced(
            "web-local",
            "10.96.0.11",
            "internalTrafficPolicy: Local",
            &[ep("10.244.2.1", "w2", READY), ep("10.244.2.2", "w2", READY)],
        )),
        frontends: &["default/web-local ClusterIP 10.96.0.11:80/TCP -> refuse"],
        ..Case::default()
    }
    .check();
}

#[test]
fn itp_local_falls_back_to_local_serving_terminating() {
    Case {
        docs: docs(web_sliced(
            "web-local",
            "10.96.0.11",
            "internalTrafficPolicy: Local",
            &[
                ep("10.244.1.1", "w1", TERMINATING),
                ep("10.244.1.2", "w1", NOT_READY),
                ep("10.244.2.1", "w2", READY),
                ep("10.244.2.2", "w2", TERMINATING),
            ],
        )),
        frontends: &["default/web-local ClusterIP 10.96.0.11:80/TCP -> 10.244.1.1:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn itp_local_prefers_local_ready_over_local_terminating() {
    Case {
        docs: docs(web_sliced(
            "web-local",
            "10.96.0.11",
            "internalTrafficPolicy: Local",
            &[
                ep("10.244.1.1", "w1", TERMINATING),
                ep("10.244.1.2", "w1", NO_CONDITIONS),
            ],
        )),
        frontends: &["default/web-local ClusterIP 10.96.0.11:80/TCP -> 10.244.1.2:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn endpoint_without_node_name_is_never_local() {
    Case {
        docs: docs(web_sliced(
            "web-local",
            "10.96.0.11",
            "internalTrafficPolicy: Local",
            &[ep("10.244.1.1", "", READY)],
        )),
        frontends: &["default/web-local ClusterIP 10.96.0.11:80/TCP -> refuse"],
        ..Case::default()
    }
    .check();
}

// ---- NodePort, externalIPs, LoadBalancer: always the Cluster set ----------------------------

fn load_balancer(etp: &str, itp: &str, ingress: &str) -> String {
    svc_doc(
        "name: lb, namespace: default",
        &format!(
            "type: LoadBalancer, clusterIP: 10.96.0.20, externalTrafficPolicy: {etp}, \
             internalTrafficPolicy: {itp}, externalIPs: [203.0.113.10], \
             ports: [{{name: http, port: 80, nodePort: 30080, targetPort: 8080}}]"
        ),
        &format!("loadBalancer: {{ingress: [{ingress}]}}"),
    )
}

fn lb_slice() -> String {
    slice(
        "lb-a",
        "lb",
        HTTP_8080,
        &[ep("10.244.1.1", "w1", READY), ep("10.244.2.1", "w2", READY)],
    )
}

#[test]
fn external_destinations_use_the_cluster_set_even_with_etp_local() {
    Case {
        docs: docs([
            load_balancer("Local", "Local", "{ip: 198.51.100.7}"),
            lb_slice(),
        ]),
        node: w2(),
        frontends: &[
            // ITP Local applies to the ClusterIP only.
            "default/lb ClusterIP 10.96.0.20:80/TCP -> 10.244.2.1:8080",
            "default/lb NodePort 192.168.0.2:30080/TCP -> 10.244.1.1:8080 10.244.2.1:8080",
            "default/lb ExternalIP 203.0.113.10:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080",
            "default/lb LoadBalancer 198.51.100.7:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn external_destinations_refuse_when_no_endpoint_is_usable() {
    Case {
        docs: docs([
            load_balancer("Local", "Cluster", "{ip: 198.51.100.7}"),
            slice(
                "lb-a",
                "lb",
                HTTP_8080,
                &[ep("10.244.2.1", "w2", NOT_READY)],
            ),
        ]),
        frontends: &[
            "default/lb ClusterIP 10.96.0.20:80/TCP -> refuse",
            "default/lb NodePort 192.168.0.1:30080/TCP -> refuse",
            "default/lb ExternalIP 203.0.113.10:80/TCP -> refuse",
            "default/lb LoadBalancer 198.51.100.7:80/TCP -> refuse",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn lb_ingress_with_ip_mode_proxy_or_hostname_only_is_not_captured() {
    Case {
        docs: docs([
            load_balancer(
                "Cluster",
                "Cluster",
                "{ip: 198.51.100.7, ipMode: Proxy}, {ip: 198.51.100.8, ipMode: VIP}, {hostname: lb.example.com}",
            ),
            lb_slice(),
        ]),
        frontends: &[
            "default/lb ClusterIP 10.96.0.20:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080",
            "default/lb NodePort 192.168.0.1:30080/TCP -> 10.244.1.1:8080 10.244.2.1:8080",
            "default/lb ExternalIP 203.0.113.10:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080",
            "default/lb LoadBalancer 198.51.100.8:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn node_ports_listen_on_internal_and_external_addresses_only() {
    let mut all = vec![
        node(
            "w1",
            None,
            &[
                ("InternalIP", "192.168.0.1"),
                ("ExternalIP", "203.0.113.1"),
                ("Hostname", "w1"),
                ("InternalDNS", "w1.internal"),
            ],
        ),
        svc(
            "np",
            "type: NodePort, clusterIP: 10.96.0.30, ports: [{name: http, port: 80, nodePort: 30001}]",
        ),
        // A ClusterIP service with a stray nodePort gets no NodePort frontend.
        svc(
            "cip",
            "type: ClusterIP, clusterIP: 10.96.0.31, ports: [{name: http, port: 80, nodePort: 30002}]",
        ),
        // allocateLoadBalancerNodePorts: false -> no nodePort -> no NodePort frontend.
        svc(
            "lb-no-np",
            "type: LoadBalancer, clusterIP: 10.96.0.32, allocateLoadBalancerNodePorts: false, ports: [{name: http, port: 80}]",
        ),
    ];
    all.push(slice(
        "np-a",
        "np",
        "{name: http, port: 80}",
        &[ep("10.244.1.1", "w1", READY)],
    ));
    Case {
        docs: all,
        frontends: &[
            "default/cip ClusterIP 10.96.0.31:80/TCP -> refuse",
            "default/lb-no-np ClusterIP 10.96.0.32:80/TCP -> refuse",
            "default/np ClusterIP 10.96.0.30:80/TCP -> 10.244.1.1:80",
            "default/np NodePort 192.168.0.1:30001/TCP -> 10.244.1.1:80",
            "default/np NodePort 203.0.113.1:30001/TCP -> 10.244.1.1:80",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn missing_node_object_means_no_node_ports_and_a_warning() {
    Case {
        docs: vec![
            svc(
                "np",
                "type: NodePort, clusterIP: 10.96.0.30, ports: [{name: http, port: 80, nodePort: 30001}]",
            ),
        ],
        node: NodeContext::new("ghost"),
        frontends: &["default/np ClusterIP 10.96.0.30:80/TCP -> refuse"],
        warnings: &["Node ghost is not in the input"],
        ..Case::default()
    }
    .check();
}

// ---- Not captured ----------------------------------------------------------------------------

#[test]
fn headless_and_external_name_services_are_not_load_balanced() {
    Case {
        docs: docs([
            svc(
                "headless",
                "clusterIP: None, ports: [{name: http, port: 80}]",
            ),
            svc(
                "headless-list",
                "clusterIP: None, clusterIPs: [None], ports: [{name: http, port: 80}]",
            ),
            svc("ext", "type: ExternalName, externalName: example.com"),
            slice(
                "headless-a",
                "headless",
                "{name: http, port: 80}",
                &[ep("10.244.1.1", "w1", READY)],
            ),
        ]),
        frontends: &[],
        ..Case::default()
    }
    .check();
}

#[test]
fn service_without_cluster_ip_is_skipped() {
    Case {
        // As in a hand-written manifest that was never applied.
        docs: docs([svc(
            "quote-local",
            "internalTrafficPolicy: Local, ports: [{name: http, port: 80}]",
        )]),
        frontends: &[],
        skipped: &["Service default/quote-local: no cluster IP"],
        ..Case::default()
    }
    .check();
}

#[test]
fn sctp_ports_are_not_captured() {
    Case {
        docs: docs([
            svc(
                "mixed",
                "clusterIP: 10.96.0.40, ports: [{name: sig, port: 3868, protocol: SCTP}, {name: http, port: 80}]",
            ),
            slice(
                "mixed-a",
                "mixed",
                "{name: sig, port: 3868, protocol: SCTP}, {name: http, port: 8080}",
                &[ep("10.244.1.1", "w1", READY)],
            ),
        ]),
        frontends: &["default/mixed ClusterIP 10.96.0.40:80/TCP -> 10.244.1.1:8080"],
        skipped: &["Service default/mixed: port \"sig\": SCTP is not captured"],
        ..Case::default()
    }
    .check();
}

// ---- Services of other proxies (service.kubernetes.io/service-proxy-name) --------------------

/// `default/NAME` like [`web`], labelled for the proxy `proxy`, created at `created`.
fn proxied(name: &str, cluster_ip: &str, proxy: &str, created: &str) -> String {
    svc_doc(
        &format!(
            "name: {name}, namespace: default, creationTimestamp: \"{created}\", \
             labels: {{service.kubernetes.io/service-proxy-name: \"{proxy}\"}}"
        ),
        &format!(
            "clusterIP: \"{cluster_ip}\", ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]"
        ),
        "",
    )
}

/// web (no label), web-other (label `other`), web-lbctl (label `lbctl`), web-empty (label
/// present, empty), each with one endpoint on w1.
fn proxies() -> Vec<String> {
    let mut parts = vec![
        web("web", "10.96.0.10", ""),
        proxied("web-other", "10.96.0.11", "other", "2024-01-01T00:00:00Z"),
        proxied("web-lbctl", "10.96.0.12", "lbctl", "2024-01-01T00:00:00Z"),
        proxied("web-empty", "10.96.0.13", "", "2024-01-01T00:00:00Z"),
    ];
    for (i, name) in ["web", "web-other", "web-lbctl", "web-empty"]
        .iter()
        .enumerate()
    {
        let address = format!("10.244.1.{}", i + 1);
        parts.push(slice(
            &format!("{name}-a"),
            name,
            HTTP_8080,
            &[ep(&address, "w1", READY)],
        ));
    }
    docs(parts)
}

#[test]
fn services_labelled_for_a_proxy_are_not_captured() {
    // As kube-proxy: the label, whatever its value (even empty), means another proxy.
    Case {
        docs: proxies(),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn service_proxy_name_captures_only_services_with_that_label() {
    Case {
        docs: proxies(),
        node: NodeContext::new("w1").with_service_proxy_name("lbctl"),
        frontends: &["default/web-lbctl ClusterIP 10.96.0.12:80/TCP -> 10.244.1.3:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn a_service_of_another_proxy_claims_no_frontend() {
    // The older Service has the same cluster IP but belongs to another proxy: it neither wins
    // the frontend nor shows as a conflict.
    Case {
        docs: docs([
            proxied("old", "10.96.0.10", "other", "2020-01-01T00:00:00Z"),
            web("web", "10.96.0.10", ""),
            slice("web-a", "web", HTTP_8080, &[ep("10.244.1.1", "w1", READY)]),
        ]),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080"],
        ..Case::default()
    }
    .check();
}

// ---- Topology (Cluster set only, from hints) -------------------------------------------------

fn hinted(extra_spec: &str, endpoints: &[String]) -> Vec<String> {
    docs([
        web("web", "10.96.0.10", extra_spec),
        slice("web-a", "web", HTTP_8080, endpoints),
    ])
}

#[test]
fn node_hints_keep_the_endpoints_for_this_node() {
    // w3 shares zone-a with w1: the zone hints alone would also keep 10.244.3.1.
    let endpoints = [
        ep(
            "10.244.1.1",
            "w1",
            &with(READY, &node_hints(&["w1"], &["zone-a"])),
        ),
        ep(
            "10.244.1.2",
            "w1",
            &with(READY, &node_hints(&["w1"], &["zone-a"])),
        ),
        ep(
            "10.244.2.1",
            "w2",
            &with(READY, &node_hints(&["w2"], &["zone-b"])),
        ),
        ep(
            "10.244.3.1",
            "w3",
            &with(READY, &node_hints(&["w3"], &["zone-a"])),
        ),
    ];
    Case {
        docs: hinted("trafficDistribution: PreferSameNode", &endpoints),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080 10.244.1.2:8080"],
        ..Case::default()
    }
    .check();
    Case {
        docs: hinted("trafficDistribution: PreferSameNode", &endpoints),
        node: w2(),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.2.1:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn node_hints_not_for_this_node_fall_through_to_zone_hints() {
    // w3 is in zone-a like w1 but has no endpoint of its own.
    let mut all = hinted(
        "trafficDistribution: PreferSameNode",
        &[
            ep(
                "10.244.1.1",
                "w1",
                &with(READY, &node_hints(&["w1"], &["zone-a"])),
            ),
            ep(
                "10.244.2.1",
                "w2",
                &with(READY, &node_hints(&["w2"], &["zone-b"])),
            ),
        ],
    );
    all.push(node("w3", Some("zone-a"), &[("InternalIP", "192.168.0.3")]));
    Case {
        docs: all,
        node: NodeContext::new("w3"),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn zone_hints_keep_the_endpoints_for_this_zone() {
    let endpoints = [
        ep("10.244.1.1", "w1", &with(READY, &zone_hints(&["zone-a"]))),
        ep("10.244.2.1", "w2", &with(READY, &zone_hints(&["zone-b"]))),
        ep(
            "10.244.2.2",
            "w2",
            &with(READY, &zone_hints(&["zone-b", "zone-a"])),
        ),
    ];
    Case {
        docs: hinted("trafficDistribution: PreferSameZone", &endpoints),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080 10.244.2.2:8080"],
        ..Case::default()
    }
    .check();
    Case {
        docs: hinted("trafficDistribution: PreferSameZone", &endpoints),
        node: w2(),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.2.1:8080 10.244.2.2:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn zone_from_the_node_context_overrides_the_node_label() {
    Case {
        docs: hinted(
            "trafficDistribution: PreferClose",
            &[
                ep("10.244.1.1", "w1", &with(READY, &zone_hints(&["zone-a"]))),
                ep("10.244.2.1", "w2", &with(READY, &zone_hints(&["zone-b"]))),
            ],
        ),
        node: w1().with_zone("zone-b"),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.2.1:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn hints_are_followed_whatever_the_service_says() {
    // The proxy reads hints only: no trafficDistribution on the Service, still filtered.
    Case {
        docs: hinted(
            "",
            &[
                ep("10.244.1.1", "w1", &with(READY, &zone_hints(&["zone-a"]))),
                ep("10.244.2.1", "w2", &with(READY, &zone_hints(&["zone-b"]))),
            ],
        ),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn partial_hints_mean_no_filtering() {
    Case {
        docs: hinted(
            "trafficDistribution: PreferClose",
            &[
                ep("10.244.1.1", "w1", &with(READY, &zone_hints(&["zone-a"]))),
                ep("10.244.2.1", "w2", READY),
            ],
        ),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn hints_for_other_zones_only_mean_no_filtering_never_refusal() {
    Case {
        docs: hinted(
            "trafficDistribution: PreferClose",
            &[
                ep("10.244.2.1", "w2", &with(READY, &zone_hints(&["zone-b"]))),
                ep("10.244.2.2", "w2", &with(READY, &zone_hints(&["zone-c"]))),
            ],
        ),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.2.1:8080 10.244.2.2:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn node_without_zone_ignores_zone_hints() {
    let mut all = vec![node("w1", None, &[("InternalIP", "192.168.0.1")])];
    all.push(web("web", "10.96.0.10", ""));
    all.push(slice(
        "web-a",
        "web",
        HTTP_8080,
        &[
            ep("10.244.1.1", "w1", &with(READY, &zone_hints(&["zone-a"]))),
            ep("10.244.2.1", "w2", &with(READY, &zone_hints(&["zone-b"]))),
        ],
    ));
    Case {
        docs: all,
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn only_ready_endpoints_decide_the_topology() {
    // A not-ready endpoint without hints does not turn the filter off.
    Case {
        docs: hinted(
            "",
            &[
                ep("10.244.1.1", "w1", &with(READY, &zone_hints(&["zone-a"]))),
                ep("10.244.2.1", "w2", &with(READY, &zone_hints(&["zone-b"]))),
                ep("10.244.2.9", "w2", NOT_READY),
            ],
        ),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn terminating_fallback_ignores_hints() {
    Case {
        docs: hinted(
            "",
            &[
                ep(
                    "10.244.2.1",
                    "w2",
                    &with(TERMINATING, &zone_hints(&["zone-b"])),
                ),
                ep(
                    "10.244.2.2",
                    "w2",
                    &with(TERMINATING, &zone_hints(&["zone-b"])),
                ),
            ],
        ),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.2.1:8080 10.244.2.2:8080"],
        ..Case::default()
    }
    .check();
}

#[test]
fn the_local_set_ignores_hints() {
    // w1's endpoint is hinted for zone-b, w2's for zone-a: Cluster follows the hints, Local
    // takes w1's own endpoint anyway.
    let endpoints = [
        ep("10.244.1.1", "w1", &with(READY, &zone_hints(&["zone-b"]))),
        ep("10.244.2.1", "w2", &with(READY, &zone_hints(&["zone-a"]))),
    ];
    Case {
        docs: docs([
            web("web", "10.96.0.10", ""),
            web("web-local", "10.96.0.11", "internalTrafficPolicy: Local"),
            slice("web-a", "web", HTTP_8080, &endpoints),
            slice("web-local-a", "web-local", HTTP_8080, &endpoints),
        ]),
        frontends: &[
            "default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.2.1:8080",
            "default/web-local ClusterIP 10.96.0.11:80/TCP -> 10.244.1.1:8080",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn asking_for_a_distribution_without_hints_warns() {
    let plain = [ep("10.244.1.1", "w1", READY), ep("10.244.2.1", "w2", READY)];
    for (spec, meta, asked) in [
        (
            "trafficDistribution: PreferClose",
            "",
            "trafficDistribution: PreferClose",
        ),
        (
            "trafficDistribution: PreferSameZone",
            "",
            "trafficDistribution: PreferSameZone",
        ),
        (
            "trafficDistribution: PreferSameNode",
            "",
            "trafficDistribution: PreferSameNode",
        ),
        (
            "",
            ", annotations: {service.kubernetes.io/topology-mode: Auto}",
            "service.kubernetes.io/topology-mode: Auto",
        ),
    ] {
        let service = svc_doc(
            &format!("name: web, namespace: default{meta}"),
            &format!(
                "clusterIP: 10.96.0.10, ports: [{{name: http, port: 80}}]{}{spec}",
                if spec.is_empty() { "" } else { ", " }
            ),
            "",
        );
        Case {
            docs: docs([service, slice("web-a", "web", HTTP_8080, &plain)]),
            frontends: &[
                "default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080",
            ],
            warnings: &[asked],
            ..Case::default()
        }
        .check();
    }
}

#[test]
fn no_warning_when_the_hints_are_there_or_nothing_is_asked() {
    Case {
        docs: hinted(
            "trafficDistribution: PreferClose",
            &[
                ep("10.244.1.1", "w1", &with(READY, &zone_hints(&["zone-a"]))),
                ep("10.244.2.1", "w2", &with(READY, &zone_hints(&["zone-b"]))),
            ],
        ),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080"],
        ..Case::default()
    }
    .check();
    Case {
        docs: hinted("", &[ep("10.244.1.1", "w1", READY)]),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080"],
        ..Case::default()
    }
    .check();
}

// ---- Ports -----------------------------------------------------------------------------------

#[test]
fn named_target_ports_resolve_per_slice() {
    Case {
        docs: docs([
            web("web", "10.96.0.10", ""),
            slice(
                "web-a",
                "web",
                "{name: http, port: 8080}",
                &[ep("10.244.1.1", "w1", READY)],
            ),
            slice(
                "web-b",
                "web",
                "{name: http, port: 9090}",
                &[ep("10.244.2.1", "w2", READY)],
            ),
            // A slice without the port (pods lacking the named port) adds nothing.
            slice(
                "web-c",
                "web",
                "{name: metrics, port: 9100}",
                &[ep("10.244.2.2", "w2", READY)],
            ),
        ]),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080 10.244.2.1:9090"],
        ..Case::default()
    }
    .check();
}

#[test]
fn slices_are_merged_and_duplicates_counted_once() {
    Case {
        docs: docs([
            web("web", "10.96.0.10", ""),
            slice(
                "web-a",
                "web",
                HTTP_8080,
                &[ep("10.244.1.1", "w1", READY), ep("10.244.2.1", "w2", NOT_READY)],
            ),
            slice(
                "web-b",
                "web",
                HTTP_8080,
                &[ep("10.244.1.1", "w1", READY), ep("10.244.2.1", "w2", READY), ep("10.244.2.2", "w2", READY)],
            ),
        ]),
        frontends: &[
            "default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080 10.244.2.1:8080 10.244.2.2:8080",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn unnamed_ports_match_unnamed_ports() {
    Case {
        docs: docs([
            svc(
                "plain",
                "clusterIP: 10.96.0.50, ports: [{port: 80, targetPort: 8080}]",
            ),
            slice(
                "plain-a",
                "plain",
                "{name: \"\", port: 8080}",
                &[ep("10.244.1.1", "w1", READY)],
            ),
            slice(
                "plain-b",
                "plain",
                "{port: 8081}",
                &[ep("10.244.1.2", "w1", READY)],
            ),
        ]),
        frontends: &[
            "default/plain ClusterIP 10.96.0.50:80/TCP -> 10.244.1.1:8080 10.244.1.2:8081",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn tcp_and_udp_on_the_same_port_are_different_frontends() {
    Case {
        docs: docs([
            svc(
                "dns",
                "clusterIP: 10.96.0.53, ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]",
            ),
            slice(
                "dns-a",
                "dns",
                "{name: dns, port: 1053, protocol: UDP}, {name: dns-tcp, port: 2053, protocol: TCP}",
                &[ep("10.244.1.1", "w1", READY)],
            ),
        ]),
        frontends: &[
            "default/dns ClusterIP 10.96.0.53:53/TCP -> 10.244.1.1:2053",
            "default/dns ClusterIP 10.96.0.53:53/UDP -> 10.244.1.1:1053",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn slice_port_of_another_protocol_does_not_match() {
    Case {
        docs: docs([
            svc("dns", "clusterIP: 10.96.0.53, ports: [{name: dns, port: 53, protocol: UDP}]"),
            slice("dns-a", "dns", "{name: dns, port: 53, protocol: TCP}", &[ep("10.244.1.1", "w1", READY)]),
        ]),
        frontends: &["default/dns ClusterIP 10.96.0.53:53/UDP -> refuse"],
        skipped: &["Service default/dns: port \"dns\": no EndpointSlice of this Service has a UDP port named \"dns\""],
        ..Case::default()
    }
    .check();
}

// ---- Families --------------------------------------------------------------------------------

#[test]
fn dual_stack_frontends_get_backends_of_their_own_family() {
    let mut all = vec![node(
        "w1",
        Some("zone-a"),
        &[("InternalIP", "192.168.0.1"), ("InternalIP", "fd00:1::1")],
    )];
    all.extend([
        svc(
            "dual",
            "type: NodePort, ipFamilies: [IPv4, IPv6], clusterIP: 10.96.0.60, clusterIPs: [10.96.0.60, \"fd00:96::60\"], ports: [{name: http, port: 80, nodePort: 30060}]",
        ),
        svc(
            "v4only",
            "type: NodePort, clusterIP: 10.96.0.61, ports: [{name: http, port: 80, nodePort: 30061}], externalIPs: [\"2001:db8::61\"]",
        ),
        slice("dual-4", "dual", HTTP_8080, &[ep("10.244.1.1", "w1", READY)]),
        slice_typed("dual-6", "dual", "IPv6", HTTP_8080, &[ep("fd00:244::1", "w1", READY)]),
        slice("v4only-4", "v4only", HTTP_8080, &[ep("10.244.1.2", "w1", READY)]),
        slice_typed("v4only-6", "v4only", "IPv6", HTTP_8080, &[ep("fd00:244::2", "w1", READY)]),
    ]);
    Case {
        docs: all,
        frontends: &[
            "default/dual ClusterIP 10.96.0.60:80/TCP -> 10.244.1.1:8080",
            "default/dual ClusterIP [fd00:96::60]:80/TCP -> [fd00:244::1]:8080",
            "default/dual NodePort 192.168.0.1:30060/TCP -> 10.244.1.1:8080",
            "default/dual NodePort [fd00:1::1]:30060/TCP -> [fd00:244::1]:8080",
            "default/v4only ClusterIP 10.96.0.61:80/TCP -> 10.244.1.2:8080",
            "default/v4only NodePort 192.168.0.1:30061/TCP -> 10.244.1.2:8080",
        ],
        skipped: &["Service default/v4only: ExternalIP 2001:db8::61: IPv6 address, but the Service has no IPv6 cluster IP"],
        ..Case::default()
    }
    .check();
}

#[test]
fn ipv6_single_stack() {
    Case {
        docs: docs([
            svc(
                "v6",
                "clusterIPs: [\"fd00:96::5\"], ports: [{name: http, port: 80}]",
            ),
            slice_typed(
                "v6-a",
                "v6",
                "IPv6",
                HTTP_8080,
                &[ep("fd00:244::5", "w1", READY)],
            ),
        ]),
        frontends: &["default/v6 ClusterIP [fd00:96::5]:80/TCP -> [fd00:244::5]:8080"],
        ..Case::default()
    }
    .check();
}

// ---- Session affinity ------------------------------------------------------------------------

#[test]
fn session_affinity_timeout_default_and_explicit() {
    Case {
        docs: docs([
            web("sticky", "10.96.0.70", "sessionAffinity: ClientIP"),
            web(
                "sticky-1h",
                "10.96.0.71",
                "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 3600}}",
            ),
            web(
                "not-sticky",
                "10.96.0.72",
                "sessionAffinity: None, sessionAffinityConfig: {clientIP: {timeoutSeconds: 3600}}",
            ),
        ]),
        frontends: &[
            "default/not-sticky ClusterIP 10.96.0.72:80/TCP -> refuse",
            "default/sticky ClusterIP 10.96.0.70:80/TCP -> refuse affinity=10800",
            "default/sticky-1h ClusterIP 10.96.0.71:80/TCP -> refuse affinity=3600",
        ],
        ..Case::default()
    }
    .check();
}

// ---- Bad input: reported, everything else still planned --------------------------------------

/// A healthy service next to every bad-input case, which must still be planned.
fn with_healthy(bad: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut all = docs([
        web("ok", "10.96.0.1", ""),
        slice("ok-a", "ok", HTTP_8080, &[ep("10.244.1.1", "w1", READY)]),
    ]);
    all.extend(bad);
    all
}

const OK: &str = "default/ok ClusterIP 10.96.0.1:80/TCP -> 10.244.1.1:8080";

#[test]
fn unparsable_cluster_ip_is_skipped() {
    Case {
        docs: with_healthy([
            web("bad", "10.96.0.300", ""),
            svc(
                "half",
                "clusterIPs: [10.96.0.80, \"not-an-ip\"], ports: [{name: http, port: 80}]",
            ),
        ]),
        frontends: &["default/half ClusterIP 10.96.0.80:80/TCP -> refuse", OK],
        skipped: &[
            "Service default/bad: clusterIP \"10.96.0.300\": invalid IP address",
            "Service default/half: clusterIP \"not-an-ip\": invalid IP address",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn service_ports_out_of_range_are_skipped() {
    Case {
        docs: with_healthy([svc(
            "ports",
            "type: NodePort, clusterIP: 10.96.0.81, ports: [{name: zero, port: 0}, {name: big, port: 70000}, {name: neg, port: -1}, {name: good, port: 81, nodePort: 99999}]",
        )]),
        frontends: &[OK, "default/ports ClusterIP 10.96.0.81:81/TCP -> refuse"],
        skipped: &[
            "Service default/ports: port \"big\": port 70000 is out of range 1-65535",
            "Service default/ports: port \"good\": nodePort: port 99999 is out of range 1-65535",
            "Service default/ports: port \"neg\": port -1 is out of range",
            "Service default/ports: port \"zero\": port 0 is out of range",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn bad_endpoint_slices_are_skipped() {
    Case {
        docs: with_healthy([
            web("web", "10.96.0.10", ""),
            // No service-name label.
            "{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: orphan-x1, namespace: default}, addressType: IPv4, endpoints: [{addresses: [10.244.9.9]}]}".to_owned(),
            slice_typed("web-fqdn", "web", "FQDN", HTTP_8080, &[ep("db.example.com", "", READY)]),
            slice(
                "web-a",
                "web",
                "{name: http, port: 8080}, {name: bad, port: 0}",
                &[
                    ep("10.244.1.1", "w1", READY),
                    ep("10.244.1.999", "w1", READY),
                    ep("fd00::1", "w1", READY),
                    "{addresses: []}".to_owned(),
                    "{addresses: [], targetRef: {kind: Pod, name: web-7}}".to_owned(),
                ],
            ),
        ]),
        frontends: &[OK, "default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080"],
        skipped: &[
            "EndpointSlice default/orphan-x1: no kubernetes.io/service-name label",
            "EndpointSlice default/web-a: an endpoint has no address",
            "EndpointSlice default/web-a: endpoint \"10.244.1.999\": invalid IP address",
            "EndpointSlice default/web-a: endpoint \"fd00::1\": not an IPv4 address",
            "EndpointSlice default/web-a: endpoint for Pod web-7: no address",
            "EndpointSlice default/web-a: port \"bad\": port 0 is out of range",
            "EndpointSlice default/web-fqdn: addressType FQDN is not load-balanced",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn service_port_without_a_matching_slice_port_refuses_and_is_reported() {
    Case {
        docs: with_healthy([
            svc(
                "web",
                "clusterIP: 10.96.0.10, ports: [{name: http, port: 80}, {name: admin, port: 9000}]",
            ),
            slice("web-a", "web", HTTP_8080, &[ep("10.244.1.1", "w1", READY)]),
        ]),
        frontends: &[
            OK,
            "default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080",
            "default/web ClusterIP 10.96.0.10:9000/TCP -> refuse",
        ],
        skipped: &[
            "Service default/web: port \"admin\": no EndpointSlice of this Service has a TCP port named \"admin\"; its frontends have no backends and refuse connections",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn bad_external_addresses_and_affinity_are_reported() {
    Case {
        docs: with_healthy([svc_doc(
            "name: lb, namespace: default",
            "type: LoadBalancer, clusterIP: 10.96.0.20, externalIPs: [\"203.0.113.x\"], \
             sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, \
             ports: [{name: http, port: 80}]",
            "loadBalancer: {ingress: [{ip: 198.51.100.300}, {ip: 198.51.100.7, ipMode: Magic}]}",
        )]),
        frontends: &[
            "default/lb ClusterIP 10.96.0.20:80/TCP -> refuse affinity=10800",
            OK,
        ],
        skipped: &[
            "Service default/lb: ExternalIP \"203.0.113.x\": invalid IP address",
            "Service default/lb: LoadBalancer \"198.51.100.300\": invalid IP address",
            "Service default/lb: LoadBalancer ingress \"198.51.100.7\": unknown ipMode \"Magic\"",
            "Service default/lb: sessionAffinityConfig.clientIP.timeoutSeconds 0 is out of range",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn bad_node_address_is_reported() {
    Case {
        docs: vec![
            node("w1", None, &[("InternalIP", "192.168.0.256"), ("ExternalIP", "203.0.113.1")]),
            svc(
                "np",
                "type: NodePort, clusterIP: 10.96.0.30, ports: [{name: http, port: 80, nodePort: 30001}]",
            ),
        ],
        frontends: &[
            "default/np ClusterIP 10.96.0.30:80/TCP -> refuse",
            "default/np NodePort 203.0.113.1:30001/TCP -> refuse",
        ],
        skipped: &["Node w1: address \"192.168.0.256\" (InternalIP): invalid IP address"],
        ..Case::default()
    }
    .check();
}

#[test]
fn slices_match_services_in_the_same_namespace_only() {
    Case {
        docs: docs([
            web("web", "10.96.0.10", ""),
            slice("web-a", "web", HTTP_8080, &[ep("10.244.1.1", "w1", READY)])
                .replace("namespace: default", "namespace: other"),
        ]),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> refuse"],
        ..Case::default()
    }
    .check();
}

// ---- Conflicts -------------------------------------------------------------------------------

fn claimant(namespace: &str, name: &str, created: Option<&str>, cluster_ip: &str) -> String {
    let created = created
        .map(|t| format!(", creationTimestamp: \"{t}\""))
        .unwrap_or_default();
    svc_doc(
        &format!("name: {name}, namespace: {namespace}{created}"),
        &format!(
            "clusterIP: {cluster_ip}, externalIPs: [203.0.113.10], ports: [{{name: http, port: 80}}]"
        ),
        "",
    )
}

#[test]
fn older_service_wins_a_conflicting_frontend() {
    let older = claimant("zzz", "old", Some("2024-01-01T00:00:00Z"), "10.96.0.91");
    let newer = claimant("aaa", "new", Some("2024-06-01T00:00:00Z"), "10.96.0.92");
    for order in [vec![older.clone(), newer.clone()], vec![newer, older]] {
        Case {
            docs: docs(order),
            frontends: &[
                "aaa/new ClusterIP 10.96.0.92:80/TCP -> refuse",
                "zzz/old ClusterIP 10.96.0.91:80/TCP -> refuse",
                "zzz/old ExternalIP 203.0.113.10:80/TCP -> refuse",
            ],
            skipped: &[
                "Service aaa/new: port \"http\": ExternalIP 203.0.113.10:80/TCP is already claimed by the ExternalIP frontend of Service zzz/old",
            ],
            ..Case::default()
        }
        .check();
    }
}

#[test]
fn without_timestamps_namespace_then_name_wins() {
    Case {
        docs: docs([
            claimant("b", "a", None, "10.96.0.93"),
            claimant("a", "z", None, "10.96.0.94"),
            // A timestamp beats none.
            claimant("c", "c", Some("2030-01-01T00:00:00Z"), "10.96.0.95"),
        ]),
        frontends: &[
            "a/z ClusterIP 10.96.0.94:80/TCP -> refuse",
            "b/a ClusterIP 10.96.0.93:80/TCP -> refuse",
            "c/c ClusterIP 10.96.0.95:80/TCP -> refuse",
            "c/c ExternalIP 203.0.113.10:80/TCP -> refuse",
        ],
        skipped: &["Service a/z: port \"http\"", "Service b/a: port \"http\""],
        ..Case::default()
    }
    .check();
}

#[test]
fn same_service_duplicate_frontend_is_planned_once() {
    Case {
        docs: docs([svc(
            "self",
            "clusterIP: 10.96.0.96, externalIPs: [10.96.0.96, 203.0.113.96, 203.0.113.96], ports: [{name: http, port: 80}]",
        )]),
        frontends: &[
            "default/self ClusterIP 10.96.0.96:80/TCP -> refuse",
            "default/self ExternalIP 203.0.113.96:80/TCP -> refuse",
        ],
        skipped: &[
            "Service default/self: port \"http\": ExternalIP 10.96.0.96:80/TCP duplicates this Service's own ClusterIP frontend",
            "Service default/self: port \"http\": ExternalIP 203.0.113.96:80/TCP duplicates this Service's own ExternalIP frontend",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn duplicate_service_objects_are_reduced_to_one() {
    let a = web("web", "10.96.0.10", "");
    let b = web("web", "10.96.0.11", "");
    for order in [
        vec![a.clone(), b.clone(), a.clone()],
        vec![b.clone(), a.clone()],
    ] {
        Case {
            docs: docs(order),
            frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> refuse"],
            skipped: &["Service default/web: several different objects with this namespace/name"],
            ..Case::default()
        }
        .check();
    }
    // The same object twice (a file loaded twice) is not worth a report.
    Case {
        docs: docs([a.clone(), a]),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> refuse"],
        ..Case::default()
    }
    .check();
}

// ---- Output order ----------------------------------------------------------------------------

#[test]
fn frontends_are_sorted_by_service_kind_address_port_protocol() {
    Case {
        docs: docs([
            svc_doc(
                "name: b, namespace: default",
                "type: LoadBalancer, clusterIP: 10.96.0.2, externalIPs: [203.0.113.2, 203.0.113.1], \
                 ports: [{name: z, port: 90, protocol: UDP, nodePort: 30090}, {name: a, port: 80, nodePort: 30080}, {name: u, port: 80, protocol: UDP, nodePort: 30081}]",
                "loadBalancer: {ingress: [{ip: 198.51.100.1}]}",
            ),
            web("a", "10.96.0.200", ""),
            svc("a", "clusterIP: 10.96.0.200, ports: [{name: http, port: 80}]").replace("default", "kube-system"),
        ]),
        frontends: &[
            "default/a ClusterIP 10.96.0.200:80/TCP -> refuse",
            "default/b ClusterIP 10.96.0.2:80/TCP -> refuse",
            "default/b ClusterIP 10.96.0.2:80/UDP -> refuse",
            "default/b ClusterIP 10.96.0.2:90/UDP -> refuse",
            "default/b NodePort 192.168.0.1:30080/TCP -> refuse",
            "default/b NodePort 192.168.0.1:30081/UDP -> refuse",
            "default/b NodePort 192.168.0.1:30090/UDP -> refuse",
            "default/b ExternalIP 203.0.113.1:80/TCP -> refuse",
            "default/b ExternalIP 203.0.113.1:80/UDP -> refuse",
            "default/b ExternalIP 203.0.113.1:90/UDP -> refuse",
            "default/b ExternalIP 203.0.113.2:80/TCP -> refuse",
            "default/b ExternalIP 203.0.113.2:80/UDP -> refuse",
            "default/b ExternalIP 203.0.113.2:90/UDP -> refuse",
            "default/b LoadBalancer 198.51.100.1:80/TCP -> refuse",
            "default/b LoadBalancer 198.51.100.1:80/UDP -> refuse",
            "default/b LoadBalancer 198.51.100.1:90/UDP -> refuse",
        ],
        skipped: &[
            "Service kube-system/a: port \"http\": ClusterIP 10.96.0.200:80/TCP is already claimed by the ClusterIP frontend of Service default/a",
        ],
        ..Case::default()
    }
    .check();
}

#[test]
fn backends_are_sorted_and_plan_names_the_node() {
    let plan = Case {
        docs: docs(web_sliced(
            "web",
            "10.96.0.10",
            "",
            &[
                ep("10.244.2.10", "w2", READY),
                ep("10.244.1.9", "w1", READY),
                ep("10.244.2.9", "w2", READY),
            ],
        )),
        frontends: &["default/web ClusterIP 10.96.0.10:80/TCP -> 10.244.1.9:8080 10.244.2.9:8080 10.244.2.10:8080"],
        ..Case::default()
    }
    .check();
    assert_eq!(plan.node, "w1");
    let frontend = &plan.frontends[0];
    assert_eq!(&*frontend.port_name, "http");
    assert_eq!(frontend.affinity_timeout_seconds, None);
}
