//! One udp node's datapath on a real kernel, without a daemon: a real `flannel0` TUN device, real workers on
//! both I/O paths, a fake peer made of plain UDP sockets. Each test runs in its own fresh,
//! anonymous network namespace (a thread that `unshare`s), so every device, address and socket
//! it makes vanishes with that thread, pass or fail, and no packet leaves it.
//!
//! Layout inside the namespace: `lo` carries the "underlay" (we are 127.0.0.1, the peer
//! 127.0.0.2, a stranger 127.0.0.3); the overlay is 10.5.0.0/16, our lease 10.5.1.0/24, the
//! peer's 10.5.2.0/24.
//!
//! Tier: netns (root): one anonymous namespace per test; no etcd, no daemon. These tests
//! drive the library's udp backend and datapath types directly.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::*;
use flannel_rs::backend::udp::{IoChoice, Udp, UdpOptions};
use flannel_rs::backend::{Backend, BackendContext, ExternalInterface};
use flannel_rs::config::NetworkConfig;
use flannel_rs::datapath::counters::{CountersSnapshot, DropReason};
use flannel_rs::datapath::wire::checksum::checksum;
use flannel_rs::datapath::wire::ipv4::{build_ipv4, Ipv4View, PROTO_ICMP, PROTO_UDP};
use flannel_rs::exec::netlink::Netlink;
use flannel_rs::subnet::lease::{Lease, LeaseAttrs, LeaseEvent, SubnetKey};
use socket2::{Domain, Protocol, Socket, Type};

const US: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const TUN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 5, 1, 0);
const PEER_POD: Ipv4Addr = Ipv4Addr::new(10, 5, 2, 7);
const TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `f` on a new thread inside a brand-new network namespace with `lo` up.
fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            flannel_rs::sys::netns::unshare_net().expect("unshare(CLONE_NEWNET)");
            sh(&["ip", "link", "set", "lo", "up"]);
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Runs a command in the calling thread's namespace (children inherit it) and insists on
/// success.
fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sysctl(path: &str, value: &str) {
    std::fs::write(format!("/proc/sys/net/ipv4/{path}"), value)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
}

fn lease(subnet: &str, public_ip: Ipv4Addr) -> Lease {
    Lease {
        key: SubnetKey {
            ipv4: subnet.parse().unwrap(),
            ipv6: None,
        },
        attrs: LeaseAttrs::with_public_ip(public_ip),
        etcd_lease: 1,
        mod_revision: 1,
    }
}

fn context() -> BackendContext {
    BackendContext {
        config: NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#)
            .unwrap(),
        iface: ExternalInterface {
            name: "lo".into(),
            index: 1,
            mtu: 1500,
            iface_addr: US,
            iface_addr_v6: None,
            public_ip: US,
            public_ipv6: None,
        },
    }
}

fn udp_socket(addr: Ipv4Addr, port: u16) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddrV4::new(addr, port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// A UDP-in-IPv4 packet as a peer's pod would send it (UDP checksum 0: "none", legal in IPv4).
fn inner_udp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&5555u16.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    build_ipv4(src, dst, PROTO_UDP, 64, &udp)
}

fn wait_stats(udp: &Udp, what: &str, pred: impl Fn(&CountersSnapshot) -> bool) -> CountersSnapshot {
    wait_until(TIMEOUT, || Some(udp.stats()).filter(|s| pred(s)))
        .unwrap_or_else(|| panic!("timed out waiting for {what}; stats: {}", udp.stats()))
}

