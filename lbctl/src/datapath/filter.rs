//! `lb_v4_filter`: the IPv4 /16s that hold no frontend address, a bit each (1: none), which the
//! forward hooks check before they look a destination up in `lb_services`
//! ([`lb_common::V4_FILTER_MAP`]). The writer owns it: it clears a /16's bit before it
//! publishes a master there, and sets it once the last master there is deleted, so a connect
//! never skips a frontend the maps hold. A bit left clear only costs connects into that /16 the
//! hash lookup they would make without the filter.
use std::net::IpAddr;

use lb_common::{V4_FILTER_WORDS, v4_filter_slot};

use crate::plan::FrontendKey;

/// The element of `lb_v4_filter`.
#[derive(Clone, PartialEq, Eq)]
pub struct V4Filter(Box<[u64; V4_FILTER_WORDS]>);

/// The IPv4 /16 of a frontend's address (IPv4-mapped IPv6 ones too: the programs look them up
/// as IPv4); `None` for an IPv6 frontend, which the filter does not cover.
pub fn prefix_of(frontend: &FrontendKey) -> Option<u16> {
    let v4 = match frontend.address {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
    };
    let [a, b, _, _] = v4.octets();
    Some(u16::from_be_bytes([a, b]))
}

/// `a.b.0.0/16`.
pub fn prefix_name(prefix: u16) -> String {
    let [a, b] = prefix.to_be_bytes();
    format!("{a}.{b}.0.0/16")
}

impl V4Filter {
    /// Every /16 without frontends.
    pub fn none_held() -> Self {
        Self(Box::new([u64::MAX; V4_FILTER_WORDS]))
    }

    /// Every /16 held: what a new (all zero) map says.
    pub fn all_held() -> Self {
        Self(Box::new([0; V4_FILTER_WORDS]))
    }

    /// The filter as `lb_v4_filter` holds it.
    pub fn from_words(words: [u64; V4_FILTER_WORDS]) -> Self {
        Self(Box::new(words))
    }

    /// The filter of exactly these frontends.
    pub fn of<'a>(frontends: impl IntoIterator<Item = &'a FrontendKey>) -> Self {
        let mut filter = Self::none_held();
        for frontend in frontends {
            filter.hold(frontend);
        }
        filter
    }

    /// Marks the /16 of `frontend` as holding a frontend; whether that changed the filter.
    pub fn hold(&mut self, frontend: &FrontendKey) -> bool {
        let Some(prefix) = prefix_of(frontend) else {
            return false;
        };
        let (word, bit) = v4_filter_slot(prefix);
        let changed = self.0[word] & bit != 0;
        self.0[word] &= !bit;
        changed
    }

    /// Marks `prefix` as holding no frontend; whether that changed the filter.
    pub fn release(&mut self, prefix: u16) -> bool {
        let (word, bit) = v4_filter_slot(prefix);
        let changed = self.0[word] & bit == 0;
        self.0[word] |= bit;
        changed
    }

    /// Whether connects into `prefix` skip the lookup.
    pub fn skips(&self, prefix: u16) -> bool {
        let (word, bit) = v4_filter_slot(prefix);
        self.0[word] & bit != 0
    }

    /// Whether a connect to `frontend` skips the lookup (never for IPv6).
    pub fn skips_frontend(&self, frontend: &FrontendKey) -> bool {
        prefix_of(frontend).is_some_and(|p| self.skips(p))
    }

    /// The element as the map holds it.
    pub fn words(&self) -> &[u64; V4_FILTER_WORDS] {
        &self.0
    }

    /// The /16s with frontends.
    pub fn held(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(|&p| !self.skips(p))
    }
}

impl std::fmt::Debug for V4Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held: Vec<String> = self.held().map(prefix_name).collect();
        f.debug_tuple("V4Filter").field(&held).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Protocol;

    fn frontend(addr: &str) -> FrontendKey {
        FrontendKey::new(addr.parse().unwrap(), Protocol::Tcp)
    }

    #[test]
    fn a_frontend_clears_the_bit_of_its_16_only() {
        let filter = V4Filter::of(&[frontend("10.96.3.4:80"), frontend("[fd00::1]:53")]);
        assert!(!filter.skips(u16::from_be_bytes([10, 96])));
        assert!(filter.skips(u16::from_be_bytes([10, 97])));
        assert!(filter.skips(u16::from_be_bytes([96, 10])));
        assert!(!filter.skips_frontend(&frontend("10.96.200.1:443")));
        assert!(
            !filter.skips_frontend(&frontend("[fd00::2]:53")),
            "IPv6 is always looked up"
        );
        assert!(!filter.skips_frontend(&frontend("[::ffff:10.96.0.1]:80")));
        assert!(filter.skips_frontend(&frontend("[::ffff:10.244.0.1]:80")));
        assert_eq!(filter.held().count(), 1);
    }

    #[test]
    fn hold_and_release_report_changes() {
        let mut filter = V4Filter::none_held();
        let f = frontend("10.96.0.1:80");
        assert!(filter.hold(&f));
        assert!(!filter.hold(&f));
        let p = prefix_of(&f).unwrap();
        assert!(filter.release(p));
        assert!(!filter.release(p));
        assert_eq!(filter, V4Filter::none_held());
    }
}
