//! What happens to each packet, independent of how it was read or will be written: the
//! datapath's one decision per packet.
//!
//! A packet read from the TUN goes through a chain of pure stages that ends in one instruction
//! for the driver, as quinn-udp's `Transmit` and boringtun's `TunnResult` do:
//!
//! ```text
//! TUN read ─► classify + route (egress_verdict) ─► shape the send (gso::to_wire) ─► Action::Send(Transmit)
//!                    └─ no route: ICMP reply ─► Action::WriteTun        └─ drop: counted by reason
//! UDP datagram ─► verify + check the sender (ingress_verdict) ─► Action::WriteTun (or, with
//!                 offloads, a delivery the driver writes coalesced at the end of its batch)
//! ```
//!
//! [`Stages`] holds one batch's state (the route table loaded once, the ICMP limiter, the
//! counters) and is what a driver calls: [`Stages::egress`] for a TUN read, [`Stages::ingress`]
//! and [`Stages::ingress_gro`] for a receive. The driver ([`PacketIo`]: io_uring in
//! `io::uring`, recvmmsg/sendmsg in `io::mmsg`, [`MemIo`] in memory) only carries the
//! [`Action`] out: it never looks inside a packet. A further stage (encryption, for a
//! WireGuard backend) goes between the route decision and the shaping, and changes no driver.
//!
//! [`egress_verdict`] and [`ingress_verdict`] are pure functions of the packet bytes, the route
//! table and a little per-worker state: what the unit tests, benches and fuzz targets call.
//! [`Pipeline::run`] is the worker loop: per batch one `wait` (which also submits the previous
//! batch's output), one route-table load, and then [`PacketIo::process`]. Buffers belong to
//! the driver and are rewritten in place (TTL, checksums, ICMP replies), so nothing is
//! allocated or copied per packet.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use super::counters::{Batch, DropReason, PeerTally, PeerTraffic, WorkerCounters};
use super::gso::{to_wire, Layout, Segments, Wire};
use super::icmp::{net_unreachable, RateLimiter, MAX_REPLY};
use super::route::{RouteTable, Routes};
use super::wire::ipv4::{decrement_ttl, Ipv4View, Malformed};
use super::wire::vnet::{VnetHdr, VNET_HDR_LEN};

/// Where a packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the TUN device: a local packet for the overlay.
    Tun,
    /// Received on the UDP socket from this address.
    Udp(SocketAddrV4),
}

/// The fate of one packet, as decided by the verdict functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Egress: send `buf[..len]` (TTL already decremented) to `peer`.
    Forward {
        peer: SocketAddrV4,
        len: usize,
    },
    /// Egress without a route: `buf[..len]` now holds an ICMP network-unreachable for TUN.
    Reply {
        len: usize,
    },
    /// Ingress: write `buf[..len]` (TTL already decremented) to TUN.
    Deliver {
        len: usize,
    },
    Drop(DropReason),
}

/// The whole send of one packet read from the TUN: where it goes and which datagrams leave.
/// The driver makes exactly these sends and decides nothing (but how many of a batch's sends
/// share one `sendmsg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub peer: SocketAddrV4,
    pub datagrams: Datagrams,
}

/// The datagrams of a [`Transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagrams {
    /// One datagram: the packet where it was read (behind the virtio-net header, with
    /// offloads), `len` bytes, its checksums complete. Consecutive ones to one peer may share
    /// a UDP GSO send ([`super::gso::GsoRun`]).
    One { len: usize },
    /// A super-packet cut into segments in the read's cut area, laid out as the driver asked
    /// ([`Layout`]): one datagram per segment, in [`Segments::sends`] GSO sends of
    /// [`Segments::segment_len`] bytes each.
    Cut(Segments),
}

/// What the driver must do with a packet's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it to a peer.
    Send(Transmit),
    /// Write the frame `buf[..len]` to the TUN device (behind a plain virtio-net header that
    /// the stage filled in, with offloads).
    WriteTun { len: usize, kind: TunWrite },
    /// Nothing: the buffer is free again.
    Drop,
}

/// Why a packet is written to TUN, so the driver can count it once it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunWrite {
    /// An inbound packet from a peer.
    Deliver,
    /// Our ICMP network-unreachable.
    Icmp,
}

/// Whether the worker loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// One read from the TUN, as a driver hands it to [`Stages::egress`].
#[derive(Debug)]
pub struct TunRead<'a> {
    /// The read (at least [`MIN_BUFFER`] bytes past the virtio-net header, room for an ICMP
    /// reply): with offloads the virtio-net header first, then the packet.
    pub buf: &'a mut [u8],
    /// Bytes the read returned.
    pub len: usize,
    /// With offloads (the TUN opened with `IFF_VNET_HDR`): where a super-packet's segments
    /// go, and how the driver wants them laid out (it gathers with `iovec`s, or sends one
    /// contiguous buffer). `None`: plain reads, no virtio-net header.
    pub cut: Option<(&'a mut [u8], Layout)>,
}

