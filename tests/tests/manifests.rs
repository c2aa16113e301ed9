//! The cluster install (`manifests/install/`), the example workloads and the image build, read
//! with the Kubernetes API types: every object must deserialize *without losing a field* (a
//! typo such as `readOnlyRootFilesytem` would otherwise be dropped silently), and the security
//! properties the docs promise must hold. The last test runs the real agent with exactly the
//! capabilities the DaemonSet grants.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{ConfigMap, Container, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use lbctl::{datapath::FrontendKey, inspect, plan::Protocol};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use testkit::{cgroup::CgroupGuard, pins::PinDirGuard, topology::sibling_binary};

/// The capabilities the agent needs, no more.
const AGENT_CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];
const NAMESPACE: &str = "kube-system";

fn repo() -> PathBuf {
    testkit::repo_root()
}

fn install_dir() -> PathBuf {
    repo().join("manifests/install")
}

/// Every YAML document of a file.
fn documents(path: &Path) -> Vec<Value> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
    docs.into_iter().filter(|v| !v.is_null()).collect()
}

fn kind(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or_default()
}

/// Deserializes `doc` as `T` and checks that serializing it again gives back the same
/// document: no unknown or misspelt field was dropped on the way.
fn strict<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid {}: {e}", kind(doc)));
    let again = serde_json::to_value(&typed).expect("serializable");
    assert_eq!(
        &again,
        doc,
        "{origin}: {} has fields the Kubernetes API does not know (they were dropped)",
        kind(doc)
    );
    typed
}

/// The one object of kind `K` in the install directory.
fn install_object<T: DeserializeOwned + Serialize>(kind_name: &str) -> T {
    let mut found = Vec::new();
    for entry in fs::read_dir(install_dir()).expect("manifests/install") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yaml")
            && path.file_name().is_some_and(|n| n != "kustomization.yaml")
        {
            for doc in documents(&path) {
                if kind(&doc) == kind_name {
                    found.push(strict::<T>(&doc, &path.display().to_string()));
                }
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind_name} in manifests/install"
    );
    found.remove(0)
}

fn daemonset() -> DaemonSet {
    install_object("DaemonSet")
}

fn agent_container(ds: &DaemonSet) -> Container {
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.containers.len(), 1, "one container: the agent");
    pod.containers[0].clone()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn kustomization_lists_every_install_manifest() {
    let kustomization = &documents(&install_dir().join("kustomization.yaml"))[0];
    assert_eq!(kustomization["namespace"].as_str(), Some(NAMESPACE));
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    let on_disk: BTreeSet<String> = fs::read_dir(install_dir())
        .expect("manifests/install")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, on_disk);
    let images = kustomization["images"].as_array().expect("images");
    assert_eq!(
        images[0]["name"].as_str(),
        agent_container(&daemonset()).image.as_deref(),
        "the kustomization sets the agent's image"
    );
}

#[test]
fn rbac_is_read_only_on_services_endpointslices_and_nodes() {
    let role: ClusterRole = install_object("ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        let verbs: BTreeSet<String> = rule.verbs.iter().cloned().collect();
        assert_eq!(verbs, set(&["get", "list", "watch"]), "verbs of {rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                granted.insert(format!("{resource}.{group}"));
            }
        }
    }
    assert_eq!(
        granted,
        set(&["services.", "nodes.", "endpointslices.discovery.k8s.io"])
    );
    assert!(role.aggregation_rule.is_none());

    let account: ServiceAccount = install_object("ServiceAccount");
    let binding: ClusterRoleBinding = install_object("ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(account.metadata.namespace.as_deref(), Some(NAMESPACE));

    let pod = daemonset().spec.expect("spec").template.spec.expect("pod");
    assert_eq!(pod.service_account_name, account.metadata.name);
}

