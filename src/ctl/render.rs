//! Pure: what `flannelctl` prints. etcd keys become [`LeaseView`]s, the daemon's `/status`
//! document and a network config become text; every view is also the command's `-o json`
//! document (field names are part of the interface: only ever add fields).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::CtlError;
use crate::config::NetworkConfig;
use crate::status::{EtcdStatus, LeaseStatus, NodeStatus, PeerStatus, ReconcileStatus};
use crate::subnet::lease::SubnetKey;
use crate::subnet::net::SubnetRange;
use crate::subnet::reduce::parse_kv;
use crate::subnet::registry::StoredKey;

/// One lease or reservation, as `leases` and `lease` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseView {
    /// The IPv4 subnet, `10.5.34.0/24`.
    pub subnet: String,
    pub ipv6_subnet: Option<String>,
    /// The etcd key's last component, `10.5.34.0-24` (what upstream's tools show).
    pub key: String,
    pub public_ip: String,
    pub public_ipv6: Option<String>,
    /// `null` for udp and alloc, which upstream writes without a BackendType.
    pub backend_type: Option<String>,
    /// `BackendData` as the node wrote it (vxlan: `{"VNI":1,"VtepMAC":"…"}`).
    pub backend_data: Option<Value>,
    /// A key without an etcd lease: it never expires.
    pub reservation: bool,
    /// Seconds left on the etcd lease; `null` for a reservation or when etcd did not say.
    pub ttl_seconds: Option<u64>,
    /// The etcd lease ID in hex, as `etcdctl lease list` prints it; `null` for a reservation.
    pub etcd_lease_id: Option<String>,
}

/// A key under `subnets/` whose name or value flanneld cannot use: listed, never fatal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MalformedView {
    pub key: String,
    pub reservation: bool,
    pub error: String,
}

/// `leases -o json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeaseList {
    /// Sorted by subnet.
    pub leases: Vec<LeaseView>,
    pub malformed: Vec<MalformedView>,
}

/// Reads one stored key as flanneld does ([`parse_kv`]), with the time left on its etcd lease.
pub fn lease_view(stored: &StoredKey, ttl: Option<Duration>) -> Result<LeaseView, MalformedView> {
    let name = stored
        .key
        .rsplit('/')
        .next()
        .unwrap_or(&stored.key)
        .to_owned();
    let malformed = |error: String| MalformedView {
        key: name.clone(),
        reservation: stored.etcd_lease == 0,
        error,
    };
    let lease = match parse_kv(
        &stored.key,
        &stored.value,
        stored.etcd_lease,
        stored.mod_revision,
    ) {
        Ok(Some(lease)) => lease,
        Ok(None) => return Err(malformed("not a subnet key (flanneld ignores it)".into())),
        Err(e) => return Err(malformed(e)),
    };
    let attrs = &lease.attrs;
    Ok(LeaseView {
        subnet: lease.key.ipv4.to_string(),
        ipv6_subnet: lease.key.ipv6.map(|n| n.to_string()),
        key: lease.key.to_string(),
        public_ip: attrs.public_ip.to_string(),
        public_ipv6: attrs.public_ipv6.map(|a| a.to_string()),
        backend_type: attrs.backend_type.clone(),
        // RawJson holds validated JSON, so this parse cannot fail; a string is the fallback.
        backend_data: attrs.backend_data.as_ref().map(|raw| {
            serde_json::from_str(raw.get()).unwrap_or_else(|_| Value::String(raw.get().into()))
        }),
        reservation: lease.is_reservation(),
        ttl_seconds: ttl.map(|d| d.as_secs()),
        etcd_lease_id: (!lease.is_reservation()).then(|| format!("{:x}", lease.etcd_lease)),
    })
}

/// Sorts the keys of a listing into leases and malformed keys.
pub fn lease_list(keys: impl IntoIterator<Item = (StoredKey, Option<Duration>)>) -> LeaseList {
    let mut list = LeaseList::default();
    for (stored, ttl) in keys {
        match lease_view(&stored, ttl) {
            Ok(view) => list.leases.push(view),
            Err(bad) => list.malformed.push(bad),
        }
    }
    // etcd lists keys as strings ("10.5.10.0" before "10.5.2.0"): sort by address instead.
    list.leases
        .sort_by_key(|l| crate::ctl::args::parse_subnet(&l.key).ok());
    list
}

/// Whether a listed lease is the one the operator named (`10.5.34.0/24` also finds a
/// dual-stack `10.5.34.0-24&…` key).
pub fn names(wanted: &SubnetKey, key: &str) -> bool {
    SubnetKey::parse(key)
        .is_ok_and(|k| k.ipv4 == wanted.ipv4 && (wanted.ipv6.is_none() || k.ipv6 == wanted.ipv6))
}

