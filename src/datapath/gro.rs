//! Coalescing on receive (GRO in userspace), the reverse of [`super::gso`]: the segments of one
//! flow, grouped across a whole batch of receives, become one super-packet for a TUN write
//! with a virtio-net header ([`write_coalesced`], built on [`coalesce_start`],
//! [`coalesce_push`] and [`coalesce_finish`]), gathered in place with `writev`. Only a merged
//! packet's header is copied.
//!
//! Pure, allocation-free and panic-free on any input; benched in `benches/datapath.rs`.

use std::io::IoSlice;

use super::wire::checksum::{fold, pseudo_header_sum};
use super::wire::ipv4::{fill_header_checksum, Ipv4View, ADDRS, PROTO_TCP, PROTO_UDP};
use super::wire::tcp::{
    FLAG_ACK, FLAG_PSH, TCP_CHECKSUM, TCP_DATA_OFFSET, TCP_FLAGS, TCP_MIN_HEADER,
};
use super::wire::udp::{UDP_CHECKSUM, UDP_HEADER, UDP_LEN};
use super::wire::vnet::{VnetHdr, GSO_TCPV4, GSO_UDP_L4, VNET_F_NEEDS_CSUM};

/// Most datagrams the kernel coalesces into one UDP GRO receive (`UDP_GRO_CNT_MAX`).
pub const GRO_MAX_SEGMENTS: usize = 64;

/// A run of TCP/IPv4 segments (or UDP/IPv4 datagrams) of one flow that will reach the TUN as
/// one super-packet: the receive-side counterpart of [`segment_tcp4`] (GRO). Only the headers
/// are copied: the merged packet's header is the first segment's, rewritten in a small buffer
/// ([`coalesce_finish`]), and every segment's payload is gathered behind it where it lies, by
/// one `writev` ([`write_coalesced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesced {
    /// Bytes of the merged packet so far (headers plus every payload).
    pub len: usize,
    /// Segments merged.
    pub segments: usize,
    /// Payload bytes of the first segment: the `gso_size` of the virtio-net header.
    pub gso_size: usize,
    /// IPv4 plus TCP (or UDP) header length: the virtio-net header's `hdr_len`.
    pub hdr_len: usize,
    /// `PROTO_TCP` or `PROTO_UDP`.
    proto: u8,
    /// The last segment merged carried PSH; the merged packet carries it.
    psh: bool,
    /// A shorter segment or a PSH ended the run: nothing more may be appended.
    closed: bool,
}

/// The IPv4 and TCP (or UDP) header lengths, IP total length and protocol of a coalescable
/// packet, or `None`: a TCP data segment with only ACK (and PSH) set, or, with `udp`, a UDP
/// datagram with payload. `seg` must be exactly the packet (its length the IP total length,
/// as the ingress verdict reports it), so the gathered pieces never carry trailing bytes.
fn l4_headers(seg: &[u8], udp: bool) -> Option<(usize, usize, usize, u8)> {
    let view = Ipv4View::new_checked(seg).ok()?;
    let frag = seg.get(6..8)?;
    let ihl = view.header_len();
    let total = view.total_len();
    if total != seg.len() || view.fragment_offset() != 0 || frag[0] & 0x20 != 0 || ihl != 20 {
        return None;
    }
    let l4 = seg.get(ihl..total)?;
    match view.protocol() {
        PROTO_TCP => {
            let doff = usize::from(*l4.get(TCP_DATA_OFFSET)? >> 4) * 4;
            let flags = *l4.get(TCP_FLAGS)?;
            (doff >= TCP_MIN_HEADER
                && doff < l4.len()
                && (flags == FLAG_ACK || flags == FLAG_ACK | FLAG_PSH))
                .then_some((ihl, doff, total, PROTO_TCP))
        }
        PROTO_UDP if udp => {
            // The UDP length must agree with the IP one: the merged header gets a new one.
            let len = l4.get(UDP_LEN..UDP_LEN + 2)?;
            (usize::from(u16::from_be_bytes([len[0], len[1]])) == l4.len() && l4.len() > UDP_HEADER)
                .then_some((ihl, UDP_HEADER, total, PROTO_UDP))
        }
        _ => None,
    }
}