#[test]
fn agent_is_not_privileged_and_adds_only_the_capabilities_it_needs() {
    let ds = daemonset();
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_ne!(pod.host_pid, Some(true), "hostPID is not needed");
    assert_ne!(pod.host_ipc, Some(true));
    assert!(pod.init_containers.is_none());

    let sc = agent_container(&ds)
        .security_context
        .expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    let added: BTreeSet<String> = caps.add.unwrap_or_default().into_iter().collect();
    assert_eq!(added, set(&AGENT_CAPABILITIES));
    // Unconfined, with the reason in the manifest: containers/common's default profile (CRI-O,
    // podman) allows bpf(2) only with CAP_SYS_ADMIN. tests/tests/runtime.rs runs it.
    assert_eq!(
        sc.seccomp_profile.map(|p| p.type_),
        Some("Unconfined".into())
    );
    // AppArmor through the annotation, which Kubernetes 1.27 to 1.29 know (the securityContext
    // field exists only from 1.30, and kubectl's strict validation rejects unknown fields).
    assert!(
        sc.app_armor_profile.is_none(),
        "appArmorProfile needs Kubernetes 1.30"
    );
    let annotations = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        annotations
            .get("container.apparmor.security.beta.kubernetes.io/agent")
            .map(String::as_str),
        Some("unconfined")
    );
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .map(String::as_str),
        Some("linux")
    );
}

#[test]
fn node_name_comes_from_the_downward_api() {
    let c = agent_container(&daemonset());
    let env = c.env.unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    assert!(node.value.is_none());
}

#[test]
fn bpffs_and_the_host_cgroup2_root_are_mounted_and_used() {
    let ds = daemonset();
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = agent_container(&ds);
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let mount_of = |host: &str| {
        let volume = volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host))
            .unwrap_or_else(|| panic!("no hostPath volume for {host}"));
        mounts
            .iter()
            .find(|m| m.name == volume.name)
            .unwrap_or_else(|| panic!("volume {} is not mounted", volume.name))
            .clone()
    };
    let bpf = mount_of("/sys/fs/bpf");
    assert_eq!(bpf.mount_path, "/sys/fs/bpf");
    assert_ne!(bpf.read_only, Some(true), "the agent pins maps there");
    let cgroup = mount_of("/sys/fs/cgroup");

    let args = c.args.expect("args");
    assert_eq!(args[0], "agent");
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
            .clone()
    };
    assert_eq!(arg("--cgroup"), cgroup.mount_path);
    assert_eq!(arg("--metrics-addr"), "0.0.0.0:9970");
    assert!(
        !args.iter().any(|a| a == "--pin-dir"),
        "the default pin dir is under /sys/fs/bpf"
    );
    assert!(lbctl::datapath::DEFAULT_PIN_DIR.starts_with(&bpf.mount_path));
    // `lbctl monitor` through `kubectl exec`: the agent's monitor socket on a writable mount.
    let run = mounts
        .iter()
        .find(|m| m.name == "run")
        .expect("a volume for the monitor socket");
    assert_eq!(
        lbctl::monitor::socket_path(std::path::Path::new(lbctl::datapath::DEFAULT_PIN_DIR))
            .parent(),
        Some(std::path::Path::new(&run.mount_path))
    );

    // The real binary accepts these arguments (clap validates them before --help).
    let out = Command::new(sibling_binary("lbctl").expect("lbctl built"))
        .args(&args)
        .arg("--help")
        .output()
        .expect("running lbctl");
    assert!(
        out.status.success(),
        "lbctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn probes_and_metrics_port() {
    let c = agent_container(&daemonset());
    let port = c
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("metrics port")
        .clone();
    assert_eq!(port.container_port, 9970);
    let path = |probe: Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe.and_then(|p| p.http_get).expect("httpGet probe");
        assert_eq!(
            serde_json::to_value(&get.port).unwrap(),
            Value::from("metrics")
        );
        get.path.expect("path")
    };
    assert_eq!(path(c.liveness_probe), "/healthz");
    assert_eq!(path(c.readiness_probe), "/readyz");
}

