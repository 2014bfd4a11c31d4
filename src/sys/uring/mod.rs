//! io_uring for one worker: a [`Ring`] that owns the ring, a pool of packet buffers
//! ("slots") and, where the kernel has them, provided-buffer rings with one multishot TUN
//! read and one multishot UDP receive. It knows fds, slots and completions, never packets:
//! what to read, write or send is the driver's choice (`datapath::io::uring`).
//!
//! # Buffer ownership (the one hard invariant)
//! Slot `i` is a packet buffer plus the `msghdr`, `iovec` and `sockaddr_in` a receive of its
//! own points the kernel at. A slot is **lent to the kernel** from the moment a request naming
//! it (`user_data = i`) is pushed, or it is put in a provided-buffer ring, until the
//! completion that names it is reaped; while lent, no Rust reference to any of its memory
//! exists. `ops[i]` (ordinary memory the kernel never sees) records whether slot `i` is lent
//! and for what, and this module enforces it: every push takes a slot index and marks it lent,
//! every completion hands its slot back ([`Completion`]), and [`Ring::buf`] /
//! [`Ring::buf_mut`] return `None` for a lent slot. So the driver needs no `unsafe`.
//!
//! Slots have a home ([`Ring::lend_home`]): the first `egress_slots` are lent to TUN reads,
//! the rest to UDP receives; a slot goes home once the driver is done with it (possibly after
//! a TUN write through the ring, [`Ring::write_tun`]).
//!
//! # Multishot receives and provided buffers
//! Where the kernel has them (multishot TUN reads arrived in 6.7; multishot `recvmsg` and
//! provided-buffer rings are older), a side's slots are not lent one request each: they sit in
//! a **provided-buffer ring** (`Op::Provided`) and one multishot request per side (TUN read,
//! UDP receive) takes a buffer from it for every packet it completes. That is one wait-queue
//! entry per fd instead of one per slot, so an arriving packet wakes one request, not all of
//! them. A completion names its buffer; the slot is then the driver's, and goes back to the
//! buffer ring where it would otherwise be re-armed. A multishot receive writes a small header
//! (`io_uring_recvmsg_out`, source address, control messages) in front of the payload, so the
//! payload of an ingress slot starts at [`Ring::recv_offset`].
//!
//! The TUN and the receiving socket are **registered files**, so requests skip the fd-table
//! lookup and reference counting on every operation. The slots' read areas are **registered
//! buffers** (pinned once, not per request), used by the TUN reads of slots that have their
//! own request and by TUN writes through the ring. Multishot requests take provided buffers
//! instead.
//!
//! # Drop order
//! Closing a ring does not wait for the kernel to stop using lent memory. [`Ring`]'s `Drop`
//! therefore cancels every request in flight (the multishot ones too) and reaps until all have
//! ended (bounded by a deadline); buffers still in a provided-buffer ring can then no longer be
//! taken. Only then are the registrations dropped and the pool's allocations freed. If the
//! deadline passes, the pool and buffer rings are leaked instead: a little memory lost beats
//! the kernel writing into freed memory. The fds given to [`Ring::new`] must stay open as long
//! as the ring (the driver drops the ring first).

mod drain;
mod pool;
mod setup;

use std::io;
use std::mem::size_of;
use std::net::SocketAddrV4;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::addr_of_mut;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use self::pool::{register_buffers, Multishot, Pool, CONTROL_WORDS};
use self::setup::{build_ring, multishot_supported};
pub use self::setup::{multishot_available, probe, UringConfig};
use super::udp::{from_sockaddr, gro_segment_size, sockaddr_v4};

