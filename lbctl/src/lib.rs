//! lbctl: an eBPF socket-level service load balancer for Kubernetes.
//!
//! Data flows one way: `source` (Kubernetes or manifest files) -> `model` -> `engine` (pure
//! policy, no I/O) -> `plan` -> `datapath` (diff, ordered map writes) -> kernel. `agent` wires
//! them together; `inspect` and `output` are the CLI's read-only views, `monitor` streams the
//! datapath's decisions.
pub mod agent;
mod compact;
pub mod datapath;
pub mod engine;
mod idset;
pub mod inspect;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod output;
pub mod plan;
pub mod source;
