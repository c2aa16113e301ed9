//! Properties of the engine over generated (often nonsensical) cluster objects.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeStatus,
            Service, ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
        },
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode,
            ForZone,
        },
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use lbctl::{
    engine::{NodeContext, SERVICE_NAME_LABEL, ZONE_LABEL, plan},
    model::{self, Inventory},
    plan::{FrontendKind, Plan},
};
use proptest::{collection::vec, option, prelude::*, sample::select};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const ZONES: [&str; 2] = ["z1", "z2"];
const SERVICES: usize = 4;

fn text(choices: &'static [&'static str]) -> impl Strategy<Value = String> {
    select(choices).prop_map(str::to_owned)
}

fn garbage_ip() -> impl Strategy<Value = String> {
    prop_oneof![
        text(&[
            "None",
            "",
            "10.0.0.999",
            "garbage",
            "::ffff:10.244.1.1",
            "010.1.1.1",
            "fd00::zz"
        ]),
        any::<String>(),
    ]
}

fn pod_ipv4() -> impl Strategy<Value = String> {
    (1u8..3, 0u8..4).prop_map(|(a, b)| format!("10.244.{a}.{b}"))
}

fn pod_ipv6() -> impl Strategy<Value = String> {
    (0u8..4).prop_map(|b| format!("fd00::{b}"))
}

/// Pod addresses from a small range (so that slices overlap), mostly of the slice's family,
/// some of the other family, some garbage.
fn endpoint_ip(address_type: &str) -> BoxedStrategy<String> {
    let (right, wrong) = if address_type == "IPv6" {
        (pod_ipv6().boxed(), pod_ipv4().boxed())
    } else {
        (pod_ipv4().boxed(), pod_ipv6().boxed())
    };
    prop_oneof![10 => right, 1 => wrong, 1 => garbage_ip()].boxed()
}

/// Service and node addresses from a small range (so that services conflict), some garbage.
fn ip_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0u8..12).prop_map(|b| format!("10.96.0.{b}")),
        3 => (0u8..2).prop_map(|b| format!("fd00:96::{b}")),
        1 => (1u8..3, 0u8..4).prop_map(|(a, b)| format!("10.244.{a}.{b}")),
        2 => garbage_ip(),
    ]
}

fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![6 => Just("default".to_owned()), 1 => Just("other".to_owned())]
}

fn port_number() -> impl Strategy<Value = i32> {
    prop_oneof![
        4 => 1i32..4,
        4 => Just(80),
        1 => select(vec![0, -1, 65535, 65536, i32::MIN, i32::MAX]),
        1 => any::<i32>(),
    ]
}

fn port_name() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => Just(Some("http".to_owned())),
        1 => Just(None),
        1 => option::of(text(&["", "dns"])),
    ]
}

fn protocol() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        3 => Just(Some("TCP".to_owned())),
        1 => option::of(text(&["UDP", "SCTP", "XYZ"])),
    ]
}

fn node_name() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => text(&["n1", "n2", "n3"]).prop_map(Some),
        1 => option::of(text(&["elsewhere", ""])),
    ]
}

