//! The io_uring driver: one [`Ring`] per worker, TUN reads and UDP receives always in flight,
//! completions reaped in batches, follow-up TUN writes and re-arms queued and submitted
//! together with the next wait — one `io_uring_enter` per batch. The ring, its slot pool and
//! the rule that a slot lent to the kernel cannot be touched live in `sys::uring`; this module
//! decides what each slot does next.
//!
//! # Sends
//! UDP sends are made at the end of each batch, in order, with plain `sendmsg` calls: the
//! packets bound for one peer that the batch's TUN reads produced go out in one UDP GSO send
//! per run (one inner packet per datagram on the wire, as upstream wants), gathered with
//! `iovec`s from the slots they were read into. One call per run beats one SQE per packet,
//! the kernel carries the run through its UDP/IP stack as one GSO packet, and ordering is
//! plain: a flow's packets leave in the order the TUN gave them (a send chained through the
//! ring could be overtaken by later ones). Should a GSO send fail with `EIO` or `EINVAL`, GSO
//! is turned off for the worker's socket and the run resent datagram by datagram
//! ([`GsoSender`]).
//!
//! # Slots
//! The first `egress_slots` slots circulate TUN read → (UDP send at the end of the batch |
//! TUN write of an ICMP reply) → TUN read; the rest circulate UDP receive → TUN write → UDP
//! receive. A packet therefore never moves between buffers.
//!
//! # Offloads
//! With the TUN opened with offloads (`IFF_VNET_HDR`), an egress slot is twice as long: the
//! TUN read lands in the first part (virtio-net header, then the packet); the egress stage
//! cuts a TCP or UDP super-packet into segments whose headers go to the second part
//! ([`Layout::HeadersOnly`]), and the segments leave in UDP GSO sends that gather each header
//! and its payload (still in the read) with `iovec`s — nothing but headers is copied. Receives ask for UDP GRO; the datagrams of a slot
//! are handed to the pipeline one by one and, at the end of the batch, the delivered ones of
//! all its receives are written to the TUN coalesced per flow, with a plain `writev` (one per
//! super-packet); only then do their slots go home.

use std::io::{self, IoSlice};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::udp_send::GsoSender;
use super::{write_delivered, WorkerFds};
use crate::datapath::counters::{Batch, DropReason, WorkerCounters};
use crate::datapath::gro::GRO_MAX_SEGMENTS;
use crate::datapath::gso::{GsoRun, Layout, Segments, GSO_MAX_SEGMENTS, SCRATCH_LEN};
use crate::datapath::pipeline::{
    Action, Datagrams, Flow, PacketIo, Stages, Transmit, TunRead, TunWrite, MIN_BUFFER,
};
use crate::datapath::wire::vnet::VNET_HDR_LEN;
use crate::sys::uring::{Completion, Cqe, Received, Ring, RingLayout, UringConfig, REAP_CHUNK};
use crate::sys::{errno_error, is_transient, sockopt};

/// How long a stopping worker waits for its cancelled reads and its TUN writes to end.
const FINISH_DEADLINE: Duration = Duration::from_secs(1);

/// One worker's io_uring I/O. Not `Send`: it is built on the worker thread and stays there.
pub struct UringIo {
    // Field order is drop order: the ring (which drains itself) goes before the fds it uses.
    ring: Ring,
    /// What the TUN write lent with slot `i` carries: its packet length and why it is written.
    tun_writes: Box<[(usize, TunWrite)]>,
    fatal: Option<io::Error>,
    busy_poll: Duration,
    /// Bytes of a slot's buffer used for reads and receives; with offloads a scratch area for
    /// segments follows.
    read_len: usize,
    /// With offloads, the virtio-net header's length, else 0.
    headroom: usize,
    /// Delivered packets of this batch's receives, for the coalescing TUN writes at its end:
    /// each `(slot * buf_len + offset, len)`, the slot one of `held`.
    delivered: Vec<(usize, usize)>,
    /// Ingress slots holding delivered packets, kept from going home until they are written.
    held: Vec<usize>,
    /// The coalescer's scratch space (see `write_delivered`).
    flows: Vec<(u64, u32)>,
    /// Egress packets of this batch waiting for `flush_sends`: slot, peer, packet length
    /// (the packet is at `headroom` in the slot's buffer).
    pending: Vec<(usize, SocketAddrV4, usize)>,
    gso: GsoSender,
    stats: Arc<WorkerCounters>,
    fds: WorkerFds,
}

