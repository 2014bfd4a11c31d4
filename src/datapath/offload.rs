//! Userspace segmentation for the TUN offloads (issue 5): with `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD(TUN_F_TSO4 | TUN_F_USO4)` the kernel hands over TCP/IPv4 (and UDP/IPv4)
//! "super-packets" of up to 64 KiB, which must leave as ordinary packets of at most MTU bytes
//! each, one per UDP datagram, so the wire format stays upstream's. [`segment_tcp4`] cuts one super-packet into MSS-sized segments
//! laid out back to back in one buffer, every segment but the last exactly
//! [`Segments::segment_len`] bytes: the layout a single `UDP_SEGMENT` (GSO) send wants.
//! [`to_wire`] decides, from the virtio-net header the TUN read came with, whether a packet
//! is segmented or only gets its partial checksum finished. [`write_coalesced`] does the
//! reverse on receive (GRO, with [`coalesce_start`], [`coalesce_push`], [`coalesce_finish`]):
//! the segments of one flow, grouped across a whole batch of receives, become one
//! super-packet for a TUN write with a virtio-net header, gathered in place.
//!
//! Pure, allocation-free and panic-free on any input; benched in `benches/datapath.rs`. Both
//! drivers (`datapath::io::uring`, `datapath::io::mmsg`) use it when the TUN is opened with offloads.
//!
//! Why not tun-rs's own offload helpers: they split a super-packet into one buffer per
//! segment and coalesce by copying, while a `UDP_SEGMENT` send wants the segments back to back
//! in one buffer and a TUN write can gather the payloads in place with `writev`.

use super::packet::{fill_header_checksum, Ipv4View, PROTO_UDP};

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// The UDP header: its length, and where its length and checksum fields are.
const UDP_HEADER: usize = 8;
const UDP_LEN: usize = 4;
const UDP_CHECKSUM: usize = 6;
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
    #[error("not an unfragmented IPv4 packet of the offload's protocol (TCP or UDP)")]
    WrongProtocol,
    #[error("truncated or inconsistent IPv4/TCP/UDP header")]
    Malformed,
    #[error("segment size 0")]
    ZeroMss,
    #[error("output buffer too small for the segments")]
    NoRoom,
}

/// How [`to_wire`] lays out the segments of a super-packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Whole segments back to back in the scratch buffer (headers and payloads copied): the
    /// single buffer a plain GSO send (quinn-udp's `Transmit`) wants.
    Contiguous,
    /// Only the segments' headers, back to back in the scratch buffer; the payloads stay in
    /// the packet and a send gathers header and payload of each segment with `iovec`s
    /// ([`Segments::gather`]). Nothing is copied but the headers.
    HeadersOnly,
}

/// Where [`segment_tcp4`] put its segments. On the wire: `count` segments, `total` bytes,
/// segment `k` at `k * segment_len` of the stream, all `segment_len` long except possibly the
/// last. In the output buffer: that very stream ([`Layout::Contiguous`]), or only the
/// `hdr_len`-byte headers back to back ([`Layout::HeadersOnly`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    pub segment_len: usize,
    pub total: usize,
    /// IPv4 plus TCP header bytes of every segment (and of the super-packet).
    pub hdr_len: usize,
    pub layout: Layout,
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
    cut4(pkt, PROTO_TCP, mss, out, Layout::Contiguous)
}

/// As [`segment_tcp4`], but writes only the segments' headers to `out`
/// ([`Layout::HeadersOnly`]): the payloads are sent from `pkt` itself.
///
/// # Errors
/// See [`SegmentError`]; `out` is then unspecified.
pub fn segment_tcp4_headers(
    pkt: &[u8],
    mss: usize,
    out: &mut [u8],
) -> Result<Segments, SegmentError> {
    cut4(pkt, PROTO_TCP, mss, out, Layout::HeadersOnly)
}