/// Starts a run with the packet `first`. `None` when it is not a coalescable TCP/IPv4 data
/// segment or (with `udp`: the TUN takes UDP super-packets) UDP/IPv4 datagram; then deliver
/// it as it is.
pub fn coalesce_start(first: &[u8], udp: bool) -> Option<Coalesced> {
    let (ihl, l4_hdr, total, proto) = l4_headers(first, udp)?;
    let hdr_len = ihl + l4_hdr;
    let psh = proto == PROTO_TCP
        && first
            .get(ihl + TCP_FLAGS)
            .is_some_and(|f| f & FLAG_PSH != 0);
    Some(Coalesced {
        len: total,
        segments: 1,
        gso_size: total - hdr_len,
        hdr_len,
        proto,
        psh,
        closed: psh,
    })
}

/// Adds `seg` to the run started by `first` if it is the next segment of the same flow with
/// identical headers (but for length, id, sequence number and checksums), at most
/// `cur.gso_size` of payload, and the merged packet stays within 64 KiB. Returns whether it
/// did; the caller then gathers `seg[cur.hdr_len..]` (up to its IP total length) behind the
/// run. Rules as Linux's `tcp_gro_receive`: same ACK, window and options; a segment shorter
/// than the first, or one with PSH, is the last. UDP datagrams as Linux's
/// `udp_gro_receive_segment`: same addresses and ports, and a datagram shorter than the first
/// is the last; they have no sequence, so arrival order is their order.
pub fn coalesce_push(first: &[u8], cur: &mut Coalesced, seg: &[u8]) -> bool {
    if cur.closed {
        return false;
    }
    let Some((ihl, l4_hdr, seg_total, proto)) = l4_headers(seg, cur.proto == PROTO_UDP) else {
        return false;
    };
    let hdr = ihl + l4_hdr;
    let plen = seg_total - hdr;
    if proto != cur.proto
        || hdr != cur.hdr_len
        || plen > cur.gso_size
        || cur.len + plen > usize::from(u16::MAX)
    {
        return false;
    }
    let (Some(f), Some(h)) = (first.get(..hdr), seg.get(..hdr)) else {
        return false;
    };
    let t = ihl;
    // Version/IHL/TOS; flags and fragment offset, TTL, protocol; addresses; ports.
    let same_ip = f[0..2] == h[0..2]
        && f[6..10] == h[6..10]
        && f[12..20] == h[12..20]
        && f[t..t + 4] == h[t..t + 4];
    if proto == PROTO_UDP {
        if !same_ip {
            return false;
        }
        cur.len += plen;
        cur.segments += 1;
        cur.closed = plen < cur.gso_size;
        return true;
    }
    // And for TCP: ACK number and data offset; flags but PSH; window; urgent pointer and
    // options.
    let same = same_ip
        && f[t + 8..t + 13] == h[t + 8..t + 13]
        && f[t + 13] & !FLAG_PSH == h[t + 13] & !FLAG_PSH
        && f[t + 14..t + 16] == h[t + 14..t + 16]
        && f[t + 18..hdr] == h[t + 18..hdr];
    let seq = |p: &[u8]| u32::from_be_bytes([p[t + 4], p[t + 5], p[t + 6], p[t + 7]]);
    let payload_so_far = (cur.len - cur.hdr_len) as u32;
    if !same || seq(h) != seq(f).wrapping_add(payload_so_far) {
        return false;
    }
    cur.len += plen;
    cur.segments += 1;
    if h[t + TCP_FLAGS] & FLAG_PSH != 0 {
        cur.psh = true;
        cur.closed = true;
    }
    if plen < cur.gso_size {
        cur.closed = true;
    }
    true
}

