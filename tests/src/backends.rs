//! Backends that answer with their own name, so a client can tell where its connect landed.
use std::{
    io::Write,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context, Result};

/// One named backend server.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
}

/// TCP and UDP servers on loopback (any port), each answering with its name and a newline.
/// Stopped on drop.
pub struct Backends {
    backends: Vec<Backend>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    udp: bool,
}

impl Backends {
    /// TCP servers on `ip`, one per name: each accepted connection gets the name, then EOF.
    pub fn tcp(ip: IpAddr, names: &[&str]) -> Result<Self> {
        let named: Vec<(&str, SocketAddr)> =
            names.iter().map(|n| (*n, SocketAddr::new(ip, 0))).collect();
        Self::tcp_at(&named)
    }

    /// TCP servers on 127.0.0.2, 127.0.0.3, ... all on one port, as the endpoints of one
    /// EndpointSlice port are (a port outside the ephemeral range, see [`crate::ports`]).
    pub fn tcp_same_port(names: &[&str]) -> Result<Self> {
        let ips: Vec<IpAddr> = (0..names.len())
            .map(|i| IpAddr::from([127, 0, 0, 2 + i as u8]))
            .collect();
        let listeners = crate::ports::listeners_on_one_port(&ips)?;
        Self::serve_on(
            names
                .iter()
                .zip(listeners)
                .map(|(name, listener)| (*name, listener, format!("{name}\n")))
                .collect(),
            false,
        )
    }

    /// TCP servers at the given addresses (port 0: any).
    pub fn tcp_at(named: &[(&str, SocketAddr)]) -> Result<Self> {
        let servers = named
            .iter()
            .map(|(name, at)| (*name, *at, format!("{name}\n")))
            .collect();
        Self::serve(servers, false)
    }

    /// Minimal HTTP/1.1 servers on `ip`: each answers any request with `200 OK` and the body
    /// given with its name (for `curl` in the demo).
    pub fn http(ip: IpAddr, named_bodies: &[(&str, String)]) -> Result<Self> {
        let servers = named_bodies
            .iter()
            .map(|(name, body)| {
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                (*name, SocketAddr::new(ip, 0), response)
            })
            .collect();
        Self::serve(servers, true)
    }

    /// One listener thread per (name, address, reply): each accepted connection gets the reply
    /// (after the request head when `http`), then EOF. Every address is bound before any thread
    /// starts, so a failed bind leaves nothing running.
    fn serve(servers: Vec<(&str, SocketAddr, String)>, http: bool) -> Result<Self> {
        let mut listeners = Vec::with_capacity(servers.len());
        for (name, at, reply) in servers {
            let listener =
                TcpListener::bind(at).with_context(|| format!("binding backend {name} on {at}"))?;
            listeners.push((name, listener, reply));
        }
        Self::serve_on(listeners, http)
    }

    /// [`Self::serve`] on listeners already bound.
    fn serve_on(listeners: Vec<(&str, TcpListener, String)>, http: bool) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut backends = Vec::with_capacity(listeners.len());
        let mut threads = Vec::with_capacity(listeners.len());
        for (name, listener, reply) in listeners {
            backends.push(Backend {
                name: name.to_owned(),
                addr: listener.local_addr()?,
            });
            let stop = stop.clone();
            threads.push(thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(mut conn) = conn {
                        if http {
                            let _ = read_request_head(&mut conn, Duration::from_secs(2));
                        }
                        let _ = conn.write_all(reply.as_bytes());
                    }
                }
            }));
        }
        Ok(Self {
            backends,
            stop,
            threads,
            udp: false,
        })
    }

    /// UDP servers on `ip`: every datagram is answered with the name, from the server's address.
    pub fn udp(ip: IpAddr, names: &[&str]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut backends = Vec::new();
        let mut threads = Vec::new();
        for name in names {
            let socket = UdpSocket::bind((ip, 0)).context("binding a backend")?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let addr = socket.local_addr()?;
            let (stop, reply) = (stop.clone(), format!("{name}\n"));
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(reply.as_bytes(), peer);
                    }
                }
            }));
            backends.push(Backend {
                name: (*name).to_owned(),
                addr,
            });
        }
        Ok(Self {
            backends,
            stop,
            threads,
            udp: true,
        })
    }

    pub fn all(&self) -> &[Backend] {
        &self.backends
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.addr).collect()
    }

    /// Address of the backend called `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .map(|b| b.addr)
            .unwrap_or_else(|| panic!("no backend called {name}"))
    }

    pub fn names(&self) -> Vec<String> {
        self.backends.iter().map(|b| b.name.clone()).collect()
    }
}

/// Reads up to the blank line that ends an HTTP request head (or EOF, or `timeout`).
pub fn read_request_head(conn: &mut TcpStream, timeout: Duration) -> std::io::Result<()> {
    use std::io::Read;
    conn.set_read_timeout(Some(timeout))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if !self.udp {
            for b in &self.backends {
                // Wakes the blocking accept so the thread sees the stop flag.
                let _ = TcpStream::connect_timeout(&b.addr, Duration::from_millis(200));
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
