//! The drivers: the effectful half of a worker. A driver owns the worker's fds and buffers,
//! asks the pipeline what to do with each packet it reads ([`crate::datapath::pipeline`]:
//! forward to a peer, deliver, answer with ICMP, drop), and does exactly that through the
//! `sys` wrappers, which know nothing of packets.
//!
//! - [`uring`]: the io_uring driver ([`uring::UringIo`]) over `sys::uring::Ring`.
//! - [`gso`]: its gathered UDP GSO sends, with the fall back to one datagram per send when a
//!   GSO send fails with `EIO`/`EINVAL`.
//! - [`mmsg`]: the recvmmsg/sendmsg fallback driver ([`mmsg::MmsgIo`], on quinn-udp).
//! - [`offload`]: the TUN-offload steps both drivers share (TSO split before sending, GRO
//!   receive split and coalesced TUN writes).
//!
//! [`crate::datapath::select_io`] picks the driver at start-up.

pub mod gso;
pub mod mmsg;
pub mod offload;
pub mod uring;

use std::net::UdpSocket;
use std::sync::Arc;

use crate::sys::eventfd::EventFd;
use crate::sys::tun::TunQueue;

/// Everything one worker reads from and writes to. Moved into the worker thread, which builds
/// its driver ([`uring::UringIo`] or [`mmsg::MmsgIo`]) around it.
#[derive(Debug)]
pub struct WorkerFds {
    /// This worker's queue of the TUN device.
    pub tun: TunQueue,
    /// Bound to `<iface address>:<Port>` in the `SO_REUSEPORT` group; receives, and sends
    /// unless `tx` is set.
    pub rx: UdpSocket,
    /// A socket with its own source port for sending, so peers' kernels spread this worker's
    /// datagrams to a different receive socket than other workers' (see DESIGN.md).
    pub tx: Option<UdpSocket>,
    /// The datapath's stop signal.
    pub stop: Arc<EventFd>,
}
