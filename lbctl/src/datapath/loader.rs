//! Loading, attaching and pinning the kernel programs, adopting what an earlier agent pinned,
//! and removing it all.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::{
    AFFINITY_MAP, BACKENDS_MAP, FRONTEND_STATS_MAP, MEMBERS_MAP, REVNAT_MAP, SERVICES_MAP,
};

use super::{
    DatapathError,
    maps::{self, Maps},
    system,
};

/// The object built by `build.rs` from `lb-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// SHA-256 (hex) of the kernel object this binary embeds, `None` when it was built without one
/// (`AYA_BUILD_SKIP`): which programs exactly this lbctl loads (served as `lbctl_build_info`).
pub fn object_identity() -> Option<&'static str> {
    static IDENTITY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    IDENTITY
        .get_or_init(|| {
            (!OBJECT.is_empty()).then(|| {
                ring::digest::digest(&ring::digest::SHA256, OBJECT)
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
        })
        .as_deref()
}

/// The programs, each attached to the hook its name says (`cgroup/connect4`, ...), in attach
/// order: the hooks that release and read reverse state come before the ones that write it, so
/// every translated socket has its reverse translation and its cleanup from the start.
pub const PROGRAMS: [&str; 9] = [
    "lb_sock_release",
    "lb_getpeername4",
    "lb_getpeername6",
    "lb_recvmsg4",
    "lb_recvmsg6",
    "lb_connect4",
    "lb_connect6",
    "lb_sendmsg4",
    "lb_sendmsg6",
];

/// The one program of [`PROGRAMS`] that is a `cgroup_sock` program (the others are
/// `cgroup_sock_addr` programs).
const SOCK_RELEASE: &str = "lb_sock_release";

/// Map capacities, set when the maps are created (an adopted map keeps its size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Entries of `lb_services`: one master per frontend plus one slot per backend of it.
    pub service_entries: u32,
    /// Entries of `lb_backends`.
    pub backends: u32,
    /// Frontend ids (size of the per-frontend counters).
    pub frontends: u32,
    /// Sockets whose translation is remembered at once (`lb_revnat`, an LRU hash the kernel
    /// preallocates: about 120 bytes per entry). Needed for UDP replies, `getpeername` and UDP
    /// stickiness; when full, the least recently used socket loses it.
    pub revnat: u32,
    /// Session affinity entries, one per (client network namespace, frontend) (`lb_affinity`,
    /// an LRU hash, preallocated).
    pub affinity: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            service_entries: lb_common::DEFAULT_MAX_SERVICE_ENTRIES,
            backends: lb_common::DEFAULT_MAX_BACKENDS,
            frontends: lb_common::DEFAULT_MAX_FRONTENDS,
            revnat: lb_common::DEFAULT_MAX_REVNAT,
            affinity: lb_common::DEFAULT_MAX_AFFINITY,
        }
    }
}

/// Which sockets the programs serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SocketLbScope {
    /// Sockets of every network namespace (pods and the host).
    #[default]
    All,
    /// Sockets of the host network namespace only (the agent's own namespace: it runs with
    /// hostNetwork); sockets of pods in their own namespaces are left alone, for a node where
    /// another component balances pod traffic.
    HostOnly,
}

impl std::fmt::Display for SocketLbScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::HostOnly => "host-only",
        })
    }
}

/// The cookie of the network namespace this process runs in (`SO_NETNS_COOKIE`, Linux 5.14+):
/// what `bpf_get_netns_cookie` returns for a socket in the same namespace.
pub fn current_netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    /// From asm-generic/socket.h; the libc crate does not define it.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else; OwnedFd closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`, which lives across the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Where and how to install the datapath.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// bpffs directory for the pinned maps and links, e.g. `/sys/fs/bpf/lbctl`.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory whose processes (and descendants) get the socket load balancer.
    pub cgroup: PathBuf,
    pub capacity: Capacity,
    /// Which sockets the programs serve. Applied on every install, also to adopted programs.
    pub scope: SocketLbScope,
}

/// How [`install`] found the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Programs loaded, attached and pinned just now.
    Fresh,
    /// Programs were already attached and pinned; their maps were adopted as they are.
    Adopted,
}

pub(crate) fn link_path(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join("links").join(program)
}

