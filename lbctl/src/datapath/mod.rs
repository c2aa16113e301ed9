//! The datapath: kernel programs attached to a cgroup, and the maps that tell them where each
//! service frontend leads. This module knows BPF and nothing of Kubernetes; its input is a
//! [`Desired`] state built from a [`crate::plan::Plan`].
mod backends;
pub mod decode;
pub mod desired;
pub mod fake;
pub mod filter;
mod ids;
pub mod keep;
pub mod kfunc;
pub mod loader;
pub mod maps;
pub mod ports;
mod ranges;
pub mod state;
pub mod store;
mod sweep;
pub(crate) mod sys;
pub mod system;
pub mod terminate;
pub mod v4masters;
pub mod writer;

use std::path::{Path, PathBuf};

/// A frontend's identity, the engine's and the maps' alike (`plan::FrontendKey`).
pub use crate::plan::FrontendKey;
pub use decode::{ProgrammedFrontend, read_frontends};
pub use desired::{Desired, DesiredState, ServiceSpec, SpecRef};
pub use loader::{Capacity, DatapathConfig, Installed, Object, SocketLbScope, object_identity};
pub use maps::{Counters, Maps};
pub use store::LbMaps;
pub use terminate::{TerminateSockets, TerminationConfig, Terminator};
pub use writer::{ApplyReport, FrontendError, Writer};

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lbctl";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no cgroup v2 filesystem is mounted (none in /proc/self/mountinfo); lbctl needs cgroup v2. \
         In a pod, mount the host's /sys/fs/cgroup (hostPath volume) and pass its path with --cgroup"
    )]
    NoCgroup2,
    #[error(
        "{0} is not a cgroup v2 directory; --cgroup must name a directory of the host's cgroup2 \
         filesystem (its root, e.g. /sys/fs/cgroup, serves the whole node)"
    )]
    NotCgroup2(PathBuf),
    #[error(
        "refusing to attach to {cgroup}: it is this agent's own cgroup or lies below it ({own}), so \
         the load balancer would serve the agent alone. In a container with a private cgroup \
         namespace the cgroup2 filesystem shows only the container's own cgroup: mount the host's \
         cgroup2 root (a hostPath volume of the host's /sys/fs/cgroup, e.g. at /host/sys/fs/cgroup) \
         and pass --cgroup with that path"
    )]
    OwnCgroup { cgroup: PathBuf, own: PathBuf },
    #[error(
        "{0} is not on a bpffs; pin directories must live under a bpf filesystem (e.g. /sys/fs/bpf)"
    )]
    NotBpffs(PathBuf),
    #[error(
        "bpffs is not mounted at {path} and this process cannot mount it ({source}). Mount it on \
         the host (`mount -t bpf bpffs {path}`; systemd does it by default), and in a pod give the \
         agent a hostPath volume of the host's {path} with mountPropagation: HostToContainer"
    )]
    NoBpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no datapath is installed at {0} (no pinned maps there); start `lbctl agent` first")]
    NotInstalled(PathBuf),
    #[error(
        "the maps pinned at {pin_dir} do not match this lbctl ({detail}); remove them with `lbctl uninstall --pin-dir {pin_dir}` and start again"
    )]
    LayoutMismatch { pin_dir: PathBuf, detail: String },
    #[error("this lbctl binary was built without its kernel object (AYA_BUILD_SKIP); rebuild it")]
    NoObject,
    #[error("loading the kernel programs: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the kernel object has no map {0}")]
    MissingMap(String),
    #[error("the kernel object has no program {0}")]
    MissingProgram(String),
    #[error("program {program}: {source}")]
    Program {
        program: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning the link of program {program}: {detail}")]
    Link { program: String, detail: String },
    #[error("resolving the kernel function calls of the object: {0}")]
    Kfunc(#[from] kfunc::KfuncError),
    #[error("keeping lb_v4_masters in step with lb_services: {0}")]
    V4Masters(String),
    #[error("marking the TCP backends' ports in lb_tcp_backend_ports: {0}")]
    TcpPorts(String),
    #[error("map {map}: {source}")]
    Map {
        map: String,
        #[source]
        source: aya::maps::MapError,
    },
}

impl DatapathError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn map(map: &str, source: aya::maps::MapError) -> Self {
        Self::Map {
            map: map.to_owned(),
            source,
        }
    }

    pub(crate) fn program(program: &str, source: aya::programs::ProgramError) -> Self {
        Self::Program {
            program: program.to_owned(),
            source,
        }
    }
}

/// An attached datapath and its writer.
pub struct Datapath {
    pin_dir: PathBuf,
    installed: Installed,
    writer: Writer,
    /// The kernel object installed (`None` when opened without installing).
    object: Option<Object>,
    /// A migration waiting for its first [`Datapath::apply`] (see [`Installed::Migrating`]).
    pending: Option<(DatapathConfig, loader::Pending)>,
    /// Changes whenever the pinned maps may have been replaced (install, repair, migration):
    /// whatever holds programs loaded on the maps reloads them.
    generation: u64,
}

