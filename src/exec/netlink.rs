//! The control plane's one rtnetlink client: links, addresses, routes,
//! neighbours and FDB entries in the calling process's network namespace.
//!
//! The daemon opens one [`Netlink`] and hands clones of it to whoever needs
//! the kernel (interface discovery, the vxlan and host-gw backends through
//! their `Host` seam, the udp backend's device set-up). It decides nothing:
//! callers build the messages; this module sends them and turns the kernel's
//! answers into one [`NetlinkError`] type, with one rule for "already there"
//! ([`tolerate_exists`]) and one for "already gone" (deletes succeed).
//!
//! # Kernel state owned by this module
//! None by itself: it changes exactly what its callers ask for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::constants::RTMGRP_LINK;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A netlink call failed; `what` names the operation.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct NetlinkError {
    pub what: String,
    pub message: String,
    /// The errno, when the kernel gave one.
    pub errno: Option<i32>,
}

impl NetlinkError {
    fn new(what: impl Into<String>, e: rtnetlink::Error) -> Self {
        let errno = errno(&e);
        let message = match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            other => other.to_string(),
        };
        NetlinkError {
            what: what.into(),
            message,
            errno,
        }
    }

    fn io(what: impl Into<String>, e: &std::io::Error) -> Self {
        NetlinkError {
            what: what.into(),
            message: e.to_string(),
            errno: e.raw_os_error(),
        }
    }
}

