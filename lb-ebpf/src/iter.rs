//! Socket termination: `iter/udp` and `iter/tcp` programs that the agent runs (in each network
//! namespace it covers) after an apply removed backends from frontends. Every **connected**
//! socket that lbctl translated to a backend which is no longer in its frontend's set is
//! destroyed with the `bpf_sock_destroy` kfunc (Linux 6.5+), so its next `send`/`recv` fails at
//! once and the client reconnects through the service to a live backend.
//!
//! Only sockets lbctl translated are judged: those with socket-local storage ([`SOCKS`]), and
//! TCP sockets whose translation is still in `lb_tcp_recent`. A socket is spared when it is not
//! connected (an unconnected UDP socket's next `sendto` is balanced anew), when it is no longer
//! connected to the recorded backend (it reconnected elsewhere), or when the backend has not
//! left the frontend: for UDP, it is still a member (`lb_members`); for TCP, whose frontends
//! keep no memberships, its (frontend, backend) pair is not among the pairs the sweep's apply
//! removed ([`DEPARTED`], which the agent fills for the sweep and empties after it).
//!
//! A third program, `iter/tcp` [`lb_iter_tcp_keep`], destroys nothing: it copies the
//! translation of every TCP socket still connected to the backend its `lb_tcp_recent` element
//! names into the socket's storage, before later connects take the element over. The agent runs
//! it in the same namespaces after every quarter of the array's capacity of connects.
//!
//! aya-ebpf has no iterator macro: the sections and the context structs are declared by hand,
//! after the kernel's `struct bpf_iter__udp` / `bpf_iter__tcp` / `bpf_iter_meta`. The kfunc is
//! an undefined symbol here; the agent patches its call sites before loading the object (see
//! `lbctl/src/datapath/kfunc.rs`).
use core::ffi::c_void;

use aya_ebpf::helpers::generated::{
    bpf_get_socket_cookie, bpf_seq_write, bpf_sk_storage_get, bpf_skc_to_tcp_sock,
};
use lb_common::{IPPROTO_TCP, IPPROTO_UDP, Kept, MemberKey, RevNat, Terminated, stat};

use crate::{
    lb,
    maps::{self, DEPARTED, SOCKS},
    sock::{self, Addr, from_bytes},
};

/// `struct bpf_iter_meta`.
#[repr(C)]
pub struct BpfIterMeta {
    pub seq: *mut c_void,
    pub session_id: u64,
    pub seq_num: u64,
}

/// `struct bpf_iter__udp` (every member 8-byte aligned).
#[repr(C)]
pub struct BpfIterUdp {
    pub meta: *mut BpfIterMeta,
    pub udp_sk: *mut c_void,
    pub uid: u64,
    pub bucket: u64,
}

/// `struct bpf_iter__tcp`.
#[repr(C)]
pub struct BpfIterTcp {
    pub meta: *mut BpfIterMeta,
    pub sk_common: *mut c_void,
    pub uid: u64,
}

/// The head of the kernel's `struct sock_common`. These offsets have not changed since Linux
/// 3.x on 64-bit kernels; the agent's kernel tests check the verdicts they lead to.
#[repr(C)]
struct SockCommonHead {
    skc_daddr: u32,
    skc_rcv_saddr: u32,
    skc_hash: u32,
    skc_dport: u16,
    skc_num: u16,
    skc_family: u16,
    skc_state: u8,
}

/// Offset of `skc_v6_daddr` in `struct sock_common` (after the head, `skc_bound_dev_if`, the
/// bind node union, `skc_prot` and `skc_net`).
const SKC_V6_DADDR: usize = 56;

unsafe extern "C" {
    /// Kernel kfunc (6.5+), allowed in `iter/tcp` and `iter/udp` programs only: aborts the
    /// socket (UDP: error ECONNABORTED and disconnected; TCP: reset, ECONNABORTED).
    fn bpf_sock_destroy(sk: *mut c_void) -> i32;
}

const TCP_ESTABLISHED: u8 = 1;
const AF_INET6: u16 = 10;

