//! Endpoint churn under continuous connects (see `testkit::churn`): every connect reaches a
//! backend that was in its service's set at some instant during the connect, or is refused
//! only while the set was empty. `cargo xtask soak --minutes N` runs the same for longer.
use std::time::Duration;

#[test]
fn churn_never_sends_a_connect_where_it_must_not_go() {
    let seed = testkit::churn::now_ns() as u64;
    let (totals, violations) =
        testkit::churn::run(Duration::from_secs(6), 2, seed, |_| {}).unwrap();
    eprintln!("seed {seed}: {totals:?}");
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations, e.g. {:?}",
        totals.violations,
        &violations[..violations.len().min(5)]
    );
    assert!(
        totals.changes >= 100,
        "too few changes to mean anything: {totals:?}"
    );
    assert!(
        totals.reached >= 1000 && totals.refused > 0,
        "the clients must see both outcomes: {totals:?}"
    );
}
