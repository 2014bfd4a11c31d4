//! Helpers for the tests that program a real kernel through a [`Cluster`]:
//! reading `ip -j` output, the lease networks, pod-to-pod pings and the
//! IPv6 wiring of dual-stack clusters.

use std::collections::BTreeSet;

use serde_json::Value;

use super::cluster::{run, sh, Cluster};
use super::{secs, wait_until};

/// A JSON string as an owned `String` (empty when absent or not a string).
pub fn json_str(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// The network of host `i`'s lease, as its etcd key names it (`10.5.3.0/24`).
pub fn lease_net(c: &Cluster, i: usize) -> String {
    let key = c.lease_key(i);
    let (ip, len) = key.rsplit('/').next().unwrap().rsplit_once('-').unwrap();
    format!("{ip}/{len}")
}

/// Waits up to 20 s until `read()`, host `i`'s kernel state as one line per
/// entry, equals `want`; otherwise fails with `what`, both sets and the host's
/// daemon log.
pub fn wait_for_state(
    c: &Cluster,
    i: usize,
    want: &BTreeSet<String>,
    what: &str,
    read: impl Fn() -> BTreeSet<String>,
) {
    let got = wait_until(secs(20), || (read() == *want).then_some(()));
    assert!(
        got.is_some(),
        "{what}: host{i} kernel state\n have {:#?}\n want {want:#?}\nlog:\n{}",
        read(),
        c.daemon(i).log()
    );
}

/// Pings every pod from every other pod over IPv4; a failure names the
/// backend the traffic went `over` and shows the sender's daemon log.
pub fn ping_all_pairs(c: &Cluster, over: &str) {
    for a in 0..c.hosts.len() {
        for b in 0..c.hosts.len() {
            if a != b {
                let ip = c.pod_ip(b);
                assert!(
                    c.ping(a, &ip, secs(10)),
                    "pod{a} → pod{b} ({ip}) over {over}\nlog{a}:\n{}",
                    c.daemon(a).log()
                );
            }
        }
    }
}

/// Host 2 of a three-host cluster goes away with its lease, then comes back.
/// `wait_peers(c, i, peers, what)` waits until host `i` holds exactly the
/// backend's entries for `peers` (and fails with `what` when it does not).
pub fn lease_goes_and_comes_back(
    c: &mut Cluster,
    over: &str,
    wait_peers: impl Fn(&Cluster, usize, &[usize], &str),
) {
    // The lease goes: so do its entries, everywhere.
    c.kill(2);
    c.etcd().must(&["del", &c.lease_key(2)]);
    wait_peers(c, 0, &[1], "after host2's lease was deleted");
    wait_peers(c, 1, &[0], "after host2's lease was deleted");

    // It comes back (the same subnet, from its subnet.env).
    c.restart(2);
    wait_peers(c, 0, &[1, 2], "after host2 came back");
    wait_peers(c, 2, &[0, 1], "host2 after its restart");
    ping_all_pairs(c, over);
}

/// Fabric IPv6 address of host `i`.
pub fn host_ip6(i: usize) -> String {
    format!("2001:db8::{}", i + 1)
}

/// Turns on IPv6 forwarding in every host and gives its eth0 the fabric
/// address [`host_ip6`] (before flanneld starts: it needs one).
pub fn add_fabric_v6(c: &Cluster) {
    for (i, h) in c.hosts.iter().enumerate() {
        let ns = Some(h.netns.as_str());
        sh(ns, "sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        let addr = format!("{}/64", host_ip6(i));
        sh(
            ns,
            "ip",
            &["-6", "addr", "add", &addr, "dev", "eth0", "nodad"],
        );
    }
}

/// Host `i`'s pod IPv6 network, as [`wire_pod_v6`] set it up.
pub struct PodV6 {
    /// The pod's address (subnet `::2`).
    pub addr: String,
    /// The network (`fd00:5:0:100::/64`).
    pub net: String,
    /// The network's address (`fd00:5:0:100::`).
    pub base: String,
}

/// Once host `i`'s daemon wrote subnet.env, gives pod0 the gateway
/// `FLANNEL_IPV6_SUBNET` names and the pod `::2` with a default route.
pub fn wire_pod_v6(c: &Cluster, i: usize) -> PodV6 {
    let env = std::fs::read_to_string(&c.daemon(i).subnet_file).unwrap();
    let sub = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
        .expect("FLANNEL_IPV6_SUBNET")
        .to_owned();
    let (gw, len) = sub.split_once('/').unwrap();
    let base = gw.strip_suffix('1').unwrap().to_owned();
    let addr = format!("{base}2");
    let (ns, pns) = (
        Some(c.hosts[i].netns.as_str()),
        Some(c.hosts[i].pod_netns.as_str()),
    );
    sh(
        ns,
        "ip",
        &["-6", "addr", "add", &sub, "dev", "pod0", "nodad"],
    );
    let pod_addr = format!("{addr}/{len}");
    sh(
        pns,
        "ip",
        &["-6", "addr", "add", &pod_addr, "dev", "eth0", "nodad"],
    );
    sh(pns, "ip", &["-6", "route", "add", "default", "via", gw]);
    PodV6 {
        addr,
        net: format!("{base}/{len}"),
        base,
    }
}

/// Pings every pod's IPv6 address in `pods` (by host) from every other pod,
/// each until one reply arrives or 15 seconds pass; a failure names the
/// backend the traffic went `over` and shows the sender's daemon log.
pub fn ping_all_pairs_v6(c: &Cluster, pods: &[PodV6], over: &str) {
    for a in 0..pods.len() {
        for (b, pod) in pods.iter().enumerate() {
            if a == b {
                continue;
            }
            let ok = wait_until(secs(15), || {
                let pns = Some(c.hosts[a].pod_netns.as_str());
                let args = ["-6", "-c", "1", "-W", "1", "-n", "-q", &pod.addr];
                run(pns, "ping", &args).status.success().then_some(())
            });
            assert!(
                ok.is_some(),
                "pod{a} → pod{b} ({}) over {over}\nlog{a}:\n{}",
                pod.addr,
                c.daemon(a).log()
            );
        }
    }
}