/// An aligned table: columns two spaces apart, no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `name  value` lines, the names aligned (for one record).
fn pairs(items: &[(&str, String)]) -> String {
    let width = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    items
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// `23h59m`, `4m5s`, `42s`, `2d3h`: as long as the number is, precise enough to act on.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// Cuts long cells (backend data can be any JSON) to `max` characters.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Backend data in a table cell: an object's fields as `key=value` (so vxlan's VTEP MAC
/// reads `VtepMAC=c6:d2:…`), anything else as compact JSON.
pub fn backend_data_cell(data: Option<&Value>) -> String {
    let text = match data {
        None | Some(Value::Null) => return "-".into(),
        Some(Value::Object(fields)) => fields
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    clip(&text, 48)
}

fn time_left_cell(reservation: bool, ttl: Option<u64>) -> String {
    match (reservation, ttl) {
        (true, _) => "reserved".into(),
        (false, Some(s)) => human_duration(s),
        (false, None) => "-".into(),
    }
}

fn subnet_cell(v4: &str, v6: Option<&str>) -> String {
    match v6 {
        Some(v6) => format!("{v4} + {v6}"),
        None => v4.to_owned(),
    }
}

/// The `leases` table.
pub fn leases_text(list: &LeaseList) -> String {
    let mut rows: Vec<Vec<String>> = list
        .leases
        .iter()
        .map(|l| {
            vec![
                subnet_cell(&l.subnet, l.ipv6_subnet.as_deref()),
                l.public_ip.clone(),
                l.backend_type.clone().unwrap_or_else(|| "-".into()),
                backend_data_cell(l.backend_data.as_ref()),
                time_left_cell(l.reservation, l.ttl_seconds),
                if l.reservation {
                    "reservation"
                } else {
                    "lease"
                }
                .into(),
            ]
        })
        .collect();
    rows.extend(list.malformed.iter().map(|m| {
        vec![
            m.key.clone(),
            "-".into(),
            "-".into(),
            clip(&m.error, 48),
            if m.reservation { "reserved" } else { "-" }.into(),
            "malformed".into(),
        ]
    }));
    if rows.is_empty() {
        return "no leases\n".into();
    }
    table(
        &[
            "SUBNET",
            "PUBLIC IP",
            "BACKEND",
            "BACKEND DATA",
            "TIME LEFT",
            "TYPE",
        ],
        &rows,
    )
}

/// `lease SUBNET`: every field of one lease.
pub fn lease_text(l: &LeaseView) -> String {
    let or_dash = |v: Option<&String>| v.cloned().unwrap_or_else(|| "-".into());
    let time_left = match (&l.etcd_lease_id, l.ttl_seconds) {
        (Some(id), Some(s)) => format!("{} ({s}s, etcd lease {id})", human_duration(s)),
        (Some(id), None) => format!("- (etcd lease {id})"),
        (None, _) => "never expires".into(),
    };
    pairs(&[
        ("subnet", l.subnet.clone()),
        ("ipv6 subnet", or_dash(l.ipv6_subnet.as_ref())),
        ("key", l.key.clone()),
        ("public ip", l.public_ip.clone()),
        ("public ipv6", or_dash(l.public_ipv6.as_ref())),
        ("backend", or_dash(l.backend_type.as_ref())),
        (
            "backend data",
            l.backend_data
                .as_ref()
                .map_or_else(|| "-".into(), Value::to_string),
        ),
        (
            "type",
            if l.reservation {
                "reservation"
            } else {
                "lease"
            }
            .into(),
        ),
        ("time left", time_left),
    ])
}

/// One family of a network config, for `config check`/`set`/`get`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangeView {
    pub network: String,
    pub subnet_len: u8,
    pub subnet_min: String,
    pub subnet_max: String,
    /// How many subnets lie between SubnetMin and SubnetMax (saturating).
    pub subnets: u64,
}

/// What a valid network config means, as flanneld reads it (defaults filled in).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigSummary {
    pub ipv4: Option<RangeView>,
    pub ipv6: Option<RangeView>,
    pub backend: String,
    pub enable_nftables: bool,
}

fn range_view(r: &SubnetRange) -> RangeView {
    RangeView {
        network: r.network.to_string(),
        subnet_len: r.subnet_len,
        subnet_min: r.min.to_string(),
        subnet_max: r.max.to_string(),
        subnets: u64::try_from(r.len()).unwrap_or(u64::MAX),
    }
}

