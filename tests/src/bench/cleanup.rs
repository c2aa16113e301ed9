//! Everything the benchmark creates on the host (network namespaces, cgroups, pin directories,
//! child processes) is registered here while it exists. Normal and error paths clean up with
//! `Drop`; on SIGINT, SIGTERM or SIGHUP a handler thread removes whatever is still registered
//! and exits. Guards clean while holding the registry lock, so the handler never races a guard
//! half-way through its own cleanup.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

/// A thing on the host that must not outlive the benchmark.
#[derive(Clone, Debug)]
pub enum Resource {
    /// A named network namespace (`ip netns add`), with the rules loaded inside it.
    Netns(String),
    /// A cgroup v2 directory: its processes are killed, then it is removed.
    Cgroup(PathBuf),
    /// A bpffs pin directory of an installed datapath: programs detached, maps unpinned.
    PinDir(PathBuf),
    /// A child process.
    Process(u32),
}

struct Registry {
    next: u64,
    live: Vec<(u64, Resource)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    live: Vec::new(),
});

fn lock() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock must not stop the cleanup of everything else.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The registration of one live resource.
#[derive(Debug)]
pub struct Registration(u64);

fn register_in(reg: &mut Registry, resource: Resource) -> Registration {
    reg.next += 1;
    let id = reg.next;
    reg.live.push((id, resource));
    Registration(id)
}

/// Registers something whose name is known before it is created (register first, then create:
/// removing a thing that does not exist yet is harmless).
pub fn register(resource: Resource) -> Registration {
    register_in(&mut lock(), resource)
}

/// Creates something and registers it under the registry lock, so that a signal can never
/// fall between the two.
pub fn track<T>(
    make: impl FnOnce() -> Result<T>,
    describe: impl FnOnce(&T) -> Resource,
) -> Result<Tracked<T>> {
    let mut reg = lock();
    let inner = make()?;
    let registration = register_in(&mut reg, describe(&inner));
    Ok(Tracked {
        inner: Some(inner),
        registration: Some(registration),
    })
}

/// A guard (one that cleans up on drop) that is also registered for the signal path.
pub struct Tracked<T> {
    inner: Option<T>,
    registration: Option<Registration>,
}

impl<T> std::ops::Deref for Tracked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.inner.as_ref().expect("a live guard")
    }
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        let inner = self.inner.take();
        if let Some(r) = self.registration.take() {
            r.release(|| drop(inner));
        }
    }
}

impl Registration {
    /// Runs `clean` under the registry lock, then forgets the resource.
    pub fn release(self, clean: impl FnOnce()) {
        let mut reg = lock();
        clean();
        reg.live.retain(|(id, _)| *id != self.0);
    }
}

/// Best-effort removal of one resource (the signal path; guards clean their own way).
fn remove(resource: &Resource) {
    match resource {
        Resource::Netns(name) => {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        Resource::Cgroup(path) => kill_cgroup(path),
        Resource::PinDir(path) => {
            if let Err(e) = lbctl::datapath::uninstall(path) {
                eprintln!("warning: removing {}: {e}", path.display());
            }
        }
        Resource::Process(pid) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Kills every process of a cgroup (`cgroup.kill`), then removes it.
pub fn kill_cgroup(path: &Path) {
    for _ in 0..250 {
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            break;
        }
        let _ = std::fs::write(path.join("cgroup.kill"), "1");
        thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..100 {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    eprintln!("warning: could not remove cgroup {}", path.display());
}

/// Starts the thread that, on SIGINT, SIGTERM or SIGHUP, removes everything registered and
/// exits with 128 + the signal number.
pub fn install_signal_handler() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("building the signal runtime")?;
    let (mut int, mut term, mut hup) = {
        let _enter = runtime.enter();
        (
            signal(SignalKind::interrupt()).context("handling SIGINT")?,
            signal(SignalKind::terminate()).context("handling SIGTERM")?,
            signal(SignalKind::hangup()).context("handling SIGHUP")?,
        )
    };
    thread::Builder::new()
        .name("lb-bench-signals".into())
        .spawn(move || {
            let number = runtime.block_on(async {
                tokio::select! {
                    _ = int.recv() => libc::SIGINT,
                    _ = term.recv() => libc::SIGTERM,
                    _ = hup.recv() => libc::SIGHUP,
                }
            });
            eprintln!("\nlb-bench: signal {number}: cleaning up");
            let reg = lock();
            for (_, resource) in reg.live.iter().rev() {
                remove(resource);
            }
            eprintln!("lb-bench: cleaned up");
            std::process::exit(128 + number);
        })
        .context("starting the signal thread")?;
    Ok(())
}