/// Source of [`Datapath::generation`].
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Datapath {
    /// Attaches the programs of the embedded kernel object (or adopts the ones already
    /// pinned, or upgrades them) and rebuilds the writer's view of the maps. Nothing is removed
    /// from the maps until the first [`Datapath::apply`].
    pub fn install(config: &DatapathConfig) -> Result<Self, DatapathError> {
        Self::install_object(config, Object::embedded()?)
    }

    /// As [`Datapath::install`], with another kernel object (tests of upgrades).
    pub fn install_object(config: &DatapathConfig, object: Object) -> Result<Self, DatapathError> {
        let loaded = loader::install(config, &object)?;
        restrict_pins(&config.pin_dir)?;
        let writer = Writer::adopt(loaded.maps.for_writing())?;
        Ok(Self {
            pin_dir: config.pin_dir.clone(),
            installed: loaded.installed,
            writer,
            object: Some(object),
            pending: loaded.pending.map(|p| (config.clone(), p)),
            generation: next_generation(),
        })
    }

    /// Opens an installed datapath for writing without touching its programs.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let mut maps = Maps::open(pin_dir)?;
        maps.sync_v4_masters()?;
        let writer = Writer::adopt(maps.for_writing())?;
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            installed: Installed::Adopted,
            writer,
            object: None,
            pending: None,
            generation: next_generation(),
        })
    }

    /// Makes the maps hold exactly `desired`. During a migration the new maps get it first;
    /// once every frontend fits, the programs move to them and they replace the old maps.
    pub fn apply(&mut self, desired: &impl DesiredState) -> Result<ApplyReport, DatapathError> {
        let report = self.writer.apply(desired)?;
        if self.pending.is_some() {
            if report.errors.is_empty() {
                let (config, pending) = self.pending.take().expect("checked above");
                let object = self.object.clone().map_or_else(Object::embedded, Ok)?;
                if let Err(e) = loader::complete(&config, &object, pending) {
                    // Start the migration over (new staged maps, filled by the next apply);
                    // meanwhile every hook runs on maps that hold the full state.
                    tracing::error!(error = %e, "completing the migration failed; staging again");
                    *self = Self::install_object(&config, object)?;
                    return Err(e);
                }
                self.installed = Installed::Upgraded;
                self.generation = next_generation();
                restrict_pins(&self.pin_dir)?;
            } else {
                tracing::warn!(
                    not_programmed = report.errors.len(),
                    "the new maps cannot hold every frontend: the old datapath keeps serving"
                );
            }
        }
        Ok(report)
    }

    /// A migration waits for its staged maps to be filled (by the next full apply).
    pub fn migrating(&self) -> bool {
        self.pending.is_some()
    }

    /// Applies `desired` for the frontends in `changed` only ([`Writer::apply_changed`]). While
    /// a migration waits for its staged maps to be filled, this is a full [`Datapath::apply`].
    pub fn apply_changed(
        &mut self,
        desired: &impl DesiredState,
        changed: &std::collections::BTreeSet<FrontendKey>,
    ) -> Result<ApplyReport, DatapathError> {
        if self.pending.is_some() {
            return self.apply(desired);
        }
        self.writer.apply_changed(desired, changed)
    }

    /// The kernel object this datapath was installed with (`None` when opened).
    pub fn object(&self) -> Option<&Object> {
        self.object.as_ref()
    }

    pub fn counters(&self) -> Result<Counters, DatapathError> {
        self.writer.maps().counters()
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    pub fn installed(&self) -> Installed {
        self.installed
    }

    /// See the field: equal generations mean the same pinned maps.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Pins (maps and links) that should exist under the pin directory and do not: someone
    /// removed them behind the agent's back.
    pub fn missing_pins(&self) -> Vec<PathBuf> {
        let maps = maps::MAPS
            .iter()
            .map(|m| maps::pin_path(&self.pin_dir, m.name));
        let links = loader::PROGRAMS
            .iter()
            .map(|p| loader::link_path(&self.pin_dir, p));
        maps.chain(links).filter(|p| !p.exists()).collect()
    }

    /// Puts back what [`Datapath::missing_pins`] reports. Missing links alone are re-attached
    /// to the pinned maps (nothing is lost). A missing map cannot be recovered from its pin: the
    /// datapath is rebuilt from scratch, and the next [`Datapath::apply`] refills it.
    pub fn repair(&mut self, config: &DatapathConfig) -> Result<(), DatapathError> {
        let map_missing = maps::MAPS
            .iter()
            .any(|m| !maps::pin_path(&self.pin_dir, m.name).exists());
        if map_missing {
            loader::uninstall(&self.pin_dir)?;
        }
        let object = self.object.clone().map_or_else(Object::embedded, Ok)?;
        *self = Self::install_object(config, object)?;
        Ok(())
    }
}

/// Makes the pin directory and everything in it root-only (directories 0700, pins 0600),
/// whatever the umask was: only root may open lbctl's maps and links.
fn restrict_pins(pin_dir: &Path) -> Result<(), DatapathError> {
    use std::os::unix::fs::PermissionsExt;
    let entries = std::fs::read_dir(pin_dir)
        .map_err(|e| DatapathError::io(format!("listing {}", pin_dir.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            restrict_pins(&path)?;
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| DatapathError::io(format!("setting mode of {}", path.display()), e))?;
        }
    }
    std::fs::set_permissions(pin_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| DatapathError::io(format!("setting mode of {}", pin_dir.display()), e))
}

/// Detaches the programs and removes every pin under `pin_dir`.
pub fn uninstall(pin_dir: &Path) -> Result<(), DatapathError> {
    loader::uninstall(pin_dir)
}
