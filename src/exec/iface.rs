//! Choosing the external interface, as upstream flanneld does: `--iface`
//! (names or IPs, first match wins), then `--iface-regex` (against IPs, then
//! names), then `--iface-can-reach` (the kernel's route to that IP), else the
//! interface of the default route.
//!
//! The netlink queries live here; the choice itself ([`select`]) is pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressScope};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_packet_route::AddressFamily;
use regex::Regex;

use super::netlink::{Netlink, NetlinkError};

/// The external interface flanneld talks to other hosts through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// The interface's own IPv4 address.
    pub iface_addr: Ipv4Addr,
    /// The interface's own IPv6 address, when IPv6 is enabled.
    pub iface_addr_v6: Option<Ipv6Addr>,
    /// The address published in the lease (`--public-ip`, else `iface_addr`).
    pub public_ip: Ipv4Addr,
    /// `--public-ipv6`, else `iface_addr_v6`.
    pub public_ipv6: Option<Ipv6Addr>,
}

/// One address of an interface, with what ranks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceAddr {
    pub ip: IpAddr,
    pub scope_global: bool,
    pub permanent: bool,
    pub deprecated_or_tentative: bool,
}

/// An interface as netlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceInfo {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub addrs: Vec<IfaceAddr>,
}

impl IfaceInfo {
    /// The best IPv4 address: global before narrower scopes, permanent before
    /// dynamic; deprecated and tentative addresses are never used.
    pub fn best_v4(&self) -> Option<Ipv4Addr> {
        self.ranked().find_map(|a| match a.ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
    }

    /// The best IPv6 address, ranked the same way (link-local last).
    pub fn best_v6(&self) -> Option<Ipv6Addr> {
        self.ranked().find_map(|a| match a.ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })
    }

    fn ranked(&self) -> impl Iterator<Item = &IfaceAddr> {
        let mut v: Vec<&IfaceAddr> = self
            .addrs
            .iter()
            .filter(|a| !a.deprecated_or_tentative)
            .collect();
        v.sort_by_key(|a| (!a.scope_global, !a.permanent));
        v.into_iter()
    }
}

/// What the flags ask for.
#[derive(Debug, Clone, Default)]
pub struct IfaceRequest {
    pub ifaces: Vec<String>,
    pub regexes: Vec<String>,
    pub can_reach: Option<IpAddr>,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub want_ipv6: bool,
}

/// Interface selection failures, in upstream's words where it has them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfaceError {
    #[error(
        "failed to find interface to use that matches the interfaces and/or regexes provided ({0})"
    )]
    NoMatch(String),
    #[error("failed to get default interface: no IPv4 default route")]
    NoDefaultRoute,
    #[error("no route to {0} to choose an interface by (--iface-can-reach)")]
    NoRouteTo(IpAddr),
    #[error("interface {0} has no usable IPv4 address")]
    NoAddress(String),
    #[error("interface {0} has no usable IPv6 address (IPv6 is enabled)")]
    NoAddressV6(String),
    #[error("interface {0} reports MTU 0")]
    ZeroMtu(String),
    #[error("netlink: {0}")]
    Netlink(String),
}

/// Where the route lookups point (filled by the netlink side).
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteHints {
    /// Interface index of the route to `--iface-can-reach`.
    pub can_reach_oif: Option<u32>,
    /// Interface index of the first IPv4 default route.
    pub default_oif: Option<u32>,
}

/// Picks the interface and its address. Pure: `inventory` and `hints` come
/// from netlink (or a test).
pub fn select(
    inventory: &[IfaceInfo],
    req: &IfaceRequest,
    hints: RouteHints,
) -> Result<ExternalInterface, IfaceError> {
    let (iface, addr) = choose(inventory, req, hints)?;
    if iface.mtu == 0 {
        return Err(IfaceError::ZeroMtu(iface.name.clone()));
    }
    let iface_addr = match addr {
        Some(IpAddr::V4(v4)) => v4,
        _ => iface
            .best_v4()
            .ok_or_else(|| IfaceError::NoAddress(iface.name.clone()))?,
    };
    let iface_addr_v6 = match addr {
        Some(IpAddr::V6(v6)) => Some(v6),
        _ => iface.best_v6(),
    };
    if req.want_ipv6 && iface_addr_v6.is_none() && req.public_ipv6.is_none() {
        return Err(IfaceError::NoAddressV6(iface.name.clone()));
    }
    Ok(ExternalInterface {
        name: iface.name.clone(),
        index: iface.index,
        mtu: iface.mtu,
        iface_addr,
        iface_addr_v6: if req.want_ipv6 { iface_addr_v6 } else { None },
        public_ip: req.public_ip.unwrap_or(iface_addr),
        public_ipv6: if req.want_ipv6 {
            req.public_ipv6.or(iface_addr_v6)
        } else {
            None
        },
    })
}

