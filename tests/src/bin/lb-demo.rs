//! `cargo xtask demo`: the *Kubernetes in Action* scenario of `internalTrafficPolicy: Local`
//! (section 11.5) on two simulated nodes of this machine, with real `lbctl agent`s, real pods
//! (network namespaces on a bridge, HTTP servers) and real `curl`.
//!
//! Each node is a cgroup with its own agent attached to it; a node's pods run their processes
//! in that cgroup, so that node's agent load-balances their connects. The agents watch manifest
//! files the demo writes (what the API server would hold). The demo shows which pod and node
//! answer `quote`, `quote-local` and `quote-nearby` from a client on each node, deletes the
//! quote pods of one node, shows `quote-local` refusing there while `quote` still answers, and
//! ends with the inspection commands. Everything it creates is removed at the end, on error,
//! and on Ctrl-C / SIGTERM.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::{Command, ExitCode, Output},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use testkit::demo::{
    self, Interrupted, check_interrupted,
    cluster::{App, Cluster, Pod, Routing, Service},
    style::Style,
    world::{BRIDGE, GATEWAY, POD_PREFIX_LEN, Paths, World},
};

/// Requests per client and service, as in the book's loop.
const REQUESTS: usize = 12;
/// Requests per client and service after the deletion.
const REQUESTS_AFTER: usize = 6;
/// How long an agent may take to program a change.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(10);
/// The node whose quote pods the demo deletes, and its client.
const EMPTIED_NODE: &str = "kind-worker";
/// The node whose datapath the demo inspects at the end.
const INSPECTED_NODE: &str = "kind-worker";
/// Prefix of every answer of a quote pod.
const ANSWER_PREFIX: &str = "This is the quote service running in pod ";
/// errno of a refused connect.
const ECONNREFUSED: i32 = 111;

fn main() -> ExitCode {
    let style = Style::detect();
    if let Err(e) = ctrlc::set_handler(|| {
        demo::interrupt();
        eprintln!("\nlb-demo: interrupted; cleaning up (this takes a second)...");
    }) {
        eprintln!("lb-demo: warning: no signal handler ({e}); Ctrl-C would leave things behind");
    }
    let started = Instant::now();
    match run(&style) {
        Ok(()) => {
            println!(
                "\n{}",
                style.bold(&format!(
                    "Done in {:.1} s. Nothing is left behind.",
                    started.elapsed().as_secs_f64()
                ))
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("lb-demo: interrupted; everything it had created was removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!(
                "{} {e:#}\n(everything the demo had created was removed)",
                style.red("lb-demo failed:")
            );
            ExitCode::FAILURE
        }
    }
}

fn run(style: &Style) -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::book();
    println!(
        "{}",
        style.bold(
            "lbctl demo: forwarding traffic only within the same node with internalTrafficPolicy: Local"
        )
    );
    style.note("(Kubernetes in Action, 2nd ed., 11.5; `lbctl` below is target/debug/lbctl)");

    let paths = Paths::detect()?;
    let (mut world, leftovers) = World::create(paths, &cluster)?;
    if !leftovers.is_empty() {
        style.note(&format!(
            "removed what an earlier, killed run left behind: {}",
            leftovers.join(", ")
        ));
    }
    create_pods(&mut world, &cluster, style)?;
    write_services(&world, &cluster, style)?;
    start_agents(&mut world, &cluster, style)?;
    show_plan(&world, style)?;

    for service in &cluster.services {
        check_interrupted()?;
        style.step(&format!(
            "{} ({}): {}",
            service.name,
            service.routing.describe(),
            expectation(service.routing)
        ));
        for client in cluster.pods_of(App::Kiada) {
            let answers = curl_loop(&world, style, client, service, REQUESTS)?;
            check_answers(&cluster, client, service, &answers, REQUESTS)?;
        }
    }

    delete_quote_pods(&mut world, &mut cluster, style)?;
    after_deletion(&world, &cluster, style)?;
    inspect(&world, &cluster, style)?;

    style.step("Cleaning up");
    world.teardown(&mut |line| style.note(&line));
    Ok(())
}

fn require_root() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid())?;
    if euid != 0 {
        bail!(
            "the demo creates cgroups, network namespaces and BPF programs: run it as root (cargo xtask demo)"
        );
    }
    Ok(())
}

fn expectation(routing: Routing) -> &'static str {
    match routing {
        Routing::Cluster => "any quote pod answers, on either node",
        Routing::Local => "only the quote pods on the client's own node answer",
        Routing::PreferSameNode => {
            "the client's own node answers (the EndpointSlice hints each endpoint for its node)"
        }
    }
}

