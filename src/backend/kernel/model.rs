//! The pure model of the kernel state the kernel-programming backends own:
//! links, addresses, routes, neighbours and FDB entries as the kernel keys
//! them, the [`Desired`] state leases ask for, the [`Observed`] state the
//! kernel reports, and the [`Op`]s between them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// An Ethernet address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random locally administered unicast address (upstream's
    /// `mac.NewHardwareAddr`).
    pub fn random_local() -> Mac {
        let mut b: [u8; 6] = rand::random();
        b[0] = (b[0] & 0xfe) | 0x02;
        Mac(b)
    }

    /// Parses `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` or `aabb.ccdd.eeff`
    /// (the 6-byte forms Go's `net.ParseMAC` accepts).
    pub fn parse(text: &str) -> Option<Mac> {
        let hex: String = if text.len() == 14 && text.as_bytes().get(4) == Some(&b'.') {
            let parts: Vec<&str> = text.split('.').collect();
            if parts.len() != 3 || parts.iter().any(|p| p.len() != 4) {
                return None;
            }
            parts.concat()
        } else {
            let sep = if text.contains('-') { '-' } else { ':' };
            let parts: Vec<&str> = text.split(sep).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                return None;
            }
            parts.concat()
        };
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Mac(out))
    }

    /// Builds a MAC from a netlink attribute, if it is 6 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(bytes).ok().map(Mac)
    }

    /// Whether this is a unicast address other than all-zero (usable as a
    /// device address).
    pub fn is_usable_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A route flannel wants in the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gateway: IpAddr,
    pub oif: u32,
    /// `onlink`: the gateway is reachable through `oif` without a connected
    /// route (the vxlan next hop is the peer's subnet address).
    pub onlink: bool,
}

/// Which route to delete; unset fields match anything (as with `ip route del`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// The route's metric; the kernel looks a route up by (dst, metric).
    pub priority: u32,
}

impl From<RouteSpec> for RouteKey {
    fn from(r: RouteSpec) -> Self {
        RouteKey {
            dst: r.dst,
            gateway: Some(r.gateway),
            oif: Some(r.oif),
            priority: 0,
        }
    }
}

/// A permanent neighbour (ARP/NDP) entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighSpec {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Mac,
}

/// A permanent FDB entry of a vxlan device: frames for `mac` go to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbSpec {
    pub ifindex: u32,
    pub mac: Mac,
    pub dst: IpAddr,
}

/// One change to make to the kernel. Pure data: loggable, comparable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `ip route replace`.
    ReplaceRoute(RouteSpec),
    /// `ip route del` (a missing route counts as done).
    DeleteRoute(RouteKey),
    /// `ip neigh replace … nud permanent`.
    ReplaceNeigh(NeighSpec),
    /// `ip neigh del`.
    DeleteNeigh(NeighSpec),
    /// `bridge fdb replace … self permanent dst …`.
    ReplaceFdb(FdbSpec),
    /// `bridge fdb del … dst …`.
    DeleteFdb(FdbSpec),
}

impl Op {
    /// The operation in `ip`/`bridge` syntax, naming devices with `dev`.
    pub fn describe(&self, dev: impl Fn(u32) -> String) -> String {
        match self {
            Op::ReplaceRoute(r) => {
                let onlink = if r.onlink { " onlink" } else { "" };
                format!(
                    "route replace {} via {} dev {}{onlink}",
                    r.dst,
                    r.gateway,
                    dev(r.oif)
                )
            }
            Op::DeleteRoute(k) => {
                let mut s = format!("route del {}", k.dst);
                if let Some(gw) = k.gateway {
                    s.push_str(&format!(" via {gw}"));
                }
                if let Some(oif) = k.oif {
                    s.push_str(&format!(" dev {}", dev(oif)));
                }
                if k.priority != 0 {
                    s.push_str(&format!(" metric {}", k.priority));
                }
                s
            }
            Op::ReplaceNeigh(n) => format!(
                "neigh replace {} lladdr {} dev {} nud permanent",
                n.ip,
                n.mac,
                dev(n.ifindex)
            ),
            Op::DeleteNeigh(n) => format!("neigh del {} dev {}", n.ip, dev(n.ifindex)),
            Op::ReplaceFdb(e) => format!(
                "fdb replace {} dev {} dst {} self permanent",
                e.mac,
                dev(e.ifindex),
                e.dst
            ),
            Op::DeleteFdb(e) => format!(
                "fdb del {} dev {} dst {} self",
                e.mac,
                dev(e.ifindex),
                e.dst
            ),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(|i| format!("#{i}")))
    }
}

