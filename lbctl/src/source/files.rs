//! Manifest files as a live source: the same YAML `lbctl plan` reads, re-read whenever a file
//! changes (inotify through `notify`), so editing a file reprograms the node.
//!
//! It reports through the same [`SourceState`] as the Kubernetes source: `synced` once the
//! files were read successfully one time; a later unreadable edit keeps the last good objects
//! (the datapath is never flushed because a file is broken), sets `connected = false` and says
//! why in `last_error`.
//!
//! Each successful read is compared with the one before, Service by Service (the Service
//! object and the EndpointSlices labelled with its name), so [`FileSource::take_changes`]
//! names only the Services whose objects differ; a change to the Nodes or to an unlabelled
//! slice marks everything.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::{sync::watch, task::JoinHandle};

use super::{Dirty, SourceState, manifests};
use crate::{
    engine::{service_ref_of, slice_service},
    model::{EndpointSlice, Inventory, Service},
    plan::ServiceRef,
};

/// Errors starting the file source (reading errors at run time go to [`SourceState`]).
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Manifest files, watched.
pub struct FileSource {
    inventory: Arc<Mutex<Loaded>>,
    state: watch::Receiver<SourceState>,
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

/// The objects of the last good read and what changed since the agent took the changes.
#[derive(Default)]
struct Loaded {
    /// Shared with each snapshot: a snapshot costs no copy of the objects.
    inventory: Arc<Inventory>,
    dirty: Dirty,
}

/// What the watcher watches: the directory of each manifest file given (editors replace a file
/// by renaming another over it), and each directory given. Other files in those directories
/// (logs, editor swap files, unrelated configuration) change without causing a re-read.
#[derive(Clone, Debug, Default)]
struct WatchedPaths {
    /// (directory, the file in it that matters; `None`: every manifest file in it).
    entries: Vec<(PathBuf, Option<OsString>)>,
}

impl WatchedPaths {
    fn of(paths: &[PathBuf]) -> Self {
        let entries = paths
            .iter()
            .map(|path| {
                if path.is_dir() {
                    (path.clone(), None)
                } else {
                    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
                    let dir = if dir.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        dir
                    };
                    (dir, path.file_name().map(OsString::from))
                }
            })
            .collect();
        Self { entries }
    }

    /// The directories to watch, each once.
    fn dirs(&self) -> BTreeSet<&PathBuf> {
        self.entries.iter().map(|(dir, _)| dir).collect()
    }

    /// Whether an event on `paths` may change what [`manifests::load_paths`] reads. An event
    /// that names no path, or a path outside the watched directories as given, counts (the
    /// safe side: one needless read).
    fn concerns(&self, paths: &[PathBuf]) -> bool {
        paths.is_empty() || paths.iter().any(|path| self.concerns_one(path))
    }

    fn concerns_one(&self, path: &Path) -> bool {
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let mut watched = self
            .entries
            .iter()
            .filter(|(dir, _)| dir == parent)
            .peekable();
        if watched.peek().is_none() {
            return true;
        }
        watched.any(|(_, file)| match file {
            Some(file) => path.file_name() == Some(file.as_os_str()),
            None => manifests::is_manifest_name(path),
        })
    }
}

/// The objects of each Service: its Service objects and its labelled slices.
type ByService<'a> = BTreeMap<ServiceRef, (Vec<&'a Service>, Vec<&'a EndpointSlice>)>;

/// Groups by Service; `None` when an object belongs to no Service (an unlabelled slice).
fn by_service(inventory: &Inventory) -> (ByService<'_>, Vec<&EndpointSlice>) {
    let mut groups: ByService<'_> = BTreeMap::new();
    for svc in &inventory.services {
        groups
            .entry(service_ref_of(svc))
            .or_default()
            .0
            .push(&**svc);
    }
    let mut unlabelled = Vec::new();
    for slice in &inventory.endpoint_slices {
        match slice_service(slice) {
            Some(svc) => groups.entry(svc).or_default().1.push(&**slice),
            None => unlabelled.push(&**slice),
        }
    }
    (groups, unlabelled)
}

/// Which Services differ between two reads.
fn changes(old: &Inventory, new: &Inventory) -> Dirty {
    if old.nodes != new.nodes {
        return Dirty::All;
    }
    let (old_groups, old_unlabelled) = by_service(old);
    let (new_groups, new_unlabelled) = by_service(new);
    if old_unlabelled != new_unlabelled {
        return Dirty::All;
    }
    let refs: BTreeSet<&ServiceRef> = old_groups.keys().chain(new_groups.keys()).collect();
    Dirty::Services(
        refs.into_iter()
            .filter(|r| old_groups.get(*r) != new_groups.get(*r))
            .cloned()
            .collect(),
    )
}

