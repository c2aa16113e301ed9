//! Backend selection: the one piece of logic every socket hook shares.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{Backend, SCOPE_ANY, ServiceKey, ServiceValue, stat};

use crate::maps::{self, BACKENDS, SERVICES};

/// What a hook does with a destination.
pub enum Verdict {
    /// Not a frontend: leave the destination alone.
    Pass,
    /// A frontend with no usable backend: fail the call with ECONNREFUSED.
    Refuse,
    /// Send to this backend.
    Forward(Backend),
}

#[inline(always)]
fn master(address: &[u8; 16], port: u16, proto: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        address: *address,
        port,
        proto,
        scope: SCOPE_ANY,
        slot: 0,
    };
    // SAFETY: the pointer comes from a successful lookup and is read once, by value.
    SERVICES.get_ptr(&key).map(|p| unsafe { *p })
}

#[inline(always)]
fn pick(address: &[u8; 16], port: u16, proto: u8, count: u16) -> Option<Backend> {
    // SAFETY: plain helper call without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % u32::from(count) + 1;
    let key = ServiceKey {
        address: *address,
        port,
        proto,
        scope: SCOPE_ANY,
        slot,
    };
    // SAFETY: as in `master`.
    let backend_id = SERVICES.get_ptr(&key).map(|p| unsafe { (*p).backend_id })?;
    // SAFETY: as in `master`.
    BACKENDS.get_ptr(&backend_id).map(|p| unsafe { *p })
}

/// Looks a destination up and chooses a backend uniformly at random among the slots.
///
/// The writer fills slots and backends before it publishes a master, and shrinks a master
/// before it deletes slots, so a miss after reading a master can only be a concurrent shrink:
/// read the master again and choose once more among the current slots.
#[inline(always)]
pub fn select(address: &[u8; 16], port: u16, proto: u8) -> Verdict {
    let Some(svc) = master(address, port, proto) else {
        maps::count(stat::PASSED);
        return Verdict::Pass;
    };
    if svc.count > 0
        && let Some(backend) = pick(address, port, proto, svc.count)
    {
        maps::count(stat::REWRITTEN);
        maps::count_frontend(svc.frontend_id, false);
        return Verdict::Forward(backend);
    }
    let svc = if svc.count > 0 {
        maps::count(stat::RETRIED);
        match master(address, port, proto) {
            Some(svc) => svc,
            None => return Verdict::Pass,
        }
    } else {
        svc
    };
    if svc.count > 0
        && let Some(backend) = pick(address, port, proto, svc.count)
    {
        maps::count(stat::REWRITTEN);
        maps::count_frontend(svc.frontend_id, false);
        return Verdict::Forward(backend);
    }
    maps::count(stat::REFUSED);
    maps::count_frontend(svc.frontend_id, true);
    Verdict::Refuse
}
