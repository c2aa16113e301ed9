//! Backend selection: the logic every forward hook (`connect4/6`, `sendmsg4/6`) shares, and the
//! reverse lookup the `recvmsg4/6` and `getpeername4/6` hooks share.
use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::SockAddrContext};
use lb_common::{
    MemberKey, SCOPE_ANY, ServiceKey, ServiceValue, reason, service_flags, stat, verdict,
};

use crate::{
    affinity,
    maps::{self, BACKENDS, MEMBERS, SERVICES, SLOTS, SOCKS},
    sock::{self, Addr, from_bytes, to_bytes},
    trace,
    translation::Translation,
};

/// Where a forward hook sends the call.
#[derive(Clone, Copy)]
pub struct Target {
    pub address: Addr,
    /// Network order.
    pub port: u16,
}

/// What a forward hook does with a destination.
pub enum Verdict {
    /// Not a frontend (or not ours to touch): leave the destination alone.
    Pass,
    /// A frontend with no usable backend: fail the call with ECONNREFUSED.
    Refuse,
    /// Send to this backend.
    Forward(Target),
}

/// The backend chosen for a frontend.
#[derive(Clone, Copy)]
pub struct Chosen {
    /// The frontend id of the master the backend was chosen from.
    pub frontend_id: u32,
    pub backend_id: u32,
    pub target: Target,
}

#[inline(always)]
pub fn eq_addr(a: &Addr, b: &Addr) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// The key of a frontend's master.
#[inline(always)]
pub fn service_key(address: &Addr, port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        address: to_bytes(*address),
        port,
        proto,
        scope: SCOPE_ANY,
    }
}

/// The master of `key`'s frontend: for an IPv4 frontend from `lb_v4_masters` when it caches
/// it, else from `lb_services`.
#[inline(always)]
pub fn master(key: &mut ServiceKey) -> Option<ServiceValue> {
    let address = from_bytes(&key.address);
    if sock::is_mapped4(&address)
        && let Some(master) = maps::cached_v4_master(address[3], key.port, key.proto)
    {
        return Some(master);
    }
    // SAFETY: the pointer comes from a successful lookup and is read once, by value.
    SERVICES.get_ptr(&*key).map(|p| unsafe { *p })
}

/// Where the backend with this id is. An empty element (`proto == 0`: never written, or
/// cleared by the writer when the backend went) is no backend. The writer clears `proto` alone
/// (one byte), so an address read after a non-zero `proto` is the backend's whole address.
#[inline(always)]
pub fn backend(id: u32) -> Option<Target> {
    let p = BACKENDS.get_ptr(id)?;
    // SAFETY: the pointer comes from a successful lookup; three fields are read by value. The
    // address is read as four words (`Backend` is only 2-byte aligned, so read as its type it
    // takes eight 2-byte loads): an array's elements are 8-byte aligned and the address is its
    // element's first 16 bytes.
    unsafe {
        if (*p).proto == 0 {
            return None;
        }
        Some(Target {
            address: *(&raw const (*p).address).cast::<Addr>(),
            port: (*p).port,
        })
    }
}

/// Whether `backend_id` is in the current set of the frontend `frontend_id`.
#[inline(always)]
pub fn is_member(frontend_id: u32, backend_id: u32) -> bool {
    MEMBERS
        .get_ptr(&MemberKey {
            frontend_id,
            backend_id,
        })
        .is_some()
}

/// `random` (uniform over `u32`) mapped onto `0..count` as uniformly as `random % count` (the
/// high half of the product: Lemire's reduction), without the division `%` takes, which sits
/// between the random number and the slot's load (a 32-bit `div`: 10-30 cycles on x86).
#[inline(always)]
fn below(random: u32, count: u16) -> u32 {
    ((u64::from(random) * u64::from(count)) >> 32) as u32
}

/// The number a forward hook chooses a backend by (uniform over `u32`). A TCP connect's is its
/// socket's cookie spread over `u32` (multiplied by 2^32 / the golden ratio): the cookie is
/// taken for recording the translation anyway, and cookies are handed out in sequence, which
/// the multiplication turns into a sequence that covers `u32` evenly (each run of n connects
/// falls into n nearly equal parts). Else `bpf_get_prandom_u32` (a helper call and its
/// per-CPU state). `cookie`: the socket's, or 0 when none was taken.
#[inline(always)]
fn chooser(cookie: u64) -> u32 {
    if cookie != 0 {
        return (cookie as u32).wrapping_mul(0x9e37_79b9);
    }
    // SAFETY: plain helper call without arguments.
    unsafe { bpf_get_prandom_u32() }
}

