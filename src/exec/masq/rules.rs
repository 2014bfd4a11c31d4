//! The pure half of the masquerade and forward rules: what upstream installs
//! (chains, matches, comments), rendered as `iptables-restore` and `nft -f`
//! input, and how `iptables-save` output compares with it. Nothing here runs
//! a program.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// kube-proxy's masquerade mark; traffic carrying it is left to kube-proxy.
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";
pub const MASQ_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FORWARD_CHAIN: &str = "FLANNEL-FWD";
pub const MASQ_COMMENT: &str = "flanneld masq";
pub const FORWARD_COMMENT: &str = "flanneld forward";
pub const NFT_TABLE_V4: &str = "flannel-ipv4";
pub const NFT_TABLE_V6: &str = "flannel-ipv6";

/// What the flags and the network config ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesConfig {
    pub ip_masq: bool,
    pub forward_rules: bool,
    pub random_fully_disabled: bool,
    pub nftables: bool,
    pub resync: Duration,
    pub network_v4: Option<Ipv4Net>,
    pub network_v6: Option<Ipv6Net>,
    /// This host's lease.
    pub subnet_v4: Option<Ipv4Net>,
    pub subnet_v6: Option<Ipv6Net>,
}

impl RulesConfig {
    pub(super) fn wants_anything(&self) -> bool {
        self.ip_masq || self.forward_rules
    }

    /// (cluster, pod) per family for the masquerade rules.
    pub(super) fn masq_families(&self) -> Vec<(IpNet, IpNet)> {
        if !self.ip_masq {
            return Vec::new();
        }
        let mut v = Vec::new();
        if let (Some(n), Some(s)) = (self.network_v4, self.subnet_v4) {
            v.push((IpNet::V4(n), IpNet::V4(s)));
        }
        if let (Some(n), Some(s)) = (self.network_v6, self.subnet_v6) {
            v.push((IpNet::V6(n), IpNet::V6(s)));
        }
        v
    }

    pub(super) fn forward_networks(&self) -> Vec<IpNet> {
        if !self.forward_rules {
            return Vec::new();
        }
        self.network_v4
            .map(IpNet::V4)
            .into_iter()
            .chain(self.network_v6.map(IpNet::V6))
            .collect()
    }
}

/// Address family of a rule set (iptables vs ip6tables, `ip` vs `ip6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    pub(super) fn multicast(self) -> &'static str {
        match self {
            Family::V4 => "224.0.0.0/4",
            Family::V6 => "ff00::/8",
        }
    }

    pub(super) fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

// ---------------------------------------------------------------------------
// iptables: rules (pure)
// ---------------------------------------------------------------------------

/// One flannel chain and the jump into it, rendered as `iptables-save`
/// prints them (so the resync can compare text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRules {
    pub table: &'static str,
    /// The built-in chain holding the jump (`POSTROUTING`, `FORWARD`).
    pub builtin: &'static str,
    pub chain: &'static str,
    /// `-A POSTROUTING … -j FLANNEL-POSTRTG`.
    pub jump: String,
    /// `-A FLANNEL-POSTRTG …`, in order.
    pub rules: Vec<String>,
}

/// Joins arguments the way `iptables-save` prints them (quoting the comment).
fn rule_line(chain: &str, args: &[&str]) -> String {
    let mut s = format!("-A {chain}");
    for a in args {
        s.push(' ');
        if a.contains(' ') {
            s.push('"');
            s.push_str(a);
            s.push('"');
        } else {
            s.push_str(a);
        }
    }
    s
}

/// Upstream's masquerade rules (`masqRules` / `masqIP6Rules`, v0.21+ layout).
pub fn masq_rules(cluster: IpNet, pod: IpNet, random_fully: bool) -> ChainRules {
    let (c, p) = (cluster.to_string(), pod.to_string());
    let m = Family::of(&cluster).multicast();
    let mut masq = vec!["-j", "MASQUERADE"];
    if random_fully {
        masq.push("--random-fully");
    }
    let comment = ["-m", "comment", "--comment", MASQ_COMMENT];
    let with = |head: &[&str], tail: &[&str]| {
        let args: Vec<&str> = head.iter().chain(&comment).chain(tail).copied().collect();
        rule_line(MASQ_CHAIN, &args)
    };
    ChainRules {
        table: "nat",
        builtin: "POSTROUTING",
        chain: MASQ_CHAIN,
        jump: rule_line(
            "POSTROUTING",
            &["-m", "comment", "--comment", MASQ_COMMENT, "-j", MASQ_CHAIN],
        ),
        rules: vec![
            // kube-proxy marks what it will masquerade itself (double NAT bug on some kernels).
            with(
                &["-m", "mark", "--mark", KUBE_PROXY_MARK],
                &["-j", "RETURN"],
            ),
            // Pod-to-pod traffic inside the overlay keeps its addresses.
            with(&["-s", &p, "-d", &c], &["-j", "RETURN"]),
            with(&["-s", &c, "-d", &p], &["-j", "RETURN"]),
            // External traffic arriving for our pods keeps its source.
            with(&["!", "-s", &c, "-d", &p], &["-j", "RETURN"]),
            // Pods talking to the outside world (not multicast) are masqueraded.
            with(&["-s", &c, "!", "-d", m], &masq),
            // The host talking into the overlay is masqueraded too.
            with(&["!", "-s", &c, "-d", &c], &masq),
        ],
    }
}

