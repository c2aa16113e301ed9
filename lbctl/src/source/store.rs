//! A store of *converted* objects fed by a kube-rs [`watcher()`] stream: the Kubernetes source
//! keeps only what the agent reads of each object, not the full k8s-openapi object.
//!
//! [`store`] gives a [`Store`] (cheap to clone, read-only) and its [`Writer`]. The writer is
//! driven with every event of one watcher stream ([`Writer::apply`]) and turns each object into
//! a `T` with the conversion function it was created with, as the event arrives; the caller
//! drops the k8s object right after. Objects are keyed by namespace and name (an empty
//! namespace for cluster-scoped objects) and held as `Arc<T>`, so that readers get
//! [`Arc`] clones of the stored objects, never deep copies.
//!
//! The events are handled as kube's own `reflector::store` handles them:
//! - `Apply` inserts or replaces one object, `Delete` removes it;
//! - `Init` starts a (re)list: the `InitApply` objects that follow are converted into a new set
//!   built beside the current one, which readers keep seeing;
//! - `InitDone` swaps the new set in at once (objects missing from the list disappear) and
//!   frees the old one, outside the lock. The new set's maps are rebuilt with full nodes first
//!   (a list inserts in name order, which leaves them half full: see `crate::compact`). During
//!   a relist the store thus holds the old set and the part of the new set listed so far, of
//!   converted objects only, and no longer.
//!
//! Reads return objects sorted by namespace, then name.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use kube::{Resource, runtime::watcher};

/// An object that holds its own name as a shared string: the store keys it by that very string
/// rather than a copy (about 40 bytes an object: 2.4 MB at 30,000 Services and their slices).
pub trait SharedName {
    /// Its name, when it holds it so (the store checks that it is the object's
    /// `metadata.name`, and copies that otherwise).
    fn shared_name(&self) -> Option<&Arc<str>> {
        None
    }

    /// Makes this object, about to replace `previous` (the stored version of the same object),
    /// hold `previous`'s strings where they are equal. The store's key and the indexes built
    /// on the stored strings keep `previous`'s, so a copy of each would stay allocated beside
    /// them for as long as the object lives: every update would add its strings again (under
    /// sustained churn, about 60 bytes for every slice that changed once).
    fn share_with(&mut self, _previous: &Self) {}
}

