//! What the control plane has seen, for `/metrics` and `/status`: our lease and its renewals,
//! the other hosts' leases, watch events, and etcd's health.
//!
//! Plain counters and a little state behind short-held locks; nothing here knows the
//! Prometheus format (the daemon encodes it). The control plane writes a few times a minute
//! at most, so a mutex costs nothing that matters.
//!
//! [`EtcdHealth`] also decides what an etcd outage logs: one warning when the first request
//! fails, one line with the outage's length when a request succeeds again, and nothing for
//! the retries in between (each caller's own retry log is at debug level).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::lease::{HeldLease, Lease, LeaseEvent, SubnetKey};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the state whole, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How this node's etcd requests fare. Shared by every clone of a `Registry`.
#[derive(Debug, Default)]
pub struct EtcdHealth {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// Failed requests by operation (`get_config`, `list_leases`, `create_lease`, ...).
    errors: BTreeMap<&'static str, u64>,
    /// When the last request succeeded.
    last_ok: Option<(Instant, SystemTime)>,
    /// The outage in progress: when its first failure happened, and how many since.
    failing: Option<(Instant, u64)>,
}

/// Copied values of [`EtcdHealth`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EtcdSnapshot {
    pub errors: BTreeMap<&'static str, u64>,
    /// Time since the last successful request; `None` before the first.
    pub since_contact: Option<Duration>,
    /// Unix time of the last successful request.
    pub last_contact: Option<SystemTime>,
    /// Whether the last request succeeded.
    pub reachable: bool,
}

impl EtcdHealth {
    /// A request succeeded: the end of an outage is logged with its length.
    pub fn ok(&self) {
        let mut s = lock(&self.state);
        s.last_ok = Some((Instant::now(), SystemTime::now()));
        if let Some((since, failures)) = s.failing.take() {
            tracing::info!(
                outage_seconds = since.elapsed().as_secs_f64(),
                failed_requests = failures,
                "etcd is reachable again after {:.1?}",
                since.elapsed()
            );
        }
    }

    /// A request of kind `op` failed (after the registry's own retries): counted, and the
    /// start of an outage is logged once.
    pub fn failed(&self, op: &'static str, error: &dyn std::fmt::Display) {
        let mut s = lock(&self.state);
        *s.errors.entry(op).or_default() += 1;
        match &mut s.failing {
            Some((_, n)) => *n += 1,
            None => {
                tracing::warn!(
                    op,
                    "etcd is unreachable; retrying until it answers (forwarding is not \
                     affected; logged again when etcd is back): {error}"
                );
                s.failing = Some((Instant::now(), 1));
            }
        }
    }

    pub fn snapshot(&self) -> EtcdSnapshot {
        let s = lock(&self.state);
        EtcdSnapshot {
            errors: s.errors.clone(),
            since_contact: s.last_ok.map(|(at, _)| at.elapsed()),
            last_contact: s.last_ok.map(|(_, wall)| wall),
            reachable: s.last_ok.is_some() && s.failing.is_none(),
        }
    }
}

/// Our lease, the peers and the lease loops' counters. Cheap to clone (one `Arc`).
#[derive(Debug, Clone, Default)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    renewals: AtomicU64,
    failed_renewals: AtomicU64,
    reacquisitions: AtomicU64,
    /// Lease events handed to the backend, by kind: `added`, `removed`.
    events_added: AtomicU64,
    events_removed: AtomicU64,
    /// Full re-listings of the leases (at start and after every broken watch).
    resyncs: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    own: Option<OwnLease>,
    peers: BTreeMap<SubnetKey, Lease>,
}

/// Our lease as last taken or renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    pub lease: Lease,
    /// When it expires (now + TTL at the last renewal); `None` for a reservation.
    pub expires: Option<SystemTime>,
}

/// Copied values of [`ControlPlane`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlSnapshot {
    pub own: Option<OwnLease>,
    pub peers: Vec<Lease>,
    pub renewals: u64,
    pub failed_renewals: u64,
    pub reacquisitions: u64,
    pub events_added: u64,
    pub events_removed: u64,
    pub resyncs: u64,
}

