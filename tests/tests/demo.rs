//! `cargo xtask demo` as a test: the demo runs to the end and shows what the README promises,
//! a second run works, an interrupted run (SIGINT) cleans up too, and nothing is left behind
//! (network namespaces, interfaces, cgroups, pins, work directories).
//!
//! The demo checks its own expectations (which node answers, the refusal, the reprogramming)
//! and fails loudly when one does not hold, so its success is the scenario's success.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use testkit::topology::{link_exists, netns_list, sibling_binary};

/// The demo takes a lock of its own; running two from one test binary would only wait.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const PODS: [&str; 6] = [
    "kiada-001",
    "kiada-002",
    "quote-001",
    "quote-002",
    "quote-003",
    "quote-canary",
];

fn assert_nothing_left() {
    let namespaces = netns_list();
    for pod in PODS {
        assert!(
            !namespaces.iter().any(|n| n == pod),
            "network namespace {pod} left behind"
        );
        assert!(
            !link_exists(&format!("ve-{pod}")),
            "veth of {pod} left behind"
        );
        assert!(
            !Path::new("/etc/netns").join(pod).exists(),
            "/etc/netns/{pod} left behind"
        );
    }
    assert!(!link_exists("lbdemo0"), "bridge left behind");
    let cgroup = lbctl::datapath::system::cgroup2_root()
        .expect("cgroup2")
        .join("lbctl-demo");
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    assert!(
        !Path::new("/sys/fs/bpf/lbctl-demo").exists(),
        "pins left behind"
    );
    let leftover_dirs: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("lbctl-demo-"))
        .collect();
    assert!(leftover_dirs.is_empty(), "{leftover_dirs:?} left behind");
}

fn run_demo() -> (ExitStatus, String, String) {
    let out = Command::new(sibling_binary("lb-demo").expect("lb-demo built"))
        .stdin(Stdio::null())
        .output()
        .expect("running lb-demo");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_demo_shows_the_scenario_twice_and_cleans_up() {
    testkit::require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for run in 1..=2 {
        let (status, stdout, stderr) = run_demo();
        assert!(
            status.success(),
            "run {run} failed: {status}\n{stdout}\n{stderr}"
        );
        assert!(!stdout.contains('\x1b'), "colour codes in piped output");
        for needle in [
            "This is the quote service running in pod quote-002 on node kind-worker",
            "This is the quote service running in pod quote-003 on node kind-worker2",
            "curl: (7)",
            "curl exit status: 7",
            "err 111",
            "quote-local",
            "quote-nearby",
            "lbctl lookup 10.96.77.212:80/tcp",
            "connect() fails with ECONNREFUSED",
            "\"count\"",
            "lbctl_connects_total{verdict=\"refused\"}",
            "lbctl uninstall --pin-dir /sys/fs/bpf/lbctl-demo/kind-worker",
            "Nothing is left behind.",
        ] {
            assert!(
                stdout.contains(needle),
                "run {run}: the output lacks {needle:?}:\n{stdout}"
            );
        }
        assert_nothing_left();
    }
}

#[test]
fn an_interrupted_demo_cleans_up() {
    testkit::require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut demo = Command::new(sibling_binary("lb-demo").expect("lb-demo built"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting lb-demo");
    // Interrupt once both agents run and requests are flowing. A thread drains the output to
    // the end, so the demo never writes into a closed pipe.
    let stdout = demo.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the demo did not get to its requests");
        if line.contains("for i in $(seq 12); do curl") {
            break;
        }
    }
    let signal = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .expect("kill");
    assert!(signal.success());
    let out = demo.wait_with_output().expect("waiting for lb-demo");
    reader.join().expect("reader thread");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert_nothing_left();
}