fn choose<'a>(
    inventory: &'a [IfaceInfo],
    req: &IfaceRequest,
    hints: RouteHints,
) -> Result<(&'a IfaceInfo, Option<IpAddr>), IfaceError> {
    let by_index = |idx: u32| inventory.iter().find(|i| i.index == idx);
    if !req.ifaces.is_empty() || !req.regexes.is_empty() {
        for want in &req.ifaces {
            if let Ok(ip) = want.parse::<IpAddr>() {
                if let Some(i) = inventory
                    .iter()
                    .find(|i| i.addrs.iter().any(|a| a.ip == ip))
                {
                    return Ok((i, Some(ip)));
                }
            } else if let Some(i) = inventory.iter().find(|i| &i.name == want) {
                return Ok((i, None));
            }
        }
        for pattern in &req.regexes {
            let Ok(re) = Regex::new(pattern) else {
                continue;
            };
            for i in inventory {
                if let Some(a) = i.addrs.iter().find(|a| re.is_match(&a.ip.to_string())) {
                    return Ok((i, Some(a.ip)));
                }
            }
            if let Some(i) = inventory.iter().find(|i| re.is_match(&i.name)) {
                return Ok((i, None));
            }
        }
        let asked = req
            .ifaces
            .iter()
            .chain(&req.regexes)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        return Err(IfaceError::NoMatch(asked));
    }
    if let Some(dst) = req.can_reach {
        let idx = hints.can_reach_oif.ok_or(IfaceError::NoRouteTo(dst))?;
        return by_index(idx)
            .map(|i| (i, None))
            .ok_or(IfaceError::NoRouteTo(dst));
    }
    let idx = hints.default_oif.ok_or(IfaceError::NoDefaultRoute)?;
    by_index(idx)
        .map(|i| (i, None))
        .ok_or(IfaceError::NoDefaultRoute)
}

/// Queries netlink and selects the external interface.
pub async fn discover(nl: &Netlink, req: &IfaceRequest) -> Result<ExternalInterface, IfaceError> {
    let e = |e: NetlinkError| IfaceError::Netlink(e.to_string());
    let inventory = inventory(nl).await.map_err(e)?;
    let mut hints = RouteHints::default();
    if req.ifaces.is_empty() && req.regexes.is_empty() {
        match req.can_reach {
            Some(dst) => {
                hints.can_reach_oif = nl
                    .route_to(dst)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| oif_of(&r.attributes));
            }
            None => hints.default_oif = default_oif(nl).await.map_err(e)?,
        }
    }
    select(&inventory, req, hints)
}

async fn inventory(nl: &Netlink) -> Result<Vec<IfaceInfo>, NetlinkError> {
    let mut out = Vec::new();
    for msg in nl.links().await? {
        let mut info = IfaceInfo {
            name: String::new(),
            index: msg.header.index,
            mtu: 0,
            addrs: Vec::new(),
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n,
                LinkAttribute::Mtu(m) => info.mtu = m,
                _ => {}
            }
        }
        out.push(info);
    }
    for msg in nl.addresses(None).await? {
        let ip = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        let (Some(ip), Some(info)) = (ip, out.iter_mut().find(|i| i.index == msg.header.index))
        else {
            continue;
        };
        let flags = msg.header.flags;
        info.addrs.push(IfaceAddr {
            ip,
            scope_global: msg.header.scope == AddressScope::Universe,
            permanent: flags.contains(AddressHeaderFlags::Permanent),
            deprecated_or_tentative: flags.contains(AddressHeaderFlags::Deprecated)
                || flags.contains(AddressHeaderFlags::Tentative),
        });
    }
    Ok(out)
}

/// The interface of the first IPv4 default route.
async fn default_oif(nl: &Netlink) -> Result<Option<u32>, NetlinkError> {
    for r in nl.routes(false).await? {
        let is_default = r.header.address_family == AddressFamily::Inet
            && r.header.destination_prefix_length == 0
            && !r.attributes.iter().any(|a| matches!(a, RouteAttribute::Destination(RouteAddress::Inet(ip)) if !ip.is_unspecified()));
        if is_default {
            if let Some(oif) = oif_of(&r.attributes) {
                return Ok(Some(oif));
            }
        }
    }
    Ok(None)
}

