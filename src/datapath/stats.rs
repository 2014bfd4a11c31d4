//! Per-worker datapath counters.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer; readers (the stats logger, later
//! the metrics endpoint) sum snapshots of all of them. The struct is aligned to 128 bytes (two
//! cache lines, the unit adjacent-line prefetchers pull in), so workers never write to a line
//! another worker writes to. With a single writer an increment is a plain load and store, not a
//! locked read-modify-write.

use std::fmt;
use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering};

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
pub struct WorkerStats {
    /// Packets read from TUN and handed to the UDP socket, and their inner bytes.
    egress_packets: Counter,
    egress_bytes: Counter,
    /// Datagrams received from peers and written to TUN, and their inner bytes.
    ingress_packets: Counter,
    ingress_bytes: Counter,
    /// Rounds of the worker loop that handled at least one packet.
    batches: Counter,
    /// ICMP network-unreachable messages written back to TUN.
    icmp_sent: Counter,
    /// With offloads: TCP super-packets read from TUN (cut into segments), and TUN writes that
    /// carried several coalesced segments.
    tso_reads: Counter,
    gro_writes: Counter,
    drops: [Counter; DropReason::COUNT],
}

impl WorkerStats {
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
        if packets > 1 {
            self.gro_writes.add(1);
        }
    }

    #[inline]
    pub fn tso_read(&self) {
        self.tso_reads.add(1);
    }

    #[inline]
    pub fn batch(&self) {
        self.batches.add(1);
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
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut drops = [0; DropReason::COUNT];
        for (d, c) in drops.iter_mut().zip(&self.drops) {
            *d = c.get();
        }
        StatsSnapshot {
            egress_packets: self.egress_packets.get(),
            egress_bytes: self.egress_bytes.get(),
            ingress_packets: self.ingress_packets.get(),
            ingress_bytes: self.ingress_bytes.get(),
            batches: self.batches.get(),
            icmp_sent: self.icmp_sent.get(),
            tso_reads: self.tso_reads.get(),
            gro_writes: self.gro_writes.get(),
            drops,
        }
    }
}

/// Plain counter values, summable across workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub egress_packets: u64,
    pub egress_bytes: u64,
    pub ingress_packets: u64,
    pub ingress_bytes: u64,
    pub batches: u64,
    pub icmp_sent: u64,
    pub tso_reads: u64,
    pub gro_writes: u64,
    drops: [u64; DropReason::COUNT],
}

impl StatsSnapshot {
    /// Packets dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.index()).copied().unwrap_or(0)
    }

    /// All drops, whatever the reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// The sum of every worker's counters.
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerStats>) -> Self {
        let mut total = StatsSnapshot::default();
        for w in workers {
            total += w.snapshot();
        }
        total
    }
}

impl AddAssign for StatsSnapshot {
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
    }
}

impl fmt::Display for StatsSnapshot {
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
        let a = WorkerStats::default();
        let b = WorkerStats::default();
        a.egress(100);
        a.egress(50);
        b.ingress(70);
        b.ingress_n(3, 300);
        a.tso_read();
        b.batch();
        a.icmp_sent();
        a.drop_packet(DropReason::NoRoute);
        b.drop_packet(DropReason::NoRoute);
        b.drop_packet(DropReason::Spoofed);
        let s = StatsSnapshot::sum([&a, &b]);
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
        let w = WorkerStats::default();
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            w.drop_packet(r);
        }
        let s = w.snapshot();
        assert!(DropReason::ALL.iter().all(|&r| s.drops(r) == 1));
    }

    #[test]
    fn stats_do_not_share_cache_lines() {
        assert!(std::mem::align_of::<WorkerStats>() >= 128);
        assert_eq!(std::mem::size_of::<WorkerStats>() % 128, 0);
    }
}
