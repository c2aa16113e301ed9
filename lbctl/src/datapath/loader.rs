//! Loading, attaching and pinning the kernel programs, adopting what an earlier agent pinned,
//! and removing it all.
use std::{
    borrow::Cow,
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, MapData},
    programs::{
        CgroupAttachMode, CgroupSockAddr,
        links::{FdLink, PinnedLink},
    },
};

use super::{
    DatapathError, kfunc,
    maps::{self, Maps},
    state::{self, STATE_MAP, State},
    sys, system,
};
use lb_common::{SOCK_MAP, TCP_PORTS_MAP};

/// The object built by `build.rs` from `lb-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// SHA-256 (hex) of the kernel object this binary embeds, `None` when it was built without one
/// (`AYA_BUILD_SKIP`): which programs exactly this lbctl loads (served as `lbctl_build_info`).
pub fn object_identity() -> Option<&'static str> {
    static IDENTITY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    IDENTITY
        .get_or_init(|| (!OBJECT.is_empty()).then(|| state::sha256_hex(OBJECT)))
        .as_deref()
}

/// The programs, each attached to the hook its name says (`cgroup/connect4`, ...), in attach
/// order: the hooks that read reverse state come before the ones that write it, so every
/// translated socket has its reverse translation from the start.
pub const PROGRAMS: [&str; 8] = [
    "lb_getpeername4",
    "lb_getpeername6",
    "lb_recvmsg4",
    "lb_recvmsg6",
    "lb_connect4",
    "lb_connect6",
    "lb_sendmsg4",
    "lb_sendmsg6",
];

/// Programs that earlier lbctl versions attached and this one does not: their pinned links are
/// removed (the programs detached) once this object's programs serve the hooks, with the maps
/// only they used (`lb_common::RETIRED_MAPS`). `lb_sock_release` deleted a closing TCP socket's
/// `lb_revnat` entry; the translation now lives in the socket and goes with it.
pub const RETIRED_PROGRAMS: [&str; 1] = ["lb_sock_release"];

/// Map capacities, set when the maps are created. Pinned maps of other capacities are replaced
/// (see [`Installed::Migrating`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capacity {
    /// Elements of `lb_slots` (and entries of `lb_members`): one per backend of each frontend,
    /// a range per frontend. (`lb_services` holds the masters: `frontends` entries.)
    pub service_entries: u32,
    /// Elements of `lb_backends`, an array indexed by backend id: ids 1 to `backends - 1`.
    pub backends: u32,
    /// Frontend ids (size of the per-frontend counters).
    pub frontends: u32,
    /// Session affinity entries, one per (client network namespace, frontend) (`lb_affinity`,
    /// an LRU hash, preallocated).
    pub affinity: u32,
    /// Elements of `lb_tcp_recent`, a power of two: the translations of the latest TCP connects,
    /// until the agent keeps those of sockets still connected in their storage (after every
    /// quarter of this many connects). State records of earlier lbctl versions have none: the
    /// default.
    #[serde(default = "default_tcp_recent")]
    pub tcp_recent: u32,
}

