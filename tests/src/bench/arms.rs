//! The datapath arms: how each one is programmed with a [`ServiceSet`], and which address its
//! client connects to.
use std::{fmt, net::SocketAddr, path::Path, str::FromStr, time::Instant};

use anyhow::{Context, Result, bail};
use lbctl::datapath::Desired;
use serde::Serialize;

use super::{
    netns::{Netns, Topology, run, run_with_input},
    rules,
    scratch::BenchDatapath,
    services::{DIRECT_PORT, ServiceSet, TARGET_PORT},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    /// Straight to the backend: no load balancer, no rules.
    Direct,
    /// lbctl's connect-time socket LB (cgroup connect4).
    Lbctl,
    /// kube-proxy iptables mode, iptables 1.8 with the nf_tables backend.
    IptablesNft,
    /// kube-proxy iptables mode, legacy x_tables.
    IptablesLegacy,
    /// kube-proxy nftables mode.
    Nftables,
}

pub const ALL_ARMS: [Arm; 5] = [
    Arm::Direct,
    Arm::Lbctl,
    Arm::IptablesNft,
    Arm::IptablesLegacy,
    Arm::Nftables,
];

/// Services per `nft -f` transaction when loading the nftables arm. One transaction of
/// 30,000 services takes minutes on this kernel (the commit binds every anonymous vmap with a
/// walk of the whole transaction); chunks give the same ruleset in a fraction of the time.
const NFT_CHUNK: usize = 1000;

impl Arm {
    pub fn name(self) -> &'static str {
        match self {
            Arm::Direct => "direct",
            Arm::Lbctl => "lbctl",
            Arm::IptablesNft => "iptables-nft",
            Arm::IptablesLegacy => "iptables-legacy",
            Arm::Nftables => "nftables",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Arm::Direct => "d",
            Arm::Lbctl => "lb",
            Arm::IptablesNft => "in",
            Arm::IptablesLegacy => "il",
            Arm::Nftables => "nf",
        }
    }

    /// The restore tool of the iptables arms.
    pub fn restore_tool(self) -> Option<&'static str> {
        match self {
            Arm::IptablesNft => Some("iptables-nft-restore"),
            Arm::IptablesLegacy => Some("iptables-legacy-restore"),
            _ => None,
        }
    }

    /// Whether this machine can run the arm; `Err` says why not.
    pub fn available(self) -> Result<()> {
        let probe = match self {
            Arm::Direct | Arm::Lbctl => return Ok(()),
            Arm::IptablesNft => ["iptables-nft", "-t", "nat", "-L", "-n"],
            Arm::IptablesLegacy => ["iptables-legacy", "-t", "nat", "-L", "-n"],
            Arm::Nftables => ["nft", "list", "ruleset", "", ""],
        };
        let ns = Netns::new(&format!("probe-{}", self.short()))?;
        let args: Vec<&str> = probe[1..]
            .iter()
            .copied()
            .filter(|a| !a.is_empty())
            .collect();
        run(ns.exec(probe[0]).args(&args))
            .with_context(|| format!("{} does not work here", probe[0]))
    }
}

impl fmt::Display for Arm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arm {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        ALL_ARMS
            .into_iter()
            .find(|a| a.name() == s)
            .with_context(|| {
                let names: Vec<&str> = ALL_ARMS.iter().map(|a| a.name()).collect();
                format!("unknown arm {s:?} (arms: {})", names.join(", "))
            })
    }
}

/// One arm at one service count: its namespaces with the rules loaded.
pub struct Programmed {
    pub arm: Arm,
    /// The arm's own namespaces; `None` for the direct arm beside an lbctl arm, which shares
    /// lbctl's (see [`program`]).
    pub topology: Option<Topology>,
    /// The port the arm's client listens on, in the server namespace.
    pub port: u16,
    /// Wall time of loading the rules (`None` for direct).
    pub program_ms: Option<f64>,
    /// Where the measured connects go (direct: every backend of the measured service, the
    /// client choosing at random; the others: the measured service's address).
    pub targets: Vec<SocketAddr>,
}