/// Upstream's forward rules (`forwardRules`).
pub fn forward_rules(cluster: IpNet) -> ChainRules {
    let c = cluster.to_string();
    let comment = ["-m", "comment", "--comment", FORWARD_COMMENT];
    let with = |head: &[&str]| {
        let args: Vec<&str> = head
            .iter()
            .chain(&comment)
            .chain(&["-j", "ACCEPT"])
            .copied()
            .collect();
        rule_line(FORWARD_CHAIN, &args)
    };
    ChainRules {
        table: "filter",
        builtin: "FORWARD",
        chain: FORWARD_CHAIN,
        jump: rule_line(
            "FORWARD",
            &[
                "-m",
                "comment",
                "--comment",
                FORWARD_COMMENT,
                "-j",
                FORWARD_CHAIN,
            ],
        ),
        rules: vec![with(&["-s", &c]), with(&["-d", &c])],
    }
}

/// The rule sets one family needs.
pub fn iptables_rules(cfg: &RulesConfig, family: Family, random_fully: bool) -> Vec<ChainRules> {
    let mut v: Vec<ChainRules> = cfg
        .masq_families()
        .into_iter()
        .filter(|(c, _)| Family::of(c) == family)
        .map(|(c, p)| masq_rules(c, p, random_fully))
        .collect();
    v.extend(
        cfg.forward_networks()
            .into_iter()
            .filter(|c| Family::of(c) == family)
            .map(forward_rules),
    );
    v
}

/// One table of `iptables-save` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// Declared chains (`:NAME POLICY [counters]`).
    pub chains: Vec<String>,
    /// `-A …` lines in order.
    pub rules: Vec<String>,
}

/// Parses `iptables-save` output into tables.
pub fn parse_save(text: &str) -> BTreeMap<String, SavedTable> {
    let mut out: BTreeMap<String, SavedTable> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            current = Some(t.to_owned());
            out.entry(t.to_owned()).or_default();
        } else if line == "COMMIT" {
            current = None;
        } else if let Some(table) = current.as_ref().and_then(|t| out.get_mut(t)) {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    table.chains.push(name.to_owned());
                }
            } else if line.starts_with("-A ") {
                table.rules.push(line.to_owned());
            }
        }
    }
    out
}

/// What the kernel has of one flannel chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedChain {
    pub exists: bool,
    /// Lines of the built-in chain that jump to the flannel chain.
    pub jumps: Vec<String>,
    /// The flannel chain's own lines.
    pub rules: Vec<String>,
}

pub fn observe_chain(saved: &BTreeMap<String, SavedTable>, want: &ChainRules) -> ObservedChain {
    let Some(t) = saved.get(want.table) else {
        return ObservedChain::default();
    };
    let own_prefix = format!("-A {} ", want.chain);
    let jump_prefix = format!("-A {} ", want.builtin);
    let jump_suffix = format!("-j {}", want.chain);
    ObservedChain {
        exists: t.chains.iter().any(|c| c == want.chain),
        jumps: t
            .rules
            .iter()
            .filter(|r| r.starts_with(&jump_prefix) && r.ends_with(&jump_suffix))
            .cloned()
            .collect(),
        rules: t
            .rules
            .iter()
            .filter(|r| r.starts_with(&own_prefix) || *r == &format!("-A {}", want.chain))
            .cloned()
            .collect(),
    }
}

/// Why a chain needs rewriting, or `None` if it is exactly as wanted.
pub fn chain_problem(have: &ObservedChain, want: &ChainRules) -> Option<String> {
    if !have.exists {
        return Some(format!(
            "chain {} is missing from the {} table",
            want.chain, want.table
        ));
    }
    if have.jumps != [want.jump.clone()] {
        return Some(format!(
            "{} has {} jump(s) to {}, want 1",
            want.builtin,
            have.jumps.len(),
            want.chain
        ));
    }
    if have.rules != want.rules {
        return Some(format!(
            "{} has {} rule(s) that differ from the {} wanted",
            want.chain,
            have.rules.len(),
            want.rules.len()
        ));
    }
    None
}