fn default_tcp_recent() -> u32 {
    lb_common::DEFAULT_TCP_RECENT
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            service_entries: lb_common::DEFAULT_MAX_SERVICE_ENTRIES,
            backends: lb_common::DEFAULT_MAX_BACKENDS,
            frontends: lb_common::DEFAULT_MAX_FRONTENDS,
            affinity: lb_common::DEFAULT_MAX_AFFINITY,
            tcp_recent: lb_common::DEFAULT_TCP_RECENT,
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
    super::sys::netns_cookie()
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

/// A kernel object to load: the one embedded in this binary, or (for tests of upgrades) one
/// read from a file. Its identity is its SHA-256.
#[derive(Clone, Debug)]
pub struct Object {
    bytes: Cow<'static, [u8]>,
    sha256: String,
}

impl Object {
    /// The object `build.rs` built from `lb-ebpf` and embedded in this binary.
    pub fn embedded() -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        Ok(Self {
            bytes: Cow::Borrowed(OBJECT),
            sha256: state::sha256_hex(OBJECT),
        })
    }

    /// An object read from a file.
    pub fn from_file(path: &Path) -> Result<Self, DatapathError> {
        let bytes = fs::read(path)
            .map_err(|e| DatapathError::io(format!("reading {}", path.display()), e))?;
        Ok(Self {
            sha256: state::sha256_hex(&bytes),
            bytes: Cow::Owned(bytes),
        })
    }

    /// SHA-256 of the object, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The ELF bytes, as built (before [`kfunc`] patches them for this kernel).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// How `install` found the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Programs loaded, attached and pinned just now.
    Fresh,
    /// The same object's programs were already attached and pinned; their maps were adopted as
    /// they are.
    Adopted,
    /// Another object's programs were attached: this object's programs replaced them on the
    /// pinned links (`BPF_LINK_UPDATE`), keeping the pinned maps.
    Upgraded,
    /// The pinned maps have another layout or other capacities: new maps are staged, and the
    /// first [`crate::datapath::Datapath::apply`] fills them, swaps the programs and replaces
    /// the old maps' pins.
    Migrating,
}

pub(crate) fn link_path(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join("links").join(program)
}

/// Where a migration stages its new maps until they replace the pinned ones (bpffs refuses
/// names with a dot).
pub(crate) fn staging_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("staging")
}