/// Cuts the `proto` (TCP or UDP) super-packet `pkt` into segments of at most `mss` payload
/// bytes, laid out in `out` as `layout` says (see [`segment_tcp4`]). A UDP segment gets the
/// original headers with its own IP total length, id and header checksum, and its own UDP
/// length and full checksum: what the kernel's UDP GSO makes of a `UDP_SEGMENT` send.
fn cut4(
    pkt: &[u8],
    proto: u8,
    mss: usize,
    out: &mut [u8],
    layout: Layout,
) -> Result<Segments, SegmentError> {
    if mss == 0 {
        return Err(SegmentError::ZeroMss);
    }
    let view = Ipv4View::new_checked(pkt).map_err(|_| SegmentError::Malformed)?;
    // Fragment offset or More Fragments: a fragment is never a super-packet.
    let frag = pkt.get(6..8).ok_or(SegmentError::Malformed)?;
    if view.protocol() != proto || view.fragment_offset() != 0 || frag[0] & 0x20 != 0 {
        return Err(SegmentError::WrongProtocol);
    }
    let ihl = view.header_len();
    let total = view.total_len();
    let l4 = pkt.get(ihl..total).ok_or(SegmentError::Malformed)?;
    let l4_hdr = match proto {
        PROTO_TCP => {
            let doff = usize::from(l4.get(TCP_DATA_OFFSET).ok_or(SegmentError::Malformed)? >> 4);
            doff * 4
        }
        _ => UDP_HEADER,
    };
    if (proto == PROTO_TCP && l4_hdr < TCP_MIN_HEADER) || l4_hdr > l4.len() {
        return Err(SegmentError::Malformed);
    }
    let hdr = ihl + l4_hdr;
    let payload = pkt.get(hdr..total).ok_or(SegmentError::Malformed)?;
    let count = payload.len().div_ceil(mss).max(1);
    let segment_len = hdr + mss.min(payload.len());
    let out_total = count * hdr + payload.len();
    let stride = match layout {
        Layout::Contiguous => segment_len,
        Layout::HeadersOnly => hdr,
    };
    let room = match layout {
        Layout::Contiguous => out_total,
        Layout::HeadersOnly => count * hdr,
    };
    if out.len() < room {
        return Err(SegmentError::NoRoom);
    }
    let headers = pkt.get(..hdr).ok_or(SegmentError::Malformed)?;
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq = u32::from_be_bytes([
        l4[TCP_SEQ],
        l4[TCP_SEQ + 1],
        l4[TCP_SEQ + 2],
        l4[TCP_SEQ + 3],
    ]);
    let flags = l4.get(TCP_FLAGS).copied().unwrap_or_default();
    // Pseudo-header words that every segment shares: source, destination, protocol.
    let pseudo = sum_words(pkt.get(12..20).ok_or(SegmentError::Malformed)?) + u64::from(proto);

    let mut chunks = payload.chunks(mss);
    for k in 0..count {
        let chunk = chunks.next().unwrap_or_default();
        let start = k * stride;
        let h = out
            .get_mut(start..start + hdr)
            .ok_or(SegmentError::NoRoom)?;
        h.copy_from_slice(headers);
        // IP: length, id, header checksum.
        let seg_total = (hdr + chunk.len()) as u16;
        h[2..4].copy_from_slice(&seg_total.to_be_bytes());
        h[4..6].copy_from_slice(&id.wrapping_add(k as u16).to_be_bytes());
        fill_header_checksum(&mut h[..ihl]);
        let t = &mut h[ihl..];
        let l4_len = l4_hdr + chunk.len();
        let at = if proto == PROTO_TCP {
            // TCP: sequence number, flags, checksum.
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
            TCP_CHECKSUM
        } else {
            // UDP: length, checksum.
            t[UDP_LEN..UDP_LEN + 2].copy_from_slice(&(l4_len as u16).to_be_bytes());
            UDP_CHECKSUM
        };
        t[at..at + 2].fill(0);
        let sum = pseudo + l4_len as u64 + sum_words(t) + sum_words(chunk);
        // `t` (the TCP or UDP header) has even length, so summing it apart from `chunk` is
        // exact.
        let mut csum = !fold(sum);
        if csum == 0 && proto == PROTO_UDP {
            // 0 means "no checksum" in UDP.
            csum = 0xffff;
        }
        t[at..at + 2].copy_from_slice(&csum.to_be_bytes());
        if layout == Layout::Contiguous {
            out.get_mut(start + hdr..start + hdr + chunk.len())
                .ok_or(SegmentError::NoRoom)?
                .copy_from_slice(chunk);
        }
    }
    Ok(Segments {
        count,
        segment_len,
        total: out_total,
        hdr_len: hdr,
        layout,
    })
}

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

