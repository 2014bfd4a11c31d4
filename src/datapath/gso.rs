//! Cutting super-packets (GSO in userspace). With `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD(TUN_F_TSO4 | TUN_F_USO4)` the kernel hands over TCP/IPv4 (and UDP/IPv4)
//! "super-packets" of up to 64 KiB, which must leave as ordinary packets of at most MTU bytes
//! each, one per UDP datagram, so the wire format stays upstream's.
//!
//! [`to_wire`] decides, from the virtio-net header a TUN read came with, whether a packet is
//! cut ([`cut4`]: MSS-sized segments, every one but the last exactly
//! [`Segments::segment_len`] bytes, the layout one `UDP_SEGMENT` send wants) or only gets its
//! partial checksum finished. [`GsoRun`] groups consecutive whole datagrams to one peer into
//! one GSO send. The reverse, on receive, is [`super::gro`].
//!
//! Pure, allocation-free and panic-free on any input; benched in `benches/datapath.rs`.
//!
//! Why not tun-rs's own offload helpers: they split a super-packet into one buffer per
//! segment and coalesce by copying, while a `UDP_SEGMENT` send wants the segments back to back
//! in one buffer (or gathered in place with `iovec`s).

use std::net::SocketAddrV4;
use std::ops::Range;

use super::wire::checksum::{finish_partial, fold, pseudo_header_sum, sum_words};
use super::wire::ipv4::{fill_header_checksum, Ipv4View, ADDRS, PROTO_TCP, PROTO_UDP};
use super::wire::tcp::{
    FLAG_CWR, FLAG_FIN, FLAG_PSH, TCP_CHECKSUM, TCP_DATA_OFFSET, TCP_FLAGS, TCP_MIN_HEADER, TCP_SEQ,
};
use super::wire::udp::{UDP_CHECKSUM, UDP_HEADER, UDP_LEN};
use super::wire::vnet::{VnetHdr, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_UDP_L4, VNET_F_NEEDS_CSUM};

/// Room for the segments of one super-packet: 64 KiB of payload plus a header per segment
/// (even at a 536-byte MSS, 123 segments × 120 bytes of headers fit).
pub const SCRATCH_LEN: usize = 2 * 65_536;

/// Most segments one UDP GSO send may carry on every kernel with `UDP_SEGMENT` (4.18 has 64;
/// later kernels allow 128).
pub const GSO_MAX_SEGMENTS: usize = 64;

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
    let sp = SuperPacket::parse(pkt, proto)?;
    let payload = pkt
        .get(sp.hdr_len()..sp.total)
        .ok_or(SegmentError::Malformed)?;
    let count = payload.len().div_ceil(mss).max(1);
    let hdr = sp.hdr_len();
    let segs = Segments {
        count,
        segment_len: hdr + mss.min(payload.len()),
        total: count * hdr + payload.len(),
        hdr_len: hdr,
        layout,
    };
    let (stride, room) = match layout {
        Layout::Contiguous => (segs.segment_len, segs.total),
        Layout::HeadersOnly => (hdr, count * hdr),
    };
    if out.len() < room {
        return Err(SegmentError::NoRoom);
    }
    let mut chunks = payload.chunks(mss);
    for k in 0..count {
        // An empty payload is one segment of headers alone.
        let chunk = chunks.next().unwrap_or_default();
        let start = k * stride;
        let h = out
            .get_mut(start..start + hdr)
            .ok_or(SegmentError::NoRoom)?;
        sp.write_segment_header(pkt, h, k, count, mss, chunk)?;
        if layout == Layout::Contiguous {
            out.get_mut(start + hdr..start + hdr + chunk.len())
                .ok_or(SegmentError::NoRoom)?
                .copy_from_slice(chunk);
        }
    }
    Ok(segs)
}

/// The parts of a TCP or UDP super-packet's headers that every segment's header is made from.
#[derive(Debug, Clone, Copy)]
struct SuperPacket {
    proto: u8,
    /// IPv4 header length, L4 header length, IP total length.
    ihl: usize,
    l4_hdr: usize,
    total: usize,
    /// IP id, TCP sequence number and flags (0 for UDP) of the super-packet.
    id: u16,
    seq: u32,
    flags: u8,
}

impl SuperPacket {
    /// Checks that `pkt` is an unfragmented IPv4 packet of `proto` with an L4 header that
    /// fits, and reads what the segments' headers are made from.
    fn parse(pkt: &[u8], proto: u8) -> Result<Self, SegmentError> {
        let view = Ipv4View::new_checked(pkt).map_err(|_| SegmentError::Malformed)?;
        // A fragment is never a super-packet.
        if view.protocol() != proto || view.is_fragment() {
            return Err(SegmentError::WrongProtocol);
        }
        let (ihl, total) = (view.header_len(), view.total_len());
        let l4 = pkt.get(ihl..total).ok_or(SegmentError::Malformed)?;
        let l4_hdr = match proto {
            PROTO_TCP => {
                let doff = l4.get(TCP_DATA_OFFSET).ok_or(SegmentError::Malformed)? >> 4;
                usize::from(doff) * 4
            }
            _ => UDP_HEADER,
        };
        if (proto == PROTO_TCP && l4_hdr < TCP_MIN_HEADER) || l4_hdr > l4.len() {
            return Err(SegmentError::Malformed);
        }
        let (seq, flags) = match (proto, l4.get(TCP_SEQ..TCP_SEQ + 4)) {
            (PROTO_TCP, Some(&[a, b, c, d])) => (u32::from_be_bytes([a, b, c, d]), l4[TCP_FLAGS]),
            _ => (0, 0),
        };
        Ok(SuperPacket {
            proto,
            ihl,
            l4_hdr,
            total,
            id: view.id(),
            seq,
            flags,
        })
    }

