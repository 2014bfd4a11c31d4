//! The lease model: subnet keys and the lease JSON that upstream flanneld reads
//! and writes, byte for byte.
//!
//! Key: `<prefix>/subnets/10.5.34.0-24`, dual stack `10.42.1.0-24&2001:cafe:42:1::-64`.
//! Value: `{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{…}}`.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::ser::SerializeMap;
use serde_json::value::RawValue;

/// A JSON value kept as the exact text another node wrote (so `BackendData` from
/// upstream survives a round trip unchanged).
#[derive(Debug, Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Validates `text` as JSON and keeps it verbatim.
    pub fn new(text: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.to_owned()).map(RawJson)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}
impl Eq for RawJson {}

/// What a node publishes about itself (upstream's `LeaseAttrs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    /// `None` for udp and alloc, which upstream writes without a BackendType.
    pub backend_type: Option<String>,
    pub backend_data: Option<RawJson>,
    pub backend_v6_data: Option<RawJson>,
}

impl LeaseAttrs {
    /// Attributes with only a public address (what udp and alloc publish).
    pub fn with_public_ip(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: None,
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// The lease value as upstream's `json.Marshal(LeaseAttrs)` writes it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("lease attributes always serialize")
    }

    /// Parses a lease value. Field names match case-insensitively, unknown
    /// fields are ignored (Go `encoding/json` semantics).
    pub fn from_json(text: &str) -> Result<Self, LeaseError> {
        let fields: HashMap<String, Box<RawValue>> =
            serde_json::from_str(text).map_err(|e| LeaseError::Json(e.to_string()))?;
        let mut by_lower: HashMap<String, Box<RawValue>> = fields
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let mut take = |name: &str| by_lower.remove(name).filter(|v| v.get() != "null");

        let public_ip = match take("publicip") {
            Some(v) => serde_json::from_str::<Ipv4Addr>(v.get())
                .map_err(|e| LeaseError::Field("PublicIP", e.to_string()))?,
            None => return Err(LeaseError::Field("PublicIP", "missing".into())),
        };
        let public_ipv6 = take("publicipv6")
            .map(|v| serde_json::from_str::<Ipv6Addr>(v.get()))
            .transpose()
            .map_err(|e| LeaseError::Field("PublicIPv6", e.to_string()))?;
        let backend_type = take("backendtype")
            .map(|v| serde_json::from_str::<String>(v.get()))
            .transpose()
            .map_err(|e| LeaseError::Field("BackendType", e.to_string()))?
            .filter(|s| !s.is_empty());
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: take("backenddata").map(RawJson),
            backend_v6_data: take("backendv6data").map(RawJson),
        })
    }
}

impl serde::Serialize for LeaseAttrs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Field order and omissions as Go writes them: PublicIPv6 is always
        // present (null when unset); the backend fields are `omitempty`.
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("PublicIP", &self.public_ip)?;
        m.serialize_entry("PublicIPv6", &self.public_ipv6)?;
        if let Some(t) = &self.backend_type {
            m.serialize_entry("BackendType", t)?;
        }
        if let Some(d) = &self.backend_data {
            m.serialize_entry("BackendData", &d.0)?;
        }
        if let Some(d) = &self.backend_v6_data {
            m.serialize_entry("BackendV6Data", &d.0)?;
        }
        m.end()
    }
}

/// Why a lease key or value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("lease value is not a JSON object: {0}")]
    Json(String),
    #[error("lease field {0}: {1}")]
    Field(&'static str, String),
    #[error("not a subnet key: {0:?}")]
    Key(String),
}

/// The subnet(s) a lease key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    pub ipv4: Ipv4Net,
    pub ipv6: Option<Ipv6Net>,
}

impl SubnetKey {
    /// Parses the last path component of a lease key (`10.5.34.0-24` or
    /// `10.42.1.0-24&2001:cafe:42:1::-64`) as upstream's `ParseSubnetKey`
    /// (pkg/subnet/subnet.go) decides it: its regex takes the IPv6 part only in lower-case
    /// hex (`[a-f\d:]+`), so a key with upper-case hex is not a subnet key; host bits are
    /// kept as written (upstream builds the net from the address as given), so the key
    /// renders back to itself and a renewal writes the very key it read.
    pub fn parse(key: &str) -> Result<Self, LeaseError> {
        let bad = || LeaseError::Key(key.to_owned());
        let name = key.rsplit('/').next().unwrap_or(key);
        let (v4, v6) = match name.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (name, None),
        };
        let ipv4 = parse_dashed(v4).ok_or_else(bad)?;
        let ipv6 = match v6 {
            Some(text)
                if text
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b':' | b'-')) =>
            {
                Some(parse_dashed(text).ok_or_else(bad)?)
            }
            Some(_) => return Err(bad()),
            None => None,
        };
        Ok(SubnetKey { ipv4, ipv6 })
    }
}

fn parse_dashed<T: std::str::FromStr>(text: &str) -> Option<T> {
    let (addr, len) = text.rsplit_once('-')?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    format!("{addr}/{len}").parse().ok()
}

impl SubnetKey {
    /// How logs name a lease: `10.5.3.0/24` (`,fd00:5:3::/64` after it when dual-stack). The
    /// same for our lease and a peer's, in the `subnet` field of every line about one.
    pub fn cidr(&self) -> Cidr<'_> {
        Cidr(self)
    }
}

