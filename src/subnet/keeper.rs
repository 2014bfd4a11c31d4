//! The lease keeper: acquires this host's lease, renews it before it
//! expires, and re-acquires it when it is lost (deleted, expired, or taken by
//! another host), preferring the subnet it had.
//!
//! The decisions are pure ([`renew_delay`], [`renew_retry`],
//! [`judge_own_change`]); [`Keeper`] carries them out through [`LeaseStore`]
//! (the [`Registry`] in the daemon, a fake in unit tests) and [`Clock`].

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::clock::{Backoff, Clock};
use super::counters::ControlPlane;
use super::lease::{HeldLease, SubnetKey};
use super::reduce::OwnChange;
use super::registry::{AcquireRequest, Registry, RegistryError, Renewal};

/// How long after a grant of `ttl` to renew, given the renew margin.
///
/// Upstream renews `margin` before expiry. A margin as long as the TTL (only
/// possible with the test TTL override) would renew in a tight loop, so then
/// the lease is renewed at half its life.
pub fn renew_delay(ttl: Duration, margin: Duration) -> Duration {
    if margin < ttl {
        ttl - margin
    } else {
        ttl / 2
    }
}

/// How long to wait before retrying a failed renewal: upstream's minute, but
/// never so long that a short (test) lease expires meanwhile.
pub fn renew_retry(ttl: Duration) -> Duration {
    Duration::from_secs(60)
        .min(ttl / 8)
        .max(Duration::from_millis(200))
}

/// What to do about a change to our own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnVerdict {
    /// Old news, or our own write.
    Ignore,
    /// Someone rewrote our key with our exact value and lease: still ours,
    /// at this new revision.
    Adopt(i64),
    /// Someone overwrote our live key in place (a stray `etcdctl put`, a confused
    /// tool): a well-behaved flanneld only ever creates keys that do not exist, so the
    /// write is not a claim. Write our value back over the write of this revision.
    Restore(i64),
    /// The key is gone, or was created anew by someone else: re-acquire.
    Lost,
}

/// Judges `change` against the lease we hold.
///
/// | change to our key | condition | verdict |
/// | --- | --- | --- |
/// | deleted or expired | at or before the revision we hold | `Ignore` (old news) |
/// | deleted or expired | after it | `Lost`: re-acquire, the same subnet when free |
/// | written | at or before the revision we hold | `Ignore` (old news, our own write) |
/// | written | our value and our etcd lease | `Adopt` the new revision |
/// | written over the live key (same create revision), we hold a TTL lease | anything else | `Restore` ours |
/// | written over the live key, we hold a reservation | anything else | `Lost` (an operator edits reservations) |
/// | written after the key was deleted or expired (new create revision) | anything else | `Lost`: another host may hold it now (we never fight over a subnet, upstream #1289) |
///
/// Unknown create revisions (0) are never "the same": then a foreign write is `Lost`.
pub fn judge_own_change(held: &HeldLease, change: &OwnChange) -> OwnVerdict {
    let ours = &held.lease;
    match change {
        OwnChange::Deleted { revision } if *revision > ours.mod_revision => OwnVerdict::Lost,
        OwnChange::Deleted { .. } => OwnVerdict::Ignore,
        OwnChange::Written { mod_revision, .. } if *mod_revision <= ours.mod_revision => {
            OwnVerdict::Ignore
        }
        OwnChange::Written {
            lease: Some(l),
            mod_revision,
            ..
        } if l.attrs == ours.attrs && l.etcd_lease == ours.etcd_lease => {
            OwnVerdict::Adopt(*mod_revision)
        }
        OwnChange::Written {
            mod_revision,
            create_revision,
            ..
        } if *create_revision == held.create_revision
            && held.create_revision != 0
            && !ours.is_reservation() =>
        {
            OwnVerdict::Restore(*mod_revision)
        }
        OwnChange::Written { .. } => OwnVerdict::Lost,
    }
}

/// What the daemon must do after a change to our key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnAction {
    /// Nothing: the lease is still ours.
    Keep,
    /// Our value was written back over a stray write; the lease is still ours.
    Restored,
    /// The lease is lost: call [`Keeper::reacquire`].
    Lost,
}

