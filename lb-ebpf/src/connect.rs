//! `connect4`/`connect6`: rewrite a frontend destination to a backend when a TCP or UDP socket
//! connects, or refuse the call with ECONNREFUSED when the frontend has no backend. The forward
//! helpers here serve `sendmsg4`/`sendmsg6` too.
use aya_ebpf::{
    helpers::generated::bpf_set_retval, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use lb_common::{ECONNREFUSED, IPPROTO_TCP, IPPROTO_UDP, hook};

use crate::{
    lb::{Verdict, forward},
    sock,
};

/// Return codes of a cgroup sock_addr program.
pub const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: the kernel passes a valid bpf_sock_addr; `protocol` is a readable field.
    let proto = unsafe { (*ctx.sock_addr).protocol };
    match proto as u8 {
        IPPROTO_TCP | IPPROTO_UDP if proto <= 255 => Some(proto as u8),
        _ => None,
    }
}

#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: bpf_set_retval is allowed in connect and sendmsg programs (5.18+); it sets the
    // errno the syscall returns when the program rejects it.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

/// The forward path of an IPv4 hook (`datagram`: a `sendmsg4` datagram, not a connect).
#[inline(always)]
pub fn forward4(ctx: &SockAddrContext, datagram: bool) -> i32 {
    let Some(proto) = protocol(ctx) else {
        return ALLOW;
    };
    let (address, port) = sock::user_v4(ctx);
    let hook = if datagram {
        hook::SENDMSG4
    } else {
        hook::CONNECT4
    };
    match forward(ctx, &address, port, proto, datagram, hook) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => refuse(),
        Verdict::Forward(backend) => {
            // The writer gives a frontend only backends of its own family.
            if !sock::is_mapped4(&backend.address) {
                return refuse();
            }
            sock::set_user_v4(ctx, &backend.address, backend.port);
            ALLOW
        }
    }
}

/// The forward path of an IPv6 hook. IPv4-mapped destinations find the IPv4 frontend and get
/// an IPv4-mapped backend (a `sendmsg` to one never gets here: the kernel hands such
/// datagrams to `sendmsg4`).
#[inline(always)]
pub fn forward6(ctx: &SockAddrContext, datagram: bool) -> i32 {
    let Some(proto) = protocol(ctx) else {
        return ALLOW;
    };
    let (address, port) = sock::user_v6(ctx);
    let hook = if datagram {
        hook::SENDMSG6
    } else {
        hook::CONNECT6
    };
    match forward(ctx, &address, port, proto, datagram, hook) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => refuse(),
        Verdict::Forward(backend) => {
            sock::set_user_v6(ctx, &backend.address, backend.port);
            ALLOW
        }
    }
}

#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    forward4(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn lb_connect6(ctx: SockAddrContext) -> i32 {
    forward6(&ctx, false)
}