#[inline(always)]
fn pick(svc: &ServiceValue, random: u32) -> Option<Chosen> {
    let offset = below(random, svc.count);
    #[cfg(feature = "test-variant-b")]
    let offset = offset & 0;
    // SAFETY: the pointer comes from a successful lookup and is read once, by value.
    let backend_id = SLOTS
        .get_ptr(svc.slot_base.wrapping_add(offset))
        .map(|p| unsafe { *p })?;
    if backend_id == 0 {
        return None;
    }
    Some(Chosen {
        frontend_id: svc.frontend_id,
        backend_id,
        target: backend(backend_id)?,
    })
}

/// Chooses a backend by `random` (see [`chooser`]) among the slots of `svc` (the master just
/// read for `key`'s frontend). `None`: the frontend has no usable backend (or vanished
/// meanwhile).
///
/// The writer fills a fresh range of `lb_slots` and its backends before it publishes the
/// master that points to it, and frees the old range (and zeroes the backends no range holds)
/// only after, so a zero slot or an empty backend after reading a master can only be a
/// concurrent apply that replaced this master (its old backends were deleted meanwhile): read
/// the master again and choose once more in its current range.
#[inline(always)]
pub fn select(key: &mut ServiceKey, svc: &ServiceValue, random: u32) -> Option<Chosen> {
    if svc.count == 0 {
        return None;
    }
    if let Some(chosen) = pick(svc, random) {
        return Some(chosen);
    }
    maps::count(stat::RETRIED);
    let svc = master(key)?;
    if svc.count == 0 {
        return None;
    }
    pick(&svc, random)
}

/// The forward path of `connect4/6` (`datagram == false`) and `sendmsg4/6` (`true`); `hook`
/// names the hook for monitor events and debug logs.
///
/// Lookups: for an IPv4 (or IPv4-mapped) destination first one word of `lb_v4_filter`, which
/// ends it when no frontend is in the destination's /16 (most connects on a node); then the
/// master; for a datagram the socket's storage ([`SOCKS`]) and, when it names this
/// frontend, the backend's membership and element (then nothing else: the datagram keeps the
/// socket's backend); else a slot and its backend (or, with session affinity, the client's entry, its
/// membership and its backend), and one write of the socket's state ([`remember`]). Then
/// `lb_meta[DEBUG]`, whose switches are all off unless someone watches (see [`trace`]).
#[inline(always)]
pub fn forward(
    ctx: &SockAddrContext,
    address: &Addr,
    port: u16,
    proto: u8,
    datagram: bool,
    hook: u8,
) -> Verdict {
    // Not counted: a counter's read-modify-write was about half of what this exit costs above
    // an empty program (8-10 ns of 18, BENCHMARKS.md), and most connects on a node end here.
    if sock::is_mapped4(address) && maps::no_v4_frontend(address[3]) {
        return Verdict::Pass;
    }
    let mut key = service_key(address, port, proto);
    let Some(svc) = master(&mut key) else {
        maps::count(stat::PASSED);
        return Verdict::Pass;
    };
    if !sock::in_scope(ctx) {
        maps::count(stat::FOREIGN_NETNS);
        return Verdict::Pass;
    }
    let (decided, reason) = decide(ctx, &mut key, &svc, address, port, proto, datagram);
    let switches = trace::switches();
    if switches != 0 {
        let (verdict, backend_id, backend) = match &decided {
            Some(c) => (verdict::REWRITTEN, c.backend_id, c.target),
            None => (
                verdict::REFUSED,
                0,
                Target {
                    address: [0; 4],
                    port: 0,
                },
            ),
        };
        trace::report(
            ctx,
            switches,
            &trace::Decision {
                hook,
                verdict,
                reason,
                proto,
                cookie: sock::cookie(ctx),
                frontend_id: svc.frontend_id,
                frontend: *address,
                frontend_port: port,
                backend_id,
                backend: backend.address,
                backend_port: backend.port,
            },
        );
    }
    match decided {
        Some(c) => Verdict::Forward(c.target),
        None => Verdict::Refuse,
    }
}

