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
//! # Service layout (after Cilium's `lb4_key`/`lb4_service`)
//! A frontend is a set of entries in [`SERVICES_MAP`] that share (address, port, protocol):
//! slot 0 is the *master* ([`ServiceValue::count`] = number of backends, flags, affinity timeout,
//! frontend id) and slots `1..=count` each carry a backend id that indexes [`BACKENDS_MAP`].
//! The writer updates slots before the master, so a reader that saw a count always finds its
//! slots.
#![no_std]

/// Bumped whenever a map key or value changes layout; stored in the pinned `lb_meta` map so an
/// agent refuses to adopt maps written by an incompatible version.
pub const LAYOUT_VERSION: u32 = 1;

/// Map names (also the file names under the pin directory).
pub const SERVICES_MAP: &str = "lb_services";
pub const BACKENDS_MAP: &str = "lb_backends";
pub const STATS_MAP: &str = "lb_stats";
pub const FRONTEND_STATS_MAP: &str = "lb_fe_stats";
pub const META_MAP: &str = "lb_meta";
pub const REVNAT_MAP: &str = "lb_revnat";
pub const AFFINITY_MAP: &str = "lb_affinity";

/// Default capacities; the agent can override them at load time.
pub const DEFAULT_MAX_SERVICE_ENTRIES: u32 = 65_536 * 8;
pub const DEFAULT_MAX_BACKENDS: u32 = 262_144;
/// Frontend ids index the per-frontend counters, so this bounds the number of frontends.
pub const DEFAULT_MAX_FRONTENDS: u32 = 65_536;
pub const DEFAULT_MAX_REVNAT: u32 = 262_144;
pub const DEFAULT_MAX_AFFINITY: u32 = 262_144;

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

/// Key of [`SERVICES_MAP`]: one frontend (address, port, protocol) and one slot of it.
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
    /// 0 = the master entry, 1..=count = backend slots.
    pub slot: u32,
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

/// Value of [`SERVICES_MAP`]. The master (slot 0) uses `count`, `flags`, `frontend_id` and
/// `affinity_timeout`; a slot uses `backend_id` only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Slots: the backend's id in [`BACKENDS_MAP`]. Master: 0.
    pub backend_id: u32,
    /// Master: number of backend slots. 0 = the service exists and has no usable backend:
    /// `connect()` is refused.
    pub count: u16,
    /// Master: [`service_flags`].
    pub flags: u16,
    /// Master: stable id of the frontend; indexes the per-frontend counters and the
    /// reverse-translation table.
    pub frontend_id: u32,
    /// Master: session affinity timeout in seconds (0 when affinity is off).
    pub affinity_timeout: u32,
}

/// Value of [`BACKENDS_MAP`] (key: backend id, `u32`, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Backend {
    /// Backend address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub address: [u8; 16],
    /// Backend port, network order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    /// Reserved (0).
    pub flags: u8,
}

/// Value of [`REVNAT_MAP`] (key: frontend id): the service address a backend's replies must
/// appear to come from (UDP `recvmsg`, `getpeername`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat {
    pub address: [u8; 16],
    pub port: u16,
    pub pad: [u8; 2],
}

/// Key of [`AFFINITY_MAP`]: one client of one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityKey {
    /// Network namespace cookie of the client socket.
    pub netns_cookie: u64,
    /// Client source address when known (zero otherwise).
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
    /// `bpf_ktime_get_ns` / 1e9 at the last use.
    pub last_used_sec: u64,
}

/// Indexes of [`STATS_MAP`], a per-CPU array of `u64` counters.
pub mod stat {
    /// `connect()` (or datagram) to a frontend, destination rewritten to a backend.
    pub const REWRITTEN: u32 = 0;
    /// `connect()` to a frontend with no usable backend: refused with ECONNREFUSED.
    pub const REFUSED: u32 = 1;
    /// Destination is no frontend: left untouched.
    pub const PASSED: u32 = 2;
    /// A slot or backend vanished between reading the master and following it (a concurrent
    /// update); the program retried with the current entry.
    pub const RETRIED: u32 = 3;
    pub const COUNT: u32 = 8;
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
    /// Bit 0: kernel-side debug logging on.
    pub const DEBUG: u32 = 1;
    pub const COUNT: u32 = 4;
}

macro_rules! assert_layout {
    ($t:ty, $size:expr, $($field:ident @ $off:expr),* $(,)?) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        $(const _: () = assert!(core::mem::offset_of!($t, $field) == $off);)*
    };
}

assert_layout!(ServiceKey, 24, address @ 0, port @ 16, proto @ 18, scope @ 19, slot @ 20);
assert_layout!(ServiceValue, 16, backend_id @ 0, count @ 4, flags @ 6, frontend_id @ 8, affinity_timeout @ 12);
assert_layout!(Backend, 20, address @ 0, port @ 16, proto @ 18, flags @ 19);
assert_layout!(RevNat, 20, address @ 0, port @ 16);
assert_layout!(AffinityKey, 32, netns_cookie @ 0, client @ 8, frontend_id @ 24);
assert_layout!(AffinityValue, 16, backend_id @ 0, last_used_sec @ 8);
assert_layout!(FrontendStats, 16, rewritten @ 0, refused @ 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays, with every padding
    // byte spelled out as a field (checked by the size assertions above), so any bit pattern is
    // a valid value.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RevNat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FrontendStats {}
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
