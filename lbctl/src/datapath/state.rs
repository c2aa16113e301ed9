//! The installed datapath's record of itself, pinned beside the maps as `lb_state`: which kernel
//! object runs (its SHA-256), with which capacities, attached to which cgroup. The agent writes
//! it after every install, upgrade or migration; `lbctl status` reads it; an agent starting
//! with another object compares it to decide between adopting and upgrading.
//!
//! It is a one-entry BPF array map (bpffs holds BPF objects only) whose value is a length
//! (`u32`, little endian) followed by JSON, so a later lbctl can add fields and still read it.
//! No program uses it: it survives upgrades and migrations untouched.
use std::{os::fd::AsFd as _, path::Path};

use aya::maps::{Array, Map, MapData};
use serde::{Deserialize, Serialize};

use super::{DatapathError, loader::Capacity, sys, system::AttachPoint};

/// Pin file name of the state map under the pin directory.
pub const STATE_MAP: &str = "lb_state";
/// Value size of the state map.
const VALUE_SIZE: usize = 4096;

type Value = [u8; VALUE_SIZE];

/// What the pinned state says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// SHA-256 (hex) of the kernel object whose programs are attached.
    pub object_sha256: String,
    /// `lb_common::LAYOUT_VERSION` of the maps.
    pub layout_version: u32,
    /// The capacities the maps were created with.
    pub capacity: Capacity,
    /// The cgroup the programs are attached to.
    pub attach_point: AttachPoint,
    /// The lbctl that wrote this record.
    pub lbctl_version: String,
}

fn path(pin_dir: &Path) -> std::path::PathBuf {
    pin_dir.join(STATE_MAP)
}

fn open(pin_dir: &Path, read_only: bool) -> Result<Option<Array<MapData, Value>>, DatapathError> {
    let path = path(pin_dir);
    let fd = match sys::obj_get(&path, read_only) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DatapathError::io(format!("opening {}", path.display()), e)),
    };
    let data = MapData::from_fd(fd).map_err(|e| DatapathError::map(STATE_MAP, e))?;
    Array::try_from(Map::Array(data))
        .map(Some)
        .map_err(|e| DatapathError::map(STATE_MAP, e))
}

/// Reads the pinned state; `None` when there is none (a datapath installed by an lbctl that
/// did not record it).
pub fn read(pin_dir: &Path) -> Result<Option<State>, DatapathError> {
    let Some(map) = open(pin_dir, true)? else {
        return Ok(None);
    };
    let value = map
        .get(&0, 0)
        .map_err(|e| DatapathError::map(STATE_MAP, e))?;
    let len = u32::from_le_bytes([value[0], value[1], value[2], value[3]]) as usize;
    let Some(json) = value.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(json).ok())
}

/// Records `state`, creating (and pinning) the state map when it does not exist yet.
pub(crate) fn write(pin_dir: &Path, state: &State) -> Result<(), DatapathError> {
    let json = serde_json::to_vec(state).expect("the state serializes");
    if json.len() + 4 > VALUE_SIZE {
        return Err(DatapathError::io(
            "recording the datapath state",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes do not fit the state map (attach point path too long?)",
                    json.len()
                ),
            ),
        ));
    }
    let mut value: Value = [0; VALUE_SIZE];
    value[..4].copy_from_slice(&(json.len() as u32).to_le_bytes());
    value[4..4 + json.len()].copy_from_slice(&json);
    let mut map = match open(pin_dir, false)? {
        Some(map) => map,
        None => {
            let path = path(pin_dir);
            let fd = sys::create_array_map(STATE_MAP, VALUE_SIZE as u32)
                .map_err(|e| DatapathError::io("creating the state map", e))?;
            sys::obj_pin(fd.as_fd(), &path)
                .map_err(|e| DatapathError::io(format!("pinning {}", path.display()), e))?;
            let data = MapData::from_fd(fd).map_err(|e| DatapathError::map(STATE_MAP, e))?;
            Array::try_from(Map::Array(data)).map_err(|e| DatapathError::map(STATE_MAP, e))?
        }
    };
    map.set(0, value, 0)
        .map_err(|e| DatapathError::map(STATE_MAP, e))
}

/// SHA-256 of `bytes` in lower-case hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
