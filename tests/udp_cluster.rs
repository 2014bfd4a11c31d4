//! The udp backend on real netns clusters: real TUN devices, real UDP sockets,
//! real etcd, our flanneld on every host. Forwarding on both I/O paths with and without
//! offloads, leases coming and going, the wire format against raw sockets. One worker on its
//! own is `udp_worker.rs`; restarts and the hand-over are `udp_restart.rs`.
//!
//! Tier: netns (root): a cluster in network namespaces with a real etcd and real daemons.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::cluster::*;
use common::kernel::ping_all_pairs;
use common::*;

const UDP_NET: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#;

fn tool(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tools")
        .join(name)
}

fn three_hosts_ping_all_pairs(io: &str) {
    let mut c = Cluster::new(3, UDP_NET);
    c.start_all(&[&format!("--udp-io={io}"), "--udp-workers=2"]);
    ping_all_pairs(&c, "udp");
    assert!(
        c.daemon(0).log().contains(io),
        "the chosen I/O path is logged:\n{}",
        c.daemon(0).log()
    );
}

#[test]
fn three_hosts_ping_all_pairs_on_io_uring() {
    require_udp_cluster!();
    three_hosts_ping_all_pairs("uring");
}

#[test]
fn three_hosts_ping_all_pairs_on_the_mmsg_fallback() {
    require_udp_cluster!();
    three_hosts_ping_all_pairs("mmsg");
}

#[test]
fn iperf3_tcp_through_the_overlay() {
    require_udp_cluster!();
    require!(Cap::Iperf3);
    let mut c = Cluster::new(2, UDP_NET);
    c.start_all(&[]);
    assert!(c.ping(0, &c.pod_ip(1), secs(10)));
    let gbps = c
        .iperf(0, 1, 3, 1)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.daemon(0).log()));
    eprintln!("iperf3 pod→pod over udp backend: {gbps:.3} Gbit/s");
    assert!(gbps > 0.0);
}

