//! What the health server shows of a running node: `/metrics` (Prometheus text format 0.0.4,
//! encoded by `prometheus-client`) and `/status` (the same numbers as one JSON document, for
//! `flannelctl status`).
//!
//! Nothing is counted here. Every layer keeps its own counters where the work happens (the
//! udp workers per worker, the lease loops in `subnet::counters`, the reconciler in
//! `backend::kernel`, the rule checks in `exec::masq`); on each scrape a collector reads
//! them all once and encodes them, so a scrape costs the workers nothing.
//!
//! Names follow Prometheus conventions: `flannel_` first, counters end in `_total` (added by
//! the encoder), times in `_seconds`, timestamps in `_timestamp_seconds`. Per-peer series only
//! with `--metrics-per-peer`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry as MetricsRegistry;

use super::readiness::Readiness;
use crate::backend::kernel::ReconcileStats;
use crate::backend::BackendCounters;
use crate::datapath::counters::{Batch, CountersSnapshot, DropReason};
use crate::exec::masq::RulesStats;
use crate::status::{
    DatapathStatus, EtcdStatus, LeaseStatus, NodeStatus, PeerStatus, ReconcileStatus,
};
use crate::subnet::counters::{ControlPlane, ControlSnapshot, EtcdHealth, EtcdSnapshot};
use crate::subnet::lease::Lease;

/// `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Everything `/metrics` and `/status` read. The daemon fills it in as it starts.
#[derive(Debug, Default)]
pub struct Counters {
    pub etcd: Arc<EtcdHealth>,
    pub control: ControlPlane,
    pub ready: Readiness,
    parts: Mutex<Parts>,
}

/// What becomes known during start-up.
#[derive(Debug, Default, Clone)]
struct Parts {
    /// The network config's backend type.
    backend: String,
    backend_counters: BackendCounters,
    rules: Option<Arc<RulesStats>>,
}

/// One scrape's worth of values, read once and encoded twice (metrics, status).
struct Reading {
    parts: Parts,
    ready: bool,
    etcd: EtcdSnapshot,
    control: ControlSnapshot,
    datapath: Option<(
        CountersSnapshot,
        Vec<Option<crate::datapath::counters::WorkerFeatures>>,
    )>,
    peer_traffic: Option<Vec<(Ipv4Addr, [u64; 4])>>,
}

impl Counters {
    /// The backend type, once the network config is read.
    pub fn set_backend(&self, name: &str) {
        self.parts().backend = name.to_owned();
    }

    /// The running backend's counters.
    pub fn set_backend_counters(&self, t: BackendCounters) {
        self.parts().backend_counters = t;
    }