/// What the leases ask the kernel to hold, keyed the way the kernel keys it:
/// a route by destination, a neighbour by (device, IP), an FDB entry by
/// (device, MAC).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeMap<IpNet, RouteSpec>,
    pub neighs: BTreeMap<(u32, IpAddr), NeighSpec>,
    pub fdbs: BTreeMap<(u32, Mac), FdbSpec>,
}

impl Desired {
    pub fn add_route(&mut self, r: RouteSpec) {
        self.routes.insert(r.dst, r);
    }

    pub fn add_neigh(&mut self, n: NeighSpec) {
        self.neighs.insert((n.ifindex, n.ip), n);
    }

    pub fn add_fdb(&mut self, e: FdbSpec) {
        self.fdbs.insert((e.ifindex, e.mac), e);
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.neighs.is_empty() && self.fdbs.is_empty()
    }

    /// Replace operations for every entry, neighbours and FDB first: the
    /// route comes last so the kernel never resolves its next hop by ARP
    /// (upstream's order).
    pub fn replace_ops(&self) -> Vec<Op> {
        let mut ops: Vec<Op> = self
            .neighs
            .values()
            .copied()
            .map(Op::ReplaceNeigh)
            .collect();
        ops.extend(self.fdbs.values().copied().map(Op::ReplaceFdb));
        ops.extend(self.routes.values().copied().map(Op::ReplaceRoute));
        ops
    }

    /// Deletions that take the kernel from `self` to `next`: every entry of
    /// `self` whose key `next` no longer has. Routes go first so traffic
    /// stops before its next hop disappears. An FDB entry whose MAC stays
    /// but whose destination changes needs no deletion (replace rewrites it).
    pub fn removed_in(&self, next: &Desired) -> Vec<Op> {
        let mut ops: Vec<Op> = Vec::new();
        for (dst, r) in &self.routes {
            if !next.routes.contains_key(dst) {
                ops.push(Op::DeleteRoute((*r).into()));
            }
        }
        for (key, e) in &self.fdbs {
            if !next.fdbs.contains_key(key) {
                ops.push(Op::DeleteFdb(*e));
            }
        }
        for (key, n) in &self.neighs {
            if !next.neighs.contains_key(key) {
                ops.push(Op::DeleteNeigh(*n));
            }
        }
        ops
    }
}

/// A route as the kernel reports it (main table, unicast).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObservedRoute {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub priority: u32,
    /// Installed by the kernel itself (connected/prefix routes): never ours.
    pub proto_kernel: bool,
}

/// A neighbour entry as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObservedNeigh {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    pub permanent: bool,
}

/// An FDB entry as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObservedFdb {
    pub ifindex: u32,
    pub mac: Mac,
    pub dst: Option<IpAddr>,
    pub permanent: bool,
}

/// A snapshot of the kernel's tables, as far as flannel cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Main-table unicast routes of the families in use.
    pub routes: Vec<ObservedRoute>,
    /// Neighbours on the devices asked about.
    pub neighs: Vec<ObservedNeigh>,
    /// FDB entries on the devices asked about.
    pub fdbs: Vec<ObservedFdb>,
}

/// What the kernel's route lookup (`ip route get`) says about one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteLookup {
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

impl RouteLookup {
    /// The interface through which `ip` is directly connected (one route,
    /// no gateway: upstream's `ip.DirectRouting`), if it is.
    pub fn direct_oif(&self) -> Option<u32> {
        match (self.gateway, self.oif) {
            (None, Some(oif)) => Some(oif),
            _ => None,
        }
    }
}

/// Peer public IP → the interface it is directly connected through, for the
/// peers that are. Filled from [`Host::route_to`](super::Host::route_to) before planning.
pub type DirectPeers = HashMap<IpAddr, u32>;

