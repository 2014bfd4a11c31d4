//! `/metrics` and `/status` of real daemons on a real netns cluster with real etcd. The page
//! is parsed by Python's `prometheus_client` text-format parser (what Prometheus' own Python
//! client ships), not by anything of ours.
//!
//! Tier: netns (root): a cluster in network namespaces with a real etcd and real daemons.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cluster::*;
use common::*;

const UDP_NET: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#;
const VXLAN_NET: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn tool(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tools")
        .join(name)
        .display()
        .to_string()
}

/// One parsed sample: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// GETs `path` from host `i`'s health server, from inside its namespace; with `parse`, the
/// body is `/metrics` parsed by `prometheus_client` (see tests/tools/scrape.py).
fn get(c: &Cluster, i: usize, path: &str, parse: bool) -> Vec<u8> {
    let py = venv_python().unwrap();
    let url = format!("http://127.0.0.1:{NETNS_HEALTHZ_PORT}{path}");
    let mut args = vec![tool("scrape.py"), url];
    if parse {
        args.push("metrics".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(Some(&c.hosts[i].netns), py.to_str().unwrap(), &args);
    assert!(
        out.status.success(),
        "GET {path} on host {i} failed (or the parser rejected the page): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Scrapes host `i`'s `/metrics` and parses it.
fn scrape(c: &Cluster, i: usize) -> Vec<Sample> {
    let out = get(c, i, "/metrics", true);
    let rows: Vec<(String, BTreeMap<String, String>, f64, String)> =
        serde_json::from_slice(&out).expect("scrape.py prints JSON");
    rows.into_iter()
        .map(|(name, labels, value, _)| Sample {
            name,
            labels,
            value,
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn must(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in the scrape"))
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Scrapes host `i` until `ok` holds for a scrape, or fails after `timeout`.
fn scrape_until(
    c: &Cluster,
    i: usize,
    timeout: Duration,
    what: &str,
    mut ok: impl FnMut(&[Sample]) -> bool,
) -> Vec<Sample> {
    wait_until(timeout, || {
        let s = scrape(c, i);
        ok(&s).then_some(s)
    })
    .unwrap_or_else(|| panic!("host {i}: {what}; log:\n{}", c.daemon(i).log()))
}

#[test]
fn metrics_follow_traffic_drops_peers_and_etcd() {
    require_udp_cluster!(Cap::PromParser);
    let mut c = Cluster::new(3, UDP_NET);
    c.start(0, &["--metrics-per-peer", "--log-format=json"]);
    c.start(1, &[]);
    c.start(2, &[]);
    for i in 0..3 {
        c.wait_ready(i);
    }

    // The node itself: build, lease (expiring in the future), ready, its workers.
    let s = scrape_until(&c, 0, secs(10), "sees both peers", |s| {
        value(s, "flannel_peers", &[]) == Some(2.0)
    });
    let subnet0 = c.hosts[0].subnet.clone().unwrap();
    let net0 = subnet0.replace(".1/", ".0/");
    assert_eq!(must(&s, "flannel_build_info", &[("backend", "udp")]), 1.0);
    assert_eq!(
        must(
            &s,
            "flannel_lease_info",
            &[("subnet", &net0), ("public_ip", &host_ip(0))]
        ),
        1.0
    );
    assert!(must(&s, "flannel_lease_expiry_timestamp_seconds", &[]) > now_unix());
    assert_eq!(must(&s, "flannel_ready", &[]), 1.0);
    assert!(value(&s, "flannel_udp_worker_info", &[("worker", "0")]).is_some());
    assert_eq!(must(&s, "flannel_watch_resyncs_total", &[]), 1.0);
    assert_eq!(must(&s, "flannel_etcd_up", &[]), 1.0);

    // Pods ping each other: the counters move, per peer too (host 0 has the switch on).
    let tx0 = must(&s, "flannel_udp_tx_packets_total", &[]);
    let rx0 = must(&s, "flannel_udp_rx_packets_total", &[]);
    let pod1 = c.pod_ip(1);
    for _ in 0..5 {
        assert!(c.ping_once(0, &pod1, secs(5)), "pod 0 → pod 1");
    }
    let s = scrape(&c, 0);
    assert!(must(&s, "flannel_udp_tx_packets_total", &[]) >= tx0 + 5.0);
    assert!(must(&s, "flannel_udp_rx_packets_total", &[]) >= rx0 + 5.0);
    assert!(must(&s, "flannel_udp_tx_bytes_total", &[]) > 0.0);
    let peer1 = [("peer", host_ip(1))];
    let peer1: Vec<(&str, &str)> = peer1.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(must(&s, "flannel_udp_peer_tx_packets_total", &peer1) >= 5.0);
    assert!(must(&s, "flannel_udp_peer_rx_packets_total", &peer1) >= 5.0);
    assert!(must(&s, "flannel_udp_batch_size_count", &[("kind", "wakeup")]) > 0.0);
    if let Some(path) = std::env::var_os("FLANNEL_TEST_SAVE_SCRAPE") {
        // For the README's example scrape: host 0's page as served.
        std::fs::write(path, get(&c, 0, "/metrics", false)).unwrap();
    }
    let s1 = scrape(&c, 1);
    assert!(
        value(&s1, "flannel_udp_peer_tx_packets_total", &[]).is_none(),
        "per-peer series only behind --metrics-per-peer"
    );

    // A datagram from an address that is no peer's: counted as unknown_peer.
    let unknown = [("reason", "unknown_peer")];
    let before = must(&s, "flannel_udp_dropped_packets_total", &unknown);
    let sent = run(
        Some(&c.fabric),
        "python3",
        &[&tool("send_udp.py"), &host_ip(0), "8285", "not from a peer"],
    );
    assert!(sent.status.success());
    scrape_until(&c, 0, secs(5), "counts the unknown peer's datagram", |s| {
        value(s, "flannel_udp_dropped_packets_total", &unknown) == Some(before + 1.0)
    });

    // /status: the same lease and peers, as JSON.
    let status: serde_json::Value =
        serde_json::from_slice(&get(&c, 0, "/status", false)).expect("/status JSON");
    assert_eq!(status["lease"]["subnet"], net0.as_str());
    assert_eq!(status["peers"].as_array().map(Vec::len), Some(2));
    assert_eq!(status["datapath"]["io"], "io_uring");
    assert!(status["datapath"]["drops"]["unknown_peer"].as_u64() >= Some(1));

    // A peer's lease goes away (its daemon stopped first, so nobody takes it back).
    c.kill(2);
    let key2 = c.lease_key(2);
    c.etcd().must(&["del", &key2]);
    let s = scrape_until(&c, 0, secs(10), "forgets the deleted peer", |s| {
        value(s, "flannel_peers", &[]) == Some(1.0)
    });
    assert!(must(&s, "flannel_watch_events_total", &[("type", "removed")]) >= 1.0);

    // etcd stops: requests fail and are counted, the time since contact grows; the datapath
    // keeps forwarding meanwhile.
    let errors = |s: &[Sample]| {
        s.iter()
            .filter(|x| x.name == "flannel_etcd_request_errors_total")
            .map(|x| x.value)
            .sum::<f64>()
    };
    let errors_before = errors(&s);
    c.etcd.as_mut().unwrap().stop();
    let down = scrape_until(&c, 0, secs(30), "sees etcd down", |s| {
        value(s, "flannel_etcd_up", &[]) == Some(0.0) && errors(s) > errors_before
    });
    let since = must(&down, "flannel_etcd_seconds_since_contact", &[]);
    assert!(
        c.ping_once(0, &pod1, secs(5)),
        "forwarding goes on without etcd"
    );
    std::thread::sleep(secs(2));
    let later = scrape(&c, 0);
    assert!(must(&later, "flannel_etcd_seconds_since_contact", &[]) >= since + 1.5);
    c.etcd.as_mut().unwrap().restart();
    scrape_until(&c, 0, secs(30), "sees etcd back", |s| {
        value(s, "flannel_etcd_up", &[]) == Some(1.0)
    });

    // Host 0 logs JSON: every line an object; the outage once when it began and once when
    // it ended, with its length.
    let log = c.daemon(0).log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let said = |text: &str| {
        lines
            .iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(text)))
            .count()
    };
    assert_eq!(said("etcd is unreachable"), 1, "log:\n{log}");
    assert_eq!(said("etcd is reachable again"), 1, "log:\n{log}");
    assert!(lines
        .iter()
        .any(|l| l["outage_seconds"].as_f64().is_some_and(|s| s > 1.0)));
    assert!(
        lines.iter().any(|l| l["subnet"] == net0.as_str()),
        "lease lines name the subnet as a field"
    );
}

#[test]
fn vxlan_reconcile_repairs_are_counted() {
    require_vxlan_cluster!(Cap::PromParser);
    let mut c = Cluster::new(2, VXLAN_NET);
    c.start_all(&[]);
    let s = scrape_until(&c, 0, secs(30), "has run a reconcile pass", |s| {
        value(s, "flannel_reconcile_runs_total", &[]).is_some_and(|n| n >= 1.0)
    });
    let route = [("kind", "route")];
    let before = must(&s, "flannel_reconcile_repairs_total", &route);
    assert!(value(&s, "flannel_udp_tx_packets_total", &[]).is_none());

    // Delete the route to host 1's subnet behind the daemon's back: the next pass puts it
    // back (every 10 s) and counts the repair.
    let subnet1 = c.hosts[1].subnet.clone().unwrap().replace(".1/", ".0/");
    sh(Some(&c.hosts[0].netns), "ip", &["route", "del", &subnet1]);
    scrape_until(&c, 0, secs(30), "repairs the deleted route", |s| {
        value(s, "flannel_reconcile_repairs_total", &route).is_some_and(|n| n > before)
    });
    assert!(c.ping(0, &c.pod_ip(1), secs(10)), "the route is back");
}
