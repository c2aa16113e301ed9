//! `lbctl`: the node agent and the operator's CLI.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use lbctl::{
    agent::{self, AgentConfig, SourceConfig},
    datapath::{self, Capacity, DEFAULT_PIN_DIR, DatapathConfig, SocketLbScope},
    engine::{self, NodeContext},
    inspect, output,
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
    Agent(AgentArgs),
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
        /// Manifest files or directories (YAML, multi-document, `kind: List`).
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
    /// Detach the programs and remove every pinned map and link.
    Uninstall {
        #[command(flatten)]
        pin: PinDir,
    },
}

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
    #[command(flatten)]
    pin: PinDir,
    /// cgroup v2 directory to attach to (default: the cgroup2 mount, i.e. the whole node).
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
    /// Capacity of the service map (frontends + one entry per backend slot).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_SERVICE_ENTRIES)]
    max_service_entries: u32,
    /// Capacity of the backend map.
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_BACKENDS)]
    max_backends: u32,
    /// Maximum number of frontends (size of the per-frontend counters).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_FRONTENDS)]
    max_frontends: u32,
    /// Capacity of the reverse-translation map (sockets whose translation is remembered: UDP
    /// replies, getpeername, UDP stickiness); preallocated, ~120 bytes each.
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_REVNAT)]
    max_revnat: u32,
    /// Capacity of the session affinity map (client network namespace x frontend).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_AFFINITY)]
    max_affinity: u32,
    /// Which sockets the load balancer serves: those of `all` network namespaces, or only the
    /// agent's own (`host-only`, for meshes that redirect pod traffic themselves).
    #[arg(long, value_enum, default_value_t = SocketLbScope::All)]
    socket_lb_scope: SocketLbScope,
    /// Detach the programs, remove the pins, and exit.
    #[arg(long)]
    cleanup: bool,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
        Format::Table => emit(&table(value)),
    }
}

fn run_agent(args: AgentArgs) -> Result<()> {
    init_logging(args.log_format);
    if args.cleanup {
        datapath::uninstall(&args.pin.pin_dir)?;
        tracing::info!(pin_dir = %args.pin.pin_dir.display(), "datapath removed");
        return Ok(());
    }
    let cgroup = match args.cgroup {
        Some(c) => c,
        None => datapath::system::cgroup2_root()?,
    };
    let config = AgentConfig {
        node: node_context(args.node, args.zone, args.service_proxy_name),
        source: if args.manifests.is_empty() {
            SourceConfig::Kubernetes {
                kubeconfig: args.kubeconfig,
            }
        } else {
            SourceConfig::Manifests(args.manifests)
        },
        datapath: DatapathConfig {
            pin_dir: args.pin.pin_dir,
            cgroup,
            capacity: Capacity {
                service_entries: args.max_service_entries,
                backends: args.max_backends,
                frontends: args.max_frontends,
                revnat: args.max_revnat,
                affinity: args.max_affinity,
            },
            scope: args.socket_lb_scope,
        },
        coalesce: Duration::from_millis(args.coalesce_ms),
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        metrics_addr: args.metrics_addr,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(agent::run(config, shutdown_signal()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
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
    match format {
        // The table lists warnings itself; keep JSON on stdout clean and warn on stderr.
        Format::Json => {
            for w in &plan.warnings {
                eprintln!("warning: {w}");
            }
            emit(&(output::render_json(&plan) + "\n"))
        }
        Format::Table => emit(&output::render_table(&plan)),
    }
}

fn stats_text(views: &[inspect::FrontendView], totals: &datapath::Counters) -> String {
    format!(
        "total: {} rewritten, {} refused, {} passed through, {} retried\n{}",
        totals.rewritten,
        totals.refused,
        totals.passed,
        totals.retried,
        inspect::services_table(views)
    )
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => run_agent(args),
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
        } => {
            let target = inspect::parse_target(&target)?;
            print(
                output.format,
                &inspect::lookup(&pin.pin_dir, target)?,
                inspect::lookup_text,
            )
        }
        Command::Stats { pin, output } => {
            let views = inspect::services(&pin.pin_dir)?;
            let totals = inspect::status(&pin.pin_dir)?.counters;
            match output.format {
                Format::Json => emit(
                    &(serde_json::to_string_pretty(
                        &serde_json::json!({"total": totals, "frontends": views}),
                    )? + "\n"),
                ),
                Format::Table => emit(&stats_text(&views, &totals)),
            }
        }
        Command::Uninstall { pin } => {
            datapath::uninstall(&pin.pin_dir)?;
            emit(&format!("removed {}\n", display(&pin.pin_dir)))
        }
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
