//! The demo's cluster: nodes, pods and services of the *Kubernetes in Action* scenario, and the
//! manifests (`Node`s, `Service`s, `EndpointSlice`s, as the API server would hold them) that the
//! node agents watch.
use std::{fmt::Write as _, net::Ipv4Addr};

/// The port every quote pod listens on and every quote service exposes.
pub const QUOTE_PORT: u16 = 80;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: &'static str,
    pub zone: &'static str,
    /// `10.244.<n>.0/24`: the pod addresses of this node.
    pub pod_subnet: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// Serves the quote over HTTP.
    Quote,
    /// A client (the book's `kiada` pods).
    Kiada,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: &'static str,
    pub node: &'static str,
    pub ip: Ipv4Addr,
    pub app: App,
    /// Stands in for the pod's UID in `targetRef`.
    pub uid_suffix: u8,
}

/// How a quote service picks its endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// `internalTrafficPolicy: Cluster`.
    Cluster,
    /// `internalTrafficPolicy: Local`.
    Local,
    /// `trafficDistribution: PreferSameNode`: the EndpointSlice controller hints each endpoint
    /// for its own node (`hints.forNodes`) and zone.
    PreferSameNode,
}

impl Routing {
    pub fn describe(self) -> &'static str {
        match self {
            Routing::Cluster => "internalTrafficPolicy: Cluster",
            Routing::Local => "internalTrafficPolicy: Local",
            Routing::PreferSameNode => "trafficDistribution: PreferSameNode",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: &'static str,
    pub cluster_ip: Ipv4Addr,
    pub routing: Routing,
}

impl Service {
    /// `quote-local.default.svc.cluster.local` and the shorter forms a pod's resolver accepts.
    pub fn dns_names(&self) -> Vec<String> {
        let n = self.name;
        vec![
            n.to_owned(),
            format!("{n}.default"),
            format!("{n}.default.svc"),
            format!("{n}.default.svc.cluster.local"),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
}

impl Cluster {
    /// The book's layout (and `manifests/examples/quote.yaml`'s addresses): quote-002 and
    /// quote-canary on kind-worker, quote-001 and quote-003 on kind-worker2, one kiada client
    /// per node; `quote`, `quote-local` and, for contrast, `quote-nearby`.
    pub fn book() -> Self {
        let pod = |name, node, ip: [u8; 4], app, uid_suffix| Pod {
            name,
            node,
            ip: Ipv4Addr::from(ip),
            app,
            uid_suffix,
        };
        Cluster {
            nodes: vec![
                Node {
                    name: "kind-worker",
                    zone: "zone-a",
                    pod_subnet: 1,
                },
                Node {
                    name: "kind-worker2",
                    zone: "zone-b",
                    pod_subnet: 2,
                },
            ],
            pods: vec![
                pod(
                    "kiada-001",
                    "kind-worker",
                    [10, 244, 1, 3],
                    App::Kiada,
                    0x11,
                ),
                pod(
                    "quote-002",
                    "kind-worker",
                    [10, 244, 1, 5],
                    App::Quote,
                    0x02,
                ),
                pod(
                    "quote-canary",
                    "kind-worker",
                    [10, 244, 1, 6],
                    App::Quote,
                    0x04,
                ),
                pod(
                    "kiada-002",
                    "kind-worker2",
                    [10, 244, 2, 3],
                    App::Kiada,
                    0x12,
                ),
                pod(
                    "quote-001",
                    "kind-worker2",
                    [10, 244, 2, 7],
                    App::Quote,
                    0x01,
                ),
                pod(
                    "quote-003",
                    "kind-worker2",
                    [10, 244, 2, 8],
                    App::Quote,
                    0x03,
                ),
            ],
            services: vec![
                Service {
                    name: "quote",
                    cluster_ip: Ipv4Addr::new(10, 96, 125, 108),
                    routing: Routing::Cluster,
                },
                Service {
                    name: "quote-local",
                    cluster_ip: Ipv4Addr::new(10, 96, 77, 212),
                    routing: Routing::Local,
                },
                Service {
                    name: "quote-nearby",
                    cluster_ip: Ipv4Addr::new(10, 96, 48, 30),
                    routing: Routing::PreferSameNode,
                },
            ],
        }
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn pods_of(&self, app: App) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(move |p| p.app == app)
    }

    /// The quote pods on `node`.
    pub fn quote_pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> {
        self.pods_of(App::Quote).filter(move |p| p.node == node)
    }

    /// Removes the quote pods of `node` (as `kubectl delete pod` would: their endpoints leave
    /// the EndpointSlices) and returns them.
    pub fn delete_quote_pods_on(&mut self, node: &str) -> Vec<Pod> {
        let (gone, kept) = self
            .pods
            .drain(..)
            .partition(|p| p.app == App::Quote && p.node == node);
        self.pods = kept;
        gone
    }

    /// Every object the agents need, as multi-document YAML.
    pub fn manifests(&self) -> String {
        let mut out = String::from(
            "# Written by lb-demo: the objects the API server would hold for this cluster.\n",
        );
        for node in &self.nodes {
            out.push_str(&node_yaml(node));
        }
        for svc in &self.services {
            out.push_str(&service_yaml(svc));
            out.push_str(&self.endpoint_slice_yaml(svc));
        }
        out
    }

    /// The EndpointSlice the controller keeps for `svc`: every quote pod, ready; hints when
    /// the service asks for a traffic distribution.
    fn endpoint_slice_yaml(&self, svc: &Service) -> String {
        let mut out = format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-demo\n  \
             namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\n    \
             endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n\
             addressType: IPv4\nports:\n- name: http\n  port: {QUOTE_PORT}\n  protocol: TCP\n",
            name = svc.name
        );
        let pods: Vec<&Pod> = self.pods_of(App::Quote).collect();
        if pods.is_empty() {
            out.push_str("endpoints: []\n");
            return out;
        }
        out.push_str("endpoints:\n");
        for pod in pods {
            let zone = self.node(pod.node).map_or("", |n| n.zone);
            let _ = write!(
                out,
                "- addresses: [\"{ip}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  \
                 nodeName: {node}\n  zone: {zone}\n  targetRef: {{kind: Pod, namespace: default, name: {pod}, \
                 uid: 3c2b6e0d-1f4a-4e1b-9d7e-2a8f5c6b7d{uid:02x}}}\n",
                ip = pod.ip,
                node = pod.node,
                pod = pod.name,
                uid = pod.uid_suffix,
            );
            if svc.routing == Routing::PreferSameNode {
                let _ = write!(
                    out,
                    "  hints:\n    forNodes: [{{name: {}}}]\n    forZones: [{{name: {zone}}}]\n",
                    pod.node
                );
            }
        }
        out
    }
}

fn node_yaml(node: &Node) -> String {
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
         kubernetes.io/hostname: {name}\n    topology.kubernetes.io/zone: {zone}\n\
         spec:\n  podCIDR: 10.244.{subnet}.0/24\n  podCIDRs: [10.244.{subnet}.0/24]\n",
        name = node.name,
        zone = node.zone,
        subnet = node.pod_subnet,
    )
}

fn service_yaml(svc: &Service) -> String {
    let routing = match svc.routing {
        Routing::Cluster => "  internalTrafficPolicy: Cluster\n",
        Routing::Local => "  internalTrafficPolicy: Local\n",
        Routing::PreferSameNode => {
            "  internalTrafficPolicy: Cluster\n  trafficDistribution: PreferSameNode\n"
        }
    };
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  ipFamilies: [IPv4]\n\
         {routing}  selector:\n    app: quote\n  ports:\n  - name: http\n    port: {QUOTE_PORT}\n    \
         targetPort: {QUOTE_PORT}\n    protocol: TCP\n",
        name = svc.name,
        ip = svc.cluster_ip,
    )
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use lbctl::{
        engine::{self, NodeContext},
        plan::Plan,
        source::manifests,
    };

