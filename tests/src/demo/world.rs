//! The demo's cluster made real on this machine: per node a cgroup (where its pods' processes
//! run) and an `lbctl agent` (attached to that cgroup, with its own pin directory); per pod a
//! network namespace on one bridge; per quote pod an HTTP server; the manifests the agents
//! watch. [`World`] owns all of it and removes it on drop, in order: servers, agents,
//! `lbctl uninstall` of each pin directory, namespaces, bridge, cgroups, the work directory.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lbctl::{
    datapath::{FrontendKey, Maps, Writer},
    engine::{self, NodeContext},
    source::manifests,
};

use super::{
    agent::{AgentSpec, NodeAgent},
    check_interrupted,
    cluster::{self, Cluster},
};
use crate::topology::{self, Bridge, CgroupDir, Pod, PodAddress, PodProcess, TempDir};

/// The name of the demo's cgroup, pin directory and work directory (`/tmp/lbctl-demo-<pid>`).
pub const NAME: &str = "lbctl-demo";
/// The bridge every pod is plugged into (`ip link show lbdemo0`).
pub const BRIDGE: &str = "lbdemo0";
/// The bridge's address: the pods' default gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// All pod addresses are in this /16.
pub const POD_PREFIX_LEN: u8 = 16;
/// Held while a demo runs: two demos at once would fight over the same names.
const LOCK_FILE: &str = "/run/lbctl-demo.lock";

/// Where everything lives.
#[derive(Clone, Debug)]
pub struct Paths {
    /// `<cgroup2 root>/lbctl-demo`: one child per node, and `agents`.
    pub cgroup_root: PathBuf,
    /// `/sys/fs/bpf/lbctl-demo`: one pin directory per node.
    pub pin_root: PathBuf,
    /// `/tmp/lbctl-demo-<pid>`: `cluster/` (the manifests) and the agents' logs.
    pub workdir: PathBuf,
    pub lbctl: PathBuf,
    pub probe: PathBuf,
}

impl Paths {
    pub fn detect() -> Result<Self> {
        let cgroup2 = lbctl::datapath::system::cgroup2_root()?;
        Ok(Self {
            cgroup_root: cgroup2.join(NAME),
            pin_root: Path::new(lbctl::datapath::system::BPFFS_ROOT).join(NAME),
            workdir: std::env::temp_dir().join(format!("{NAME}-{}", std::process::id())),
            lbctl: topology::sibling_binary("lbctl")?,
            probe: topology::sibling_binary("lb-probe")?,
        })
    }

    pub fn node_cgroup(&self, node: &str) -> PathBuf {
        self.cgroup_root.join(node)
    }

    pub fn agents_cgroup(&self) -> PathBuf {
        self.cgroup_root.join("agents")
    }

    pub fn pin_dir(&self, node: &str) -> PathBuf {
        self.pin_root.join(node)
    }

    /// The directory the agents watch.
    pub fn manifests_dir(&self) -> PathBuf {
        self.workdir.join("cluster")
    }

    pub fn manifest_file(&self) -> PathBuf {
        self.manifests_dir().join("cluster.yaml")
    }

    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.workdir.join(format!("agent-{node}.log"))
    }
}

/// A pin directory, removed with `lbctl uninstall` when dropped.
struct PinDir {
    path: PathBuf,
    lbctl: PathBuf,
    removed: bool,
}

