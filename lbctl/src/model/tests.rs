//! The conversions as tables: k8s-openapi object in (as JSON, the way manifests write them),
//! compact fields out.
use std::{net::IpAddr, sync::Arc, time::SystemTime};

use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};
use serde_json::{Value, json};

use super::*;

fn service(value: Value) -> Service {
    let svc: core::Service = serde_json::from_value(value).expect("test Service");
    Service::from(&svc)
}

fn slice(value: Value) -> EndpointSlice {
    let slice: discovery::EndpointSlice = serde_json::from_value(value).expect("test slice");
    EndpointSlice::from(&slice)
}

fn node(value: Value) -> Node {
    let node: core::Node = serde_json::from_value(value).expect("test Node");
    Node::from(&node)
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn invalid(text: &str) -> Address {
    Address::Invalid(text.into())
}

#[test]
fn service_metadata() {
    let svc = service(json!({
        "metadata": {
            "name": "web", "namespace": "shop",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"service.kubernetes.io/service-proxy-name": "lbctl", "app": "web"},
            "annotations": {
                "service.kubernetes.io/topology-mode": "Auto",
                "service.kubernetes.io/topology-aware-hints": "auto",
                "kubectl.kubernetes.io/last-applied-configuration": "{...}"
            }
        }
    }));
    assert_eq!(svc.name.as_deref(), Some("web"));
    assert_eq!(&*svc.namespace, "shop");
    assert_eq!(
        svc.creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .as_deref(),
        Some("2026-01-01T00:00:00Z")
    );
    assert_eq!(svc.service_proxy_name(), Some("lbctl"));
    assert_eq!(svc.topology_mode(), Some("Auto"));
    assert_eq!(svc.topology_aware_hints(), Some("auto"));
    assert_eq!(svc.spec, None, "no spec stays no spec");

    let bare = service(json!({"metadata": {}, "spec": {}}));
    assert_eq!(bare.name, None, "absent name");
    assert_eq!(&*bare.namespace, DEFAULT_NAMESPACE);
    assert_eq!(bare.creation_timestamp, None);
    assert_eq!(bare.service_proxy_name(), None);
    assert_eq!(bare.topology_mode(), None);
    let empty = service(json!({"metadata": {"name": "", "namespace": "",
        "labels": {"service.kubernetes.io/service-proxy-name": ""}}}));
    assert_eq!(empty.name.as_deref(), Some(""), "empty name is not absent");
    assert_eq!(
        &*empty.namespace, DEFAULT_NAMESPACE,
        "empty namespace is defaulted"
    );
    assert_eq!(
        empty.service_proxy_name(),
        Some(""),
        "an empty label is not an absent one"
    );
}

