//! `lb-bench`: lbctl's socket LB against kube-proxy-shaped iptables and nftables datapaths, and
//! lbctl's control plane at scale. Run it with `cargo xtask bench [-- ARGS]` (as root); see
//! BENCHMARKS.md. Everything it creates is removed at the end, on error and on Ctrl-C.
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use testkit::bench::{self, Options, arms::Arm};

#[derive(Parser)]
#[command(
    about = "lbctl vs kube-proxy-shaped iptables/nftables: connect latency (ratios paired per round), \
             lbctl's BPF time per connection, control plane at scale, endpoint churn",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    /// A smoke run: fewer and shorter rounds, smaller service counts.
    #[arg(long)]
    quick: bool,
    /// Interleaved rounds per service count: in each, every arm's connects run once, in an
    /// order shuffled per round (default 40, quick 6).
    #[arg(long, alias = "reps")]
    rounds: Option<usize>,
    /// Datapath arms, comma separated: direct,lbctl,iptables-nft,iptables-legacy,nftables.
    #[arg(long, value_delimiter = ',')]
    arms: Option<Vec<Arm>>,
    /// Service counts of the datapath arms (default 1,1000,10000,30000; quick 1,1000).
    #[arg(long, value_delimiter = ',')]
    counts: Option<Vec<usize>>,
    /// Endpoints per service in the datapath arms (default 3).
    #[arg(long)]
    endpoints: Option<usize>,
    /// Measured connects per arm and round (default 1000, quick 200).
    #[arg(long)]
    connects: Option<usize>,
    /// The CPU every client's measuring thread is pinned to (default: the last CPU this
    /// process may use).
    #[arg(long, conflicts_with = "no_pin")]
    cpu: Option<usize>,
    /// Do not pin the clients to one CPU.
    #[arg(long)]
    no_pin: bool,
    /// Seed of the per-round arm orders (default: from the clock; the report states it).
    #[arg(long)]
    seed: Option<u64>,
    /// Skip part 1 (datapath arms).
    #[arg(long)]
    skip_datapath: bool,
    /// Skip part 2 (control plane).
    #[arg(long)]
    skip_control_plane: bool,
    /// Skip part 3 (endpoint churn through the Kubernetes source: a real agent and the test
    /// API server; 3,000 services with --quick, else 30,000).
    #[arg(long)]
    skip_churn: bool,
    /// Where results.json, summary.md and connect-latency.svg go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

/// Child processes of the benchmark itself.
#[derive(Subcommand)]
enum Internal {
    /// The measuring client of one arm.
    #[command(name = "__client", hide = true)]
    Client {
        #[arg(long)]
        client_netns: PathBuf,
        #[arg(long)]
        server_netns: PathBuf,
        /// The port its listener in the server namespace takes.
        #[arg(long)]
        port: u16,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// lbctl's control plane at one scale.
    #[command(name = "__control-plane", hide = true)]
    ControlPlane {
        #[arg(long)]
        services: usize,
        #[arg(long)]
        endpoints: usize,
        #[arg(long)]
        changes: usize,
        #[arg(long)]
        pin_dir: PathBuf,
        #[arg(long)]
        cgroup: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.internal {
        Some(Internal::Client {
            client_netns,
            server_netns,
            port,
            cpu,
        }) => bench::client::child_main(&client_netns, &server_netns, port, cpu),
        Some(Internal::ControlPlane {
            services,
            endpoints,
            changes,
            pin_dir,
            cgroup,
        }) => bench::control::child_main(services, endpoints, changes, &pin_dir, &cgroup),
        None => bench::run(&Options {
            quick: cli.quick,
            rounds: cli.rounds,
            arms: cli.arms,
            counts: cli.counts,
            endpoints: cli.endpoints,
            connects: cli.connects,
            cpu: cli.cpu,
            no_pin: cli.no_pin,
            seed: cli.seed,
            skip_datapath: cli.skip_datapath,
            skip_control_plane: cli.skip_control_plane,
            skip_churn: cli.skip_churn,
            out: cli.out,
            command: std::env::args()
                .skip(1)
                .fold("lb-bench".to_owned(), |acc, a| acc + " " + &a),
        }),
    }
}
