//! The lease watcher task: list every lease, then watch from the listing's
//! revision + 1; on a compaction or a broken stream, re-list and diff (the
//! [`LeaseSet`] reducer makes sure nothing is lost or announced twice). Its
//! messages go to the daemon, which feeds them to the backend and the keeper.
//!
//! The task reaches etcd through [`LeaseSource`] (the [`Registry`] in the
//! daemon, a fake in unit tests) and time through [`Clock`].

use std::future::Future;

use tokio::sync::{mpsc, watch};

use super::clock::{Backoff, Clock};
use super::lease::{LeaseEvent, SubnetKey};
use super::reduce::{LeaseSet, OwnChange, RawEvent};
use super::registry::{raw_events, Registry, RegistryError};
use crate::cancel::CancelToken;

/// A message from the watcher task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchMsg {
    pub events: Vec<LeaseEvent>,
    pub own: Option<OwnChange>,
    /// The events come from a full re-list: afterwards the backend knows every host.
    pub resync: bool,
}

/// One item of a lease watch, stripped of transport types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    Events(Vec<RawEvent>),
    /// etcd cancelled the watch (a compaction, say): re-list.
    Cancelled {
        compact_revision: i64,
        reason: String,
    },
    /// The stream ended.
    Closed,
    /// The stream broke (etcd went away).
    Broken(String),
}

/// An open lease watch.
pub trait LeaseWatch: Send {
    fn next(&mut self) -> impl Future<Output = WatchItem> + Send;
}

/// What the watcher needs of the registry.
pub trait LeaseSource: Send + Sync + 'static {
    type Watch: LeaseWatch;

    /// Every lease key, and the revision of the listing.
    fn list(&self) -> impl Future<Output = Result<(Vec<RawEvent>, i64), RegistryError>> + Send;

    /// A watch on every lease key from `revision` on.
    fn watch_from(
        &self,
        revision: i64,
    ) -> impl Future<Output = Result<Self::Watch, RegistryError>> + Send;
}

impl LeaseWatch for etcd_client::WatchStream {
    async fn next(&mut self) -> WatchItem {
        match self.message().await {
            Ok(Some(resp)) if resp.compact_revision() > 0 || resp.canceled() => {
                WatchItem::Cancelled {
                    compact_revision: resp.compact_revision(),
                    reason: resp.cancel_reason().to_owned(),
                }
            }
            Ok(Some(resp)) => WatchItem::Events(raw_events(&resp)),
            Ok(None) => WatchItem::Closed,
            Err(e) => WatchItem::Broken(e.to_string()),
        }
    }
}

impl LeaseSource for Registry {
    type Watch = etcd_client::WatchStream;

    fn list(&self) -> impl Future<Output = Result<(Vec<RawEvent>, i64), RegistryError>> + Send {
        self.list_raw()
    }

    fn watch_from(
        &self,
        revision: i64,
    ) -> impl Future<Output = Result<Self::Watch, RegistryError>> + Send {
        Registry::watch_from(self, revision)
    }
}

