//! The [`Host`] seam: the kernel as the backends see it, and its real
//! implementation over the daemon's shared [`Netlink`] handle.
//!
//! The implementation decides nothing: it translates the model into the
//! messages upstream's `vishvananda/netlink` calls send, so the kernel ends up
//! in the same state (routes carry protocol `boot`, scope universe and the
//! main table; neighbours are `NUD_PERMANENT` unicast entries; FDB entries
//! are `AF_BRIDGE`, `NTF_SELF`, `NUD_PERMANENT`), and the kernel's answers
//! back into the model. `exec::netlink` sends them.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::model::{
    FdbSpec, HostError, LinkChange, LinkState, Mac, NeighSpec, Observed, ObservedFdb,
    ObservedNeigh, ObservedRoute, Op, RouteKey, RouteLookup, RouteSpec, VxlanAttrs, VxlanSpec,
};
use crate::exec::netlink::{self, Netlink, NetlinkError};

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

impl From<NetlinkError> for HostError {
    fn from(e: NetlinkError) -> Self {
        HostError::new(e.what, e.message, e.errno)
    }
}

impl Host for Netlink {
    async fn link(&mut self, name: &str) -> Result<Option<LinkState>, HostError> {
        Ok(Netlink::link(self, name).await?.as_ref().map(parse_link))
    }

    async fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<(), HostError> {
        let what = format!("vxlan link {} (vni {})", spec.name, spec.attrs.vni);
        Ok(self.add_link(vxlan_message(spec), &what).await?)
    }

    async fn delete_link(&mut self, index: u32) -> Result<(), HostError> {
        Ok(Netlink::delete_link(self, index).await?)
    }

    async fn set_link(&mut self, index: u32, change: &LinkChange) -> Result<(), HostError> {
        // One request per attribute: the kernel refuses a whole request for one bad
        // attribute (an MTU above what a VXLAN-over-IPv6 device allows, say), and the
        // device must still come up so routes through it can be installed.
        let mut requests = Vec::new();
        if let Some(mac) = change.mac {
            requests.push((
                "MAC",
                LinkUnspec::new_with_index(index).address(mac.0.to_vec()),
            ));
        }
        if let Some(mtu) = change.mtu {
            requests.push(("MTU", LinkUnspec::new_with_index(index).mtu(mtu)));
        }
        if change.up {
            requests.push(("up", LinkUnspec::new_with_index(index).up()));
        }
        let mut first_error = None;
        for (what, b) in requests {
            if let Err(e) = Netlink::set_link(self, b.build(), what).await {
                first_error.get_or_insert(HostError::from(e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, HostError> {
        let msgs = Netlink::addresses(self, Some(index)).await?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let ip = ip.or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
                ip.and_then(|ip| IpNet::new(ip, m.header.prefix_len).ok())
            })
            .collect())
    }

    async fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), HostError> {
        Ok(Netlink::add_address(self, index, addr).await?)
    }

    async fn delete_address(&mut self, index: u32, addr: IpNet) -> Result<(), HostError> {
        Ok(Netlink::delete_address(self, index, addr).await?)
    }

    async fn route_to(&mut self, dst: IpAddr) -> Result<Option<RouteLookup>, HostError> {
        Ok(Netlink::route_to(self, dst)
            .await?
            .as_ref()
            .map(parse_lookup))
    }

    async fn observe(&mut self, v6: bool, devices: &[u32]) -> Result<Observed, HostError> {
        let mut obs = Observed {
            routes: self
                .routes(false)
                .await?
                .iter()
                .filter_map(parse_route)
                .collect(),
            ..Observed::default()
        };
        if v6 {
            obs.routes
                .extend(self.routes(true).await?.iter().filter_map(parse_route));
        }
        if devices.is_empty() {
            return Ok(obs);
        }
        let mut families = vec![AddressFamily::Inet];
        if v6 {
            families.push(AddressFamily::Inet6);
        }
        for family in families {
            let msgs = self.neighbours(family, devices).await?;
            obs.neighs.extend(msgs.iter().filter_map(parse_neigh));
        }
        let msgs = self.neighbours(AddressFamily::Bridge, devices).await?;
        obs.fdbs.extend(msgs.iter().filter_map(parse_fdb));
        Ok(obs)
    }

    async fn apply(&mut self, op: &Op) -> Result<(), HostError> {
        let what = op.to_string();
        let r = match *op {
            Op::ReplaceRoute(r) => self.replace_route(route_message(&r), &what).await,
            Op::DeleteRoute(k) => self.delete_route(route_delete_message(&k), &what).await,
            Op::ReplaceNeigh(n) => self.replace_neigh(n.ifindex, n.ip, &n.mac.0, &what).await,
            Op::DeleteNeigh(n) => self.delete_neigh(neigh_delete_message(&n), &what).await,
            Op::ReplaceFdb(e) => self.replace_fdb(e.ifindex, &e.mac.0, e.dst, &what).await,
            Op::DeleteFdb(e) => self.delete_neigh(fdb_delete_message(&e), &what).await,
        };
        Ok(r?)
    }

    fn watch_link_deletions(
        &mut self,
        names: Vec<String>,
        kick: Arc<Notify>,
    ) -> Option<JoinHandle<()>> {
        match netlink::watch_link_deletions(names, kick) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(
                    "cannot watch for link deletions; relying on the periodic check: {e}"
                );
                None
            }
        }
    }

    async fn disable_accept_ra(&mut self, name: &str) {
        netlink::disable_accept_ra(name);
    }
}