/// `user_data` of the poll on the stop eventfd.
const STOP_TAG: u64 = u64::MAX;
/// `user_data` of cancellations (their own completions carry nothing we need).
const CANCEL_TAG: u64 = u64::MAX - 1;
/// `user_data` of the drain's wake-up timeout.
const TIMEOUT_TAG: u64 = u64::MAX - 2;
/// `user_data` of the multishot TUN read and the multishot UDP receive.
const TUN_READS_TAG: u64 = u64::MAX - 3;
const UDP_RECVS_TAG: u64 = u64::MAX - 4;
/// Registered-file indexes (`register_files` order in [`Ring::new`]).
const FIXED_TUN: types::Fixed = types::Fixed(0);
const FIXED_RX: types::Fixed = types::Fixed(1);
/// Buffer groups of the two provided-buffer rings.
const EGRESS_GROUP: u16 = 0;
const INGRESS_GROUP: u16 = 1;
/// What a multishot `recvmsg` writes in front of the payload: `struct io_uring_recvmsg_out`
/// (four u32s), the source address (`msg_namelen` bytes), the control messages
/// (`msg_controllen` bytes).
const RECVMSG_OUT_LEN: usize = 16;
const CONTROL_LEN: usize = 16 * 8;
/// Where the payload of a multishot receive starts in its buffer.
pub const MULTI_PREFIX: usize = RECVMSG_OUT_LEN + size_of::<libc::sockaddr_in>() + CONTROL_LEN;
/// How long `Drop` waits for lent slots to come back.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// Completions copied out of the ring per [`Ring::reap`].
pub const REAP_CHUNK: usize = 128;

/// A completion as copied out of the ring: `user_data`, result, flags. Opaque: hand it to
/// [`Ring::complete`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Cqe(u64, i32, u32);

/// What a receive delivered, wherever the kernel wrote it (slot header or buffer prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The sender, if it is IPv4.
    pub src: Option<SocketAddrV4>,
    /// The datagram (or its address) did not fit.
    pub truncated: bool,
    /// UDP GRO segment size (0: one datagram).
    pub stride: usize,
    /// Payload bytes (at [`Ring::recv_offset`] in the slot's buffer).
    pub len: usize,
}

/// A completion, with the slot it hands back (the slot is the caller's until it is lent
/// again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// A TUN read into `slot` ended: bytes read, or a negative errno.
    TunRead { slot: usize, res: i32 },
    /// A UDP receive into `slot` ended: what arrived, or a negative errno.
    UdpRecv {
        slot: usize,
        result: Result<Received, i32>,
    },
    /// A TUN write from `slot` ended: bytes written, or a negative errno.
    TunWritten { slot: usize, res: i32 },
    /// The multishot TUN read (`udp: false`) or UDP receive ended without a buffer: `res` is
    /// a negative errno (or 0).
    MultishotEnded { udp: bool, res: i32 },
    /// Nothing for the caller (stop signal, cancellations, timeouts).
    Nothing,
}

/// How a [`Ring`]'s slots are laid out and used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Slots lent to TUN reads (`0..egress_slots`) and to UDP receives (the rest).
    pub egress_slots: usize,
    pub ingress_slots: usize,
    /// Bytes of a slot that reads and receives fill.
    pub read_len: usize,
    /// Bytes behind the read area for the caller's own use (at least [`MULTI_PREFIX`] are
    /// there anyway: a multishot receive shifts its payload back by that much).
    pub scratch_len: usize,
    /// Multishot TUN reads and UDP receives where the kernel has them.
    pub multishot: bool,
    /// Receives ask for control messages (the `UDP_GRO` segment size).
    pub recv_control: bool,
}

/// What slot `i` is lent to the kernel for (or `Idle`: ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Idle,
    /// In a provided-buffer ring, for the side's multishot request to take.
    Provided,
    TunRead,
    UdpRecv,
    /// Taken by the multishot receive (returned by `take_back`, never stored).
    UdpRecvMulti,
    TunWrite,
}

/// One worker's ring, slot pool and buffer rings. Not `Send`: it is built on the worker thread
/// and stays there.
pub struct Ring {
    // Field order is drop order: the ring goes before the pool and the buffer rings, and
    // `Drop` has drained it.
    ring: IoUring,
    pool: Pool,
    /// The multishot requests of the egress (TUN read) and ingress (UDP receive) sides, where
    /// in use.
    multi: [Option<Multishot>; 2],
    ops: Box<[Op]>,
    egress_slots: usize,
    in_flight: usize,
    stop_pending: bool,
    stopping: bool,
    timeout: types::Timespec,
    read_len: usize,
    recv_control: bool,
    /// Where a received datagram starts in an ingress slot: `MULTI_PREFIX` with the
    /// multishot receive, else 0.
    recv_off: usize,
    /// Slot `i`'s first `read_len + MULTI_PREFIX` bytes are registered buffer `i`.
    fixed_bufs: bool,
    /// The TUN fd, for the multishot read (see [`Ring::rearm`]).
    tun: RawFd,
}

