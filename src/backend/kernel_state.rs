//! The forwarding state that the kernel-programming backends (vxlan, host-gw)
//! own: a pure model of routes, neighbours and FDB entries, the diff between
//! what the leases ask for and what the kernel holds, and the [`Host`] seam
//! through which the backends reach the kernel.
//!
//! Planning never touches the OS. A backend turns leases into a [`Desired`]
//! state; [`Desired::removed_in`] and [`reconcile`] turn two states into
//! [`Op`]s; an implementation of [`Host`] (`crate::exec::netlink::Netlink` in
//! the daemon, `fake::FakeHost` in unit tests) performs them. [`Engine`] is
//! the loop both backends share: lease events in, operations out, and a
//! periodic [`reconcile`] that repairs drift with one log line per repair.
//!
//! # What "ours" means
//! [`Ownership`] draws the line between flannel's entries and everybody
//! else's, so that reconciliation can remove what no lease explains without
//! touching the rest of the host: routes in the main table whose destination
//! lies inside the flannel network (but not inside this host's own subnet)
//! and that go through a flannel device or through a gateway on the external
//! interface; permanent neighbours and FDB entries on flannel devices.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::subnet::lease::{Lease, LeaseEvent, SubnetKey};

/// How often the kernel is compared with the leases (upstream's host-gw
/// route check runs every 10 s; vxlan upstream has none).
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(10);

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

    /// Adds everything of `other` (later entries win, as in the kernel).
    pub fn merge(&mut self, other: Desired) {
        self.routes.extend(other.routes);
        self.neighs.extend(other.neighs);
        self.fdbs.extend(other.fdbs);
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

/// Which kernel entries belong to flannel (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    /// The flannel networks (`Network`, `IPv6Network`).
    pub networks: Vec<IpNet>,
    /// This host's own subnets: never touched.
    pub own_subnets: Vec<IpNet>,
    /// Flannel's own devices (vxlan): their neighbours and FDB entries, and
    /// routes through them, are flannel's.
    pub devices: Vec<u32>,
    /// Interfaces through which a gateway route into the network is
    /// flannel's (the external interface: host-gw and direct routes).
    pub gateway_oifs: Vec<u32>,
}

impl Ownership {
    /// Whether the route is one flannel installed (or should have).
    pub fn owns_route(&self, r: &ObservedRoute) -> bool {
        if r.proto_kernel {
            return false;
        }
        let in_network = self.networks.iter().any(|n| n.contains(&r.dst));
        let in_own = self
            .own_subnets
            .iter()
            .any(|n| n.contains(&r.dst) || r.dst.contains(n));
        if !in_network || in_own {
            return false;
        }
        let oif = r.oif.unwrap_or(0);
        self.devices.contains(&oif) || (r.gateway.is_some() && self.gateway_oifs.contains(&oif))
    }
}

/// Why reconciliation wants an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// A lease asks for it and the kernel does not have it.
    Missing,
    /// The kernel holds something else under the same key.
    Differs(String),
    /// The kernel holds it and no lease explains it.
    Unexplained,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Missing => write!(f, "missing"),
            Why::Differs(have) => write!(f, "kernel has {have}"),
            Why::Unexplained => write!(f, "no lease explains it"),
        }
    }
}

/// One repair that reconciliation proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub op: Op,
    pub why: Why,
}

