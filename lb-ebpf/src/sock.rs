//! Reading and writing the addresses of a `bpf_sock_addr` context, and the socket facts the
//! hooks key their state by (socket cookie, network namespace cookie, bound source address).
use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use lb_common::meta;

use crate::maps;

const AF_INET: u32 = 2;

/// A 16-byte address as four 32-bit words, each holding four bytes in network order (so its
/// memory is exactly the `[u8; 16]` of the maps). The programs handle addresses this way: as
/// bytes, LLVM would move them one by one and spill them to the 512-byte stack.
pub type Addr = [u32; 4];

/// The second word of an IPv4-mapped address (`::ffff:0:0/96`).
const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[inline(always)]
pub fn mapped4(ip4: u32) -> Addr {
    [0, 0, MAPPED, ip4]
}

#[inline(always)]
pub fn is_mapped4(a: &Addr) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == MAPPED
}

/// The map form of an address.
#[inline(always)]
pub fn to_bytes(a: Addr) -> [u8; 16] {
    // SAFETY: both types are 16 plain bytes without padding; every bit pattern is valid.
    unsafe { core::mem::transmute::<Addr, [u8; 16]>(a) }
}

/// The word form of a map address.
#[inline(always)]
pub fn from_bytes(a: &[u8; 16]) -> Addr {
    // SAFETY: as in `to_bytes`; the value is copied, so alignment does not matter.
    unsafe { core::mem::transmute::<[u8; 16], Addr>(*a) }
}

/// The destination (forward hooks) or peer (reverse hooks) of an IPv4 call, IPv4-mapped, and
/// the port in network order.
#[inline(always)]
pub fn user_v4(ctx: &SockAddrContext) -> (Addr, u16) {
    // SAFETY: the kernel passes a valid bpf_sock_addr; user_ip4 and user_port are readable
    // u32 fields in every sock_addr hook.
    let (ip4, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    (mapped4(ip4), port as u16)
}

/// Writes the IPv4 address (must be IPv4-mapped) and port of the call.
#[inline(always)]
pub fn set_user_v4(ctx: &SockAddrContext, address: &Addr, port: u16) {
    // SAFETY: user_ip4 and user_port are writable (4-byte stores) in connect4, sendmsg4,
    // recvmsg4 and getpeername4, the only hooks that call this.
    unsafe {
        (*ctx.sock_addr).user_ip4 = address[3];
        (*ctx.sock_addr).user_port = u32::from(port);
    }
}

/// As [`user_v4`], for an IPv6 call (IPv4-mapped destinations stay in their mapped form).
#[inline(always)]
pub fn user_v6(ctx: &SockAddrContext) -> (Addr, u16) {
    // SAFETY: user_ip6 and user_port are readable u32 fields in every sock_addr hook. Each
    // word is its own 4-byte load at a constant offset from the context pointer, the only
    // form the verifier accepts (volatile keeps LLVM from turning the copy into a loop over a
    // derived pointer).
    unsafe {
        let ip6 = &raw const (*ctx.sock_addr).user_ip6;
        let address = [
            core::ptr::read_volatile(&raw const (*ip6)[0]),
            core::ptr::read_volatile(&raw const (*ip6)[1]),
            core::ptr::read_volatile(&raw const (*ip6)[2]),
            core::ptr::read_volatile(&raw const (*ip6)[3]),
        ];
        (address, (*ctx.sock_addr).user_port as u16)
    }
}

/// As [`set_user_v4`], for an IPv6 call.
#[inline(always)]
pub fn set_user_v6(ctx: &SockAddrContext, address: &Addr, port: u16) {
    // SAFETY: user_ip6 and user_port are writable (4-byte stores) in connect6, sendmsg6,
    // recvmsg6 and getpeername6, the only hooks that call this. Each word is its own store at
    // a constant offset from the context pointer (see `user_v6`).
    unsafe {
        let ip6 = &raw mut (*ctx.sock_addr).user_ip6;
        core::ptr::write_volatile(&raw mut (*ip6)[0], address[0]);
        core::ptr::write_volatile(&raw mut (*ip6)[1], address[1]);
        core::ptr::write_volatile(&raw mut (*ip6)[2], address[2]);
        core::ptr::write_volatile(&raw mut (*ip6)[3], address[3]);
        (*ctx.sock_addr).user_port = u32::from(port);
    }
}

/// Whether the hook's socket is a TCP one.
#[inline(always)]
pub fn is_tcp(ctx: &SockAddrContext) -> bool {
    // SAFETY: the kernel passes a valid bpf_sock_addr; `protocol` is readable in every
    // sock_addr hook.
    unsafe { (*ctx.sock_addr).protocol == u32::from(lb_common::IPPROTO_TCP) }
}

/// The socket's cookie: unique for the socket's lifetime, never reused while the host runs.
#[inline(always)]
pub fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: bpf_get_socket_cookie is allowed in every sock_addr hook; it reads the context
    // the kernel passed.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The cookie of the socket's network namespace.
#[inline(always)]
pub fn netns_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: bpf_get_netns_cookie is allowed in every sock_addr hook (5.7+); it reads the
    // context the kernel passed.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// Whether the socket LB scope covers this socket: always with scope `all`; with `host-only`
/// only when the socket lives in the host network namespace.
#[inline(always)]
pub fn in_scope(ctx: &SockAddrContext) -> bool {
    maps::meta(meta::SCOPE) != meta::SCOPE_HOST_ONLY
        || netns_cookie(ctx) == maps::host_netns_cookie()
}

/// The source address the socket is bound to; zero when it is not bound to an address (the
/// usual case at connect time, and for an autobound UDP socket).
#[inline(always)]
pub fn bound_address(ctx: &SockAddrContext) -> Addr {
    // SAFETY: `sk` is a readable field of bpf_sock_addr in every sock_addr hook; the verifier
    // types it as a non-null socket pointer whose family, src_ip4 and src_ip6 fields are
    // readable.
    unsafe {
        let sk = (*ctx.sock_addr).__bindgen_anon_1.sk;
        if (*sk).family == AF_INET {
            match (*sk).src_ip4 {
                0 => [0; 4],
                ip4 => mapped4(ip4),
            }
        } else {
            (*sk).src_ip6
        }
    }
}
