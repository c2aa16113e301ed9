//! Part 2: the control plane at scale. lbctl's side runs in child processes:
//! - `lb-bench __control-plane` programs a ready-made desired state (the writer alone), so
//!   that its peak RSS is the writer's and the desired state's alone, not the benchmark's;
//! - a real `lbctl agent --manifests` reads the same services as a `kubectl get -o yaml`-style
//!   manifest: the figure is its own `took_us` of the first "datapath updated" (snapshot, plan,
//!   desired state, maps written, names and metrics: the whole reconcile), its peak RSS and the
//!   kernel memory of its maps. The benchmark also loads the manifest in-process and times the
//!   engine's stages (load, plan, desired state) for the profile.
//!
//! Beside them, the time `iptables-restore` and `nft -f` take to load the same services.
use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use lbctl::{
    datapath::{Datapath, FrontendKey},
    plan::Protocol,
};
use serde::{Deserialize, Serialize};

use super::{
    arms::{Arm, nft_f},
    cleanup::{self, Resource},
    netns::{Netns, run_with_input},
    report::{Table, fmt_ms, fmt_rate},
    rules, scratch,
    services::{NAMESPACE, SERVICE_PORT, ServiceSet, TARGET_PORT},
    stats::{MsSummary, median},
};

#[derive(Clone, Debug, Serialize)]
pub struct ControlOptions {
    /// Service counts for lbctl (full programming + endpoint changes at each).
    pub services: Vec<usize>,
    pub endpoints: usize,
    pub changes: usize,
    /// Service count of the iptables-restore / nft -f comparison.
    pub tool_services: usize,
    /// Runs of the whole agent per scale, each from empty (a single run on this VM varies by
    /// a third from one to the next).
    pub agent_runs: usize,
}

/// One BPF map the writer holds, from `/proc/self/fdinfo`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapMemory {
    pub id: u32,
    pub name: String,
    pub map_type: u32,
    pub max_entries: u64,
    /// Kernel memory charged to the map (`memlock` in fdinfo), bytes.
    pub memlock: u64,
}

/// lbctl at one scale (the child's report).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LbctlScale {
    pub services: usize,
    pub endpoints: usize,
    pub desired_build_ms: f64,
    pub install_ms: f64,
    /// `Datapath::apply` of the whole desired state into empty maps.
    pub full_apply_ms: f64,
    pub full_map_operations: usize,
    /// Map calls (batches: one `bpf()` each) of the full programming.
    #[serde(default)]
    pub full_map_calls: usize,
    /// Wall time of each part of the full programming (`Writer::last_steps`: the diff with the
    /// new backends' writes, then each later ordered step, one map each), microseconds: where
    /// the time goes.
    #[serde(default)]
    pub full_apply_steps_us: Vec<(String, u64)>,
    pub map_updates_per_sec: f64,
    /// `Datapath::apply` of an unchanged desired state (median of 5): the diff's floor.
    pub noop_apply_ms: f64,
    /// `Datapath::apply_changed` of the one frontend whose endpoint changed (replace, remove,
    /// add in turn), as the agent applies an event; a full apply after the last change checks
    /// that nothing was left unwritten.
    pub change: MsSummary,
    pub change_map_operations_mean: f64,
    pub vm_rss_before_install_kib: u64,
    /// Peak RSS right after `Datapath::install` (loading the object parses BTF: a fixed cost).
    pub vm_hwm_after_install_kib: u64,
    pub vm_rss_kib: u64,
    /// Peak RSS of the process (VmHWM).
    pub vm_hwm_kib: u64,
    pub bpf_maps: Vec<MapMemory>,
    pub bpf_map_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ToolTime {
    pub tool: String,
    pub services: usize,
    pub endpoints: usize,
    pub input_bytes: usize,
    pub ms: f64,
}