/// Compares the kernel with what the leases ask for and proposes the repairs:
/// missing or different entries are replaced; with `remove_stale`, entries
/// that are flannel's (per `own`) but explained by no lease are deleted.
/// Replacements come first (neighbours, FDB, routes), deletions after
/// (routes, FDB, neighbours), so a repair never opens a gap.
///
/// `remove_stale` must stay false until the lease list is known to be
/// complete (the first watch snapshot), or a restart would tear down every
/// peer's entries before the leases arrive.
pub fn reconcile(
    desired: &Desired,
    observed: &Observed,
    own: &Ownership,
    remove_stale: bool,
) -> Vec<Repair> {
    let mut adds = Vec::new();
    let mut route_dels = Vec::new();
    let mut fdb_dels = Vec::new();
    let mut neigh_dels = Vec::new();

    for want in desired.neighs.values() {
        match observed
            .neighs
            .iter()
            .find(|n| n.ifindex == want.ifindex && n.ip == want.ip)
        {
            None => adds.push(Repair {
                op: Op::ReplaceNeigh(*want),
                why: Why::Missing,
            }),
            Some(n) if n.permanent && n.mac == Some(want.mac) => {}
            Some(n) => {
                let have = match n.mac {
                    Some(m) => format!(
                        "lladdr {m}{}",
                        if n.permanent {
                            " permanent"
                        } else {
                            " (not permanent)"
                        }
                    ),
                    None => "an incomplete entry".to_owned(),
                };
                adds.push(Repair {
                    op: Op::ReplaceNeigh(*want),
                    why: Why::Differs(have),
                });
            }
        }
    }
    for want in desired.fdbs.values() {
        let same_mac: Vec<&ObservedFdb> = observed
            .fdbs
            .iter()
            .filter(|e| e.ifindex == want.ifindex && e.mac == want.mac && e.permanent)
            .collect();
        if !same_mac.iter().any(|e| e.dst == Some(want.dst)) {
            let why = match same_mac.first().and_then(|e| e.dst) {
                None => Why::Missing,
                Some(dst) => Why::Differs(format!("dst {dst}")),
            };
            adds.push(Repair {
                op: Op::ReplaceFdb(*want),
                why,
            });
        }
        if remove_stale {
            // Extra destinations for the same MAC would flood frames to hosts
            // that no longer own it. When the wanted destination is missing,
            // the replace above rewrites the first one, so that one stays.
            let rewritten = usize::from(!same_mac.iter().any(|e| e.dst == Some(want.dst)));
            for e in same_mac.iter().skip(rewritten) {
                if let Some(dst) = e.dst.filter(|d| *d != want.dst) {
                    fdb_dels.push(Repair {
                        op: Op::DeleteFdb(FdbSpec { dst, ..*want }),
                        why: Why::Unexplained,
                    });
                }
            }
        }
    }
    for want in desired.routes.values() {
        let matches = |r: &&ObservedRoute| {
            r.dst == want.dst
                && r.priority == 0
                && r.gateway == Some(want.gateway)
                && r.oif == Some(want.oif)
                && r.onlink == want.onlink
        };
        if !observed.routes.iter().any(|r| matches(&r)) {
            let why = match observed
                .routes
                .iter()
                .find(|r| r.dst == want.dst && r.priority == 0)
            {
                None => Why::Missing,
                Some(r) => Why::Differs(describe_route(r)),
            };
            adds.push(Repair {
                op: Op::ReplaceRoute(*want),
                why,
            });
        }
    }

    if remove_stale {
        for r in observed.routes.iter().filter(|r| own.owns_route(r)) {
            // A route with the desired destination and metric 0 is rewritten
            // by the replace above; anything else that is ours goes.
            let replaced = desired.routes.contains_key(&r.dst) && r.priority == 0;
            if !replaced {
                route_dels.push(Repair {
                    op: Op::DeleteRoute(RouteKey {
                        dst: r.dst,
                        gateway: r.gateway,
                        oif: r.oif,
                        priority: r.priority,
                    }),
                    why: Why::Unexplained,
                });
            }
        }
        for e in observed
            .fdbs
            .iter()
            .filter(|e| own.devices.contains(&e.ifindex) && e.permanent)
        {
            if let (false, Some(dst)) = (desired.fdbs.contains_key(&(e.ifindex, e.mac)), e.dst) {
                fdb_dels.push(Repair {
                    op: Op::DeleteFdb(FdbSpec {
                        ifindex: e.ifindex,
                        mac: e.mac,
                        dst,
                    }),
                    why: Why::Unexplained,
                });
            }
        }
        for n in observed
            .neighs
            .iter()
            .filter(|n| own.devices.contains(&n.ifindex) && n.permanent)
        {
            if !desired.neighs.contains_key(&(n.ifindex, n.ip)) {
                neigh_dels.push(Repair {
                    op: Op::DeleteNeigh(NeighSpec {
                        ifindex: n.ifindex,
                        ip: n.ip,
                        mac: n.mac.unwrap_or_default(),
                    }),
                    why: Why::Unexplained,
                });
            }
        }
    }
    adds.sort_by_key(|r| op_rank(&r.op));
    adds.extend(route_dels);
    adds.extend(fdb_dels);
    adds.extend(neigh_dels);
    adds
}

/// Neighbours, then FDB, then routes (stable within each kind).
fn op_rank(op: &Op) -> u8 {
    match op {
        Op::ReplaceNeigh(_) | Op::DeleteNeigh(_) => 0,
        Op::ReplaceFdb(_) | Op::DeleteFdb(_) => 1,
        Op::ReplaceRoute(_) | Op::DeleteRoute(_) => 2,
    }
}

