//! The install's pod spec under a real container runtime: Debian's podman 4.3 with runc runs the
//! pod template of `manifests/install/daemonset.yaml` with `podman kube play`, as a kubelet
//! would run it on a node, then the removal path of docs/operations.md with
//! `manifests/uninstall/`.
//!
//! The pod spec is read from the manifests, never copied: security contexts, capabilities,
//! seccomp and AppArmor settings, volumes, probes, init containers and resources run as written.
//! Only what has no cluster here is substituted (see `testkit::podman::pod_from_daemonset`): the
//! image (built from the release `lbctl` with the Dockerfile's own recipe, no registry), the
//! object source (`--manifests` on a read-only volume), the node name, a scratch cgroup in place
//! of the host's cgroup2 root, and a scratch directory of the host's bpffs in place of
//! `/sys/fs/bpf`.
//!
//! It proves: the agent runs with exactly the capabilities, seccomp mode, no-new-privileges and
//! read-only root the manifest asks for; it becomes ready with no restart, within its memory
//! request (which its maps are charged to), and `lbctl status` runs in its pod (as
//! docs/operations.md says); a process in the scratch cgroup reaches a Local service's local
//! endpoint, and a Local service without one is refused with ECONNREFUSED; `podman kube down`
//! (a rolling restart's first half) leaves the datapath serving; a second `kube play` adopts the
//! same links without one failed connect of a client connecting in a loop throughout;
//! `kubectl delete -k manifests/install` then the uninstall DaemonSet leaves no pin and nothing
//! attached to the cgroup.
//!
//! What podman 4.3 cannot do as a kubelet does, and how the test makes up for it, is listed at
//! `testkit::podman::pod_from_daemonset`. It takes about 35 s, 21 of them in the uninstall pod's
//! `kube play` (podman restarts the init container until its 20 s wait gives up).
use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use lbctl::inspect;
use testkit::{
    TempDir,
    agent::wait_until,
    backends::Backends,
    cgroup::CgroupGuard,
    lifecycle::{Endpoint, http_request, node_yaml, service_yaml},
    podman::{
        BpffsDir, Podman, Substitutions, image_from_dockerfile, memory_usage, pod_from_daemonset,
        quantity_bytes, read_documents, read_object, write_play_file,
    },
    probe::{Outcome, Probe},
};

const NODE: &str = "node-a";
const VIP_LOCAL: &str = "10.96.201.10";
const VIP_NONE: &str = "10.96.201.11";
const ECONNREFUSED: i32 = 111;
/// Where the objects directory is mounted in the agent container.
const OBJECTS_MOUNT: &str = "/etc/lbctl-test";

/// The release `lbctl` (`cargo xtask test` builds it before the tests).
fn release_lbctl() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/runtime-HASH -> target/release/lbctl
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("locating target/")?;
    let lbctl = target.join("release/lbctl");
    if !lbctl.is_file() {
        bail!(
            "{} is missing: the real-runtime test runs the release build (`cargo build --release -p lbctl`; `cargo xtask test` builds it)",
            lbctl.display()
        );
    }
    Ok(lbctl)
}

/// Two Local services: one with an endpoint on this node (and one elsewhere), one with
/// endpoints only elsewhere.
fn objects_yaml(backends: &Backends) -> String {
    let ep = |name: &str, node| Endpoint::ready(backends.addr(name), node);
    [
        node_yaml(NODE, "192.0.2.1"),
        node_yaml("node-b", "192.0.2.2"),
        service_yaml(
            "default",
            "with-local",
            VIP_LOCAL,
            "Local",
            &[ep("local-0", NODE), ep("remote-0", "node-b")],
            &[],
        ),
        service_yaml(
            "default",
            "without-local",
            VIP_NONE,
            "Local",
            &[ep("remote-1", "node-b")],
            &[],
        ),
    ]
    .concat()
}

/// The HTTP status of `GET path` on the agent's metrics port (host network).
fn http_status(port: u16, path: &str) -> Option<u16> {
    http_request(SocketAddr::from(([127, 0, 0, 1], port)), path)
        .ok()
        .map(|(status, _)| status)
}