/// Builds the topology of `arm` and programs `set` into it (or, for lbctl, into `lb`).
///
/// The direct arm beside an lbctl arm (`lb` given) builds no namespaces: its client runs in
/// lbctl's, from a cgroup without lbctl's programs, and listens on [`DIRECT_PORT`] (lbctl's
/// client holds [`TARGET_PORT`] there). The two arms the tightest targets compare then differ
/// in the programs alone, not also in where two sets of namespaces, veth pairs and listeners
/// fell in memory (a placement that would hold for every round of a service count).
pub fn program(arm: Arm, set: &ServiceSet, lb: Option<&mut BenchDatapath>) -> Result<Programmed> {
    let shares_lbctl = arm == Arm::Direct && lb.is_some();
    let topology = if shares_lbctl {
        None
    } else {
        Some(
            Topology::new(
                &format!("{}{}", arm.short(), set.count),
                &ServiceSet::measured_backends(set.endpoints),
            )
            .with_context(|| format!("building the topology of {arm}"))?,
        )
    };
    let port = if shares_lbctl {
        DIRECT_PORT
    } else {
        TARGET_PORT
    };
    let program_ms = match arm {
        Arm::Direct => None,
        Arm::Lbctl => {
            let lb = lb.context("the lbctl arm needs its datapath")?;
            let desired = set.desired();
            lb.datapath.apply(&Desired::default())?;
            let t = Instant::now();
            let report = lb.datapath.apply(&desired)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if !report.errors.is_empty() {
                bail!("lbctl could not program: {:?}", &report.errors[..1]);
            }
            Some(ms)
        }
        Arm::IptablesNft | Arm::IptablesLegacy => {
            let tool = arm.restore_tool().expect("iptables arm");
            let text = rules::iptables_restore(set);
            let t = Instant::now();
            run_with_input(
                client_netns(&topology)?.exec(tool).arg("-w"),
                text.as_bytes(),
            )
            .with_context(|| format!("loading {} services with {tool}", set.count))?;
            Some(t.elapsed().as_secs_f64() * 1e3)
        }
        Arm::Nftables => Some(load_nft_chunked(client_netns(&topology)?, set)?),
    };
    let targets = match arm {
        Arm::Direct => ServiceSet::measured_backends(set.endpoints)
            .into_iter()
            .map(|ip| SocketAddr::from((ip, port)))
            .collect(),
        _ => vec![set.measured()],
    };
    Ok(Programmed {
        arm,
        topology,
        port,
        program_ms,
        targets,
    })
}

/// The client namespace of an arm that has namespaces of its own.
fn client_netns(topology: &Option<Topology>) -> Result<&Netns> {
    Ok(&topology
        .as_ref()
        .context("the arm has no namespaces")?
        .client)
}

/// Loads the nftables rules in transactions of [`NFT_CHUNK`] services; returns the total time.
fn load_nft_chunked(ns: &Netns, set: &ServiceSet) -> Result<f64> {
    let mut texts = vec![rules::nft_base()];
    let mut start = 0;
    while start < set.count {
        let end = (start + NFT_CHUNK).min(set.count);
        texts.push(rules::nft_services(set, start..end));
        start = end;
    }
    let t = Instant::now();
    for text in &texts {
        nft_f(ns, text)?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

pub fn nft_f(ns: &Netns, text: &str) -> Result<()> {
    run_with_input(ns.exec("nft").args(["-f", "-"]), text.as_bytes()).context("nft -f")
}

/// The cgroup a client of `arm` runs in.
pub fn cgroup_for<'a>(arm: Arm, plain: &'a Path, lb: &'a Path) -> &'a Path {
    if arm == Arm::Lbctl { lb } else { plain }
}