impl Ring {
    /// Builds the ring and pool, registers the files (`tun`, `rx`) and buffer rings, polls
    /// `stop` and lends every slot to its home operation.
    ///
    /// # Errors
    /// Ring creation or file registration failed (out of memory, `RLIMIT_MEMLOCK` on old
    /// kernels, seccomp).
    pub fn new(
        tun: BorrowedFd<'_>,
        rx: BorrowedFd<'_>,
        stop: BorrowedFd<'_>,
        layout: RingLayout,
    ) -> io::Result<Self> {
        let egress = layout.egress_slots.clamp(1, 4096);
        let ingress = layout.ingress_slots.clamp(1, 4096);
        let n = egress + ingress;
        let read_len = layout.read_len;
        let buf_size = read_len + layout.scratch_len.max(MULTI_PREFIX);
        // Each slot has at most one SQE queued, plus one cancel each while draining, plus the
        // stop poll, the drain timeout and the two multishot requests and their cancels.
        let entries = u32::try_from((2 * n + 8).next_power_of_two()).unwrap_or(8192);
        let ring = build_ring(entries)?;
        ring.submitter()
            .register_files(&[tun.as_raw_fd(), rx.as_raw_fd()])?;
        // Saves the ring's own fd lookup on every enter (5.18); optional.
        let _ = ring.submitter().register_ring_fd();
        let pool = Pool::new(n, buf_size)?;
        let multi = if layout.multishot && multishot_supported(&ring) {
            let egress_side = Multishot::register(
                &ring,
                &pool,
                TUN_READS_TAG,
                EGRESS_GROUP,
                0..egress,
                read_len,
            );
            let ingress_side = Multishot::register(
                &ring,
                &pool,
                UDP_RECVS_TAG,
                INGRESS_GROUP,
                egress..n,
                MULTI_PREFIX + read_len,
            );
            [egress_side, ingress_side]
        } else {
            [None, None]
        };
        let fixed_bufs = register_buffers(&ring, &pool, read_len + MULTI_PREFIX);
        let mut r = Ring {
            ring,
            pool,
            fixed_bufs,
            recv_off: if multi[1].is_some() { MULTI_PREFIX } else { 0 },
            multi,
            ops: vec![Op::Idle; n].into_boxed_slice(),
            egress_slots: egress,
            in_flight: 0,
            stop_pending: false,
            stopping: false,
            timeout: types::Timespec::new().nsec(100_000_000),
            read_len,
            recv_control: layout.recv_control,
            tun: tun.as_raw_fd(),
        };
        let poll = opcode::PollAdd::new(types::Fd(stop.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(STOP_TAG);
        // SAFETY: a poll references no userspace memory.
        unsafe { r.push(&poll)? };
        r.stop_pending = true;
        for i in 0..n {
            r.lend_home(i)?;
        }
        r.rearm()?;
        Ok(r)
    }

    /// Whether the TUN reads are one multishot request.
    pub fn multishot_reads(&self) -> bool {
        self.multi[0].is_some()
    }

    /// Whether the UDP receives are one multishot request.
    pub fn multishot_receives(&self) -> bool {
        self.multi[1].is_some()
    }

    /// Whether the slots are registered buffers.
    pub fn fixed_buffers(&self) -> bool {
        self.fixed_bufs
    }

    /// Slots `0..egress_slots()` are TUN-read slots, the rest UDP-receive slots.
    pub fn egress_slots(&self) -> usize {
        self.egress_slots
    }

    pub fn slots(&self) -> usize {
        self.ops.len()
    }

    /// Where a received datagram starts in an ingress slot's buffer.
    pub fn recv_offset(&self) -> usize {
        self.recv_off
    }

    /// Length of every slot's buffer (read area, then at least the scratch asked for).
    pub fn buf_len(&self) -> usize {
        self.pool.buf_size
    }

    /// The stop signal was seen (or [`Ring::set_stopping`] was called): slots no longer go
    /// home and ended multishot requests are not re-armed.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    pub fn set_stopping(&mut self) {
        self.stopping = true;
    }

    /// Slot `i`'s whole buffer, or `None` while it is lent to the kernel (or out of range).
    pub fn buf(&self, i: usize) -> Option<&[u8]> {
        if self.ops.get(i) != Some(&Op::Idle) {
            return None;
        }
        // SAFETY: slot `i` exists and is Idle: the kernel neither reads nor writes it until
        // it is lent again, which takes `&mut self`, so not while this borrow lives; buffers
        // of distinct slots do not overlap.
        Some(unsafe { std::slice::from_raw_parts(self.pool.buf_ptr(i), self.pool.buf_size) })
    }

    /// Slot `i`'s whole buffer, or `None` while it is lent to the kernel (or out of range).
    pub fn buf_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        if self.ops.get(i) != Some(&Op::Idle) {
            return None;
        }
        // SAFETY: as in `buf`, and `&mut self` rules out any other reference into the pool.
        Some(unsafe { std::slice::from_raw_parts_mut(self.pool.buf_ptr(i), self.pool.buf_size) })
    }

