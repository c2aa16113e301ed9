//! Ports for the tests' own listeners (backends, the agent's metrics server).
//!
//! A port the kernel hands out for `bind(..:0)` comes from the ephemeral range, the same range
//! every client `connect()` of every concurrently running test draws its local port from. A
//! port chosen that way, released and bound again later can be taken in between. Ports just
//! below the ephemeral range are never handed out by the kernel, so only another test choosing
//! the same one at the same moment can collide, and a bind that fails is retried.
use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};

/// How many ports below the ephemeral range the tests use.
const SPAN: u16 = 8192;

/// The ports below the kernel's ephemeral range (`ip_local_port_range`).
fn range() -> Result<std::ops::Range<u16>> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .context("reading /proc/sys/net/ipv4/ip_local_port_range")?;
    let low: u16 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("ip_local_port_range: {text:?}"))?;
    if low < 1024 + SPAN {
        bail!("the ephemeral range starts at {low}: no room below it for test ports");
    }
    Ok(low - SPAN..low)
}

/// A pseudo-random candidate in `range`, different on every call and in every process.
fn candidate(range: &std::ops::Range<u16>) -> u16 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = nanos
        .wrapping_mul(2_654_435_761)
        .wrapping_add(std::process::id().wrapping_mul(40_503))
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(7_919));
    range.start + (mixed % u32::from(range.end - range.start)) as u16
}

/// Binds one listener per address in `ips`, all on one port outside the ephemeral range.
pub fn listeners_on_one_port(ips: &[IpAddr]) -> Result<Vec<TcpListener>> {
    let range = range()?;
    const TRIES: usize = 64;
    for _ in 0..TRIES {
        let port = candidate(&range);
        let bound: Result<Vec<TcpListener>, _> = ips
            .iter()
            .map(|&ip| TcpListener::bind(SocketAddr::new(ip, port)))
            .collect();
        match bound {
            Ok(listeners) => return Ok(listeners),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(|| format!("binding {ips:?} on port {port}")),
        }
    }
    bail!("no port in {range:?} free on all of {ips:?} in {TRIES} tries")
}

/// A port on 127.0.0.1 free right now, outside the ephemeral range, for a server another
/// process binds shortly after (the agent's `--metrics-addr`).
pub fn free_port() -> Result<u16> {
    let listener = listeners_on_one_port(&[IpAddr::from([127, 0, 0, 1])])?;
    Ok(listener[0].local_addr()?.port())
}