#[test]
fn service_spec() {
    struct Row {
        name: &'static str,
        spec: Value,
        cluster_ips: Vec<Address>,
    }
    let rows = [
        Row {
            name: "clusterIPs wins over clusterIP",
            spec: json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.2", "fd00::2"]}),
            cluster_ips: vec![Address::Ip(ip("10.96.0.2")), Address::Ip(ip("fd00::2"))],
        },
        Row {
            name: "empty clusterIPs: clusterIP",
            spec: json!({"clusterIP": "10.96.0.1", "clusterIPs": []}),
            cluster_ips: vec![Address::Ip(ip("10.96.0.1"))],
        },
        Row {
            name: "headless stays as written",
            spec: json!({"clusterIP": "None"}),
            cluster_ips: vec![invalid("None")],
        },
        Row {
            name: "empty strings are left out, invalid ones kept as written",
            spec: json!({"clusterIPs": ["", "10.96.0.300", "10.96.0.3"]}),
            cluster_ips: vec![invalid("10.96.0.300"), Address::Ip(ip("10.96.0.3"))],
        },
        Row {
            name: "none at all",
            spec: json!({"clusterIP": ""}),
            cluster_ips: vec![],
        },
    ];
    for row in rows {
        let svc = service(json!({"metadata": {"name": "s"}, "spec": row.spec}));
        let spec = svc.spec.expect("spec");
        assert_eq!(
            &*spec.cluster_ips,
            row.cluster_ips.as_slice(),
            "{}",
            row.name
        );
    }

    let svc = service(json!({
        "metadata": {"name": "s"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.1",
            "externalIPs": ["203.0.113.1", "nope"],
            "internalTrafficPolicy": "Local",
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}},
            "trafficDistribution": "PreferClose",
            "ports": [
                {"name": "http", "port": 80, "nodePort": 30080, "protocol": "UDP",
                 "targetPort": 8080},
                {"port": 70000, "protocol": "sctp"},
                {"port": 53, "protocol": "SCTP"}
            ]
        },
        "status": {"loadBalancer": {"ingress": [
            {"ip": "198.51.100.1"},
            {"ip": "198.51.100.2", "ipMode": "VIP"},
            {"ip": "198.51.100.3", "ipMode": "Proxy"},
            {"ip": "198.51.100.04", "ipMode": "Weird"},
            {"hostname": "lb.example"},
            {"ip": "bad"}
        ]}}
    }));
    let spec = svc.spec.as_ref().expect("spec");
    assert_eq!(spec.type_, ServiceType::LoadBalancer);
    assert_eq!(
        spec.external_ips(),
        &[Address::Ip(ip("203.0.113.1")), invalid("nope")]
    );
    assert!(spec.internal_traffic_local);
    assert!(svc.internal_traffic_local());
    assert!(spec.session_affinity_client_ip);
    assert_eq!(spec.affinity_timeout_seconds, Some(0), "as written");
    assert_eq!(spec.traffic_distribution(), Some("PreferClose"));
    assert_eq!(
        &*spec.ports,
        &[
            ServicePort {
                name: "http".into(),
                node_port: Some(30080),
                port: 80,
                protocol: PortProtocol::Udp,
            },
            ServicePort {
                name: "".into(),
                node_port: None,
                port: 70000,
                protocol: PortProtocol::Other("sctp".into()),
            },
            ServicePort {
                name: "".into(),
                node_port: None,
                port: 53,
                protocol: PortProtocol::Sctp,
            },
        ]
    );
    assert_eq!(
        svc.load_balancer_ingress(),
        &[
            Ingress::Vip(Address::Ip(ip("198.51.100.1"))),
            Ingress::Vip(Address::Ip(ip("198.51.100.2"))),
            // The IP as written: the report quotes it.
            Ingress::UnknownMode {
                ip: "198.51.100.04".into(),
                mode: "Weird".into()
            },
            Ingress::Vip(invalid("bad")),
        ],
        "Proxy and hostname-only entries have nothing to capture"
    );

    let defaults = service(json!({"metadata": {"name": "s"}, "spec": {"type": "Weird"}}));
    let spec = defaults.spec.as_ref().expect("spec");
    assert_eq!(spec.type_, ServiceType::ClusterIP);
    assert!(!spec.internal_traffic_local);
    assert!(!spec.session_affinity_client_ip);
    assert_eq!(spec.affinity_timeout_seconds, None);
    assert!(spec.ports.is_empty() && spec.external_ips().is_empty());
    assert_eq!(
        PortProtocol::parse(None),
        PortProtocol::Tcp,
        "absent protocol is TCP"
    );
}