/// A counter from the daemon's "udp datapath stopped: …" log line (`"<n> <name>"`, or
/// `"<name> <n> pkts/…"`).
fn stopped_counter(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rfind(|l| l.contains("udp datapath stopped"))
        .unwrap_or_else(|| panic!("no final datapath stats in the log:\n{log}"));
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let number_before = words.windows(2).find(|w| w[1] == name).map(|w| w[0]);
    let number_after = words.windows(2).find(|w| w[0] == name).map(|w| w[1]);
    number_before
        .and_then(|n| n.parse().ok())
        .or_else(|| number_after.and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

/// Both I/O paths with TUN offloads on (the default: TCP super-packets cut into UDP GSO sends,
/// UDP GRO coalesced back into super-packets) and off, io_uring with multishot requests over
/// provided buffers (the default) and with one request per buffer, a shallow busy-polling
/// ring, and UDP GSO on and off on both paths: pods reach each other, TCP flows (checksummed end to end, so a wrong segment or
/// coalesced packet would stall them) get through both ways, and the final counters show
/// whether super-packets were really used.
#[test]
fn both_io_paths_forward_with_and_without_offloads() {
    require_udp_cluster!();
    require!(Cap::Iperf3);
    let modes: [&[&str]; 9] = [
        &["--udp-io=uring", "--udp-offload=true"],
        // GSO off on io_uring: super-packets leave segment by segment, one send each.
        &["--udp-io=uring", "--udp-offload=true", "--udp-gso=false"],
        &["--udp-io=uring", "--udp-offload=false"],
        &[
            "--udp-io=uring",
            "--udp-offload=true",
            "--udp-multishot=false",
        ],
        &[
            "--udp-io=uring",
            "--udp-offload=false",
            "--udp-multishot=false",
        ],
        // A shallow ring (4 buffers a side runs out under a bulk flow) and busy polling.
        &["--udp-io=uring", "--udp-batch=4", "--udp-busy-poll=200"],
        &["--udp-io=mmsg", "--udp-offload=true"],
        &["--udp-io=mmsg", "--udp-offload=false", "--udp-gso=true"],
        &["--udp-io=mmsg", "--udp-offload=false", "--udp-gso=false"],
    ];
    for flags in modes {
        let mut c = Cluster::new(2, UDP_NET);
        let mut args = flags.to_vec();
        args.push("--udp-workers=2");
        c.start_all(&args);
        if flags.contains(&"--udp-io=uring") {
            // Multishot unless switched off or the kernel lacks it (the workers say which).
            let multishot = !flags.contains(&"--udp-multishot=false")
                && flannel_rs::sys::uring::multishot_available();
            // Root may pin the slots' registered buffers whatever RLIMIT_MEMLOCK says.
            let want = format!(
                "multishot_reads={multishot} multishot_receives={multishot} fixed_buffers=true"
            );
            assert!(
                c.daemon(0).log().contains(&want),
                "{flags:?}: want {want}\n{}",
                c.daemon(0).log()
            );
        }
        ping_all_pairs(&c, "udp");
        let gbps = c
            .iperf(0, 1, 2, 2)
            .unwrap_or_else(|e| panic!("{flags:?}: {e}\n{}", c.daemon(0).log()));
        assert!(gbps > 0.0, "{flags:?}");
        let back = c
            .iperf(1, 0, 2, 1)
            .unwrap_or_else(|e| panic!("{flags:?}: {e}\n{}", c.daemon(1).log()));
        assert!(back > 0.0, "{flags:?}");
        eprintln!("{flags:?}: {gbps:.2} Gbit/s there, {back:.2} back");
        let logs = [c.stop(0), c.stop(1)];
        let offload = !flags.contains(&"--udp-offload=false");
        // With GSO, the datagrams of a super-packet cross the veth underlay as one GSO packet
        // and arrive as one UDP GRO receive, so coalesced writes are certain. Sent one by one,
        // they arrive one per receive, and merge only when a batch happens to hold several
        // of a flow's receives (the io_uring driver merges across its batch): not asserted.
        let gso = !flags.contains(&"--udp-gso=false");
        for (i, log) in logs.iter().enumerate() {
            let (tso, gro) = (
                stopped_counter(log, "tso_reads"),
                stopped_counter(log, "gro_writes"),
            );
            // Each host sent a bulk TCP flow and received one.
            assert_eq!(
                tso > 0,
                offload,
                "{flags:?} host {i}: {tso} super-packets read"
            );
            if gso || !offload {
                assert_eq!(
                    gro > 0,
                    offload,
                    "{flags:?} host {i}: {gro} coalesced writes"
                );
            } else {
                eprintln!("{flags:?} host {i}: {gro} coalesced writes without GSO");
            }
            assert!(stopped_counter(log, "ingress") > 0, "{flags:?} host {i}");
        }
    }
}

/// `--udp-batch=1` (upstream's one packet per syscall, the benchmark baseline) still
/// forwards both ways, on the mmsg path whatever `--udp-io` says.
#[test]
fn one_packet_per_syscall_mode_forwards() {
    require_udp_cluster!();
    require!(Cap::Iperf3);
    let mut c = Cluster::new(2, UDP_NET);
    c.start_all(&["--udp-batch=1", "--udp-workers=1"]);
    ping_all_pairs(&c, "udp");
    assert!(
        c.daemon(0).log().contains("mmsg"),
        "batch 1 runs on the mmsg path:\n{}",
        c.daemon(0).log()
    );
    let gbps = c
        .iperf(0, 1, 2, 1)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.daemon(0).log()));
    assert!(gbps > 0.0);
}

