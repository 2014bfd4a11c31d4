//! The loop both kernel-programming backends share: a [`Planner`] turns
//! leases into a [`Desired`] state, the [`Engine`] applies lease events and
//! periodic [`reconcile`] passes through the [`Host`], and the
//! [`Reconciler`] runs it as a tokio task.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::host::Host;
use super::model::{Desired, DirectPeers, Op};
use super::reconcile::{reconcile, Ownership};
use crate::subnet::lease::{Lease, LeaseEvent, SubnetKey};

/// How often the kernel is compared with the leases (upstream's host-gw
/// route check runs every 10 s; vxlan upstream has none).
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(10);

/// What a kernel-programming backend plans with: how leases become peers,
/// and peers become a [`Desired`] kernel state. Everything here is pure; the
/// [`Engine`] does the talking to the [`Host`].
pub trait Planner: Send + 'static {
    /// What the backend keeps of another host's lease.
    type Peer: Clone + fmt::Debug + Send + Sync;

    /// The peer a lease describes, or `None` when this backend does not
    /// handle it (another backend type, unreadable data: logged here).
    fn peer(&self, lease: &Lease) -> Option<Self::Peer>;

    /// Addresses whose direct reachability ([`Host::route_to`]) planning
    /// needs for this peer.
    fn lookups(&self, peer: &Self::Peer) -> Vec<IpAddr>;

    /// The kernel state all `peers` together ask for.
    fn desired(&self, peers: &BTreeMap<SubnetKey, Self::Peer>, direct: &DirectPeers) -> Desired;

    /// Subnets the backend refuses to route, with the reason (logged by the
    /// engine once when a refusal starts, and again when it ends).
    fn refused(
        &self,
        _peers: &BTreeMap<SubnetKey, Self::Peer>,
        _direct: &DirectPeers,
    ) -> BTreeMap<IpNet, String> {
        BTreeMap::new()
    }

    /// Which kernel entries are this backend's.
    fn ownership(&self) -> Ownership;

    /// Whether IPv6 routes are in play.
    fn uses_v6(&self) -> bool;

    /// A device name for log lines.
    fn device_name(&self, index: u32) -> String;

    /// The log line for a peer that appeared or changed.
    fn added_line(&self, peer: &Self::Peer) -> String;

    /// The log line for a peer that went away.
    fn removed_line(&self, peer: &Self::Peer) -> String;
}

/// What the kernel was found to have drifted in, for the repair counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairKind {
    Route,
    Neighbour,
    Fdb,
    /// A backend's own device (vxlan: recreated, or its MAC, MTU, address or state restored).
    Link,
}

impl RepairKind {
    pub const ALL: [RepairKind; 4] = [
        RepairKind::Route,
        RepairKind::Neighbour,
        RepairKind::Fdb,
        RepairKind::Link,
    ];

    /// Stable name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            RepairKind::Route => "route",
            RepairKind::Neighbour => "neighbour",
            RepairKind::Fdb => "fdb",
            RepairKind::Link => "link",
        }
    }

    fn of(op: &Op) -> Self {
        match op {
            Op::ReplaceRoute(_) | Op::DeleteRoute(_) => RepairKind::Route,
            Op::ReplaceNeigh(_) | Op::DeleteNeigh(_) => RepairKind::Neighbour,
            Op::ReplaceFdb(_) | Op::DeleteFdb(_) => RepairKind::Fdb,
        }
    }
}

/// How the periodic reconciliation fares, for `/metrics` and `/status`.
#[derive(Debug, Default)]
pub struct ReconcileStats {
    runs: AtomicU64,
    /// Passes that could not read the kernel, and repairs the kernel refused.
    failures: AtomicU64,
    repairs: [AtomicU64; RepairKind::ALL.len()],
    last_duration_ns: AtomicU64,
    /// Unix time, in milliseconds, when the last pass ended; 0 before the first.
    last_end_unix_ms: AtomicU64,
}

/// Copied values of [`ReconcileStats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconcileSnapshot {
    pub runs: u64,
    pub failures: u64,
    pub repairs: [(RepairKind, u64); RepairKind::ALL.len()],
    pub last_duration: Duration,
    pub last_end: Option<SystemTime>,
}

