//! Manifest files as a live source: the same YAML `lbctl plan` reads, re-read whenever a file
//! changes (inotify through `notify`), so editing a file reprograms the node.
//!
//! It reports through the same [`SourceState`] as the Kubernetes source: `synced` once the
//! files were read successfully one time; a later unreadable edit keeps the last good objects
//! (the datapath is never flushed because a file is broken), sets `connected = false` and says
//! why in `last_error`.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::{sync::watch, task::JoinHandle};

use super::{SourceState, manifests};
use crate::model::Inventory;

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
    /// Shared with each snapshot: a snapshot costs no copy of the objects.
    inventory: Arc<Mutex<Arc<Inventory>>>,
    state: watch::Receiver<SourceState>,
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

fn load(paths: &[PathBuf], inventory: &Mutex<Arc<Inventory>>, tx: &watch::Sender<SourceState>) {
    let result = manifests::load_paths(paths);
    tx.send_modify(|state| match result {
        Ok(objects) => {
            *inventory.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(objects);
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
        let inventory = Arc::new(Mutex::new(Arc::new(Inventory::default())));
        let (tx, rx) = watch::channel(SourceState::default());
        load(&paths, &inventory, &tx);

        let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = events_tx.send(());
                }
            })
            .map_err(|source| FileSourceError::Watch {
                path: PathBuf::new(),
                source,
            })?;
        for path in &paths {
            // Watch the directory of a file: editors replace files by renaming over them.
            let dir = if path.is_dir() {
                path.clone()
            } else {
                path.parent().map(PathBuf::from).unwrap_or_default()
            };
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| FileSourceError::Watch {
                    path: dir.clone(),
                    source,
                })?;
        }

        let task_inventory = inventory.clone();
        let task = tokio::spawn(async move {
            while events_rx.recv().await.is_some() {
                // A save is often several events; let them settle, then read once.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while events_rx.try_recv().is_ok() {}
                load(&paths, &task_inventory, &tx);
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

    /// The objects of the last successful read.
    pub fn snapshot(&self) -> Arc<Inventory> {
        self.inventory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
