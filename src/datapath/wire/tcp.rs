//! The TCP header (RFC 9293 §3.1): the offsets and flags segmentation and coalescing touch,
//! and the checksum check and packet builder the tests, benches and fuzz targets use.

use std::net::Ipv4Addr;

use super::checksum::{fold, pseudo_header_sum, sum_words};
use super::ipv4::{build_ipv4, Ipv4View, ADDRS, PROTO_TCP};

/// Smallest TCP header.
pub const TCP_MIN_HEADER: usize = 20;
/// Offsets in the TCP header.
pub const TCP_SEQ: usize = 4;
pub const TCP_DATA_OFFSET: usize = 12;
pub const TCP_FLAGS: usize = 13;
pub const TCP_CHECKSUM: usize = 16;
/// Flags: FIN and PSH belong only on the last segment of a cut super-packet, CWR only on
/// the first; ACK (with PSH at most) is the only set that coalesces.
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_PSH: u8 = 0x08;
pub const FLAG_ACK: u8 = 0x10;
pub const FLAG_CWR: u8 = 0x80;

/// Whether the TCP checksum of the TCP/IPv4 packet `pkt` verifies (tests and fuzzing).
pub fn tcp4_checksum_ok(pkt: &[u8]) -> bool {
    let Ok(view) = Ipv4View::new_checked(pkt) else {
        return false;
    };
    let (Some(tcp), Some(addrs)) = (
        pkt.get(view.header_len()..view.total_len()),
        pkt.get(ADDRS..ADDRS + 8),
    ) else {
        return false;
    };
    fold(pseudo_header_sum(addrs, PROTO_TCP, tcp.len()) + sum_words(tcp)) == 0xffff
}

/// Test and bench helper: a checksummed TCP/IPv4 packet (no options) with `payload`, sequence
/// number `seq` and TCP flags `flags`.
#[doc(hidden)]
pub fn build_tcp4(src: Ipv4Addr, dst: Ipv4Addr, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0u8; TCP_MIN_HEADER + payload.len()];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[TCP_SEQ..TCP_SEQ + 4].copy_from_slice(&seq.to_be_bytes());
    tcp[TCP_DATA_OFFSET] = 5 << 4;
    tcp[TCP_FLAGS] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[TCP_MIN_HEADER..].copy_from_slice(payload);
    let mut pkt = build_ipv4(src, dst, PROTO_TCP, 64, &tcp);
    let sum = pseudo_header_sum(&pkt[ADDRS..ADDRS + 8], PROTO_TCP, tcp.len()) + sum_words(&tcp);
    let csum = !fold(sum);
    pkt[20 + TCP_CHECKSUM..20 + TCP_CHECKSUM + 2].copy_from_slice(&csum.to_be_bytes());
    pkt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_segment_verifies_and_a_flipped_bit_does_not() {
        let a = Ipv4Addr::new(10, 5, 1, 2);
        let b = Ipv4Addr::new(10, 5, 2, 2);
        let mut pkt = build_tcp4(a, b, 7, FLAG_ACK, b"some payload");
        assert!(tcp4_checksum_ok(&pkt));
        pkt[30] ^= 1;
        assert!(!tcp4_checksum_ok(&pkt));
        assert!(!tcp4_checksum_ok(&pkt[..10]));
    }
}