#[test]
fn example_workloads_are_the_books() {
    let path = repo().join("manifests/examples/quote-deployment.yaml");
    let origin = path.display().to_string();
    let docs = documents(&path);
    let deployments: Vec<Deployment> = docs
        .iter()
        .filter(|d| kind(d) == "Deployment")
        .map(|d| strict(d, &origin))
        .collect();
    let services: Vec<Service> = docs
        .iter()
        .filter(|d| kind(d) == "Service")
        .map(|d| strict(d, &origin))
        .collect();
    let labels_of = |name: &str| {
        deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Deployment {name}"))
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .expect("pod labels")
    };
    let quote_labels = labels_of("quote");
    labels_of("kiada");
    let policy = |name: &str| {
        let svc = services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Service {name}"));
        let spec = svc.spec.as_ref().expect("spec");
        let selector = spec.selector.clone().expect("selector");
        assert!(selector.iter().all(|(k, v)| quote_labels.get(k) == Some(v)));
        let port = &spec.ports.as_ref().expect("ports")[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("http"), 80));
        spec.internal_traffic_policy.clone()
    };
    assert_eq!(policy("quote"), None, "quote uses the default, Cluster");
    assert_eq!(policy("quote-local").as_deref(), Some("Local"));
}

#[test]
fn image_build_matches_xtask_setup() {
    let dockerfile = fs::read_to_string(repo().join("manifests/Dockerfile")).expect("Dockerfile");
    let setup = fs::read_to_string(repo().join("xtask/src/setup.rs")).expect("setup.rs");
    let version = setup
        .lines()
        .find_map(|l| l.strip_prefix("const BPF_LINKER_VERSION: &str = \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .expect("BPF_LINKER_VERSION in setup.rs");
    assert!(dockerfile.contains(&format!("bpf-linker@{version}")));
    for needle in [
        "llvm-22-dev",
        "--features llvm-22",
        "rust-src",
        "nightly",
        "AS build",
        "cargo build --release --locked -p lbctl",
        "ENTRYPOINT [\"/usr/local/bin/lbctl\"]",
    ] {
        assert!(
            dockerfile.contains(needle),
            "the Dockerfile lacks {needle:?}"
        );
    }
    // The nightly of the date setup pins (lbctl's build script runs `cargo +nightly`).
    let nightly = setup
        .lines()
        .find_map(|l| l.strip_prefix("const NIGHTLY_DATE: &str = \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .expect("NIGHTLY_DATE in setup.rs");
    assert!(
        dockerfile.contains(&format!("ARG NIGHTLY_DATE={nightly}\n")),
        "the Dockerfile must install nightly-{nightly}"
    );
    // The runtime stage is what tests/tests/runtime.rs builds and runs (it parses it).
    let runtime = testkit::podman::DockerfileRuntime::parse(&dockerfile).expect("runtime stage");
    assert!(runtime.programs.iter().any(|p| p == "/out/lbctl"));
    // The uninstall DaemonSet's idle container runs a program the image has.
    let idle = uninstall_daemonset()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .command
        .clone()
        .expect("the idle container's command");
    let name = Path::new(&idle[0]).file_name().unwrap();
    assert!(
        idle[0].starts_with("/usr/local/bin/")
            && runtime
                .programs
                .iter()
                .any(|p| Path::new(p).file_name() == Some(name)),
        "{idle:?} is not in the image"
    );
}

fn uninstall_dir() -> PathBuf {
    repo().join("manifests/uninstall")
}

fn uninstall_daemonset() -> DaemonSet {
    let path = uninstall_dir().join("daemonset.yaml");
    let docs = documents(&path);
    assert_eq!(docs.len(), 1, "{}: one DaemonSet", path.display());
    strict(&docs[0], &path.display().to_string())
}

/// The fields of a kustomization the tests look at.
#[derive(serde::Deserialize)]
struct Kustomization {
    namespace: String,
    resources: Vec<String>,
    images: Vec<KustomizeImage>,
}

#[derive(serde::Deserialize)]
struct KustomizeImage {
    name: String,
}

fn kustomization(dir: &Path) -> Kustomization {
    let path = dir.join("kustomization.yaml");
    let doc = documents(&path).remove(0);
    <Kustomization as serde::Deserialize>::deserialize(doc)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_uninstall_daemonset_runs_lbctl_uninstall_with_the_bpffs_and_nothing_else() {
    let k = kustomization(&uninstall_dir());
    assert_eq!(k.namespace, NAMESPACE);
    assert_eq!(k.resources, vec!["daemonset.yaml".to_owned()]);
    let install_image = agent_container(&daemonset()).image;
    assert_eq!(Some(&k.images[0].name), install_image.as_ref());
    assert_eq!(
        k.images[0].name,
        kustomization(&install_dir()).images[0].name,
        "the same image as the install"
    );

    let ds = uninstall_daemonset();
    assert_eq!(ds.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_ne!(
        ds.metadata.name,
        daemonset().metadata.name,
        "a DaemonSet of its own"
    );
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "no API access"
    );
    assert!(pod.service_account_name.is_none());
    assert_ne!(pod.host_network, Some(true));
    let volumes = pod.volumes.unwrap_or_default();
    let host_paths: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
        .collect();
    assert_eq!(
        host_paths,
        ["/sys/fs/bpf"],
        "the pins, nothing else of the host"
    );

    let init = pod.init_containers.expect("an init container");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].image, install_image);
    assert_eq!(init[0].args.as_deref(), Some(&["uninstall".to_owned()][..]));
    assert!(init[0].command.is_none(), "the image's entrypoint: lbctl");
    let sc = init[0].security_context.clone().expect("securityContext");
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(caps.add, Some(vec!["BPF".to_owned()]));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let mounts = init[0].volume_mounts.clone().unwrap_or_default();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].mount_path, "/sys/fs/bpf");

    let idle = &pod.containers[0];
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(idle.image, install_image);
    let sc = idle.security_context.clone().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.and_then(|c| c.add),
        None,
        "the idle container needs no capability"
    );
    assert!(idle.volume_mounts.is_none());
}

