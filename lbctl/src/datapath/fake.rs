//! Test doubles for the writer's [`LbMaps`] seam: [`MemMaps`] keeps the tables in memory with
//! the kernel's batch semantics and capacities, [`FaultyMaps`] wraps any implementation and
//! fails chosen elements.
use std::collections::BTreeSet;

use lb_common::{Backend, MemberKey, ServiceKey, ServiceValue};

use super::{
    DatapathError,
    filter::V4Filter,
    maps::TcpPortMarks,
    store::{BatchError, LbMaps, Limits, MapDump},
};

/// The four tables in memory. Inserting a new key into a full table fails like the kernel's
/// hash maps (E2BIG), writing beyond an array like the kernel's arrays; every batch call is
/// counted and logged.
#[derive(Clone, Debug)]
pub struct MemMaps {
    pub tables: MapDump,
    /// `lb_v4_filter` as last written (`None`: never written, all zero, nothing skipped).
    pub v4_filter: Option<V4Filter>,
    /// `lb_tcp_backend_ports` (a new map is all zero: no bucket marked).
    pub tcp_ports: TcpPortMarks,
    pub limits: Limits,
    /// Batch calls made so far.
    pub calls: usize,
    /// Every batch call in order.
    pub log: Vec<Call>,
}

/// One batch call as [`MemMaps`] saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    /// Elements offered.
    pub len: usize,
}

impl MemMaps {
    pub fn new(limits: Limits) -> Self {
        Self {
            tables: MapDump::default(),
            v4_filter: None,
            tcp_ports: [0; lb_common::TCP_PORT_BUCKETS],
            limits,
            calls: 0,
            log: Vec::new(),
        }
    }

    /// The calls the writer counts as batches ([`super::ApplyReport::map_calls`]): all but
    /// the new backends' writes, one element each as they get their ids.
    pub fn batches(&self) -> usize {
        self.log
            .iter()
            .filter(|c| !(c.op == Op::UpdateBackend && c.len == 1))
            .count()
    }

    fn record(&mut self, op: Op, len: usize) {
        self.calls += 1;
        self.log.push(Call { op, len });
    }
}

const FULL: &str = "Argument list too long (os error 7)";
const BEYOND: &str = "Argument list too long (os error 7): beyond the array";

fn insert_all<K: Ord + Copy, V: Copy>(
    table: &mut std::collections::BTreeMap<K, V>,
    limit: u32,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    for (i, (k, v)) in keys.iter().zip(values).enumerate() {
        if !table.contains_key(k) && table.len() >= limit as usize {
            return Err(BatchError {
                done: i,
                reason: FULL.to_owned(),
            });
        }
        table.insert(*k, *v);
    }
    Ok(())
}

impl LbMaps for MemMaps {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn slot(&self, index: u32) -> u32 {
        self.tables.slots.get(&index).copied().unwrap_or(0)
    }

    fn backend(&self, id: u32) -> Option<Backend> {
        self.tables.backends.get(&id).copied()
    }

    fn dump(&self) -> Result<MapDump, DatapathError> {
        Ok(self.tables.clone())
    }

    fn write_slots(&mut self, indexes: &[u32], ids: &[u32]) -> Result<(), BatchError> {
        self.record(Op::WriteSlot, ids.len());
        for (i, (&index, &id)) in indexes.iter().zip(ids).enumerate() {
            if index >= self.limits.slots {
                return Err(BatchError {
                    done: i,
                    reason: BEYOND.to_owned(),
                });
            }
            if id == 0 {
                self.tables.slots.remove(&index);
            } else {
                self.tables.slots.insert(index, id);
            }
        }
        Ok(())
    }

