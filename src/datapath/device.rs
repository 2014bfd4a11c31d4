//! Creates the udp backend's TUN device: one queue per worker, with the virtio-net-header
//! setting asked for. Configuring the device (address, MTU, link up, network route) is
//! control-plane work over the daemon's netlink handle: see `exec::tun`.
//!
//! # Kernel state owned by this module
//! - link `flannel0` itself. It disappears (with its address and route) when the last queue fd
//!   closes (the device is not persistent), exactly as upstream's does when flanneld exits.

use std::time::{Duration, Instant};

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

/// Creates the device and opens its queues (at least one).
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
    if queues.is_empty() {
        return Err(create_err(std::io::Error::other("no queue opened")));
    }
    Ok(queues)
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
