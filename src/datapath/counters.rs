//! Per-worker datapath counters.
//!
//! Each worker owns one [`WorkerCounters`] and is its only writer; readers (the stats logger, the
//! daemon's `/metrics` and `/status`) sum snapshots of all of them, found through the
//! [`CountersHub`] the workers were spawned with. The struct is aligned to 128 bytes (two
//! cache lines, the unit adjacent-line prefetchers pull in), so workers never write to a line
//! another worker writes to. With a single writer an increment is a plain load and store, not a
//! locked read-modify-write.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::AddAssign;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Why a packet was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No lease covers the inner destination (egress); an ICMP may have been sent back.
    NoRoute,
    /// Not a sane IPv4 packet (lengths, header length, checksum of an inbound packet).
    BadHeader,
    /// Not IPv4 at all (e.g. IPv6 neighbour discovery the kernel sends on the TUN device).
    NotIpv4,
    /// An inbound datagram from an address that is no current peer's public IP.
    UnknownPeer,
    /// An inbound packet whose inner source lies outside the sending peer's subnet.
    Spoofed,
    /// The TTL would reach 0 (dropped silently, as upstream does).
    TtlExpired,
    /// Reading from or writing to the TUN device failed.
    TunError,
    /// Sending or receiving on the UDP socket failed.
    SocketError,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::NoRoute,
        DropReason::BadHeader,
        DropReason::NotIpv4,
        DropReason::UnknownPeer,
        DropReason::Spoofed,
        DropReason::TtlExpired,
        DropReason::TunError,
        DropReason::SocketError,
    ];
    const COUNT: usize = Self::ALL.len();

    /// Stable snake_case name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoRoute => "no_route",
            DropReason::BadHeader => "bad_header",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::Spoofed => "spoofed",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::TunError => "tun_error",
            DropReason::SocketError => "socket_error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a batch-size histogram counts (they show, for one, whether interleaved flows break
/// super-packets up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Batch {
    /// Datagrams per UDP send (a GSO send carries several).
    UdpSend,
    /// Datagrams per UDP receive (UDP GRO coalesces several).
    UdpReceive,
    /// Segments per TUN read: with TUN offloads a TCP super-packet is cut into several;
    /// without, every read is one packet.
    TunRead,
    /// Packets per TUN write (coalesced into one super-packet with offloads).
    TunWrite,
    /// Packets handled per worker wake-up (one round of the worker loop).
    Wakeup,
}

impl Batch {
    pub const ALL: [Batch; 5] = [
        Batch::UdpSend,
        Batch::UdpReceive,
        Batch::TunRead,
        Batch::TunWrite,
        Batch::Wakeup,
    ];
    const COUNT: usize = Self::ALL.len();

    /// Stable snake_case name, for metric names and the bench's output.
    pub fn name(self) -> &'static str {
        match self {
            Batch::UdpSend => "udp_send",
            Batch::UdpReceive => "udp_receive",
            Batch::TunRead => "tun_read",
            Batch::TunWrite => "tun_write",
            Batch::Wakeup => "wakeup",
        }
    }
}

/// Upper bounds of the batch-size buckets: powers of two up to 128, then +Inf. Wide enough
/// for GSO (64 or 128 segments), GRO and the io_uring batch.
pub const BATCH_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];
const BUCKETS: usize = BATCH_BUCKETS.len() + 1;

/// A single-writer histogram of batch sizes: one plain counter per bucket and the sum.
#[derive(Debug, Default)]
struct SizeHistogram {
    /// Not cumulative: `buckets[i]` counts sizes in `(BATCH_BUCKETS[i-1], BATCH_BUCKETS[i]]`,
    /// the last one everything above 128.
    buckets: [Counter; BUCKETS],
    sum: Counter,
}

impl SizeHistogram {
    #[inline]
    fn observe(&self, n: u64) {
        // ceil(log2(n)) picks the power-of-two bucket: 1 → 0, 2 → 1, 3..=4 → 2, 5..=8 → 3.
        let i = (u64::BITS - n.saturating_sub(1).leading_zeros()) as usize;
        if let Some(c) = self.buckets.get(i.min(BUCKETS - 1)) {
            c.add(1);
        }
        self.sum.add(n);
    }

    fn snapshot(&self) -> BatchSnapshot {
        let mut buckets = [0; BUCKETS];
        for (b, c) in buckets.iter_mut().zip(&self.buckets) {
            *b = c.get();
        }
        BatchSnapshot {
            buckets,
            sum: self.sum.get(),
        }
    }
}

/// Copied values of one batch-size histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSnapshot {
    buckets: [u64; BUCKETS],
    sum: u64,
}

