//! Userspace TCP segmentation for the TUN offloads (issue 5): with `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD(TUN_F_TSO4)` the kernel hands over TCP/IPv4 "super-packets" of up to 64 KiB,
//! which must leave as ordinary packets of at most MTU bytes each, one per UDP datagram, so the
//! wire format stays upstream's. [`segment_tcp4`] cuts one super-packet into MSS-sized segments
//! laid out back to back in one buffer, every segment but the last exactly
//! [`Segments::segment_len`] bytes: the layout a single `UDP_SEGMENT` (GSO) send wants.
//! [`coalesce_start`], [`coalesce_push`] and [`coalesce_finish`] do the reverse on receive
//! (GRO): consecutive segments of one flow become one super-packet for a TUN write with a
//! virtio-net header (`gso_size` and `hdr_len` from [`Coalesced`]).
//!
//! Pure, allocation-free and panic-free on any input; benched in `benches/datapath.rs`. Not
//! wired into the workers yet: the TUN is still opened without `IFF_VNET_HDR`, so nothing
//! produces or accepts super-packets (issue 5).

use super::packet::{fill_header_checksum, Ipv4View};

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// Smallest TCP header.
const TCP_MIN_HEADER: usize = 20;
/// Offsets in the TCP header.
const TCP_SEQ: usize = 4;
const TCP_DATA_OFFSET: usize = 12;
const TCP_FLAGS: usize = 13;
const TCP_CHECKSUM: usize = 16;
/// Flags that belong only on the last segment (FIN, PSH) or only on the first (CWR).
const FLAG_FIN: u8 = 0x01;
const FLAG_PSH: u8 = 0x08;
const FLAG_CWR: u8 = 0x80;

/// Why a packet cannot be segmented (it is then dropped and counted, never forwarded whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("not an unfragmented TCP/IPv4 packet")]
    NotTcp4,
    #[error("truncated or inconsistent IPv4/TCP header")]
    Malformed,
    #[error("segment size 0")]
    ZeroMss,
    #[error("output buffer too small for the segments")]
    NoRoom,
}

/// Where [`segment_tcp4`] put its segments: `count` segments in `out[..total]`, segment `k`
/// at `k * segment_len`, all `segment_len` long except possibly the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    pub segment_len: usize,
    pub total: usize,
}

/// Cuts the TCP/IPv4 packet `pkt` into segments of at most `mss` payload bytes written to
/// `out`. Each segment gets the original headers with its own IP total length, IP id (the
/// original id plus the segment's index, as Linux's GSO does), sequence number, header
/// checksum and full TCP checksum; FIN and PSH stay only on the last segment, CWR only on the
/// first. A packet whose payload fits in one segment comes out as one segment with fresh
/// checksums (a TUN with checksum offload may hand over a partial checksum).
///
/// # Errors
/// See [`SegmentError`]; `out` is then unspecified.
pub fn segment_tcp4(pkt: &[u8], mss: usize, out: &mut [u8]) -> Result<Segments, SegmentError> {
    if mss == 0 {
        return Err(SegmentError::ZeroMss);
    }
    let view = Ipv4View::new_checked(pkt).map_err(|_| SegmentError::Malformed)?;
    // Fragment offset or More Fragments: a fragment is never a super-packet.
    let frag = pkt.get(6..8).ok_or(SegmentError::Malformed)?;
    if view.protocol() != PROTO_TCP || view.fragment_offset() != 0 || frag[0] & 0x20 != 0 {
        return Err(SegmentError::NotTcp4);
    }
    let ihl = view.header_len();
    let total = view.total_len();
    let tcp = pkt.get(ihl..total).ok_or(SegmentError::Malformed)?;
    let doff = usize::from(tcp.get(TCP_DATA_OFFSET).ok_or(SegmentError::Malformed)? >> 4) * 4;
    if doff < TCP_MIN_HEADER || doff > tcp.len() {
        return Err(SegmentError::Malformed);
    }
    let hdr = ihl + doff;
    let payload = pkt.get(hdr..total).ok_or(SegmentError::Malformed)?;
    let count = payload.len().div_ceil(mss).max(1);
    let segment_len = hdr + mss.min(payload.len());
    let out_total = count * hdr + payload.len();
    if out.len() < out_total {
        return Err(SegmentError::NoRoom);
    }
    let headers = pkt.get(..hdr).ok_or(SegmentError::Malformed)?;
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq = u32::from_be_bytes([
        tcp[TCP_SEQ],
        tcp[TCP_SEQ + 1],
        tcp[TCP_SEQ + 2],
        tcp[TCP_SEQ + 3],
    ]);
    let flags = tcp[TCP_FLAGS];
    // Pseudo-header words that every segment shares: source, destination, protocol.
    let pseudo = sum_words(pkt.get(12..20).ok_or(SegmentError::Malformed)?) + u64::from(PROTO_TCP);

    let mut chunks = payload.chunks(mss);
    for k in 0..count {
        let chunk = chunks.next().unwrap_or_default();
        let start = k * segment_len;
        let seg = out
            .get_mut(start..start + hdr + chunk.len())
            .ok_or(SegmentError::NoRoom)?;
        let (h, body) = seg.split_at_mut(hdr);
        h.copy_from_slice(headers);
        body.copy_from_slice(chunk);
        // IP: length, id, header checksum.
        let seg_total = (hdr + chunk.len()) as u16;
        h[2..4].copy_from_slice(&seg_total.to_be_bytes());
        h[4..6].copy_from_slice(&id.wrapping_add(k as u16).to_be_bytes());
        fill_header_checksum(&mut h[..ihl]);
        // TCP: sequence number, flags, checksum.
        let t = &mut h[ihl..];
        let seg_seq = seq.wrapping_add((k * mss) as u32);
        t[TCP_SEQ..TCP_SEQ + 4].copy_from_slice(&seg_seq.to_be_bytes());
        let mut f = flags;
        if k + 1 < count {
            f &= !(FLAG_FIN | FLAG_PSH);
        }
        if k > 0 {
            f &= !FLAG_CWR;
        }
        t[TCP_FLAGS] = f;
        t[TCP_CHECKSUM..TCP_CHECKSUM + 2].fill(0);
        let tcp_len = doff + chunk.len();
        let sum = pseudo + tcp_len as u64 + sum_words(t) + sum_words(body);
        // `t` (the TCP header) has even length, so summing it apart from `body` is exact.
        let csum = !fold(sum);
        t[TCP_CHECKSUM..TCP_CHECKSUM + 2].copy_from_slice(&csum.to_be_bytes());
    }
    Ok(Segments {
        count,
        segment_len,
        total: out_total,
    })
}

