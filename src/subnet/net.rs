//! Subnet arithmetic: a network carved into equally sized subnets, and the
//! search for free ones.
//!
//! IPv4 and IPv6 share one implementation: addresses are handled as `u128`
//! together with their family's bit width, so the allocation walk exists once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Upstream picks at random among at most this many free subnets, lowest first.
pub const MAX_CANDIDATES: usize = 100;

/// The subnets a network config allows: `[min, max]` in steps of one subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetRange {
    /// The whole overlay network (`Network` / `IPv6Network`).
    pub network: IpNet,
    /// Prefix length of every lease (`SubnetLen` / `IPv6SubnetLen`).
    pub subnet_len: u8,
    /// Network address of the lowest usable subnet (`SubnetMin`).
    pub min: IpAddr,
    /// Network address of the highest usable subnet (`SubnetMax`).
    pub max: IpAddr,
}

impl SubnetRange {
    /// Whether `subnet` is one this config could hand out: inside `[min, max]`
    /// with exactly `subnet_len` (upstream's compatibility check for reuse).
    pub fn allows(&self, subnet: IpNet) -> bool {
        let same_family = matches!(
            (subnet, self.network),
            (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
        );
        same_family
            && subnet.prefix_len() == self.subnet_len
            && subnet.network() == subnet.addr()
            && to_u128(subnet.network()) >= to_u128(self.min)
            && to_u128(subnet.network()) <= to_u128(self.max)
    }

    /// Number of subnets in `[min, max]` (saturating; IPv6 ranges can be huge).
    pub fn len(&self) -> u128 {
        let step_bits = bits(self.min)
            .saturating_sub(u32::from(self.subnet_len))
            .min(127);
        match to_u128(self.max).checked_sub(to_u128(self.min)) {
            Some(span) => (span >> step_bits).saturating_add(1),
            None => 0,
        }
    }

    /// Whether the range holds no subnet (never, for a validated config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lowest free subnets, at most `limit` of them, in ascending order. A
    /// subnet is free when it overlaps none of `taken` (which may hold subnets of
    /// any size, even foreign ones).
    pub fn free_subnets(&self, taken: &[IpNet], limit: usize) -> Vec<IpNet> {
        let width = bits(self.min);
        let step_bits = width - u32::from(self.subnet_len);
        let step = 1u128 << step_bits;
        let (min, max) = (to_u128(self.min), to_u128(self.max));
        let mut out = Vec::new();
        let mut cur = min;
        while cur <= max && out.len() < limit {
            let candidate = net_from(cur, width, self.subnet_len);
            match taken.iter().find(|t| overlaps(**t, candidate)) {
                None => {
                    out.push(candidate);
                    cur = match cur.checked_add(step) {
                        Some(next) => next,
                        None => break,
                    };
                }
                Some(t) => {
                    // Jump past the taken subnet (it may span many candidates).
                    let end = to_u128(t.broadcast()).max(to_u128(candidate.broadcast()));
                    cur = match end.checked_add(1) {
                        Some(next) => next,
                        None => break,
                    };
                }
            }
        }
        out
    }
}

/// Whether two networks share any address.
pub fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first host address of a subnet (network + 1), as subnet.env writes it.
pub fn first_host_v4(net: Ipv4Net) -> Ipv4Net {
    let ip = Ipv4Addr::from(u32::from(net.network()).wrapping_add(1));
    Ipv4Net::new(ip, net.prefix_len()).expect("prefix length comes from a valid net")
}

/// The first host address of an IPv6 subnet (network + 1).
pub fn first_host_v6(net: Ipv6Net) -> Ipv6Net {
    let ip = Ipv6Addr::from(u128::from(net.network()).wrapping_add(1));
    Ipv6Net::new(ip, net.prefix_len()).expect("prefix length comes from a valid net")
}

/// An address as an integer, in its family's width.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The number of bits in `ip`'s family.
pub fn bits(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// An address of the family with `width` bits from its integer value.
pub fn from_u128(v: u128, width: u32) -> IpAddr {
    if width == 32 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

fn net_from(v: u128, width: u32, len: u8) -> IpNet {
    IpNet::new(from_u128(v, width), len).expect("subnet length validated against the family")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn range16() -> SubnetRange {
        SubnetRange {
            network: net("10.5.0.0/16"),
            subnet_len: 24,
            min: "10.5.1.0".parse().unwrap(),
            max: "10.5.255.0".parse().unwrap(),
        }
    }

    #[test]
    fn free_subnets_start_at_min_and_skip_taken_ones() {
        let taken = [net("10.5.1.0/24"), net("10.5.3.0/24")];
        let free = range16().free_subnets(&taken, 3);
        assert_eq!(
            free,
            vec![net("10.5.2.0/24"), net("10.5.4.0/24"), net("10.5.5.0/24")]
        );
    }

    #[test]
    fn a_large_foreign_lease_blocks_every_subnet_it_covers() {
        let free = range16().free_subnets(&[net("10.5.0.0/20")], 1);
        assert_eq!(free, vec![net("10.5.16.0/24")]);
    }

    #[test]
    fn exhausted_range_yields_nothing() {
        let r = SubnetRange {
            network: net("10.6.0.0/28"),
            subnet_len: 30,
            min: "10.6.0.4".parse().unwrap(),
            max: "10.6.0.12".parse().unwrap(),
        };
        assert_eq!(r.len(), 3);
        let taken = [net("10.6.0.4/30"), net("10.6.0.8/30"), net("10.6.0.12/30")];
        assert!(r.free_subnets(&taken, MAX_CANDIDATES).is_empty());
    }

    #[test]
    fn candidates_are_capped() {
        assert_eq!(
            range16().free_subnets(&[], MAX_CANDIDATES).len(),
            MAX_CANDIDATES
        );
        assert_eq!(range16().len(), 255);
    }

    #[test]
    fn ipv6_ranges_walk_in_subnet_steps() {
        let r = SubnetRange {
            network: net("2001:cafe:42::/56"),
            subnet_len: 64,
            min: "2001:cafe:42:1::".parse().unwrap(),
            max: "2001:cafe:42:ff::".parse().unwrap(),
        };
        let free = r.free_subnets(&[net("2001:cafe:42:1::/64")], 2);
        assert_eq!(
            free,
            vec![net("2001:cafe:42:2::/64"), net("2001:cafe:42:3::/64")]
        );
    }

    #[test]
    fn allows_checks_bounds_length_and_alignment() {
        let r = range16();
        assert!(r.allows(net("10.5.7.0/24")));
        assert!(!r.allows(net("10.5.0.0/24")), "below SubnetMin");
        assert!(!r.allows(net("10.5.7.0/25")), "wrong length");
        assert!(!r.allows(net("10.6.7.0/24")), "outside the network");
        assert!(!r.allows(net("2001:db8::/24")), "other family");
    }

    #[test]
    fn first_host_is_network_plus_one() {
        assert_eq!(
            first_host_v4("10.5.52.0/24".parse().unwrap()).to_string(),
            "10.5.52.1/24"
        );
        assert_eq!(
            first_host_v6("2001:cafe:42::/64".parse().unwrap()).to_string(),
            "2001:cafe:42::1/64"
        );
    }
}
