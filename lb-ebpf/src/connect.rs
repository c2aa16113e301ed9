//! `connect4`/`connect6`: rewrite a frontend destination to a backend when a TCP or UDP socket
//! connects, or refuse the call with ECONNREFUSED when the frontend has no backend.
use aya_ebpf::{
    helpers::generated::bpf_set_retval, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use lb_common::{ECONNREFUSED, IPPROTO_TCP, IPPROTO_UDP, is_v4_mapped, v4_mapped};

use crate::lb::{Verdict, select};

/// Return codes of a cgroup sock_addr program.
const ALLOW: i32 = 1;
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
    // SAFETY: bpf_set_retval is allowed in cgroup programs (5.18+); it sets the errno the
    // syscall returns when the program rejects it.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    let Some(proto) = protocol(&ctx) else {
        return ALLOW;
    };
    // SAFETY: user_ip4 and user_port are readable u32 fields of bpf_sock_addr.
    let (ip4, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    let address = v4_mapped(ip4.to_ne_bytes());
    match select(&address, port as u16, proto) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => refuse(),
        Verdict::Forward(backend) => {
            if !is_v4_mapped(&backend.address) {
                return refuse();
            }
            let a = backend.address;
            // SAFETY: user_ip4 and user_port are writable in connect4 (4-byte stores).
            unsafe {
                (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
                (*ctx.sock_addr).user_port = u32::from(backend.port);
            }
            ALLOW
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub fn lb_connect6(ctx: SockAddrContext) -> i32 {
    let Some(proto) = protocol(&ctx) else {
        return ALLOW;
    };
    // SAFETY: user_ip6 and user_port are readable u32 fields of bpf_sock_addr.
    let (ip6, port) = unsafe { ((*ctx.sock_addr).user_ip6, (*ctx.sock_addr).user_port) };
    let mut address = [0u8; 16];
    for (i, word) in ip6.iter().enumerate() {
        let b = word.to_ne_bytes();
        address[i * 4..i * 4 + 4].copy_from_slice(&b);
    }
    match select(&address, port as u16, proto) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => refuse(),
        Verdict::Forward(backend) => {
            let a = backend.address;
            // SAFETY: user_ip6 and user_port are writable in connect6 (4-byte stores).
            unsafe {
                (*ctx.sock_addr).user_ip6 = [
                    u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
                    u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
                    u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
                    u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
                ];
                (*ctx.sock_addr).user_port = u32::from(backend.port);
            }
            ALLOW
        }
    }
}
