//! io_uring worker I/O: one ring per worker, TUN reads and UDP receives always in flight,
//! completions reaped in batches, follow-up TUN writes and re-arms queued and submitted
//! together with the next wait — one `io_uring_enter` per batch.
//!
//! # Sends
//! UDP sends are made at the end of each batch, in order, with plain `sendmsg` calls: the
//! packets bound for one peer that the batch's TUN reads produced go out in one UDP GSO send
//! per run (one inner packet per datagram on the wire, as upstream wants), gathered with
//! `iovec`s from the slots they were read into. One call per run beats one SQE per packet,
//! the kernel carries the run through its UDP/IP stack as one GSO packet, and ordering is
//! plain: a flow's packets leave in the order the TUN gave them (a send chained through the
//! ring could be overtaken by later ones).
//!
//! # Buffer ownership (the one hard invariant)
//! The worker owns a [`Pool`] of `n` slots. Slot `i` is a packet buffer plus the `msghdr`,
//! `iovec` and `sockaddr_in` a receive of its own points the kernel at. A slot is **lent to
//! the kernel** from the moment an SQE naming it (`user_data = i`) is pushed, or it is put in
//! a provided-buffer ring, until the completion that names it is reaped; while lent,
//! userspace never creates a reference to any of its memory. `ops[i]`
//! (ordinary Rust memory the kernel never sees) records whether slot `i` is lent and for what.
//!
//! Slots have a home: the first `egress_slots` slots circulate TUN read → (UDP send at the
//! end of the batch | TUN write of an ICMP reply) → TUN read; the rest circulate UDP receive
//! → TUN write → UDP receive. A packet therefore never moves between buffers.
//!
//! # Multishot receives and provided buffers
//! Where the kernel has them (multishot TUN reads arrived in 6.7; multishot `recvmsg` and
//! provided-buffer rings are older), a side's slots are not lent one request each: they sit in
//! a **provided-buffer ring** (`Op::Provided`) and one multishot request per side (TUN read,
//! UDP receive) takes a buffer from it for every packet it completes. That is one wait-queue
//! entry per fd instead of one per slot, so an arriving packet wakes one request, not all of
//! them. A completion names its buffer; the slot is then ours, goes through the same steps as
//! above, and is handed back to the ring where it would otherwise be re-armed. A multishot
//! receive writes a small header (`io_uring_recvmsg_out`, source address, control messages)
//! in front of the payload, so the payload of an ingress slot starts at `MULTI_PREFIX`.
//! Without kernel support (or with `--udp-multishot=false`) every slot has its own request.
//!
//! The TUN and the receiving socket are **registered files**, so requests skip the fd-table
//! lookup and reference counting on every operation. The slots' read areas are **registered
//! buffers** (pinned once, not per request), used by the TUN reads of slots that have their
//! own request and by TUN writes through the ring (ICMP replies; deliveries without
//! offloads). Multishot requests take provided buffers instead, and the offload path writes
//! the TUN with `writev`, which has no fixed-buffer form before 6.15.
//!
//! # Offloads
//! With the TUN opened with offloads (`sys::offload`), an egress slot is twice as long: the
//! TUN read lands in the first part (virtio-net header, then the packet); a TCP super-packet
//! is cut into segments whose headers go to the second part, and the segments leave in UDP
//! GSO sends that gather each header and its payload (still in the read) with `iovec`s —
//! nothing but headers is copied. Receives ask for UDP GRO; the datagrams of a slot are
//! handed to the pipeline one by one and the delivered ones written to the TUN coalesced,
//! with a plain `writev` (one per super-packet), before the slot is armed again.
//!
//! # Drop order
//! Closing a ring does not wait for the kernel to stop using lent memory. [`UringIo`]'s `Drop`
//! therefore cancels every request in flight (the multishot ones too) and reaps until all have
//! ended (bounded by a deadline); buffers still in a provided-buffer ring can then no longer be
//! taken. Only then are the registrations dropped and the pool's allocations freed. If the
//! deadline passes, the pool and buffer rings are leaked instead: a little memory lost beats
//! the kernel writing into freed memory.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::ptr::{addr_of_mut, NonNull};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::offload::{
    egress_wire, split_datagrams, write_delivered, GRO_MAX_SEGMENTS, GSO_MAX_SEGMENTS, SCRATCH_LEN,
};
use super::{errno_error, is_transient, sockopt, WorkerFds};
use crate::datapath::offload::{GsoRun, Layout as WireLayout, Segments, Wire, VNET_HDR_LEN};
use crate::datapath::pipeline::{Action, Flow, Origin, PacketIo, TunWrite, MIN_BUFFER};
use crate::datapath::stats::{DropReason, WorkerStats};