#[test]
fn endpoint_slices() {
    let s = slice(json!({
        "metadata": {
            "name": "web-x7k2p", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web", "other": "x"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time":
                            "2026-01-01T10:00:01.5Z"}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"protocol": "UDP"}],
        "endpoints": [
            {"addresses": ["10.0.0.1", "10.0.0.2"], "nodeName": "w1", "zone": "a",
             "conditions": {"ready": false, "serving": true, "terminating": true},
             "hints": {"forZones": [{"name": "b"}, {"name": "a"}, {"name": "b"}],
                       "forNodes": [{"name": "w1"}]},
             "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}},
            {"addresses": ["10.0.0.300"]},
            {"addresses": [], "targetRef": {"kind": "Pod", "name": "web-3"}},
            {"addresses": [], "targetRef": {"kind": "Pod"}},
            {"addresses": ["10.0.0.4"], "hints": {"forZones": []}}
        ]
    }));
    assert_eq!(&*s.name, "web-x7k2p");
    assert_eq!(&*s.namespace, "shop");
    assert_eq!(s.service_name.as_deref(), Some("web"));
    assert_eq!(s.service(), Some("web"));
    assert_eq!(s.address_type, AddressType::IPv4);
    let expected_trigger = SystemTime::UNIX_EPOCH
        + std::time::Duration::from_millis(
            u64::try_from(
                "2026-01-01T10:00:01.5Z"
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .unwrap()
                    .as_millisecond(),
            )
            .unwrap(),
        );
    assert_eq!(s.trigger_time, Some(expected_trigger));
    assert_eq!(
        &*s.ports,
        &[
            EndpointPort {
                name: "http".into(),
                protocol: PortProtocol::Tcp,
                port: Some(8080)
            },
            EndpointPort {
                name: "".into(),
                protocol: PortProtocol::Udp,
                port: None
            },
        ]
    );
    let [first, bad, missing, untargeted, unhinted] = &s.endpoints.iter().collect::<Vec<_>>()[..]
    else {
        panic!("five endpoints: {:?}", s.endpoints);
    };
    assert_eq!(
        first.address(),
        EndpointAddress::Ip(ip("10.0.0.1")),
        "first address only"
    );
    assert_eq!(first.ip(), Some(ip("10.0.0.1")));
    assert_eq!(
        first.conditions(),
        Conditions {
            ready: false,
            serving: true,
            terminating: true
        }
    );
    assert_eq!(first.node(), Some("w1"));
    let names = |list: &[Arc<str>]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        names(first.for_zones()),
        ["a", "b"],
        "sorted, de-duplicated"
    );
    assert_eq!(names(first.for_nodes()), ["w1"]);
    assert_eq!(bad.address(), EndpointAddress::Invalid("10.0.0.300".into()));
    assert_eq!(bad.ip(), None);
    assert_eq!(
        bad.conditions(),
        Conditions {
            ready: true,
            serving: true,
            terminating: false
        },
        "absent conditions take the API defaults"
    );
    assert_eq!(bad.node_name(), None);
    assert_eq!(
        missing.address(),
        EndpointAddress::Missing {
            target: Some("Pod web-3".into())
        }
    );
    assert_eq!(
        untargeted.address(),
        EndpointAddress::Missing { target: None }
    );
    assert_eq!(unhinted.hints(), None, "empty hints are no hints");

    let v6 = slice(json!({
        "metadata": {"name": "v6"}, "addressType": "IPv6",
        "endpoints": [{"addresses": ["FD00::1"]}, {"addresses": ["10.0.0.1"]}]
    }));
    let v6_endpoints: Vec<EndpointRef> = v6.endpoints.iter().collect();
    assert_eq!(
        v6_endpoints[0].address(),
        EndpointAddress::Ip(ip("fd00::1")),
        "parsed, case folded"
    );
    assert_eq!(
        v6_endpoints[1].address(),
        EndpointAddress::OtherFamily("10.0.0.1".into()),
        "the other family keeps its text for the report"
    );
    assert_eq!(v6_endpoints[1].ip(), None);

    let unlabelled = slice(json!({"metadata": {}, "addressType": "FQDN", "endpoints": []}));
    assert_eq!(unlabelled.service_name, None);
    assert_eq!(&*unlabelled.name, "");
    assert_eq!(&*unlabelled.namespace, DEFAULT_NAMESPACE);
    assert_eq!(unlabelled.address_type, AddressType::Fqdn);
    assert_eq!(unlabelled.trigger_time, None);
    let empty_label = slice(json!({
        "metadata": {"labels": {"kubernetes.io/service-name": ""},
                     "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "yesterday"}},
        "addressType": "IPX", "endpoints": []
    }));
    assert_eq!(
        empty_label.service_name.as_deref(),
        Some(""),
        "empty, not absent"
    );
    assert_eq!(empty_label.service(), None);
    assert_eq!(
        empty_label.address_type,
        AddressType::Other(Box::new("IPX".into()))
    );
    assert_eq!(empty_label.trigger_time, None, "an invalid time is none");
}

