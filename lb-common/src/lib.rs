//! Map types shared by the kernel programs (`lb-ebpf`) and user space (`lbctl`).
//!
//! Every type is `#[repr(C)]` with explicit padding, so both sides agree on the layout and
//! `bpftool map dump` prints the field names from BTF. Sizes and offsets are checked at compile
//! time: changing them is a map layout break that a restarted agent must detect (see
//! [`LAYOUT_VERSION`]).
//!
//! # Addresses
//! One address space serves both families: an IPv4 address is stored as its IPv4-mapped IPv6
//! form (`::ffff:a.b.c.d`). So a v6 socket connecting to `::ffff:10.96.0.10` finds the IPv4
//! frontend with the very same key, and one backend table serves both families. Addresses and
//! ports are kept in network byte order, exactly as the kernel hands them to the programs.
//!
//! # Service layout
//! A frontend is one entry of [`SERVICES_MAP`] keyed by (address, port, protocol), its *master*
//! ([`ServiceValue::count`] = number of backends, flags, affinity timeout, frontend id, and
//! [`ServiceValue::slot_base`]), plus a contiguous range `slot_base..slot_base + count` of
//! [`SLOTS_MAP`], an array whose elements are backend ids that index [`BACKENDS_MAP`]. The
//! writer fills a fresh range before it publishes the master that points to it, so a reader
//! that saw a master always finds its range filled.
#![no_std]

/// Bumped whenever a map key, value or creation flag changes; stored in the pinned `lb_meta` map.
/// An agent migrates maps of an older version to new ones and refuses maps of a newer one.
/// 3: `lb_services`, `lb_backends` and `lb_members` are preallocated (batched writes need it).
/// 4: UDP sockets keep their translation in socket-local storage ([`SOCK_MAP`]); TCP sockets'
/// backend ports are marked in `lb_peer_ports` (retired since); termination counters in [`STATS_MAP`].
/// 5: [`BACKENDS_MAP`] is an array indexed by backend id; [`MEMBERS_MAP`] holds the members of
/// UDP and session-affinity frontends only; TCP termination reads [`DEPARTED_MAP`]; a
/// frontend's backend ids are a range of the array [`SLOTS_MAP`] its master points to, and
/// [`SERVICES_MAP`] holds masters only (its key has no slot).
///
/// Retiring a map ([`RETIRED_MAPS`]) is no layout change: the maps that stay keep their keys,
/// values and flags, so programs of either side of an upgrade (or a rollback) run on them.
/// Adding one ([`TCP_RECENT_MAP`], [`TCP_PORTS_MAP`], [`V4_FILTER_MAP`], [`V4_MASTERS_MAP`]) is
/// none either: an upgraded agent creates it beside the pinned maps, and the programs of an older
/// one never look at it (an older agent does not keep [`V4_MASTERS_MAP`] either, so a newer one
/// refills it from the masters before its programs run on it).
pub const LAYOUT_VERSION: u32 = 5;

/// Map names (also the file names under the pin directory).
pub const SERVICES_MAP: &str = "lb_services";
pub const BACKENDS_MAP: &str = "lb_backends";
/// Backend ids of every frontend: an array of `u32` (`BPF_F_MMAPABLE`, written by the agent
/// through a mapping); a frontend's are the range `slot_base..slot_base + count` its master
/// names. 0 is no backend.
pub const SLOTS_MAP: &str = "lb_slots";
pub const STATS_MAP: &str = "lb_stats";
pub const FRONTEND_STATS_MAP: &str = "lb_fe_stats";
pub const META_MAP: &str = "lb_meta";
/// Socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`, value [`RevNat`]): the translation a TCP
/// or UDP socket made last. Freed with its socket, so it has no capacity and never evicts; the
/// socket iterators read it to find connected sockets whose backend left the set.
pub const SOCK_MAP: &str = "lb_sock";
/// The translations of the latest TCP connects, an array of [`TcpRecent`] indexed by the low
/// bits of the socket cookie (its capacity is a power of two): where `connect4/6` records a TCP
/// socket's translation, a copy into a preallocated element instead of an allocation of socket
/// storage. A later connect whose cookie has the same low bits takes the element over, so the
/// agent's keeping pass (`iter/tcp`), and a socket's first `getpeername`, copy the
/// translations of sockets still connected into their storage ([`SOCK_MAP`]) before that can
/// happen. Readers look in the storage first.
pub const TCP_RECENT_MAP: &str = "lb_tcp_recent";
/// One element of [`TCP_PORT_BUCKETS`] bytes, a byte per bucket of ports ([`tcp_port_bucket`]):
/// 1 when a TCP backend may be on a port of that bucket. The agent marks the bucket of every TCP
/// backend's port before it publishes a master that reaches the backend, and never clears one
/// (an agent that creates the map beside a pinned [`SOCK_MAP`] marks every bucket, for the
/// sockets an older one translated; earlier versions' programs marked the port at each TCP
/// connect instead, a load and a branch on a connect's critical path). `getpeername4/6` look
/// for a TCP socket's translation (its storage, then [`TCP_RECENT_MAP`]) only when its peer's
/// port is in a marked bucket, so an accepted socket (whose peer is a client's port) mostly
/// costs no storage lookup, no cookie and no element read.
pub const TCP_PORTS_MAP: &str = "lb_tcp_backend_ports";
/// Buckets (bytes) of [`TCP_PORTS_MAP`]'s element.
pub const TCP_PORT_BUCKETS: usize = 1024;

