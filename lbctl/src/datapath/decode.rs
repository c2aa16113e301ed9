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

/// A master and the backend ids of the slots found for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FoundFrontend {
    pub frontend: FrontendKey,
    pub master: ServiceValue,
    /// Backend ids of the slots 1..=count that exist, in slot order (fewer than `count` when
    /// a writer stopped half-way).
    pub slots: Vec<u32>,
}

/// The decoded tables.
#[derive(Clone, Debug, Default)]
pub(crate) struct Decoded {
    pub frontends: Vec<FoundFrontend>,
    /// Slots above their master's count, slots without a master, masters of no known protocol.
    /// Each with the backend id it holds (0 for a master).
    pub stray_keys: Vec<(ServiceKey, u32)>,
    pub backends: BTreeMap<u32, Backend>,
    /// (frontend id, backend id) pairs of `lb_members`.
    pub members: BTreeSet<(u32, u32)>,
}

pub(crate) fn slot_key(base: &ServiceKey, slot: u32) -> ServiceKey {
    ServiceKey { slot, ..*base }
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
    let mut masters = BTreeMap::new();
    let mut slots: BTreeMap<ServiceKey, BTreeMap<u32, u32>> = BTreeMap::new();
    for (key, value) in dump.services {
        if key.slot == 0 {
            masters.insert(key, value);
        } else {
            slots
                .entry(slot_key(&key, 0))
                .or_default()
                .insert(key.slot, value.backend_id);
        }
    }
    for (key, master) in masters {
        let mut found = slots.remove(&key).unwrap_or_default();
        let mut ids = Vec::with_capacity(usize::from(master.count));
        let mut held = Vec::new();
        for slot in 1..=u32::from(master.count) {
            if let Some(id) = found.remove(&slot) {
                ids.push(id);
                held.push((slot_key(&key, slot), id));
            }
        }
        decoded
            .stray_keys
            .extend(found.iter().map(|(&slot, &id)| (slot_key(&key, slot), id)));
        let Some(frontend) = FrontendKey::from_key(&key) else {
            decoded.stray_keys.push((key, 0));
            decoded.stray_keys.extend(held);
            continue;
        };
        decoded.frontends.push(FoundFrontend {
            frontend,
            master,
            slots: ids,
        });
    }
    for (key, rest) in slots {
        decoded
            .stray_keys
            .extend(rest.iter().map(|(&slot, &id)| (slot_key(&key, slot), id)));
    }
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