/// The port of `--metrics-addr HOST:PORT` in the container's args.
fn metrics_port(ds: &DaemonSet) -> Result<u16> {
    let args = agent_container(ds)?.args.unwrap_or_default();
    let addr = args
        .iter()
        .position(|a| a == "--metrics-addr")
        .and_then(|i| args.get(i + 1))
        .context("no --metrics-addr in the agent's args")?;
    Ok(addr
        .parse::<SocketAddr>()
        .with_context(|| format!("--metrics-addr {addr}"))?
        .port())
}

fn agent_container(ds: &DaemonSet) -> Result<k8s_openapi::api::core::v1::Container> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == "agent"))
        .cloned()
        .context("no container `agent` in the DaemonSet")
}

/// What `bpftool cgroup show` lists as attached to `cgroup` (empty: nothing).
fn attached(cgroup: &Path) -> Result<String> {
    let out = Command::new("bpftool")
        .arg("cgroup")
        .arg("show")
        .arg(cgroup)
        .output()
        .context("running bpftool (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "bpftool cgroup show {}: {}",
            cgroup.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The bit of a capability in /proc/PID/status's masks (linux/capability.h).
fn capability_bit(name: &str) -> Result<u32> {
    Ok(match name {
        "CHOWN" => 0,
        "DAC_OVERRIDE" => 1,
        "FOWNER" => 3,
        "KILL" => 5,
        "SETGID" => 6,
        "SETUID" => 7,
        "NET_BIND_SERVICE" => 10,
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "IPC_LOCK" => 14,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        _ => bail!("capability {name}: add its bit to this table"),
    })
}

/// The running process is what the container's securityContext asks for: exactly its
/// capabilities (all of them dropped, then the added ones), its seccomp mode (`Unconfined`: none,
/// otherwise a filter), no new privileges, a read-only root filesystem.
fn runs_as_written(pid: u32, c: &k8s_openapi::api::core::v1::Container) -> Result<()> {
    let sc = c.security_context.clone().context("no securityContext")?;
    let caps = sc.capabilities.clone().unwrap_or_default();
    if caps.drop.as_deref() != Some(&["ALL".to_owned()][..]) {
        bail!("the check assumes `drop: [ALL]`");
    }
    let mut expected: u64 = 0;
    for name in caps.add.iter().flatten() {
        expected |= 1 << capability_bit(name)?;
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    for mask in ["CapEff", "CapPrm", "CapBnd"] {
        let value = u64::from_str_radix(&field(mask)?, 16)?;
        assert_eq!(
            value, expected,
            "{mask} of the agent is {value:#x}, the manifest grants {expected:#x}"
        );
    }
    let unconfined = sc
        .seccomp_profile
        .as_ref()
        .is_some_and(|p| p.type_ == "Unconfined");
    // 0: no seccomp, 2: a filter.
    let mode = if unconfined { "0" } else { "2" };
    assert_eq!(
        field("Seccomp")?,
        mode,
        "the agent's seccomp mode is not what the manifest asks for"
    );
    if sc.allow_privilege_escalation == Some(false) {
        assert_eq!(field("NoNewPrivs")?, "1");
    }
    if sc.read_only_root_filesystem == Some(true) {
        let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
        let root = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/"))
            .context("no root mount")?;
        let options = root.split(' ').nth(5).unwrap_or_default();
        assert!(
            options.split(',').any(|o| o == "ro"),
            "the agent's root filesystem is not read-only: {root}"
        );
    }
    Ok(())
}

/// The memory the pinned maps take, as `bpftool map show` reports it (`bytes_memlock`).
fn maps_memlock(pin_dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(pin_dir)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&path)
            .output()
            .context("running bpftool")?;
        let info: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("bpftool map show pinned {}", path.display()))?;
        total += info["bytes_memlock"]
            .as_u64()
            .with_context(|| format!("no bytes_memlock for {}: {info}", path.display()))?;
    }
    Ok(total)
}

/// The link ids of the pinned programs (all must be pinned).
fn link_ids(pin_dir: &Path) -> Result<Vec<u32>> {
    inspect::status(pin_dir)?
        .links
        .iter()
        .map(|l| {
            l.link_id
                .with_context(|| format!("program {} is not attached", l.program))
        })
        .collect()
}

/// One pod played from a file, taken down on drop (also when the test fails).
struct Played<'a> {
    podman: &'a Podman,
    file: PathBuf,
    pod: String,
}