/// The bucket of [`TCP_PORTS_MAP`] of a port (as the programs read it: network order): the top
/// 10 bits of a multiplicative hash.
#[inline(always)]
pub fn tcp_port_bucket(port: u16) -> usize {
    (u32::from(port).wrapping_mul(0x9e37_79b1) >> 22) as usize
}
/// The IPv4 /16s that hold no frontend address: one element of [`V4_FILTER_WORDS`] `u64`s, a
/// bit per /16 ([`v4_filter_slot`]), 1 when no frontend's address is in it. The forward hooks
/// look an IPv4 destination up in [`SERVICES_MAP`] only when its /16's bit is 0, so most
/// connects on a node (to pods, to other hosts) cost one word of an 8 KiB array instead of a
/// hash lookup. 0 is the safe value: a new map (an upgrade, a migration) makes every
/// destination looked up until the writer fills it. The writer clears a /16's bit before it
/// publishes the first master in it, and sets it after the last one there is deleted.
pub const V4_FILTER_MAP: &str = "lb_v4_filter";
/// `u64` words of [`V4_FILTER_MAP`]'s element: 65,536 bits, one per IPv4 /16.
pub const V4_FILTER_WORDS: usize = 1024;

/// A direct-mapped cache of the IPv4 masters of [`SERVICES_MAP`]: an array of
/// [`V4MasterEntry`] (`BPF_F_MMAPABLE`, written by the agent through a mapping), indexed by
/// [`v4_master_index`] of the frontend's [`v4_master_word`]. The forward hooks look an IPv4
/// frontend up here first (an array lookup the verifier inlines: an index, one cache line) and
/// in the hash map only when the element holds another frontend or none, which saves 25-45 ns
/// of a service connect's BPF time (BENCHMARKS.md). The agent writes an element right
/// after the master it caches (in the same ordering phase) and clears it right before the
/// master is deleted; of two frontends with the same index the first one written keeps the
/// element and the other is looked up in the hash map. An empty array (a new map, an upgrade)
/// only means lookups in the hash map; the agent fills it from the masters before its programs
/// run on it.
pub const V4_MASTERS_MAP: &str = "lb_v4_masters";
/// Elements of [`V4_MASTERS_MAP`]: 2^16 (32 bytes each, 2 MiB), a fixed size the programs
/// index by 16 bits of a hash ([`v4_master_index`]).
pub const V4_MASTERS_ENTRIES: u32 = 1 << 16;

/// [`V4MasterEntry::word`] bits.
pub mod v4_master {
    /// Set while the element caches a master (the key bits below name its frontend).
    pub const VALID: u64 = 1 << 56;
    /// The frontend's key and [`VALID`]: what a reader compares.
    pub const KEY_MASK: u64 = (1 << 57) - 1;
    /// The element's version (7 bits from here), bumped by every change of the element, so a
    /// reader that finds the same word before and after reading the master knows no write
    /// happened in between (the same key rewritten with another master changes the word too).
    pub const VERSION_SHIFT: u32 = 57;
}

