//! `lbctl`: the node agent and the operator's CLI.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use lbctl::{
    agent::{self, AgentConfig, SourceConfig},
    datapath::{self, Capacity, DEFAULT_PIN_DIR, DatapathConfig, SocketLbScope},
    engine::{self, NodeContext},
    inspect, monitor, output,
    source::manifests,
};

/// eBPF socket-level service load balancer for Kubernetes.
#[derive(Parser)]
#[command(name = "lbctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Args)]
struct PinDir {
    /// bpffs directory holding lbctl's pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_DIR, env = "LBCTL_PIN_DIR")]
    pin_dir: PathBuf,
}

#[derive(Args)]
struct Output {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: watch Services, EndpointSlices and this Node (or manifest files) and
    /// program this node's datapath.
    Agent(Box<AgentArgs>),
    /// Show what a node would program, from manifests (e.g. `kubectl get svc,endpointslices,nodes
    /// -A -o yaml`). Reads files only; touches nothing.
    Plan {
        /// The node to plan for (its zone and addresses come from its Node object).
        #[arg(long)]
        node: String,
        /// Override the node's zone (label topology.kubernetes.io/zone).
        #[arg(long)]
        zone: Option<String>,
        /// Plan only the Services labelled service.kubernetes.io/service-proxy-name=NAME (by
        /// default: only the Services without that label, as kube-proxy does).
        #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        service_proxy_name: Option<String>,
        #[command(flatten)]
        output: Output,
        /// Manifest files or directories (YAML, multi-document, `kind: List`, or JSON); `-` reads
        /// standard input (`kubectl get svc,endpointslices,nodes -A -o yaml | lbctl plan ... -`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Attach point, programs, map fill levels and counters of the installed datapath.
    Status {
        #[command(flatten)]
        pin: PinDir,
        #[command(flatten)]
        output: Output,
    },
    /// Programmed frontends with their backends, decoded from the pinned maps.
    Services {
        #[command(flatten)]
        pin: PinDir,
        #[command(flatten)]
        output: Output,
    },
    /// What a connect to ADDRESS:PORT[/tcp|/udp] gets now, and why.
    #[command(after_help = LOOKUP_EXIT_CODES)]
    Lookup {
        /// e.g. 10.96.0.10:80/tcp or [fd00::10]:53/udp
        target: String,
        #[command(flatten)]
        pin: PinDir,
        #[command(flatten)]
        output: Output,
    },
    /// Kernel counters: totals and per frontend.
    Stats {
        #[command(flatten)]
        pin: PinDir,
        #[command(flatten)]
        output: Output,
    },
    /// Stream the datapath's decisions as they happen: which process in which cgroup connected
    /// (or sent a datagram) to which Service, and whether it was rewritten or refused. Needs
    /// the agent running on this node; while no monitor runs the datapath only checks a flag.
    Monitor(MonitorArgs),
    /// Detach the programs and remove every pin: maps, links, the state record, staged maps.
    Uninstall {
        #[command(flatten)]
        pin: PinDir,
    },
    /// Print a shell completion script, e.g. `lbctl completion bash > /etc/bash_completion.d/lbctl`
    /// or `source <(lbctl completion zsh)`.
    Completion {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

/// `lbctl monitor`'s output: a stream, so one JSON object per line and no YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum MonitorFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum MonitorVerdict {
    Rewritten,
    Refused,
    Reversed,
}

#[derive(Args)]
struct MonitorArgs {
    #[command(flatten)]
    pin: PinDir,
    /// The agent's monitor socket (default: derived from --pin-dir, as the agent does).
    #[arg(long, env = "LBCTL_MONITOR_SOCKET")]
    monitor_socket: Option<PathBuf>,
    /// Only this Service's decisions (NAMESPACE/NAME).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    service: Option<String>,
    /// Only these verdicts (repeatable). Default: rewritten and refused (and reversed with
    /// --reverse).
    #[arg(long, value_enum)]
    verdict: Vec<MonitorVerdict>,
    /// Also show reverse translations: UDP replies and getpeername() shown as the service.
    #[arg(long)]
    reverse: bool,
    /// Exit after printing this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Output format: a table, or one JSON object per line.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = MonitorFormat::Table)]
    format: MonitorFormat,
}
/// `lbctl lookup`'s exit status when the frontend refuses connects (ECONNREFUSED).
const EXIT_REFUSED: u8 = 3;
/// `lbctl lookup`'s exit status when the destination is not a frontend on this node.
const EXIT_NOT_A_FRONTEND: u8 = 4;

const LOOKUP_EXIT_CODES: &str = "\
Exit status:
  0  a frontend with backends: the connect is rewritten to one of them
  3  a frontend without a usable backend: the connect fails with ECONNREFUSED
  4  not a service frontend on this node: the connect passes through untouched
  1  error (no datapath installed, unreadable maps, bad ADDRESS:PORT); 2: bad usage";

#[derive(Args)]
struct AgentArgs {
    /// This node's name (the DaemonSet sets NODE_NAME from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Override this node's zone.
    #[arg(long)]
    zone: Option<String>,
    /// Serve only the Services labelled service.kubernetes.io/service-proxy-name=NAME, beside
    /// another proxy that serves the rest (by default: only the Services without that label,
    /// as kube-proxy does).
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    service_proxy_name: Option<String>,
    /// Read objects from these manifest files or directories (re-read on change) instead of
    /// the Kubernetes API.
    #[arg(long = "manifests", value_name = "PATH", conflicts_with = "kubeconfig")]
    manifests: Vec<PathBuf>,
    /// kubeconfig file (default: in-cluster configuration, then $KUBECONFIG / ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Objects per list request to the API server (at start and on every relist). Each page is
    /// decoded whole before its objects are converted: smaller pages keep the agent's peak
    /// memory lower, for more requests (client-go and kube-rs ask for 500).
    #[arg(
        long,
        value_name = "N",
        default_value_t = lbctl::source::kube::DEFAULT_LIST_PAGE_SIZE,
        conflicts_with = "manifests"
    )]
    list_page_size: std::num::NonZeroU32,
    #[command(flatten)]
    pin: PinDir,
    /// cgroup v2 directory to attach to (default: the cgroup2 mount, i.e. the whole node). It
    /// is checked: a directory that is not cgroup v2, or the agent's own cgroup (a pod's private
    /// cgroup namespace), is refused.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz here (e.g. 127.0.0.1:9970).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Coalescing window for bursts of changes, in milliseconds.
    #[arg(long, default_value_t = 20)]
    coalesce_ms: u64,
    /// Re-apply at least this often, in seconds.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    /// Backend slots: the sum over frontends of their backends, each frontend a range of the
    /// slot array (a changed frontend's new range is written beside its old one, freed by the
    /// next apply, so leave room for churn); the membership map gets the same. 8 + 64 bytes of
    /// kernel memory per slot (the array and the preallocated membership hash). The service
    /// map holds one master per frontend and is sized by --max-frontends.
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_SERVICE_ENTRIES)]
    max_service_entries: u32,
    /// Capacity of the backend map, an array indexed by backend id (ids 1 to N-1); 24 bytes of
    /// kernel memory per element.
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_BACKENDS)]
    max_backends: u32,
    /// Maximum number of frontends (size of the per-frontend counters and of the service map,
    /// one preallocated master of 88 bytes each).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_FRONTENDS)]
    max_frontends: u32,
    /// No longer used: sockets keep their reverse translation in socket-local storage, which has
    /// no capacity. Accepted (and ignored, with a warning) so existing DaemonSet arguments work.
    #[arg(long, hide = true)]
    max_revnat: Option<u32>,
    /// Capacity of the session affinity map (client network namespace x frontend).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_AFFINITY)]
    max_affinity: u32,
    /// Elements of the TCP translation array, a power of two, 56 bytes of kernel memory each: a
    /// TCP connect through a frontend records its translation there (a copy, cheaper than
    /// creating socket storage), and the agent keeps the translations of sockets still connected
    /// in their storage after every quarter of this many connects (or a second after the last
    /// pass once any happened), in its own network namespace and those of
    /// --terminate-in-netns-dir. Raise it on nodes that open more than that many
    /// TCP connections through services in a quarter second.
    #[arg(long, default_value_t = lb_common::DEFAULT_TCP_RECENT, value_parser = power_of_two)]
    max_tcp_recent: u32,
    /// Which sockets the load balancer serves: those of `all` network namespaces, or only the
    /// agent's own (`host-only`, for meshes that redirect pod traffic themselves).
    #[arg(long, value_enum, default_value_t = SocketLbScope::All)]
    socket_lb_scope: SocketLbScope,
    /// Which connected sockets are terminated when the backend lbctl sent them to leaves the
    /// frontend's set: their next send/recv fails (ECONNABORTED) and the client reconnects to a
    /// live backend. `udp-tcp` also aborts established TCP connections instead of letting them
    /// drain. Needs Linux 6.5+ (BPF socket iterators, bpf_sock_destroy).
    #[arg(long, value_enum, default_value_t = datapath::TerminateSockets::Udp)]
    terminate_sockets: datapath::TerminateSockets,
    /// Also terminate sockets in the network namespaces whose handles are in this directory
    /// (bind mounts such as the CNI's /var/run/netns/cni-*), besides the agent's own (the
    /// host's). Repeatable. The passes that keep TCP translations (--max-tcp-recent) walk these
    /// namespaces too. Entering a pod's namespace needs CAP_SYS_ADMIN: see docs/operations.md.
    #[arg(long, value_name = "DIR")]
    terminate_in_netns_dir: Vec<PathBuf>,
    /// Serve `lbctl monitor` on this Unix socket (default: /run/lbctl/<pin dir>.monitor.sock).
    #[arg(long, env = "LBCTL_MONITOR_SOCKET")]
    monitor_socket: Option<PathBuf>,
    /// Kernel-side debug logs: one line per decision of the programs, logged with target
    /// `lbctl::bpf` at debug level. For troubleshooting: it costs every service connect.
    #[arg(long)]
    debug_bpf: bool,
    /// /healthz fails (503) when the reconcile loop has not completed a turn for this many
    /// seconds [default: 3 × --resync-seconds]; must exceed --resync-seconds.
    #[arg(long, value_name = "SECONDS")]
    stall_seconds: Option<u64>,
    /// Detach the programs, remove the pins, and exit.
    #[arg(long)]
    cleanup: bool,
    /// Load this kernel object instead of the one built into lbctl (development and upgrade
    /// tests only).
    #[arg(long, value_name = "PATH", hide = true)]
    object: Option<PathBuf>,
}

