//! Part 2: the control plane at scale. lbctl's side runs in a child process
//! (`lb-bench __control-plane`) so that its peak RSS is the writer's and the desired state's
//! alone, not the benchmark's; beside it, the time `iptables-restore` and `nft -f` take to load
//! the same services.
use std::{
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
    services::{SERVICE_PORT, ServiceSet, TARGET_PORT},
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
    pub map_updates_per_sec: f64,
    /// `Datapath::apply` of an unchanged desired state (median of 5): the diff's floor.
    pub noop_apply_ms: f64,
    /// `Datapath::apply` after one endpoint changed (replace, remove, add in turn).
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

#[derive(Debug, Serialize)]
pub struct ControlResults {
    pub options: ControlOptions,
    pub lbctl: Vec<LbctlScale>,
    pub tools: Vec<ToolTime>,
}

fn status_kib(field: &str) -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The BPF maps this process holds open, with their kernel memory.
fn map_memory() -> Vec<MapMemory> {
    let mut maps: Vec<MapMemory> = Vec::new();
    let Ok(fds) = fs::read_dir("/proc/self/fd") else {
        return maps;
    };
    for fd in fds.flatten() {
        let is_map =
            fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains("bpf-map"));
        if !is_map {
            continue;
        }
        let info = fs::read_to_string(Path::new("/proc/self/fdinfo").join(fd.file_name()))
            .unwrap_or_default();
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
        match k % 3 {
            0 => {
                let j = (next() % spec.backends.len() as u64) as usize;
                spec.backends[j] = fresh;
            }
            1 if spec.backends.len() > 1 => {
                spec.backends.pop();
            }
            _ => spec.backends.push(fresh),
        }
        let t = Instant::now();
        let r = dp.apply(&desired)?;
        change_ms.push(ms_since(t));
        if !r.errors.is_empty() || r.map_operations == 0 {
            bail!("endpoint change {k} was not written: {r:?}");
        }
        change_ops += r.map_operations;
    }

    let bpf_maps = map_memory();
    let scale = LbctlScale {
        services,
        endpoints,
        desired_build_ms,
        install_ms,
        full_apply_ms,
        full_map_operations: report.map_operations,
        full_map_calls: report.map_calls,
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
            "1 endpoint change p50",
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
            tools,
        },
        tables,
    ))
}
