//! `sock_release`: forget a socket's reverse translation when it closes, so [`REVNAT`] holds
//! live sockets only (LRU eviction is merely the backstop).
use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock,
    programs::SockContext,
};

use crate::maps::REVNAT;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[cgroup_sock(sock_release)]
pub fn lb_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock; `family` is a readable field.
    let family = unsafe { (*ctx.sock).family };
    if family == AF_INET || family == AF_INET6 {
        // SAFETY: bpf_get_socket_cookie is allowed in cgroup sock programs (5.8+); it reads
        // the context the kernel passed.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // Most sockets never had an entry: a miss is the common, cheap case.
        let _ = REVNAT.remove(&cookie);
    }
    1
}