    fn update_backends(&mut self, ids: &[u32], values: &[Backend]) -> Result<(), BatchError> {
        self.record(Op::UpdateBackend, ids.len());
        for (i, (&id, value)) in ids.iter().zip(values).enumerate() {
            if id == 0 || id > self.limits.backends {
                return Err(BatchError {
                    done: i,
                    reason: BEYOND.to_owned(),
                });
            }
            self.tables.backends.insert(id, *value);
        }
        Ok(())
    }

    fn delete_backends(&mut self, ids: &[u32]) -> Result<(), BatchError> {
        self.record(Op::DeleteBackend, ids.len());
        for id in ids {
            self.tables.backends.remove(id);
        }
        Ok(())
    }

    fn update_services(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Result<(), BatchError> {
        self.record(Op::UpdateService, keys.len());
        insert_all(
            &mut self.tables.services,
            self.limits.frontends,
            keys,
            values,
        )
    }

    fn delete_services(&mut self, keys: &[ServiceKey]) -> Result<(), BatchError> {
        self.record(Op::DeleteService, keys.len());
        for key in keys {
            self.tables.services.remove(key);
        }
        Ok(())
    }

    fn update_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError> {
        self.record(Op::UpdateMember, keys.len());
        for (i, key) in keys.iter().enumerate() {
            if !self.tables.members.contains(key)
                && self.tables.members.len() >= self.limits.members as usize
            {
                return Err(BatchError {
                    done: i,
                    reason: FULL.to_owned(),
                });
            }
            self.tables.members.insert(*key);
        }
        Ok(())
    }

    fn delete_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError> {
        self.record(Op::DeleteMember, keys.len());
        for key in keys {
            self.tables.members.remove(key);
        }
        Ok(())
    }

    fn v4_filter(&self) -> Option<V4Filter> {
        // A map never written is all zero: every /16 held.
        Some(self.v4_filter.clone().unwrap_or_else(V4Filter::all_held))
    }

    fn write_v4_filter(&mut self, filter: &V4Filter) -> Result<(), String> {
        self.record(Op::WriteFilter, 1);
        self.v4_filter = Some(filter.clone());
        Ok(())
    }

    fn tcp_ports(&self) -> Option<TcpPortMarks> {
        Some(self.tcp_ports)
    }

    fn write_tcp_ports(&mut self, marks: &TcpPortMarks) -> Result<(), String> {
        self.record(Op::WritePorts, 1);
        self.tcp_ports = *marks;
        Ok(())
    }
}

impl MemMaps {
    /// Whether the bucket of this TCP port (network order, as `Backend::port`) is marked.
    pub fn tcp_port_marked(&self, port: u16) -> bool {
        self.tcp_ports[lb_common::tcp_port_bucket(port)] != 0
    }

    /// Whether a connect to `frontend` would skip the services table (never before the
    /// filter is written).
    pub fn skips(&self, frontend: &crate::plan::FrontendKey) -> bool {
        self.v4_filter
            .as_ref()
            .is_some_and(|f| f.skips_frontend(frontend))
    }
}

/// Which operation a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    WriteSlot,
    UpdateBackend,
    DeleteBackend,
    UpdateService,
    DeleteService,
    UpdateMember,
    DeleteMember,
    WriteFilter,
    WritePorts,
}

/// Wraps maps and fails the `n`-th element (counted from 0 over every call) of chosen
/// operations, as a full or failing kernel map would: the elements before it in the batch are
/// applied, the ones after it are not.
#[derive(Clone, Debug)]
pub struct FaultyMaps<M> {
    pub inner: M,
    /// (operation, element number) pairs that fail.
    pub faults: BTreeSet<(Op, usize)>,
    /// Elements of each operation seen so far, in [`Op`] order.
    seen: [usize; 9],
}

impl<M> FaultyMaps<M> {
    pub fn new(inner: M, faults: impl IntoIterator<Item = (Op, usize)>) -> Self {
        Self {
            inner,
            faults: faults.into_iter().collect(),
            seen: [0; 9],
        }
    }

    /// How many elements of `op` were offered so far (applied or failed).
    pub fn seen(&self, op: Op) -> usize {
        self.seen[op as usize]
    }

