//! The vxlan backend on a real kernel: hosts in network namespaces, a real
//! etcd, the real `flanneld` binary. Kernel state is read with `ip -j` /
//! `bridge -j` inside the host namespaces and compared exactly with what the
//! leases ask for.
//!
//! Tier: netns (root): a cluster in network namespaces with a real etcd and real daemons.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::cluster::*;
use common::kernel::*;
use common::*;
use serde_json::Value;

const CONF: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn json(ns: &str, program: &str, args: &[&str]) -> Value {
    let out = sh(Some(ns), program, args);
    serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}: {out}"))
}

/// Like [`json`], but an empty list when the command fails (a device that
/// is being recreated).
fn json_or_empty(ns: &str, program: &str, args: &[&str]) -> Value {
    let out = run(Some(ns), program, args);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&text).unwrap_or(Value::Array(Vec::new()))
}

/// The network form of host `i`'s subnet (`10.5.3.0/24`) and its address.
fn subnet_of(c: &Cluster, i: usize) -> (String, String) {
    let sub = c.hosts[i].subnet.clone().expect("host ready");
    let (ip, len) = sub.split_once('/').unwrap();
    let mut o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
    o[3] -= 1;
    let addr = format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3]);
    (format!("{addr}/{len}"), addr)
}

fn link_json(c: &Cluster, i: usize, dev: &str) -> Value {
    json(&c.hosts[i].netns, "ip", &["-j", "-d", "link", "show", dev])[0].clone()
}

fn vtep_mac(c: &Cluster, i: usize) -> String {
    json_str(&link_json(c, i, "flannel.1")["address"])
}

/// Host `i`'s flannel-relevant kernel state for `dev`, one line per entry:
/// routes into the flannel network (minus its own pod subnet), neighbours
/// and FDB entries on the device.
fn kernel_state(c: &Cluster, i: usize, dev: &str, family: &str) -> BTreeSet<String> {
    let ns = &c.hosts[i].netns;
    let mut out = BTreeSet::new();
    for r in json(ns, "ip", &["-j", family, "route", "show", "table", "main"])
        .as_array()
        .unwrap()
    {
        let (dst, rdev) = (json_str(&r["dst"]), json_str(&r["dev"]));
        if rdev == "pod0" || !(dst.starts_with("10.5.") || dst.starts_with("fd00:5:")) {
            continue;
        }
        let flags: Vec<String> = r["flags"]
            .as_array()
            .map(|f| f.iter().map(json_str).collect())
            .unwrap_or_default();
        let proto = r
            .get("protocol")
            .map(json_str)
            .unwrap_or_else(|| "boot".into());
        if proto == "kernel" {
            continue;
        }
        out.insert(format!(
            "route {dst} via {} dev {rdev} {} proto {proto}",
            json_str(&r["gateway"]),
            flags.join(",")
        ));
    }
    for n in json_or_empty(ns, "ip", &["-j", family, "neigh", "show", "dev", dev])
        .as_array()
        .unwrap()
    {
        let state: Vec<String> = n["state"]
            .as_array()
            .map(|f| f.iter().map(json_str).collect())
            .unwrap_or_default();
        out.insert(format!(
            "neigh {} lladdr {} {}",
            json_str(&n["dst"]),
            json_str(&n["lladdr"]),
            state.join(",")
        ));
    }
    for f in json_or_empty(ns, "bridge", &["-j", "fdb", "show", "dev", dev])
        .as_array()
        .unwrap()
    {
        let flags: Vec<String> = f["flags"]
            .as_array()
            .map(|f| f.iter().map(json_str).collect())
            .unwrap_or_default();
        out.insert(format!(
            "fdb {} dst {} {} {}",
            json_str(&f["mac"]),
            json_str(&f["dst"]),
            flags.join(","),
            json_str(&f["state"])
        ));
    }
    out
}