/// The key word of an IPv4 frontend in [`V4_MASTERS_MAP`]: its address (the four bytes in
/// network order, read as a native `u32`, as the programs load it from the context) in bits
/// 0-31, its port (network order) in 32-47, its protocol in 48-55, and [`v4_master::VALID`].
#[inline(always)]
pub const fn v4_master_word(ip4: u32, port: u16, proto: u8) -> u64 {
    ip4 as u64 | (port as u64) << 32 | (proto as u64) << 48 | v4_master::VALID
}

/// The element of [`V4_MASTERS_MAP`] a frontend's key word belongs in: the low 16 bits of
/// MurmurHash3's 64-bit finalizer (two multiplications, three shifts), which spreads ClusterIPs
/// allocated in sequence as well as random ones. (A single multiplication, Fibonacci hashing,
/// does not: the address's varying bytes sit in bits 16-31 of the word, and 10,000 sequential
/// ClusterIPs fell into 3,476 elements.)
#[inline(always)]
pub const fn v4_master_index(word: u64) -> u32 {
    let mut h = word;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h as u32) & (V4_MASTERS_ENTRIES - 1)
}

/// Element of [`V4_MASTERS_MAP`]. The agent changes one in three steps: `word` to the bumped
/// version without [`v4_master::VALID`], then `master`, then `word` to the key, the valid bit and
/// that version (clearing one is the first step alone). A program takes `master` only when
/// `word` is its frontend's key with the valid bit, and is the very same word once `master` is
/// read: otherwise a write crossed the read, and it looks the frontend up in [`SERVICES_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct V4MasterEntry {
    /// Key, valid bit and version ([`v4_master`]).
    pub word: u64,
    /// The master [`SERVICES_MAP`] holds for the frontend.
    pub master: ServiceValue,
    /// Reserved (0): 32 bytes, so an element never straddles a cache line.
    pub pad: u64,
}

/// The word of [`V4_FILTER_MAP`] and the bit in it of the IPv4 /16 `prefix` (the address's
/// first two bytes, the first one high).
#[inline(always)]
pub fn v4_filter_slot(prefix: u16) -> (usize, u64) {
    (usize::from(prefix >> 6), 1u64 << (prefix & 63))
}

/// Maps that earlier lbctl versions pinned and this one no longer uses: an agent unpins them
/// once its programs replaced the ones that used them (and `lbctl uninstall` removes them).
/// `lb_revnat` held TCP sockets' reverse translation by socket cookie (an LRU hash, now
/// [`SOCK_MAP`]), `lb_peer_ports` marked the backend ports it could hold.
pub const RETIRED_MAPS: [&str; 2] = ["lb_revnat", "lb_peer_ports"];
pub const AFFINITY_MAP: &str = "lb_affinity";
/// (frontend id, backend id) -> 1 ([`MemberKey`]): the backend sets of the frontends whose
/// programs check a remembered backend, those of UDP (connected-UDP stickiness) or with session
/// affinity ([`needs_members`]). A TCP frontend without affinity has none.
pub const MEMBERS_MAP: &str = "lb_members";
/// (frontend id, backend id) -> 1 ([`MemberKey`]): the pairs an apply removed from a frontend's
/// set (or whose frontend it deleted), filled by the agent's socket termination just before it
/// runs the socket iterators and emptied right after; `iter/tcp` terminates a TCP socket whose
/// pair is here. Not preallocated: empty between sweeps.
pub const DEPARTED_MAP: &str = "lb_departed";
/// Elements of [`DEPARTED_MAP`]: a sweep with more departed pairs runs the iterators once per
/// this many.
pub const DEPARTED_CAPACITY: u32 = 65_536;
/// Frontend id -> the Service (namespace, name, port name) it belongs to; written by the agent
/// with each apply so inspection and `lbctl monitor` name Services without the API server.
pub const NAMES_MAP: &str = "lb_fe_names";
/// Ring buffer of [`MonitorEvent`]s, written only while [`meta::DEBUG`] has
/// [`meta::DEBUG_EVENTS`] set (while at least one `lbctl monitor` is connected to the agent).
pub const EVENTS_MAP: &str = "lb_events";
/// Size of [`EVENTS_MAP`] in bytes (a power of two, a multiple of the page size): about 10,000
/// events of 96 bytes plus the ring's 8-byte record headers.
pub const EVENTS_RING_BYTES: u32 = 1 << 20;

