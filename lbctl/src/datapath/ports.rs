//! `lb_tcp_backend_ports`: the buckets of the TCP backends' ports, a byte each (1: marked),
//! which the reverse hooks check before they look for a TCP socket's translation
//! ([`lb_common::TCP_PORTS_MAP`]). The writer owns it: it marks the bucket of every TCP
//! backend's port before it publishes a master that reaches the backend, so a socket a connect
//! sent to a backend always has its peer's port marked, and the connect itself writes nothing
//! there. A mark is never cleared: a socket may outlive its backend's membership, and a bucket
//! marked for nothing only costs the accepted sockets whose client port falls into it a cookie,
//! an element read and a storage lookup.
use lb_common::{Backend, IPPROTO_TCP, TCP_PORT_BUCKETS, tcp_port_bucket};

use super::maps::TcpPortMarks;

/// The buckets the writer wants marked, and whether the map is known to hold them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMarks {
    wanted: Box<TcpPortMarks>,
    /// The map holds `wanted` (false for maps just adopted that hold less, and after a write
    /// failed: then the next apply writes it).
    written: bool,
}

impl PortMarks {
    /// The marks of adopted maps: the ones `found` there (`None`: the map could not be read,
    /// then it is written whole by the next apply) and the ports of the TCP backends
    /// `lb_backends` holds, which an older lbctl's programs marked only once a connect was sent
    /// to them.
    pub fn adopted<'a>(
        found: Option<TcpPortMarks>,
        backends: impl IntoIterator<Item = &'a Backend>,
    ) -> Self {
        let mut marks = Self {
            wanted: Box::new(found.unwrap_or([0; TCP_PORT_BUCKETS])),
            written: found.is_some(),
        };
        for backend in backends {
            marks.want(backend);
        }
        marks
    }

    /// Wants the bucket of `backend`'s port marked when it is a TCP backend.
    pub fn want(&mut self, backend: &Backend) {
        if backend.proto == IPPROTO_TCP {
            let bucket = &mut self.wanted[tcp_port_bucket(backend.port)];
            if *bucket == 0 {
                *bucket = 1;
                self.written = false;
            }
        }
    }

    /// Whether the map is known to hold the mark `backend` needs (a backend of another protocol
    /// needs none).
    pub fn holds(&self, backend: &Backend) -> bool {
        backend.proto != IPPROTO_TCP
            || (self.written && self.wanted[tcp_port_bucket(backend.port)] != 0)
    }

    /// The element to write, when the map does not hold it yet.
    pub fn pending(&self) -> Option<&TcpPortMarks> {
        (!self.written).then_some(&*self.wanted)
    }

    /// Records the outcome of writing [`PortMarks::pending`].
    pub fn set_written(&mut self, written: bool) {
        self.written = written;
    }

    /// Marked buckets.
    pub fn count(&self) -> usize {
        self.wanted.iter().filter(|&&b| b != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::IPPROTO_UDP;

    fn backend(port: u16, proto: u8) -> Backend {
        Backend {
            address: [0; 16],
            port: port.to_be(),
            proto,
            flags: 0,
        }
    }

    #[test]
    fn tcp_backends_are_wanted_and_held_once_written() {
        let mut marks = PortMarks::adopted(Some([0; TCP_PORT_BUCKETS]), []);
        assert_eq!(
            marks.pending(),
            None,
            "an empty map that wants nothing is written"
        );
        let tcp = backend(8080, IPPROTO_TCP);
        let udp = backend(53, IPPROTO_UDP);
        marks.want(&tcp);
        marks.want(&udp);
        assert!(!marks.holds(&tcp), "wanted, not written yet");
        assert!(marks.holds(&udp), "a UDP backend needs no mark");
        let pending = *marks.pending().expect("a new mark to write");
        assert_eq!(pending.iter().filter(|&&b| b != 0).count(), 1);
        assert_eq!(pending[tcp_port_bucket(8080u16.to_be())], 1);
        marks.set_written(true);
        assert!(marks.holds(&tcp));
        assert_eq!(marks.pending(), None);
        marks.want(&tcp);
        assert_eq!(marks.pending(), None, "a mark already held writes nothing");
    }

    #[test]
    fn adoption_keeps_found_marks_and_adds_the_tcp_backends() {
        let mut found = [0; TCP_PORT_BUCKETS];
        found[7] = 1;
        let tcp = backend(9000, IPPROTO_TCP);
        let marks = PortMarks::adopted(Some(found), [&tcp, &backend(5353, IPPROTO_UDP)]);
        let pending = marks
            .pending()
            .expect("the adopted TCP backend's mark to write");
        assert_eq!(pending[7], 1, "found marks are kept");
        assert_eq!(pending[tcp_port_bucket(9000u16.to_be())], 1);
        assert_eq!(marks.count(), 2);

        let unreadable = PortMarks::adopted(None, []);
        assert!(
            unreadable.pending().is_some(),
            "an unreadable map is written whole"
        );
    }
}
