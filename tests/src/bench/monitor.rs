//! What `lbctl monitor` costs the datapath: lbctl's connect latency and the average run time of
//! `lb_connect4` (kernel BPF statistics, `BPF_ENABLE_STATS`) with no monitor connected and with
//! one, phases interleaved repetition by repetition. With no monitor the programs do one read of
//! the switch word more than before monitoring existed; the figure shows that this is lost in
//! the noise, and what watching costs.
use std::{
    io::Read,
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use lbctl::monitor::{FRAME_LEN, Frame, MonitorServer};
use serde::Serialize;

use super::{
    client::{ClientProc, Request, Sample},
    report::{Table, fmt_rate, fmt_us},
    stats::{Aggregate, Summary},
};

#[derive(Debug, Serialize)]
pub struct Phase {
    pub monitors: usize,
    pub latency: Aggregate,
    /// `lb_connect4`'s run time per run over the phase's connects (warm-up included).
    pub connect4_ns_per_run: f64,
    /// Events the monitor received (0 without one).
    pub events: u64,
}

#[derive(Debug, Serialize)]
pub struct MonitorFigure {
    pub services: usize,
    pub phases: Vec<Phase>,
}

/// The id of the `lb_connect4` program attached for the datapath pinned at `pin_dir`.
fn connect4_id(pin_dir: &Path) -> Result<u32> {
    lbctl::inspect::status(pin_dir)?
        .links
        .iter()
        .find(|l| l.program == "lb_connect4")
        .and_then(|l| l.program_id)
        .with_context(|| format!("lb_connect4 is not attached at {}", pin_dir.display()))
}

/// Program `id`'s cumulated run time (ns) and run count.
fn run_stats(id: u32) -> Result<(u64, u64)> {
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .with_context(|| format!("program {id} is not loaded"))?;
    Ok((info.run_time().as_nanos() as u64, info.run_count()))
}

/// One connected monitor: reads (and counts) the events the server sends.
struct Watcher {
    stream: UnixStream,
    events: Arc<AtomicU64>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Watcher {
    fn connect(socket: &Path) -> Result<Self> {
        let mut stream = UnixStream::connect(socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let mut buf = [0u8; FRAME_LEN];
        stream.read_exact(&mut buf)?;
        if Frame::decode(&buf) != Some(Frame::Ready) {
            bail!("the monitor server did not say ready");
        }
        let events = Arc::new(AtomicU64::new(0));
        let (mut rd, n) = (stream.try_clone()?, events.clone());
        let reader = thread::spawn(move || {
            while rd.read_exact(&mut buf).is_ok() {
                if matches!(Frame::decode(&buf), Some(Frame::Event(_))) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            stream,
            events,
            reader: Some(reader),
        })
    }

    /// Disconnects and returns the events received.
    fn finish(mut self) -> u64 {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.events.load(Ordering::Relaxed)
    }
}

/// Waits until the agent-side server has seen `n` monitors.
fn wait_monitors(server: &MonitorServer, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.monitors() != n {
        if Instant::now() > deadline {
            bail!(
                "the monitor server still counts {} monitors, not {n}",
                server.monitors()
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Measures `client`'s connects to `targets` (lbctl arm, datapath pinned at `pin_dir`)
/// `reps` times without and with one monitor.
pub fn measure(
    pin_dir: &Path,
    client: &mut ClientProc,
    request: &Request,
    services: usize,
    reps: usize,
) -> Result<(MonitorFigure, Table)> {
    let _stats = enable_stats(Stats::RunTime).context("enabling BPF run-time statistics")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let _enter = runtime.enter();
    let dir = crate::TempDir::new("bench-monitor")?;
    let socket = dir.path().join("monitor.sock");
    let server = MonitorServer::start(pin_dir, &socket, false)?;
    let connect4 = connect4_id(pin_dir)?;

    let mut summaries: [Vec<Summary>; 2] = [Vec::new(), Vec::new()];
    let mut run_ns = [0u64; 2];
    let mut runs = [0u64; 2];
    let mut events = [0u64; 2];
    for rep in 0..reps {
        for k in 0..2 {
            let monitors = (rep + k) % 2;
            let watcher = if monitors == 1 {
                Some(Watcher::connect(&socket)?)
            } else {
                None
            };
            wait_monitors(&server, monitors)?;
            let (t0, c0) = run_stats(connect4)?;
            let Sample {
                latencies_ns,
                elapsed_ns,
                ..
            } = client.request(request)?;
            let (t1, c1) = run_stats(connect4)?;
            summaries[monitors].push(Summary::from_ns(&latencies_ns, elapsed_ns));
            run_ns[monitors] += t1 - t0;
            runs[monitors] += c1 - c0;
            if let Some(w) = watcher {
                // Let the last events arrive (the agent reads the ring every 100 ms) before counting.
                thread::sleep(Duration::from_millis(300));
                events[monitors] += w.finish();
            }
        }
    }
    wait_monitors(&server, 0)?;
    drop(server);

    let phases: Vec<Phase> = summaries
        .into_iter()
        .enumerate()
        .map(|(monitors, reps)| Phase {
            monitors,
            latency: Aggregate::new(reps),
            connect4_ns_per_run: run_ns[monitors] as f64 / runs[monitors].max(1) as f64,
            events: events[monitors],
        })
        .collect();
    let mut table = Table::new(
        &format!(
            "Monitoring cost: lbctl connects, {services} service{}, no monitor vs one `lbctl monitor`",
            if services == 1 { "" } else { "s" }
        ),
        &[
            "monitors",
            "p50",
            "p99",
            "conn/s",
            "lb_connect4 ns/run",
            "events received",
        ],
    );
    for p in &phases {
        table.row(vec![
            p.monitors.to_string(),
            fmt_us(p.latency.p50_us),
            fmt_us(p.latency.p99_us),
            fmt_rate(p.latency.per_sec),
            format!("{:.0}", p.connect4_ns_per_run),
            p.events.to_string(),
        ]);
    }
    Ok((MonitorFigure { services, phases }, table))
}
