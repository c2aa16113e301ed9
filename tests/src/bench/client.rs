//! The measuring client: a child process (`lb-bench __client`) that lives in the client
//! namespace and in the arm's cgroup, and holds a listener it created in the server namespace.
//! One thread does connect + accept + close in a loop, so every figure is one closed loop with
//! no cross-thread hand-off. That thread is pinned to one CPU (the same for every arm), so a
//! repetition never migrates between cores half-way.
//!
//! The parent sends one JSON [`Request`] per line on the child's stdin and reads one JSON
//! [`Response`] per line from its stdout.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{
    cleanup::{self, Registration, Resource},
    netns::Topology,
};

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// `warmup + count` connects, each to one of `targets` chosen at random; latencies of the
    /// last `count`.
    Connect {
        targets: Vec<SocketAddr>,
        count: usize,
        warmup: usize,
    },
    /// One connection, then `warmup + count` request/response round trips of `size` bytes.
    Rr {
        target: SocketAddr,
        count: usize,
        warmup: usize,
        size: usize,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Sample {
    pub latencies_ns: Vec<u64>,
    /// Wall time of the measured iterations (connect + accept + close for `connect`).
    pub elapsed_ns: u64,
    /// Backend address -> connections that landed there.
    pub reached: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Sample),
    Error(String),
}

/// `setns(2)` into a network namespace file (affects this thread and sockets it creates).
fn enter_netns(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns takes an open file descriptor and a flag and touches no memory of ours;
    // `file` stays open for the duration of the call. There is no safe wrapper in std.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns into {}", path.display()));
    }
    Ok(())
}

/// Pins the calling thread to `cpu` (`sched_setaffinity`).
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("CPU {cpu} is beyond CPU_SETSIZE");
    }
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is the empty set; CPU_SET
    // writes one bit inside it (cpu < CPU_SETSIZE, checked above); sched_setaffinity reads
    // `size_of::<cpu_set_t>()` bytes from a live local.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning the client to CPU {cpu}"));
    }
    Ok(())
}

/// The CPUs this process may run on (`sched_getaffinity`).
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: all-zero is a valid empty cpu_set_t; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into the live local; CPU_ISSET reads one bit of it
    // (i < CPU_SETSIZE).
    let cpus = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&i| libc::CPU_ISSET(i, &set))
            .collect::<Vec<_>>()
    };
    Ok(cpus)
}

/// The CPU the clients run on unless told otherwise: the last one this process may use (CPU 0
/// takes more of the machine's interrupts and housekeeping).
pub fn default_cpu() -> Result<usize> {
    allowed_cpus()?
        .last()
        .copied()
        .context("no CPU in this process's affinity mask")
}

fn tcp_socket() -> Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).context("socket")?;
    // RST on close: no TIME_WAIT pile-up across hundreds of thousands of connects.
    s.set_linger(Some(Duration::ZERO)).context("SO_LINGER")?;
    s.set_write_timeout(Some(TIMEOUT)).context("SO_SNDTIMEO")?;
    Ok(s)
}

fn connect_loop(
    listener: &TcpListener,
    targets: &[SocketAddr],
    count: usize,
    warmup: usize,
) -> Result<Sample> {
    if targets.is_empty() {
        bail!("no target");
    }
    let to: Vec<SockAddr> = targets.iter().map(|t| SockAddr::from(*t)).collect();
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut latencies_ns = Vec::with_capacity(count);
    let mut reached = BTreeMap::new();
    let mut start = Instant::now();
    for i in 0..warmup + count {
        if i == warmup {
            start = Instant::now();
        }
        // xorshift: a client choosing among the backends itself costs a few nanoseconds.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let k = (rng % to.len() as u64) as usize;
        let s = tcp_socket()?;
        let t0 = Instant::now();
        s.connect(&to[k])
            .with_context(|| format!("connect #{i} to {}", targets[k]))?;
        let dt = t0.elapsed();
        let (conn, _) = listener
            .accept()
            .with_context(|| format!("accept #{i} (connect to {})", targets[k]))?;
        if i >= warmup {
            latencies_ns.push(dt.as_nanos() as u64);
            let local = conn.local_addr()?.ip().to_string();
            *reached.entry(local).or_insert(0) += 1;
        }
        drop(s);
        drop(conn);
    }
    Ok(Sample {
        latencies_ns,
        elapsed_ns: start.elapsed().as_nanos() as u64,
        reached,
    })
}

