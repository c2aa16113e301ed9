//! One node's `lbctl agent`, as a child process logging to a file; stopped with SIGTERM (and
//! SIGKILL if it does not exit) on drop.
use std::{
    fs,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::topology::CgroupDir;

/// Where and how one node's agent runs.
pub struct AgentSpec<'a> {
    pub lbctl: &'a Path,
    pub node: &'a str,
    pub manifests: &'a Path,
    pub pin_dir: &'a Path,
    /// The node's cgroup: the agent attaches the programs there.
    pub node_cgroup: &'a Path,
    pub metrics_addr: SocketAddr,
    pub log: PathBuf,
}

impl AgentSpec<'_> {
    /// The arguments after `lbctl`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "agent".into(),
            "--node".into(),
            self.node.into(),
            "--manifests".into(),
            self.manifests.display().to_string(),
            "--pin-dir".into(),
            self.pin_dir.display().to_string(),
            "--cgroup".into(),
            self.node_cgroup.display().to_string(),
            "--metrics-addr".into(),
            self.metrics_addr.to_string(),
        ]
    }
}

pub struct NodeAgent {
    node: String,
    child: Child,
    log: PathBuf,
    metrics_addr: SocketAddr,
}

impl NodeAgent {
    /// Starts the agent in its own process group (a Ctrl-C reaches only the demo, which stops
    /// it in order) and moves it into `cgroup` (so a killed demo's agents can be found and
    /// stopped by the next run).
    pub fn start(spec: &AgentSpec<'_>, cgroup: &CgroupDir) -> Result<Self> {
        let log = fs::File::create(&spec.log)
            .with_context(|| format!("creating {}", spec.log.display()))?;
        let child = Command::new(spec.lbctl)
            .args(spec.args())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", spec.lbctl.display()))?;
        let mut agent = Self {
            node: spec.node.to_owned(),
            child,
            log: spec.log.clone(),
            metrics_addr: spec.metrics_addr,
        };
        cgroup.add(agent.child.id()).inspect_err(|_| agent.kill())?;
        Ok(agent)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then up to 5 s for a clean exit, then SIGKILL. Returns whether it exited by
    /// itself.
    pub fn stop(&mut self) -> bool {
        if !self.running() {
            return true;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}
