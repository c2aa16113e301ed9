//! The BPF maps (BTF-defined, so `bpftool map dump` prints field names). Capacities here are
//! defaults; the agent overrides them at load time.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SkStorage},
    macros::btf_map,
};
use lb_common::{
    AffinityKey, AffinityValue, Backend, FrontendName, FrontendStats, MemberKey, MonitorEvent,
    RevNat, ServiceKey, ServiceValue, TCP_PORT_BUCKETS, TcpRecent, V4MasterEntry, meta,
    tcp_port_bucket, v4_master,
};

use crate::translation::Translation;

/// Map flags of the service and membership tables: none, so the kernel preallocates
/// every element at creation (`max_entries` x (48 + key + value, each rounded up to 8 bytes)).
/// An update then takes a free element instead of allocating one, which makes writing them
/// (in `BPF_MAP_UPDATE_BATCH` batches) about 3x faster; the price is kernel memory fixed by
/// the capacities, not by what the tables hold (docs/datapath.md, Maps).
const PREALLOC: usize = 0;

/// `BPF_F_NO_PREALLOC`: memory for what the map holds only (the departed pairs, present only
/// during a termination sweep).
const NO_PREALLOC: usize = 1;

/// Frontends: one master each (its backends are a range of [`SLOTS`]). Frontend ids are below
/// the frontend capacity, so the agent sizes it by that.
#[btf_map(name = "lb_services")]
pub static SERVICES: HashMap<
    ServiceKey,
    ServiceValue,
    { lb_common::DEFAULT_MAX_FRONTENDS as usize },
    PREALLOC,
> = HashMap::new();

/// `BPF_F_MMAPABLE`: user space can map the array and read it without a system call per element
/// (adopting maps and `lbctl status` read every element of `lb_backends`).
const MMAPABLE: usize = 1 << 10;

/// The IPv4 masters of [`SERVICES`], direct-mapped (`lb_common::V4_MASTERS_MAP`): the agent
/// writes it through a shared mapping.
#[btf_map(name = "lb_v4_masters")]
pub static V4_MASTERS: Array<V4MasterEntry, { lb_common::V4_MASTERS_ENTRIES as usize }, MMAPABLE> =
    Array::new();

/// The master of the IPv4 frontend `ip4` (network order, as loaded from the context), `port`
/// (network order), `proto`, when [`V4_MASTERS`] caches it: the element's word names this
/// frontend, and is the same word after the master is read (see `lb_common::V4MasterEntry`).
/// `None`: look it up in [`SERVICES`].
#[inline(always)]
pub fn cached_v4_master(ip4: u32, port: u16, proto: u8) -> Option<ServiceValue> {
    let want = lb_common::v4_master_word(ip4, port, proto);
    let p = V4_MASTERS.get_ptr(lb_common::v4_master_index(want))?;
    // SAFETY: the pointer comes from a successful array lookup; the element is only read, its
    // word by two volatile reads around a volatile read of the master (the compiler keeps the
    // three in order; the x86 JIT's loads are not reordered with each other).
    unsafe {
        let word = core::ptr::read_volatile(&raw const (*p).word);
        if word & v4_master::KEY_MASK != want {
            return None;
        }
        let master = core::ptr::read_volatile(&raw const (*p).master);
        (core::ptr::read_volatile(&raw const (*p).word) == word).then_some(master)
    }
}

/// Backend id -> address and port: an array (a lookup is an index, an update a copy into the
/// element, no hash, no free list). An element with `proto == 0` is no backend.
#[btf_map(name = "lb_backends")]
pub static BACKENDS: Array<Backend, { lb_common::DEFAULT_MAX_BACKENDS as usize }, MMAPABLE> =
    Array::new();

/// Backend ids of the frontends, each frontend a range `slot_base..slot_base + count` named by
/// its master. The agent writes it through a shared mapping (`BPF_F_MMAPABLE`).
#[btf_map(name = "lb_slots")]
pub static SLOTS: Array<u32, { lb_common::DEFAULT_MAX_SERVICE_ENTRIES as usize }, MMAPABLE> =
    Array::new();

/// (frontend id, backend id) -> 1: the current sets of UDP and session-affinity frontends
/// (`lb_common::needs_members`).
#[btf_map(name = "lb_members")]
pub static MEMBERS: HashMap<
    MemberKey,
    u32,
    { lb_common::DEFAULT_MAX_SERVICE_ENTRIES as usize },
    PREALLOC,
> = HashMap::new();