/// Default capacities; the agent can override them at load time.
pub const DEFAULT_MAX_SERVICE_ENTRIES: u32 = 65_536 * 8;
pub const DEFAULT_MAX_BACKENDS: u32 = 262_144;
/// Frontend ids index the per-frontend counters, so this bounds the number of frontends.
pub const DEFAULT_MAX_FRONTENDS: u32 = 65_536;
/// Session affinity entries (client, frontend) ([`AFFINITY_MAP`], an LRU hash, preallocated).
pub const DEFAULT_MAX_AFFINITY: u32 = 65_536;
/// Elements of [`TCP_RECENT_MAP`] (a power of two): 56 bytes each, 3.5 MiB.
pub const DEFAULT_TCP_RECENT: u32 = 65_536;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// The errno a refused `connect()` reports: ECONNREFUSED, as kube-proxy and the Kubernetes docs
/// show it (`curl: (7) ... Connection refused`).
pub const ECONNREFUSED: i32 = 111;

/// Scope of a service lookup. Only [`SCOPE_ANY`] is used today; the byte keeps room for a
/// second lookup scope (e.g. node-local external entries) without a layout change.
pub const SCOPE_ANY: u8 = 0;

/// Builds the 16-byte form of an IPv4 address given in network byte order as four bytes.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// True when a 16-byte address is IPv4-mapped (`::ffff:a.b.c.d`).
#[inline(always)]
pub const fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]) == 0
        && addr[8] == 0
        && addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff
}

/// Key of [`SERVICES_MAP`]: one frontend (address, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub address: [u8; 16],
    /// Frontend port, network order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    /// Lookup scope, [`SCOPE_ANY`].
    pub scope: u8,
}

/// Flags of a master entry.
pub mod service_flags {
    /// `sessionAffinity: ClientIP`: reuse the client's backend while it stays in the set.
    pub const AFFINITY: u16 = 1 << 0;
    /// The frontend is a NodePort on one of this node's addresses.
    pub const NODE_PORT: u16 = 1 << 1;
    /// The frontend is an external IP or a LoadBalancer ingress IP.
    pub const EXTERNAL: u16 = 1 << 2;
}

/// Value of [`SERVICES_MAP`]: a frontend's master.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// First element of the frontend's range in [`SLOTS_MAP`] (`count` elements from here).
    pub slot_base: u32,
    /// Number of backends (elements of the range). 0 = the service exists and has no usable
    /// backend: `connect()` is refused.
    pub count: u16,
    /// [`service_flags`].
    pub flags: u16,
    /// Stable id of the frontend; indexes the per-frontend counters, keys [`MEMBERS_MAP`] and
    /// [`AFFINITY_MAP`], and validates [`SOCK_MAP`] entries.
    pub frontend_id: u32,
    /// Session affinity timeout in seconds (0 when affinity is off).
    pub affinity_timeout: u32,
}

/// Whether the programs read [`MEMBERS_MAP`] for a frontend of this protocol and these
/// [`service_flags`]: UDP sockets stick to their backend while it is a member, and session
/// affinity keeps a client's backend while it is a member. The writer programs memberships for
/// these frontends only.
#[inline(always)]
pub const fn needs_members(proto: u8, flags: u16) -> bool {
    proto == IPPROTO_UDP || flags & service_flags::AFFINITY != 0
}

/// Element of [`BACKENDS_MAP`], an array indexed by backend id (id 0 is never used). An
/// element with `proto == 0` (never written, or cleared when the backend went: only `proto` is
/// cleared, the rest stays until the id is reused) is no backend: the programs treat it as
/// absent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Backend {
    /// Backend address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub address: [u8; 16],
    /// Backend port, network order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP; 0 = an empty element (no backend under this id).
    pub proto: u8,
    /// Reserved (0).
    pub flags: u8,
}

/// Hashes the whole element in two writes (the address as one `u128`, the rest as one `u32`)
/// rather than the derived length-prefixed byte slice and three small writes: the agent's
/// writer hashes every backend of a full programming (300,000 at 30,000 x 10). Equal elements
/// write equal words, as `Eq` requires.
impl core::hash::Hash for Backend {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.address));
        state.write_u32(
            u32::from(self.port) | (u32::from(self.proto) << 16) | (u32::from(self.flags) << 24),
        );
    }
}