impl ControlPlane {
    /// We hold `held` as of now (acquired, renewed, restored or moved).
    pub fn set_lease(&self, held: &HeldLease) {
        let expires = held.ttl.map(|ttl| SystemTime::now() + ttl);
        lock(&self.inner.state).own = Some(OwnLease {
            lease: held.lease.clone(),
            expires,
        });
    }

    pub fn renewed(&self) {
        self.inner.renewals.fetch_add(1, Ordering::Relaxed);
    }

    pub fn renewal_failed(&self) {
        self.inner.failed_renewals.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reacquired(&self) {
        self.inner.reacquisitions.fetch_add(1, Ordering::Relaxed);
    }

    /// The watcher re-listed every lease; the events that follow describe the difference.
    pub fn resynced(&self) {
        self.inner.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Lease events as handed to the backend: the peer table follows them.
    pub fn apply(&self, events: &[LeaseEvent]) {
        let mut state = lock(&self.inner.state);
        for ev in events {
            match ev {
                LeaseEvent::Added(l) => {
                    self.inner.events_added.fetch_add(1, Ordering::Relaxed);
                    state.peers.insert(l.key, l.clone());
                }
                LeaseEvent::Removed(l) => {
                    self.inner.events_removed.fetch_add(1, Ordering::Relaxed);
                    state.peers.remove(&l.key);
                }
            }
        }
    }

    pub fn snapshot(&self) -> ControlSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let state = lock(&self.inner.state);
        ControlSnapshot {
            own: state.own.clone(),
            peers: state.peers.values().cloned().collect(),
            renewals: get(&self.inner.renewals),
            failed_renewals: get(&self.inner.failed_renewals),
            reacquisitions: get(&self.inner.reacquisitions),
            events_added: get(&self.inner.events_added),
            events_removed: get(&self.inner.events_removed),
            resyncs: get(&self.inner.resyncs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::lease::LeaseAttrs;

    fn lease(subnet: &str, ip: &str) -> Lease {
        Lease {
            key: SubnetKey::parse(&format!("/coreos.com/network/subnets/{subnet}")).unwrap(),
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: None,
                backend_data: None,
                backend_v6_data: None,
            },
            etcd_lease: 7,
            mod_revision: 1,
        }
    }

    #[test]
    fn peers_follow_the_events_and_are_counted() {
        let cp = ControlPlane::default();
        let a = lease("10.5.1.0-24", "192.0.2.1");
        let b = lease("10.5.2.0-24", "192.0.2.2");
        cp.apply(&[LeaseEvent::Added(a.clone()), LeaseEvent::Added(b.clone())]);
        cp.apply(&[LeaseEvent::Removed(a)]);
        let s = cp.snapshot();
        assert_eq!(s.peers, vec![b]);
        assert_eq!((s.events_added, s.events_removed), (2, 1));
    }

    #[test]
    fn our_lease_expires_one_ttl_after_it_was_set() {
        let cp = ControlPlane::default();
        let held = HeldLease {
            lease: lease("10.5.3.0-24", "192.0.2.3"),
            ttl: Some(Duration::from_secs(3600)),
            create_revision: 1,
        };
        let before = SystemTime::now();
        cp.set_lease(&held);
        let expires = cp.snapshot().own.unwrap().expires.unwrap();
        let left = expires.duration_since(before).unwrap();
        assert!(left >= Duration::from_secs(3600) && left < Duration::from_secs(3610));
        cp.set_lease(&HeldLease { ttl: None, ..held });
        assert_eq!(cp.snapshot().own.unwrap().expires, None);
    }

    #[test]
    fn an_outage_is_counted_per_request_and_ends_with_a_success() {
        let h = EtcdHealth::default();
        assert!(!h.snapshot().reachable);
        h.ok();
        assert!(h.snapshot().reachable);
        h.failed("renew_lease", &"unavailable");
        h.failed("renew_lease", &"unavailable");
        h.failed("list_leases", &"unavailable");
        let s = h.snapshot();
        assert!(!s.reachable);
        assert_eq!(s.errors.get("renew_lease"), Some(&2));
        assert_eq!(s.errors.get("list_leases"), Some(&1));
        assert!(s.since_contact.is_some());
        h.ok();
        assert!(h.snapshot().reachable);
        assert_eq!(h.snapshot().errors.values().sum::<u64>(), 3);
    }
}
