//! Creates and configures the udp backend's TUN device the way upstream does.
//!
//! Upstream (`pkg/backend/udp/cproxy_amd64.go`, `configureIface`): address = the lease's network
//! address as /32 (e.g. `10.1.17.0/32`), MTU = external MTU − 28, link up, and one route for the
//! whole overlay network (e.g. `10.1.0.0/16`) via the device, scope universe, `EEXIST`
//! tolerated. We do the same over rtnetlink (no `ip` command), and open one queue per worker.
//!
//! # Kernel state owned by this module
//! - link `flannel0` with its /32 address and the network route. All three disappear with the
//!   device when the last queue fd closes (the device is not persistent), exactly as upstream's
//!   do when flanneld exits.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use crate::sys::tun::{self, TunQueue};

/// Packets each TUN queue holds before the kernel drops (default 500). A userspace reader
/// drains in bursts; with 500 a single TCP stream on a busy 2-core host lost ~1% of its
/// segments at the sender's TUN queue, with 4096 none (measured with iperf3, netns + veth).
pub const TUN_TX_QUEUE_LEN: u32 = 4096;

/// What the device should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunSpec {
    pub name: String,
    pub queues: usize,
    pub mtu: u32,
    /// Our lease's network address, assigned as /32.
    pub addr: Ipv4Addr,
    /// The whole overlay network, routed via the device.
    pub network: Ipv4Net,
    /// Open with `IFF_VNET_HDR` and TCP segmentation/checksum offloads (see `sys::tun`).
    pub offload: bool,
}

/// A configuration step that failed, with the device it was for.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("creating TUN device {name} with {queues} queues")]
    Create {
        name: String,
        queues: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("opening a netlink socket")]
    Netlink(#[source] std::io::Error),
    #[error("{step} on {name}")]
    Configure {
        step: String,
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Creates the device, opens its queues and configures address, MTU, link state and route.
/// Must run inside a tokio runtime (for the netlink connection).
///
/// # Errors
/// Any step failing, except the address or route already existing.
pub async fn create(spec: &TunSpec) -> Result<Vec<TunQueue>, DeviceError> {
    let create_err = |source| DeviceError::Create {
        name: spec.name.clone(),
        queues: spec.queues,
        source,
    };
    let queues = open_fresh(spec).await.map_err(create_err)?;
    let first = queues
        .first()
        .ok_or_else(|| create_err(std::io::Error::other("no queue opened")))?;
    let index = first.if_index().map_err(create_err)?;
    let name = first.name().unwrap_or_else(|_| spec.name.clone());

    let (conn, handle, _) = rtnetlink::new_connection().map_err(DeviceError::Netlink)?;
    let conn = tokio::spawn(conn);
    let configure_err = |step: String| {
        let name = name.clone();
        move |source| DeviceError::Configure { step, name, source }
    };

    let result = async {
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(spec.mtu)
                    .txqueuelen(TUN_TX_QUEUE_LEN)
                    .build(),
            )
            .execute()
            .await
            .map_err(configure_err(format!(
                "setting MTU {} and txqueuelen {TUN_TX_QUEUE_LEN}",
                spec.mtu
            )))?;
        tolerate_exists(
            handle
                .address()
                .add(index, IpAddr::V4(spec.addr), 32)
                .execute()
                .await,
        )
        .map_err(configure_err(format!("adding address {}/32", spec.addr)))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(configure_err("setting link up".to_owned()))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(spec.network.network(), spec.network.prefix_len())
            .output_interface(index)
            .build();
        tolerate_exists(handle.route().add(route).execute().await)
            .map_err(configure_err(format!("adding route {}", spec.network)))?;
        Ok(())
    }
    .await;
    drop(handle);
    conn.abort();
    result.map(|()| queues)
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

/// Upstream ignores `EEXIST` for the address and the route (a restart finds them in place
/// only if the device survived, but the check is cheap).
fn tolerate_exists(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        other => other,
    }
}
