//! One running node's state as a JSON document: `GET /status` on the health server, read by
//! `flannelctl status`. The numbers are the ones `/metrics` exports (one source, two
//! encodings): Prometheus text for scrapers, this for an operator's command line.
//!
//! Pure serde types, shared ground: the daemon fills them in, `flannelctl` reads them.
//! Fields are only ever added (with `#[serde(default)]`), so an older `flannelctl` can read
//! a newer daemon's document and the other way round.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The path of the document on the health server.
pub const STATUS_PATH: &str = "/status";

/// Everything `flannelctl status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    /// The daemon's version: package version, commit and build tag (`0.1.0 (commit …, build dev)`).
    pub version: String,
    /// The backend type of the network config (`udp`, `vxlan`, ...); empty before the config
    /// is read.
    pub backend: String,
    /// Whether `/readyz` says ready (subnet.env written, backend started).
    pub ready: bool,
    /// Our lease, once held.
    pub lease: Option<LeaseStatus>,
    /// The other hosts' leases, as the watcher last saw them, sorted by subnet.
    pub peers: Vec<PeerStatus>,
    pub etcd: EtcdStatus,
    /// The udp backend's userspace datapath; `None` for kernel backends.
    pub datapath: Option<DatapathStatus>,
    /// The kernel backends' reconciler (vxlan, host-gw); `None` for the others.
    pub reconcile: Option<ReconcileStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseStatus {
    /// The IPv4 subnet, e.g. `10.5.34.0/24`.
    pub subnet: String,
    pub ipv6_subnet: Option<String>,
    pub public_ip: String,
    /// When the lease expires, Unix seconds; `None` for a reservation (no TTL).
    pub expires_unix: Option<u64>,
    pub renewals: u64,
    pub failed_renewals: u64,
    /// Times the lease was lost and taken again (same or another subnet).
    pub reacquisitions: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerStatus {
    pub subnet: String,
    pub ipv6_subnet: Option<String>,
    pub public_ip: String,
    pub backend_type: String,
    /// With `--metrics-per-peer` on the udp backend: what we forwarded to this peer.
    pub tx_packets: Option<u64>,
    pub tx_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EtcdStatus {
    /// Whether the last request to etcd succeeded.
    pub reachable: bool,
    /// Seconds since the last successful request; `None` before the first.
    pub seconds_since_contact: Option<f64>,
    /// Failed requests, by kind (`connect`, `get`, `put`, `watch`, ...).
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatapathStatus {
    /// The I/O path the workers run on (`io_uring`, `mmsg`).
    pub io: String,
    pub workers: usize,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Dropped packets, by reason (`no_route`, `unknown_peer`, ...); every reason is present.
    pub drops: BTreeMap<String, u64>,
    pub icmp_unreachable_sent: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconcileStatus {
    pub runs: u64,
    pub failures: u64,
    /// Repairs of drifted kernel state, by kind (`route`, `neighbour`, `fdb`, `link`).
    pub repairs: BTreeMap<String, u64>,
    /// How long the last run took, seconds.
    pub last_duration_seconds: f64,
    /// When the last run ended, Unix seconds; `None` before the first.
    pub last_unix: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_with_unknown_and_missing_fields_still_reads() {
        // A newer daemon adds fields, an older one lacks some: both read.
        let text = r#"{"version":"9.9.9","ready":true,"new_field":[1,2],
                       "lease":{"subnet":"10.5.1.0/24","public_ip":"192.0.2.1"}}"#;
        let status: NodeStatus = serde_json::from_str(text).unwrap();
        assert_eq!(status.version, "9.9.9");
        assert!(status.ready);
        let lease = status.lease.unwrap();
        assert_eq!(lease.subnet, "10.5.1.0/24");
        assert_eq!(lease.expires_unix, None);
        assert!(status.peers.is_empty());
        assert_eq!(status.datapath, None);
    }

    #[test]
    fn round_trips() {
        let mut status = NodeStatus {
            version: "0.1.0".into(),
            backend: "udp".into(),
            ..NodeStatus::default()
        };
        status.datapath = Some(DatapathStatus {
            io: "io_uring".into(),
            drops: BTreeMap::from([("no_route".into(), 3)]),
            ..DatapathStatus::default()
        });
        let text = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<NodeStatus>(&text).unwrap(), status);
    }
}