impl UringIo {
    /// Builds the ring and pool, registers the files (and buffer rings) and arms every read
    /// and receive.
    ///
    /// # Errors
    /// Ring creation or file registration failed (out of memory, `RLIMIT_MEMLOCK` on old
    /// kernels, seccomp).
    pub fn new(
        fds: WorkerFds,
        cfg: UringConfig,
        offload: bool,
        stats: Arc<WorkerCounters>,
    ) -> io::Result<Self> {
        let headroom = if offload { VNET_HDR_LEN } else { 0 };
        let read_len = cfg.buf_size.max(MIN_BUFFER) + headroom;
        sockopt::set_udp_gro(&fds.rx, offload)?;
        let layout = RingLayout {
            egress_slots: cfg.egress_slots,
            ingress_slots: cfg.ingress_slots,
            read_len,
            // Behind the read area: the segment scratch (offloads).
            scratch_len: if offload { SCRATCH_LEN } else { 0 },
            multishot: cfg.multishot,
            recv_control: offload,
        };
        let ring = Ring::new(fds.tun.as_fd(), fds.rx.as_fd(), fds.stop.as_fd(), layout)?;
        let ingress = ring.slots() - ring.egress_slots();
        tracing::debug!(
            multishot_reads = ring.multishot_reads(),
            multishot_receives = ring.multishot_receives(),
            fixed_buffers = ring.fixed_buffers(),
            egress = ring.egress_slots(),
            ingress,
            "io_uring worker ready"
        );
        // Deliveries of one batch: at most a GRO receive's datagrams per ingress slot.
        let deliveries = if offload {
            ingress * GRO_MAX_SEGMENTS
        } else {
            0
        };
        Ok(UringIo {
            tun_writes: vec![(0, TunWrite::Deliver); ring.slots()].into_boxed_slice(),
            pending: Vec::with_capacity(ring.egress_slots()),
            ring,
            fatal: None,
            busy_poll: cfg.busy_poll,
            read_len,
            headroom,
            delivered: Vec::with_capacity(deliveries),
            held: Vec::with_capacity(if offload { ingress } else { 0 }),
            flows: Vec::with_capacity(deliveries),
            gso: GsoSender::default(),
            stats,
            fds,
        })
    }

    /// With `false` (`--udp-gso=false`), every datagram leaves in a send of its own, the
    /// segments of TCP super-packets too; on by default.
    pub fn with_gso(mut self, enabled: bool) -> Self {
        self.gso = GsoSender::new(enabled);
        self
    }

    /// Whether TUN reads and UDP receives are both multishot.
    pub fn multishot(&self) -> bool {
        self.ring.multishot_reads() && self.ring.multishot_receives()
    }

    /// Whether UDP sends still use GSO (see [`GsoSender`]).
    pub fn gso_enabled(&self) -> bool {
        self.gso.enabled()
    }

    /// For tests: the next GSO send fails with `EIO` (see [`GsoSender::fail_next_gso_send`]).
    pub fn fail_next_gso_send(&mut self) {
        self.gso.fail_next_gso_send();
    }

    /// Takes the ring down (it drains itself) and gives back the fds, still open: for a
    /// hand-over to the next image or to new workers.
    pub fn into_fds(self) -> WorkerFds {
        let UringIo { ring, fds, .. } = self;
        drop(ring);
        fds
    }

