//! Socket termination: after an apply removed backends from frontends, every connected socket
//! that lbctl translated to such a backend is destroyed, so the client's next `send`/`recv`
//! fails at once and it reconnects to a live backend (kube-proxy clears conntrack entries for
//! the same reason). The kernel side is `lb-ebpf/src/iter.rs`; this module loads its iterator
//! programs on the pinned maps and runs them in the network namespaces it is asked to cover.
//!
//! The iterators run in the agent's network namespace and those it is told to cover
//! ([`super::sweep`]).
use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    sync::Mutex,
};

use aya::maps::{HashMap, IterableMap as _, MapData};
use lb_common::{DEPARTED_CAPACITY, DEPARTED_MAP, IPPROTO_TCP, IPPROTO_UDP, MemberKey, Terminated};

pub use super::sweep::check_netns_dir;
use super::{DatapathConfig, DatapathError, Object, kfunc, loader, sweep, sys};

/// Which connected sockets are terminated when their backend leaves the set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TerminateSockets {
    /// None: sockets keep their backend until they close.
    None,
    /// Connected UDP sockets (the default): a resolver's socket would otherwise keep sending
    /// to a removed backend forever, as no later hook sees its datagrams.
    #[default]
    Udp,
    /// Connected UDP and TCP sockets: also aborts established TCP connections to a removed
    /// backend (they see ECONNABORTED), instead of letting them drain.
    UdpTcp,
}

impl TerminateSockets {
    fn tcp(self) -> bool {
        self == Self::UdpTcp
    }
}

/// What to terminate, and where.
#[derive(Clone, Debug, Default)]
pub struct TerminationConfig {
    pub sockets: TerminateSockets,
    /// Directories of network namespace handles (bind mounts such as the CNI's
    /// `/var/run/netns/cni-…`) whose sockets are swept too, besides the agent's own namespace.
    /// Empty: the agent's namespace (the host's) only.
    pub netns_dirs: Vec<PathBuf>,
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Sockets destroyed (or refused by the kernel: `error != 0`).
    pub terminated: Vec<Terminated>,
    /// Network namespaces swept, the agent's own included.
    pub namespaces: usize,
    /// Namespaces that could not be entered or swept, with why.
    pub errors: Vec<String>,
}

impl Sweep {
    /// Sockets destroyed, by protocol: (UDP, TCP).
    pub fn counts(&self) -> (u64, u64) {
        let ok = |proto| {
            self.terminated
                .iter()
                .filter(|t| t.error == 0 && t.proto == proto)
                .count() as u64
        };
        (ok(IPPROTO_UDP), ok(IPPROTO_TCP))
    }

    /// Sockets the kernel refused to destroy.
    pub fn failed(&self) -> u64 {
        self.terminated.iter().filter(|t| t.error != 0).count() as u64
    }
}

/// The iterator programs, loaded on the pinned maps, with one link each.
pub struct Terminator {
    // Owns the programs the links run.
    _ebpf: aya::Ebpf,
    udp: OwnedFd,
    tcp: Option<OwnedFd>,
    /// `lb_departed`: filled with the departed pairs for the length of a sweep.
    departed: Mutex<HashMap<MapData, MemberKey, u32>>,
    config: TerminationConfig,
    /// One sweep at a time.
    running: Mutex<()>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why socket termination is off on this node.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("socket termination is off (--terminate-sockets none)")]
    Disabled,
    #[error(
        "this kernel cannot destroy sockets from BPF (bpf_sock_destroy needs Linux 6.5+ with BTF): {0}"
    )]
    NoKfunc(String),
    #[error("loading the socket iterators: {0}")]
    Load(#[from] DatapathError),
}

impl Terminator {
    /// Loads `object`'s iterator programs on the maps pinned under `config.pin_dir` (which must
    /// all exist and have this object's layout: not during a migration).
    pub fn load(
        datapath: &DatapathConfig,
        object: &Object,
        config: &TerminationConfig,
    ) -> Result<Self, Unavailable> {
        if config.sockets == TerminateSockets::None {
            return Err(Unavailable::Disabled);
        }
        let (mut ebpf, resolution) = loader::load_on_pinned(datapath, object)?;
        if let kfunc::Resolution::Missing { reason, .. } = resolution {
            return Err(Unavailable::NoKfunc(reason));
        }
        let btf = aya::Btf::from_sys_fs().map_err(|e| Unavailable::NoKfunc(e.to_string()))?;
        let udp = sweep::link(&mut ebpf, &btf, "lb_iter_udp", "udp")?;
        let tcp = if config.sockets.tcp() {
            Some(sweep::link(&mut ebpf, &btf, "lb_iter_tcp", "tcp")?)
        } else {
            None
        };
        let map = ebpf
            .take_map(DEPARTED_MAP)
            .ok_or_else(|| DatapathError::MissingMap(DEPARTED_MAP.to_owned()))?;
        let mut departed: HashMap<MapData, MemberKey, u32> =
            HashMap::try_from(map).map_err(|e| DatapathError::map(DEPARTED_MAP, e))?;
        // Pairs a sweep that died half-way (an agent killed in it) left behind.
        let stale: Vec<MemberKey> = departed.keys().filter_map(Result::ok).collect();
        for key in &stale {
            let _ = departed.remove(key);
        }
        Ok(Self {
            _ebpf: ebpf,
            udp,
            tcp,
            departed: Mutex::new(departed),
            config: config.clone(),
            running: Mutex::new(()),
        })
    }

