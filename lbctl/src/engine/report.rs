//! What the engine tells the operator besides the frontends: skipped input and warnings.
use std::sync::Arc;

use serde::Serialize;

use crate::{
    model::{EndpointSlice, Service},
    plan::{ServiceRef, Skipped},
};

/// Collects skipped input and warnings while the plan is built.
#[derive(Debug, Default)]
pub(crate) struct Report {
    skipped: Vec<Skipped>,
    warnings: Vec<String>,
}

impl Report {
    pub(crate) fn skip(&mut self, object: impl Into<String>, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            object: object.into(),
            reason: reason.into(),
        });
    }

    pub(crate) fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// Sorted and de-duplicated, so the result does not depend on the input order.
    pub(crate) fn finish(mut self) -> (Vec<Skipped>, Vec<String>) {
        self.skipped.sort_by(|a, b| {
            a.object
                .cmp(&b.object)
                .then_with(|| a.reason.cmp(&b.reason))
        });
        self.skipped.dedup();
        self.warnings.sort();
        self.warnings.dedup();
        (self.skipped, self.warnings)
    }
}

/// The Service's ref (namespace defaulted, name empty when absent).
pub(crate) fn service_ref(svc: &Service) -> ServiceRef {
    ServiceRef {
        namespace: svc.namespace.clone(),
        name: svc.name.clone().unwrap_or_else(|| Arc::from("")),
    }
}

/// `Service default/quote`.
pub(crate) fn service_object(svc: &ServiceRef) -> String {
    format!("Service {svc}")
}

/// `EndpointSlice default/quote-x7k2p`.
pub(crate) fn slice_object(slice: &EndpointSlice) -> String {
    format!("EndpointSlice {}/{}", slice.namespace, slice.name)
}

/// `Node kind-worker`.
pub(crate) fn node_object(name: &str) -> String {
    format!("Node {name}")
}

/// Among several objects with the same identity, the one whose JSON sorts first, so the choice
/// does not depend on input order. Calls `on_conflict` when the copies differ.
pub(crate) fn pick_canonical<T: Serialize>(
    copies: Vec<&T>,
    on_conflict: impl FnOnce(),
) -> Option<&T> {
    // The usual case, one copy: nothing to compare (serializing every object is most of the
    // cost of planning a large cluster).
    if let [only] = copies.as_slice() {
        return Some(*only);
    }
    let mut keyed: Vec<(String, &T)> = copies
        .into_iter()
        .map(|obj| (serde_json::to_string(obj).unwrap_or_default(), obj))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    if keyed.len() > 1 {
        on_conflict();
    }
    keyed.into_iter().next().map(|(_, obj)| obj)
}