impl PinDir {
    /// `lbctl uninstall --pin-dir PATH`; returns what it printed.
    fn uninstall(&mut self) -> Result<String> {
        self.removed = true;
        let out = Command::new(&self.lbctl)
            .args(["uninstall", "--pin-dir"])
            .arg(&self.path)
            .output()
            .context("running lbctl uninstall")?;
        if !out.status.success() {
            lbctl::datapath::uninstall(&self.path)?;
            bail!(
                "lbctl uninstall failed ({}); removed the pins directly",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.uninstall();
        }
    }
}

/// Everything the demo created. Field order is drop order.
pub struct World {
    pub paths: Paths,
    servers: Vec<(String, PodProcess)>,
    agents: Vec<NodeAgent>,
    pins: Vec<PinDir>,
    pods: Vec<(cluster::Pod, Pod)>,
    bridge: Option<Bridge>,
    node_cgroups: Vec<(String, CgroupDir)>,
    agents_cgroup: Option<CgroupDir>,
    root_cgroup: Option<CgroupDir>,
    workdir: Option<TempDir>,
    lock: Option<fs::File>,
}

/// What `teardown` reports, one line per step.
pub type Say<'a> = &'a mut dyn FnMut(String);

impl World {
    /// Takes the demo lock, removes what an earlier, killed run left behind (listed in the
    /// returned strings), and creates the work directory, the cgroups and the bridge.
    pub fn create(paths: Paths, cluster: &Cluster) -> Result<(Self, Vec<String>)> {
        let lock = take_lock()?;
        let leftovers = remove_leftovers(&paths, cluster);
        let mut world = World {
            paths,
            servers: Vec::new(),
            agents: Vec::new(),
            pins: Vec::new(),
            pods: Vec::new(),
            bridge: None,
            node_cgroups: Vec::new(),
            agents_cgroup: None,
            root_cgroup: None,
            workdir: None,
            lock: Some(lock),
        };
        world.workdir = Some(TempDir::create(world.paths.workdir.clone())?);
        fs::create_dir(world.paths.manifests_dir()).context("creating the manifests directory")?;
        world.root_cgroup = Some(CgroupDir::create(&world.paths.cgroup_root)?);
        world.agents_cgroup = Some(CgroupDir::create(&world.paths.agents_cgroup())?);
        for node in &cluster.nodes {
            let cgroup = CgroupDir::create(&world.paths.node_cgroup(node.name))?;
            world.node_cgroups.push((node.name.to_owned(), cgroup));
        }
        world.bridge = Some(Bridge::create(
            BRIDGE,
            &format!("{GATEWAY}/{POD_PREFIX_LEN}"),
        )?);
        Ok((world, leftovers))
    }