impl BatchSnapshot {
    /// How many batches (sends, receives, reads, writes or wake-ups).
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// How many items (datagrams, segments, packets) in all.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Items per batch on average; 0 without batches.
    pub fn mean(&self) -> f64 {
        match self.count() {
            0 => 0.0,
            n => self.sum as f64 / n as f64,
        }
    }

    /// `(upper bound, count)` per bucket, not cumulative (as `prometheus-client` takes them:
    /// it adds them up itself); the last bound is +Inf.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        BATCH_BUCKETS
            .iter()
            .map(|&b| b as f64)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets)
            .collect()
    }
}

impl AddAssign for BatchSnapshot {
    fn add_assign(&mut self, o: Self) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum += o.sum;
    }
}

/// What a worker's I/O set-up got from the kernel (an info series per worker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerFeatures {
    /// `true` on io_uring, `false` on recvmmsg/sendmsg.
    pub uring: bool,
    /// TUN offloads (virtio-net headers, TCP super-packets, UDP GRO).
    pub offload: bool,
    /// UDP GSO sends (turned off for good when the kernel refuses one).
    pub gso: bool,
    /// io_uring multishot TUN reads and UDP receives.
    pub multishot: bool,
}

impl WorkerFeatures {
    const URING: u32 = 1;
    const OFFLOAD: u32 = 2;
    const GSO: u32 = 4;
    const MULTISHOT: u32 = 8;
    /// Set once the worker's I/O is up; until then the worker reports nothing.
    const SET: u32 = 16;

    fn bits(self) -> u32 {
        let flag = |on: bool, bit: u32| if on { bit } else { 0 };
        Self::SET
            | flag(self.uring, Self::URING)
            | flag(self.offload, Self::OFFLOAD)
            | flag(self.gso, Self::GSO)
            | flag(self.multishot, Self::MULTISHOT)
    }

    fn from_bits(bits: u32) -> Option<Self> {
        (bits & Self::SET != 0).then_some(WorkerFeatures {
            uring: bits & Self::URING != 0,
            offload: bits & Self::OFFLOAD != 0,
            gso: bits & Self::GSO != 0,
            multishot: bits & Self::MULTISHOT != 0,
        })
    }
}

/// A counter with exactly one writing thread.
#[derive(Debug, Default)]
struct Counter(AtomicU64);

impl Counter {
    #[inline]
    fn add(&self, n: u64) {
        // Single writer: load + store is race-free and avoids a locked instruction.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters of one worker. Only that worker's thread may call the recording methods.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerCounters {
    /// Packets read from TUN and handed to the UDP socket, and their inner bytes.
    egress_packets: Counter,
    egress_bytes: Counter,
    /// Datagrams received from peers and written to TUN, and their inner bytes.
    ingress_packets: Counter,
    ingress_bytes: Counter,
    /// ICMP network-unreachable messages written back to TUN.
    icmp_sent: Counter,
    /// With offloads: TCP super-packets read from TUN (cut into segments), and TUN writes that
    /// carried several coalesced segments.
    tso_reads: Counter,
    gro_writes: Counter,
    drops: [Counter; DropReason::COUNT],
    /// Batch sizes, indexed by [`Batch`]; the wake-up histogram's count is the number of
    /// rounds of the worker loop that handled at least one packet.
    batch_sizes: [SizeHistogram; Batch::COUNT],
    /// [`WorkerFeatures`] bits, set by the worker once its I/O is up.
    features: AtomicU32,
}

impl WorkerCounters {
    #[inline]
    pub fn egress(&self, bytes: usize) {
        self.egress_n(1, bytes);
    }

    /// `packets` datagrams sent at once (a GSO send), `bytes` in all.
    #[inline]
    pub fn egress_n(&self, packets: usize, bytes: usize) {
        self.egress_packets.add(packets as u64);
        self.egress_bytes.add(bytes as u64);
    }

    /// `packets` datagrams (`bytes` in all) handed to one send: sent if `ok`, else each
    /// dropped as a socket error.
    #[inline]
    pub fn sent(&self, ok: bool, packets: usize, bytes: usize) {
        if ok {
            self.egress_n(packets, bytes);
            self.batch_size(Batch::UdpSend, packets);
        } else {
            for _ in 0..packets {
                self.drop_packet(DropReason::SocketError);
            }
        }
    }

    #[inline]
    pub fn ingress(&self, bytes: usize) {
        self.ingress_n(1, bytes);
    }

