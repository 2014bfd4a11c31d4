//! The network config (`<prefix>/config` in etcd, or `net-conf.json`): JSON to a
//! typed, validated [`NetworkConfig`] with upstream's defaults.
//!
//! Keys match case-insensitively and unknown keys are ignored, as Go's
//! `encoding/json` does. Every error names the key and the reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

use crate::subnet::net::{bits, from_u128, to_u128, SubnetRange};

/// A config that cannot be used; `key` is the config key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network config: {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The backend types flannel-rs knows, by `Backend.Type` (lower-cased).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Udp,
    Vxlan,
    HostGw,
    AwsVpc,
    Alloc,
    Extension,
}

impl BackendKind {
    /// Parses `Backend.Type`. Upstream lower-cases the name before the lookup.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "udp" => BackendKind::Udp,
            "vxlan" => BackendKind::Vxlan,
            "host-gw" => BackendKind::HostGw,
            "aws-vpc" => BackendKind::AwsVpc,
            "alloc" => BackendKind::Alloc,
            "extension" => BackendKind::Extension,
            _ => return None,
        })
    }

    /// The name as configs spell it.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Udp => "udp",
            BackendKind::Vxlan => "vxlan",
            BackendKind::HostGw => "host-gw",
            BackendKind::AwsVpc => "aws-vpc",
            BackendKind::Alloc => "alloc",
            BackendKind::Extension => "extension",
        }
    }
}

/// The `Backend` section: its type, and the raw object for the backend to read.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub kind: BackendKind,
    /// The whole `Backend` object as written (empty when the key was absent).
    pub raw: Map<String, Value>,
}

impl BackendConfig {
    /// A backend option by name, matched case-insensitively (`Port`, `port`…).
    pub fn option(&self, name: &str) -> Option<&Value> {
        self.raw
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// A validated network config.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// IPv4 subnets (`Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`), when `EnableIPv4`.
    pub ipv4: Option<SubnetRange>,
    /// IPv6 subnets (`IPv6Network`, `IPv6SubnetLen`, …), when `EnableIPv6`.
    pub ipv6: Option<SubnetRange>,
    pub enable_nftables: bool,
    pub backend: BackendConfig,
}

impl NetworkConfig {
    /// The IPv4 overlay network, when enabled.
    pub fn network_v4(&self) -> Option<Ipv4Net> {
        match self.ipv4?.network {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        }
    }

    /// The IPv6 overlay network, when enabled.
    pub fn network_v6(&self) -> Option<Ipv6Net> {
        match self.ipv6?.network {
            IpNet::V6(n) => Some(n),
            IpNet::V4(_) => None,
        }
    }

    /// Parses and validates config JSON.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| err("config", format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(err("config", "must be a JSON object"));
        };
        let c = CiObject(obj);

        let enable_ipv4 = c.bool("EnableIPv4")?.unwrap_or(true);
        let enable_ipv6 = c.bool("EnableIPv6")?.unwrap_or(false);
        let enable_nftables = c.bool("EnableNFTables")?.unwrap_or(false);
        if !enable_ipv4 && !enable_ipv6 {
            return Err(err(
                "EnableIPv4",
                "at least one of EnableIPv4 and EnableIPv6 must be true",
            ));
        }

        let ipv4 = if enable_ipv4 {
            let network = c.cidr::<Ipv4Net>("Network")?.ok_or_else(|| {
                err(
                    "Network",
                    "missing: please define a correct Network parameter in the flannel config",
                )
            })?;
            Some(family_range(
                &c,
                &FamilyKeys::V4,
                IpNet::V4(network.trunc()),
            )?)
        } else {
            None
        };
        let ipv6 = if enable_ipv6 {
            let network = c.cidr::<Ipv6Net>("IPv6Network")?.ok_or_else(|| {
                err(
                    "IPv6Network",
                    "missing: please define a correct IPv6Network parameter in the flannel config",
                )
            })?;
            Some(family_range(
                &c,
                &FamilyKeys::V6,
                IpNet::V6(network.trunc()),
            )?)
        } else {
            None
        };

