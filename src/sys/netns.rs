//! Network namespaces for tests: root tests move a dedicated thread into a brand-new, empty
//! namespace, so nothing they create (TUN devices, routes, sockets) touches the host, and it all
//! disappears with the thread.

use std::io;

/// Moves the calling thread (only it, and the threads it spawns afterwards) into a new network
/// namespace. Needs `CAP_SYS_ADMIN`.
///
/// # Errors
/// `EPERM` without the capability; `EINVAL` where namespaces are not supported.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare(2) takes no pointers. CLONE_NEWNET affects only the calling thread's
    // namespace membership (the process keeps its other threads where they are).
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
