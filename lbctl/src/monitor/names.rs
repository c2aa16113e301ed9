//! The Service behind each frontend id, kept by the agent in the pinned map `lb_fe_names`
//! beside the other maps, so `lbctl services` and `lbctl monitor` name Services without asking
//! the API server (bpffs holds BPF objects only, hence a map rather than a file).
//!
//! The map is an array indexed by frontend id (ids are small and dense); an element whose
//! namespace is empty names no frontend (every Service has a namespace). Removing a name writes
//! such an empty element. Names are written and removed in `BPF_MAP_UPDATE_BATCH` calls and read
//! with `BPF_MAP_LOOKUP_BATCH`, never one system call per frontend.
use std::{collections::BTreeMap, path::Path};

use std::os::fd::AsFd;

use aya::maps::{MapData, MapInfo};
use lb_common::{FrontendName, NAME_LEN, NAMES_MAP, PORT_NAME_LEN};

use crate::{
    datapath::{
        DatapathError, Writer,
        maps::live_elements,
        sys::{BatchFailure, map_update_batch},
    },
    idset::IdSet,
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

/// The element that names no frontend.
const UNNAMED: FrontendName = FrontendName {
    namespace: [0; NAME_LEN],
    name: [0; NAME_LEN],
    port_name: [0; PORT_NAME_LEN],
};

/// Whether an element of the map names a frontend.
pub fn is_named(v: &FrontendName) -> bool {
    v.namespace[0] != 0
}

/// Calls `each(id, name)` for every named element of the map `data` (read through a mapping of
/// the array, or in batches where it cannot be mapped: a map opened read-only).
fn read_named(
    data: &MapData,
    mut each: impl FnMut(u32, FrontendName),
) -> Result<(), DatapathError> {
    for (id, name) in live_elements(data, NAMES_MAP, is_named)? {
        each(id, name);
    }
    Ok(())
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
    let mut names = BTreeMap::new();
    read_named(&data, |id, name| {
        names.insert(id, decode(&name));
    })?;
    Ok(names)
}

/// What the map holds, by frontend id (ids are small and dense): a 64-bit digest of the name
/// each element holds, 0 for none. 8 bytes an id, where the strings (shared with the plan) and a
/// node of an ordered map took about 54: 1.6 MB at 30,000 frontends, alive beside everything
/// else after a full sync. Names are compared by digest only, keyed per agent process (SipHash,
/// `RandomState`), so no name can be made to collide with another on purpose; by chance, one
/// rename in 2^64 would be left unwritten until the agent restarts.
#[derive(Debug, Default)]
struct Written {
    digests: Vec<u64>,
    keys: std::collections::hash_map::RandomState,
}

impl Written {
    fn get(&self, id: u32) -> u64 {
        self.digests.get(id as usize).copied().unwrap_or(0)
    }

    fn holds(&self, id: u32, frontend: &Frontend) -> bool {
        self.get(id) == self.of(frontend)
    }

    fn set(&mut self, id: u32, digest: u64) {
        let i = id as usize;
        if i >= self.digests.len() {
            if digest == 0 {
                return;
            }
            self.digests.resize(i + 1, 0);
        }
        self.digests[i] = digest;
    }

    /// The ids that name something.
    fn named(&self) -> impl Iterator<Item = u32> + '_ {
        self.digests
            .iter()
            .enumerate()
            .filter(|(_, d)| **d != 0)
            .map(|(id, _)| id as u32)
    }

    fn digest(&self, namespace: &str, name: &str, port_name: &str) -> u64 {
        use std::hash::BuildHasher;
        // 0 is "names nothing".
        self.keys.hash_one((namespace, name, port_name)).max(1)
    }

    fn of(&self, frontend: &Frontend) -> u64 {
        self.digest(
            &frontend.service.namespace,
            &frontend.service.name,
            &frontend.port_name,
        )
    }

    /// The digest of an element read back from the map.
    fn of_element(&self, element: &FrontendName) -> u64 {
        let n = decode(element);
        self.digest(&n.namespace, &n.name, &n.port_name)
    }
}