/// The errno inside an rtnetlink error, if the kernel sent one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// "Already there" answers to an add are success: upstream ignores `EEXIST`
/// for addresses and routes (a restart finds them in place).
pub fn tolerate_exists(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// "Already gone" answers to a delete are success: the job is done.
fn tolerate_gone(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e)
            if matches!(
                errno(&e),
                Some(libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Aborts the connection task when the last handle goes.
#[derive(Debug)]
struct Connection(JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An rtnetlink socket in the calling process's network namespace. Clones
/// share the socket; it closes when the last clone is dropped.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    _conn: Arc<Connection>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

impl Netlink {
    /// Opens the socket. Must run inside a tokio runtime (the connection is a
    /// task).
    pub fn connect() -> Result<Netlink, NetlinkError> {
        const WHAT: &str = "opening an rtnetlink socket";
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NetlinkError {
                what: WHAT.into(),
                message: "no tokio runtime".into(),
                errno: None,
            });
        }
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetlinkError::io(WHAT, &e))?;
        Ok(Netlink {
            handle,
            _conn: Arc::new(Connection(tokio::spawn(conn))),
        })
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<LinkMessage>, NetlinkError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new("listing links", e))
    }

    /// The link named `name`, or `None` if there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(m) => Ok(m),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetlinkError::new(format!("looking up link {name}"), e)),
        }
    }

    /// Creates a link; `what` names it for the error.
    pub async fn add_link(&self, msg: LinkMessage, what: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("creating {what}"), e))
    }

    /// Deletes link `index` (gone already: done).
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        tolerate_gone(self.handle.link().del(index).execute().await)
            .map_err(|e| NetlinkError::new(format!("deleting link #{index}"), e))
    }

    /// One `RTM_SETLINK`; `what` names the change for the error.
    pub async fn set_link(&self, msg: LinkMessage, what: &str) -> Result<(), NetlinkError> {
        let index = msg.header.index;
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("changing link #{index} ({what})"), e))
    }

    /// The addresses of link `index`, or of every link.
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<AddressMessage>, NetlinkError> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        req.execute().try_collect().await.map_err(|e| {
            let of = index.map_or_else(|| "every link".to_owned(), |i| format!("#{i}"));
            NetlinkError::new(format!("listing addresses of {of}"), e)
        })
    }

    /// Adds `addr` to link `index` (already there: done).
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        tolerate_exists(
            self.handle
                .address()
                .add(index, addr.addr(), addr.prefix_len())
                .execute()
                .await,
        )
        .map_err(|e| NetlinkError::new(format!("adding address {addr} to #{index}"), e))
    }

    /// Removes `addr` from link `index` (gone already: done).
    pub async fn delete_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = match addr {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        if addr.addr().is_ipv4() {
            m.attributes.push(AddressAttribute::Local(addr.addr()));
        }
        tolerate_gone(self.handle.address().del(m).execute().await)
            .map_err(|e| NetlinkError::new(format!("removing address {addr} from #{index}"), e))
    }

    /// The route the kernel would take to `dst` (`ip route get`), `None` when
    /// there is none.
    pub async fn route_to(&self, dst: IpAddr) -> Result<Option<RouteMessage>, NetlinkError> {
        let mut stream = self.handle.route().get(route_query(dst)).execute();
        match stream.try_next().await {
            Ok(r) => Ok(r),
            Err(e) if matches!(errno(&e), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => Ok(None),
            Err(e) => Err(NetlinkError::new(
                format!("looking up the route to {dst}"),
                e,
            )),
        }
    }

    /// Every route of one family (the kernel's dump: all tables).
    pub async fn routes(&self, v6: bool) -> Result<Vec<RouteMessage>, NetlinkError> {
        let msg = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        self.handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(|e| {
                NetlinkError::new(format!("listing IPv{} routes", if v6 { 6 } else { 4 }), e)
            })
    }

    /// Adds a route (already there: done); `what` names it for the error.
    pub async fn add_route(&self, msg: RouteMessage, what: &str) -> Result<(), NetlinkError> {
        tolerate_exists(self.handle.route().add(msg).execute().await)
            .map_err(|e| NetlinkError::new(format!("adding route {what}"), e))
    }

    /// `ip route add blackhole NET`: packets to `net` are dropped here. A blackhole route
    /// for `net` already there is kept; another route for exactly `net` (a bridge that owns
    /// the subnet) makes it an error, as in upstream's `AddBlackholeV4Route`.
    pub async fn add_blackhole(&self, net: IpNet) -> Result<(), NetlinkError> {
        let routes = self.routes(matches!(net, IpNet::V6(_))).await?;
        let dst = net.network();
        let exists = routes.iter().any(|r| {
            r.header.kind == RouteType::BlackHole
                && r.header.destination_prefix_length == net.prefix_len()
                && r.attributes.iter().any(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(v4)) => IpAddr::V4(*v4) == dst,
                    RouteAttribute::Destination(RouteAddress::Inet6(v6)) => IpAddr::V6(*v6) == dst,
                    _ => false,
                })
        });
        if exists {
            return Ok(());
        }
        self.handle
            .route()
            .add(blackhole_route(net))
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("adding blackhole route {net}"), e))
    }

    /// `ip route del blackhole NET` (gone already: done).
    pub async fn delete_blackhole(&self, net: IpNet) -> Result<(), NetlinkError> {
        self.delete_route(
            blackhole_route(net),
            &format!("removing blackhole route {net}"),
        )
        .await
    }

    /// `ip route replace`; `what` names it for the error.
    pub async fn replace_route(&self, msg: RouteMessage, what: &str) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::new(what, e))
    }

    /// `ip route del` (gone already: done).
    pub async fn delete_route(&self, msg: RouteMessage, what: &str) -> Result<(), NetlinkError> {
        tolerate_gone(self.handle.route().del(msg).execute().await)
            .map_err(|e| NetlinkError::new(what, e))
    }

    /// Neighbours (or, with [`AddressFamily::Bridge`], FDB entries) of one
    /// family on `devices`.
    pub async fn neighbours(
        &self,
        family: AddressFamily,
        devices: &[u32],
    ) -> Result<Vec<NeighbourMessage>, NetlinkError> {
        let what = if family == AddressFamily::Bridge {
            "listing FDB entries"
        } else {
            "listing neighbours"
        };
        let all: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new(what, e))?;
        Ok(all
            .into_iter()
            .filter(|n| devices.contains(&n.header.ifindex))
            .collect())
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <ifindex> nud permanent`.
    pub async fn replace_neigh(
        &self,
        ifindex: u32,
        ip: IpAddr,
        mac: &[u8],
        what: &str,
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(ifindex, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .kind(RouteType::Unicast)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::new(what, e))
    }

    /// `bridge fdb replace <mac> dev <ifindex> dst <dst> self permanent`.
    pub async fn replace_fdb(
        &self,
        ifindex: u32,
        mac: &[u8],
        dst: IpAddr,
        what: &str,
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add_bridge(ifindex, mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(dst)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::new(what, e))
    }

    /// Deletes a neighbour or FDB entry (gone already: done).
    pub async fn delete_neigh(
        &self,
        msg: NeighbourMessage,
        what: &str,
    ) -> Result<(), NetlinkError> {
        tolerate_gone(self.handle.neighbours().del(msg).execute().await)
            .map_err(|e| NetlinkError::new(what, e))
    }
}

/// Upstream's vxlan device-deletion watcher (v0.27.4+): a second rtnetlink
/// socket subscribed to link notifications; an `RTM_DELLINK` for one of
/// `names` wakes `kick` until the returned task is aborted.
pub fn watch_link_deletions(
    names: Vec<String>,
    kick: Arc<Notify>,
) -> Result<JoinHandle<()>, NetlinkError> {
    let fail = |e: std::io::Error| NetlinkError::io("subscribing to link notifications", &e);
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection().map_err(fail)?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .map_err(fail)?;
    let conn_task = tokio::spawn(conn);
    Ok(tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = msg.payload {
                let name = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.as_str()),
                    _ => None,
                });
                if let Some(name) = name.filter(|n| names.iter().any(|w| w == n)) {
                    tracing::warn!("link {name} was deleted");
                    kick.notify_one();
                }
            }
        }
        conn_task.abort();
    }))
}

/// `net.ipv6.conf.<name>.accept_ra = 0`, best effort (upstream ignores
/// errors too). /proc/sys/net follows the process's network namespace.
/// A blackhole route for `net` in the main table.
fn blackhole_route(net: IpNet) -> RouteMessage {
    match net {
        IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(n.network(), n.prefix_len())
            .kind(RouteType::BlackHole)
            .build(),
        IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(n.network(), n.prefix_len())
            .kind(RouteType::BlackHole)
            .build(),
    }
}

pub fn disable_accept_ra(name: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
    if let Err(e) = std::fs::write(&path, "0") {
        tracing::debug!("could not write {path}: {e}");
    }
}

/// An `RTM_GETROUTE` request for the route the kernel would take to the single address `dst`.
fn route_query(dst: IpAddr) -> RouteMessage {
    match dst {
        IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(v4, 32)
            .build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(v6, 128)
            .build(),
    }
}