/// The I/O side of a worker: where packets come from and go to.
///
/// Implementations own the buffers. They count what only they can know in the worker's
/// [`WorkerCounters`]: packets actually sent or written (`egress`, `ingress`, `icmp_sent`) and I/O
/// failures (`TunError`, `SocketError`).
pub trait PacketIo {
    /// Submits the output queued by the previous [`PacketIo::process`] and blocks until at
    /// least one packet (or the stop signal) is ready.
    fn wait(&mut self) -> io::Result<()>;

    /// Hands every ready packet to `stages` in arrival order and carries out the [`Action`]
    /// it returns. Returns [`Flow::Stop`] once the stop signal has been seen.
    fn process(&mut self, stages: &mut Stages<'_>) -> io::Result<Flow>;
}

/// The smallest buffer a driver may hand to a stage past the virtio-net header: room for any
/// ICMP reply.
pub const MIN_BUFFER: usize = MAX_REPLY;

/// Answers unroutable packets with ICMP, rate-limited, from `tun_addr` (the address
/// the backend chooses as the replies' source).
#[derive(Debug, Clone)]
pub struct IcmpResponder {
    pub tun_addr: Ipv4Addr,
    pub limiter: RateLimiter,
    /// The clock, read only when a reply is due (a function so tests can fake it).
    pub clock: fn() -> Instant,
}

impl IcmpResponder {
    pub fn new(tun_addr: Ipv4Addr) -> Self {
        IcmpResponder {
            tun_addr,
            limiter: RateLimiter::default(),
            clock: Instant::now,
        }
    }
}

fn malformed(m: Malformed) -> DropReason {
    match m {
        Malformed::NotIpv4 { .. } => DropReason::NotIpv4,
        _ => DropReason::BadHeader,
    }
}

/// Decides what to do with `buf[..len]`, a packet read from TUN. May rewrite `buf`: the TTL
/// of a forwarded packet, or the whole buffer with an ICMP reply.
///
/// Order as in upstream's `tun_to_udp`: route lookup first (no route → ICMP network
/// unreachable), then the TTL (reaching 0 → silent drop).
pub fn egress_verdict(
    buf: &mut [u8],
    len: usize,
    table: &RouteTable,
    icmp: &mut IcmpResponder,
) -> Verdict {
    let Some(bytes) = buf.get(..len) else {
        return Verdict::Drop(DropReason::BadHeader);
    };
    let view = match Ipv4View::new_checked(bytes) {
        Ok(v) => v,
        Err(m) => return Verdict::Drop(malformed(m)),
    };
    let total = view.total_len();
    let Some(peer) = table.lookup(view.dst()) else {
        if !icmp.limiter.allow((icmp.clock)()) {
            return Verdict::Drop(DropReason::NoRoute);
        }
        let mut reply = [0u8; MAX_REPLY];
        let Some(n) = net_unreachable(&view, icmp.tun_addr, &mut reply) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        return match (buf.get_mut(..n), reply.get(..n)) {
            (Some(out), Some(msg)) => {
                out.copy_from_slice(msg);
                Verdict::Reply { len: n }
            }
            _ => Verdict::Drop(DropReason::NoRoute),
        };
    };
    if !decrement_ttl(buf) {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    Verdict::Forward { peer, len: total }
}

/// Decides what to do with `buf[..len]`, a datagram from `src`. May rewrite the TTL.
///
/// Unlike upstream, which writes whatever arrives to TUN, we accept only datagrams from a
/// current peer's public address, with a sane, checksummed inner header, and — in strict mode
/// — an inner source inside the subnet of a lease held by that same address.
pub fn ingress_verdict(
    buf: &mut [u8],
    len: usize,
    src: SocketAddrV4,
    table: &RouteTable,
    strict: bool,
) -> Verdict {
    if !table.is_peer(*src.ip()) {
        return Verdict::Drop(DropReason::UnknownPeer);
    }
    let Some(bytes) = buf.get(..len) else {
        return Verdict::Drop(DropReason::BadHeader);
    };
    let view = match Ipv4View::new_verified(bytes) {
        Ok(v) => v,
        Err(m) => return Verdict::Drop(malformed(m)),
    };
    if strict && table.lookup(view.src()).map(|peer| *peer.ip()) != Some(*src.ip()) {
        return Verdict::Drop(DropReason::Spoofed);
    }
    let total = view.total_len();
    if !decrement_ttl(buf) {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    Verdict::Deliver { len: total }
}

/// The stages of one batch: the route table loaded for it, and the worker's decision state.
/// Made by [`Pipeline::run_batch`]; drivers call its methods once per packet.
#[derive(Debug)]
pub struct Stages<'a> {
    table: &'a RouteTable,
    strict_source: bool,
    icmp: &'a mut IcmpResponder,
    stats: &'a WorkerCounters,
    tally: Option<&'a mut PeerTally>,
    /// Packets handed to the stages this batch (the wake-up's batch size).
    handled: usize,
}

impl Stages<'_> {
    /// Decides the fate of one TUN read: classify and route ([`egress_verdict`]), then shape
    /// the send ([`to_wire`]: a super-packet is cut, a partial checksum finished).
    pub fn egress(&mut self, read: TunRead<'_>) -> Action {
        self.handled += 1;
        let TunRead { buf, len, cut } = read;
        if cut.is_none() {
            // One packet per plain read; a read with offloads is counted once it is shaped.
            self.stats.tun_read(1);
        }
        let headroom = if cut.is_some() { VNET_HDR_LEN } else { 0 };
        let vnet = match cut {
            Some(_) => VnetHdr::parse(buf),
            None => Some(VnetHdr::default()),
        };
        let (Some(vnet), Some(pkt), Some(len)) = (
            vnet,
            buf.get_mut(headroom..),
            len.checked_sub(headroom).filter(|&n| n > 0),
        ) else {
            // Shorter than the virtio-net header.
            self.stats.drop_packet(DropReason::BadHeader);
            return Action::Drop;
        };
        match egress_verdict(pkt, len, self.table, self.icmp) {
            Verdict::Forward { peer, len } => {
                if let Some(tally) = self.tally.as_deref_mut() {
                    tally.tx(*peer.ip(), len);
                }
                let Some((scratch, layout)) = cut else {
                    return send(peer, Datagrams::One { len });
                };
                match to_wire(&vnet, pkt, len, scratch, layout) {
                    Ok(Wire::Whole { len }) => {
                        self.stats.tun_read(1);
                        send(peer, Datagrams::One { len })
                    }
                    Ok(Wire::Segmented(segs)) => {
                        self.stats.tun_read(segs.count);
                        send(peer, Datagrams::Cut(segs))
                    }
                    Err(e) => {
                        tracing::trace!(error = %e, ?vnet, "dropping an offloaded packet");
                        self.stats.drop_packet(DropReason::BadHeader);
                        Action::Drop
                    }
                }
            }
            Verdict::Reply { len } => {
                self.stats.drop_packet(DropReason::NoRoute);
                // The reply goes behind a plain virtio-net header (the read's may be a GSO one).
                if let Some(header) = buf.get_mut(..headroom) {
                    header.fill(0);
                }
                Action::WriteTun {
                    len: headroom + len,
                    kind: TunWrite::Icmp,
                }
            }
            Verdict::Drop(reason) => {
                self.stats.drop_packet(reason);
                Action::Drop
            }
            // The egress verdict never delivers.
            Verdict::Deliver { .. } => Action::Drop,
        }
    }

    /// Decides the fate of one datagram from `src`: verify it and its sender
    /// ([`ingress_verdict`]); delivered, it is written to the TUN as it is.
    pub fn ingress(&mut self, src: SocketAddrV4, buf: &mut [u8], len: usize) -> Action {
        self.handled += 1;
        match ingress_verdict(buf, len, src, self.table, self.strict_source) {
            Verdict::Deliver { len } => {
                if let Some(tally) = self.tally.as_deref_mut() {
                    tally.rx(*src.ip(), len);
                }
                Action::WriteTun {
                    len,
                    kind: TunWrite::Deliver,
                }
            }
            Verdict::Drop(reason) => {
                self.stats.drop_packet(reason);
                Action::Drop
            }
            // The ingress verdict only ever delivers or drops.
            Verdict::Forward { .. } | Verdict::Reply { .. } => Action::Drop,
        }
    }

    /// Decides the fate of each datagram of a UDP GRO receive: `buf[..len]` holds datagrams of
    /// `stride` bytes (the last may be shorter) when the kernel coalesced several, else one.
    /// The delivered ones are recorded in `delivered` as `(base + offset, len)`, for the
    /// driver to write coalesced at the end of its batch ([`super::gro::write_coalesced`]).
    pub fn ingress_gro(
        &mut self,
        src: SocketAddrV4,
        (buf, len, stride): (&mut [u8], usize, usize),
        base: usize,
        delivered: &mut Vec<(usize, usize)>,
    ) {
        let mut datagrams = 0;
        if len == 0 {
            // A zero-length datagram is one packet too: the verdict counts its drop (unknown
            // peer, or a bad header from a peer), so every drop has a reason.
            let _ = self.ingress(src, buf, 0);
            datagrams = 1;
        }
        let stride = if stride == 0 { len } else { stride };
        let mut off = 0;
        while off < len {
            let n = stride.min(len - off);
            let Some(datagram) = buf.get_mut(off..) else {
                break;
            };
            if let Action::WriteTun { len, .. } = self.ingress(src, datagram, n) {
                delivered.push((base + off, len));
            }
            off += n;
            datagrams += 1;
        }
        self.stats.batch_size(Batch::UdpReceive, datagrams);
    }

    /// The worker's counters, for what only the driver can count.
    pub fn stats(&self) -> &WorkerCounters {
        self.stats
    }
}

fn send(peer: SocketAddrV4, datagrams: Datagrams) -> Action {
    Action::Send(Transmit { peer, datagrams })
}

/// The per-worker decision state and the loop that drives a [`PacketIo`].
#[derive(Debug)]
pub struct Pipeline {
    routes: Routes,
    strict_source: bool,
    icmp: IcmpResponder,
    stats: Arc<WorkerCounters>,
    /// `--metrics-per-peer`: where each batch's per-peer counts go, and the batch's tally.
    peers: Option<(Arc<PeerTraffic>, PeerTally)>,
}

impl Pipeline {
    pub fn new(
        routes: Routes,
        strict_source: bool,
        icmp: IcmpResponder,
        stats: Arc<WorkerCounters>,
    ) -> Self {
        Pipeline {
            routes,
            strict_source,
            icmp,
            stats,
            peers: None,
        }
    }