#[test]
fn nodes() {
    let n = node(json!({
        "metadata": {"name": "w1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [
            {"type": "Hostname", "address": "w1"},
            {"type": "InternalIP", "address": "192.0.2.10"},
            {"type": "ExternalIP", "address": "203.0.113.300"}
        ]}
    }));
    assert_eq!(n.name.as_deref(), Some("w1"));
    assert_eq!(n.zone.as_deref(), Some("zone-a"));
    assert_eq!(
        &*n.addresses,
        &[
            NodeAddress {
                address: Address::Ip(ip("192.0.2.10")),
                type_: NodeAddressType::InternalIP
            },
            NodeAddress {
                address: invalid("203.0.113.300"),
                type_: NodeAddressType::ExternalIP
            },
        ],
        "only the kinds NodePorts listen on"
    );
    let bare = node(json!({"metadata": {"labels": {"topology.kubernetes.io/zone": ""}}}));
    assert_eq!(bare.name, None);
    assert_eq!(
        bare.zone.as_deref(),
        Some(""),
        "an empty label is not an absent one"
    );
    assert!(bare.addresses.is_empty());
}

#[test]
fn interned_strings_are_shared() {
    let svc: core::Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    let endpoints = json!([
        {"addresses": ["10.0.0.1"], "nodeName": "w1", "hints": {"forZones": [{"name": "a"}]}},
        {"addresses": ["10.0.0.2"], "nodeName": "w1", "hints": {"forZones": [{"name": "a"}]}}
    ]);
    let slice = |name: &str| -> discovery::EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080}]
        }))
        .unwrap()
    };
    let node: core::Node = serde_json::from_value(json!({
        "metadata": {"name": "w1", "labels": {"topology.kubernetes.io/zone": "a"}}
    }))
    .unwrap();
    let (s1, s2) = (slice("web-1"), slice("web-2"));
    let inventory = Inventory::from_objects([&svc], [&s1, &s2], [&node]);
    let [a, b] = &inventory.endpoint_slices[..] else {
        panic!("two slices")
    };
    assert!(Arc::ptr_eq(&inventory.services[0].namespace, &a.namespace));
    assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
    let service_port = &inventory.services[0].spec.as_ref().expect("spec").ports[0].name;
    assert_eq!(&**service_port, "http");
    assert!(Arc::ptr_eq(service_port, &a.ports[0].name), "port names");
    assert!(Arc::ptr_eq(&a.ports[0].name, &b.ports[0].name));
    let node_names: Vec<&NodeName> = [a, b]
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|ep| ep.node_name().expect("node name"))
        .collect();
    assert_eq!(node_names.len(), 4);
    assert!(
        node_names
            .iter()
            .all(|n| NodeName::ptr_eq(n, node_names[0]))
    );
    let zones: Vec<&Arc<str>> = [a, b]
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|ep| &ep.for_zones()[0])
        .collect();
    assert!(zones.iter().all(|z| Arc::ptr_eq(z, zones[0])));
    let node_zone = inventory.nodes[0].zone.as_ref().expect("zone");
    assert!(Arc::ptr_eq(node_zone, zones[0]), "the Node's zone too");
    let endpoints: Vec<EndpointRef> = [a, b].iter().flat_map(|s| s.endpoints.iter()).collect();
    assert!(
        endpoints.iter().all(|ep| ep.same_place(&endpoints[0])),
        "one node, the same hints: one place"
    );

    // Converted one by one, nothing is shared (and nothing needs to be).
    let (one, two) = (EndpointSlice::from(&s1), EndpointSlice::from(&s2));
    assert!(!Arc::ptr_eq(&one.namespace, &two.namespace));
    assert_eq!(one.namespace, two.namespace);
}