/// ACK, and ACK|PSH: the only flag sets that are coalesced (as Linux GRO, anything else —
/// SYN, FIN, RST, URG, ECN signals — is delivered on its own).
const FLAG_ACK: u8 = 0x10;

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
    let pseudo = sum_words(&h[12..20]) + u64::from(cur.proto) + l4_len as u64;
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
    W: FnMut(&[std::io::IoSlice<'_>], usize, usize),
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
            let pieces = [std::io::IoSlice::new(&hdr), std::io::IoSlice::new(first)];
            write(&pieces, 1, first.len());
            i += 1;
            continue;
        }
        // Merged: the rewritten header, then every segment's payload, the first's included.
        let mut pieces = [std::io::IoSlice::new(&[]); MAX_RUN + 2];
        pieces[0] = std::io::IoSlice::new(&hdr);
        pieces[1] = std::io::IoSlice::new(head);
        let mut bytes = head.len();
        for (k, piece) in (i..run_end).zip(pieces[2..].iter_mut()) {
            // A merged segment is exactly its IP total length long (`l4_headers` checked).
            let payload = get(k).and_then(|s| s.get(head.len()..)).unwrap_or_default();
            bytes += payload.len();
            *piece = std::io::IoSlice::new(payload);
        }
        write(&pieces[..run_end - i + 2], run_end - i, bytes);
        i = run_end;
    }
}

/// Length of `struct virtio_net_hdr` (without the mergeable-buffers field): the prefix of
/// every read from and write to a TUN opened with `IFF_VNET_HDR`.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` holds only the
/// pseudo-header sum; whoever sends the packet on must finish it.
pub const VNET_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`, `_TCPV4`, `_UDP_L4` and the `_ECN` bit.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr` (`<linux/virtio_net.h>`). The TUN uses the host's byte order for
/// it (legacy virtio, no `TUNSETVNETLE`/`BE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header at the start of `b`; `None` if `b` is shorter than one.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.first_chunk::<VNET_HDR_LEN>()?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// How a packet read from a TUN with offloads goes on the wire (see [`to_wire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `pkt[..len]` as one datagram (its checksum finished if the kernel left it partial).
    Whole { len: usize },
    /// The segments (or their headers) [`segment_tcp4`] wrote to the scratch buffer.
    Segmented(Segments),
}

/// Readies `pkt[..len]`, read from a TUN with `IFF_VNET_HDR` behind header `vnet` (and already
/// past the egress verdict), for the wire, where every datagram is one whole IPv4 packet with
/// valid checksums: a TCP or UDP super-packet is cut into `gso_size` segments in `scratch`
/// (laid out as `layout` says); a single packet with a partial checksum gets it finished in
/// place.
///
/// # Errors
/// A GSO type we never enabled (only `TUN_F_TSO4` and `TUN_F_USO4` are), or headers that do
/// not add up.
pub fn to_wire(
    vnet: &VnetHdr,
    pkt: &mut [u8],
    len: usize,
    scratch: &mut [u8],
    layout: Layout,
) -> Result<Wire, SegmentError> {
    let pkt = pkt.get_mut(..len).ok_or(SegmentError::Malformed)?;
    let proto = match vnet.gso_type & !GSO_ECN {
        GSO_NONE => {
            if vnet.flags & VNET_F_NEEDS_CSUM != 0 {
                finish_checksum(pkt, vnet.csum_start.into(), vnet.csum_offset.into())?;
            }
            return Ok(Wire::Whole { len });
        }
        GSO_TCPV4 => PROTO_TCP,
        GSO_UDP_L4 => PROTO_UDP,
        _ => return Err(SegmentError::WrongProtocol),
    };
    cut4(pkt, proto, vnet.gso_size.into(), scratch, layout).map(Wire::Segmented)
}