    /// The masquerade/forward rules' counters, when rules are managed.
    pub fn set_rules(&self, stats: Option<Arc<RulesStats>>) {
        self.parts().rules = stats;
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> Reading {
        let parts = self.parts().clone();
        let hub = parts.backend_counters.datapath.clone();
        Reading {
            ready: self.ready.is_ready(),
            etcd: self.etcd.snapshot(),
            control: self.control.snapshot(),
            datapath: hub.as_ref().map(|h| (h.snapshot(), h.features())),
            peer_traffic: hub.as_ref().and_then(|h| h.peers().map(|p| p.snapshot())),
            parts,
        }
    }

    /// The `/metrics` body.
    pub fn metrics_text(self: &Arc<Self>) -> String {
        let mut registry = MetricsRegistry::default();
        registry.register_collector(Box::new(Scrape(self.clone())));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            // Writing to a String cannot fail; say so rather than serve half a page silently.
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }

    /// The `/status` document.
    pub fn status(&self) -> NodeStatus {
        let r = self.read();
        let by_ip: BTreeMap<Ipv4Addr, [u64; 4]> = r
            .peer_traffic
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let lease = r.control.own.as_ref().map(|own| LeaseStatus {
            subnet: own.lease.key.ipv4.to_string(),
            ipv6_subnet: own.lease.key.ipv6.map(|n| n.to_string()),
            public_ip: own.lease.attrs.public_ip.to_string(),
            expires_unix: own.expires.map(unix_secs),
            renewals: r.control.renewals,
            failed_renewals: r.control.failed_renewals,
            reacquisitions: r.control.reacquisitions,
        });
        let peers = r
            .control
            .peers
            .iter()
            .map(|l| {
                let traffic = by_ip.get(&l.attrs.public_ip);
                PeerStatus {
                    subnet: l.key.ipv4.to_string(),
                    ipv6_subnet: l.key.ipv6.map(|n| n.to_string()),
                    public_ip: l.attrs.public_ip.to_string(),
                    backend_type: backend_type(l),
                    tx_packets: traffic.map(|t| t[0]),
                    tx_bytes: traffic.map(|t| t[1]),
                }
            })
            .collect();
        let datapath = r.datapath.as_ref().map(|(s, features)| DatapathStatus {
            io: io_name(features),
            workers: features.len(),
            tx_packets: s.egress_packets,
            tx_bytes: s.egress_bytes,
            rx_packets: s.ingress_packets,
            rx_bytes: s.ingress_bytes,
            drops: DropReason::ALL
                .iter()
                .map(|&d| (d.name().to_owned(), s.drops(d)))
                .collect(),
            icmp_unreachable_sent: s.icmp_sent,
        });
        let reconcile = r.parts.backend_counters.reconcile.as_ref().map(|rs| {
            let s = rs.snapshot();
            ReconcileStatus {
                runs: s.runs,
                failures: s.failures,
                repairs: s
                    .repairs
                    .iter()
                    .map(|(k, n)| (k.name().to_owned(), *n))
                    .collect(),
                last_duration_seconds: s.last_duration.as_secs_f64(),
                last_unix: s.last_end.map(unix_secs),
            }
        });
        NodeStatus {
            version: super::handover::version(),
            backend: r.parts.backend.clone(),
            ready: r.ready,
            lease,
            peers,
            etcd: EtcdStatus {
                reachable: r.etcd.reachable,
                seconds_since_contact: r.etcd.since_contact.map(|d| d.as_secs_f64()),
                errors: r
                    .etcd
                    .errors
                    .iter()
                    .map(|(op, n)| (label_op(op), *n))
                    .collect(),
            },
            datapath,
            reconcile,
        }
    }
}

/// The backend type a lease announces (`udp` and `alloc` leases carry none, as upstream).
fn backend_type(l: &Lease) -> String {
    l.attrs.backend_type.clone().unwrap_or_default()
}

/// `io_uring` when every worker runs on it, `mmsg` when none does.
fn io_name(features: &[Option<crate::datapath::counters::WorkerFeatures>]) -> String {
    let uring = features.iter().flatten().filter(|f| f.uring).count();
    match (uring, features.len()) {
        (0, _) => "mmsg",
        (u, n) if u == n => "io_uring",
        _ => "mixed",
    }
    .to_owned()
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn unix_secs_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// `"list leases"` → `"list_leases"`: the registry's operation names as label values.
fn label_op(op: &str) -> String {
    op.replace(' ', "_")
}

type Labels = Vec<(&'static str, String)>;

/// The collector `metrics_text` registers: reads [`Counters`] once per scrape.
#[derive(Debug)]
struct Scrape(Arc<Counters>);

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let r = self.0.read();
        let mut out = Out(encoder);
        encode_node(&mut out, &r)?;
        encode_control(&mut out, &r)?;
        if let Some((s, features)) = &r.datapath {
            encode_datapath(&mut out, s, features, &r)?;
        }
        if let Some(rs) = &r.parts.backend_counters.reconcile {
            encode_reconcile(&mut out, rs)?;
        }
        if let Some(rules) = &r.parts.rules {
            encode_rules(&mut out, rules)?;
        }
        Ok(())
    }
}

fn encode_reconcile(out: &mut Out<'_>, stats: &ReconcileStats) -> std::fmt::Result {
    let s = stats.snapshot();
    out.counter(
        "flannel_reconcile_runs",
        "Passes comparing the kernel with the leases.",
        s.runs,
    )?;
    out.counter(
        "flannel_reconcile_failures",
        "Reconcile passes that could not read the kernel, and repairs it refused.",
        s.failures,
    )?;
    out.counters(
        "flannel_reconcile_repairs",
        "Drifted kernel entries put back, by kind (route, neighbour, fdb, link).",
        s.repairs
            .iter()
            .map(|(k, n)| (vec![("kind", k.name().to_owned())], *n)),
    )?;
    out.gauge(
        "flannel_reconcile_last_duration_seconds",
        "How long the last reconcile pass took.",
        s.last_duration.as_secs_f64(),
    )?;
    if let Some(end) = s.last_end {
        out.gauge(
            "flannel_reconcile_last_timestamp_seconds",
            "When the last reconcile pass ended (Unix time).",
            unix_secs_f64(end),
        )?;
    }
    Ok(())
}

fn encode_rules(out: &mut Out<'_>, rules: &RulesStats) -> std::fmt::Result {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    out.counter(
        "flannel_rules_checks",
        "Checks of the masquerade and forward rules (iptables or nftables).",
        get(&rules.resyncs),
    )?;
    out.counter(
        "flannel_rules_repairs",
        "Rule checks that found flannel's rules changed or missing and wrote them again.",
        get(&rules.repairs),
    )?;
    out.counter(
        "flannel_rules_failures",
        "Rule checks that could not read or write the rules.",
        get(&rules.failures),
    )
}