#[test]
fn equal_port_lists_are_shared_and_different_ones_are_not() {
    let svc = |name: &str, ports: Value| -> core::Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.1", "ports": ports}
        }))
        .unwrap()
    };
    let slice = |name: &str, ports: Value| -> discovery::EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}],
            "ports": ports
        }))
        .unwrap()
    };
    let http = json!([{"name": "http", "port": 80}]);
    let services = [
        svc("a", http.clone()),
        svc("b", http.clone()),
        svc("c", json!([{"name": "http", "port": 81}])),
        svc(
            "d",
            json!([{"name": "http", "port": 80, "nodePort": 30080}]),
        ),
        svc(
            "e",
            json!([{"name": "http", "port": 80, "protocol": "UDP"}]),
        ),
        svc("f", json!([{"name": "web", "port": 80}])),
    ];
    let slices = [
        slice("a-1", json!([{"name": "http", "port": 8080}])),
        slice(
            "a-2",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        ),
        slice("b-1", json!([{"name": "http", "port": 8081}])),
        slice(
            "c-1",
            json!([{"name": "http", "port": 8080}, {"name": "m", "port": 9090}]),
        ),
    ];
    let inventory = Inventory::from_objects(&services, &slices, []);
    let ports: Vec<&Arc<[ServicePort]>> = inventory
        .services
        .iter()
        .map(|s| &s.spec.as_ref().expect("spec").ports)
        .collect();
    assert!(
        Arc::ptr_eq(ports[0], ports[1]),
        "equal lists: one allocation"
    );
    assert_eq!(ports[0][0].port, 80);
    for (i, other) in ports.iter().enumerate().skip(2) {
        assert!(!Arc::ptr_eq(ports[0], other), "service {i} differs");
        assert_ne!(ports[0], *other);
    }
    let sp: Vec<&Arc<[EndpointPort]>> =
        inventory.endpoint_slices.iter().map(|s| &s.ports).collect();
    assert!(
        Arc::ptr_eq(sp[0], sp[1]),
        "an absent protocol is TCP: the same list"
    );
    assert!(!Arc::ptr_eq(sp[0], sp[2]));
    assert!(!Arc::ptr_eq(sp[0], sp[3]));
    assert_eq!(sp[3].len(), 2);
    assert_eq!(sp[2][0].port, Some(8081));
}

#[test]
fn endpoints_share_a_place_only_when_node_and_hints_match_and_the_address_is_an_ip() {
    let endpoints = json!([
        {"addresses": ["10.0.0.1"], "nodeName": "w1"},
        {"addresses": ["10.0.0.2"], "nodeName": "w1"},
        {"addresses": ["10.0.0.3"], "nodeName": "w2"},
        {"addresses": ["10.0.0.4"], "nodeName": "w1", "hints": {"forZones": [{"name": "a"}]}},
        {"addresses": ["not-an-ip"], "nodeName": "w1"},
        {"addresses": ["not-an-ip"], "nodeName": "w1"},
        {"addresses": ["10.0.0.5"]}
    ]);
    let slice: discovery::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "shop"},
        "addressType": "IPv4", "endpoints": endpoints
    }))
    .unwrap();
    let inventory = Inventory::from_objects([], [&slice], []);
    let eps: Vec<EndpointRef> = inventory.endpoint_slices[0].endpoints.iter().collect();
    assert!(eps[0].same_place(&eps[1]), "same node, no hints");
    assert!(!eps[0].same_place(&eps[2]), "another node");
    assert!(!eps[0].same_place(&eps[3]), "hints of its own");
    assert!(
        !eps[4].same_place(&eps[5]),
        "an address of its own is not shared"
    );
    assert_eq!(eps[4].address(), eps[5].address());
    assert_eq!(eps[4].node(), Some("w1"));
    assert_eq!(
        (eps[6].node(), eps[6].hints()),
        (None, None),
        "nothing to place"
    );
}

#[test]
fn an_endpoint_is_compact() {
    // The budget is ~80 bytes per endpoint including heap; shared strings are not counted.
    assert!(
        std::mem::size_of::<Endpoint>() <= 56,
        "{}",
        std::mem::size_of::<Endpoint>()
    );
}

#[test]
fn refs_of_api_objects_match_refs_of_converted_ones() {
    let rows = [
        json!({"metadata": {"name": "web", "namespace": "shop",
                            "labels": {"kubernetes.io/service-name": "web"}}}),
        json!({"metadata": {"name": "web", "namespace": "",
                            "labels": {"kubernetes.io/service-name": ""}}}),
        json!({"metadata": {}}),
    ];
    for row in rows {
        let svc: core::Service = serde_json::from_value(row.clone()).unwrap();
        assert_eq!(
            k8s_service_ref(&svc),
            crate::engine::service_ref_of(&Service::from(&svc)),
            "{row}"
        );
        let mut with_type = row.clone();
        with_type["addressType"] = json!("IPv4");
        with_type["endpoints"] = json!([]);
        let s: discovery::EndpointSlice = serde_json::from_value(with_type).unwrap();
        assert_eq!(
            k8s_slice_service(&s),
            crate::engine::slice_service(&EndpointSlice::from(&s)),
            "{row}"
        );
    }
}

