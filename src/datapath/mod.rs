//! The udp backend's userspace datapath: TUN ⇄ UDP, wire-compatible with upstream flannel
//! (the UDP payload is the bare inner IPv4 packet).
//!
//! - [`wire`]: the headers (IPv4, TCP, UDP, the virtio-net header) and the one Internet
//!   checksum; [`icmp`], [`route`]: ICMP replies and route lookup. Pure: fuzzed, benched,
//!   tested without root.
//! - [`gso`] and [`gro`]: cutting super-packets for the wire and coalescing received segments
//!   back into super-packets, for the TUN offloads (pure).
//! - [`pipeline`]: one decision per packet (the stages: classify, route, shape the send) and
//!   the worker loop, generic over the driver.
//! - [`io`]: the drivers (io_uring, recvmmsg fallback): what to read, write and send, carried
//!   out through the safe kernel wrappers in `crate::sys`; [`select_io`] picks one at start-up.
//! - [`counters`]: per-worker counters.
//! - [`worker`]: spawning, stopping and logging the worker threads.
//!
//! Nothing here is `unsafe`: buffers lent to the kernel are guarded by `sys::uring::Ring`.

pub mod counters;
pub mod gro;
pub mod gso;
pub mod icmp;
pub mod io;
pub mod pipeline;
pub mod route;
pub mod wire;
pub mod worker;

use std::fmt;

/// Which I/O layer the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoChoice {
    /// io_uring when the probe succeeds, else the mmsg fallback.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// The recvmmsg/sendmsg fallback, even where io_uring works (for testing both paths).
    Mmsg,
}

impl std::str::FromStr for IoChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(IoChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(IoChoice::Uring),
            "mmsg" | "fallback" => Ok(IoChoice::Mmsg),
            other => Err(format!(
                "unknown datapath I/O {other:?}: expected auto, uring or mmsg"
            )),
        }
    }
}

impl IoChoice {
    /// The canonical spelling (what `--udp-io` takes).
    pub fn name(self) -> &'static str {
        match self {
            IoChoice::Auto => "auto",
            IoChoice::Uring => "uring",
            IoChoice::Mmsg => "mmsg",
        }
    }
}

impl fmt::Display for IoChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The I/O layer in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Uring,
    Mmsg,
}

impl fmt::Display for IoKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoKind::Uring => "io_uring",
            IoKind::Mmsg => "recvmmsg/sendmsg",
        })
    }
}

/// io_uring was demanded but cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("io_uring datapath requested but unusable: {reason}")]
pub struct UringUnavailable {
    pub reason: String,
}

/// Probes io_uring (once per start) and picks the I/O layer; logs the choice and why.
///
/// # Errors
/// [`IoChoice::Uring`] on a host where the probe fails.
pub fn select_io(choice: IoChoice) -> Result<IoKind, UringUnavailable> {
    match choice {
        IoChoice::Mmsg => {
            tracing::info!("udp datapath: using recvmmsg/sendmsg (forced)");
            Ok(IoKind::Mmsg)
        }
        IoChoice::Uring => match crate::sys::uring::probe() {
            Ok(()) => {
                tracing::info!("udp datapath: using io_uring (forced)");
                Ok(IoKind::Uring)
            }
            Err(reason) => Err(UringUnavailable { reason }),
        },
        IoChoice::Auto => match crate::sys::uring::probe() {
            Ok(()) => {
                tracing::info!("udp datapath: using io_uring");
                Ok(IoKind::Uring)
            }
            Err(reason) => {
                tracing::warn!(%reason, "udp datapath: io_uring unusable, falling back to recvmmsg/sendmsg");
                Ok(IoKind::Mmsg)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_choice_parses() {
        assert_eq!("AUTO".parse::<IoChoice>(), Ok(IoChoice::Auto));
        assert_eq!("io_uring".parse::<IoChoice>(), Ok(IoChoice::Uring));
        assert_eq!("mmsg".parse::<IoChoice>(), Ok(IoChoice::Mmsg));
        assert!("epoll".parse::<IoChoice>().is_err());
        for c in [IoChoice::Auto, IoChoice::Uring, IoChoice::Mmsg] {
            assert_eq!(c.to_string().parse::<IoChoice>(), Ok(c));
        }
    }

    #[test]
    fn forced_mmsg_never_probes() {
        assert_eq!(select_io(IoChoice::Mmsg), Ok(IoKind::Mmsg));
        // Auto always yields some path.
        assert!(select_io(IoChoice::Auto).is_ok());
    }
}
