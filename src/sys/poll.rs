//! Readiness waits for the recvmmsg/sendmsg fallback (`datapath::io::mmsg`): `poll` on a few
//! fds, and the batch size of one `recvmmsg` (quinn-udp's, which makes the calls itself).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Datagrams per `recvmmsg` and TUN reads per round (quinn-udp's recvmmsg batch on Linux,
/// at most 32).
pub const BATCH: usize = if quinn_udp::BATCH_SIZE < 32 {
    quinn_udp::BATCH_SIZE
} else {
    32
};

/// Polls three fds for input; returns which are ready (errors and hang-ups count as ready,
/// so the following read reports them). `timeout_ms` < 0: wait for ever.
///
/// # Errors
/// `poll` failed other than by a signal.
pub fn poll_many(fds: [BorrowedFd<'_>; 3], timeout_ms: i32) -> io::Result<[bool; 3]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `pfds` is a live array of initialised pollfd structs whose exact length is
        // passed; the fds are borrowed for the duration of the call.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if rc >= 0 {
            return Ok(pfds.map(|p| p.revents != 0));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether `fd` has one of `events` (or an error) within `timeout_ms` (0 = just look).
fn poll_one(fd: BorrowedFd<'_>, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one initialised pollfd, borrowed fd alive for the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pfd.revents != 0)
}

/// Whether `fd` is readable within `timeout_ms` (0 = just look).
///
/// # Errors
/// `poll` failed.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    poll_one(fd, libc::POLLIN, timeout_ms)
}

/// Whether `fd` is writable within `timeout_ms`.
///
/// # Errors
/// `poll` failed.
pub fn poll_writable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    poll_one(fd, libc::POLLOUT, timeout_ms)
}
