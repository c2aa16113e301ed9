//! Read-only views of an installed datapath, from the pinned maps: what `lbctl status`,
//! `services`, `lookup` and `stats` print.
use std::{collections::BTreeMap, net::SocketAddr, path::Path, str::FromStr};

use aya::{
    maps::MapInfo,
    programs::links::{FdLink, PinnedLink},
};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use lb_common::{
    AFFINITY_MAP, BACKENDS_MAP, SERVICES_MAP, SLOTS_MAP, V4_MASTERS_MAP, meta, service_flags,
};
use serde::Serialize;

use crate::{
    datapath::{
        DatapathError, FrontendKey, LbMaps as _, Maps, ProgrammedFrontend, filter, loader,
        read_frontends,
        state::{self, State},
    },
    monitor::names::{self, ServiceName},
    plan::Protocol,
};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("{0:?} is not ADDRESS:PORT[/tcp|/udp] (e.g. 10.96.0.10:80/tcp or [fd00::10]:53/udp)")]
    BadTarget(String),
}

/// `10.96.0.10:80/tcp`, `[fd00::10]:53/udp`; the protocol defaults to TCP.
pub fn parse_target(s: &str) -> Result<FrontendKey, InspectError> {
    let (addr, proto) = match s.rsplit_once('/') {
        Some((a, p)) => (a, p),
        None => (s, "tcp"),
    };
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(InspectError::BadTarget(s.to_owned())),
    };
    let addr = SocketAddr::from_str(addr).map_err(|_| InspectError::BadTarget(s.to_owned()))?;
    Ok(FrontendKey::new(addr, protocol))
}

fn kind_of(flags: u16) -> &'static str {
    if flags & service_flags::NODE_PORT != 0 {
        "NodePort"
    } else if flags & service_flags::EXTERNAL != 0 {
        "External"
    } else {
        "ClusterIP"
    }
}

#[derive(Debug, Serialize)]
pub struct FrontendView {
    /// `namespace/name` of the Service, as the agent recorded it in `lb_fe_names` (null for a
    /// frontend it has not named, e.g. programmed by an older agent).
    pub service: Option<String>,
    /// The Service port's name (empty when the port is unnamed).
    pub port_name: Option<String>,
    pub frontend: String,
    pub kind: &'static str,
    pub id: u32,
    pub backends: Vec<String>,
    pub affinity_timeout_seconds: Option<u32>,
    pub rewritten: u64,
    pub refused: u64,
}

fn view(maps: &Maps, names: &Names, f: &ProgrammedFrontend) -> FrontendView {
    let stats = maps.frontend_counters(f.frontend_id).unwrap_or_default();
    let name = names.get(&f.frontend_id);
    FrontendView {
        service: name.map(ServiceName::service),
        port_name: name.map(|n| n.port_name.clone()),
        frontend: f.frontend.to_string(),
        kind: kind_of(f.flags),
        id: f.frontend_id,
        backends: f.backends.iter().map(ToString::to_string).collect(),
        affinity_timeout_seconds: (f.flags & service_flags::AFFINITY != 0)
            .then_some(f.affinity_timeout),
        rewritten: stats.rewritten,
        refused: stats.refused,
    }
}

type Names = BTreeMap<u32, ServiceName>;

/// Every programmed frontend.
pub fn services(pin_dir: &Path) -> Result<Vec<FrontendView>, InspectError> {
    let maps = Maps::open_read_only(pin_dir)?;
    let names = names::read(pin_dir)?;
    Ok(read_frontends(&maps)?
        .iter()
        .map(|f| view(&maps, &names, f))
        .collect())
}

pub fn services_table(views: &[FrontendView]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header([
        "SERVICE",
        "FRONTEND",
        "KIND",
        "BACKENDS",
        "AFFINITY",
        "REWRITTEN",
        "REFUSED",
    ]);
    for v in views {
        let service = match (&v.service, &v.port_name) {
            (Some(s), Some(p)) if !p.is_empty() => format!("{s}:{p}"),
            (Some(s), _) => s.clone(),
            (None, _) => "-".to_owned(),
        };
        t.add_row([
            service,
            v.frontend.clone(),
            v.kind.to_owned(),
            if v.backends.is_empty() {
                "(none: refuses)".to_owned()
            } else {
                v.backends.join("\n")
            },
            v.affinity_timeout_seconds
                .map_or("-".to_owned(), |s| format!("{s}s")),
            v.rewritten.to_string(),
            v.refused.to_string(),
        ]);
    }
    t.to_string()
}

