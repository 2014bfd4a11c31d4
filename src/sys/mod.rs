//! The ground floor: thin, safe wrappers over the Linux syscalls the udp datapath needs, and a
//! netns helper for tests. Nothing here knows what a packet is, and nothing here imports the
//! rest of the crate; the datapath's drivers (`datapath::io`) decide what to read, write and
//! send, and call these.
//!
//! Every `unsafe` block in the crate lives under this module (`lib.rs` denies `unsafe_code`
//! everywhere else). Each one is preceded by a `// SAFETY:` comment naming the invariant it
//! relies on. Everything exported from here is safe to call.
//!
//! - [`tun`]: the system calls on the multi-queue TUN device (through `tun-rs`), its offload
//!   flags (the device itself is `exec::tun`'s).
//! - [`sockopt`]: the workers' UDP sockets (`SO_REUSEPORT`, buffer sizes, `UDP_GRO`).
//! - [`udp`]: `sendmsg` with a `UDP_SEGMENT` (GSO) control message, the `UDP_GRO` segment
//!   size of a receive, `sockaddr_in` conversions.
//! - [`eventfd`]: the stop signal every worker waits on.
//! - [`uring`]: one worker's io_uring ([`uring::Ring`]): the ring, the slot pool with its
//!   lent/idle bookkeeping (a lent slot cannot be borrowed), provided-buffer rings, the probe.
//! - [`mmsg`]: `poll` waits and the batch size for the recvmmsg/sendmsg fallback.
//! - [`fd`]: close-on-exec and blocking flags, memfds, taking inherited fds, `execve` (the
//!   hand-over of `daemon::handover`).
//! - [`netns`]: moving the calling thread into a fresh network namespace (tests).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod eventfd;
pub mod fd;
pub mod netns;
pub mod poll;
pub mod sockopt;
pub mod tun;
pub mod udp;
pub mod uring;

use std::io;

/// Whether a per-packet I/O error is transient (count it and carry on) rather than a sign
/// that the fd is unusable (stop the worker).
pub fn is_transient(err: i32) -> bool {
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
pub fn errno_error(res: i32) -> io::Error {
    io::Error::from_raw_os_error(res.saturating_neg())
}
