//! Part 3: endpoint churn through the Kubernetes source. The real `lbctl agent` watches the
//! test API server (the one lbctl's own tests use, `lbctl/tests/support/fake_apiserver.rs`),
//! which holds `services` Services with one EndpointSlice of `endpoints` endpoints each; the
//! benchmark then changes endpoints through that server and reads the agent's own account of
//! each sync from its JSON log (`datapath updated`: `sync`, `took_us`, `triggers`,
//! `trigger_latency_max_us`).
//!
//! - (a) One endpoint change at a time: the agent's time for the incremental sync that
//!   programs it (`took_us`: changed objects taken from the source, re-plan, maps written,
//!   names, metrics and logs), and the programming latency from the slice's
//!   `endpoints.kubernetes.io/last-change-trigger-time` annotation (set by the benchmark when
//!   it makes the change, as the EndpointSlice controller does) to the maps written.
//! - (b) Sustained churn: changes at a fixed offered rate for a while, rates rising until the
//!   programming latency p99 passes 200 ms (4x the target) or the agent falls behind; per
//!   rate the latency
//!   percentiles (each change counted at the largest latency of the sync that programmed it:
//!   an upper bound) and the agent's CPU from `/proc/PID/stat` over the window.
//!
//! The agent runs with a resync period longer than the run, so no full resync lands inside a
//! window; the full sync's time (at start) is reported beside, as it is what a resync costs.
//! The API server runs in the benchmark's process and takes CPU on the same machine.
#[path = "../../../lbctl/tests/support/fake_apiserver.rs"]
#[allow(clippy::all, unused)]
mod fake_apiserver;

use std::{
    fs,
    io::{Read, Seek, SeekFrom},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use fake_apiserver::FakeApiServer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    report::{Status, Table, Target, fmt_ms, fmt_rate},
    scratch,
    services::{NAMESPACE, SERVICE_PORT, ServiceSet, TARGET_PORT},
    stats::MsSummary,
};
use crate::agent::AgentProcess;

/// The node the agent serves and the synthetic endpoints live on.
const NODE: &str = "bench-node";
/// The latency target of the sustained rate (issue 12).
const RATE_P99_TARGET_MS: f64 = 50.0;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChurnOptions {
    pub services: usize,
    pub endpoints: usize,
    /// Changes of part (a).
    pub single_changes: usize,
    /// Offered rates of part (b), changes per second, tried in order.
    pub rates: Vec<u32>,
    /// Length of each rate's window.
    pub window_s: f64,
    /// Where to keep the agent's log (its `datapath updated` lines are the raw data).
    #[serde(skip)]
    pub keep_log: Option<PathBuf>,
}

/// One offered rate of part (b).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RatePoint {
    pub offered_per_sec: u32,
    pub achieved_per_sec: f64,
    pub changes: usize,
    /// Syncs that programmed them (a sync takes every change that arrived while it waited).
    pub syncs: usize,
    pub latency: MsSummary,
    /// Agent CPU over the window and the catch-up after it, percent of one core.
    pub agent_cpu_percent: f64,
    /// Changes still not programmed 30 s after the window: the agent fell behind.
    pub unprogrammed: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChurnResults {
    pub options: ChurnOptions,
    /// The first (full) sync of the whole set, as the agent logs it.
    pub full_sync_ms: f64,
    /// The same sync up to the maps written (`plan_us + write_us`).
    pub full_sync_programmed_ms: f64,
    /// (a): the agent's time for each single-change sync.
    pub single_sync: MsSummary,
    /// (a): trigger time to maps written.
    pub single_latency: MsSummary,
    /// (b), in the order tried.
    pub rates: Vec<RatePoint>,
    /// The highest achieved rate whose latency p99 stayed within 50 ms.
    pub absorbed_per_sec: Option<f64>,
    /// The agent's peak RSS at the end (VmHWM).
    pub agent_vm_hwm_kib: u64,
    /// The agent's peak RSS (VmHWM) right after its first full sync: the initial lists through
    /// the Kubernetes source, the snapshot and the first programming, before any churn.
    #[serde(default)]
    pub agent_vm_hwm_full_sync_kib: u64,
    /// Of the agent's RSS at that moment: the pages of BPF maps it maps (`lb_backends` and
    /// `lb_slots`, written through shared mappings, and the monitor's event ring): kernel
    /// memory, counted in the maps' memory as well.
    #[serde(default)]
    pub agent_bpf_map_pages_full_sync_kib: u64,
    /// The same pages at the end.
    #[serde(default)]
    pub agent_bpf_map_pages_kib: u64,
}