    /// `packets` inbound packets written at once (coalesced), `bytes` in all.
    #[inline]
    pub fn ingress_n(&self, packets: usize, bytes: usize) {
        self.ingress_packets.add(packets as u64);
        self.ingress_bytes.add(bytes as u64);
        self.batch_size(Batch::TunWrite, packets);
        if packets > 1 {
            self.gro_writes.add(1);
        }
    }

    /// One TUN read (with offloads) that carried `segments` packets: more than one is a TCP
    /// super-packet, cut into segments for the wire.
    #[inline]
    pub fn tun_read(&self, segments: usize) {
        if segments > 1 {
            self.tso_reads.add(1);
        }
        self.batch_size(Batch::TunRead, segments);
    }

    /// One round of the worker loop that handled `packets` (> 0).
    #[inline]
    pub fn wakeup(&self, packets: usize) {
        self.batch_size(Batch::Wakeup, packets);
    }

    /// One batch of `n` items of `kind`.
    #[inline]
    pub fn batch_size(&self, kind: Batch, n: usize) {
        if let Some(h) = self.batch_sizes.get(kind as usize) {
            h.observe(n as u64);
        }
    }

    /// Records what the worker's I/O set-up got; called again when a feature is lost
    /// (GSO refused by the kernel).
    pub fn set_features(&self, features: WorkerFeatures) {
        self.features.store(features.bits(), Ordering::Relaxed);
    }

    /// The kernel refused a GSO send: the worker sends one datagram per send from now on.
    pub fn lose_gso(&self) {
        self.features
            .fetch_and(!WorkerFeatures::GSO, Ordering::Relaxed);
    }

    /// What the worker's I/O runs with; `None` before it is up.
    pub fn features(&self) -> Option<WorkerFeatures> {
        WorkerFeatures::from_bits(self.features.load(Ordering::Relaxed))
    }

    #[inline]
    pub fn icmp_sent(&self) {
        self.icmp_sent.add(1);
    }

    #[inline]
    pub fn drop_packet(&self, reason: DropReason) {
        if let Some(c) = self.drops.get(reason.index()) {
            c.add(1);
        }
    }

    /// A consistent-enough copy (each counter is read atomically, not all at one instant).
    pub fn snapshot(&self) -> CountersSnapshot {
        let mut drops = [0; DropReason::COUNT];
        for (d, c) in drops.iter_mut().zip(&self.drops) {
            *d = c.get();
        }
        let mut batch_sizes = [BatchSnapshot::default(); Batch::COUNT];
        for (b, h) in batch_sizes.iter_mut().zip(&self.batch_sizes) {
            *b = h.snapshot();
        }
        CountersSnapshot {
            egress_packets: self.egress_packets.get(),
            egress_bytes: self.egress_bytes.get(),
            ingress_packets: self.ingress_packets.get(),
            ingress_bytes: self.ingress_bytes.get(),
            batches: batch_sizes[Batch::Wakeup as usize].count(),
            icmp_sent: self.icmp_sent.get(),
            tso_reads: self.tso_reads.get(),
            gro_writes: self.gro_writes.get(),
            drops,
            batch_sizes,
        }
    }
}

/// Plain counter values, summable across workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub egress_packets: u64,
    pub egress_bytes: u64,
    pub ingress_packets: u64,
    pub ingress_bytes: u64,
    pub batches: u64,
    pub icmp_sent: u64,
    pub tso_reads: u64,
    pub gro_writes: u64,
    drops: [u64; DropReason::COUNT],
    batch_sizes: [BatchSnapshot; Batch::COUNT],
}

impl CountersSnapshot {
    /// Packets dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.index()).copied().unwrap_or(0)
    }

    /// The batch-size histogram of `kind`.
    pub fn batch_sizes(&self, kind: Batch) -> BatchSnapshot {
        self.batch_sizes
            .get(kind as usize)
            .copied()
            .unwrap_or_default()
    }

    /// All drops, whatever the reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// The sum of every worker's counters.
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerCounters>) -> Self {
        let mut total = CountersSnapshot::default();
        for w in workers {
            total += w.snapshot();
        }
        total
    }
}

impl AddAssign for CountersSnapshot {
    fn add_assign(&mut self, o: Self) {
        self.egress_packets += o.egress_packets;
        self.egress_bytes += o.egress_bytes;
        self.ingress_packets += o.ingress_packets;
        self.ingress_bytes += o.ingress_bytes;
        self.batches += o.batches;
        self.icmp_sent += o.icmp_sent;
        self.tso_reads += o.tso_reads;
        self.gro_writes += o.gro_writes;
        for (a, b) in self.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
        for (a, b) in self.batch_sizes.iter_mut().zip(o.batch_sizes) {
            *a += b;
        }
    }
}