/// What `ip route get` answered: the gateway, and the interface for a unicast route.
fn parse_lookup(r: &RouteMessage) -> RouteLookup {
    let mut l = RouteLookup {
        gateway: None,
        oif: None,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Gateway(g) => l.gateway = route_ip(g),
            RouteAttribute::Oif(i) => l.oif = Some(*i),
            _ => {}
        }
    }
    if r.header.kind != RouteType::Unicast {
        l.oif = None;
    }
    l
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// `ip route replace <dst> via <gw> dev <oif> [onlink]` as upstream sends it.
fn route_message(r: &RouteSpec) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family_of(r.dst.addr());
    m.header.destination_prefix_length = r.dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    if r.onlink {
        m.header.flags.insert(RouteFlags::Onlink);
    }
    m.attributes
        .push(RouteAttribute::Destination(route_address(r.dst.network())));
    m.attributes
        .push(RouteAttribute::Gateway(route_address(r.gateway)));
    m.attributes.push(RouteAttribute::Oif(r.oif));
    m
}

/// A delete that matches like `ip route del`: unspecified protocol and type,
/// scope "nowhere", and only the fields the key sets.
fn route_delete_message(k: &RouteKey) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family_of(k.dst.addr());
    m.header.destination_prefix_length = k.dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Unspec;
    m.header.scope = RouteScope::NoWhere;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(RouteAttribute::Destination(route_address(k.dst.network())));
    if let Some(gw) = k.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(route_address(gw)));
    }
    if let Some(oif) = k.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    if k.priority != 0 {
        m.attributes.push(RouteAttribute::Priority(k.priority));
    }
    m
}

fn neigh_delete_message(n: &NeighSpec) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family_of(n.ip);
    m.header.ifindex = n.ifindex;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            n.ip,
        )));
    m
}

fn fdb_delete_message(e: &FdbSpec) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = e.ifindex;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.0.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            e.dst,
        )));
    m
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table unicast route, or `None` for anything else.
fn parse_route(r: &RouteMessage) -> Option<ObservedRoute> {
    let mut table = u32::from(r.header.table);
    let (mut dst, mut gateway, mut oif, mut priority) = (None, None, None, 0);
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => priority = *p,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.kind != RouteType::Unicast {
        return None;
    }
    let addr = dst.unwrap_or(match r.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    });
    let dst = IpNet::new(addr, r.header.destination_prefix_length).ok()?;
    Some(ObservedRoute {
        dst,
        gateway,
        oif,
        onlink: r.header.flags.contains(RouteFlags::Onlink),
        priority,
        proto_kernel: r.header.protocol == RouteProtocol::Kernel,
    })
}

fn neigh_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // AF_BRIDGE entries carry NDA_DST as raw bytes; the length tells the family.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice())
                .ok()
                .map(|a| IpAddr::V4(a.into())),
            16 => <[u8; 16]>::try_from(b.as_slice())
                .ok()
                .map(|a| IpAddr::V6(a.into())),
            _ => None,
        },
        _ => None,
    }
}

fn parse_neigh(n: &NeighbourMessage) -> Option<ObservedNeigh> {
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = neigh_ip(d),
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::from_slice(l),
            _ => {}
        }
    }
    Some(ObservedNeigh {
        ifindex: n.header.ifindex,
        ip: ip?,
        mac,
        permanent: is_permanent(n.header.state),
    })
}

/// `NUD_PERMANENT` is a bit: the kernel may report it with others (vxlan FDB
/// entries come back as `NUD_PERMANENT | NUD_NOARP`).
fn is_permanent(state: NeighbourState) -> bool {
    u16::from(state) & u16::from(NeighbourState::Permanent) != 0
}

fn parse_fdb(n: &NeighbourMessage) -> Option<ObservedFdb> {
    let mut dst = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(d) => dst = neigh_ip(d),
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::from_slice(l),
            _ => {}
        }
    }
    Some(ObservedFdb {
        ifindex: n.header.ifindex,
        mac: mac?,
        dst,
        permanent: is_permanent(n.header.state),
    })
}