impl ChurnResults {
    /// The agent's own peak memory, in MiB, as the RSS target counts it: its peak RSS without
    /// the resident pages of the BPF maps it maps (kernel memory, reported with the maps),
    /// after its full sync and at the end (after the churn); the target holds the higher.
    fn agent_own_peak_mib(&self) -> (f64, f64) {
        let own = |hwm: u64, bpf: u64| hwm.saturating_sub(bpf) as f64 / 1024.0;
        (
            own(
                self.agent_vm_hwm_full_sync_kib,
                self.agent_bpf_map_pages_full_sync_kib,
            ),
            own(self.agent_vm_hwm_kib, self.agent_bpf_map_pages_kib),
        )
    }
}

/// Reads the agent's log as it grows, one JSON line at a time.
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

/// One `datapath updated` line.
#[derive(Clone, Copy, Debug)]
struct Sync {
    full: bool,
    took_ms: f64,
    /// Up to the maps written (`plan_us + write_us`).
    programmed_ms: f64,
    triggers: usize,
    trigger_latency_ms: f64,
}

impl LogTail {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// The `datapath updated` lines written since the last call.
    fn syncs(&mut self) -> Result<Vec<Sync>> {
        let mut file = fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut text = String::new();
        let n = file.read_to_string(&mut text)?;
        self.offset += n as u64;
        self.partial.push_str(&text);
        let Some(end) = self.partial.rfind('\n') else {
            return Ok(Vec::new());
        };
        let complete: String = self.partial.drain(..=end).collect();
        Ok(complete
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|v| v["fields"].clone())
            .filter(|f| f["message"] == "datapath updated")
            .map(|f| Sync {
                full: f["sync"] == "full",
                took_ms: f["took_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
                programmed_ms: (f["plan_us"].as_f64().unwrap_or(f64::NAN)
                    + f["write_us"].as_f64().unwrap_or(f64::NAN))
                    / 1e3,
                triggers: f["triggers"].as_u64().unwrap_or(0) as usize,
                trigger_latency_ms: f["trigger_latency_max_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
            })
            .collect())
    }

    /// Waits up to `timeout` for the next sync lines.
    fn wait(&mut self, timeout: Duration) -> Result<Vec<Sync>> {
        let deadline = Instant::now() + timeout;
        loop {
            let syncs = self.syncs()?;
            if !syncs.is_empty() || Instant::now() >= deadline {
                return Ok(syncs);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

fn service(set: &ServiceSet, index: usize) -> Value {
    let ip = ServiceSet::cluster_ip(index).to_string();
    let _ = set;
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("svc-{index}"), "namespace": NAMESPACE},
           "spec": {"clusterIP": ip, "clusterIPs": [ip],
                    "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP",
                               "targetPort": TARGET_PORT}]}})
}

fn slice(index: usize, endpoints: &[String], trigger: Option<&str>) -> Value {
    let mut metadata = json!({"name": format!("svc-{index}-1"), "namespace": NAMESPACE,
                              "labels": {"kubernetes.io/service-name": format!("svc-{index}")}});
    if let Some(trigger) = trigger {
        metadata["annotations"] =
            json!({"endpoints.kubernetes.io/last-change-trigger-time": trigger});
    }
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": NODE, "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": metadata, "addressType": "IPv4",
           "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
           "endpoints": endpoints})
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// The resident pages of the BPF maps the process maps (`anon_inode:bpf-map` in its smaps).
fn bpf_map_pages_kib(pid: u32) -> u64 {
    let Ok(smaps) = fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return 0;
    };
    let mut in_map = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            // A mapping's header: `start-end perms offset dev inode [name]`.
            Some(range) if range.contains('-') && !range.ends_with(':') => {
                in_map = line.trim_end().ends_with("anon_inode:bpf-map");
            }
            Some("Rss:") if in_map => {
                kib += fields
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    kib
}