/// The one translation a socket made last: the value of [`SOCK_MAP`], socket-local storage
/// written by `connect4/6` (TCP and UDP) and `sendmsg4/6` (UDP). `getpeername4/6` and
/// `recvmsg4/6` make the backend's address look like the service's with it, `sendmsg4/6` reuse
/// its backend so one UDP socket sticks to one backend, and the socket iterators use it to
/// terminate connected sockets whose backend left the set. The kernel frees it with the socket.
///
/// An entry is used only while the frontend's master still carries `frontend_id` (the service was
/// not deleted or re-created), and by `sendmsg` only while `(frontend_id, backend_id)` is in
/// [`MEMBERS_MAP`] (the backend is still in the set).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat {
    /// The service (frontend) address the application asked for; IPv4 as `::ffff:a.b.c.d`.
    pub service_address: [u8; 16],
    /// The backend address the socket was sent to instead.
    pub backend_address: [u8; 16],
    /// Service port, network order.
    pub service_port: u16,
    /// Backend port, network order.
    pub backend_port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP (part of the frontend's key).
    pub proto: u8,
    pub pad: [u8; 3],
    /// The frontend id of the master when the entry was written.
    pub frontend_id: u32,
    /// The backend id chosen.
    pub backend_id: u32,
}

/// Element of [`TCP_RECENT_MAP`]: the translation of the TCP socket whose cookie is `cookie`
/// (0: none). `connect4/6` writes the cookie first, then the translation; a reader copies the
/// translation and checks the cookie before and after, so it never takes another socket's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpRecent {
    pub cookie: u64,
    pub translation: RevNat,
}

/// Key of [`MEMBERS_MAP`] (value: `1u32`): "this backend is in this frontend's current set".
/// Lets a program check in one lookup that a remembered backend (UDP stickiness, session
/// affinity) may still be used. Also the key of [`DEPARTED_MAP`]: "this backend left this
/// frontend's set".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MemberKey {
    pub frontend_id: u32,
    pub backend_id: u32,
}

/// Key of [`AFFINITY_MAP`]: one client of one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityKey {
    /// Network namespace cookie of the client socket (`bpf_get_netns_cookie`).
    pub netns_cookie: u64,
    /// Client source address when the socket is bound to one (zero otherwise, which is the
    /// usual case at connect time); IPv4 as `::ffff:a.b.c.d`.
    pub client: [u8; 16],
    pub frontend_id: u32,
    pub pad: u32,
}

/// Value of [`AFFINITY_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub pad: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the entry was last used or made: it holds
    /// while `now - last_used_ns < affinity_timeout` seconds.
    pub last_used_ns: u64,
}

/// Indexes of [`STATS_MAP`], a per-CPU array of `u64` counters.
pub mod stat {
    /// `connect()` (or datagram) to a frontend, destination rewritten to a backend.
    pub const REWRITTEN: u32 = 0;
    /// `connect()` to a frontend with no usable backend: refused with ECONNREFUSED.
    pub const REFUSED: u32 = 1;
    /// Destination looked up and found to be no frontend: left untouched. An IPv4 destination
    /// in a /16 that holds no frontend is left untouched without a lookup and not counted.
    pub const PASSED: u32 = 2;
    /// A slot or backend vanished between reading the master and following it (a concurrent
    /// update); the program retried with the current entry.
    pub const RETRIED: u32 = 3;
    /// A reply (`recvmsg`) or peer address (`getpeername`) shown as the service address.
    pub const REVERSED: u32 = 4;
    /// A frontend destination left alone because the socket is in another network namespace
    /// than the host's and the scope is `host-only`.
    pub const FOREIGN_NETNS: u32 = 5;
    /// A connect or datagram that kept its backend through session affinity.
    pub const AFFINITY: u32 = 6;
    /// A datagram of an unconnected UDP socket that kept the socket's backend.
    pub const STICKY: u32 = 7;
    /// Connected UDP sockets terminated because their backend left the frontend's set.
    pub const TERMINATED_UDP: u32 = 8;
    /// Connected TCP sockets terminated (only with `--terminate-sockets udp-tcp`).
    pub const TERMINATED_TCP: u32 = 9;
    /// A socket the iterator chose to terminate that `bpf_sock_destroy` refused (or a kernel
    /// without the kfunc).
    pub const TERMINATE_FAILED: u32 = 10;
    pub const COUNT: u32 = 11;
}

/// Value of [`FRONTEND_STATS_MAP`] (per-CPU array indexed by frontend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrontendStats {
    pub rewritten: u64,
    pub refused: u64,
}