/// The decision of [`forward`] on a frontend (`svc`, read for `key`), counted, with its
/// [`reason`]. `None`: refuse.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decide(
    ctx: &SockAddrContext,
    key: &mut ServiceKey,
    svc: &ServiceValue,
    address: &Addr,
    port: u16,
    proto: u8,
    datagram: bool,
) -> (Option<Chosen>, u8) {
    if datagram
        && svc.count > 0
        // SAFETY: a lookup without create of the calling socket's own storage.
        && let e = unsafe { SOCKS.get_ptr_mut(ctx) }
        && !e.is_null()
        // SAFETY: non-null storage of this socket; fields are read by value.
        && let Some(chosen) = sticky(Translation::of(unsafe { &*e }), svc, address, port, proto)
    {
        maps::count(stat::STICKY);
        maps::count(stat::REWRITTEN);
        maps::count_frontend(svc.frontend_id, false);
        return (Some(chosen), reason::STICKY);
    }
    // A TCP connect's translation is recorded under its socket's cookie; the cookie chooses
    // the backend too.
    let cookie = if proto == lb_common::IPPROTO_TCP && svc.count > 0 {
        sock::cookie(ctx)
    } else {
        0
    };
    let random = chooser(cookie);
    let (chosen, why) = if svc.flags & service_flags::AFFINITY != 0 {
        (affinity::select(ctx, key, svc, random), reason::AFFINITY)
    } else {
        (select(key, svc, random), reason::RANDOM)
    };
    let Some(chosen) = chosen else {
        maps::count(stat::REFUSED);
        maps::count_frontend(svc.frontend_id, true);
        let why = if svc.count == 0 {
            reason::NO_BACKENDS
        } else {
            reason::BACKENDS_GONE
        };
        return (None, why);
    };
    let entry = Translation::new(
        *address,
        port,
        chosen.target.address,
        chosen.target.port,
        proto,
        chosen.frontend_id,
        chosen.backend_id,
    );
    remember(ctx, cookie, &entry);
    maps::count(stat::REWRITTEN);
    maps::count_frontend(chosen.frontend_id, false);
    (Some(chosen), why)
}

/// Records the translation the socket just made, for `getpeername`, `recvmsg`, UDP
/// stickiness and the termination iterators. A UDP socket's goes into its own storage
/// ([`SOCKS`]: freed with the socket by the kernel, nothing to evict, no program at close),
/// created here when the socket has none. A TCP socket's goes into `lb_tcp_recent`
/// ([`maps::remember_tcp`]), a copy into a preallocated element where creating storage is an
/// allocation (about half a TCP connect's BPF time, BENCHMARKS.md). It does not look for the
/// socket's storage (about 60 ns a connect): a TCP socket has storage only once kept, and a kept
/// socket that connects again (after `connect(AF_UNSPEC)`) has its newest translation in its
/// element, which every reader takes before the storage while the element holds the cookie, and
/// which a keeping pass copies over the storage. An error here (the kernel could not allocate
/// the storage) only costs the reverse translation of this socket, never the forward one.
/// `cookie`: the TCP socket's (taken by [`decide`]).
#[inline(always)]
fn remember(ctx: &SockAddrContext, cookie: u64, entry: &Translation) {
    if entry.proto() == lb_common::IPPROTO_TCP {
        maps::remember_tcp(cookie, entry);
        return;
    }
    // SAFETY: lookup-or-create of the calling socket's own storage (zeroed when new).
    let st = unsafe { SOCKS.get_or_insert_ptr_mut(ctx, None) };
    if !st.is_null() {
        // SAFETY: non-null storage of this socket (8-byte aligned), written whole.
        unsafe { entry.write(st) };
    }
}

/// The socket's remembered backend, when `e` names this very frontend (same master), the
/// backend is still in its set, and its id still names the backend the socket was sent to (ids
/// are reused in a later apply: a new backend under the same id that joined the set is not the
/// socket's).
#[inline(always)]
fn sticky(
    e: &Translation,
    svc: &ServiceValue,
    address: &Addr,
    port: u16,
    proto: u8,
) -> Option<Chosen> {
    if !(e.frontend_id == svc.frontend_id
        && e.service_port() == port
        && e.proto() == proto
        && eq_addr(&e.service_address, address)
        && is_member(svc.frontend_id, e.backend_id))
    {
        return None;
    }
    let target = backend(e.backend_id)?;
    (target.port == e.backend_port() && eq_addr(&target.address, &e.backend_address)).then_some(
        Chosen {
            frontend_id: e.frontend_id,
            backend_id: e.backend_id,
            target,
        },
    )
}

/// The reverse path of `recvmsg4/6` and `getpeername4/6`: when `peer` is the backend this
/// socket was sent to and its frontend still exists as it was, the service address and port to
/// show instead.
///
/// Lookups, for a TCP socket: whether the peer's port is in a marked bucket
/// (`lb_tcp_backend_ports`, one byte of a cached element). The agent marks the port of every
/// TCP backend before a connect can be sent to it, so a peer on a port of no marked bucket (the
/// client of most accepted sockets, the one `getpeername` every `accept()` runs) ends it there:
/// no cookie, no storage lookup. Otherwise its cookie's element of `lb_tcp_recent`, which holds the socket's newest
/// translation while it holds the cookie (and which [`keep`] then copies into the socket's
/// storage); else the socket's storage (kept earlier). For a UDP socket, the storage only. Then
/// the master (and, on a translation, `lb_meta[DEBUG]`).
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext, peer: &Addr, port: u16, hook: u8) -> Option<Target> {
    if sock::is_tcp(ctx) && !maps::tcp_port_marked(port) {
        return None;
    }
    translated_peer(ctx, peer, port, hook)
}