/// A TCP/IPv4 super-packet being built by [`coalesce_start`] and [`coalesce_push`] in a caller's
/// buffer: the receive-side counterpart of [`segment_tcp4`] (GRO), for writing many segments
/// of one flow to a TUN with `IFF_VNET_HDR` as one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesced {
    /// Bytes of the super-packet so far (headers plus payload).
    pub len: usize,
    /// Segments merged.
    pub segments: usize,
    /// Payload bytes of the first segment: the `gso_size` of the virtio-net header.
    pub gso_size: usize,
    /// IPv4 plus TCP header length: the virtio-net header's `hdr_len`.
    pub hdr_len: usize,
    /// A shorter segment or a PSH ended the run: nothing more may be appended.
    closed: bool,
}

/// ACK, and ACK|PSH: the only flag sets that are coalesced (as Linux GRO, anything else —
/// SYN, FIN, RST, URG, ECN signals — is delivered on its own).
const FLAG_ACK: u8 = 0x10;

/// The IPv4 and TCP header lengths of a coalescable segment, or `None`.
fn tcp4_headers(seg: &[u8]) -> Option<(usize, usize)> {
    let view = Ipv4View::new_checked(seg).ok()?;
    let frag = seg.get(6..8)?;
    let ihl = view.header_len();
    if view.protocol() != PROTO_TCP
        || view.fragment_offset() != 0
        || frag[0] & 0x20 != 0
        || ihl != 20
    {
        return None;
    }
    let tcp = seg.get(ihl..view.total_len())?;
    let doff = usize::from(*tcp.get(TCP_DATA_OFFSET)? >> 4) * 4;
    let flags = *tcp.get(TCP_FLAGS)?;
    (doff >= TCP_MIN_HEADER
        && doff < tcp.len()
        && (flags == FLAG_ACK || flags == FLAG_ACK | FLAG_PSH))
        .then_some((ihl, doff))
}

/// Starts a super-packet in `out` with the segment `seg` (copied). `None` when `seg` is not
/// a coalescable TCP/IPv4 data segment (then deliver it as it is) or `out` is too small.
pub fn coalesce_start(out: &mut [u8], seg: &[u8]) -> Option<Coalesced> {
    let (ihl, doff) = tcp4_headers(seg)?;
    let total = Ipv4View::new_checked(seg).ok()?.total_len();
    out.get_mut(..total)?.copy_from_slice(seg.get(..total)?);
    let hdr_len = ihl + doff;
    Some(Coalesced {
        len: total,
        segments: 1,
        gso_size: total - hdr_len,
        hdr_len,
        closed: seg.get(ihl + TCP_FLAGS).is_some_and(|f| f & FLAG_PSH != 0),
    })
}