fn names(choices: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<String>>> {
    option::of(vec(text(choices), 0..3))
}

fn timestamp() -> impl Strategy<Value = Option<Time>> {
    option::of((0i64..4).prop_map(|s| Time(Timestamp::from_second(s * 3600).unwrap_or_default())))
}

fn service_port() -> impl Strategy<Value = ServicePort> {
    (
        port_name(),
        port_number(),
        protocol(),
        option::of(port_number()),
    )
        .prop_map(|(name, port, protocol, node_port)| ServicePort {
            name,
            port,
            protocol,
            node_port,
            ..Default::default()
        })
}

fn service(index: usize) -> impl Strategy<Value = Service> {
    let meta = (
        namespace(),
        timestamp(),
        option::of(text(&["Auto", "auto", "Off"])),
    );
    let addresses = (
        prop_oneof![8 => vec(ip_text(), 1..3), 1 => Just(Vec::new())],
        option::of(ip_text()),
        option::of(vec(ip_text(), 0..3)),
        vec(
            (
                option::of(ip_text()),
                option::of(text(&["VIP", "Proxy", "Odd"])),
            ),
            0..3,
        ),
    );
    let policy = (
        option::of(text(&[
            "ClusterIP",
            "NodePort",
            "LoadBalancer",
            "ExternalName",
            "Odd",
        ])),
        prop_oneof![
            3 => Just(Some("Local".to_owned())),
            2 => option::of(text(&["Cluster", "Odd"])),
        ],
        option::of(text(&["Cluster", "Local"])),
        option::of(text(&[
            "PreferClose",
            "PreferSameZone",
            "PreferSameNode",
            "Odd",
        ])),
        option::of(text(&["ClientIP", "None"])),
        option::of(prop_oneof![1i32..86_400, any::<i32>()]),
        prop_oneof![8 => vec(service_port(), 1..3), 1 => vec(service_port(), 0..5)],
    );
    (meta, addresses, policy).prop_map(
        move |(
            (namespace, created, topology_mode),
            (cluster_ips, cluster_ip, external_ips, ingress),
            (type_, itp, etp, distribution, affinity, timeout, ports),
        )| Service {
            metadata: ObjectMeta {
                name: Some(format!("s{index}")),
                namespace: Some(namespace),
                creation_timestamp: created,
                annotations: topology_mode.map(|mode| {
                    BTreeMap::from([("service.kubernetes.io/topology-mode".to_owned(), mode)])
                }),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ips: Some(cluster_ips),
                cluster_ip,
                external_ips,
                type_,
                internal_traffic_policy: itp,
                external_traffic_policy: etp,
                traffic_distribution: distribution,
                session_affinity: affinity,
                session_affinity_config: timeout.map(|t| SessionAffinityConfig {
                    client_ip: Some(ClientIPConfig {
                        timeout_seconds: Some(t),
                    }),
                }),
                ports: Some(ports),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        ingress
                            .into_iter()
                            .map(|(ip, ip_mode)| LoadBalancerIngress {
                                ip,
                                ip_mode,
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
        },
    )
}

fn endpoint(address_type: &str) -> impl Strategy<Value = Endpoint> + use<> {
    (
        prop_oneof![8 => vec(endpoint_ip(address_type), 1..3), 1 => Just(Vec::new())],
        node_name(),
        option::of((
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
        )),
        option::of((names(&["n1", "n2", "n3"]), names(&["z1", "z2", "z3"]))),
    )
        .prop_map(|(addresses, node_name, conditions, hints)| Endpoint {
            addresses,
            node_name,
            conditions: conditions.map(|(ready, serving, terminating)| EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            hints: hints.map(|(nodes, zones)| EndpointHints {
                for_nodes: nodes.map(|n| n.into_iter().map(|name| ForNode { name }).collect()),
                for_zones: zones.map(|z| z.into_iter().map(|name| ForZone { name }).collect()),
            }),
            ..Default::default()
        })
}

fn endpoint_slice(index: usize) -> impl Strategy<Value = EndpointSlice> {
    (
        namespace(),
        prop_oneof![9 => (0..SERVICES).prop_map(Some), 1 => option::of(Just(SERVICES))],
        prop_oneof![
            6 => Just("IPv4".to_owned()),
            3 => Just("IPv6".to_owned()),
            1 => text(&["FQDN", "Odd"]),
        ]
        .prop_flat_map(|address_type| {
            let endpoints = vec(endpoint(&address_type), 0..8);
            (Just(address_type), endpoints)
        }),
        prop_oneof![
            8 => vec(
                (
                    port_name(),
                    prop_oneof![8 => port_number().prop_map(Some), 1 => Just(None)],
                    protocol(),
                ),
                1..3,
            )
            .prop_map(Some),
            1 => option::of(Just(Vec::new())),
        ],
    )
        .prop_map(
            move |(namespace, service, (address_type, endpoints), ports)| EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("e{index}")),
                    namespace: Some(namespace),
                    labels: service.map(|s| {
                        BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), format!("s{s}"))])
                    }),
                    ..Default::default()
                },
                address_type,
                endpoints,
                ports: ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name,
                            port,
                            protocol,
                            ..Default::default()
                        })
                        .collect()
                }),
            },
        )
}

fn node(name: &'static str) -> impl Strategy<Value = Node> {
    (
        option::of(select(&ZONES[..])),
        vec(
            (text(&["InternalIP", "ExternalIP", "Hostname"]), ip_text()),
            0..4,
        ),
    )
        .prop_map(move |(zone, addresses)| Node {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: zone.map(|z| BTreeMap::from([(ZONE_LABEL.to_owned(), z.to_owned())])),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .into_iter()
                        .map(|(type_, address)| NodeAddress { address, type_ })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })
}

