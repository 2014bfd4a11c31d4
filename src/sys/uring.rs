//! io_uring worker I/O: one ring per worker, many TUN reads and UDP receives in flight,
//! completions reaped in batches, every follow-up operation (send, write, re-arm) queued and
//! submitted together with the next wait — one `io_uring_enter` per batch.
//!
//! # Buffer ownership (the one hard invariant)
//! The worker owns a [`Pool`] of `n` slots. Slot `i` is a packet buffer plus the `msghdr`,
//! `iovec` and `sockaddr_in` that `sendmsg`/`recvmsg` point the kernel at. A slot is **lent to
//! the kernel** from the moment an SQE naming it (`user_data = i`) is pushed until its CQE is
//! reaped; while lent, userspace never creates a reference to any of its memory. `ops[i]`
//! (ordinary Rust memory the kernel never sees) records whether slot `i` is lent and for what.
//!
//! Slots have a home: the first `egress_slots` slots circulate TUN read → (UDP send | TUN
//! write of an ICMP reply) → TUN read; the rest circulate UDP receive → TUN write → UDP
//! receive. A packet therefore never moves between buffers.
//!
//! # Offloads
//! With the TUN opened with offloads (`sys::offload`), an egress slot is twice as long: the
//! TUN read lands in the first part (virtio-net header, then the packet), a TCP super-packet
//! is cut into segments in the second, and those leave in UDP GSO sends from the same slot,
//! one after the other (`Op::UdpGso`). Receives ask for UDP GRO; the datagrams of a slot are
//! handed to the pipeline one by one and the delivered ones written to the TUN coalesced,
//! with a plain `writev` (one per super-packet), before the slot is armed again.
//!
//! # Drop order
//! Closing a ring does not wait for the kernel to stop using lent memory. [`UringIo`]'s `Drop`
//! therefore cancels every lent slot and reaps until all have come back (bounded by a deadline);
//! only then are the pool's allocations freed. If the deadline passes, the pool is leaked
//! instead: a little memory lost beats the kernel writing into freed memory.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::ptr::{addr_of_mut, NonNull};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::offload::{
    egress_wire, split_datagrams, write_delivered, GRO_MAX_SEGMENTS, GSO_MAX_SEGMENTS, SCRATCH_LEN,
};
use super::{errno_error, is_transient, sockopt, WorkerFds};
use crate::datapath::offload::{Segments, Wire, VNET_HDR_LEN};
use crate::datapath::pipeline::{Action, Flow, Origin, PacketIo, TunWrite, MIN_BUFFER};
use crate::datapath::stats::{DropReason, WorkerStats};

/// `user_data` of the poll on the stop eventfd.
const STOP_TAG: u64 = u64::MAX;
/// `user_data` of cancellations (their own completions carry nothing we need).
const CANCEL_TAG: u64 = u64::MAX - 1;
/// `user_data` of the drain's wake-up timeout.
const TIMEOUT_TAG: u64 = u64::MAX - 2;
/// How long `Drop` waits for lent slots to come back.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// CQEs copied out of the ring per pass.
const REAP_CHUNK: usize = 128;

/// Opcodes the worker uses; all exist since Linux 5.6.
const REQUIRED_OPS: [(&str, u8); 7] = [
    ("READ", opcode::Read::CODE),
    ("WRITE", opcode::Write::CODE),
    ("SENDMSG", opcode::SendMsg::CODE),
    ("RECVMSG", opcode::RecvMsg::CODE),
    ("POLL_ADD", opcode::PollAdd::CODE),
    ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ("TIMEOUT", opcode::Timeout::CODE),
];

