//! A scratch node for the agent tests (`tests/agent.rs`, `agent_observability.rs`, `upgrade.rs`,
//! attach point and bpffs checks): cgroup, pin directory and manifest file, the flags every test
//! agent runs with, an agent serving one service from a manifest file, the test variant of the
//! kernel object, the ids of the attached programs, a client loop that must never fail, and a
//! plain HTTP GET for the agent's metrics server.
use std::{
    ffi::OsStr,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use lbctl::{datapath::FrontendKey, inspect, plan::Protocol};

use crate::{
    TempDir,
    agent::{AgentProcess, wait_until},
    cgroup::CgroupGuard,
    pins::PinDirGuard,
    probe::{Outcome, Probe},
};

pub const NODE: &str = "node-a";

/// The kernel object built with `lb-ebpf`'s `test-variant-b` feature by this crate's build.rs:
/// it behaves as the production object except that every connect takes backend slot 1.
pub fn variant_b_object() -> PathBuf {
    let path = PathBuf::from(concat!(env!("OUT_DIR"), "/lb-ebpf"));
    let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(
        len > 0,
        "{} is empty: the tests crate was built with AYA_BUILD_SKIP",
        path.display()
    );
    path
}

/// One endpoint of a test EndpointSlice: its address (IP and target port), node and readiness
/// (`serving` follows `ready`; never terminating).
pub struct Endpoint<'a> {
    pub addr: SocketAddr,
    pub node: &'a str,
    pub ready: bool,
}

impl<'a> Endpoint<'a> {
    /// A ready endpoint on `node`.
    pub fn ready(addr: SocketAddr, node: &'a str) -> Self {
        Self {
            addr,
            node,
            ready: true,
        }
    }
}

/// A TCP ClusterIP Service `namespace/name` on `vip:80` (port `http`, target port the first
/// endpoint's, 8080 without one) with this `internalTrafficPolicy`, and its EndpointSlice
/// `name-abc12` carrying `slice_annotations` (none when empty): two YAML documents, each
/// starting with `---`.
pub fn service_yaml(
    namespace: &str,
    name: &str,
    vip: &str,
    itp: &str,
    endpoints: &[Endpoint],
    slice_annotations: &[(&str, &str)],
) -> String {
    let port = endpoints.first().map_or(8080, |e| e.addr.port());
    let endpoints: String = if endpoints.is_empty() {
        "  []\n".to_owned()
    } else {
        endpoints
            .iter()
            .map(|e| {
                format!(
                    "  - addresses: [\"{}\"]\n    nodeName: {}\n    conditions: {{ready: {}, serving: {}, terminating: false}}\n",
                    e.addr.ip(),
                    e.node,
                    e.ready,
                    e.ready
                )
            })
            .collect()
    };
    let annotations: String = if slice_annotations.is_empty() {
        String::new()
    } else {
        let pairs: Vec<String> = slice_annotations
            .iter()
            .map(|(k, v)| format!("{k}: \"{v}\""))
            .collect();
        format!("  annotations: {{{}}}\n", pairs.join(", "))
    };
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  clusterIP: {vip}
  clusterIPs: [{vip}]
  internalTrafficPolicy: {itp}
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abc12
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
{annotations}addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
{endpoints}"#
    )
}

/// A Node object named `name` with this InternalIP, in zone `z1`: one YAML document starting
/// with `---`.
pub fn node_yaml(name: &str, internal_ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{topology.kubernetes.io/zone: z1}}}}\nstatus: {{addresses: [{{type: InternalIP, address: {internal_ip}}}]}}\n"
    )
}

/// One node, one ClusterIP service `default/svc` on `vip:80` whose endpoints (all on this node,
/// ready) are `backends`.
pub fn one_service_yaml(vip: &str, backends: &[SocketAddr]) -> String {
    let endpoints: Vec<Endpoint> = backends.iter().map(|b| Endpoint::ready(*b, NODE)).collect();
    node_yaml(NODE, "192.0.2.1") + &service_yaml("default", "svc", vip, "Cluster", &endpoints, &[])
}

/// The arguments of a test `lbctl agent` on node [`NODE`]: its object `source` (`--manifests
/// FILE` or `--kubeconfig FILE`), pin directory and cgroup, a 10 ms coalesce and small
/// capacities, then `extra` flags (which replace the defaults of the same name).
pub fn agent_args(source: &[&str], pins: &Path, cgroup: &Path, extra: &[&str]) -> Vec<String> {
    let pins = pins.display().to_string();
    let cgroup = cgroup.display().to_string();
    let defaults: [(&str, &str); 8] = [
        ("--node", NODE),
        ("--pin-dir", &pins),
        ("--cgroup", &cgroup),
        ("--coalesce-ms", "10"),
        ("--max-service-entries", "4096"),
        ("--max-backends", "1024"),
        ("--max-frontends", "1024"),
        ("--max-affinity", "1024"),
    ];
    let mut args: Vec<String> = source.iter().map(ToString::to_string).collect();
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag.to_owned(), value.to_owned()]);
        }
    }
    args.extend(extra.iter().map(ToString::to_string));
    args
}