fn load(paths: &[PathBuf], loaded: &Mutex<Loaded>, tx: &watch::Sender<SourceState>) {
    let result = manifests::load_paths(paths);
    tx.send_modify(|state| match result {
        Ok(objects) => {
            let mut loaded = loaded.lock().unwrap_or_else(PoisonError::into_inner);
            let dirty = if state.synced {
                changes(&loaded.inventory, &objects)
            } else {
                Dirty::All
            };
            loaded.dirty.merge(dirty);
            loaded.inventory = Arc::new(objects);
            state.generation += 1;
            state.synced = true;
            state.connected = true;
            state.last_error = None;
        }
        Err(e) => {
            tracing::error!(error = %e, "manifests unreadable; keeping the last good objects");
            state.connected = false;
            state.last_error = Some(e.to_string());
            // Bump so the agent refreshes readiness; the objects are unchanged.
            state.generation += 1;
        }
    });
}

impl FileSource {
    /// Reads `paths` (files or directories) and starts watching them. Must run inside a tokio
    /// runtime.
    pub fn start(
        paths: Vec<PathBuf>,
    ) -> Result<(Self, watch::Receiver<SourceState>), FileSourceError> {
        let inventory = Arc::new(Mutex::new(Loaded {
            inventory: Arc::default(),
            dirty: Dirty::All,
        }));
        let (tx, rx) = watch::channel(SourceState::default());
        load(&paths, &inventory, &tx);

        let watched = WatchedPaths::of(&paths);
        let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let filter = watched.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // An error may mean lost events: read again rather than miss a change.
                let relevant = event.is_err()
                    || event.is_ok_and(|e| !e.kind.is_access() && filter.concerns(&e.paths));
                if relevant {
                    let _ = events_tx.send(());
                }
            })
            .map_err(|source| FileSourceError::Watch {
                path: PathBuf::new(),
                source,
            })?;
        for dir in watched.dirs() {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| FileSourceError::Watch {
                    path: dir.clone(),
                    source,
                })?;
        }

        let task_inventory = inventory.clone();
        let tx = Arc::new(tx);
        let task = tokio::spawn(async move {
            while events_rx.recv().await.is_some() {
                // A save is often several events; let them settle, then read once.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while events_rx.try_recv().is_ok() {}
                // Reading a large manifest takes seconds: off the runtime's worker threads,
                // so that signals, metrics and the agent's loop keep running meanwhile.
                let (paths, inventory, tx) = (paths.clone(), task_inventory.clone(), tx.clone());
                let read = tokio::task::spawn_blocking(move || load(&paths, &inventory, &tx));
                if read.await.is_err() {
                    tracing::error!(
                        "reading the manifests panicked; keeping the last good objects"
                    );
                }
            }
        });
        let state = rx.clone();
        Ok((
            Self {
                inventory,
                state,
                _watcher: watcher,
                task,
            },
            rx,
        ))
    }

    /// The objects of the last successful read (shared, not copied).
    pub fn snapshot(&self) -> Arc<Inventory> {
        self.inventory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .inventory
            .clone()
    }

    /// Which Services changed since the last call (everything on the first), with the
    /// objects the agent needs for them (all of them for [`Dirty::All`]).
    pub fn take_changes(&self) -> (Dirty, Arc<Inventory>) {
        let mut loaded = self
            .inventory
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dirty = std::mem::take(&mut loaded.dirty);
        let inventory = match &dirty {
            Dirty::All => loaded.inventory.clone(),
            Dirty::Services(refs) => Arc::new(objects_of(&loaded.inventory, refs)),
        };
        (dirty, inventory)
    }

    /// The objects of `services` (and the Nodes).
    pub fn objects_of(&self, services: &BTreeSet<ServiceRef>) -> Inventory {
        let loaded = self
            .inventory
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        objects_of(&loaded.inventory, services)
    }

    pub fn state(&self) -> SourceState {
        self.state.borrow().clone()
    }
}

impl Drop for FileSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn objects_of(inventory: &Inventory, services: &BTreeSet<ServiceRef>) -> Inventory {
    Inventory {
        services: inventory
            .services
            .iter()
            .filter(|svc| services.contains(&service_ref_of(svc)))
            .cloned()
            .collect(),
        endpoint_slices: inventory
            .endpoint_slices
            .iter()
            .filter(|slice| slice_service(slice).is_some_and(|s| services.contains(&s)))
            .cloned()
            .collect(),
        nodes: inventory.nodes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};
    use serde_json::json;