pub fn config_summary(c: &NetworkConfig) -> ConfigSummary {
    ConfigSummary {
        ipv4: c.ipv4.as_ref().map(range_view),
        ipv6: c.ipv6.as_ref().map(range_view),
        backend: c.backend.kind.name().into(),
        enable_nftables: c.enable_nftables,
    }
}

pub fn config_text(s: &ConfigSummary) -> String {
    let family = |r: &Option<RangeView>| match r {
        None => "-".to_owned(),
        Some(r) => format!(
            "{}: /{} subnets from {} to {} ({} subnets)",
            r.network, r.subnet_len, r.subnet_min, r.subnet_max, r.subnets
        ),
    };
    pairs(&[
        ("ipv4", family(&s.ipv4)),
        ("ipv6", family(&s.ipv6)),
        ("backend", s.backend.clone()),
        ("nftables", s.enable_nftables.to_string()),
    ])
}

/// `status`: the daemon's document for a person. `now_unix` turns expiry times into
/// "in 23h59m".
pub fn status_text(s: &NodeStatus, now_unix: u64) -> String {
    let mut top = vec![
        ("node", node_line(s)),
        ("lease", lease_line(s.lease.as_ref(), now_unix)),
        ("etcd", etcd_line(&s.etcd)),
    ];
    if let Some(d) = &s.datapath {
        top.push((
            "datapath",
            format!(
                "{} on {} workers; tx {} packets {} bytes, rx {} packets {} bytes",
                d.io, d.workers, d.tx_packets, d.tx_bytes, d.rx_packets, d.rx_bytes
            ),
        ));
        top.push(("drops", nonzero(&d.drops).unwrap_or_else(|| "none".into())));
        top.push(("icmp sent", d.icmp_unreachable_sent.to_string()));
    }
    if let Some(r) = &s.reconcile {
        top.push(("reconcile", reconcile_line(r, now_unix)));
    }
    top.push(("peers", s.peers.len().to_string()));
    let mut out = pairs(&top);
    if !s.peers.is_empty() {
        out.push('\n');
        out.push_str(&peers_table(&s.peers));
    }
    out
}

/// Readiness, version and backend.
fn node_line(s: &NodeStatus) -> String {
    let backend = if s.backend.is_empty() {
        "(no config yet)"
    } else {
        &s.backend
    };
    format!(
        "{}, flannel-rs {}, backend {backend}",
        if s.ready { "ready" } else { "NOT READY" },
        s.version
    )
}

/// Our subnet, when it expires, and the keeper's counters.
fn lease_line(lease: Option<&LeaseStatus>, now_unix: u64) -> String {
    let Some(l) = lease else {
        return "none yet".into();
    };
    let subnet = subnet_cell(&l.subnet, l.ipv6_subnet.as_deref());
    let expiry = match l.expires_unix {
        None => "reservation, never expires".into(),
        Some(t) if t > now_unix => format!("expires in {}", human_duration(t - now_unix)),
        Some(_) => "EXPIRED".into(),
    };
    format!(
        "{subnet} (public IP {}), {expiry}; renewals {}, failed {}, reacquired {}",
        l.public_ip, l.renewals, l.failed_renewals, l.reacquisitions
    )
}

/// Whether etcd answers, since when, and the failed requests.
fn etcd_line(etcd: &EtcdStatus) -> String {
    let mut e = if etcd.reachable {
        "reachable".to_owned()
    } else {
        "UNREACHABLE".to_owned()
    };
    if let Some(ago) = etcd.seconds_since_contact {
        let _ = write!(e, ", last contact {ago:.1}s ago");
    }
    if let Some(errors) = nonzero(&etcd.errors) {
        let _ = write!(e, "; errors: {errors}");
    }
    e
}

/// The reconciler's runs, its last run and the repairs it made.
fn reconcile_line(r: &ReconcileStatus, now_unix: u64) -> String {
    let last = match r.last_unix {
        None => "never run".to_owned(),
        Some(t) => format!(
            "last {} ago, took {:.3}s",
            human_duration(now_unix.saturating_sub(t)),
            r.last_duration_seconds
        ),
    };
    format!(
        "{} runs, {} failed, {last}; repairs: {}",
        r.runs,
        r.failures,
        nonzero(&r.repairs).unwrap_or_else(|| "none".into())
    )
}