fn encode_node(out: &mut Out<'_>, r: &Reading) -> std::fmt::Result {
    out.info(
        "flannel_build",
        "The flanneld version and the backend it runs.",
        vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("backend", r.parts.backend.clone()),
        ],
    )?;
    out.gauge(
        "flannel_ready",
        "1 once subnet.env is written and the backend started (/readyz).",
        f64::from(u8::from(r.ready)),
    )
}

fn encode_control(out: &mut Out<'_>, r: &Reading) -> std::fmt::Result {
    let c = &r.control;
    if let Some(own) = &c.own {
        out.info(
            "flannel_lease",
            "This node's lease.",
            vec![
                ("subnet", own.lease.key.ipv4.to_string()),
                (
                    "ipv6_subnet",
                    own.lease
                        .key
                        .ipv6
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                ),
                ("public_ip", own.lease.attrs.public_ip.to_string()),
                ("backend", r.parts.backend.clone()),
            ],
        )?;
        if let Some(exp) = own.expires {
            out.gauge(
                "flannel_lease_expiry_timestamp_seconds",
                "When this node's lease expires unless renewed (Unix time).",
                unix_secs_f64(exp),
            )?;
        }
    }
    out.counter(
        "flannel_lease_renewals",
        "Successful renewals of this node's lease.",
        c.renewals,
    )?;
    out.counter(
        "flannel_lease_renewal_failures",
        "Renewals of this node's lease that failed (retried before it expires).",
        c.failed_renewals,
    )?;
    out.counter(
        "flannel_lease_reacquisitions",
        "Times this node's lease was lost and acquired again.",
        c.reacquisitions,
    )?;
    out.gauge(
        "flannel_peers",
        "Other hosts' leases known.",
        c.peers.len() as f64,
    )?;
    out.counters(
        "flannel_watch_events",
        "Lease events handed to the backend, by type.",
        [
            (vec![("type", "added".to_owned())], c.events_added),
            (vec![("type", "removed".to_owned())], c.events_removed),
        ],
    )?;
    out.counter(
        "flannel_watch_resyncs",
        "Full re-listings of the leases (start-up, and after every broken watch).",
        c.resyncs,
    )?;
    out.counters(
        "flannel_etcd_request_errors",
        "etcd requests that failed after retries, by operation.",
        r.etcd
            .errors
            .iter()
            .map(|(op, n)| (vec![("op", label_op(op))], *n)),
    )?;
    out.gauge(
        "flannel_etcd_up",
        "1 when the last etcd request succeeded.",
        f64::from(u8::from(r.etcd.reachable)),
    )?;
    if let (Some(since), Some(at)) = (r.etcd.since_contact, r.etcd.last_contact) {
        out.gauge(
            "flannel_etcd_last_contact_timestamp_seconds",
            "When an etcd request last succeeded (Unix time).",
            unix_secs_f64(at),
        )?;
        out.gauge(
            "flannel_etcd_seconds_since_contact",
            "Seconds since an etcd request last succeeded.",
            since.as_secs_f64(),
        )?;
    }
    Ok(())
}

fn encode_datapath(
    out: &mut Out<'_>,
    s: &CountersSnapshot,
    features: &[Option<crate::datapath::counters::WorkerFeatures>],
    r: &Reading,
) -> std::fmt::Result {
    encode_traffic(out, s)?;
    encode_offloads(out, s)?;
    encode_batch_sizes(out, s)?;
    encode_workers(out, features)?;
    if let Some(traffic) = &r.peer_traffic {
        encode_peer_traffic(out, traffic, &r.control.peers)?;
    }
    Ok(())
}