/// A loaded object whose programs wait to replace the attached ones, with new maps pinned in
/// the staging directory (a migration).
pub struct Pending {
    ebpf: aya::Ebpf,
    reason: String,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// What [`install`] leaves behind.
pub(crate) struct Loaded {
    pub maps: Maps,
    pub installed: Installed,
    pub pending: Option<Pending>,
}

/// Installs `object` under `config.pin_dir` on `config.cgroup`, whatever is there:
/// - nothing pinned: load, attach, pin ([`Installed::Fresh`]);
/// - the same object attached, maps of this layout and capacities: adopt the maps as they are,
///   detaching nothing ([`Installed::Adopted`]);
/// - another object attached, maps compatible: load it on the pinned maps and swap each
///   pinned link to its new program in one step, readers first ([`Installed::Upgraded`]);
/// - maps of another layout or capacity: stage new maps and leave the attached programs
///   serving until the caller has filled them ([`Installed::Migrating`], [`complete`]).
///
/// Connects keep working throughout: nothing is detached, no map is emptied.
pub(crate) fn install(config: &DatapathConfig, object: &Object) -> Result<Loaded, DatapathError> {
    let attach_point = system::verify_attach_point(&config.cgroup)?;
    tracing::info!(
        cgroup = %attach_point.path.display(),
        cgroup_id = attach_point.cgroup_id,
        whole_node = attach_point.is_root(),
        "attach point verified"
    );
    system::ensure_pin_dir(&config.pin_dir)?;
    // A migration that died before it completed left staged maps: start over.
    remove_pins(&staging_dir(&config.pin_dir))?;
    let pin_dir = &config.pin_dir;
    let linked: Vec<bool> = PROGRAMS
        .iter()
        .map(|p| link_path(pin_dir, p).exists())
        .collect();
    let any_linked = linked.iter().any(|l| *l);
    let recorded = state::read(pin_dir).ok().flatten();
    let same_object = recorded
        .as_ref()
        .is_some_and(|s| s.object_sha256 == object.sha256);
    let attach_point = effective_attach_point(recorded.as_ref(), any_linked, attach_point);

    let pinned = maps::inspect_pinned(pin_dir, &config.capacity)?;
    if let maps::Pinned::Replace(reason) = &pinned {
        if any_linked {
            let loaded = stage(config, object, reason)?;
            tracing::info!(
                pin_dir = %pin_dir.display(),
                reason = %reason,
                "the pinned maps must be replaced: new maps staged; they replace the old ones after the first apply"
            );
            return Ok(loaded);
        }
        // Nothing reads the old maps: drop them and start afresh.
        tracing::info!(pin_dir = %pin_dir.display(), reason = %reason, "replacing unattached pinned maps");
        remove_maps(pin_dir)?;
    }

    if linked.iter().all(|l| *l) && same_object && pinned == maps::Pinned::Compatible {
        let mut maps = Maps::open(pin_dir)?;
        maps.stamp_or_check_version(pin_dir)?;
        set_scope(&mut maps, config)?;
        // The same programs kept the cache, but an agent may have died between a master and
        // its copy.
        maps.sync_v4_masters()?;
        record(config, object, &attach_point)?;
        retire(pin_dir)?;
        return Ok(Loaded {
            maps,
            installed: Installed::Adopted,
            pending: None,
        });
    }

    let cgroup = open_cgroup(&config.cgroup)?;
    let ports_unknown = maps::pin_path(pin_dir, SOCK_MAP).exists()
        && !maps::pin_path(pin_dir, TCP_PORTS_MAP).exists();
    let (mut ebpf, _) = load(config, object, pin_dir)?;
    if ports_unknown {
        mark_every_port(&mut ebpf)?;
    }
    let mut maps = Maps::take(&mut ebpf)?;
    maps.stamp_or_check_version(pin_dir)?;
    set_scope(&mut maps, config)?;
    // Before these programs read the cache: the masters may have changed under programs (and
    // an agent) that did not keep it.
    maps.sync_v4_masters()?;
    // Before these programs run: they mark no port at connect, where older ones did.
    if let Some(buckets) = maps.mark_backend_ports()? {
        tracing::debug!(
            buckets,
            "{TCP_PORTS_MAP}: the ports of the TCP backends marked"
        );
    }

    system::create_private_dir(&pin_dir.join("links"))?;
    let mut upgraded = false;
    for name in PROGRAMS {
        let path = link_path(pin_dir, name);
        if path.exists() {
            if !same_object {
                replace_program(&mut ebpf, name, &path)?;
                upgraded = true;
            }
            continue;
        }
        let link = attach(&mut ebpf, name, &cgroup)?;
        link.pin(&path).map_err(|e| DatapathError::Link {
            program: name.to_owned(),
            detail: e.to_string(),
        })?;
    }
    record(config, object, &attach_point)?;
    retire(pin_dir)?;
    let installed = if upgraded {
        tracing::info!(
            pin_dir = %pin_dir.display(),
            object_sha256 = %object.sha256,
            previous = recorded.as_ref().map_or("unknown", |s| s.object_sha256.as_str()),
            "programs replaced on the pinned links; maps kept"
        );
        Installed::Upgraded
    } else {
        tracing::info!(pin_dir = %pin_dir.display(), cgroup = %config.cgroup.display(), "datapath attached");
        Installed::Fresh
    };
    Ok(Loaded {
        maps,
        installed,
        pending: None,
    })
}

/// Marks every bucket of a `lb_tcp_backend_ports` created beside a pinned `lb_sock`: the TCP
/// sockets an older agent's programs translated may keep their translation in their storage
/// with no mark for its port, and `getpeername` looks for a TCP translation only on a marked
/// port. The price is the old behaviour: every accepted socket's `getpeername` looks its
/// storage up.
fn mark_every_port(ebpf: &mut aya::Ebpf) -> Result<(), DatapathError> {
    let map = ebpf
        .map_mut(TCP_PORTS_MAP)
        .ok_or_else(|| DatapathError::MissingMap(TCP_PORTS_MAP.to_owned()))?;
    let mut ports: Array<&mut MapData, [u8; 1024]> =
        Array::try_from(map).map_err(|e| DatapathError::map(TCP_PORTS_MAP, e))?;
    ports
        .set(0, [1; 1024], 0)
        .map_err(|e| DatapathError::map(TCP_PORTS_MAP, e))?;
    tracing::info!(
        "lb_tcp_backend_ports created beside the pinned sockets' storage: every port marked"
    );
    Ok(())
}

/// Loads `object` with its maps pinned under `map_dir` (reused when pinned there already,
/// created and pinned otherwise), sized by `config.capacity`, its kfunc calls resolved for this
/// kernel ([`kfunc`]).
pub(crate) fn load(
    config: &DatapathConfig,
    object: &Object,
    map_dir: &Path,
) -> Result<(aya::Ebpf, kfunc::Resolution), DatapathError> {
    let pin_paths: Vec<(&str, PathBuf, u32)> = maps::MAPS
        .iter()
        .map(|m| {
            (
                m.name,
                maps::pin_path(map_dir, m.name),
                (m.capacity)(&config.capacity),
            )
        })
        .collect();
    // Before the loader: each parses the kernel's BTF (tens of MiB while parsed), and the
    // kfunc's copy is gone by the time the loader makes its own.
    let (bytes, resolution) = kfunc::patch(
        &object.bytes,
        kfunc::SOCK_DESTROY,
        kfunc::kernel_btf_id(kfunc::SOCK_DESTROY),
    )?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(map_dir);
    for (name, path, capacity) in &pin_paths {
        loader
            .map_max_entries(name, *capacity)
            .map_pin_path(name, path.as_path());
    }
    let ebpf = loader.load(&bytes).map_err(DatapathError::Load)?;
    Ok((ebpf, resolution))
}

/// Where [`load_on_pinned`] pins the maps for a moment (bpffs refuses names with a dot).
fn borrowed_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("borrowed")
}