/// (frontend id, backend id) -> 1: the pairs the last apply removed, present only while the
/// agent's socket termination sweeps (`iter/tcp` reads it).
#[btf_map(name = "lb_departed")]
pub static DEPARTED: HashMap<
    MemberKey,
    u32,
    { lb_common::DEPARTED_CAPACITY as usize },
    NO_PREALLOC,
> = HashMap::new();

/// A bit per IPv4 /16, set when no frontend's address is in it (`lb_common::V4_FILTER_MAP`).
#[btf_map(name = "lb_v4_filter")]
pub static V4_FILTER: Array<[u64; lb_common::V4_FILTER_WORDS], 1> = Array::new();

/// Whether no frontend can have the address `ip4` (network order, as loaded from the
/// context): the writer set the bit of its /16 in [`V4_FILTER`]. A missing element (never) or a
/// zero bit (a new map, a /16 with frontends) means look up.
#[inline(always)]
pub fn no_v4_frontend(ip4: u32) -> bool {
    // The first two bytes of the address, the first one high.
    let prefix = (((ip4 & 0xff) << 8) | ((ip4 >> 8) & 0xff)) as u16;
    let (word, bit) = lb_common::v4_filter_slot(prefix);
    // SAFETY: the pointer comes from a successful array lookup; one word of it (the word is
    // below 1,024) is read.
    V4_FILTER
        .get_ptr(0)
        .is_some_and(|p| unsafe { (*p)[word] } & bit != 0)
}

/// The translation a socket made last, in the socket itself: every UDP socket's, and a TCP
/// socket's once kept (by the agent's pass or its first `getpeername`). A TCP connect writes
/// [`TCP_RECENT`] only, so until the next keep a TCP socket's newest translation is there, and
/// readers take it from there first. Reverse translation (`getpeername`, `recvmsg`), UDP
/// stickiness, termination when its backend leaves. Freed with the socket.
#[btf_map(name = "lb_sock")]
pub static SOCKS: SkStorage<RevNat> = SkStorage::new();

/// The translations of the latest TCP connects, by the low bits of the socket cookie
/// (`lb_common::TCP_RECENT_MAP`): recording one is a copy into a preallocated element, where
/// creating socket storage is an allocation. The agent's keeping pass moves the translations
/// of sockets still connected into [`SOCKS`] before later connects take their elements over.
#[btf_map(name = "lb_tcp_recent")]
pub static TCP_RECENT: Array<TcpRecent, { lb_common::DEFAULT_TCP_RECENT as usize }> = Array::new();

/// The translation `lb_tcp_recent` holds for the TCP socket with this cookie. The writer
/// ([`remember_tcp`]) stores the cookie before the translation, so a translation read between
/// two reads of this cookie is this socket's whole, never part of a later one's.
#[inline(always)]
pub fn recent_tcp(cookie: u64) -> Option<RevNat> {
    let p = recent_tcp_element(cookie)?;
    // SAFETY: the pointer comes from a successful array lookup; the element is only read.
    let translation = unsafe { (*p).translation };
    still_recent(p, cookie).then_some(translation)
}

/// The element of `lb_tcp_recent` for this cookie, when it holds this cookie's translation as
/// the call reads it: read its fields, then check [`still_recent`] before using them.
#[inline(always)]
pub fn recent_tcp_element(cookie: u64) -> Option<*const TcpRecent> {
    let p = TCP_RECENT.get_ptr(recent_index(cookie))?;
    // SAFETY: the pointer comes from a successful array lookup; one volatile read.
    (unsafe { core::ptr::read_volatile(&raw const (*p).cookie) } == cookie).then_some(p)
}

/// Whether the element still holds this cookie after its translation was read (the fence keeps
/// the compiler from moving the translation's reads after this one).
#[inline(always)]
pub fn still_recent(p: *const TcpRecent, cookie: u64) -> bool {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    // SAFETY: `p` is an element of the array (from `recent_tcp_element`); one volatile read.
    unsafe { core::ptr::read_volatile(&raw const (*p).cookie) == cookie }
}

/// Records the translation of the TCP socket with this cookie in `lb_tcp_recent` (cookie first,
/// see [`recent_tcp`]). Its backend's port is marked already: the agent marks the port of every
/// TCP backend before a master reaches it ([`TCP_PORTS`]).
#[inline(always)]
pub fn remember_tcp(cookie: u64, translation: &Translation) {
    if let Some(p) = TCP_RECENT.get_ptr_mut(recent_index(cookie)) {
        // SAFETY: the pointer comes from a successful array lookup (an element of the array,
        // 8-byte aligned); the cookie's write is volatile and the fence keeps the translation's
        // writes after it.
        unsafe {
            core::ptr::write_volatile(&raw mut (*p).cookie, cookie);
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
            translation.write(&raw mut (*p).translation);
        }
    }
}

