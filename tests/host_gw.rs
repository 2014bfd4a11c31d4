//! The host-gw backend on a real kernel: hosts on one L2 (the fabric
//! bridge), a real etcd, the real `flanneld`. Routes are read with `ip -j`
//! inside the host namespaces.
//!
//! Tier: netns (root): a cluster in network namespaces with a real etcd and real daemons.

mod common;

use std::collections::BTreeSet;

use common::cluster::*;
use common::kernel::*;
use common::*;
use serde_json::Value;

const CONF: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#;

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
            json_str(&r["dst"]).starts_with(prefix)
                && json_str(&r["dev"]) != "pod0"
                && json_str(&r["protocol"]) != "kernel"
        })
        .map(|r| {
            format!(
                "{} via {} dev {}",
                json_str(&r["dst"]),
                json_str(&r["gateway"]),
                json_str(&r["dev"])
            )
        })
        .collect()
}

fn expected(c: &Cluster, peers: &[usize]) -> BTreeSet<String> {
    peers
        .iter()
        .map(|&j| format!("{} via {} dev eth0", lease_net(c, j), host_ip(j)))
        .collect()
}

fn wait_routes(c: &Cluster, i: usize, want: &BTreeSet<String>, what: &str) {
    wait_for_state(c, i, want, what, || flannel_routes(c, i, "-4", "10.5."));
}

#[test]
fn host_gw_three_hosts_reach_each_other_and_routes_follow_leases() {
    require_cluster!();
    let mut c = Cluster::new(3, CONF);
    c.start_all(&[]);
    ping_all_pairs(&c, "host-gw");
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

    lease_goes_and_comes_back(&mut c, "host-gw", |c, i, peers, what| {
        wait_routes(c, i, &expected(c, peers), what)
    });
}

#[test]
fn host_gw_refuses_peers_off_the_l2_and_recovers_deleted_routes() {
    require_cluster!();
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
        &["route", "del", &lease_net(&c, 1)],
    );
    wait_routes(&c, 0, &expected(&c, &[1]), "after deleting the route");
    // The log line is read through a pipe: it may trail the kernel state a little.
    let logged = wait_until(secs(5), || {
        c.daemon(0)
            .log()
            .contains("reconcile: route replace")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", c.daemon(0).log());
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
    require_cluster!();
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
    require_cluster!();
    let conf = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"host-gw"}}"#;
    let mut c = Cluster::new(2, conf);
    add_fabric_v6(&c);
    c.start_all(&[]);
    let pods: Vec<PodV6> = (0..2).map(|i| wire_pod_v6(&c, i)).collect();
    for (i, j) in [(0, 1), (1, 0)] {
        let want: BTreeSet<String> =
            [format!("{} via {} dev eth0", pods[j].net, host_ip6(j))].into();
        wait_for_state(&c, i, &want, "v6", || {
            flannel_routes(&c, i, "-6", "fd00:5:")
        });
    }
    ping_all_pairs_v6(&c, &pods, "host-gw v6");
    ping_all_pairs(&c, "host-gw");
}

/// The node's subnet is taken over by another host while it runs; the daemon moves
/// to a new subnet in place (host-gw keeps nothing keyed by its own subnet): pods reach each
/// other on the new subnet, and the peer's route to the old one goes.
#[test]
fn host_gw_a_node_whose_subnet_is_taken_moves_in_place() {
    require_cluster!();
    let mut c = Cluster::new(2, CONF);
    c.start_all(&[]);
    let (old, _) = c.check_move(0, 1, None);
    wait_routes(&c, 0, &expected(&c, &[1]), "after the move");
    // The old subnet is no longer ours, so reconciliation no longer spares a route into it:
    // one no lease explains goes like any stray (the periodic check, every 10 s).
    let old: ipnet::Ipv4Net = old.parse().unwrap();
    let old = old.trunc().to_string();
    sh(
        Some(&c.hosts[0].netns),
        "ip",
        &["route", "add", &old, "via", "192.0.2.77", "dev", "eth0"],
    );
    let gone = wait_until(secs(25), || {
        (flannel_routes(&c, 0, "-4", "10.5.") == expected(&c, &[1])).then_some(())
    });
    assert!(
        gone.is_some(),
        "a stray route into our old subnet {old} stays:\n{:?}\n{}",
        flannel_routes(&c, 0, "-4", "10.5."),
        c.daemon(0).log()
    );
}