/// Namespace → name → object: iterating gives the (namespace, name) order readers want.
struct Objects<T> {
    by_namespace: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Arc<T>>>,
    len: usize,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Self {
            by_namespace: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<T> Objects<T> {
    /// Inserts `obj` as `name` of `namespace`; returns the object it replaced.
    fn insert(&mut self, namespace: &str, name: Arc<str>, obj: Arc<T>) -> Option<Arc<T>> {
        let names = match self.by_namespace.get_mut(namespace) {
            Some(names) => names,
            None => self.by_namespace.entry(namespace.into()).or_default(),
        };
        let replaced = names.insert(name, obj);
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    fn remove(&mut self, namespace: &str, name: &str) -> Option<Arc<T>> {
        let names = self.by_namespace.get_mut(namespace)?;
        let removed = names.remove(name)?;
        if names.is_empty() {
            self.by_namespace.remove(namespace);
        }
        self.len -= 1;
        Some(removed)
    }

    fn get(&self, namespace: &str, name: &str) -> Option<&Arc<T>> {
        self.by_namespace.get(namespace)?.get(name)
    }

    /// Rebuilds each namespace's map with full nodes: a list inserts its objects in name order.
    fn refill(&mut self) {
        for names in self.by_namespace.values_mut() {
            let listed = names.len();
            crate::compact::refill_after(names, listed);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<T>> {
        self.by_namespace.values().flat_map(BTreeMap::values)
    }
}

/// The read side: a cheap clone shares the objects with the [`Writer`].
pub struct Store<T> {
    objects: Arc<RwLock<Objects<T>>>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
        }
    }
}

impl<T> fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("len", &self.len()).finish()
    }
}

impl<T> Store<T> {
    fn read(&self) -> RwLockReadGuard<'_, Objects<T>> {
        // No critical section can panic half-way; a poisoned lock still holds sane data.
        self.objects.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Objects<T>> {
        self.objects.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Objects in the store (the current set: a relist in progress does not count yet).
    pub fn len(&self) -> usize {
        self.read().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The object `namespace`/`name` (namespace `""` for a cluster-scoped object).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<T>> {
        self.read().get(namespace, name).cloned()
    }

    /// Every object, sorted by namespace and name: clones of the stored `Arc`s.
    pub fn all(&self) -> Vec<Arc<T>> {
        let objects = self.read();
        let mut all = Vec::with_capacity(objects.len);
        all.extend(objects.iter().cloned());
        all
    }

    /// The objects `names` of `namespace` that exist, in the order of `names`, under one read
    /// lock.
    pub fn get_many<'a>(
        &self,
        namespace: &str,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Arc<T>> {
        let objects = self.read();
        let Some(in_namespace) = objects.by_namespace.get(namespace) else {
            return Vec::new();
        };
        names
            .into_iter()
            .filter_map(|name| in_namespace.get(name).cloned())
            .collect()
    }
}

/// The stored objects one event concerned ([`Writer::apply`]).
#[derive(Debug)]
pub struct Applied<T> {
    /// The object stored for an `Apply` or `InitApply` (in the set being listed, for the
    /// latter).
    pub current: Option<Arc<T>>,
    /// The object an `Apply` replaced or a `Delete` removed, if the store had one.
    pub previous: Option<Arc<T>>,
}

impl<T> Default for Applied<T> {
    fn default() -> Self {
        Self {
            current: None,
            previous: None,
        }
    }
}

/// The conversion from the watched k8s object to what the store keeps. It may keep state
/// across objects (e.g. an interner of namespace names): only the writer's task calls it.
type Convert<K, T> = Box<dyn FnMut(&K) -> T + Send>;

/// The write side, owned by the task that drives the watcher stream.
pub struct Writer<K, T> {
    store: Store<T>,
    convert: Convert<K, T>,
    /// The set being listed, between `Init` and `InitDone`.
    relist: Option<Objects<T>>,
}

/// A new, empty store keeping `convert(object)` of each object its writer is given.
pub fn store<K, T>(convert: impl FnMut(&K) -> T + Send + 'static) -> (Store<T>, Writer<K, T>) {
    let store = Store {
        objects: Arc::new(RwLock::new(Objects::default())),
    };
    let writer = Writer {
        store: store.clone(),
        convert: Box::new(convert),
        relist: None,
    };
    (store, writer)
}

/// The namespace and name an object is stored under (empty when absent).
fn key<K: Resource>(obj: &K) -> (&str, &str) {
    let meta = obj.meta();
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// Where `converted`, made of `obj`, is stored: its namespace, and its name as the converted
/// object holds it (or a copy).
fn stored_key<'a, K: Resource, T: SharedName>(obj: &'a K, converted: &T) -> (&'a str, Arc<str>) {
    let (namespace, name) = key(obj);
    let name = match converted.shared_name() {
        Some(shared) if **shared == *name => shared.clone(),
        _ => name.into(),
    };
    (namespace, name)
}

impl<K: Resource, T: SharedName> Writer<K, T> {
    /// Another reader of this writer's store.
    pub fn as_reader(&self) -> Store<T> {
        self.store.clone()
    }

    /// Applies one watcher event (see the module documentation). The event's object is only
    /// read: the caller drops it afterwards. Returns the stored objects the event concerned,
    /// for the caller to note what changed; once it drops them, an object replaced or removed
    /// is freed (unless a reader holds it), outside the lock.
    pub fn apply(&mut self, event: &watcher::Event<K>) -> Applied<T> {
        match event {
            watcher::Event::Apply(obj) => {
                let mut converted = (self.convert)(obj);
                let mut objects = self.store.write();
                let (namespace, name) = key(obj);
                if let Some(previous) = objects.get(namespace, name) {
                    converted.share_with(previous);
                }
                let converted = Arc::new(converted);
                let (namespace, name) = stored_key(obj, &*converted);
                let previous = objects.insert(namespace, name, converted.clone());
                drop(objects);
                Applied {
                    current: Some(converted),
                    previous,
                }
            }
            watcher::Event::Delete(obj) => {
                let (namespace, name) = key(obj);
                let previous = self.store.write().remove(namespace, name);
                Applied {
                    current: None,
                    previous,
                }
            }
            watcher::Event::Init => {
                // A list restarted half-way drops what it had listed.
                self.relist = Some(Objects::default());
                Applied::default()
            }
            watcher::Event::InitApply(obj) => {
                let converted = Arc::new((self.convert)(obj));
                let (namespace, name) = stored_key(obj, &*converted);
                self.relist.get_or_insert_with(Objects::default).insert(
                    namespace,
                    name,
                    converted.clone(),
                );
                Applied {
                    current: Some(converted),
                    previous: None,
                }
            }
            watcher::Event::InitDone => {
                // As kube's store: a list that never started is an empty list.
                let mut listed = self.relist.take().unwrap_or_default();
                listed.refill();
                let old = std::mem::replace(&mut *self.store.write(), listed);
                drop(old);
                Applied::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
    use watcher::Event;

    use super::*;

    impl SharedName for String {}

    fn cm(ns: &str, name: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: (!ns.is_empty()).then(|| ns.to_string()),
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some([("v".to_string(), value.to_string())].into()),
            ..Default::default()
        }
    }

    /// A compact form: only the value, as the agent keeps only what it reads.
    fn value(cm: &ConfigMap) -> String {
        cm.data.as_ref().unwrap()["v"].clone()
    }

    fn values(store: &Store<String>) -> Vec<String> {
        store.all().iter().map(|v| v.to_string()).collect()
    }

    fn listed<T: SharedName>(writer: &mut Writer<ConfigMap, T>, objects: &[ConfigMap]) {
        writer.apply(&Event::Init);
        for obj in objects {
            writer.apply(&Event::InitApply(obj.clone()));
        }
        writer.apply(&Event::InitDone);
    }

    #[test]
    fn a_relist_replaces_the_set_at_init_done_and_drops_unlisted_objects() {
        let (store, mut writer) = store(value);
        listed(
            &mut writer,
            &[
                cm("b", "x", "b/x"),
                cm("a", "y", "a/y"),
                cm("a", "x", "a/x"),
            ],
        );
        assert_eq!(
            values(&store),
            ["a/x", "a/y", "b/x"],
            "sorted by namespace, name"
        );
        assert_eq!(store.len(), 3);

        // The relist: a/y is gone, b/x changed, c/z is new.
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(cm("a", "x", "a/x")));
        writer.apply(&Event::InitApply(cm("c", "z", "c/z")));
        writer.apply(&Event::InitApply(cm("b", "x", "b/x 2")));
        assert_eq!(
            values(&store),
            ["a/x", "a/y", "b/x"],
            "readers see the old set until the list completes"
        );
        assert_eq!(store.len(), 3);
        writer.apply(&Event::InitDone);
        assert_eq!(values(&store), ["a/x", "b/x 2", "c/z"]);
        assert_eq!(store.len(), 3);
        assert!(store.get("a", "y").is_none());

        // A list that restarts half-way forgets what it had listed.
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(cm("d", "w", "d/w")));
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(cm("a", "x", "a/x")));
        writer.apply(&Event::InitDone);
        assert_eq!(values(&store), ["a/x"]);

        // An empty list empties the store.
        listed(&mut writer, &[]);
        assert!(store.is_empty());
        assert!(store.all().is_empty());
    }

    #[test]
    fn apply_replaces_an_existing_object_and_delete_removes_it() {
        let (store, mut writer) = store(value);
        listed(&mut writer, &[cm("a", "x", "1"), cm("a", "y", "y")]);
        let before = store.get("a", "x").unwrap();

        writer.apply(&Event::Apply(cm("a", "x", "2")));
        assert_eq!(store.len(), 2, "a replaced object is counted once");
        assert_eq!(values(&store), ["2", "y"]);
        assert_eq!(*before, "1", "a reader keeps the object it took");

        writer.apply(&Event::Apply(cm("", "cluster", "c")));
        assert_eq!(
            store.get("", "cluster").as_deref().map(String::as_str),
            Some("c")
        );
        assert_eq!(
            values(&store),
            ["c", "2", "y"],
            "cluster-scoped objects sort first"
        );

        writer.apply(&Event::Delete(cm("a", "x", "whatever the last state")));
        assert_eq!(values(&store), ["c", "y"]);
        assert_eq!(store.len(), 2);
        writer.apply(&Event::Delete(cm("a", "x", "again")));
        assert_eq!(store.len(), 2, "deleting a missing object changes nothing");
        writer.apply(&Event::Delete(cm("a", "y", "y")));
        writer.apply(&Event::Delete(cm("", "cluster", "c")));
        assert!(store.is_empty());
        assert!(store.get_many("a", ["x", "y"]).is_empty());
    }

    /// A converted object holding a name of its own.
    struct Named(Arc<str>);

    impl SharedName for Named {
        fn shared_name(&self) -> Option<&Arc<str>> {
            Some(&self.0)
        }

        fn share_with(&mut self, previous: &Self) {
            if self.0 == previous.0 {
                self.0 = previous.0.clone();
            }
        }
    }

    #[test]
    fn an_update_shares_the_strings_of_the_version_it_replaces() {
        let (named, mut writer) =
            store(|cm: &ConfigMap| Named(cm.metadata.name.as_deref().unwrap_or_default().into()));
        listed(&mut writer, &[cm("a", "x", "1")]);
        let first = named.get("a", "x").expect("listed");
        writer.apply(&Event::Apply(cm("a", "x", "2")));
        let second = named.get("a", "x").expect("updated");
        assert!(!Arc::ptr_eq(&first, &second), "a new version is stored");
        assert!(
            Arc::ptr_eq(&first.0, &second.0),
            "it holds the name of the version it replaced, not a copy"
        );
        // A new object has its own.
        writer.apply(&Event::Apply(cm("a", "y", "")));
        let other = named.get("a", "y").expect("stored");
        assert_eq!(&*other.0, "y");
    }

    #[test]
    fn objects_are_keyed_by_the_name_string_they_hold_when_it_is_their_name() {
        let (named, mut writer) =
            store(|cm: &ConfigMap| Named(cm.metadata.name.as_deref().unwrap_or_default().into()));
        listed(&mut writer, &[cm("a", "x", "")]);
        writer.apply(&Event::Apply(cm("a", "y", "")));
        for name in ["x", "y"] {
            let obj = named.get("a", name).expect("stored");
            assert_eq!(
                Arc::strong_count(&obj.0),
                2,
                "{name}: the key is the object's string"
            );
        }

        // A converted name that is not the object's: the key is a copy of the object's.
        let (other, mut writer) = store(|_: &ConfigMap| Named("other".into()));
        writer.apply(&Event::Apply(cm("a", "x", "")));
        let obj = other.get("a", "x").expect("stored under its metadata.name");
        assert_eq!(Arc::strong_count(&obj.0), 1);
        assert!(other.get("a", "other").is_none());
    }

    #[test]
    fn reads_share_the_stored_arcs_and_each_object_is_converted_once() {
        static CONVERSIONS: AtomicUsize = AtomicUsize::new(0);
        let (store, mut writer) = store(|cm: &ConfigMap| {
            CONVERSIONS.fetch_add(1, Ordering::Relaxed);
            value(cm)
        });
        listed(&mut writer, &[cm("a", "x", "x"), cm("a", "y", "y")]);
        writer.apply(&Event::Apply(cm("b", "z", "z")));
        assert_eq!(CONVERSIONS.load(Ordering::Relaxed), 3);

        let first = store.all();
        let second = store.all();
        let reader = writer.as_reader();
        let x = reader.get("a", "x").unwrap();
        let many = store.get_many("a", ["y", "missing", "x"]);
        assert_eq!(
            CONVERSIONS.load(Ordering::Relaxed),
            3,
            "reads never convert"
        );
        assert_eq!(first.len(), 3);
        for (a, b) in first.iter().zip(&second) {
            assert!(
                Arc::ptr_eq(a, b),
                "two reads hand out the same stored object"
            );
        }
        assert!(Arc::ptr_eq(&first[0], &x));
        assert_eq!(many.len(), 2);
        assert!(Arc::ptr_eq(&many[0], &first[1]));
        assert!(Arc::ptr_eq(&many[1], &first[0]));

        // A change replaces only the object it names.
        writer.apply(&Event::Apply(cm("a", "y", "y2")));
        let third = store.all();
        assert!(Arc::ptr_eq(&first[0], &third[0]));
        assert!(!Arc::ptr_eq(&first[1], &third[1]));
        assert!(Arc::ptr_eq(&first[2], &third[2]));
    }
}