/// Appends `seg` to the super-packet in `out` if it is the next segment of the same flow with
/// identical headers (but for length, id, sequence number and checksums), at most
/// `cur.gso_size` of payload, and the result stays within 64 KiB. Returns whether it did; if
/// not, finish `cur` and start a new one.
pub fn coalesce_push(out: &mut [u8], cur: &mut Coalesced, seg: &[u8]) -> bool {
    if cur.closed {
        return false;
    }
    let Some((ihl, doff)) = tcp4_headers(seg) else {
        return false;
    };
    let hdr = ihl + doff;
    let Some(seg_total) = Ipv4View::new_checked(seg).ok().map(|v| v.total_len()) else {
        return false;
    };
    let plen = seg_total - hdr;
    if hdr != cur.hdr_len || plen > cur.gso_size || cur.len + plen > usize::from(u16::MAX) {
        return false;
    }
    let (Some(first), Some(h)) = (out.get(..hdr), seg.get(..hdr)) else {
        return false;
    };
    // IPv4: version..TOS, flags..protocol, addresses. TCP: ports, ack, offset..urgent pointer
    // but the checksum, options. PSH may differ (it closes the run).
    let t = ihl;
    let same = first[0..2] == h[0..2]
        && first[6..10] == h[6..10]
        && first[12..20] == h[12..20]
        && first[t..t + 4] == h[t..t + 4]
        && first[t + 8..t + 13] == h[t + 8..t + 13]
        && first[t + 13] & !FLAG_PSH == h[t + 13] & !FLAG_PSH
        && first[t + 14..t + 16] == h[t + 14..t + 16]
        && first[t + 18..hdr] == h[t + 18..hdr];
    let seq = |p: &[u8]| u32::from_be_bytes([p[t + 4], p[t + 5], p[t + 6], p[t + 7]]);
    let payload_so_far = (cur.len - cur.hdr_len) as u32;
    if !same || seq(h) != seq(first).wrapping_add(payload_so_far) {
        return false;
    }
    let (Some(dst), Some(src)) = (
        out.get_mut(cur.len..cur.len + plen),
        seg.get(hdr..seg_total),
    ) else {
        return false;
    };
    dst.copy_from_slice(src);
    cur.len += plen;
    cur.segments += 1;
    if h[t + 13] & FLAG_PSH != 0 {
        out[t + 13] |= FLAG_PSH;
        cur.closed = true;
    }
    if plen < cur.gso_size {
        cur.closed = true;
    }
    true
}

/// Finishes the super-packet in `out[..cur.len]`: IP total length, header checksum and a full
/// TCP checksum (the TUN then needs no `NEEDS_CSUM` hint).
pub fn coalesce_finish(out: &mut [u8], cur: &Coalesced) {
    let Some(pkt) = out.get_mut(..cur.len) else {
        return;
    };
    let Some(ihl) = pkt.first().map(|b| usize::from(b & 0x0f) * 4) else {
        return;
    };
    pkt[2..4].copy_from_slice(&(cur.len as u16).to_be_bytes());
    fill_header_checksum(&mut pkt[..ihl]);
    pkt[ihl + TCP_CHECKSUM..ihl + TCP_CHECKSUM + 2].fill(0);
    let sum = sum_words(&pkt[12..20])
        + u64::from(PROTO_TCP)
        + (cur.len - ihl) as u64
        + sum_words(&pkt[ihl..]);
    let csum = !fold(sum);
    pkt[ihl + TCP_CHECKSUM..ihl + TCP_CHECKSUM + 2].copy_from_slice(&csum.to_be_bytes());
}

/// Whether the TCP checksum of the TCP/IPv4 packet `pkt` verifies (tests and fuzzing).
pub fn tcp4_checksum_ok(pkt: &[u8]) -> bool {
    let Ok(view) = Ipv4View::new_checked(pkt) else {
        return false;
    };
    let Some(tcp) = pkt.get(view.header_len()..view.total_len()) else {
        return false;
    };
    let Some(addrs) = pkt.get(12..20) else {
        return false;
    };
    let sum = sum_words(addrs) + u64::from(PROTO_TCP) + tcp.len() as u64 + sum_words(tcp);
    fold(sum) == 0xffff
}