        let backend = match c.get("Backend") {
            None | Some(Value::Null) => BackendConfig {
                kind: BackendKind::Udp,
                raw: Map::new(),
            },
            Some(Value::Object(raw)) => {
                let ty = CiObject(raw.clone());
                let name = match ty.get("Type") {
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => return Err(err("Backend.Type", "must be a string")),
                    None => return Err(err("Backend.Type", "missing")),
                };
                let kind = BackendKind::parse(&name)
                    .ok_or_else(|| err("Backend.Type", format!("unknown backend type {name:?}")))?;
                BackendConfig {
                    kind,
                    raw: raw.clone(),
                }
            }
            Some(_) => return Err(err("Backend", "must be a JSON object")),
        };

        Ok(NetworkConfig {
            ipv4,
            ipv6,
            enable_nftables,
            backend,
        })
    }
}

/// Key names and limits of one address family.
struct FamilyKeys {
    len: &'static str,
    min: &'static str,
    max: &'static str,
    network: &'static str,
    /// Longest network prefix that still leaves room for four subnets.
    max_prefix: u8,
    /// Longest allowed subnet length.
    max_subnet_len: u8,
    /// Default subnet length for networks at least four times that big.
    default_len: u8,
}

impl FamilyKeys {
    const V4: FamilyKeys = FamilyKeys {
        len: "SubnetLen",
        min: "SubnetMin",
        max: "SubnetMax",
        network: "Network",
        max_prefix: 28,
        max_subnet_len: 30,
        default_len: 24,
    };
    const V6: FamilyKeys = FamilyKeys {
        len: "IPv6SubnetLen",
        min: "IPv6SubnetMin",
        max: "IPv6SubnetMax",
        network: "IPv6Network",
        max_prefix: 124,
        max_subnet_len: 126,
        default_len: 64,
    };
}

/// Applies upstream's defaults and checks for one family's subnet keys.
fn family_range(c: &CiObject, k: &FamilyKeys, network: IpNet) -> Result<SubnetRange, ConfigError> {
    let prefix = network.prefix_len();
    let subnet_len = match c.uint(k.len)? {
        None | Some(0) => {
            if prefix > k.max_prefix {
                return Err(err(
                    k.network,
                    format!(
                        "network is too small. Minimum useful network prefix is /{}",
                        k.max_prefix
                    ),
                ));
            }
            k.default_len.max(prefix + 2)
        }
        Some(len) if len > u64::from(k.max_subnet_len) => {
            return Err(err(
                k.len,
                format!("must be less than /{}", k.max_subnet_len + 1),
            ))
        }
        Some(len) if len < u64::from(prefix) + 2 => {
            return Err(err(
                k.len,
                "network must be able to accommodate at least four subnets",
            ))
        }
        Some(len) => len as u8,
    };
    let width = bits(network.addr());
    let step = 1u128 << (width - u32::from(subnet_len));
    let net_lo = to_u128(network.network());
    let net_hi = to_u128(network.broadcast());

    let bound = |key: &str, default: u128| -> Result<IpAddr, ConfigError> {
        let addr = match c.ip(key, width)? {
            None => return Ok(from_u128(default, width)),
            Some(a) => a,
        };
        let v = to_u128(addr);
        if v < net_lo || v > net_hi {
            return Err(err(
                key,
                format!("{addr} is not in the range of the network {network}"),
            ));
        }
        if !v.is_multiple_of(step) {
            return Err(err(
                key,
                format!("{addr} is not on a /{subnet_len} boundary"),
            ));
        }
        Ok(addr)
    };
    // The first subnet of the network is never handed out by default.
    let min = bound(k.min, net_lo + step)?;
    let max = bound(k.max, net_hi - (step - 1))?;
    if to_u128(min) > to_u128(max) {
        return Err(err(k.min, format!("{min} is above {} {max}", k.max)));
    }
    Ok(SubnetRange {
        network,
        subnet_len,
        min,
        max,
    })
}