    /// Also counts traffic per peer, into `traffic` (`--metrics-per-peer`).
    pub fn with_peer_traffic(mut self, traffic: Option<Arc<PeerTraffic>>) -> Self {
        self.peers = traffic.map(|t| (t, PeerTally::default()));
        self
    }

    /// Runs until the I/O layer reports the stop signal or fails.
    ///
    /// # Errors
    /// Only errors that make the I/O layer unusable (a broken ring, a closed device);
    /// per-packet failures are counted, not returned.
    pub fn run<I: PacketIo>(&mut self, io: &mut I) -> io::Result<()> {
        loop {
            io.wait()?;
            if self.run_batch(io)? == Flow::Stop {
                return Ok(());
            }
        }
    }

    /// Processes whatever `io` has ready (one batch), with one route-table load.
    pub fn run_batch<I: PacketIo>(&mut self, io: &mut I) -> io::Result<Flow> {
        let table = self.routes.load();
        let mut stages = Stages {
            table: &table,
            strict_source: self.strict_source,
            icmp: &mut self.icmp,
            stats: &self.stats,
            tally: self.peers.as_mut().map(|(_, tally)| tally),
            handled: 0,
        };
        let flow = io.process(&mut stages)?;
        if stages.handled > 0 {
            self.stats.wakeup(stages.handled);
        }
        if let Some((traffic, tally)) = &mut self.peers {
            tally.flush(traffic);
        }
        Ok(flow)
    }
}

/// An in-memory [`PacketIo`] for tests and benches: replays queued packets (copying each into
/// its one buffer, as a read would), records (or just counts) what the pipeline sends, and
/// stops when the packets run out.
#[derive(Debug)]
pub struct MemIo {
    packets: Vec<(Origin, Vec<u8>)>,
    /// Next packet to hand out, and how many more passes over `packets` follow this one.
    cursor: usize,
    rounds_left: usize,
    batch: usize,
    buf: Box<[u8]>,
    record: bool,
    /// Datagrams sent, with their destination (when recording).
    pub sent: Vec<(SocketAddrV4, Vec<u8>)>,
    /// Packets written to TUN (when recording).
    pub written: Vec<(TunWrite, Vec<u8>)>,
    stats: Arc<WorkerCounters>,
}

impl MemIo {
    /// Replays `packets` once, `batch` per round, recording the output.
    pub fn new(packets: Vec<(Origin, Vec<u8>)>, batch: usize, stats: Arc<WorkerCounters>) -> Self {
        MemIo {
            packets,
            cursor: 0,
            rounds_left: 0,
            batch: batch.max(1),
            buf: vec![0u8; 65536].into_boxed_slice(),
            record: true,
            sent: Vec::new(),
            written: Vec::new(),
            stats,
        }
    }

