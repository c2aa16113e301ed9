//! Endpoint churn under load: the model behind the churn test and `cargo xtask soak`.
//!
//! 100 services, each with up to three endpoints taken from a pool of backend servers, change
//! continuously (endpoints added, removed, flipped ready / terminating / not serving). Each
//! change goes through the real policy engine and the real map writer, and the writer's
//! application window is recorded. Client processes in the attached cgroup connect without
//! pause and report each attempt with its start and end time. A connect is correct when it
//! reached a backend that was in the service's set at some instant during the connect, or was
//! refused while the set was empty; anything else is a violation.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lbctl::{
    datapath::Desired,
    engine::{self, NodeContext},
    model::Inventory,
};
use serde_json::json;

use crate::{backends::Backends, cgroup::CgroupGuard, pins::Scratch, probe::probe_binary};

pub const SERVICES: usize = 100;
const POOL: usize = 6;
const NODE: &str = "node-a";

/// One endpoint's condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Absent,
    Ready,
    /// Terminating and still serving: used only when nothing is ready.
    Draining,
    /// Terminating and no longer serving: never used.
    Gone,
}

/// Small deterministic PRNG (xorshift64*), so a failing run can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn vip(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 97, (i / 250) as u8, (i % 250 + 1) as u8], 80))
}

/// The cluster: for each service, the state of each pool member as its endpoint.
struct Cluster {
    states: Vec<[State; POOL]>,
    pool: Vec<SocketAddr>,
}

impl Cluster {
    fn inventory(&self) -> Result<Inventory> {
        let port = self.pool[0].port();
        let mut inv = Inventory::default();
        for (i, states) in self.states.iter().enumerate() {
            let name = format!("svc-{i}");
            let service: Service = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "churn"},
                "spec": {"clusterIP": vip(i).ip().to_string(), "clusterIPs": [vip(i).ip().to_string()],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": port}]}
            }))?;
            let endpoints: Vec<_> = states
                .iter()
                .zip(&self.pool)
                .filter(|(s, _)| **s != State::Absent)
                .map(|(s, addr)| {
                    let (ready, serving, terminating) = match s {
                        State::Ready => (true, true, false),
                        State::Draining => (false, true, true),
                        _ => (false, false, true),
                    };
                    json!({"addresses": [addr.ip().to_string()], "nodeName": NODE,
                           "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
                })
                .collect();
            let slice: EndpointSlice = serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-x"), "namespace": "churn",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                "endpoints": endpoints
            }))?;
            inv.services.push(Arc::new((&service).into()));
            inv.endpoint_slices.push(Arc::new((&slice).into()));
        }
        Ok(inv)
    }

    fn mutate(&mut self, rng: &mut Rng) {
        let svc = rng.below(self.states.len());
        let member = rng.below(POOL);
        self.states[svc][member] = match rng.below(4) {
            0 => State::Absent,
            1 => State::Ready,
            2 => State::Draining,
            _ => State::Gone,
        };
    }
}

/// The backend sets of one plan, by frontend.
type Sets = HashMap<SocketAddr, Vec<SocketAddr>>;

/// A desired state and when the writer applied it.
struct Version {
    applied_from: u128,
    applied_to: u128,
    sets: Arc<Sets>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub changes: u64,
    pub connects: u64,
    pub reached: u64,
    pub refused: u64,
    pub violations: u64,
}

/// A client process in the cgroup, connecting round-robin to every service.
struct Client {
    child: Child,
}

impl Client {
    fn start(cgroup: &CgroupGuard) -> Result<Self> {
        let mut cmd = Command::new(probe_binary());
        cmd.arg("timed")
            .args((0..SERVICES).map(|i| vip(i).to_string()));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting lb-probe")?;
        cgroup.add(child.id())?;
        use std::io::Write;
        writeln!(child.stdin.as_mut().context("stdin")?, "go")?;
        Ok(Self { child })
    }