fn inventory() -> impl Strategy<Value = Inventory> {
    let services = (0..SERVICES).map(service).collect::<Vec<_>>();
    let slices = (0..6).map(endpoint_slice).collect::<Vec<_>>();
    (
        services,
        vec(proptest::bool::weighted(0.85), SERVICES),
        slices,
        vec(proptest::bool::weighted(0.85), 6),
        NODES.map(node),
        // Some objects twice, some a second, different object with the same name.
        vec((0..SERVICES, any::<bool>()), 0..3),
    )
        .prop_map(
            |(services, keep_svc, slices, keep_slice, nodes, duplicates)| {
                let mut services: Vec<Service> = services
                    .into_iter()
                    .zip(keep_svc)
                    .filter_map(|(s, keep)| keep.then_some(s))
                    .collect();
                for (index, changed) in duplicates {
                    if let Some(original) = services.get(index % services.len().max(1)).cloned() {
                        let mut copy = original;
                        if changed && let Some(spec) = copy.spec.as_mut() {
                            spec.cluster_ip = Some("10.96.0.99".to_owned());
                            spec.cluster_ips = None;
                        }
                        services.push(copy);
                    }
                }
                let slices: Vec<EndpointSlice> = slices
                    .into_iter()
                    .zip(keep_slice)
                    .filter_map(|(s, keep)| keep.then_some(s))
                    .collect();
                Inventory::from_objects(&services, &slices, &nodes)
            },
        )
}

fn node_context() -> impl Strategy<Value = NodeContext> {
    (
        select(&NODES[..]),
        option::of(select(&["z1", "z2", "z3"][..])),
    )
        .prop_map(|(name, zone)| {
            let ctx = NodeContext::new(name);
            match zone {
                Some(zone) => ctx.with_zone(zone),
                None => ctx,
            }
        })
}

/// The first address of every endpoint on `node`, in any slice.
fn addresses_on(inventory: &Inventory, node: &str) -> BTreeSet<IpAddr> {
    inventory
        .endpoint_slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|ep| ep.node() == Some(node))
        .filter_map(|ep| ep.ip())
        .collect()
}

fn all_endpoint_addresses(inventory: &Inventory) -> BTreeSet<IpAddr> {
    inventory
        .endpoint_slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter_map(|ep| ep.ip())
        .collect()
}

fn itp_local_services(inventory: &Inventory) -> BTreeSet<String> {
    inventory
        .services
        .iter()
        .filter(|s| s.internal_traffic_local())
        .filter_map(|s| Some(s.name.as_deref()?.to_owned()))
        .collect()
}

fn check_invariants(
    inventory: &Inventory,
    ctx: &NodeContext,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(&plan.node, &ctx.name);
    let local = addresses_on(inventory, &ctx.name);
    let everywhere = all_endpoint_addresses(inventory);
    let itp_local = itp_local_services(inventory);
    let mut keys = BTreeSet::new();
    for frontend in &plan.frontends {
        prop_assert!(
            keys.insert((frontend.address, frontend.port, frontend.protocol)),
            "one service per frontend: {:?}",
            frontend
        );
        prop_assert!(frontend.port != 0);
        let mut sorted = frontend.backends.to_vec();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(
            &sorted[..],
            &frontend.backends.to_vec()[..],
            "backends sorted, unique"
        );
        for backend in frontend.backends.iter() {
            prop_assert_eq!(backend.is_ipv4(), frontend.address.is_ipv4(), "same family");
            prop_assert!(backend.port() != 0);
            prop_assert!(everywhere.contains(&backend.ip()));
        }
        // Service names are unique in the generator; a Local service's ClusterIP frontends only
        // lead to endpoints on this node.
        if frontend.kind == FrontendKind::ClusterIP && itp_local.contains(&*frontend.service.name) {
            for backend in frontend.backends.iter() {
                prop_assert!(
                    local.contains(&backend.ip()),
                    "ITP Local backend {} is not on {}",
                    backend,
                    ctx.name
                );
            }
        }
    }
    let order: Vec<_> = plan
        .frontends
        .iter()
        .map(|f| {
            (
                f.service.clone(),
                f.kind,
                SocketAddr::new(f.address, f.port),
                f.protocol,
            )
        })
        .collect();
    let mut sorted_order = order.clone();
    sorted_order.sort_by(|a, b| {
        (&a.0, a.1, a.2.ip(), a.2.port(), a.3).cmp(&(&b.0, b.1, b.2.ip(), b.2.port(), b.3))
    });
    prop_assert_eq!(order, sorted_order, "frontends sorted");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn never_panics_and_keeps_its_invariants(inventory in inventory(), ctx in node_context()) {
        let plan = plan(&inventory, &ctx);
        check_invariants(&inventory, &ctx, &plan)?;
    }

    /// Objects in any order, and the endpoints of each slice in any order.
    #[test]
    fn input_order_does_not_matter(
        (inventory, services, slices, nodes) in inventory().prop_flat_map(|inv| {
            let slices: Vec<_> = inv
                .endpoint_slices
                .iter()
                .map(|slice| {
                    let slice = slice.clone();
                    Just(slice.endpoints.to_vec()).prop_shuffle().prop_map(move |endpoints| {
                        Arc::new(model::EndpointSlice {
                            endpoints: endpoints.into(),
                            ..(*slice).clone()
                        })
                    })
                })
                .collect();
            (
                Just(inv.clone()),
                Just(inv.services).prop_shuffle(),
                slices.prop_shuffle(),
                Just(inv.nodes).prop_shuffle(),
            )
        }),
        ctx in node_context(),
    ) {
        let shuffled = Inventory { services, endpoint_slices: slices, nodes };
        let first = plan(&inventory, &ctx);
        prop_assert_eq!(&first, &plan(&shuffled, &ctx));
        prop_assert_eq!(&first, &plan(&inventory, &ctx));
    }
}