/// The whole agent at one scale: a real `lbctl agent --manifests` and the same manifest loaded
/// in-process.
#[derive(Clone, Debug, Serialize)]
pub struct AgentScale {
    pub services: usize,
    pub endpoints: usize,
    pub manifest_bytes: usize,
    /// `manifests::load_paths` of the manifest, in-process.
    pub manifest_load_ms: f64,
    /// `engine::plan` of the loaded objects, in-process.
    pub plan_ms: f64,
    /// `Desired::from_plan`, in-process.
    pub desired_ms: f64,
    /// The agent's `took_us` of its first "datapath updated" (its whole first reconcile): the
    /// median of the runs.
    pub reconcile_ms: f64,
    /// Every run's `took_us`, in run order.
    pub reconcile_runs_ms: Vec<f64>,
    /// The same syncs up to the maps written (`plan_us + write_us`: snapshot, plan, desired
    /// state, apply; not the names and metrics after), the figure the target is judged on:
    /// the median of the runs.
    pub programmed_ms: f64,
    /// Every run's `plan_us + write_us`, in run order.
    pub programmed_runs_ms: Vec<f64>,
    /// From the agent's start to that log line (loading the object and the manifest included).
    pub start_to_programmed_ms: f64,
    /// The agent's peak RSS (VmHWM) once programmed, the largest of the runs; kernel map
    /// memory is not in it.
    pub vm_hwm_kib: u64,
    pub vm_rss_kib: u64,
    pub bpf_maps: Vec<MapMemory>,
    pub bpf_map_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ControlResults {
    pub options: ControlOptions,
    pub lbctl: Vec<LbctlScale>,
    pub agent: Vec<AgentScale>,
    pub tools: Vec<ToolTime>,
}

fn status_kib(field: &str) -> u64 {
    proc_status_kib("self", field)
}

/// A `kB` field of `/proc/PID/status`.
fn proc_status_kib(pid: &str, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The BPF maps process `pid` (`self`) holds open, with their kernel memory.
fn map_memory(pid: &str) -> Vec<MapMemory> {
    let mut maps: Vec<MapMemory> = Vec::new();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(fds) = fs::read_dir(proc_dir.join("fd")) else {
        return maps;
    };
    for fd in fds.flatten() {
        let is_map =
            fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains("bpf-map"));
        if !is_map {
            continue;
        }
        let info =
            fs::read_to_string(proc_dir.join("fdinfo").join(fd.file_name())).unwrap_or_default();
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let id = field("map_id") as u32;
        if maps.iter().any(|m| m.id == id) {
            continue;
        }
        maps.push(MapMemory {
            id,
            name: map_name(id).unwrap_or_else(|| "?".into()),
            map_type: field("map_type") as u32,
            max_entries: field("max_entries"),
            memlock: field("memlock"),
        });
    }
    maps.sort_by_key(|m| m.id);
    maps
}

fn map_name(id: u32) -> Option<String> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "id", &id.to_string()])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get("name")?.as_str().map(str::to_owned)
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The child: programs `services` x `endpoints` into a datapath attached to `cgroup`, then
/// applies `changes` single-endpoint changes; prints one JSON [`LbctlScale`].
pub fn child_main(
    services: usize,
    endpoints: usize,
    changes: usize,
    pin_dir: &Path,
    cgroup: &Path,
) -> Result<()> {
    let set = ServiceSet::new(services, endpoints);
    let t = Instant::now();
    let mut desired = set.desired();
    let desired_build_ms = ms_since(t);
    let vm_rss_before_install_kib = status_kib("VmRSS");

    let t = Instant::now();
    let mut dp = Datapath::install(&scratch::config(pin_dir, cgroup))?;
    let install_ms = ms_since(t);
    let vm_hwm_after_install_kib = status_kib("VmHWM");

    let t = Instant::now();
    let report = dp.apply(&desired)?;
    let full_apply_ms = ms_since(t);
    let full_apply_steps_us: Vec<(String, u64)> = dp
        .writer()
        .last_steps()
        .into_iter()
        .map(|(step, us)| (step.to_owned(), us))
        .collect();
    if !report.errors.is_empty() {
        bail!("programming failed: {:?}", &report.errors[..1]);
    }

    let mut noop = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = dp.apply(&desired)?;
        noop.push(ms_since(t));
        if !r.is_noop() {
            bail!("an unchanged apply wrote something: {r:?}");
        }
    }

    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut change_ms = Vec::with_capacity(changes);
    let mut change_ops = 0usize;
    for k in 0..changes {
        let index = (next() % services as u64) as usize;
        let frontend = FrontendKey::new(
            SocketAddr::from((ServiceSet::cluster_ip(index), SERVICE_PORT)),
            Protocol::Tcp,
        );
        let spec = desired
            .services
            .get_mut(&frontend)
            .context("a programmed service")?;
        let fresh = SocketAddr::from((
            std::net::Ipv4Addr::from(u32::from_be_bytes([10, 200, 0, 0]) + k as u32 + 1),
            TARGET_PORT,
        ));
        let mut backends = spec.backends.to_vec();
        match k % 3 {
            0 => {
                let j = (next() % backends.len() as u64) as usize;
                backends[j] = fresh;
            }
            1 if backends.len() > 1 => {
                backends.pop();
            }
            _ => backends.push(fresh),
        }
        spec.backends = backends.into();
        let changed = BTreeSet::from([frontend]);
        let t = Instant::now();
        let r = dp.apply_changed(&desired, &changed)?;
        change_ms.push(ms_since(t));
        if !r.errors.is_empty() || r.map_operations == 0 {
            bail!("endpoint change {k} was not written: {r:?}");
        }
        change_ops += r.map_operations;
    }
    // The changes were written in full: a full diff finds nothing left.
    let r = dp.apply(&desired)?;
    if !r.is_noop() {
        bail!("a full apply after the changes still wrote something: {r:?}");
    }

    let bpf_maps = map_memory("self");
    let scale = LbctlScale {
        services,
        endpoints,
        desired_build_ms,
        install_ms,
        full_apply_ms,
        full_map_operations: report.map_operations,
        full_map_calls: report.map_calls,
        full_apply_steps_us,
        map_updates_per_sec: report.map_operations as f64 / (full_apply_ms / 1e3),
        noop_apply_ms: median(&noop),
        change: MsSummary::from_ms(&change_ms),
        change_map_operations_mean: change_ops as f64 / changes.max(1) as f64,
        vm_rss_before_install_kib,
        vm_hwm_after_install_kib,
        vm_rss_kib: status_kib("VmRSS"),
        vm_hwm_kib: status_kib("VmHWM"),
        bpf_map_bytes: bpf_maps.iter().map(|m| m.memlock).sum(),
        bpf_maps,
    };
    println!("{}", serde_json::to_string(&scale)?);
    Ok(())
}

