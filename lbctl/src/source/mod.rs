//! Where cluster objects come from: the Kubernetes API (`kube`) or manifest files (`files`,
//! parsed by `manifests`). Both report a [`SourceState`], give [`crate::model::Inventory`]
//! snapshots and say which Services changed since the agent last asked ([`Dirty`]), so that
//! the agent re-plans only those.
pub mod files;
pub mod kube;
pub mod manifests;
mod owners;
pub mod store;

use std::collections::BTreeSet;

pub use kube::SourceState;

use crate::plan::ServiceRef;

/// What changed since the agent last took the changes of a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dirty {
    /// Anything may have changed: a (re)list, a Node change, a re-read manifest set whose
    /// changes could not be told apart. The agent re-plans everything.
    All,
    /// Only these Services may have changed: their Service object or an EndpointSlice
    /// labelled with their name (before or after the change). Empty: nothing changed.
    Services(BTreeSet<ServiceRef>),
}

impl Default for Dirty {
    fn default() -> Self {
        Dirty::Services(BTreeSet::new())
    }
}

impl Dirty {
    /// Notes a change to one Service.
    pub fn service(&mut self, svc: ServiceRef) {
        if let Dirty::Services(refs) = self {
            refs.insert(svc);
        }
    }

    /// Notes a change that may touch everything.
    pub fn all(&mut self) {
        *self = Dirty::All;
    }

    /// Adds what `other` marks.
    pub fn merge(&mut self, other: Dirty) {
        match other {
            Dirty::All => self.all(),
            Dirty::Services(refs) => refs.into_iter().for_each(|r| self.service(r)),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Dirty::Services(refs) if refs.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ServiceRef {
        ServiceRef {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn all_absorbs_services() {
        let mut d = Dirty::default();
        assert!(d.is_empty());
        d.service(svc("a"));
        assert_eq!(d, Dirty::Services(BTreeSet::from([svc("a")])));
        d.merge(Dirty::All);
        d.service(svc("b"));
        assert_eq!(d, Dirty::All);
        assert!(!d.is_empty());
    }
}
