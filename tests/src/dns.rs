//! A real DNS server for the tests: Debian's `dnsmasq` (package dnsmasq-base, installed by
//! `cargo xtask setup`) in the foreground, answering fixed A records, killed on drop; and a
//! minimal DNS client to see that it answers.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

/// A port free for both UDP and TCP on `ip` (dnsmasq binds both).
fn free_port(ip: Ipv4Addr) -> Result<u16> {
    free_port_on(&[ip])
}

/// A port free for both UDP and TCP on every one of `ips`.
pub fn free_port_on(ips: &[Ipv4Addr]) -> Result<u16> {
    let first = *ips.first().context("at least one address")?;
    for _ in 0..20 {
        let udp = UdpSocket::bind((first, 0)).context("finding a free port")?;
        let port = udp.local_addr()?.port();
        let free = ips.iter().all(|ip| {
            TcpListener::bind((*ip, port)).is_ok()
                && (*ip == first || UdpSocket::bind((*ip, port)).is_ok())
        });
        if free {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP on {ips:?}")
}

impl Dnsmasq {
    /// Starts dnsmasq on `ip` (a loopback address such as 127.0.0.53) and a free port, with
    /// `records` as its only answers (`--address=/NAME/IP`), and waits until it answers.
    pub fn start(ip: Ipv4Addr, records: &[(&str, Ipv4Addr)]) -> Result<Self> {
        Self::start_on(ip, free_port(ip)?, records)
    }

    /// [`Dnsmasq::start`] on a given port.
    pub fn start_on(ip: Ipv4Addr, port: u16, records: &[(&str, Ipv4Addr)]) -> Result<Self> {
        let (first, _) = *records.first().context("at least one record")?;
        let mut cmd = Command::new("dnsmasq");
        cmd.args(["--no-daemon", "--port"])
            .arg(port.to_string())
            .arg(format!("--listen-address={ip}"))
            .args([
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
            ]);
        for (name, address) in records {
            cmd.arg(format!("--address=/{name}/{address}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (package dnsmasq-base)")?;
        let mut server = Self {
            child,
            addr: SocketAddr::from((ip, port)),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("dnsmasq exited at start: {status}");
            }
            if query_a(server.addr, first).is_ok_and(|a| a.is_some()) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("dnsmasq on {} does not answer", server.addr);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks `server` for the A record of `name` over UDP (one try, 1 s): the first address of the
/// answer, `None` for an answer without one.
pub fn query_a(server: SocketAddr, name: &str) -> Result<Option<Ipv4Addr>> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    Ok(ask_a(&socket, Some(server), name)?)
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Asks for the A record of `name` on `socket`: sent to `to`, or on the connected socket's peer
/// when `None` (as a resolver with a long-lived connected socket does). Errors keep their errno.
pub fn ask_a(
    socket: &UdpSocket,
    to: Option<SocketAddr>,
    name: &str,
) -> std::io::Result<Option<Ipv4Addr>> {
    let id: u16 = 0x5ab1;
    // Header: id, flags (recursion desired), 1 question, no other records.
    let mut query = Vec::with_capacity(64);
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        query.push(u8::try_from(label.len()).map_err(|_| invalid("label too long"))?);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    match to {
        Some(server) => socket.send_to(&query, server)?,
        None => socket.send(&query)?,
    };
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    let reply = &buf[..n];
    if n < 12 || reply[..2] != id.to_be_bytes() {
        return Err(invalid("not an answer to our query"));
    }
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    let truncated = || invalid("truncated answer");
    // Skip the question: the name we sent, then type and class.
    let mut at = query.len();
    for _ in 0..answers {
        // A name: labels, or a 2-byte compression pointer.
        loop {
            let len = *reply.get(at).ok_or_else(truncated)?;
            if len & 0xc0 == 0xc0 {
                at += 2;
                break;
            }
            at += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
        let fixed = reply.get(at..at + 10).ok_or_else(truncated)?;
        let (rtype, rdlen) = (
            u16::from_be_bytes([fixed[0], fixed[1]]),
            usize::from(u16::from_be_bytes([fixed[8], fixed[9]])),
        );
        at += 10;
        let data = reply.get(at..at + rdlen).ok_or_else(truncated)?;
        if rtype == 1 && rdlen == 4 {
            return Ok(Some(Ipv4Addr::new(data[0], data[1], data[2], data[3])));
        }
        at += rdlen;
    }
    Ok(None)
}
