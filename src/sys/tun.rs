//! The system calls on the udp backend's multi-queue TUN device (`exec::tun` owns the device
//! and decides what is done with it).
//!
//! `IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE`: layer 3, no packet-information prefix (upstream's
//! wire format is the bare IPv4 packet), one queue per worker. Without `TUNSETPERSIST`
//! ([`TunQueue::set_persist`]) a device disappears, with its address and routes, when its
//! last queue is closed.
//!
//! With offloads, also `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_USO4 |
//! TUN_F_USO6)`: every read and write then starts with a `virtio_net_hdr`
//! (`datapath::wire::vnet::VnetHdr`), reads may be TCP or UDP super-packets of up to 64 KiB with
//! partial checksums, and writes may be too. No TSO6: the overlay is IPv4. UDP segmentation
//! offload arrived in Linux 6.2 (and the kernel takes USO4 only together with USO6); where the
//! kernel refuses it, the queues fall back to TCP alone ([`TunQueue::uso`] says which).
//!
//! A queue is held as a plain file once opened: `tun-rs` creates the device, but it cannot
//! wrap an fd with `IFF_VNET_HDR` (it refuses, having no way to learn the framing), and a
//! queue handed over to a new image (`daemon::handover`) has to be taken from its fd. Reads
//! and writes are plain `read`/`write`/`writev` either way.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use tun_rs::DeviceBuilder;

/// One queue (one fd) of a multi-queue TUN device.
pub struct TunQueue {
    file: File,
    /// UDP segmentation offload is on (see the module docs).
    uso: bool,
}

impl std::fmt::Debug for TunQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunQueue")
            .field("fd", &self.file.as_raw_fd())
            .field("uso", &self.uso)
            .finish()
    }
}

/// Creates (or attaches to) TUN device `name` and opens `queues` queues on it.
///
/// A queue that attaches to a device which still has other queues gets that device's flags,
/// whatever it asked for: check [`TunQueue::vnet_hdr`] (see `exec::tun::create`).
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
        all.push(owned(first.try_clone()?));
    }
    all.insert(0, owned(first));
    // tun-rs enables TSO6 as well (on every clone too); the offload mask is device-wide, so
    // setting it once after the last clone is what counts. Without offloads the mask is
    // cleared: a persistent device (see `set_persist`) keeps the mask a previous daemon set,
    // and no reader without virtio-net headers may be handed super-packets.
    let uso = if offload {
        set_offloads(&all[0])?
    } else {
        set_offload(&all[0], 0)?;
        false
    };
    for q in &mut all {
        q.uso = uso;
    }
    Ok(all)
}

/// Sets the offload mask of a device with virtio-net headers: TCP and UDP segmentation where
/// the kernel has both, else TCP alone. Returns whether UDP's is on.
fn set_offloads(q: &TunQueue) -> io::Result<bool> {
    let tcp = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
    match set_offload(q, tcp | libc::TUN_F_USO4 | libc::TUN_F_USO6) {
        Ok(()) => Ok(true),
        // Before 6.2 the kernel knows no USO bits and refuses the whole mask.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => set_offload(q, tcp).map(|()| false),
        Err(e) => Err(e),
    }
}

/// Takes the fd out of a `tun-rs` device.
fn owned(dev: tun_rs::SyncDevice) -> TunQueue {
    // SAFETY: `into_raw_fd` gives up the device's one fd without closing it; nothing else owns
    // it, so the `OwnedFd` becomes its only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(dev.into_raw_fd()) };
    TunQueue {
        file: File::from(fd),
        uso: false,
    }
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
    /// Takes inherited `fd`, which must be a queue of TUN device `name` (`TUNGETIFF` says which device
    /// an fd is attached to); a handed-over queue is checked before it is trusted.
    ///
    /// # Errors
    /// `fd` is no TUN queue, or one of another device.
    pub fn take_inherited(fd: OwnedFd, name: &str) -> io::Result<TunQueue> {
        let mut q = TunQueue {
            file: File::from(fd),
            uso: false,
        };
        let (attached, flags) = q.getiff().map_err(|e| {
            io::Error::new(e.kind(), format!("fd {} is not a TUN queue: {e}", q.raw()))
        })?;
        if attached != name {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {} is a queue of {attached:?}, not of {name:?}", q.raw()),
            ));
        }
        // The offload mask is the device's and survives its queues' owners; setting it again
        // tells this image which one holds (the previous image may predate USO).
        if flags & libc::IFF_VNET_HDR != 0 {
            q.uso = set_offloads(&q)?;
        }
        Ok(q)
    }

    /// Whether UDP segmentation offload is on: reads may be UDP super-packets
    /// (`VIRTIO_NET_HDR_GSO_UDP_L4`), and writes may be.
    pub fn uso(&self) -> bool {
        self.uso
    }

    /// `TUNGETIFF`: the device's name and flags.
    fn getiff(&self) -> io::Result<(String, libc::c_int)> {
        // SAFETY: all-zero bytes are a valid `ifreq` (a name and a union of plain integers).
        let mut ifr: libc::ifreq = unsafe { MaybeUninit::zeroed().assume_init() };
        // SAFETY: `self` holds a live fd for the call; TUNGETIFF writes one `ifreq` into `ifr`,
        // a live local (on a non-TUN fd it fails without writing).
        let rc = unsafe { libc::ioctl(self.raw(), libc::TUNGETIFF, &raw mut ifr) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: TUNGETIFF fills the union's flags member.
        let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags });
        let name: [u8; libc::IFNAMSIZ] = ifr.ifr_name.map(|c| c as u8);
        let name = CStr::from_bytes_until_nul(&name)
            .map_err(|_| io::Error::other("TUNGETIFF returned an unterminated name"))?;
        Ok((name.to_string_lossy().into_owned(), flags))
    }

    /// Whether the device has `IFF_VNET_HDR` (`TUNGETIFF`), i.e. every read and write
    /// carries a virtio-net header.
    pub fn vnet_hdr(&self) -> io::Result<bool> {
        Ok(self.getiff()?.1 & libc::IFF_VNET_HDR != 0)
    }

    /// `TUNSETPERSIST`: a persistent device (with its addresses and routes) outlives its
    /// last queue, so a crashed daemon's successor attaches to it instead of making it anew.
    pub fn set_persist(&self, on: bool) -> io::Result<()> {
        // SAFETY: `self` holds a live TUN fd for the call; TUNSETPERSIST takes its argument by
        // value (0 or 1) and touches no userspace memory.
        let rc = unsafe { libc::ioctl(self.raw(), libc::TUNSETPERSIST, libc::c_ulong::from(on)) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The device's interface index.
    pub fn if_index(&self) -> io::Result<u32> {
        let name = std::ffi::CString::new(self.name()?).map_err(io::Error::other)?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(index)
    }

    /// The device's name (the kernel's, in case it differs from the one asked for).
    pub fn name(&self) -> io::Result<String> {
        Ok(self.getiff()?.0)
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        super::fd::set_nonblocking(self.file.as_fd(), nonblocking)
    }

    /// Reads one packet (blocking unless the queue was made non-blocking).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one packet.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    /// Writes one packet gathered from `pieces` (`writev`).
    pub fn send_vectored(&self, pieces: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(pieces)
    }

    pub fn raw(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Gives up the fd (a hand-over).
    pub fn into_fd(self) -> OwnedFd {
        self.file.into()
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
