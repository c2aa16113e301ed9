//! Observability of the decisions: events for `lbctl monitor` (ring buffer [`EVENTS`]) and
//! kernel-side debug logs (aya-log, `lbctl agent --debug-bpf`).
//!
//! Both are off unless the agent sets a bit of `lb_meta[DEBUG]`. The hooks read that word once
//! per decision on a frontend (an array lookup the kernel inlines) and do nothing else while it
//! is 0: that one check is all monitoring costs when nobody watches.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_cgroup_id, bpf_ringbuf_query},
    },
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use lb_common::{meta, verdict};

use crate::{
    maps::{self, EVENTS},
    sock::{Addr, to_bytes},
};

/// One decision, as the hooks describe it.
pub struct Decision {
    pub hook: u8,
    pub verdict: u8,
    pub reason: u8,
    pub proto: u8,
    pub cookie: u64,
    pub frontend_id: u32,
    pub frontend: Addr,
    /// Network order.
    pub frontend_port: u16,
    pub backend_id: u32,
    /// Zero when refused.
    pub backend: Addr,
    /// Network order.
    pub backend_port: u16,
}

/// The switches of `lb_meta[DEBUG]`; 0 when nothing is on.
#[inline(always)]
pub fn switches() -> u32 {
    maps::meta(meta::DEBUG)
}

/// Reports `d` as the switches ask: an event for the monitors, a debug log line.
///
/// A function of its own (a BPF-to-BPF call), not inlined: it runs only while someone watches,
/// and inlined into every decision of every hook it would be most of their code, spreading the
/// hot path over more instruction cache lines.
#[inline(never)]
pub fn report(ctx: &SockAddrContext, switches: u32, d: &Decision) {
    if switches & meta::DEBUG_EVENTS != 0 {
        event(d);
    }
    if switches & meta::DEBUG_LOGS != 0 {
        log(ctx, d);
    }
}

/// Unread bytes in [`EVENTS`] from which a submit wakes the reader. Below, the reader finds the
/// events on its next timed poll (the agent polls every 100 ms): waking it for every event
/// would cost each monitored connect a wakeup of the reader's thread.
const WAKEUP_BYTES: u64 = lb_common::EVENTS_RING_BYTES as u64 / 8;

#[inline(always)]
fn event(d: &Decision) {
    // A full ring (no monitor reading fast enough) drops the event; the decision stands.
    let Some(mut entry) = EVENTS.reserve(0) else {
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at the reserved ring buffer record, sized and aligned for one
    // MonitorEvent (8-byte aligned by the kernel); every field is written before submit. The
    // helpers take no arguments but the current task's, always allowed in sock_addr hooks.
    unsafe {
        (*e).ktime_ns = bpf_ktime_get_ns();
        (*e).socket_cookie = d.cookie;
        (*e).cgroup_id = bpf_get_current_cgroup_id();
        (*e).pid_tgid = bpf_get_current_pid_tgid();
        (*e).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*e).frontend_address = to_bytes(d.frontend);
        (*e).backend_address = to_bytes(d.backend);
        (*e).frontend_port = d.frontend_port;
        (*e).backend_port = d.backend_port;
        (*e).proto = d.proto;
        (*e).verdict = d.verdict;
        (*e).reason = d.reason;
        (*e).hook = d.hook;
        (*e).frontend_id = d.frontend_id;
        (*e).backend_id = d.backend_id;
    }
    // SAFETY: the pointer is the ring buffer map's own definition, as aya-ebpf passes it to
    // the ring buffer helpers.
    let unread = unsafe {
        bpf_ringbuf_query(
            core::ptr::from_ref(&EVENTS).cast_mut().cast(),
            u64::from(BPF_RB_AVAIL_DATA),
        )
    };
    let wakeup = if unread >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(wakeup));
}

#[inline(always)]
fn log(ctx: &SockAddrContext, d: &Decision) {
    let frontend = to_bytes(d.frontend);
    let backend = to_bytes(d.backend);
    let fport = u16::from_be(d.frontend_port);
    let bport = u16::from_be(d.backend_port);
    match d.verdict {
        verdict::REWRITTEN => debug!(
            ctx,
            "rewritten hook={} cookie={} frontend=[{:i}]:{} proto={} id={} -> backend=[{:i}]:{} id={} reason={}",
            d.hook,
            d.cookie,
            frontend,
            fport,
            d.proto,
            d.frontend_id,
            backend,
            bport,
            d.backend_id,
            d.reason
        ),
        verdict::REFUSED => debug!(
            ctx,
            "refused hook={} cookie={} frontend=[{:i}]:{} proto={} id={} reason={}",
            d.hook,
            d.cookie,
            frontend,
            fport,
            d.proto,
            d.frontend_id,
            d.reason
        ),
        _ => debug!(
            ctx,
            "reversed hook={} cookie={} backend=[{:i}]:{} shown as [{:i}]:{} id={}",
            d.hook,
            d.cookie,
            backend,
            bport,
            frontend,
            fport,
            d.frontend_id
        ),
    }
}
