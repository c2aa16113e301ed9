//! What `lbctl monitor` costs the datapath: lbctl's connect latency and the run time of its
//! programs (kernel BPF statistics, `BPF_ENABLE_STATS`; every program attached, found from the
//! pinned links) with no monitor connected and with one, phases interleaved repetition by
//! repetition, the latency ratio paired repetition by repetition. With no monitor the programs do one read of
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
use aya::sys::{Stats, enable_stats};
use lbctl::monitor::{FRAME_LEN, Frame, MonitorServer};
use serde::Serialize;

use super::{
    client::{ClientProc, Request, Sample},
    kernel_time::{self, KernelTime},
    report::{Table, fmt_rate, fmt_us},
    stats::{Aggregate, Ratio, Summary},
};

#[derive(Debug, Serialize)]
pub struct Phase {
    pub monitors: usize,
    pub latency: Aggregate,
    /// p50 over the no-monitor phase's p50, paired repetition by repetition (`None` for it).
    pub vs_no_monitor: Option<Ratio>,
    /// The programs' run time over the phase's connects (warm-up included).
    pub kernel: KernelTime,
    /// `lb_connect4`'s run time per run, when lbctl attaches a program of that name.
    pub connect4_ns_per_run: Option<f64>,
    /// Events the monitor received (0 without one).
    pub events: u64,
}

#[derive(Debug, Serialize)]
pub struct MonitorFigure {
    pub services: usize,
    pub phases: Vec<Phase>,
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
    let programs = kernel_time::attached(pin_dir)?;
    let connections = match request {
        Request::Connect { count, warmup, .. } => (count + warmup) as u64,
        Request::Rr { .. } => 1,
    };

    let mut summaries: [Vec<Summary>; 2] = [Vec::new(), Vec::new()];
    let mut kernel = [KernelTime::default(), KernelTime::default()];
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
            let before = kernel_time::snapshot(&programs)?;
            let Sample {
                latencies_ns,
                elapsed_ns,
                ..
            } = client.request(request)?;
            let after = kernel_time::snapshot(&programs)?;
            summaries[monitors].push(Summary::from_ns(&latencies_ns, elapsed_ns));
            kernel[monitors].add(&before, &after, connections);
            if let Some(w) = watcher {
                // Let the last events arrive (the agent reads the ring every 100 ms) before counting.
                thread::sleep(Duration::from_millis(300));
                events[monitors] += w.finish();
            }
        }
    }
    wait_monitors(&server, 0)?;
    drop(server);

    let p50s = |reps: &[Summary]| reps.iter().map(|r| r.p50_us).collect::<Vec<_>>();
    let baseline = p50s(&summaries[0]);
    let phases: Vec<Phase> = summaries
        .into_iter()
        .zip(kernel)
        .enumerate()
        .map(|(monitors, (reps, kernel))| Phase {
            monitors,
            vs_no_monitor: if monitors == 0 {
                None
            } else {
                Ratio::paired(&p50s(&reps), &baseline)
            },
            latency: Aggregate::new(reps),
            connect4_ns_per_run: kernel.programs.get("lb_connect4").map(|p| p.ns_per_run()),
            events: events[monitors],
            kernel,
        })
        .collect();
    let mut table = Table::new(
        &format!(
            "Monitoring cost: lbctl connects, {services} service{}, no monitor vs one `lbctl monitor` ({reps} interleaved repetitions)",
            if services == 1 { "" } else { "s" }
        ),
        &[
            "monitors",
            "p50",
            "p99",
            "conn/s",
            "p50 / no monitor: median [95% CI]",
            "BPF ns/conn (all programs)",
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
            p.vs_no_monitor.as_ref().map_or("-".into(), |r| r.short()),
            format!("{:.0}", p.kernel.ns_per_connection()),
            p.connect4_ns_per_run
                .map_or("-".into(), |ns| format!("{ns:.0}")),
            p.events.to_string(),
        ]);
    }
    Ok((MonitorFigure { services, phases }, table))
}
