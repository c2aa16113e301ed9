//! Unconnected UDP: `sendmsg4`/`sendmsg6` send a datagram addressed to a frontend to a backend
//! (the socket's backend while it stays in the set), `recvmsg4`/`recvmsg6` make the replies
//! come from the service address, so resolvers that check the source accept them.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use lb_common::hook;

use crate::{
    connect::{forward4, forward6},
    peer::{reverse4, reverse6},
};

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward4(&ctx, true)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lb_sendmsg6(ctx: SockAddrContext) -> i32 {
    forward6(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx, hook::RECVMSG)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lb_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx, hook::RECVMSG)
}