    /// The stop signal was seen: cancels every read and receive in flight and carries out
    /// whatever they completed first, until nothing is in flight (bounded by
    /// [`FINISH_DEADLINE`]). So a stop loses no packet the kernel handed us: each one that
    /// was read is sent or written, each one that was not stays queued in the TUN queue or
    /// the socket for the next reader (the new image after a re-exec).
    fn finish(&mut self, stages: &mut Stages<'_>) -> io::Result<()> {
        self.ring.cancel_reads()?;
        let deadline = Instant::now() + FINISH_DEADLINE;
        let mut chunk = [Cqe::default(); REAP_CHUNK];
        while self.ring.in_flight() > 0 && Instant::now() < deadline {
            self.ring.wait_bounded()?;
            loop {
                let n = self.ring.reap(&mut chunk);
                for &cqe in &chunk[..n] {
                    self.complete(cqe, stages)?;
                }
                if n < REAP_CHUNK {
                    break;
                }
            }
            self.flush_sends()?;
            self.flush_deliveries()?;
        }
        Ok(())
    }

    /// The socket sends leave from.
    fn tx(fds: &WorkerFds) -> &UdpSocket {
        fds.tx.as_ref().unwrap_or(&fds.rx)
    }

    /// Carries out the stages' decision for slot `i` (just handed back by the kernel).
    fn carry_out(&mut self, i: usize, action: Action) -> io::Result<()> {
        match action {
            Action::Drop => self.ring.lend_home(i),
            Action::Send(Transmit {
                peer,
                datagrams: Datagrams::One { len },
            }) => {
                // Sent with the rest of the batch (the slot stays ours till then).
                self.pending
                    .push((i, peer, len.min(self.read_len - self.headroom)));
                Ok(())
            }
            Action::Send(Transmit {
                peer,
                datagrams: Datagrams::Cut(segs),
            }) => {
                // Whatever this batch read before goes first: order within a flow.
                self.flush_sends()?;
                self.send_segments(i, peer, segs);
                self.ring.lend_home(i)
            }
            Action::WriteTun { len, kind } => {
                // An egress slot's frame starts where the read put it (an ICMP reply); an
                // ingress slot's where the receive put the datagram (only without offloads:
                // with them, deliveries go out coalesced in `flush_deliveries`).
                let start = if i < self.ring.egress_slots() {
                    0
                } else {
                    self.ring.recv_offset()
                };
                let len = len.min(self.read_len);
                if let Some(w) = self.tun_writes.get_mut(i) {
                    // A delivered frame is the bare packet (no offloads, no virtio-net header).
                    *w = (len, kind);
                }
                self.ring.write_tun(i, start..start + len)
            }
        }
    }

    /// Sends the segments of a super-packet (headers in slot `i`'s scratch area, payloads in
    /// its read area; slot `i` ours), one GSO send after the other: each segment's header
    /// and payload gathered with two `iovec`s, so the kernel copies them, not we.
    fn send_segments(&mut self, i: usize, peer: SocketAddrV4, segs: Segments) {
        let (h, read_len) = (self.headroom, self.read_len);
        let Some(buf) = self.ring.buf(i) else {
            return;
        };
        let (Some(headers), Some(pkt)) = (buf.get(read_len..), buf.get(h..read_len)) else {
            return;
        };
        let tx = Self::tx(&self.fds);
        for range in segs.sends(self.gso.max_segments()) {
            let count = segs.count_in(range.len()).min(GSO_MAX_SEGMENTS);
            let first = range.start / segs.segment_len.max(1);
            let mut iov = [IoSlice::new(&[]); 2 * GSO_MAX_SEGMENTS];
            for (j, pair) in iov.chunks_exact_mut(2).take(count).enumerate() {
                let (hr, pr) = segs.gather(first + j);
                pair[0] = IoSlice::new(headers.get(hr).unwrap_or_default());
                pair[1] = IoSlice::new(pkt.get(pr).unwrap_or_default());
            }
            let segment = (count > 1).then_some(segs.segment_len as u16);
            let iov = &iov[..2 * count];
            self.gso.send(tx, peer, iov, (2, segment), &self.stats);
        }
    }

