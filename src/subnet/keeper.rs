//! Decisions of the lease keeper (pure): when to renew, and what a change to
//! our own key in etcd means.

use std::time::Duration;

use super::lease::Lease;
use super::watch::OwnChange;

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
    /// The key is gone or belongs to someone else now: re-acquire.
    Lost,
}

/// Judges `change` against the lease we hold.
pub fn judge_own_change(held: &Lease, change: &OwnChange) -> OwnVerdict {
    match change {
        OwnChange::Deleted { revision } if *revision > held.mod_revision => OwnVerdict::Lost,
        OwnChange::Deleted { .. } => OwnVerdict::Ignore,
        OwnChange::Written(l) if l.mod_revision <= held.mod_revision => OwnVerdict::Ignore,
        OwnChange::Written(l) if l.attrs == held.attrs && l.etcd_lease == held.etcd_lease => {
            OwnVerdict::Adopt(l.mod_revision)
        }
        OwnChange::Written(_) => OwnVerdict::Lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::lease::{LeaseAttrs, SubnetKey};

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

    #[test]
    fn own_key_changes() {
        let held = lease("192.0.2.1", 5, 10);
        assert_eq!(
            judge_own_change(&held, &OwnChange::Deleted { revision: 11 }),
            OwnVerdict::Lost
        );
        assert_eq!(
            judge_own_change(&held, &OwnChange::Deleted { revision: 9 }),
            OwnVerdict::Ignore
        );
        assert_eq!(
            judge_own_change(&held, &OwnChange::Written(lease("192.0.2.1", 5, 10))),
            OwnVerdict::Ignore
        );
        assert_eq!(
            judge_own_change(&held, &OwnChange::Written(lease("192.0.2.1", 5, 12))),
            OwnVerdict::Adopt(12)
        );
        assert_eq!(
            judge_own_change(&held, &OwnChange::Written(lease("192.0.2.9", 6, 12))),
            OwnVerdict::Lost
        );
    }
}
