//! The Internet checksum (RFC 1071), the one every header of the datapath uses: IPv4 header
//! checksums, TCP and UDP checksums with their pseudo-header, and the partial checksums a TUN
//! with offloads leaves for us to finish.
//!
//! Pure and total: no input makes it panic.

/// The Internet checksum of `data`: the one's complement of the one's-complement sum of its
/// 16-bit big-endian words, an odd last byte padded with zero. Over a header whose checksum
/// field is filled in, the result is 0 when the checksum verifies.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data))
}

/// Sum of the 16-bit big-endian words of `data`, an odd last byte padded with zero, unfolded.
/// Adds 32-bit words (one's-complement sums fold to the same 16 bits whatever the word width),
/// which halves the additions; a u64 cannot overflow below 2^32 words. The words are read in
/// the host's byte order, which needs no byte swaps and vectorizes plainly: a one's-complement
/// sum does not depend on byte order (RFC 1071, section 2), so swapping the folded sum gives
/// the big-endian one.
pub fn sum_words(data: &[u8]) -> u64 {
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

/// Folds the carries of an unfolded sum back into 16 bits (end-around carry).
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The unfolded sum of the TCP/UDP pseudo-header: source and destination address (`addrs`,
/// the 8 bytes at offset 12 of an IPv4 header), protocol and the L4 length.
pub fn pseudo_header_sum(addrs: &[u8], proto: u8, l4_len: usize) -> u64 {
    sum_words(addrs) + u64::from(proto) + l4_len as u64
}

/// Finishes a partial (`CHECKSUM_PARTIAL`) checksum: the one's complement sum of
/// `pkt[start..]`, whose checksum field at `start + offset` holds the pseudo-header sum.
/// A UDP checksum that comes out 0 is sent as 0xffff (0 means "none" in UDP). Returns
/// `false`, leaving `pkt` alone, when the field lies beyond the packet.
pub fn finish_partial(pkt: &mut [u8], start: usize, offset: usize, udp: bool) -> bool {
    let Some(at) = start.checked_add(offset) else {
        return false;
    };
    if at.checked_add(2).is_none_or(|end| end > pkt.len()) {
        return false;
    }
    let mut csum = !fold(sum_words(&pkt[start..]));
    if csum == 0 && udp {
        csum = 0xffff;
    }
    pkt[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The textbook sum, word by word in network order: the reference for the fast one.
    fn plain_sum(data: &[u8]) -> u64 {
        data.chunks(2)
            .map(|w| u64::from(w[0]) << 8 | u64::from(*w.get(1).unwrap_or(&0)))
            .sum()
    }

    #[test]
    fn the_word_sum_matches_a_plain_big_endian_sum() {
        for len in [0, 1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 1500, 65_535] {
            for data in [payload(len), vec![0xff; len], vec![0; len]] {
                assert_eq!(fold(sum_words(&data)), fold(plain_sum(&data)), "len {len}");
            }
        }
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement: 220d).
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // Odd length pads with a zero byte.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn a_partial_checksum_is_finished_and_a_field_beyond_the_packet_refused() {
        let mut pkt = payload(64);
        pkt[10..12].fill(0);
        assert!(finish_partial(&mut pkt, 4, 6, false));
        assert_eq!(checksum(&pkt[4..]), 0, "the finished sum verifies");
        let before = pkt.clone();
        assert!(!finish_partial(&mut pkt, 60, 4, false));
        assert!(!finish_partial(&mut pkt, usize::MAX, 4, false));
        assert_eq!(pkt, before);
    }
}