/// What a `connect()` from the attached cgroup to a destination gets now.
#[derive(Debug, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Lookup {
    /// Not a frontend: the destination is left untouched.
    PassedThrough { destination: String },
    /// A frontend without usable backends: `connect()` fails with ECONNREFUSED.
    Refused { frontend: FrontendView },
    /// A frontend: one of these backends is chosen uniformly at random.
    Rewritten { frontend: FrontendView },
}

pub fn lookup(pin_dir: &Path, target: FrontendKey) -> Result<Lookup, InspectError> {
    let maps = Maps::open_read_only(pin_dir)?;
    let names = names::read(pin_dir)?;
    let found = read_frontends(&maps)?
        .into_iter()
        .find(|f| f.frontend == target);
    Ok(match found {
        None => Lookup::PassedThrough {
            destination: target.to_string(),
        },
        Some(f) if f.backends.is_empty() => Lookup::Refused {
            frontend: view(&maps, &names, &f),
        },
        Some(f) => Lookup::Rewritten {
            frontend: view(&maps, &names, &f),
        },
    })
}

pub fn lookup_text(l: &Lookup) -> String {
    match l {
        Lookup::PassedThrough { destination } => {
            format!(
                "{destination}: not a service frontend on this node; connects pass through untouched\n"
            )
        }
        Lookup::Refused { frontend } => format!(
            "{}: service frontend with no usable backend on this node; connect() fails with ECONNREFUSED \
             (refused so far: {})\nWhy: run `lbctl plan --node <this node>` on the cluster's objects to see the \
             endpoints and policy that left it empty.\n",
            frontend.frontend, frontend.refused
        ),
        Lookup::Rewritten { frontend } => format!(
            "{}: rewritten to one of {} backend(s), chosen uniformly at random{}:\n  {}\n",
            frontend.frontend,
            frontend.backends.len(),
            frontend
                .affinity_timeout_seconds
                .map_or(String::new(), |s| format!(" (ClientIP affinity, {s}s)")),
            frontend.backends.join("\n  ")
        ),
    }
}

#[derive(Debug, Serialize)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Debug, Serialize)]
pub struct LinkView {
    pub program: &'static str,
    pub pinned: bool,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    /// What the agent recorded: attach point (cgroup path and id), kernel object, capacities.
    /// `None` for a datapath installed by an lbctl that did not record it.
    pub datapath: Option<State>,
    pub links: Vec<LinkView>,
    pub maps: Vec<MapFill>,
    pub frontends: usize,
    pub counters: crate::datapath::Counters,
    /// The programs write events for `lbctl monitor` (at least one is connected to the agent).
    pub monitor_events: bool,
    /// The programs write kernel debug logs (`lbctl agent --debug-bpf`).
    pub debug_logs: bool,
    /// The IPv4 /16s `lb_v4_filter` holds frontends in (`a.b.0.0/16`): an IPv4 destination
    /// elsewhere skips the services lookup. `None` without the map (an older install).
    pub v4_filter_held: Option<Vec<String>>,
    /// Masters in a /16 the filter skips: connects never reach them. Always 0 unless masters
    /// were written behind the agent's back (it does not know them; a restarted agent adopts
    /// the maps and deletes the masters it does not want).
    pub hidden_frontends: usize,
}