/// Every worker's counters, for readers: the udp backend spawns workers with it and the
/// daemon's `/metrics` sums it on each scrape. Workers that stopped stay in it, so the sums
/// never go down while the process lives (Prometheus counters must not).
#[derive(Debug, Clone, Default)]
pub struct CountersHub {
    workers: Arc<Mutex<Vec<Arc<WorkerCounters>>>>,
    peers: Option<Arc<PeerTraffic>>,
}

impl CountersHub {
    /// A hub; with `per_peer` the workers also count traffic per peer ([`PeerTraffic`]).
    pub fn new(per_peer: bool) -> Self {
        CountersHub {
            workers: Arc::default(),
            peers: per_peer.then(Arc::default),
        }
    }

    /// The counters of one more worker.
    pub fn add_worker(&self) -> Arc<WorkerCounters> {
        let stats = Arc::new(WorkerCounters::default());
        self.lock().push(stats.clone());
        stats
    }

    /// The sum over every worker this hub has seen.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot::sum(self.lock().iter().map(|s| &**s))
    }

    /// Each worker's I/O features, in spawn order (`None` for one not up yet).
    pub fn features(&self) -> Vec<Option<WorkerFeatures>> {
        self.lock().iter().map(|s| s.features()).collect()
    }

    /// Per-peer traffic, when counted.
    pub fn peers(&self) -> Option<&Arc<PeerTraffic>> {
        self.peers.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<WorkerCounters>>> {
        // A reader that panicked cannot have left the list half-written.
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Traffic per peer public IP (`--metrics-per-peer`), written by every worker: each batch's
/// tally is added with one read lock and relaxed atomic adds ([`PeerTally::flush`]). Off by
/// default: it costs a lock per batch, and one series per peer can be many.
#[derive(Debug, Default)]
pub struct PeerTraffic {
    peers: RwLock<HashMap<Ipv4Addr, Arc<PeerCounters>>>,
}

/// What one peer sent us and we sent it: inner packets (a TCP super-packet read from TUN
/// counts once) and their bytes.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
}

impl PeerTraffic {
    /// Every peer seen so far with its counters, sorted by address.
    pub fn snapshot(&self) -> Vec<(Ipv4Addr, [u64; 4])> {
        let map = self.peers.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = map
            .iter()
            .map(|(ip, c)| {
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                (
                    *ip,
                    [
                        get(&c.tx_packets),
                        get(&c.tx_bytes),
                        get(&c.rx_packets),
                        get(&c.rx_bytes),
                    ],
                )
            })
            .collect();
        out.sort_unstable_by_key(|(ip, _)| *ip);
        out
    }

    fn counters(&self, ip: Ipv4Addr) -> Arc<PeerCounters> {
        if let Some(c) = self
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip)
        {
            return c.clone();
        }
        self.peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(ip)
            .or_default()
            .clone()
    }
}

/// One worker's per-peer counts of the current batch, added to [`PeerTraffic`] at its end.
/// A batch talks to few peers, so a short list beats a map.
#[derive(Debug, Default)]
pub struct PeerTally {
    /// `(peer, tx packets, tx bytes, rx packets, rx bytes)`.
    entries: Vec<(Ipv4Addr, [u64; 4])>,
}

impl PeerTally {
    #[inline]
    pub fn tx(&mut self, peer: Ipv4Addr, bytes: usize) {
        let e = self.entry(peer);
        e[0] += 1;
        e[1] += bytes as u64;
    }

    #[inline]
    pub fn rx(&mut self, peer: Ipv4Addr, bytes: usize) {
        let e = self.entry(peer);
        e[2] += 1;
        e[3] += bytes as u64;
    }

    fn entry(&mut self, peer: Ipv4Addr) -> &mut [u64; 4] {
        let i = match self.entries.iter().position(|(p, _)| *p == peer) {
            Some(i) => i,
            None => {
                self.entries.push((peer, [0; 4]));
                self.entries.len() - 1
            }
        };
        &mut self.entries[i].1
    }

    /// Adds the batch's counts to `traffic` and starts over.
    pub fn flush(&mut self, traffic: &PeerTraffic) {
        for (peer, [tp, tb, rp, rb]) in self.entries.drain(..) {
            let c = traffic.counters(peer);
            c.tx_packets.fetch_add(tp, Ordering::Relaxed);
            c.tx_bytes.fetch_add(tb, Ordering::Relaxed);
            c.rx_packets.fetch_add(rp, Ordering::Relaxed);
            c.rx_bytes.fetch_add(rb, Ordering::Relaxed);
        }
    }
}