/// `user_data` of the poll on the stop eventfd.
const STOP_TAG: u64 = u64::MAX;
/// `user_data` of cancellations (their own completions carry nothing we need).
const CANCEL_TAG: u64 = u64::MAX - 1;
/// `user_data` of the drain's wake-up timeout.
const TIMEOUT_TAG: u64 = u64::MAX - 2;
/// `user_data` of the multishot TUN read and the multishot UDP receive.
const TUN_READS_TAG: u64 = u64::MAX - 3;
const UDP_RECVS_TAG: u64 = u64::MAX - 4;
/// Registered-file indexes (`register_files` order in [`UringIo::new`]).
const FIXED_TUN: types::Fixed = types::Fixed(0);
const FIXED_RX: types::Fixed = types::Fixed(1);
/// Buffer groups of the two provided-buffer rings.
const EGRESS_GROUP: u16 = 0;
const INGRESS_GROUP: u16 = 1;
/// What a multishot `recvmsg` writes in front of the payload: `struct io_uring_recvmsg_out`
/// (four u32s), the source address (`msg_namelen` bytes), the control messages
/// (`msg_controllen` bytes).
const RECVMSG_OUT_LEN: usize = 16;
const CONTROL_LEN: usize = CONTROL_WORDS * 8;
/// The `iovec`s of one gathered GSO send (a header and a payload per segment), kept at the
/// end of an egress buffer.
const IOV_BYTES: usize = 2 * GSO_MAX_SEGMENTS * size_of::<libc::iovec>();
const MULTI_PREFIX: usize = RECVMSG_OUT_LEN + size_of::<libc::sockaddr_in>() + CONTROL_LEN;
/// How long `Drop` waits for lent slots to come back.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// CQEs copied out of the ring per pass.
const REAP_CHUNK: usize = 128;

/// A completion as copied out of the ring: `user_data`, result, flags.
type Cqe = (u64, i32, u32);

/// What a receive delivered, wherever the kernel wrote it (slot header or buffer prefix).
struct Received {
    /// The sender, if it is IPv4.
    src: Option<SocketAddrV4>,
    /// The datagram (or its address) did not fit.
    truncated: bool,
    /// UDP GRO segment size (0: one datagram).
    stride: usize,
    /// Payload bytes.
    len: usize,
}

/// Opcodes the worker uses; all exist since Linux 5.6.
const REQUIRED_OPS: [(&str, u8); 8] = [
    ("READ", opcode::Read::CODE),
    ("WRITE", opcode::Write::CODE),
    ("READ_FIXED", opcode::ReadFixed::CODE),
    ("WRITE_FIXED", opcode::WriteFixed::CODE),
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

/// Sizes and modes of one worker's ring and pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringConfig {
    /// Buffers circulating on the egress side (TUN reads in flight without multishot).
    pub egress_slots: usize,
    /// Buffers circulating on the ingress side (UDP receives in flight without multishot).
    pub ingress_slots: usize,
    /// Bytes per buffer; 64 KiB holds any UDP datagram, so nothing is ever truncated.
    pub buf_size: usize,
    /// Use multishot TUN reads and UDP receives over provided-buffer rings where the kernel
    /// has them (see the module docs); otherwise one request per buffer.
    pub multishot: bool,
    /// Before sleeping for completions, poll the ring for this long (zero: never). Spends CPU
    /// to save the wake-up of a sleeping worker (tens of µs) on each hop of a round trip.
    pub busy_poll: Duration,
}

impl UringConfig {
    /// Buffers per direction, measured with `cargo bench --bench throughput` (2 vCPU, kernel
    /// 6.18, multishot): see README, "Ring depth". With one-request-per-buffer (no
    /// multishot) every pending read is woken on each arrival, so deeper rings cost CPU there.
    pub const DEFAULT_DEPTH: usize = 16;

    /// `depth` buffers per direction, the other settings default.
    pub fn with_depth(depth: usize) -> Self {
        UringConfig {
            egress_slots: depth,
            ingress_slots: depth,
            ..UringConfig::default()
        }
    }
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            egress_slots: Self::DEFAULT_DEPTH,
            ingress_slots: Self::DEFAULT_DEPTH,
            buf_size: 65536,
            multishot: true,
            busy_poll: Duration::ZERO,
        }
    }
}