/// A JSON object whose keys are looked up case-insensitively (last match wins,
/// like Go's decoder applying keys in order).
struct CiObject(Map<String, Value>);

impl CiObject {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(err(name, format!("must be true or false, not {other}"))),
        }
    }

    fn uint(&self, name: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| err(name, format!("must be a non-negative integer, not {n}"))),
            Some(other) => Err(err(name, format!("must be an integer, not {other}"))),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&str>, ConfigError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(err(name, format!("must be a string, not {other}"))),
        }
    }

    fn cidr<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ConfigError> {
        self.string(name)?
            .map(|s| {
                s.parse().map_err(|_| {
                    err(
                        name,
                        format!("{s:?} is not a valid CIDR of this address family"),
                    )
                })
            })
            .transpose()
    }

    fn ip(&self, name: &str, width: u32) -> Result<Option<IpAddr>, ConfigError> {
        let Some(s) = self.string(name)? else {
            return Ok(None);
        };
        let parsed = if width == 32 {
            s.parse::<Ipv4Addr>().map(IpAddr::V4).ok()
        } else {
            s.parse::<Ipv6Addr>().map(IpAddr::V6).ok()
        };
        parsed
            .map(Some)
            .ok_or_else(|| err(name, format!("{s:?} is not a valid address of this family")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> NetworkConfig {
        NetworkConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn error_key(text: &str) -> String {
        NetworkConfig::parse(text).expect_err(text).key
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn slash16_defaults_like_upstream() {
        let c = parse(r#"{"Network":"10.5.0.0/16"}"#);
        let r = c.ipv4.unwrap();
        assert_eq!(
            (r.subnet_len, r.min, r.max),
            (24, ip("10.5.1.0"), ip("10.5.255.0"))
        );
        assert_eq!(
            c.backend.kind,
            BackendKind::Udp,
            "no Backend means udp, as upstream's code does"
        );
        assert!(c.ipv6.is_none());
        assert!(!c.enable_nftables);
    }

    #[test]
    fn subnet_len_defaults_follow_the_network_size() {
        for (net, len) in [
            ("10.0.0.0/8", 24),
            ("10.0.0.0/22", 24),
            ("10.0.0.0/23", 25),
            ("10.0.0.0/28", 30),
        ] {
            let c = parse(&format!(r#"{{"Network":"{net}"}}"#));
            assert_eq!(c.ipv4.unwrap().subnet_len, len, "{net}");
        }
        assert_eq!(error_key(r#"{"Network":"10.0.0.0/29"}"#), "Network");
    }

    #[test]
    fn subnet_len_limits() {
        assert_eq!(
            error_key(r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#),
            "SubnetLen"
        );
        assert_eq!(
            error_key(r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#),
            "SubnetLen"
        );
        assert_eq!(
            parse(r#"{"Network":"10.0.0.0/16","SubnetLen":18}"#)
                .ipv4
                .unwrap()
                .subnet_len,
            18
        );
        assert_eq!(
            parse(r#"{"Network":"10.0.0.0/16","SubnetLen":30}"#)
                .ipv4
                .unwrap()
                .subnet_len,
            30
        );
        assert_eq!(
            error_key(r#"{"Network":"10.0.0.0/16","SubnetLen":-1}"#),
            "SubnetLen"
        );
        assert_eq!(
            error_key(r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#),
            "SubnetLen"
        );
    }

    #[test]
    fn subnet_min_max_are_checked() {
        let c =
            parse(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.20.0"}"#);
        let r = c.ipv4.unwrap();
        assert_eq!((r.min, r.max), (ip("10.5.10.0"), ip("10.5.20.0")));
        assert_eq!(
            error_key(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.6.1.0"}"#),
            "SubnetMin"
        );
        assert_eq!(
            error_key(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.7"}"#),
            "SubnetMin"
        );
        assert_eq!(
            error_key(r#"{"Network":"10.5.0.0/16","SubnetMax":"10.4.1.0"}"#),
            "SubnetMax"
        );
        assert_eq!(
            error_key(r#"{"Network":"10.5.0.0/16","SubnetMax":"banana"}"#),
            "SubnetMax"
        );
        assert_eq!(
            error_key(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.8.0"}"#),
            "SubnetMin"
        );
    }

    #[test]
    fn keys_match_case_insensitively_and_unknown_keys_are_ignored() {
        let c = parse(
            r#"{"network":"10.5.0.0/16","subnetlen":26,"backend":{"type":"ALLOC"},"Whatever":1}"#,
        );
        assert_eq!(c.ipv4.unwrap().subnet_len, 26);
        assert_eq!(c.backend.kind, BackendKind::Alloc);
    }

    #[test]
    fn network_is_required_and_must_be_a_cidr() {
        assert_eq!(error_key(r#"{}"#), "Network");
        assert_eq!(error_key(r#"{"Network":"10.5.0.0"}"#), "Network");
        assert_eq!(error_key(r#"{"Network":"fd00::/48"}"#), "Network");
        assert_eq!(error_key(r#"{"Network":7}"#), "Network");
    }

    #[test]
    fn not_json_or_not_an_object() {
        assert_eq!(error_key("not json"), "config");
        assert_eq!(error_key("[1]"), "config");
        let e = NetworkConfig::parse("{").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid network config: config: not valid JSON"),
            "{e}"
        );
    }

    #[test]
    fn backend_type_is_validated() {
        assert_eq!(
            error_key(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"carrier-pigeon"}}"#),
            "Backend.Type"
        );
        assert_eq!(
            error_key(r#"{"Network":"10.5.0.0/16","Backend":{}}"#),
            "Backend.Type"
        );
        assert_eq!(
            error_key(r#"{"Network":"10.5.0.0/16","Backend":{"Type":1}}"#),
            "Backend.Type"
        );
        assert_eq!(
            error_key(r#"{"Network":"10.5.0.0/16","Backend":"udp"}"#),
            "Backend"
        );
        let c =
            parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":4,"port":4789}}"#);
        assert_eq!(c.backend.kind, BackendKind::Vxlan);
        assert_eq!(c.backend.option("Port"), Some(&Value::from(4789)));
        assert_eq!(c.backend.option("vni"), Some(&Value::from(4)));
    }

    #[test]
    fn ipv6_defaults_and_checks() {
        let c = parse(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56"}"#,
        );
        let r = c.ipv6.unwrap();
        assert_eq!(
            (r.subnet_len, r.min, r.max),
            (64, ip("2001:cafe:42:1::"), ip("2001:cafe:42:ff::"))
        );
        let small = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/120"}"#);
        assert_eq!(small.ipv6.unwrap().subnet_len, 122);
        assert!(small.ipv4.is_none());
        assert_eq!(
            error_key(r#"{"Network":"10.5.0.0/16","EnableIPv6":true}"#),
            "IPv6Network"
        );
        assert_eq!(
            error_key(r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/125"}"#),
            "IPv6Network"
        );
        assert_eq!(
            error_key(
                r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/56","IPv6SubnetLen":127}"#
            ),
            "IPv6SubnetLen"
        );
        assert_eq!(
            error_key(
                r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd01::"}"#
            ),
            "IPv6SubnetMin"
        );
        assert_eq!(
            error_key(r#"{"EnableIPv6":"yes","Network":"10.5.0.0/16"}"#),
            "EnableIPv6"
        );
        assert_eq!(error_key(r#"{"EnableIPv4":false}"#), "EnableIPv4");
    }

    #[test]
    fn network_with_host_bits_is_truncated() {
        let c = parse(r#"{"Network":"10.5.3.7/16"}"#);
        assert_eq!(c.network_v4().unwrap().to_string(), "10.5.0.0/16");
    }
}
