//! Session affinity (`sessionAffinity: ClientIP`): a client keeps its backend while the backend
//! stays in the set and the client used it less than `affinity_timeout` seconds ago.
//!
//! At socket level the client is the network namespace (netns cookie) plus the address the
//! socket is bound to, when it is bound to one (usually it is not at connect time, so in
//! practice the key is the namespace: every socket of a pod shares one backend).
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::SockAddrContext};
use lb_common::{AffinityKey, AffinityValue, ServiceKey, ServiceValue, stat};

use crate::{
    lb::{self, Chosen},
    maps::{self, AFFINITY},
    sock,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// Chooses the client's backend: the remembered one when it is still valid, else a new one
/// (by `random`, see `lb::chooser`), remembered from now on.
///
/// A function of its own (a BPF-to-BPF call), not inlined: only session-affinity frontends
/// take it, and inlined it would put its code between the common path's.
#[inline(never)]
pub fn select(
    ctx: &SockAddrContext,
    key: &mut ServiceKey,
    svc: &ServiceValue,
    random: u32,
) -> Option<Chosen> {
    if svc.count == 0 {
        return None;
    }
    let client = AffinityKey {
        netns_cookie: sock::netns_cookie(ctx),
        client: sock::to_bytes(sock::bound_address(ctx)),
        frontend_id: svc.frontend_id,
        pad: 0,
    };
    // SAFETY: plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout = u64::from(svc.affinity_timeout) * NS_PER_SEC;
    if let Some(p) = AFFINITY.get_ptr_mut(&client) {
        // SAFETY: the pointer comes from a successful lookup; the value is copied once.
        let v = unsafe { *p };
        if now.saturating_sub(v.last_used_ns) < timeout
            && lb::is_member(svc.frontend_id, v.backend_id)
            && let Some(target) = lb::backend(v.backend_id)
        {
            // SAFETY: an aligned 8-byte store into the map value the lookup returned; a racing
            // store from another CPU writes a time just as good.
            unsafe { (*p).last_used_ns = now };
            maps::count(stat::AFFINITY);
            return Some(Chosen {
                frontend_id: svc.frontend_id,
                backend_id: v.backend_id,
                target,
            });
        }
    }
    let chosen = lb::select(key, svc, random)?;
    let client = AffinityKey {
        frontend_id: chosen.frontend_id,
        ..client
    };
    let value = AffinityValue {
        backend_id: chosen.backend_id,
        pad: 0,
        last_used_ns: now,
    };
    // A full map evicts its least recently used entry; an error only costs the affinity.
    let _ = AFFINITY.insert(&client, &value, 0);
    Some(chosen)
}
