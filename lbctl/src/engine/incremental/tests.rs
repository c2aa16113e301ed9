//! The incremental planner against the full one: after any sequence of changes, each applied
//! to only the Service it touches, [`Planner::plan`] equals [`crate::engine::plan`] over the
//! whole inventory, including which Service wins a shared frontend and the skip entries.
use std::{collections::BTreeSet, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::engine::{self, NodeContext};

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// One Service as the generator varies it.
#[derive(Clone, Debug)]
struct SvcParams {
    /// Index into two cluster IPs: Services collide on purpose.
    ip: usize,
    port: u16,
    /// 0: no timestamp, else that second.
    created: u8,
    local: bool,
    /// Sets an invalid sessionAffinity timeout (a skip entry of this Service).
    bad_affinity: bool,
}

#[derive(Clone, Debug)]
struct SliceParams {
    /// Endpoint last octets, each on node w1 (even) or w2 (odd).
    endpoints: Vec<u8>,
    /// Leaves the port number out (a skip entry of the slice).
    bad_port: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Service(usize, Option<SvcParams>),
    Slice(usize, usize, Option<SliceParams>),
}

fn service(name: &str, p: &SvcParams) -> Service {
    let ip = ["10.96.0.1", "10.96.0.2"][p.ip];
    let mut spec = json!({
        "clusterIP": ip,
        "clusterIPs": [ip],
        "ports": [{"port": p.port, "protocol": "TCP", "targetPort": 8080}],
    });
    if p.local {
        spec["internalTrafficPolicy"] = json!("Local");
    }
    if p.bad_affinity {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 100_000_000}});
    }
    let mut metadata = json!({"name": name, "namespace": "default"});
    if p.created > 0 {
        metadata["creationTimestamp"] = json!(format!("2026-01-01T00:00:{:02}Z", p.created));
    }
    serde_json::from_value(json!({"metadata": metadata, "spec": spec})).unwrap()
}

fn slice(service: &str, j: usize, p: &SliceParams) -> EndpointSlice {
    let port = if p.bad_port {
        json!({"name": "", "protocol": "TCP"})
    } else {
        json!({"name": "", "protocol": "TCP", "port": 8080})
    };
    let endpoints: Vec<_> = p
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "addresses": [format!("10.0.0.{e}")],
                "conditions": {"ready": true},
                "nodeName": if e % 2 == 0 { "w1" } else { "w2" },
            })
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{service}-{j}"),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [port],
        "endpoints": endpoints,
    }))
    .unwrap()
}

#[derive(Default)]
struct World {
    services: [Option<SvcParams>; 4],
    slices: [[Option<SliceParams>; 2]; 4],
}

impl World {
    fn apply(&mut self, op: &Op) -> usize {
        match op {
            Op::Service(i, p) => {
                self.services[*i] = p.clone();
                *i
            }
            Op::Slice(i, j, p) => {
                self.slices[*i][*j] = p.clone();
                *i
            }
        }
    }

    /// All objects, or only those of Service `only`.
    fn inventory(&self, only: Option<usize>) -> Inventory {
        let mut inventory = Inventory::default();
        for (i, name) in NAMES.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            if let Some(p) = &self.services[i] {
                inventory
                    .services
                    .push(Arc::new((&service(name, p)).into()));
            }
            for (j, s) in self.slices[i].iter().enumerate() {
                if let Some(s) = s {
                    inventory
                        .endpoint_slices
                        .push(Arc::new((&slice(name, j, s)).into()));
                }
            }
        }
        inventory
    }
}

fn svc_params() -> impl Strategy<Value = SvcParams> {
    (
        0..2usize,
        80..82u16,
        0..3u8,
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(ip, port, created, local, bad_affinity)| SvcParams {
            ip,
            port,
            created,
            local,
            bad_affinity,
        })
}

fn slice_params() -> impl Strategy<Value = SliceParams> {
    (
        prop::collection::vec(1..6u8, 0..3),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(endpoints, bad_port)| SliceParams {
            endpoints,
            bad_port,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4usize, prop::option::weighted(0.8, svc_params())).prop_map(|(i, p)| Op::Service(i, p)),
        (
            0..4usize,
            0..2usize,
            prop::option::weighted(0.8, slice_params())
        )
            .prop_map(|(i, j, p)| Op::Slice(i, j, p)),
    ]
}

