//! Simulated Kubernetes nodes on one machine: a bridge, pods as network namespaces joined to it
//! by veth pairs, one cgroup per node, and processes started inside a pod's network namespace
//! *and* a node's cgroup. Every piece is a guard that removes what it created when dropped, so
//! a failing test or demo leaves nothing behind.
//!
//! Everything is driven through `ip` (iproute2): `ip netns exec POD PROGRAM` enters the pod's
//! network namespace (and bind-mounts `/etc/netns/POD/*` over `/etc`, which gives each pod its
//! own `/etc/hosts`) and then execs PROGRAM in the same process, so the pid we move into the
//! cgroup is the pid that runs. The program is `lb-probe`, which waits for a `go` line before
//! doing anything: nothing it runs can connect before it is in the cgroup.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Longest Linux interface name (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Runs `ip ARGS`; fails with ip's own message.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip ARGS`, ignoring failure: for removing things that may already be gone.
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Names of the network namespaces `ip netns` knows.
pub fn netns_list() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a network interface of this name exists in this network namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A workspace binary (`lbctl`, `lb-probe`) next to the running executable, or one directory up
/// (test binaries live in `target/<profile>/deps`).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe.parent().context("the executable has no directory")?;
    [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{name} not found next to {}; build it with `cargo build -p lbctl -p lbctl-tests --bins`",
                exe.display()
            )
        })
}

/// A Linux bridge in this (the root) network namespace, with an address: the pods' gateway.
pub struct Bridge {
    name: String,
}

impl Bridge {
    /// `ip link add NAME type bridge`, address `cidr` (e.g. `10.244.0.1/16`), up.
    pub fn create(name: &str, cidr: &str) -> Result<Self> {
        ip(&["link", "add", name, "type", "bridge"])?;
        let bridge = Self {
            name: name.to_owned(),
        };
        ip(&["addr", "add", cidr, "dev", name])?;
        ip(&["link", "set", name, "up"])?;
        Ok(bridge)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.name]);
    }
}

/// Where a pod sits on the network.
#[derive(Clone, Debug)]
pub struct PodAddress {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// A pod: a network namespace named after it, with `eth0` (the pod end of a veth pair whose
/// other end, `ve-<name>`, is a port of the bridge), its address, a default route via the
/// bridge, and optionally its own `/etc/hosts`.
pub struct Pod {
    name: String,
    host_if: String,
    etc_dir: PathBuf,
    address: Ipv4Addr,
}

impl Pod {
    pub fn create(name: &str, bridge: &Bridge, addr: &PodAddress) -> Result<Self> {
        let host_if = format!("ve-{name}");
        if host_if.len() > IFNAME_MAX {
            bail!("pod name {name:?} too long for an interface name ({host_if})");
        }
        ip(&["netns", "add", name])?;
        let pod = Self {
            name: name.to_owned(),
            host_if,
            etc_dir: Path::new("/etc/netns").join(name),
            address: addr.address,
        };
        pod.wire(bridge, addr)
            .with_context(|| format!("wiring pod {name}"))?;
        Ok(pod)
    }

    fn wire(&self, bridge: &Bridge, addr: &PodAddress) -> Result<()> {
        let (ns, host_if) = (self.name.as_str(), self.host_if.as_str());
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["link", "set", host_if, "master", bridge.name(), "up"])?;
        let cidr = format!("{}/{}", addr.address, addr.prefix_len);
        ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &addr.gateway.to_string(),
        ])
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// Gives the pod its own `/etc/hosts` (`ip netns exec` mounts it over the host's), so names
    /// like `quote-local` resolve inside it as cluster DNS would resolve them.
    pub fn set_hosts(&self, entries: &[(Ipv4Addr, Vec<String>)]) -> Result<()> {
        fs::create_dir_all(&self.etc_dir)
            .with_context(|| format!("creating {}", self.etc_dir.display()))?;
        let mut hosts = format!("127.0.0.1\tlocalhost\n{}\t{}\n", self.address, self.name);
        for (ip, names) in entries {
            hosts.push_str(&format!("{ip}\t{}\n", names.join(" ")));
        }
        let path = self.etc_dir.join("hosts");
        fs::write(&path, hosts).with_context(|| format!("writing {}", path.display()))
    }

    /// `ip netns exec POD PROGRAM ARGS...`, in its own process group so that a Ctrl-C on the
    /// terminal reaches only the parent (which then cleans up in order).
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .process_group(0);
        cmd
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Deleting the namespace destroys eth0, and with it the host end of the pair.
        ip_quiet(&["netns", "del", &self.name]);
        if link_exists(&self.host_if) {
            ip_quiet(&["link", "del", &self.host_if]);
        }
        let _ = fs::remove_dir_all(&self.etc_dir);
    }
}

