//! Faults: SIGKILL in the middle of a large apply, maps that are full, and who may touch the
//! pins. Real kernel, real agent processes.
use std::{fs, net::SocketAddr, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use lbctl::{datapath::FrontendKey, inspect, plan::Protocol};
use testkit::{
    TempDir,
    agent::{AgentProcess, wait_until},
    backends::Backends,
    cgroup::CgroupGuard,
    pins::{PinDirGuard, Scratch},
    probe::{Outcome, Probe},
};

const NODE: &str = "node-a";

/// `count` services 10.98.x.y:80, each with the given endpoints (all on this node), plus the
/// service `anchor` (10.96.0.99:80) whose endpoints never change.
fn many_services(
    count: usize,
    endpoints: impl Fn(usize) -> Vec<SocketAddr>,
    anchor: &[SocketAddr],
) -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.0.2.1}]}\n",
    );
    let mut push = |name: &str, ip: String, eps: &[SocketAddr]| {
        let port = eps.first().map_or(80, |e| e.port());
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: f}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, protocol: TCP, targetPort: {port}}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-x, namespace: f, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n"
        ));
        for e in eps {
            out.push_str(&format!(
                "- {{addresses: [\"{}\"], nodeName: {NODE}}}\n",
                e.ip()
            ));
        }
    };
    push("anchor", "10.96.0.99".into(), anchor);
    for i in 0..count {
        push(
            &format!("s{i}"),
            format!("10.98.{}.{}", i / 250, i % 250 + 1),
            &endpoints(i),
        );
    }
    out
}

fn agent_args(
    manifest: &Path,
    pins: &PinDirGuard,
    cgroup: &CgroupGuard,
    capacity: (u32, u32),
) -> Vec<String> {
    [
        "--node",
        NODE,
        "--manifests",
        &manifest.display().to_string(),
        "--pin-dir",
        &pins.path().display().to_string(),
        "--cgroup",
        &cgroup.path().display().to_string(),
        "--coalesce-ms",
        "1",
        "--max-service-entries",
        &capacity.0.to_string(),
        "--max-backends",
        &capacity.1.to_string(),
        "--max-frontends",
        "65536",
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

/// (masters + backend slots, backends) the maps hold; (0, 0) until the agent has installed the
/// datapath.
fn fill(pins: &PinDirGuard) -> (usize, usize) {
    let Ok(status) = inspect::status(pins.path()) else {
        return (0, 0);
    };
    let entries = |map: &str| {
        status
            .maps
            .iter()
            .find(|m| m.map == map)
            .map_or(0, |m| m.entries)
    };
    (
        entries(lb_common::SERVICES_MAP) + entries(lb_common::SLOTS_MAP),
        entries(lb_common::BACKENDS_MAP),
    )
}

fn ep(i: usize, generation: usize) -> Vec<SocketAddr> {
    // Two endpoints per service, different per generation; never connected to.
    (0..2)
        .map(|k| {
            SocketAddr::from((
                [10, 244, (generation * 2 + k) as u8, (i % 250) as u8 + 1],
                8080,
            ))
        })
        .collect()
}

/// SIGKILL the agent at several moments of a large change (3,000 services switching all their
/// backends), restart it each time: it converges to exactly the desired maps (no stale or
/// duplicate entries) and a client of a service that had backends throughout never fails.
#[test]
fn sigkill_during_a_large_apply_then_restart_converges_without_failed_connects() {
    const N: usize = 3000;
    let cgroup = CgroupGuard::new("kill-apply").unwrap();
    let pins = PinDirGuard::new("kill-apply");
    let dir = TempDir::new("kill-apply").unwrap();
    let manifest = dir.path().join("cluster.yaml");
    let anchor = Backends::tcp_same_port(&["a0", "a1"]).unwrap();
    let args = agent_args(&manifest, &pins, &cgroup, (65536, 65536));
    fs::write(&manifest, many_services(N, |i| ep(i, 0), &anchor.addrs())).unwrap();
    let mut agent = AgentProcess::start(&args).unwrap();
    // Every frontend has a master and a range of two slots, the anchor too (stray ranges of a
    // killed apply are cleared by the next agent's first apply); backends are shared between
    // services (the same pod addresses recur), each stored once.
    let distinct = |generation: usize| {
        let all: std::collections::BTreeSet<SocketAddr> =
            (0..N).flat_map(|i| ep(i, generation)).collect();
        all.len() + 2
    };
    let want = ((N + 1) * 3, distinct(0));
    assert!(want.1 > 100);
    assert!(
        wait_until(Duration::from_secs(30), || fill(&pins) == want),
        "{:?}",
        fill(&pins)
    );

    let mut probe = Probe::spawn(Some(&cgroup), &["loop", "10.96.0.99:80"]).unwrap();
    let mut partial_seen = 0;
    for round in 0..4 {
        let generation = round + 1;
        let tmp = manifest.with_extension("tmp");
        fs::write(
            &tmp,
            many_services(N, |i| ep(i, generation), &anchor.addrs()),
        )
        .unwrap();
        fs::rename(&tmp, &manifest).unwrap();
        // Kill as soon as the apply is seen under way (the new backends are written first).
        wait_until(Duration::from_secs(10), || fill(&pins).1 > want.1);
        agent.kill9();
        let after_kill = fill(&pins);
        if after_kill != want {
            partial_seen += 1;
        }
        agent = AgentProcess::start(&args).unwrap();
        let converged = wait_until(Duration::from_secs(30), || {
            fill(&pins) == want
                && {
                    let t = FrontendKey::new("10.98.0.1:80".parse().unwrap(), Protocol::Tcp);
                    matches!(inspect::lookup(pins.path(), t), Ok(inspect::Lookup::Rewritten { frontend })
                    if frontend.backends == ep(0, generation).iter().map(ToString::to_string).collect::<Vec<_>>())
                }
        });
        assert!(
            converged,
            "round {round}: not converged: fill {:?}, want {want:?}\n{}",
            fill(&pins),
            agent.log()
        );
    }
    eprintln!("kills that landed mid-apply: {partial_seen} of 4");
    let outcomes = probe.finish().unwrap();
    assert!(
        outcomes.len() > 100,
        "the client barely ran: {}",
        outcomes.len()
    );
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Failed(_)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} connects failed across kills and restarts",
        failed.len()
    );
}

