//! `lbctl monitor`: the datapath's decisions as they happen.
//!
//! The programs write one [`MonitorEvent`] per decision on a frontend into the ring buffer
//! `lb_events`, only while a monitor is connected (see [`server`]). The agent is the ring's one
//! reader and fans the events out over a Unix socket (one ring buffer has one consumer
//! position: two readers would steal each other's events). This side connects, names each
//! event's Service (from `lb_fe_names`, see [`names`]) and cgroup (see [`cgroups`]), filters
//! and prints.
pub mod bpflog;
pub mod cgroups;
pub mod names;
pub mod server;

use std::{
    io::{Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, Map, MapData};
use lb_common::{FrontendName, IPPROTO_UDP, MonitorEvent, NAMES_MAP, hook, reason, verdict};
use serde::Serialize;

pub use server::MonitorServer;

use crate::datapath::desired::ip_from16;

/// Where agents put their monitor sockets by default.
pub const RUN_DIR: &str = "/run/lbctl";

/// Bytes of one event as the programs write it.
pub const EVENT_LEN: usize = size_of::<MonitorEvent>();
pub type RawEvent = [u8; EVENT_LEN];

/// The monitor socket of the agent that serves the datapath pinned at `pin_dir` (so agents of
/// different pin directories, e.g. in tests, do not collide): `/run/lbctl/<pin dir with / as
/// _>.monitor.sock`, or a hash of the pin dir when that would be too long for a socket path.
pub fn socket_path(pin_dir: &Path) -> PathBuf {
    let flat = pin_dir
        .to_string_lossy()
        .trim_matches('/')
        .replace('/', "_");
    let name = if flat.len() <= 80 {
        flat
    } else {
        // FNV-1a: stable across builds and hosts.
        let hash = flat.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{hash:016x}")
    };
    Path::new(RUN_DIR).join(format!("{name}.monitor.sock"))
}

/// What travels on the monitor socket, agent to monitor: fixed-size frames (a kind, a number,
/// and an event's bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The events switch is on: every decision from now on is sent.
    Ready,
    Event(RawEvent),
    /// The monitor fell behind and this many events were dropped for it.
    Lost(u64),
}

pub const FRAME_LEN: usize = 16 + EVENT_LEN;

impl Frame {
    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let mut out = [0u8; FRAME_LEN];
        let (kind, n) = match self {
            Frame::Ready => (1u64, 0u64),
            Frame::Event(raw) => {
                out[16..].copy_from_slice(raw);
                (2, 0)
            }
            Frame::Lost(n) => (3, *n),
        };
        out[..8].copy_from_slice(&kind.to_le_bytes());
        out[8..16].copy_from_slice(&n.to_le_bytes());
        out
    }

    pub fn decode(buf: &[u8; FRAME_LEN]) -> Option<Self> {
        let word = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
        Some(match word(0) {
            1 => Frame::Ready,
            2 => Frame::Event(buf[16..].try_into().expect("event bytes")),
            3 => Frame::Lost(word(8)),
            _ => return None,
        })
    }
}

/// An event's bytes as the struct the programs wrote.
pub fn parse_event(raw: &RawEvent) -> MonitorEvent {
    // SAFETY: MonitorEvent is #[repr(C)] plain integers and byte arrays without padding (its
    // size is asserted equal to EVENT_LEN in lb-common), so any 96 bytes are a valid value;
    // read_unaligned makes no alignment assumption about the buffer.
    unsafe { std::ptr::read_unaligned(raw.as_ptr().cast::<MonitorEvent>()) }
}

/// One event as `lbctl monitor -o json` prints it (one object per line). Scripts depend on
/// these fields: add, never rename.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// When the program decided, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// `rewritten`, `refused` or `reversed`.
    pub verdict: &'static str,
    /// A reverse translation (reply source or peer address shown as the service).
    pub reverse: bool,
    /// The hook: `connect4`, `connect6`, `sendmsg4`, `sendmsg6`, `recvmsg`, `getpeername`.
    pub hook: &'static str,
    /// `namespace/name`; null when the agent has not named this frontend (yet).
    pub service: Option<String>,
    pub port_name: Option<String>,
    /// `10.96.0.10:80/tcp`.
    pub frontend: String,
    pub frontend_id: u32,
    /// `10.244.1.5:8080`; null when refused.
    pub backend: Option<String>,
    pub reason: &'static str,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// Path under the cgroup2 mount; null when the cgroup is gone.
    pub cgroup: Option<String>,
    pub socket_cookie: u64,
}

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::REWRITTEN => "rewritten",
        verdict::REFUSED => "refused",
        verdict::REVERSED => "reversed",
        _ => "unknown",
    }
}

pub fn reason_name(r: u8) -> &'static str {
    match r {
        reason::RANDOM => "random_backend",
        reason::STICKY => "udp_socket_backend",
        reason::AFFINITY => "session_affinity",
        reason::NO_BACKENDS => "no_backends",
        reason::BACKENDS_GONE => "backends_removed_during_lookup",
        reason::REPLY => "udp_reply",
        reason::PEER => "getpeername",
        _ => "unknown",
    }
}

