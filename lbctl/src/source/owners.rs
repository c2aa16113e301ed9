//! The EndpointSlices of each Service (by their `kubernetes.io/service-name` label), so the
//! slices of a Service are found without a scan of the store.
//!
//! Kept for every slice of the cluster, so it is kept small: it holds the strings of the stored
//! slices themselves (the Service's name and namespace, the slice's name: no copies), and a
//! Service's slices are a short sorted list held inline when there is one (most Services have
//! one slice). Ordered by Service, rebuilt with full nodes after a list ([`SliceOwners::refill`]):
//! about 60 bytes a Service where a hash map, at the 44-87% load its doubling leaves, took
//! 65-130. Which Service a slice belonged to before an event is not kept here: the store hands
//! the replaced object to the caller ([`super::store::Applied`]).
use std::{collections::BTreeMap, sync::Arc};

use smallvec::SmallVec;

use crate::plan::ServiceRef;

#[derive(Debug, Default)]
pub(super) struct SliceOwners {
    /// Service -> names of its slices, sorted.
    by_service: BTreeMap<ServiceRef, SmallVec<[Arc<str>; 1]>>,
}

impl SliceOwners {
    /// Records that the slice `slice` (of the namespace of both Services) moved from the
    /// Service `old` to the Service `new` (`None`: from or to none; both the same: it stays).
    pub(super) fn set(
        &mut self,
        slice: &Arc<str>,
        old: Option<&ServiceRef>,
        new: Option<ServiceRef>,
    ) {
        if let Some(old) = old
            && new.as_ref() != Some(old)
            && let Some(names) = self.by_service.get_mut(old)
        {
            if let Ok(i) = names.binary_search(slice) {
                names.remove(i);
            }
            if names.is_empty() {
                self.by_service.remove(old);
            }
        }
        if let Some(new) = new {
            let names = self.by_service.entry(new).or_default();
            if let Err(i) = names.binary_search(slice) {
                names.insert(i, slice.clone());
            }
        }
    }

    /// Rebuilds the index with full nodes: once a list has filled it.
    pub(super) fn refill(&mut self) {
        let listed = self.by_service.len();
        crate::compact::refill_after(&mut self.by_service, listed);
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
        let (web_1, web_2) = (Arc::from("web-1"), Arc::from("web-2"));
        o.set(&web_2, None, Some(svc("a", "web")));
        o.set(&web_1, None, Some(svc("a", "web")));
        o.set(&web_1, None, Some(svc("b", "web")));
        assert_eq!(slices(&o, "a", "web"), ["web-1", "web-2"], "sorted by name");
        assert_eq!(slices(&o, "b", "web"), ["web-1"], "namespaces apart");

        // The label moves web-2 to another Service: the old owner loses it.
        o.set(&web_2, Some(&svc("a", "web")), Some(svc("a", "api")));
        assert_eq!(slices(&o, "a", "web"), ["web-1"]);
        assert_eq!(slices(&o, "a", "api"), ["web-2"]);
        // The same owner again: nothing moves, nothing doubles.
        o.set(&web_2, Some(&svc("a", "api")), Some(svc("a", "api")));
        assert_eq!(slices(&o, "a", "api"), ["web-2"]);

        // The label removed, then the slice deleted: no owner left, and nothing kept.
        o.set(&web_2, Some(&svc("a", "api")), None);
        assert!(slices(&o, "a", "api").is_empty());
        assert!(!o.by_service.contains_key(&svc("a", "api")));
        o.set(&web_2, None, None);
        o.set(&web_1, Some(&svc("a", "web")), None);
        assert!(o.by_service.keys().all(|s| &*s.namespace != "a"));
        assert_eq!(slices(&o, "b", "web"), ["web-1"]);
    }

    #[test]
    fn the_slice_names_are_the_stored_ones_and_one_is_held_inline() {
        let mut o = SliceOwners::default();
        let web_1: Arc<str> = Arc::from("web-1");
        o.set(&web_1, None, Some(svc("ns", "web")));
        let names = &o.by_service[&svc("ns", "web")];
        assert!(
            Arc::ptr_eq(&names[0], &web_1),
            "no copy of the slice's name"
        );
        assert!(!names.spilled(), "one slice needs no list of its own");
        o.set(&Arc::from("web-2"), None, Some(svc("ns", "web")));
        assert_eq!(slices(&o, "ns", "web"), ["web-1", "web-2"]);
    }
}
