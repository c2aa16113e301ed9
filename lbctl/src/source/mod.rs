//! Where cluster objects come from: the Kubernetes API (`kube`) or manifest files (`files`,
//! parsed by `manifests`). Both report a [`SourceState`] and give [`crate::model::Inventory`]
//! snapshots.
pub mod files;
pub mod kube;
pub mod manifests;

pub use kube::SourceState;