    /// Terminates, in the agent's own network namespace and in every namespace under the
    /// configured directories, the connected sockets whose backend left their frontend's set:
    /// UDP sockets whose backend is no member of their frontend any more, and (with TCP
    /// termination on) TCP sockets whose (frontend id, backend id) pair is in `departed`, the
    /// pairs the apply being swept took from TCP frontends ([`super::ApplyReport::departed`]).
    /// The pairs are in `lb_departed` for the length of the sweep only, at most
    /// [`DEPARTED_CAPACITY`] at a time (more take one more pass of the TCP iterator each).
    /// Blocking: call it off the async runtime.
    pub fn sweep(&self, departed: &[(u32, u32)]) -> Sweep {
        let _one = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut sweep = Sweep::default();
        let tcp_pairs = if self.tcp.is_some() { departed } else { &[] };
        let mut chunks = tcp_pairs.chunks(DEPARTED_CAPACITY as usize);
        // The first pass runs the UDP iterator (whatever `departed` holds) and the TCP one on
        // the first chunk; the others run the TCP iterator on one chunk each.
        let mut first = true;
        loop {
            let chunk = chunks.next();
            if !first && chunk.is_none() {
                break;
            }
            let keys: Vec<MemberKey> = chunk
                .unwrap_or_default()
                .iter()
                .map(|&(frontend_id, backend_id)| MemberKey {
                    frontend_id,
                    backend_id,
                })
                .collect();
            let filled = match self.fill_departed(&keys) {
                Ok(()) => true,
                Err(e) => {
                    sweep.errors.push(format!(
                        "writing the departed pairs into {DEPARTED_MAP}: {e}"
                    ));
                    false
                }
            };
            let pass = Pass {
                udp: first,
                tcp: filled && !keys.is_empty(),
            };
            self.sweep_everywhere(&mut sweep, pass);
            if let Err(e) = self.clear_departed(&keys) {
                sweep.errors.push(format!(
                    "removing the departed pairs from {DEPARTED_MAP}: {e}"
                ));
            }
            first = false;
        }
        sweep
    }

    fn fill_departed(&self, keys: &[MemberKey]) -> std::io::Result<()> {
        let map = self.departed.lock().unwrap_or_else(|e| e.into_inner());
        let ones = vec![1u32; keys.len()];
        sys::map_update_batch(map.map().fd().as_fd(), keys, &ones).map_err(|f| f.error)
    }

    /// Empties `lb_departed` of `keys` (a key that is not there is skipped).
    fn clear_departed(&self, keys: &[MemberKey]) -> std::io::Result<()> {
        let map = self.departed.lock().unwrap_or_else(|e| e.into_inner());
        let mut start = 0;
        while start < keys.len() {
            match sys::map_delete_batch(map.map().fd().as_fd(), &keys[start..]) {
                Ok(()) => return Ok(()),
                Err(f) if f.error.raw_os_error() == Some(libc::ENOENT) => start += f.done + 1,
                Err(f) => return Err(f.error),
            }
        }
        Ok(())
    }

    /// One pass of the chosen iterators in every namespace to cover.
    fn sweep_everywhere(&self, sweep: &mut Sweep, pass: Pass) {
        if !pass.udp && !pass.tcp {
            return;
        }
        let mut part = Sweep::default();
        let (_, errors) = sweep::each_namespace(&self.config.netns_dirs, |namespace| {
            self.sweep_here(&mut part, namespace, pass);
        });
        sweep.terminated.extend(part.terminated);
        sweep.namespaces += part.namespaces;
        sweep.errors.extend(part.errors);
        sweep.errors.extend(errors);
    }

    /// Runs the iterators of `pass` in the calling thread's network namespace.
    fn sweep_here(&self, sweep: &mut Sweep, namespace: &str, pass: Pass) {
        if pass.udp {
            sweep.namespaces += 1;
        }
        let udp = pass.udp.then_some(&self.udp);
        let tcp = self.tcp.as_ref().filter(|_| pass.tcp);
        for link in udp.into_iter().chain(tcp) {
            for round in 0..RUNS_PER_PASS {
                match sweep::run::<Terminated>(link) {
                    Ok(records) => {
                        let destroyed = records.iter().any(|t| t.error == 0);
                        // A socket the kernel refused is refused again: reported once.
                        sweep
                            .terminated
                            .extend(records.into_iter().filter(|t| round == 0 || t.error == 0));
                        if !destroyed {
                            break;
                        }
                    }
                    Err(e) => {
                        sweep
                            .errors
                            .push(format!("sweeping the sockets of {namespace}: {e}"));
                        break;
                    }
                }
            }
        }
    }
}

/// Runs of one iterator in one pass, at most. The kernel's socket iterators walk a hash bucket
/// in batches: a socket destroyed during a run can shift the rest of its bucket so that the
/// run skips a neighbour. A run that destroyed something is therefore followed by another,
/// until one destroys nothing; a destroyed socket is no longer connected, so no run counts it
/// twice.
const RUNS_PER_PASS: usize = 4;

/// Which iterators one pass of a sweep runs.
#[derive(Clone, Copy, Debug)]
struct Pass {
    udp: bool,
    tcp: bool,
}