#[test]
fn a_joining_host_is_reachable_within_a_second() {
    require_udp_cluster!();
    let mut c = Cluster::new(3, UDP_NET);
    c.start_all(&[]);
    let d = c.add_host();
    c.start(d, &[]);
    c.wait_ready(d);
    let ip = c.pod_ip(d);
    // The first ping may race the watch; one second is the budget.
    assert!(
        c.ping(0, &ip, Duration::from_millis(1500)),
        "new host not reachable in time:\n{}",
        c.daemon(0).log()
    );
    assert!(c.ping(d, &c.pod_ip(1), secs(5)));
}

#[test]
fn a_removed_lease_gets_icmp_net_unreachable() {
    require_udp_cluster!();
    let mut c = Cluster::new(3, UDP_NET);
    c.start_all(&[]);
    let target = c.pod_ip(2);
    assert!(c.ping(0, &target, secs(10)));
    // Host 2 dies (so it cannot re-acquire) and its lease is deleted.
    c.kill(2);
    c.etcd().must(&["del", &c.lease_key(2)]);
    let unreachable = wait_until(secs(5), || {
        let out = run(
            Some(&c.hosts[0].pod_netns),
            "ping",
            &["-c", "1", "-W", "1", "-n", &target],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("Destination Net Unreachable").then_some(text)
    });
    assert!(
        unreachable.is_some(),
        "no ICMP net unreachable; log:\n{}",
        c.daemon(0).log()
    );
    assert!(c.ping(0, &c.pod_ip(1), secs(5)), "other hosts unaffected");
}

/// A stray `etcdctl put` over a running node's own key (another PublicIP, no etcd lease,
/// the same key incarnation) is a write no flanneld makes: the node writes its value back,
/// keeps its subnet and subnet.env; its peer does not follow the stray value meanwhile, so
/// not one ping is lost.
#[test]
fn a_stray_write_over_our_key_is_restored_without_loss() {
    require_udp_cluster!();
    let mut c = Cluster::new(2, UDP_NET);
    c.start_all(&[]);
    let peer = c.pod_ip(1);
    assert!(c.ping(0, &peer, secs(10)));
    let env_before = std::fs::read_to_string(&c.daemon(1).subnet_file).unwrap();
    let key = c.lease_key(1);
    let get = |c: &Cluster| {
        c.etcd()
            .ctl(&["get", "--print-value-only", &key])
            .unwrap()
            .trim()
            .to_owned()
    };
    let ours = get(&c);

    // 300 pings 10 ms apart from pod 0 to pod 1 while the stray write lands.
    let pinger = in_netns(Some(&c.hosts[0].pod_netns), "ping")
        .args(["-n", "-q", "-c", "300", "-i", "0.01", "-W", "1", &peer])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stray = r#"{"PublicIP":"192.0.2.99","PublicIPv6":null}"#;
    c.etcd().ctl(&["put", &key, stray]).unwrap();
    let restored = wait_until(secs(10), || (get(&c) == ours).then_some(()));
    let summary = String::from_utf8_lossy(&pinger.wait_with_output().unwrap().stdout).into_owned();

    let log = c.daemon(1).log();
    assert!(restored.is_some(), "our value is back in etcd:\n{log}");
    assert!(
        log.contains("overwritten in place") && log.contains("192.0.2.99"),
        "the stray write is logged with the writer's value:\n{log}"
    );
    // The node never lets go of its subnet, and its peers do not follow the stray value
    // (no etcd lease, another public IP: no flanneld writes that): not one ping lost.
    assert!(
        summary.contains("300 packets transmitted, 300 received"),
        "no ping lost: {summary}\n{log}\npeer:\n{}",
        c.daemon(0).log()
    );
    assert!(c.daemon(0).log().contains("not following a stray write"));
    // Still attached to an etcd lease (a TTL), and the node's own view unchanged.
    let json = c.etcd().ctl(&["get", &key, "-w", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_ne!(v["kvs"][0]["lease"].as_i64().unwrap_or(0), 0, "{json}");
    assert_eq!(
        std::fs::read_to_string(&c.daemon(1).subnet_file).unwrap(),
        env_before
    );
    assert!(c.ping(1, &c.pod_ip(0), secs(5)));
}

/// `--ip-blackhole-route`: a blackhole route for the node's own subnet once the lease is
/// held; it moves with the subnet when the subnet is genuinely lost, and stays after a clean
/// stop, as upstream's does.
#[test]
fn blackhole_route_follows_the_subnet_and_outlives_a_clean_stop() {
    require_udp_cluster!();
    let mut c = Cluster::new(1, UDP_NET);
    c.start(0, &["--ip-blackhole-route"]);
    let first = c.wait_lease(0);
    let netns = c.hosts[0].netns.clone();
    let blackholes = || {
        sh(
            Some(&netns),
            "ip",
            &["-4", "route", "show", "type", "blackhole"],
        )
    };
    let net = |s: &str| s.parse::<ipnet::Ipv4Net>().unwrap().trunc().to_string();
    let routes = wait_until(secs(5), || {
        let r = blackholes();
        r.contains(&net(&first)).then_some(r)
    });
    assert!(routes.is_some(), "{}\n{}", blackholes(), c.daemon(0).log());
    // An unused address of our subnet is dropped here, not sent into the overlay.
    let unused = net(&first).replace(".0/24", ".200");
    // (`ip route get` to a blackholed address is refused with EINVAL, the kernel's answer
    // for a blackhole route; without the route it would name flannel0.)
    let via = run(Some(&netns), "ip", &["route", "get", &unused]);
    let said = String::from_utf8_lossy(&via.stderr);
    assert!(
        !via.status.success() && said.contains("Invalid argument"),
        "{said}"
    );

    // Genuinely lost (deleted, then created by another host while we were paused): the
    // route moves to the new subnet.
    let moved = c.take_subnet_away(0);
    let after = wait_until(secs(5), || {
        let r = blackholes();
        (r.contains(&net(&moved)) && !r.contains(&net(&first))).then_some(r)
    });
    assert!(after.is_some(), "{}\n{}", blackholes(), c.daemon(0).log());

    // A clean stop leaves it (upstream never removes it).
    c.stop(0);
    assert!(blackholes().contains(&net(&moved)), "{}", blackholes());
}

/// Starts `recv_udp.py` in `netns` and waits until it listens.
fn listen(
    netns: &str,
    ip: &str,
    port: u16,
    timeout_secs: u32,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let recv = tool("recv_udp.py").display().to_string();
    let (port, timeout) = (port.to_string(), timeout_secs.to_string());
    spawn_listening(netns, &[&recv, ip, &port, &timeout])
}

/// Runs the Python tool `args` (script first) in `netns` and waits for its `listening`.
fn spawn_listening(netns: &str, args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = in_netns(Some(netns), "python3")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    (child, out)
}

/// Waits for `recv_udp.py`'s verdict: the datagram bytes, or `None`.
fn received(
    mut child: Child,
    mut out: BufReader<std::process::ChildStdout>,
) -> Option<(String, Vec<u8>)> {
    let mut line = String::new();
    out.read_line(&mut line).ok()?;
    let status = child.wait().ok()?;
    if !status.success() {
        return None;
    }
    let (from, hex) = line.trim().strip_prefix("from ")?.split_once(" hex:")?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    Some((from.to_owned(), bytes))
}

#[test]
fn wire_format_inbound_raw_ipv4_in_udp_from_a_peer_reaches_the_pod() {
    require_udp_cluster!();
    let mut c = Cluster::new(2, UDP_NET);
    c.start_all(&[]);
    assert!(c.ping(1, &c.pod_ip(0), secs(10)));
    let (pod0, pod1) = (c.pod_ip(0), c.pod_ip(1));
    let tool_path = tool("send_raw.py").display().to_string();
    // A raw IPv4-in-UDP datagram from `netns` to host 0's port 8285, inner packet
    // `inner_src` → pod 0:9999 carrying `payload`.
    let send_raw = |netns: &str, inner_src: &str, payload: &str| {
        let args = [
            &tool_path,
            &host_ip(0),
            "8285",
            inner_src,
            &pod0,
            "9999",
            payload,
        ];
        sh(Some(netns), "python3", &args);
    };

    // From a non-peer (the fabric itself, 192.0.2.254): dropped.
    let (child, out) = listen(&c.hosts[0].pod_netns, &pod0, 9999, 2);
    send_raw(&c.fabric, &pod1, "from-stranger");
    assert!(
        received(child, out).is_none(),
        "a datagram from a non-peer must be dropped"
    );

    // From host 1 (a peer), inner source inside host 1's subnet: delivered.
    let (child, out) = listen(&c.hosts[0].pod_netns, &pod0, 9999, 5);
    send_raw(&c.hosts[1].netns, &pod1, "hello-pod");
    let (from, data) = received(child, out).expect("raw IPv4-in-UDP from a peer reaches the pod");
    assert_eq!(data, b"hello-pod");
    assert!(from.starts_with(&format!("{pod1}:")), "{from}");

    // Spoofed inner source (outside host 1's subnet) from host 1: dropped.
    let (child, out) = listen(&c.hosts[0].pod_netns, &pod0, 9999, 2);
    send_raw(&c.hosts[1].netns, "10.5.250.9", "spoofed");
    assert!(
        received(child, out).is_none(),
        "an inner source outside the peer's subnet must be dropped"
    );

    // Zero-length datagrams are dropped with a reason too: from a non-peer (unknown peer)
    // and from a peer (not an IPv4 packet: bad header).
    let send_udp = tool("send_udp.py").display().to_string();
    sh(
        Some(&c.fabric),
        "python3",
        &[&send_udp, &host_ip(0), "8285", ""],
    );
    sh(
        Some(&c.hosts[1].netns),
        "python3",
        &[&send_udp, &host_ip(0), "8285", ""],
    );

    // Every drop is counted (the daemon logs its counters at debug level).
    let log = wait_until(secs(15), || {
        let l = c.daemon(0).log();
        (counter(&l, "unknown_peer") >= 2 && counter(&l, "bad_header") >= 1).then_some(l)
    });
    let log = log.unwrap_or_else(|| c.daemon(0).log());
    assert!(
        counter(&log, "unknown_peer") >= 2
            && counter(&log, "spoofed") >= 1
            && counter(&log, "bad_header") >= 1,
        "drop counters in:\n{log}"
    );
}

/// The largest `name=<n>` value in the log.
fn counter(log: &str, name: &str) -> u64 {
    let pat = format!("{name}=");
    log.match_indices(&pat)
        .filter_map(|(i, _)| {
            log[i + pat.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn wire_format_outbound_is_the_raw_inner_packet() {
    require_udp_cluster!();
    let mut c = Cluster::new(1, UDP_NET);
    // One worker: upstream's single socket, so every datagram leaves from port 8285 (with more
    // workers, the others send from their own ports to spread load over the peer's queues).
    c.start_all(&["--udp-workers=1"]);
    // A fake peer: a plain UDP socket on the fabric, with a lease we write by hand.
    c.etcd().must(&[
        "put",
        "/coreos.com/network/subnets/10.5.250.0-24",
        r#"{"PublicIP":"192.0.2.254","PublicIPv6":null}"#,
    ]);
    let (child, out) = listen(&c.fabric, FABRIC_IP, 8285, 10);
    let pod0 = c.pod_ip(0);
    let send = tool("send_udp.py").display().to_string();
    // Retry until the route exists (the watch delivers the lease within a batch).
    let sent = wait_until(secs(5), || {
        sh(
            Some(&c.hosts[0].pod_netns),
            "python3",
            &[&send, "10.5.250.7", "7777", "to-the-wire"],
        );
        std::thread::sleep(Duration::from_millis(200));
        Some(())
    });
    assert!(sent.is_some());
    let (from, pkt) = received(child, out).expect("our daemon sent a datagram to the peer");
    assert_eq!(
        from,
        format!("{}:8285", host_ip(0)),
        "sent from the interface address and port 8285"
    );
    assert_eq!(pkt[0], 0x45, "payload starts with a plain IPv4 header");
    assert_eq!(
        &pkt[12..16],
        &pod0.parse::<std::net::Ipv4Addr>().unwrap().octets(),
        "inner source is the pod"
    );
    assert_eq!(&pkt[16..20], &[10, 5, 250, 7], "inner destination");
    assert_eq!(pkt[9], 17, "inner UDP");
    assert_eq!(
        pkt[8], 62,
        "TTL 64 − 1 (host forwarding) − 1 (flannel egress, as upstream)"
    );
    assert_eq!(&pkt[28..], b"to-the-wire");
    let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    assert_eq!(total, pkt.len(), "nothing before or after the inner packet");
}

/// The node's subnet is taken over by another host while it runs; the daemon moves
/// to a new subnet in place: flannel0 trades its /32, the datapath routes by the new table
/// (the workers keep running), pods reach each other on the new subnet.
#[test]
fn a_node_whose_subnet_is_taken_moves_flannel0_in_place() {
    require_udp_cluster!();
    let mut c = Cluster::new(2, UDP_NET);
    c.start_all(&[]);
    c.check_move(0, 1, Some("flannel0"));
    assert!(
        !c.daemon(0).log().contains("udp backend stopped"),
        "{}",
        c.daemon(0).log()
    );
}

/// UDP flows cross as super-packets both ways where the kernel has UDP segmentation offload
/// on TUN devices: a pod sending with `UDP_SEGMENT` hands the sending host's TUN UDP
/// super-packets, which leave cut into plain datagrams (one inner packet each, as upstream
/// peers expect), and the receiving host writes each flow's datagrams to its TUN merged again.
/// Every datagram arrives whole and in order, and the counters show both offloads at work.
#[test]
fn udp_flows_cross_as_super_packets_and_arrive_whole() {
    require_udp_cluster!(Cap::TunUso);
    let mut c = Cluster::new(2, UDP_NET);
    c.start_all(&["--udp-workers=1"]);
    ping_all_pairs(&c, "udp");
    let (count, size, per_send) = (600, 1000, 20);
    let pod1 = c.pod_ip(1);
    let burst = tool("udp_burst.py").display().to_string();
    let n = count.to_string();
    let recv = [burst.as_str(), "recv", &pod1, "9300", &n, "5"];
    let (mut rx, mut out) = spawn_listening(&c.hosts[1].pod_netns, &recv);
    sh(
        Some(&c.hosts[0].pod_netns),
        "python3",
        &[
            &burst,
            "send",
            &pod1,
            "9300",
            &count.to_string(),
            &size.to_string(),
            &per_send.to_string(),
        ],
    );
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(rx.wait().unwrap().success());
    assert_eq!(
        line.trim(),
        format!("received {count} intact {count} in_order True"),
        "{}",
        c.daemon(1).log()
    );
    let logs = [c.stop(0), c.stop(1)];
    for log in &logs {
        eprintln!(
            "{}",
            log.lines()
                .rfind(|l| l.contains("udp datapath stopped"))
                .unwrap_or_default()
        );
    }
    // Host 0 read the pod's bursts as UDP super-packets; host 1 wrote merged ones.
    assert!(stopped_counter(&logs[0], "tso_reads") > 0, "{}", logs[0]);
    assert!(stopped_counter(&logs[1], "gro_writes") > 0, "{}", logs[1]);
    // No TUN write was refused (a drop would show as `tun_error=<n>`).
    assert_eq!(counter(&logs[1], "tun_error"), 0, "{}", logs[1]);
}