fn oif_of(attrs: &[RouteAttribute]) -> Option<u32> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str, global: bool) -> IfaceAddr {
        IfaceAddr {
            ip: ip.parse().unwrap(),
            scope_global: global,
            permanent: true,
            deprecated_or_tentative: false,
        }
    }

    fn inv() -> Vec<IfaceInfo> {
        vec![
            IfaceInfo {
                name: "lo".into(),
                index: 1,
                mtu: 65536,
                addrs: vec![addr("127.0.0.1", false), addr("::1", false)],
            },
            IfaceInfo {
                name: "eth0".into(),
                index: 2,
                mtu: 1500,
                addrs: vec![
                    addr("fe80::1", false),
                    addr("192.0.2.10", true),
                    addr("2001:db8::10", true),
                ],
            },
            IfaceInfo {
                name: "eth1".into(),
                index: 3,
                mtu: 9000,
                addrs: vec![addr("198.51.100.7", true)],
            },
        ]
    }

    fn req() -> IfaceRequest {
        IfaceRequest::default()
    }

    #[test]
    fn default_route_interface_is_the_fallback() {
        let e = select(
            &inv(),
            &req(),
            RouteHints {
                default_oif: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (e.name.as_str(), e.mtu, e.iface_addr.to_string()),
            ("eth0", 1500, "192.0.2.10".into())
        );
        assert_eq!(e.public_ip, e.iface_addr);
        assert_eq!(
            select(&inv(), &req(), RouteHints::default()).unwrap_err(),
            IfaceError::NoDefaultRoute
        );
    }

    #[test]
    fn iface_by_name_or_ip_first_match_wins() {
        let r = IfaceRequest {
            ifaces: vec!["nope".into(), "198.51.100.7".into(), "eth0".into()],
            ..req()
        };
        assert_eq!(
            select(&inv(), &r, RouteHints::default()).unwrap().name,
            "eth1"
        );
        let r = IfaceRequest {
            ifaces: vec!["lo".into()],
            public_ip: Some("127.0.0.3".parse().unwrap()),
            ..req()
        };
        let e = select(&inv(), &r, RouteHints::default()).unwrap();
        assert_eq!(
            (e.iface_addr.to_string(), e.public_ip.to_string()),
            ("127.0.0.1".into(), "127.0.0.3".into())
        );
    }

    #[test]
    fn regex_matches_addresses_before_names() {
        let r = IfaceRequest {
            regexes: vec![r"^198\.51\.".into()],
            ..req()
        };
        assert_eq!(
            select(&inv(), &r, RouteHints::default()).unwrap().name,
            "eth1"
        );
        let r = IfaceRequest {
            regexes: vec!["^eth".into()],
            ..req()
        };
        assert_eq!(
            select(&inv(), &r, RouteHints::default()).unwrap().name,
            "eth0"
        );
    }

    #[test]
    fn explicit_requests_that_match_nothing_fail() {
        let r = IfaceRequest {
            ifaces: vec!["wlan9".into()],
            regexes: vec!["^zz".into()],
            ..req()
        };
        let e = select(
            &inv(),
            &r,
            RouteHints {
                default_oif: Some(2),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(e, IfaceError::NoMatch(ref s) if s.contains("wlan9")),
            "{e}"
        );
    }

    #[test]
    fn can_reach_uses_the_route_hint() {
        let r = IfaceRequest {
            can_reach: Some("203.0.113.1".parse().unwrap()),
            ..req()
        };
        let hints = RouteHints {
            can_reach_oif: Some(3),
            default_oif: Some(2),
        };
        assert_eq!(select(&inv(), &r, hints).unwrap().name, "eth1");
        assert!(matches!(
            select(&inv(), &r, RouteHints::default()),
            Err(IfaceError::NoRouteTo(_))
        ));
    }

    #[test]
    fn ipv6_prefers_global_addresses_and_is_required_when_enabled() {
        let r = IfaceRequest {
            ifaces: vec!["eth0".into()],
            want_ipv6: true,
            ..req()
        };
        let e = select(&inv(), &r, RouteHints::default()).unwrap();
        assert_eq!(e.public_ipv6, Some("2001:db8::10".parse().unwrap()));
        let r = IfaceRequest {
            ifaces: vec!["eth1".into()],
            want_ipv6: true,
            ..req()
        };
        assert!(matches!(
            select(&inv(), &r, RouteHints::default()),
            Err(IfaceError::NoAddressV6(_))
        ));
        let r = IfaceRequest {
            ifaces: vec!["eth0".into()],
            ..req()
        };
        assert_eq!(
            select(&inv(), &r, RouteHints::default())
                .unwrap()
                .public_ipv6,
            None
        );
    }

    #[test]
    fn deprecated_addresses_are_skipped_and_zero_mtu_refused() {
        let mut i = inv();
        i[2].addrs.insert(
            0,
            IfaceAddr {
                deprecated_or_tentative: true,
                ..addr("198.51.100.1", true)
            },
        );
        let r = IfaceRequest {
            ifaces: vec!["eth1".into()],
            ..req()
        };
        assert_eq!(
            select(&i, &r, RouteHints::default())
                .unwrap()
                .iface_addr
                .to_string(),
            "198.51.100.7"
        );
        i[2].mtu = 0;
        assert!(matches!(
            select(&i, &r, RouteHints::default()),
            Err(IfaceError::ZeroMtu(_))
        ));
    }
}