/// The properties above are only worth something if the generated objects often make sense:
/// Local services with local backends while remote ones exist, several backends, conflicts.
#[test]
fn the_generator_produces_interesting_plans() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};

    let mut runner = TestRunner::deterministic();
    let strategy = (inventory(), node_context());
    let total = 400;
    let (mut local_not_all, mut several_backends, mut skipped, mut refusing) = (0, 0, 0, 0);
    for _ in 0..total {
        let Ok(tree) = strategy.new_tree(&mut runner) else {
            panic!("the strategy generates");
        };
        let (inventory, ctx) = tree.current();
        let plan = plan(&inventory, &ctx);
        let local = addresses_on(&inventory, &ctx.name);
        let itp_local = itp_local_services(&inventory);
        let everywhere = all_endpoint_addresses(&inventory);
        if plan.frontends.iter().any(|f| {
            f.kind == FrontendKind::ClusterIP
                && itp_local.contains(&*f.service.name)
                && !f.backends.is_empty()
                && everywhere.iter().any(|ip| !local.contains(ip))
        }) {
            local_not_all += 1;
        }
        if plan.frontends.iter().any(|f| f.backends.len() >= 2) {
            several_backends += 1;
        }
        if plan.frontends.iter().any(|f| f.backends.is_empty()) {
            refusing += 1;
        }
        if !plan.skipped.is_empty() {
            skipped += 1;
        }
    }
    let at_least = total / 10;
    assert!(
        local_not_all >= at_least,
        "Local with remote endpoints around: {local_not_all}/{total}"
    );
    assert!(
        several_backends >= at_least,
        "several backends: {several_backends}/{total}"
    );
    assert!(
        refusing >= at_least,
        "refusing frontends: {refusing}/{total}"
    );
    assert!(skipped >= at_least, "skipped input: {skipped}/{total}");
}

/// Each Service's objects: its Service objects and its labelled slices.
type Groups =
    BTreeMap<lbctl::plan::ServiceRef, (Vec<Arc<model::Service>>, Vec<Arc<model::EndpointSlice>>)>;

/// The objects of each Service, and the slices of no Service.
fn by_service(inventory: &Inventory) -> (Groups, Vec<Arc<model::EndpointSlice>>) {
    let mut groups = Groups::new();
    for svc in &inventory.services {
        groups
            .entry(lbctl::engine::service_ref_of(svc))
            .or_default()
            .0
            .push(svc.clone());
    }
    let mut rest = Vec::new();
    for slice in &inventory.endpoint_slices {
        match lbctl::engine::slice_service(slice) {
            Some(svc) => groups.entry(svc).or_default().1.push(slice.clone()),
            None => rest.push(slice.clone()),
        }
    }
    (groups, rest)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The agent's planner by Service gives `plan`'s result at start and after moving from one
    /// inventory to another one Service at a time (each step re-planning only that Service).
    #[test]
    fn the_planner_by_service_gives_the_full_plan_after_every_step(
        start in inventory(),
        target in inventory(),
        ctx in node_context(),
    ) {
        let mut planner = lbctl::engine::Planner::new(&start, &ctx);
        prop_assert_eq!(&planner.plan(), &plan(&start, &ctx));
        let (mut current, unlabelled) = by_service(&start);
        let (goal, _) = by_service(&target);
        let refs: BTreeSet<_> = current.keys().chain(goal.keys()).cloned().collect();
        for svc in refs {
            match goal.get(&svc) {
                Some(objects) => current.insert(svc.clone(), objects.clone()),
                None => current.remove(&svc),
            };
            let (services, slices) = current.get(&svc).cloned().unwrap_or_default();
            let changed = Inventory { services, endpoint_slices: slices, nodes: start.nodes.clone() };
            planner.update(&changed, &BTreeSet::from([svc.clone()]));
            let whole = Inventory {
                services: current.values().flat_map(|(s, _)| s.clone()).collect(),
                endpoint_slices: current
                    .values()
                    .flat_map(|(_, s)| s.clone())
                    .chain(unlabelled.iter().cloned())
                    .collect(),
                nodes: start.nodes.clone(),
            };
            prop_assert_eq!(&planner.plan(), &plan(&whole, &ctx), "after {}", svc);
        }
    }
}
