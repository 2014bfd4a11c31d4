//! Micro-benches of the udp datapath's pure parts: route lookup at several table sizes (direct
//! array vs hash map), and the egress/ingress pipeline over in-memory queues (classification,
//! TTL rewrite, counters; no syscalls).
//!
//! `route_lookup_sizes` (1, 100 and 10 000 routes, one lookup per element),
//! `classify_encap` (egress verdicts for a batch of 64 packets read from TUN: parse, route,
//! TTL rewrite) and `decap_validate` (ingress verdicts for a batch of 64 datagrams: peer check,
//! header checksum, anti-spoofing, TTL rewrite).
//!
//! `tcp_segment` cuts a 64 KiB TCP super-packet into 1432-byte segments (the GSO layout);
//! `gro_coalesce` merges 44 segments of one flow back into one super-packet (headers
//! rewritten, payloads gathered for `writev`).
//!
//! `cargo bench --bench datapath`; kept short for the 2-core dev and CI machines.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use flannel_rs::datapath::counters::WorkerCounters;
use flannel_rs::datapath::gro::write_coalesced;
use flannel_rs::datapath::gso::{segment_tcp4, segment_tcp4_headers};
use flannel_rs::datapath::pipeline::{
    egress_verdict, ingress_verdict, IcmpResponder, MemIo, Origin, Pipeline, Verdict,
};
use flannel_rs::datapath::route::{Route, RouteTable, Routes};
use flannel_rs::datapath::wire::ipv4::{build_ipv4, PROTO_UDP};
use flannel_rs::datapath::wire::tcp::build_tcp4;

/// A table of `n` /`len` subnets in `network`, peer i at 192.0.2.x / 198.51.x.y.
fn table(network: &str, len: u8, n: u32) -> RouteTable {
    let net: ipnet::Ipv4Net = network.parse().unwrap();
    let base = u32::from(net.network());
    let step = 1u32 << (32 - u32::from(len));
    let routes = (1..=n).map(|i| Route {
        subnet: ipnet::Ipv4Net::new(Ipv4Addr::from(base + i * step), len).unwrap(),
        peer: SocketAddrV4::new(Ipv4Addr::from(0xc633_0000 + i), 8285),
    });
    RouteTable::build(net, len, routes)
}

