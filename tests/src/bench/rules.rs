//! kube-proxy-shaped rule sets for a [`ServiceSet`], after `pkg/proxy/iptables/proxier.go` and
//! `pkg/proxy/nftables/proxier.go` (ClusterIP services with `--cluster-cidr` set, so pod
//! clients are not masqueraded; nodePort addresses unrestricted).
//!
//! iptables (one `iptables-restore` input, nat and filter tables):
//! `OUTPUT -> KUBE-SERVICES` (one rule per service, linear) `-> KUBE-SVC-<hash>` (masquerade
//! check, then `-m statistic --mode random --probability 1/(n-i)` per endpoint)
//! `-> KUBE-SEP-<hash>` (hairpin mark, `DNAT`).
//!
//! nftables (one `nft -f` input): table `ip kube-proxy`, `services` chain with
//! `ip daddr . meta l4proto . th dport vmap @service-ips`, per-service chains with
//! `numgen random mod N vmap { ... }`, per-endpoint chains with `dnat to`.
use std::{
    fmt::Write as _,
    hash::{DefaultHasher, Hash, Hasher},
    ops::Range,
};

use super::services::{CLUSTER_CIDR, NAMESPACE, SERVICE_PORT, Service, ServiceSet};

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A 16-character base32 digest of `text` (kube-proxy uses the first 16 characters of the
/// base32 SHA-256; any stable hash of the same length gives the same rule shapes).
fn hash16(text: &str) -> String {
    let mut bits: u128 = 0;
    for seed in 0..2u8 {
        let mut h = DefaultHasher::new();
        seed.hash(&mut h);
        text.hash(&mut h);
        bits = (bits << 64) | u128::from(h.finish());
    }
    (0..16)
        .map(|i| BASE32[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

fn port_name(svc: &Service) -> String {
    format!("{NAMESPACE}/{}:http", svc.name)
}

/// The complete `iptables-restore` input (filter and nat tables) for `set`.
pub fn iptables_restore(set: &ServiceSet) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let mut out = String::with_capacity(set.count * (400 + 300 * set.endpoints));
    out.push_str(concat!(
        "*filter\n",
        ":KUBE-SERVICES - [0:0]\n",
        ":KUBE-PROXY-FIREWALL - [0:0]\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "COMMIT\n",
        "*nat\n",
        ":KUBE-SERVICES - [0:0]\n",
        ":KUBE-NODEPORTS - [0:0]\n",
        ":KUBE-POSTROUTING - [0:0]\n",
        ":KUBE-MARK-MASQ - [0:0]\n",
    ));
    rules.push_str(concat!(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    ));
    let mut per_service = String::new();
    for svc in set.iter() {
        let name = port_name(&svc);
        let svc_chain = format!("KUBE-SVC-{}", hash16(&format!("{name}tcp")));
        let (ip, port) = (svc.cluster_ip, SERVICE_PORT);
        let _ = writeln!(chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {ip}/32 --dport {port} -j {svc_chain}"
        );
        per_service.clear();
        let _ = writeln!(
            per_service,
            "-A {svc_chain} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {ip}/32 --dport {port} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
        );
        let n = svc.endpoints.len();
        for (i, ep) in svc.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}", hash16(&format!("{name}tcp{ep}")));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let probability = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                per_service,
                "-A {svc_chain} -m comment --comment \"{name} -> {ep}\"{probability} -j {sep}"
            );
            let _ = writeln!(
                per_service,
                "-A {sep} -m comment --comment {name} -s {}/32 -j KUBE-MARK-MASQ",
                ep.ip()
            );
            let _ = writeln!(
                per_service,
                "-A {sep} -m comment --comment {name} -m tcp -p tcp -j DNAT --to-destination {ep}"
            );
        }
        rules.push_str(&per_service);
    }
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str(&chains);
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

const NFT_TABLE: &str = "ip kube-proxy";

/// The table, base chains, maps and dispatch rules, without any service.
pub fn nft_base() -> String {
    let t = NFT_TABLE;
    let mut out = String::new();
    let lines = [
        format!("add table {t} {{ comment \"rules for kube-proxy\" ; }}"),
        format!("add chain {t} filter-output {{ type filter hook output priority -110 ; }}"),
        format!("add chain {t} nat-output {{ type nat hook output priority -100 ; }}"),
        format!("add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}"),
        format!("add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}"),
        format!("add chain {t} services"),
        format!("add chain {t} masquerading"),
        format!("add chain {t} mark-for-masquerade"),
        format!("add chain {t} endpoints-check"),
        format!("add chain {t} firewall-check"),
        format!("add chain {t} reject-chain"),
        format!("add rule {t} reject-chain reject"),
        format!(
            "add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}"
        ),
        format!("add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; }}"),
        format!(
            "add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}"
        ),
        format!(
            "add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; }}"
        ),
        format!(
            "add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}"
        ),
        format!("add rule {t} filter-output ct state new jump endpoints-check"),
        format!("add rule {t} filter-output ct state new jump firewall-check"),
        format!(
            "add rule {t} endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
        ),
        format!(
            "add rule {t} endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
        ),
        format!(
            "add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips"
        ),
        format!("add rule {t} nat-output jump services"),
        format!("add rule {t} nat-prerouting jump services"),
        format!("add rule {t} nat-postrouting jump masquerading"),
        format!("add rule {t} mark-for-masquerade mark set mark or 0x4000"),
        format!("add rule {t} masquerading mark and 0x4000 == 0 return"),
        format!("add rule {t} masquerading mark set mark xor 0x4000"),
        format!("add rule {t} masquerading masquerade fully-random"),
        format!("add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips"),
        format!(
            "add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
        ),
    ];
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The chains, rules and map elements of the services `range` of `set`.
pub fn nft_services(set: &ServiceSet, range: Range<usize>) -> String {
    let t = NFT_TABLE;
    let mut out = String::with_capacity(range.len() * (300 + 250 * set.endpoints));
    let mut endpoint_chains = Vec::with_capacity(set.endpoints);
    for index in range {
        let svc = set.service(index);
        let base = format!("{NAMESPACE}/{}/tcp/http", svc.name);
        let svc_chain = format!("service-{}-{base}", &hash16(&base)[..8]);
        endpoint_chains.clear();
        for ep in &svc.endpoints {
            let name = format!("{base}__{}/{}", ep.ip(), ep.port());
            let chain = format!("endpoint-{}-{name}", &hash16(&name)[..8]);
            let _ = writeln!(out, "add chain {t} {chain}");
            let _ = writeln!(
                out,
                "add rule {t} {chain} ip saddr {} jump mark-for-masquerade",
                ep.ip()
            );
            let _ = writeln!(out, "add rule {t} {chain} meta l4proto tcp dnat to {ep}");
            endpoint_chains.push(chain);
        }
        let (ip, port) = (svc.cluster_ip, SERVICE_PORT);
        let _ = writeln!(out, "add chain {t} {svc_chain}");
        let _ = writeln!(
            out,
            "add rule {t} {svc_chain} ip daddr {ip} tcp dport {port} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
        );
        let vmap: Vec<String> = endpoint_chains
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i} : goto {c}"))
            .collect();
        let _ = writeln!(
            out,
            "add rule {t} {svc_chain} numgen random mod {} vmap {{ {} }}",
            endpoint_chains.len(),
            vmap.join(" , ")
        );
        let _ = writeln!(
            out,
            "add element {t} service-ips {{ {ip} . tcp . {port} : goto {svc_chain} }}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measured_service_is_the_last_kube_services_rule() {
        let set = ServiceSet::new(3, 2);
        let text = iptables_restore(&set);
        let services: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(services.len(), 4);
        assert!(
            services[2].contains("-d 10.96.0.3/32 --dport 80"),
            "{services:?}"
        );
        assert!(services[3].contains("KUBE-NODEPORTS"));
        assert!(text.contains("--probability 0.5000000000 -j KUBE-SEP-"));
        assert!(text.contains("-j DNAT --to-destination 10.244.2.2:8080"));
        assert_eq!(hash16("x").len(), 16);
    }

    #[test]
    fn nft_services_dispatch_through_the_vmap() {
        let set = ServiceSet::new(2, 3);
        let text = nft_services(&set, 0..2);
        assert!(text.contains("numgen random mod 3 vmap { 0 : goto endpoint-"));
        assert!(text.contains(
            "add element ip kube-proxy service-ips { 10.96.0.2 . tcp . 80 : goto service-"
        ));
        assert!(text.contains("dnat to 10.244.2.3:8080"));
    }
}