/// What the keeper needs of the registry.
pub trait LeaseStore: Send + Sync + 'static {
    fn acquire(
        &self,
        req: &AcquireRequest,
    ) -> impl Future<Output = Result<HeldLease, RegistryError>> + Send;

    fn renew(
        &self,
        held: &HeldLease,
    ) -> impl Future<Output = Result<Renewal, RegistryError>> + Send;

    /// Writes `held` back over the stray write of revision `theirs` (compare-and-swap).
    fn restore(
        &self,
        held: &HeldLease,
        theirs: i64,
    ) -> impl Future<Output = Result<Option<HeldLease>, RegistryError>> + Send;
}

impl LeaseStore for Registry {
    fn acquire(
        &self,
        req: &AcquireRequest,
    ) -> impl Future<Output = Result<HeldLease, RegistryError>> + Send {
        Registry::acquire(self, req)
    }

    fn renew(
        &self,
        held: &HeldLease,
    ) -> impl Future<Output = Result<Renewal, RegistryError>> + Send {
        Registry::renew(self, held)
    }

    fn restore(
        &self,
        held: &HeldLease,
        theirs: i64,
    ) -> impl Future<Output = Result<Option<HeldLease>, RegistryError>> + Send {
        Registry::restore(self, held, theirs)
    }
}

/// Acquires a lease, retrying with backoff while etcd is unreachable. Running
/// out of subnets, or losing too many races, is final.
pub async fn acquire<S: LeaseStore, C: Clock>(
    store: &S,
    clock: &C,
    req: &AcquireRequest,
) -> Result<HeldLease, RegistryError> {
    let mut backoff = Backoff::new();
    let mut failing_since = None;
    loop {
        match store.acquire(req).await {
            Ok(h) => {
                if let Some(since) = failing_since {
                    tracing::info!(
                        subnet = %h.lease.key.cidr(),
                        "acquired a lease after {:.1?} of failed attempts",
                        clock.now() - since
                    );
                }
                return Ok(h);
            }
            Err(e @ (RegistryError::OutOfSubnets(_) | RegistryError::TooManyConflicts(_))) => {
                return Err(e)
            }
            Err(e) => {
                let d = backoff.next_delay();
                // Once when the failures start (and once when they end, above).
                if failing_since.is_none() {
                    failing_since = Some(clock.now());
                    tracing::warn!("acquiring a lease failed; retrying with backoff: {e}");
                } else {
                    tracing::debug!("acquiring a lease failed again, retrying in {d:?}: {e}");
                }
                clock.sleep(d).await;
            }
        }
    }
}

/// The outcome of a re-acquisition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reacquired {
    /// We got our subnet back.
    Same,
    /// Another host holds our old subnet now; we moved to a new one.
    Moved { old: SubnetKey, new: SubnetKey },
}

/// Keeps one held lease alive: the renew timer, renewals, the verdict on
/// changes to our key, and re-acquisition. The daemon's loop drives it.
#[derive(Debug)]
pub struct Keeper<S: LeaseStore, C: Clock> {
    store: S,
    clock: C,
    held: HeldLease,
    req: AcquireRequest,
    margin: Duration,
    renew_at: Option<Instant>,
    /// Since when renewals fail (the first failure is logged, the recovery too).
    failing_since: Option<Instant>,
    counters: ControlPlane,
}

impl<S: LeaseStore, C: Clock> Keeper<S, C> {
    /// Keeps `held` (acquired with `req`), renewing `margin` before expiry.
    pub fn new(store: S, clock: C, held: HeldLease, req: AcquireRequest, margin: Duration) -> Self {
        let mut k = Keeper {
            store,
            clock,
            held,
            req,
            margin,
            renew_at: None,
            failing_since: None,
            counters: ControlPlane::default(),
        };
        k.schedule_renewal();
        k
    }

    /// Records renewals, re-acquisitions and the lease held in `counters`.
    #[must_use]
    pub fn with_counters(mut self, counters: ControlPlane) -> Self {
        counters.set_lease(&self.held);
        self.counters = counters;
        self
    }

    /// We hold `held` from now on.
    fn hold(&mut self, held: HeldLease) {
        self.counters.set_lease(&held);
        self.held = held;
        self.schedule_renewal();
    }

    pub fn held(&self) -> &HeldLease {
        &self.held
    }

    /// When the next renewal is due (`None`: a reservation, never renewed).
    pub fn renew_at(&self) -> Option<Instant> {
        self.renew_at
    }

    fn schedule_renewal(&mut self) {
        self.renew_at = self
            .held
            .ttl
            .map(|ttl| self.clock.now() + renew_delay(ttl, self.margin));
    }