/// `/etc/hosts` entries every pod gets: the services' names, as cluster DNS would answer.
fn service_hosts(cluster: &Cluster) -> Vec<(std::net::Ipv4Addr, Vec<String>)> {
    cluster
        .services
        .iter()
        .map(|s| (s.cluster_ip, s.dns_names()))
        .collect()
}

fn create_pods(world: &mut World, cluster: &Cluster, style: &Style) -> Result<()> {
    style.step(&format!(
        "Creating nodes {} and their pods",
        cluster
            .nodes
            .iter()
            .map(|n| n.name)
            .collect::<Vec<_>>()
            .join(" and ")
    ));
    let hosts = service_hosts(cluster);
    println!("{:<14} {:<12} {:<14} RUNS", "NAME", "IP", "NODE");
    for pod in &cluster.pods {
        check_interrupted()?;
        world.add_pod(pod, &hosts)?;
        let runs = match pod.app {
            App::Quote => {
                world.start_quote_server(pod)?;
                format!("HTTP server on :{}", demo::cluster::QUOTE_PORT)
            }
            App::Kiada => "the client: curl".to_owned(),
        };
        println!("{:<14} {:<12} {:<14} {runs}", pod.name, pod.ip, pod.node);
    }
    style.note(&format!(
        "a pod is a network namespace; its eth0 is one end of a veth pair plugged into bridge {BRIDGE} ({GATEWAY}/{POD_PREFIX_LEN}, the default gateway)"
    ));
    for node in &cluster.nodes {
        style.note(&format!(
            "the processes of {}'s pods run in cgroup {}",
            node.name,
            world.paths.node_cgroup(node.name).display()
        ));
    }
    Ok(())
}

fn write_services(world: &World, cluster: &Cluster, style: &Style) -> Result<()> {
    style.step("Writing the Services and EndpointSlices the agents watch");
    world.write_manifests(cluster)?;
    println!("{:<14} {:<15} ROUTING", "SERVICE", "CLUSTER-IP");
    for s in &cluster.services {
        let hints = if s.routing == Routing::PreferSameNode {
            " (its EndpointSlice carries hints.forNodes)"
        } else {
            ""
        };
        println!(
            "{:<14} {:<15} {}{hints}",
            s.name,
            s.cluster_ip,
            s.routing.describe()
        );
    }
    style.note(&format!(
        "{} (Nodes, Services, EndpointSlices with each quote pod's IP, nodeName and ready condition)",
        world.paths.manifest_file().display()
    ));
    Ok(())
}

fn start_agents(world: &mut World, cluster: &Cluster, style: &Style) -> Result<()> {
    style.step("Starting one lbctl agent per node");
    for node in &cluster.nodes {
        let args = world.start_agent(node.name)?;
        style.command("", &format!("lbctl {} &", args.join(" ")));
    }
    let took = world.wait_programmed(cluster, PROGRAM_TIMEOUT)?;
    style.note(&format!(
        "both agents attached their socket programs to their node's cgroup and programmed its services in {} ms",
        took.as_millis()
    ));
    for node in &cluster.nodes {
        style.note(&format!(
            "log of {}: {}",
            node.name,
            world.paths.agent_log(node.name).display()
        ));
    }
    Ok(())
}

fn show_plan(world: &World, style: &Style) -> Result<()> {
    style.step(&format!(
        "What {INSPECTED_NODE} programs (lbctl plan reads the same files and touches nothing)"
    ));
    let dir = world.paths.manifests_dir();
    let mut cmd = Command::new(&world.paths.lbctl);
    cmd.args(["plan", "--node", INSPECTED_NODE]).arg(&dir);
    host_command(
        style,
        &format!("lbctl plan --node {INSPECTED_NODE} {}", dir.display()),
        &mut cmd,
    )
}

/// Runs a command on the host, printing it as typed and then its output.
fn host_command(style: &Style, shown: &str, cmd: &mut Command) -> Result<()> {
    host_command_exiting(style, shown, cmd, 0)
}

/// Runs a command on the host, shows it and its output, and fails unless it exits with
/// `expected` (e.g. 3: `lbctl lookup` of a refusing frontend).
fn host_command_exiting(
    style: &Style,
    shown: &str,
    cmd: &mut Command,
    expected: i32,
) -> Result<()> {
    check_interrupted()?;
    style.command("", shown);
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    style.output(&String::from_utf8_lossy(&out.stdout));
    style.output(&String::from_utf8_lossy(&out.stderr));
    if exit_code(&out) != expected {
        bail!(
            "`{shown}` failed: {} (expected exit status {expected})",
            out.status
        );
    }
    if expected != 0 {
        style.output(&format!("   (exit status {expected})\n"));
    }
    Ok(())
}

fn prompt(client: &Pod) -> String {
    format!("{}@{}", client.name, client.node)
}

