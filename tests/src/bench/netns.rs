//! Network namespaces and the client/server topology every datapath arm runs in.
//!
//! ```text
//!  client netns (rules of the arm in its OUTPUT hooks)      server netns
//!  veth0 10.244.1.2/24  ────────── veth pair ──────────  veth0 10.244.1.1/24
//!  routes: 10.96.0.0/12, 10.128.0.0/9 via 10.244.1.1            + 10.244.2.1..E/32 (backends)
//! ```
//!
//! Traffic never leaves the two namespaces: service addresses (10.96.0.0/12) and endpoint
//! addresses (10.128.0.0/9) are routed to the server namespace, which answers only for the
//! measured service's backends.
use std::{
    io::Write,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::cleanup::{self, Registration, Resource};

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs a command with `input` on its stdin, failing with its stderr.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut stdin = child.stdin.take().context("child stdin")?;
    // Write from this thread while the child reads; its stderr pipe is drained after it exits
    // (the tools print little there), so no deadlock.
    let write = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().context("waiting for the child")?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    write.with_context(|| format!("writing the input of {cmd:?}"))?;
    Ok(())
}

/// A named network namespace, deleted on drop (with every rule and interface inside it).
pub struct Netns {
    name: String,
    registration: Option<Registration>,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("lbb-{}-{tag}", std::process::id());
        let registration = cleanup::register(Resource::Netns(name.clone()));
        let ns = Self {
            name,
            registration: Some(registration),
        };
        run(Command::new("ip").args(["netns", "add", &ns.name]))?;
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip netns exec NAME program ...`
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `ip -n NAME -batch -` with these lines.
    pub fn ip_batch(&self, lines: &[String]) -> Result<()> {
        let mut input = lines.join("\n");
        input.push('\n');
        run_with_input(
            Command::new("ip").args(["-n", &self.name, "-batch", "-"]),
            input.as_bytes(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(r) = self.registration.take() {
            let (name, path) = (self.name.clone(), self.path());
            r.release(|| {
                if !path.exists() {
                    return;
                }
                if let Err(e) = run(Command::new("ip").args(["netns", "del", &name])) {
                    eprintln!("warning: {e:#}");
                }
            });
        }
    }
}

/// A client namespace and a server namespace joined by a veth pair.
pub struct Topology {
    pub client: Netns,
    pub server: Netns,
}

impl Topology {
    /// `backends`: the addresses the server namespace answers for (besides its veth address).
    pub fn new(tag: &str, backends: &[Ipv4Addr]) -> Result<Self> {
        let client = Netns::new(&format!("{tag}-c"))?;
        let server = Netns::new(&format!("{tag}-s"))?;
        run(Command::new("ip").args([
            "link",
            "add",
            "veth0",
            "netns",
            client.name(),
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            server.name(),
        ]))?;
        client.ip_batch(&[
            format!("addr add {CLIENT_ADDR}/24 dev veth0"),
            "link set veth0 up".into(),
            format!("route add 10.96.0.0/12 via {SERVER_ADDR}"),
            format!("route add 10.128.0.0/9 via {SERVER_ADDR}"),
        ])?;
        let mut lines = vec![
            format!("addr add {SERVER_ADDR}/24 dev veth0"),
            "link set veth0 up".into(),
        ];
        lines.extend(
            backends
                .iter()
                .map(|b| format!("addr add {b}/32 dev veth0")),
        );
        server.ip_batch(&lines)?;
        Ok(Self { client, server })
    }
}