/// Loads `object` on the maps pinned under `config.pin_dir`, which must all exist: unlike
/// [`load`], a missing map is an error, never created (a new empty map pinned in place of one
/// removed behind the agent's back would hide the removal from the repair). The maps are pinned
/// again, for the length of the load, in a private directory that aya loads from.
pub(crate) fn load_on_pinned(
    config: &DatapathConfig,
    object: &Object,
) -> Result<(aya::Ebpf, kfunc::Resolution), DatapathError> {
    let borrowed = borrowed_dir(&config.pin_dir);
    remove_pins(&borrowed)?;
    system::create_private_dir(&borrowed)?;
    let result = maps::MAPS
        .iter()
        .try_for_each(|m| {
            let from = maps::pin_path(&config.pin_dir, m.name);
            let fd = sys::obj_get(&from, false)
                .map_err(|e| DatapathError::io(format!("opening {}", from.display()), e))?;
            let to = maps::pin_path(&borrowed, m.name);
            sys::obj_pin(fd.as_fd(), &to)
                .map_err(|e| DatapathError::io(format!("pinning {}", to.display()), e))
        })
        .and_then(|()| load(config, object, &borrowed));
    remove_pins(&borrowed)?;
    result
}

/// Loads `object` on new maps pinned in the staging directory; the attached programs keep
/// serving the old maps until [`complete`].
fn stage(config: &DatapathConfig, object: &Object, reason: &str) -> Result<Loaded, DatapathError> {
    let staging = staging_dir(&config.pin_dir);
    system::create_private_dir(&staging)?;
    let (mut ebpf, _) = load(config, object, &staging)?;
    let mut maps = Maps::take(&mut ebpf)?;
    maps.stamp_or_check_version(&staging)?;
    set_scope(&mut maps, config)?;
    for name in PROGRAMS {
        load_program(&mut ebpf, name)?;
    }
    Ok(Loaded {
        maps,
        installed: Installed::Migrating,
        pending: Some(Pending {
            ebpf,
            reason: reason.to_owned(),
        }),
    })
}

/// Finishes a migration once the staged maps hold the desired state: every pinned link gets
/// its new program (readers first, so each translated socket finds its reverse state in the
/// maps its readers use), then the staged maps take the old maps' pin names (the old maps go
/// with their last program), then the state records the new object.
pub(crate) fn complete(
    config: &DatapathConfig,
    object: &Object,
    mut pending: Pending,
) -> Result<(), DatapathError> {
    let pin_dir = &config.pin_dir;
    let recorded = state::read(pin_dir).ok().flatten();
    let attach_point = effective_attach_point(
        recorded.as_ref(),
        true,
        system::verify_attach_point(&config.cgroup)?,
    );
    let cgroup = open_cgroup(&config.cgroup)?;
    for name in PROGRAMS {
        let path = link_path(pin_dir, name);
        if path.exists() {
            replace_program(&mut pending.ebpf, name, &path)?;
        } else {
            let link = attach(&mut pending.ebpf, name, &cgroup)?;
            link.pin(&path).map_err(|e| DatapathError::Link {
                program: name.to_owned(),
                detail: e.to_string(),
            })?;
        }
    }
    let staging = staging_dir(pin_dir);
    for m in &maps::MAPS {
        let from = maps::pin_path(&staging, m.name);
        let to = maps::pin_path(pin_dir, m.name);
        fs::rename(&from, &to).map_err(|e| {
            DatapathError::io(
                format!("renaming {} to {}", from.display(), to.display()),
                e,
            )
        })?;
    }
    remove_dir(&staging)?;
    retire(pin_dir)?;
    record(config, object, &attach_point)?;
    tracing::info!(
        pin_dir = %pin_dir.display(),
        reason = %pending.reason,
        object_sha256 = %object.sha256,
        "migration complete: programs swapped to the new maps, old maps released"
    );
    Ok(())
}