    /// The index of the first element of this batch that must fail, if any; counts the
    /// elements up to and including it as seen.
    fn check(&mut self, op: Op, len: usize) -> Option<usize> {
        let start = self.seen[op as usize];
        let hit = (0..len).find(|i| self.faults.contains(&(op, start + i)));
        self.seen[op as usize] += hit.map_or(len, |i| i + 1);
        hit
    }

    fn run(
        &mut self,
        op: Op,
        len: usize,
        apply: impl FnOnce(&mut M, usize) -> Result<(), BatchError>,
    ) -> Result<(), BatchError> {
        match self.check(op, len) {
            None => apply(&mut self.inner, len),
            Some(i) => {
                apply(&mut self.inner, i)?;
                Err(BatchError {
                    done: i,
                    reason: format!("injected fault ({op:?} #{})", self.seen[op as usize] - 1),
                })
            }
        }
    }
}

impl<M: LbMaps> LbMaps for FaultyMaps<M> {
    fn limits(&self) -> Limits {
        self.inner.limits()
    }

    fn slot(&self, index: u32) -> u32 {
        self.inner.slot(index)
    }

    fn backend(&self, id: u32) -> Option<Backend> {
        self.inner.backend(id)
    }

    fn dump(&self) -> Result<MapDump, DatapathError> {
        self.inner.dump()
    }

    fn write_slots(&mut self, indexes: &[u32], ids: &[u32]) -> Result<(), BatchError> {
        self.run(Op::WriteSlot, ids.len(), |m, n| {
            m.write_slots(&indexes[..n], &ids[..n])
        })
    }

    fn update_backends(&mut self, ids: &[u32], values: &[Backend]) -> Result<(), BatchError> {
        self.run(Op::UpdateBackend, ids.len(), |m, n| {
            m.update_backends(&ids[..n], &values[..n])
        })
    }

    fn delete_backends(&mut self, ids: &[u32]) -> Result<(), BatchError> {
        self.run(Op::DeleteBackend, ids.len(), |m, n| {
            m.delete_backends(&ids[..n])
        })
    }

    fn update_services(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Result<(), BatchError> {
        self.run(Op::UpdateService, keys.len(), |m, n| {
            m.update_services(&keys[..n], &values[..n])
        })
    }

    fn delete_services(&mut self, keys: &[ServiceKey]) -> Result<(), BatchError> {
        self.run(Op::DeleteService, keys.len(), |m, n| {
            m.delete_services(&keys[..n])
        })
    }

    fn update_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError> {
        self.run(Op::UpdateMember, keys.len(), |m, n| {
            m.update_members(&keys[..n])
        })
    }

    fn delete_members(&mut self, keys: &[MemberKey]) -> Result<(), BatchError> {
        self.run(Op::DeleteMember, keys.len(), |m, n| {
            m.delete_members(&keys[..n])
        })
    }

    fn v4_filter(&self) -> Option<V4Filter> {
        self.inner.v4_filter()
    }

    fn write_v4_filter(&mut self, filter: &V4Filter) -> Result<(), String> {
        match self.check(Op::WriteFilter, 1) {
            None => self.inner.write_v4_filter(filter),
            Some(_) => Err(format!(
                "injected fault (WriteFilter #{})",
                self.seen[Op::WriteFilter as usize] - 1
            )),
        }
    }

    fn tcp_ports(&self) -> Option<TcpPortMarks> {
        self.inner.tcp_ports()
    }

    fn write_tcp_ports(&mut self, marks: &TcpPortMarks) -> Result<(), String> {
        match self.check(Op::WritePorts, 1) {
            None => self.inner.write_tcp_ports(marks),
            Some(_) => Err(format!(
                "injected fault (WritePorts #{})",
                self.seen[Op::WritePorts as usize] - 1
            )),
        }
    }
}