fn describe_route(r: &ObservedRoute) -> String {
    let mut s = String::new();
    if let Some(gw) = r.gateway {
        s.push_str(&format!("via {gw} "));
    }
    match r.oif {
        Some(oif) => s.push_str(&format!("dev #{oif}")),
        None => s.push_str("no device"),
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    s
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
/// peers that are. Filled from [`Host::route_to`] before planning.
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

/// What to do about the vxlan link a backend wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkVerdict {
    /// No link by that name: create it.
    Create,
    /// A compatible link exists: keep it (and its MAC), fixing what can be
    /// changed in place.
    Adopt {
        index: u32,
        mac: Mac,
        change: LinkChange,
    },
    /// A link by that name exists but cannot be made right in place.
    Recreate {
        index: u32,
        reason: String,
        old_mac: Option<Mac>,
    },
}

/// Decides whether an existing link can be adopted: upstream's
/// `vxlanLinksIncompat` (type, VNI, underlay device, local address, group,
/// l2miss, port, GBP; unset values on either side match), plus the learning
/// flag, which upstream silently leaves as it was.
pub fn vxlan_verdict(want: &VxlanSpec, have: Option<&LinkState>) -> LinkVerdict {
    let Some(have) = have else {
        return LinkVerdict::Create;
    };
    let recreate = |reason: String| LinkVerdict::Recreate {
        index: have.index,
        reason,
        old_mac: have.mac,
    };
    let (Some("vxlan"), Some(v)) = (have.kind.as_deref(), have.vxlan.as_ref()) else {
        return recreate(format!(
            "link type: vxlan vs {}",
            have.kind.as_deref().unwrap_or("unknown")
        ));
    };
    let w = &want.attrs;
    let differ =
        |a: Option<String>, b: Option<String>| matches!((a, b), (Some(a), Some(b)) if a != b);
    let reason = if w.vni != v.vni {
        Some(format!("vni: {} vs {}", w.vni, v.vni))
    } else if differ(
        w.link.filter(|i| *i > 0).map(|i| i.to_string()),
        v.link.filter(|i| *i > 0).map(|i| i.to_string()),
    ) {
        Some(format!(
            "vtep (external) interface: {:?} vs {:?}",
            w.link, v.link
        ))
    } else if differ(
        w.local.map(|a| a.to_string()),
        v.local.map(|a| a.to_string()),
    ) {
        Some(format!(
            "vtep (external) IP: {:?} vs {:?}",
            w.local, v.local
        ))
    } else if differ(
        w.group.map(|a| a.to_string()),
        v.group.map(|a| a.to_string()),
    ) {
        Some(format!("group address: {:?} vs {:?}", w.group, v.group))
    } else if w.l2miss != v.l2miss {
        Some(format!("l2miss: {} vs {}", w.l2miss, v.l2miss))
    } else if differ(
        w.port.filter(|p| *p > 0).map(|p| p.to_string()),
        v.port.filter(|p| *p > 0).map(|p| p.to_string()),
    ) {
        Some(format!("port: {:?} vs {:?}", w.port, v.port))
    } else if w.gbp != v.gbp {
        Some(format!("gbp: {} vs {}", w.gbp, v.gbp))
    } else if w.learning != v.learning {
        Some(format!("learning: {} vs {}", w.learning, v.learning))
    } else {
        None
    };
    if let Some(reason) = reason {
        return recreate(reason);
    }
    let mac = match have.mac {
        Some(m) if m.is_usable_unicast() => m,
        _ => return recreate("the existing link has no usable MAC address".to_owned()),
    };
    let change = LinkChange {
        up: false,
        mtu: (have.mtu != want.mtu).then_some(want.mtu),
        mac: None,
    };
    LinkVerdict::Adopt {
        index: have.index,
        mac,
        change,
    }
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

/// The kernel as the backends see it. Every method acts on the calling
/// process's network namespace.
pub trait Host: Send + 'static {
    /// The link named `name`, or `None` if there is none.
    fn link(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LinkState>, HostError>> + Send;
    /// Creates a vxlan link (down).
    fn create_vxlan(
        &mut self,
        spec: &VxlanSpec,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    fn delete_link(&mut self, index: u32) -> impl Future<Output = Result<(), HostError>> + Send;
    fn set_link(
        &mut self,
        index: u32,
        change: &LinkChange,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    /// The addresses of link `index`, with their prefix lengths.
    fn addresses(
        &mut self,
        index: u32,
    ) -> impl Future<Output = Result<Vec<IpNet>, HostError>> + Send;
    fn add_address(
        &mut self,
        index: u32,
        addr: IpNet,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    fn delete_address(
        &mut self,
        index: u32,
        addr: IpNet,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    /// The kernel's route to `dst` (`None`: unreachable).
    fn route_to(
        &mut self,
        dst: IpAddr,
    ) -> impl Future<Output = Result<Option<RouteLookup>, HostError>> + Send;
    /// Main-table routes of the given families (`v6` too when asked) and the
    /// neighbours and FDB entries of `devices`.
    fn observe(
        &mut self,
        v6: bool,
        devices: &[u32],
    ) -> impl Future<Output = Result<Observed, HostError>> + Send;
    /// Performs one operation. Deleting something already gone succeeds.
    fn apply(&mut self, op: &Op) -> impl Future<Output = Result<(), HostError>> + Send;
    /// `net.ipv6.conf.<name>.accept_ra = 0`, best effort (upstream ignores errors too).
    fn disable_accept_ra(&mut self, name: &str) -> impl Future<Output = ()> + Send;

    /// Wakes `kick` whenever a link named in `names` is deleted, until the
    /// returned task is aborted. Best effort: `None` where unavailable (the
    /// periodic check still notices, later).
    fn watch_link_deletions(
        &mut self,
        _names: Vec<String>,
        _kick: Arc<Notify>,
    ) -> Option<JoinHandle<()>> {
        None
    }
}

/// What a kernel-programming backend plans with: how leases become peers,
/// and peers become a [`Desired`] kernel state. Everything here is pure; the
/// [`Engine`] does the talking to the [`Host`].
pub trait Planner: Send + 'static {
    /// What the backend keeps of another host's lease.
    type Peer: Clone + fmt::Debug + Send + Sync;

    /// The peer a lease describes, or `None` when this backend does not
    /// handle it (another backend type, unreadable data: logged here).
    fn peer(&self, lease: &Lease) -> Option<Self::Peer>;

    /// Addresses whose direct reachability ([`Host::route_to`]) planning
    /// needs for this peer.
    fn lookups(&self, peer: &Self::Peer) -> Vec<IpAddr>;

    /// The kernel state all `peers` together ask for.
    fn desired(&self, peers: &BTreeMap<SubnetKey, Self::Peer>, direct: &DirectPeers) -> Desired;

    /// Subnets the backend refuses to route, with the reason (logged by the
    /// engine once when a refusal starts, and again when it ends).
    fn refused(
        &self,
        _peers: &BTreeMap<SubnetKey, Self::Peer>,
        _direct: &DirectPeers,
    ) -> BTreeMap<IpNet, String> {
        BTreeMap::new()
    }

    /// Which kernel entries are this backend's.
    fn ownership(&self) -> Ownership;

    /// Whether IPv6 routes are in play.
    fn uses_v6(&self) -> bool;

    /// A device name for log lines.
    fn device_name(&self, index: u32) -> String;

    /// The log line for a peer that appeared or changed.
    fn added_line(&self, peer: &Self::Peer) -> String;

    /// The log line for a peer that went away.
    fn removed_line(&self, peer: &Self::Peer) -> String;
}

/// Turns lease events and periodic checks into kernel operations: the same
/// loop for every kernel-programming backend.
#[derive(Debug)]
pub struct Engine<P: Planner> {
    pub planner: P,
    peers: BTreeMap<SubnetKey, P::Peer>,
    direct: DirectPeers,
    /// The lease list is complete (a watch snapshot arrived): stale entries
    /// may be removed.
    synced: bool,
    /// Refusals already reported.
    refused: BTreeMap<IpNet, String>,
}

impl<P: Planner> Engine<P> {
    pub fn new(planner: P) -> Self {
        Engine {
            planner,
            peers: BTreeMap::new(),
            direct: DirectPeers::new(),
            synced: false,
            refused: BTreeMap::new(),
        }
    }

    /// The peers currently known.
    pub fn peers(&self) -> &BTreeMap<SubnetKey, P::Peer> {
        &self.peers
    }

    /// Marks the lease list complete (after a watch snapshot).
    pub fn mark_synced(&mut self) {
        self.synced = true;
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    async fn refresh_direct<H: Host>(&mut self, host: &mut H, ip: IpAddr) {
        match host.route_to(ip).await {
            Ok(Some(l)) => match l.direct_oif() {
                Some(oif) => {
                    self.direct.insert(ip, oif);
                }
                None => {
                    self.direct.remove(&ip);
                }
            },
            Ok(None) => {
                self.direct.remove(&ip);
            }
            Err(e) => tracing::warn!(
                "cannot look up the route to {ip}, treating it as not directly reachable: {e}"
            ),
        }
    }

    /// Applies a batch of lease events: every entry an added or changed
    /// lease wants is replaced (upstream's behaviour, which also repairs
    /// drift on every lease update), and whatever the batch made unwanted is
    /// deleted. A batch is also the watch's snapshot of the other hosts,
    /// after which stale entries may go.
    pub async fn apply_events<H: Host>(&mut self, host: &mut H, events: &[LeaseEvent]) {
        let before = self.planner.desired(&self.peers, &self.direct);
        let mut added = BTreeMap::new();
        for ev in events {
            match ev {
                LeaseEvent::Added(lease) => match self.planner.peer(lease) {
                    Some(peer) => {
                        for ip in self.planner.lookups(&peer) {
                            self.refresh_direct(host, ip).await;
                        }
                        tracing::info!("{}", self.planner.added_line(&peer));
                        self.peers.insert(lease.key, peer.clone());
                        added.insert(lease.key, peer);
                    }
                    None => {
                        // The host switched to something this backend does not handle.
                        if let Some(old) = self.peers.remove(&lease.key) {
                            tracing::info!("{}", self.planner.removed_line(&old));
                        }
                        added.remove(&lease.key);
                    }
                },
                LeaseEvent::Removed(lease) => {
                    if let Some(old) = self.peers.remove(&lease.key) {
                        tracing::info!("{}", self.planner.removed_line(&old));
                    }
                    added.remove(&lease.key);
                }
            }
        }
        let after = self.planner.desired(&self.peers, &self.direct);
        self.report_refusals(&after);
        let wanted_now = self.planner.desired(&added, &self.direct);
        let mut ops = wanted_now.replace_ops();
        ops.extend(before.removed_in(&after));
        for op in ops {
            tracing::debug!("{}", op.describe(|i| self.planner.device_name(i)));
            if let Err(e) = host.apply(&op).await {
                tracing::error!("{e} (the periodic check retries)");
            }
        }
        self.synced = true;
    }

    fn report_refusals(&mut self, desired: &Desired) {
        let now = self.planner.refused(&self.peers, &self.direct);
        for (dst, why) in &now {
            if self.refused.get(dst) != Some(why) {
                tracing::error!("{why}");
            }
        }
        for dst in self.refused.keys() {
            if !now.contains_key(dst) && desired.routes.contains_key(dst) {
                tracing::info!("{dst}: the peer is reachable now; routing it");
            }
        }
        self.refused = now;
    }

    /// Compares the kernel with the leases and repairs the difference, one
    /// log line per repair.
    pub async fn reconcile<H: Host>(&mut self, host: &mut H) {
        let ips: Vec<IpAddr> = self
            .peers
            .values()
            .flat_map(|p| self.planner.lookups(p))
            .collect();
        for ip in ips {
            self.refresh_direct(host, ip).await;
        }
        let desired = self.planner.desired(&self.peers, &self.direct);
        self.report_refusals(&desired);
        let own = self.planner.ownership();
        let observed = match host.observe(self.planner.uses_v6(), &own.devices).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(
                    "reconcile: cannot read the kernel's tables, trying again later: {e}"
                );
                return;
            }
        };
        for repair in reconcile(&desired, &observed, &own, self.synced) {
            let what = repair.op.describe(|i| self.planner.device_name(i));
            tracing::info!("reconcile: {what} ({})", repair.why);
            if let Err(e) = host.apply(&repair.op).await {
                tracing::error!("reconcile: {e}");
            }
        }
    }
}

/// What a kernel-programming backend keeps behind the lock it shares with
/// its [`Reconciler`] task: the kernel seam, the [`Engine`] and whatever else
/// the backend needs to repair (vxlan's devices).
pub trait EngineState: Send + 'static {
    type Host: Host;
    type Planner: Planner;

    /// The kernel seam and the engine, borrowed together.
    fn parts(&mut self) -> (&mut Self::Host, &mut Engine<Self::Planner>);

    /// One reconciliation pass (at least [`Engine::reconcile`]).
    fn reconcile(&mut self) -> impl Future<Output = ()> + Send;
}

/// The loop both kernel-programming backends share: their [`EngineState`]
/// behind one lock, lease events applied to it, and a task that reconciles
/// it every period or sooner when kicked. The task ends when this is dropped.
pub struct Reconciler<S: EngineState> {
    pub state: Arc<tokio::sync::Mutex<S>>,
    /// Wakes the task for a pass now (after a resync, a deleted device).
    pub kick: Arc<Notify>,
    period: Duration,
    task: Option<JoinHandle<()>>,
}

impl<S: EngineState> Reconciler<S> {
    /// Not running yet: see [`Reconciler::spawn`]. Checks every
    /// [`RECONCILE_PERIOD`].
    pub fn new(state: S) -> Self {
        Reconciler {
            state: Arc::new(tokio::sync::Mutex::new(state)),
            kick: Arc::new(Notify::new()),
            period: RECONCILE_PERIOD,
            task: None,
        }
    }

    /// Changes how often the kernel is checked (tests).
    pub fn set_period(&mut self, period: Duration) {
        self.period = period;
    }

    /// Starts the periodic task.
    pub fn spawn(&mut self) {
        let (state, kick, period) = (self.state.clone(), self.kick.clone(), self.period);
        self.task = Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = kick.notified() => {}
                }
                state.lock().await.reconcile().await;
            }
        }));
    }

    /// Runs one reconciliation pass now (tests; the task runs the others).
    pub async fn reconcile_now(&self) {
        self.state.lock().await.reconcile().await;
    }

    /// Applies a batch of lease events ([`Engine::apply_events`]).
    pub async fn apply(&self, events: &[LeaseEvent]) {
        let mut state = self.state.lock().await;
        let (host, engine) = state.parts();
        engine.apply_events(host, events).await;
    }

    /// The lease list is complete: stale entries may go, and a pass runs now
    /// to remove them.
    pub async fn resynced(&self) {
        self.state.lock().await.parts().1.mark_synced();
        self.kick.notify_one();
    }

    /// Runs `f` on the kernel seam (tests inspect the fake kernel this way).
    pub async fn with_host_mut<T>(&self, f: impl FnOnce(&mut S::Host) -> T) -> T {
        f(self.state.lock().await.parts().0)
    }
}

