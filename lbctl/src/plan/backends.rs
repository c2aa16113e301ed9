//! A frontend's backend list, stored by family: the backends of a frontend are of its own
//! family, so an IPv4 frontend's list (most of them) is kept as 6-byte IPv4 socket addresses
//! rather than 32-byte `SocketAddr`s. A node holds one list per frontend (300,000 backends at
//! 30,000 Services of 10 endpoints: 1.8 MB instead of 9.6).
use std::{
    fmt,
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
};

use serde::{Serialize, Serializer};

/// The backends of a frontend, in the order given (the engine sorts them). Cheap to clone (one
/// shared allocation). Two lists are equal when they hold the same addresses in the same order,
/// whatever their storage: every constructor stores an all-IPv4 list (the empty one included)
/// as IPv4.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendList(Stored);

#[derive(Clone, PartialEq, Eq)]
enum Stored {
    V4(Arc<[SocketAddrV4]>),
    /// IPv6 or mixed (the engine never mixes families in one list; a list built by hand may).
    Any(Arc<[SocketAddr]>),
}

impl BackendList {
    pub fn len(&self) -> usize {
        match &self.0 {
            Stored::V4(list) => list.len(),
            Stored::Any(list) => list.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backends, in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(match &self.0 {
            Stored::V4(list) => IterInner::V4(list.iter()),
            Stored::Any(list) => IterInner::Any(list.iter()),
        })
    }

    pub fn to_vec(&self) -> Vec<SocketAddr> {
        self.iter().collect()
    }
}

impl Default for BackendList {
    fn default() -> Self {
        BackendList(Stored::V4(Arc::from([])))
    }
}

impl From<&[SocketAddr]> for BackendList {
    fn from(list: &[SocketAddr]) -> Self {
        let v4: Option<Vec<SocketAddrV4>> = list
            .iter()
            .map(|addr| match addr {
                SocketAddr::V4(v4) => Some(*v4),
                SocketAddr::V6(_) => None,
            })
            .collect();
        BackendList(match v4 {
            Some(v4) => Stored::V4(v4.into()),
            None => Stored::Any(list.into()),
        })
    }
}

impl From<Vec<SocketAddr>> for BackendList {
    fn from(list: Vec<SocketAddr>) -> Self {
        Self::from(list.as_slice())
    }
}

impl FromIterator<SocketAddr> for BackendList {
    fn from_iter<I: IntoIterator<Item = SocketAddr>>(iter: I) -> Self {
        Self::from(iter.into_iter().collect::<Vec<_>>())
    }
}

/// Compares with any list of addresses (`list == [a, b]` in tests and callers alike).
impl<T: AsRef<[SocketAddr]>> PartialEq<T> for BackendList {
    fn eq(&self, other: &T) -> bool {
        let other = other.as_ref();
        self.len() == other.len() && self.iter().eq(other.iter().copied())
    }
}

impl fmt::Debug for BackendList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// As a list of `address:port` strings (IPv6 as `[fd00::5]:8080`).
impl Serialize for BackendList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(|b| b.to_string()))
    }
}

/// The backends of a [`BackendList`], by value.
#[derive(Clone)]
pub struct Iter<'a>(IterInner<'a>);

#[derive(Clone)]
enum IterInner<'a> {
    V4(std::slice::Iter<'a, SocketAddrV4>),
    Any(std::slice::Iter<'a, SocketAddr>),
}

impl Iterator for Iter<'_> {
    type Item = SocketAddr;

    fn next(&mut self) -> Option<SocketAddr> {
        match &mut self.0 {
            IterInner::V4(it) => it.next().map(|v4| SocketAddr::V4(*v4)),
            IterInner::Any(it) => it.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            IterInner::V4(it) => it.size_hint(),
            IterInner::Any(it) => it.size_hint(),
        }
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn ipv4_lists_are_stored_compactly_and_read_back_as_given() {
        let v4 = addrs(&["10.0.0.2:80", "10.0.0.1:8080"]);
        let list = BackendList::from(v4.clone());
        assert!(matches!(list.0, Stored::V4(_)));
        assert_eq!(list.to_vec(), v4, "order kept");
        assert_eq!(list.len(), 2);
        assert_eq!(list, v4);

        let v6 = addrs(&["[fd00::1]:80", "[fd00::2]:80"]);
        let list = BackendList::from(v6.clone());
        assert!(matches!(list.0, Stored::Any(_)));
        assert_eq!(list.iter().collect::<Vec<_>>(), v6);

        let mixed = addrs(&["10.0.0.1:80", "[fd00::2]:80"]);
        assert_eq!(BackendList::from(mixed.clone()).to_vec(), mixed);
    }

    #[test]
    fn equal_lists_are_equal_whatever_built_them() {
        let v4 = addrs(&["10.0.0.1:80"]);
        assert_eq!(
            BackendList::from(v4.clone()),
            v4.iter().copied().collect::<BackendList>()
        );
        assert_eq!(BackendList::default(), BackendList::from(Vec::new()));
        assert!(BackendList::default().is_empty());
        assert_ne!(
            BackendList::from(addrs(&["10.0.0.1:80"])),
            BackendList::from(addrs(&["10.0.0.1:81"]))
        );
    }

    #[test]
    fn serialises_and_prints_as_addresses() {
        let list = BackendList::from(addrs(&["10.0.0.1:80", "[fd00::5]:8080"]));
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"["10.0.0.1:80","[fd00::5]:8080"]"#
        );
        assert_eq!(format!("{list:?}"), "[10.0.0.1:80, [fd00::5]:8080]");
    }
}
