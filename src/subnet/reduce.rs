//! The lease reducer: etcd listings and watch events in, [`LeaseEvent`]s
//! about other hosts out. Pure, so that every resync and race is unit-testable.
//!
//! It keeps the last known lease of every other host, so that:
//! - a re-list after a compaction or a broken watch is diffed against what the
//!   backend already knows: nothing is lost and nothing is announced twice;
//! - a removal carries the removed lease's attributes (backends need them);
//! - a renewal (same attributes, new revision) is not an event at all.
//!
//! Events about this host's own key are reported separately as [`OwnChange`],
//! for the lease keeper (a deleted own key must be re-acquired).

use std::collections::{BTreeMap, HashSet};

use super::lease::{Lease, LeaseAttrs, LeaseEvent, SubnetKey};

/// One key change as etcd reports it (already stripped of transport types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    Put {
        key: String,
        value: Vec<u8>,
        etcd_lease: i64,
        mod_revision: i64,
        /// The revision that created the key: the same for every write until the key is
        /// deleted (or expires) and is created anew.
        create_revision: i64,
    },
    Delete {
        key: String,
        mod_revision: i64,
    },
}

/// What happened to this host's own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnChange {
    /// The key was written (by us renewing, or by someone else). `lease` is `None` when
    /// the value written is not a lease.
    Written {
        lease: Option<Lease>,
        mod_revision: i64,
        /// The key's create revision: unchanged by a write over the live key.
        create_revision: i64,
    },
    /// The key is gone (deleted by someone, or expired), as of `revision`.
    Deleted { revision: i64 },
}

/// The reducer's output for one input.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<LeaseEvent>,
    pub own: Option<OwnChange>,
}

/// Parses one etcd key/value into a lease. `Ok(None)` for keys that are not
/// subnet keys at all (ignored, as upstream does).
pub fn parse_kv(
    key: &str,
    value: &[u8],
    etcd_lease: i64,
    mod_revision: i64,
) -> Result<Option<Lease>, String> {
    let Ok(subnet) = SubnetKey::parse(key) else {
        return Ok(None);
    };
    let text =
        std::str::from_utf8(value).map_err(|_| format!("lease {key}: value is not UTF-8"))?;
    let attrs = LeaseAttrs::from_json(text).map_err(|e| format!("lease {key}: {e}"))?;
    Ok(Some(Lease {
        key: subnet,
        attrs,
        etcd_lease,
        mod_revision,
    }))
}

/// The set of other hosts' leases as the backend knows it.
#[derive(Debug, Default)]
pub struct LeaseSet {
    own: Option<SubnetKey>,
    others: BTreeMap<SubnetKey, Lease>,
    /// `(key, mod_revision)` of malformed values already logged, so each bad
    /// value is logged once however often it is re-listed.
    logged: HashSet<(String, i64)>,
}

impl LeaseSet {
    pub fn new(own: Option<SubnetKey>) -> Self {
        LeaseSet {
            own,
            ..Default::default()
        }
    }

    /// The leases of other hosts currently known.
    pub fn others(&self) -> impl Iterator<Item = &Lease> {
        self.others.values()
    }

    /// Changes which key is ours (after a re-acquisition). A host now holding
    /// our old subnet, or our new key's previous holder, is announced properly.
    pub fn set_own(&mut self, own: Option<SubnetKey>) -> Vec<LeaseEvent> {
        let mut events = Vec::new();
        if let Some(new) = own {
            if let Some(l) = self.others.remove(&new) {
                events.push(LeaseEvent::Removed(l));
            }
        }
        self.own = own;
        events
    }

    /// Replaces everything with a full listing and returns the difference.
    /// `raw` holds every key under the subnets prefix, as `RawEvent::Put`s.
    /// `revision` is the listing's etcd revision.
    pub fn resync(&mut self, raw: Vec<RawEvent>, revision: i64) -> Outcome {
        let mut fresh = BTreeMap::new();
        let mut own_seen = None;
        for ev in raw {
            if let RawEvent::Put {
                key,
                value,
                etcd_lease,
                mod_revision,
                create_revision,
            } = ev
            {
                let lease = self.parse_logged(&key, &value, etcd_lease, mod_revision);
                if self.own.is_some() && SubnetKey::parse(&key).ok() == self.own {
                    own_seen = Some(OwnChange::Written {
                        lease,
                        mod_revision,
                        create_revision,
                    });
                } else if let Some(lease) = lease {
                    fresh.insert(lease.key, lease);
                }
            }
        }
        let mut out = Outcome::default();
        for (key, old) in &self.others {
            if !fresh.contains_key(key) {
                out.events.push(LeaseEvent::Removed(old.clone()));
            }
        }
        for (key, new) in &fresh {
            match self.others.get(key) {
                Some(old) if old.attrs == new.attrs => {}
                _ => out.events.push(LeaseEvent::Added(new.clone())),
            }
        }
        self.others = fresh;
        if self.own.is_some() {
            out.own = Some(own_seen.unwrap_or(OwnChange::Deleted { revision }));
        }
        out
    }