/// What host `i` should hold for the given peers (upstream's entries).
fn expected(c: &Cluster, peers: &[usize]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for &j in peers {
        let (net, addr) = subnet_of(c, j);
        let mac = vtep_mac(c, j);
        out.insert(format!(
            "route {net} via {addr} dev flannel.1 onlink proto boot"
        ));
        out.insert(format!("neigh {addr} lladdr {mac} PERMANENT"));
        out.insert(format!("fdb {mac} dst {} self permanent", host_ip(j)));
    }
    out
}

fn wait_state(c: &Cluster, i: usize, want: &BTreeSet<String>, what: &str) {
    wait_for_state(c, i, want, what, || kernel_state(c, i, "flannel.1", "-4"));
}

#[test]
fn vxlan_three_hosts_reach_each_other_and_kernel_state_follows_leases() {
    require_vxlan_cluster!();
    let mut c = Cluster::new(3, CONF);
    c.start_all(&[]);
    ping_all_pairs(&c, "vxlan");

    // The device and the lease are upstream's.
    for i in 0..3 {
        let l = link_json(&c, i, "flannel.1");
        assert_eq!(l["mtu"], 1450);
        let d = &l["linkinfo"]["info_data"];
        assert_eq!(
            (
                d["id"].as_u64(),
                json_str(&d["local"]),
                json_str(&d["link"]),
                d["port"].as_u64()
            ),
            (Some(1), host_ip(i), "eth0".into(), Some(8472))
        );
        assert_eq!(d["learning"], false);
        assert!(l["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        let addrs = json(
            &c.hosts[i].netns,
            "ip",
            &["-j", "-4", "addr", "show", "dev", "flannel.1"],
        );
        let ai = &addrs[0]["addr_info"];
        assert_eq!(
            (
                ai.as_array().unwrap().len(),
                json_str(&ai[0]["local"]),
                ai[0]["prefixlen"].as_u64()
            ),
            (1, subnet_of(&c, i).1, Some(32))
        );
        let lease = c
            .etcd()
            .must(&["get", &c.lease_key(i), "--print-value-only"]);
        assert_eq!(
            lease.trim(),
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                host_ip(i),
                vtep_mac(&c, i)
            )
        );
        let env = std::fs::read_to_string(&c.daemon(i).subnet_file).unwrap();
        assert!(
            env.contains("FLANNEL_MTU=1450\n") && env.contains("FLANNEL_IPMASQ=false\n"),
            "{env}"
        );
    }
    for i in 0..3 {
        let peers: Vec<usize> = (0..3).filter(|j| *j != i).collect();
        wait_state(&c, i, &expected(&c, &peers), "all leases");
    }

    lease_goes_and_comes_back(&mut c, "vxlan", |c, i, peers, what| {
        wait_state(c, i, &expected(c, peers), what)
    });
}