    /// Sends the packets in `pending` (each in its own slot, at `headroom`), in order: every
    /// run of packets to one peer of one length (the last may be shorter), within the GSO
    /// limits, in one UDP GSO send; then hands the slots back (an error: the ring refused).
    fn flush_sends(&mut self) -> io::Result<()> {
        let tx = Self::tx(&self.fds);
        let mut k = 0;
        while let Some(&(_, peer, _)) = self.pending.get(k) {
            let mut iov = [IoSlice::new(&[]); GSO_MAX_SEGMENTS];
            let mut run = GsoRun::default();
            let max = self.gso.max_segments();
            // The first packet always starts a run, so each pass sends at least one; `admit`
            // stops at `max` ≤ GSO_MAX_SEGMENTS, the length of `iov`.
            while let Some(&(slot, p, len)) = self.pending.get(k + run.count) {
                let n = run.count;
                if !run.admit(p, len, max) {
                    break;
                }
                let h = self.headroom;
                let packet = self.ring.buf(slot).and_then(|b| b.get(h..h + len));
                iov[n] = IoSlice::new(packet.unwrap_or_default());
            }
            let segment = run.segment().map(|s| s as u16);
            let iov = &iov[..run.count];
            self.gso.send(tx, peer, iov, (1, segment), &self.stats);
            k += run.count;
        }
        let mut armed = Ok(());
        for j in 0..self.pending.len() {
            let slot = self.pending[j].0;
            armed = armed.and(self.ring.lend_home(slot));
        }
        self.pending.clear();
        armed
    }

    /// Hands the datagram(s) a receive put into slot `i` to the pipeline: with offloads split
    /// by the GRO stride and written back to the TUN coalesced (the slot then goes home),
    /// else one packet whose verdict `dispatch` carries out.
    fn on_receive(&mut self, i: usize, r: Received, stages: &mut Stages<'_>) -> io::Result<()> {
        let Some(src) = r.src.filter(|_| !r.truncated) else {
            self.stats.drop_packet(DropReason::BadHeader);
            return self.ring.lend_home(i);
        };
        let (off, read_len, offload) = (self.ring.recv_offset(), self.read_len, self.headroom > 0);
        let base = i * self.ring.buf_len() + off;
        let Some(buf) = self.ring.buf_mut(i).and_then(|b| b.get_mut(off..)) else {
            return self.ring.lend_home(i);
        };
        if !offload {
            self.stats.batch_size(Batch::UdpReceive, 1);
            let action = stages.ingress(src, buf, r.len.min(read_len));
            return self.carry_out(i, action);
        }
        let Some(buf) = buf.get_mut(..read_len) else {
            return self.ring.lend_home(i);
        };
        let len = r.len.min(buf.len());
        let before = self.delivered.len();
        stages.ingress_gro(src, (buf, len, r.stride), base, &mut self.delivered);
        if self.delivered.len() == before {
            return self.ring.lend_home(i);
        }
        // Written with the rest of the batch's deliveries (`flush_deliveries`), so that the
        // segments of a flow merge across receives, not only within one.
        self.held.push(i);
        Ok(())
    }

    /// Writes the packets this batch's receives delivered to the TUN, each flow's segments
    /// coalesced (one `writev` per super-packet, see `write_delivered`), then sends their
    /// slots home.
    ///
    /// Why at the end of the batch: a GRO receive holds one sender's GSO send, about half a
    /// 64 KiB super-packet, so merging within a receive gave TUN writes of 16 segments where
    /// the batch held 40 and more (the bench's batch-size table). Larger writes mean fewer
    /// packets through the receiving stack and fewer ACKs back through the tunnel.
    fn flush_deliveries(&mut self) -> io::Result<()> {
        if !self.delivered.is_empty() {
            let ring = &self.ring;
            let bl = ring.buf_len().max(1);
            let packet = |off: usize, len: usize| {
                let (slot, at) = (off / bl, off % bl);
                ring.buf(slot)
                    .and_then(|b| b.get(at..at + len))
                    .unwrap_or_default()
            };
            let tun = &self.fds.tun;
            write_delivered(
                tun,
                packet,
                &mut self.delivered,
                &mut self.flows,
                &self.stats,
            );
        }
        let mut armed = Ok(());
        for j in 0..self.held.len() {
            let slot = self.held[j];
            armed = armed.and(self.ring.lend_home(slot));
        }
        self.held.clear();
        armed
    }

