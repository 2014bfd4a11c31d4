//! The drivers: the effectful half of a worker. A driver owns the worker's fds and buffers,
//! hands each packet it reads to the pipeline's stages ([`crate::datapath::pipeline::Stages`])
//! and carries out the [`Action`](crate::datapath::pipeline::Action) they return (send these
//! datagrams to that peer, write this frame to the TUN, drop), through the `sys` wrappers,
//! which know nothing of packets. A driver never looks inside a packet.
//!
//! - [`uring`]: the io_uring driver ([`uring::UringIo`]) over `sys::uring::Ring`.
//! - [`udp_send`]: its gathered UDP GSO sends, with the fall back to one datagram per send
//!   when a GSO send fails with `EIO`/`EINVAL`.
//! - [`mmsg`]: the recvmmsg/sendmsg fallback driver ([`mmsg::MmsgIo`], on quinn-udp).
//! - [`write_delivered`]: the coalesced TUN writes both drivers make at the end of a batch.
//!
//! [`crate::datapath::select_io`] picks the driver at start-up.

pub mod mmsg;
pub mod udp_send;
pub mod uring;

use std::net::UdpSocket;
use std::sync::Arc;

use crate::datapath::counters::{DropReason, WorkerCounters};
use crate::datapath::gro::write_coalesced;
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
    /// datagrams to a different receive socket than other workers' (docs/design.md, "The
    /// udp datapath").
    pub tx: Option<UdpSocket>,
    /// The datapath's stop signal.
    pub stop: Arc<EventFd>,
}

/// Writes `delivered` (each `(offset, len)`, found by `packet`) to the TUN, the segments of
/// each TCP flow (and the datagrams of each UDP flow, where the TUN takes UDP super-packets)
/// coalesced into super-packets (see [`write_coalesced`]), and empties the list.
/// `order` is the coalescer's scratch space.
pub fn write_delivered<'a>(
    tun: &TunQueue,
    packet: impl Fn(usize, usize) -> &'a [u8],
    delivered: &mut Vec<(usize, usize)>,
    order: &mut Vec<(u64, u32)>,
    stats: &WorkerCounters,
) {
    write_coalesced(
        delivered,
        packet,
        tun.uso(),
        order,
        |pieces, packets, bytes| match tun.send_vectored(pieces) {
            Ok(_) => stats.ingress_n(packets, bytes),
            Err(_) => {
                for _ in 0..packets {
                    stats.drop_packet(DropReason::TunError);
                }
            }
        },
    );
    delivered.clear();
}
