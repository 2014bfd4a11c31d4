//! The host-gw backend on a real kernel: hosts on one L2 (the fabric
//! bridge), a real etcd, the real `flanneld`. Routes are read with `ip -j`
//! inside the host namespaces.

mod common;

use std::collections::BTreeSet;

use common::cluster::*;
use common::*;
use serde_json::Value;

const CONF: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// Routes of host `i` into the flannel network (not its own pod subnet,
/// not kernel-made ones), as `dst via gw dev dev`.
fn flannel_routes(c: &Cluster, i: usize, family: &str, prefix: &str) -> BTreeSet<String> {
    let out = sh(
        Some(&c.hosts[i].netns),
        "ip",
        &["-j", family, "route", "show", "table", "main"],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            s(&r["dst"]).starts_with(prefix)
                && s(&r["dev"]) != "pod0"
                && s(&r["protocol"]) != "kernel"
        })
        .map(|r| {
            format!(
                "{} via {} dev {}",
                s(&r["dst"]),
                s(&r["gateway"]),
                s(&r["dev"])
            )
        })
        .collect()
}

fn subnet_net(c: &Cluster, i: usize) -> String {
    let key = c.lease_key(i);
    let name = key.rsplit('/').next().unwrap();
    let (ip, len) = name.rsplit_once('-').unwrap();
    format!("{ip}/{len}")
}

fn expected(c: &Cluster, peers: &[usize]) -> BTreeSet<String> {
    peers
        .iter()
        .map(|&j| format!("{} via {} dev eth0", subnet_net(c, j), host_ip(j)))
        .collect()
}

fn wait_routes(c: &Cluster, i: usize, want: &BTreeSet<String>, what: &str) {
    let ok = wait_until(secs(20), || {
        (flannel_routes(c, i, "-4", "10.5.") == *want).then_some(())
    });
    assert!(
        ok.is_some(),
        "{what}: host{i} routes {:#?}, want {want:#?}\nlog:\n{}",
        flannel_routes(c, i, "-4", "10.5."),
        c.daemon(i).log()
    );
}

fn ping_all_pairs(c: &Cluster) {
    for a in 0..c.hosts.len() {
        for b in 0..c.hosts.len() {
            if a != b {
                let ip = c.pod_ip(b);
                assert!(
                    c.ping(a, &ip, secs(10)),
                    "pod{a} → pod{b} ({ip}) over host-gw\nlog{a}:\n{}",
                    c.daemon(a).log()
                );
            }
        }
    }
}

#[test]
fn host_gw_three_hosts_reach_each_other_and_routes_follow_leases() {
    require!(Cap::Root, Cap::Netns, Cap::Veth, Cap::Etcd);
    let mut c = Cluster::new(3, CONF);
    c.start_all(&[]);
    ping_all_pairs(&c);
    for i in 0..3 {
        let lease = c
            .etcd()
            .must(&["get", &c.lease_key(i), "--print-value-only"]);
        assert_eq!(
            lease.trim(),
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
                host_ip(i)
            )
        );
        let env = std::fs::read_to_string(&c.daemon(i).subnet_file).unwrap();
        assert!(env.contains("FLANNEL_MTU=1500\n"), "{env}");
        let peers: Vec<usize> = (0..3).filter(|j| *j != i).collect();
        wait_routes(&c, i, &expected(&c, &peers), "all leases");
    }

    // The lease goes: so does its route, everywhere.
    c.kill(2);
    c.etcd().must(&["del", &c.lease_key(2)]);
    wait_routes(
        &c,
        0,
        &expected(&c, &[1]),
        "after host2's lease was deleted",
    );
    wait_routes(
        &c,
        1,
        &expected(&c, &[0]),
        "after host2's lease was deleted",
    );

    // It comes back.
    c.restart(2);
    wait_routes(&c, 0, &expected(&c, &[1, 2]), "after host2 came back");
    wait_routes(&c, 2, &expected(&c, &[0, 1]), "host2 after its restart");
    ping_all_pairs(&c);
}