    fn node_cgroup(&self, node: &str) -> Result<&CgroupDir> {
        self.node_cgroups
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, c)| c)
            .with_context(|| format!("no node {node}"))
    }

    fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|(p, _)| p.name == name)
            .map(|(_, ns)| ns)
            .with_context(|| format!("no pod {name}"))
    }

    /// Writes the cluster's objects where the agents look, atomically (a hidden temporary
    /// file renamed over the old one: the agents never read half a file).
    pub fn write_manifests(&self, cluster: &Cluster) -> Result<()> {
        let file = self.paths.manifest_file();
        let tmp = self.paths.manifests_dir().join(".cluster.yaml.tmp");
        fs::write(&tmp, cluster.manifests())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &file).with_context(|| format!("renaming to {}", file.display()))
    }

    /// Creates the pod's network namespace, with `hosts` as its `/etc/hosts` entries.
    pub fn add_pod(&mut self, pod: &cluster::Pod, hosts: &[(Ipv4Addr, Vec<String>)]) -> Result<()> {
        let bridge = self.bridge.as_ref().context("no bridge")?;
        let addr = PodAddress {
            address: pod.ip,
            prefix_len: POD_PREFIX_LEN,
            gateway: GATEWAY,
        };
        let ns = Pod::create(pod.name, bridge, &addr)?;
        ns.set_hosts(hosts)?;
        self.pods.push((pod.clone(), ns));
        Ok(())
    }

    /// Starts the quote pod's HTTP server (`lb-probe http`) in its namespace and its node's
    /// cgroup.
    pub fn start_quote_server(&mut self, pod: &cluster::Pod) -> Result<()> {
        let listen = SocketAddr::from((pod.ip, cluster::QUOTE_PORT)).to_string();
        let args = ["http", pod.name, pod.node, listen.as_str()];
        let process = PodProcess::start(
            self.pod(pod.name)?,
            self.node_cgroup(pod.node)?,
            &self.paths.probe,
            &args,
        )
        .with_context(|| format!("starting the server of {}", pod.name))?;
        self.servers.push((pod.name.to_owned(), process));
        Ok(())
    }

    /// Kills the pod's server (as deleting the pod would).
    pub fn stop_quote_server(&mut self, pod: &str) {
        self.servers.retain(|(name, _)| name != pod);
    }

    /// Starts the agent of `node` on a free loopback port for its metrics.
    pub fn start_agent(&mut self, node: &str) -> Result<Vec<String>> {
        let pin_dir = self.paths.pin_dir(node);
        let node_cgroup = self.paths.node_cgroup(node);
        let manifests = self.paths.manifests_dir();
        let spec = AgentSpec {
            lbctl: &self.paths.lbctl,
            node,
            manifests: &manifests,
            pin_dir: &pin_dir,
            node_cgroup: &node_cgroup,
            metrics_addr: free_loopback_port()?,
            log: self.paths.agent_log(node),
        };
        let args = spec.args();
        self.pins.push(PinDir {
            path: pin_dir.clone(),
            lbctl: self.paths.lbctl.clone(),
            removed: false,
        });
        let cgroup = self.agents_cgroup.as_ref().context("no agents cgroup")?;
        self.agents.push(NodeAgent::start(&spec, cgroup)?);
        Ok(args)
    }

    pub fn agent(&self, node: &str) -> Result<&NodeAgent> {
        self.agents
            .iter()
            .find(|a| a.node() == node)
            .with_context(|| format!("no agent for {node}"))
    }

    /// Waits until every agent's maps hold exactly what `lbctl plan` computes for its node
    /// from `cluster`; returns how long that took.
    pub fn wait_programmed(&mut self, cluster: &Cluster, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        let inventory = manifests::load_str(&cluster.manifests(), "cluster.yaml")?;
        let expected: Vec<(String, Programmed)> = self
            .agents
            .iter()
            .map(|a| {
                let plan = engine::plan(&inventory, &NodeContext::new(a.node()));
                (a.node().to_owned(), planned(&plan))
            })
            .collect();
        for (node, want) in &expected {
            loop {
                check_interrupted()?;
                let seen = programmed(&self.paths.pin_dir(node));
                if seen.as_ref().is_ok_and(|have| have == want) {
                    break;
                }
                let agent = self
                    .agents
                    .iter_mut()
                    .find(|a| a.node() == node)
                    .context("agent gone")?;
                if !agent.running() {
                    bail!(
                        "the agent of {node} exited; its log ({}):\n{}",
                        agent.log_path().display(),
                        agent.log_tail(20)
                    );
                }
                if started.elapsed() > timeout {
                    let seen = match seen {
                        Ok(have) => format!("its maps hold {have:?}, expected {want:?}"),
                        Err(e) => format!("reading its maps: {e:#}"),
                    };
                    bail!(
                        "the agent of {node} did not program its datapath within {timeout:?} ({seen}); its log ({}):\n{}",
                        agent.log_path().display(),
                        agent.log_tail(20)
                    );
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(started.elapsed())
    }

    /// Runs `lb-probe ARGS` in pod `pod` and the cgroup of its node.
    pub fn run_in_pod(&self, pod: &cluster::Pod, args: &[&str]) -> Result<Output> {
        topology::run_in(
            self.pod(pod.name)?,
            self.node_cgroup(pod.node)?,
            &self.paths.probe,
            args,
        )
    }

    /// Removes everything, in order, reporting each step.
    pub fn teardown(&mut self, say: Say<'_>) {
        let servers = self.servers.len();
        self.servers.clear();
        if servers > 0 {
            say(format!("killed {servers} quote servers"));
        }
        for mut agent in self.agents.drain(..) {
            let how = if agent.stop() {
                "exited cleanly"
            } else {
                "killed"
            };
            say(format!(
                "stopped the agent of {} (SIGTERM: {how})",
                agent.node()
            ));
        }
        for mut pins in self.pins.drain(..) {
            match pins.uninstall() {
                Ok(out) => say(format!(
                    "$ lbctl uninstall --pin-dir {}  ->  {out}",
                    pins.path.display()
                )),
                Err(e) => say(format!("warning: {e:#}")),
            }
        }
        if self.lock.is_some() {
            let _ = fs::remove_dir(&self.paths.pin_root);
        }
        let pods: Vec<&str> = self.pods.iter().map(|(p, _)| p.name).collect();
        if !pods.is_empty() {
            say(format!(
                "deleted network namespaces {} and their veth pairs",
                pods.join(", ")
            ));
        }
        self.pods.clear();
        // Only when empty: other tools keep their pods' files there too.
        let _ = fs::remove_dir("/etc/netns");
        if self.bridge.take().is_some() {
            say(format!("deleted bridge {BRIDGE}"));
        }
        self.node_cgroups.clear();
        self.agents_cgroup = None;
        if self.root_cgroup.take().is_some() {
            say(format!(
                "removed cgroup {}",
                self.paths.cgroup_root.display()
            ));
        }
        if self.workdir.take().is_some() {
            say(format!("removed {}", self.paths.workdir.display()));
        }
        if self.lock.take().is_some() {
            let _ = fs::remove_file(LOCK_FILE);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.teardown(&mut |_| {});
    }
}

/// Frontend -> backends, as comparable sets.
type Programmed = BTreeMap<FrontendKey, BTreeSet<SocketAddr>>;

fn planned(plan: &lbctl::plan::Plan) -> Programmed {
    plan.frontends
        .iter()
        .map(|f| {
            let addr = FrontendKey::new(SocketAddr::new(f.address, f.port), f.protocol);
            (addr, f.backends.iter().collect())
        })
        .collect()
}

fn programmed(pin_dir: &Path) -> Result<Programmed> {
    let writer = Writer::adopt(Maps::open(pin_dir)?)?;
    Ok(writer
        .frontends()
        .into_iter()
        .map(|f| (f.frontend, f.backends.into_iter().collect()))
        .collect())
}

fn free_loopback_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

fn take_lock() -> Result<fs::File> {
    let file = fs::File::create(LOCK_FILE).with_context(|| format!("creating {LOCK_FILE}"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            bail!("another lb-demo is running (it holds {LOCK_FILE}); wait for it to finish")
        }
        Err(fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {LOCK_FILE}")),
    }
}

/// Removes what a run that was killed (SIGKILL, power loss) left behind: its processes (they
/// all run in the demo's cgroups), pins, namespaces, interfaces and work directories.
fn remove_leftovers(paths: &Paths, cluster: &Cluster) -> Vec<String> {
    let mut found = Vec::new();
    if paths.cgroup_root.exists() {
        match topology::remove_cgroup(&paths.cgroup_root) {
            Ok(()) => found.push(format!(
                "cgroup {} (and its processes)",
                paths.cgroup_root.display()
            )),
            Err(e) => found.push(format!("{e:#}")),
        }
    }
    for node in &cluster.nodes {
        let pin_dir = paths.pin_dir(node.name);
        if pin_dir.exists() {
            let _ = lbctl::datapath::uninstall(&pin_dir);
            found.push(format!("pins {}", pin_dir.display()));
        }
    }
    let _ = fs::remove_dir(&paths.pin_root);
    let namespaces = topology::netns_list();
    for pod in &cluster.pods {
        if namespaces.iter().any(|n| n == pod.name) {
            let _ = topology::ip(&["netns", "del", pod.name]);
            found.push(format!("network namespace {}", pod.name));
        }
        let host_if = format!("ve-{}", pod.name);
        if topology::link_exists(&host_if) {
            let _ = topology::ip(&["link", "del", &host_if]);
        }
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(pod.name));
    }
    if topology::link_exists(BRIDGE) {
        let _ = topology::ip(&["link", "del", BRIDGE]);
        found.push(format!("bridge {BRIDGE}"));
    }
    found.extend(remove_old_workdirs(paths));
    found
}

fn remove_old_workdirs(paths: &Paths) -> Vec<String> {
    let Some(tmp) = paths.workdir.parent() else {
        return Vec::new();
    };
    let prefix = format!("{NAME}-");
    let Ok(entries) = fs::read_dir(tmp) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter(|e| fs::remove_dir_all(e.path()).is_ok())
        .map(|e| format!("work directory {}", e.path().display()))
        .collect()
}