/// Checks that io_uring is usable here: not disabled by sysctl, not refused by seccomp, new
/// enough for every opcode we use, and able to complete a request.
///
/// # Errors
/// A human-readable reason to fall back to the mmsg path.
pub fn probe() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err("kernel.io_uring_disabled = 2".into());
        }
    }
    let mut ring = IoUring::new(8).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => {
            format!("io_uring_setup: {e} (kernel.io_uring_disabled or a seccomp filter)")
        }
        Some(libc::ENOSYS) => format!("io_uring_setup: {e} (kernel without io_uring)"),
        _ => format!("io_uring_setup: {e}"),
    })?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e} (kernel older than 5.6)"))?;
    let missing: Vec<&str> = REQUIRED_OPS
        .iter()
        .filter(|(_, code)| !probe.is_supported(*code))
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(format!("io_uring lacks opcodes {}", missing.join(", ")));
    }
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|e| format!("io_uring push: {e}"))?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let done = ring
        .completion()
        .next()
        .map(|cqe| (cqe.user_data(), cqe.result()));
    match done {
        Some((7, res)) if res >= 0 => Ok(()),
        Some((_, res)) => Err(format!("io_uring NOP failed: {}", errno_error(res))),
        None => Err("io_uring NOP did not complete".into()),
    }
}

/// Sizes of one worker's ring and pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringConfig {
    /// TUN reads kept in flight (and buffers circulating on the egress side).
    pub egress_slots: usize,
    /// UDP receives kept in flight (and buffers circulating on the ingress side).
    pub ingress_slots: usize,
    /// Bytes per buffer; 64 KiB holds any UDP datagram, so nothing is ever truncated.
    pub buf_size: usize,
}

impl Default for UringConfig {
    /// 16 in flight per direction: every pending read is woken on each arrival (io_uring's
    /// poll-driven retry is not exclusive), so more in flight costs CPU at low rates; 16 still
    /// lets one `io_uring_enter` carry dozens of packets under load.
    fn default() -> Self {
        UringConfig {
            egress_slots: 16,
            ingress_slots: 16,
            buf_size: 65536,
        }
    }
}

/// The part of a slot the kernel reads and writes for `sendmsg`/`recvmsg`.
#[repr(C)]
struct KernelSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_in,
    /// Control messages: `UDP_SEGMENT` on a GSO send, `UDP_GRO` on a receive (u64s for the
    /// alignment `cmsghdr` needs).
    control: [u64; CONTROL_WORDS],
}