/// The ports of TCP backends, by bucket (`lb_common::TCP_PORTS_MAP`): one element of 1,024
/// bytes, a byte per bucket ([`tcp_port_bucket`]), 1 when marked. The agent marks the bucket of
/// every TCP backend's port before it publishes a master that reaches the backend; the programs
/// only read it. (Marking the port at each connect, as earlier versions did, put a load, a
/// branch and a rarely taken store on the connect's critical path, after the backend's load:
/// 13 ns of a service connection's BPF time under an agent, `tests/kernel-time-ab.sh`, up to
/// 57 ns when the VM was slow.)
/// Small on purpose: every accepted socket reads one byte of it, so it stays in the cache (a
/// byte per port, 64 KiB, cost each accept a cache miss: 40-80 ns). A client port in a marked
/// bucket only costs its socket a cookie, an element read and a storage lookup.
#[btf_map(name = "lb_tcp_backend_ports")]
pub static TCP_PORTS: Array<[u8; TCP_PORT_BUCKETS], 1> = Array::new();

/// Whether a TCP backend may be on this port (network order): its bucket is marked.
#[inline(always)]
pub fn tcp_port_marked(port: u16) -> bool {
    // SAFETY: the pointer comes from a successful array lookup; one byte of it (the bucket is
    // below 1,024) is read.
    TCP_PORTS
        .get_ptr(0)
        .is_some_and(|p| unsafe { (*p)[tcp_port_bucket(port)] } != 0)
}

#[inline(always)]
fn recent_index(cookie: u64) -> u32 {
    (cookie as u32) & meta(meta::TCP_RECENT_MASK)
}

/// (netns cookie, client address, frontend id) -> backend id and last use: session affinity.
#[btf_map(name = "lb_affinity")]
pub static AFFINITY: LruHashMap<
    AffinityKey,
    AffinityValue,
    { lb_common::DEFAULT_MAX_AFFINITY as usize },
> = LruHashMap::new();

/// Global counters, see `lb_common::stat`.
#[btf_map(name = "lb_stats")]
pub static STATS: PerCpuArray<u64, { lb_common::stat::COUNT as usize }> = PerCpuArray::new();

/// Per-frontend counters, indexed by frontend id.
#[btf_map(name = "lb_fe_stats")]
pub static FRONTEND_STATS: PerCpuArray<
    FrontendStats,
    { lb_common::DEFAULT_MAX_FRONTENDS as usize },
> = PerCpuArray::new();

/// Layout version and runtime switches, see `lb_common::meta`.
#[btf_map(name = "lb_meta")]
pub static META: Array<u32, { lb_common::meta::COUNT as usize }> = Array::new();

#[inline(always)]
pub fn meta(index: u32) -> u32 {
    // SAFETY: the pointer comes from a successful array lookup and is read once, by value.
    META.get_ptr(index).map_or(0, |p| unsafe { *p })
}

/// The host network namespace's cookie, as the agent wrote it.
#[inline(always)]
pub fn host_netns_cookie() -> u64 {
    u64::from(meta(meta::HOST_NETNS_COOKIE_LO)) | u64::from(meta(meta::HOST_NETNS_COOKIE_HI)) << 32
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and the program is not preempted.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_frontend(frontend_id: u32, refused: bool) {
    if let Some(p) = FRONTEND_STATS.get_ptr_mut(frontend_id) {
        // SAFETY: as in `count`.
        unsafe {
            if refused {
                (*p).refused += 1;
            } else {
                (*p).rewritten += 1;
            }
        }
    }
}

/// Frontend id -> Service namespace, name and port name (an element with an empty namespace: no
/// frontend has this id). Written by the agent, never read by the programs: it lives here so it
/// is created, pinned and removed with the other maps. An array indexed by id like
/// [`FRONTEND_STATS`], so writing the names of a full sync is a batch of copies rather than hash
/// inserts; mmapable, so the agent reads what an earlier agent wrote without copying every
/// element through a system call.
#[btf_map(name = "lb_fe_names")]
pub static NAMES: Array<FrontendName, { lb_common::DEFAULT_MAX_FRONTENDS as usize }, MMAPABLE> =
    Array::new();

/// Decision events for `lbctl monitor`, written only while `meta::DEBUG_EVENTS` is set.
#[btf_map(name = "lb_events")]
pub static EVENTS: RingBuf<MonitorEvent, { lb_common::EVENTS_RING_BYTES as usize }> =
    RingBuf::new();