impl<S: EngineState> Drop for Reconciler<S> {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// An in-memory kernel for unit tests: links, addresses, routes, neighbours
/// and FDB entries, with the kernel's keying and replace semantics.
#[cfg(test)]
pub mod fake {
    use super::*;

    #[derive(Debug, Default)]
    pub struct FakeHost {
        pub links: Vec<LinkState>,
        pub addrs: Vec<(u32, IpNet)>,
        pub routes: Vec<ObservedRoute>,
        pub neighs: Vec<ObservedNeigh>,
        pub fdbs: Vec<ObservedFdb>,
        /// Answers for `route_to`.
        pub lookups: HashMap<IpAddr, RouteLookup>,
        /// Every mutating call, in order, for assertions.
        pub log: Vec<String>,
        next_index: u32,
    }

    impl FakeHost {
        pub fn new() -> Self {
            FakeHost {
                next_index: 10,
                ..Default::default()
            }
        }

        /// Adds a plain link (the external interface, say).
        pub fn add_plain_link(&mut self, name: &str, mtu: u32) -> u32 {
            self.next_index += 1;
            let index = self.next_index;
            self.links.push(LinkState {
                index,
                name: name.into(),
                kind: Some("veth".into()),
                mtu,
                up: true,
                ..Default::default()
            });
            index
        }