/// Room for a few control messages (only `UDP_GRO` is asked for).
const CONTROL_WORDS: usize = 16;
/// `UDP_SEGMENT` and `UDP_GRO` from `<linux/udp.h>`.
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// A `UDP_SEGMENT` control message as the kernel wants it (`CMSG_SPACE(sizeof(u16))` bytes).
#[repr(C)]
struct SegmentCmsg {
    hdr: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

impl SegmentCmsg {
    /// "Cut this send into datagrams of `size` bytes."
    fn new(size: u16) -> Self {
        // SAFETY: all-zero bytes are a valid `cmsghdr` (a plain C struct; on some libcs it
        // has private padding fields, so it cannot be written as a literal).
        let mut hdr: libc::cmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        hdr.cmsg_len = size_of::<libc::cmsghdr>() + size_of::<u16>();
        hdr.cmsg_level = libc::SOL_UDP;
        hdr.cmsg_type = UDP_SEGMENT;
        SegmentCmsg {
            hdr,
            size,
            _pad: [0; 6],
        }
    }
}

/// Memory shared with the kernel, held through raw pointers so that no Rust reference to a
/// lent slot ever exists. Allocated once; freed in `Drop` unless [`Pool::leak`] was called.
struct Pool {
    slots: NonNull<[KernelSlot]>,
    bufs: NonNull<[u8]>,
    buf_size: usize,
    leaked: bool,
}

impl Pool {
    fn new(n: usize, buf_size: usize) -> Self {
        let slots: Box<[KernelSlot]> = (0..n)
            .map(|_| {
                // SAFETY: msghdr, iovec and sockaddr_in are plain C structs for which all-zero
                // bytes are valid (null pointers, zero lengths).
                unsafe { MaybeUninit::<KernelSlot>::zeroed().assume_init() }
            })
            .collect();
        let bufs = vec![0u8; n * buf_size].into_boxed_slice();
        let pool = Pool {
            slots: NonNull::from(Box::leak(slots)),
            bufs: NonNull::from(Box::leak(bufs)),
            buf_size,
            leaked: false,
        };
        for i in 0..n {
            let s = pool.slot_ptr(i);
            // SAFETY: `s` points into the live slot allocation (i < n) and nothing has been
            // lent yet; the self-pointers stay valid because the allocation never moves.
            unsafe {
                (*s).msg.msg_name = addr_of_mut!((*s).addr).cast();
                (*s).msg.msg_iov = addr_of_mut!((*s).iov);
                (*s).msg.msg_iovlen = 1;
            }
        }
        pool
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Raw pointer to slot `i`'s kernel part (`i` < `len`, else dangling-but-unused).
    fn slot_ptr(&self, i: usize) -> *mut KernelSlot {
        self.slots.as_ptr().cast::<KernelSlot>().wrapping_add(i)
    }

    /// Raw pointer to the start of slot `i`'s buffer.
    fn buf_ptr(&self, i: usize) -> *mut u8 {
        self.bufs
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(i * self.buf_size)
    }

    /// Never free the allocations (the kernel may still hold them).
    fn leak(&mut self) {
        self.leaked = true;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: both pointers came from `Box::leak` in `new` and are freed once, here;
        // `UringIo::drop` has reaped every lent slot (or called `leak`) before this runs.
        unsafe {
            drop(Box::from_raw(self.slots.as_ptr()));
            drop(Box::from_raw(self.bufs.as_ptr()));
        }
    }
}

/// What slot `i` is lent to the kernel for (or `Idle`: ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Idle,
    TunRead,
    UdpRecv,
    UdpSend {
        len: usize,
    },
    /// Send number `send` of a super-packet's segments (see [`Segments::sends`]).
    UdpGso {
        segs: Segments,
        send: usize,
    },
    TunWrite {
        len: usize,
        kind: TunWrite,
    },
}

/// One worker's io_uring I/O. Not `Send`: it is built on the worker thread and stays there.
pub struct UringIo {
    // Field order is drop order: the ring goes before the pool, and `Drop` has drained both.
    ring: IoUring,
    pool: Pool,
    ops: Box<[Op]>,
    egress_slots: usize,
    in_flight: usize,
    stop_pending: bool,
    stopping: bool,
    fatal: Option<io::Error>,
    timeout: types::Timespec,
    /// Bytes of a slot's buffer used for reads and receives; with offloads a scratch area for
    /// segments follows (`pool.buf_size` = `read_len` + scratch).
    read_len: usize,
    /// With offloads, the virtio-net header's length, else 0.
    headroom: usize,
    /// Delivered packets of the receive being handled, for the coalescing TUN write.
    delivered: Vec<(usize, usize)>,
    stats: Arc<WorkerStats>,
    fds: WorkerFds,
}

impl UringIo {
    /// Builds the ring and pool and arms every read and receive.
    ///
    /// # Errors
    /// Ring creation failed (out of memory, `RLIMIT_MEMLOCK` on old kernels, seccomp).
    pub fn new(
        fds: WorkerFds,
        cfg: UringConfig,
        offload: bool,
        stats: Arc<WorkerStats>,
    ) -> io::Result<Self> {
        let egress = cfg.egress_slots.max(1);
        let n = egress + cfg.ingress_slots.max(1);
        let headroom = if offload { VNET_HDR_LEN } else { 0 };
        let read_len = cfg.buf_size.max(MIN_BUFFER) + headroom;
        let buf_size = read_len + if offload { SCRATCH_LEN } else { 0 };
        sockopt::set_udp_gro(&fds.rx, offload)?;
        // Each slot has at most one SQE queued, plus one cancel each while draining, plus the
        // stop poll and the drain timeout.
        let entries = u32::try_from((2 * n + 4).next_power_of_two()).unwrap_or(4096);
        let ring = build_ring(entries)?;
        let mut io = UringIo {
            ring,
            pool: Pool::new(n, buf_size),
            ops: vec![Op::Idle; n].into_boxed_slice(),
            egress_slots: egress,
            in_flight: 0,
            stop_pending: false,
            stopping: false,
            fatal: None,
            timeout: types::Timespec::new().nsec(100_000_000),
            read_len,
            headroom,
            delivered: Vec::with_capacity(if offload { 2 * GRO_MAX_SEGMENTS } else { 0 }),
            stats,
            fds,
        };
        let stop = opcode::PollAdd::new(types::Fd(io.fds.stop.raw()), libc::POLLIN as u32)
            .build()
            .user_data(STOP_TAG);
        // SAFETY: a poll references no userspace memory.
        unsafe { io.push(&stop)? };
        io.stop_pending = true;
        for i in 0..n {
            io.arm_home(i)?;
        }
        Ok(io)
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

    /// Lends slot `i` back to its home operation (TUN read or UDP receive), unless stopping.
    fn arm_home(&mut self, i: usize) -> io::Result<()> {
        if self.stopping || i >= self.pool.len() {
            return Ok(());
        }
        let (entry, op) = if i < self.egress_slots {
            let read = opcode::Read::new(
                types::Fd(self.fds.tun.raw()),
                self.pool.buf_ptr(i),
                self.read_len as u32,
            );
            (read.build().user_data(i as u64), Op::TunRead)
        } else {
            let s = self.pool.slot_ptr(i);
            // SAFETY: slot `i` is Idle (ours): its CQE was reaped or it was never lent, so the
            // kernel does not touch it while we fill in the receive header.
            unsafe {
                (*s).iov = libc::iovec {
                    iov_base: self.pool.buf_ptr(i).cast(),
                    iov_len: self.read_len,
                };
                (*s).msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                if self.headroom > 0 {
                    (*s).msg.msg_control = addr_of_mut!((*s).control).cast();
                    (*s).msg.msg_controllen = size_of::<[u64; CONTROL_WORDS]>();
                } else {
                    (*s).msg.msg_control = std::ptr::null_mut();
                    (*s).msg.msg_controllen = 0;
                }
                (*s).msg.msg_flags = 0;
            }
            // `msg` is the first field of the repr(C) slot, so the slot pointer is the header pointer.
            let recv =
                opcode::RecvMsg::new(types::Fd(self.fds.rx.as_raw_fd()), s.cast::<libc::msghdr>());
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

    /// Carries out the pipeline's decision for slot `i` (just handed back by the kernel).
    fn dispatch(&mut self, i: usize, action: Action) -> io::Result<()> {
        let h = self.headroom;
        match action {
            Action::Drop => self.arm_home(i),
            Action::SendUdp { peer, len } => {
                // SAFETY: slot `i` is Idle (its CQE was just reaped), so nothing else refers
                // to its buffer; the slice is dropped before the slot is lent again below.
                let (read, scratch) = unsafe {
                    std::slice::from_raw_parts_mut(self.pool.buf_ptr(i), self.pool.buf_size)
                }
                .split_at_mut(self.read_len.min(self.pool.buf_size));
                let wire = if h == 0 {
                    Wire::Whole { len }
                } else {
                    match egress_wire(read, len, scratch, &self.stats) {
                        Some(wire) => wire,
                        None => return self.arm_home(i),
                    }
                };
                let s = self.pool.slot_ptr(i);
                // SAFETY: as above; the address is filled in before the slot is lent.
                unsafe { (*s).addr = sockaddr(peer) };
                match wire {
                    Wire::Whole { len } => {
                        let len = len.min(self.read_len - h);
                        let base = self.pool.buf_ptr(i).wrapping_add(h);
                        self.send_from(i, base, len, None, Op::UdpSend { len })
                    }
                    Wire::Segmented(segs) if segs.sends(GSO_MAX_SEGMENTS).count() == 1 => {
                        self.send_segments(i, segs, 0)
                    }
                    Wire::Segmented(segs) => {
                        // Several sends (a 64 KiB super-packet plus its repeated headers
                        // exceeds one datagram): chained through the ring, the second would
                        // go out after sends queued meanwhile, reordering the flow. So what
                        // is queued goes first, then these sends, in order, right now.
                        self.ring.submit()?;
                        self.send_now(i, peer, segs);
                        self.arm_home(i)
                    }
                }
            }
            Action::WriteTun { len, kind } => {
                let len = len.min(self.read_len - h);
                if h > 0 {
                    // SAFETY: slot `i` is Idle; the packet goes behind a plain virtio-net
                    // header, written before the slot is lent.
                    unsafe { std::ptr::write_bytes(self.pool.buf_ptr(i), 0, h) };
                }
                let entry = opcode::Write::new(
                    types::Fd(self.fds.tun.raw()),
                    self.pool.buf_ptr(i).cast_const(),
                    (h + len) as u32,
                )
                .build()
                .user_data(i as u64);
                // SAFETY: points only at slot `i`'s buffer, marked lent below until its CQE.
                unsafe { self.push(&entry)? };
                self.lend(i, Op::TunWrite { len, kind });
                Ok(())
            }
        }
    }

    /// Lends slot `i` for a `sendmsg` of `len` bytes at `base` (inside slot `i`'s buffer) to
    /// the address already in the slot, as GSO segments of `segment` bytes if given.
    fn send_from(
        &mut self,
        i: usize,
        base: *mut u8,
        len: usize,
        segment: Option<u16>,
        op: Op,
    ) -> io::Result<()> {
        let s = self.pool.slot_ptr(i);
        let tx = self.fds.tx.as_ref().unwrap_or(&self.fds.rx).as_raw_fd();
        // SAFETY: slot `i` is Idle (ours) until `lend` below; `base..base + len` lies in its
        // buffer (callers take it from `buf_ptr(i)` within the slot's length), and the control
        // area is the slot's own, big enough and 8-aligned for one `SegmentCmsg`.
        unsafe {
            (*s).iov = libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            };
            (*s).msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            match segment {
                Some(size) => {
                    let cmsg = addr_of_mut!((*s).control).cast::<SegmentCmsg>();
                    cmsg.write(SegmentCmsg::new(size));
                    (*s).msg.msg_control = cmsg.cast();
                    (*s).msg.msg_controllen = size_of::<SegmentCmsg>();
                }
                None => {
                    (*s).msg.msg_control = std::ptr::null_mut();
                    (*s).msg.msg_controllen = 0;
                }
            }
            (*s).msg.msg_flags = 0;
        }
        let entry = opcode::SendMsg::new(types::Fd(tx), s.cast::<libc::msghdr>().cast_const())
            .build()
            .user_data(i as u64);
        // SAFETY: points only at slot `i`, marked lent below until its CQE.
        unsafe { self.push(&entry)? };
        self.lend(i, op);
        Ok(())
    }

    /// Sends number `send` of the GSO sends that carry `segs` (in slot `i`'s scratch area),
    /// or re-arms the slot when all have gone.
    fn send_segments(&mut self, i: usize, segs: Segments, send: usize) -> io::Result<()> {
        let Some(range) = segs.sends(GSO_MAX_SEGMENTS).nth(send) else {
            return self.arm_home(i);
        };
        let count = segs.count_in(range.len());
        let segment = (count > 1).then_some(segs.segment_len as u16);
        let base = self
            .pool
            .buf_ptr(i)
            .wrapping_add(self.read_len + range.start);
        self.send_from(i, base, range.len(), segment, Op::UdpGso { segs, send })
    }

    /// Sends every GSO send of `segs` (in slot `i`'s scratch area, slot `i` Idle) with plain
    /// `sendmsg` calls, in order.
    fn send_now(&mut self, i: usize, peer: SocketAddrV4, segs: Segments) {
        let tx = self.fds.tx.as_ref().unwrap_or(&self.fds.rx).as_raw_fd();
        let mut addr = sockaddr(peer);
        for range in segs.sends(GSO_MAX_SEGMENTS) {
            let count = segs.count_in(range.len());
            let mut iov = libc::iovec {
                iov_base: self
                    .pool
                    .buf_ptr(i)
                    .wrapping_add(self.read_len + range.start)
                    .cast(),
                iov_len: range.len(),
            };
            let mut cmsg = SegmentCmsg::new(segs.segment_len as u16);
            // SAFETY: all-zero bytes are a valid `msghdr` (null pointers, zero lengths).
            let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            msg.msg_name = addr_of_mut!(addr).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msg.msg_iov = addr_of_mut!(iov);
            msg.msg_iovlen = 1;
            if count > 1 {
                msg.msg_control = addr_of_mut!(cmsg).cast();
                msg.msg_controllen = size_of::<SegmentCmsg>();
            }
            // SAFETY: slot `i` is Idle, so its scratch area (where `iov` points, inside the
            // slot's buffer) is ours; `msg`, `addr`, `iov` and `cmsg` are live locals for the
            // duration of this synchronous call.
            let rc = unsafe { libc::sendmsg(tx, &msg, 0) };
            if rc < 0 {
                for _ in 0..count {
                    self.stats.drop_packet(DropReason::SocketError);
                }
            } else {
                self.stats.egress_n(count, range.len());
            }
        }
    }

    /// The GRO segment size of the datagrams just received into slot `i` (0: none given).
    fn gro_stride(&self, i: usize) -> usize {
        let s = self.pool.slot_ptr(i);
        // SAFETY: slot `i` was just taken back (Idle): the kernel has finished writing its
        // control area and length. We copy both out and parse the copy.
        let (control, len) = unsafe { ((*s).control, (*s).msg.msg_controllen) };
        let raw: [u8; CONTROL_WORDS * 8] =
            std::array::from_fn(|k| control[k / 8].to_ne_bytes()[k % 8]);
        gro_segment_size(&raw[..len.min(raw.len())])
    }

    /// Copies up to [`REAP_CHUNK`] completions out of the ring.
    fn reap(&mut self, out: &mut [(u64, i32); REAP_CHUNK]) -> usize {
        let mut n = 0;
        for (slot, cqe) in out.iter_mut().zip(self.ring.completion()) {
            *slot = (cqe.user_data(), cqe.result());
            n += 1;
        }
        n
    }

    /// Takes back slot `tag` from the kernel; returns its operation, or `None` for the
    /// stop poll, cancellations, timeouts and anything unknown.
    fn take_back(&mut self, tag: u64, res: i32) -> Option<(usize, Op)> {
        match tag {
            STOP_TAG => {
                self.stop_pending = false;
                if res != -libc::ECANCELED {
                    self.stopping = true;
                }
                None
            }
            CANCEL_TAG | TIMEOUT_TAG => None,
            _ => {
                let i = usize::try_from(tag).ok()?;
                let op = self.ops.get_mut(i)?;
                if *op == Op::Idle {
                    return None;
                }
                let taken = std::mem::replace(op, Op::Idle);
                self.in_flight = self.in_flight.saturating_sub(1);
                Some((i, taken))
            }
        }
    }

    /// The source of the datagram just received into slot `i`, if it is IPv4.
    fn received_from(&self, i: usize) -> Option<(SocketAddrV4, bool)> {
        let s = self.pool.slot_ptr(i);
        // SAFETY: slot `i` was just taken back (Idle): the kernel finished writing its
        // sockaddr, name length and flags. Plain reads of C integers.
        let (addr, namelen, flags) =
            unsafe { ((*s).addr, (*s).msg.msg_namelen, (*s).msg.msg_flags) };
        if addr.sin_family != libc::AF_INET as libc::sa_family_t
            || (namelen as usize) < size_of::<libc::sockaddr_in>()
        {
            return None;
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Some((
            SocketAddrV4::new(ip, u16::from_be(addr.sin_port)),
            flags & libc::MSG_TRUNC != 0,
        ))
    }

    /// Slot `i`'s buffer.
    ///
    /// # Safety
    /// Slot `i` must be Idle (not lent) and `i < pool.len()`.
    unsafe fn buf(&mut self, i: usize) -> &mut [u8] {
        // SAFETY: per the contract the kernel is not using the buffer, `&mut self` rules out
        // any other reference into the pool, and buffers of distinct slots do not overlap.
        unsafe { std::slice::from_raw_parts_mut(self.pool.buf_ptr(i), self.pool.buf_size) }
    }

    fn complete<H>(&mut self, tag: u64, res: i32, handle: &mut H) -> io::Result<()>
    where
        H: FnMut(Origin, &mut [u8], usize) -> Action,
    {
        let Some((i, op)) = self.take_back(tag, res) else {
            return Ok(());
        };
        match op {
            Op::Idle => Ok(()),
            Op::TunRead if res > 0 && res as usize > self.headroom => {
                let (h, read_len) = (self.headroom, self.read_len);
                // SAFETY: `take_back` just made slot `i` Idle; `i` indexes `ops`, sized like the pool.
                let buf = unsafe { self.buf(i) };
                let action = handle(Origin::Tun, &mut buf[h..read_len], res as usize - h);
                self.dispatch(i, action)
            }
            Op::UdpRecv if res >= 0 => match self.received_from(i) {
                Some((src, false)) if self.headroom > 0 => {
                    let stride = self.gro_stride(i);
                    // SAFETY: slot `i` is Idle (as above) and stays ours until `arm_home`.
                    let buf = unsafe {
                        std::slice::from_raw_parts_mut(self.pool.buf_ptr(i), self.read_len)
                    };
                    let len = (res as usize).min(buf.len());
                    split_datagrams(buf, len, stride, src, 0, handle, &mut self.delivered);
                    write_delivered(&self.fds.tun, buf, &mut self.delivered, &self.stats);
                    self.arm_home(i)
                }
                Some((src, false)) => {
                    // SAFETY: as above.
                    let buf = unsafe { self.buf(i) };
                    let action = handle(Origin::Udp(src), buf, res as usize);
                    self.dispatch(i, action)
                }
                _ => {
                    self.stats.drop_packet(DropReason::BadHeader);
                    self.arm_home(i)
                }
            },
            Op::TunRead if res > 0 => {
                // Shorter than the virtio-net header.
                self.stats.drop_packet(DropReason::BadHeader);
                self.arm_home(i)
            }
            Op::TunRead | Op::UdpRecv => {
                let reason = if op == Op::TunRead {
                    DropReason::TunError
                } else {
                    DropReason::SocketError
                };
                match res {
                    0 => {}
                    r if r == -libc::ECANCELED || r == -libc::EAGAIN || r == -libc::EINTR => {}
                    r if is_transient(-r) => self.stats.drop_packet(reason),
                    r => {
                        self.stats.drop_packet(reason);
                        self.stopping = true;
                        self.fatal.get_or_insert(errno_error(r));
                    }
                }
                self.arm_home(i)
            }
            Op::UdpSend { len } => {
                if res < 0 {
                    self.stats.drop_packet(DropReason::SocketError);
                } else {
                    self.stats.egress(len);
                }
                self.arm_home(i)
            }
            Op::UdpGso { segs, send } => {
                let bytes = segs
                    .sends(GSO_MAX_SEGMENTS)
                    .nth(send)
                    .map_or(0, |r| r.len());
                let count = segs.count_in(bytes);
                if res < 0 {
                    for _ in 0..count {
                        self.stats.drop_packet(DropReason::SocketError);
                    }
                } else {
                    self.stats.egress_n(count, bytes);
                }
                if self.stopping {
                    return self.arm_home(i);
                }
                self.send_segments(i, segs, send + 1)
            }
            Op::TunWrite { len, kind } => {
                if res < 0 {
                    self.stats.drop_packet(DropReason::TunError);
                } else {
                    match kind {
                        TunWrite::Deliver => self.stats.ingress(len),
                        TunWrite::Icmp => self.stats.icmp_sent(),
                    }
                }
                self.arm_home(i)
            }
        }
    }

    /// Cancels every lent slot and reaps until all are back. Returns whether they all are.
    fn drain(&mut self) -> bool {
        self.stopping = true;
        for i in 0..self.ops.len() {
            if self.ops[i] != Op::Idle {
                let cancel = opcode::AsyncCancel::new(i as u64)
                    .build()
                    .user_data(CANCEL_TAG);
                // SAFETY: a cancellation references no userspace memory.
                if unsafe { self.push(&cancel) }.is_err() {
                    break;
                }
            }
        }
        if self.stop_pending {
            let cancel = opcode::AsyncCancel::new(STOP_TAG)
                .build()
                .user_data(CANCEL_TAG);
            // SAFETY: as above.
            let _ = unsafe { self.push(&cancel) };
        }
        let deadline = Instant::now() + DRAIN_DEADLINE;
        let mut chunk = [(0u64, 0i32); REAP_CHUNK];
        while self.in_flight > 0 && Instant::now() < deadline {
            let timeout = opcode::Timeout::new(&self.timeout)
                .build()
                .user_data(TIMEOUT_TAG);
            // SAFETY: the kernel copies the timespec when it prepares the request, during the
            // submit below; `self.timeout` outlives that anyway.
            if unsafe { self.push(&timeout) }.is_err() {
                break;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EINTR)
                        || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(_) => break,
            }
            loop {
                let n = self.reap(&mut chunk);
                for &(tag, res) in &chunk[..n] {
                    let _ = self.take_back(tag, res);
                }
                if n < REAP_CHUNK {
                    break;
                }
            }
        }
        self.in_flight == 0
    }
}

impl PacketIo for UringIo {
    fn wait(&mut self) -> io::Result<()> {
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        if self.in_flight == 0 && !self.stop_pending {
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

    fn process<H>(&mut self, mut handle: H) -> io::Result<Flow>
    where
        H: FnMut(Origin, &mut [u8], usize) -> Action,
    {
        let mut chunk = [(0u64, 0i32); REAP_CHUNK];
        loop {
            let n = self.reap(&mut chunk);
            for &(tag, res) in &chunk[..n] {
                self.complete(tag, res, &mut handle)?;
            }
            if n < REAP_CHUNK {
                break;
            }
        }
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        Ok(if self.stopping {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        if !self.drain() {
            tracing::error!(
                in_flight = self.in_flight,
                "io_uring requests still pending after {DRAIN_DEADLINE:?}; leaking their buffers"
            );
            self.pool.leak();
        }
    }
}

/// Builds the ring with the cheapest task-work mode the kernel has: deferred task work (6.1)
/// runs completions only when we enter the ring to wait, which is exactly when we reap them.
fn build_ring(entries: u32) -> io::Result<IoUring> {
    if let Ok(ring) = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
    {
        return Ok(ring);
    }
    if let Ok(ring) = IoUring::builder().setup_coop_taskrun().build(entries) {
        return Ok(ring);
    }
    IoUring::new(entries)
}

/// The `UDP_GRO` segment size in received control messages `control` (0 if there is none).
/// Parsed from bytes, by the `cmsghdr` layout (length, level, type, data; each message
/// padded to 8 bytes), so nothing here trusts the kernel's lengths further than the buffer.
fn gro_segment_size(control: &[u8]) -> usize {
    const HDR: usize = size_of::<libc::cmsghdr>();
    const W: usize = size_of::<usize>();
    let mut off = 0;
    while let Some(hdr) = control.get(off..off + HDR) {
        let int = |at: usize| {
            hdr.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, i32::from_ne_bytes)
        };
        let len = hdr
            .get(..W)
            .and_then(|b| b.try_into().ok())
            .map_or(0, usize::from_ne_bytes);
        let (level, kind) = (int(W), int(W + 4));
        if len < HDR {
            return 0;
        }
        if level == libc::SOL_UDP && kind == UDP_GRO {
            return control
                .get(off + HDR..off + HDR + 4)
                .and_then(|d| d.try_into().ok())
                .map_or(0, |d| i32::from_ne_bytes(d).max(0) as usize);
        }
        off += len.div_ceil(W) * W;
    }
    0
}

fn sockaddr(peer: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: peer.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*peer.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let hdr = size_of::<libc::cmsghdr>();
        let mut b = (hdr + data.len()).to_ne_bytes().to_vec();
        b.extend(level.to_ne_bytes());
        b.extend(kind.to_ne_bytes());
        b.extend(data);
        b.resize((hdr + data.len()).div_ceil(8) * 8, 0);
        b
    }

    #[test]
    fn the_gro_segment_size_is_found_among_control_messages() {
        let gro = cmsg(libc::SOL_UDP, UDP_GRO, &1412i32.to_ne_bytes());
        assert_eq!(gro_segment_size(&gro), 1412);
        let mut both = cmsg(libc::IPPROTO_IP, libc::IP_TOS, &[0x02]);
        both.extend(&gro);
        assert_eq!(gro_segment_size(&both), 1412);
        assert_eq!(gro_segment_size(&[]), 0, "no GRO: one datagram");
        assert_eq!(gro_segment_size(&gro[..19]), 0, "cut short");
        let mut zero_len = gro.clone();
        zero_len[..8].fill(0);
        assert_eq!(gro_segment_size(&zero_len), 0, "a zero length never loops");
        // The UDP_SEGMENT message we send is exactly CMSG_SPACE(sizeof(u16)).
        assert_eq!(size_of::<SegmentCmsg>(), 24);
    }
}