fn route_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let cases = [
        ("direct /16 of /24", table("10.5.0.0/16", 24, 16)),
        ("direct /16 of /24", table("10.5.0.0/16", 24, 255)),
        ("direct /8 of /24", table("10.0.0.0/8", 24, 4096)),
        ("hashed /8 of /28", table("10.0.0.0/8", 28, 4096)),
    ];
    for (name, t) in &cases {
        // Every other destination hits; misses walk the whole (empty) fallback.
        let dsts: Vec<Ipv4Addr> = t
            .routes()
            .iter()
            .flat_map(|r| {
                [
                    r.subnet.network(),
                    Ipv4Addr::from(u32::from(r.subnet.broadcast()) + 1 + (1 << 20)),
                ]
            })
            .take(1024)
            .collect();
        g.throughput(Throughput::Elements(dsts.len() as u64));
        g.bench_with_input(BenchmarkId::new(*name, t.len()), &dsts, |b, dsts| {
            b.iter(|| {
                dsts.iter()
                    .filter(|d| t.lookup(black_box(**d)).is_some())
                    .count()
            })
        });
    }
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let routes = Routes::new(table("10.5.0.0/16", 24, 255));
    let own = Ipv4Addr::new(10, 5, 0, 9);
    for (name, origin, src, dst) in [
        ("egress", Origin::Tun, own, Ipv4Addr::new(10, 5, 7, 9)),
        (
            "ingress",
            Origin::Udp(SocketAddrV4::new(Ipv4Addr::from(0xc633_0007), 8285)),
            Ipv4Addr::new(10, 5, 7, 9),
            own,
        ),
    ] {
        for size in [64usize, 1400] {
            let pkt = build_ipv4(src, dst, PROTO_UDP, 64, &vec![0xab; size - 20]);
            let batch: Vec<_> = (0..64).map(|_| (origin, pkt.clone())).collect();
            g.throughput(Throughput::Elements(64 * 16));
            g.bench_function(BenchmarkId::new(name, size), |b| {
                let stats = Arc::new(WorkerCounters::default());
                let mut p =
                    Pipeline::new(routes.clone(), true, IcmpResponder::new(own), stats.clone());
                b.iter_batched(
                    || MemIo::replaying(batch.clone(), 16, 32, stats.clone()),
                    |mut io| p.run(&mut io).unwrap(),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

/// Lookups of hitting destinations in tables of 1, 100 and 10 000 /24 routes (10 000 needs a
/// /8 network: still the direct-indexed array).
fn route_lookup_sizes(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup_sizes");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (network, n) in [
        ("10.5.0.0/16", 1u32),
        ("10.5.0.0/16", 100),
        ("10.0.0.0/8", 10_000),
    ] {
        let t = table(network, 24, n);
        // 1024 destinations spread over every route, host part varying.
        let dsts: Vec<Ipv4Addr> = (0..1024u32)
            .map(|k| {
                let r = &t.routes()[(k as usize * 7919) % t.len()];
                Ipv4Addr::from(u32::from(r.subnet.network()) + 1 + k % 250)
            })
            .collect();
        g.throughput(Throughput::Elements(dsts.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &dsts, |b, dsts| {
            b.iter(|| {
                dsts.iter()
                    .filter(|d| t.lookup(black_box(**d)).is_some())
                    .count()
            })
        });
    }
    g.finish();
}

/// 64 packets of mixed sizes (64 B to 1400 B) from `src` to `dst` addresses in 255 subnets.
fn batch_of_64(from_own: bool) -> Vec<Vec<u8>> {
    let own = Ipv4Addr::new(10, 5, 0, 9);
    (0..64u8)
        .map(|k| {
            let remote = Ipv4Addr::new(10, 5, 1 + k % 200, 9);
            let (src, dst) = if from_own {
                (own, remote)
            } else {
                (remote, own)
            };
            let size = if k % 4 == 0 { 64 } else { 1400 };
            build_ipv4(src, dst, PROTO_UDP, 64, &vec![0xab; size - 20])
        })
        .collect()
}

fn classify_encap(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify_encap");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let t = table("10.5.0.0/16", 24, 255);
    let batch = batch_of_64(true);
    let mut icmp = IcmpResponder::new(Ipv4Addr::new(10, 5, 0, 0));
    g.throughput(Throughput::Elements(64));
    g.bench_function("batch_64", |b| {
        b.iter_batched_ref(
            || batch.clone(),
            |bufs| {
                bufs.iter_mut()
                    .map(|buf| {
                        let len = buf.len();
                        egress_verdict(buf, len, &t, &mut icmp)
                    })
                    .filter(|v| matches!(v, Verdict::Forward { .. }))
                    .count()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn decap_validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("decap_validate");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let t = table("10.5.0.0/16", 24, 255);
    let batch = batch_of_64(false);
    // The peer that owns each packet's source subnet, as the socket would report it.
    let srcs: Vec<SocketAddrV4> = batch
        .iter()
        .map(|p| {
            t.lookup(Ipv4Addr::new(p[12], p[13], p[14], p[15]))
                .expect("route")
        })
        .collect();
    g.throughput(Throughput::Elements(64));
    for strict in [true, false] {
        let name = if strict {
            "batch_64_strict"
        } else {
            "batch_64"
        };
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || batch.clone(),
                |bufs| {
                    bufs.iter_mut()
                        .zip(&srcs)
                        .map(|(buf, src)| {
                            let len = buf.len();
                            ingress_verdict(buf, len, *src, &t, strict)
                        })
                        .filter(|v| matches!(v, Verdict::Deliver { .. }))
                        .count()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn tcp_segment(c: &mut Criterion) {
    let mut g = c.benchmark_group("tcp_segment");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let data: Vec<u8> = (0..65_000u32).map(|i| i as u8).collect();
    let pkt = build_tcp4(
        Ipv4Addr::new(10, 5, 1, 2),
        Ipv4Addr::new(10, 5, 2, 2),
        1,
        0x18,
        &data,
    );
    let mut out = vec![0u8; 70_000];
    g.throughput(Throughput::Bytes(pkt.len() as u64));
    g.bench_function("64k_mss_1432", |b| {
        b.iter(|| segment_tcp4(black_box(&pkt), 1432, &mut out).map(|s| s.count))
    });
    // What the io_uring path does: headers only, payloads gathered in place by the send.
    g.bench_function("64k_mss_1432_headers_only", |b| {
        b.iter(|| segment_tcp4_headers(black_box(&pkt), 1432, &mut out).map(|s| s.count))
    });
    g.finish();
}

fn gro_coalesce(c: &mut Criterion) {
    let mut g = c.benchmark_group("gro_coalesce");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let data: Vec<u8> = (0..44 * 1448u32).map(|i| i as u8).collect();
    let pkt = build_tcp4(
        Ipv4Addr::new(10, 5, 1, 2),
        Ipv4Addr::new(10, 5, 2, 2),
        1,
        0x18,
        &data,
    );
    let mut segs = vec![0u8; 70_000];
    let s = segment_tcp4(&pkt, 1448, &mut segs).expect("segments");
    let at: Vec<(usize, usize)> = (0..s.count)
        .map(|k| {
            (
                k * s.segment_len,
                s.segment_len.min(s.total - k * s.segment_len),
            )
        })
        .collect();
    g.throughput(Throughput::Elements(at.len() as u64));
    let mut order = Vec::with_capacity(at.len());
    g.bench_function("44_segments", |b| {
        b.iter(|| {
            let mut written = 0;
            let packet = |o: usize, l: usize| segs.get(o..o + l).unwrap_or_default();
            write_coalesced(
                black_box(&at),
                packet,
                false,
                &mut order,
                |pieces, _, bytes| {
                    written += pieces.len() + bytes;
                },
            );
            written
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    route_lookup,
    route_lookup_sizes,
    pipeline,
    classify_encap,
    decap_validate,
    tcp_segment,
    gro_coalesce
);
criterion_main!(benches);