        pub fn link_named(&self, name: &str) -> Option<&LinkState> {
            self.links.iter().find(|l| l.name == name)
        }

        /// The log since the last call.
        pub fn take_log(&mut self) -> Vec<String> {
            std::mem::take(&mut self.log)
        }

        pub fn apply_now(&mut self, op: &Op) {
            self.log.push(op.to_string());
            match *op {
                Op::ReplaceRoute(r) => {
                    self.routes.retain(|o| !(o.dst == r.dst && o.priority == 0));
                    self.routes.push(ObservedRoute {
                        dst: r.dst,
                        gateway: Some(r.gateway),
                        oif: Some(r.oif),
                        onlink: r.onlink,
                        priority: 0,
                        proto_kernel: false,
                    });
                }
                Op::DeleteRoute(k) => {
                    if let Some(i) = self.routes.iter().position(|o| {
                        o.dst == k.dst
                            && o.priority == k.priority
                            && k.gateway.is_none_or(|g| o.gateway == Some(g))
                            && k.oif.is_none_or(|i| o.oif == Some(i))
                    }) {
                        self.routes.remove(i);
                    }
                }
                Op::ReplaceNeigh(n) => {
                    self.neighs
                        .retain(|o| !(o.ifindex == n.ifindex && o.ip == n.ip));
                    self.neighs.push(ObservedNeigh {
                        ifindex: n.ifindex,
                        ip: n.ip,
                        mac: Some(n.mac),
                        permanent: true,
                    });
                }
                Op::DeleteNeigh(n) => self
                    .neighs
                    .retain(|o| !(o.ifindex == n.ifindex && o.ip == n.ip)),
                Op::ReplaceFdb(e) => {
                    // The kernel rewrites the first destination of the MAC.
                    match self
                        .fdbs
                        .iter_mut()
                        .find(|o| o.ifindex == e.ifindex && o.mac == e.mac)
                    {
                        Some(o) => o.dst = Some(e.dst),
                        None => self.fdbs.push(ObservedFdb {
                            ifindex: e.ifindex,
                            mac: e.mac,
                            dst: Some(e.dst),
                            permanent: true,
                        }),
                    }
                }
                Op::DeleteFdb(e) => self.fdbs.retain(|o| {
                    !(o.ifindex == e.ifindex && o.mac == e.mac && o.dst == Some(e.dst))
                }),
            }
        }

