//! `--ip-masq` and the forward rules on a real kernel: iptables (and
//! nftables) inside the host namespaces, traffic from pods to an "outside"
//! namespace on the fabric (not in the flannel network) and between pods.
//!
//! Tier: netns (root): a cluster in network namespaces with a real etcd and real daemons.

mod common;

use common::cluster::*;
use common::kernel::*;
use common::*;

const CONF: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;
const OUTSIDE_IP: &str = "192.0.2.200";

/// A namespace on the fabric bridge, outside the flannel network, with ICMP
/// counters per source. Deleted on drop.
struct Outside {
    netns: String,
}

impl Outside {
    fn new(c: &Cluster) -> Outside {
        let netns = format!("{}out", c.prefix);
        sh(None, "ip", &["netns", "add", &netns]);
        let o = Outside { netns };
        let ns = Some(o.netns.as_str());
        sh(ns, "ip", &["link", "set", "lo", "up"]);
        sh(
            ns,
            "ip",
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "vout", "netns", &c.fabric,
            ],
        );
        sh(
            Some(&c.fabric),
            "ip",
            &["link", "set", "vout", "master", "br0", "up"],
        );
        sh(
            ns,
            "ip",
            &["addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "eth0"],
        );
        sh(ns, "ip", &["link", "set", "eth0", "up"]);
        o
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Counts ICMP packets from `src` arriving in `ns` (an INPUT accept rule).
fn count_icmp_from(ns: &str, src: &str) {
    sh(
        Some(ns),
        "iptables",
        &["-A", "INPUT", "-p", "icmp", "-s", src, "-j", "ACCEPT"],
    );
}

fn icmp_count(ns: &str, src: &str) -> u64 {
    let save = sh(Some(ns), "iptables-save", &["-c", "-t", "filter"]);
    let needle = format!("-A INPUT -s {src}");
    save.lines()
        .find(|l| l.contains(&needle))
        .and_then(|l| l.strip_prefix('[')?.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no counter for {src} in {ns}:\n{save}"))
}

/// Pod 0 pings the outside, which must see host 0's address and no pod
/// address (it has no route to the pods, so a reply only comes back through
/// the NAT).
fn assert_outside_sees_host_not_pod(c: &Cluster, out: &Outside) {
    count_icmp_from(&out.netns, &format!("{}/32", host_ip(0)));
    count_icmp_from(&out.netns, "10.5.0.0/16");
    assert!(
        c.ping(0, OUTSIDE_IP, secs(10)),
        "pod0 → outside\n{}",
        c.daemon(0).log()
    );
    assert!(icmp_count(&out.netns, &format!("{}/32", host_ip(0))) > 0);
    assert_eq!(
        icmp_count(&out.netns, "10.5.0.0/16"),
        0,
        "a pod address leaked outside"
    );
}

/// The flannel lines of one table of `iptables-save` in host `i`.
fn flannel_lines(c: &Cluster, i: usize, table: &str) -> Vec<String> {
    sh(Some(&c.hosts[i].netns), "iptables-save", &["-t", table])
        .lines()
        .filter(|l| l.contains("FLANNEL-") || l.contains("flanneld"))
        .map(str::to_owned)
        .collect()
}

/// Upstream's rules for host `i` (iptables 1.8 has `--random-fully`).
fn upstream_nat(c: &Cluster, i: usize) -> Vec<String> {
    let pod = lease_net(c, i);
    let m = r#"-m comment --comment "flanneld masq""#;
    vec![
        ":FLANNEL-POSTRTG - [0:0]".into(),
        format!("-A POSTROUTING {m} -j FLANNEL-POSTRTG"),
        format!("-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {pod} -d 10.5.0.0/16 {m} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d {pod} {m} -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d {pod} {m} -j RETURN"),
        format!(
            "-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 {m} -j MASQUERADE --random-fully"
        ),
        format!(
            "-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 {m} -j MASQUERADE --random-fully"
        ),
    ]
}

fn upstream_filter() -> Vec<String> {
    let m = r#"-m comment --comment "flanneld forward""#;
    vec![
        ":FLANNEL-FWD - [0:0]".into(),
        format!("-A FORWARD {m} -j FLANNEL-FWD"),
        format!("-A FLANNEL-FWD -s 10.5.0.0/16 {m} -j ACCEPT"),
        format!("-A FLANNEL-FWD -d 10.5.0.0/16 {m} -j ACCEPT"),
    ]
}

#[test]
fn ip_masq_hides_pods_behind_the_host_only_outside_the_network() {
    require_vxlan_cluster!(Cap::Iptables);
    let mut c = Cluster::new(2, CONF);
    let out = Outside::new(&c);
    c.start_all(&["--ip-masq"]);
    for i in 0..2 {
        assert_eq!(
            flannel_lines(&c, i, "nat"),
            upstream_nat(&c, i),
            "host{i} nat"
        );
        assert_eq!(
            flannel_lines(&c, i, "filter"),
            upstream_filter(),
            "host{i} filter"
        );
        let env = std::fs::read_to_string(&c.daemon(i).subnet_file).unwrap();
        assert!(env.contains("FLANNEL_IPMASQ=true\n"), "{env}");
    }

    assert_outside_sees_host_not_pod(&c, &out);

    // Pod → pod: the pod's own address arrives.
    let pod0 = c.pod_ip(0);
    count_icmp_from(&c.hosts[1].pod_netns, &format!("{pod0}/32"));
    count_icmp_from(&c.hosts[1].pod_netns, &format!("{}/32", host_ip(0)));
    assert!(c.ping(0, &c.pod_ip(1), secs(10)), "pod0 → pod1");
    assert!(icmp_count(&c.hosts[1].pod_netns, &format!("{pod0}/32")) > 0);
    assert_eq!(
        icmp_count(&c.hosts[1].pod_netns, &format!("{}/32", host_ip(0))),
        0,
        "pod traffic was masqueraded"
    );
}

#[test]
fn deleted_rules_are_back_after_one_resync() {
    require_vxlan_cluster!(Cap::Iptables);
    let mut c = Cluster::new(1, CONF);
    c.start_all(&["--ip-masq", "--iptables-resync=1"]);
    let ns = c.hosts[0].netns.clone();
    let want_nat = upstream_nat(&c, 0);

    let masq = r#"-D FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment flanneld\ masq -j MASQUERADE --random-fully"#;
    sh(Some(&ns), "sh", &["-c", &format!("iptables -t nat {masq}")]);
    assert_ne!(flannel_lines(&c, 0, "nat"), want_nat);
    let back = wait_until(secs(3), || {
        (flannel_lines(&c, 0, "nat") == want_nat).then_some(())
    });
    assert!(
        back.is_some(),
        "nat rules after one resync: {:#?}\n{}",
        flannel_lines(&c, 0, "nat"),
        c.daemon(0).log()
    );
    assert!(
        c.daemon(0)
            .log()
            .contains("Some iptables rules are missing; deleting and recreating rules"),
        "{}",
        c.daemon(0).log()
    );

    // The jump from FORWARD, and a whole chain.
    sh(
        Some(&ns),
        "sh",
        &[
            "-c",
            r#"iptables -D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
        ],
    );
    sh(
        Some(&ns),
        "sh",
        &[
            "-c",
            r#"iptables -t nat -D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG && iptables -t nat -F FLANNEL-POSTRTG && iptables -t nat -X FLANNEL-POSTRTG"#,
        ],
    );
    let back = wait_until(secs(3), || {
        (flannel_lines(&c, 0, "nat") == want_nat
            && flannel_lines(&c, 0, "filter") == upstream_filter())
        .then_some(())
    });
    assert!(
        back.is_some(),
        "{:#?} {:#?}",
        flannel_lines(&c, 0, "nat"),
        flannel_lines(&c, 0, "filter")
    );

    // A stray duplicate jump is folded back into one.
    sh(
        Some(&ns),
        "sh",
        &[
            "-c",
            r#"iptables -t nat -I POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
        ],
    );
    let back = wait_until(secs(3), || {
        (flannel_lines(&c, 0, "nat") == want_nat).then_some(())
    });
    assert!(back.is_some(), "{:#?}", flannel_lines(&c, 0, "nat"));
}

#[test]
fn forward_rules_without_ip_masq_and_none_when_disabled() {
    require_vxlan_cluster!(Cap::Iptables);
    let mut c = Cluster::new(2, CONF);
    c.start(0, &[]);
    c.start(1, &["--iptables-forward-rules=false"]);
    c.wait_ready(0);
    c.wait_ready(1);
    assert_eq!(flannel_lines(&c, 0, "filter"), upstream_filter());
    assert!(flannel_lines(&c, 0, "nat").is_empty());
    assert!(flannel_lines(&c, 1, "filter").is_empty());
    assert!(flannel_lines(&c, 1, "nat").is_empty());
}

fn nft_table(c: &Cluster, i: usize) -> Option<String> {
    let o = run(
        Some(&c.hosts[i].netns),
        "nft",
        &["list", "table", "ip", "flannel-ipv4"],
    );
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn nftables_mode_masquerades_resyncs_and_cleans_up_on_exit() {
    require_vxlan_cluster!(Cap::Nft, Cap::Iptables);
    let mut c = Cluster::new(
        2,
        r#"{"Network":"10.5.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#,
    );
    let out = Outside::new(&c);
    c.start_all(&["--ip-masq", "--iptables-resync=1"]);
    let pod = lease_net(&c, 0);
    let table = nft_table(&c, 0).expect("table ip flannel-ipv4");
    for rule in [
        "meta mark 0x00004000 return".to_owned(),
        format!("ip saddr {pod} ip daddr 10.5.0.0/16 return"),
        format!("ip saddr 10.5.0.0/16 ip daddr {pod} return"),
        format!("ip saddr != {pod} ip daddr 10.5.0.0/16 return"),
        "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random".to_owned(),
        "ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random".to_owned(),
        "ip saddr 10.5.0.0/16 accept".to_owned(),
        "ip daddr 10.5.0.0/16 accept".to_owned(),
    ] {
        assert!(table.contains(&rule), "missing {rule:?} in\n{table}");
    }
    assert!(
        flannel_lines(&c, 0, "nat").is_empty() && flannel_lines(&c, 0, "filter").is_empty(),
        "no iptables rules in nftables mode"
    );

    assert_outside_sees_host_not_pod(&c, &out);
    assert!(c.ping(0, &c.pod_ip(1), secs(10)), "pod0 → pod1");

    // Resync restores a flushed chain.
    sh(
        Some(&c.hosts[0].netns),
        "nft",
        &["flush", "chain", "ip", "flannel-ipv4", "postrtg"],
    );
    let back = wait_until(secs(3), || {
        nft_table(&c, 0).filter(|t| *t == table).map(|_| ())
    });
    assert!(
        back.is_some(),
        "{:?}\n{}",
        nft_table(&c, 0),
        c.daemon(0).log()
    );

    // SIGTERM: upstream deletes its tables on the way out.
    c.daemon(0).signal("TERM");
    let d = c.hosts[0].daemon.as_mut().unwrap();
    assert_eq!(
        d.wait_exit(secs(10)).and_then(|s| s.code()),
        Some(0),
        "{}",
        d.log()
    );
    assert_eq!(nft_table(&c, 0), None, "flannel-ipv4 left behind");
    let o = run(
        Some(&c.hosts[0].netns),
        "nft",
        &["list", "table", "ip6", "flannel-ipv6"],
    );
    assert!(!o.status.success(), "flannel-ipv6 left behind");
}
