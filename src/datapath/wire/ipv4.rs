//! The IPv4 header (RFC 791 §3.1): a validated view, the TTL step both ends of the tunnel
//! take, and the header checksum.
//!
//! Everything here is pure (no I/O, no allocation) and total: no input makes it panic, which is
//! what the fuzz targets check. [`Ipv4View::new_checked`] validates once; its accessors cannot
//! fail afterwards (smoltcp's `new_checked` contract).
//!
//! Byte offsets follow RFC 791 §3.1.

use std::net::Ipv4Addr;

use super::checksum::{checksum, fold};

/// Length of an IPv4 header without options.
pub const IPV4_MIN_HEADER: usize = 20;
/// Longest IPv4 header (IHL = 15).
pub const IPV4_MAX_HEADER: usize = 60;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

// Offsets into the fixed part of the header.
const VER_IHL: usize = 0;
const TOTAL_LEN: usize = 2;
const ID: usize = 4;
const FRAG: usize = 6;
const TTL: usize = 8;
const PROTO: usize = 9;
const CHECKSUM: usize = 10;
/// Where the source and destination addresses start: the 8 bytes a pseudo-header sums.
pub const ADDRS: usize = 12;
const SRC: usize = ADDRS;
const DST: usize = 16;

/// Why bytes are not a usable IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than an IPv4 header ({len} bytes)")]
    TooShort { len: usize },
    #[error("IP version {version}, not 4")]
    NotIpv4 { version: u8 },
    #[error("header length {ihl} words is below 5 or beyond the packet")]
    BadHeaderLength { ihl: u8 },
    #[error("total length {total} does not fit header {header} and packet {len}")]
    BadTotalLength {
        total: usize,
        header: usize,
        len: usize,
    },
    #[error("header checksum does not verify")]
    BadChecksum,
}

/// A validated view of an IPv4 packet: version 4, IHL in 5..=15, header and total length
/// within the bytes given.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4View<'a> {
    /// The fixed header; an array so that field reads are bounds-checked at compile time.
    fixed: &'a [u8; IPV4_MIN_HEADER],
    /// The packet up to its total length (trailing bytes beyond it are cut off).
    packet: &'a [u8],
    header_len: usize,
}

impl<'a> Ipv4View<'a> {
    /// Validates `bytes` as one IPv4 packet. Trailing bytes beyond the header's total length
    /// are ignored (the view covers only the packet).
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, Malformed> {
        let Some(fixed) = bytes.first_chunk::<IPV4_MIN_HEADER>() else {
            // A lone first byte still tells whether this was meant to be IPv4 at all.
            return Err(match bytes.first() {
                Some(b) if b >> 4 != 4 => Malformed::NotIpv4 { version: b >> 4 },
                _ => Malformed::TooShort { len: bytes.len() },
            });
        };
        let version = fixed[VER_IHL] >> 4;
        if version != 4 {
            return Err(Malformed::NotIpv4 { version });
        }
        let ihl = fixed[VER_IHL] & 0x0f;
        let header_len = usize::from(ihl) * 4;
        if header_len < IPV4_MIN_HEADER || header_len > bytes.len() {
            return Err(Malformed::BadHeaderLength { ihl });
        }
        let total = usize::from(u16::from_be_bytes([fixed[TOTAL_LEN], fixed[TOTAL_LEN + 1]]));
        let Some(packet) = bytes.get(..total).filter(|_| total >= header_len) else {
            return Err(Malformed::BadTotalLength {
                total,
                header: header_len,
                len: bytes.len(),
            });
        };
        Ok(Ipv4View {
            fixed,
            packet,
            header_len,
        })
    }

    /// Like [`Ipv4View::new_checked`], and also requires a correct header checksum. Used for
    /// packets from the network; packets from the local kernel are trusted to be checksummed.
    pub fn new_verified(bytes: &'a [u8]) -> Result<Self, Malformed> {
        let view = Self::new_checked(bytes)?;
        if checksum(view.header()) != 0 {
            return Err(Malformed::BadChecksum);
        }
        Ok(view)
    }

    /// Header length in bytes (20..=60).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Total length in bytes (the IPv4 Total Length field).
    pub fn total_len(&self) -> usize {
        self.packet.len()
    }

