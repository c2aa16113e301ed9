//! Bytes -> `source::manifests::load_str` (as YAML and as JSON) -> `engine::plan`.
//!
//! Loading may fail, but only with an error that names the input (and, for content errors, the
//! line); what loads must plan without panicking, and the plan must keep every invariant.
#![no_main]

use lbctl::{
    engine::{NodeContext, plan},
    source::manifests::load_str,
};
use lbctl_fuzz::invariants::{check_order_independent, check_plan};
use libfuzzer_sys::fuzz_target;

const ORIGINS: [&str; 2] = ["fuzz.yaml", "fuzz.json"];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for origin in ORIGINS {
        match load_str(&text, origin) {
            Ok(inventory) => {
                for node in ["n1", "kind-worker"] {
                    let node = NodeContext::new(node);
                    let plan = plan(&inventory, &node);
                    if let Err(e) = check_plan(&inventory, &node, &plan)
                        .and_then(|()| check_order_independent(&inventory, &node, &plan))
                    {
                        panic!("{origin}: {e}");
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.starts_with(origin),
                    "the error does not name the input: {message}"
                );
            }
        }
    }
});