/// Indexes of [`META_MAP`], an array of `u32`.
pub mod meta {
    /// [`super::LAYOUT_VERSION`] of the maps.
    pub const LAYOUT_VERSION: u32 = 0;
    /// Runtime switches of the kernel programs, [`DEBUG_LOGS`] and [`DEBUG_EVENTS`]: read once
    /// per decision on a frontend, nothing more happens while it is 0.
    pub const DEBUG: u32 = 1;
    /// Socket LB scope: [`SCOPE_ALL`] or [`SCOPE_HOST_ONLY`].
    pub const SCOPE: u32 = 2;
    /// Low and high 32 bits of the host network namespace's cookie (the agent's own namespace),
    /// written before [`SCOPE`].
    pub const HOST_NETNS_COOKIE_LO: u32 = 3;
    pub const HOST_NETNS_COOKIE_HI: u32 = 4;
    /// Elements of [`super::TCP_RECENT_MAP`] minus one (a power of two minus one): the mask of
    /// the socket cookie bits that index it. Written before the programs are attached.
    pub const TCP_RECENT_MASK: u32 = 5;
    pub const COUNT: u32 = 8;

    /// Bit of [`DEBUG`]: kernel-side debug logs (aya-log), `lbctl agent --debug-bpf`.
    pub const DEBUG_LOGS: u32 = 1 << 0;
    /// Bit of [`DEBUG`]: decision events into the events ring buffer (`lbctl monitor`).
    pub const DEBUG_EVENTS: u32 = 1 << 1;

    /// Serve sockets of every network namespace (the default).
    pub const SCOPE_ALL: u32 = 0;
    /// Serve sockets of the host network namespace only; leave other namespaces' alone.
    pub const SCOPE_HOST_ONLY: u32 = 1;
}

/// Longest namespace and Service name (RFC 1123 / RFC 1035 labels: 63 bytes) plus a NUL.
pub const NAME_LEN: usize = 64;
/// Longest Service port name (an IANA service name: 15 bytes) plus a NUL.
pub const PORT_NAME_LEN: usize = 16;

/// Value of [`NAMES_MAP`] (key: frontend id, `u32`): NUL-padded UTF-8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendName {
    pub namespace: [u8; NAME_LEN],
    pub name: [u8; NAME_LEN],
    pub port_name: [u8; PORT_NAME_LEN],
}

/// What a program did with a call, [`MonitorEvent::verdict`].
pub mod verdict {
    /// The destination was rewritten to a backend.
    pub const REWRITTEN: u8 = 1;
    /// The call failed with ECONNREFUSED: the frontend has no usable backend.
    pub const REFUSED: u8 = 2;
    /// A reply's source (`recvmsg`) or a peer address (`getpeername`) was shown as the service.
    pub const REVERSED: u8 = 3;
}

/// Why, [`MonitorEvent::reason`].
pub mod reason {
    /// A backend chosen uniformly at random among the frontend's slots.
    pub const RANDOM: u8 = 1;
    /// A datagram of an unconnected UDP socket kept its socket's backend.
    pub const STICKY: u8 = 2;
    /// Session affinity (ClientIP) kept or chose the client's backend.
    pub const AFFINITY: u8 = 3;
    /// The frontend has no backend on this node (count 0).
    pub const NO_BACKENDS: u8 = 4;
    /// The backends vanished while the program read them (a concurrent update emptied it).
    pub const BACKENDS_GONE: u8 = 5;
    /// A reply to a datagram (`recvmsg`).
    pub const REPLY: u8 = 6;
    /// A peer address (`getpeername`).
    pub const PEER: u8 = 7;
}

/// Which hook made the decision, [`MonitorEvent::hook`].
pub mod hook {
    pub const CONNECT4: u8 = 1;
    pub const CONNECT6: u8 = 2;
    pub const SENDMSG4: u8 = 3;
    pub const SENDMSG6: u8 = 4;
    pub const RECVMSG: u8 = 5;
    pub const GETPEERNAME: u8 = 6;
}