/// Whether the socket at `sk` is connected to the backend `e` recorded.
#[inline(always)]
fn connected_to(sk: *const c_void, e: &RevNat) -> bool {
    // SAFETY: `sk` is a non-null socket pointer from the iterator context; the verifier checks
    // direct loads from it against the kernel's BTF (fields of `struct sock_common`).
    let state = unsafe { (*sk.cast::<SockCommonHead>()).skc_state };
    state == TCP_ESTABLISHED && peer_is(sk, e)
}

/// Whether the socket at `sk` has the backend `e` recorded as its peer, whatever its state (a
/// TCP socket still in its handshake, or one its peer closed, has it too).
#[inline(always)]
fn peer_is(sk: *const c_void, e: &RevNat) -> bool {
    // SAFETY: as in `connected_to`.
    let head = unsafe { &*sk.cast::<SockCommonHead>() };
    if head.skc_dport != e.backend_port {
        return false;
    }
    let backend: Addr = from_bytes(&e.backend_address);
    if sock::is_mapped4(&backend) {
        // An AF_INET6 socket connected to an IPv4-mapped address keeps the IPv4 peer in
        // skc_daddr too.
        return head.skc_daddr == backend[3];
    }
    if head.skc_family != AF_INET6 {
        return false;
    }
    // SAFETY: as above; `skc_v6_daddr` is four u32 words at a constant offset.
    let peer = unsafe {
        let p = sk.cast::<u8>().add(SKC_V6_DADDR).cast::<u32>();
        [*p, *p.add(1), *p.add(2), *p.add(3)]
    };
    lb::eq_addr(&peer, &backend)
}

/// Whether `e`'s backend left its frontend's set. A UDP frontend's set is in `lb_members`
/// (it has one for stickiness), so a UDP socket is judged against it whatever apply removed the
/// backend. A TCP frontend has no memberships (unless it has session affinity): a TCP socket is
/// judged against the pairs of the apply being swept, in [`DEPARTED`].
#[inline(always)]
fn departed(e: &RevNat) -> bool {
    if e.proto == IPPROTO_UDP {
        return !lb::is_member(e.frontend_id, e.backend_id);
    }
    DEPARTED
        .get_ptr(&MemberKey {
            frontend_id: e.frontend_id,
            backend_id: e.backend_id,
        })
        .is_some()
}

/// Destroys the socket when it is still connected to `e`'s backend and that backend has left
/// the frontend's set; reports it on the iterator's output and in the counters.
#[inline(always)]
fn judge(meta: *mut BpfIterMeta, sk: *mut c_void, cookie: u64, e: &RevNat) {
    if !connected_to(sk, e) || !departed(e) {
        return;
    }
    // SAFETY: kfunc call with the trusted socket pointer of the iterator's context, whose lock
    // the iterator holds.
    let error = unsafe { bpf_sock_destroy(sk) };
    maps::count(if error != 0 {
        stat::TERMINATE_FAILED
    } else if e.proto == IPPROTO_UDP {
        stat::TERMINATED_UDP
    } else {
        stat::TERMINATED_TCP
    });
    let record = Terminated {
        socket_cookie: cookie,
        frontend_id: e.frontend_id,
        backend_id: e.backend_id,
        backend_address: e.backend_address,
        backend_port: e.backend_port,
        proto: e.proto,
        pad: 0,
        error,
    };
    emit(meta, &record);
}

/// Writes one record whole to the iterator's output.
#[inline(always)]
fn emit<T>(meta: *mut BpfIterMeta, record: &T) {
    // SAFETY: `meta` is the iterator's meta pointer and its seq_file; the record is a plain
    // value on the stack, written whole.
    unsafe {
        bpf_seq_write(
            (*meta).seq.cast(),
            core::ptr::from_ref(record).cast(),
            size_of::<T>() as u32,
        );
    }
}