/// See [`SubnetKey::cidr`].
#[derive(Debug, Clone, Copy)]
pub struct Cidr<'a>(&'a SubnetKey);

impl fmt::Display for Cidr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.ipv4.trunc())?;
        if let Some(v6) = self.0.ipv6 {
            write!(f, ",{}", v6.trunc())?;
        }
        Ok(())
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The addresses as parsed (host bits and all): see `SubnetKey::parse`.
        write!(f, "{}-{}", self.ipv4.addr(), self.ipv4.prefix_len())?;
        if let Some(v6) = self.ipv6 {
            write!(f, "&{}-{}", v6.addr(), v6.prefix_len())?;
        }
        Ok(())
    }
}

/// One host's lease as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: SubnetKey,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to; 0 for a reservation (no TTL).
    pub etcd_lease: i64,
    /// etcd `mod_revision` of the key when it was read.
    pub mod_revision: i64,
}

/// A lease as held by this host, with its expiry as granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub lease: Lease,
    /// TTL granted with the lease; `None` for a reservation (never expires).
    pub ttl: Option<Duration>,
    /// The etcd create revision of our key: a write that keeps it was made over our
    /// live key (see `super::keeper::judge_own_change`); 0 when unknown.
    pub create_revision: i64,
}

impl Lease {
    /// The IPv4 subnet of the lease.
    pub fn subnet(&self) -> Ipv4Net {
        self.key.ipv4
    }

    /// A reservation is a key an operator wrote without a TTL; it never expires.
    pub fn is_reservation(&self) -> bool {
        self.etcd_lease == 0
    }
}

/// What the lease watcher tells a backend about other hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A host's lease appeared or its attributes changed.
    Added(Lease),
    /// A host's lease is gone (deleted or expired); carries its last known value.
    Removed(Lease),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys as upstream's `ParseSubnetKey` decides them, and each renders back to itself.
    #[test]
    fn subnet_keys_parse_as_upstream_and_render_back() {
        for key in [
            "10.5.34.0-24",
            "10.42.1.0-24&2001:cafe:42:1::-64",
            // Host bits are kept, in both families (the fuzzer's find).
            "10.42.2.0-24&2001:cafe::241:b-64",
            "10.42.2.7-24",
        ] {
            let parsed = SubnetKey::parse(key).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(parsed.to_string(), key);
        }
        assert_eq!(
            SubnetKey::parse("/coreos.com/network/subnets/10.5.34.0-24")
                .unwrap()
                .to_string(),
            "10.5.34.0-24"
        );
        // Upper-case hex is not in upstream's key regex: not a subnet key.
        for bad in [
            "10.42.2.0-24&2001:cafe::241:B-64",
            "10.42.2.0-24&2001:CAFE::-64",
            "10.42.2.0-24&",
            "10.42.2.0/24",
            "10.42.2.0-",
        ] {
            assert!(SubnetKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn udp_and_alloc_leases_serialize_like_upstream() {
        let attrs = LeaseAttrs::with_public_ip("192.168.64.3".parse().unwrap());
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null}"#
        );
    }

    #[test]
    fn vxlan_lease_round_trips_byte_for_byte() {
        let text = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let attrs = LeaseAttrs::from_json(text).unwrap();
        assert_eq!(attrs.backend_type.as_deref(), Some("vxlan"));
        assert_eq!(attrs.to_json(), text);
    }

    #[test]
    fn dual_stack_and_extension_values_round_trip() {
        let text = r#"{"PublicIP":"10.0.0.1","PublicIPv6":"2001:db8::1","BackendType":"extension","BackendData":"some output","BackendV6Data":{"VNI":1}}"#;
        let attrs = LeaseAttrs::from_json(text).unwrap();
        assert_eq!(attrs.public_ipv6, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(attrs.to_json(), text);
    }

    #[test]
    fn field_names_match_case_insensitively() {
        let attrs =
            LeaseAttrs::from_json(r#"{"publicip":"10.0.0.2","backendtype":"host-gw","x":1}"#)
                .unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(attrs.backend_type.as_deref(), Some("host-gw"));
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        for text in [
            "",
            "[]",
            "{",
            r#"{"PublicIP":5}"#,
            r#"{"PublicIP":"::1"}"#,
            r#"{}"#,
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":"nope"}"#,
            r#"{"PublicIP":"1.2.3.4","BackendType":7}"#,
        ] {
            assert!(
                LeaseAttrs::from_json(text).is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn subnet_keys_parse_and_print_like_upstream() {
        let k = SubnetKey::parse("/coreos.com/network/subnets/10.5.34.0-24").unwrap();
        assert_eq!(k.ipv4, "10.5.34.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(k.to_string(), "10.5.34.0-24");
        let dual = "10.42.1.0-24&2001:cafe:42:1::-64";
        assert_eq!(SubnetKey::parse(dual).unwrap().to_string(), dual);
        for bad in [
            "10.5.34.0",
            "10.5.34.0-",
            "10.5.34.0-33",
            "x-24",
            "10.5.34.0-24&zz-64",
            "10.5.34.0-+4",
        ] {
            assert!(SubnetKey::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
