//! The Service behind each frontend id, kept by the agent in the pinned map `lb_fe_names`
//! beside the other maps, so `lbctl services` and `lbctl monitor` name Services without asking
//! the API server (bpffs holds BPF objects only, hence a map rather than a file).
use std::{collections::BTreeMap, path::Path};

use std::os::fd::AsFd;

use aya::maps::{HashMap, IterableMap, Map, MapData, MapInfo};
use lb_common::{FrontendName, NAME_LEN, NAMES_MAP, PORT_NAME_LEN};

use crate::{
    datapath::{
        DatapathError, FrontendKey, Writer,
        sys::{BatchFailure, map_update_batch},
    },
    plan::{Frontend, Plan},
};

/// A Service port, as named in the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
    /// Empty for an unnamed port (a Service with a single port may leave it unnamed).
    pub port_name: String,
}

impl ServiceName {
    /// `namespace/name`.
    pub fn service(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn copy_into<const N: usize>(text: &str) -> [u8; N] {
    // Kubernetes bounds these names well below N; a longer one (never valid) is cut at a
    // character boundary rather than dropped.
    let mut out = [0u8; N];
    let mut end = text.len().min(N - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&text.as_bytes()[..end]);
    out
}

fn text_of(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub fn encode(namespace: &str, name: &str, port_name: &str) -> FrontendName {
    FrontendName {
        namespace: copy_into::<NAME_LEN>(namespace),
        name: copy_into::<NAME_LEN>(name),
        port_name: copy_into::<PORT_NAME_LEN>(port_name),
    }
}

pub fn decode(v: &FrontendName) -> ServiceName {
    ServiceName {
        namespace: text_of(&v.namespace),
        name: text_of(&v.name),
        port_name: text_of(&v.port_name),
    }
}

fn map_error(e: aya::maps::MapError) -> DatapathError {
    DatapathError::Map {
        map: NAMES_MAP.to_owned(),
        source: e,
    }
}

/// Every name in the pinned map (opened read-only). An installation from before this map
/// existed has none: empty.
pub fn read(pin_dir: &Path) -> Result<BTreeMap<u32, ServiceName>, DatapathError> {
    let path = pin_dir.join(NAMES_MAP);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let fd = crate::datapath::sys::obj_get(&path, true)
        .map_err(|e| DatapathError::io(format!("opening {} read-only", path.display()), e))?;
    let data = MapData::from_fd(fd).map_err(map_error)?;
    let map: HashMap<MapData, u32, FrontendName> =
        HashMap::try_from(Map::from_map_data(data).map_err(map_error)?).map_err(map_error)?;
    Ok(map
        .iter()
        .filter_map(Result::ok)
        .map(|(id, v)| (id, decode(&v)))
        .collect())
}

/// The agent's side: keeps `lb_fe_names` equal to the names of the programmed frontends.
#[derive(Default)]
pub struct NamesWriter {
    /// The map and its id (a repaired datapath has a new map: then it is opened again).
    map: Option<(u32, HashMap<MapData, u32, FrontendName>)>,
    /// What the map holds.
    written: BTreeMap<u32, FrontendName>,
}

impl NamesWriter {
    /// Opens the pinned map unless the one held is still it.
    fn open(&mut self, pin_dir: &Path) -> Result<(), DatapathError> {
        let path = pin_dir.join(NAMES_MAP);
        let id = MapInfo::from_pin(&path).map_err(map_error)?.id();
        if self.map.as_ref().map(|(held, _)| *held) != Some(id) {
            let data = MapData::from_pin(&path).map_err(map_error)?;
            let map: HashMap<MapData, u32, FrontendName> =
                HashMap::try_from(Map::from_map_data(data).map_err(map_error)?)
                    .map_err(map_error)?;
            self.written = map.iter().filter_map(Result::ok).collect();
            self.map = Some((id, map));
        }
        Ok(())
    }

    /// Changes some ids only (what [`NamesWriter::sync`] does for all): removes the names of
    /// `remove` and writes those of `write`. Returns the number of map operations.
    pub fn update(
        &mut self,
        pin_dir: &Path,
        remove: &[u32],
        write: &[(u32, FrontendName)],
    ) -> Result<usize, DatapathError> {
        self.open(pin_dir)?;
        let Some((_, map)) = self.map.as_mut() else {
            return Ok(0);
        };
        let mut ops = 0;
        let mut failed = None;
        for id in remove {
            if !self.written.contains_key(id) {
                continue;
            }
            ops += 1;
            match map.remove(id) {
                Ok(()) => {
                    self.written.remove(id);
                }
                Err(_) if matches!(map.get(id, 0), Err(aya::maps::MapError::KeyNotFound)) => {
                    self.written.remove(id);
                }
                Err(e) => failed = Some(e),
            }
        }
        for (id, name) in write {
            if self.written.get(id) == Some(name) {
                continue;
            }
            ops += 1;
            match map.insert(id, name, 0) {
                Ok(()) => {
                    self.written.insert(*id, *name);
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(map_error(e)),
            None => Ok(ops),
        }
    }

    /// Writes the names of `plan`'s frontends that `writer` programmed and removes the others.
    /// Returns the number of map operations.
    pub fn sync(
        &mut self,
        pin_dir: &Path,
        plan: &Plan,
        writer: &Writer,
    ) -> Result<usize, DatapathError> {
        self.sync_frontends(pin_dir, &plan.frontends, writer)
    }

    /// [`NamesWriter::sync`] over any frontends (the first of each address wins).
    pub fn sync_frontends<'a>(
        &mut self,
        pin_dir: &Path,
        frontends: impl IntoIterator<Item = &'a Frontend>,
        writer: &Writer,
    ) -> Result<usize, DatapathError> {
        let mut desired = BTreeMap::new();
        for fe in frontends {
            let addr = FrontendKey {
                address: fe.address,
                port: fe.port,
                protocol: fe.protocol,
            };
            if let Some(id) = writer.frontend_id(&addr) {
                desired.entry(id).or_insert_with(|| {
                    encode(&fe.service.namespace, &fe.service.name, &fe.port_name)
                });
            }
        }
        self.open(pin_dir)?;
        let Some((_, map)) = self.map.as_mut() else {
            return Ok(0);
        };
        let mut ops = 0;
        let mut failed = None;
        let mut written = std::mem::take(&mut self.written);
        // The changed names in one batch (one system call for a whole cluster's names, where
        // one update each cost as much as the rest of the sync); an element that fails is
        // skipped and the batch goes on after it.
        let (ids, names): (Vec<u32>, Vec<FrontendName>) = desired
            .iter()
            .filter(|(id, name)| written.get(id) != Some(name))
            .map(|(id, name)| (*id, *name))
            .unzip();
        ops += ids.len();
        let fd = map.map().fd().as_fd();
        let mut start = 0;
        while start < ids.len() {
            let done = match map_update_batch(fd, &ids[start..], &names[start..]) {
                Ok(()) => ids.len() - start,
                Err(BatchFailure { done, error }) => {
                    failed = Some(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_update_batch",
                        io_error: error,
                    }));
                    done
                }
            };
            for i in start..start + done {
                written.insert(ids[i], names[i]);
            }
            // Skip the failing element.
            start += done + 1;
        }
        let stale: Vec<u32> = written
            .keys()
            .filter(|id| !desired.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            ops += 1;
            match map.remove(&id) {
                Ok(()) => {
                    written.remove(&id);
                }
                // Already gone (someone else removed it): as good as removed.
                Err(_) if matches!(map.get(&id, 0), Err(aya::maps::MapError::KeyNotFound)) => {
                    written.remove(&id);
                }
                Err(e) => failed = Some(e),
            }
        }
        self.written = written;
        match failed {
            Some(e) => Err(map_error(e)),
            None => Ok(ops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_long_ones_are_cut_at_a_char_boundary() {
        let n = encode("kube-system", "kube-dns", "dns-tcp");
        assert_eq!(
            decode(&n),
            ServiceName {
                namespace: "kube-system".into(),
                name: "kube-dns".into(),
                port_name: "dns-tcp".into()
            }
        );
        let long = "é".repeat(40);
        let cut = decode(&encode(&long, "x", "")).namespace;
        assert!(cut.len() < NAME_LEN && long.starts_with(&cut) && !cut.is_empty());
        assert_eq!(decode(&encode("a", "b", "")).port_name, "");
    }
}