    /// Stops the client and returns its attempts.
    fn finish(mut self) -> Result<Vec<String>> {
        self.child.stdin.take();
        let out = BufReader::new(self.child.stdout.take().context("stdout")?);
        let lines = out.lines().collect::<Result<Vec<_>, _>>()?;
        self.child.wait()?;
        Ok(lines)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn plan_sets(cluster: &Cluster) -> Result<(Desired, Sets)> {
    let plan = engine::plan(&cluster.inventory()?, &NodeContext::new(NODE));
    let sets = plan
        .frontends
        .iter()
        .map(|f| (SocketAddr::new(f.address, f.port), f.backends.to_vec()))
        .collect();
    Ok((Desired::from_plan(&plan), sets))
}

/// Checks every attempt against the versions; returns the violations found (as text).
fn check(
    lines: &[String],
    versions: &[Version],
    names: &HashMap<String, SocketAddr>,
    totals: &mut Totals,
) -> Result<Vec<String>> {
    let mut violations = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [start, end, addr, verdict, detail] = f[..] else {
            bail!("bad probe line {line:?}")
        };
        let (start, end): (u128, u128) = (start.parse()?, end.parse()?);
        let addr: SocketAddr = addr.parse()?;
        totals.connects += 1;
        // Versions whose visibility window [applied_from, next.applied_to] meets [start, end].
        let visible = versions.iter().enumerate().filter(|(k, v)| {
            let until = versions.get(k + 1).map_or(u128::MAX, |n| n.applied_to);
            v.applied_from <= end && until >= start
        });
        let ok = match verdict {
            "ok" => {
                totals.reached += 1;
                let Some(backend) = names.get(detail) else {
                    bail!("unknown backend {detail:?}")
                };
                visible
                    .into_iter()
                    .any(|(_, v)| v.sets.get(&addr).is_some_and(|s| s.contains(backend)))
            }
            _ if detail == "111" => {
                totals.refused += 1;
                visible
                    .into_iter()
                    .any(|(_, v)| v.sets.get(&addr).is_some_and(Vec::is_empty))
            }
            _ => false,
        };
        if !ok {
            violations.push(line.clone());
        }
    }
    totals.violations += violations.len() as u64;
    Ok(violations)
}

/// Runs churn for `duration` with `clients` client processes; `report` is called about every
/// second with the totals so far (for the soak). Returns the totals and the first violations.
pub fn run(
    duration: Duration,
    clients: usize,
    seed: u64,
    mut report: impl FnMut(&Totals),
) -> Result<(Totals, Vec<String>)> {
    let mut scratch = Scratch::new("churn")?;
    let names: Vec<String> = (0..POOL).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let backends = Backends::tcp_same_port(&refs)?;
    let by_name: HashMap<String, SocketAddr> = backends
        .all()
        .iter()
        .map(|b| (b.name.clone(), b.addr))
        .collect();
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster {
        states: vec![[State::Absent; POOL]; SERVICES],
        pool: backends.addrs(),
    };
    for _ in 0..SERVICES * 3 {
        cluster.mutate(&mut rng);
    }
    let mut totals = Totals::default();
    let mut violations = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        // One round: clients run while the cluster churns for about a second, then their
        // attempts are checked against the versions of that round.
        let round_end =
            Instant::now() + Duration::from_secs(1).min(duration.saturating_sub(started.elapsed()));
        let (desired, sets) = plan_sets(&cluster)?;
        let from = now_ns();
        scratch.datapath.apply(&desired)?;
        let mut versions = vec![Version {
            applied_from: from,
            applied_to: now_ns(),
            sets: Arc::new(sets),
        }];
        let running: Vec<Client> = (0..clients)
            .map(|_| Client::start(&scratch.cgroup))
            .collect::<Result<_>>()?;
        while Instant::now() < round_end {
            for _ in 0..1 + rng.below(5) {
                cluster.mutate(&mut rng);
            }
            let (desired, sets) = plan_sets(&cluster)?;
            let from = now_ns();
            let r = scratch.datapath.apply(&desired)?;
            if !r.errors.is_empty() {
                bail!("apply reported errors: {:?}", r.errors);
            }
            versions.push(Version {
                applied_from: from,
                applied_to: now_ns(),
                sets: Arc::new(sets),
            });
            totals.changes += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        for client in running {
            let lines = client.finish()?;
            let found = check(&lines, &versions, &by_name, &mut totals)?;
            violations.extend(found.into_iter().take(20));
        }
        report(&totals);
    }
    Ok((totals, violations))
}
