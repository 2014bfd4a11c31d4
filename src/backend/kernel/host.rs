//! The [`Host`] seam: the kernel as the backends see it.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::model::{HostError, LinkChange, LinkState, Observed, Op, RouteLookup, VxlanSpec};

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