        /// Removes a link and everything on it, as the kernel does.
        pub fn remove_link(&mut self, index: u32) {
            self.links.retain(|l| l.index != index);
            self.addrs.retain(|(i, _)| *i != index);
            self.routes.retain(|r| r.oif != Some(index));
            self.neighs.retain(|n| n.ifindex != index);
            self.fdbs.retain(|e| e.ifindex != index);
        }
    }

    impl Host for FakeHost {
        async fn link(&mut self, name: &str) -> Result<Option<LinkState>, HostError> {
            Ok(self.link_named(name).cloned())
        }

        async fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<(), HostError> {
            if self.link_named(&spec.name).is_some() {
                return Err(HostError::new(
                    format!("creating {}", spec.name),
                    "File exists",
                    Some(libc::EEXIST),
                ));
            }
            self.next_index += 1;
            self.log.push(format!(
                "create vxlan {} vni {} mac {}",
                spec.name, spec.attrs.vni, spec.mac
            ));
            self.links.push(LinkState {
                index: self.next_index,
                name: spec.name.clone(),
                kind: Some("vxlan".into()),
                mac: Some(spec.mac),
                mtu: spec.mtu,
                up: false,
                vxlan: Some(spec.attrs.clone()),
            });
            Ok(())
        }

        async fn delete_link(&mut self, index: u32) -> Result<(), HostError> {
            self.log.push(format!("delete link #{index}"));
            self.remove_link(index);
            Ok(())
        }

        async fn set_link(&mut self, index: u32, change: &LinkChange) -> Result<(), HostError> {
            self.log.push(format!("set link #{index} {change:?}"));
            let Some(l) = self.links.iter_mut().find(|l| l.index == index) else {
                return Err(HostError::new(
                    "set link",
                    "No such device",
                    Some(libc::ENODEV),
                ));
            };
            l.up |= change.up;
            if let Some(m) = change.mtu {
                l.mtu = m;
            }
            if let Some(m) = change.mac {
                l.mac = Some(m);
            }
            Ok(())
        }

        async fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, HostError> {
            Ok(self
                .addrs
                .iter()
                .filter(|(i, _)| *i == index)
                .map(|(_, a)| *a)
                .collect())
        }

        async fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), HostError> {
            self.log.push(format!("addr add {addr} dev #{index}"));
            self.addrs.push((index, addr));
            Ok(())
        }

        async fn delete_address(&mut self, index: u32, addr: IpNet) -> Result<(), HostError> {
            self.log.push(format!("addr del {addr} dev #{index}"));
            self.addrs.retain(|(i, a)| !(*i == index && *a == addr));
            Ok(())
        }

        async fn route_to(&mut self, dst: IpAddr) -> Result<Option<RouteLookup>, HostError> {
            Ok(self.lookups.get(&dst).copied())
        }

        async fn observe(&mut self, v6: bool, devices: &[u32]) -> Result<Observed, HostError> {
            Ok(Observed {
                routes: self
                    .routes
                    .iter()
                    .filter(|r| v6 || r.dst.addr().is_ipv4())
                    .copied()
                    .collect(),
                neighs: self
                    .neighs
                    .iter()
                    .filter(|n| devices.contains(&n.ifindex))
                    .copied()
                    .collect(),
                fdbs: self
                    .fdbs
                    .iter()
                    .filter(|e| devices.contains(&e.ifindex))
                    .copied()
                    .collect(),
            })
        }

        async fn apply(&mut self, op: &Op) -> Result<(), HostError> {
            self.apply_now(op);
            Ok(())
        }

        async fn disable_accept_ra(&mut self, _name: &str) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    const MAC_A: Mac = Mac([0x0a, 1, 2, 3, 4, 5]);
    const MAC_B: Mac = Mac([0x0a, 9, 9, 9, 9, 9]);
    const DEV: u32 = 7;
    const ETH: u32 = 2;