/// Packets and bytes each way, drops by reason, ICMP replies.
fn encode_traffic(out: &mut Out<'_>, s: &CountersSnapshot) -> std::fmt::Result {
    out.counter(
        "flannel_udp_tx_packets",
        "Pod packets read from flannel0 and sent to peers.",
        s.egress_packets,
    )?;
    out.counter(
        "flannel_udp_tx_bytes",
        "Bytes of the pod packets sent to peers (inner packets).",
        s.egress_bytes,
    )?;
    out.counter(
        "flannel_udp_rx_packets",
        "Pod packets received from peers and written to flannel0.",
        s.ingress_packets,
    )?;
    out.counter(
        "flannel_udp_rx_bytes",
        "Bytes of the pod packets received from peers (inner packets).",
        s.ingress_bytes,
    )?;
    out.counters(
        "flannel_udp_dropped_packets",
        "Packets not delivered, by reason.",
        DropReason::ALL
            .iter()
            .map(|&d| (vec![("reason", d.name().to_owned())], s.drops(d))),
    )?;
    out.counter(
        "flannel_udp_icmp_unreachable_sent",
        "ICMP network-unreachable replies written back to pods.",
        s.icmp_sent,
    )
}

/// UDP GSO sends and GRO receives, and the worker loop's rounds.
fn encode_offloads(out: &mut Out<'_>, s: &CountersSnapshot) -> std::fmt::Result {
    // GSO sends and GRO receives are the UDP send/receive batches of more than one datagram.
    let multi = |b: Batch| {
        let h = s.batch_sizes(b);
        let singles = h.buckets().first().map_or(0, |b| b.1);
        (h.count() - singles, h.sum() - singles)
    };
    let (gso_sends, gso_segments) = multi(Batch::UdpSend);
    let (gro_receives, gro_segments) = multi(Batch::UdpReceive);
    out.counter(
        "flannel_udp_gso_sends",
        "UDP sends that carried several datagrams (UDP GSO).",
        gso_sends,
    )?;
    out.counter(
        "flannel_udp_gso_segments",
        "Datagrams sent in UDP GSO sends.",
        gso_segments,
    )?;
    out.counter(
        "flannel_udp_gro_receives",
        "UDP receives that carried several datagrams (UDP GRO).",
        gro_receives,
    )?;
    out.counter(
        "flannel_udp_gro_segments",
        "Datagrams received in UDP GRO receives.",
        gro_segments,
    )?;
    out.counter(
        "flannel_udp_wakeups",
        "Rounds of the worker loop that handled at least one packet (batches).",
        s.batch_sizes(Batch::Wakeup).count(),
    )
}

/// The histogram of items per batch, by kind.
fn encode_batch_sizes(out: &mut Out<'_>, s: &CountersSnapshot) -> std::fmt::Result {
    let mut enc = out.0.encode_descriptor(
        "flannel_udp_batch_size",
        "Items per batch: datagrams per UDP send or receive, segments per TUN read or write, \
         packets per worker wake-up.",
        None,
        MetricType::Histogram,
    )?;
    for kind in Batch::ALL {
        let h = s.batch_sizes(kind);
        let labels: Labels = vec![("kind", kind.name().to_owned())];
        enc.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            h.sum() as f64,
            h.count(),
            &h.buckets(),
            None,
        )?;
    }
    Ok(())
}

/// One info series per worker: its I/O path and what the kernel granted it.
fn encode_workers(
    out: &mut Out<'_>,
    features: &[Option<crate::datapath::counters::WorkerFeatures>],
) -> std::fmt::Result {
    let mut enc = out.0.encode_descriptor(
        "flannel_udp_worker",
        "One series per udp worker: its I/O path and what the kernel granted it.",
        None,
        MetricType::Info,
    )?;
    for (i, f) in features.iter().enumerate() {
        let Some(f) = f else { continue };
        let labels: Labels = vec![
            ("worker", i.to_string()),
            ("io", if f.uring { "io_uring" } else { "mmsg" }.to_owned()),
            ("offload", f.offload.to_string()),
            ("gso", f.gso.to_string()),
            ("multishot", f.multishot.to_string()),
        ];
        enc.encode_info(&labels)?;
    }
    Ok(())
}

