//! rtnetlink side of the kernel-programming backends: links, addresses,
//! routes, neighbours and FDB entries. [`Netlink`] implements the backends'
//! [`Host`] seam; it decides nothing, it only translates.
//!
//! # Kernel state owned by this module
//! None by itself: it changes exactly what the backends ask for (see
//! `backend::vxlan` and `backend::host_gw`).
//!
//! # Why the messages look the way they do
//! They mirror what upstream's `vishvananda/netlink` calls send, so the
//! kernel ends up in the same state: routes carry protocol `boot` (what the
//! kernel records when no protocol is given, hidden by `ip route`), scope
//! universe and the main table; neighbours are `NUD_PERMANENT` unicast
//! entries; FDB entries are `AF_BRIDGE`, `NTF_SELF`, `NUD_PERMANENT`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::constants::RTMGRP_LINK;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
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
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backend::kernel::{
    FdbSpec, Host, HostError, LinkChange, LinkState, Mac, NeighSpec, Observed, ObservedFdb,
    ObservedNeigh, ObservedRoute, Op, RouteKey, RouteLookup, RouteSpec, VxlanAttrs, VxlanSpec,
};

/// An rtnetlink socket in the calling process's network namespace.
pub struct Netlink {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

/// The errno inside an rtnetlink error, if the kernel sent one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn host_err(what: impl Into<String>, e: rtnetlink::Error) -> HostError {
    let errno = errno(&e);
    let message = match &e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    };
    HostError::new(what, message, errno)
}

/// "Already gone" answers to a delete: the job is done.
fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(
        errno(e),
        Some(libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL)
    )
}

impl Netlink {
    /// Opens the socket. Must run inside a tokio runtime (the connection is a
    /// task).
    pub fn connect() -> Result<Netlink, HostError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(HostError::new(
                "opening an rtnetlink socket",
                "no tokio runtime",
                None,
            ));
        }
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| {
            HostError::new(
                "opening an rtnetlink socket",
                e.to_string(),
                e.raw_os_error(),
            )
        })?;
        Ok(Netlink {
            handle,
            conn: tokio::spawn(conn),
        })
    }

    async fn routes(&self, v6: bool) -> Result<Vec<ObservedRoute>, rtnetlink::Error> {
        let msg = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let mut out = Vec::new();
        let mut stream = self.handle.route().get(msg).execute();
        while let Some(r) = stream.try_next().await? {
            if let Some(o) = parse_route(&r) {
                out.push(o);
            }
        }
        Ok(out)
    }

    async fn neighbours(
        &self,
        family: AddressFamily,
        devices: &[u32],
    ) -> Result<Vec<NeighbourMessage>, rtnetlink::Error> {
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        while let Some(n) = stream.try_next().await? {
            if devices.contains(&n.header.ifindex) {
                out.push(n);
            }
        }
        Ok(out)
    }

    async fn apply_op(&self, op: &Op) -> Result<(), rtnetlink::Error> {
        match *op {
            Op::ReplaceRoute(r) => {
                self.handle
                    .route()
                    .add(route_message(&r))
                    .replace()
                    .execute()
                    .await
            }
            Op::DeleteRoute(k) => {
                self.handle
                    .route()
                    .del(route_delete_message(&k))
                    .execute()
                    .await
            }
            Op::ReplaceNeigh(n) => {
                self.handle
                    .neighbours()
                    .add(n.ifindex, n.ip)
                    .link_layer_address(&n.mac.0)
                    .state(NeighbourState::Permanent)
                    .kind(RouteType::Unicast)
                    .replace()
                    .execute()
                    .await
            }
            Op::DeleteNeigh(n) => {
                self.handle
                    .neighbours()
                    .del(neigh_delete_message(&n))
                    .execute()
                    .await
            }
            Op::ReplaceFdb(e) => {
                self.handle
                    .neighbours()
                    .add_bridge(e.ifindex, &e.mac.0)
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .destination(e.dst)
                    .replace()
                    .execute()
                    .await
            }
            Op::DeleteFdb(e) => {
                self.handle
                    .neighbours()
                    .del(fdb_delete_message(&e))
                    .execute()
                    .await
            }
        }
    }
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