/// Waits for an ICMP network-unreachable on `raw` about a packet to `dst`; checks it is built
/// like upstream's (TTL 8, checksums valid, quoting the offender) but from the network address
/// (see `backend::udp`: the TUN address would be dropped by the kernel as a martian).
fn expect_net_unreachable(raw: &mut Socket, dst: Ipv4Addr) {
    let mut buf = [0u8; 2048];
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        let n = match raw.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => panic!("raw socket: {e}"),
        };
        let ip = Ipv4View::new_verified(&buf[..n]).expect("ICMP reply has a valid IP header");
        let icmp = &ip.packet()[ip.header_len()..];
        if ip.protocol() != PROTO_ICMP || icmp.first() != Some(&3) {
            continue;
        }
        assert_eq!(icmp[1], 0, "code 0: network unreachable");
        assert_eq!(checksum(icmp), 0, "ICMP checksum verifies");
        assert_eq!(
            (ip.src(), ip.dst(), ip.ttl()),
            (Ipv4Addr::new(10, 5, 0, 0), TUN_ADDR, 8)
        );
        // The quote is the offender's header + 8 bytes: shorter than its Total Length, so
        // read the destination field directly.
        let quoted = &icmp[8..];
        assert!(
            quoted.len() >= 28,
            "quotes the offender's header and 8 payload bytes"
        );
        if quoted[16..20] == dst.octets() {
            return;
        }
    }
    panic!("no ICMP network unreachable about {dst} within {TIMEOUT:?}");
}

