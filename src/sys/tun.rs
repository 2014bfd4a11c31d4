//! The multi-queue TUN device of the udp backend.
//!
//! `IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE`: layer 3, no packet-information prefix (upstream's
//! wire format is the bare IPv4 packet), one queue per worker. The device is not persistent: it
//! disappears, with its address and routes, when the last queue is closed.
//!
//! With offloads, also `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4)`: every read
//! and write then starts with a `virtio_net_hdr` (`datapath::offload::VnetHdr`), reads may be
//! TCP super-packets of up to 64 KiB with partial checksums, and writes may be too. Only TSO4:
//! the overlay is IPv4, and UDP segmentation offload (`TUN_F_USO4`) would hand over UDP
//! super-packets that the datapath does not cut.
//!
//! # Kernel state owned by this module
//! - link `flannel0` (or the name given), alive exactly as long as some [`TunQueue`] is.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use tun_rs::{DeviceBuilder, SyncDevice};

/// One queue (one fd) of a multi-queue TUN device.
pub struct TunQueue(SyncDevice);

impl std::fmt::Debug for TunQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TunQueue")
            .field(&self.0.as_raw_fd())
            .finish()
    }
}

/// Creates (or attaches to) TUN device `name` and opens `queues` queues on it.
///
/// A queue that attaches to a device which still has other queues gets that device's flags,
/// whatever it asked for: check [`TunQueue::vnet_hdr`] (see `datapath::device::create`).
///
/// # Errors
/// The device exists with incompatible flags (e.g. single-queue), `/dev/net/tun` is missing,
/// or we lack `CAP_NET_ADMIN`.
pub fn open_queues(name: &str, queues: usize, offload: bool) -> io::Result<Vec<TunQueue>> {
    let first = DeviceBuilder::new()
        .name(name)
        .multi_queue(true)
        .packet_information(false)
        .offload(offload)
        .build_sync()?;
    let mut all = Vec::with_capacity(queues.max(1));
    for _ in 1..queues.max(1) {
        all.push(TunQueue(first.try_clone()?));
    }
    all.insert(0, TunQueue(first));
    if offload {
        // tun-rs enables TSO6 and USO as well (on every clone too); the offload mask is
        // device-wide, so narrowing it once after the last clone is what counts.
        set_offload(&all[0], libc::TUN_F_CSUM | libc::TUN_F_TSO4)?;
    }
    Ok(all)
}

/// `TUNSETOFFLOAD`: which offloads the kernel may hand to this device's readers.
fn set_offload(q: &TunQueue, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: `q` holds a live TUN fd for the call; TUNSETOFFLOAD takes its argument by value
    // (an unsigned long of TUN_F_* bits) and touches no userspace memory.
    let rc = unsafe { libc::ioctl(q.raw(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl TunQueue {
    /// Whether the device has `IFF_VNET_HDR` (`TUNGETIFF`), i.e. every read and write
    /// carries a virtio-net header.
    pub fn vnet_hdr(&self) -> io::Result<bool> {
        // SAFETY: all-zero bytes are a valid `ifreq` (a name and a union of plain integers).
        let mut ifr: libc::ifreq = unsafe { MaybeUninit::zeroed().assume_init() };
        // SAFETY: `self` holds a live TUN fd for the call; TUNGETIFF writes one `ifreq` into `ifr`,
        // a live local.
        let rc = unsafe { libc::ioctl(self.raw(), libc::TUNGETIFF, &raw mut ifr) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: TUNGETIFF fills the union's flags member.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        Ok(libc::c_int::from(flags) & libc::IFF_VNET_HDR != 0)
    }

    /// The device's interface index.
    pub fn if_index(&self) -> io::Result<u32> {
        self.0.if_index()
    }

    /// The device's name (the kernel's, in case it differs from the one asked for).
    pub fn name(&self) -> io::Result<String> {
        self.0.name()
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.0.set_nonblocking(nonblocking)
    }

    /// Reads one packet (blocking unless the queue was made non-blocking).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }

    /// Writes one packet.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }

    /// Writes one packet gathered from `pieces` (`writev`).
    pub fn send_vectored(&self, pieces: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.send_vectored(pieces)
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