/// A scratch node: cgroup, pin directory and a manifest file for agents.
pub struct Node {
    pub dir: TempDir,
    pub pins: PinDirGuard,
    pub cgroup: CgroupGuard,
}

impl Node {
    pub fn new(tag: &str) -> Result<Self> {
        crate::require_root();
        Ok(Self {
            cgroup: CgroupGuard::new(tag)?,
            pins: PinDirGuard::new(tag),
            dir: TempDir::new(tag)?,
        })
    }

    pub fn manifest(&self) -> PathBuf {
        self.dir.path().join("cluster.yaml")
    }

    pub fn write_manifest(&self, text: &str) -> Result<()> {
        let tmp = self.manifest().with_extension("tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.manifest())?;
        Ok(())
    }

    /// `lbctl agent` on this node with small capacities, plus `extra` flags (which replace the
    /// defaults of the same name).
    pub fn agent(&self, extra: &[&str]) -> Result<AgentProcess> {
        self.agent_with_env(extra, &[])
    }

    /// [`Node::agent`] with these environment variables set too.
    pub fn agent_with_env(&self, extra: &[&str], env: &[(&str, &OsStr)]) -> Result<AgentProcess> {
        let manifest = self.manifest().display().to_string();
        let args = agent_args(
            &["--manifests", &manifest],
            self.pins.path(),
            self.cgroup.path(),
            extra,
        );
        AgentProcess::start_with_env(&args, env)
    }

    /// The backends programmed for `vip:80/tcp` (None: not a frontend, or unreadable).
    pub fn programmed(&self, vip: &str) -> Option<Vec<String>> {
        let target = FrontendKey::new(format!("{vip}:80").parse().ok()?, Protocol::Tcp);
        match inspect::lookup(self.pins.path(), target).ok()? {
            inspect::Lookup::PassedThrough { .. } => None,
            inspect::Lookup::Refused { .. } => Some(vec![]),
            inspect::Lookup::Rewritten { frontend } => Some(frontend.backends),
        }
    }

    /// `lbctl status` as the library reads it.
    pub fn status(&self) -> inspect::Status {
        inspect::status(self.pins.path()).expect("lbctl status")
    }

    /// The program id behind each pinned link, in `PROGRAMS` order.
    pub fn program_ids(&self) -> Vec<u32> {
        program_ids(self.pins.path())
    }

    /// The capacity of one pinned map, as `lbctl status` shows it.
    pub fn capacity(&self, map: &str) -> u32 {
        self.status()
            .maps
            .iter()
            .find(|m| m.map == map)
            .map_or(0, |m| m.capacity)
    }
}

/// The program id behind each pinned link of `pin_dir`; panics when one is not attached.
pub fn program_ids(pin_dir: &Path) -> Vec<u32> {
    inspect::status(pin_dir)
        .expect("lbctl status")
        .links
        .iter()
        .map(|l| {
            l.program_id
                .unwrap_or_else(|| panic!("program {} is not attached", l.program))
        })
        .collect()
}

/// Waits until the agent logged `needle` (or exited); fails with its log.
pub fn wait_for_log(agent: &mut AgentProcess, needle: &str, timeout: Duration) -> Result<()> {
    if wait_until(timeout, || agent.log().contains(needle)) {
        Ok(())
    } else {
        bail!("agent never logged {needle:?}:\n{}", agent.log())
    }
}

/// Sends a mark to a loop probe and returns the names of `n` backends reached after it; any
/// failed connect (before or after the mark) fails the test.
pub fn reached_after_mark(probe: &mut Probe, n: usize) -> Result<Vec<String>> {
    probe.send("mark")?;
    let mut after = Vec::new();
    let mut seen = false;
    while after.len() < n {
        for o in probe.read(1)? {
            match o {
                Outcome::Mark => seen = true,
                Outcome::Failed(e) => bail!("a connect failed with errno {e}"),
                Outcome::Reached(name) if seen => after.push(name),
                Outcome::Reached(_) => {}
            }
        }
    }
    Ok(after)
}

/// Reads `n` outcomes of a loop probe; any failed connect fails the test.
pub fn reached(probe: &mut Probe, n: usize) -> Result<Vec<String>> {
    probe
        .read(n)?
        .into_iter()
        .filter(|o| *o != Outcome::Mark)
        .map(|o| match o {
            Outcome::Reached(name) => Ok(name),
            other => bail!("a connect failed: {other:?}"),
        })
        .collect()
}

pub use crate::ports::free_port;

/// `GET path` over plain HTTP/1.0 (no chunked body); the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    http_request(addr, path).map(|(_, body)| body)
}

/// `GET path` over plain HTTP/1.0 (no chunked body): the status code and the body.
pub fn http_request(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path} from {addr}: no end of the header in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path} from {addr}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}