/// Finishes a partial (`CHECKSUM_PARTIAL`) checksum: the one's complement sum of
/// `pkt[start..]`, whose checksum field at `start + offset` holds the pseudo-header sum.
/// A UDP checksum that comes out 0 is sent as 0xffff (0 means "none" in UDP).
///
/// # Errors
/// `start + offset + 2` lies beyond the packet.
pub fn finish_checksum(pkt: &mut [u8], start: usize, offset: usize) -> Result<(), SegmentError> {
    let at = start.checked_add(offset).ok_or(SegmentError::Malformed)?;
    if at.checked_add(2).is_none_or(|end| end > pkt.len()) {
        return Err(SegmentError::Malformed);
    }
    let mut csum = !fold(sum_words(&pkt[start..]));
    if csum == 0 && pkt.get(9) == Some(&super::packet::PROTO_UDP) {
        csum = 0xffff;
    }
    pkt[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Largest UDP payload one send may carry (65535 − IPv4 − UDP headers): the bound on a GSO
/// send's total bytes.
pub const GSO_MAX_BYTES: usize = 65_507;

/// Which consecutive datagrams one UDP GSO send may carry (both I/O layers batch their sends
/// with it): all to one peer and as long as the first, but for the last, which may be shorter
/// and ends the run; at most `max_segments` of them and [`GSO_MAX_BYTES`] in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GsoRun {
    peer: Option<std::net::SocketAddrV4>,
    /// The first datagram's length: the segment size of the send.
    seg: usize,
    /// Bytes and datagrams admitted so far.
    pub len: usize,
    pub count: usize,
    closed: bool,
}

impl GsoRun {
    /// Admits the next datagram (`n` bytes to `peer`) if it continues the run; the first
    /// datagram always starts one (a run of one is a plain send).
    pub fn admit(&mut self, peer: std::net::SocketAddrV4, n: usize, max_segments: usize) -> bool {
        if self.count == 0 {
            *self = GsoRun {
                peer: Some(peer),
                seg: n,
                ..GsoRun::default()
            };
        } else if self.closed
            || self.peer != Some(peer)
            || n > self.seg
            || self.count >= max_segments
            || self.len + n > GSO_MAX_BYTES
        {
            return false;
        }
        self.len += n;
        self.count += 1;
        self.closed = n < self.seg;
        true
    }

    /// Where the run goes (`None` while empty).
    pub fn peer(&self) -> Option<std::net::SocketAddrV4> {
        self.peer
    }

    /// The `UDP_SEGMENT` size of the send: `None` for a run of one, a plain datagram.
    pub fn segment(&self) -> Option<usize> {
        (self.count > 1).then_some(self.seg)
    }
}

impl Segments {
    /// Byte ranges of the scratch buffer, one per UDP GSO send: whole segments only, at most
    /// `max_segments` of them and [`GSO_MAX_BYTES`] in one send (a 64 KiB super-packet with
    /// its repeated headers needs two).
    pub fn sends(&self, max_segments: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        let per_send = max_segments
            .min(GSO_MAX_BYTES / self.segment_len.max(1))
            .max(1)
            * self.segment_len;
        let total = self.total;
        (0..total)
            .step_by(per_send.max(1))
            .map(move |start| start..(start + per_send).min(total))
    }

    /// How many segments `bytes` of the scratch buffer (one of [`Segments::sends`]) hold.
    pub fn count_in(&self, bytes: usize) -> usize {
        bytes.div_ceil(self.segment_len.max(1))
    }

    /// Where segment `k` of a [`Layout::HeadersOnly`] cut lives: its header in the output
    /// buffer and its payload in the super-packet (both as byte ranges).
    pub fn gather(&self, k: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let h = self.hdr_len;
        let mss = self.segment_len.saturating_sub(h);
        let end = h + self.total.saturating_sub(self.count * h);
        let start = (h + k * mss).min(end);
        (k * h..(k + 1) * h, start..(start + mss).min(end))
    }
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
/// which halves the additions; a u64 cannot overflow below 2^32 words. The words are read in
/// the host's byte order, which needs no byte swaps and vectorizes plainly: a one's-complement
/// sum does not depend on byte order (RFC 1071, section 2), so swapping the folded sum gives
/// the big-endian one.
fn sum_words(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(4);
    let host: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .sum();
    let mut sum = u64::from(u16::from_be_bytes(fold(host).to_ne_bytes()));
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
    const C: Ipv4Addr = Ipv4Addr::new(10, 5, 3, 3);

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
    fn a_gso_run_takes_equal_datagrams_to_one_peer_and_ends_with_a_shorter_one() {
        let (p, q) = (
            std::net::SocketAddrV4::new(A, 8285),
            std::net::SocketAddrV4::new(B, 8285),
        );
        let mut run = GsoRun::default();
        assert!(run.admit(p, 100, 3));
        assert_eq!(run.segment(), None, "one datagram: a plain send");
        assert!(!run.admit(q, 100, 3), "another peer");
        assert!(!run.admit(p, 101, 3), "longer than the first");
        assert!(run.admit(p, 100, 3));
        assert!(run.admit(p, 60, 3));
        assert_eq!((run.count, run.len, run.segment()), (3, 260, Some(100)));
        assert!(!run.admit(p, 60, 9), "a shorter datagram ends the run");
        let mut full = GsoRun::default();
        assert!(full.admit(p, 100, 2) && full.admit(p, 100, 2));
        assert!(!full.admit(p, 100, 2), "at most max_segments");
        let mut big = GsoRun::default();
        assert!(big.admit(p, 40_000, 64), "the first always goes");
        assert!(!big.admit(p, 40_000, 64), "beyond GSO_MAX_BYTES");
        assert_eq!(big.peer(), Some(p));
    }

    #[test]
    fn the_word_sum_matches_a_plain_big_endian_sum() {
        for len in [0, 1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 1500, 65_535] {
            for data in [payload(len), vec![0xff; len], vec![0; len]] {
                let plain: u64 = data
                    .chunks(2)
                    .map(|w| u64::from(w[0]) << 8 | u64::from(*w.get(1).unwrap_or(&0)))
                    .sum();
                assert_eq!(fold(sum_words(&data)), fold(plain), "len {len}");
            }
        }
    }

    #[test]
    fn gathered_headers_and_payloads_are_the_contiguous_segments() {
        for (len, mss) in [(65_000, 1432), (1000, 1432), (2864, 1432), (3000, 7)] {
            let pkt = build_tcp4(A, B, 77, FLAG_PSH | 0x10, &payload(len));
            let mut whole = vec![0u8; 3 * 65_536];
            let mut hdrs = vec![0u8; 3 * 65_536];
            let c = segment_tcp4(&pkt, mss, &mut whole).unwrap();
            let g = segment_tcp4_headers(&pkt, mss, &mut hdrs).unwrap();
            assert_eq!(
                (g.count, g.segment_len, g.total),
                (c.count, c.segment_len, c.total)
            );
            assert_eq!(g.layout, Layout::HeadersOnly);
            let mut stream = Vec::new();
            for k in 0..g.count {
                let (h, p) = g.gather(k);
                stream.extend_from_slice(&hdrs[h]);
                stream.extend_from_slice(&pkt[p]);
            }
            assert_eq!(stream, whole[..c.total], "len {len} mss {mss}");
        }
        let pkt = build_tcp4(A, B, 1, 0x10, &payload(3000));
        assert_eq!(
            segment_tcp4_headers(&pkt, 1000, &mut [0u8; 119]),
            Err(SegmentError::NoRoom),
            "three 40-byte headers need 120 bytes"
        );
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
                    finish_checksum(&mut pkt, hdr.csum_start.into(), hdr.csum_offset.into())
                        .unwrap();
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
                super::super::packet::build_ipv4(A, C, 17, 64, &udp)
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
        let mut pkt = super::super::packet::build_ipv4(src, dst, PROTO_UDP, 64, &udp);
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

    /// `pkt` (a whole TCP or UDP/IPv4 packet with a 20-byte TCP header) as a TUN read with
    /// offloads hands it over: the pseudo-header sum in its checksum field, behind a
    /// virtio-net header asking for `gso_size` segments.
    fn as_read_from_tun(pkt: &[u8], gso_size: u16) -> (Vec<u8>, VnetHdr) {
        let (gso_type, l4_hdr, at) = match pkt[9] {
            PROTO_TCP => (GSO_TCPV4, 20, TCP_CHECKSUM),
            _ => (GSO_UDP_L4, UDP_HEADER, UDP_CHECKSUM),
        };
        let mut pkt = pkt.to_vec();
        let pseudo = sum_words(&pkt[12..20]) + u64::from(pkt[9]) + (pkt.len() - 20) as u64;
        pkt[20 + at..22 + at].copy_from_slice(&fold(pseudo).to_be_bytes());
        let vnet = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type,
            hdr_len: 20 + l4_hdr as u16,
            gso_size,
            csum_start: 20,
            csum_offset: at as u16,
        };
        (pkt, vnet)
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

    #[test]
    fn super_packets_leave_as_whole_datagrams_in_bounded_gso_sends() {
        let data = payload(65_000);
        let pkt = build_tcp4(A, B, 9, FLAG_ACK, &data);
        let (mut pkt, vnet) = as_read_from_tun(&pkt, 1400);
        assert_eq!(VnetHdr::parse(&vnet.encode()), Some(vnet));
        let mut scratch = vec![0u8; 80_000];
        let len = pkt.len();
        let Ok(Wire::Segmented(s)) =
            to_wire(&vnet, &mut pkt, len, &mut scratch, Layout::Contiguous)
        else {
            panic!("a TSO packet is segmented");
        };
        assert_eq!(s.segment_len, 1440);
        let sends: Vec<_> = s.sends(64).collect();
        assert_eq!(
            sends.len(),
            2,
            "65 000 bytes plus headers exceed one datagram"
        );
        assert_eq!(sends[0], 0..45 * 1440);
        assert_eq!(sends[1].end, s.total);
        assert!(sends.iter().all(|r| r.len() <= GSO_MAX_BYTES));
        assert_eq!(s.sends(16).count(), s.count.div_ceil(16));
        for seg in scratch[..s.total].chunks(1440) {
            assert!(tcp4_checksum_ok(seg));
        }

        // A small packet with a partial checksum is finished in place.
        let mut small = build_tcp4(A, B, 9, FLAG_ACK, &payload(300));
        let good = small.clone();
        let partial = fold(pseudo_of(&small));
        small[36..38].copy_from_slice(&partial.to_be_bytes());
        let vnet = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let len = small.len();
        assert_eq!(
            to_wire(&vnet, &mut small, len, &mut scratch, Layout::Contiguous),
            Ok(Wire::Whole { len })
        );
        assert_eq!(small, good);
        // An offload we never enabled, and a checksum offset beyond the packet.
        let udp4 = VnetHdr {
            gso_type: 5,
            ..VnetHdr::default()
        };
        assert!(to_wire(&udp4, &mut small, len, &mut scratch, Layout::Contiguous).is_err());
        let beyond = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            csum_start: 330,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert!(to_wire(&beyond, &mut small, len, &mut scratch, Layout::Contiguous).is_err());
    }

    fn pseudo_of(pkt: &[u8]) -> u64 {
        sum_words(&pkt[12..20]) + u64::from(PROTO_TCP) + (pkt.len() - 20) as u64
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
            Err(SegmentError::WrongProtocol)
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
            Err(SegmentError::WrongProtocol)
        );
    }
}