    /// The multishot side slot `i` belongs to, if that side uses one.
    fn side_of(&mut self, i: usize) -> Option<&mut Multishot> {
        self.multi.iter_mut().flatten().find(|m| m.owns(i))
    }

    /// Arms each side's multishot request that has ended, while it has buffers to take from.
    /// (One that ran out of buffers ended with `ENOBUFS`; the packets wait in the fd.)
    ///
    /// # Errors
    /// The submission queue could not be flushed.
    pub fn rearm(&mut self) -> io::Result<()> {
        for side in 0..2 {
            let entry = match &self.multi[side] {
                Some(m) if !m.armed && m.available > 0 && !self.stopping => {
                    if m.tag == TUN_READS_TAG {
                        // By plain fd: on 6.18 a multishot read of the *registered* TUN fails
                        // with EBADFD (the kernel does not see it as pollable). The lookup is
                        // made once per arming, not per packet.
                        opcode::ReadMulti::new(types::Fd(self.tun), 0, m.group).build()
                    } else {
                        opcode::RecvMsgMulti::new(FIXED_RX, &raw const *m.template, m.group).build()
                    }
                    .user_data(m.tag)
                }
                _ => continue,
            };
            // SAFETY: the request takes only buffers of its group's ring, each marked
            // `Provided` until a completion hands it back; the `recvmsg` template is boxed
            // in the `Multishot`, which outlives the ring.
            unsafe { self.push(&entry)? };
            if let Some(m) = self.multi[side].as_mut() {
                m.armed = true;
            }
            self.in_flight += 1;
        }
        Ok(())
    }