/// A cgroup v2 directory at a chosen path, created (with its parents) now and, after killing
/// whatever still runs in it, removed on drop.
pub struct CgroupDir {
    path: PathBuf,
}

impl CgroupDir {
    pub fn create(path: &Path) -> Result<Self> {
        fs::create_dir(path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves a process into this cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", self.path.display()))
    }

    /// Kills every process in the cgroup (and waits, up to 5 s, until they are gone).
    pub fn kill_all(&self) {
        kill_cgroup(&self.path);
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        if let Err(e) = remove_cgroup(&self.path) {
            eprintln!("warning: {e:#}");
        }
    }
}

fn cgroup_pids(path: &Path) -> Vec<u32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn kill_cgroup(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cgroup_pids(path).is_empty() && Instant::now() < deadline {
        // cgroup.kill (Linux 5.14+) SIGKILLs every process of the cgroup and its children.
        let _ = fs::write(path.join("cgroup.kill"), "1");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills what runs in a cgroup and removes it with its child cgroups (deepest first). A
/// missing cgroup is fine.
pub fn remove_cgroup(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if let Ok(children) = fs::read_dir(path) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&child.path())?;
            }
        }
    }
    kill_cgroup(path);
    for _ in 0..100 {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // A process killed just now may take a moment to leave.
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    bail!("could not remove cgroup {}", path.display())
}

/// Starts `lb-probe ARGS` inside `pod` and `cgroup` and lets it go. stdout is piped (and
/// stderr too when `capture_stderr`).
fn spawn_probe(
    pod: &Pod,
    cgroup: &CgroupDir,
    probe: &Path,
    args: &[&str],
    capture_stderr: bool,
) -> Result<Child> {
    let mut child = pod
        .command(probe, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if capture_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .with_context(|| format!("starting lb-probe in pod {}", pod.name()))?;
    let started = cgroup.add(child.id()).and_then(|()| {
        let mut stdin = child.stdin.take().context("probe stdin")?;
        writeln!(stdin, "go").context("starting the probe")
    });
    if let Err(e) = started {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}

/// Runs `lb-probe ARGS` (e.g. `exec curl -s quote-local`) in `pod` and `cgroup` to completion
/// and returns its exit status and output.
pub fn run_in(pod: &Pod, cgroup: &CgroupDir, probe: &Path, args: &[&str]) -> Result<Output> {
    let child = spawn_probe(pod, cgroup, probe, args, true)?;
    child
        .wait_with_output()
        .with_context(|| format!("waiting for lb-probe in pod {}", pod.name()))
}

/// A long-running process in a pod (e.g. `lb-probe http ...`), killed on drop.
pub struct PodProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl PodProcess {
    /// Starts `lb-probe ARGS` in `pod` and `cgroup`, and waits for its first line of output
    /// (a server prints `listening ADDR` once bound).
    pub fn start(pod: &Pod, cgroup: &CgroupDir, probe: &Path, args: &[&str]) -> Result<Self> {
        let mut child = spawn_probe(pod, cgroup, probe, args, false)?;
        let stdout = child.stdout.take().context("probe stdout")?;
        let mut process = Self {
            child,
            stdout: BufReader::new(stdout),
        };
        let mut line = String::new();
        process.stdout.read_line(&mut line)?;
        if line.is_empty() {
            bail!(
                "lb-probe {} in pod {} exited at once",
                args.join(" "),
                pod.name()
            );
        }
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory removed (with its content) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `path` (which must not exist yet).
    pub fn create(path: PathBuf) -> Result<Self> {
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