impl<'a> Played<'a> {
    /// `podman kube play [OPTIONS] FILE`.
    fn play(podman: &'a Podman, options: &[&str], file: &Path, pod: &str) -> Result<Self> {
        let started = Instant::now();
        let file_arg = file.display().to_string();
        let mut args = vec!["kube", "play"];
        args.extend_from_slice(options);
        args.push(&file_arg);
        let out = podman.run(&args);
        let played = Self {
            podman,
            file: file.to_path_buf(),
            pod: pod.to_owned(),
        };
        out?;
        eprintln!(
            "kube play {}: {:.1} s",
            file.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(played)
    }

    fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.pod)
    }

    fn down(mut self) -> Result<()> {
        let file = std::mem::take(&mut self.file);
        self.podman
            .run(&["kube", "down", &file.display().to_string()])?;
        Ok(())
    }
}

impl Drop for Played<'_> {
    fn drop(&mut self) {
        if self.file.as_os_str().is_empty() {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "--- logs of pod {} ---\n{}",
                self.pod,
                self.podman.logs(&self.container("agent"))
            );
        }
        let _ = self
            .podman
            .run(&["kube", "down", &self.file.display().to_string()]);
    }
}

/// Waits for `/readyz` to answer 200, with the agent container running and never restarted.
fn wait_ready(played: &Played, port: u16) -> Result<()> {
    let agent = played.container("agent");
    let started = Instant::now();
    let mut polls = 0u32;
    let mut restarted = false;
    let ready = wait_until(Duration::from_secs(60), || {
        polls += 1;
        // A crash loop shows as restarts: no need to wait the full minute for it.
        if polls.is_multiple_of(50) {
            restarted = played
                .podman
                .inspect(&agent, "{{.RestartCount}}")
                .is_ok_and(|n| n != "0");
        }
        restarted || http_status(port, "/readyz") == Some(200)
    });
    if !ready || restarted {
        bail!(
            "the agent did not become ready (restarted: {restarted}); its log:\n{}",
            played.podman.logs(&agent)
        );
    }
    eprintln!(
        "agent ready {:.1} s after kube play returned",
        started.elapsed().as_secs_f64()
    );
    let state = played
        .podman
        .inspect(&agent, "{{.State.Status}} {{.RestartCount}}")?;
    if state != "running 0" {
        bail!(
            "the agent container is `{state}` (status, restarts), expected running with no restart; its log:\n{}",
            played.podman.logs(&agent)
        );
    }
    Ok(())
}

/// A client connecting to a service in a loop from the scratch cgroup, its outcomes read as
/// they come (so it never waits on a full pipe while the test waits on podman).
struct LoopClient {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<thread::JoinHandle<Result<()>>>,
}

#[derive(Default)]
struct Seen {
    reached: usize,
    unexpected: Vec<Outcome>,
}

impl LoopClient {
    fn start(cgroup: &CgroupGuard, addr: &str, expected: &str) -> Result<Self> {
        let mut probe = Probe::spawn(Some(cgroup), &["loop", addr])?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let expected = Outcome::Reached(expected.to_owned());
        let thread = thread::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            move || {
                let record = |outcomes: Vec<Outcome>| {
                    let mut seen = seen.lock().expect("lock");
                    for o in outcomes {
                        if o == expected {
                            seen.reached += 1;
                        } else {
                            seen.unexpected.push(o);
                        }
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    record(probe.read(1)?);
                }
                record(probe.finish()?);
                Ok(())
            }
        });
        Ok(Self {
            stop,
            seen,
            thread: Some(thread),
        })
    }

    fn reached(&self) -> usize {
        self.seen.lock().expect("lock").reached
    }

    /// Waits until `n` more connects reached the expected backend.
    fn wait_for(&self, n: usize) -> bool {
        let target = self.reached() + n;
        wait_until(Duration::from_secs(20), || self.reached() >= target)
    }

    /// Stops the client; returns the connects that reached the backend and every other outcome.
    fn stop(mut self) -> Result<(usize, Vec<Outcome>)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("client thread")?;
        }
        let seen = self.seen.lock().expect("lock");
        Ok((seen.reached, seen.unexpected.clone()))
    }
}