impl Host for Netlink {
    async fn link(&mut self, name: &str) -> Result<Option<LinkState>, HostError> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(Some(m)) => Ok(Some(parse_link(&m))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(host_err(format!("looking up link {name}"), e)),
        }
    }

    async fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<(), HostError> {
        self.handle
            .link()
            .add(vxlan_message(spec))
            .execute()
            .await
            .map_err(|e| {
                host_err(
                    format!("creating vxlan link {} (vni {})", spec.name, spec.attrs.vni),
                    e,
                )
            })
    }

    async fn delete_link(&mut self, index: u32) -> Result<(), HostError> {
        match self.handle.link().del(index).execute().await {
            Err(e) if !is_gone(&e) => Err(host_err(format!("deleting link #{index}"), e)),
            _ => Ok(()),
        }
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
            if let Err(e) = self.handle.link().set(b.build()).execute().await {
                first_error.get_or_insert(host_err(format!("changing link #{index} ({what})"), e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, HostError> {
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = stream
            .try_next()
            .await
            .map_err(|e| host_err(format!("listing addresses of #{index}"), e))?
        {
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
            if let Some(net) = ip.and_then(|ip| IpNet::new(ip, m.header.prefix_len).ok()) {
                out.push(net);
            }
        }
        Ok(out)
    }

    async fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), HostError> {
        match self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .execute()
            .await
        {
            Err(e) if errno(&e) != Some(libc::EEXIST) => {
                Err(host_err(format!("adding address {addr} to #{index}"), e))
            }
            _ => Ok(()),
        }
    }

    async fn delete_address(&mut self, index: u32, addr: IpNet) -> Result<(), HostError> {
        let mut m = AddressMessage::default();
        m.header.family = family_of(addr.addr());
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        if addr.addr().is_ipv4() {
            m.attributes.push(AddressAttribute::Local(addr.addr()));
        }
        match self.handle.address().del(m).execute().await {
            Err(e) if !is_gone(&e) => Err(host_err(
                format!("removing address {addr} from #{index}"),
                e,
            )),
            _ => Ok(()),
        }
    }

    async fn route_to(&mut self, dst: IpAddr) -> Result<Option<RouteLookup>, HostError> {
        let mut stream = self.handle.route().get(route_query(dst)).execute();
        let route = match stream.try_next().await {
            Ok(r) => r,
            // No route at all.
            Err(e) if matches!(errno(&e), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => None,
            Err(e) => return Err(host_err(format!("looking up the route to {dst}"), e)),
        };
        Ok(route.map(|r| {
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
        }))
    }

    async fn observe(&mut self, v6: bool, devices: &[u32]) -> Result<Observed, HostError> {
        let mut obs = Observed {
            routes: self
                .routes(false)
                .await
                .map_err(|e| host_err("listing IPv4 routes", e))?,
            ..Observed::default()
        };
        if v6 {
            obs.routes.extend(
                self.routes(true)
                    .await
                    .map_err(|e| host_err("listing IPv6 routes", e))?,
            );
        }
        if devices.is_empty() {
            return Ok(obs);
        }
        let mut families = vec![AddressFamily::Inet];
        if v6 {
            families.push(AddressFamily::Inet6);
        }
        for family in families {
            let msgs = self
                .neighbours(family, devices)
                .await
                .map_err(|e| host_err("listing neighbours", e))?;
            obs.neighs.extend(msgs.iter().filter_map(parse_neigh));
        }
        let msgs = self
            .neighbours(AddressFamily::Bridge, devices)
            .await
            .map_err(|e| host_err("listing FDB entries", e))?;
        obs.fdbs.extend(msgs.iter().filter_map(parse_fdb));
        Ok(obs)
    }

    async fn apply(&mut self, op: &Op) -> Result<(), HostError> {
        let deleting = matches!(
            op,
            Op::DeleteRoute(_) | Op::DeleteNeigh(_) | Op::DeleteFdb(_)
        );
        match self.apply_op(op).await {
            Err(e) if !(deleting && is_gone(&e)) => Err(host_err(op.to_string(), e)),
            _ => Ok(()),
        }
    }

    fn watch_link_deletions(
        &mut self,
        names: Vec<String>,
        kick: Arc<Notify>,
    ) -> Option<JoinHandle<()>> {
        match spawn_link_watch(names, kick) {
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
        // /proc/sys/net follows the network namespace of the process.
        let path = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
        if let Err(e) = std::fs::write(&path, "0") {
            tracing::debug!("could not write {path}: {e}");
        }
    }
}

/// Upstream's vxlan device-deletion watcher (v0.27.4+): a second rtnetlink
/// socket subscribed to link notifications; an `RTM_DELLINK` for one of
/// `names` wakes the reconciler at once instead of at its next tick.
fn spawn_link_watch(names: Vec<String>, kick: Arc<Notify>) -> Result<JoinHandle<()>, HostError> {
    let fail = |e: std::io::Error| {
        HostError::new(
            "subscribing to link notifications",
            e.to_string(),
            e.raw_os_error(),
        )
    };
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection().map_err(fail)?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .map_err(fail)?;
    let conn_task = tokio::spawn(conn);
    Ok(tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = msg.payload {
                let name = parse_link(&link).name;
                if names.contains(&name) {
                    tracing::warn!("link {name} was deleted");
                    kick.notify_one();
                }
            }
        }
        conn_task.abort();
    }))
}

/// An `RTM_GETROUTE` request for the route the kernel would take to the single address `dst`.
pub(crate) fn route_query(dst: IpAddr) -> RouteMessage {
    match dst {
        IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(v4, 32)
            .build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(v6, 128)
            .build(),
    }
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