    /// Resolves when the next renewal is due (never, for a reservation).
    pub async fn renewal_due(&self) {
        match self.renew_at {
            Some(t) => self.clock.sleep_until(t).await,
            None => std::future::pending().await,
        }
    }

    /// Renews the lease. `true` when it is lost (re-acquire it); a failed
    /// renewal is retried soon enough for the lease not to expire meanwhile.
    pub async fn renew(&mut self) -> bool {
        match self.store.renew(&self.held).await {
            Ok(Renewal::Renewed(h)) => {
                self.counters.renewed();
                match self.failing_since.take() {
                    Some(since) => tracing::info!(
                        subnet = %h.lease.key.cidr(),
                        failing_seconds = (self.clock.now() - since).as_secs_f64(),
                        "renewed lease; renewals had failed for {:.1?}",
                        self.clock.now() - since
                    ),
                    None => tracing::info!(subnet = %h.lease.key.cidr(), "renewed lease"),
                }
                self.hold(h);
                false
            }
            Ok(Renewal::Lost) => {
                self.failing_since = None;
                true
            }
            Err(e) => {
                self.counters.renewal_failed();
                let retry = renew_retry(self.held.ttl.unwrap_or(Duration::from_secs(600)));
                // Logged when renewals start failing and when they work again, not per retry.
                if self.failing_since.is_none() {
                    self.failing_since = Some(self.clock.now());
                    tracing::warn!(
                        subnet = %self.held.lease.key.cidr(),
                        "lease renewal failed; retrying every {retry:?} until it works: {e}"
                    );
                } else {
                    tracing::debug!(subnet = %self.held.lease.key.cidr(), "lease renewal failed again: {e}");
                }
                self.renew_at = Some(self.clock.now() + retry);
                false
            }
        }
    }

    /// Judges a change to our key seen by the watcher and acts on it: a stray write over
    /// our live key is undone here (logged at error level with the writer's value).
    pub async fn own_changed(&mut self, change: &OwnChange) -> OwnAction {
        match judge_own_change(&self.held, change) {
            OwnVerdict::Lost => OwnAction::Lost,
            OwnVerdict::Adopt(rev) => {
                self.held.lease.mod_revision = rev;
                OwnAction::Keep
            }
            OwnVerdict::Ignore => OwnAction::Keep,
            OwnVerdict::Restore(theirs) => self.restore(change, theirs).await,
        }
    }

    async fn restore(&mut self, change: &OwnChange, theirs: i64) -> OwnAction {
        let written = match change {
            OwnChange::Written { lease: Some(l), .. } => l.attrs.to_json(),
            _ => "(not a lease)".to_owned(),
        };
        tracing::error!(
            subnet = %self.held.lease.key.cidr(), revision = theirs, value = %written,
            "our lease was overwritten in place while we hold it; restoring our value \
             (a flanneld only creates keys that do not exist, so this is a stray write)"
        );
        match self.store.restore(&self.held, theirs).await {
            Ok(Some(h)) => {
                tracing::info!(subnet = %h.lease.key.cidr(), "restored our lease");
                self.hold(h);
                OwnAction::Restored
            }
            // Written again meanwhile: the watcher reports that write next.
            Ok(None) => OwnAction::Keep,
            Err(e) => {
                // The renewal (retried soon) compares against the stray write's revision
                // and fails, so the lease is then re-acquired: take that path now.
                tracing::warn!(subnet = %self.held.lease.key.cidr(), "restoring our lease failed: {e}");
                OwnAction::Lost
            }
        }
    }