/// Starts an iperf3 flow pod `from` → pod `to` lasting `secs`; returns the client.
fn iperf_in_background(c: &Cluster, from: usize, to: usize, secs: u32) -> (Child, Child) {
    let server = in_netns(Some(&c.hosts[to].pod_netns), "iperf3")
        .args(["-s", "-1", "-p", "5202"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    let target = c.pod_ip(to);
    let t = secs.to_string();
    let client = wait_until(secs_d(5), || {
        std::thread::sleep(Duration::from_millis(200));
        in_netns(Some(&c.hosts[from].pod_netns), "iperf3")
            .args(["-c", &target, "-p", "5202", "-t", &t, "-i", "1", "-J"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()
    })
    .expect("iperf3 client");
    (server, client)
}

fn secs_d(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn restarting_the_daemons_does_not_disturb_a_running_flow() {
    require_vxlan_cluster!(Cap::Iperf3);
    let mut c = Cluster::new(2, CONF);
    c.start_all(&[]);
    assert!(c.ping(0, &c.pod_ip(1), secs(10)));
    let before: Vec<(Value, BTreeSet<String>)> = (0..2)
        .map(|i| {
            (
                link_json(&c, i, "flannel.1")["ifindex"].clone(),
                kernel_state(&c, i, "flannel.1", "-4"),
            )
        })
        .collect();
    let macs: Vec<String> = (0..2).map(|i| vtep_mac(&c, i)).collect();

    let (mut server, client) = iperf_in_background(&c, 0, 1, 14);
    std::thread::sleep(secs(2));
    c.restart(0);
    c.restart(1);
    for i in 0..2 {
        let adopted = wait_until(secs(10), || {
            c.daemon(i).log().contains("adopting it").then_some(())
        });
        assert!(
            adopted.is_some(),
            "host{i} should adopt its device:\n{}",
            c.daemon(i).log()
        );
    }
    let out = client.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "iperf3 failed across the restart: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    let intervals = v["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 13, "{text}");
    for (n, iv) in intervals.iter().enumerate() {
        let bytes = iv["sum"]["bytes"].as_u64().unwrap_or(0);
        assert!(
            bytes > 0,
            "interval {n} moved no data: the restart disturbed the flow\n{text}"
        );
    }

    // Adopted in place: same device, same MAC, same entries, nothing repaired.
    for i in 0..2 {
        assert_eq!(
            link_json(&c, i, "flannel.1")["ifindex"],
            before[i].0,
            "host{i} kept its device"
        );
        assert_eq!(vtep_mac(&c, i), macs[i]);
        assert_eq!(kernel_state(&c, i, "flannel.1", "-4"), before[i].1);
        // The flow outlived one reconciliation period after the restart.
        let log = c.daemon(i).log();
        assert!(
            !log.contains("reconcile:"),
            "host{i} repaired something after a clean restart:\n{log}"
        );
    }
}

#[test]
fn reconciliation_restores_what_was_deleted_by_hand_and_removes_strays() {
    require_vxlan_cluster!();
    let mut c = Cluster::new(2, CONF);
    c.start_all(&[]);
    let want = expected(&c, &[1]);
    wait_state(&c, 0, &want, "start");
    let ns = c.hosts[0].netns.clone();
    let mac1 = vtep_mac(&c, 1);

    // An FDB entry deleted by hand comes back, with a log line.
    sh(
        Some(&ns),
        "bridge",
        &[
            "fdb",
            "del",
            &mac1,
            "dev",
            "flannel.1",
            "dst",
            &host_ip(1),
            "self",
        ],
    );
    assert!(!kernel_state(&c, 0, "flannel.1", "-4")
        .iter()
        .any(|l| l.starts_with("fdb")));
    wait_state(&c, 0, &want, "after deleting the FDB entry");
    // The log line is read through a pipe: it may trail the kernel state a little.
    let line = format!(
        "reconcile: fdb replace {mac1} dev flannel.1 dst {}",
        host_ip(1)
    );
    assert!(
        wait_until(secs(5), || c.daemon(0).log().contains(&line).then_some(())).is_some(),
        "{}",
        c.daemon(0).log()
    );
    assert!(c.ping(0, &c.pod_ip(1), secs(10)));

    // Route and neighbour too; and entries no lease explains go.
    let (net1, addr1) = subnet_of(&c, 1);
    sh(Some(&ns), "ip", &["route", "del", &net1]);
    sh(
        Some(&ns),
        "ip",
        &["neigh", "del", &addr1, "dev", "flannel.1"],
    );
    sh(
        Some(&ns),
        "ip",
        &[
            "neigh",
            "replace",
            "10.5.250.0",
            "lladdr",
            "0a:0b:0c:0d:0e:0f",
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ],
    );
    sh(
        Some(&ns),
        "bridge",
        &[
            "fdb",
            "append",
            "0a:0b:0c:0d:0e:0f",
            "dev",
            "flannel.1",
            "dst",
            "192.0.2.250",
            "self",
            "permanent",
        ],
    );
    sh(
        Some(&ns),
        "ip",
        &[
            "route",
            "replace",
            "10.5.250.0/24",
            "via",
            "10.5.250.0",
            "dev",
            "flannel.1",
            "onlink",
        ],
    );
    wait_state(
        &c,
        0,
        &want,
        "after deleting route and neighbour and adding strays",
    );
    assert!(c.ping(0, &c.pod_ip(1), secs(10)));

    // The whole device: recreated with the same MAC (our lease stays true).
    let mac0 = vtep_mac(&c, 0);
    sh(Some(&ns), "ip", &["link", "del", "flannel.1"]);
    wait_state(&c, 0, &want, "after deleting the device");
    assert_eq!(vtep_mac(&c, 0), mac0);
    assert!(
        c.ping(0, &c.pod_ip(1), secs(10)),
        "pod0 → pod1 after the device was recreated"
    );
    assert!(
        c.ping(1, &c.pod_ip(0), secs(10)),
        "pod1 → pod0 after the device was recreated"
    );
}

#[test]
fn direct_routing_on_a_shared_l2_uses_plain_routes() {
    require_vxlan_cluster!();
    let mut c = Cluster::new(
        2,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    );
    c.start_all(&[]);
    for (i, j) in [(0, 1), (1, 0)] {
        let (net, _) = subnet_of(&c, j);
        let want: BTreeSet<String> = [format!(
            "route {net} via {} dev eth0  proto boot",
            host_ip(j)
        )]
        .into();
        wait_state(&c, i, &want, "direct routing");
    }
    ping_all_pairs(&c, "vxlan");
}

#[test]
fn dual_stack_vxlan_carries_ipv6_between_pods() {
    require_vxlan_cluster!();
    let conf = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}"#;
    let mut c = Cluster::new(2, conf);
    add_fabric_v6(&c);
    c.start_all(&[]);
    let pods: Vec<PodV6> = (0..2).map(|i| wire_pod_v6(&c, i)).collect();
    for i in 0..2 {
        let l = link_json(&c, i, "flannel-v6.1");
        assert_eq!(
            json_str(&l["linkinfo"]["info_data"]["local6"]),
            host_ip6(i),
            "{l}"
        );
        let lease = c.etcd().must(&[
            "get",
            "--prefix",
            "/coreos.com/network/subnets/",
            "--print-value-only",
        ]);
        assert!(
            lease.contains(&format!(r#""PublicIPv6":"{}""#, host_ip6(i))),
            "{lease}"
        );
        assert!(
            lease.contains(&format!(
                r#""BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}"#,
                json_str(&l["address"])
            )),
            "{lease}"
        );
    }
    // Host 0 holds upstream's v6 entries for host 1.
    let mac6 = json_str(&link_json(&c, 1, "flannel-v6.1")["address"]);
    let want: BTreeSet<String> = [
        format!(
            "route {} via {} dev flannel-v6.1 onlink proto boot",
            pods[1].net, pods[1].base
        ),
        format!("neigh {} lladdr {mac6} PERMANENT", pods[1].base),
        format!("fdb {mac6} dst {} self permanent", host_ip6(1)),
    ]
    .into();
    wait_for_state(&c, 0, &want, "v6", || {
        kernel_state(&c, 0, "flannel-v6.1", "-6")
    });

    ping_all_pairs_v6(&c, &pods, "flannel-v6.1");
    // IPv4 still works alongside.
    ping_all_pairs(&c, "vxlan");
}

/// The node's subnet is taken over by another host while it runs; the daemon moves
/// to a new subnet in place: flannel.1 trades its /32, pods reach each other on the new
/// subnet, no host routes the old one through us.
#[test]
fn a_node_whose_subnet_is_taken_moves_flannel_1_in_place() {
    require_vxlan_cluster!();
    let mut c = Cluster::new(2, CONF);
    c.start_all(&[]);
    let mac = vtep_mac(&c, 0);
    c.check_move(0, 1, Some("flannel.1"));
    assert_eq!(vtep_mac(&c, 0), mac, "the device is moved, not recreated");
}
