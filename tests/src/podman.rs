//! A real container runtime for the real-runtime test (tests/tests/runtime.rs): Debian's podman
//! 4.3 with runc and catatonit (`cargo xtask setup` installs them), with all of its state in a
//! scratch directory, and the pod spec of a DaemonSet turned into a Pod for `podman kube play`.
//!
//! Nothing of the machine's podman configuration or storage is read or written: the test's own
//! `containers.conf` and `storage.conf` (pointed at by `CONTAINERS_CONF` and
//! `CONTAINERS_STORAGE_CONF`) put images, containers, the runtime directory and the events log
//! under the scratch directory, which is unmounted and removed on drop, after every pod and
//! container it holds is removed. So every run starts from zero, as on a CI machine. (The one
//! file podman writes elsewhere is containers/image's blob-info cache, which it always keeps in
//! `/var/lib/containers/cache` for root: a cache, not configuration.)
//!
//! Machine facts the configuration encodes: without CAP_SYS_RESOURCE podman's default ulimits
//! cannot be set (`default_ulimits`), and crun refuses a hybrid cgroup layout (`runtime = "runc"`).
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, EnvVar, Pod, PodSpec},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use crate::TempDir;

/// The programs the test needs from Debian (`cargo xtask setup` installs them).
pub const PROGRAMS: [&str; 4] = ["podman", "runc", "catatonit", "conmon"];