fn parse_link(m: &LinkMessage) -> LinkState {
    let mut l = LinkState {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
            LinkAttribute::Address(b) => l.mac = Mac::from_slice(b),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => l.vxlan = Some(parse_vxlan(data)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn parse_vxlan(data: &[InfoVxlan]) -> VxlanAttrs {
    let mut v = VxlanAttrs::default();
    for d in data {
        match d {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Link(i) => v.link = Some(*i).filter(|i| *i > 0),
            InfoVxlan::Local(a) if !a.is_unspecified() => v.local = Some(IpAddr::V4(*a)),
            InfoVxlan::Local6(a) if !a.is_unspecified() => v.local = Some(IpAddr::V6(*a)),
            InfoVxlan::Group(a) if !a.is_unspecified() => v.group = Some(IpAddr::V4(*a)),
            InfoVxlan::Group6(a) if !a.is_unspecified() => v.group = Some(IpAddr::V6(*a)),
            InfoVxlan::Port(p) => v.port = Some(*p),
            InfoVxlan::Gbp => v.gbp = true,
            InfoVxlan::Learning(b) => v.learning = *b,
            InfoVxlan::L2Miss(b) => v.l2miss = *b,
            _ => {}
        }
    }
    v
}

/// The `RTM_NEWLINK` message that creates the vxlan link: the attributes
/// upstream's `netlink.LinkAdd(&netlink.Vxlan{…})` sends (proxy, rsc, l2miss
/// and l3miss off; `dstport` only when configured, else the kernel default).
fn vxlan_message(spec: &VxlanSpec) -> LinkMessage {
    let a = &spec.attrs;
    let mut b = LinkVxlan::new(&spec.name, a.vni)
        .learning(a.learning)
        .proxy(false)
        .rsc(false)
        .l2miss(false)
        .l3miss(false)
        .mtu(spec.mtu)
        .address(spec.mac.0.to_vec());
    if let Some(link) = a.link {
        b = b.dev(link);
    }
    match a.local {
        Some(IpAddr::V4(v4)) => b = b.local(v4),
        Some(IpAddr::V6(v6)) => b = b.local6(v6),
        None => {}
    }
    if let Some(port) = a.port.filter(|p| *p > 0) {
        b = b.port(port);
    }
    if a.gbp {
        b = b.gbp();
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_messages_match_upstreams_shape() {
        let r = RouteSpec {
            dst: "10.5.2.0/24".parse().unwrap(),
            gateway: "10.5.2.0".parse().unwrap(),
            oif: 7,
            onlink: true,
        };
        let m = route_message(&r);
        assert_eq!(m.header.protocol, RouteProtocol::Boot);
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        assert_eq!(
            parse_route(&m).unwrap(),
            ObservedRoute {
                dst: r.dst,
                gateway: Some(r.gateway),
                oif: Some(7),
                onlink: true,
                priority: 0,
                proto_kernel: false,
            }
        );
        let d = route_delete_message(&RouteKey {
            dst: r.dst,
            gateway: None,
            oif: None,
            priority: 5,
        });
        assert_eq!(d.header.scope, RouteScope::NoWhere);
        assert!(d.attributes.contains(&RouteAttribute::Priority(5)));
        assert!(!d
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Oif(_))));
    }

    #[test]
    fn permanence_is_a_bit() {
        assert!(is_permanent(NeighbourState::Permanent));
        assert!(is_permanent(NeighbourState::from(0x80 | 0x40)));
        assert!(!is_permanent(NeighbourState::Reachable));
        assert!(!is_permanent(NeighbourState::Other(0x40)));
    }

    #[test]
    fn bridge_destinations_are_read_by_length() {
        assert_eq!(
            neigh_ip(&NeighbourAddress::Other(vec![192, 0, 2, 1])),
            Some("192.0.2.1".parse().unwrap())
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            neigh_ip(&NeighbourAddress::Other(v6.octets().to_vec())),
            Some(IpAddr::V6(v6))
        );
        assert_eq!(neigh_ip(&NeighbourAddress::Other(vec![1, 2, 3])), None);
    }

    #[test]
    fn the_vxlan_message_carries_flannels_options() {
        let spec = VxlanSpec {
            name: "flannel.4".into(),
            mac: Mac([2, 1, 2, 3, 4, 5]),
            mtu: 1450,
            attrs: VxlanAttrs {
                vni: 4,
                link: Some(2),
                local: Some("192.0.2.1".parse().unwrap()),
                port: Some(4789),
                gbp: true,
                ..Default::default()
            },
        };
        let m = vxlan_message(&spec);
        let parsed = parse_link(&m);
        assert_eq!(parsed.name, "flannel.4");
        assert_eq!(parsed.mtu, 1450);
        assert_eq!(parsed.mac, Some(spec.mac));
        assert_eq!(parsed.kind.as_deref(), Some("vxlan"));
        assert_eq!(parsed.vxlan.as_ref(), Some(&spec.attrs));
    }
}
