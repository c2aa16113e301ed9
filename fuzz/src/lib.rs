//! Shared pieces of the fuzz targets: a compact, `Arbitrary` description of a cluster that
//! becomes an [`lbctl::model::Inventory`] (`cluster`), and the properties every plan must have
//! (`invariants`, also used by `lbctl/tests/hostile_input.rs`).
pub mod cluster;
pub mod invariants;