/// The part of a slot the kernel reads and writes for a receive of the slot's own (`recvmsg`
/// without multishot).
#[repr(C)]
struct KernelSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_in,
    /// Control messages: the `UDP_GRO` segment size of a receive (u64s for the alignment
    /// `cmsghdr` needs).
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
    fn new(n: usize, buf_size: usize) -> io::Result<Self> {
        let slots: Box<[KernelSlot]> = (0..n)
            .map(|_| {
                // SAFETY: msghdr, iovec and sockaddr_in are plain C structs for which all-zero
                // bytes are valid (null pointers, zero lengths).
                unsafe { MaybeUninit::<KernelSlot>::zeroed().assume_init() }
            })
            .collect();
        // An anonymous mapping: page-aligned, and its zero pages cost memory only once
        // touched (an aligned heap allocation would be zeroed, so resident, up front). Every
        // buffer is 64-aligned (`buf_size` is a multiple of 64): the `iovec`s kept at the end
        // of a buffer are aligned, and copies start on cache lines.
        let buf_size = buf_size.next_multiple_of(64);
        let map_len = (n * buf_size).max(1);
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let bufs = NonNull::new(raw.cast::<u8>()).ok_or(io::ErrorKind::OutOfMemory)?;
        let pool = Pool {
            slots: NonNull::from(Box::leak(slots)),
            bufs: NonNull::slice_from_raw_parts(bufs, map_len),
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
        Ok(pool)
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
        // SAFETY: `slots` came from `Box::leak` and `bufs` from `mmap` (of exactly its
        // length) in `new`; each is freed once, here. `UringIo::drop` has reaped every lent
        // slot (or called `leak`) before this runs.
        unsafe {
            drop(Box::from_raw(self.slots.as_ptr()));
            libc::munmap(self.bufs.as_ptr().cast(), self.bufs.len());
        }
    }
}

/// One descriptor of a provided-buffer ring (`struct io_uring_buf`). The first descriptor's
/// last field doubles as the ring's tail.
#[repr(C)]
struct BufDesc {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, 5.19): descriptors we write and
/// publish by moving the tail; the kernel takes them from the head, one per completion of a
/// multishot request of the ring's group. The descriptor array is page-aligned, as the
/// kernel requires; freed in `Drop` unless leaked (see [`Pool::leak`]).
struct BufRing {
    descs: NonNull<BufDesc>,
    layout: Layout,
    mask: u16,
    tail: u16,
    leaked: bool,
}

impl BufRing {
    /// Room for `count` buffers (rounded up to a power of two, at most 32 768).
    fn new(count: usize) -> io::Result<Self> {
        let entries = count.next_power_of_two().clamp(1, 32_768);
        let layout = Layout::from_size_align(entries * size_of::<BufDesc>(), 4096)
            .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let descs = NonNull::new(raw.cast::<BufDesc>()).ok_or(io::ErrorKind::OutOfMemory)?;
        Ok(BufRing {
            descs,
            layout,
            mask: (entries - 1) as u16,
            tail: 0,
            leaked: false,
        })
    }

    fn entries(&self) -> u16 {
        self.mask + 1
    }

