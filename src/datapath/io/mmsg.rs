//! The fallback driver for hosts where io_uring is unusable (`kernel.io_uring_disabled`,
//! seccomp in a container, old kernels): `poll` on the TUN queue, the socket and the stop
//! signal; then up to [`BATCH`] non-blocking TUN reads and one `recvmmsg` (quinn-udp) per
//! round, each packet's [`Action`] carried out as soon as the stages return it (quinn-udp
//! `sendmsg`, TUN writes); consecutive datagrams to one peer are copied into one GSO send that
//! leaves when the run ends or the round does.
//!
//! Buffers are two fixed pools (egress, ingress) of [`BATCH`] slots allocated once; packets are
//! rewritten in place. The same [`PacketIo`] contract as the io_uring path, so the same
//! pipeline runs on both.
//!
//! With offloads (`IFF_VNET_HDR`), TUN reads start with a virtio-net header and may be TCP or
//! UDP super-packets, which the egress stage cuts into one contiguous buffer
//! ([`Layout::Contiguous`]) that leaves in GSO sends; the socket receives with UDP GRO and the
//! delivered packets of a round are written back to the TUN coalesced.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

use super::{write_delivered, WorkerFds};
use crate::datapath::counters::{Batch, DropReason, WorkerCounters};
use crate::datapath::gso::{
    GsoRun, Layout, Segments, GSO_MAX_BYTES, GSO_MAX_SEGMENTS, SCRATCH_LEN,
};
use crate::datapath::pipeline::{
    Action, Datagrams, Flow, PacketIo, Stages, Transmit as Send, TunRead, TunWrite, MIN_BUFFER,
};
use crate::datapath::wire::vnet::VNET_HDR_LEN;
pub use crate::sys::poll::BATCH;
use crate::sys::poll::{poll_many, poll_writable};
use crate::sys::{is_transient, sockopt};

/// How long a send waits for socket buffer space before the datagram is dropped.
const SEND_WAIT_MS: i32 = 50;

/// A run of datagrams to one peer (see [`GsoRun`]) copied together for one GSO send.
struct GsoBuffer {
    buf: Box<[u8]>,
    run: GsoRun,
}

impl GsoBuffer {
    fn new() -> Self {
        GsoBuffer {
            buf: vec![0u8; GSO_MAX_BYTES].into_boxed_slice(),
            run: GsoRun::default(),
        }
    }

    /// Appends `contents` if it continues the run; `false` when the run must be sent first.
    fn push(&mut self, peer: SocketAddrV4, contents: &[u8], max_segments: usize) -> bool {
        let at = self.run.len;
        let Some(dst) = self.buf.get_mut(at..at + contents.len()) else {
            return false;
        };
        if !self.run.admit(peer, contents.len(), max_segments) {
            return false;
        }
        dst.copy_from_slice(contents);
        true
    }
}

/// One worker's readiness-based I/O.
pub struct MmsgIo {
    fds: WorkerFds,
    rx_state: UdpSocketState,
    tx_state: Option<UdpSocketState>,
    buf_size: usize,
    /// Packets per TUN-read round and per `recvmmsg` (1 ..= [`BATCH`]).
    batch: usize,
    egress: Box<[u8]>,
    ingress: Box<[u8]>,
    metas: [RecvMeta; BATCH],
    /// With UDP GSO (`UDP_SEGMENT`): consecutive equal-sized datagrams to one peer are copied
    /// here and leave in one send (the kernel builds one skb for the whole run). `None`: off.
    gso: Option<GsoBuffer>,
    /// Offloads on: the virtio-net header's length in front of every TUN read and write
    /// (else 0), the buffer super-packets are cut into, and the round's delivered packets
    /// (offsets into `ingress`) waiting to be written coalesced.
    headroom: usize,
    scratch: Box<[u8]>,
    delivered: Vec<(usize, usize)>,
    /// The coalescer's scratch space (see `write_delivered`).
    flows: Vec<(u64, u32)>,
    ready: [bool; 3],
    stats: Arc<WorkerCounters>,
}

