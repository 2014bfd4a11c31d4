//! Thin, safe wrappers over the Linux syscalls the udp datapath needs, and a netns helper for
//! tests.
//!
//! Every `unsafe` block in the crate lives under this module (`lib.rs` denies `unsafe_code`
//! everywhere else). Each one is preceded by a `// SAFETY:` comment naming the invariant it
//! relies on. Everything exported from here is safe to call.
//!
//! - [`tun`]: the multi-queue TUN device (through `tun-rs`).
//! - [`sockopt`]: the workers' UDP sockets (`SO_REUSEPORT`, buffer sizes, `UDP_GRO`).
//! - [`eventfd`]: the stop signal every worker waits on.
//! - [`uring`]: the io_uring worker I/O, where buffers are lent to the kernel.
//! - [`mmsg`]: the fallback worker I/O (quinn-udp recvmmsg/sendmsg, plain TUN read/write).
//! - [`offload`]: the TUN-offload steps both worker I/O layers share.
//! - [`netns`]: moving the calling thread into a fresh network namespace (tests).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod eventfd;
pub mod mmsg;
pub mod netns;
pub mod offload;
pub mod sockopt;
pub mod tun;
pub mod uring;

use std::io;
use std::net::UdpSocket;
use std::sync::Arc;

/// Everything one worker reads from and writes to. Moved into the worker thread, which builds
/// its I/O layer ([`uring::UringIo`] or [`mmsg::MmsgIo`]) around it.
#[derive(Debug)]
pub struct WorkerFds {
    /// This worker's queue of the TUN device.
    pub tun: tun::TunQueue,
    /// Bound to `<iface address>:<Port>` in the `SO_REUSEPORT` group; receives, and sends
    /// unless `tx` is set.
    pub rx: UdpSocket,
    /// A socket with its own source port for sending, so peers' kernels spread this worker's
    /// datagrams to a different receive socket than other workers' (see DESIGN.md).
    pub tx: Option<UdpSocket>,
    /// The datapath's stop signal.
    pub stop: Arc<eventfd::EventFd>,
}

/// Whether a per-packet I/O error is transient (count it and carry on) rather than a sign
/// that the fd is unusable (stop the worker).
pub(crate) fn is_transient(err: i32) -> bool {
    matches!(
        err,
        libc::EAGAIN
            | libc::EINTR
            | libc::ENOBUFS
            | libc::ENOMEM
            | libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::EHOSTDOWN
            | libc::ENETUNREACH
            | libc::ENETDOWN
            | libc::EMSGSIZE
            | libc::EPERM
            | libc::EACCES
            | libc::EINVAL
            | libc::EIO
    )
}

/// `io::Error` from a negative errno as io_uring reports it.
pub(crate) fn errno_error(res: i32) -> io::Error {
    io::Error::from_raw_os_error(res.saturating_neg())
}