fn encode_frontend(frontend: &Frontend) -> FrontendName {
    encode(
        &frontend.service.namespace,
        &frontend.service.name,
        &frontend.port_name,
    )
}

/// Names written per batch call: the buffer is bounded whatever the number of frontends.
const BATCH: usize = 2048;

/// The agent's side: keeps `lb_fe_names` equal to the names of the programmed frontends.
#[derive(Default)]
pub struct NamesWriter {
    /// The map and its id (a repaired datapath has a new map: then it is opened again).
    map: Option<(u32, MapData)>,
    /// What the map holds.
    written: Written,
}

/// Writes `ids`/`names` in batch calls, skipping an element that fails; calls `written(i)` for
/// each element written and returns the last failure.
fn write_batch(
    map: &MapData,
    ids: &[u32],
    names: &[FrontendName],
    mut written: impl FnMut(usize),
) -> Option<aya::maps::MapError> {
    let fd = map.fd().as_fd();
    let mut failed = None;
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
            written(i);
        }
        // Skip the failing element.
        start += done + 1;
    }
    failed
}

impl NamesWriter {
    /// Opens the pinned map unless the one held is still it.
    fn open(&mut self, pin_dir: &Path) -> Result<(), DatapathError> {
        let path = pin_dir.join(NAMES_MAP);
        let id = MapInfo::from_pin(&path).map_err(map_error)?.id();
        if self.map.as_ref().map(|(held, _)| *held) != Some(id) {
            let data = MapData::from_pin(&path).map_err(map_error)?;
            let mut written = Written::default();
            read_named(&data, |id, name| {
                written.set(id, written.of_element(&name));
            })?;
            self.written = written;
            self.map = Some((id, data));
        }
        Ok(())
    }

    /// Removes the names of `ids` (those the map holds) in batches of empty elements. Returns
    /// the number of map operations.
    fn remove_ids(
        map: &MapData,
        written: &mut Written,
        ids: impl IntoIterator<Item = u32>,
        failed: &mut Option<aya::maps::MapError>,
    ) -> usize {
        let mut ops = 0;
        let mut batch: Vec<u32> = Vec::new();
        let mut flush = |batch: &mut Vec<u32>, written: &mut Written| {
            let empty = vec![UNNAMED; batch.len()];
            if let Some(e) = write_batch(map, batch, &empty, |i| {
                written.set(batch[i], 0);
            }) {
                *failed = Some(e);
            }
            batch.clear();
        };
        for id in ids {
            if written.get(id) == 0 {
                continue;
            }
            ops += 1;
            batch.push(id);
            if batch.len() == BATCH {
                flush(&mut batch, written);
            }
        }
        flush(&mut batch, written);
        ops
    }