impl MmsgIo {
    /// Makes the fds non-blocking and sets up the quinn-udp socket state. `batch` (clamped
    /// to 1 ..= [`BATCH`]) bounds the packets moved per round and per receive call; 1 is
    /// upstream's one-packet-per-syscall design.
    ///
    /// # Errors
    /// Socket options quinn-udp needs could not be set.
    pub fn new(
        fds: WorkerFds,
        buf_size: usize,
        batch: usize,
        gso: bool,
        offload: bool,
        stats: Arc<WorkerCounters>,
    ) -> io::Result<Self> {
        fds.tun.set_nonblocking(true)?;
        let rx_state = UdpSocketState::new((&fds.rx).into())?;
        // quinn-udp enables GRO opportunistically; we want it exactly when offloading.
        sockopt::set_udp_gro(&fds.rx, offload)?;
        let tx_state = match &fds.tx {
            Some(tx) => Some(UdpSocketState::new(tx.into())?),
            None => None,
        };
        let headroom = if offload { VNET_HDR_LEN } else { 0 };
        let buf_size = buf_size.max(MIN_BUFFER) + headroom;
        let batch = batch.clamp(1, BATCH);
        Ok(MmsgIo {
            fds,
            rx_state,
            tx_state,
            buf_size,
            batch,
            egress: vec![0u8; BATCH * buf_size].into_boxed_slice(),
            ingress: vec![0u8; BATCH * buf_size].into_boxed_slice(),
            metas: [RecvMeta::default(); BATCH],
            gso: gso.then(GsoBuffer::new),
            headroom,
            scratch: vec![0u8; if offload { SCRATCH_LEN } else { 0 }].into_boxed_slice(),
            delivered: Vec::with_capacity(if offload { batch * 64 } else { 0 }),
            flows: Vec::with_capacity(if offload { batch * 64 } else { 0 }),
            ready: [false; 3],
            stats,
        })
    }

    /// Gives back the fds, still open and blocking again (as fresh ones are): for a
    /// hand-over to the next image or to new workers. Nothing is lost: a round carries out
    /// everything it read before it returns, and a stop is seen before any read.
    pub fn into_fds(self) -> WorkerFds {
        if let Err(e) = self.fds.tun.set_nonblocking(false) {
            tracing::warn!("making the TUN queue blocking again: {e}");
        }
        self.fds
    }

