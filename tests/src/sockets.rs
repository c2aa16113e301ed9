//! The socket-semantics modes of `lb-probe` (the probe's side; [`crate::probe::Probe`] is the
//! parent's). Every mode prints one line per attempt, `ok NAME ...` or `err ERRNO`:
//!
//! ```text
//! dgram ADDR                  ONE unconnected UDP socket; each stdin line `N [TO]` makes N
//!                             exchanges (sendto ADDR, or TO; recvfrom): `ok NAME FROM` per
//!                             exchange, FROM being the reply's source as recvfrom reports it
//! dgram-many ADDR N           N short-lived unconnected UDP sockets, one exchange each, then
//!                             one line `done OK ERR`
//! peer tcp|udp ADDR COUNT     connect (TCP, or connected UDP and one exchange), then
//!                             `ok NAME PEER` with PEER from getpeername
//! serve tcp|udp NAME ADDR ... named servers (any number of NAME ADDR pairs) answering with
//!                             their name; prints `listening` once all are bound (a TCP server
//!                             writes its name and closes)
//! serve-hold NAME ADDR ...    TCP servers that keep each connection open and answer every
//!                             read with their name; `listening` once all are bound
//! hold tcp|udp ADDR [quiet]   ONE connected socket (TCP, or connected UDP; an IPv6 ADDR such
//!                             as [::ffff:10.96.0.1]:53 makes an AF_INET6 socket): prints
//!                             `connected PEER` (`connected` with `quiet`, which never asks
//!                             for the peer: no getpeername, and `ok NAME` answers); then each stdin line `N` makes N exchanges
//!                             (send, receive): `ok NAME PEER`, or `err send|recv ERRNO`
//!                             (0: the peer closed), a line `recv` receives once, a line
//!                             `peer` prints `peer PEER` (getpeername), a line `cookie`
//!                             prints `cookie N`, the socket's cookie, and a line
//!                             `reconnect ADDR` connects the same socket to ADDR (a TCP one
//!                             after `connect(AF_UNSPEC)`), then prints `connected PEER` (or
//!                             `connected` with `quiet`)
//! resolve ADDR NAME           a resolver with one long-lived connected UDP socket to ADDR
//!                             (a DNS server): each stdin line `N` makes N queries for NAME's A
//!                             record, `ok IP` or `err ERRNO`; after an error it reconnects
//!                             (a new socket, connected again), as resolvers do
//! ```
use std::{
    io::{self, BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

/// The modes [`run`] serves.
pub const MODES: &[&str] = &[
    "dgram",
    "dgram-many",
    "peer",
    "serve",
    "serve-hold",
    "hold",
    "resolve",
];

const TIMEOUT: Duration = Duration::from_secs(2);

fn unspecified(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

fn parse(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Sends one datagram on `socket` to `addr` and waits for the reply.
fn exchange(socket: &UdpSocket, addr: SocketAddr) -> io::Result<(String, SocketAddr)> {
    socket.send_to(b"?", addr)?;
    let mut buf = [0u8; 256];
    let (n, from) = socket.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).trim().to_owned(), from))
}

fn line(out: &mut impl Write, text: std::fmt::Arguments<'_>) -> Result<(), String> {
    out.write_fmt(text)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())
}

fn dgram(addr: SocketAddr, out: &mut impl Write) -> Result<(), String> {
    let socket = UdpSocket::bind(unspecified(addr)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    for request in io::stdin().lock().lines() {
        let request = request.map_err(|e| e.to_string())?;
        let mut words = request.split_whitespace();
        let n: usize = words
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("{request:?}: {e}"))?;
        let to = match words.next() {
            Some(other) => parse(other)?,
            None => addr,
        };
        for _ in 0..n {
            match exchange(&socket, to) {
                Ok((name, from)) => line(out, format_args!("ok {name} {from}"))?,
                Err(e) => line(out, format_args!("err {}", errno(&e)))?,
            }
        }
    }
    Ok(())
}

fn dgram_many(addr: SocketAddr, count: usize, out: &mut impl Write) -> Result<(), String> {
    let (mut ok, mut failed) = (0usize, 0usize);
    for _ in 0..count {
        let result = UdpSocket::bind(unspecified(addr)).and_then(|socket| {
            socket.set_read_timeout(Some(TIMEOUT))?;
            exchange(&socket, addr)
        });
        match result {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    line(out, format_args!("done {ok} {failed}"))
}

fn peer_once(proto: &str, addr: SocketAddr) -> io::Result<(String, SocketAddr)> {
    let mut buf = [0u8; 256];
    if proto == "tcp" {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        let peer = stream.peer_addr()?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok((reply.trim().to_owned(), peer))
    } else {
        let socket = UdpSocket::bind(unspecified(addr))?;
        socket.set_read_timeout(Some(TIMEOUT))?;
        socket.connect(addr)?;
        let peer = socket.peer_addr()?;
        socket.send(b"?")?;
        let n = socket.recv(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).trim().to_owned(), peer))
    }
}

