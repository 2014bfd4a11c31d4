//! Configures the udp backend's TUN device the way upstream does, over the
//! daemon's shared netlink handle.
//!
//! Upstream (`pkg/backend/udp/cproxy_amd64.go`, `configureIface`): address = the lease's
//! network address as /32 (e.g. `10.1.17.0/32`), MTU = external MTU − 28, link up, and one
//! route for the whole overlay network (e.g. `10.1.0.0/16`) via the device, scope universe,
//! `EEXIST` tolerated. We do the same over rtnetlink (no `ip` command).
//!
//! When our subnet moves ([`move_address`]) the device gets the new /32 and loses the old one;
//! the network route stays as it is.
//!
//! # Kernel state owned by this module
//! - the /32 address and the network route on the device (`datapath::device` creates it).
//!   Both disappear with the device when its last queue fd closes.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::netlink::{Netlink, NetlinkError};

/// Packets each TUN queue holds before the kernel drops (default 500). A userspace reader
/// drains in bursts; with 500 a single TCP stream on a busy 2-core host lost ~1% of its
/// segments at the sender's TUN queue, with 4096 none (measured with iperf3, netns + veth).
pub const TUN_TX_QUEUE_LEN: u32 = 4096;

/// What the device should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunLink {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// Our lease's network address, assigned as /32.
    pub addr: Ipv4Addr,
    /// The whole overlay network, routed via the device.
    pub network: Ipv4Net,
}

/// Sets MTU and txqueuelen, the /32 address, link up and the network route.
///
/// # Errors
/// Any step failing, except the address or route already existing.
pub async fn configure(nl: &Netlink, t: &TunLink) -> Result<(), NetlinkError> {
    let on = |mut e: NetlinkError| {
        e.what = format!("{} on {}", e.what, t.name);
        e
    };
    let mtu = LinkUnspec::new_with_index(t.index)
        .mtu(t.mtu)
        .txqueuelen(TUN_TX_QUEUE_LEN)
        .build();
    nl.set_link(
        mtu,
        &format!("MTU {} and txqueuelen {TUN_TX_QUEUE_LEN}", t.mtu),
    )
    .await
    .map_err(on)?;
    let addr = IpNet::new(IpAddr::V4(t.addr), 32).expect("/32 is a valid prefix");
    nl.add_address(t.index, addr).await.map_err(on)?;
    nl.set_link(LinkUnspec::new_with_index(t.index).up().build(), "up")
        .await
        .map_err(on)?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(t.network.network(), t.network.prefix_len())
        .output_interface(t.index)
        .build();
    nl.add_route(route, &t.network.to_string())
        .await
        .map_err(on)?;
    Ok(())
}

/// Our subnet moved: `t.addr` (the new lease's network address) is added as /32 first, then
/// `old`'s /32 removed, so the device is never without an address. Either already done: fine.
///
/// # Errors
/// Adding or removing the address failing.
pub async fn move_address(nl: &Netlink, t: &TunLink, old: Ipv4Addr) -> Result<(), NetlinkError> {
    let on = |mut e: NetlinkError| {
        e.what = format!("{} on {}", e.what, t.name);
        e
    };
    let slash32 = |a: Ipv4Addr| IpNet::new(IpAddr::V4(a), 32).expect("/32 is a valid prefix");
    nl.add_address(t.index, slash32(t.addr)).await.map_err(on)?;
    if old != t.addr {
        nl.delete_address(t.index, slash32(old)).await.map_err(on)?;
    }
    Ok(())
}