/// Runs the child for one scale, in its own scratch cgroup and pin directory.
fn lbctl_scale(services: usize, endpoints: usize, changes: usize) -> Result<LbctlScale> {
    let cgroup = scratch::cgroup("cp")?;
    let pins = scratch::pin_dir("cp")?;
    let exe: PathBuf = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("__control-plane")
        .args(["--services", &services.to_string()])
        .args(["--endpoints", &endpoints.to_string()])
        .args(["--changes", &changes.to_string()])
        .arg("--pin-dir")
        .arg(pins.path())
        .arg("--cgroup")
        .arg(cgroup.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the control-plane child")?;
    let registration = cleanup::register(Resource::Process(child.id()));
    let out = child.wait_with_output();
    registration.release(|| {});
    let out = out?;
    if !out.status.success() {
        bail!("the control-plane child failed: {}", out.status);
    }
    serde_json::from_slice(&out.stdout).context("parsing the control-plane child's report")
}

/// The node the agent's manifest describes and the agent plans for.
const AGENT_NODE: &str = "bench-node";

/// `set` as `kubectl get nodes,services,endpointslices -A -o yaml` prints it (a `v1 List`,
/// trimmed of managedFields and status noise): one Node, then each Service and its
/// EndpointSlice. Endpoints sit on other nodes, with a Pod targetRef and conditions, as the
/// EndpointSlice controller writes them.
pub fn manifest_yaml(set: &ServiceSet) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(set.count * (1200 + 260 * set.endpoints));
    out.push_str("apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n");
    // `write!` into a String cannot fail.
    let _ = write!(
        out,
        "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: {AGENT_NODE}\n    labels:\n      \
         kubernetes.io/hostname: {AGENT_NODE}\n      topology.kubernetes.io/zone: zone-a\n  \
         status:\n    addresses:\n    - address: 192.0.2.10\n      type: InternalIP\n"
    );
    for svc in set.iter() {
        let name = &svc.name;
        let uid = format!("00000000-0000-4000-8000-{:012x}", svc.index);
        let _ = write!(
            out,
            "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: {name}\n    \
             namespace: {NAMESPACE}\n    uid: {uid}\n    resourceVersion: \"{rv}\"\n    \
             creationTimestamp: \"2026-01-01T00:00:00Z\"\n    labels:\n      app: {name}\n  \
             spec:\n    clusterIP: {ip}\n    clusterIPs:\n    - {ip}\n    \
             internalTrafficPolicy: Cluster\n    ipFamilies:\n    - IPv4\n    \
             ipFamilyPolicy: SingleStack\n    ports:\n    - name: http\n      port: \
             {SERVICE_PORT}\n      protocol: TCP\n      targetPort: {TARGET_PORT}\n    \
             selector:\n      app: {name}\n    sessionAffinity: None\n    type: ClusterIP\n  \
             status:\n    loadBalancer: {{}}\n",
            rv = 1000 + svc.index,
            ip = svc.cluster_ip,
        );
        let _ = write!(
            out,
            "- addressType: IPv4\n  apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  \
             metadata:\n    name: {name}-x7k2p\n    namespace: {NAMESPACE}\n    \
             generateName: {name}-\n    resourceVersion: \"{rv}\"\n    labels:\n      \
             endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n      \
             kubernetes.io/service-name: {name}\n  ports:\n  - name: http\n    port: \
             {TARGET_PORT}\n    protocol: TCP\n  endpoints:\n",
            rv = 1000 + set.count + svc.index,
        );
        for (j, endpoint) in svc.endpoints.iter().enumerate() {
            let _ = write!(
                out,
                "  - addresses:\n    - {ip}\n    conditions:\n      ready: true\n      \
                 serving: true\n      terminating: false\n    nodeName: node-{node}\n    \
                 zone: zone-a\n    targetRef:\n      kind: Pod\n      name: {name}-{j}\n      \
                 namespace: {NAMESPACE}\n      uid: 00000000-0000-4000-9000-{pod:012x}\n",
                ip = endpoint.ip(),
                node = j % 50,
                pod = svc.index * set.endpoints + j,
            );
        }
    }
    out
}

