//! The cluster objects the policy engine reads, as k8s-openapi types.
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

/// A snapshot of the objects that matter to one node, from any source (Kubernetes watches or
/// manifest files).
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
}