    /// Publishes buffer `bid` (`len` bytes at `addr`) to the kernel.
    fn provide(&mut self, addr: *mut u8, len: u32, bid: u16) {
        let d = self
            .descs
            .as_ptr()
            .wrapping_add(usize::from(self.tail & self.mask));
        // SAFETY: `d` is inside the descriptor array (index masked). The kernel reads only
        // descriptors between its head and the published tail; this one is at the tail, so
        // not yet visible. The tail field (`resv` of descriptor 0) is not written here.
        unsafe {
            addr_of_mut!((*d).addr).write(addr as u64);
            addr_of_mut!((*d).len).write(len);
            addr_of_mut!((*d).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is a u16 inside the live, page-aligned array, which the kernel
        // reads concurrently: only ever accessed atomically from our side. The release store
        // makes the descriptor written above visible before the new tail.
        let tail = unsafe { AtomicU16::from_ptr(addr_of_mut!((*self.descs.as_ptr()).resv)) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if !self.leaked {
            // SAFETY: allocated in `new` with this layout, freed once; the ring that had it
            // registered is closed before this runs (field order of `UringIo`).
            unsafe { dealloc(self.descs.as_ptr().cast(), self.layout) };
        }
    }
}

/// One side's multishot request and the buffer ring it takes from.
struct Multishot {
    /// `user_data` of the request.
    tag: u64,
    group: u16,
    ring: BufRing,
    /// The side's slots are `first..first + count`; buffer id = slot - `first`.
    first: usize,
    count: usize,
    /// Bytes per buffer handed to the kernel.
    buf_len: u32,
    /// The request is in the kernel (it ends with a completion without `IORING_CQE_F_MORE`).
    armed: bool,
    /// Buffers published and not yet taken by a completion.
    available: usize,
    /// The `msghdr` a multishot `recvmsg` reads its name and control lengths from (heap, so
    /// it stays put while the request lives).
    template: Box<libc::msghdr>,
}

impl Multishot {
    /// Registers a buffer ring for `slots` of `pool` (`buf_len` bytes each) as `group` with
    /// `ring`. `None` (and the side uses one request per slot) when the kernel refuses.
    fn register(
        ring: &IoUring,
        pool: &Pool,
        tag: u64,
        group: u16,
        slots: std::ops::Range<usize>,
        buf_len: usize,
    ) -> Option<Self> {
        let count = slots.len();
        let bufs = match BufRing::new(count) {
            Ok(b) if usize::from(b.entries()) >= count && buf_len <= pool.buf_size => b,
            _ => return None,
        };
        // SAFETY: the descriptor array is page-aligned, `entries()` long and lives in the
        // returned `Multishot` until after the ring is closed (or is leaked with the pool).
        let registered = unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.descs.as_ptr() as u64,
                bufs.entries(),
                group,
                0,
            )
        };
        if let Err(e) = registered {
            tracing::debug!(error = %e, "no provided-buffer ring; one request per buffer");
            return None;
        }
        // SAFETY: all-zero bytes are a valid `msghdr` (null pointers, zero lengths).
        let mut template: Box<libc::msghdr> =
            Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        template.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // Always room for control messages, so the payload always starts at MULTI_PREFIX.
        template.msg_controllen = CONTROL_LEN;
        Some(Multishot {
            tag,
            group,
            ring: bufs,
            first: slots.start,
            count,
            buf_len: u32::try_from(buf_len).ok()?,
            armed: false,
            available: 0,
            template,
        })
    }

    fn owns(&self, i: usize) -> bool {
        i >= self.first && i < self.first + self.count
    }
}

/// Registers the first `len` bytes of every slot of `pool` as fixed buffers (index = slot).
/// Whether the kernel took them (it may refuse: `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`);
/// without, the plain opcodes are used.
fn register_buffers(ring: &IoUring, pool: &Pool, len: usize) -> bool {
    if pool.len() > usize::from(u16::MAX) || len > pool.buf_size {
        return false;
    }
    let iovecs: Vec<libc::iovec> = (0..pool.len())
        .map(|i| libc::iovec {
            iov_base: pool.buf_ptr(i).cast(),
            iov_len: len,
        })
        .collect();
    // SAFETY: every iovec lies inside the pool's mapping, which outlives the registration:
    // `UringIo::drop` unregisters the buffers (or leaks the pool) before it is unmapped.
    let registered = unsafe { ring.submitter().register_buffers(&iovecs) };
    if let Err(e) = &registered {
        tracing::debug!(error = %e, "no registered buffers; plain reads and writes");
    }
    registered.is_ok()
}

/// Whether workers here get multishot reads and receives (for tests and diagnostics).
pub fn multishot_available() -> bool {
    IoUring::new(8).is_ok_and(|ring| multishot_supported(&ring))
}

/// Whether the kernel has multishot TUN reads (`IORING_OP_READ_MULTISHOT`, 6.7). The probe
/// lists opcodes, not flags, so this one check also stands for the older multishot `recvmsg`
/// (6.0) and provided-buffer rings (5.19).
fn multishot_supported(ring: &IoUring) -> bool {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok()
        && probe.is_supported(opcode::ReadMulti::CODE)
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
    TunWrite {
        len: usize,
        kind: TunWrite,
    },
}

/// One worker's io_uring I/O. Not `Send`: it is built on the worker thread and stays there.
pub struct UringIo {
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
    fatal: Option<io::Error>,
    timeout: types::Timespec,
    busy_poll: Duration,
    /// Bytes of a slot's buffer used for reads and receives; with offloads a scratch area for
    /// segments follows (`pool.buf_size` = `read_len` + scratch).
    read_len: usize,
    /// Where a received datagram starts in an ingress slot: `MULTI_PREFIX` with the
    /// multishot receive, else 0.
    recv_off: usize,
    /// Slot `i`'s first `read_len + MULTI_PREFIX` bytes are registered buffer `i`.
    fixed_bufs: bool,
    /// With offloads, the virtio-net header's length, else 0.
    headroom: usize,
    /// Delivered packets of the receive being handled, for the coalescing TUN write.
    delivered: Vec<(usize, usize)>,
    /// Egress packets of this batch waiting for `flush_sends`: slot, peer, packet length
    /// (the packet is at `headroom` in the slot's buffer).
    pending: Vec<(usize, SocketAddrV4, usize)>,
    stats: Arc<WorkerStats>,
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
        stats: Arc<WorkerStats>,
    ) -> io::Result<Self> {
        let egress = cfg.egress_slots.clamp(1, 4096);
        let ingress = cfg.ingress_slots.clamp(1, 4096);
        let n = egress + ingress;
        let headroom = if offload { VNET_HDR_LEN } else { 0 };
        let read_len = cfg.buf_size.max(MIN_BUFFER) + headroom;
        // Behind the read area: the segment scratch (offloads) and room for the multishot
        // receive's header, which shifts an ingress payload back by `MULTI_PREFIX`.
        let buf_size = read_len + if offload { SCRATCH_LEN } else { MULTI_PREFIX };
        sockopt::set_udp_gro(&fds.rx, offload)?;
        // Each slot has at most one SQE queued, plus one cancel each while draining, plus the
        // stop poll, the drain timeout and the two multishot requests and their cancels.
        let entries = u32::try_from((2 * n + 8).next_power_of_two()).unwrap_or(8192);
        let ring = build_ring(entries)?;
        ring.submitter()
            .register_files(&[fds.tun.raw(), fds.rx.as_raw_fd()])?;
        // Saves the ring's own fd lookup on every enter (5.18); optional.
        let _ = ring.submitter().register_ring_fd();
        let pool = Pool::new(n, buf_size)?;
        let multi = if cfg.multishot && multishot_supported(&ring) {
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
        let mut io = UringIo {
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
            fatal: None,
            timeout: types::Timespec::new().nsec(100_000_000),
            busy_poll: cfg.busy_poll,
            read_len,
            headroom,
            delivered: Vec::with_capacity(if offload { 2 * GRO_MAX_SEGMENTS } else { 0 }),
            pending: Vec::with_capacity(egress),
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
        io.rearm()?;
        tracing::debug!(
            multishot_reads = io.multi[0].is_some(),
            multishot_receives = io.multi[1].is_some(),
            fixed_buffers = io.fixed_bufs,
            egress,
            ingress,
            "io_uring worker ready"
        );
        Ok(io)
    }

    /// The multishot side slot `i` belongs to, if that side uses one.
    fn side_of(&mut self, i: usize) -> Option<&mut Multishot> {
        self.multi.iter_mut().flatten().find(|m| m.owns(i))
    }

    /// Arms each side's multishot request that has ended, while it has buffers to take from.
    /// (One that ran out of buffers ended with `ENOBUFS`; the packets wait in the fd.)
    fn rearm(&mut self) -> io::Result<()> {
        for side in 0..2 {
            let entry = match &self.multi[side] {
                Some(m) if !m.armed && m.available > 0 && !self.stopping => {
                    if m.tag == TUN_READS_TAG {
                        // By plain fd: on 6.18 a multishot read of the *registered* TUN fails
                        // with EBADFD (the kernel does not see it as pollable). The lookup is
                        // made once per arming, not per packet.
                        opcode::ReadMulti::new(types::Fd(self.fds.tun.raw()), 0, m.group).build()
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

    /// Lends slot `i` back to its home operation (TUN read or UDP receive), unless stopping.
    fn arm_home(&mut self, i: usize) -> io::Result<()> {
        if self.stopping || i >= self.pool.len() {
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

    /// Carries out the pipeline's decision for slot `i` (just handed back by the kernel).
    fn dispatch(&mut self, i: usize, action: Action) -> io::Result<()> {
        let h = self.headroom;
        match action {
            Action::Drop => self.arm_home(i),
            Action::SendUdp { peer, len } => {
                let wire = if h == 0 {
                    Wire::Whole { len }
                } else {
                    // SAFETY: slot `i` is Idle (its CQE was just reaped), so nothing else
                    // refers to its buffer; the slice is dropped before the slot is lent
                    // again below. The segments' headers go behind the read area, short of
                    // the `iovec`s at the end of the buffer (with offloads the buffer is
                    // `read_len` + `SCRATCH_LEN`, rounded up).
                    let buf = unsafe {
                        std::slice::from_raw_parts_mut(
                            self.pool.buf_ptr(i),
                            self.pool.buf_size.saturating_sub(IOV_BYTES),
                        )
                    };
                    let Some((read, scratch)) = buf.split_at_mut_checked(self.read_len) else {
                        return self.arm_home(i);
                    };
                    match egress_wire(read, len, scratch, WireLayout::HeadersOnly, &self.stats) {
                        Some(wire) => wire,
                        None => return self.arm_home(i),
                    }
                };
                match wire {
                    Wire::Whole { len } => {
                        // Sent with the rest of the batch (the slot stays ours till then).
                        self.pending.push((i, peer, len.min(self.read_len - h)));
                        Ok(())
                    }
                    Wire::Segmented(segs) => {
                        // Whatever this batch read before goes first: order within a flow.
                        self.flush_sends()?;
                        self.send_segments(i, peer, segs);
                        self.arm_home(i)
                    }
                }
            }
            Action::WriteTun { len, kind } => {
                // An egress slot holds the packet behind the virtio-net header the read left;
                // an ingress slot only ever writes without offloads (with them, deliveries go
                // out coalesced in `complete`), from where the receive put the datagram.
                let (start, h) = if i < self.egress_slots {
                    (0, h)
                } else {
                    (self.recv_off, 0)
                };
                let len = len.min(self.read_len - h);
                let base = self.pool.buf_ptr(i).wrapping_add(start);
                if h > 0 {
                    // SAFETY: slot `i` is Idle; the packet goes behind a plain virtio-net
                    // header, written before the slot is lent.
                    unsafe { std::ptr::write_bytes(base, 0, h) };
                }
                let (base, n) = (base.cast_const(), (h + len) as u32);
                let entry = if self.fixed_bufs {
                    // Inside registered buffer `i`: `start` + `h` + `len` ≤ MULTI_PREFIX +
                    // `read_len`.
                    opcode::WriteFixed::new(FIXED_TUN, base, n, i as u16).build()
                } else {
                    opcode::Write::new(FIXED_TUN, base, n).build()
                }
                .user_data(i as u64);
                // SAFETY: points only at slot `i`'s buffer, marked lent below until its CQE.
                unsafe { self.push(&entry)? };
                self.lend(i, Op::TunWrite { len, kind });
                Ok(())
            }
        }
    }

    /// Writes the `iovec`s of one GSO send of `segs` (the byte range `send` of
    /// [`Segments::sends`]) to the end of slot `i`'s buffer: each segment's header (in the
    /// scratch area) followed by its payload (in the super-packet the TUN read left), so the
    /// kernel gathers the segments without our copying them. Returns the array and its
    /// length, and how many segments the send carries.
    fn gather_iovecs(
        &mut self,
        i: usize,
        segs: &Segments,
        send: &std::ops::Range<usize>,
    ) -> ((*mut libc::iovec, usize), usize) {
        let count = segs.count_in(send.len()).min(GSO_MAX_SEGMENTS);
        let first = send.start / segs.segment_len.max(1);
        let base = self.pool.buf_ptr(i);
        let (headers, pkt) = (
            base.wrapping_add(self.read_len),
            base.wrapping_add(self.headroom),
        );
        let iovs = base
            .wrapping_add(self.pool.buf_size - IOV_BYTES)
            .cast::<libc::iovec>();
        for j in 0..count {
            let (h, p) = segs.gather(first + j);
            let pieces = [
                (headers.wrapping_add(h.start), h.len()),
                (pkt.wrapping_add(p.start), p.len()),
            ];
            for (n, (ptr, len)) in pieces.into_iter().enumerate() {
                // SAFETY: slot `i` is Idle. The iovec area is the buffer's last `IOV_BYTES`
                // (64-aligned: `Pool` aligns every buffer), room for 2 × GSO_MAX_SEGMENTS
                // iovecs; `j` < `count` ≤ GSO_MAX_SEGMENTS. `egress_wire` was given the
                // scratch area short of it, so headers never reach it.
                unsafe {
                    iovs.add(2 * j + n).write(libc::iovec {
                        iov_base: ptr.cast(),
                        iov_len: len,
                    });
                }
            }
        }
        ((iovs, 2 * count), count)
    }

    /// Sends the segments of a super-packet (headers in slot `i`'s scratch area, payloads in
    /// its read area; slot `i` Idle), one GSO send after the other.
    fn send_segments(&mut self, i: usize, peer: SocketAddrV4, segs: Segments) {
        for range in segs.sends(GSO_MAX_SEGMENTS) {
            let (iov, count) = self.gather_iovecs(i, &segs, &range);
            let segment = (count > 1).then_some(segs.segment_len as u16);
            // SAFETY: the iovecs were just written into slot `i`, which is Idle, and point
            // into its buffer.
            let sent = unsafe { self.send_gathered(peer, iov, segment) };
            self.stats.sent(sent, count, range.len());
        }
    }

    /// Sends the packets in `pending` (each in its own slot, at `headroom`), in order: every
    /// run of packets to one peer of one length (the last may be shorter), within the GSO
    /// limits, in one UDP GSO send; then hands the slots back (an error: the ring refused).
    fn flush_sends(&mut self) -> io::Result<()> {
        let mut k = 0;
        while let Some(&(_, peer, _)) = self.pending.get(k) {
            let mut iovs = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; GSO_MAX_SEGMENTS];
            let mut run = GsoRun::default();
            // The first packet always starts a run, so each pass sends at least one; `admit`
            // stops at GSO_MAX_SEGMENTS, the length of `iovs`.
            while let Some(&(slot, p, len)) = self.pending.get(k + run.count) {
                let n = run.count;
                if !run.admit(p, len, GSO_MAX_SEGMENTS) {
                    break;
                }
                iovs[n] = libc::iovec {
                    iov_base: self.pool.buf_ptr(slot).wrapping_add(self.headroom).cast(),
                    iov_len: len,
                };
            }
            let segment = run.segment().map(|s| s as u16);
            // SAFETY: each iovec points at the packet in a pending slot, which is Idle (ours)
            // until `arm_home` below; `iovs` is a live local.
            let sent = unsafe { self.send_gathered(peer, (iovs.as_mut_ptr(), run.count), segment) };
            self.stats.sent(sent, run.count, run.len);
            k += run.count;
        }
        let mut armed = Ok(());
        for j in 0..self.pending.len() {
            let slot = self.pending[j].0;
            armed = armed.and(self.arm_home(slot));
        }
        self.pending.clear();
        armed
    }

    /// One `sendmsg` to `peer` of the `iovec`s `iov`, as GSO segments of `segment` bytes if
    /// given. Whether the kernel took it.
    ///
    /// # Safety
    /// `iov` must point at `iov.1` valid iovecs, and they at memory that is ours (slots that
    /// are Idle) for the duration of the call.
    unsafe fn send_gathered(
        &self,
        peer: SocketAddrV4,
        iov: (*mut libc::iovec, usize),
        segment: Option<u16>,
    ) -> bool {
        let tx = self.fds.tx.as_ref().unwrap_or(&self.fds.rx).as_raw_fd();
        let mut addr = sockaddr(peer);
        let mut cmsg = SegmentCmsg::new(segment.unwrap_or(0));
        // SAFETY: all-zero bytes are a valid `msghdr` (null pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        msg.msg_name = addr_of_mut!(addr).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = iov.0;
        msg.msg_iovlen = iov.1;
        if segment.is_some() {
            msg.msg_control = addr_of_mut!(cmsg).cast();
            msg.msg_controllen = size_of::<SegmentCmsg>();
        }
        // SAFETY: `msg`, `addr` and `cmsg` are live locals for this synchronous call; the
        // iovecs are valid per this function's contract.
        unsafe { libc::sendmsg(tx, &msg, 0) >= 0 }
    }

    /// Copies up to [`REAP_CHUNK`] completions out of the ring.
    fn reap(&mut self, out: &mut [Cqe; REAP_CHUNK]) -> usize {
        let mut n = 0;
        for (slot, cqe) in out.iter_mut().zip(self.ring.completion()) {
            *slot = (cqe.user_data(), cqe.result(), cqe.flags());
            n += 1;
        }
        n
    }

    /// Takes back slot `tag` (or the buffer a multishot completion names) from the kernel;
    /// returns its operation, or `None` for the stop poll, cancellations, timeouts, multishot
    /// completions without a buffer and anything unknown.
    fn take_back(&mut self, tag: u64, res: i32, flags: u32) -> Option<(usize, Op)> {
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
        let src = (addr.sin_family == libc::AF_INET as libc::sa_family_t
            && namelen as usize >= size_of::<libc::sockaddr_in>())
        .then(|| {
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            SocketAddrV4::new(ip, u16::from_be(addr.sin_port))
        });
        let raw: [u8; CONTROL_LEN] = std::array::from_fn(|k| control[k / 8].to_ne_bytes()[k % 8]);
        Received {
            src,
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
        let Some(m) = self.multi[1].as_ref() else {
            return bad;
        };
        let used = res.min(m.buf_len as usize);
        // SAFETY: slot `i` was just taken back (Idle) and the kernel has finished writing
        // its first `used` bytes; the shared slice lives only within this function.
        let bytes = unsafe { std::slice::from_raw_parts(self.pool.buf_ptr(i), used) };
        match types::RecvMsgOut::parse(bytes, &m.template) {
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

    /// Hands the datagram(s) a receive put into slot `i` to the pipeline: with offloads split
    /// by the GRO stride and written back to the TUN coalesced (the slot then goes home),
    /// else one packet whose verdict `dispatch` carries out.
    fn on_receive<H>(&mut self, i: usize, r: Received, handle: &mut H) -> io::Result<()>
    where
        H: FnMut(Origin, &mut [u8], usize) -> Action,
    {
        let Some(src) = r.src.filter(|_| !r.truncated) else {
            self.stats.drop_packet(DropReason::BadHeader);
            return self.arm_home(i);
        };
        let off = self.recv_off;
        // SAFETY: slot `i` is Idle (just taken back) and stays ours until `arm_home` or
        // `dispatch` lends it again, after this slice is dead; `off` + the length stays
        // inside the slot's buffer (`buf_size` ≥ `read_len` + `MULTI_PREFIX`).
        let buf = unsafe {
            std::slice::from_raw_parts_mut(
                self.pool.buf_ptr(i).wrapping_add(off),
                self.pool.buf_size - off,
            )
        };
        if self.headroom == 0 {
            let action = handle(Origin::Udp(src), buf, r.len.min(self.read_len));
            return self.dispatch(i, action);
        }
        let buf = &mut buf[..self.read_len];
        let len = r.len.min(buf.len());
        split_datagrams(buf, len, r.stride, src, 0, handle, &mut self.delivered);
        write_delivered(&self.fds.tun, buf, &mut self.delivered, &self.stats);
        self.arm_home(i)
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
                self.stopping = true;
                self.fatal.get_or_insert(errno_error(r));
            }
        }
    }

    fn complete<H>(&mut self, (tag, res, flags): Cqe, handle: &mut H) -> io::Result<()>
    where
        H: FnMut(Origin, &mut [u8], usize) -> Action,
    {
        let Some((i, op)) = self.take_back(tag, res, flags) else {
            // A multishot request that failed outright (no buffer taken).
            match tag {
                TUN_READS_TAG => self.failed(DropReason::TunError, res),
                UDP_RECVS_TAG => self.failed(DropReason::SocketError, res),
                _ => {}
            }
            return Ok(());
        };
        match op {
            Op::Idle | Op::Provided => Ok(()),
            Op::TunRead if res > 0 && res as usize > self.headroom => {
                let (h, read_len) = (self.headroom, self.read_len);
                // SAFETY: `take_back` just made slot `i` Idle; `i` indexes `ops`, sized like the pool.
                let buf = unsafe { self.buf(i) };
                let action = handle(Origin::Tun, &mut buf[h..read_len], res as usize - h);
                self.dispatch(i, action)
            }
            Op::UdpRecv if res >= 0 => {
                let r = self.slot_received(i, res as usize);
                self.on_receive(i, r, handle)
            }
            Op::UdpRecvMulti if res >= 0 => {
                let r = self.multi_received(i, res as usize);
                self.on_receive(i, r, handle)
            }
            Op::TunRead if res > 0 => {
                // Shorter than the virtio-net header.
                self.stats.drop_packet(DropReason::BadHeader);
                self.arm_home(i)
            }
            Op::TunRead => {
                self.failed(DropReason::TunError, res);
                self.arm_home(i)
            }
            Op::UdpRecv | Op::UdpRecvMulti => {
                self.failed(DropReason::SocketError, res);
                self.arm_home(i)
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

    /// Submits what is queued, then spins for up to `busy_poll` until a completion is
    /// there; whether one is. Completions of deferred task work are posted only by an enter,
    /// so one is made whenever the kernel flags task work (`setup_taskrun_flag`).
    fn poll_briefly(&mut self) -> io::Result<bool> {
        let until = Instant::now() + self.busy_poll;
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

    /// Cancels every lent slot and reaps until all are back. Returns whether they all are.
    fn drain(&mut self) -> bool {
        self.stopping = true;
        let multishots = self
            .multi
            .iter()
            .flatten()
            .filter(|m| m.armed)
            .map(|m| m.tag);
        let tags: Vec<u64> = multishots.collect();
        for tag in tags {
            let cancel = opcode::AsyncCancel::new(tag).build().user_data(CANCEL_TAG);
            // SAFETY: a cancellation references no userspace memory.
            if unsafe { self.push(&cancel) }.is_err() {
                break;
            }
        }
        for i in 0..self.ops.len() {
            if !matches!(self.ops[i], Op::Idle | Op::Provided) {
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
        let mut chunk = [(0, 0, 0); REAP_CHUNK];
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
                for &(tag, res, flags) in &chunk[..n] {
                    let _ = self.take_back(tag, res, flags);
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
        if !self.busy_poll.is_zero() && self.poll_briefly()? {
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
        let mut chunk = [(0, 0, 0); REAP_CHUNK];
        loop {
            let n = self.reap(&mut chunk);
            for &cqe in &chunk[..n] {
                self.complete(cqe, &mut handle)?;
            }
            if n < REAP_CHUNK {
                break;
            }
        }
        self.flush_sends()?;
        self.rearm()?;
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
        if self.drain() {
            // Closing a ring releases its registered files later, from a kernel worker; the
            // TUN queue must be closed when the datapath stops (the device goes away with its
            // last queue), so let go of them now. Unregistering waits for every user.
            let submitter = self.ring.submitter();
            let _ = submitter.unregister_files();
            if self.fixed_bufs {
                let _ = submitter.unregister_buffers();
            }
            for m in self.multi.iter().flatten() {
                let _ = submitter.unregister_buf_ring(m.group);
            }
        } else {
            tracing::error!(
                in_flight = self.in_flight,
                "io_uring requests still pending after {DRAIN_DEADLINE:?}; leaking their buffers"
            );
            self.pool.leak();
            for m in self.multi.iter_mut().flatten() {
                m.ring.leaked = true;
            }
        }
    }
}

/// Builds the ring with the cheapest task-work mode the kernel has: deferred task work (6.1)
/// runs completions only when we enter the ring to wait, which is exactly when we reap them.
/// The task-run flag tells a busy-polling worker when such an enter has work to run.
fn build_ring(entries: u32) -> io::Result<IoUring> {
    if let Ok(ring) = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(entries)
    {
        return Ok(ring);
    }
    if let Ok(ring) = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries)
    {
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

/// An IPv4 socket address from the raw `sockaddr` bytes a multishot receive wrote.
fn sockaddr_v4(name: &[u8]) -> Option<SocketAddrV4> {
    let family = u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?);
    if family != libc::AF_INET as u16 {
        return None;
    }
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip), port))
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