#[test]
fn host_gw_refuses_peers_off_the_l2_and_recovers_deleted_routes() {
    require!(Cap::Root, Cap::Netns, Cap::Veth, Cap::Etcd);
    let mut c = Cluster::new(2, CONF);
    c.start_all(&[]);
    wait_routes(&c, 0, &expected(&c, &[1]), "start");

    // A host whose public address is not on this L2: no broken route, one error.
    c.etcd().must(&[
        "put",
        "/coreos.com/network/subnets/10.5.200.0-24",
        r#"{"PublicIP":"198.51.100.7","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    let said = wait_until(secs(10), || {
        c.daemon(0)
            .log()
            .contains("Error adding route to 10.5.200.0/24 via 198.51.100.7 dev eth0: network is unreachable")
            .then_some(())
    });
    assert!(said.is_some(), "{}", c.daemon(0).log());
    wait_routes(&c, 0, &expected(&c, &[1]), "with an off-link peer");

    // A route deleted by hand comes back, with a log line.
    sh(
        Some(&c.hosts[0].netns),
        "ip",
        &["route", "del", &subnet_net(&c, 1)],
    );
    wait_routes(&c, 0, &expected(&c, &[1]), "after deleting the route");
    assert!(
        c.daemon(0).log().contains("reconcile: route replace"),
        "{}",
        c.daemon(0).log()
    );
    assert!(c.ping(0, &c.pod_ip(1), secs(10)));
    let errors = c.daemon(0).log().matches("network is unreachable").count();
    assert_eq!(
        errors,
        1,
        "the refusal is logged once, not every check:\n{}",
        c.daemon(0).log()
    );
}

#[test]
fn host_gw_refuses_to_start_behind_nat() {
    require!(Cap::Root, Cap::Netns, Cap::Veth, Cap::Etcd);
    let mut c = Cluster::new(1, CONF);
    c.start(0, &["--public-ip=203.0.113.9"]);
    let d = c.hosts[0].daemon.as_mut().unwrap();
    let status = d.wait_exit(secs(20)).expect("flanneld should exit");
    assert_eq!(status.code(), Some(1));
    assert!(
        d.log().contains("your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend"),
        "{}",
        d.log()
    );
}

#[test]
fn host_gw_dual_stack_routes_ipv6_too() {
    require!(Cap::Root, Cap::Netns, Cap::Veth, Cap::Etcd);
    let conf = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"host-gw"}}"#;
    let mut c = Cluster::new(2, conf);
    for i in 0..2 {
        let ns = c.hosts[i].netns.clone();
        sh(
            Some(&ns),
            "sysctl",
            &["-qw", "net.ipv6.conf.all.forwarding=1"],
        );
        sh(
            Some(&ns),
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("2001:db8::{}/64", i + 1),
                "dev",
                "eth0",
                "nodad",
            ],
        );
    }
    c.start_all(&[]);
    let mut pods = Vec::new();
    let mut nets = Vec::new();
    for i in 0..2 {
        let env = std::fs::read_to_string(&c.daemon(i).subnet_file).unwrap();
        let sub = env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
            .expect("v6 subnet")
            .to_owned();
        let (gw, len) = sub.split_once('/').unwrap();
        let base = gw.strip_suffix('1').unwrap().to_owned();
        let (ns, pns) = (c.hosts[i].netns.clone(), c.hosts[i].pod_netns.clone());
        sh(
            Some(&ns),
            "ip",
            &["-6", "addr", "add", &sub, "dev", "pod0", "nodad"],
        );
        sh(
            Some(&pns),
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("{base}2/{len}"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        sh(
            Some(&pns),
            "ip",
            &["-6", "route", "add", "default", "via", gw],
        );
        pods.push(format!("{base}2"));
        nets.push(format!("{base}/{len}"));
    }
    for (i, j) in [(0, 1), (1, 0)] {
        let want: BTreeSet<String> =
            [format!("{} via 2001:db8::{} dev eth0", nets[j], j + 1)].into();
        let ok = wait_until(secs(20), || {
            (flannel_routes(&c, i, "-6", "fd00:5:") == want).then_some(())
        });
        assert!(
            ok.is_some(),
            "host{i}: {:#?} want {want:#?}",
            flannel_routes(&c, i, "-6", "fd00:5:")
        );
        let ping = wait_until(secs(15), || {
            run(
                Some(&c.hosts[i].pod_netns),
                "ping",
                &["-6", "-c", "1", "-W", "1", "-n", "-q", &pods[j]],
            )
            .status
            .success()
            .then_some(())
        });
        assert!(
            ping.is_some(),
            "pod{i} → pod{j} ({}) over host-gw v6\n{}",
            pods[j],
            c.daemon(i).log()
        );
    }
    ping_all_pairs(&c);
}