    /// IPv4 plus L4 header bytes.
    fn hdr_len(&self) -> usize {
        self.ihl + self.l4_hdr
    }

    /// Writes into `h` the header of segment `k` of `count` (payload `chunk`, cut every `mss`
    /// bytes): the super-packet's headers with the segment's own IP total length, IP id (the
    /// original plus `k`, as Linux's GSO does) and header checksum; for TCP its sequence
    /// number and flags (FIN and PSH only on the last, CWR only on the first), for UDP its
    /// length; and the full L4 checksum.
    fn write_segment_header(
        &self,
        pkt: &[u8],
        h: &mut [u8],
        k: usize,
        count: usize,
        mss: usize,
        chunk: &[u8],
    ) -> Result<(), SegmentError> {
        let (ihl, hdr) = (self.ihl, self.hdr_len());
        h.copy_from_slice(pkt.get(..hdr).ok_or(SegmentError::Malformed)?);
        h[2..4].copy_from_slice(&((hdr + chunk.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&self.id.wrapping_add(k as u16).to_be_bytes());
        fill_header_checksum(&mut h[..ihl]);
        let l4_len = self.l4_hdr + chunk.len();
        let (addrs, t) = h.split_at_mut(ihl);
        let at = if self.proto == PROTO_TCP {
            let seq = self.seq.wrapping_add((k * mss) as u32);
            t[TCP_SEQ..TCP_SEQ + 4].copy_from_slice(&seq.to_be_bytes());
            let mut f = self.flags;
            if k + 1 < count {
                f &= !(FLAG_FIN | FLAG_PSH);
            }
            if k > 0 {
                f &= !FLAG_CWR;
            }
            t[TCP_FLAGS] = f;
            TCP_CHECKSUM
        } else {
            t[UDP_LEN..UDP_LEN + 2].copy_from_slice(&(l4_len as u16).to_be_bytes());
            UDP_CHECKSUM
        };
        t[at..at + 2].fill(0);
        // `t` (the TCP or UDP header) has even length, so summing it apart from `chunk` is
        // exact.
        let addrs = addrs.get(ADDRS..ADDRS + 8).ok_or(SegmentError::Malformed)?;
        let sum = pseudo_header_sum(addrs, self.proto, l4_len) + sum_words(t) + sum_words(chunk);
        let mut csum = !fold(sum);
        if csum == 0 && self.proto == PROTO_UDP {
            // 0 means "no checksum" in UDP.
            csum = 0xffff;
        }
        t[at..at + 2].copy_from_slice(&csum.to_be_bytes());
        Ok(())
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
                let udp = pkt.get(9) == Some(&PROTO_UDP);
                if !finish_partial(pkt, vnet.csum_start.into(), vnet.csum_offset.into(), udp) {
                    return Err(SegmentError::Malformed);
                }
            }
            return Ok(Wire::Whole { len });
        }
        GSO_TCPV4 => PROTO_TCP,
        GSO_UDP_L4 => PROTO_UDP,
        _ => return Err(SegmentError::WrongProtocol),
    };
    cut4(pkt, proto, vnet.gso_size.into(), scratch, layout).map(Wire::Segmented)
}

/// Largest UDP payload one send may carry (65535 − IPv4 − UDP headers): the bound on a GSO
/// send's total bytes.
pub const GSO_MAX_BYTES: usize = 65_507;

/// Which consecutive datagrams one UDP GSO send may carry (both I/O layers batch their sends
/// with it): all to one peer and as long as the first, but for the last, which may be shorter
/// and ends the run; at most `max_segments` of them and [`GSO_MAX_BYTES`] in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GsoRun {
    peer: Option<SocketAddrV4>,
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
    pub fn admit(&mut self, peer: SocketAddrV4, n: usize, max_segments: usize) -> bool {
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
    pub fn peer(&self) -> Option<SocketAddrV4> {
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
    pub fn sends(&self, max_segments: usize) -> impl Iterator<Item = Range<usize>> {
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
    pub fn gather(&self, k: usize) -> (Range<usize>, Range<usize>) {
        let h = self.hdr_len;
        let mss = self.segment_len.saturating_sub(h);
        let end = h + self.total.saturating_sub(self.count * h);
        let start = (h + k * mss).min(end);
        (k * h..(k + 1) * h, start..(start + mss).min(end))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::datapath::wire::ipv4::build_ipv4;
    use crate::datapath::wire::tcp::{build_tcp4, tcp4_checksum_ok, FLAG_ACK};
    use std::net::Ipv4Addr;

    pub(crate) const A: Ipv4Addr = Ipv4Addr::new(10, 5, 1, 2);
    pub(crate) const B: Ipv4Addr = Ipv4Addr::new(10, 5, 2, 2);
    pub(crate) const C: Ipv4Addr = Ipv4Addr::new(10, 5, 3, 3);

    pub(crate) fn payload(n: usize) -> Vec<u8> {
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

    /// `pkt` (a whole TCP or UDP/IPv4 packet with a 20-byte TCP header) as a TUN read with
    /// offloads hands it over: the pseudo-header sum in its checksum field, behind a
    /// virtio-net header asking for `gso_size` segments.
    pub(crate) fn as_read_from_tun(pkt: &[u8], gso_size: u16) -> (Vec<u8>, VnetHdr) {
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
        let udp = build_ipv4(A, B, 17, 64, &payload(100));
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