    fn vxlan_peer(subnet: &str, public: &str, mac: Mac) -> Desired {
        let dst = net(subnet);
        let mut d = Desired::default();
        d.add_neigh(NeighSpec {
            ifindex: DEV,
            ip: dst.network(),
            mac,
        });
        d.add_fdb(FdbSpec {
            ifindex: DEV,
            mac,
            dst: ip(public),
        });
        d.add_route(RouteSpec {
            dst,
            gateway: dst.network(),
            oif: DEV,
            onlink: true,
        });
        d
    }

    fn own() -> Ownership {
        Ownership {
            networks: vec![net("10.5.0.0/16")],
            own_subnets: vec![net("10.5.1.0/24")],
            devices: vec![DEV],
            gateway_oifs: vec![ETH],
        }
    }

    fn observed_route(dst: &str, gw: Option<&str>, oif: u32, onlink: bool) -> ObservedRoute {
        ObservedRoute {
            dst: net(dst),
            gateway: gw.map(ip),
            oif: Some(oif),
            onlink,
            priority: 0,
            proto_kernel: false,
        }
    }

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

    #[test]
    fn a_kernel_matching_the_leases_needs_no_repair() {
        let d = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_A);
        let mut k = fake::FakeHost::new();
        for op in d.replace_ops() {
            k.apply_now(&op);
        }
        let obs = Observed {
            routes: k.routes.clone(),
            neighs: k.neighs.clone(),
            fdbs: k.fdbs.clone(),
        };
        assert_eq!(reconcile(&d, &obs, &own(), true), vec![]);
    }