pub fn hook_name(h: u8) -> &'static str {
    match h {
        hook::CONNECT4 => "connect4",
        hook::CONNECT6 => "connect6",
        hook::SENDMSG4 => "sendmsg4",
        hook::SENDMSG6 => "sendmsg6",
        hook::RECVMSG => "recvmsg",
        hook::GETPEERNAME => "getpeername",
        _ => "unknown",
    }
}

fn comm_of(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Nanoseconds to add to CLOCK_MONOTONIC (the programs' clock) to get the wall clock.
fn monotonic_to_realtime_ns() -> i128 {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we pass, nothing else.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

/// Turns events into [`EventRecord`]s: Service names from `lb_fe_names` (read per event, so a
/// rename or a reused frontend id shows at once), cgroup paths from the cgroup2 tree.
pub struct Resolver {
    names: Option<Array<MapData, FrontendName>>,
    cgroups: cgroups::CgroupNames,
    clock_offset_ns: i128,
}

impl Resolver {
    pub fn new(pin_dir: &Path) -> Result<Self> {
        let path = pin_dir.join(NAMES_MAP);
        let names = if path.exists() {
            let fd = crate::datapath::sys::obj_get(&path, true)
                .with_context(|| format!("opening {} read-only", path.display()))?;
            let data = MapData::from_fd(fd)?;
            Some(Array::try_from(Map::from_map_data(data)?)?)
        } else {
            None
        };
        Ok(Self {
            names,
            cgroups: cgroups::CgroupNames::new(),
            clock_offset_ns: monotonic_to_realtime_ns(),
        })
    }

    pub fn record(&mut self, e: &MonitorEvent) -> EventRecord {
        let name = self
            .names
            .as_ref()
            .and_then(|m| m.get(&e.frontend_id, 0).ok())
            .filter(names::is_named)
            .map(|n| names::decode(&n));
        let proto = if e.proto == IPPROTO_UDP { "udp" } else { "tcp" };
        let frontend =
            SocketAddr::new(ip_from16(e.frontend_address), u16::from_be(e.frontend_port));
        let backend = (e.verdict != verdict::REFUSED).then(|| {
            SocketAddr::new(ip_from16(e.backend_address), u16::from_be(e.backend_port)).to_string()
        });
        let time = jiff::Timestamp::from_nanosecond(i128::from(e.ktime_ns) + self.clock_offset_ns)
            .map_or_else(|_| e.ktime_ns.to_string(), |t| t.to_string());
        EventRecord {
            time,
            verdict: verdict_name(e.verdict),
            reverse: e.verdict == verdict::REVERSED,
            hook: hook_name(e.hook),
            service: name.as_ref().map(names::ServiceName::service),
            port_name: name.map(|n| n.port_name),
            frontend: format!("{frontend}/{proto}"),
            frontend_id: e.frontend_id,
            backend,
            reason: reason_name(e.reason),
            pid: (e.pid_tgid >> 32) as u32,
            tid: e.pid_tgid as u32,
            comm: comm_of(&e.comm),
            cgroup_id: e.cgroup_id,
            cgroup: self.cgroups.path(e.cgroup_id),
            socket_cookie: e.socket_cookie,
        }
    }
}

/// Which events to print.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `namespace/name`.
    pub service: Option<String>,
    /// Only these verdicts (empty: rewritten and refused, plus reversed with `reverse`).
    pub verdicts: Vec<String>,
    /// Also print reverse translations.
    pub reverse: bool,
}

impl Filter {
    pub fn matches(&self, r: &EventRecord) -> bool {
        if let Some(service) = &self.service
            && r.service.as_deref() != Some(service.as_str())
        {
            return false;
        }
        if !self.verdicts.is_empty() {
            return self.verdicts.iter().any(|v| v == r.verdict);
        }
        !r.reverse || self.reverse
    }
}

/// Checks a `--service` argument.
pub fn parse_service(s: &str) -> Result<String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(s.to_owned())
        }
        _ => bail!("--service {s:?}: expected NAMESPACE/NAME (e.g. kube-system/kube-dns)"),
    }
}

/// Output of [`run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Table,
    Json,
}

const TABLE_HEADER: &str = "TIME             VERDICT    SERVICE                    FRONTEND               BACKEND                PROCESS               CGROUP  REASON\n";

fn table_line(r: &EventRecord) -> String {
    // The clock part of the time: the date rarely helps while watching.
    let clock = r.time.split_once('T').map_or(r.time.as_str(), |(_, t)| t);
    let clock: String = clock.chars().take(15).collect();
    let service = match (&r.service, &r.port_name) {
        (Some(s), Some(p)) if !p.is_empty() => format!("{s}:{p}"),
        (Some(s), _) => s.clone(),
        (None, _) => "-".to_owned(),
    };
    let verdict = if r.reverse { "reversed" } else { r.verdict };
    format!(
        "{clock:<16} {verdict:<10} {service:<26} {:<22} {:<22} {:<21} {} {}\n",
        r.frontend,
        r.backend.as_deref().unwrap_or("-"),
        format!("{}[{}]", r.comm, r.pid),
        r.cgroup.as_deref().unwrap_or("?"),
        r.reason
    )
}