    /// Whether `new`, written over another host's live lease `old`, is a write no flanneld
    /// makes: it detaches the key from its etcd lease (a flanneld renews its own key with a TTL)
    /// and changes the public IP (a flanneld never rewrites another host's key). The stray
    /// `etcdctl put` the owner undoes at once (`keeper::judge_own_change`); following it meanwhile
    /// would send this host's traffic for that subnet nowhere. A re-list (resync) takes the
    /// listing as it is, so a write that stays is followed then.
    fn is_stray(old: &Lease, new: &Lease) -> bool {
        old.etcd_lease != 0 && new.etcd_lease == 0 && old.attrs.public_ip != new.attrs.public_ip
    }

    /// Applies watch events in order.
    pub fn apply(&mut self, raw: Vec<RawEvent>) -> Outcome {
        let mut out = Outcome::default();
        for ev in raw {
            let (key, lease, revision, created) = match ev {
                RawEvent::Put {
                    key,
                    value,
                    etcd_lease,
                    mod_revision,
                    create_revision,
                } => {
                    let lease = self.parse_logged(&key, &value, etcd_lease, mod_revision);
                    (key, lease, mod_revision, Some(create_revision))
                }
                RawEvent::Delete { key, mod_revision } => (key, None, mod_revision, None),
            };
            let Ok(subnet) = SubnetKey::parse(&key) else {
                continue;
            };
            if Some(subnet) == self.own {
                out.own = Some(match created {
                    Some(create_revision) => OwnChange::Written {
                        lease,
                        mod_revision: revision,
                        create_revision,
                    },
                    None => OwnChange::Deleted { revision },
                });
                continue;
            }
            match lease {
                Some(new) => {
                    if self
                        .others
                        .get(&subnet)
                        .is_some_and(|old| Self::is_stray(old, &new))
                    {
                        tracing::warn!(
                            subnet = %subnet.cidr(), value = %new.attrs.to_json(),
                            "not following a stray write over another host's live lease (its owner writes its value back)"
                        );
                        continue;
                    }
                    let changed = self
                        .others
                        .get(&subnet)
                        .is_none_or(|old| old.attrs != new.attrs);
                    if changed {
                        out.events.push(LeaseEvent::Added(new.clone()));
                    }
                    self.others.insert(subnet, new);
                }
                // A delete, or a value overwritten by garbage: the host is gone.
                None => {
                    if let Some(old) = self.others.remove(&subnet) {
                        out.events.push(LeaseEvent::Removed(old));
                    }
                }
            }
        }
        out
    }

    fn parse_logged(
        &mut self,
        key: &str,
        value: &[u8],
        etcd_lease: i64,
        mod_revision: i64,
    ) -> Option<Lease> {
        match parse_kv(key, value, etcd_lease, mod_revision) {
            Ok(lease) => lease,
            Err(e) => {
                if self.logged.insert((key.to_owned(), mod_revision)) {
                    tracing::warn!("skipping malformed lease: {e}");
                }
                None
            }
        }
    }
}