    #[test]
    fn missing_and_wrong_entries_are_replaced() {
        let d = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_A);
        let obs = Observed {
            routes: vec![observed_route(
                "10.5.2.0/24",
                Some("192.0.2.99"),
                ETH,
                false,
            )],
            neighs: vec![ObservedNeigh {
                ifindex: DEV,
                ip: ip("10.5.2.0"),
                mac: None,
                permanent: false,
            }],
            fdbs: vec![],
        };
        let repairs = reconcile(&d, &obs, &own(), true);
        let ops: Vec<Op> = repairs.iter().map(|r| r.op).collect();
        assert_eq!(ops, d.replace_ops());
        assert!(matches!(repairs[0].why, Why::Differs(_)));
        assert_eq!(repairs[1].why, Why::Missing);
        assert_eq!(repairs[2].why, Why::Differs("via 192.0.2.99 dev #2".into()));
    }

    #[test]
    fn stale_entries_go_only_when_the_lease_list_is_complete() {
        let obs = Observed {
            routes: vec![
                observed_route("10.5.9.0/24", Some("10.5.9.0"), DEV, true),
                observed_route("10.5.8.0/24", Some("192.0.2.8"), ETH, false),
            ],
            neighs: vec![ObservedNeigh {
                ifindex: DEV,
                ip: ip("10.5.9.0"),
                mac: Some(MAC_B),
                permanent: true,
            }],
            fdbs: vec![ObservedFdb {
                ifindex: DEV,
                mac: MAC_B,
                dst: Some(ip("192.0.2.9")),
                permanent: true,
            }],
        };
        assert_eq!(reconcile(&Desired::default(), &obs, &own(), false), vec![]);
        let ops: Vec<String> = reconcile(&Desired::default(), &obs, &own(), true)
            .iter()
            .map(|r| r.op.to_string())
            .collect();
        assert_eq!(
            ops,
            vec![
                "route del 10.5.9.0/24 via 10.5.9.0 dev #7",
                "route del 10.5.8.0/24 via 192.0.2.8 dev #2",
                "fdb del 0a:09:09:09:09:09 dev #7 dst 192.0.2.9 self",
                "neigh del 10.5.9.0 dev #7",
            ]
        );
    }

    #[test]
    fn entries_that_are_not_flannels_are_left_alone() {
        let obs = Observed {
            routes: vec![
                // Own subnet (the pod bridge), connected routes, other networks, other devices.
                observed_route("10.5.1.0/24", None, 3, false),
                ObservedRoute {
                    proto_kernel: true,
                    ..observed_route("10.5.4.0/24", None, DEV, false)
                },
                observed_route("172.16.0.0/16", Some("192.0.2.254"), ETH, false),
                observed_route("10.5.6.0/24", None, ETH, false),
                observed_route("10.5.7.0/24", Some("192.0.2.7"), 3, false),
                observed_route("0.0.0.0/0", Some("192.0.2.254"), ETH, false),
            ],
            neighs: vec![ObservedNeigh {
                ifindex: DEV,
                ip: ip("10.5.3.0"),
                mac: Some(MAC_A),
                permanent: false,
            }],
            fdbs: vec![ObservedFdb {
                ifindex: DEV,
                mac: MAC_A,
                dst: Some(ip("192.0.2.3")),
                permanent: false,
            }],
        };
        assert_eq!(reconcile(&Desired::default(), &obs, &own(), true), vec![]);
    }

    #[test]
    fn extra_fdb_destinations_for_a_wanted_mac_are_removed() {
        let d = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_A);
        let mut obs = Observed::default();
        for dst in ["192.0.2.77", "192.0.2.2"] {
            obs.fdbs.push(ObservedFdb {
                ifindex: DEV,
                mac: MAC_A,
                dst: Some(ip(dst)),
                permanent: true,
            });
        }
        let ops: Vec<String> = reconcile(&d, &obs, &own(), true)
            .into_iter()
            .filter(|r| matches!(r.op, Op::ReplaceFdb(_) | Op::DeleteFdb(_)))
            .map(|r| r.op.to_string())
            .collect();
        assert_eq!(
            ops,
            vec!["fdb del 0a:01:02:03:04:05 dev #7 dst 192.0.2.77 self"]
        );
    }

    #[test]
    fn a_route_with_another_metric_is_stale_even_for_a_wanted_destination() {
        let d = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_A);
        let mut obs = Observed::default();
        obs.routes.push(ObservedRoute {
            priority: 100,
            ..observed_route("10.5.2.0/24", Some("10.5.2.0"), DEV, true)
        });
        let ops: Vec<String> = reconcile(&d, &obs, &own(), true)
            .iter()
            .filter(|r| matches!(r.op, Op::ReplaceRoute(_) | Op::DeleteRoute(_)))
            .map(|r| r.op.to_string())
            .collect();
        assert_eq!(
            ops,
            vec![
                "route replace 10.5.2.0/24 via 10.5.2.0 dev #7 onlink",
                "route del 10.5.2.0/24 via 10.5.2.0 dev #7 metric 100"
            ]
        );
    }

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".into(),
            mac: MAC_A,
            mtu: 1450,
            attrs: VxlanAttrs {
                vni: 1,
                link: Some(ETH),
                local: Some(ip("192.0.2.1")),
                ..Default::default()
            },
        }
    }

    fn existing() -> LinkState {
        LinkState {
            index: 9,
            name: "flannel.1".into(),
            kind: Some("vxlan".into()),
            mac: Some(MAC_B),
            mtu: 1450,
            up: true,
            vxlan: Some(VxlanAttrs {
                port: Some(8472),
                ..spec().attrs
            }),
        }
    }

    #[test]
    fn a_compatible_link_is_adopted_with_its_mac() {
        assert_eq!(vxlan_verdict(&spec(), None), LinkVerdict::Create);
        assert_eq!(
            vxlan_verdict(&spec(), Some(&existing())),
            LinkVerdict::Adopt {
                index: 9,
                mac: MAC_B,
                change: LinkChange::default()
            }
        );
        let smaller = LinkState {
            mtu: 1400,
            ..existing()
        };
        assert_eq!(
            vxlan_verdict(&spec(), Some(&smaller)),
            LinkVerdict::Adopt {
                index: 9,
                mac: MAC_B,
                change: LinkChange {
                    mtu: Some(1450),
                    ..Default::default()
                }
            }
        );
    }

    #[test]
    fn an_incompatible_link_is_recreated_keeping_its_mac() {
        let cases: Vec<(LinkState, &str)> = vec![
            (
                LinkState {
                    kind: Some("veth".into()),
                    vxlan: None,
                    ..existing()
                },
                "link type",
            ),
            (
                LinkState {
                    vxlan: Some(VxlanAttrs {
                        vni: 2,
                        ..existing().vxlan.unwrap()
                    }),
                    ..existing()
                },
                "vni",
            ),
            (
                LinkState {
                    vxlan: Some(VxlanAttrs {
                        link: Some(3),
                        ..existing().vxlan.unwrap()
                    }),
                    ..existing()
                },
                "interface",
            ),
            (
                LinkState {
                    vxlan: Some(VxlanAttrs {
                        local: Some(ip("192.0.2.9")),
                        ..existing().vxlan.unwrap()
                    }),
                    ..existing()
                },
                "IP",
            ),
            (
                LinkState {
                    vxlan: Some(VxlanAttrs {
                        gbp: true,
                        ..existing().vxlan.unwrap()
                    }),
                    ..existing()
                },
                "gbp",
            ),
            (
                LinkState {
                    vxlan: Some(VxlanAttrs {
                        learning: true,
                        ..existing().vxlan.unwrap()
                    }),
                    ..existing()
                },
                "learning",
            ),
        ];
        for (have, word) in cases {
            match vxlan_verdict(&spec(), Some(&have)) {
                LinkVerdict::Recreate {
                    index: 9,
                    reason,
                    old_mac,
                } => {
                    assert!(reason.contains(word), "{reason} should mention {word}");
                    assert_eq!(old_mac, Some(MAC_B));
                }
                other => panic!("{word}: {other:?}"),
            }
        }
        // A configured port must match; an unset one adopts whatever the kernel chose.
        let port = VxlanSpec {
            attrs: VxlanAttrs {
                port: Some(4789),
                ..spec().attrs
            },
            ..spec()
        };
        assert!(matches!(
            vxlan_verdict(&port, Some(&existing())),
            LinkVerdict::Recreate { .. }
        ));
        assert!(matches!(
            vxlan_verdict(&spec(), Some(&existing())),
            LinkVerdict::Adopt { .. }
        ));
    }

    #[test]
    fn ownership_needs_network_device_or_gateway() {
        let o = own();
        assert!(o.owns_route(&observed_route("10.5.2.0/24", Some("10.5.2.0"), DEV, true)));
        assert!(o.owns_route(&observed_route(
            "10.5.2.0/24",
            Some("192.0.2.2"),
            ETH,
            false
        )));
        assert!(!o.owns_route(&observed_route("10.5.2.0/24", None, ETH, false)));
        assert!(!o.owns_route(&observed_route("10.5.1.0/24", Some("10.5.1.0"), DEV, true)));
        assert!(!o.owns_route(&observed_route("10.0.0.0/8", Some("192.0.2.2"), ETH, false)));
    }
}