/// Loads and attaches the programs unless they are already pinned under `pin_dir`, in which case
/// the pinned maps are adopted (after a layout check) and nothing is detached: connects keep
/// working on the last programmed state throughout.
pub fn install(config: &DatapathConfig) -> Result<(Maps, Installed), DatapathError> {
    if OBJECT.is_empty() {
        return Err(DatapathError::NoObject);
    }
    system::ensure_pin_dir(&config.pin_dir)?;
    maps::check_pinned_layout(&config.pin_dir)?;
    let all_linked = PROGRAMS
        .iter()
        .all(|p| link_path(&config.pin_dir, p).exists());
    if all_linked {
        let mut maps = Maps::open(&config.pin_dir)?;
        maps.stamp_or_check_version(&config.pin_dir)?;
        set_scope(&mut maps, config)?;
        return Ok((maps, Installed::Adopted));
    }

    let cgroup = fs::File::open(&config.cgroup)
        .map_err(|e| DatapathError::io(format!("opening cgroup {}", config.cgroup.display()), e))?;
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(&config.pin_dir)
        .map_max_entries(SERVICES_MAP, config.capacity.service_entries)
        .map_max_entries(BACKENDS_MAP, config.capacity.backends)
        .map_max_entries(FRONTEND_STATS_MAP, config.capacity.frontends)
        // One membership per backend slot, so as many as service entries.
        .map_max_entries(MEMBERS_MAP, config.capacity.service_entries)
        .map_max_entries(REVNAT_MAP, config.capacity.revnat)
        .map_max_entries(AFFINITY_MAP, config.capacity.affinity);
    let pin_paths: Vec<(&str, PathBuf)> = maps::EXPECTED
        .iter()
        .map(|(name, _, _)| (*name, maps::pin_path(&config.pin_dir, name)))
        .collect();
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OBJECT).map_err(DatapathError::Load)?;
    let mut maps = Maps::take(&mut ebpf)?;
    maps.stamp_or_check_version(&config.pin_dir)?;
    set_scope(&mut maps, config)?;

    system::create_private_dir(&config.pin_dir.join("links"))?;
    for name in PROGRAMS {
        let path = link_path(&config.pin_dir, name);
        if path.exists() {
            continue;
        }
        let link = attach(&mut ebpf, name, &cgroup)?;
        link.pin(&path).map_err(|e| DatapathError::Link {
            program: name.to_owned(),
            detail: e.to_string(),
        })?;
    }
    tracing::info!(pin_dir = %config.pin_dir.display(), cgroup = %config.cgroup.display(), "datapath attached");
    Ok((maps, Installed::Fresh))
}

/// Loads one program and attaches it to `cgroup` with a bpf_link (which always lets other
/// programs coexist on the same cgroup).
fn attach(ebpf: &mut aya::Ebpf, name: &str, cgroup: &fs::File) -> Result<FdLink, DatapathError> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::MissingProgram(name.to_owned()))?;
    let link_error = |e: aya::programs::links::LinkError| DatapathError::Link {
        program: name.to_owned(),
        detail: e.to_string(),
    };
    let err = |e| DatapathError::program(name, e);
    if name == SOCK_RELEASE {
        let program: &mut CgroupSock = program.try_into().map_err(err)?;
        program.load().map_err(err)?;
        let id = program
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(err)?;
        program
            .take_link(id)
            .map_err(err)?
            .try_into()
            .map_err(link_error)
    } else {
        let program: &mut CgroupSockAddr = program.try_into().map_err(err)?;
        program.load().map_err(err)?;
        let id = program
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(err)?;
        program
            .take_link(id)
            .map_err(err)?
            .try_into()
            .map_err(link_error)
    }
}

/// Writes the configured scope (and the host network namespace's cookie) into `lb_meta`.
fn set_scope(maps: &mut Maps, config: &DatapathConfig) -> Result<(), DatapathError> {
    let cookie = current_netns_cookie()
        .map_err(|e| DatapathError::io("reading the network namespace cookie", e))?;
    maps.set_scope(config.scope == SocketLbScope::HostOnly, cookie)?;
    tracing::debug!(scope = %config.scope, netns_cookie = cookie, "socket LB scope set");
    Ok(())
}

/// Detaches the programs (by removing their pinned links) and removes the pinned maps and the
/// pin directory. Safe to run twice; missing pieces are skipped.
pub fn uninstall(pin_dir: &Path) -> Result<(), DatapathError> {
    let rm = |path: &Path| match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::io(format!("removing {}", path.display()), e)),
    };
    for program in PROGRAMS {
        let path = link_path(pin_dir, program);
        // Hold the link open while removing its pin: the kernel drops a link whose last
        // reference was its pin from a workqueue, a moment later, whereas closing the last
        // descriptor detaches it before close() returns. So the programs are detached when
        // this function returns.
        let held = PinnedLink::from_pin(&path).ok().map(FdLink::from);
        rm(&path)?;
        drop(held);
    }
    for (name, _, _) in maps::EXPECTED {
        rm(&maps::pin_path(pin_dir, name))?;
    }
    for dir in [pin_dir.join("links"), pin_dir.to_path_buf()] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DatapathError::io(format!("removing {}", dir.display()), e)),
        }
    }
    Ok(())
}
