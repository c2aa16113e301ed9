//! The `lbctl` binary as an operator uses it: `--help` of every subcommand, `plan` on the
//! examples, the inspection commands and `uninstall` against a real (scratch) datapath, and
//! every command shown in the README and the operator docs.
//!
//! The binary is `target/<profile>/lbctl`, built by `cargo test --workspace` (`cargo xtask
//! test`); `cargo test -p lbctl-tests` alone does not build another package's binary.
use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Output},
};

use lbctl::{datapath::Desired, plan::Protocol};
use serde_json::Value;
use testkit::{
    pins::Scratch,
    probe::{Outcome, Probe},
    topology::sibling_binary,
};

const SUBCOMMANDS: [&str; 9] = [
    "agent",
    "monitor",
    "plan",
    "status",
    "services",
    "lookup",
    "stats",
    "uninstall",
    "completion",
];
/// `lbctl lookup`'s exit status for a refusing frontend, and for a destination that is not a
/// frontend (documented in `lbctl lookup --help` and docs/troubleshooting.md).
const EXIT_REFUSED: i32 = 3;
const EXIT_NOT_A_FRONTEND: i32 = 4;
/// quote-local in manifests/examples/quote.yaml (and in the docs): no backend in the scratch
/// datapath, so connects are refused.
const QUOTE_LOCAL: &str = "10.96.77.212:80";
/// quote: two backends in the scratch datapath.
const QUOTE: &str = "10.96.125.108:80";
const ECONNREFUSED: i32 = 111;
/// The pin directory the docs show; the tests substitute their scratch one.
const DOC_PIN_DIR: &str = "/sys/fs/bpf/lbctl";
/// The docs whose commands must all run (the README and the operator docs).
const DOCS: [&str; 5] = [
    "README.md",
    "docs/architecture.md",
    "docs/troubleshooting.md",
    "docs/comparison.md",
    "docs/operations.md",
];

fn repo() -> PathBuf {
    testkit::repo_root()
}

fn lbctl_path() -> PathBuf {
    sibling_binary("lbctl").expect("the lbctl binary (cargo build -p lbctl)")
}