/// Which pod on which node answered.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    pod: String,
    node: String,
}

fn parse_answer(line: &str) -> Option<Answer> {
    let (pod, node) = line
        .trim()
        .strip_prefix(ANSWER_PREFIX)?
        .split_once(" on node ")?;
    Some(Answer {
        pod: pod.to_owned(),
        node: node.to_owned(),
    })
}

/// `for i in $(seq N); do curl -s -m 2 SERVICE; done` in the client pod: prints every answer
/// (own node green, other node yellow) and a tally.
fn curl_loop(
    world: &World,
    style: &Style,
    client: &Pod,
    service: &Service,
    n: usize,
) -> Result<Vec<Answer>> {
    check_interrupted()?;
    let script = format!(
        "for i in $(seq {n}); do curl -s -m 2 {}; done",
        service.name
    );
    style.command(&prompt(client), &script);
    let out = world.run_in_pod(client, &["exec", "sh", "-c", &script])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut answers = Vec::new();
    for line in text.lines() {
        match parse_answer(line) {
            Some(a) if a.node == client.node => println!("{}", style.green(line)),
            Some(_) => println!("{}", style.yellow(line)),
            None => println!("{}", style.red(line)),
        }
        answers.extend(parse_answer(line));
    }
    style.output(&String::from_utf8_lossy(&out.stderr));
    style.note(&tally(&answers, client, n));
    Ok(answers)
}

fn tally(answers: &[Answer], client: &Pod, asked: usize) -> String {
    let mut by_pod: BTreeMap<&str, usize> = BTreeMap::new();
    for a in answers {
        *by_pod.entry(a.pod.as_str()).or_default() += 1;
    }
    let local = answers.iter().filter(|a| a.node == client.node).count();
    let mut out = format!("{} of {asked} answered:", answers.len());
    for (pod, count) in by_pod {
        let _ = write!(out, " {pod} x{count}");
    }
    let _ = write!(
        out,
        "; {local} from {} (the client's node), {} from the other node",
        client.node,
        answers.len() - local
    );
    out
}

/// The answers must come from the pods the service's routing allows, and all must arrive.
fn check_answers(
    cluster: &Cluster,
    client: &Pod,
    service: &Service,
    answers: &[Answer],
    asked: usize,
) -> Result<()> {
    let local_left = cluster.quote_pods_on(client.node).count() > 0;
    let must_be_local = match service.routing {
        Routing::Cluster => false,
        Routing::Local => true,
        Routing::PreferSameNode => local_left,
    };
    let quote_pods: Vec<&str> = cluster.pods_of(App::Quote).map(|p| p.name).collect();
    for a in answers {
        if !quote_pods.contains(&a.pod.as_str()) {
            bail!(
                "{} was answered by {}, which is not a running quote pod",
                service.name,
                a.pod
            );
        }
        if must_be_local && a.node != client.node {
            bail!(
                "{} from {} was answered on {}: it must stay on {}",
                service.name,
                client.name,
                a.node,
                client.node
            );
        }
    }
    if answers.len() != asked {
        bail!(
            "{} from {}: only {} of {asked} requests were answered",
            service.name,
            client.name,
            answers.len()
        );
    }
    Ok(())
}

fn client_on<'a>(cluster: &'a Cluster, node: &str) -> Result<&'a Pod> {
    cluster
        .pods_of(App::Kiada)
        .find(|p| p.node == node)
        .with_context(|| format!("no client on {node}"))
}

fn service<'a>(cluster: &'a Cluster, name: &str) -> Result<&'a Service> {
    cluster
        .service(name)
        .with_context(|| format!("no service {name}"))
}

fn delete_quote_pods(world: &mut World, cluster: &mut Cluster, style: &Style) -> Result<()> {
    check_interrupted()?;
    let gone = cluster.delete_quote_pods_on(EMPTIED_NODE);
    let names: Vec<&str> = gone.iter().map(|p| p.name).collect();
    style.step(&format!(
        "Deleting the quote pods on {EMPTIED_NODE}: {}",
        names.join(", ")
    ));
    for pod in &gone {
        world.stop_quote_server(pod.name);
    }
    let changed = Instant::now();
    world.write_manifests(cluster)?;
    world.wait_programmed(cluster, PROGRAM_TIMEOUT)?;
    style.note(&format!(
        "their servers are killed and their endpoints removed from the EndpointSlices; the agents reprogrammed their nodes {} ms after the file changed",
        changed.elapsed().as_millis()
    ));
    Ok(())
}

