//! The BPF maps (BTF-defined, so `bpftool map dump` prints field names). Capacities here are
//! defaults; the agent overrides them at load time.
use aya_ebpf::{
    btf_maps::{Array, HashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{Backend, FrontendStats, ServiceKey, ServiceValue};

/// `BPF_F_NO_PREALLOC`: service and backend tables take memory for what is in them only.
const NO_PREALLOC: usize = 1;

/// Frontends: master entries (slot 0) and backend slots.
#[btf_map(name = "lb_services")]
pub static SERVICES: HashMap<
    ServiceKey,
    ServiceValue,
    { lb_common::DEFAULT_MAX_SERVICE_ENTRIES as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Backend id -> address and port.
#[btf_map(name = "lb_backends")]
pub static BACKENDS: HashMap<
    u32,
    Backend,
    { lb_common::DEFAULT_MAX_BACKENDS as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Global counters, see `lb_common::stat`.
#[btf_map(name = "lb_stats")]
pub static STATS: PerCpuArray<u64, { lb_common::stat::COUNT as usize }> = PerCpuArray::new();

/// Per-frontend counters, indexed by frontend id.
#[btf_map(name = "lb_fe_stats")]
pub static FRONTEND_STATS: PerCpuArray<
    FrontendStats,
    { lb_common::DEFAULT_MAX_FRONTENDS as usize },
> = PerCpuArray::new();

/// Layout version and runtime switches, see `lb_common::meta`.
#[btf_map(name = "lb_meta")]
pub static META: Array<u32, { lb_common::meta::COUNT as usize }> = Array::new();

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and the program is not preempted.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_frontend(frontend_id: u32, refused: bool) {
    if let Some(p) = FRONTEND_STATS.get_ptr_mut(frontend_id) {
        // SAFETY: as in `count`.
        unsafe {
            if refused {
                (*p).refused += 1;
            } else {
                (*p).rewritten += 1;
            }
        }
    }
}