/// Connects to the agent's monitor socket and prints events until `count` were printed (or
/// forever), the agent goes away, or stdout closes.
pub fn run(
    pin_dir: &Path,
    socket: &Path,
    filter: &Filter,
    style: Style,
    count: Option<u64>,
    out: &mut impl Write,
) -> Result<()> {
    let mut resolver = Resolver::new(pin_dir)?;
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the agent's monitor socket {}: is `lbctl agent --pin-dir {}` running \
             on this node? (`--monitor-socket` if it serves another path)",
            socket.display(),
            pin_dir.display()
        )
    })?;
    let mut printed = 0u64;
    let mut buf = [0u8; FRAME_LEN];
    loop {
        if count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
        if let Err(e) = stream.read_exact(&mut buf) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bail!("the agent closed the monitor socket (it stopped or restarted)");
            }
            return Err(e).context("reading the monitor socket");
        }
        let text = match Frame::decode(&buf) {
            Some(Frame::Ready) => {
                eprintln!("monitoring {} (Ctrl-C to stop)", pin_dir.display());
                if style == Style::Table {
                    write_out(out, TABLE_HEADER)?;
                }
                continue;
            }
            Some(Frame::Lost(n)) => {
                eprintln!("warning: {n} events lost (this monitor fell behind)");
                continue;
            }
            Some(Frame::Event(raw)) => {
                let record = resolver.record(&parse_event(&raw));
                if !filter.matches(&record) {
                    continue;
                }
                match style {
                    Style::Json => serde_json::to_string(&record)? + "\n",
                    Style::Table => table_line(&record),
                }
            }
            None => bail!("unexpected data on the monitor socket (agent of another version?)"),
        };
        if !write_out(out, &text)? {
            return Ok(());
        }
        printed += 1;
    }
}

/// Writes and flushes; `false` when the reader went away (`lbctl monitor | head`).
fn write_out(out: &mut impl Write, text: &str) -> Result<bool> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut raw = [0u8; EVENT_LEN];
        raw[3] = 7;
        for f in [Frame::Ready, Frame::Lost(42), Frame::Event(raw)] {
            assert_eq!(Frame::decode(&f.encode()), Some(f));
        }
        assert_eq!(Frame::decode(&[0u8; FRAME_LEN]), None);
    }

    #[test]
    fn socket_paths_follow_the_pin_dir_and_stay_short() {
        assert_eq!(
            socket_path(Path::new("/sys/fs/bpf/lbctl")),
            Path::new("/run/lbctl/sys_fs_bpf_lbctl.monitor.sock")
        );
        let long = PathBuf::from(format!("/sys/fs/bpf/{}", "x".repeat(200)));
        let p = socket_path(&long);
        assert!(p.as_os_str().len() < 108, "{}", p.display());
        assert_ne!(p, socket_path(Path::new("/sys/fs/bpf/other")));
    }

    fn record(verdict: &'static str, service: Option<&str>) -> EventRecord {
        EventRecord {
            time: "2026-01-01T00:00:00Z".into(),
            verdict,
            reverse: verdict == "reversed",
            hook: "connect4",
            service: service.map(str::to_owned),
            port_name: Some("http".into()),
            frontend: "10.96.0.10:80/tcp".into(),
            frontend_id: 1,
            backend: None,
            reason: "no_backends",
            pid: 1,
            tid: 1,
            comm: "curl".into(),
            cgroup_id: 1,
            cgroup: None,
            socket_cookie: 1,
        }
    }

    #[test]
    fn filters_select_by_service_and_verdict_and_hide_reverse_by_default() {
        let all = Filter::default();
        assert!(all.matches(&record("rewritten", None)));
        assert!(!all.matches(&record("reversed", None)));
        let rev = Filter {
            reverse: true,
            ..Filter::default()
        };
        assert!(rev.matches(&record("reversed", None)));
        let svc = Filter {
            service: Some("default/web".into()),
            ..Filter::default()
        };
        assert!(svc.matches(&record("refused", Some("default/web"))));
        assert!(!svc.matches(&record("refused", Some("default/other"))));
        assert!(!svc.matches(&record("refused", None)));
        let refused = Filter {
            verdicts: vec!["refused".into()],
            ..Filter::default()
        };
        assert!(refused.matches(&record("refused", None)));
        assert!(!refused.matches(&record("rewritten", None)));
        assert!(parse_service("a/b").is_ok());
        assert!(parse_service("ab").is_err() && parse_service("a/b/c").is_err());
    }
}