/// Attributes of a vxlan link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanAttrs {
    pub vni: u32,
    /// Index of the underlay device (`dev` in `ip link add … type vxlan`).
    pub link: Option<u32>,
    pub local: Option<IpAddr>,
    pub group: Option<IpAddr>,
    /// UDP destination port (`dstport`).
    pub port: Option<u16>,
    pub gbp: bool,
    pub learning: bool,
    pub l2miss: bool,
}

/// A link as the kernel reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`"vxlan"`, `"veth"`, …), if any.
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    /// Present when `kind` is vxlan.
    pub vxlan: Option<VxlanAttrs>,
}

/// The vxlan link a backend wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub mac: Mac,
    pub mtu: u32,
    pub attrs: VxlanAttrs,
}

/// Changes to an existing link (`ip link set`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub up: bool,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
}

/// A kernel call failed; `what` names the operation.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct HostError {
    pub what: String,
    pub message: String,
    /// The errno, when the kernel gave one.
    pub errno: Option<i32>,
}

impl HostError {
    pub fn new(what: impl Into<String>, message: impl Into<String>, errno: Option<i32>) -> Self {
        HostError {
            what: what.into(),
            message: message.into(),
            errno,
        }
    }
}

/// Neighbours, then FDB, then routes (stable within each kind).
pub(crate) fn op_rank(op: &Op) -> u8 {
    match op {
        Op::ReplaceNeigh(_) | Op::DeleteNeigh(_) => 0,
        Op::ReplaceFdb(_) | Op::DeleteFdb(_) => 1,
        Op::ReplaceRoute(_) | Op::DeleteRoute(_) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::kernel::fake::fixtures::*;

    #[test]
    fn macs_parse_and_print_like_go() {
        assert_eq!(
            Mac::parse("c6:d2:32:6f:8f:44").unwrap().to_string(),
            "c6:d2:32:6f:8f:44"
        );
        assert_eq!(
            Mac::parse("C6-D2-32-6F-8F-44").unwrap().to_string(),
            "c6:d2:32:6f:8f:44"
        );
        assert_eq!(
            Mac::parse("c6d2.326f.8f44").unwrap().to_string(),
            "c6:d2:32:6f:8f:44"
        );
        for bad in [
            "",
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:00",
            "zz:d2:32:6f:8f:44",
            "c6:d2:32:6f:8f:4",
            "c6d2.326f.8f4g",
            "+6:d2:32:6f:8f:44",
        ] {
            assert_eq!(Mac::parse(bad), None, "{bad:?}");
        }
        for _ in 0..64 {
            let m = Mac::random_local();
            assert!(m.is_usable_unicast() && m.0[0] & 2 == 2, "{m}");
        }
    }

    #[test]
    fn removing_a_peer_deletes_route_then_fdb_then_neighbour() {
        let before = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_A);
        let ops = before.removed_in(&Desired::default());
        assert_eq!(
            ops,
            vec![
                Op::DeleteRoute(RouteKey {
                    dst: net("10.5.2.0/24"),
                    gateway: Some(ip("10.5.2.0")),
                    oif: Some(DEV),
                    priority: 0
                }),
                Op::DeleteFdb(FdbSpec {
                    ifindex: DEV,
                    mac: MAC_A,
                    dst: ip("192.0.2.2")
                }),
                Op::DeleteNeigh(NeighSpec {
                    ifindex: DEV,
                    ip: ip("10.5.2.0"),
                    mac: MAC_A
                }),
            ]
        );
    }

    #[test]
    fn adding_replaces_neighbour_and_fdb_before_the_route() {
        let d = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_A);
        let kinds: Vec<u8> = d.replace_ops().iter().map(op_rank).collect();
        assert_eq!(kinds, vec![0, 1, 2]);
    }

    #[test]
    fn a_changed_vtep_mac_drops_only_the_old_fdb_entry() {
        let before = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_A);
        let after = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_B);
        assert_eq!(
            before.removed_in(&after),
            vec![Op::DeleteFdb(FdbSpec {
                ifindex: DEV,
                mac: MAC_A,
                dst: ip("192.0.2.2")
            })]
        );
    }
}