impl Drop for LoopClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn the_install_runs_under_podman_and_the_uninstall_leaves_nothing() -> Result<()> {
    testkit::require_root();
    let test_started = Instant::now();
    let repo = testkit::repo_root();
    let install_ds: DaemonSet =
        read_object(&repo.join("manifests/install/daemonset.yaml"), "DaemonSet")?;
    let uninstall_ds: DaemonSet = read_object(
        &repo.join("manifests/uninstall/daemonset.yaml"),
        "DaemonSet",
    )?;
    let configmaps: Vec<serde_json::Value> =
        read_documents(&repo.join("manifests/install/configmap.yaml"))?;
    let port = metrics_port(&install_ds)?;
    TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("the agent's metrics port {port} (host network) is in use"))?;

    // Declared before podman so that they go after it: the pods stop before the pins and the
    // cgroup are removed.
    let cgroup = CgroupGuard::new("rt-node")?;
    let bpffs = BpffsDir::new("rt-bpffs")?;
    let backends = Backends::tcp_same_port(&["local-0", "remote-0", "remote-1"])?;
    let objects = TempDir::new("rt-objects")?;
    fs::write(objects.path().join("objects.yaml"), objects_yaml(&backends))?;
    let podman = Podman::new()?;

    let image = format!("localhost/{}:test", testkit::unique_name("image"));
    let started = Instant::now();
    image_from_dockerfile(&podman, &repo, &release_lbctl()?, &image)?;
    eprintln!("image built in {:.1} s", started.elapsed().as_secs_f64());

    let install_pod = testkit::unique_name("agent");
    let install = Substitutions {
        pod_name: install_pod.clone(),
        image_name: "lbctl",
        image: &image,
        node_name: NODE,
        host_paths: BTreeMap::from([
            ("/sys/fs/bpf".to_owned(), bpffs.path().to_path_buf()),
            ("/sys/fs/cgroup".to_owned(), cgroup.path().to_path_buf()),
        ]),
        extra_args: vec![
            "--manifests".into(),
            format!("{OBJECTS_MOUNT}/objects.yaml"),
        ],
        extra_args_container: "agent",
        extra_volume: Some((objects.path().to_path_buf(), OBJECTS_MOUNT.into())),
    };
    let pod = pod_from_daemonset(&install_ds, &install)?;
    let install_file = podman.scratch("install.yaml");
    let mut play_objects = configmaps;
    play_objects.push(serde_json::to_value(&pod)?);
    write_play_file(&install_file, &play_objects)?;

    // 1. The agent starts, becomes ready with no restart, and serves the scratch cgroup.
    let first = Played::play(&podman, &[], &install_file, &install_pod)?;
    wait_ready(&first, port)?;
    let pin_dir = bpffs.pin_dir();
    let links = link_ids(&pin_dir)?;
    let pid: u32 = podman
        .inspect(&first.container("agent"), "{{.State.Pid}}")?
        .parse()?;
    runs_as_written(pid, &agent_container(&install_ds)?)?;
    // Socket termination in the host network namespace needs nothing beyond the manifest's
    // capabilities (docs/operations.md): the agent loaded its socket iterators.
    let (_, scraped) = http_request(SocketAddr::from(([127, 0, 0, 1], port)), "/metrics")?;
    assert!(
        scraped
            .lines()
            .any(|l| l == "lbctl_socket_termination_available 1"),
        "socket termination is unavailable under the manifest's capabilities:\n{}",
        podman.logs(&first.container("agent"))
    );
    // What docs/operations.md tells operators to run in the agent's pod works in this image.
    let status = podman.run(&["exec", &first.container("agent"), "lbctl", "status"])?;
    assert!(
        status.contains("lb_connect4"),
        "`lbctl status` in the pod does not show the programs:\n{status}"
    );
    assert!(
        !attached(cgroup.path())?.is_empty(),
        "bpftool shows nothing attached to the scratch cgroup"
    );

    // Memory: the maps are charged to the memory cgroup of the process that creates them, the
    // agent's container. Its whole usage must fit the request the manifest makes.
    let (usage, file) = memory_usage(pid)?;
    let request = agent_container(&install_ds)?
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("memory").cloned())
        .context("the agent has no memory request")?;
    let request_bytes = quantity_bytes(&request.0)?;
    eprintln!(
        "agent memory cgroup: {:.1} MiB in use ({}), request {}",
        usage as f64 / f64::from(1 << 20),
        file.display(),
        request.0
    );
    // The measurement must include the maps, or it proves nothing.
    let maps = maps_memlock(&pin_dir)?;
    eprintln!(
        "pinned maps: {:.1} MiB memlock",
        maps as f64 / f64::from(1 << 20)
    );
    assert!(
        usage >= maps * 3 / 4,
        "the agent's memory cgroup ({usage} bytes) does not hold its maps ({maps} bytes memlock)"
    );
    assert!(
        usage <= request_bytes,
        "the agent uses {usage} bytes (maps included), more than its memory request {}",
        request.0
    );

    let outcomes = Probe::run(Some(&cgroup), &["tcp", &format!("{VIP_LOCAL}:80"), "20"])?;
    assert_eq!(
        outcomes,
        vec![Outcome::Reached("local-0".into()); 20],
        "a Local service must reach this node's endpoint only"
    );
    let outcomes = Probe::run(Some(&cgroup), &["tcp", &format!("{VIP_NONE}:80"), "3"])?;
    assert_eq!(
        outcomes,
        vec![Outcome::Failed(ECONNREFUSED); 3],
        "a Local service without a local endpoint must refuse"
    );

    // 2. A rolling restart: the pod goes, the datapath keeps serving a client connecting in a
    //    loop, the next pod adopts the same links; not one connect fails throughout.
    let client = LoopClient::start(&cgroup, &format!("{VIP_LOCAL}:80"), "local-0")?;
    assert!(client.wait_for(50), "the client loop does not connect");
    first.down()?;
    assert_eq!(
        http_status(port, "/healthz"),
        None,
        "the agent still answers after kube down"
    );
    assert!(
        client.wait_for(200),
        "the client loop stalled while no agent ran"
    );
    let second = Played::play(&podman, &[], &install_file, &install_pod)?;
    wait_ready(&second, port)?;
    assert!(
        client.wait_for(200),
        "the client loop stalled after the restart"
    );
    let (connects, unexpected) = client.stop()?;
    assert_eq!(
        unexpected,
        Vec::<Outcome>::new(),
        "connects that failed or went elsewhere across the restart ({connects} reached local-0)"
    );
    eprintln!("{connects} connects across kube down and kube play, none failed");
    assert_eq!(
        link_ids(&pin_dir)?,
        links,
        "the second agent must adopt the pinned links, not replace them"
    );

    // 3. Removal as docs/operations.md says: delete the install (the datapath stays, frozen),
    //    then the uninstall DaemonSet.
    second.down()?;
    assert_eq!(link_ids(&pin_dir)?, links, "deleting the install detached");
    let outcomes = Probe::run(Some(&cgroup), &["tcp", &format!("{VIP_LOCAL}:80"), "3"])?;
    assert_eq!(outcomes, vec![Outcome::Reached("local-0".into()); 3]);

    let uninstall_pod = testkit::unique_name("uninstall");
    let uninstall = Substitutions {
        pod_name: uninstall_pod.clone(),
        image_name: "lbctl",
        image: &image,
        node_name: NODE,
        host_paths: BTreeMap::from([("/sys/fs/bpf".to_owned(), bpffs.path().to_path_buf())]),
        extra_args: Vec::new(),
        extra_args_container: "",
        extra_volume: None,
    };
    let uninstall_file = podman.scratch("uninstall.yaml");
    write_play_file(
        &uninstall_file,
        &[serde_json::to_value(pod_from_daemonset(
            &uninstall_ds,
            &uninstall,
        )?)?],
    )?;
    // No pod network here (no CNI plugins): the uninstall pod needs none.
    let removal = Played::play(
        &podman,
        &["--network", "none"],
        &uninstall_file,
        &uninstall_pod,
    )?;
    let done = removal.container("done");
    let rolled_out = wait_until(Duration::from_secs(60), || {
        podman
            .inspect(&done, "{{.State.Status}}")
            .is_ok_and(|s| s == "running")
    });
    assert!(
        rolled_out,
        "the uninstall pod's container did not start; uninstall log:\n{}",
        podman.logs(&removal.container("uninstall"))
    );
    assert_eq!(
        bpffs.contents(),
        Vec::<PathBuf>::new(),
        "pins left after the uninstall DaemonSet ran; its log:\n{}",
        podman.logs(&removal.container("uninstall"))
    );
    assert_eq!(
        attached(cgroup.path())?,
        "",
        "programs still attached to the cgroup after the uninstall DaemonSet ran"
    );
    removal.down()?;
    eprintln!(
        "real-runtime test: {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
    Ok(())
}
