//! Backends: what each one does with the network once this host holds a lease.
//!
//! Every backend implements [`Backend`]. The daemon drives it in a fixed order:
//! [`Backend::prepare`] (before the lease: say what to publish),
//! [`Backend::start`] (with the lease: create devices, start forwarding), then
//! [`Backend::apply`] for every batch of lease events about *other* hosts, and
//! [`Backend::moved`] when a lost lease came back with a different subnet.
//! On `SIGUSR2` a backend that [`Backend::hands_over`] its datapath stops it without
//! closing anything ([`Backend::hand_over`]); the daemon passes the state and fds to a new
//! image of itself, which takes them over (for udp: `udp::handover::TakenOver`).
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
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

pub use crate::config::BackendKind;
use crate::config::NetworkConfig;
use crate::datapath::counters::CountersHub;
pub use crate::exec::iface::ExternalInterface;
use crate::subnet::lease::{Lease, LeaseEvent, RawJson};
use kernel::ReconcileStats;

/// The backend-specific part of this host's lease value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendAttrs {
    /// `BackendType` (absent for udp and alloc, as upstream writes them).
    pub backend_type: Option<String>,
    pub backend_data: Option<RawJson>,
    pub backend_v6_data: Option<RawJson>,
}

/// The counters a backend owns, for the daemon's `/metrics` and `/status`.
#[derive(Debug, Clone, Default)]
pub struct BackendCounters {
    /// Kernel-programming backends (vxlan, host-gw): their reconciliation.
    pub reconcile: Option<Arc<ReconcileStats>>,
    /// The udp backend: its workers' counters.
    pub datapath: Option<CountersHub>,
}

/// What a backend hands over to the next image of the daemon (`SIGUSR2`).
#[derive(Debug)]
pub struct HandOver<'a> {
    /// The backend's state, serialised; the daemon passes it on unread.
    pub state: Vec<u8>,
    /// The fds the next image inherits (the state names them by number). The backend keeps
    /// owning them: should the hand-over fall through, [`Backend::take_back`] runs on them.
    pub fds: Vec<BorrowedFd<'a>>,
}

/// What the next image finds: the state as it was handed over, and the fds it inherited,
/// owned, each with its number.
#[derive(Debug)]
pub struct HandedOver {
    pub state: Vec<u8>,
    pub fds: Vec<(RawFd, OwnedFd)>,
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

    /// Called when our lease was lost and re-acquired with a *different* subnet (`old` held
    /// before, `new` held now; same attributes). Runs before the watcher learns the new
    /// subnet, so events about `old` (now another host's) come after it. The backend moves
    /// whatever is keyed by its own subnet, in place. The daemon logs an error and keeps
    /// going; the backend's own periodic repair (where it has one) finishes the job.
    /// Default: nothing.
    fn moved(
        &mut self,
        old: &Lease,
        new: &Lease,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        let _ = (old, new);
        async { Ok(()) }
    }

    /// The counters this backend keeps. Default: none.
    fn counters(&self) -> BackendCounters {
        BackendCounters::default()
    }

    /// Whether this backend hands its running datapath over to a new image of the daemon
    /// on `SIGUSR2`. Default: no (the signal is then ignored).
    fn hands_over(&self) -> bool {
        false
    }

    /// `SIGUSR2`: stops forwarding without closing anything, and returns the state and fds
    /// the next image takes over; `own` is our lease, `version` this binary's version (the
    /// state records it). Whether this fails or the `execve` after it, the daemon then
    /// calls [`Backend::take_back`]. Default: an error (see [`Backend::hands_over`]).
    fn hand_over(&mut self, own: &Lease, version: &str) -> anyhow::Result<HandOver<'_>> {
        let _ = (own, version);
        anyhow::bail!("this backend does not hand over its datapath")
    }

    /// The hand-over fell through: forward again on what was to be handed over. Default:
    /// nothing.
    fn take_back(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Everything a backend may need when it is built.
#[derive(Debug, Clone)]
pub struct BackendContext {
    pub config: NetworkConfig,
    pub iface: ExternalInterface,
}