    /// Acquires a lease again after a loss, preferring the subnet we had.
    pub async fn reacquire(&mut self) -> Result<Reacquired, RegistryError> {
        let old = self.held.lease.key;
        tracing::warn!(subnet = %old.cidr(), "our lease was deleted or taken over; re-acquiring");
        self.req.preferred = Some(old);
        let again = acquire(&self.store, &self.clock, &self.req).await?;
        let new = again.lease.key;
        self.counters.reacquired();
        self.hold(again);
        Ok(if new == old {
            tracing::info!(subnet = %new.cidr(), "re-acquired our subnet");
            Reacquired::Same
        } else {
            tracing::error!(
                old = %old.cidr(), new = %new.cidr(),
                "our subnet was taken by another host; moved to a new one (pods on the old subnet must be recreated)"
            );
            Reacquired::Moved { old, new }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::lease::{Lease, LeaseAttrs, SubnetKey};

    fn lease(ip: &str, etcd_lease: i64, rev: i64) -> Lease {
        Lease {
            key: SubnetKey::parse("10.5.1.0-24").unwrap(),
            attrs: LeaseAttrs::with_public_ip(ip.parse().unwrap()),
            etcd_lease,
            mod_revision: rev,
        }
    }

    #[test]
    fn renews_margin_before_expiry_or_at_half_life() {
        let day = Duration::from_secs(86400);
        assert_eq!(
            renew_delay(day, Duration::from_secs(3600)),
            Duration::from_secs(82800)
        );
        assert_eq!(
            renew_delay(Duration::from_secs(6), Duration::from_secs(3600)),
            Duration::from_secs(3)
        );
        assert_eq!(renew_retry(day), Duration::from_secs(60));
        assert_eq!(
            renew_retry(Duration::from_secs(4)),
            Duration::from_millis(500)
        );
    }

    fn written(l: Lease, create_revision: i64) -> OwnChange {
        OwnChange::Written {
            mod_revision: l.mod_revision,
            lease: Some(l),
            create_revision,
        }
    }

    /// The decision table of `judge_own_change`, row by row.
    #[test]
    fn stray_writes_are_restored_and_genuine_losses_moved_from() {
        let held = HeldLease {
            lease: lease("192.0.2.1", 5, 10),
            ttl: Some(Duration::from_secs(60)),
            create_revision: 7,
        };
        // Overwritten in place (same create revision) with another PublicIP, no etcd lease.
        assert_eq!(
            judge_own_change(&held, &written(lease("192.0.2.9", 0, 12), 7)),
            OwnVerdict::Restore(12)
        );
        // Overwritten in place with garbage.
        let garbage = OwnChange::Written {
            lease: None,
            mod_revision: 13,
            create_revision: 7,
        };
        assert_eq!(judge_own_change(&held, &garbage), OwnVerdict::Restore(13));
        // Deleted (or expired), then created anew by another host.
        assert_eq!(
            judge_own_change(&held, &OwnChange::Deleted { revision: 11 }),
            OwnVerdict::Lost
        );
        assert_eq!(
            judge_own_change(&held, &written(lease("192.0.2.9", 8, 12), 12)),
            OwnVerdict::Lost
        );
        // Expired, and an operator's reservation written afterwards (no etcd lease).
        assert_eq!(
            judge_own_change(&held, &written(lease("192.0.2.1", 0, 14), 14)),
            OwnVerdict::Lost
        );
        // A reservation of ours edited in place: the operator decides.
        let reserved = HeldLease {
            lease: lease("192.0.2.1", 0, 10),
            ttl: None,
            create_revision: 7,
        };
        assert_eq!(
            judge_own_change(&reserved, &written(lease("192.0.2.9", 0, 12), 7)),
            OwnVerdict::Lost
        );
        // Without a known create revision, a foreign write is a loss (the old rule).
        let unknown = HeldLease {
            create_revision: 0,
            ..held.clone()
        };
        assert_eq!(
            judge_own_change(&unknown, &written(lease("192.0.2.9", 0, 12), 0)),
            OwnVerdict::Lost
        );
    }

    #[test]
    fn own_key_changes() {
        let held = HeldLease {
            lease: lease("192.0.2.1", 5, 10),
            ttl: Some(Duration::from_secs(60)),
            create_revision: 3,
        };
        assert_eq!(
            judge_own_change(&held, &OwnChange::Deleted { revision: 11 }),
            OwnVerdict::Lost
        );
        assert_eq!(
            judge_own_change(&held, &OwnChange::Deleted { revision: 9 }),
            OwnVerdict::Ignore
        );
        assert_eq!(
            judge_own_change(&held, &written(lease("192.0.2.1", 5, 10), 3)),
            OwnVerdict::Ignore
        );
        assert_eq!(
            judge_own_change(&held, &written(lease("192.0.2.1", 5, 12), 3)),
            OwnVerdict::Adopt(12)
        );
        assert_eq!(
            judge_own_change(&held, &written(lease("192.0.2.9", 6, 12), 4)),
            OwnVerdict::Lost
        );
    }

    mod keeper {
        use std::collections::VecDeque;
        use std::sync::{Arc, Mutex};

        use super::*;
        use crate::subnet::clock::FakeClock;
        use crate::subnet::net::SubnetRange;

        /// A scripted registry that records when (on the virtual clock) it was asked what.
        #[derive(Clone)]
        struct FakeStore(Arc<Mutex<Script>>, FakeClock);

        #[derive(Default)]
        struct Script {
            renewals: VecDeque<Result<Renewal, RegistryError>>,
            acquisitions: VecDeque<Result<HeldLease, RegistryError>>,
            restores: VecDeque<Result<Option<HeldLease>, RegistryError>>,
            /// (virtual seconds, call, preferred subnet for acquisitions).
            calls: Vec<(f64, &'static str, Option<SubnetKey>)>,
        }

        impl LeaseStore for FakeStore {
            async fn acquire(&self, req: &AcquireRequest) -> Result<HeldLease, RegistryError> {
                let mut s = self.0.lock().unwrap();
                s.calls
                    .push((self.1.elapsed().as_secs_f64(), "acquire", req.preferred));
                s.acquisitions.pop_front().expect("an unscripted acquire")
            }

            async fn renew(&self, _held: &HeldLease) -> Result<Renewal, RegistryError> {
                let mut s = self.0.lock().unwrap();
                s.calls
                    .push((self.1.elapsed().as_secs_f64(), "renew", None));
                s.renewals.pop_front().expect("an unscripted renew")
            }

            async fn restore(
                &self,
                _held: &HeldLease,
                _theirs: i64,
            ) -> Result<Option<HeldLease>, RegistryError> {
                let mut s = self.0.lock().unwrap();
                s.calls
                    .push((self.1.elapsed().as_secs_f64(), "restore", None));
                s.restores.pop_front().expect("an unscripted restore")
            }
        }

        const TTL: Duration = Duration::from_secs(60);
        const MARGIN: Duration = Duration::from_secs(10);

        fn held(subnet: &str, rev: i64) -> HeldLease {
            let mut l = lease("192.0.2.1", 5, rev);
            l.key = SubnetKey::parse(subnet).unwrap();
            HeldLease {
                lease: l,
                ttl: Some(TTL),
                create_revision: 1,
            }
        }

        fn unreachable() -> RegistryError {
            RegistryError::Etcd {
                op: "renew",
                source: etcd_client::Error::InvalidArgs("etcd is down".into()),
            }
        }

        fn keeper() -> (Keeper<FakeStore, FakeClock>, FakeStore, FakeClock) {
            let clock = FakeClock::new();
            let store = FakeStore(Arc::default(), clock.clone());
            let req = AcquireRequest {
                attrs: held("10.5.1.0-24", 1).lease.attrs,
                ipv4: SubnetRange {
                    network: "10.5.0.0/16".parse().unwrap(),
                    subnet_len: 24,
                    min: "10.5.1.0".parse().unwrap(),
                    max: "10.5.255.0".parse().unwrap(),
                },
                ipv6: None,
                preferred: None,
            };
            let k = Keeper::new(
                store.clone(),
                clock.clone(),
                held("10.5.1.0-24", 1),
                req,
                MARGIN,
            );
            (k, store, clock)
        }

        fn calls(store: &FakeStore) -> Vec<(f64, &'static str, Option<SubnetKey>)> {
            store.0.lock().unwrap().calls.clone()
        }

        #[tokio::test]
        async fn renews_before_expiry_and_retries_a_failed_renewal_in_time() {
            let (mut k, store, _clock) = keeper();
            {
                let mut s = store.0.lock().unwrap();
                s.renewals
                    .push_back(Ok(Renewal::Renewed(held("10.5.1.0-24", 2))));
                s.renewals.push_back(Err(unreachable()));
                s.renewals
                    .push_back(Ok(Renewal::Renewed(held("10.5.1.0-24", 3))));
            }
            for _ in 0..3 {
                k.renewal_due().await;
                assert!(!k.renew().await, "not lost");
            }
            let times: Vec<f64> = calls(&store).iter().map(|c| c.0).collect();
            // Margin before expiry; then, after a failure, an eighth of the TTL later.
            assert_eq!(times, vec![50.0, 100.0, 107.5]);
            let mut expires = TTL.as_secs_f64();
            for (t, ok) in times.iter().zip([true, false, true]) {
                assert!(*t < expires, "renewed at {t}s, after expiry at {expires}s");
                if ok {
                    expires = t + TTL.as_secs_f64();
                }
            }
            assert_eq!(k.held().lease.mod_revision, 3);
        }

        #[tokio::test]
        async fn a_lost_renewal_reacquires_preferring_our_subnet() {
            let (mut k, store, clock) = keeper();
            {
                let mut s = store.0.lock().unwrap();
                s.renewals.push_back(Ok(Renewal::Lost));
                s.acquisitions.push_back(Err(unreachable()));
                s.acquisitions.push_back(Ok(held("10.5.1.0-24", 9)));
            }
            k.renewal_due().await;
            assert!(k.renew().await, "lost");
            assert_eq!(k.reacquire().await.unwrap(), Reacquired::Same);
            let own = SubnetKey::parse("10.5.1.0-24").unwrap();
            assert_eq!(
                calls(&store),
                vec![
                    (50.0, "renew", None),
                    (50.0, "acquire", Some(own)),
                    (50.1, "acquire", Some(own)),
                ]
            );
            assert_eq!(k.held().lease.mod_revision, 9);
            // The new lease is renewed on its own schedule.
            assert_eq!(k.renew_at(), Some(clock.now() + TTL - MARGIN));
        }

        #[tokio::test]
        async fn a_key_taken_by_another_host_moves_us_and_a_rewrite_of_ours_is_adopted() {
            let (mut k, store, _clock) = keeper();
            // Someone rewrote our key with our exact value: still ours.
            let mut same = held("10.5.1.0-24", 4).lease;
            same.etcd_lease = k.held().lease.etcd_lease;
            assert_eq!(k.own_changed(&written(same, 1)).await, OwnAction::Keep);
            assert_eq!(k.held().lease.mod_revision, 4);
            // Old news is ignored.
            assert_eq!(
                k.own_changed(&OwnChange::Deleted { revision: 3 }).await,
                OwnAction::Keep
            );
            // Another host created it anew (after it was gone).
            let mut theirs = held("10.5.1.0-24", 6).lease;
            theirs.attrs.public_ip = "192.0.2.9".parse().unwrap();
            assert_eq!(k.own_changed(&written(theirs, 6)).await, OwnAction::Lost);
            store
                .0
                .lock()
                .unwrap()
                .acquisitions
                .push_back(Ok(held("10.5.7.0-24", 7)));
            assert_eq!(
                k.reacquire().await.unwrap(),
                Reacquired::Moved {
                    old: SubnetKey::parse("10.5.1.0-24").unwrap(),
                    new: SubnetKey::parse("10.5.7.0-24").unwrap(),
                }
            );
            assert_eq!(k.held().lease.key, SubnetKey::parse("10.5.7.0-24").unwrap());
        }

        #[tokio::test]
        async fn a_stray_write_over_our_live_key_is_written_back() {
            let (mut k, store, clock) = keeper();
            let mut stray = held("10.5.1.0-24", 5).lease;
            stray.attrs.public_ip = "192.0.2.9".parse().unwrap();
            stray.etcd_lease = 0;
            store
                .0
                .lock()
                .unwrap()
                .restores
                .push_back(Ok(Some(held("10.5.1.0-24", 6))));
            assert_eq!(
                k.own_changed(&written(stray.clone(), 1)).await,
                OwnAction::Restored
            );
            assert_eq!(calls(&store), vec![(0.0, "restore", None)]);
            assert_eq!(
                k.held().lease.mod_revision,
                6,
                "holds the restored revision"
            );
            assert_eq!(k.renew_at(), Some(clock.now() + TTL - MARGIN));
            // A restore that loses the race waits for the next report; one that fails
            // gives the lease up to re-acquisition.
            stray.mod_revision = 7;
            store.0.lock().unwrap().restores.push_back(Ok(None));
            assert_eq!(
                k.own_changed(&written(stray.clone(), 1)).await,
                OwnAction::Keep
            );
            stray.mod_revision = 8;
            store
                .0
                .lock()
                .unwrap()
                .restores
                .push_back(Err(unreachable()));
            assert_eq!(k.own_changed(&written(stray, 1)).await, OwnAction::Lost);
        }

        #[tokio::test]
        async fn running_out_of_subnets_is_final() {
            let (mut k, store, clock) = keeper();
            store
                .0
                .lock()
                .unwrap()
                .acquisitions
                .push_back(Err(RegistryError::OutOfSubnets(255)));
            assert!(matches!(
                k.reacquire().await,
                Err(RegistryError::OutOfSubnets(255))
            ));
            assert_eq!(calls(&store).len(), 1);
            assert_eq!(clock.elapsed(), Duration::ZERO);
        }
    }
}