/// One row per peer; traffic columns when the daemon counts per peer.
fn peers_table(peers: &[PeerStatus]) -> String {
    let per_peer = peers.iter().any(|p| p.tx_packets.is_some());
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            let mut row = vec![
                subnet_cell(&p.subnet, p.ipv6_subnet.as_deref()),
                p.public_ip.clone(),
                if p.backend_type.is_empty() {
                    "-".into()
                } else {
                    p.backend_type.clone()
                },
            ];
            if per_peer {
                let n = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
                row.push(n(p.tx_packets));
                row.push(n(p.tx_bytes));
            }
            row
        })
        .collect();
    let mut headers = vec!["PEER SUBNET", "PUBLIC IP", "BACKEND"];
    if per_peer {
        headers.extend(["TX PACKETS", "TX BYTES"]);
    }
    table(&headers, &rows)
}

/// The non-zero counters of a by-reason map, `no_route 3, ttl 1` (a zero says nothing an
/// operator acts on, and every reason is always present); `None` when all are zero.
fn nonzero(counts: &BTreeMap<String, u64>) -> Option<String> {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// A failure as `-o json` prints it (on stdout, so a script reads one document either way).
pub fn error_json(e: &CtlError) -> Value {
    serde_json::json!({
        "error": {
            "exit": e.exit as i32,
            "kind": e.exit.name(),
            "message": e.message,
            "key": e.key,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::Exit;
    use crate::status::{DatapathStatus, EtcdStatus, LeaseStatus, PeerStatus, ReconcileStatus};

    fn stored(key: &str, value: &str, etcd_lease: i64) -> StoredKey {
        StoredKey {
            key: format!("/coreos.com/network/subnets/{key}"),
            value: value.as_bytes().to_vec(),
            etcd_lease,
            mod_revision: 7,
        }
    }

    const VXLAN: &str = r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn a_vxlan_lease_shows_its_vtep_mac_and_time_left() {
        let v = lease_view(
            &stored("10.5.2.0-24", VXLAN, 0x694d),
            Some(Duration::from_secs(86_399)),
        )
        .unwrap();
        assert_eq!(v.subnet, "10.5.2.0/24");
        assert_eq!(v.key, "10.5.2.0-24");
        assert_eq!(v.backend_type.as_deref(), Some("vxlan"));
        assert!(!v.reservation);
        assert_eq!(v.ttl_seconds, Some(86_399));
        assert_eq!(v.etcd_lease_id.as_deref(), Some("694d"));
        assert_eq!(
            backend_data_cell(v.backend_data.as_ref()),
            "VNI=1 VtepMAC=c6:d2:32:6f:8f:44"
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["backend_data"]["VtepMAC"], "c6:d2:32:6f:8f:44");
        assert!(lease_text(&v).contains("23h59m (86399s, etcd lease 694d)"));
    }

    #[test]
    fn the_table_aligns_and_marks_reservations_and_malformed_keys() {
        let list = lease_list([
            (
                stored("10.5.10.0-24", VXLAN, 5),
                Some(Duration::from_secs(3723)),
            ),
            (
                stored(
                    "10.5.2.0-24",
                    r#"{"PublicIP":"192.0.2.2","PublicIPv6":null}"#,
                    0,
                ),
                None,
            ),
            (stored("10.5.3.0-24", "{not json", 9), None),
            (stored("garbage", "{}", 0), None),
        ]);
        // Sorted by address, not as strings.
        assert_eq!(list.leases[0].subnet, "10.5.2.0/24");
        assert_eq!(list.malformed.len(), 2);
        let text = leases_text(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("SUBNET"));
        let col = lines[0].find("PUBLIC IP").unwrap();
        assert!(lines
            .iter()
            .skip(1)
            .all(|l| l.len() > col && l.as_bytes()[col - 1] == b' '));
        assert!(
            lines[1].contains("reserved") && lines[1].ends_with("reservation"),
            "{text}"
        );
        assert!(
            lines[2].contains("1h2m") && lines[2].ends_with("lease"),
            "{text}"
        );
        assert!(lines[3].ends_with("malformed") && lines[3].contains("10.5.3.0-24"));
        assert!(lines[4].contains("not a subnet key"));
        assert!(text.lines().all(|l| l == l.trim_end()));
        assert_eq!(leases_text(&LeaseList::default()), "no leases\n");
    }

    #[test]
    fn a_subnet_names_its_key_in_either_family() {
        let v4 = SubnetKey::parse("10.5.34.0-24").unwrap();
        assert!(names(&v4, "/coreos.com/network/subnets/10.5.34.0-24"));
        assert!(
            names(&v4, "10.5.34.0-24&fd00:0:0:1::-64"),
            "v4 alone finds dual stack"
        );
        assert!(!names(&v4, "10.5.35.0-24"));
        assert!(!names(&v4, "10.5.34.0-25"));
        assert!(!names(&v4, "garbage"));
        let dual = SubnetKey::parse("10.5.34.0-24&fd00:0:0:1::-64").unwrap();
        assert!(!names(&dual, "10.5.34.0-24&fd00:0:0:2::-64"));
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(245), "4m5s");
        assert_eq!(human_duration(86_399), "23h59m");
        assert_eq!(human_duration(3 * 86_400 + 7200), "3d2h");
    }

    #[test]
    fn long_backend_data_is_clipped_not_spilled() {
        let data: Value = serde_json::json!({ "x": "y".repeat(200) });
        let cell = backend_data_cell(Some(&data));
        assert_eq!(cell.chars().count(), 48);
        assert!(cell.ends_with('…'));
        assert_eq!(backend_data_cell(None), "-");
        assert_eq!(backend_data_cell(Some(&Value::String("out".into()))), "out");
    }

    fn node() -> NodeStatus {
        NodeStatus {
            version: "0.1.0".into(),
            backend: "udp".into(),
            ready: true,
            lease: Some(LeaseStatus {
                subnet: "10.5.1.0/24".into(),
                public_ip: "192.0.2.1".into(),
                expires_unix: Some(1_000 + 3_600),
                renewals: 2,
                ..LeaseStatus::default()
            }),
            peers: vec![PeerStatus {
                subnet: "10.5.2.0/24".into(),
                public_ip: "192.0.2.2".into(),
                backend_type: String::new(),
                tx_packets: Some(10),
                tx_bytes: Some(1_400),
                ..PeerStatus::default()
            }],
            etcd: EtcdStatus {
                reachable: true,
                seconds_since_contact: Some(1.25),
                errors: BTreeMap::from([("watch".into(), 1), ("put".into(), 0)]),
            },
            datapath: Some(DatapathStatus {
                io: "io_uring".into(),
                workers: 2,
                tx_packets: 5,
                drops: BTreeMap::from([("no_route".into(), 3), ("malformed".into(), 0)]),
                ..DatapathStatus::default()
            }),
            reconcile: Some(ReconcileStatus {
                runs: 4,
                last_unix: Some(990),
                repairs: BTreeMap::from([("route".into(), 1)]),
                ..ReconcileStatus::default()
            }),
        }
    }

    #[test]
    fn status_shows_lease_expiry_peers_counters_drops_and_reconcile() {
        let text = status_text(&node(), 1_000);
        for want in [
            "ready, flannel-rs 0.1.0, backend udp",
            "10.5.1.0/24 (public IP 192.0.2.1), expires in 1h0m; renewals 2",
            "reachable, last contact 1.2s ago; errors: watch 1",
            "io_uring on 2 workers; tx 5 packets",
            "no_route 3",
            "4 runs, 0 failed, last 10s ago",
            "repairs: route 1",
            "PEER SUBNET",
            "TX PACKETS",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
        assert!(
            !text.contains("malformed 0"),
            "zero drops are left out:\n{text}"
        );
        let peer = text.lines().find(|l| l.starts_with("10.5.2.0/24")).unwrap();
        assert!(
            peer.contains("192.0.2.2") && peer.contains("1400"),
            "{peer}"
        );
    }

    #[test]
    fn status_of_a_starting_node_says_so() {
        let text = status_text(&NodeStatus::default(), 0);
        assert!(text.contains("NOT READY"), "{text}");
        assert!(text.contains("none yet"), "{text}");
        assert!(text.contains("UNREACHABLE"), "{text}");
        assert!(!text.contains("datapath"), "{text}");
    }

    #[test]
    fn config_summary_names_the_ranges() {
        let c = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        let s = config_summary(&c);
        assert_eq!(s.backend, "vxlan");
        let v4 = s.ipv4.as_ref().unwrap();
        assert_eq!((v4.subnet_len, v4.subnet_min.as_str()), (24, "10.5.1.0"));
        assert!(config_text(&s).contains("10.5.0.0/16: /24 subnets from 10.5.1.0"));
    }

    #[test]
    fn errors_in_json_carry_the_exit_status_and_key() {
        let e: CtlError = NetworkConfig::parse(r#"{"Network":"nope"}"#)
            .unwrap_err()
            .into();
        let json = error_json(&e);
        assert_eq!(json["error"]["exit"], 4);
        assert_eq!(json["error"]["kind"], "invalid_config");
        assert_eq!(json["error"]["key"], "Network");
        let nf = error_json(&CtlError::new(Exit::NotFound, "no lease"));
        assert_eq!(nf["error"]["key"], Value::Null);
    }
}