/// Rewrites `first`, a copy of the run's first segment's headers (`cur.hdr_len` bytes), into the
/// header of the merged packet and returns the virtio-net header to write it with.
///
/// A run of one segment is left untouched and goes without offload (`GSO_NONE`). Otherwise:
/// IP total length and header checksum of the merged packet, PSH if any segment had it (UDP:
/// the merged UDP length), and in the TCP (UDP) checksum field the pseudo-header sum with
/// `NEEDS_CSUM`: the kernel treats the packet as `CHECKSUM_PARTIAL` (as if a local socket had
/// sent it), finishing the checksum only if the packet leaves through a device that needs one. Each segment was protected by
/// the UDP checksum of the datagram that carried it.
pub fn coalesce_finish(first: &mut [u8], cur: &Coalesced) -> VnetHdr {
    if cur.segments < 2 {
        return VnetHdr::default();
    }
    let Some(ihl) = first.first().map(|b| usize::from(b & 0x0f) * 4) else {
        return VnetHdr::default();
    };
    let Some(h) = first.get_mut(..cur.hdr_len) else {
        return VnetHdr::default();
    };
    let l4_len = cur.len - ihl;
    h[2..4].copy_from_slice(&(cur.len as u16).to_be_bytes());
    fill_header_checksum(&mut h[..ihl]);
    let (gso_type, at) = if cur.proto == PROTO_UDP {
        h[ihl + UDP_LEN..ihl + UDP_LEN + 2].copy_from_slice(&(l4_len as u16).to_be_bytes());
        (GSO_UDP_L4, UDP_CHECKSUM)
    } else {
        if cur.psh {
            h[ihl + TCP_FLAGS] |= FLAG_PSH;
        }
        (GSO_TCPV4, TCP_CHECKSUM)
    };
    let pseudo = pseudo_header_sum(&h[ADDRS..ADDRS + 8], cur.proto, l4_len);
    h[ihl + at..ihl + at + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
    VnetHdr {
        flags: VNET_F_NEEDS_CSUM,
        gso_type,
        hdr_len: cur.hdr_len as u16,
        gso_size: cur.gso_size as u16,
        csum_start: ihl as u16,
        csum_offset: at as u16,
    }
}

/// Most segments merged into one TUN write (Linux's UDP GRO merges at most 64 datagrams, so a
/// run rarely gets longer; a longer one is simply cut).
pub const MAX_RUN: usize = 64;

/// Longest header a merged packet can have: IPv4 (20 bytes, `l4_headers` wants no options)
/// plus the longest TCP header.
const MAX_MERGED_HEADER: usize = 20 + 60;

/// Which flow a delivered packet belongs to, for [`write_coalesced`]'s grouping: addresses,
/// protocol and (for TCP and UDP) ports folded into a u64. Packets of one flow always get the
/// same key; two flows that happen to share one are merely not told apart (their packets stay
/// in arrival order, as without grouping).
fn flow_key(pkt: &[u8]) -> u64 {
    let Some(h) = pkt.first_chunk::<20>() else {
        return 0;
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let addrs = u64::from_be_bytes([h[12], h[13], h[14], h[15], h[16], h[17], h[18], h[19]]);
    let ports = match (h[9], pkt.get(ihl..ihl + 4)) {
        (6 | 17, Some(p)) => u64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]])),
        _ => 0,
    };
    // Multiplying by an odd constant spreads the ports over all 64 bits, so flows between
    // the same two hosts differ in more than the low bits.
    addrs ^ (ports | u64::from(h[9]) << 32).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Writes `packets` to a TUN opened with `IFF_VNET_HDR`, each entry `(offset, len)` of a