fn after_deletion(world: &World, cluster: &Cluster, style: &Style) -> Result<()> {
    let client = client_on(cluster, EMPTIED_NODE)?;
    let local = service(cluster, "quote-local")?;
    style.step(&format!(
        "{} on {EMPTIED_NODE}, which has no quote pod left",
        client.name
    ));
    curl_refused(world, style, client, local)?;
    probe_refused(world, style, client, local)?;
    for name in ["quote", "quote-nearby"] {
        let svc = service(cluster, name)?;
        let answers = curl_loop(world, style, client, svc, REQUESTS_AFTER)?;
        check_answers(cluster, client, svc, &answers, REQUESTS_AFTER)?;
        if answers.iter().any(|a| a.node == client.node) {
            bail!("{name} was answered on {EMPTIED_NODE}, whose quote pods are gone");
        }
    }
    style.note(
        "quote-local refuses (a Local policy never leaves the node), quote still answers, and quote-nearby falls back to the other node: a preference never refuses",
    );

    let other = cluster
        .pods_of(App::Kiada)
        .find(|p| p.node != EMPTIED_NODE)
        .context("no client on the other node")?;
    style.step(&format!(
        "{} on {}: quote-local still answers locally there",
        other.name, other.node
    ));
    let answers = curl_loop(world, style, other, local, REQUESTS_AFTER)?;
    check_answers(cluster, other, local, &answers, REQUESTS_AFTER)
}

/// `curl -sS quote-local` must fail with curl's exit code 7 (could not connect).
fn curl_refused(world: &World, style: &Style, client: &Pod, service: &Service) -> Result<()> {
    check_interrupted()?;
    style.command(&prompt(client), &format!("curl -sS {}", service.name));
    let out = world.run_in_pod(client, &["exec", "curl", "-sS", "-m", "2", service.name])?;
    print_failure(style, &out);
    style.note(&format!("curl exit status: {}", exit_code(&out)));
    if exit_code(&out) != 7 {
        bail!(
            "curl {} from {} should fail to connect (exit 7), got exit {}",
            service.name,
            client.name,
            exit_code(&out)
        );
    }
    Ok(())
}

/// The errno, explicitly: `lb-probe tcp VIP:80 1` prints `err 111`.
fn probe_refused(world: &World, style: &Style, client: &Pod, service: &Service) -> Result<()> {
    check_interrupted()?;
    let target = format!("{}:{}", service.cluster_ip, demo::cluster::QUOTE_PORT);
    style.command(&prompt(client), &format!("lb-probe tcp {target} 1"));
    let out = world.run_in_pod(client, &["tcp", &target, "1"])?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!("{}", style.red(&line));
    style.note(
        "errno 111 = ECONNREFUSED, returned by connect() itself: the socket hook found the service with no usable backend, and no packet left the pod",
    );
    if line != format!("err {ECONNREFUSED}") {
        bail!(
            "a connect to {target} from {} should be refused, got {line:?}",
            client.name
        );
    }
    Ok(())
}

fn print_failure(style: &Style, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        println!("{}", style.red(line));
    }
    style.output(&String::from_utf8_lossy(&out.stdout));
}

fn exit_code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn inspect(world: &World, cluster: &Cluster, style: &Style) -> Result<()> {
    let pin_dir = world.paths.pin_dir(INSPECTED_NODE);
    let pins = pin_dir.display().to_string();
    let local = service(cluster, "quote-local")?;
    let target = format!("{}:{}/tcp", local.cluster_ip, demo::cluster::QUOTE_PORT);
    style.step(&format!(
        "Inspecting {INSPECTED_NODE}'s datapath (pin directory {pins})"
    ));
    let lbctl = |args: &[&str]| {
        let mut cmd = Command::new(&world.paths.lbctl);
        cmd.args(args).args(["--pin-dir", &pins]);
        cmd
    };
    // `lookup` of quote-local, whose pods on this node are gone: it refuses, and says so with
    // exit status 3 (scripts test it).
    for (args, exit) in [
        (vec!["status"], 0),
        (vec!["services"], 0),
        (vec!["lookup", target.as_str()], 3),
        (vec!["stats"], 0),
    ] {
        let shown = format!("lbctl {} --pin-dir {pins}", args.join(" "));
        host_command_exiting(style, &shown, &mut lbctl(&args), exit)?;
    }
    let dump = format!("bpftool map dump pinned {pins}/lb_services | head -n 32");
    host_command(style, &dump, Command::new("sh").args(["-c", &dump]))?;
    let metrics = world.agent(INSPECTED_NODE)?.metrics_addr();
    let scrape =
        format!("curl -s http://{metrics}/metrics | grep -E '^lbctl_(connects|frontends)'");
    host_command(style, &scrape, Command::new("sh").args(["-c", &scrape]))?;
    let ready = format!("curl -s http://{metrics}/readyz");
    host_command(style, &ready, Command::new("sh").args(["-c", &ready]))
}