    /// Replays `packets` `rounds` times without recording and without allocating (benches).
    pub fn replaying(
        packets: Vec<(Origin, Vec<u8>)>,
        rounds: usize,
        batch: usize,
        stats: Arc<WorkerCounters>,
    ) -> Self {
        let mut io = MemIo::new(packets, batch, stats);
        io.rounds_left = rounds.saturating_sub(1);
        io.record = false;
        io
    }

    fn exhausted(&self) -> bool {
        self.cursor >= self.packets.len() && self.rounds_left == 0
    }
}

impl PacketIo for MemIo {
    fn wait(&mut self) -> io::Result<()> {
        if self.cursor >= self.packets.len() && self.rounds_left > 0 {
            self.rounds_left -= 1;
            self.cursor = 0;
        }
        Ok(())
    }

    fn process(&mut self, stages: &mut Stages<'_>) -> io::Result<Flow> {
        for _ in 0..self.batch {
            let Some((origin, pkt)) = self.packets.get(self.cursor) else {
                break;
            };
            self.cursor += 1;
            let len = pkt.len().min(self.buf.len());
            self.buf[..len].copy_from_slice(&pkt[..len]);
            let action = match *origin {
                Origin::Tun => stages.egress(TunRead {
                    buf: &mut self.buf,
                    len,
                    cut: None,
                }),
                Origin::Udp(src) => stages.ingress(src, &mut self.buf, len),
            };
            match action {
                Action::Send(Transmit {
                    peer,
                    datagrams: Datagrams::One { len },
                }) => {
                    self.stats.egress(len);
                    if self.record {
                        self.sent.push((peer, self.buf[..len].to_vec()));
                    }
                }
                Action::WriteTun { len, kind } => {
                    match kind {
                        TunWrite::Deliver => self.stats.ingress(len),
                        TunWrite::Icmp => self.stats.icmp_sent(),
                    }
                    if self.record {
                        self.written.push((kind, self.buf[..len].to_vec()));
                    }
                }
                // Without a cut area (no offloads) nothing is cut.
                Action::Send(Transmit {
                    datagrams: Datagrams::Cut(_),
                    ..
                })
                | Action::Drop => {}
            }
        }
        Ok(if self.exhausted() {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::counters::CountersSnapshot;
    use crate::datapath::icmp::{ICMP_DEST_UNREACH, ICMP_NET_UNREACH};
    use crate::datapath::route::Route;
    use crate::datapath::wire::checksum::checksum;
    use crate::datapath::wire::ipv4::{build_ipv4, PROTO_ICMP, PROTO_UDP};
    use crate::datapath::wire::vnet::VnetHdr;

    const TUN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 5, 1, 0);
    const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const OTHER_PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn table() -> RouteTable {
        RouteTable::build(
            "10.5.0.0/16".parse().unwrap(),
            24,
            [
                Route {
                    subnet: "10.5.2.0/24".parse().unwrap(),
                    peer: SocketAddrV4::new(PEER, 8285),
                },
                Route {
                    subnet: "10.5.3.0/24".parse().unwrap(),
                    peer: SocketAddrV4::new(OTHER_PEER, 8285),
                },
            ],
        )
    }

    fn responder() -> IcmpResponder {
        IcmpResponder::new(TUN_ADDR)
    }

    fn buffer(pkt: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 2048];
        b[..pkt.len()].copy_from_slice(pkt);
        b
    }

    fn ttl_of(buf: &[u8]) -> u8 {
        buf[8]
    }

    #[test]
    fn egress_forwards_to_the_peer_with_ttl_decremented() {
        let pkt = build_ipv4(ip("10.5.1.7"), ip("10.5.2.9"), PROTO_UDP, 64, b"payload");
        let mut buf = buffer(&pkt);
        let v = egress_verdict(&mut buf, pkt.len(), &table(), &mut responder());
        assert_eq!(
            v,
            Verdict::Forward {
                peer: SocketAddrV4::new(PEER, 8285),
                len: pkt.len()
            }
        );
        assert_eq!(ttl_of(&buf), 63);
        assert!(
            Ipv4View::new_verified(&buf[..pkt.len()]).is_ok(),
            "checksum still verifies"
        );
        assert_eq!(
            &buf[20..pkt.len()],
            b"payload",
            "payload untouched: the wire format is the bare packet"
        );
    }

    #[test]
    fn egress_without_route_replies_with_icmp_net_unreachable() {
        let pkt = build_ipv4(
            ip("10.5.1.7"),
            ip("10.5.99.1"),
            PROTO_UDP,
            64,
            b"0123456789",
        );
        let mut buf = buffer(&pkt);
        let Verdict::Reply { len } =
            egress_verdict(&mut buf, pkt.len(), &table(), &mut responder())
        else {
            panic!("expected an ICMP reply");
        };
        let reply = Ipv4View::new_verified(&buf[..len]).unwrap();
        assert_eq!(
            (reply.src(), reply.dst(), reply.protocol()),
            (TUN_ADDR, ip("10.5.1.7"), PROTO_ICMP)
        );
        assert_eq!((buf[20], buf[21]), (ICMP_DEST_UNREACH, ICMP_NET_UNREACH));
        assert_eq!(checksum(&buf[20..len]), 0);
        assert_eq!(
            &buf[28..len],
            &pkt[..28],
            "the original packet, before any TTL change"
        );
    }

    #[test]
    fn egress_icmp_is_rate_limited() {
        let pkt = build_ipv4(ip("10.5.1.7"), ip("10.5.99.1"), PROTO_UDP, 64, b"x");
        let mut icmp = IcmpResponder {
            limiter: RateLimiter::new(1, 2),
            ..responder()
        };
        let verdicts: Vec<_> = (0..5)
            .map(|_| egress_verdict(&mut buffer(&pkt), pkt.len(), &table(), &mut icmp))
            .collect();
        assert!(matches!(verdicts[0], Verdict::Reply { .. }));
        assert!(matches!(verdicts[1], Verdict::Reply { .. }));
        assert_eq!(verdicts[2..], [Verdict::Drop(DropReason::NoRoute); 3]);
    }

    #[test]
    fn egress_icmp_errors_are_never_answered_but_pings_are() {
        let icmp = |ty: u8| {
            build_ipv4(
                ip("10.5.1.7"),
                ip("10.5.99.1"),
                PROTO_ICMP,
                64,
                &[ty, 0, 0, 0, 0, 0, 0, 0],
            )
        };
        let error = icmp(3);
        let v = egress_verdict(&mut buffer(&error), error.len(), &table(), &mut responder());
        assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
        let echo = icmp(8);
        let v = egress_verdict(&mut buffer(&echo), echo.len(), &table(), &mut responder());
        assert!(matches!(v, Verdict::Reply { .. }), "{v:?}");
    }

    #[test]
    fn egress_ttl_expiry_is_a_silent_drop() {
        let pkt = build_ipv4(ip("10.5.1.7"), ip("10.5.2.9"), PROTO_UDP, 1, b"x");
        let v = egress_verdict(&mut buffer(&pkt), pkt.len(), &table(), &mut responder());
        assert_eq!(v, Verdict::Drop(DropReason::TtlExpired));
    }

    #[test]
    fn egress_drops_garbage_and_ipv6() {
        let mut t = responder();
        assert_eq!(
            egress_verdict(&mut buffer(&[0x45; 10]), 10, &table(), &mut t),
            Verdict::Drop(DropReason::BadHeader)
        );
        assert_eq!(
            egress_verdict(&mut buffer(&[0x60; 40]), 40, &table(), &mut t),
            Verdict::Drop(DropReason::NotIpv4)
        );
        assert_eq!(
            egress_verdict(&mut buffer(&[]), 0, &table(), &mut t),
            Verdict::Drop(DropReason::BadHeader)
        );
        // A length beyond the buffer is refused, not a panic.
        assert_eq!(
            egress_verdict(&mut [0u8; 4], 100, &table(), &mut t),
            Verdict::Drop(DropReason::BadHeader)
        );
    }

    #[test]
    fn ingress_delivers_packets_from_the_owning_peer() {
        let pkt = build_ipv4(ip("10.5.2.9"), ip("10.5.1.7"), PROTO_UDP, 63, b"hi");
        let mut buf = buffer(&pkt);
        let v = ingress_verdict(
            &mut buf,
            pkt.len(),
            SocketAddrV4::new(PEER, 40000),
            &table(),
            true,
        );
        assert_eq!(v, Verdict::Deliver { len: pkt.len() });
        assert_eq!(ttl_of(&buf), 62);
        assert!(Ipv4View::new_verified(&buf[..pkt.len()]).is_ok());
    }

    #[test]
    fn ingress_from_an_unknown_address_is_dropped() {
        let pkt = build_ipv4(ip("10.5.2.9"), ip("10.5.1.7"), PROTO_UDP, 63, b"hi");
        let v = ingress_verdict(
            &mut buffer(&pkt),
            pkt.len(),
            SocketAddrV4::new(ip("198.51.100.1"), 8285),
            &table(),
            false,
        );
        assert_eq!(v, Verdict::Drop(DropReason::UnknownPeer));
    }

    #[test]
    fn ingress_spoofed_sources_are_dropped_only_in_strict_mode() {
        // Sent by PEER (owner of 10.5.2.0/24) but claiming a source in OTHER_PEER's subnet.
        let pkt = build_ipv4(ip("10.5.3.9"), ip("10.5.1.7"), PROTO_UDP, 63, b"hi");
        let from = SocketAddrV4::new(PEER, 8285);
        assert_eq!(
            ingress_verdict(&mut buffer(&pkt), pkt.len(), from, &table(), true),
            Verdict::Drop(DropReason::Spoofed)
        );
        assert!(matches!(
            ingress_verdict(&mut buffer(&pkt), pkt.len(), from, &table(), false),
            Verdict::Deliver { .. }
        ));
        // A source outside every lease (here: our own subnet) is spoofed too.
        let own = build_ipv4(ip("10.5.1.9"), ip("10.5.1.7"), PROTO_UDP, 63, b"hi");
        assert_eq!(
            ingress_verdict(&mut buffer(&own), own.len(), from, &table(), true),
            Verdict::Drop(DropReason::Spoofed)
        );
    }

    #[test]
    fn ingress_checks_header_and_ttl() {
        let from = SocketAddrV4::new(PEER, 8285);
        let mut bad_sum = build_ipv4(ip("10.5.2.9"), ip("10.5.1.7"), PROTO_UDP, 63, b"hi");
        bad_sum[10] ^= 1;
        assert_eq!(
            ingress_verdict(&mut buffer(&bad_sum), bad_sum.len(), from, &table(), true),
            Verdict::Drop(DropReason::BadHeader)
        );
        let pkt = build_ipv4(ip("10.5.2.9"), ip("10.5.1.7"), PROTO_UDP, 63, b"hi");
        assert_eq!(
            ingress_verdict(&mut buffer(&pkt), pkt.len() - 1, from, &table(), true),
            Verdict::Drop(DropReason::BadHeader)
        );
        let dying = build_ipv4(ip("10.5.2.9"), ip("10.5.1.7"), PROTO_UDP, 1, b"hi");
        assert_eq!(
            ingress_verdict(&mut buffer(&dying), dying.len(), from, &table(), true),
            Verdict::Drop(DropReason::TtlExpired)
        );
        assert_eq!(
            ingress_verdict(&mut buffer(&[0x60; 48]), 48, from, &table(), true),
            Verdict::Drop(DropReason::NotIpv4)
        );
    }

    #[test]
    fn verdicts_never_panic_on_arbitrary_bytes() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut icmp = responder();
        let t = table();
        for _ in 0..50_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 80) as usize;
            let mut buf = vec![0u8; 128];
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (state >> (i % 8 * 8)) as u8 ^ i as u8;
            }
            buf[0] = 0x40 | (buf[0] & 0x0f); // mostly "IPv4" so deeper paths run
            let _ = egress_verdict(&mut buf.clone(), len, &t, &mut icmp);
            let _ = ingress_verdict(&mut buf, len, SocketAddrV4::new(PEER, 1), &t, true);
        }
    }

    #[test]
    fn pipeline_loop_over_memory_counts_everything() {
        let stats = Arc::new(WorkerCounters::default());
        let routes = Routes::new(table());
        let mut pipeline = Pipeline::new(routes.clone(), true, responder(), stats.clone());
        let out = build_ipv4(ip("10.5.1.7"), ip("10.5.2.9"), PROTO_UDP, 64, b"out");
        let nowhere = build_ipv4(ip("10.5.1.7"), ip("10.5.77.1"), PROTO_UDP, 64, b"nowhere");
        let inbound = build_ipv4(ip("10.5.2.9"), ip("10.5.1.7"), PROTO_UDP, 64, b"in");
        let spoofed = build_ipv4(ip("10.5.3.9"), ip("10.5.1.7"), PROTO_UDP, 64, b"in");
        let packets = vec![
            (Origin::Tun, out.clone()),
            (Origin::Tun, nowhere),
            (Origin::Udp(SocketAddrV4::new(PEER, 8285)), inbound.clone()),
            (Origin::Udp(SocketAddrV4::new(PEER, 8285)), spoofed),
            (
                Origin::Udp(SocketAddrV4::new(ip("203.0.113.1"), 8285)),
                inbound,
            ),
            (Origin::Tun, vec![0x60; 40]),
        ];
        let mut io = MemIo::new(packets, 4, stats.clone());
        pipeline.run(&mut io).unwrap();

        assert_eq!(io.sent.len(), 1);
        assert_eq!(io.sent[0].0, SocketAddrV4::new(PEER, 8285));
        assert_eq!(&io.sent[0].1[20..], b"out");
        assert_eq!(io.written.len(), 2);
        assert_eq!(io.written[0].0, TunWrite::Icmp);
        assert_eq!(io.written[1].0, TunWrite::Deliver);

        let s = CountersSnapshot::sum([&*stats]);
        assert_eq!((s.egress_packets, s.egress_bytes), (1, out.len() as u64));
        assert_eq!((s.ingress_packets, s.icmp_sent, s.batches), (1, 1, 2));
        for (reason, n) in [
            (DropReason::NoRoute, 1),
            (DropReason::Spoofed, 1),
            (DropReason::UnknownPeer, 1),
            (DropReason::NotIpv4, 1),
        ] {
            assert_eq!(s.drops(reason), n, "{reason:?}");
        }
    }

    #[test]
    fn new_table_takes_effect_at_the_next_batch() {
        let stats = Arc::new(WorkerCounters::default());
        let routes = Routes::new(RouteTable::empty("10.5.0.0/16".parse().unwrap(), 24));
        let mut pipeline = Pipeline::new(routes.clone(), true, responder(), stats.clone());
        let pkt = build_ipv4(ip("10.5.1.7"), ip("10.5.2.9"), PROTO_UDP, 64, b"x");

        let mut io = MemIo::new(vec![(Origin::Tun, pkt.clone())], 1, stats.clone());
        pipeline.run_batch(&mut io).unwrap();
        assert!(io.sent.is_empty());

        routes.publish(table());
        let mut io = MemIo::new(vec![(Origin::Tun, pkt)], 1, stats.clone());
        pipeline.run_batch(&mut io).unwrap();
        assert_eq!(io.sent.len(), 1, "lease added → reachable at once");

        routes.publish(RouteTable::empty("10.5.0.0/16".parse().unwrap(), 24));
        let pkt = build_ipv4(ip("10.5.1.7"), ip("10.5.2.9"), PROTO_UDP, 64, b"x");
        let mut io = MemIo::new(vec![(Origin::Tun, pkt)], 1, stats);
        pipeline.run_batch(&mut io).unwrap();
        assert!(
            io.sent.is_empty(),
            "lease removed → route gone within one batch"
        );
        assert_eq!(
            io.written.len(),
            1,
            "…and the sender hears ICMP unreachable"
        );
    }

    /// Runs `f` with the stages of one batch over [`table`], counting into `stats`.
    fn with_stages<R>(stats: &WorkerCounters, f: impl FnOnce(&mut Stages<'_>) -> R) -> R {
        let table = table();
        let mut icmp = responder();
        let mut stages = Stages {
            table: &table,
            strict_source: true,
            icmp: &mut icmp,
            stats,
            tally: None,
            handled: 0,
        };
        f(&mut stages)
    }

    /// `pkt` behind a virtio-net header asking for `gso_size` segments (TCP), as a TUN read with
    /// offloads hands it over, in a buffer with room for a reply.
    fn read_with_vnet(pkt: &[u8], gso_size: u16) -> Vec<u8> {
        let vnet = VnetHdr {
            gso_type: crate::datapath::wire::vnet::GSO_TCPV4,
            hdr_len: 40,
            gso_size,
            ..VnetHdr::default()
        };
        let mut buf = vnet.encode().to_vec();
        buf.extend_from_slice(pkt);
        buf.resize(buf.len().max(VNET_HDR_LEN + MIN_BUFFER), 0);
        buf
    }

    /// The egress stage's action for a read of `len` bytes in `buf`, with offloads.
    fn egress_offloaded(
        stats: &WorkerCounters,
        (buf, len): (&mut [u8], usize),
        scratch: &mut [u8],
        layout: Layout,
    ) -> Action {
        with_stages(stats, |stages| {
            stages.egress(TunRead {
                buf,
                len,
                cut: Some((scratch, layout)),
            })
        })
    }

    #[test]
    fn a_super_packet_read_is_one_transmit_of_its_segments() {
        use crate::datapath::wire::tcp::{build_tcp4, FLAG_ACK};
        let stats = WorkerCounters::default();
        let pkt = build_tcp4(ip("10.5.1.7"), ip("10.5.2.9"), 1, FLAG_ACK, &[7u8; 4000]);
        let mut buf = read_with_vnet(&pkt, 1000);
        let mut scratch = vec![0u8; crate::datapath::gso::SCRATCH_LEN];
        let read = (&mut buf[..], VNET_HDR_LEN + pkt.len());
        let action = egress_offloaded(&stats, read, &mut scratch, Layout::Contiguous);
        let Action::Send(Transmit {
            peer,
            datagrams: Datagrams::Cut(segs),
        }) = action
        else {
            panic!("expected the segments' send, got {action:?}");
        };
        assert_eq!(peer, SocketAddrV4::new(PEER, 8285));
        assert_eq!((segs.count, segs.segment_len), (4, 1040));
        for seg in scratch[..segs.total].chunks(segs.segment_len) {
            let v = Ipv4View::new_verified(seg).unwrap();
            assert_eq!(v.ttl(), 63, "every segment carries the decremented TTL");
        }
        assert_eq!(stats.snapshot().batch_sizes(Batch::TunRead).sum(), 4);
    }

    #[test]
    fn an_icmp_reply_to_an_offloaded_read_goes_behind_a_plain_vnet_header() {
        let stats = WorkerCounters::default();
        let pkt = build_ipv4(ip("10.5.1.7"), ip("10.5.99.1"), PROTO_UDP, 64, b"lost");
        let mut buf = read_with_vnet(&pkt, 1000);
        let mut scratch = vec![0u8; crate::datapath::gso::SCRATCH_LEN];
        let read = (&mut buf[..], VNET_HDR_LEN + pkt.len());
        let action = egress_offloaded(&stats, read, &mut scratch, Layout::HeadersOnly);
        let Action::WriteTun {
            len,
            kind: TunWrite::Icmp,
        } = action
        else {
            panic!("expected an ICMP reply, got {action:?}");
        };
        assert_eq!(VnetHdr::parse(&buf), Some(VnetHdr::default()));
        let reply = Ipv4View::new_verified(&buf[VNET_HDR_LEN..len]).unwrap();
        assert_eq!(reply.protocol(), PROTO_ICMP);
        // A read shorter than the virtio-net header is a bad header, not a panic.
        let action = egress_offloaded(&stats, (&mut buf, 4), &mut scratch, Layout::HeadersOnly);
        assert_eq!(action, Action::Drop);
        assert_eq!(stats.snapshot().drops(DropReason::BadHeader), 1);
    }

    /// Each datagram of a GRO receive reaches the verdict once, an empty one included, and
    /// only the delivered ones are recorded (at their offset from `base`).
    #[test]
    fn every_datagram_of_a_receive_reaches_the_verdict_even_an_empty_one() {
        let stranger = SocketAddrV4::new(ip("198.51.100.1"), 8285);
        for (len, stride, datagrams) in [(0, 0, 1), (10, 0, 1), (25, 10, 3)] {
            let stats = WorkerCounters::default();
            let mut buf = [0u8; 64];
            let mut delivered = Vec::new();
            with_stages(&stats, |stages| {
                stages.ingress_gro(stranger, (&mut buf, len, stride), 0, &mut delivered)
            });
            assert!(delivered.is_empty());
            assert_eq!(
                stats.snapshot().drops(DropReason::UnknownPeer),
                datagrams,
                "len {len}, stride {stride}"
            );
        }
        let from = SocketAddrV4::new(PEER, 8285);
        let pkt = build_ipv4(ip("10.5.2.9"), ip("10.5.1.7"), PROTO_UDP, 63, &[1; 80]);
        let mut buf = [pkt.clone(), pkt.clone(), pkt[..60].to_vec()].concat();
        let stats = WorkerCounters::default();
        let mut delivered = Vec::new();
        let len = buf.len();
        with_stages(&stats, |stages| {
            stages.ingress_gro(from, (&mut buf, len, 100), 1000, &mut delivered)
        });
        assert_eq!(delivered, [(1000, 100), (1100, 100)]);
        assert_eq!(
            stats.snapshot().drops(DropReason::BadHeader),
            1,
            "the cut one"
        );
    }
}
