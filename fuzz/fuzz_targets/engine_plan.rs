//! A structured cluster (`lbctl_fuzz::cluster::Cluster`, built from the fuzzer's bytes with
//! `Arbitrary`) -> `engine::plan`: no panic, and every invariant of the plan holds (frontends
//! sorted and unique, backends sorted, de-duplicated, of the frontend's family and from the
//! Service's own slices, `internalTrafficPolicy: Local` frontends only this node's endpoints,
//! the same plan whatever the input order).
#![no_main]

use lbctl::engine::plan;
use lbctl_fuzz::{
    cluster::Cluster,
    invariants::{check_order_independent, check_plan},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|cluster: Cluster| {
    let inventory = cluster.inventory();
    let node = cluster.node();
    let plan = plan(&inventory, &node);
    if let Err(e) = check_plan(&inventory, &node, &plan)
        .and_then(|()| check_order_independent(&inventory, &node, &plan))
    {
        panic!("{e}\n{cluster:#?}");
    }
});