/// Sum of the 16-bit big-endian words of `data`, an odd last byte padded with zero, unfolded.
/// Adds 32-bit words (one's-complement sums fold to the same 16 bits whatever the word width),
/// which halves the additions; a u64 cannot overflow below 2^32 words.
fn sum_words(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(4);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum();
    match chunks.remainder() {
        [a, b, c] => sum += (u64::from(*a) << 8 | u64::from(*b)) + (u64::from(*c) << 8),
        [a, b] => sum += u64::from(*a) << 8 | u64::from(*b),
        [a] => sum += u64::from(*a) << 8,
        _ => {}
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Test and bench helper: a checksummed TCP/IPv4 packet (no options) with `payload`, sequence
/// number `seq` and TCP flags `flags`.
#[doc(hidden)]
pub fn build_tcp4(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    seq: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut tcp = vec![0u8; TCP_MIN_HEADER + payload.len()];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[TCP_SEQ..TCP_SEQ + 4].copy_from_slice(&seq.to_be_bytes());
    tcp[TCP_DATA_OFFSET] = 5 << 4;
    tcp[TCP_FLAGS] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[TCP_MIN_HEADER..].copy_from_slice(payload);
    let mut pkt = super::packet::build_ipv4(src, dst, PROTO_TCP, 64, &tcp);
    let sum = sum_words(&pkt[12..20]) + u64::from(PROTO_TCP) + tcp.len() as u64 + sum_words(&tcp);
    let csum = !fold(sum);
    pkt[20 + TCP_CHECKSUM..20 + TCP_CHECKSUM + 2].copy_from_slice(&csum.to_be_bytes());
    pkt
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: Ipv4Addr = Ipv4Addr::new(10, 5, 1, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 5, 2, 2);

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_64k_super_packet_becomes_mss_segments_with_fixed_headers() {
        let data = payload(65_000);
        let pkt = build_tcp4(
            A,
            B,
            0xffff_f000,
            FLAG_PSH | FLAG_FIN | FLAG_CWR | 0x10,
            &data,
        );
        assert!(tcp4_checksum_ok(&pkt));
        let mut out = vec![0u8; 70_000];
        let s = segment_tcp4(&pkt, 1432, &mut out).unwrap();
        assert_eq!(s.count, 65_000usize.div_ceil(1432));
        assert_eq!(s.segment_len, 40 + 1432);
        assert_eq!(s.total, s.count * 40 + 65_000);
        let mut joined = Vec::new();
        let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
        for k in 0..s.count {
            let start = k * s.segment_len;
            let end = (start + s.segment_len).min(s.total);
            let seg = &out[start..end];
            let v = Ipv4View::new_verified(seg).expect("IP header checksum verifies");
            assert_eq!(v.total_len(), seg.len());
            assert_eq!(
                u16::from_be_bytes([seg[4], seg[5]]),
                id0.wrapping_add(k as u16)
            );
            assert!(tcp4_checksum_ok(seg), "segment {k} TCP checksum");
            let seq = u32::from_be_bytes([seg[24], seg[25], seg[26], seg[27]]);
            assert_eq!(seq, 0xffff_f000u32.wrapping_add((k * 1432) as u32));
            let flags = seg[20 + TCP_FLAGS];
            let last = k + 1 == s.count;
            assert_eq!(
                flags & (FLAG_FIN | FLAG_PSH) != 0,
                last,
                "FIN/PSH only on the last"
            );
            assert_eq!(flags & FLAG_CWR != 0, k == 0, "CWR only on the first");
            assert_eq!(flags & 0x10, 0x10, "ACK everywhere");
            joined.extend_from_slice(&seg[40..]);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn a_small_packet_is_one_segment_with_fresh_checksums() {
        let pkt = build_tcp4(A, B, 7, 0x18, &payload(100));
        let mut broken = pkt.clone();
        broken[20 + TCP_CHECKSUM] ^= 0xff; // a partial checksum, as with CSUM offload
        let mut out = vec![0u8; 200];
        let s = segment_tcp4(&broken, 1432, &mut out).unwrap();
        assert_eq!((s.count, s.total), (1, pkt.len()));
        assert_eq!(&out[..s.total], &pkt[..]);
        // A bare ACK (no payload) too.
        let ack = build_tcp4(A, B, 7, 0x10, &[]);
        let s = segment_tcp4(&ack, 1432, &mut out).unwrap();
        assert_eq!(&out[..s.total], &ack[..]);
    }

    #[test]
    fn wide_sum_agrees_with_the_rfc1071_checksum() {
        let data = payload(1500);
        for len in (0..40).chain([1499, 1500]) {
            let d = &data[..len];
            assert_eq!(
                !fold(sum_words(d)),
                super::super::packet::checksum(d),
                "len {len}"
            );
        }
    }

    #[test]
    fn segments_coalesce_back_into_the_super_packet() {
        let data = payload(44 * 1448);
        let pkt = build_tcp4(A, B, 0xffff_ff00, FLAG_ACK | FLAG_PSH, &data);
        let mut segs = vec![0u8; 70_000];
        let s = segment_tcp4(&pkt, 1448, &mut segs).unwrap();
        assert_eq!(s.count, 44);
        let mut out = vec![0u8; 65_536];
        let mut cur = coalesce_start(&mut out, &segs[..s.segment_len]).unwrap();
        for k in 1..s.count {
            let seg = &segs[k * s.segment_len..((k + 1) * s.segment_len).min(s.total)];
            assert!(coalesce_push(&mut out, &mut cur, seg), "segment {k}");
        }
        coalesce_finish(&mut out, &cur);
        assert_eq!((cur.segments, cur.gso_size, cur.hdr_len), (44, 1448, 40));
        assert_eq!(&out[..cur.len], &pkt[..]);
        // After PSH the run is closed.
        assert!(!coalesce_push(&mut out, &mut cur, &segs[..s.segment_len]));
    }

    #[test]
    fn only_the_next_segment_of_the_same_flow_coalesces() {
        let mut out = vec![0u8; 65_536];
        let first = build_tcp4(A, B, 1000, FLAG_ACK, &payload(1000));
        let mut cur = coalesce_start(&mut out, &first).unwrap();
        let gap = build_tcp4(A, B, 3000, FLAG_ACK, &payload(1000));
        assert!(!coalesce_push(&mut out, &mut cur, &gap), "sequence gap");
        let other = build_tcp4(
            A,
            Ipv4Addr::new(10, 5, 3, 3),
            2000,
            FLAG_ACK,
            &payload(1000),
        );
        assert!(!coalesce_push(&mut out, &mut cur, &other), "other flow");
        let bigger = build_tcp4(A, B, 2000, FLAG_ACK, &payload(1001));
        assert!(
            !coalesce_push(&mut out, &mut cur, &bigger),
            "larger than gso_size"
        );
        let fin = build_tcp4(A, B, 2000, FLAG_ACK | FLAG_FIN, &payload(10));
        assert!(
            !coalesce_push(&mut out, &mut cur, &fin),
            "FIN is delivered alone"
        );
        let short = build_tcp4(A, B, 2000, FLAG_ACK, &payload(500));
        assert!(coalesce_push(&mut out, &mut cur, &short));
        let after_short = build_tcp4(A, B, 2500, FLAG_ACK, &payload(500));
        assert!(
            !coalesce_push(&mut out, &mut cur, &after_short),
            "a short segment ends the run"
        );
        coalesce_finish(&mut out, &cur);
        let merged = &out[..cur.len];
        assert!(Ipv4View::new_verified(merged).is_ok() && tcp4_checksum_ok(merged));
        assert_eq!(cur.len, 40 + 1500);
        assert!(
            coalesce_start(&mut out, &build_tcp4(A, B, 1, 0x02, &[])).is_none(),
            "SYN"
        );
    }

    #[test]
    fn refuses_what_it_cannot_segment() {
        let mut out = vec![0u8; 70_000];
        let tcp = build_tcp4(A, B, 1, 0x10, &payload(3000));
        assert_eq!(segment_tcp4(&tcp, 0, &mut out), Err(SegmentError::ZeroMss));
        assert_eq!(
            segment_tcp4(&tcp, 1000, &mut out[..3000]),
            Err(SegmentError::NoRoom)
        );
        let udp = super::super::packet::build_ipv4(A, B, 17, 64, &payload(100));
        assert_eq!(
            segment_tcp4(&udp, 1000, &mut out),
            Err(SegmentError::NotTcp4)
        );
        let mut bad_doff = tcp.clone();
        bad_doff[20 + TCP_DATA_OFFSET] = 2 << 4;
        assert_eq!(
            segment_tcp4(&bad_doff, 1000, &mut out),
            Err(SegmentError::Malformed)
        );
        assert_eq!(
            segment_tcp4(&tcp[..30], 1000, &mut out),
            Err(SegmentError::Malformed)
        );
        let mut frag = tcp.clone();
        frag[6] |= 0x20;
        fill_header_checksum(&mut frag[..20]);
        assert_eq!(
            segment_tcp4(&frag, 1000, &mut out),
            Err(SegmentError::NotTcp4)
        );
    }
}