    /// The header, options included.
    pub fn header(&self) -> &'a [u8] {
        self.packet.get(..self.header_len).unwrap_or(self.fixed)
    }

    /// The whole packet (header and payload, without trailing bytes).
    pub fn packet(&self) -> &'a [u8] {
        self.packet
    }

    pub fn ttl(&self) -> u8 {
        self.fixed[TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.fixed[PROTO]
    }

    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            self.fixed[SRC],
            self.fixed[SRC + 1],
            self.fixed[SRC + 2],
            self.fixed[SRC + 3],
        )
    }

    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            self.fixed[DST],
            self.fixed[DST + 1],
            self.fixed[DST + 2],
            self.fixed[DST + 3],
        )
    }

    /// Whether this is a fragment: a fragment offset, or More Fragments set.
    pub fn is_fragment(&self) -> bool {
        self.fragment_offset() != 0 || self.fixed[FRAG] & 0x20 != 0
    }

    /// The identification field.
    pub fn id(&self) -> u16 {
        u16::from_be_bytes([self.fixed[ID], self.fixed[ID + 1]])
    }

    /// The fragment offset in 8-byte units (flags masked off).
    pub fn fragment_offset(&self) -> u16 {
        u16::from_be_bytes([self.fixed[FRAG], self.fixed[FRAG + 1]]) & 0x1fff
    }
}

/// Decrements the TTL of the IPv4 header at the start of `packet` and patches the header
/// checksum incrementally (RFC 1624, eqn. 3), as upstream's proxy does at both ends of the
/// tunnel. Returns `false`, leaving the packet as it was, when the TTL is already 0 or 1
/// (upstream discards a packet whose TTL reaches 0, silently) or `packet` is too short.
pub fn decrement_ttl(packet: &mut [u8]) -> bool {
    let Some(h) = packet.first_chunk_mut::<IPV4_MIN_HEADER>() else {
        return false;
    };
    let ttl = h[TTL];
    if ttl <= 1 {
        return false;
    }
    // The 16-bit word holding TTL (high byte) and protocol (low byte).
    let old_word = u16::from_be_bytes([ttl, h[PROTO]]);
    let new_word = old_word - 0x0100;
    let old_sum = u16::from_be_bytes([h[CHECKSUM], h[CHECKSUM + 1]]);
    // HC' = ~(~HC + ~m + m')
    let sum = u64::from(!old_sum) + u64::from(!old_word) + u64::from(new_word);
    let new_sum = !fold(sum);
    h[TTL] = ttl - 1;
    h[CHECKSUM..CHECKSUM + 2].copy_from_slice(&new_sum.to_be_bytes());
    true
}

/// Writes a fresh header checksum into the IPv4 header `header` (IHL·4 bytes).
pub fn fill_header_checksum(header: &mut [u8]) {
    if let Some(field) = header.get_mut(CHECKSUM..CHECKSUM + 2) {
        field.fill(0);
    }
    let sum = checksum(header);
    if let Some(field) = header.get_mut(CHECKSUM..CHECKSUM + 2) {
        field.copy_from_slice(&sum.to_be_bytes());
    }
}