#[test]
fn the_api_server_address_comes_from_an_optional_configmap() {
    let map: ConfigMap = install_object("ConfigMap");
    let c = agent_container(&daemonset());
    for key in ["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"] {
        let env = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == key)
            .unwrap_or_else(|| panic!("no {key} in the agent's env"));
        let from = env
            .value_from
            .as_ref()
            .and_then(|v| v.config_map_key_ref.as_ref())
            .unwrap_or_else(|| panic!("{key} not from a ConfigMap"));
        assert_eq!(Some(&from.name), map.metadata.name.as_ref());
        assert_eq!(from.key, key);
        assert_eq!(
            from.optional,
            Some(true),
            "{key}: the ConfigMap is optional"
        );
    }
    assert!(
        map.data.unwrap_or_default().is_empty(),
        "shipped empty: without keys the agent uses the in-cluster defaults"
    );
}

#[test]
fn a_startup_probe_guards_the_first_sync() {
    let c = agent_container(&daemonset());
    let startup = c.startup_probe.expect("startupProbe");
    let get = startup.http_get.expect("httpGet");
    assert_eq!(get.path.as_deref(), Some("/healthz"));
    let budget = startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
    assert!(
        budget >= 30,
        "{budget} s to start is too short for a big cluster's first list"
    );
}

fn log_path(pins: &Path) -> PathBuf {
    let name = pins.file_name().expect("pin dir name").to_string_lossy();
    std::env::temp_dir().join(format!("{name}.log"))
}

/// `setpriv` as root with only `caps` in the bounding set (so in the effective set too).
fn agent_with_caps(caps: &[&str], pins: &Path, cgroup: &Path) -> Child {
    let bounding: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    let log = fs::File::create(log_path(pins)).expect("log file");
    Command::new("setpriv")
        .args(["--reuid=0", "--inh-caps=-all"])
        .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
        .arg("--")
        .arg(sibling_binary("lbctl").expect("lbctl built"))
        .args(["agent", "--node", "kind-worker", "--manifests"])
        .arg(repo().join("manifests/examples/quote.yaml"))
        .arg("--pin-dir")
        .arg(pins)
        .arg("--cgroup")
        .arg(cgroup)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("starting setpriv lbctl agent")
}