fn rr_loop(
    listener: &TcpListener,
    target: SocketAddr,
    count: usize,
    warmup: usize,
    size: usize,
) -> Result<Sample> {
    let s = tcp_socket()?;
    s.set_tcp_nodelay(true)?;
    s.connect(&SockAddr::from(target))
        .with_context(|| format!("connect to {target}"))?;
    let (server, _) = listener.accept().context("accept")?;
    let reached = BTreeMap::from([(server.local_addr()?.ip().to_string(), 1)]);
    server.set_nodelay(true)?;
    server.set_read_timeout(Some(TIMEOUT))?;
    let mut client: TcpStream = s.into();
    client.set_read_timeout(Some(TIMEOUT))?;
    let mut server = server;
    let request = vec![0x5a_u8; size];
    let mut buf = vec![0_u8; size];
    let mut latencies_ns = Vec::with_capacity(count);
    let mut start = Instant::now();
    for i in 0..warmup + count {
        if i == warmup {
            start = Instant::now();
        }
        let t0 = Instant::now();
        client.write_all(&request)?;
        server.read_exact(&mut buf)?;
        server.write_all(&buf)?;
        client.read_exact(&mut buf)?;
        let dt = t0.elapsed();
        if i >= warmup {
            latencies_ns.push(dt.as_nanos() as u64);
        }
    }
    Ok(Sample {
        latencies_ns,
        elapsed_ns: start.elapsed().as_nanos() as u64,
        reached,
    })
}

/// The child's main: wait for `go` (the parent moves us into the arm's cgroup first, and a
/// socket belongs to the cgroup of its creator), make the listener on `port` in the server
/// namespace, move to the client namespace, pin to `cpu`, then serve requests until stdin
/// closes.
pub fn child_main(
    client_netns: &Path,
    server_netns: &Path,
    port: u16,
    cpu: Option<usize>,
) -> Result<()> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    match lines.next() {
        Some(Ok(l)) if l.trim() == "go" => {}
        other => bail!("expected `go`, got {other:?}"),
    }
    enter_netns(server_netns)?;
    let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    listener.set_reuse_address(true)?;
    listener.bind(&SockAddr::from(SocketAddr::from(([0, 0, 0, 0], port))))?;
    listener.listen(1024)?;
    let listener: TcpListener = listener.into();
    listener.set_nonblocking(false)?;
    // SO_RCVTIMEO bounds accept(): a connect that went elsewhere fails instead of hanging.
    socket2::SockRef::from(&listener).set_read_timeout(Some(TIMEOUT))?;
    enter_netns(client_netns)?;
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu)?;
    }

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in lines {
        let line = line?;
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Connect {
                targets,
                count,
                warmup,
            }) => connect_loop(&listener, &targets, count, warmup),
            Ok(Request::Rr {
                target,
                count,
                warmup,
                size,
            }) => rr_loop(&listener, target, count, warmup, size),
            Err(e) => Err(anyhow::Error::new(e).context("parsing a request")),
        };
        let response = match response {
            Ok(sample) => Response::Ok(sample),
            Err(e) => Response::Error(format!("{e:#}")),
        };
        serde_json::to_writer(&mut out, &response)?;
        writeln!(out)?;
        out.flush()?;
    }
    Ok(())
}

/// The parent's handle on one client process. Killed on drop.
pub struct ClientProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    registration: Option<Registration>,
}

impl ClientProc {
    /// Starts a client for `topology`, inside `cgroup`, its listener on `port`, its measuring
    /// thread pinned to `cpu`.
    pub fn spawn(
        topology: &Topology,
        cgroup: &Path,
        port: u16,
        cpu: Option<usize>,
    ) -> Result<Self> {
        let exe: PathBuf = std::env::current_exe().context("current_exe")?;
        let mut cmd = Command::new(exe);
        cmd.arg("__client")
            .arg("--client-netns")
            .arg(topology.client.path())
            .arg("--server-netns")
            .arg(topology.server.path())
            .arg("--port")
            .arg(port.to_string());
        if let Some(cpu) = cpu {
            cmd.arg("--cpu").arg(cpu.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the client process")?;
        let registration = cleanup::register(Resource::Process(child.id()));
        let stdin = child.stdin.take().context("client stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("client stdout")?);
        let mut client = Self {
            child,
            stdin,
            stdout,
            registration: Some(registration),
        };
        std::fs::write(cgroup.join("cgroup.procs"), client.child.id().to_string())
            .with_context(|| format!("moving the client into {}", cgroup.display()))?;
        writeln!(client.stdin, "go")?;
        client.stdin.flush()?;
        let mut line = String::new();
        client.stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the client process did not start (said {line:?})");
        }
        Ok(client)
    }

    pub fn request(&mut self, request: &Request) -> Result<Sample> {
        serde_json::to_writer(&mut self.stdin, request)?;
        writeln!(self.stdin)?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the client process exited");
        }
        match serde_json::from_str(&line).context("parsing the client's response")? {
            Response::Ok(sample) => Ok(sample),
            Response::Error(e) => bail!("client: {e}"),
        }
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        if let Some(r) = self.registration.take() {
            let child = &mut self.child;
            r.release(|| {
                let _ = child.kill();
                let _ = child.wait();
            });
        }
    }
}
