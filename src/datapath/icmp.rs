//! ICMP "destination unreachable / network unreachable" for packets the overlay cannot route,
//! and the token bucket that rate-limits them.
//!
//! The message is built exactly as upstream's proxy (`send_net_unreachable` in
//! `pkg/backend/udp/proxy_amd64.c`) builds it: a 20-byte IPv4 header from the TUN address to the
//! offender's source with TTL 8, then ICMP type 3 code 0 whose payload is the offender's IP
//! header and the first 8 bytes of its payload. Like upstream we never answer a non-first
//! fragment or an ICMP error message.
//!
//! Deviations, all towards RFC 1122 §3.2.2 / RFC 1812 §4.3.2.7: upstream never answers any ICMP
//! packet, so a `ping` to a vanished host just times out; we answer ICMP queries (echo and the
//! other informational types) as a kernel router does, and only ICMP *errors* never get an
//! error back. Upstream refuses offenders with a 60-byte header (an off-by-one on
//! `MAX_IPOPTLEN`), we answer them; and we stay silent for offenders sent from an unspecified,
//! broadcast or multicast source, or to a multicast or broadcast destination.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::wire::checksum::checksum;
use super::wire::ipv4::{
    fill_header_checksum, Ipv4View, IPV4_MAX_HEADER, IPV4_MIN_HEADER, PROTO_ICMP,
};

/// ICMP type "destination unreachable".
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP code "network unreachable".
pub const ICMP_NET_UNREACH: u8 = 0;
/// TTL of the generated message (upstream's value).
pub const ICMP_TTL: u8 = 8;
/// Length of the ICMP header (type, code, checksum, unused word).
const ICMP_HEADER: usize = 8;
/// Bytes of the offender's payload quoted after its header (RFC 792).
const QUOTED_PAYLOAD: usize = 8;
/// The longest message we ever build.
pub const MAX_REPLY: usize = IPV4_MIN_HEADER + ICMP_HEADER + IPV4_MAX_HEADER + QUOTED_PAYLOAD;

/// Whether an ICMP offender is a query (echo, timestamp, information, address mask request or
/// reply), which may be answered with an error; anything else, including a truncated message,
/// counts as an error message and is never answered.
fn is_icmp_query(offender: &Ipv4View<'_>) -> bool {
    let icmp_type = offender.packet().get(offender.header_len()).copied();
    matches!(icmp_type, Some(0 | 8 | 13..=18))
}

/// Whether `offender` may be answered with an ICMP error at all.
fn may_answer(offender: &Ipv4View<'_>) -> bool {
    let (src, dst) = (offender.src(), offender.dst());
    (offender.protocol() != PROTO_ICMP || is_icmp_query(offender))
        && offender.fragment_offset() == 0
        && !src.is_unspecified()
        && !src.is_broadcast()
        && !src.is_multicast()
        && !dst.is_broadcast()
        && !dst.is_multicast()
}

/// Builds a network-unreachable message about `offender` into `out`, from `tun_addr`.
/// Returns its length, or `None` when the offender must not be answered or `out` is too small
/// (it needs at most [`MAX_REPLY`] bytes).
pub fn net_unreachable(
    offender: &Ipv4View<'_>,
    tun_addr: Ipv4Addr,
    out: &mut [u8],
) -> Option<usize> {
    if !may_answer(offender) {
        return None;
    }
    // The offender's header plus 8 payload bytes, or less when the packet is shorter.
    let quoted_len = (offender.header_len() + QUOTED_PAYLOAD).min(offender.total_len());
    let quoted = offender.packet().get(..quoted_len)?;
    let len = IPV4_MIN_HEADER + ICMP_HEADER + quoted_len;
    let msg = out.get_mut(..len)?;
    msg.fill(0);

    let (ip, icmp) = msg.split_at_mut(IPV4_MIN_HEADER);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    ip[8] = ICMP_TTL;
    ip[9] = PROTO_ICMP;
    ip[12..16].copy_from_slice(&tun_addr.octets());
    ip[16..20].copy_from_slice(&offender.src().octets());
    fill_header_checksum(ip);

    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = ICMP_NET_UNREACH;
    icmp[ICMP_HEADER..].copy_from_slice(quoted);
    let sum = checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Some(len)
}