impl ReconcileStats {
    pub fn repaired(&self, kind: RepairKind) {
        self.repairs[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn finished(&self, took: Duration) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.last_duration_ns
            .store(took.as_nanos() as u64, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_end_unix_ms
            .store(now.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ReconcileSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let end = get(&self.last_end_unix_ms);
        ReconcileSnapshot {
            runs: get(&self.runs),
            failures: get(&self.failures),
            repairs: RepairKind::ALL.map(|k| (k, get(&self.repairs[k as usize]))),
            last_duration: Duration::from_nanos(get(&self.last_duration_ns)),
            last_end: (end > 0).then(|| UNIX_EPOCH + Duration::from_millis(end)),
        }
    }
}

/// Turns lease events and periodic checks into kernel operations: the same
/// loop for every kernel-programming backend.
#[derive(Debug)]
pub struct Engine<P: Planner> {
    pub planner: P,
    peers: BTreeMap<SubnetKey, P::Peer>,
    direct: DirectPeers,
    /// The lease list is complete (a watch snapshot arrived): stale entries
    /// may be removed.
    synced: bool,
    /// Refusals already reported.
    refused: BTreeMap<IpNet, String>,
    stats: Arc<ReconcileStats>,
}

impl<P: Planner> Engine<P> {
    pub fn new(planner: P) -> Self {
        Engine {
            planner,
            peers: BTreeMap::new(),
            direct: DirectPeers::new(),
            synced: false,
            refused: BTreeMap::new(),
            stats: Arc::default(),
        }
    }

    /// The reconciliation counters (passes, repairs, failures).
    pub fn stats(&self) -> &Arc<ReconcileStats> {
        &self.stats
    }

    /// The peers currently known.
    pub fn peers(&self) -> &BTreeMap<SubnetKey, P::Peer> {
        &self.peers
    }

    /// Marks the lease list complete (after a watch snapshot).
    pub fn mark_synced(&mut self) {
        self.synced = true;
    }

    async fn refresh_direct<H: Host>(&mut self, host: &mut H, ip: IpAddr) {
        match host.route_to(ip).await {
            Ok(Some(l)) => match l.direct_oif() {
                Some(oif) => {
                    self.direct.insert(ip, oif);
                }
                None => {
                    self.direct.remove(&ip);
                }
            },
            Ok(None) => {
                self.direct.remove(&ip);
            }
            Err(e) => tracing::warn!(
                "cannot look up the route to {ip}, treating it as not directly reachable: {e}"
            ),
        }
    }

    /// Applies a batch of lease events: every entry an added or changed
    /// lease wants is replaced (upstream's behaviour, which also repairs
    /// drift on every lease update), and whatever the batch made unwanted is
    /// deleted. A batch is also the watch's snapshot of the other hosts,
    /// after which stale entries may go.
    pub async fn apply_events<H: Host>(&mut self, host: &mut H, events: &[LeaseEvent]) {
        let before = self.planner.desired(&self.peers, &self.direct);
        let mut added = BTreeMap::new();
        for ev in events {
            match ev {
                LeaseEvent::Added(lease) => match self.planner.peer(lease) {
                    Some(peer) => {
                        for ip in self.planner.lookups(&peer) {
                            self.refresh_direct(host, ip).await;
                        }
                        tracing::info!(
                            subnet = %lease.key.cidr(), public_ip = %lease.attrs.public_ip,
                            "{}", self.planner.added_line(&peer)
                        );
                        self.peers.insert(lease.key, peer.clone());
                        added.insert(lease.key, peer);
                    }
                    None => {
                        // The host switched to something this backend does not handle.
                        if let Some(old) = self.peers.remove(&lease.key) {
                            tracing::info!(
                                subnet = %lease.key.cidr(), public_ip = %lease.attrs.public_ip,
                                "{}", self.planner.removed_line(&old)
                            );
                        }
                        added.remove(&lease.key);
                    }
                },
                LeaseEvent::Removed(lease) => {
                    if let Some(old) = self.peers.remove(&lease.key) {
                        tracing::info!(
                            subnet = %lease.key.cidr(), public_ip = %lease.attrs.public_ip,
                            "{}", self.planner.removed_line(&old)
                        );
                    }
                    added.remove(&lease.key);
                }
            }
        }
        let after = self.planner.desired(&self.peers, &self.direct);
        self.report_refusals(&after);
        let wanted_now = self.planner.desired(&added, &self.direct);
        let mut ops = wanted_now.replace_ops();
        ops.extend(before.removed_in(&after));
        for op in ops {
            tracing::debug!("{}", op.describe(|i| self.planner.device_name(i)));
            if let Err(e) = host.apply(&op).await {
                tracing::error!("{e} (the periodic check retries)");
            }
        }
        self.synced = true;
    }

    fn report_refusals(&mut self, desired: &Desired) {
        let now = self.planner.refused(&self.peers, &self.direct);
        for (dst, why) in &now {
            if self.refused.get(dst) != Some(why) {
                tracing::error!("{why}");
            }
        }
        for dst in self.refused.keys() {
            if !now.contains_key(dst) && desired.routes.contains_key(dst) {
                tracing::info!("{dst}: the peer is reachable now; routing it");
            }
        }
        self.refused = now;
    }

    /// Compares the kernel with the leases and repairs the difference, one
    /// log line per repair.
    pub async fn reconcile<H: Host>(&mut self, host: &mut H) {
        let ips: Vec<IpAddr> = self
            .peers
            .values()
            .flat_map(|p| self.planner.lookups(p))
            .collect();
        for ip in ips {
            self.refresh_direct(host, ip).await;
        }
        let desired = self.planner.desired(&self.peers, &self.direct);
        self.report_refusals(&desired);
        let own = self.planner.ownership();
        let observed = match host.observe(self.planner.uses_v6(), &own.devices).await {
            Ok(o) => o,
            Err(e) => {
                self.stats.failed();
                tracing::warn!(
                    "reconcile: cannot read the kernel's tables, trying again later: {e}"
                );
                return;
            }
        };
        for repair in reconcile(&desired, &observed, &own, self.synced) {
            let what = repair.op.describe(|i| self.planner.device_name(i));
            tracing::info!("reconcile: {what} ({})", repair.why);
            match host.apply(&repair.op).await {
                Ok(()) => self.stats.repaired(RepairKind::of(&repair.op)),
                Err(e) => {
                    self.stats.failed();
                    tracing::error!("reconcile: {e}");
                }
            }
        }
    }
}

/// One timed reconciliation pass.
async fn pass<S: EngineState>(state: &tokio::sync::Mutex<S>, stats: &ReconcileStats) {
    let mut state = state.lock().await;
    let started = Instant::now();
    state.reconcile().await;
    stats.finished(started.elapsed());
}

/// What a kernel-programming backend keeps behind the lock it shares with
/// its [`Reconciler`] task: the kernel seam, the [`Engine`] and whatever else
/// the backend needs to repair (vxlan's devices).
pub trait EngineState: Send + 'static {
    type Host: Host;
    type Planner: Planner;

    /// The kernel seam and the engine, borrowed together.
    fn parts(&mut self) -> (&mut Self::Host, &mut Engine<Self::Planner>);

    /// One reconciliation pass (at least [`Engine::reconcile`]).
    fn reconcile(&mut self) -> impl Future<Output = ()> + Send;
}

/// The loop both kernel-programming backends share: their [`EngineState`]
/// behind one lock, lease events applied to it, and a task that reconciles
/// it every period or sooner when kicked. The task ends when this is dropped.
pub struct Reconciler<S: EngineState> {
    pub state: Arc<tokio::sync::Mutex<S>>,
    stats: Arc<ReconcileStats>,
    /// Wakes the task for a pass now (after a resync, a deleted device).
    pub kick: Arc<Notify>,
    period: Duration,
    task: Option<JoinHandle<()>>,
}

impl<S: EngineState> Reconciler<S> {
    /// Not running yet: see [`Reconciler::spawn`]. Checks every
    /// [`RECONCILE_PERIOD`].
    pub fn new(mut state: S) -> Self {
        Reconciler {
            stats: state.parts().1.stats().clone(),
            state: Arc::new(tokio::sync::Mutex::new(state)),
            kick: Arc::new(Notify::new()),
            period: RECONCILE_PERIOD,
            task: None,
        }
    }

    /// Changes how often the kernel is checked (tests).
    pub fn set_period(&mut self, period: Duration) {
        self.period = period;
    }

    /// Starts the periodic task.
    pub fn spawn(&mut self) {
        let (state, kick, period) = (self.state.clone(), self.kick.clone(), self.period);
        let stats = self.stats.clone();
        self.task = Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = kick.notified() => {}
                }
                pass(&state, &stats).await;
            }
        }));
    }

    /// Runs one reconciliation pass now (tests; the task runs the others).
    pub async fn reconcile_now(&self) {
        pass(&self.state, &self.stats).await;
    }

    /// The reconciliation counters.
    pub fn stats(&self) -> &Arc<ReconcileStats> {
        &self.stats
    }

    /// Applies a batch of lease events ([`Engine::apply_events`]).
    pub async fn apply(&self, events: &[LeaseEvent]) {
        let mut state = self.state.lock().await;
        let (host, engine) = state.parts();
        engine.apply_events(host, events).await;
    }

    /// The lease list is complete: stale entries may go, and a pass runs now
    /// to remove them.
    pub async fn resynced(&self) {
        self.state.lock().await.parts().1.mark_synced();
        self.kick.notify_one();
    }

    /// Runs `f` on the kernel seam (tests inspect the fake kernel this way).
    pub async fn with_host_mut<T>(&self, f: impl FnOnce(&mut S::Host) -> T) -> T {
        f(self.state.lock().await.parts().0)
    }
}

impl<S: EngineState> Drop for Reconciler<S> {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