    use super::*;

    fn plan(cluster: &Cluster, node: &str) -> Plan {
        let inventory = manifests::load_str(&cluster.manifests(), "demo.yaml").expect("valid YAML");
        engine::plan(&inventory, &NodeContext::new(node))
    }

    fn backends(plan: &Plan, service: &str) -> Vec<SocketAddr> {
        plan.frontends
            .iter()
            .find(|f| &*f.service.name == service)
            .unwrap_or_else(|| panic!("no frontend for {service} in {plan:?}"))
            .backends
            .to_vec()
    }

    fn at(ip: [u8; 4]) -> SocketAddr {
        SocketAddr::from((ip, QUOTE_PORT))
    }

    #[test]
    fn the_manifests_plan_as_the_book_says() {
        let cluster = Cluster::book();
        let p = plan(&cluster, "kind-worker");
        assert!(
            p.skipped.is_empty() && p.warnings.is_empty(),
            "{:?} {:?}",
            p.skipped,
            p.warnings
        );
        assert_eq!(backends(&p, "quote").len(), 4);
        let local = vec![at([10, 244, 1, 5]), at([10, 244, 1, 6])];
        assert_eq!(backends(&p, "quote-local"), local);
        assert_eq!(backends(&p, "quote-nearby"), local);
    }

    #[test]
    fn after_deleting_a_nodes_quote_pods_local_refuses_and_nearby_falls_back() {
        let mut cluster = Cluster::book();
        let gone = cluster.delete_quote_pods_on("kind-worker");
        assert_eq!(
            gone.iter().map(|p| p.name).collect::<Vec<_>>(),
            ["quote-002", "quote-canary"]
        );
        let p = plan(&cluster, "kind-worker");
        let remote = vec![at([10, 244, 2, 7]), at([10, 244, 2, 8])];
        assert_eq!(backends(&p, "quote-local"), vec![]);
        assert_eq!(backends(&p, "quote"), remote);
        assert_eq!(backends(&p, "quote-nearby"), remote);
        let other = plan(&cluster, "kind-worker2");
        assert_eq!(backends(&other, "quote-local"), remote);
    }
}