    /// Accounts for a read or receive that completed with `res` ≤ 0: nothing for an empty
    /// read, a cancellation, a retry or a multishot request out of buffers; a drop for a
    /// transient error; a drop and the worker's end for anything else.
    fn failed(&mut self, reason: DropReason, res: i32) {
        match res {
            r if r >= 0 => {}
            r if [libc::ECANCELED, libc::EAGAIN, libc::EINTR, libc::ENOBUFS].contains(&-r) => {}
            r if is_transient(-r) => self.stats.drop_packet(reason),
            r => {
                self.stats.drop_packet(reason);
                self.ring.set_stopping();
                self.fatal.get_or_insert(errno_error(r));
            }
        }
    }

    fn complete(&mut self, cqe: Cqe, stages: &mut Stages<'_>) -> io::Result<()> {
        match self.ring.complete(cqe) {
            Completion::Nothing => Ok(()),
            // A multishot request that failed outright (no buffer taken).
            Completion::MultishotEnded { udp: false, res } => {
                self.failed(DropReason::TunError, res);
                Ok(())
            }
            Completion::MultishotEnded { udp: true, res } => {
                self.failed(DropReason::SocketError, res);
                Ok(())
            }
            Completion::TunRead { slot, res } if res > 0 => {
                let (read_len, offload) = (self.read_len, self.headroom > 0);
                let Some((read, cut)) = self
                    .ring
                    .buf_mut(slot)
                    .and_then(|b| b.split_at_mut_checked(read_len))
                else {
                    return self.ring.lend_home(slot);
                };
                let action = stages.egress(TunRead {
                    buf: read,
                    len: res as usize,
                    cut: offload.then_some((cut, Layout::HeadersOnly)),
                });
                self.carry_out(slot, action)
            }
            Completion::TunRead { slot, res } => {
                self.failed(DropReason::TunError, res);
                self.ring.lend_home(slot)
            }
            Completion::UdpRecv {
                slot,
                result: Ok(r),
            } => self.on_receive(slot, r, stages),
            Completion::UdpRecv {
                slot,
                result: Err(res),
            } => {
                self.failed(DropReason::SocketError, res);
                self.ring.lend_home(slot)
            }
            Completion::TunWritten { slot, res } => {
                let (len, kind) = self
                    .tun_writes
                    .get(slot)
                    .copied()
                    .unwrap_or((0, TunWrite::Deliver));
                if res < 0 {
                    self.stats.drop_packet(DropReason::TunError);
                } else {
                    match kind {
                        TunWrite::Deliver => self.stats.ingress(len),
                        TunWrite::Icmp => self.stats.icmp_sent(),
                    }
                }
                self.ring.lend_home(slot)
            }
        }
    }
}

impl PacketIo for UringIo {
    fn wait(&mut self) -> io::Result<()> {
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        self.ring.wait(self.busy_poll)
    }

    fn process(&mut self, stages: &mut Stages<'_>) -> io::Result<Flow> {
        let mut chunk = [Cqe::default(); REAP_CHUNK];
        loop {
            let n = self.ring.reap(&mut chunk);
            for &cqe in &chunk[..n] {
                self.complete(cqe, stages)?;
            }
            if n < REAP_CHUNK {
                break;
            }
        }
        self.flush_sends()?;
        self.flush_deliveries()?;
        self.ring.rearm()?;
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        if !self.ring.stopping() {
            return Ok(Flow::Continue);
        }
        self.finish(stages)?;
        match self.fatal.take() {
            Some(e) => Err(e),
            None => Ok(Flow::Stop),
        }
    }
}