impl fmt::Display for CountersSnapshot {
    /// One log line: `egress 10 pkts/1400 B, ingress …, drops no_route=1 …` (zero drops omitted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "egress {} pkts/{} B, ingress {} pkts/{} B, {} batches, {} icmp, \
             {} tso_reads, {} gro_writes, drops",
            self.egress_packets,
            self.egress_bytes,
            self.ingress_packets,
            self.ingress_bytes,
            self.batches,
            self.icmp_sent,
            self.tso_reads,
            self.gro_writes,
        )?;
        let mut any = false;
        for r in DropReason::ALL {
            let n = self.drops(r);
            if n > 0 {
                write!(f, " {}={n}", r.name())?;
                any = true;
            }
        }
        if !any {
            write!(f, " none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_across_workers() {
        let a = WorkerCounters::default();
        let b = WorkerCounters::default();
        a.egress(100);
        a.egress(50);
        b.ingress(70);
        b.ingress_n(3, 300);
        a.tun_read(4);
        b.wakeup(3);
        a.icmp_sent();
        a.drop_packet(DropReason::NoRoute);
        b.drop_packet(DropReason::NoRoute);
        b.drop_packet(DropReason::Spoofed);
        let s = CountersSnapshot::sum([&a, &b]);
        assert_eq!(
            (
                s.egress_packets,
                s.egress_bytes,
                s.ingress_packets,
                s.ingress_bytes
            ),
            (2, 150, 4, 370)
        );
        assert_eq!((s.batches, s.icmp_sent), (1, 1));
        assert_eq!(s.drops(DropReason::NoRoute), 2);
        assert_eq!(s.drops(DropReason::Spoofed), 1);
        assert_eq!(s.drops(DropReason::UnknownPeer), 0);
        assert_eq!(s.total_drops(), 3);
        assert_eq!(
            s.to_string(),
            "egress 2 pkts/150 B, ingress 4 pkts/370 B, 1 batches, 1 icmp, 1 tso_reads, \
             1 gro_writes, drops no_route=2 spoofed=1"
        );
    }

    #[test]
    fn every_reason_has_its_own_slot() {
        let w = WorkerCounters::default();
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            w.drop_packet(r);
        }
        let s = w.snapshot();
        assert!(DropReason::ALL.iter().all(|&r| s.drops(r) == 1));
    }

    #[test]
    fn batch_sizes_land_in_power_of_two_buckets() {
        let w = WorkerCounters::default();
        for n in [1, 2, 3, 4, 5, 64, 65, 128, 129, 1000] {
            w.batch_size(Batch::UdpReceive, n);
        }
        let h = w.snapshot().batch_sizes(Batch::UdpReceive);
        assert_eq!(h.count(), 10);
        assert_eq!(h.sum(), 1 + 2 + 3 + 4 + 5 + 64 + 65 + 128 + 129 + 1000);
        let bounds: Vec<(f64, u64)> = h.buckets();
        // ≤1: {1}; ≤2: {2}; ≤4: {3,4}; ≤8: {5}; ≤64: {64}; ≤128: {65,128}; +Inf: {129,1000}
        let expected = [1, 1, 2, 1, 0, 0, 1, 2, 2];
        assert_eq!(bounds.iter().map(|b| b.1).collect::<Vec<_>>(), expected);
        assert!(bounds.last().unwrap().0.is_infinite());
        assert_eq!(w.snapshot().batch_sizes(Batch::UdpSend).count(), 0);
    }

    #[test]
    fn the_hub_keeps_stopped_workers_and_features() {
        let hub = CountersHub::new(true);
        let a = hub.add_worker();
        a.egress(10);
        let feats = WorkerFeatures {
            uring: true,
            gso: true,
            ..WorkerFeatures::default()
        };
        a.set_features(feats);
        drop(a); // the worker stopped
        let b = hub.add_worker();
        b.egress(5);
        assert_eq!(hub.snapshot().egress_bytes, 15);
        assert_eq!(hub.features(), vec![Some(feats), None]);

        let traffic = hub.peers().unwrap();
        let mut tally = PeerTally::default();
        let p: Ipv4Addr = "192.0.2.7".parse().unwrap();
        tally.tx(p, 100);
        tally.tx(p, 50);
        tally.rx(p, 70);
        tally.flush(traffic);
        tally.flush(traffic); // empty: adds nothing
        assert_eq!(traffic.snapshot(), vec![(p, [2, 150, 1, 70])]);
        assert!(CountersHub::new(false).peers().is_none());
    }

    #[test]
    fn stats_do_not_share_cache_lines() {
        assert!(std::mem::align_of::<WorkerCounters>() >= 128);
        assert_eq!(std::mem::size_of::<WorkerCounters>() % 128, 0);
    }
}