/// packet that `packet(offset, len)` returns (`len` its IP total length, as the ingress
/// verdict reports it; an empty slice if the driver lost it), in arrival order. The packets
/// are grouped by flow first, arrival order kept within each flow, so that the segments of
/// several TCP flows that arrived interleaved still merge: every run of consecutive segments
/// of one TCP flow (and, with `udp`, of equal datagrams of one UDP flow: the TUN has
/// `TUN_F_USO4`) becomes one super-packet, everything else goes alone, each behind its
/// virtio-net header. `order` is scratch space (kept by the caller so nothing is allocated
/// per call); `write` gets the pieces of one TUN write (to gather with `writev`), the packets
/// it carries and their bytes.
///
/// Nothing is copied but a merged packet's header, rewritten in a local buffer: the packets
/// themselves are only read, so they may lie in several buffers (the io_uring driver's slots).
pub fn write_coalesced<'a, P, W>(
    packets: &[(usize, usize)],
    packet: P,
    udp: bool,
    order: &mut Vec<(u64, u32)>,
    mut write: W,
) where
    P: Fn(usize, usize) -> &'a [u8],
    W: FnMut(&[IoSlice<'_>], usize, usize),
{
    order.clear();
    order.extend(
        packets
            .iter()
            .enumerate()
            .map(|(i, &(off, len))| (flow_key(packet(off, len)), i as u32)),
    );
    // The index breaks ties, so an unstable sort keeps each flow in arrival order. One flow
    // (the usual case) is sorted already.
    if !order.is_sorted() {
        order.sort_unstable();
    }
    let order = &order[..];
    let get = |k: usize| {
        order
            .get(k)
            .and_then(|&(_, i)| packets.get(i as usize))
            .map(|&(off, len)| packet(off, len))
    };
    let mut i = 0;
    while let Some(first) = get(i) {
        let mut run_end = i + 1;
        let mut merged = [0u8; MAX_MERGED_HEADER];
        let mut head: &[u8] = &[];
        let mut vnet = VnetHdr::default();
        if let Some(mut cur) = coalesce_start(first, udp) {
            while run_end - i < MAX_RUN {
                match get(run_end) {
                    Some(seg) if coalesce_push(first, &mut cur, seg) => run_end += 1,
                    _ => break,
                }
            }
            if cur.segments > 1 {
                if let (Some(h), Some(src)) =
                    (merged.get_mut(..cur.hdr_len), first.get(..cur.hdr_len))
                {
                    h.copy_from_slice(src);
                    vnet = coalesce_finish(h, &cur);
                    head = h;
                }
            }
        }
        let hdr = vnet.encode();
        if head.is_empty() {
            // Alone: the packet as it is.
            let pieces = [IoSlice::new(&hdr), IoSlice::new(first)];
            write(&pieces, 1, first.len());
            i += 1;
            continue;
        }
        // Merged: the rewritten header, then every segment's payload, the first's included.
        let mut pieces = [IoSlice::new(&[]); MAX_RUN + 2];
        pieces[0] = IoSlice::new(&hdr);
        pieces[1] = IoSlice::new(head);
        let mut bytes = head.len();
        for (k, piece) in (i..run_end).zip(pieces[2..].iter_mut()) {
            // A merged segment is exactly its IP total length long (`l4_headers` checked).
            let payload = get(k).and_then(|s| s.get(head.len()..)).unwrap_or_default();
            bytes += payload.len();
            *piece = IoSlice::new(payload);
        }
        write(&pieces[..run_end - i + 2], run_end - i, bytes);
        i = run_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::gso::tests::{as_read_from_tun, payload, A, B, C};
    use crate::datapath::gso::{segment_tcp4, to_wire, Layout, Wire};
    use crate::datapath::wire::checksum::{finish_partial, sum_words};
    use crate::datapath::wire::ipv4::build_ipv4;
    use crate::datapath::wire::tcp::{build_tcp4, tcp4_checksum_ok, FLAG_FIN};
    use std::net::Ipv4Addr;

    /// Runs [`write_coalesced`] and returns every TUN write: its virtio-net header and the
    /// gathered packet, with a partial checksum finished as the kernel would.
    fn tun_writes(buf: &[u8], packets: &[(usize, usize)]) -> Vec<(VnetHdr, Vec<u8>)> {
        writes_of(buf, packets, false)
    }

    /// As `tun_writes`, for a TUN that takes UDP super-packets too if `udp`.
    fn writes_of(buf: &[u8], packets: &[(usize, usize)], udp: bool) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut writes = Vec::new();
        let packet = |o: usize, l: usize| buf.get(o..o + l).unwrap_or_default();
        write_coalesced(
            packets,
            packet,
            udp,
            &mut Vec::new(),
            |pieces, count, bytes| {
                let hdr = VnetHdr::parse(&pieces[0]).unwrap();
                let mut pkt: Vec<u8> = pieces[1..].iter().flat_map(|p| p.to_vec()).collect();
                assert_eq!(pkt.len(), bytes);
                // Alone: header and packet; merged: header, merged header, every payload.
                let want = if count > 1 { count + 2 } else { 2 };
                assert_eq!(pieces.len(), want, "{count} packets");
                if hdr.flags & VNET_F_NEEDS_CSUM != 0 {
                    let (start, offset) = (hdr.csum_start.into(), hdr.csum_offset.into());
                    let udp = pkt[9] == PROTO_UDP;
                    assert!(finish_partial(&mut pkt, start, offset, udp));
                }
                writes.push((hdr, pkt));
            },
        );
        writes
    }

    /// The writes of `writes` whose packet goes from `src` to `dst`, in order.
    fn of_flow(writes: &[(VnetHdr, Vec<u8>)], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<Vec<u8>> {
        writes
            .iter()
            .filter(|(_, p)| p[12..16] == src.octets() && p[16..20] == dst.octets())
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Lays `segs` out back to back, `stride` apart, as a UDP GRO receive does.
    fn gro_buffer(segs: &[&[u8]], stride: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut buf = vec![0u8; segs.len() * stride];
        let mut at = Vec::new();
        for (k, s) in segs.iter().enumerate() {
            buf[k * stride..k * stride + s.len()].copy_from_slice(s);
            at.push((k * stride, s.len()));
        }
        (buf, at)
    }

    #[test]
    fn segments_coalesce_back_into_the_super_packet() {
        let data = payload(44 * 1448);
        let pkt = build_tcp4(A, B, 0xffff_ff00, FLAG_ACK | FLAG_PSH, &data);
        let mut segs = vec![0u8; 70_000];
        let s = segment_tcp4(&pkt, 1448, &mut segs).unwrap();
        assert_eq!(s.count, 44);
        let mut at: Vec<(usize, usize)> = (0..s.count)
            .map(|k| {
                (
                    k * s.segment_len,
                    s.segment_len.min(s.total - k * s.segment_len),
                )
            })
            .collect();
        // A bare ACK of another flow behind the run is written on its own.
        let ack = build_tcp4(B, A, 5, FLAG_ACK, &[]);
        segs[s.total..s.total + ack.len()].copy_from_slice(&ack);
        at.push((s.total, ack.len()));
        let writes = tun_writes(&segs, &at);
        assert_eq!(writes.len(), 2);
        let (hdr, merged) = writes.iter().find(|(h, _)| h.gso_type != 0).unwrap();
        assert_eq!(merged, &pkt, "the super-packet, checksums and all");
        assert_eq!(
            *hdr,
            VnetHdr {
                flags: VNET_F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 40,
                gso_size: 1448,
                csum_start: 20,
                csum_offset: 16,
            }
        );
        assert!(writes.contains(&(VnetHdr::default(), ack)));
    }

    #[test]
    fn only_the_next_segment_of_the_same_flow_coalesces() {
        let first = build_tcp4(A, B, 1000, FLAG_ACK, &payload(1000));
        let mut cur = coalesce_start(&first, false).unwrap();
        let gap = build_tcp4(A, B, 3000, FLAG_ACK, &payload(1000));
        assert!(!coalesce_push(&first, &mut cur, &gap), "sequence gap");
        let other = build_tcp4(A, C, 2000, FLAG_ACK, &payload(1000));
        assert!(!coalesce_push(&first, &mut cur, &other), "other flow");
        let bigger = build_tcp4(A, B, 2000, FLAG_ACK, &payload(1001));
        assert!(
            !coalesce_push(&first, &mut cur, &bigger),
            "larger than gso_size"
        );
        let fin = build_tcp4(A, B, 2000, FLAG_ACK | FLAG_FIN, &payload(10));
        assert!(
            !coalesce_push(&first, &mut cur, &fin),
            "FIN is delivered alone"
        );
        let short = build_tcp4(A, B, 2000, FLAG_ACK, &payload(500));
        assert!(coalesce_push(&first, &mut cur, &short));
        let after_short = build_tcp4(A, B, 2500, FLAG_ACK, &payload(500));
        assert!(
            !coalesce_push(&first, &mut cur, &after_short),
            "a short segment ends the run"
        );
        assert_eq!((cur.len, cur.segments), (40 + 1500, 2));
        assert!(
            coalesce_start(&build_tcp4(A, B, 1, 0x02, &[]), false).is_none(),
            "SYN"
        );

        // The same sequence through the writer: [first+short], gap, after_short, each alone
        // and in that order; the other flow's segment alone.
        let all = [&first[..], &short, &gap, &other, &after_short];
        let (buf, at) = gro_buffer(&all, 1100);
        let writes = tun_writes(&buf, &at);
        assert_eq!(writes.len(), 4);
        let ab = of_flow(&writes, A, B);
        let merged = &ab[0];
        assert_eq!(merged.len(), 40 + 1500);
        assert!(Ipv4View::new_verified(merged).is_ok() && tcp4_checksum_ok(merged));
        assert_eq!(&merged[40..1040], &first[40..]);
        assert_eq!(&merged[1040..], &short[40..]);
        assert_eq!(ab[1..], [gap, after_short]);
        assert_eq!(of_flow(&writes, A, C), [other]);
        for (hdr, pkt) in &writes {
            assert_eq!(*hdr == VnetHdr::default(), pkt != merged);
        }
    }

    #[test]
    fn interleaved_flows_merge_each_into_its_own_super_packet() {
        // Two TCP flows and a UDP flow, arriving interleaved as several streams do.
        let a: Vec<_> = (0..3)
            .map(|k| build_tcp4(A, B, k * 1000, FLAG_ACK, &payload(1000)))
            .collect();
        let c: Vec<_> = (0..3)
            .map(|k| build_tcp4(A, C, 7 + k * 1000, FLAG_ACK, &payload(1000)))
            .collect();
        let udp: Vec<_> = (0..2u8)
            .map(|k| {
                // One UDP flow (same ports), different payloads.
                let mut udp = [k; 30];
                udp[..4].copy_from_slice(&[0x1f, 0x90, 0x1f, 0x91]);
                build_ipv4(A, C, 17, 64, &udp)
            })
            .collect();
        let all = [
            &a[0][..],
            &c[0],
            &udp[0],
            &a[1],
            &c[1],
            &udp[1],
            &a[2],
            &c[2],
        ];
        let (buf, at) = gro_buffer(&all, 1100);
        let writes = tun_writes(&buf, &at);
        assert_eq!(
            writes.len(),
            4,
            "a super-packet per TCP flow, the UDP packets alone"
        );
        for (src, dst, segs) in [(A, B, &a), (A, C, &c)] {
            let tcp: Vec<_> = of_flow(&writes, src, dst)
                .into_iter()
                .filter(|p| p[9] == PROTO_TCP)
                .collect();
            assert_eq!(tcp.len(), 1);
            assert!(tcp4_checksum_ok(&tcp[0]));
            let payloads: Vec<u8> = segs.iter().flat_map(|s| s[40..].to_vec()).collect();
            assert_eq!(tcp[0][40..], payloads[..]);
        }
        let udp_out: Vec<_> = of_flow(&writes, A, C)
            .into_iter()
            .filter(|p| p[9] == 17)
            .collect();
        assert_eq!(udp_out, udp, "one flow's packets keep their order");
    }

    /// A UDP/IPv4 datagram from `src`:4000 to `dst`:`dport` with a valid checksum.
    fn udp4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut udp = vec![0u8; UDP_HEADER + payload.len()];
        udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&dport.to_be_bytes());
        let udp_len = udp.len() as u16;
        udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
        udp[8..].copy_from_slice(payload);
        let mut pkt = build_ipv4(src, dst, PROTO_UDP, 64, &udp);
        let sum = sum_words(&pkt[12..20]) + u64::from(PROTO_UDP) + udp.len() as u64;
        pkt[26..28].copy_from_slice(&(!fold(sum + sum_words(&udp))).to_be_bytes());
        pkt
    }

    /// Whether the UDP checksum of `pkt` (a whole UDP/IPv4 packet) verifies.
    fn udp4_ok(pkt: &[u8]) -> bool {
        let udp = &pkt[20..];
        let sum = sum_words(&pkt[12..20]) + u64::from(PROTO_UDP) + udp.len() as u64;
        fold(sum + sum_words(udp)) == 0xffff
    }

    /// What the kernel makes of a UDP super-packet written to the TUN (`GSO_UDP_L4`): the
    /// datagrams, `gso_size` of payload each, with their own lengths and checksums.
    fn kernel_udp_segments(hdr: &VnetHdr, merged: &[u8]) -> Vec<Vec<u8>> {
        assert_eq!(
            (hdr.gso_type, hdr.hdr_len, hdr.csum_start, hdr.csum_offset),
            (GSO_UDP_L4, 28, 20, 6)
        );
        assert!(Ipv4View::new_verified(merged).is_ok());
        assert_eq!(
            usize::from(u16::from_be_bytes([merged[24], merged[25]])),
            merged.len() - 20
        );
        merged[28..]
            .chunks(usize::from(hdr.gso_size))
            .map(|chunk| {
                let dport = u16::from_be_bytes([merged[22], merged[23]]);
                let src = Ipv4Addr::new(merged[12], merged[13], merged[14], merged[15]);
                let dst = Ipv4Addr::new(merged[16], merged[17], merged[18], merged[19]);
                udp4(src, dst, dport, chunk)
            })
            .collect()
    }
    #[test]
    fn udp_datagrams_of_a_flow_merge_into_one_uso_write() {
        let flow: Vec<_> = (0..5u8)
            .map(|k| udp4(A, B, 53, &[k; 100]))
            .chain([udp4(A, B, 53, &[9; 60])])
            .collect();
        let other = udp4(A, B, 54, &[7; 100]);
        let mut all: Vec<&[u8]> = flow.iter().map(|p| &p[..]).collect();
        all.insert(2, &other);
        let (buf, at) = gro_buffer(&all, 200);

        // A TUN without USO: every datagram alone, untouched.
        let plain = writes_of(&buf, &at, false);
        assert_eq!(plain.len(), 7);
        assert!(plain.iter().all(|(h, _)| *h == VnetHdr::default()));

        let writes = writes_of(&buf, &at, true);
        assert_eq!(writes.len(), 2, "one super-packet per flow");
        let (hdr, merged) = writes.iter().find(|(h, _)| h.gso_type != 0).unwrap();
        assert_eq!((hdr.flags, hdr.gso_size), (VNET_F_NEEDS_CSUM, 100));
        assert!(
            udp4_ok(merged),
            "the partial checksum finishes to a valid one"
        );
        assert_eq!(
            kernel_udp_segments(hdr, merged),
            flow,
            "the same datagrams, in order"
        );
        assert!(writes.contains(&(VnetHdr::default(), other)));
    }

    #[test]
    fn a_shorter_udp_datagram_ends_the_run_and_a_bare_one_is_not_merged() {
        let a = udp4(A, B, 53, &[1; 100]);
        let short = udp4(A, B, 53, &[2; 60]);
        let b = udp4(A, B, 53, &[3; 100]);
        let empty = udp4(A, B, 53, &[]);
        let (buf, at) = gro_buffer(&[&a, &short, &b, &empty, &empty], 200);
        let writes = writes_of(&buf, &at, true);
        let sizes: Vec<(u8, usize)> = writes.iter().map(|(h, p)| (h.gso_type, p.len())).collect();
        assert_eq!(sizes, [(GSO_UDP_L4, 28 + 160), (0, 128), (0, 28), (0, 28)]);
    }

    #[test]
    fn a_udp_super_packet_leaves_as_datagrams_that_merge_back() {
        let data = payload(2500);
        let whole = udp4(A, B, 443, &data);
        let (mut pkt, vnet) = as_read_from_tun(&whole, 1000);
        let mut out = vec![0u8; 8000];
        let len = pkt.len();
        let Ok(Wire::Segmented(s)) = to_wire(&vnet, &mut pkt, len, &mut out, Layout::Contiguous)
        else {
            panic!("a UDP super-packet is segmented");
        };
        assert_eq!((s.count, s.segment_len, s.hdr_len), (3, 1028, 28));
        let segs: Vec<Vec<u8>> = (0..s.count)
            .map(|k| {
                out[k * s.segment_len..(k * s.segment_len + s.segment_len).min(s.total)].to_vec()
            })
            .collect();
        for (k, seg) in segs.iter().enumerate() {
            let v = Ipv4View::new_verified(seg).expect("a valid IPv4 header");
            assert_eq!(v.total_len(), seg.len());
            assert_eq!(
                u16::from_be_bytes([seg[4], seg[5]]),
                k as u16,
                "ids count up"
            );
            assert_eq!(
                usize::from(u16::from_be_bytes([seg[24], seg[25]])),
                seg.len() - 20
            );
            assert!(udp4_ok(seg), "segment {k}'s UDP checksum");
            assert_eq!(seg[28..], data[k * 1000..(k * 1000 + 1000).min(2500)]);
        }
        // And back: the receiving side merges them into the super-packet again.
        let refs: Vec<&[u8]> = segs.iter().map(|p| &p[..]).collect();
        let (buf, at) = gro_buffer(&refs, 1100);
        let writes = writes_of(&buf, &at, true);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].1[28..], data[..]);
        assert_eq!(writes[0].1[..4], whole[..4]);
    }

    #[test]
    fn a_psh_in_the_run_ends_it_and_reaches_the_merged_header() {
        let a = build_tcp4(A, B, 0, FLAG_ACK, &payload(100));
        let b = build_tcp4(A, B, 100, FLAG_ACK | FLAG_PSH, &payload(100));
        let c = build_tcp4(A, B, 200, FLAG_ACK, &payload(100));
        let (buf, at) = gro_buffer(&[&a, &b, &c], 140);
        let writes = tun_writes(&buf, &at);
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].1[20 + TCP_FLAGS], FLAG_ACK | FLAG_PSH);
        assert!(tcp4_checksum_ok(&writes[0].1));
        assert_eq!(writes[1].1, c);
    }
}