pub fn status(pin_dir: &Path) -> Result<Status, InspectError> {
    let maps = Maps::open_read_only(pin_dir)?;
    let links = loader::PROGRAMS
        .iter()
        .map(|&program| {
            let path = loader::link_path(pin_dir, program);
            let info = PinnedLink::from_pin(&path)
                .ok()
                .and_then(|l| FdLink::from(l).info().ok());
            LinkView {
                program,
                pinned: path.exists(),
                link_id: info.as_ref().map(|i| i.id()),
                program_id: info.as_ref().map(|i| i.program_id()),
            }
        })
        .collect();
    let capacity = |name: &str| {
        MapInfo::from_pin(pin_dir.join(name))
            .map(|i| i.max_entries())
            .unwrap_or(0)
    };
    let switches = maps.meta.get(&meta::DEBUG, 0).unwrap_or(0);
    // One master per frontend.
    let keys: Vec<_> = maps.services.keys().filter_map(Result::ok).collect();
    let frontends = keys.len();
    let filter = maps.v4_filter();
    let hidden_frontends = filter.as_ref().map_or(0, |f| {
        keys.iter()
            .filter_map(FrontendKey::from_key)
            .filter(|k| f.skips_frontend(k))
            .count()
    });
    let v4_filter_held = filter.map(|f| f.held().map(filter::prefix_name).collect());
    let slot_entries = maps.slot_entries()?.len();
    let backend_entries = maps.backend_entries()?.len();
    Ok(Status {
        pin_dir: pin_dir.display().to_string(),
        datapath: state::read(pin_dir)?,
        links,
        maps: vec![
            MapFill {
                map: SERVICES_MAP,
                entries: frontends,
                capacity: capacity(SERVICES_MAP),
            },
            MapFill {
                map: V4_MASTERS_MAP,
                entries: maps.cached_v4_masters()?.len(),
                capacity: capacity(V4_MASTERS_MAP),
            },
            MapFill {
                map: SLOTS_MAP,
                entries: slot_entries,
                capacity: capacity(SLOTS_MAP),
            },
            MapFill {
                map: BACKENDS_MAP,
                entries: backend_entries,
                capacity: capacity(BACKENDS_MAP),
            },
            MapFill {
                map: AFFINITY_MAP,
                entries: maps.affinity_entries(),
                capacity: capacity(AFFINITY_MAP),
            },
        ],
        frontends,
        counters: maps.counters()?,
        monitor_events: switches & meta::DEBUG_EVENTS != 0,
        debug_logs: switches & meta::DEBUG_LOGS != 0,
        v4_filter_held,
        hidden_frontends,
    })
}

pub fn status_text(s: &Status) -> String {
    let mut out = format!("pin directory: {}\n", s.pin_dir);
    match &s.datapath {
        Some(d) => out.push_str(&format!(
            "attach point: cgroup {} (id {}{})\nkernel object: sha256 {} (layout version {}, lbctl {})\n",
            d.attach_point.path.display(),
            d.attach_point.cgroup_id,
            if d.attach_point.is_root() {
                ", the root: every process of the node"
            } else {
                ""
            },
            d.object_sha256,
            d.layout_version,
            d.lbctl_version
        )),
        None => out.push_str("attach point: not recorded (installed by an older lbctl)\n"),
    }
    for l in &s.links {
        out.push_str(&match (l.pinned, l.link_id, l.program_id) {
            (true, Some(link), Some(prog)) => format!(
                "program {}: attached (link {link}, program {prog})\n",
                l.program
            ),
            (true, _, _) => format!("program {}: pinned link unreadable\n", l.program),
            (false, _, _) => format!("program {}: NOT attached\n", l.program),
        });
    }
    for m in &s.maps {
        let pct = if m.capacity == 0 {
            0.0
        } else {
            100.0 * m.entries as f64 / f64::from(m.capacity)
        };
        out.push_str(&format!(
            "map {}: {} of {} entries ({pct:.1}%)\n",
            m.map, m.entries, m.capacity
        ));
    }
    let c = &s.counters;
    out.push_str(&format!(
        "frontends: {}\nconnects: {} rewritten, {} refused, {} passed through ({} retried)\n\
         replies and peers shown as the service: {}; kept by affinity: {}; sticky datagrams: {}; \
         left alone (other netns, host-only scope): {}\n\
         sockets terminated (backend left the set): {} udp, {} tcp, {} refused by the kernel\n",
        s.frontends,
        c.rewritten,
        c.refused,
        c.passed,
        c.retried,
        c.reversed,
        c.affinity,
        c.sticky,
        c.foreign_netns,
        c.terminated_udp,
        c.terminated_tcp,
        c.terminate_failed
    ));
    out.push_str(&match &s.v4_filter_held {
        None => "IPv4 filter: none (maps of an older lbctl): every destination is looked up\n"
            .to_owned(),
        Some(held) if held.len() > 16 => format!(
            "IPv4 filter: {} /16s hold frontends ({}, ...); other IPv4 destinations skip the lookup\n",
            held.len(),
            held[..16].join(", ")
        ),
        Some(held) => format!(
            "IPv4 filter: /16s with frontends: {}; other IPv4 destinations skip the lookup\n",
            if held.is_empty() { "none".to_owned() } else { held.join(", ") }
        ),
    });
    if s.hidden_frontends > 0 {
        out.push_str(&format!(
            "WARNING: {} frontends are in /16s the IPv4 filter skips: connects to them are not \
             load-balanced (masters written behind the agent's back?)\n",
            s.hidden_frontends
        ));
    }
    let on = |b: bool| if b { "on" } else { "off" };
    out.push_str(&format!(
        "monitor events: {} (on while an `lbctl monitor` is connected); kernel debug logs: {}\n",
        on(s.monitor_events),
        on(s.debug_logs)
    ));
    out
}
