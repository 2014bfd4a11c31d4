//! The memory a ring shares with the kernel: the slot [`Pool`] (packet buffers and the
//! `msghdr`s of receives), the provided-buffer rings ([`BufRing`]) that multishot requests
//! take buffers from, and the registration of the slots as fixed buffers.
//!
//! Everything here is held through raw pointers, so that no Rust reference to memory the
//! kernel may be writing ever exists; the parent module hands out references only to slots
//! that are not lent (see `Ring::buf_mut`).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::ptr::{addr_of_mut, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;

use super::CONTROL_LEN;

/// The part of a slot the kernel reads and writes for a receive of the slot's own (`recvmsg`
/// without multishot).
#[repr(C)]
pub(super) struct KernelSlot {
    pub(super) msg: libc::msghdr,
    pub(super) iov: libc::iovec,
    pub(super) addr: libc::sockaddr_in,
    /// Control messages: the `UDP_GRO` segment size of a receive (u64s for the alignment
    /// `cmsghdr` needs).
    pub(super) control: [u64; CONTROL_WORDS],
}

/// Room for a few control messages (only `UDP_GRO` is asked for).
pub(super) const CONTROL_WORDS: usize = CONTROL_LEN / 8;

/// Memory shared with the kernel, held through raw pointers so that no Rust reference to a
/// lent slot ever exists. Allocated once; freed in `Drop` unless [`Pool::leak`] was called.
pub(super) struct Pool {
    slots: NonNull<[KernelSlot]>,
    bufs: NonNull<[u8]>,
    pub(super) buf_size: usize,
    leaked: bool,
}

impl Pool {
    pub(super) fn new(n: usize, buf_size: usize) -> io::Result<Self> {
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

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Raw pointer to slot `i`'s kernel part (`i` < `len`, else dangling-but-unused).
    pub(super) fn slot_ptr(&self, i: usize) -> *mut KernelSlot {
        self.slots.as_ptr().cast::<KernelSlot>().wrapping_add(i)
    }

    /// Raw pointer to the start of slot `i`'s buffer.
    pub(super) fn buf_ptr(&self, i: usize) -> *mut u8 {
        self.bufs
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(i * self.buf_size)
    }

    /// Never free the allocations (the kernel may still hold them).
    pub(super) fn leak(&mut self) {
        self.leaked = true;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: `slots` came from `Box::leak` and `bufs` from `mmap` (of exactly its
        // length) in `new`; each is freed once, here. `Ring::drop` has reaped every lent
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
pub(super) struct BufRing {
    descs: NonNull<BufDesc>,
    layout: Layout,
    mask: u16,
    tail: u16,
    pub(super) leaked: bool,
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
    pub(super) fn provide(&mut self, addr: *mut u8, len: u32, bid: u16) {
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
            // registered is closed before this runs (field order of `Ring`).
            unsafe { dealloc(self.descs.as_ptr().cast(), self.layout) };
        }
    }
}

/// One side's multishot request and the buffer ring it takes from.
pub(super) struct Multishot {
    /// `user_data` of the request.
    pub(super) tag: u64,
    pub(super) group: u16,
    pub(super) ring: BufRing,
    /// The side's slots are `first..first + count`; buffer id = slot - `first`.
    pub(super) first: usize,
    pub(super) count: usize,
    /// Bytes per buffer handed to the kernel.
    pub(super) buf_len: u32,
    /// The request is in the kernel (it ends with a completion without `IORING_CQE_F_MORE`).
    pub(super) armed: bool,
    /// Buffers published and not yet taken by a completion.
    pub(super) available: usize,
    /// The `msghdr` a multishot `recvmsg` reads its name and control lengths from (heap, so
    /// it stays put while the request lives).
    pub(super) template: Box<libc::msghdr>,
}

impl Multishot {
    /// Registers a buffer ring for `slots` of `pool` (`buf_len` bytes each) as `group` with
    /// `ring`. `None` (and the side uses one request per slot) when the kernel refuses.
    pub(super) fn register(
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

    pub(super) fn owns(&self, i: usize) -> bool {
        i >= self.first && i < self.first + self.count
    }
}

/// Registers the first `len` bytes of every slot of `pool` as fixed buffers (index = slot).
/// Whether the kernel took them (it may refuse: `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`);
/// without, the plain opcodes are used.
pub(super) fn register_buffers(ring: &IoUring, pool: &Pool, len: usize) -> bool {
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
    // `Ring::drop` unregisters the buffers (or leaks the pool) before it is unmapped.
    let registered = unsafe { ring.submitter().register_buffers(&iovecs) };
    if let Err(e) = &registered {
        tracing::debug!(error = %e, "no registered buffers; plain reads and writes");
    }
    registered.is_ok()
}
