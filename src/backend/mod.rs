//! Backends: what each one does with the network once this host holds a lease.
//!
//! Every backend implements [`Backend`]. The daemon drives it in a fixed order:
//! [`Backend::prepare`] (before the lease: say what to publish),
//! [`Backend::start`] (with the lease: create devices, start forwarding), then
//! [`Backend::apply`] for every batch of lease events about *other* hosts.
//! Backends that program the kernel keep planning (pure) apart from doing
//! (`crate::exec`), so the planning is testable without root.

pub mod alloc;
pub mod aws_vpc;
pub mod extension;
pub mod host_gw;
pub mod kernel;
pub mod udp;
pub mod vxlan;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};

pub use crate::config::BackendKind;
use crate::config::NetworkConfig;
use crate::subnet::lease::{Lease, LeaseEvent, RawJson};

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

/// The backend-specific part of this host's lease value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendAttrs {
    /// `BackendType` (absent for udp and alloc, as upstream writes them).
    pub backend_type: Option<String>,
    pub backend_data: Option<RawJson>,
    pub backend_v6_data: Option<RawJson>,
}

/// What every backend implements.
pub trait Backend: Send {
    /// MTU for pods (written to subnet.env as `FLANNEL_MTU`).
    fn mtu(&self) -> u32;

    /// Runs before the lease is acquired; returns what to publish in it.
    fn prepare(&mut self) -> impl Future<Output = anyhow::Result<BackendAttrs>> + Send;

    /// Runs once this host holds `own`: set up devices and forwarding.
    fn start(&mut self, own: &Lease) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Handles a batch of events about other hosts' leases. Errors are the
    /// backend's to log and retry; the control plane keeps going.
    fn apply(&mut self, events: &[LeaseEvent]) -> impl Future<Output = ()> + Send;

    /// Called after the lease watcher re-listed every lease (start-up, etcd
    /// reconnect, compaction), once the resulting events were applied: the
    /// backend now knows every other host, so kernel-programming backends may
    /// remove what no lease explains. Default: nothing.
    fn resynced(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Everything a backend may need when it is built.
#[derive(Debug, Clone)]
pub struct BackendContext {
    pub config: NetworkConfig,
    pub iface: ExternalInterface,
}