/// Pinned links stay on the cgroup they were attached to: when the record names another cgroup
/// than `--cgroup`, that one is kept (and said).
fn effective_attach_point(
    recorded: Option<&State>,
    any_linked: bool,
    verified: system::AttachPoint,
) -> system::AttachPoint {
    match recorded {
        Some(r) if any_linked && r.attach_point.cgroup_id != verified.cgroup_id => {
            tracing::warn!(
                attached = %r.attach_point.path.display(),
                attached_id = r.attach_point.cgroup_id,
                asked = %verified.path.display(),
                "the pinned programs are attached to another cgroup than --cgroup names; they \
                 stay there (run `lbctl uninstall` first to move them)"
            );
            r.attach_point.clone()
        }
        _ => verified,
    }
}

fn open_cgroup(cgroup: &Path) -> Result<fs::File, DatapathError> {
    fs::File::open(cgroup)
        .map_err(|e| DatapathError::io(format!("opening cgroup {}", cgroup.display()), e))
}

fn record(
    config: &DatapathConfig,
    object: &Object,
    attach_point: &system::AttachPoint,
) -> Result<(), DatapathError> {
    state::write(
        &config.pin_dir,
        &State {
            object_sha256: object.sha256.clone(),
            layout_version: lb_common::LAYOUT_VERSION,
            capacity: config.capacity,
            attach_point: attach_point.clone(),
            lbctl_version: env!("CARGO_PKG_VERSION").to_owned(),
        },
    )
}

/// Loads one program into the kernel (without attaching it).
fn load_program(ebpf: &mut aya::Ebpf, name: &str) -> Result<(), DatapathError> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::MissingProgram(name.to_owned()))?;
    let program: &mut CgroupSockAddr = program
        .try_into()
        .map_err(|e| DatapathError::program(name, e))?;
    if program.fd().is_err() {
        program
            .load()
            .map_err(|e| DatapathError::program(name, e))?;
    }
    Ok(())
}

/// Points the link pinned at `link_pin` to this object's program `name` (`BPF_LINK_UPDATE`):
/// the hook runs the old program or the new one, never neither.
fn replace_program(ebpf: &mut aya::Ebpf, name: &str, link_pin: &Path) -> Result<(), DatapathError> {
    load_program(ebpf, name)?;
    let program = ebpf
        .program(name)
        .ok_or_else(|| DatapathError::MissingProgram(name.to_owned()))?;
    let fd = program.fd().map_err(|e| DatapathError::program(name, e))?;
    let link = sys::obj_get(link_pin, false)
        .map_err(|e| DatapathError::io(format!("opening {}", link_pin.display()), e))?;
    sys::link_update(link.as_fd(), fd.as_fd()).map_err(|e| DatapathError::Link {
        program: name.to_owned(),
        detail: format!("replacing the program of {}: {e}", link_pin.display()),
    })
}

/// Attaches one program (loading it first unless it is loaded) to `cgroup` with a bpf_link
/// (which always lets other programs coexist on the same cgroup).
fn attach(ebpf: &mut aya::Ebpf, name: &str, cgroup: &fs::File) -> Result<FdLink, DatapathError> {
    load_program(ebpf, name)?;
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::MissingProgram(name.to_owned()))?;
    let link_error = |e: aya::programs::links::LinkError| DatapathError::Link {
        program: name.to_owned(),
        detail: e.to_string(),
    };
    let err = |e| DatapathError::program(name, e);
    let program: &mut CgroupSockAddr = program.try_into().map_err(err)?;
    let id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(err)?;
    program
        .take_link(id)
        .map_err(err)?
        .try_into()
        .map_err(link_error)
}