/// Watch events for the reducer's and the watcher's unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::RawEvent;

    pub const P: &str = "/coreos.com/network/subnets/";

    /// A lease of `subnet` for `ip` written at revision `rev`.
    pub fn put(subnet: &str, ip: &str, rev: i64) -> RawEvent {
        RawEvent::Put {
            key: format!("{P}{subnet}"),
            value: format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null}}"#).into_bytes(),
            etcd_lease: 7,
            mod_revision: rev,
            create_revision: 2,
        }
    }

    /// `subnet`'s key deleted at revision `rev`.
    pub fn del(subnet: &str, rev: i64) -> RawEvent {
        RawEvent::Delete {
            key: format!("{P}{subnet}"),
            mod_revision: rev,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn subnets(events: &[LeaseEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                LeaseEvent::Added(l) => format!("+{}", l.key),
                LeaseEvent::Removed(l) => format!("-{}", l.key),
            })
            .collect()
    }

    fn own() -> Option<SubnetKey> {
        Some(SubnetKey::parse("10.5.1.0-24").unwrap())
    }

    #[test]
    fn snapshot_then_events_filter_our_own_lease() {
        let mut set = LeaseSet::new(own());
        let out = set.resync(
            vec![
                put("10.5.1.0-24", "1.1.1.1", 2),
                put("10.5.2.0-24", "2.2.2.2", 3),
            ],
            3,
        );
        assert_eq!(subnets(&out.events), ["+10.5.2.0-24"]);
        assert!(matches!(
            out.own,
            Some(OwnChange::Written { lease: Some(_), .. })
        ));
        let out = set.apply(vec![
            put("10.5.3.0-24", "3.3.3.3", 4),
            del("10.5.2.0-24", 5),
        ]);
        assert_eq!(subnets(&out.events), ["+10.5.3.0-24", "-10.5.2.0-24"]);
        assert_eq!(out.own, None);
    }

    /// A stray `etcdctl put` over another host's live lease (no etcd lease, another public
    /// IP) is not followed; the owner's restore then changes nothing; a re-list takes what
    /// etcd holds.
    #[test]
    fn a_stray_write_over_another_hosts_live_lease_is_not_followed() {
        let mut set = LeaseSet::new(own());
        set.apply(vec![put("10.5.2.0-24", "2.2.2.2", 3)]);
        let stray = RawEvent::Put {
            key: format!("{P}10.5.2.0-24"),
            value: br#"{"PublicIP":"192.0.2.99","PublicIPv6":null}"#.to_vec(),
            etcd_lease: 0,
            mod_revision: 4,
            create_revision: 2,
        };
        assert!(set.apply(vec![stray.clone()]).events.is_empty());
        // The owner writes its value back: nothing changed.
        assert!(set
            .apply(vec![put("10.5.2.0-24", "2.2.2.2", 5)])
            .events
            .is_empty());
        // A real change (the owner's own write, with a lease) is followed at once.
        let out = set.apply(vec![put("10.5.2.0-24", "2.2.2.7", 6)]);
        assert_eq!(subnets(&out.events), ["+10.5.2.0-24"]);
        // A stray value that stays is taken by the next re-list.
        set.apply(vec![stray.clone()]);
        let out = set.resync(vec![stray], 7);
        match &out.events[..] {
            [LeaseEvent::Added(l)] => assert_eq!(l.attrs.public_ip.to_string(), "192.0.2.99"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn removal_carries_the_last_known_attributes() {
        let mut set = LeaseSet::new(None);
        set.apply(vec![put("10.5.2.0-24", "2.2.2.2", 3)]);
        let out = set.apply(vec![del("10.5.2.0-24", 4)]);
        match &out.events[..] {
            [LeaseEvent::Removed(l)] => assert_eq!(l.attrs.public_ip.to_string(), "2.2.2.2"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renewals_are_not_events_but_attribute_changes_are() {
        let mut set = LeaseSet::new(None);
        set.apply(vec![put("10.5.2.0-24", "2.2.2.2", 3)]);
        assert!(set
            .apply(vec![put("10.5.2.0-24", "2.2.2.2", 9)])
            .events
            .is_empty());
        assert_eq!(
            subnets(&set.apply(vec![put("10.5.2.0-24", "2.2.2.9", 10)]).events),
            ["+10.5.2.0-24"]
        );
    }

    #[test]
    fn resync_diffs_without_duplicates_or_losses() {
        let mut set = LeaseSet::new(own());
        set.resync(
            vec![
                put("10.5.2.0-24", "2.2.2.2", 3),
                put("10.5.3.0-24", "3.3.3.3", 4),
            ],
            4,
        );
        // While the watch was broken: .3 left, .4 joined, .2 renewed.
        let out = set.resync(
            vec![
                put("10.5.2.0-24", "2.2.2.2", 8),
                put("10.5.4.0-24", "4.4.4.4", 9),
            ],
            9,
        );
        assert_eq!(subnets(&out.events), ["-10.5.3.0-24", "+10.5.4.0-24"]);
        assert_eq!(
            out.own,
            Some(OwnChange::Deleted { revision: 9 }),
            "own key absent from the listing"
        );
        assert_eq!(set.others().count(), 2);
    }

    #[test]
    fn own_key_deletion_is_reported_to_the_keeper() {
        let mut set = LeaseSet::new(own());
        let out = set.apply(vec![del("10.5.1.0-24", 5)]);
        assert_eq!(out.own, Some(OwnChange::Deleted { revision: 5 }));
        assert!(out.events.is_empty());
    }

    #[test]
    fn malformed_values_and_foreign_keys_are_skipped() {
        let mut set = LeaseSet::new(None);
        let garbage = RawEvent::Put {
            key: format!("{P}10.5.9.0-24"),
            value: b"{not json".to_vec(),
            etcd_lease: 0,
            mod_revision: 3,
            create_revision: 3,
        };
        let foreign = RawEvent::Put {
            key: format!("{P}whatever"),
            value: b"x".to_vec(),
            etcd_lease: 0,
            mod_revision: 4,
            create_revision: 4,
        };
        let out = set.resync(
            vec![garbage.clone(), foreign, put("10.5.2.0-24", "2.2.2.2", 5)],
            5,
        );
        assert_eq!(subnets(&out.events), ["+10.5.2.0-24"]);
        // A good lease overwritten with garbage is a removal.
        let bad = RawEvent::Put {
            key: format!("{P}10.5.2.0-24"),
            value: vec![0xff],
            etcd_lease: 0,
            mod_revision: 6,
            create_revision: 6,
        };
        assert_eq!(subnets(&set.apply(vec![bad]).events), ["-10.5.2.0-24"]);
        assert!(set
            .resync(vec![garbage], 7)
            .events
            .iter()
            .all(|e| matches!(e, LeaseEvent::Removed(_))));
    }

    #[test]
    fn set_own_hides_the_new_own_key() {
        let mut set = LeaseSet::new(None);
        set.apply(vec![put("10.5.1.0-24", "1.1.1.1", 3)]);
        assert_eq!(subnets(&set.set_own(own())), ["-10.5.1.0-24"]);
        assert_eq!(set.others().count(), 0);
    }
}