    /// Changes some ids only (what [`NamesWriter::sync`] does for all): removes the names of
    /// `remove` and writes those of `write`. Returns the number of map operations.
    pub fn update(
        &mut self,
        pin_dir: &Path,
        remove: &[u32],
        write: &[(u32, &Frontend)],
    ) -> Result<usize, DatapathError> {
        self.open(pin_dir)?;
        let Some((_, map)) = self.map.as_ref() else {
            return Ok(0);
        };
        let mut failed = None;
        let mut ops = Self::remove_ids(map, &mut self.written, remove.iter().copied(), &mut failed);
        let changed: Vec<(u32, &Frontend)> = write
            .iter()
            .filter(|(id, frontend)| !self.written.holds(*id, frontend))
            .copied()
            .collect();
        for chunk in changed.chunks(BATCH) {
            let ids: Vec<u32> = chunk.iter().map(|(id, _)| *id).collect();
            let names: Vec<FrontendName> = chunk.iter().map(|(_, f)| encode_frontend(f)).collect();
            ops += chunk.len();
            if let Some(e) = write_batch(map, &ids, &names, |i| {
                let digest = self.written.of(chunk[i].1);
                self.written.set(ids[i], digest);
            }) {
                failed = Some(e);
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
        self.sync_frontends(
            pin_dir,
            plan.frontends
                .iter()
                .filter_map(|fe| Some((writer.frontend_id(&fe.key())?, fe))),
        )
    }

    /// [`NamesWriter::sync`] over any frontends (the first of each address wins). The changed
    /// names go in batches of `BATCH` (one system call each, where one update each cost as
    /// much as the rest of the sync), encoded as they go: no buffer of the whole set.
    pub fn sync_frontends<'a>(
        &mut self,
        pin_dir: &Path,
        frontends: impl IntoIterator<Item = (u32, &'a Frontend)>,
    ) -> Result<usize, DatapathError> {
        self.open(pin_dir)?;
        let Some((_, map)) = self.map.as_ref() else {
            return Ok(0);
        };
        let written = &mut self.written;
        let mut ops = 0;
        let mut failed = None;
        let mut seen = IdSet::default();
        let mut ids: Vec<u32> = Vec::with_capacity(BATCH);
        let mut names: Vec<FrontendName> = Vec::with_capacity(BATCH);
        let mut pending: Vec<&Frontend> = Vec::with_capacity(BATCH);
        let mut flush = |ids: &mut Vec<u32>,
                         names: &mut Vec<FrontendName>,
                         pending: &mut Vec<&Frontend>,
                         written: &mut Written| {
            if let Some(e) = write_batch(map, ids, names, |i| {
                let digest = written.of(pending[i]);
                written.set(ids[i], digest);
            }) {
                failed = Some(e);
            }
            ids.clear();
            names.clear();
            pending.clear();
        };
        for (id, fe) in frontends {
            // The first of each address (so of each id) wins.
            if !seen.insert(id) || written.holds(id, fe) {
                continue;
            }
            ops += 1;
            ids.push(id);
            names.push(encode_frontend(fe));
            pending.push(fe);
            if ids.len() == BATCH {
                flush(&mut ids, &mut names, &mut pending, written);
            }
        }
        flush(&mut ids, &mut names, &mut pending, written);
        let stale: Vec<u32> = written.named().filter(|id| !seen.contains(*id)).collect();
        ops += Self::remove_ids(map, written, stale, &mut failed);
        match failed {
            Some(e) => Err(map_error(e)),
            None => Ok(ops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{FrontendKind, Protocol, ServiceRef};

    fn frontend(namespace: &str, name: &str, port_name: &str) -> Frontend {
        Frontend {
            service: ServiceRef::new(namespace, name),
            port_name: port_name.into(),
            protocol: Protocol::Tcp,
            kind: FrontendKind::ClusterIP,
            address: "10.96.0.10".parse().unwrap(),
            port: 80,
            backends: Vec::new().into(),
            affinity_timeout_seconds: None,
        }
    }

    #[test]
    fn written_names_are_told_apart_by_digest_and_read_back_alike() {
        let mut written = Written::default();
        let web = frontend("shop", "web", "http");
        assert!(!written.holds(3, &web), "nothing written yet");
        written.set(3, written.of(&web));
        assert!(written.holds(3, &web));
        assert!(
            written.holds(3, &frontend("shop", "web", "http")),
            "equal strings"
        );
        for other in [
            frontend("shop", "web", "https"),
            frontend("shop", "web2", "http"),
            frontend("shop2", "web", "http"),
            // The same characters split differently.
            frontend("shopw", "eb", "http"),
            frontend("shop", "webh", "ttp"),
        ] {
            assert!(!written.holds(3, &other), "{:?}", other.service);
        }
        assert!(!written.holds(4, &web), "another id");
        // An element read back from the map (an agent restarted) holds what was written.
        let mut adopted = Written {
            keys: written.keys.clone(),
            ..Written::default()
        };
        adopted.set(7, adopted.of_element(&encode_frontend(&web)));
        assert!(adopted.holds(7, &web));
        written.set(9, written.of(&frontend("a", "b", "")));
        assert_eq!(written.named().collect::<Vec<_>>(), [3, 9]);
        written.set(3, 0);
        assert_eq!(written.named().collect::<Vec<_>>(), [9]);
        written.set(1000, 0);
        assert_eq!(
            written.digests.len(),
            10,
            "removing an unknown id grows nothing"
        );
    }

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
