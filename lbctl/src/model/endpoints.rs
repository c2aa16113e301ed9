//! The endpoints of an EndpointSlice as the model holds them: packed by family, read through
//! [`EndpointRef`] views.
//!
//! 300,000 endpoints at 30,000 Services of 10 are the model's largest part. An [`Endpoint`]
//! takes 32 bytes, 16 of them for an address that is IPv4 in most clusters; a slice whose
//! endpoints all hold an IPv4 address (or none) keeps them in 16 bytes each instead. Any other
//! slice keeps them as they are.
use std::{cmp::Ordering, net::IpAddr, net::Ipv4Addr, sync::Arc};

use super::{Conditions, Endpoint, EndpointAddress, Hints, NodeName, Place};

/// The endpoints of one slice, in their order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints(Packed);

/// Which form a list takes is decided by its content alone ([`Endpoints::from`]), so equal
/// lists are equal forms.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Packed {
    /// Every endpoint's inline address is IPv4 (an endpoint whose address is not an IP of the
    /// slice's family holds the unspecified IPv4 address inline).
    V4(Box<[Endpoint4]>),
    /// Any other list.
    Any(Box<[Endpoint]>),
}

/// An [`Endpoint`] whose inline address is IPv4: 16 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint4 {
    place: Option<Arc<Place>>,
    ip: Ipv4Addr,
    conditions: Conditions,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<Endpoint4>() == 16);

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints(Packed::V4(Box::default()))
    }
}

impl From<Vec<Endpoint>> for Endpoints {
    fn from(endpoints: Vec<Endpoint>) -> Self {
        if endpoints.iter().all(|ep| ep.ip.is_ipv4()) {
            let packed = endpoints
                .into_iter()
                .map(|ep| Endpoint4 {
                    ip: match ep.ip {
                        IpAddr::V4(ip) => ip,
                        IpAddr::V6(_) => unreachable!("checked above"),
                    },
                    conditions: ep.conditions,
                    place: ep.place,
                })
                .collect();
            Endpoints(Packed::V4(packed))
        } else {
            Endpoints(Packed::Any(endpoints.into_boxed_slice()))
        }
    }
}

impl FromIterator<Endpoint> for Endpoints {
    fn from_iter<I: IntoIterator<Item = Endpoint>>(iter: I) -> Self {
        Endpoints::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl Endpoints {
    pub fn len(&self) -> usize {
        match &self.0 {
            Packed::V4(endpoints) => endpoints.len(),
            Packed::Any(endpoints) => endpoints.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `index`th endpoint.
    pub fn get(&self, index: usize) -> Option<EndpointRef<'_>> {
        match &self.0 {
            Packed::V4(endpoints) => endpoints.get(index).map(Endpoint4::view),
            Packed::Any(endpoints) => endpoints.get(index).map(Endpoint::view),
        }
    }

    /// Owned copies, to build an edited list from (places are shared, not copied).
    pub fn to_vec(&self) -> Vec<Endpoint> {
        match &self.0 {
            Packed::V4(endpoints) => endpoints
                .iter()
                .map(|ep| Endpoint {
                    ip: IpAddr::V4(ep.ip),
                    conditions: ep.conditions,
                    place: ep.place.clone(),
                })
                .collect(),
            Packed::Any(endpoints) => endpoints.to_vec(),
        }
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter(match &self.0 {
            Packed::V4(endpoints) => IterForm::V4(endpoints.iter()),
            Packed::Any(endpoints) => IterForm::Any(endpoints.iter()),
        })
    }
}

impl<'a> IntoIterator for &'a Endpoints {
    type Item = EndpointRef<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The endpoints of a slice, in order ([`Endpoints::iter`]).
#[derive(Clone, Debug)]
pub struct Iter<'a>(IterForm<'a>);

#[derive(Clone, Debug)]
enum IterForm<'a> {
    V4(std::slice::Iter<'a, Endpoint4>),
    Any(std::slice::Iter<'a, Endpoint>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = EndpointRef<'a>;

    fn next(&mut self) -> Option<EndpointRef<'a>> {
        match &mut self.0 {
            IterForm::V4(iter) => iter.next().map(Endpoint4::view),
            IterForm::Any(iter) => iter.next().map(Endpoint::view),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            IterForm::V4(iter) => iter.size_hint(),
            IterForm::Any(iter) => iter.size_hint(),
        }
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl Endpoint4 {
    fn view(&self) -> EndpointRef<'_> {
        EndpointRef::new(IpAddr::V4(self.ip), self.conditions, self.place.as_deref())
    }
}

/// One endpoint of a slice, as read: its first address (all the engine uses, like kube-proxy),
/// conditions, node and hints. Ordered by those in that order (the engine's tie-break among
/// copies); equal when they are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointRef<'a> {
    /// Meaningless when the place holds an address of its own.
    ip: IpAddr,
    conditions: Conditions,
    place: Option<&'a Place>,
}

impl<'a> EndpointRef<'a> {
    pub(super) fn new(ip: IpAddr, conditions: Conditions, place: Option<&'a Place>) -> Self {
        EndpointRef {
            ip,
            conditions,
            place,
        }
    }

    pub fn conditions(&self) -> Conditions {
        self.conditions
    }

    /// The node it is on, when named.
    pub fn node_name(&self) -> Option<&'a NodeName> {
        self.place?.node_name.as_ref()
    }

    /// The name of the node it is on, when named.
    pub fn node(&self) -> Option<&'a str> {
        self.node_name().map(|name| &**name)
    }

    /// Whether both hold the very same place (not merely equal ones).
    #[cfg(test)]
    pub(crate) fn same_place(&self, other: &EndpointRef<'_>) -> bool {
        match (self.place, other.place) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            _ => false,
        }
    }

    /// The address, as written when it is not an IP of the slice's family.
    pub fn address(&self) -> EndpointAddress {
        match self.odd_address() {
            Some(odd) => odd.clone(),
            None => EndpointAddress::Ip(self.ip),
        }
    }

    fn odd_address(&self) -> Option<&'a EndpointAddress> {
        self.place?.address.as_ref()
    }

    /// The address, when it parsed (as one of the slice's family).
    pub fn ip(&self) -> Option<IpAddr> {
        self.odd_address().is_none().then_some(self.ip)
    }

    /// `None` when it has neither node nor zone hints.
    pub fn hints(&self) -> Option<&'a Hints> {
        self.place?.hints.as_ref()
    }

    pub fn for_nodes(&self) -> &'a [Arc<str>] {
        self.hints().map_or(&[], |h| &h.for_nodes)
    }

    pub fn for_zones(&self) -> &'a [Arc<str>] {
        self.hints().map_or(&[], |h| &h.for_zones)
    }
}

/// By address ([`EndpointAddress`]'s order: an IP first), conditions, node, hints.
impl Ord for EndpointRef<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        let address = match (self.odd_address(), other.odd_address()) {
            (None, None) => self.ip.cmp(&other.ip),
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(a), Some(b)) => a.cmp(b),
        };
        address
            .then(self.conditions.cmp(&other.conditions))
            .then_with(|| self.node_name().cmp(&other.node_name()))
            .then_with(|| self.hints().cmp(&other.hints()))
    }
}

impl PartialOrd for EndpointRef<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