proptest! {
    #[test]
    fn incremental_updates_end_in_the_full_plan(
        start in prop::collection::vec(op(), 0..6),
        changes in prop::collection::vec(op(), 1..20),
    ) {
        let node = NodeContext::new("w1");
        let mut world = World::default();
        for op in &start {
            world.apply(op);
        }
        let mut planner = Planner::new(&world.inventory(None), &node);
        prop_assert_eq!(planner.plan(), engine::plan(&world.inventory(None), &node));
        for op in &changes {
            let before = planner.plan();
            let i = world.apply(op);
            let dirty = BTreeSet::from([ServiceRef {
                namespace: "default".into(),
                name: NAMES[i].into(),
            }]);
            let affected = planner.update(&world.inventory(Some(i)), &dirty);
            let full = engine::plan(&world.inventory(None), &node);
            prop_assert_eq!(&planner.plan(), &full, "after {:?}", op);
            // Every frontend whose value changed was reported as affected.
            for key in before.frontends.iter().map(Frontend::key).chain(full.frontends.iter().map(Frontend::key)) {
                let old = before.frontends.iter().find(|f| f.key() == key);
                let new = full.frontends.iter().find(|f| f.key() == key);
                if old != new {
                    prop_assert!(affected.contains(&key), "{} changed but was not reported", key);
                }
            }
        }
    }
}

#[test]
fn a_deleted_owner_hands_its_frontend_to_the_next_claim() {
    let node = NodeContext::new("w1");
    let mut world = World::default();
    let older = SvcParams {
        ip: 0,
        port: 80,
        created: 1,
        local: false,
        bad_affinity: false,
    };
    let newer = SvcParams {
        created: 2,
        ..older.clone()
    };
    world.apply(&Op::Service(1, Some(older)));
    world.apply(&Op::Service(0, Some(newer)));
    let mut planner = Planner::new(&world.inventory(None), &node);
    let key = planner.plan().frontends[0].key();
    assert_eq!(&*planner.frontend(&key).unwrap().service.name, "b");
    assert_eq!(planner.report().0.len(), 1, "a's claim is skipped");

    world.apply(&Op::Service(1, None));
    let dirty = BTreeSet::from([ServiceRef {
        namespace: "default".into(),
        name: "b".into(),
    }]);
    let affected = planner.update(&world.inventory(Some(1)), &dirty);
    assert_eq!(affected, BTreeSet::from([key]));
    assert_eq!(&*planner.frontend(&key).unwrap().service.name, "a");
    assert!(planner.report().0.is_empty());
}

#[test]
fn claim_ages_order_as_their_times_and_an_undated_service_comes_last() {
    let times = [
        "1969-12-31T23:59:58.5Z",
        "1969-12-31T23:59:59Z",
        "1969-12-31T23:59:59.5Z",
        "1970-01-01T00:00:00Z",
        "1970-01-01T00:00:00.25Z",
        "2026-01-01T00:00:00Z",
    ];
    let mut ages: Vec<(i64, i32)> = times
        .iter()
        .map(|t| Claim::age(Some(&Time(t.parse().expect("test time")))))
        .collect();
    ages.push(Claim::age(None));
    let mut sorted = ages.clone();
    sorted.sort();
    assert_eq!(sorted, ages, "{times:?} and no time, in this order");
    assert_eq!(ages.last(), Some(&Claim::UNDATED));
}

#[test]
fn claims_go_from_none_to_one_to_many_and_back_in_claim_order() {
    let frontend = |service: &str| Frontend {
        service: ServiceRef::new("ns", service),
        port_name: "".into(),
        protocol: crate::plan::Protocol::Tcp,
        kind: crate::plan::FrontendKind::ClusterIP,
        address: "10.96.0.1".parse().unwrap(),
        port: 80,
        backends: Default::default(),
        affinity_timeout_seconds: None,
    };
    let claim = |seconds: i64, service: &str| Claim {
        seconds,
        nanos: 0,
        offer: 0,
        frontend: frontend(service),
    };
    let services =
        |c: &Claims| -> Vec<String> { c.values().map(|f| f.service.name.to_string()).collect() };
    let mut c = Claims::default();
    assert!(c.is_empty());
    c.insert(claim(20, "b"));
    assert!(matches!(c, Claims::One(_)));
    c.insert(claim(10, "c"));
    c.insert(claim(20, "a"));
    assert_eq!(services(&c), ["c", "a", "b"], "older first, then by name");
    c.insert(claim(5, "a"));
    assert_eq!(services(&c), ["a", "c", "a", "b"]);
    c.remove(&ServiceRef::new("ns", "a"), 0);
    assert_eq!(
        services(&c),
        ["c", "b"],
        "a Service's claims at that offer go"
    );
    c.remove(&ServiceRef::new("ns", "c"), 0);
    assert!(
        matches!(c, Claims::One(_)),
        "one claim is held inline again"
    );
    assert_eq!(c.len(), 1);
    c.remove(&ServiceRef::new("ns", "b"), 0);
    assert!(c.is_empty());
    c.remove(&ServiceRef::new("ns", "b"), 0);
    assert!(c.is_empty());
}