/// [`reverse`] past the port's mark: a function of its own (a BPF-to-BPF call), not inlined,
/// so the path every accepted socket takes is the few instructions above and nothing in
/// between. (Four arguments: a BPF function takes five, and the result's pointer is one.)
#[inline(never)]
fn translated_peer(ctx: &SockAddrContext, peer: &Addr, port: u16, hook: u8) -> Option<Target> {
    if sock::is_tcp(ctx) {
        let cookie = sock::cookie(ctx);
        if let Some(element) = maps::recent_tcp_element(cookie) {
            // SAFETY: an element of lb_tcp_recent that held this socket's cookie; its fields are
            // read where they are, and used only if the cookie is still there after (see
            // `maps::recent_tcp`).
            let service = reverse_by(
                ctx,
                Translation::of(unsafe { &(*element).translation }),
                peer,
                port,
                hook,
            );
            if maps::still_recent(element, cookie) {
                if service.is_some() {
                    keep(ctx, element, cookie);
                }
                return service;
            }
            // A later connect took the element over meanwhile: the storage is all there is.
        }
    }
    // SAFETY: a lookup without create of the calling socket's own storage.
    let st = unsafe { SOCKS.get_ptr_mut(ctx) };
    if st.is_null() {
        return None;
    }
    // SAFETY: non-null storage of this socket; the entry is only read.
    reverse_by(ctx, Translation::of(unsafe { &*st }), peer, port, hook)
}

/// Keeps the calling TCP socket's translation, which `element` of `lb_tcp_recent` holds, in
/// the socket's storage: a socket that asked for its peer once keeps it for its life, whether or
/// not a keeping pass reaches its network namespace. Storage the socket has (kept before it
/// connected again, after `connect(AF_UNSPEC)`, or by an earlier `getpeername`) is overwritten
/// with a whole copy of the element's translation when it differs, never deleted. Otherwise
/// new storage is created from the element (the kernel copies it in) and deleted again when a
/// connect took the element over meanwhile (the copy may be torn). A failure costs nothing but
/// the keeping.
#[inline(always)]
fn keep(ctx: &SockAddrContext, element: *const lb_common::TcpRecent, cookie: u64) {
    // SAFETY: a lookup without create of the calling socket's own storage.
    let st = unsafe { SOCKS.get_ptr_mut(ctx) };
    if !st.is_null() {
        if let Some(translation) = maps::recent_tcp(cookie) {
            // SAFETY: non-null storage of this socket, compared and written whole.
            unsafe {
                if *st != translation {
                    *st = translation;
                }
            }
        }
        return;
    }
    // SAFETY: lookup-or-create of the calling socket's own storage, initialised from the
    // element (a map value pointer, which the helper accepts as the initial value).
    let st =
        unsafe { SOCKS.get_or_insert_ptr_mut(ctx, Some(&mut (*element.cast_mut()).translation)) };
    if !st.is_null() && !maps::still_recent(element, cookie) {
        // SAFETY: `sk` of the hook's context is the calling socket, whose storage this deletes.
        let _ = unsafe { SOCKS.delete((*ctx.sock_addr).__bindgen_anon_1.sk) };
    }
}

/// [`reverse`] with the socket's translation `e`.
#[inline(always)]
fn reverse_by(
    ctx: &SockAddrContext,
    e: &Translation,
    peer: &Addr,
    port: u16,
    hook: u8,
) -> Option<Target> {
    if e.backend_port() != port || !eq_addr(&e.backend_address, peer) {
        return None;
    }
    let service = Target {
        address: e.service_address,
        port: e.service_port(),
    };
    let mut key = service_key(&service.address, service.port, e.proto());
    match master(&mut key) {
        Some(svc) if svc.frontend_id == e.frontend_id => {
            maps::count(stat::REVERSED);
            let switches = trace::switches();
            if switches != 0 {
                trace::report(
                    ctx,
                    switches,
                    &trace::Decision {
                        hook,
                        verdict: verdict::REVERSED,
                        reason: if hook == lb_common::hook::RECVMSG {
                            reason::REPLY
                        } else {
                            reason::PEER
                        },
                        proto: e.proto(),
                        cookie: sock::cookie(ctx),
                        frontend_id: e.frontend_id,
                        frontend: service.address,
                        frontend_port: service.port,
                        backend_id: e.backend_id,
                        backend: *peer,
                        backend_port: port,
                    },
                );
            }
            Some(service)
        }
        _ => {
            // The service was deleted (or re-created): the entry is stale for good (the storage
            // goes with the socket, or is overwritten by its next translation).
            None
        }
    }
}