/// Writes the configured scope (and the host network namespace's cookie) and the size of
/// `lb_tcp_recent` into `lb_meta`.
fn set_scope(maps: &mut Maps, config: &DatapathConfig) -> Result<(), DatapathError> {
    maps.set_tcp_recent(config.capacity.tcp_recent)?;
    let cookie = current_netns_cookie()
        .map_err(|e| DatapathError::io("reading the network namespace cookie", e))?;
    maps.set_scope(config.scope == SocketLbScope::HostOnly, cookie)?;
    tracing::debug!(scope = %config.scope, netns_cookie = cookie, "socket LB scope set");
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), DatapathError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::io(format!("removing {}", path.display()), e)),
    }
}

fn remove_dir(dir: &Path) -> Result<(), DatapathError> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::io(format!("removing {}", dir.display()), e)),
    }
}

/// Unpins the maps of [`maps::MAPS`] in `dir`.
fn remove_maps(dir: &Path) -> Result<(), DatapathError> {
    for m in &maps::MAPS {
        remove_file(&maps::pin_path(dir, m.name))?;
    }
    Ok(())
}

/// Unpins the staged maps of `dir` and removes it.
fn remove_pins(dir: &Path) -> Result<(), DatapathError> {
    if !dir.exists() {
        return Ok(());
    }
    remove_maps(dir)?;
    remove_dir(dir)
}

/// Removes the pinned link at `path` (if any), so its program is detached when this returns.
/// `true` when there was one.
fn detach(path: &Path) -> Result<bool, DatapathError> {
    // Hold the link open while removing its pin: the kernel drops a link whose last reference
    // was its pin from a workqueue, a moment later, whereas closing the last descriptor detaches
    // it before close() returns.
    let held = PinnedLink::from_pin(path).ok().map(FdLink::from);
    let existed = path.exists();
    remove_file(path)?;
    drop(held);
    Ok(existed)
}

/// Detaches the programs of [`RETIRED_PROGRAMS`] and unpins the maps of
/// `lb_common::RETIRED_MAPS` that an earlier lbctl left under `pin_dir`; run once this object's
/// programs serve every hook (the retired programs were the last users of the retired maps, so
/// the kernel frees those with them). Missing pins are skipped.
fn retire(pin_dir: &Path) -> Result<(), DatapathError> {
    let mut detached = Vec::new();
    for program in RETIRED_PROGRAMS {
        if detach(&link_path(pin_dir, program))? {
            detached.push(program);
        }
    }
    let mut unpinned = Vec::new();
    for map in lb_common::RETIRED_MAPS {
        let path = maps::pin_path(pin_dir, map);
        if path.exists() {
            remove_file(&path)?;
            unpinned.push(map);
        }
    }
    if !detached.is_empty() || !unpinned.is_empty() {
        tracing::info!(
            pin_dir = %pin_dir.display(),
            programs = ?detached,
            maps = ?unpinned,
            "retired what an earlier lbctl attached and pinned and this one no longer uses"
        );
    }
    Ok(())
}

/// Detaches the programs (by removing their pinned links) and removes the pinned maps, the
/// state record, staged maps and the pin directory. Safe to run twice; missing pieces are
/// skipped.
pub fn uninstall(pin_dir: &Path) -> Result<(), DatapathError> {
    for program in PROGRAMS {
        detach(&link_path(pin_dir, program))?;
    }
    retire(pin_dir)?;
    remove_maps(pin_dir)?;
    remove_file(&pin_dir.join(STATE_MAP))?;
    remove_pins(&staging_dir(pin_dir))?;
    remove_pins(&borrowed_dir(pin_dir))?;
    remove_dir(&pin_dir.join("links"))?;
    remove_dir(pin_dir)
}