/// A slot table too small for everything: the frontends that do not fit are reported, the
/// others keep working.
#[test]
fn full_maps_are_reported_and_the_rest_keeps_working() {
    let cgroup = CgroupGuard::new("full").unwrap();
    let pins = PinDirGuard::new("full");
    let dir = TempDir::new("full").unwrap();
    let manifest = dir.path().join("cluster.yaml");
    let anchor = Backends::tcp_same_port(&["a0"]).unwrap();
    // 40 services × 2 slots = 80 slots + the anchor's 1; room for 64.
    fs::write(&manifest, many_services(40, |i| ep(i, 0), &anchor.addrs())).unwrap();
    let agent = AgentProcess::start(&agent_args(&manifest, &pins, &cgroup, (64, 1024))).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("not programmed")),
        "{}",
        agent.log()
    );
    let (entries, _) = fill(&pins);
    let slots = inspect::status(pins.path())
        .unwrap()
        .maps
        .iter()
        .find(|m| m.map == lb_common::SLOTS_MAP)
        .map(|m| (m.entries, m.capacity))
        .unwrap();
    assert!(slots.0 <= 64 && slots.0 > 0 && slots.1 == 64, "{slots:?}");
    // The anchor (lowest address, written first) works.
    let out = Probe::run(Some(&cgroup), &["tcp", "10.96.0.99:80", "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Reached("a0".into()); 3]);
    // Every frontend in the maps is whole: a master with all its slots, no stray slots.
    let views = inspect::services(pins.path()).unwrap();
    assert!(views.iter().all(|v| v.backends.len()
        == if v.frontend.starts_with("10.96.0.99") {
            1
        } else {
            2
        }));
    assert_eq!(
        entries,
        views.iter().map(|v| 1 + v.backends.len()).sum::<usize>(),
        "orphaned slots left behind"
    );
}

#[test]
fn pins_are_root_only() {
    let s = Scratch::new("perms").unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(s.pins.path()), 0o700);
    assert_eq!(mode(&s.pins.path().join("links")), 0o700);
    for entry in fs::read_dir(s.pins.path())
        .unwrap()
        .chain(fs::read_dir(s.pins.path().join("links")).unwrap())
    {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

/// The inspection commands open the pinned maps read-only: they read everything, and a write
/// through their descriptors is refused by the kernel.
#[test]
fn inspection_opens_the_maps_read_only() {
    use lb_common::{ServiceKey, ServiceValue};
    use lbctl::datapath::{Desired, Maps};

    let mut s = Scratch::new("readonly").unwrap();
    s.datapath
        .apply(Desired::default().insert(
            "10.96.0.70:80".parse().unwrap(),
            Protocol::Tcp,
            vec!["127.0.0.1:8080".parse().unwrap()],
        ))
        .unwrap();
    let views = inspect::services(s.pins.path()).unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].backends, vec!["127.0.0.1:8080".to_owned()]);

    let mut ro = Maps::open_read_only(s.pins.path()).unwrap();
    assert_eq!(ro.services.keys().count(), 1, "the master readable");
    assert_eq!(ro.slot_entries().unwrap().len(), 1, "its slot readable");
    let key = ServiceKey {
        address: [0; 16],
        port: 1,
        proto: 6,
        scope: 0,
    };
    let err = ro
        .services
        .insert(key, ServiceValue::default(), 0)
        .unwrap_err();
    assert!(
        err.to_string().contains("Operation not permitted")
            || format!("{err:?}").contains("PermissionDenied"),
        "{err:?}"
    );
    // Read-write opening (the agent's) can write.
    let mut rw = Maps::open(s.pins.path()).unwrap();
    rw.services.insert(key, ServiceValue::default(), 0).unwrap();
    rw.services.remove(&key).unwrap();
}

/// Maps pinned by an lbctl of another layout are refused with a message that says what to do,
/// and nothing is changed.
#[test]
fn pinned_maps_of_another_layout_are_refused() {
    use lbctl::datapath::{Datapath, Maps};

    let s = Scratch::new("layout").unwrap();
    let mut maps = Maps::open(s.pins.path()).unwrap();
    maps.meta
        .set(
            lb_common::meta::LAYOUT_VERSION,
            lb_common::LAYOUT_VERSION + 1,
            0,
        )
        .unwrap();
    let err = Datapath::install(&s.config())
        .err()
        .expect("an incompatible layout must be refused")
        .to_string();
    assert!(
        err.contains("layout version") && err.contains("lbctl uninstall"),
        "{err}"
    );
    let err = inspect::status(s.pins.path()).unwrap_err().to_string();
    assert!(err.contains("lbctl uninstall"), "{err}");
    assert_eq!(
        maps.meta.get(&lb_common::meta::LAYOUT_VERSION, 0).unwrap(),
        lb_common::LAYOUT_VERSION + 1
    );
}