    /// Queues `entry`, flushing the queue to the kernel first if it is full.
    ///
    /// # Safety
    /// Every buffer `entry` points at must stay valid and untouched by userspace until its
    /// CQE is reaped: a slot's memory, with `ops[slot]` set to a lent state by the caller.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: forwarded from this function's contract.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        self.ring.submit()?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full after submit"))
    }

    /// Lends slot `i` back to its home operation (TUN read or UDP receive, or the side's
    /// buffer ring), unless stopping. A slot that is lent already is left alone.
    ///
    /// # Errors
    /// The submission queue could not be flushed.
    pub fn lend_home(&mut self, i: usize) -> io::Result<()> {
        if self.stopping || self.ops.get(i) != Some(&Op::Idle) {
            return Ok(());
        }
        let addr = self.pool.buf_ptr(i);
        if let Some(m) = self.side_of(i) {
            let (len, bid) = (m.buf_len, (i - m.first) as u16);
            m.ring.provide(addr, len, bid);
            m.available += 1;
            // The slot is the kernel's again (without counting as in flight: only the
            // multishot request does, and it cannot end holding a buffer).
            self.ops[i] = Op::Provided;
            return Ok(());
        }
        let (entry, op) = if i < self.egress_slots {
            let (buf, len) = (self.pool.buf_ptr(i), self.read_len as u32);
            let read = if self.fixed_bufs {
                opcode::ReadFixed::new(FIXED_TUN, buf, len, i as u16).build()
            } else {
                opcode::Read::new(FIXED_TUN, buf, len).build()
            };
            (read.user_data(i as u64), Op::TunRead)
        } else {
            let s = self.pool.slot_ptr(i);
            // SAFETY: slot `i` is Idle (ours): its CQE was reaped or it was never lent, so the
            // kernel does not touch it while we fill in the receive header.
            unsafe {
                (*s).iov = libc::iovec {
                    iov_base: self.pool.buf_ptr(i).cast(),
                    iov_len: self.read_len,
                };
                (*s).msg.msg_iov = addr_of_mut!((*s).iov);
                (*s).msg.msg_iovlen = 1;
                (*s).msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                if self.recv_control {
                    (*s).msg.msg_control = addr_of_mut!((*s).control).cast();
                    (*s).msg.msg_controllen = size_of::<[u64; CONTROL_WORDS]>();
                } else {
                    (*s).msg.msg_control = std::ptr::null_mut();
                    (*s).msg.msg_controllen = 0;
                }
                (*s).msg.msg_flags = 0;
            }
            // `msg` is the first field of the repr(C) slot, so the slot pointer is the header
            // pointer.
            let recv = opcode::RecvMsg::new(FIXED_RX, s.cast::<libc::msghdr>());
            (recv.build().user_data(i as u64), Op::UdpRecv)
        };
        // SAFETY: the entry points only at slot `i`'s buffer and header, which is marked lent
        // right below and not touched again until its CQE.
        unsafe { self.push(&entry)? };
        self.lend(i, op);
        Ok(())
    }

    fn lend(&mut self, i: usize, op: Op) {
        if let Some(slot) = self.ops.get_mut(i) {
            *slot = op;
            self.in_flight += 1;
        }
    }

    /// Lends slot `i` to a TUN write of `range` of its buffer; its completion is
    /// [`Completion::TunWritten`].
    ///
    /// # Errors
    /// Slot `i` is lent already or `range` lies outside the part of its buffer a write may
    /// use (`InvalidInput`), or the submission queue could not be flushed.
    pub fn write_tun(&mut self, i: usize, range: Range<usize>) -> io::Result<()> {
        // Writes through a registered buffer must stay inside it.
        let limit = if self.fixed_bufs {
            self.read_len + MULTI_PREFIX
        } else {
            self.pool.buf_size
        };
        if self.ops.get(i) != Some(&Op::Idle) || range.start > range.end || range.end > limit {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let base = self.pool.buf_ptr(i).wrapping_add(range.start).cast_const();
        let n = range.len() as u32;
        let entry = if self.fixed_bufs {
            opcode::WriteFixed::new(FIXED_TUN, base, n, i as u16).build()
        } else {
            opcode::Write::new(FIXED_TUN, base, n).build()
        }
        .user_data(i as u64);
        // SAFETY: points only at slot `i`'s buffer (checked above), marked lent below until
        // its CQE.
        unsafe { self.push(&entry)? };
        self.lend(i, Op::TunWrite);
        Ok(())
    }

    /// Copies up to [`REAP_CHUNK`] completions out of the ring.
    pub fn reap(&mut self, out: &mut [Cqe; REAP_CHUNK]) -> usize {
        let mut n = 0;
        for (slot, cqe) in out.iter_mut().zip(self.ring.completion()) {
            *slot = Cqe(cqe.user_data(), cqe.result(), cqe.flags());
            n += 1;
        }
        n
    }

    /// Takes back the slot a completion names (if any) and says what ended.
    pub fn complete(&mut self, cqe: Cqe) -> Completion {
        let Cqe(tag, res, _) = cqe;
        let Some((i, op)) = self.take_back(cqe) else {
            return match tag {
                TUN_READS_TAG => Completion::MultishotEnded { udp: false, res },
                UDP_RECVS_TAG => Completion::MultishotEnded { udp: true, res },
                _ => Completion::Nothing,
            };
        };
        match op {
            Op::Idle | Op::Provided => Completion::Nothing,
            Op::TunRead => Completion::TunRead { slot: i, res },
            Op::TunWrite => Completion::TunWritten { slot: i, res },
            Op::UdpRecv | Op::UdpRecvMulti if res < 0 => Completion::UdpRecv {
                slot: i,
                result: Err(res),
            },
            Op::UdpRecv => Completion::UdpRecv {
                slot: i,
                result: Ok(self.slot_received(i, res as usize)),
            },
            Op::UdpRecvMulti => Completion::UdpRecv {
                slot: i,
                result: Ok(self.multi_received(i, res as usize)),
            },
        }
    }

    /// Takes back slot `tag` (or the buffer a multishot completion names) from the kernel;
    /// returns its operation, or `None` for the stop poll, cancellations, timeouts, multishot
    /// completions without a buffer and anything unknown.
    fn take_back(&mut self, Cqe(tag, res, flags): Cqe) -> Option<(usize, Op)> {
        match tag {
            STOP_TAG => {
                self.stop_pending = false;
                if res != -libc::ECANCELED {
                    self.stopping = true;
                }
                None
            }
            CANCEL_TAG | TIMEOUT_TAG => None,
            TUN_READS_TAG | UDP_RECVS_TAG => {
                let side = usize::from(tag == UDP_RECVS_TAG);
                let m = self.multi[side].as_mut()?;
                if !cqueue::more(flags) && m.armed {
                    m.armed = false;
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
                let i = m.first + usize::from(cqueue::buffer_select(flags)?);
                if !m.owns(i) || self.ops.get(i) != Some(&Op::Provided) {
                    return None;
                }
                m.available = m.available.saturating_sub(1);
                self.ops[i] = Op::Idle;
                Some((
                    i,
                    if side == 0 {
                        Op::TunRead
                    } else {
                        Op::UdpRecvMulti
                    },
                ))
            }
            _ => {
                let i = usize::try_from(tag).ok()?;
                let op = self.ops.get_mut(i)?;
                if matches!(*op, Op::Idle | Op::Provided) {
                    return None;
                }
                let taken = std::mem::replace(op, Op::Idle);
                self.in_flight = self.in_flight.saturating_sub(1);
                Some((i, taken))
            }
        }
    }

    /// What the kernel reported about the `res`-byte receive into slot `i` (own request).
    fn slot_received(&self, i: usize, res: usize) -> Received {
        let s = self.pool.slot_ptr(i);
        // SAFETY: slot `i` was just taken back (Idle): the kernel finished writing its
        // sockaddr, name length, flags and control area. Plain copies of C data.
        let (addr, namelen, flags, control, controllen) = unsafe {
            (
                (*s).addr,
                (*s).msg.msg_namelen,
                (*s).msg.msg_flags,
                (*s).control,
                (*s).msg.msg_controllen,
            )
        };
        let raw: [u8; CONTROL_LEN] = std::array::from_fn(|k| control[k / 8].to_ne_bytes()[k % 8]);
        Received {
            src: from_sockaddr(&addr, namelen as usize),
            truncated: flags & libc::MSG_TRUNC != 0,
            stride: gro_segment_size(&raw[..controllen.min(CONTROL_LEN)]),
            len: res,
        }
    }

    /// What a multishot receive of `res` bytes (header, name, control, payload) wrote into
    /// slot `i`, parsed by `io_uring`'s own `RecvMsgOut`.
    fn multi_received(&self, i: usize, res: usize) -> Received {
        let bad = Received {
            src: None,
            truncated: true,
            stride: 0,
            len: 0,
        };
        let (Some(m), Some(buf)) = (self.multi[1].as_ref(), self.buf(i)) else {
            return bad;
        };
        let used = res.min(m.buf_len as usize).min(buf.len());
        match types::RecvMsgOut::parse(&buf[..used], &m.template) {
            Ok(out) => Received {
                src: sockaddr_v4(out.name_data()),
                truncated: out.is_payload_truncated()
                    || out.is_control_data_truncated()
                    || out.flags() & libc::MSG_TRUNC as u32 != 0,
                stride: gro_segment_size(out.control_data()),
                len: out.payload_data().len(),
            },
            Err(()) => bad,
        }
    }

    /// Submits what is queued and blocks until a completion is there (after spinning for up
    /// to `busy_poll` first); returns at once when nothing is in flight.
    ///
    /// # Errors
    /// `io_uring_enter` failed other than by a signal or a full completion queue.
    pub fn wait(&mut self, busy_poll: Duration) -> io::Result<()> {
        if self.in_flight == 0 && !self.stop_pending {
            return Ok(());
        }
        if !busy_poll.is_zero() && self.poll_briefly(busy_poll)? {
            return Ok(());
        }
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Completions are waiting to be reaped (CQ overflow): go reap them.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits what is queued, then spins for up to `busy_poll` until a completion is
    /// there; whether one is. Completions of deferred task work are posted only by an enter,
    /// so one is made whenever the kernel flags task work (`setup_taskrun_flag`).
    fn poll_briefly(&mut self, busy_poll: Duration) -> io::Result<bool> {
        let until = Instant::now() + busy_poll;
        self.ring.submit()?;
        loop {
            if !self.ring.completion().is_empty() {
                return Ok(true);
            }
            let pending = {
                let sq = self.ring.submission();
                sq.taskrun() || sq.cq_overflow()
            };
            if pending {
                self.ring.submit()?;
                continue;
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }

    /// Requests still in flight (reads, receives, writes; a multishot request counts once).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::eventfd::EventFd;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    /// A ring whose "TUN" is an eventfd that never becomes readable, so the TUN-read slots
    /// stay lent; `None` where io_uring is unusable here.
    fn ring(multishot: bool) -> Option<(Ring, UdpSocket, EventFd, EventFd)> {
        if let Err(why) = probe() {
            eprintln!("SKIP: io_uring unusable: {why}");
            return None;
        }
        let (tun, stop) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let layout = RingLayout {
            egress_slots: 2,
            ingress_slots: 2,
            read_len: 2048,
            scratch_len: 0,
            multishot,
            recv_control: false,
        };
        let ring = Ring::new(tun.as_fd(), rx.as_fd(), stop.as_fd(), layout).unwrap();
        Some((ring, rx, tun, stop))
    }

    /// Waits for and completes everything until a UDP receive hands its slot back.
    fn next_receive(ring: &mut Ring) -> (usize, Received) {
        let mut chunk = [Cqe::default(); REAP_CHUNK];
        loop {
            ring.wait(Duration::ZERO).unwrap();
            let n = ring.reap(&mut chunk);
            for &cqe in &chunk[..n] {
                if let Completion::UdpRecv {
                    slot,
                    result: Ok(r),
                } = ring.complete(cqe)
                {
                    return (slot, r);
                }
            }
        }
    }

    #[test]
    fn a_lent_slot_cannot_be_borrowed_until_its_completion_hands_it_back() {
        for multishot in [false, true] {
            let Some((mut ring, rx, _tun, _stop)) = ring(multishot) else {
                return;
            };
            for i in 0..ring.slots() {
                assert!(ring.buf(i).is_none(), "slot {i} is lent");
                assert!(ring.buf_mut(i).is_none(), "slot {i} is lent");
            }
            assert!(ring.buf(ring.slots()).is_none(), "out of range");
            assert_eq!(
                ring.write_tun(0, 0..10).map_err(|e| e.kind()),
                Err(io::ErrorKind::InvalidInput),
                "a lent slot cannot be lent twice"
            );

            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            tx.send_to(b"hello ring", rx.local_addr().unwrap()).unwrap();
            let (slot, r) = next_receive(&mut ring);
            assert!(slot >= ring.egress_slots(), "received into an ingress slot");
            assert_eq!(r.len, 10);
            assert_eq!(r.src.map(std::net::SocketAddr::V4), tx.local_addr().ok());
            let off = ring.recv_offset();
            let buf = ring.buf_mut(slot).expect("handed back");
            assert_eq!(&buf[off..off + 10], b"hello ring");
            assert!(
                ring.write_tun(slot, 0..ring.buf_len() + 1).is_err(),
                "outside the buffer"
            );

            ring.lend_home(slot).unwrap();
            assert!(ring.buf(slot).is_none(), "lent again");
        }
    }
}