fn datapath_end_to_end(io: IoChoice) {
    in_fresh_netns(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let opts = UdpOptions {
            workers: Some(2),
            io,
            ..UdpOptions::default()
        };
        let netlink = rt.block_on(async { Netlink::connect() }).unwrap();
        let mut udp = Udp::new(&context(), opts).unwrap().with_netlink(netlink);
        assert_eq!(udp.mtu(), 1472);
        rt.block_on(udp.prepare()).unwrap();
        let own = lease("10.5.1.0/24", US);
        rt.block_on(udp.start(&own)).expect("udp backend starts");
        assert_eq!(
            udp.io_kind()
                .map(|k| k == flannel_rs::datapath::IoKind::Mmsg),
            Some(io == IoChoice::Mmsg)
        );
        rt.block_on(udp.apply(&[
            LeaseEvent::Added(own.clone()),
            LeaseEvent::Added(lease("10.5.2.0/24", PEER)),
        ]));

        // The device looks like upstream's: /32 address, MTU, whole-network route.
        let addr = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", "flannel0"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&addr.stdout).contains("10.5.1.0/32"),
            "{addr:?}"
        );
        let link = Command::new("ip")
            .args(["-o", "link", "show", "flannel0"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&link.stdout).contains("mtu 1472"),
            "{link:?}"
        );
        assert!(
            String::from_utf8_lossy(&link.stdout).contains("qlen 4096"),
            "{link:?}"
        );
        let route = Command::new("ip")
            .args(["-4", "route", "show", "10.5.0.0/16"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&route.stdout).contains("dev flannel0"),
            "{route:?}"
        );
        // This test sends from the host itself (from the TUN address), so ICMP replies come
        // back to a local address: relax reverse-path filtering for that.
        sysctl("conf/all/rp_filter", "0");
        sysctl("conf/flannel0/rp_filter", "0");

        let peer = udp_socket(PEER, 8285);
        let app = udp_socket(Ipv4Addr::UNSPECIFIED, 0);

        // Egress: what we send is the bare inner packet, TTL decremented once.
        app.send_to(b"ping-egress", SocketAddrV4::new(PEER_POD, 9999))
            .unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = peer
            .recv_from(&mut buf)
            .expect("peer receives the encapsulated packet");
        assert_eq!(from.ip(), std::net::IpAddr::V4(US));
        let inner = Ipv4View::new_verified(&buf[..n]).expect("payload is a valid IPv4 packet");
        assert_eq!(
            (inner.src(), inner.dst(), inner.protocol(), inner.ttl()),
            (TUN_ADDR, PEER_POD, PROTO_UDP, 63)
        );
        assert_eq!(
            inner.total_len(),
            n,
            "nothing but the inner packet in the datagram"
        );
        assert!(buf[..n].ends_with(b"ping-egress"));
        wait_stats(&udp, "egress counted", |s| s.egress_packets >= 1);

        // Ingress: a raw IPv4 packet in a plain datagram from the peer reaches our socket.
        let pod = udp_socket(TUN_ADDR, 7777);
        peer.send_to(
            &inner_udp(PEER_POD, TUN_ADDR, 7777, b"hello-ingress"),
            SocketAddrV4::new(US, 8285),
        )
        .unwrap();
        let (n, from) = pod
            .recv_from(&mut buf)
            .expect("inbound packet delivered through flannel0");
        assert_eq!(&buf[..n], b"hello-ingress");
        assert_eq!(
            from,
            std::net::SocketAddr::V4(SocketAddrV4::new(PEER_POD, 5555))
        );
        wait_stats(&udp, "ingress counted", |s| s.ingress_packets >= 1);

        // From a non-peer address: dropped and counted.
        let stranger = udp_socket(STRANGER, 8285);
        stranger
            .send_to(
                &inner_udp(PEER_POD, TUN_ADDR, 7777, b"stranger"),
                SocketAddrV4::new(US, 8285),
            )
            .unwrap();
        wait_stats(&udp, "unknown peer drop", |s| {
            s.drops(DropReason::UnknownPeer) >= 1
        });

        // From the peer, but with an inner source outside its subnet: dropped in strict mode.
        let spoofed = Ipv4Addr::new(10, 5, 3, 9);
        peer.send_to(
            &inner_udp(spoofed, TUN_ADDR, 7777, b"spoofed"),
            SocketAddrV4::new(US, 8285),
        )
        .unwrap();
        wait_stats(&udp, "spoofed drop", |s| s.drops(DropReason::Spoofed) >= 1);
        pod.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(
            pod.recv_from(&mut buf).is_err(),
            "neither the stranger's nor the spoofed packet arrived"
        );

        // No route: ICMP network unreachable comes back through flannel0.
        let mut raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
        raw.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let nowhere = Ipv4Addr::new(10, 5, 77, 1);
        app.send_to(b"nowhere", SocketAddrV4::new(nowhere, 9))
            .unwrap();
        expect_net_unreachable(&mut raw, nowhere);
        wait_stats(&udp, "no-route drop and icmp", |s| {
            s.drops(DropReason::NoRoute) >= 1 && s.icmp_sent >= 1
        });

        // Lease removed → the route is gone at once, and senders hear ICMP unreachable.
        rt.block_on(udp.apply(&[LeaseEvent::Removed(lease("10.5.2.0/24", PEER))]));
        app.send_to(b"after-removal", SocketAddrV4::new(PEER_POD, 9999))
            .unwrap();
        expect_net_unreachable(&mut raw, PEER_POD);
        peer.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(
            peer.recv_from(&mut buf).is_err(),
            "nothing sent to a removed peer"
        );

        // Lease back → reachable again.
        rt.block_on(udp.apply(&[LeaseEvent::Added(lease("10.5.2.0/24", PEER))]));
        peer.set_read_timeout(Some(TIMEOUT)).unwrap();
        app.send_to(b"re-added", SocketAddrV4::new(PEER_POD, 9999))
            .unwrap();
        let (n, _) = peer
            .recv_from(&mut buf)
            .expect("reachable again once the lease is back");
        assert!(buf[..n].ends_with(b"re-added"));

        assert_eq!(udp.running_workers(), 2);
        eprintln!("udp datapath ({io:?}): {}", udp.stats());

        // Stopping the backend removes flannel0 (its queues were the only holders).
        udp.stop();
        let gone = Command::new("ip")
            .args(["link", "show", "flannel0"])
            .output()
            .unwrap();
        assert!(!gone.status.success(), "flannel0 still exists after stop");
    });
}

#[test]
fn uring_datapath_forwards_filters_and_answers_unroutable() {
    require!(Cap::Root, Cap::Netns, Cap::Tun, Cap::IoUring);
    datapath_end_to_end(IoChoice::Uring);
}

#[test]
fn mmsg_datapath_forwards_filters_and_answers_unroutable() {
    require!(Cap::Root, Cap::Netns, Cap::Tun);
    datapath_end_to_end(IoChoice::Mmsg);
}