fn init_logging(format: LogFormat, debug_bpf: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if debug_bpf && let Ok(directive) = "lbctl::bpf=debug".parse() {
        // --debug-bpf asks for the kernel's debug lines whatever RUST_LOG says.
        filter = filter.add_directive(directive);
    }
    // Colors only on a terminal: `kubectl logs` and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Writes to stdout; a closed pipe (`lbctl ... | head`) ends the output quietly.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn print<T: serde::Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<()> {
    match format {
        Format::Json => emit(&(serde_json::to_string_pretty(value)? + "\n")),
        Format::Yaml => emit(&output::render_yaml(value)?),
        Format::Table => emit(&table(value)),
    }
}

/// Parses a power of two of at least 2 (`--max-tcp-recent`).
fn power_of_two(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n < 2 || !n.is_power_of_two() {
        return Err(format!("{n} is no power of two of at least 2"));
    }
    Ok(n)
}

fn run_agent(args: AgentArgs) -> Result<()> {
    init_logging(args.log_format, args.debug_bpf);
    if args.cleanup {
        datapath::uninstall(&args.pin.pin_dir)?;
        tracing::info!(pin_dir = %args.pin.pin_dir.display(), "datapath removed");
        return Ok(());
    }
    if let Some(n) = args.max_revnat {
        tracing::warn!(
            max_revnat = n,
            "--max-revnat is ignored: sockets keep their reverse translation in socket-local \
             storage, which has no capacity; remove the flag"
        );
    }
    let cgroup = match args.cgroup {
        Some(c) => c,
        None => datapath::system::cgroup2_root()?,
    };
    let resync_seconds = args.resync_seconds.max(1);
    let stall_seconds = args.stall_seconds.unwrap_or(3 * resync_seconds);
    if stall_seconds <= resync_seconds {
        anyhow::bail!(
            "--stall-seconds {stall_seconds} must exceed --resync-seconds {resync_seconds}: the loop \
             waits up to that long when nothing changes"
        );
    }
    for dir in &args.terminate_in_netns_dir {
        datapath::terminate::check_netns_dir(dir)
            .map_err(|e| anyhow::anyhow!("--terminate-in-netns-dir: {e}"))?;
    }
    let config = AgentConfig {
        node: node_context(args.node, args.zone, args.service_proxy_name),
        source: if args.manifests.is_empty() {
            SourceConfig::Kubernetes {
                kubeconfig: args.kubeconfig,
                list_page_size: args.list_page_size,
            }
        } else {
            SourceConfig::Manifests(args.manifests)
        },
        datapath: DatapathConfig {
            pin_dir: args.pin.pin_dir.clone(),
            cgroup,
            capacity: Capacity {
                service_entries: args.max_service_entries,
                backends: args.max_backends,
                frontends: args.max_frontends,
                affinity: args.max_affinity,
                tcp_recent: args.max_tcp_recent,
            },
            scope: args.socket_lb_scope,
        },
        coalesce: Duration::from_millis(args.coalesce_ms),
        resync: Duration::from_secs(resync_seconds),
        metrics_addr: args.metrics_addr,
        monitor_socket: args
            .monitor_socket
            .unwrap_or_else(|| monitor::socket_path(&args.pin.pin_dir)),
        debug_bpf: args.debug_bpf,
        stall_threshold: Duration::from_secs(stall_seconds),
        // Test hook, read from the environment so that it appears in no --help or completion.
        stall_file: std::env::var_os(agent::STALL_FILE_ENV).map(PathBuf::from),
        object: args.object,
        termination: datapath::TerminationConfig {
            sockets: args.terminate_sockets,
            netns_dirs: args.terminate_in_netns_dir,
        },
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let result = runtime.block_on(async {
        // Registered before anything else runs: a SIGTERM during start-up (an upgrade rolled
        // quickly) stops the agent cleanly instead of killing it.
        let shutdown = shutdown_signal();
        agent::run(config, shutdown).await
    });
    // A blocking task still running (a manifest being re-read, a socket sweep) holds nothing
    // the datapath needs: do not let it delay the exit an orchestrator is waiting for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    }
}

/// The node and the Services this proxy serves, from `--node`, `--zone`, `--service-proxy-name`.
fn node_context(node: String, zone: Option<String>, proxy_name: Option<String>) -> NodeContext {
    let mut ctx = NodeContext::new(node);
    if let Some(zone) = zone {
        ctx = ctx.with_zone(zone);
    }
    if let Some(name) = proxy_name {
        ctx = ctx.with_service_proxy_name(name);
    }
    ctx
}

fn run_plan(ctx: NodeContext, format: Format, paths: &[PathBuf]) -> Result<()> {
    let inventory = manifests::load_paths(paths)?;
    let plan = engine::plan(&inventory, &ctx);
    if !matches!(format, Format::Table) {
        // The table lists warnings itself; keep JSON and YAML on stdout clean and warn on stderr.
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
    }
    match format {
        Format::Json => emit(&(output::render_json(&plan) + "\n")),
        Format::Yaml => emit(&output::render_yaml(&plan)?),
        Format::Table => emit(&output::render_table(&plan)),
    }
}

/// What `lbctl stats` prints: the node's totals and each frontend's counters.
#[derive(serde::Serialize)]
struct Stats {
    total: datapath::Counters,
    frontends: Vec<inspect::FrontendView>,
}

fn stats_text(stats: &Stats) -> String {
    let totals = &stats.total;
    format!(
        "total: {} rewritten, {} refused, {} passed through, {} retried\n{}",
        totals.rewritten,
        totals.refused,
        totals.passed,
        totals.retried,
        inspect::services_table(&stats.frontends)
    )
}

/// Not a failure: a non-zero exit status a command chose after printing its result (`lookup`'s
/// verdict), carried out of [`run`] to [`main`].
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
struct Exit(u8);

/// Prints what a connect to `target` gets; the exit status tells scripts which verdict it was.
fn run_lookup(target: &str, pin_dir: &Path, format: Format) -> Result<()> {
    let target = inspect::parse_target(target)?;
    let lookup = inspect::lookup(pin_dir, target)?;
    print(format, &lookup, inspect::lookup_text)?;
    match lookup {
        inspect::Lookup::Rewritten { .. } => Ok(()),
        inspect::Lookup::Refused { .. } => Err(Exit(EXIT_REFUSED).into()),
        inspect::Lookup::PassedThrough { .. } => Err(Exit(EXIT_NOT_A_FRONTEND).into()),
    }
}

fn completion(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lbctl", &mut script);
    emit(&String::from_utf8(script).context("completion script")?)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => run_agent(*args),
        Command::Plan {
            node,
            zone,
            service_proxy_name,
            output,
            paths,
        } => run_plan(
            node_context(node, zone, service_proxy_name),
            output.format,
            &paths,
        ),
        Command::Status { pin, output } => print(
            output.format,
            &inspect::status(&pin.pin_dir)?,
            inspect::status_text,
        ),
        Command::Services { pin, output } => {
            print(output.format, &inspect::services(&pin.pin_dir)?, |v| {
                inspect::services_table(v)
            })
        }
        Command::Lookup {
            target,
            pin,
            output,
        } => run_lookup(&target, &pin.pin_dir, output.format),
        Command::Stats { pin, output } => {
            let stats = Stats {
                frontends: inspect::services(&pin.pin_dir)?,
                total: inspect::status(&pin.pin_dir)?.counters,
            };
            print(output.format, &stats, stats_text)
        }
        Command::Monitor(args) => run_monitor(args),
        Command::Uninstall { pin } => {
            datapath::uninstall(&pin.pin_dir)?;
            emit(&format!("removed {}\n", display(&pin.pin_dir)))
        }
        Command::Completion { shell } => completion(shell),
    }
}

fn run_monitor(args: MonitorArgs) -> Result<()> {
    let filter = monitor::Filter {
        service: args
            .service
            .as_deref()
            .map(monitor::parse_service)
            .transpose()?,
        verdicts: args
            .verdict
            .iter()
            .map(|v| match v {
                MonitorVerdict::Rewritten => "rewritten",
                MonitorVerdict::Refused => "refused",
                MonitorVerdict::Reversed => "reversed",
            })
            .map(str::to_owned)
            .collect(),
        reverse: args.reverse,
    };
    let socket = args
        .monitor_socket
        .unwrap_or_else(|| monitor::socket_path(&args.pin.pin_dir));
    let style = match args.format {
        MonitorFormat::Table => monitor::Style::Table,
        MonitorFormat::Json => monitor::Style::Json,
    };
    monitor::run(
        &args.pin.pin_dir,
        &socket,
        &filter,
        style,
        args.count,
        &mut std::io::stdout().lock(),
    )
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Exit>() => {
            ExitCode::from(e.downcast_ref::<Exit>().map_or(1, |exit| exit.0))
        }
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
