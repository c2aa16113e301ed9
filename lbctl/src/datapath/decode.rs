//! Decoding what the pinned maps hold: frontends with their slots, and the entries that belong
//! to no consistent frontend (left by a crashed writer). Shared by the writer (which rebuilds
//! its mirror from it when it adopts maps) and the read-only inspection commands.
use std::collections::{BTreeMap, BTreeSet};

use lb_common::{Backend, ServiceKey, ServiceValue};

use super::{
    DatapathError, FrontendKey,
    desired::backend_addr,
    store::{LbMaps, MapDump},
};

/// One frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedFrontend {
    pub frontend: FrontendKey,
    pub frontend_id: u32,
    pub flags: u16,
    pub affinity_timeout: u32,
    /// In slot order.
    pub backends: Vec<std::net::SocketAddr>,
}

/// A master and the backend ids of its range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FoundFrontend {
    pub frontend: FrontendKey,
    pub master: ServiceValue,
    /// Backend ids of the range `slot_base..slot_base + count`, in order, without its zero
    /// elements (fewer than `count` only if something other than the writer cleared them).
    pub slots: Vec<u32>,
}

/// The decoded tables.
#[derive(Clone, Debug, Default)]
pub(crate) struct Decoded {
    pub frontends: Vec<FoundFrontend>,
    /// Masters of no known protocol.
    pub stray_keys: Vec<ServiceKey>,
    /// Non-zero elements of `lb_slots` no master's range covers (a range a crashed writer
    /// filled and never published, or freed and never cleared), as runs (start, length).
    pub stray_slots: Vec<(u32, u32)>,
    pub backends: BTreeMap<u32, Backend>,
    /// (frontend id, backend id) pairs of `lb_members`.
    pub members: BTreeSet<(u32, u32)>,
}

/// Runs (start, length) of consecutive indexes, from sorted indexes.
pub(crate) fn runs(indexes: impl IntoIterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for i in indexes {
        match out.last_mut() {
            Some((s, l)) if *s + *l == i => *l += 1,
            _ => out.push((i, 1)),
        }
    }
    out
}

pub(crate) fn decode(dump: MapDump) -> Decoded {
    let mut decoded = Decoded {
        backends: dump.backends,
        members: dump
            .members
            .iter()
            .map(|k| (k.frontend_id, k.backend_id))
            .collect(),
        ..Decoded::default()
    };
    let mut slots = dump.slots;
    let mut covered: Vec<(u32, u32)> = Vec::new();
    for (key, master) in dump.services {
        let Some(frontend) = FrontendKey::from_key(&key) else {
            decoded.stray_keys.push(key);
            continue;
        };
        let base = master.slot_base;
        let end = base.saturating_add(u32::from(master.count));
        let ids: Vec<u32> = slots.range(base..end).map(|(_, &id)| id).collect();
        covered.push((base, end));
        decoded.frontends.push(FoundFrontend {
            frontend,
            master,
            slots: ids,
        });
    }
    // What no master covers (ranges may overlap only in maps no writer of this layout made).
    for (base, end) in covered {
        let inside: Vec<u32> = slots.range(base..end).map(|(&i, _)| i).collect();
        for i in inside {
            slots.remove(&i);
        }
    }
    decoded.stray_slots = runs(slots.into_keys());
    decoded
}

/// Frontends as `decoded` holds them, with backends decoded, in key order.
pub(crate) fn frontends_of(
    frontends: impl IntoIterator<Item = (FrontendKey, ServiceValue, Vec<u32>)>,
    backends: impl Fn(u32) -> Option<Backend>,
) -> Vec<ProgrammedFrontend> {
    let mut out: Vec<ProgrammedFrontend> = frontends
        .into_iter()
        .map(|(frontend, master, slots)| ProgrammedFrontend {
            frontend,
            frontend_id: master.frontend_id,
            flags: master.flags,
            affinity_timeout: master.affinity_timeout,
            backends: slots
                .iter()
                .filter_map(|&id| backends(id).map(|b| backend_addr(&b)))
                .collect(),
        })
        .collect();
    out.sort_by_key(|f| f.frontend);
    out
}

/// Every frontend the maps hold, read without building a writer.
pub fn read_frontends(maps: &impl LbMaps) -> Result<Vec<ProgrammedFrontend>, DatapathError> {
    let decoded = decode(maps.dump()?);
    let backends = &decoded.backends;
    Ok(frontends_of(
        decoded
            .frontends
            .iter()
            .map(|f| (f.frontend, f.master, f.slots.clone())),
        |id| backends.get(&id).copied(),
    ))
}
