//! `sock_release`: forget a TCP socket's reverse translation when it closes, so [`REVNAT`]
//! holds live sockets only (LRU eviction is merely the backstop). Only a socket whose peer port
//! is marked in `lb_peer_ports` can have an entry, so every other socket (accepted sockets,
//! whose peer is a client's ephemeral port; sockets to no service) costs two field reads and an
//! array read. UDP sockets keep their state in socket-local storage, freed with them.
use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock,
    programs::SockContext,
};
use lb_common::IPPROTO_TCP;

use crate::maps::{self, REVNAT};

#[cgroup_sock(sock_release)]
pub fn lb_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock; `protocol` and `dst_port` (network order,
    // a 2-byte field) are readable fields in sock_release.
    let (protocol, peer_port) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).dst_port) };
    if protocol == u32::from(IPPROTO_TCP) && maps::peer_port_marked(peer_port) {
        // SAFETY: bpf_get_socket_cookie is allowed in cgroup sock programs (5.8+); it reads
        // the context the kernel passed.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = REVNAT.remove(&cookie);
    }
    1
}