fn vm_hwm_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The endpoints of the synthetic services, mutable: one change replaces one endpoint by a
/// fresh address.
struct Churn {
    endpoints: Vec<Vec<String>>,
    rng: u64,
    fresh: u32,
    /// The service changed last.
    turn: usize,
}

impl Churn {
    fn new(set: &ServiceSet) -> Self {
        Self {
            endpoints: (0..set.count)
                .map(|i| {
                    (0..set.endpoints)
                        .map(|j| set.endpoint(i, j).ip().to_string())
                        .collect()
                })
                .collect(),
            rng: 0x2545_f491_4f6c_dd1d,
            fresh: 0,
            turn: set.count / 2,
        }
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// One endpoint change, stamped with the current time. Services are changed in turn, so
    /// two changes of one slice never fall into one sync (which would program them as one).
    fn change(&mut self, api: &FakeApiServer) {
        self.turn += 1;
        let index = self.turn % self.endpoints.len();
        let j = (self.next() % self.endpoints[index].len() as u64) as usize;
        self.fresh += 1;
        let ip = std::net::Ipv4Addr::from(u32::from_be_bytes([10, 200, 0, 0]) + self.fresh);
        self.endpoints[index][j] = ip.to_string();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        api.apply(&slice(index, &self.endpoints[index], Some(&now)));
    }
}

fn kubeconfig(dir: &Path, url: &str) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let path = dir.join("config");
    fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: b, cluster: {{server: \"{url}\"}}}}]\n\
             users: [{{name: b, user: {{}}}}]\ncontexts: [{{name: b, context: {{cluster: b, user: b}}}}]\n\
             current-context: b\n"
        ),
    )?;
    Ok(path)
}