fn lbctl(args: &[&str]) -> Output {
    Command::new(lbctl_path())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("running lbctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `lbctl ARGS`, asserts success, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = lbctl(args);
    assert!(
        out.status.success(),
        "lbctl {args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn json(args: &[&str]) -> Value {
    let text = ok(args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("lbctl {args:?}: not JSON ({e}): {text}"))
}

#[test]
fn every_subcommand_has_help() {
    let top = ok(&["--help"]);
    for sub in SUBCOMMANDS {
        assert!(top.contains(sub), "`lbctl --help` does not list {sub}");
        let help = ok(&[sub, "--help"]);
        assert!(
            help.contains(&format!("Usage: lbctl {sub}")),
            "lbctl {sub} --help: {help}"
        );
    }
    let agent = ok(&["agent", "--help"]);
    for flag in [
        "--node",
        "--manifests",
        "--pin-dir",
        "--cgroup",
        "--metrics-addr",
        "NODE_NAME",
    ] {
        assert!(agent.contains(flag), "agent --help lacks {flag}");
    }
    assert!(ok(&["--version"]).starts_with("lbctl "));
}

#[test]
fn plan_shows_quote_local_staying_on_the_node() {
    let table = ok(&[
        "plan",
        "--node",
        "kind-worker",
        "manifests/examples/quote.yaml",
    ]);
    assert!(table.starts_with("Node: kind-worker\n"), "{table}");
    assert!(table.contains("default/quote-local") && table.contains("10.244.1.6:80"));

    let plan = json(&[
        "plan",
        "--node",
        "kind-worker",
        "-o",
        "json",
        "manifests/examples/quote.yaml",
    ]);
    let backends = |service: &str| -> Vec<String> {
        let frontend = plan["frontends"]
            .as_array()
            .expect("frontends")
            .iter()
            .find(|f| f["service"] == service)
            .unwrap_or_else(|| panic!("no {service} in {plan}"));
        frontend["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| b.as_str().expect("string").to_owned())
            .collect()
    };
    assert_eq!(backends("default/quote").len(), 4);
    assert_eq!(
        backends("default/quote-local"),
        ["10.244.1.5:80", "10.244.1.6:80"]
    );
    let other = json(&[
        "plan",
        "--node",
        "kind-worker2",
        "-o",
        "json",
        "manifests/examples/quote.yaml",
    ]);
    assert!(other.to_string().contains("10.244.2.8:80"));
}

#[test]
fn a_stall_threshold_below_the_resync_period_is_refused_before_anything_starts() {
    let out = lbctl(&[
        "agent",
        "--node",
        "kind-worker",
        "--manifests",
        "manifests/examples/quote.yaml",
        "--pin-dir",
        "/nonexistent/lbctl-pins",
        "--cgroup",
        "/nonexistent/cgroup",
        "--resync-seconds",
        "10",
        "--stall-seconds",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("--stall-seconds 10 must exceed --resync-seconds 10"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plan_explains_services_without_a_cluster_ip() {
    // The workload example is what one applies: the API server has not allocated ClusterIPs
    // yet, and the plan says so instead of planning nothing silently.
    let out = ok(&[
        "plan",
        "--node",
        "kind-worker",
        "manifests/examples/quote-deployment.yaml",
    ]);
    assert!(
        out.contains("Service default/quote-local: no cluster IP"),
        "{out}"
    );
}

#[test]
fn plan_reports_a_missing_file() {
    let out = lbctl(&["plan", "--node", "kind-worker", "no/such/file.yaml"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no/such/file.yaml"),
        "{}",
        stderr(&out)
    );
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address literal")
}

/// A scratch datapath holding quote (two backends) and quote-local (none), with one refused
/// connect counted.
fn programmed_scratch(tag: &str) -> Scratch {
    let mut s = Scratch::new(tag).expect("scratch datapath");
    let mut desired = Desired::default();
    desired.insert(
        sa(QUOTE),
        Protocol::Tcp,
        vec![sa("10.244.1.5:80"), sa("10.244.2.7:80")],
    );
    desired.insert(sa(QUOTE_LOCAL), Protocol::Tcp, vec![]);
    s.datapath.apply(&desired).expect("programming");
    let outcomes = Probe::run(Some(&s.cgroup), &["tcp", QUOTE_LOCAL, "1"]).expect("probe");
    assert_eq!(outcomes, vec![Outcome::Failed(ECONNREFUSED)]);
    s
}

#[test]
fn inspection_commands_read_the_installed_datapath() {
    let s = programmed_scratch("cli-inspect");
    let pins = s.pins.path().display().to_string();
    let with_pins = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--pin-dir", pins.as_str()]);
        ok(&all)
    };

    let status = with_pins(&["status"]);
    assert!(status.contains("program lb_connect4: attached"), "{status}");
    assert!(status.contains("frontends: 2"), "{status}");
    assert!(status.contains("1 refused"), "{status}");

    let services = with_pins(&["services"]);
    for needle in [QUOTE, QUOTE_LOCAL, "10.244.2.7:80", "(none: refuses)"] {
        assert!(
            services.contains(needle),
            "services lacks {needle}: {services}"
        );
    }

    // lookup prints its verdict and says it in its exit status, for scripts.
    let lookup = |target: &str| lbctl(&["lookup", target, "--pin-dir", &pins]);
    let refused = lookup(&format!("{QUOTE_LOCAL}/tcp"));
    assert_eq!(refused.status.code(), Some(EXIT_REFUSED), "{refused:?}");
    let text = stdout(&refused);
    assert!(
        text.contains("ECONNREFUSED") && text.contains("refused so far: 1"),
        "{text}"
    );
    let rewritten = lookup(&format!("{QUOTE}/tcp"));
    assert_eq!(rewritten.status.code(), Some(0), "{rewritten:?}");
    assert!(
        stdout(&rewritten).contains("rewritten to one of 2 backend(s)"),
        "{rewritten:?}"
    );
    let passed = lookup("10.96.0.1:443");
    assert_eq!(
        passed.status.code(),
        Some(EXIT_NOT_A_FRONTEND),
        "{passed:?}"
    );
    assert!(stdout(&passed).contains("pass through"), "{passed:?}");
    assert!(stderr(&passed).is_empty(), "{passed:?}");
    let bad = lookup("quote-local");
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(stderr(&bad).contains("ADDRESS:PORT"));
    let help = ok(&["lookup", "--help"]);
    for line in [
        "0  a frontend with backends",
        "3  a frontend without a usable backend",
        "4  not a service frontend",
    ] {
        assert!(help.contains(line), "lookup --help lacks {line:?}: {help}");
    }

    let stats = with_pins(&["stats"]);
    assert!(stats.contains("1 refused"), "{stats}");

    // -o json and -o yaml carry the same document.
    for args in [
        vec!["status"],
        vec!["services"],
        vec!["stats"],
        vec!["lookup", QUOTE],
        vec!["lookup", QUOTE_LOCAL],
    ] {
        let mut all = args.clone();
        all.extend(["--pin-dir", pins.as_str()]);
        let (from_json, from_yaml) = json_and_yaml(&all);
        assert_eq!(from_json, from_yaml, "lbctl {all:?}");
    }
    let (lookup, _) = json_and_yaml(&["lookup", QUOTE_LOCAL, "--pin-dir", &pins]);
    assert_eq!(lookup["verdict"], "refused");
    assert_eq!(lookup["frontend"]["refused"], 1);
}

/// `lbctl ARGS -o json` and `-o yaml`, each parsed (lookup's verdict exit statuses allowed).
fn json_and_yaml(args: &[&str]) -> (Value, Value) {
    let run = |format: &str| {
        let mut all = args.to_vec();
        all.extend(["-o", format]);
        let out = lbctl(&all);
        let verdict = args[0] == "lookup"
            && matches!(out.status.code(), Some(EXIT_REFUSED | EXIT_NOT_A_FRONTEND));
        assert!(
            out.status.success() || verdict,
            "lbctl {all:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    };
    let text = run("json");
    let from_json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("lbctl {args:?} -o json: not JSON ({e}): {text}"));
    let text = run("yaml");
    let from_yaml: Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("lbctl {args:?} -o yaml: not YAML ({e}): {text}"));
    (from_json, from_yaml)
}

#[test]
fn plan_prints_the_same_document_as_json_and_yaml() {
    for node in ["kind-worker", "kind-worker2"] {
        let (from_json, from_yaml) =
            json_and_yaml(&["plan", "--node", node, "manifests/examples/quote.yaml"]);
        assert_eq!(from_json, from_yaml, "{node}");
        assert_eq!(from_yaml["node"], node);
        assert!(
            from_yaml["frontends"]
                .as_array()
                .is_some_and(|f| !f.is_empty()),
            "{from_yaml}"
        );
    }
}

/// What bash completes after `lbctl WORDS...` (the last word is the one being typed).
fn bash_completions(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source <('{}' completion bash) && COMP_WORDS=(lbctl {}) && COMP_CWORD={} && \
         _lbctl lbctl '{}' '{}' && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        lbctl_path().display(),
        words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        words.len(),
        words.last().copied().unwrap_or_default(),
        words.len().checked_sub(2).map_or("lbctl", |i| words[i])
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out).lines().map(str::to_owned).collect()
}

#[test]
fn shell_completions_complete_subcommands_and_flags() {
    // bash runs the script: it completes subcommands, flags and the -o values.
    assert!(
        bash_completions(&["loo"]).contains(&"lookup".to_owned()),
        "{:?}",
        bash_completions(&["loo"])
    );
    let flags = bash_completions(&["lookup", "--pi"]);
    assert_eq!(flags, ["--pin-dir"], "{flags:?}");
    let formats = bash_completions(&["services", "-o", ""]);
    for format in ["table", "json", "yaml"] {
        assert!(formats.contains(&format.to_owned()), "{formats:?}");
    }
    // zsh and fish are not installed here: their scripts must name every subcommand and the
    // inspection commands' flags in their own syntax.
    let zsh = ok(&["completion", "zsh"]);
    assert!(zsh.starts_with("#compdef lbctl"), "{zsh}");
    let fish = ok(&["completion", "fish"]);
    for sub in SUBCOMMANDS {
        assert!(zsh.contains(&format!("'{sub}:")), "zsh lacks {sub}");
        assert!(fish.contains(&format!("-a \"{sub}\"")), "fish lacks {sub}");
    }
    assert!(zsh.contains("--pin-dir") && fish.contains("-l pin-dir"));
    let bad = lbctl(&["completion", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

#[test]
fn uninstall_detaches_and_removes_the_pins() {
    let s = programmed_scratch("cli-uninstall");
    let pins = s.pins.path().display().to_string();
    let out = ok(&["uninstall", "--pin-dir", &pins]);
    assert_eq!(out, format!("removed {pins}\n"));
    assert!(!s.pins.path().exists());
    // The programs are gone from the cgroup: the service address is no longer refused.
    let outcomes = Probe::run(Some(&s.cgroup), &["tcp", QUOTE_LOCAL, "1"]).expect("probe");
    assert_ne!(outcomes, vec![Outcome::Failed(ECONNREFUSED)]);
    let status = lbctl(&["status", "--pin-dir", &pins]);
    assert!(!status.status.success());
    assert!(
        stderr(&status).contains("no datapath is installed"),
        "{}",
        stderr(&status)
    );
    // A second uninstall is fine.
    ok(&["uninstall", "--pin-dir", &pins]);
}

/// A command shown in a doc, with where it came from.
#[derive(Debug)]
struct DocCommand {
    origin: String,
    line: String,
}

/// Commands in ```sh / ```bash / ```shell blocks (every line) and ```console blocks (lines
/// after `$ `); comments and continuations (`\`) handled.
fn doc_commands(doc: &str) -> Vec<DocCommand> {
    let text = fs::read_to_string(repo().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
    let mut commands = Vec::new();
    let mut fence: Option<String> = None;
    let mut pending = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(lang) = line.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(lang.to_owned()),
            };
            continue;
        }
        let command = match fence.as_deref() {
            Some("sh" | "bash" | "shell") => line,
            Some("console") => match line.strip_prefix("$ ") {
                Some(c) => c,
                None => continue,
            },
            _ => continue,
        };
        if command.is_empty() || command.starts_with('#') {
            continue;
        }
        if let Some(head) = command.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(command);
        commands.push(DocCommand {
            origin: format!("{doc}:{}", i + 1),
            line: std::mem::take(&mut pending),
        });
    }
    commands
}

/// Commands that need a cluster, a registry or a container runtime: the test checks only
/// that the files they name exist.
const CLUSTER_TOOLS: [&str; 3] = ["kubectl", "docker", "kustomize"];

fn first_word(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or_default()
}

/// Runs a documented shell line with the test's lbctl first in PATH and its scratch pin
/// directory instead of the default one.
fn run_doc_line(cmd: &DocCommand, pins: &str) {
    let bin_dir = lbctl_path().parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let line = cmd.line.replace(DOC_PIN_DIR, pins);
    let out = Command::new("bash")
        .args(["-c", &line])
        .current_dir(repo())
        .env("PATH", path)
        .env("LBCTL_PIN_DIR", pins)
        .output()
        .expect("running sh");
    // `lbctl lookup` tells its verdict in its exit status (the docs show refusing frontends).
    let lookup_verdict = line.starts_with("lbctl lookup")
        && matches!(out.status.code(), Some(EXIT_REFUSED | EXIT_NOT_A_FRONTEND));
    assert!(
        out.status.success() || lookup_verdict,
        "{}: `{}` failed ({}): {}{}",
        cmd.origin,
        cmd.line,
        out.status,
        stdout(&out),
        stderr(&out)
    );
    assert!(
        !out.stdout.is_empty(),
        "{}: `{}` printed nothing",
        cmd.origin,
        cmd.line
    );
}

/// `lbctl agent ...` would run forever (and attach to the host), `lbctl monitor ...` needs a
/// running agent: check that their arguments parse, which clap does before it acts on `--help`.
fn check_agent_line(cmd: &DocCommand) {
    let args: Vec<&str> = cmd.line.split_whitespace().skip(1).collect();
    let out = Command::new(lbctl_path())
        .args(&args)
        .arg("--help")
        .output()
        .expect("running lbctl");
    assert!(
        out.status.success(),
        "{}: `{}` does not parse: {}",
        cmd.origin,
        cmd.line,
        stderr(&out)
    );
}

/// Paths under manifests/ that a cluster command names must exist.
fn check_cluster_line(cmd: &DocCommand) {
    for word in cmd.line.split_whitespace() {
        if word.starts_with("manifests/") {
            assert!(
                repo().join(word).exists(),
                "{}: {word} does not exist",
                cmd.origin
            );
        }
    }
}

#[test]
fn every_documented_command_runs() {
    let commands: Vec<DocCommand> = DOCS.iter().flat_map(|d| doc_commands(d)).collect();
    assert!(commands.len() > 10, "found only {commands:?}");
    let s = programmed_scratch("cli-docs");
    let pins = s.pins.path().display().to_string();
    let mut seen = BTreeSet::new();
    // uninstall removes the datapath the others read: it runs last.
    let (uninstall, others): (Vec<&DocCommand>, Vec<&DocCommand>) = commands
        .iter()
        .partition(|c| c.line.starts_with("lbctl uninstall"));
    for cmd in others.into_iter().chain(uninstall) {
        let tool = first_word(&cmd.line);
        seen.insert(tool.to_owned());
        match tool {
            // `lbctl monitor` streams from a running agent (tests/tests/monitor.rs runs it).
            "lbctl"
                if cmd.line.starts_with("lbctl agent") || cmd.line.starts_with("lbctl monitor") =>
            {
                check_agent_line(cmd)
            }
            "lbctl" | "bpftool" => run_doc_line(cmd, &pins),
            // The two commands of the README: CI runs `cargo xtask test`, the demo test the
            // demo, and the benchmarks are a report.
            "cargo" => assert!(cmd.line.starts_with("cargo xtask "), "{cmd:?}"),
            t if CLUSTER_TOOLS.contains(&t) => check_cluster_line(cmd),
            other => panic!(
                "{}: `{}`: no test runs {other} commands; add it here",
                cmd.origin, cmd.line
            ),
        }
    }
    assert!(
        seen.contains("lbctl") && seen.contains("bpftool"),
        "{seen:?}"
    );
}

/// The metric names of the table in docs/operations.md.
fn documented_metrics() -> Vec<String> {
    let doc = fs::read_to_string(repo().join("docs/operations.md")).expect("operations.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `lbctl_"))
        .map(|rest| {
            let name = rest.split(['`', '{']).next().unwrap_or_default();
            format!("lbctl_{name}")
        })
        .collect()
}

/// OpenMetrics names a counter family without `_total` in `# TYPE`, an info family without
/// `_info`.
fn family(metric: &str) -> &str {
    metric
        .strip_suffix("_total")
        .or_else(|| metric.strip_suffix("_info"))
        .unwrap_or(metric)
}

#[test]
fn documented_metrics_are_served() {
    let documented = documented_metrics();
    assert!(documented.len() >= 8, "{documented:?}");
    let cgroup = testkit::cgroup::CgroupGuard::new("cli-metrics").expect("cgroup");
    let pins = testkit::pins::PinDirGuard::new("cli-metrics");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let mut agent = Command::new(lbctl_path())
        .args(["agent", "--node", "kind-worker", "--manifests"])
        .arg(repo().join("manifests/examples/quote.yaml"))
        .arg("--pin-dir")
        .arg(pins.path())
        .arg("--cgroup")
        .arg(cgroup.path())
        .args(["--metrics-addr", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting the agent");
    let url = format!("http://{port}/metrics");
    let mut text = String::new();
    for _ in 0..200 {
        let out = Command::new("curl")
            .args(["-sf", &url])
            .output()
            .expect("curl");
        text = stdout(&out);
        if text.contains("lbctl_frontends_programmed 2") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let source = fs::read_to_string(repo().join("lbctl/src/metrics.rs")).expect("metrics.rs");
    for metric in &documented {
        let name = family(metric);
        if metric.starts_with("lbctl_source_") {
            // Source events come only from the Kubernetes source (lbctl's own tests cover it).
            assert!(
                source.contains(&format!("\"{name}\"")),
                "{metric} is not defined"
            );
        } else {
            // A counter's or an info's family drops its suffix; a gauge named `*_info` keeps it.
            assert!(
                text.contains(&format!("# TYPE {name} "))
                    || text.contains(&format!("# TYPE {metric} gauge")),
                "{metric} is documented but not served:\n{text}"
            );
        }
    }
    assert!(text.contains("lbctl_ready 1"), "{text}");
    for kind in lbctl::metrics::ErrorKind::ALL {
        let series = format!("lbctl_errors_total{{kind=\"{}\"}} 0", kind.label());
        assert!(text.contains(&series), "{series} not served:\n{text}");
    }
}
