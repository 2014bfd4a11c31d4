//! Micro-benches of the udp datapath's pure parts: route lookup at several table sizes (direct
//! array vs hash map), and the egress/ingress pipeline over in-memory queues (classification,
//! TTL rewrite, counters; no syscalls).
//!
//! `cargo bench --bench datapath`; kept short for the 2-core dev and CI machines.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use flannel_rs::datapath::packet::{build_ipv4, PROTO_UDP};
use flannel_rs::datapath::pipeline::{IcmpResponder, MemIo, Origin, Pipeline};
use flannel_rs::datapath::route::{Route, RouteTable, Routes};
use flannel_rs::datapath::stats::WorkerStats;

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
                let stats = Arc::new(WorkerStats::default());
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

criterion_group!(benches, route_lookup, pipeline);
criterion_main!(benches);
