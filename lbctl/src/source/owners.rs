//! Which Service each EndpointSlice belongs to (by its `kubernetes.io/service-name` label),
//! both ways: a slice event marks the Service the slice left as well as the one it joined, and
//! the slices of a Service are found without a scan of the store.
//!
//! Kept for every slice of the cluster, so it is kept small: namespaces are interned, a slice's
//! name and its Service's name are each stored once and shared by both directions, and a
//! Service's slices are a short sorted vector (most Services have one slice). At 30,000 slices
//! this holds a few MiB, where two owned strings per direction and an ordered set per Service
//! held about 17.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::plan::ServiceRef;

#[derive(Debug, Default)]
pub(super) struct SliceOwners {
    /// Every namespace named below, once.
    namespaces: HashSet<Arc<str>>,
    /// Namespace -> slice name -> the name of its Service (in the same namespace).
    by_slice: HashMap<Arc<str>, HashMap<Arc<str>, Arc<str>>>,
    /// Service -> names of its slices, sorted.
    by_service: HashMap<ServiceRef, Vec<Arc<str>>>,
}

impl SliceOwners {
    fn intern(&mut self, namespace: &str) -> Arc<str> {
        if let Some(ns) = self.namespaces.get(namespace) {
            return ns.clone();
        }
        let ns: Arc<str> = namespace.into();
        self.namespaces.insert(ns.clone());
        ns
    }

    /// Records that slice `namespace`/`slice` now belongs to `owner` (a Service of the same
    /// namespace; `None`: to none, or deleted); returns the Service it belonged to before.
    pub(super) fn set(
        &mut self,
        namespace: &str,
        slice: &str,
        owner: Option<ServiceRef>,
    ) -> Option<ServiceRef> {
        let ns = self.intern(namespace);
        let slices = self.by_slice.entry(ns.clone()).or_default();
        let (slice, old) = match slices.remove_entry(slice) {
            Some((name, owner)) => (name, Some(owner)),
            None => (Arc::from(slice), None),
        };
        let old = old.map(|name| {
            let old = ServiceRef {
                namespace: ns.clone(),
                name,
            };
            if let Some(names) = self.by_service.get_mut(&old) {
                if let Ok(i) = names.binary_search(&slice) {
                    names.remove(i);
                }
                if names.is_empty() {
                    self.by_service.remove(&old);
                }
            }
            old
        });
        if let Some(owner) = owner {
            let probe = ServiceRef {
                namespace: ns.clone(),
                name: owner.name,
            };
            // The Service's name as stored already, when it has slices.
            let name = match self.by_service.get_key_value(&probe) {
                Some((key, _)) => key.name.clone(),
                None => probe.name.clone(),
            };
            let names = self.by_service.entry(probe).or_default();
            if let Err(i) = names.binary_search(&slice) {
                names.insert(i, slice.clone());
            }
            if let Some(slices) = self.by_slice.get_mut(&ns) {
                slices.insert(slice, name);
            }
        } else if self.by_slice.get(&ns).is_some_and(HashMap::is_empty) {
            self.by_slice.remove(&ns);
            self.namespaces.remove(&ns);
        }
        old
    }

    /// The names of `svc`'s slices, in name order.
    pub(super) fn slices_of(&self, svc: &ServiceRef) -> impl Iterator<Item = &str> {
        self.by_service
            .get(svc)
            .into_iter()
            .flatten()
            .map(|name| &**name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(namespace: &str, name: &str) -> ServiceRef {
        ServiceRef::new(namespace, name)
    }

    fn slices<'a>(owners: &'a SliceOwners, namespace: &str, name: &str) -> Vec<&'a str> {
        owners.slices_of(&svc(namespace, name)).collect()
    }

    #[test]
    fn slices_join_move_and_leave_their_services() {
        let mut o = SliceOwners::default();
        assert_eq!(o.set("a", "web-2", Some(svc("a", "web"))), None);
        assert_eq!(o.set("a", "web-1", Some(svc("a", "web"))), None);
        assert_eq!(o.set("b", "web-1", Some(svc("b", "web"))), None);
        assert_eq!(slices(&o, "a", "web"), ["web-1", "web-2"], "sorted by name");
        assert_eq!(slices(&o, "b", "web"), ["web-1"], "namespaces apart");

        // The label moves web-2 to another Service: the old owner is returned and loses it.
        assert_eq!(
            o.set("a", "web-2", Some(svc("a", "api"))),
            Some(svc("a", "web"))
        );
        assert_eq!(slices(&o, "a", "web"), ["web-1"]);
        assert_eq!(slices(&o, "a", "api"), ["web-2"]);
        // The same owner again: nothing moves.
        assert_eq!(
            o.set("a", "web-2", Some(svc("a", "api"))),
            Some(svc("a", "api"))
        );
        assert_eq!(slices(&o, "a", "api"), ["web-2"]);

        // The label removed, then the slice deleted: no owner left, and nothing kept.
        assert_eq!(o.set("a", "web-2", None), Some(svc("a", "api")));
        assert!(slices(&o, "a", "api").is_empty());
        assert!(!o.by_service.contains_key(&svc("a", "api")));
        assert_eq!(o.set("a", "web-2", None), None);
        assert_eq!(o.set("a", "web-1", None), Some(svc("a", "web")));
        assert!(!o.by_slice.contains_key("a"));
        assert!(!o.namespaces.contains("a"));
        assert_eq!(slices(&o, "b", "web"), ["web-1"]);
    }

    #[test]
    fn names_are_stored_once_and_shared_by_both_directions() {
        let mut o = SliceOwners::default();
        o.set("ns", "web-1", Some(svc("ns", "web")));
        o.set("ns", "web-2", Some(svc("ns", "web")));
        let (key, names) = o.by_service.get_key_value(&svc("ns", "web")).unwrap();
        let by_slice = &o.by_slice["ns"];
        let (slice_key, owner) = by_slice.get_key_value("web-1").unwrap();
        assert!(
            Arc::ptr_eq(owner, &key.name),
            "the Service's name is shared"
        );
        assert!(Arc::ptr_eq(&by_slice["web-2"], &key.name));
        assert!(
            Arc::ptr_eq(slice_key, &names[0]),
            "the slice's name is shared"
        );
        let ns = o.namespaces.get("ns").unwrap();
        assert!(Arc::ptr_eq(ns, &key.namespace), "the namespace is interned");
    }
}