/// Runs until `stop`, or until the receiver of `tx` or the sender of `own_rx`
/// goes away. `own_rx` carries this host's key (it changes when the keeper
/// had to move to another subnet).
pub async fn watch_leases<S: LeaseSource, C: Clock>(
    source: S,
    clock: C,
    mut own_rx: watch::Receiver<Option<SubnetKey>>,
    tx: mpsc::Sender<WatchMsg>,
    stop: CancelToken,
) {
    let mut set = LeaseSet::new(*own_rx.borrow_and_update());
    let mut backoff = Backoff::new();
    let mut outage = false;
    loop {
        let listed = async {
            let (raw, rev) = source.list().await?;
            let stream = source.watch_from(rev + 1).await?;
            Ok::<_, RegistryError>((raw, rev, stream))
        };
        let (raw, rev, mut stream) = match listed.await {
            Ok(v) => v,
            Err(e) => {
                let d = backoff.next_delay();
                if !outage {
                    // The registry's EtcdHealth logs the outage itself (once).
                    tracing::debug!(
                        "lease watch: etcd unreachable, retrying (backoff up to 5s): {e}"
                    );
                    outage = true;
                }
                tokio::select! { _ = clock.sleep(d) => continue, _ = stop.cancelled() => return }
            }
        };
        if outage {
            tracing::info!("lease watch: etcd is back; re-listed leases at revision {rev}");
            outage = false;
        }
        backoff = Backoff::new();
        let out = set.resync(raw, rev);
        let msg = WatchMsg {
            events: out.events,
            own: out.own,
            resync: true,
        };
        if tx.send(msg).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = own_rx.changed() => {
                    if changed.is_err() { return; }
                    let events = set.set_own(*own_rx.borrow_and_update());
                    if tx.send(WatchMsg { events, own: None, resync: false }).await.is_err() { return; }
                }
                item = stream.next() => match item {
                    WatchItem::Events(raw) => {
                        let out = set.apply(raw);
                        if (!out.events.is_empty() || out.own.is_some())
                            && tx.send(WatchMsg { events: out.events, own: out.own, resync: false }).await.is_err()
                        {
                            return;
                        }
                    }
                    WatchItem::Cancelled { compact_revision, reason } => {
                        tracing::info!(
                            compact_revision,
                            "lease watch cancelled (compaction?): {reason}; re-listing"
                        );
                        break;
                    }
                    WatchItem::Closed => {
                        tracing::warn!("lease watch stream closed; re-listing");
                        break;
                    }
                    WatchItem::Broken(e) => {
                        tracing::warn!("lease watch broke; re-listing: {e}");
                        outage = true;
                        break;
                    }
                },
            }
        }
        tokio::select! { _ = clock.sleep(backoff.next_delay()) => {}, _ = stop.cancelled() => return }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::cancel::cancel_pair;
    use crate::subnet::clock::FakeClock;
    use crate::subnet::reduce::fixtures::{del as delete, put};

    /// A scripted etcd: each `list` answers with the next listing, each
    /// `watch_from` opens the next stream script; a stream whose script is
    /// done stays open and quiet.
    #[derive(Clone, Default)]
    struct FakeSource(Arc<Mutex<Script>>);

    #[derive(Default)]
    struct Script {
        listings: VecDeque<Result<(Vec<RawEvent>, i64), RegistryError>>,
        streams: VecDeque<Vec<WatchItem>>,
        watched_from: Vec<i64>,
    }

    struct FakeWatch(VecDeque<WatchItem>);

    impl LeaseWatch for FakeWatch {
        async fn next(&mut self) -> WatchItem {
            match self.0.pop_front() {
                Some(item) => item,
                None => std::future::pending().await,
            }
        }
    }

    impl LeaseSource for FakeSource {
        type Watch = FakeWatch;

        async fn list(&self) -> Result<(Vec<RawEvent>, i64), RegistryError> {
            self.0
                .lock()
                .unwrap()
                .listings
                .pop_front()
                .expect("an unscripted listing")
        }

        async fn watch_from(&self, revision: i64) -> Result<FakeWatch, RegistryError> {
            let mut s = self.0.lock().unwrap();
            s.watched_from.push(revision);
            Ok(FakeWatch(s.streams.pop_front().unwrap_or_default().into()))
        }
    }

    const OWN: &str = "10.5.1.0-24";

    fn unreachable() -> RegistryError {
        RegistryError::Etcd {
            op: "list leases",
            source: etcd_client::Error::InvalidArgs("etcd is down".into()),
        }
    }

    /// (added, removed) subnets of one message, in order.
    fn subnets(msg: &WatchMsg) -> (Vec<String>, Vec<String>) {
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for ev in &msg.events {
            match ev {
                LeaseEvent::Added(l) => added.push(l.key.to_string()),
                LeaseEvent::Removed(l) => removed.push(l.key.to_string()),
            }
        }
        (added, removed)
    }

    /// Runs the watcher on `source` and returns the first `n` messages.
    async fn first_messages(source: FakeSource, clock: FakeClock, n: usize) -> Vec<WatchMsg> {
        let (stop_src, stop) = cancel_pair();
        let (_own_tx, own_rx) = watch::channel(Some(SubnetKey::parse(OWN).unwrap()));
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(watch_leases(source, clock, own_rx, tx, stop));
        let mut out = Vec::new();
        while out.len() < n {
            let msg = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("the watcher went quiet")
                .expect("the watcher stopped");
            out.push(msg);
        }
        stop_src.cancel();
        task.await.unwrap();
        out
    }

    #[tokio::test]
    async fn lists_then_watches_then_relists_after_a_broken_watch() {
        let source = FakeSource::default();
        {
            let mut s = source.0.lock().unwrap();
            s.listings.push_back(Ok((
                vec![put(OWN, "192.0.2.1", 3), put("10.5.2.0-24", "192.0.2.2", 4)],
                10,
            )));
            // During the outage host 2 left and host 4 joined.
            s.listings.push_back(Ok((
                vec![
                    put(OWN, "192.0.2.1", 3),
                    put("10.5.3.0-24", "192.0.2.3", 11),
                    put("10.5.4.0-24", "192.0.2.4", 15),
                ],
                20,
            )));
            s.streams.push_back(vec![
                WatchItem::Events(vec![put("10.5.3.0-24", "192.0.2.3", 11)]),
                WatchItem::Broken("connection reset".into()),
            ]);
        }
        let clock = FakeClock::new();
        let msgs = first_messages(source.clone(), clock.clone(), 3).await;

        assert!(msgs[0].resync);
        assert_eq!(subnets(&msgs[0]), (vec!["10.5.2.0-24".into()], vec![]));
        assert!(!msgs[1].resync);
        assert_eq!(subnets(&msgs[1]), (vec!["10.5.3.0-24".into()], vec![]));
        // The re-list announces only the difference: host 3 is not added twice.
        assert!(msgs[2].resync);
        assert_eq!(
            subnets(&msgs[2]),
            (vec!["10.5.4.0-24".into()], vec!["10.5.2.0-24".into()])
        );
        // Each watch starts right after its listing; the re-list waited a backoff step.
        assert_eq!(source.0.lock().unwrap().watched_from, vec![11, 21]);
        assert_eq!(clock.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn an_unreachable_etcd_is_retried_with_growing_backoff() {
        let source = FakeSource::default();
        {
            let mut s = source.0.lock().unwrap();
            s.listings.push_back(Err(unreachable()));
            s.listings.push_back(Err(unreachable()));
            s.listings.push_back(Err(unreachable()));
            s.listings
                .push_back(Ok((vec![put("10.5.2.0-24", "192.0.2.2", 4)], 9)));
        }
        let clock = FakeClock::new();
        let msgs = first_messages(source.clone(), clock.clone(), 1).await;
        assert!(msgs[0].resync);
        assert_eq!(subnets(&msgs[0]), (vec!["10.5.2.0-24".into()], vec![]));
        assert_eq!(clock.elapsed(), Duration::from_millis(100 + 200 + 400));
        assert_eq!(source.0.lock().unwrap().watched_from, vec![10]);
    }

    #[tokio::test]
    async fn own_key_changes_are_reported_and_a_compaction_relists() {
        let source = FakeSource::default();
        {
            let mut s = source.0.lock().unwrap();
            let listing = vec![put(OWN, "192.0.2.1", 3), put("10.5.2.0-24", "192.0.2.2", 4)];
            s.listings.push_back(Ok((listing.clone(), 10)));
            s.listings.push_back(Ok((listing, 30)));
            s.streams.push_back(vec![
                WatchItem::Events(vec![delete(OWN, 12)]),
                // A renewal of host 2 (same attributes) is no event at all.
                WatchItem::Events(vec![put("10.5.2.0-24", "192.0.2.2", 13)]),
                WatchItem::Cancelled {
                    compact_revision: 25,
                    reason: "compacted".into(),
                },
            ]);
        }
        let msgs = first_messages(source.clone(), FakeClock::new(), 3).await;
        assert_eq!(
            msgs[1],
            WatchMsg {
                events: vec![],
                own: Some(OwnChange::Deleted { revision: 12 }),
                resync: false
            }
        );
        assert!(msgs[2].resync);
        assert!(msgs[2].events.is_empty(), "{:?}", msgs[2]);
        assert!(matches!(msgs[2].own, Some(OwnChange::Written { .. })));
        assert_eq!(source.0.lock().unwrap().watched_from, vec![11, 31]);
    }
}
