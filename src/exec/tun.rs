//! The udp backend's TUN device, `flannel0` (upstream's name and configuration): this module
//! owns it from creation to removal; the udp backend decides when, `sys::tun` makes the
//! system calls.
//!
//! - [`create`] creates the device (or attaches to one a killed daemon left), opens one queue
//!   per worker with the virtio-net-header setting asked for, and makes the device persistent
//!   (`TUNSETPERSIST`), so that a daemon killed with `SIGKILL` leaves it, with its address and
//!   route, for its successor to attach to: traffic resumes as soon as the next process reads
//!   its queues, with nothing to rebuild. A hand-over (`SIGUSR2`) passes the open queues to
//!   the next image instead, so the device never loses its readers.
//! - [`configure`] sets it up the way upstream does (`pkg/backend/udp/cproxy_amd64.go`,
//!   `configureIface`), over the daemon's shared netlink handle: address = the lease's network
//!   address as /32 (e.g. `10.1.17.0/32`), MTU = external MTU − 28, link up, and one route for
//!   the whole overlay network (e.g. `10.1.0.0/16`) via the device, scope universe, `EEXIST`
//!   tolerated. We do the same over rtnetlink (no `ip` command).
//! - When our subnet moves ([`move_address`]) the device gets the new /32 and loses the old
//!   one; the network route stays as it is.
//! - [`release`] (a clean stop, `SIGTERM`) clears the persistence before the last queue
//!   closes, so the device disappears, with its address and route, as upstream's does when
//!   flanneld exits.
//!
//! # Kernel state owned by this module
//! - link `flannel0` (or the name configured), persistent while the datapath runs, with its
//!   /32 address, MTU, txqueuelen and the network route.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::netlink::{Netlink, NetlinkError};
use crate::sys::tun::{self, TunQueue};

/// Which queues to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunSpec {
    pub name: String,
    pub queues: usize,
    /// Open with `IFF_VNET_HDR` and TCP segmentation/checksum offloads (see `sys::tun`).
    pub offload: bool,
}

/// Opening the queues failed.
#[derive(Debug, thiserror::Error)]
#[error("creating TUN device {name} with {queues} queues")]
pub struct DeviceError {
    pub name: String,
    pub queues: usize,
    #[source]
    pub source: std::io::Error,
}

/// Creates the device (or attaches to the one a killed daemon left), opens its queues (at
/// least one) and makes it persistent.
///
/// # Errors
/// The device cannot be created, or no queue opened.
pub async fn create(spec: &TunSpec) -> Result<Vec<TunQueue>, DeviceError> {
    let create_err = |source| DeviceError {
        name: spec.name.clone(),
        queues: spec.queues,
        source,
    };
    let queues = open_fresh(spec).await.map_err(create_err)?;
    let Some(first) = queues.first() else {
        return Err(create_err(std::io::Error::other("no queue opened")));
    };
    if let Err(e) = first.set_persist(true) {
        tracing::warn!(device = %spec.name, "cannot make the TUN device persistent: {e}");
    }
    Ok(queues)
}

/// A clean stop: the device stops being persistent, so it goes away, with its address and
/// route, when the last of its queues closes (the caller closes them). `queue` is any open
/// queue of the device; without one the device stays (logged).
pub fn release(queue: Option<&TunQueue>, name: &str) {
    match queue {
        Some(q) => {
            if let Err(e) = q.set_persist(false) {
                tracing::warn!(device = %name, "clearing TUN persistence: {e}");
            }
        }
        None => tracing::warn!(
            device = %name,
            "no udp worker returned its queue; the TUN device stays (persistent)"
        ),
    }
}

/// How long [`open_fresh`] waits for a stale device of the same name to go away.
const STALE_DEVICE_WAIT: Duration = Duration::from_secs(5);

/// Opens the queues, making sure they have the virtio-net-header setting asked for. A queue
/// that attaches to a device which still has other queues keeps that device's flags. That
/// happens right after a daemon was killed: the kernel closes the files its io_uring held from
/// a worker, a little later. If the setting differs (the daemon came back with the other
/// `--udp-offload`), the queues are closed again and the open retried until the stale device
/// is gone, for up to [`STALE_DEVICE_WAIT`].
async fn open_fresh(spec: &TunSpec) -> std::io::Result<Vec<TunQueue>> {
    let deadline = Instant::now() + STALE_DEVICE_WAIT;
    loop {
        let queues = tun::open_queues(&spec.name, spec.queues, spec.offload)?;
        // No queue at all is for `create` to report.
        match queues.first().map(TunQueue::vnet_hdr).transpose()? {
            Some(on) if on != spec.offload => {}
            _ => return Ok(queues),
        }
        drop(queues);
        if Instant::now() >= deadline {
            let held = if spec.offload { "off" } else { "on" };
            return Err(std::io::Error::other(format!(
                "the device is held by another process with virtio-net headers {held}"
            )));
        }
        tracing::debug!(device = %spec.name, "waiting for a stale TUN device to go away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