fn serve(proto: &str, pairs: &[String], out: &mut impl Write) -> Result<(), String> {
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err("serve needs NAME ADDR pairs".into());
    }
    let mut threads = Vec::new();
    for pair in pairs.chunks(2) {
        let (name, addr) = (format!("{}\n", pair[0]), parse(&pair[1])?);
        if proto == "tcp" {
            let listener = TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
            threads.push(thread::spawn(move || {
                for mut conn in listener.incoming().flatten() {
                    let _ = conn.write_all(name.as_bytes());
                }
            }));
        } else {
            let socket = UdpSocket::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(name.as_bytes(), from);
                }
            }));
        }
    }
    line(out, format_args!("listening"))?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn serve_hold(pairs: &[String], out: &mut impl Write) -> Result<(), String> {
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err("serve-hold needs NAME ADDR pairs".into());
    }
    let mut threads = Vec::new();
    for pair in pairs.chunks(2) {
        let (name, addr) = (format!("{}\n", pair[0]), parse(&pair[1])?);
        let listener = TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
        threads.push(thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let name = name.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 256];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        let _ = n;
                        if conn.write_all(name.as_bytes()).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
    }
    line(out, format_args!("listening"))?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// A connected socket of `hold`.
enum Held {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl Held {
    fn connect(proto: &str, addr: SocketAddr) -> io::Result<Self> {
        if proto == "tcp" {
            let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            Ok(Self::Tcp(stream))
        } else {
            let socket = UdpSocket::bind(unspecified(addr))?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            socket.connect(addr)?;
            Ok(Self::Udp(socket))
        }
    }

    fn peer(&self) -> String {
        match self {
            Self::Tcp(s) => s.peer_addr(),
            Self::Udp(s) => s.peer_addr(),
        }
        .map_or_else(|e| format!("unconnected({})", errno(&e)), |p| p.to_string())
    }

    /// Connects the same socket to `addr`: a TCP socket is disconnected first
    /// (`connect(AF_UNSPEC)`), as a TCP socket may connect again only then.
    fn reconnect(&mut self, addr: SocketAddr) -> io::Result<()> {
        match self {
            Self::Tcp(s) => {
                rustix::net::connect_unspec(&*s)?;
                socket2::SockRef::from(&*s).connect(&addr.into())
            }
            Self::Udp(s) => s.connect(addr),
        }
    }

    /// The socket's cookie (`SO_COOKIE`), as the programs see it.
    fn cookie(&self) -> io::Result<u64> {
        match self {
            Self::Tcp(s) => socket2::SockRef::from(s).cookie(),
            Self::Udp(s) => socket2::SockRef::from(s).cookie(),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.write_all(b"?\n"),
            Self::Udp(s) => s.send(b"?").map(drop),
        }
    }