/// Fails with a clear message when a program the test needs is missing.
pub fn require_programs() -> Result<()> {
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {p}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "the real-runtime test needs {}: run `cargo xtask setup` (it installs Debian's podman, runc and catatonit)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Podman with all of its state in a scratch directory.
pub struct Podman {
    dir: TempDir,
}

impl Podman {
    pub fn new() -> Result<Self> {
        crate::require_root();
        require_programs()?;
        let dir = TempDir::new("podman").context("creating podman's scratch directory")?;
        let root = dir.path();
        for sub in ["storage", "run", "tmp", "net"] {
            fs::create_dir_all(root.join(sub))?;
        }
        fs::write(
            root.join("containers.conf"),
            format!(
                r#"[containers]
# No CAP_SYS_RESOURCE here: podman's default ulimits (nofile 1048576) cannot be set.
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
# crun refuses the hybrid (cgroup v1 + v2) layout of the test machines.
runtime = "runc"
tmp_dir = "{tmp}"
events_logger = "file"
events_logfile_path = "{tmp}/events.log"

[network]
network_config_dir = "{net}"
"#,
                tmp = root.join("tmp").display(),
                net = root.join("net").display(),
            ),
        )?;
        fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                root.join("storage").display(),
                root.join("run").display()
            ),
        )?;
        Ok(Self { dir })
    }

    /// A scratch file path in podman's directory (for pod specs, root filesystems).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `podman ARGS` with the test's configuration.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            )
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `podman ARGS`; returns its stdout, or fails with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command()
            .args(args)
            .output()
            .with_context(|| format!("running podman {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "podman {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `podman import` of a root filesystem directory as image `name`, with Dockerfile-style
    /// `changes` (`ENTRYPOINT [...]`, `CMD [...]`, `ENV K=V`).
    pub fn import(&self, rootfs: &Path, changes: &[String], name: &str) -> Result<()> {
        let tarball = self.scratch("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .context("running tar")?;
        if !status.success() {
            bail!("tar of {} failed: {status}", rootfs.display());
        }
        let mut args = vec!["import".to_owned()];
        for change in changes {
            args.push("--change".into());
            args.push(change.clone());
        }
        args.push(tarball.display().to_string());
        args.push(name.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)?;
        let _ = fs::remove_file(tarball);
        Ok(())
    }

    /// `podman inspect --format FORMAT NAME`, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> Result<String> {
        Ok(self
            .run(&["inspect", "--format", format, name])?
            .trim()
            .to_owned())
    }

    /// `podman logs NAME` (stdout and stderr), for failure messages.
    pub fn logs(&self, name: &str) -> String {
        self.command()
            .args(["logs", name])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_else(|e| format!("(podman logs {name}: {e})"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Everything podman holds lives in the scratch directory: remove the pods and
        // containers (which stops them and unmounts their root filesystems), then whatever
        // is still mounted below the directory (the storage driver's own bind mount).
        for args in [
            &["pod", "rm", "--all", "--force", "--time", "0"][..],
            &["rm", "--all", "--force", "--time", "0"][..],
        ] {
            let _ = self
                .command()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for mount in mounts_below(self.dir.path()).into_iter().rev() {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(&mount)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Mount points at or below `dir`, in mount order (from /proc/self/mountinfo).
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        // mountinfo escapes spaces and the like as \040: our paths have none.
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// A scratch directory on the host's bpffs (`/sys/fs/bpf/lbctl-test-...`): mounted in place of
/// the host's `/sys/fs/bpf`, it receives the pins of an agent that believes it pins at
/// `/sys/fs/bpf/lbctl`. On drop, `lbctl uninstall` of that pin directory (detaching whatever is
/// still attached through it), then the directory is removed.
pub struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    pub fn new(tag: &str) -> Result<Self> {
        crate::require_root();
        let path = Path::new(lbctl::datapath::system::BPFFS_ROOT).join(crate::unique_name(tag));
        // Mounts bpffs at /sys/fs/bpf first if the machine has none there (as the agent does).
        lbctl::datapath::system::ensure_pin_dir(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the agent's default pin directory (`/sys/fs/bpf/lbctl`) lands.
    pub fn pin_dir(&self) -> PathBuf {
        let default = Path::new(lbctl::datapath::DEFAULT_PIN_DIR);
        let relative = default
            .strip_prefix(lbctl::datapath::system::BPFFS_ROOT)
            .unwrap_or(default);
        self.path.join(relative)
    }

    /// Every file and directory left below the directory.
    pub fn contents(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                out.push(path.clone());
                if path.is_dir() {
                    walk(&path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path, &mut out);
        out
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        if let Err(e) = lbctl::datapath::uninstall(&self.pin_dir()) {
            eprintln!("warning: cleaning {}: {e}", self.pin_dir().display());
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}

/// What replaces the cluster in a DaemonSet's pod spec, and nothing else.
pub struct Substitutions<'a> {
    /// Pod name (unique per test).
    pub pod_name: String,
    /// The image for every container whose image is `image_name` (the kustomization's name).
    pub image_name: &'a str,
    pub image: &'a str,
    /// The value of `NODE_NAME` (the downward API's `spec.nodeName`: podman has no node).
    pub node_name: &'a str,
    /// hostPath volume paths: host path in the manifest -> scratch path.
    pub host_paths: BTreeMap<String, PathBuf>,
    /// Arguments appended to the container `container` (the object source).
    pub extra_args: Vec<String>,
    pub extra_args_container: &'a str,
    /// A read-only hostPath volume added for `extra_args` (host directory, mount path).
    pub extra_volume: Option<(PathBuf, String)>,
}

/// The pod podman runs for `ds`: the DaemonSet's pod template as written (security contexts,
/// capabilities, volumes, probes, init containers, resources, annotations), with only the
/// substitutions applied, and what podman 4.3 needs to run it as Kubernetes would: the seccomp
/// profiles the securityContexts ask for also written as the annotations its `kube play`
/// honours (it ignores `securityContext.seccompProfile`), host-network ports as numbers (see
/// [`host_network_ports`]) and init containers kept (see below).
pub fn pod_from_daemonset(ds: &DaemonSet, subst: &Substitutions) -> Result<Pod> {
    let template = &ds
        .spec
        .as_ref()
        .context("the DaemonSet has no spec")?
        .template;
    let mut spec: PodSpec = template
        .spec
        .clone()
        .context("the DaemonSet has no pod spec")?;
    let mut meta: ObjectMeta = template.metadata.clone().unwrap_or_default();
    meta.name = Some(subst.pod_name.clone());
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);

    if let Some(profile) = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.seccomp_profile.as_ref())
    {
        annotations.insert(
            "seccomp.security.alpha.kubernetes.io/pod".into(),
            seccomp_annotation(&profile.type_, profile.localhost_profile.as_deref())?,
        );
    }
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        // podman 4.3 restarts an init container under the pod's restart policy (Always for a
        // DaemonSet; containers/podman#16343, fixed later), and its default init container
        // type, `once`, then fails `kube play` removing a container that runs again. `always`
        // keeps it: it still runs to completion before the pod's containers start.
        annotations.insert(
            "io.podman.annotations.init.container.type".into(),
            "always".into(),
        );
    }
    let mut found_extra = false;
    let host_network = spec.host_network == Some(true);
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in containers {
        if let Some(profile) = c
            .security_context
            .as_ref()
            .and_then(|sc| sc.seccomp_profile.as_ref())
        {
            annotations.insert(
                format!("container.seccomp.security.alpha.kubernetes.io/{}", c.name),
                seccomp_annotation(&profile.type_, profile.localhost_profile.as_deref())?,
            );
        }
        if c.image.as_deref() == Some(subst.image_name) {
            c.image = Some(subst.image.to_owned());
        }
        substitute_node_name(c, subst.node_name);
        if host_network {
            host_network_ports(c);
        }
        if c.name == subst.extra_args_container {
            found_extra = true;
            c.args
                .get_or_insert_with(Vec::new)
                .extend(subst.extra_args.iter().cloned());
            if let Some((_, mount_path)) = &subst.extra_volume {
                c.volume_mounts.get_or_insert_with(Vec::new).push(
                    k8s_openapi::api::core::v1::VolumeMount {
                        name: "lbctl-test-objects".into(),
                        mount_path: mount_path.clone(),
                        read_only: Some(true),
                        ..Default::default()
                    },
                );
            }
        }
    }
    if !subst.extra_args.is_empty() && !found_extra {
        bail!(
            "no container {} in the pod spec",
            subst.extra_args_container
        );
    }

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    let mut replaced = 0;
    for v in volumes.iter_mut() {
        if let Some(host) = v.host_path.as_mut()
            && let Some(scratch) = subst.host_paths.get(&host.path)
        {
            host.path = scratch.display().to_string();
            replaced += 1;
        }
    }
    if replaced != subst.host_paths.len() {
        bail!(
            "the pod spec does not have a hostPath volume for each of {:?}",
            subst.host_paths.keys().collect::<Vec<_>>()
        );
    }
    if let Some((host, _)) = &subst.extra_volume {
        volumes.push(k8s_openapi::api::core::v1::Volume {
            name: "lbctl-test-objects".into(),
            host_path: Some(k8s_openapi::api::core::v1::HostPathVolumeSource {
                path: host.display().to_string(),
                type_: Some("Directory".into()),
            }),
            ..Default::default()
        });
    }

    Ok(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

/// podman 4.3 refuses `ports` in a host-network pod ("PortMappings can only be used with Bridge
/// or slirp4netns networking"), where Kubernetes takes them as documentation: they go, and the
/// probes that named one get its number. (podman 4.3 turns an httpGet probe into a healthcheck
/// that runs `curl` in the container from a systemd timer; without systemd, and with no curl in
/// the image, it does not run: the test polls /readyz itself.)
fn host_network_ports(c: &mut Container) {
    let ports: BTreeMap<String, i32> = c
        .ports
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| Some((p.name?, p.container_port)))
        .collect();
    let probes = [
        c.startup_probe.as_mut(),
        c.liveness_probe.as_mut(),
        c.readiness_probe.as_mut(),
    ];
    for probe in probes.into_iter().flatten() {
        if let Some(get) = probe.http_get.as_mut()
            && let IntOrString::String(name) = &get.port
            && let Some(number) = ports.get(name)
        {
            get.port = IntOrString::Int(*number);
        }
    }
}

/// `NODE_NAME` from the downward API's `spec.nodeName` becomes the test's node name.
fn substitute_node_name(c: &mut Container, node: &str) {
    for env in c.env.iter_mut().flatten() {
        let from_node_name = env
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .is_some_and(|f| f.field_path == "spec.nodeName");
        if from_node_name {
            *env = EnvVar {
                name: env.name.clone(),
                value: Some(node.to_owned()),
                value_from: None,
            };
        }
    }
}

/// The annotation value of a securityContext seccomp profile.
fn seccomp_annotation(kind: &str, localhost: Option<&str>) -> Result<String> {
    Ok(match (kind, localhost) {
        ("Unconfined", _) => "unconfined".into(),
        ("RuntimeDefault", _) => "runtime/default".into(),
        ("Localhost", Some(path)) => format!("localhost/{path}"),
        _ => bail!("seccompProfile type {kind:?} (localhostProfile {localhost:?}) is not valid"),
    })
}

/// The memory cgroup of a process, as its usage in bytes (cgroup v2 `memory.current`, or v1
/// `memory.usage_in_bytes`) and the path read.
pub fn memory_usage(pid: u32) -> Result<(u64, PathBuf)> {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    // v1: a hierarchy with the memory controller; v2: the unified hierarchy (0::).
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let mount = cgroup_mount(&mountinfo, |fs, opts| {
                fs == "cgroup" && opts.split(',').any(|o| o == "memory")
            })
            .context("no cgroup v1 memory mount")?;
            let file = mount.join(path).join("memory.usage_in_bytes");
            return Ok((read_number(&file)?, file));
        }
        if id == "0" && controllers.is_empty() {
            let mount = cgroup_mount(&mountinfo, |fs, _| fs == "cgroup2");
            if let Some(mount) = mount {
                let file = mount.join(path).join("memory.current");
                if file.exists() {
                    return Ok((read_number(&file)?, file));
                }
            }
        }
    }
    bail!("process {pid} has no memory cgroup")
}

fn read_number(file: &Path) -> Result<u64> {
    fs::read_to_string(file)
        .with_context(|| format!("reading {}", file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {}", file.display()))
}

/// The mount point of the first cgroup mount whose filesystem type and super options match.
fn cgroup_mount(mountinfo: &str, matches: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = before.split(' ').nth(4)?;
        let mut after = after.split(' ');
        let fs_type = after.next()?;
        let _source = after.next()?;
        let options = after.next().unwrap_or_default();
        matches(fs_type, options).then(|| PathBuf::from(mount_point))
    })
}

/// Kubernetes memory quantity (`64Mi`, `1Gi`, `500M`, plain bytes) in bytes.
pub fn quantity_bytes(q: &str) -> Result<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("memory quantity {q:?}"))?;
    let factor: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => bail!("memory quantity {q:?}: unsupported suffix"),
    };
    Ok(number * factor)
}

/// The runtime image of `manifests/Dockerfile`, built here without Docker and without a
/// registry: the Dockerfile's final stage must be `FROM scratch`, then `COPY --from=build
/// /rootfs/ /` of the tree its build stage makes with `manifests/image/rootfs.sh`, then only
/// `ENV`, `ENTRYPOINT` and `CMD` (anything else fails here: teach this function first). The same
/// script runs here over the same programs, the build stage's `/out/lbctl` being `lbctl` (the
/// release binary), and the instructions become `podman import --change`s. So the image the test
/// runs has the content and configuration the Dockerfile's image has.
pub fn image_from_dockerfile(podman: &Podman, repo: &Path, lbctl: &Path, name: &str) -> Result<()> {
    let dockerfile_path = repo.join("manifests/Dockerfile");
    let dockerfile = fs::read_to_string(&dockerfile_path)
        .with_context(|| format!("reading {}", dockerfile_path.display()))?;
    let plan = DockerfileRuntime::parse(&dockerfile)
        .with_context(|| format!("{}", dockerfile_path.display()))?;
    let rootfs = podman.scratch("rootfs");
    let programs: Vec<PathBuf> = plan
        .programs
        .iter()
        .map(|p| {
            if p == "/out/lbctl" {
                lbctl.to_path_buf()
            } else {
                PathBuf::from(p)
            }
        })
        .collect();
    let out = Command::new(repo.join(&plan.script))
        .arg(&rootfs)
        .args(&programs)
        .output()
        .with_context(|| format!("running {}", plan.script))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            plan.script,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    podman.import(&rootfs, &plan.changes, name)?;
    fs::remove_dir_all(&rootfs).with_context(|| format!("removing {}", rootfs.display()))
}

/// What the Dockerfile says about the runtime image.
#[derive(Debug, PartialEq)]
pub struct DockerfileRuntime {
    /// The root filesystem script (relative to the repository) and the programs it gets.
    pub script: String,
    pub programs: Vec<String>,
    /// `ENV ...`, `ENTRYPOINT [...]`, `CMD [...]` of the final stage.
    pub changes: Vec<String>,
}

impl DockerfileRuntime {
    pub fn parse(dockerfile: &str) -> Result<Self> {
        const SCRIPT: &str = "manifests/image/rootfs.sh";
        // Instructions, with `\` continuations joined and comments dropped.
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in dockerfile.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    current.push_str(part);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    instructions.push(std::mem::take(&mut current));
                }
            }
        }
        let last_from = instructions
            .iter()
            .rposition(|i| i.starts_with("FROM "))
            .context("no FROM")?;
        let mut programs = None;
        for i in &instructions[..last_from] {
            if let Some(rest) = i.strip_prefix("RUN ")
                && let Some(args) = rest.trim().strip_prefix(SCRIPT)
            {
                let mut words = args.split_whitespace();
                if words.next() != Some("/rootfs") {
                    bail!("{SCRIPT} must build /rootfs: {i}");
                }
                programs = Some(words.map(str::to_owned).collect::<Vec<_>>());
            }
        }
        let programs = programs.with_context(|| format!("no `RUN {SCRIPT} /rootfs ...`"))?;
        if instructions[last_from] != "FROM scratch" {
            bail!(
                "the final stage must be `FROM scratch` (is {:?})",
                instructions[last_from]
            );
        }
        let mut changes = Vec::new();
        let mut copied = false;
        for i in &instructions[last_from + 1..] {
            let keyword = i.split_whitespace().next().unwrap_or_default();
            match keyword {
                "COPY"
                    if i.split_whitespace().collect::<Vec<_>>()
                        == ["COPY", "--from=build", "/rootfs/", "/"] =>
                {
                    copied = true
                }
                "ENV" | "ENTRYPOINT" | "CMD" => changes.push(i.clone()),
                _ => bail!("the final stage has {i:?}, which the real-runtime test does not build"),
            }
        }
        if !copied {
            bail!("the final stage does not `COPY --from=build /rootfs/ /`");
        }
        Ok(Self {
            script: SCRIPT.to_owned(),
            programs,
            changes,
        })
    }
}

/// Every YAML document of a manifest file, as JSON values (empty documents dropped).
pub fn read_documents(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
        .map_err(|e| anyhow::anyhow!("{}: invalid YAML: {e}", path.display()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The one document of kind `kind` in a manifest file, as its Kubernetes type.
pub fn read_object<T: serde::de::DeserializeOwned>(path: &Path, kind: &str) -> Result<T> {
    let mut found: Vec<serde_json::Value> = read_documents(path)?
        .into_iter()
        .filter(|d| d.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .collect();
    if found.len() != 1 {
        bail!(
            "{}: expected one {kind}, found {}",
            path.display(),
            found.len()
        );
    }
    serde_json::from_value(found.remove(0))
        .with_context(|| format!("{}: not a valid {kind}", path.display()))
}

/// The allocator settings (`MALLOC_*`, plain values) the install's DaemonSet gives the agent:
/// the benchmark runs the agent with them, as deployed.
pub fn install_allocator_env() -> Result<Vec<(String, String)>> {
    let path = crate::repo_root().join("manifests/install/daemonset.yaml");
    let ds: DaemonSet = read_object(&path, "DaemonSet")?;
    let agent = ds
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().find(|c| c.name == "agent"))
        .with_context(|| format!("{}: no container named agent", path.display()))?;
    Ok(agent
        .env
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.name.starts_with("MALLOC_"))
        .filter_map(|e| Some((e.name, e.value?)))
        .collect())
}

/// Writes `objects` as a multi-document file for `podman kube play` (JSON is YAML).
pub fn write_play_file(path: &Path, objects: &[serde_json::Value]) -> Result<()> {
    let mut text = String::new();
    for o in objects {
        text.push_str("---\n");
        text.push_str(&serde_json::to_string_pretty(o)?);
        text.push('\n');
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dockerfiles_runtime_stage_is_understood_and_nothing_else() {
        let dockerfile = fs::read_to_string(crate::repo_root().join("manifests/Dockerfile"))
            .expect("Dockerfile");
        let runtime = DockerfileRuntime::parse(&dockerfile).expect("runtime stage");
        assert_eq!(runtime.programs, ["/out/lbctl", "/bin/sleep"]);
        assert!(runtime.changes.iter().any(|c| c.starts_with("ENTRYPOINT ")));
        // Anything the test would not reproduce fails it.
        for extra in ["RUN true", "USER 1000", "COPY x /x"] {
            let changed = format!("{dockerfile}{extra}\n");
            assert!(
                DockerfileRuntime::parse(&changed).is_err(),
                "{extra} accepted"
            );
        }
        let debian = dockerfile.replace("FROM scratch", "FROM debian:bookworm-slim");
        assert!(DockerfileRuntime::parse(&debian).is_err());
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(quantity_bytes("128Mi").unwrap(), 128 << 20);
        assert_eq!(quantity_bytes("1Gi").unwrap(), 1 << 30);
        assert_eq!(quantity_bytes("500M").unwrap(), 500_000_000);
        assert_eq!(quantity_bytes("4096").unwrap(), 4096);
        assert!(quantity_bytes("1.5Gi").is_err());
        assert!(quantity_bytes("Mi").is_err());
    }

    fn install() -> DaemonSet {
        read_object(
            &crate::repo_root().join("manifests/install/daemonset.yaml"),
            "DaemonSet",
        )
        .expect("the install's DaemonSet")
    }

    fn substitutions(host_paths: &[(&str, &str)]) -> Substitutions<'static> {
        Substitutions {
            pod_name: "p".into(),
            image_name: "lbctl",
            image: "localhost/x:1",
            node_name: "n",
            host_paths: host_paths
                .iter()
                .map(|(a, b)| ((*a).to_owned(), PathBuf::from(b)))
                .collect(),
            extra_args: vec!["--manifests".into(), "/m".into()],
            extra_args_container: "agent",
            extra_volume: None,
        }
    }

    #[test]
    fn the_pod_is_the_template_with_only_the_substitutions() {
        let ds = install();
        let subst = substitutions(&[("/sys/fs/bpf", "/b"), ("/sys/fs/cgroup", "/c")]);
        let pod = pod_from_daemonset(&ds, &subst).expect("pod");
        let template = ds.spec.unwrap().template.spec.unwrap();
        let spec = pod.spec.unwrap();
        let (before, after) = (&template.containers[0], &spec.containers[0]);
        assert_eq!(after.security_context, before.security_context);
        assert_eq!(after.resources, before.resources);
        assert_eq!(after.volume_mounts, before.volume_mounts);
        assert_eq!(after.image.as_deref(), Some("localhost/x:1"));
        assert_eq!(
            after.args.as_ref().unwrap()[..before.args.as_ref().unwrap().len()],
            before.args.as_ref().unwrap()[..]
        );
        assert_eq!(spec.host_network, template.host_network);
        let paths: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
            .collect();
        assert_eq!(paths, ["/b", "/c"]);
        let annotations = pod.metadata.annotations.unwrap();
        assert_eq!(
            annotations["container.seccomp.security.alpha.kubernetes.io/agent"],
            "unconfined"
        );
        assert_eq!(
            annotations["container.apparmor.security.beta.kubernetes.io/agent"],
            "unconfined"
        );
    }

    #[test]
    fn a_substitution_the_spec_does_not_have_is_an_error() {
        let subst = substitutions(&[("/sys/fs/bpf", "/b"), ("/var/lib/other", "/o")]);
        assert!(pod_from_daemonset(&install(), &subst).is_err());
        let mut subst = substitutions(&[]);
        subst.extra_args_container = "no-such-container";
        assert!(pod_from_daemonset(&install(), &subst).is_err());
    }
}