/// `--metrics-per-peer`: packets and bytes each way per peer, labelled with its subnet.
fn encode_peer_traffic(
    out: &mut Out<'_>,
    traffic: &[(Ipv4Addr, [u64; 4])],
    peers: &[Lease],
) -> std::fmt::Result {
    let subnet_of: BTreeMap<Ipv4Addr, String> = peers
        .iter()
        .map(|l| (l.attrs.public_ip, l.key.ipv4.to_string()))
        .collect();
    let subnet_of = &subnet_of;
    let rows = |i: usize| {
        traffic.iter().map(move |(ip, c)| {
            let labels: Labels = vec![
                ("peer", ip.to_string()),
                ("subnet", subnet_of.get(ip).cloned().unwrap_or_default()),
            ];
            (labels, c[i])
        })
    };
    out.counters(
        "flannel_udp_peer_tx_packets",
        "Pod packets sent to each peer (--metrics-per-peer).",
        rows(0),
    )?;
    out.counters(
        "flannel_udp_peer_tx_bytes",
        "Bytes of pod packets sent to each peer (--metrics-per-peer).",
        rows(1),
    )?;
    out.counters(
        "flannel_udp_peer_rx_packets",
        "Pod packets received from each peer (--metrics-per-peer).",
        rows(2),
    )?;
    out.counters(
        "flannel_udp_peer_rx_bytes",
        "Bytes of pod packets received from each peer (--metrics-per-peer).",
        rows(3),
    )
}

/// Shorthands over `prometheus-client`'s descriptor encoder.
struct Out<'a>(DescriptorEncoder<'a>);

impl Out<'_> {
    fn counter(&mut self, name: &str, help: &str, v: u64) -> std::fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) -> std::fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&v)
    }

    fn info(&mut self, name: &str, help: &str, labels: Labels) -> std::fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Info)?
            .encode_info(&labels)
    }

    fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, u64)>,
    ) -> std::fmt::Result {
        let mut enc = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in rows {
            enc.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::counters::CountersHub;

    #[test]
    fn a_scrape_names_every_family_once_and_counts_what_the_workers_did() {
        let t = Arc::new(Counters::default());
        t.set_backend("udp");
        let hub = CountersHub::new(false);
        let w = hub.add_worker();
        w.egress(100);
        w.sent(true, 4, 4000);
        w.drop_packet(DropReason::UnknownPeer);
        t.set_backend_counters(BackendCounters {
            reconcile: None,
            datapath: Some(hub),
        });
        t.etcd.failed("list leases", &"unavailable");
        let text = t.metrics_text();
        for line in [
            "flannel_build_info{version=\"",
            "flannel_udp_tx_packets_total 5",
            "flannel_udp_dropped_packets_total{reason=\"unknown_peer\"} 1",
            "flannel_udp_gso_sends_total 1",
            "flannel_udp_gso_segments_total 4",
            "flannel_udp_batch_size_bucket{kind=\"udp_send\",le=\"4\"} 1",
            "flannel_udp_batch_size_bucket{kind=\"udp_send\",le=\"8\"} 1",
            "flannel_etcd_request_errors_total{op=\"list_leases\"} 1",
            "flannel_etcd_up 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "a family appears twice:\n{text}");
        // No per-peer series without the switch, no reconcile series without a reconciler.
        assert!(!text.contains("flannel_udp_peer_"));
        assert!(!text.contains("flannel_reconcile_"));
    }

    #[test]
    fn status_carries_the_same_numbers() {
        let t = Counters::default();
        t.set_backend("udp");
        let hub = CountersHub::new(false);
        hub.add_worker().drop_packet(DropReason::NoRoute);
        t.set_backend_counters(BackendCounters {
            reconcile: None,
            datapath: Some(hub),
        });
        let s = t.status();
        assert_eq!(s.backend, "udp");
        let dp = s.datapath.unwrap();
        assert_eq!(dp.drops.get("no_route"), Some(&1));
        assert_eq!(dp.drops.len(), DropReason::ALL.len());
        assert_eq!(dp.workers, 1);
        assert!(s.lease.is_none());
    }
}