    use super::*;

    fn svc(name: &str, ip: &str) -> core::Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]},
        }))
        .unwrap()
    }

    fn slice(name: &str, service: Option<&str>, ip: &str) -> discovery::EndpointSlice {
        let labels = service.map(|s| json!({"kubernetes.io/service-name": s}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip]}],
        }))
        .unwrap()
    }

    fn refs(names: &[&str]) -> Dirty {
        Dirty::Services(
            names
                .iter()
                .map(|n| ServiceRef {
                    namespace: "default".into(),
                    name: (*n).into(),
                })
                .collect(),
        )
    }

    #[test]
    fn a_reread_names_the_services_whose_objects_differ() {
        let base = Inventory::from_objects(
            &[svc("a", "10.96.0.1"), svc("b", "10.96.0.2")],
            &[
                slice("a-1", Some("a"), "10.0.0.1"),
                slice("b-1", Some("b"), "10.0.0.2"),
            ],
            [],
        );
        let mut endpoint = base.clone();
        endpoint.endpoint_slices[1] = Arc::new((&slice("b-1", Some("b"), "10.0.0.3")).into());
        let mut moved = base.clone();
        moved.endpoint_slices[0] = Arc::new((&slice("a-1", Some("b"), "10.0.0.1")).into());
        let mut deleted = base.clone();
        deleted.services.remove(0);
        let mut unlabelled = base.clone();
        unlabelled
            .endpoint_slices
            .push(Arc::new((&slice("x", None, "10.0.0.9")).into()));
        let mut node = base.clone();
        let w1: core::Node = serde_json::from_value(json!({"metadata": {"name": "w1"}})).unwrap();
        node.nodes.push(Arc::new((&w1).into()));
        let rows = [
            ("unchanged", &base, refs(&[])),
            ("an endpoint of b", &endpoint, refs(&["b"])),
            ("a slice relabelled from a to b", &moved, refs(&["a", "b"])),
            ("service a deleted", &deleted, refs(&["a"])),
            ("an unlabelled slice", &unlabelled, Dirty::All),
            ("a node", &node, Dirty::All),
        ];
        for (name, new, want) in rows {
            assert_eq!(changes(&base, new), want, "{name}");
        }
        let only_b = objects_of(
            &moved,
            &BTreeSet::from([ServiceRef {
                namespace: "default".into(),
                name: "b".into(),
            }]),
        );
        assert_eq!(only_b.services.len(), 1);
        assert_eq!(
            only_b.endpoint_slices.len(),
            2,
            "b's own slice and the relabelled one"
        );
    }

    #[test]
    fn only_events_on_what_is_read_cause_a_reread() {
        let dir = std::env::temp_dir().join(format!("lbctl-watched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _remove = Remove(dir.clone());
        let watched = WatchedPaths::of(&[
            PathBuf::from("/etc/lbctl/cluster.yaml"),
            PathBuf::from("local.yaml"),
            dir.clone(),
        ]);
        assert_eq!(
            watched.dirs(),
            BTreeSet::from([&PathBuf::from("/etc/lbctl"), &PathBuf::from("."), &dir]),
        );
        let rows: [(&str, Vec<PathBuf>, bool); 10] = [
            (
                "the file given",
                vec!["/etc/lbctl/cluster.yaml".into()],
                true,
            ),
            (
                "a rename over the file given",
                vec![
                    "/etc/lbctl/.cluster.yaml.tmp".into(),
                    "/etc/lbctl/cluster.yaml".into(),
                ],
                true,
            ),
            (
                "a log beside the file given",
                vec!["/etc/lbctl/agent.log".into()],
                false,
            ),
            (
                "another manifest beside the file given",
                vec!["/etc/lbctl/other.yaml".into()],
                false,
            ),
            ("a relative file given", vec!["./local.yaml".into()], true),
            (
                "a log in the working directory",
                vec!["./agent.log".into()],
                false,
            ),
            (
                "a manifest in a directory given",
                vec![dir.join("svc.json")],
                true,
            ),
            (
                "a hidden swap file in a directory given",
                vec![dir.join(".svc.yaml.swp")],
                false,
            ),
            (
                "a path outside what is watched",
                vec!["/elsewhere/x".into()],
                true,
            ),
            ("an event without paths", vec![], true),
        ];
        for (name, paths, want) in rows {
            assert_eq!(watched.concerns(&paths), want, "{name}");
        }
    }
}