/// A token bucket: at most `burst` messages at once, refilled at `per_second`. Pure state
/// advanced by the caller's clock, so it is testable with made-up instants and costs nothing
/// until a packet actually needs an answer.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// Tokens, in nanoseconds of refill time (one token = `interval_ns`).
    budget_ns: u64,
    cap_ns: u64,
    interval_ns: u64,
    last: Option<Instant>,
}

impl RateLimiter {
    /// `per_second` = 0 disables the messages entirely.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let interval_ns = if per_second == 0 {
            u64::MAX
        } else {
            1_000_000_000 / u64::from(per_second)
        };
        let cap_ns = interval_ns.saturating_mul(u64::from(burst.max(1)));
        RateLimiter {
            budget_ns: cap_ns,
            cap_ns,
            interval_ns,
            last: None,
        }
    }

    /// Takes one token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.interval_ns == u64::MAX {
            return false;
        }
        let elapsed = match self.last {
            Some(last) => now.saturating_duration_since(last),
            None => Duration::ZERO,
        };
        // Never move backwards, or a clock step back would mint the same time twice.
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
        let refill = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.budget_ns = self.budget_ns.saturating_add(refill).min(self.cap_ns);
        if self.budget_ns >= self.interval_ns {
            self.budget_ns -= self.interval_ns;
            true
        } else {
            false
        }
    }
}