    fn read_tun(&mut self, stages: &mut Stages<'_>) -> io::Result<()> {
        for k in 0..self.batch {
            let Some(buf) = self
                .egress
                .get_mut(k * self.buf_size..(k + 1) * self.buf_size)
            else {
                break;
            };
            match self.fds.tun.recv(buf) {
                Ok(0) => break,
                Ok(n) => {
                    let cut =
                        (self.headroom > 0).then_some((&mut self.scratch[..], Layout::Contiguous));
                    let action = stages.egress(TunRead { buf, len: n, cut });
                    self.carry_out(Pool::Egress(k), action);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => break,
                Err(e) => {
                    self.stats.drop_packet(DropReason::TunError);
                    if !e.raw_os_error().is_some_and(is_transient) {
                        return Err(e);
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    fn recv_udp(&mut self, stages: &mut Stages<'_>) -> io::Result<()> {
        let received = {
            let mut chunks = self.ingress.chunks_exact_mut(self.buf_size);
            let mut iovs: [IoSliceMut<'_>; BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            let batch = self.batch;
            self.rx_state.recv(
                (&self.fds.rx).into(),
                &mut iovs[..batch],
                &mut self.metas[..batch],
            )
        };
        let n = match received {
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                return Ok(())
            }
            Err(e) => {
                self.stats.drop_packet(DropReason::SocketError);
                return if e.raw_os_error().is_some_and(is_transient) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
        };
        for k in 0..n.min(BATCH) {
            let meta = self.metas[k];
            let src = match meta.addr {
                SocketAddr::V4(a) => Some(a),
                SocketAddr::V6(a) => a
                    .ip()
                    .to_ipv4_mapped()
                    .map(|ip| SocketAddrV4::new(ip, a.port())),
            };
            let base = k * self.buf_size;
            let Some(buf) = self.ingress.get_mut(base..base + self.buf_size) else {
                break;
            };
            match src {
                Some(src) if meta.len <= buf.len() && self.headroom > 0 => {
                    let datagrams = (buf, meta.len, meta.stride);
                    stages.ingress_gro(src, datagrams, base, &mut self.delivered);
                }
                Some(src) if meta.len <= buf.len() => {
                    self.stats.batch_size(Batch::UdpReceive, 1);
                    let action = stages.ingress(src, buf, meta.len);
                    self.carry_out(Pool::Ingress(k), action);
                }
                _ => self.stats.drop_packet(DropReason::BadHeader),
            }
        }
        if !self.delivered.is_empty() {
            let pool = &self.ingress;
            write_delivered(
                &self.fds.tun,
                |off, len| pool.get(off..off + len).unwrap_or_default(),
                &mut self.delivered,
                &mut self.flows,
                &self.stats,
            );
        }
        Ok(())
    }

    /// Carries out the stages' decision for the packet in slot `slot`.
    fn carry_out(&mut self, slot: Pool, action: Action) {
        let (pool, k) = match slot {
            Pool::Egress(k) => (&self.egress, k),
            Pool::Ingress(k) => (&self.ingress, k),
        };
        let Some(buf) = pool.get(k * self.buf_size..(k + 1) * self.buf_size) else {
            return;
        };
        let (sock, state) = sender(&self.fds, &self.rx_state, &self.tx_state);
        match action {
            Action::Drop => {}
            Action::Send(Send {
                peer,
                datagrams: Datagrams::One { len },
            }) => {
                let h = self.headroom;
                let Some(contents) = buf.get(h..h + len) else {
                    return;
                };
                if let Some(run) = self.gso.as_mut() {
                    let max = state.max_gso_segments();
                    if max > 1 {
                        if !run.push(peer, contents, max) {
                            send_run(sock, state, run, &self.stats);
                            run.push(peer, contents, max);
                        }
                        return;
                    }
                }
                self.stats
                    .sent(send(sock, state, peer, contents, None), 1, len);
            }
            Action::Send(Send {
                peer,
                datagrams: Datagrams::Cut(segs),
            }) => {
                // Whatever was gathered goes first, to keep the order.
                if let Some(run) = self.gso.as_mut() {
                    send_run(sock, state, run, &self.stats);
                }
                send_segments(sock, state, peer, &self.scratch, segs, &self.stats);
            }
            Action::WriteTun { len, kind } => {
                let Some(frame) = buf.get(..len) else {
                    return;
                };
                match self.fds.tun.send(frame) {
                    Ok(_) => match kind {
                        TunWrite::Deliver => self.stats.ingress(len),
                        TunWrite::Icmp => self.stats.icmp_sent(),
                    },
                    Err(_) => self.stats.drop_packet(DropReason::TunError),
                }
            }
        }
    }

    /// Sends the round's last GSO run.
    fn flush(&mut self) {
        let (sock, state) = sender(&self.fds, &self.rx_state, &self.tx_state);
        if let Some(run) = self.gso.as_mut() {
            send_run(sock, state, run, &self.stats);
        }
    }
}

/// The socket sends leave from, and its quinn-udp state.
fn sender<'a>(
    fds: &'a WorkerFds,
    rx_state: &'a UdpSocketState,
    tx_state: &'a Option<UdpSocketState>,
) -> (&'a UdpSocket, &'a UdpSocketState) {
    match (&fds.tx, tx_state) {
        (Some(tx), Some(state)) => (tx, state),
        _ => (&fds.rx, rx_state),
    }
}

/// A slot of one of the two buffer pools.
#[derive(Debug, Clone, Copy)]
enum Pool {
    Egress(usize),
    Ingress(usize),
}

/// Sends the segments of one super-packet from `scratch`, in as few GSO sends as the limits
/// allow.
fn send_segments(
    sock: &UdpSocket,
    state: &UdpSocketState,
    peer: SocketAddrV4,
    scratch: &[u8],
    segs: Segments,
    stats: &WorkerCounters,
) {
    let max = state.max_gso_segments().min(GSO_MAX_SEGMENTS);
    for range in segs.sends(max) {
        let count = segs.count_in(range.len());
        let Some(contents) = scratch.get(range) else {
            continue;
        };
        let segment = (count > 1).then_some(segs.segment_len);
        stats.sent(
            send(sock, state, peer, contents, segment),
            count,
            contents.len(),
        );
    }
}

/// Sends the gathered run (one GSO send, or a plain one for a single datagram) and empties it.
fn send_run(sock: &UdpSocket, state: &UdpSocketState, gso: &mut GsoBuffer, stats: &WorkerCounters) {
    let run = std::mem::take(&mut gso.run);
    let (Some(peer), Some(contents)) = (run.peer(), gso.buf.get(..run.len)) else {
        return;
    };
    if run.count > 0 {
        let ok = send(sock, state, peer, contents, run.segment());
        stats.sent(ok, run.count, run.len);
    }
}

/// Sends one datagram, or with `segment` a GSO run of datagrams of that size; waits briefly
/// for buffer space once if the socket is full.
fn send(
    sock: &UdpSocket,
    state: &UdpSocketState,
    peer: SocketAddrV4,
    contents: &[u8],
    segment: Option<usize>,
) -> bool {
    let transmit = Transmit {
        destination: peer.into(),
        ecn: None,
        contents,
        segment_size: segment,
        src_ip: None,
    };
    for attempt in 0..2 {
        match state.try_send(sock.into(), &transmit) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && attempt == 0 => {
                if !poll_writable(sock.as_fd(), SEND_WAIT_MS).unwrap_or(false) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

impl PacketIo for MmsgIo {
    fn wait(&mut self) -> io::Result<()> {
        let fds = [
            self.fds.tun.as_fd(),
            self.fds.rx.as_fd(),
            self.fds.stop.as_fd(),
        ];
        self.ready = poll_many(fds, -1)?;
        Ok(())
    }

    fn process(&mut self, stages: &mut Stages<'_>) -> io::Result<Flow> {
        let [tun, udp, stop] = std::mem::take(&mut self.ready);
        if stop {
            return Ok(Flow::Stop);
        }
        let mut result = Ok(());
        if tun {
            result = self.read_tun(stages);
        }
        if udp && result.is_ok() {
            result = self.recv_udp(stages);
        }
        self.flush();
        result.map(|()| Flow::Continue)
    }
}