/// The `iptables-restore --noflush` input that rewrites `sets` (grouped by
/// table): re-declaring a chain flushes it; the jump is deleted (as the
/// kernel shows it) and appended again, as upstream's bootstrap does.
pub fn restore_input(sets: &[(&ChainRules, &ObservedChain)]) -> String {
    let mut by_table: BTreeMap<&str, Vec<(&ChainRules, &ObservedChain)>> = BTreeMap::new();
    for (w, h) in sets {
        by_table.entry(w.table).or_default().push((w, h));
    }
    let mut s = String::new();
    for (table, sets) in by_table {
        s.push_str(&format!("*{table}\n"));
        for (w, _) in &sets {
            s.push_str(&format!(":{} - [0:0]\n", w.chain));
        }
        for (w, h) in &sets {
            for j in &h.jumps {
                s.push_str(&format!("-D {}\n", &j[3..]));
            }
            s.push_str(&w.jump);
            s.push('\n');
            for r in &w.rules {
                s.push_str(r);
                s.push('\n');
            }
        }
        s.push_str("COMMIT\n");
    }
    s
}

/// The `iptables-restore --noflush` input that removes flannel's iptables
/// state (jumps, then the emptied chains) — for nftables mode.
pub fn teardown_input(saved: &BTreeMap<String, SavedTable>) -> String {
    let mut s = String::new();
    for (table, t) in saved {
        let ours: Vec<&str> = [MASQ_CHAIN, FORWARD_CHAIN]
            .into_iter()
            .filter(|c| t.chains.iter().any(|have| have == c))
            .collect();
        if ours.is_empty() {
            continue;
        }
        s.push_str(&format!("*{table}\n"));
        for r in &t.rules {
            if ours
                .iter()
                .any(|c| r.ends_with(&format!("-j {c}")) && !r.starts_with(&format!("-A {c} ")))
            {
                s.push_str(&format!("-D {}\n", &r[3..]));
            }
        }
        for c in &ours {
            s.push_str(&format!(":{c} - [0:0]\n-X {c}\n"));
        }
        s.push_str("COMMIT\n");
    }
    s
}

/// Whether `iptables --version` output names a version with
/// `--random-fully` and `--wait` for restore (1.6.2+, go-iptables' check).
pub fn iptables_is_recent(version_output: &str) -> bool {
    let Some(v) = version_output
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
    else {
        return false;
    };
    let nums: Vec<u32> = v.split('.').map_while(|p| p.parse().ok()).collect();
    let (a, b, c) = (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
        nums.get(2).copied().unwrap_or(0),
    );
    (a, b, c) >= (1, 6, 2)
}

// ---------------------------------------------------------------------------
// nftables: rules (pure)
// ---------------------------------------------------------------------------