impl Default for RateLimiter {
    /// 100 messages a second per worker with bursts of 20: plenty for a human with `ping`,
    /// too little to turn a flood of unroutable packets into a flood of ICMP.
    fn default() -> Self {
        RateLimiter::new(100, 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::wire::ipv4::{build_ipv4, PROTO_UDP};

    const TUN: Ipv4Addr = Ipv4Addr::new(10, 5, 1, 0);

    fn offender(payload: &[u8]) -> Vec<u8> {
        build_ipv4(
            Ipv4Addr::new(10, 5, 1, 7),
            Ipv4Addr::new(10, 5, 99, 1),
            PROTO_UDP,
            64,
            payload,
        )
    }

    #[test]
    fn reply_is_built_like_upstream_with_valid_checksums() {
        let off = offender(b"0123456789abcdef");
        let view = Ipv4View::new_checked(&off).unwrap();
        let mut out = [0u8; MAX_REPLY];
        let len = net_unreachable(&view, TUN, &mut out).unwrap();
        assert_eq!(len, 20 + 8 + 20 + 8);

        let reply = Ipv4View::new_verified(&out[..len]).expect("IP header checksum verifies");
        assert_eq!(reply.total_len(), len);
        assert_eq!(
            (reply.src(), reply.dst()),
            (TUN, Ipv4Addr::new(10, 5, 1, 7))
        );
        assert_eq!((reply.ttl(), reply.protocol()), (ICMP_TTL, PROTO_ICMP));
        assert_eq!(
            &out[4..8],
            &[0, 0, 0, 0],
            "id 0, no flags, like upstream's memset"
        );

        let icmp = &out[20..len];
        assert_eq!((icmp[0], icmp[1]), (3, 0));
        assert_eq!(&icmp[4..8], &[0, 0, 0, 0]);
        assert_eq!(checksum(icmp), 0, "ICMP checksum verifies");
        assert_eq!(
            &icmp[8..],
            &off[..28],
            "quotes the offender's header and 8 payload bytes"
        );
    }

    #[test]
    fn short_offenders_are_quoted_as_far_as_they_go() {
        let off = offender(b"abc");
        let view = Ipv4View::new_checked(&off).unwrap();
        let mut out = [0u8; MAX_REPLY];
        let len = net_unreachable(&view, TUN, &mut out).unwrap();
        assert_eq!(len, 20 + 8 + 23);
        assert_eq!(checksum(&out[20..len]), 0);
        assert_eq!(&out[28..len], &off[..]);
    }

    #[test]
    fn offenders_with_options_are_quoted_whole() {
        // A 60-byte header (upstream refuses these by an off-by-one; we answer).
        let mut off = vec![0u8; 60 + 12];
        off[0] = 0x4f;
        off[2..4].copy_from_slice(&72u16.to_be_bytes());
        off[8] = 64;
        off[9] = PROTO_UDP;
        off[12..16].copy_from_slice(&[10, 5, 1, 7]);
        off[16..20].copy_from_slice(&[10, 5, 99, 1]);
        fill_header_checksum(&mut off[..60]);
        let view = Ipv4View::new_checked(&off).unwrap();
        let mut out = [0u8; MAX_REPLY];
        let len = net_unreachable(&view, TUN, &mut out).unwrap();
        assert_eq!(len, MAX_REPLY);
        assert_eq!(checksum(&out[20..len]), 0);
        assert_eq!(&out[28..len], &off[..68]);
    }

    #[test]
    fn no_reply_for_icmp_fragments_or_non_unicast() {
        let mut out = [0u8; MAX_REPLY];
        let icmp = |payload: &[u8]| {
            build_ipv4(
                Ipv4Addr::new(10, 5, 1, 7),
                Ipv4Addr::new(10, 5, 99, 1),
                PROTO_ICMP,
                64,
                payload,
            )
        };
        // An ICMP error (here: another destination unreachable) never gets an error back…
        let error = icmp(&[3; 16]);
        assert_eq!(
            net_unreachable(&Ipv4View::new_checked(&error).unwrap(), TUN, &mut out),
            None
        );
        let truncated = icmp(&[]);
        assert_eq!(
            net_unreachable(&Ipv4View::new_checked(&truncated).unwrap(), TUN, &mut out),
            None
        );
        // …but a query (an echo request) does, as a kernel router answers it.
        let echo = icmp(&[8; 16]);
        assert!(net_unreachable(&Ipv4View::new_checked(&echo).unwrap(), TUN, &mut out).is_some());

        let mut frag = offender(b"0123456789");
        frag[6..8].copy_from_slice(&0x2001u16.to_be_bytes()); // MF + offset 1
        fill_header_checksum(&mut frag[..20]);
        assert_eq!(
            net_unreachable(&Ipv4View::new_checked(&frag).unwrap(), TUN, &mut out),
            None
        );

        // First fragment (MF set, offset 0) is answered.
        let mut first = offender(b"0123456789");
        first[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        fill_header_checksum(&mut first[..20]);
        assert!(net_unreachable(&Ipv4View::new_checked(&first).unwrap(), TUN, &mut out).is_some());

        for (src, dst) in [
            (Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(10, 5, 99, 1)),
            (Ipv4Addr::new(10, 5, 1, 7), Ipv4Addr::new(224, 0, 0, 251)),
            (Ipv4Addr::new(10, 5, 1, 7), Ipv4Addr::BROADCAST),
        ] {
            let p = build_ipv4(src, dst, PROTO_UDP, 64, b"01234567");
            assert_eq!(
                net_unreachable(&Ipv4View::new_checked(&p).unwrap(), TUN, &mut out),
                None,
                "{src} -> {dst}"
            );
        }
    }

    #[test]
    fn too_small_output_buffer_is_refused() {
        let off = offender(b"0123456789");
        let view = Ipv4View::new_checked(&off).unwrap();
        assert_eq!(net_unreachable(&view, TUN, &mut [0u8; 40]), None);
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10, 3);
        assert_eq!((0..5).filter(|_| rl.allow(t0)).count(), 3, "burst of 3");
        assert!(
            !rl.allow(t0 + Duration::from_millis(50)),
            "half an interval is not enough"
        );
        assert!(rl.allow(t0 + Duration::from_millis(100)));
        assert!(!rl.allow(t0 + Duration::from_millis(100)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| rl.allow(later)).count(), 3);
        // A clock that goes backwards does not panic or mint tokens.
        assert!(!rl.allow(t0));
    }

    #[test]
    fn rate_zero_disables_messages() {
        let mut rl = RateLimiter::new(0, 10);
        assert!(!rl.allow(Instant::now()));
    }
}