    fn recv(&mut self) -> Result<String, String> {
        let mut buf = [0u8; 256];
        let n = match self {
            Self::Tcp(s) => s.read(&mut buf),
            Self::Udp(s) => s.recv(&mut buf),
        }
        .map_err(|e| format!("err recv {}", errno(&e)))?;
        if n == 0 {
            return Err("err recv 0".to_owned());
        }
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
    }
}

fn hold(proto: &str, addr: SocketAddr, peer: bool, out: &mut impl Write) -> Result<(), String> {
    let mut held = Held::connect(proto, addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    if peer {
        line(out, format_args!("connected {}", held.peer()))?;
    } else {
        line(out, format_args!("connected"))?;
    }
    for request in io::stdin().lock().lines() {
        let request = request.map_err(|e| e.to_string())?;
        let request = request.trim();
        if request == "peer" {
            line(out, format_args!("peer {}", held.peer()))?;
            continue;
        }
        if let Some(to) = request.strip_prefix("reconnect ") {
            let to = parse(to)?;
            held.reconnect(to)
                .map_err(|e| format!("reconnecting to {to}: {e}"))?;
            if peer {
                line(out, format_args!("connected {}", held.peer()))?;
            } else {
                line(out, format_args!("connected"))?;
            }
            continue;
        }
        if request == "cookie" {
            let cookie = held
                .cookie()
                .map_err(|e| format!("reading the cookie: {e}"))?;
            line(out, format_args!("cookie {cookie}"))?;
            continue;
        }
        if request == "recv" {
            match held.recv() {
                Ok(name) => answered(out, &name, &held, peer)?,
                Err(e) => line(out, format_args!("{e}"))?,
            }
            continue;
        }
        let n: usize = request.parse().map_err(|e| format!("{request:?}: {e}"))?;
        for _ in 0..n {
            if let Err(e) = held.send() {
                line(out, format_args!("err send {}", errno(&e)))?;
                continue;
            }
            match held.recv() {
                Ok(name) => answered(out, &name, &held, peer)?,
                Err(e) => line(out, format_args!("{e}"))?,
            }
        }
    }
    Ok(())
}

/// `ok NAME PEER`, or `ok NAME` when the holder does not ask for its peer.
fn answered(out: &mut impl Write, name: &str, held: &Held, peer: bool) -> Result<(), String> {
    if peer {
        line(out, format_args!("ok {name} {}", held.peer()))
    } else {
        line(out, format_args!("ok {name}"))
    }
}

fn resolver_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(unspecified(addr))?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    socket.connect(addr)?;
    Ok(socket)
}

fn resolve(addr: SocketAddr, name: &str, out: &mut impl Write) -> Result<(), String> {
    let mut socket = resolver_socket(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    for request in io::stdin().lock().lines() {
        let request = request.map_err(|e| e.to_string())?;
        let n: usize = request
            .trim()
            .parse()
            .map_err(|e| format!("{request:?}: {e}"))?;
        for _ in 0..n {
            match crate::dns::ask_a(&socket, None, name) {
                Ok(Some(ip)) => line(out, format_args!("ok {ip}"))?,
                Ok(None) => line(out, format_args!("err nodata"))?,
                Err(e) => {
                    line(out, format_args!("err {}", errno(&e)))?;
                    socket = resolver_socket(addr)
                        .map_err(|e| format!("reconnecting to {addr}: {e}"))?;
                }
            }
        }
    }
    Ok(())
}

/// Runs one of [`MODES`] with its arguments.
pub fn run(mode: &str, args: &[String], out: &mut impl Write) -> Result<(), String> {
    match (mode, args) {
        ("dgram", [addr]) => dgram(parse(addr)?, out),
        ("dgram-many", [addr, count]) => dgram_many(
            parse(addr)?,
            count.parse().map_err(|e| format!("{e}"))?,
            out,
        ),
        ("peer", [proto, addr, count]) if proto == "tcp" || proto == "udp" => {
            let addr = parse(addr)?;
            let count: usize = count.parse().map_err(|e| format!("count: {e}"))?;
            for _ in 0..count {
                match peer_once(proto, addr) {
                    Ok((name, peer)) => line(out, format_args!("ok {name} {peer}"))?,
                    Err(e) => line(out, format_args!("err {}", errno(&e)))?,
                }
            }
            Ok(())
        }
        ("serve", [proto, pairs @ ..]) if proto == "tcp" || proto == "udp" => {
            serve(proto, pairs, out)
        }
        ("serve-hold", pairs) => serve_hold(pairs, out),
        ("resolve", [addr, name]) => resolve(parse(addr)?, name, out),
        ("hold", [proto, addr]) if proto == "tcp" || proto == "udp" => {
            hold(proto, parse(addr)?, true, out)
        }
        ("hold", [proto, addr, quiet])
            if (proto == "tcp" || proto == "udp") && quiet == "quiet" =>
        {
            hold(proto, parse(addr)?, false, out)
        }
        _ => Err(format!("bad arguments for `{mode}`: {args:?}")),
    }
}

/// One line of `dgram` or `peer` output: the backend reached (or the errno), and the address
/// the socket reported for it (the reply's source, or the peer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub outcome: crate::probe::Outcome,
    pub from: Option<SocketAddr>,
}

impl Reply {
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let words: Vec<&str> = line.split_whitespace().collect();
        Ok(match words.as_slice() {
            ["ok", name, from] => Reply {
                outcome: crate::probe::Outcome::Reached((*name).to_owned()),
                from: Some(from.parse().context("reply address")?),
            },
            ["err", errno] => Reply {
                outcome: crate::probe::Outcome::Failed(errno.parse().context("errno")?),
                from: None,
            },
            _ => anyhow::bail!("unexpected probe output {line:?}"),
        })
    }
}
