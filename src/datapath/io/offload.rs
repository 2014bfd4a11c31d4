//! The offload steps both drivers share (TUN opened with `IFF_VNET_HDR`, see `sys::tun`):
//! readying a TUN read for the wire, splitting a UDP GRO receive into its datagrams, and
//! writing the delivered packets back to the TUN coalesced. The packet logic itself is pure and
//! lives in [`crate::datapath::offload`]; this module only ties it to the TUN queue and the
//! counters.

use std::net::SocketAddrV4;

use crate::datapath::offload::{to_wire, write_coalesced, Layout, VnetHdr, Wire, VNET_HDR_LEN};
use crate::datapath::pipeline::{Action, Origin, TunWrite};
use crate::datapath::stats::{DropReason, WorkerStats};
use crate::sys::tun::TunQueue;

/// Room for the segments of one super-packet: 64 KiB of payload plus a header per segment
/// (even at a 536-byte MSS, 123 segments × 120 bytes of headers fit).
pub const SCRATCH_LEN: usize = 2 * 65_536;

/// Most datagrams the kernel coalesces into one UDP GRO receive (`UDP_GRO_CNT_MAX`).
pub const GRO_MAX_SEGMENTS: usize = 64;

/// Most segments one UDP GSO send may carry on every kernel with `UDP_SEGMENT` (4.18 has 64;
/// later kernels allow 128).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Readies the packet the egress verdict forwarded for the wire. `slot` starts with the
/// virtio-net header the TUN read delivered, followed by the packet (`len` bytes); segments
/// (or only their headers, as `layout` says) go to `scratch`. `None` when the packet cannot
/// be sent (counted as a bad header).
pub fn egress_wire(
    slot: &mut [u8],
    len: usize,
    scratch: &mut [u8],
    layout: Layout,
    stats: &WorkerStats,
) -> Option<Wire> {
    let vnet = VnetHdr::parse(slot)?;
    let pkt = slot.get_mut(VNET_HDR_LEN..)?;
    match to_wire(&vnet, pkt, len, scratch, layout) {
        Ok(wire) => {
            stats.tun_read(match wire {
                Wire::Segmented(s) => s.count,
                Wire::Whole { .. } => 1,
            });
            Some(wire)
        }
        Err(e) => {
            tracing::trace!(error = %e, ?vnet, "dropping an offloaded packet");
            stats.drop_packet(DropReason::BadHeader);
            None
        }
    }
}

/// Hands each datagram of a receive to `handle`: `buf[..len]` holds datagrams of `stride`
/// bytes (the last may be shorter) when UDP GRO coalesced several, else one. Delivered
/// packets are recorded in `delivered` as `(base + offset, len)` for [`write_delivered`].
/// Returns how many datagrams the receive carried (for the GRO batch-size histogram).
pub fn split_datagrams<H>(
    buf: &mut [u8],
    len: usize,
    stride: usize,
    src: SocketAddrV4,
    base: usize,
    handle: &mut H,
    delivered: &mut Vec<(usize, usize)>,
) -> usize
where
    H: FnMut(Origin, &mut [u8], usize) -> Action,
{
    if len == 0 {
        // A zero-length datagram is one packet too: the verdict counts its drop (unknown
        // peer, or a bad header from a peer), so every drop has a reason.
        let _ = handle(Origin::Udp(src), buf, 0);
        return 1;
    }
    let stride = if stride == 0 { len } else { stride };
    let mut off = 0;
    let mut datagrams = 0;
    while off < len {
        let n = stride.min(len - off);
        let Some(datagram) = buf.get_mut(off..) else {
            break;
        };
        match handle(Origin::Udp(src), datagram, n) {
            Action::WriteTun {
                len,
                kind: TunWrite::Deliver,
            } => delivered.push((base + off, len)),
            // The ingress verdict only ever delivers or drops (and counts its drops).
            Action::Drop | Action::WriteTun { .. } | Action::SendUdp { .. } => {}
        }
        off += n;
        datagrams += 1;
    }
    datagrams
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
    stats: &WorkerStats,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each datagram of a receive reaches the verdict once, an empty one included.
    #[test]
    fn every_datagram_reaches_the_verdict_even_an_empty_one() {
        let src = SocketAddrV4::new([192, 0, 2, 1].into(), 8285);
        let mut buf = [0u8; 64];
        for (len, stride, want) in [
            (0, 0, vec![0]),
            (10, 0, vec![10]),
            (25, 10, vec![10, 10, 5]),
        ] {
            let mut seen = Vec::new();
            let mut delivered = Vec::new();
            let mut handle = |_: Origin, _: &mut [u8], n: usize| {
                seen.push(n);
                Action::Drop
            };
            let n = split_datagrams(&mut buf, len, stride, src, 0, &mut handle, &mut delivered);
            assert_eq!(seen, want, "len {len}, stride {stride}");
            assert_eq!(n, want.len());
            assert!(delivered.is_empty());
        }
    }
}
