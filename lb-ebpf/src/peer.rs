//! `getpeername4`/`getpeername6`: a socket connected through a frontend reports the service
//! address and port as its peer, not the backend's. The reverse helpers here serve
//! `recvmsg4`/`recvmsg6` too.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use lb_common::hook;

use crate::{connect::ALLOW, lb, sock};

/// Shows the service address instead of the backend's in an IPv4 hook's address (`hook`:
/// which one, for monitor events). Always
/// allows: recvmsg and getpeername programs must return 1.
#[inline(always)]
pub fn reverse4(ctx: &SockAddrContext, hook: u8) -> i32 {
    let (peer, port) = sock::user_v4(ctx);
    if let Some(service) = lb::reverse(ctx, &peer, port, hook)
        && sock::is_mapped4(&service.address)
    {
        sock::set_user_v4(ctx, &service.address, service.port);
    }
    ALLOW
}

/// As [`reverse4`], for IPv6 hooks (an IPv4 peer of a dual-stack socket is IPv4-mapped on
/// both sides).
#[inline(always)]
pub fn reverse6(ctx: &SockAddrContext, hook: u8) -> i32 {
    let (peer, port) = sock::user_v6(ctx);
    if let Some(service) = lb::reverse(ctx, &peer, port, hook) {
        sock::set_user_v6(ctx, &service.address, service.port);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx, hook::GETPEERNAME)
}

#[cgroup_sock_addr(getpeername6)]
pub fn lb_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx, hook::GETPEERNAME)
}