/// Test and bench helper: builds a checksummed IPv4 packet with the given addresses, protocol,
/// TTL and payload (no options).
#[doc(hidden)]
pub fn build_ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total = IPV4_MIN_HEADER + payload.len();
    let mut p = vec![0u8; total];
    p[VER_IHL] = 0x45;
    p[TOTAL_LEN..TOTAL_LEN + 2].copy_from_slice(&(total as u16).to_be_bytes());
    p[FRAG] = 0x40; // DF
    p[TTL] = ttl;
    p[PROTO] = proto;
    p[SRC..SRC + 4].copy_from_slice(&src.octets());
    p[DST..DST + 4].copy_from_slice(&dst.octets());
    fill_header_checksum(&mut p[..IPV4_MIN_HEADER]);
    p[IPV4_MIN_HEADER..].copy_from_slice(payload);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        build_ipv4(
            Ipv4Addr::new(10, 5, 1, 2),
            Ipv4Addr::new(10, 5, 2, 3),
            PROTO_UDP,
            64,
            b"hello world",
        )
    }

    #[test]
    fn well_formed_packet_parses() {
        let p = sample();
        let v = Ipv4View::new_verified(&p).unwrap();
        assert_eq!(
            (v.header_len(), v.total_len(), v.ttl(), v.protocol()),
            (20, 31, 64, PROTO_UDP)
        );
        assert_eq!(
            (v.src(), v.dst()),
            (Ipv4Addr::new(10, 5, 1, 2), Ipv4Addr::new(10, 5, 2, 3))
        );
        assert_eq!(v.fragment_offset(), 0);
        assert_eq!(v.packet(), &p[..]);
    }

    #[test]
    fn trailing_bytes_are_cut_off() {
        let mut p = sample();
        p.extend_from_slice(&[0xaa; 7]);
        let v = Ipv4View::new_checked(&p).unwrap();
        assert_eq!(v.total_len(), 31);
    }

    #[test]
    fn truncated_and_malformed_inputs_are_rejected() {
        let p = sample();
        for len in 0..p.len() {
            assert!(
                Ipv4View::new_checked(&p[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
        assert_eq!(
            Ipv4View::new_checked(&[]).unwrap_err(),
            Malformed::TooShort { len: 0 }
        );
        assert_eq!(
            Ipv4View::new_checked(&[0x45, 0]).unwrap_err(),
            Malformed::TooShort { len: 2 }
        );
        assert_eq!(
            Ipv4View::new_checked(&[0x60]).unwrap_err(),
            Malformed::NotIpv4 { version: 6 }
        );

        let mut v6 = p.clone();
        v6[0] = 0x65;
        assert_eq!(
            Ipv4View::new_checked(&v6).unwrap_err(),
            Malformed::NotIpv4 { version: 6 }
        );

        let mut short_ihl = p.clone();
        short_ihl[0] = 0x44;
        assert_eq!(
            Ipv4View::new_checked(&short_ihl).unwrap_err(),
            Malformed::BadHeaderLength { ihl: 4 }
        );

        let mut long_ihl = p.clone();
        long_ihl[0] = 0x4f; // 60-byte header in a 31-byte packet
        assert_eq!(
            Ipv4View::new_checked(&long_ihl).unwrap_err(),
            Malformed::BadHeaderLength { ihl: 15 }
        );

        let mut big_total = p.clone();
        big_total[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert!(matches!(
            Ipv4View::new_checked(&big_total),
            Err(Malformed::BadTotalLength { total: 100, .. })
        ));

        let mut small_total = p.clone();
        small_total[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert!(matches!(
            Ipv4View::new_checked(&small_total),
            Err(Malformed::BadTotalLength { total: 19, .. })
        ));
    }

    #[test]
    fn checksum_is_verified_only_when_asked() {
        let mut p = sample();
        p[CHECKSUM] ^= 0x10;
        assert!(Ipv4View::new_checked(&p).is_ok());
        assert_eq!(
            Ipv4View::new_verified(&p).unwrap_err(),
            Malformed::BadChecksum
        );
    }

    /// Full recompute of the header checksum, the reference for the incremental update.
    fn recomputed(p: &[u8]) -> [u8; 2] {
        let mut h = p[..IPV4_MIN_HEADER].to_vec();
        fill_header_checksum(&mut h);
        [h[CHECKSUM], h[CHECKSUM + 1]]
    }

    #[test]
    fn ttl_decrement_matches_full_checksum_recompute() {
        // A cheap deterministic generator, so the test covers many headers without a crate.
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let r = next();
            let src = Ipv4Addr::from((r >> 32) as u32);
            let dst = Ipv4Addr::from(r as u32);
            let ttl = 2 + (next() % 254) as u8;
            let proto = next() as u8;
            let mut p = build_ipv4(src, dst, proto, ttl, &next().to_be_bytes());
            p[4..6].copy_from_slice(&(next() as u16).to_be_bytes()); // identification
            fill_header_checksum(&mut p[..20]);
            assert!(decrement_ttl(&mut p));
            assert_eq!(p[TTL], ttl - 1);
            assert_eq!(
                [p[CHECKSUM], p[CHECKSUM + 1]],
                recomputed(&p),
                "src {src} dst {dst} ttl {ttl}"
            );
            assert!(Ipv4View::new_verified(&p).is_ok());
        }
    }

    #[test]
    fn ttl_decrement_handles_checksum_wraparound() {
        // Find headers whose checksum sits at the edges where end-around carry matters.
        let mut hits = 0;
        for id in 0..=u16::MAX {
            let mut p = sample();
            p[4..6].copy_from_slice(&id.to_be_bytes());
            fill_header_checksum(&mut p[..20]);
            let sum = u16::from_be_bytes([p[CHECKSUM], p[CHECKSUM + 1]]);
            if sum >= 0xfeff || sum <= 0x0100 {
                hits += 1;
                assert!(decrement_ttl(&mut p));
                assert_eq!(
                    [p[CHECKSUM], p[CHECKSUM + 1]],
                    recomputed(&p),
                    "id {id:#x} sum {sum:#x}"
                );
            }
        }
        assert!(hits > 0);
    }

    #[test]
    fn ttl_reaching_zero_is_refused_and_leaves_the_packet_alone() {
        for ttl in [0u8, 1] {
            let mut p = build_ipv4(
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::LOCALHOST,
                PROTO_UDP,
                ttl,
                b"x",
            );
            let before = p.clone();
            assert!(!decrement_ttl(&mut p));
            assert_eq!(p, before);
        }
        assert!(!decrement_ttl(&mut [0x45; 19]));
    }
}