/// The `nft -f` transaction for nftables mode, as upstream's knftables
/// calls build it: both tables; per family in use, `postrtg` (with
/// `--ip-masq`) and `forward` (with forward rules), each flushed and
/// refilled.
pub fn nft_batch(cfg: &RulesConfig, fully_random: bool) -> String {
    let mut s = String::new();
    for (fam, table) in [("ip", NFT_TABLE_V4), ("ip6", NFT_TABLE_V6)] {
        s.push_str(&format!(
            "add table {fam} {table} {{ comment \"rules for {table}\" ; }}\n"
        ));
    }
    let masquerade = if fully_random {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    for (cluster, pod) in cfg.masq_families() {
        let (fam, table) = nft_family(&cluster);
        let m = Family::of(&cluster).multicast();
        s.push_str(&format!(
            "add chain {fam} {table} postrtg {{ type nat hook postrouting priority srcnat ; comment \"chain to manage traffic masquerading by flannel\" ; }}\n"
        ));
        s.push_str(&format!("flush chain {fam} {table} postrtg\n"));
        for rule in [
            "meta mark 0x4000 return".to_owned(),
            format!("{fam} saddr {pod} {fam} daddr {cluster} return"),
            format!("{fam} saddr {cluster} {fam} daddr {pod} return"),
            format!("{fam} saddr != {pod} {fam} daddr {cluster} return"),
            format!("{fam} saddr {cluster} {fam} daddr != {m} {masquerade}"),
            format!("{fam} saddr != {cluster} {fam} daddr {cluster} {masquerade}"),
        ] {
            s.push_str(&format!("add rule {fam} {table} postrtg {rule}\n"));
        }
    }
    for cluster in cfg.forward_networks() {
        let (fam, table) = nft_family(&cluster);
        s.push_str(&format!(
            "add chain {fam} {table} forward {{ type filter hook forward priority filter ; comment \"chain to accept flannel traffic\" ; }}\n"
        ));
        s.push_str(&format!("flush chain {fam} {table} forward\n"));
        s.push_str(&format!(
            "add rule {fam} {table} forward {fam} saddr {cluster} accept\n"
        ));
        s.push_str(&format!(
            "add rule {fam} {table} forward {fam} daddr {cluster} accept\n"
        ));
    }
    s
}

fn nft_family(net: &IpNet) -> (&'static str, &'static str) {
    match net {
        IpNet::V4(_) => ("ip", NFT_TABLE_V4),
        IpNet::V6(_) => ("ip6", NFT_TABLE_V6),
    }
}

/// Deletes both flannel tables whether or not they exist (adding first makes
/// the delete always valid inside the one transaction).
pub const NFT_TEARDOWN: &str = "add table ip flannel-ipv4\ndelete table ip flannel-ipv4\n\
                                add table ip6 flannel-ipv6\ndelete table ip6 flannel-ipv6\n";

pub(super) const NFT_LIST: &str = "list table ip flannel-ipv4\nlist table ip6 flannel-ipv6\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RulesConfig {
        RulesConfig {
            ip_masq: true,
            forward_rules: true,
            random_fully_disabled: false,
            nftables: false,
            resync: Duration::from_secs(5),
            network_v4: Some("10.5.0.0/16".parse().unwrap()),
            network_v6: None,
            subnet_v4: Some("10.5.1.0/24".parse().unwrap()),
            subnet_v6: None,
        }
    }

    /// The rules exactly as upstream's `iptables-save` shows them.
    const UPSTREAM_NAT: &str = r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.1.0/24 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#;

    #[test]
    fn masquerade_rules_are_upstreams() {
        let r = masq_rules(
            "10.5.0.0/16".parse().unwrap(),
            "10.5.1.0/24".parse().unwrap(),
            true,
        );
        let mut lines = vec![r.jump.clone()];
        lines.extend(r.rules.clone());
        assert_eq!(lines.join("\n"), UPSTREAM_NAT);
        let plain = masq_rules(
            "10.5.0.0/16".parse().unwrap(),
            "10.5.1.0/24".parse().unwrap(),
            false,
        );
        assert!(plain.rules.iter().all(|l| !l.contains("random")));
        let v6 = masq_rules(
            "fd00:5::/48".parse().unwrap(),
            "fd00:5:1::/64".parse().unwrap(),
            false,
        );
        assert!(
            v6.rules[4].contains("-s fd00:5::/48 ! -d ff00::/8"),
            "{}",
            v6.rules[4]
        );
    }

    #[test]
    fn forward_rules_are_upstreams() {
        let r = forward_rules("10.5.0.0/16".parse().unwrap());
        assert_eq!(
            r.jump,
            r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#
        );
        assert_eq!(
            r.rules,
            vec![
                r#"-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
            ]
        );
    }

    fn save_text(nat_rules: &str) -> String {
        format!(
            "# Generated by iptables-save v1.8.9\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n\
             -A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE\n{nat_rules}\nCOMMIT\n# Completed\n"
        )
    }

    #[test]
    fn a_complete_rule_set_needs_no_rewrite_and_a_deleted_rule_does() {
        let want = masq_rules(
            "10.5.0.0/16".parse().unwrap(),
            "10.5.1.0/24".parse().unwrap(),
            true,
        );
        let saved = parse_save(&save_text(UPSTREAM_NAT));
        let have = observe_chain(&saved, &want);
        assert_eq!(chain_problem(&have, &want), None);

        let missing: Vec<&str> = UPSTREAM_NAT
            .lines()
            .filter(|l| !l.contains("! -d 224"))
            .collect();
        let have = observe_chain(&parse_save(&save_text(&missing.join("\n"))), &want);
        assert!(chain_problem(&have, &want).unwrap().contains("differ"));

        let doubled = format!("{}\n{UPSTREAM_NAT}", UPSTREAM_NAT.lines().next().unwrap());
        let have = observe_chain(&parse_save(&save_text(&doubled)), &want);
        assert!(chain_problem(&have, &want).unwrap().contains("2 jump"));

        let have = observe_chain(
            &parse_save("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"),
            &want,
        );
        assert!(chain_problem(&have, &want).unwrap().contains("missing"));
    }

    #[test]
    fn restore_input_flushes_the_chain_and_moves_the_jump() {
        let want = masq_rules(
            "10.5.0.0/16".parse().unwrap(),
            "10.5.1.0/24".parse().unwrap(),
            true,
        );
        let have = observe_chain(&parse_save(&save_text(UPSTREAM_NAT)), &want);
        let text = restore_input(&[(&want, &have)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(lines[1], ":FLANNEL-POSTRTG - [0:0]");
        assert_eq!(
            lines[2],
            r#"-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#
        );
        assert_eq!(lines[3..lines.len() - 1].join("\n"), UPSTREAM_NAT);
        assert_eq!(*lines.last().unwrap(), "COMMIT");
    }

    #[test]
    fn rule_sets_follow_the_flags_and_families() {
        let c = cfg();
        assert_eq!(
            iptables_rules(&c, Family::V4, true)
                .iter()
                .map(|r| r.table)
                .collect::<Vec<_>>(),
            vec!["nat", "filter"]
        );
        assert!(iptables_rules(&c, Family::V6, true).is_empty());
        let only_fwd = RulesConfig {
            ip_masq: false,
            ..cfg()
        };
        assert_eq!(
            iptables_rules(&only_fwd, Family::V4, true)
                .iter()
                .map(|r| r.table)
                .collect::<Vec<_>>(),
            vec!["filter"]
        );
        let dual = RulesConfig {
            network_v6: Some("fd00:5::/48".parse().unwrap()),
            subnet_v6: Some("fd00:5:1::/64".parse().unwrap()),
            ..cfg()
        };
        assert_eq!(iptables_rules(&dual, Family::V6, true).len(), 2);
        assert!(!RulesConfig {
            ip_masq: false,
            forward_rules: false,
            ..cfg()
        }
        .wants_anything());
    }

    #[test]
    fn teardown_removes_jumps_and_chains_only() {
        let text = save_text(UPSTREAM_NAT)
            + "*filter\n:FORWARD ACCEPT [0:0]\n:FLANNEL-FWD - [0:0]\n-A FORWARD -j DOCKER\n\
               -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-A FLANNEL-FWD -s 10.5.0.0/16 -j ACCEPT\nCOMMIT\n";
        let out = teardown_input(&parse_save(&text));
        assert_eq!(
            out,
            "*filter\n-D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n:FLANNEL-FWD - [0:0]\n-X FLANNEL-FWD\nCOMMIT\n\
             *nat\n-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n:FLANNEL-POSTRTG - [0:0]\n-X FLANNEL-POSTRTG\nCOMMIT\n"
        );
        assert_eq!(
            teardown_input(&parse_save("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n")),
            ""
        );
    }

    #[test]
    fn random_fully_needs_iptables_1_6_2() {
        assert!(iptables_is_recent("iptables v1.8.9 (nf_tables)"));
        assert!(iptables_is_recent("ip6tables v1.6.2"));
        assert!(!iptables_is_recent("iptables v1.6.1"));
        assert!(!iptables_is_recent("iptables v1.4.21"));
        assert!(!iptables_is_recent("garbage"));
    }

    #[test]
    fn nft_batch_is_upstreams() {
        let text = nft_batch(&cfg(), true);
        let expected = r#"add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }
add table ip6 flannel-ipv6 { comment "rules for flannel-ipv6" ; }
add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat ; comment "chain to manage traffic masquerading by flannel" ; }
flush chain ip flannel-ipv4 postrtg
add rule ip flannel-ipv4 postrtg meta mark 0x4000 return
add rule ip flannel-ipv4 postrtg ip saddr 10.5.1.0/24 ip daddr 10.5.0.0/16 return
add rule ip flannel-ipv4 postrtg ip saddr 10.5.0.0/16 ip daddr 10.5.1.0/24 return
add rule ip flannel-ipv4 postrtg ip saddr != 10.5.1.0/24 ip daddr 10.5.0.0/16 return
add rule ip flannel-ipv4 postrtg ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
add rule ip flannel-ipv4 postrtg ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random
add chain ip flannel-ipv4 forward { type filter hook forward priority filter ; comment "chain to accept flannel traffic" ; }
flush chain ip flannel-ipv4 forward
add rule ip flannel-ipv4 forward ip saddr 10.5.0.0/16 accept
add rule ip flannel-ipv4 forward ip daddr 10.5.0.0/16 accept
"#;
        assert_eq!(text, expected);
        assert!(!nft_batch(&cfg(), false).contains("fully-random"));
    }
}