/// An io_uring worker whose first GSO send fails with EIO (as on a device that cannot
/// segment) turns GSO off, resends that run datagram by datagram, and loses nothing.
#[test]
fn uring_gso_failure_falls_back_to_single_datagrams() {
    use flannel_rs::datapath::counters::WorkerCounters;
    use flannel_rs::datapath::io::uring::UringIo;
    use flannel_rs::datapath::io::WorkerFds;
    use flannel_rs::datapath::pipeline::{Flow, IcmpResponder, PacketIo, Pipeline};
    use flannel_rs::datapath::route::{RouteSet, Routes};
    use flannel_rs::sys::eventfd::EventFd;
    use flannel_rs::sys::uring::UringConfig;
    use std::sync::Arc;

    require!(Cap::Root, Cap::Netns, Cap::Tun, Cap::IoUring);
    in_fresh_netns(|| {
        let tun = flannel_rs::sys::tun::open_queues("flgso0", 1, false)
            .unwrap()
            .remove(0);
        sh(&["ip", "addr", "add", "10.5.1.0/32", "dev", "flgso0"]);
        sh(&["ip", "link", "set", "flgso0", "up"]);
        sh(&["ip", "route", "add", "10.5.0.0/16", "dev", "flgso0"]);
        let rx = flannel_rs::sys::sockopt::bind_udp(SocketAddrV4::new(US, 8285), true).unwrap();
        let stop = Arc::new(EventFd::new().unwrap());
        let fds = WorkerFds {
            tun,
            rx,
            tx: None,
            stop: stop.clone(),
        };
        let stats = Arc::new(WorkerCounters::default());
        let mut io = UringIo::new(fds, UringConfig::default(), false, stats.clone()).unwrap();
        io.fail_next_gso_send();
        let mut routes = RouteSet::new("10.5.0.0/16".parse().unwrap(), 24, 8285);
        routes.set_own("10.5.1.0/24".parse().unwrap());
        routes.apply(&[LeaseEvent::Added(lease("10.5.2.0/24", PEER))]);
        let routes = Routes::new(routes.table());
        let mut pipeline = Pipeline::new(routes, false, IcmpResponder::new(TUN_ADDR), stats);
        // A watchdog: should a packet go missing, the stop signal ends the loop below.
        let (done, watched) = std::sync::mpsc::channel::<()>();
        let watchdog = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                if watched.recv_timeout(Duration::from_secs(10)).is_err() {
                    let _ = stop.signal();
                }
            })
        };

        let peer = udp_socket(PEER, 8285);
        peer.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let app = udp_socket(Ipv4Addr::UNSPECIFIED, 0);
        const BURST: usize = 16;
        let (mut sent, mut received) = (0usize, 0usize);
        let mut buf = [0u8; 2048];
        // Bursts of equal-sized packets to one peer, written before the worker looks, so a
        // batch holds several and they leave as one GSO run; until one such send was tried.
        for _ in 0..8 {
            for k in 0..BURST {
                let payload = [k as u8; 100];
                app.send_to(&payload, SocketAddrV4::new(PEER_POD, 9999))
                    .unwrap();
            }
            sent += BURST;
            while received < sent {
                io.wait().unwrap();
                let flow = pipeline.run_batch(&mut io).unwrap();
                while let Ok(n) = peer.recv(&mut buf) {
                    assert_eq!(n, 128, "one inner packet (20 + 8 + 100 bytes) per datagram");
                    received += 1;
                }
                assert_eq!(
                    flow,
                    Flow::Continue,
                    "timed out: {received} of {sent} arrived"
                );
            }
            if !io.gso_enabled() {
                break;
            }
        }
        assert!(!io.gso_enabled(), "the failed GSO send turned GSO off");
        assert_eq!(received, sent, "every packet arrived");
        drop(done);
        let _ = watchdog.join();
        drop(io);
    });
}