/// Whether the agent programmed quote-local (two local backends on kind-worker) within 10 s.
fn programs(caps: &[&str]) -> bool {
    let cgroup = CgroupGuard::new("caps").expect("cgroup");
    let pins = PinDirGuard::new("caps");
    let mut agent = agent_with_caps(caps, pins.path(), cgroup.path());
    let target = FrontendKey::new("10.96.77.212:80".parse().unwrap(), Protocol::Tcp);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = false;
    while Instant::now() < deadline {
        if let Ok(inspect::Lookup::Rewritten { frontend }) = inspect::lookup(pins.path(), target) {
            ok = frontend.backends.len() == 2;
            break;
        }
        if matches!(agent.try_wait(), Ok(Some(_))) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = fs::remove_file(log_path(pins.path()));
    ok
}

#[test]
fn the_daemonsets_capabilities_are_enough_and_each_is_needed() {
    testkit::require_root();
    assert!(
        programs(&AGENT_CAPABILITIES),
        "the agent cannot program its node with {AGENT_CAPABILITIES:?}"
    );
    for dropped in AGENT_CAPABILITIES {
        let fewer: Vec<&str> = AGENT_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| *c != dropped)
            .collect();
        assert!(
            !programs(&fewer),
            "the agent works without {dropped}: drop it from the DaemonSet"
        );
    }
}

/// The opt-in for terminating pods' sockets (`manifests/examples/terminate-pod-sockets.yaml`, a
/// JSON patch) applies to the install's DaemonSet and adds exactly what docs/operations.md says:
/// SYS_ADMIN, the flag naming the mounted directory, and a read-only hostPath mount of
/// /var/run/netns that sees namespaces created later (HostToContainer).
#[test]
fn the_pod_sockets_opt_in_patch_adds_sys_admin_the_flag_and_the_netns_mount() {
    let path = repo().join("manifests/examples/terminate-pod-sockets.yaml");
    let text = fs::read_to_string(&path).expect("the patch file");
    let patch: json_patch::Patch = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not a JSON patch: {e}", path.display()));
    let mut doc = fs::read_dir(install_dir())
        .expect("manifests/install")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .flat_map(|e| documents(&e.path()))
        .find(|d| kind(d) == "DaemonSet")
        .expect("the install's DaemonSet");
    json_patch::patch(&mut doc, &patch)
        .unwrap_or_else(|e| panic!("{} does not apply to the DaemonSet: {e}", path.display()));
    let patched: DaemonSet = strict(&doc, "the patched DaemonSet");
    let before = agent_container(&daemonset());
    let after = agent_container(&patched);

    let caps = |c: &Container| -> BTreeSet<String> {
        c.security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.clone())
            .unwrap_or_default()
            .into_iter()
            .collect()
    };
    let mut expected = caps(&before);
    expected.insert("SYS_ADMIN".to_owned());
    assert_eq!(
        caps(&after),
        expected,
        "the patch adds SYS_ADMIN and nothing else"
    );

    let added: Vec<&String> = after
        .args
        .iter()
        .flatten()
        .filter(|a| !before.args.iter().flatten().any(|b| b == *a))
        .collect();
    assert_eq!(added.len(), 1, "one argument added: {added:?}");
    let dir = added[0]
        .strip_prefix("--terminate-in-netns-dir=")
        .expect("the added argument is --terminate-in-netns-dir");
    let mount = after
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    let volume = patched
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.volumes.as_ref())
        .and_then(|v| v.iter().find(|v| v.name == mount.name))
        .expect("the mount's volume");
    assert_eq!(
        volume.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/var/run/netns"),
        "where containerd and CRI-O keep pod network namespace handles"
    );
}