/// One decision of a program on a frontend, as `lbctl monitor` receives it from
/// [`EVENTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MonitorEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    pub socket_cookie: u64,
    /// cgroup v2 id of the calling process (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// `bpf_get_current_pid_tgid`: process id (tgid) in the high 32 bits, thread id below.
    pub pid_tgid: u64,
    /// The calling thread's name, NUL-padded.
    pub comm: [u8; 16],
    /// The service address the application used; IPv4 as `::ffff:a.b.c.d`.
    pub frontend_address: [u8; 16],
    /// The backend address (zero when refused).
    pub backend_address: [u8; 16],
    /// Network order.
    pub frontend_port: u16,
    /// Network order.
    pub backend_port: u16,
    pub proto: u8,
    /// [`verdict`].
    pub verdict: u8,
    /// [`reason`].
    pub reason: u8,
    /// [`hook`].
    pub hook: u8,
    pub frontend_id: u32,
    /// 0 when refused.
    pub backend_id: u32,
}

/// One socket the iterators (`iter/udp`, `iter/tcp`) terminated, as they write it to the
/// iterator's output (`read(2)` on the iterator's file descriptor).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Terminated {
    pub socket_cookie: u64,
    pub frontend_id: u32,
    pub backend_id: u32,
    /// The backend the socket was connected to; IPv4 as `::ffff:a.b.c.d`.
    pub backend_address: [u8; 16],
    /// Network order.
    pub backend_port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub pad: u8,
    /// 0, or the negative errno `bpf_sock_destroy` returned (the socket was not terminated).
    pub error: i32,
}

/// One record of the keeping iterator's output (`lb_iter_tcp_keep`): a TCP socket whose
/// translation it copied from [`TCP_RECENT_MAP`] into its storage ([`SOCK_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Kept {
    pub socket_cookie: u64,
    /// 1 when the kernel could not create the socket's storage (the translation stays in
    /// [`TCP_RECENT_MAP`] until a later connect takes its element over).
    pub failed: u32,
    pub pad: u32,
}

macro_rules! assert_layout {
    ($t:ty, $size:expr, $($field:ident @ $off:expr),* $(,)?) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        $(const _: () = assert!(core::mem::offset_of!($t, $field) == $off);)*
    };
}

assert_layout!(ServiceKey, 20, address @ 0, port @ 16, proto @ 18, scope @ 19);
assert_layout!(ServiceValue, 16, slot_base @ 0, count @ 4, flags @ 6, frontend_id @ 8, affinity_timeout @ 12);
assert_layout!(V4MasterEntry, 32, word @ 0, master @ 8, pad @ 24);
assert_layout!(Backend, 20, address @ 0, port @ 16, proto @ 18, flags @ 19);
assert_layout!(RevNat, 48, service_address @ 0, backend_address @ 16, service_port @ 32,
    backend_port @ 34, proto @ 36, pad @ 37, frontend_id @ 40, backend_id @ 44);
assert_layout!(Kept, 16, socket_cookie @ 0, failed @ 8, pad @ 12);
assert_layout!(TcpRecent, 56, cookie @ 0, translation @ 8);
assert_layout!(MemberKey, 8, frontend_id @ 0, backend_id @ 4);
assert_layout!(AffinityKey, 32, netns_cookie @ 0, client @ 8, frontend_id @ 24, pad @ 28);
assert_layout!(AffinityValue, 16, backend_id @ 0, pad @ 4, last_used_ns @ 8);
assert_layout!(FrontendStats, 16, rewritten @ 0, refused @ 8);
assert_layout!(FrontendName, 144, namespace @ 0, name @ 64, port_name @ 128);
assert_layout!(Terminated, 40, socket_cookie @ 0, frontend_id @ 8, backend_id @ 12,
    backend_address @ 16, backend_port @ 32, proto @ 34, pad @ 35, error @ 36);
assert_layout!(MonitorEvent, 96, ktime_ns @ 0, socket_cookie @ 8, cgroup_id @ 16, pid_tgid @ 24,
    comm @ 32, frontend_address @ 48, backend_address @ 64, frontend_port @ 80, backend_port @ 82,
    proto @ 84, verdict @ 85, reason @ 86, hook @ 87, frontend_id @ 88, backend_id @ 92);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays, with every padding
    // byte spelled out as a field (checked by the size assertions above), so any bit pattern is
    // a valid value.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::V4MasterEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RevNat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TcpRecent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MemberKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FrontendStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FrontendName {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MonitorEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Terminated {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Kept {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_round_trip() {
        let a = v4_mapped([10, 96, 0, 10]);
        assert!(is_v4_mapped(&a));
        assert_eq!(&a[12..], &[10, 96, 0, 10]);
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        assert!(!is_v4_mapped(&v6));
    }
}