/// A field of the agent's "datapath updated" log line (text format), such as `took_us`.
fn log_field_us(line: &str, name: &str) -> Option<u64> {
    let key = format!(" {name}=");
    let rest = &line[line.find(&key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Writes `set` as a manifest, loads it in-process (timing the engine's stages), then runs a
/// real `lbctl agent --manifests` on it `runs` times, each in a fresh scratch cgroup and pin
/// directory, until its first "datapath updated".
fn agent_scale(services: usize, endpoints: usize, runs: usize) -> Result<AgentScale> {
    let set = ServiceSet::new(services, endpoints);
    let text = manifest_yaml(&set);
    let manifest = TempFile::new("yaml")?;
    fs::write(&manifest.path, &text)
        .with_context(|| format!("writing {}", manifest.path.display()))?;

    let t = Instant::now();
    let inventory = lbctl::source::manifests::load_paths(std::slice::from_ref(&manifest.path))?;
    let manifest_load_ms = ms_since(t);
    let node = lbctl::engine::NodeContext::new(AGENT_NODE);
    let t = Instant::now();
    let plan = lbctl::engine::plan(&inventory, &node);
    let plan_ms = ms_since(t);
    let t = Instant::now();
    let desired = lbctl::datapath::Desired::from_plan(&plan);
    let desired_ms = ms_since(t);
    if desired.services.len() != services {
        bail!(
            "the manifest planned {} frontends, not {services}: {:?}",
            desired.services.len(),
            plan.skipped.first()
        );
    }
    drop((inventory, plan, desired));

    let mut agent_runs: Vec<AgentRun> = Vec::with_capacity(runs);
    for run in 1..=runs.max(1) {
        eprintln!("lb-bench: the agent, run {run} of {}", runs.max(1));
        agent_runs.push(agent_run(&manifest.path)?);
    }
    let median = |f: fn(&AgentRun) -> f64| {
        let mut sorted: Vec<f64> = agent_runs.iter().map(f).collect();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let last = agent_runs.last().expect("at least one run");
    Ok(AgentScale {
        services,
        endpoints,
        manifest_bytes: text.len(),
        manifest_load_ms,
        plan_ms,
        desired_ms,
        reconcile_ms: median(|r| r.reconcile_ms),
        reconcile_runs_ms: agent_runs.iter().map(|r| r.reconcile_ms).collect(),
        programmed_ms: median(|r| r.programmed_ms),
        programmed_runs_ms: agent_runs.iter().map(|r| r.programmed_ms).collect(),
        start_to_programmed_ms: last.start_to_programmed_ms,
        vm_hwm_kib: agent_runs.iter().map(|r| r.vm_hwm_kib).max().unwrap_or(0),
        vm_rss_kib: last.vm_rss_kib,
        bpf_map_bytes: last.bpf_maps.iter().map(|m| m.memlock).sum(),
        bpf_maps: last.bpf_maps.clone(),
    })
}

/// What one run of the agent measured.
struct AgentRun {
    reconcile_ms: f64,
    programmed_ms: f64,
    start_to_programmed_ms: f64,
    vm_hwm_kib: u64,
    vm_rss_kib: u64,
    bpf_maps: Vec<MapMemory>,
}

/// One `lbctl agent --manifests MANIFEST` from empty, until its first "datapath updated".
fn agent_run(manifest: &std::path::Path) -> Result<AgentRun> {
    let cgroup = scratch::cgroup("cp-agent")?;
    let pins = scratch::pin_dir("cp-agent")?;
    let capacity = scratch::bench_capacity();
    let args: Vec<std::ffi::OsString> = vec![
        "--manifests".into(),
        manifest.into(),
        "--node".into(),
        AGENT_NODE.into(),
        "--pin-dir".into(),
        pins.path().into(),
        "--cgroup".into(),
        cgroup.path().into(),
        "--max-service-entries".into(),
        capacity.service_entries.to_string().into(),
        "--max-backends".into(),
        capacity.backends.to_string().into(),
        "--max-frontends".into(),
        capacity.frontends.to_string().into(),
    ];
    let started = Instant::now();
    let mut agent = super::start_as_deployed(&args)?;
    let registration = cleanup::register(Resource::Process(agent.pid()));
    let mut reconcile_us = None;
    let programmed = crate::agent::wait_until(std::time::Duration::from_secs(300), || {
        reconcile_us = agent
            .log()
            .lines()
            .find(|l| l.contains("datapath updated"))
            .and_then(|line| {
                let field = |name| log_field_us(line, name);
                Some((field("took_us")?, field("plan_us")? + field("write_us")?))
            });
        reconcile_us.is_some() || !agent.running()
    });
    let start_to_programmed_ms = ms_since(started);
    let pid = agent.pid().to_string();
    let (vm_hwm_kib, vm_rss_kib) = (
        proc_status_kib(&pid, "VmHWM"),
        proc_status_kib(&pid, "VmRSS"),
    );
    let bpf_maps = map_memory(&pid);
    let clean_exit = agent.terminate();
    registration.release(|| {});
    let Some((reconcile_us, programmed_us)) = reconcile_us.filter(|_| programmed) else {
        bail!(
            "the agent did not log \"datapath updated\" with took_us, plan_us and write_us; its \
             log:\n{}",
            agent.log()
        );
    };
    if !clean_exit {
        eprintln!("lb-bench: note: the agent did not exit with success within 5 s of SIGTERM");
    }
    Ok(AgentRun {
        reconcile_ms: reconcile_us as f64 / 1e3,
        programmed_ms: programmed_us as f64 / 1e3,
        start_to_programmed_ms,
        vm_hwm_kib,
        vm_rss_kib,
        bpf_maps,
    })
}

/// `min-max` of `values`.
pub fn fmt_range(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}-{}", fmt_ms(min), fmt_ms(max))
}

/// A file in the temporary directory, removed on drop.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn new(ext: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{}.{ext}", crate::unique_name("manifest")));
        Ok(Self { path })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Loads `set` with `tool` into a fresh namespace; returns the wall time.
fn tool_time(arm: Arm, set: &ServiceSet) -> Result<ToolTime> {
    let ns = Netns::new(&format!("cp-{}", arm.name()))?;
    let (tool, text) = match arm.restore_tool() {
        Some(tool) => (tool.to_owned(), rules::iptables_restore(set)),
        None => {
            let mut text = rules::nft_base();
            text.push_str(&rules::nft_services(set, 0..set.count));
            ("nft -f (one transaction)".to_owned(), text)
        }
    };
    let t = Instant::now();
    match arm.restore_tool() {
        Some(tool) => run_with_input(ns.exec(tool).arg("-w"), text.as_bytes())?,
        None => nft_f(&ns, &text)?,
    }
    Ok(ToolTime {
        tool,
        services: set.count,
        endpoints: set.endpoints,
        input_bytes: text.len(),
        ms: ms_since(t),
    })
}

pub fn run(opts: &ControlOptions, tool_arms: &[Arm]) -> Result<(ControlResults, Vec<Table>)> {
    let mut lbctl = Vec::new();
    for &services in &opts.services {
        eprintln!(
            "\n## control plane: lbctl, {services} services x {} endpoints, {} endpoint changes",
            opts.endpoints, opts.changes
        );
        lbctl.push(lbctl_scale(services, opts.endpoints, opts.changes)?);
    }
    let mut table = Table::new(
        "Control plane: lbctl (Datapath::apply)",
        &[
            "services x endpoints",
            "full programming",
            "map ops",
            "map updates/s",
            "unchanged apply",
            "1 endpoint change (apply_changed) p50",
            "p99",
            "max",
            "peak RSS (VmHWM)",
            "BPF map memory",
        ],
    );
    for s in &lbctl {
        table.row(vec![
            format!("{} x {}", s.services, s.endpoints),
            fmt_ms(s.full_apply_ms),
            format!("{} in {} calls", s.full_map_operations, s.full_map_calls),
            fmt_rate(s.map_updates_per_sec),
            fmt_ms(s.noop_apply_ms),
            fmt_ms(s.change.p50_ms),
            fmt_ms(s.change.p99_ms),
            fmt_ms(s.change.max_ms),
            format!("{:.1} MiB", s.vm_hwm_kib as f64 / 1024.0),
            format!("{:.1} MiB", s.bpf_map_bytes as f64 / (1024.0 * 1024.0)),
        ]);
    }
    println!("{table}");
    let mut tables = vec![table];

    let mut agent = Vec::new();
    for &services in &opts.services {
        eprintln!(
            "\n## control plane: lbctl agent --manifests, {services} services x {}",
            opts.endpoints
        );
        agent.push(agent_scale(services, opts.endpoints, opts.agent_runs)?);
    }
    let mut table = Table::new(
        "Control plane: the whole agent (lbctl agent --manifests, first reconcile)",
        &[
            "services x endpoints",
            "to maps written (plan_us + write_us): median [range]",
            "whole sync (took_us): median [range]",
            "manifest",
            "manifest load",
            "plan",
            "desired state",
            "writer alone",
            "agent peak RSS (VmHWM)",
            "BPF map memory",
        ],
    );
    for a in &agent {
        let writer = lbctl
            .iter()
            .find(|s| s.services == a.services && s.endpoints == a.endpoints);
        table.row(vec![
            format!("{} x {}", a.services, a.endpoints),
            format!(
                "{} [{}] of {}",
                fmt_ms(a.programmed_ms),
                fmt_range(&a.programmed_runs_ms),
                a.programmed_runs_ms.len()
            ),
            format!(
                "{} [{}] of {}",
                fmt_ms(a.reconcile_ms),
                fmt_range(&a.reconcile_runs_ms),
                a.reconcile_runs_ms.len()
            ),
            format!("{:.1} MB", a.manifest_bytes as f64 / 1e6),
            fmt_ms(a.manifest_load_ms),
            fmt_ms(a.plan_ms),
            fmt_ms(a.desired_ms),
            writer.map_or_else(|| "-".into(), |w| fmt_ms(w.full_apply_ms)),
            format!("{:.1} MiB", a.vm_hwm_kib as f64 / 1024.0),
            format!("{:.1} MiB", a.bpf_map_bytes as f64 / (1024.0 * 1024.0)),
        ]);
    }
    println!("{table}");
    tables.push(table);

    let set = ServiceSet::new(opts.tool_services, opts.endpoints);
    let mut tools = Vec::new();
    for &arm in tool_arms {
        eprintln!(
            "\n## control plane: {arm} loading {} services x {} endpoints",
            set.count, set.endpoints
        );
        tools.push(tool_time(arm, &set)?);
    }
    let mut table = Table::new(
        &format!(
            "Control plane: loading {} services x {} endpoints from empty",
            set.count, set.endpoints
        ),
        &["datapath", "input", "time"],
    );
    if let Some(s) = lbctl.iter().find(|s| s.services == opts.tool_services) {
        table.row(vec![
            "lbctl (Datapath::apply)".into(),
            "-".into(),
            fmt_ms(s.full_apply_ms),
        ]);
    }
    for t in &tools {
        table.row(vec![
            t.tool.clone(),
            format!("{:.1} MB", t.input_bytes as f64 / 1e6),
            fmt_ms(t.ms),
        ]);
    }
    println!("{table}");
    tables.push(table);
    Ok((
        ControlResults {
            options: opts.clone(),
            lbctl,
            agent,
            tools,
        },
        tables,
    ))
}