/// The socket's storage ([`SOCKS`]), copied; `sk` must be a full socket (`struct sock` or a
/// type that starts with one, such as `struct tcp_sock` or `struct udp_sock`).
#[inline(always)]
fn storage(sk: *mut c_void) -> Option<RevNat> {
    // SAFETY: the tracing flavour of bpf_sk_storage_get: the map (the static's address is the
    // map) and a full socket pointer; lookup only.
    let st = unsafe { bpf_sk_storage_get(socks(), sk, core::ptr::null_mut(), 0) };
    // SAFETY: non-null storage of this socket, copied once.
    (!st.is_null()).then(|| unsafe { *st.cast::<RevNat>() })
}

/// [`SOCKS`] as the helpers take a map.
#[inline(always)]
fn socks() -> *mut c_void {
    core::ptr::from_ref(&SOCKS).cast_mut().cast()
}

/// `BPF_LOCAL_STORAGE_GET_F_CREATE`.
const STORAGE_CREATE: u64 = 1;

/// The full TCP socket of an `iter/tcp` context with its cookie; `None` for request and
/// timewait sockets, which are no full sockets.
#[inline(always)]
fn tcp_socket(ctx: *mut BpfIterTcp) -> Option<(*mut BpfIterMeta, *mut c_void, *mut c_void, u64)> {
    // SAFETY: the kernel passes a valid iterator context.
    let (meta, skc) = unsafe { ((*ctx).meta, (*ctx).sk_common) };
    if skc.is_null() {
        return None;
    }
    // SAFETY: helper call with the iterator's sock_common pointer.
    let tp = unsafe { bpf_skc_to_tcp_sock(skc) };
    if tp.is_null() {
        return None;
    }
    // SAFETY: bpf_get_socket_cookie accepts the iterator's socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(skc) };
    Some((meta, skc, tp.cast(), cookie))
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub extern "C" fn lb_iter_udp(ctx: *mut BpfIterUdp) -> i32 {
    // SAFETY: the kernel passes a valid iterator context.
    let (meta, sk) = unsafe { ((*ctx).meta, (*ctx).udp_sk) };
    if sk.is_null() {
        return 0;
    }
    let Some(e) = storage(sk) else {
        return 0;
    };
    // SAFETY: bpf_get_socket_cookie accepts the iterator's socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    judge(meta, sk, cookie, &e);
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn lb_iter_tcp(ctx: *mut BpfIterTcp) -> i32 {
    let Some((meta, skc, tp, cookie)) = tcp_socket(ctx) else {
        return 0;
    };
    // The element holds the socket's newest translation while it holds the cookie (a kept
    // socket that connected again has an older one in its storage).
    let Some(e) = maps::recent_tcp(cookie).or_else(|| storage(tp)) else {
        return 0;
    };
    if e.proto != IPPROTO_TCP {
        return 0;
    }
    judge(meta, skc, cookie, &e);
    0
}

/// Keeps the translation of a TCP socket whose `lb_tcp_recent` element still holds it, when the
/// socket's peer is still that backend and its storage does not hold it already: copies it into
/// the socket's storage ([`SOCKS`], created here, or overwritten when the socket was kept before
/// it connected again). Reports each socket it kept on the iterator's output ([`Kept`]).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn lb_iter_tcp_keep(ctx: *mut BpfIterTcp) -> i32 {
    let Some((meta, skc, tp, cookie)) = tcp_socket(ctx) else {
        return 0;
    };
    let Some(mut e) = maps::recent_tcp(cookie) else {
        return 0;
    };
    if e.proto != IPPROTO_TCP || !peer_is(skc, &e) || storage(tp) == Some(e) {
        return 0;
    }
    // SAFETY: the tracing flavour of bpf_sk_storage_get with create: the map, a full socket
    // pointer, and the initial value (a stack copy the kernel copies in). Existing storage is
    // returned as it is.
    let st = unsafe {
        bpf_sk_storage_get(
            socks(),
            tp,
            core::ptr::from_mut(&mut e).cast(),
            STORAGE_CREATE,
        )
    };
    if !st.is_null() {
        // SAFETY: non-null storage of this socket (the iterator holds its lock), written whole.
        unsafe { *st.cast::<RevNat>() = e };
    }
    let record = Kept {
        socket_cookie: cookie,
        failed: u32::from(st.is_null()),
        pad: 0,
    };
    emit(meta, &record);
    0
}