pub fn run(opts: &ChurnOptions) -> Result<(ChurnResults, Vec<Table>)> {
    eprintln!(
        "\n## churn: lbctl agent on the Kubernetes source, {} services x {} endpoints",
        opts.services, opts.endpoints
    );
    let set = ServiceSet::new(opts.services, opts.endpoints);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let api = runtime.block_on(FakeApiServer::start());
    api.apply(
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
                      "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}),
    );
    let mut churn = Churn::new(&set);
    for i in 0..set.count {
        api.apply(&service(&set, i));
        api.apply(&slice(i, &churn.endpoints[i], None));
    }
    // The synthetic history need not be replayed to anyone: the agent lists.
    api.compact();

    let cgroup = scratch::cgroup("churn")?;
    let pins = scratch::pin_dir("churn")?;
    let dir = std::env::temp_dir().join(crate::unique_name("churn-kubeconfig"));
    let config = kubeconfig(&dir, &api.url())?;
    let capacity = scratch::bench_capacity();
    let metrics = SocketAddr::from(([127, 0, 0, 1], crate::lifecycle::free_port()?));
    let args: Vec<String> = [
        "--kubeconfig",
        &config.display().to_string(),
        "--node",
        NODE,
        "--pin-dir",
        &pins.path().display().to_string(),
        "--cgroup",
        &cgroup.path().display().to_string(),
        "--metrics-addr",
        &metrics.to_string(),
        "--log-format",
        "json",
        "--resync-seconds",
        "86400",
        "--max-service-entries",
        &capacity.service_entries.to_string(),
        "--max-backends",
        &capacity.backends.to_string(),
        "--max-frontends",
        &capacity.frontends.to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let agent = super::start_as_deployed(&args)?;
    let registration = super::cleanup::register(super::cleanup::Resource::Process(agent.pid()));
    let result = measure(opts, &api, &mut churn, &agent);
    if let Some(keep) = &opts.keep_log {
        if let Some(parent) = keep.parent() {
            let _ = fs::create_dir_all(parent);
        }
        if let Err(e) = fs::copy(agent.log_path(), keep) {
            eprintln!("churn: keeping the agent's log in {}: {e}", keep.display());
        }
    }
    drop(agent);
    registration.release(|| {});
    let _ = fs::remove_dir_all(&dir);
    drop(pins);
    drop(cgroup);
    let results = result?;
    let tables = tables(&results);
    for t in &tables {
        println!("{t}");
    }
    Ok((results, tables))
}

/// The incremental syncs of one rate's window.
#[derive(Default)]
struct Seen {
    syncs: usize,
    /// Trigger times programmed.
    programmed: usize,
    /// One per trigger time: the largest latency of its sync.
    latencies: Vec<f64>,
}

impl Seen {
    fn collect(&mut self, log: &mut LogTail) -> Result<()> {
        for s in log.syncs()?.into_iter().filter(|s| !s.full) {
            self.syncs += 1;
            self.programmed += s.triggers;
            self.latencies
                .extend(std::iter::repeat_n(s.trigger_latency_ms, s.triggers));
        }
        Ok(())
    }
}

fn measure(
    opts: &ChurnOptions,
    api: &FakeApiServer,
    churn: &mut Churn,
    agent: &AgentProcess,
) -> Result<ChurnResults> {
    let mut log = LogTail::new(agent.log_path());
    let first = log.wait(Duration::from_secs(600))?;
    let Some(full) = first.iter().find(|s| s.full) else {
        bail!(
            "the agent did not program the services within 10 minutes:\n{}",
            agent.log()
        );
    };
    let full_sync_ms = full.took_ms;
    let full_sync_programmed_ms = full.programmed_ms;
    let agent_vm_hwm_full_sync_kib = vm_hwm_kib(agent.pid());
    let agent_bpf_map_pages_full_sync_kib = bpf_map_pages_kib(agent.pid());
    eprintln!(
        "churn: full sync {}, agent peak RSS (VmHWM) then {:.1} MiB, of which BPF map pages {:.1} MiB",
        fmt_ms(full_sync_ms),
        agent_vm_hwm_full_sync_kib as f64 / 1024.0,
        agent_bpf_map_pages_full_sync_kib as f64 / 1024.0
    );

    // (a) One change at a time.
    let mut single_sync = Vec::new();
    let mut single_latency = Vec::new();
    for k in 0..opts.single_changes {
        churn.change(api);
        let syncs = log.wait(Duration::from_secs(10))?;
        let Some(sync) = syncs.iter().find(|s| !s.full && s.triggers > 0) else {
            bail!("endpoint change {k} was not programmed within 10 s");
        };
        single_sync.push(sync.took_ms);
        single_latency.push(sync.trigger_latency_ms);
        // Let the agent settle so that each change is a sync of its own.
        std::thread::sleep(Duration::from_millis(30));
        log.syncs()?;
    }
    let single_sync = MsSummary::from_ms(&single_sync);
    let single_latency = MsSummary::from_ms(&single_latency);
    eprintln!(
        "churn: one change: sync p50 {} p99 {}; trigger -> programmed p99 {}",
        fmt_ms(single_sync.p50_ms),
        fmt_ms(single_sync.p99_ms),
        fmt_ms(single_latency.p99_ms)
    );

    // (b) Sustained rates.
    let mut rates = Vec::new();
    for &rate in &opts.rates {
        let window = Duration::from_secs_f64(opts.window_s);
        let cpu_start = cpu_seconds(agent.pid())?;
        let started = Instant::now();
        let mut changes = 0usize;
        let mut seen = Seen::default();
        while started.elapsed() < window {
            let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as usize + 1;
            while changes < due {
                churn.change(api);
                changes += 1;
            }
            seen.collect(&mut log)?;
            std::thread::sleep(Duration::from_micros(500));
        }
        let sent = started.elapsed();
        // Catch up: until every change is programmed (changes to one slice coalesced into one
        // sync count once) or nothing more comes for a second, at most 30 s.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut quiet_since = Instant::now();
        while seen.programmed < changes && Instant::now() < deadline {
            let before = seen.programmed;
            seen.collect(&mut log)?;
            if seen.programmed != before {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() > Duration::from_secs(1) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(agent.pid())? - cpu_start;
        let point = RatePoint {
            offered_per_sec: rate,
            achieved_per_sec: changes as f64 / sent.as_secs_f64(),
            changes,
            syncs: seen.syncs,
            latency: MsSummary::from_ms(&seen.latencies),
            agent_cpu_percent: 100.0 * cpu / elapsed,
            unprogrammed: changes.saturating_sub(seen.programmed),
        };
        eprintln!(
            "churn: {rate}/s offered, {:.0}/s sent: {} syncs, p50 {} p99 {} max {}, agent CPU {:.0}%{}",
            point.achieved_per_sec,
            point.syncs,
            fmt_ms(point.latency.p50_ms),
            fmt_ms(point.latency.p99_ms),
            fmt_ms(point.latency.max_ms),
            point.agent_cpu_percent,
            if point.unprogrammed > 0 {
                format!(", {} not programmed", point.unprogrammed)
            } else {
                String::new()
            }
        );
        // Past the target the curve still tells where latency goes; stop once it is far off.
        let over = point.latency.p99_ms > 4.0 * RATE_P99_TARGET_MS || point.unprogrammed > 0;
        rates.push(point);
        if over {
            break;
        }
        // Drain: let the agent idle before the next rate.
        std::thread::sleep(Duration::from_millis(500));
        log.syncs()?;
    }
    let absorbed_per_sec = rates
        .iter()
        .filter(|p| p.latency.p99_ms <= RATE_P99_TARGET_MS && p.unprogrammed == 0)
        .map(|p| p.achieved_per_sec)
        .max_by(f64::total_cmp);
    Ok(ChurnResults {
        options: opts.clone(),
        full_sync_ms,
        full_sync_programmed_ms,
        single_sync,
        single_latency,
        rates,
        absorbed_per_sec,
        agent_vm_hwm_kib: vm_hwm_kib(agent.pid()),
        agent_vm_hwm_full_sync_kib,
        agent_bpf_map_pages_full_sync_kib,
        agent_bpf_map_pages_kib: bpf_map_pages_kib(agent.pid()),
    })
}

fn tables(r: &ChurnResults) -> Vec<Table> {
    let scale = format!("{} x {}", r.options.services, r.options.endpoints);
    let mut single = Table::new(
        &format!(
            "Endpoint churn through the Kubernetes source (lbctl agent, {scale}; trigger latencies include the 20 ms coalescing window)"
        ),
        &["measure", "p50", "p99", "max", "count"],
    );
    single.row(vec![
        "full sync at start, to the maps written (snapshot, plan, apply of everything)".into(),
        fmt_ms(r.full_sync_programmed_ms),
        "-".into(),
        "-".into(),
        "1".into(),
    ]);
    single.row(vec![
        "full sync at start, whole (with the names and metrics after)".into(),
        fmt_ms(r.full_sync_ms),
        "-".into(),
        "-".into(),
        "1".into(),
    ]);
    for (name, kib) in [
        (
            "agent peak RSS (VmHWM) after the full sync",
            r.agent_vm_hwm_full_sync_kib,
        ),
        (
            "of which resident pages of BPF maps the agent maps (kernel memory, in the map memory too)",
            r.agent_bpf_map_pages_full_sync_kib,
        ),
        ("agent peak RSS (VmHWM) at the end", r.agent_vm_hwm_kib),
        (
            "of which resident pages of BPF maps the agent maps, at the end",
            r.agent_bpf_map_pages_kib,
        ),
    ] {
        single.row(vec![
            name.into(),
            format!("{:.1} MiB", kib as f64 / 1024.0),
            "-".into(),
            "-".into(),
            "1".into(),
        ]);
    }
    for (name, s) in [
        ("one endpoint change: the agent's sync", &r.single_sync),
        (
            "one endpoint change: trigger time -> maps written",
            &r.single_latency,
        ),
    ] {
        single.row(vec![
            name.into(),
            fmt_ms(s.p50_ms),
            fmt_ms(s.p99_ms),
            fmt_ms(s.max_ms),
            s.count.to_string(),
        ]);
    }
    let mut rates = Table::new(
        &format!(
            "Sustained endpoint changes at {scale} (trigger time -> maps written, the agent's default 20 ms coalescing window included; no resync in the window)"
        ),
        &[
            "offered/s",
            "sent/s",
            "syncs",
            "p50",
            "p99",
            "max",
            "agent CPU",
            "not programmed",
        ],
    );
    for p in &r.rates {
        rates.row(vec![
            fmt_rate(f64::from(p.offered_per_sec)),
            fmt_rate(p.achieved_per_sec),
            p.syncs.to_string(),
            fmt_ms(p.latency.p50_ms),
            fmt_ms(p.latency.p99_ms),
            fmt_ms(p.latency.max_ms),
            format!("{:.0}%", p.agent_cpu_percent),
            p.unprogrammed.to_string(),
        ]);
    }
    vec![single, rates]
}

/// Issue 12's targets for churn.
pub fn targets(r: &ChurnResults) -> Vec<Target> {
    let scale = format!("{} x {}", r.options.services, r.options.endpoints);
    let at_scale = r.options.services >= 30_000;
    let absorbed = r
        .rates
        .iter()
        .filter(|p| p.latency.p99_ms <= RATE_P99_TARGET_MS && p.unprogrammed == 0)
        .max_by(|a, b| a.achieved_per_sec.total_cmp(&b.achieved_per_sec))
        .map_or_else(
            || "none of the rates tried".to_owned(),
            |p| {
                format!(
                    "{}/s at agent CPU {:.0}%",
                    fmt_rate(p.achieved_per_sec),
                    p.agent_cpu_percent
                )
            },
        );
    vec![
        Target {
            target:
                "one endpoint change p99 <= 5 ms at 30,000 x 10 (agent sync, Kubernetes source)"
                    .into(),
            measured: format!("{} at {scale}", fmt_ms(r.single_sync.p99_ms)),
            status: if at_scale {
                Status::from_bool(r.single_sync.p99_ms <= 5.0)
            } else {
                Status::NotMeasured
            },
        },
        Target {
            target: "sustained endpoint changes/s at 30,000 services with programming p99 <= 50 ms"
                .into(),
            measured: format!("{absorbed} at {scale}"),
            status: Status::NotMeasured,
        },
        Target {
            target: "agent peak RSS <= 64 MiB at 30,000 x 10 (the whole agent, Kubernetes source, \
                     after its full sync and after the churn; BPF map memory reported separately: \
                     the pages of BPF maps it maps are left out)"
                .into(),
            measured: {
                let (sync, end) = r.agent_own_peak_mib();
                format!(
                    "{sync:.1} MiB after the full sync, {end:.1} MiB at the end, at {scale} \
                     (with the {:.1} MiB of BPF map pages it maps: {:.1} and {:.1} MiB)",
                    r.agent_bpf_map_pages_kib as f64 / 1024.0,
                    r.agent_vm_hwm_full_sync_kib as f64 / 1024.0,
                    r.agent_vm_hwm_kib as f64 / 1024.0,
                )
            },
            status: if at_scale {
                let (sync, end) = r.agent_own_peak_mib();
                Status::from_bool(sync.max(end) <= 64.0)
            } else {
                Status::NotMeasured
            },
        },
    ]
}