#[test]
fn conditions_take_the_api_defaults() {
    let (t, f) = (Some(true), Some(false));
    let rows: [(&str, Value, [bool; 3]); 6] = [
        (
            "all unset: ready and serving",
            json!(null),
            [true, true, false],
        ),
        ("empty conditions: the same", json!({}), [true, true, false]),
        (
            "ready false",
            json!({"ready": f, "serving": f}),
            [false, false, false],
        ),
        (
            "terminating, serving unset: serving",
            json!({"ready": f, "terminating": t}),
            [false, true, true],
        ),
        (
            "terminating and not serving",
            json!({"ready": f, "serving": f, "terminating": t}),
            [false, false, true],
        ),
        (
            "ready and terminating",
            json!({"ready": t, "serving": t, "terminating": t}),
            [true, true, true],
        ),
    ];
    for (name, conditions, [ready, serving, terminating]) in rows {
        let s = slice(json!({
            "metadata": {"name": "s"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": conditions}]
        }));
        let got = s.endpoints.get(0).expect("one endpoint").conditions();
        assert_eq!(
            got,
            Conditions {
                ready,
                serving,
                terminating
            },
            "{name}"
        );
        assert_eq!(got.serving_terminating(), serving && terminating, "{name}");
    }
}

#[test]
fn a_long_lived_interner_drops_strings_no_object_holds() {
    let mut interner = Interner::new();
    // A node name some object still holds, and many that were held once and then let go.
    let kept = interner.intern("node-kept");
    for i in 0..5000 {
        drop(interner.intern(&format!("node-{i}")));
    }
    assert!(
        interner.len() < 2100,
        "unheld strings are swept as the set grows: {} held",
        interner.len()
    );
    let again = interner.intern("node-kept");
    assert!(Arc::ptr_eq(&kept, &again), "a held string is never swept");
    // Strings still held are all kept, however many.
    let held: Vec<Arc<str>> = (0..3000)
        .map(|i| interner.intern(&format!("held-{i}")))
        .collect();
    for (i, s) in held.iter().enumerate() {
        assert!(Arc::ptr_eq(s, &interner.intern(&format!("held-{i}"))));
    }
}

#[test]
fn endpoints_read_back_as_built_whether_packed_as_ipv4_or_not() {
    let node = |name: &str| Some(NodeName::from(name));
    let ready = Conditions {
        ready: true,
        serving: true,
        terminating: false,
    };
    let built = |addresses: &[&str]| -> Vec<Endpoint> {
        addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let address = match a.parse() {
                    Ok(ip) => EndpointAddress::Ip(ip),
                    Err(_) => EndpointAddress::Invalid((*a).into()),
                };
                let conditions = Conditions {
                    terminating: i % 2 == 1,
                    ..ready
                };
                Endpoint::new(address, conditions, node(&format!("w{i}")), None)
            })
            .collect()
    };
    for addresses in [
        &["10.0.0.1", "not-an-ip", "10.0.0.2"][..],
        &["fd00::1", "fd00::2"],
        &["10.0.0.1", "fd00::1", "not-an-ip"],
        &[],
    ] {
        let endpoints = built(addresses);
        let packed = Endpoints::from(endpoints.clone());
        let read: Vec<EndpointRef> = packed.iter().collect();
        let expected: Vec<EndpointRef> = endpoints.iter().map(Endpoint::view).collect();
        assert_eq!(read, expected, "{addresses:?}");
        assert_eq!(packed.len(), addresses.len());
        assert_eq!(packed.iter().len(), addresses.len());
        assert_eq!(packed.get(addresses.len()), None);
        for (i, ep) in read.iter().enumerate() {
            assert_eq!(ep.node(), Some(format!("w{i}").as_str()), "{addresses:?}");
            assert_eq!(ep.conditions().terminating, i % 2 == 1, "{addresses:?}");
            assert_eq!(
                ep.ip().map(|ip| ip.to_string()),
                addresses[i].parse::<IpAddr>().ok().map(|ip| ip.to_string()),
                "{addresses:?}"
            );
        }
        assert_eq!(
            packed,
            endpoints.into_iter().collect::<Endpoints>(),
            "the same list packs the same way"
        );
    }
}
