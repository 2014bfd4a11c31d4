//! The pure half of the vxlan backend: its config options, its lease data,
//! how a lease becomes a peer and peers become kernel state
//! ([`VxlanPlanner`]), and whether an existing vxlan link can be adopted
//! ([`vxlan_verdict`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde_json::Value;

use crate::backend::kernel::{
    Desired, DirectPeers, FdbSpec, LinkChange, LinkState, Mac, NeighSpec, Ownership, Planner,
    RouteSpec, VxlanSpec,
};
use crate::config::{BackendConfig, ConfigError};
use crate::subnet::lease::{Lease, RawJson, SubnetKey};

/// Bytes VXLAN over IPv4 costs: outer IPv4 (20) + UDP (8) + VXLAN (8) +
/// inner Ethernet (14). Upstream uses it for IPv6 too.
pub const ENCAP_OVERHEAD: u32 = 50;

/// Upstream's default VNI.
pub const DEFAULT_VNI: u32 = 1;

/// The `Backend` options of a vxlan network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    /// UDP port; `None`: the kernel's default (8472).
    pub port: Option<u16>,
    /// Underlay MTU to plan with; `None`: the external interface's.
    pub mtu: Option<u32>,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            vni: DEFAULT_VNI,
            port: None,
            mtu: None,
            gbp: false,
            learning: false,
            direct_routing: false,
        }
    }
}

fn option_err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: format!("Backend.{key}"),
        reason: reason.into(),
    }
}

fn option_uint(b: &BackendConfig, key: &str, max: u64) -> Result<Option<u64>, ConfigError> {
    match b.option(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= max => Ok(Some(v)),
            _ => Err(option_err(
                key,
                format!("must be an integer from 0 to {max}, not {n}"),
            )),
        },
        Some(other) => Err(option_err(key, format!("must be an integer, not {other}"))),
    }
}

fn option_bool(b: &BackendConfig, key: &str) -> Result<bool, ConfigError> {
    match b.option(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(v)) => Ok(*v),
        Some(other) => Err(option_err(
            key,
            format!("must be true or false, not {other}"),
        )),
    }
}

/// Longest interface name Linux accepts (IFNAMSIZ − 1).
const MAX_IFNAME: usize = 15;

impl VxlanConfig {
    /// Reads `VNI`, `Port`, `MTU`, `GBP`, `Learning` and `DirectRouting`
    /// (case-insensitively, as Go's decoder does), with upstream's defaults.
    pub fn from_backend(b: &BackendConfig, ipv6: bool) -> Result<Self, ConfigError> {
        let vni = option_uint(b, "VNI", (1 << 24) - 1)?.map_or(DEFAULT_VNI, |v| v as u32);
        let port = option_uint(b, "Port", u64::from(u16::MAX))?
            .map(|p| p as u16)
            .filter(|p| *p > 0);
        let mtu = option_uint(b, "MTU", 65535)?
            .map(|m| m as u32)
            .filter(|m| *m > 0);
        if let Some(m) = mtu {
            if m < ENCAP_OVERHEAD + 68 {
                return Err(option_err("MTU", format!("{m} leaves no room for packets after the {ENCAP_OVERHEAD}-byte VXLAN overhead")));
            }
        }
        let cfg = VxlanConfig {
            vni,
            port,
            mtu,
            gbp: option_bool(b, "GBP")?,
            learning: option_bool(b, "Learning")?,
            direct_routing: option_bool(b, "DirectRouting")?,
        };
        let longest = if ipv6 {
            cfg.device_name_v6()
        } else {
            cfg.device_name()
        };
        if longest.len() > MAX_IFNAME {
            return Err(option_err(
                "VNI",
                format!("{vni} makes the device name {longest:?} longer than Linux allows"),
            ));
        }
        Ok(cfg)
    }

    /// `flannel.<VNI>`.
    pub fn device_name(&self) -> String {
        format!("flannel.{}", self.vni)
    }

    /// `flannel-v6.<VNI>`.
    pub fn device_name_v6(&self) -> String {
        format!("flannel-v6.{}", self.vni)
    }
}

/// The lease `BackendData` upstream writes: `{"VNI":n,"VtepMAC":"…"}`. The
/// VNI is upstream's `uint16` field (truncated like Go's conversion), so
/// upstream nodes can decode it.
pub fn lease_data(vni: u32, mac: Mac) -> RawJson {
    let text = format!(r#"{{"VNI":{},"VtepMAC":"{mac}"}}"#, vni as u16);
    RawJson::new(&text).expect("the vxlan lease data is valid JSON")
}

/// The `VtepMAC` of another host's `BackendData` (field names matched
/// case-insensitively, as Go's decoder does).
pub fn vtep_mac(data: Option<&RawJson>) -> Result<Mac, String> {
    let data = data.ok_or("no backend data")?;
    let v: Value = serde_json::from_str(data.get()).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("backend data is not a JSON object")?;
    let mac = obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("VtepMAC"))
        .map(|(_, v)| v)
        .ok_or("VtepMAC missing")?;
    let text = mac.as_str().ok_or("VtepMAC is not a string")?;
    Mac::parse(text).ok_or_else(|| format!("VtepMAC {text:?} is not a MAC address"))
}

/// A flannel vxlan device as the planner knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dev {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
}

/// What the vxlan backend keeps of another host's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPeer {
    pub key: SubnetKey,
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    /// The peer's IPv4 VTEP MAC (`BackendData`), when usable.
    pub mac: Option<Mac>,
    /// The peer's IPv6 VTEP MAC (`BackendV6Data`), when usable.
    pub mac_v6: Option<Mac>,
}

/// Leases → neighbour, FDB and route entries (pure).
#[derive(Debug, Clone)]
pub struct VxlanPlanner {
    pub direct_routing: bool,
    pub ext_index: u32,
    pub v4: Option<Dev>,
    pub v6: Option<Dev>,
    pub networks: Vec<IpNet>,
    pub own_subnets: Vec<IpNet>,
}

impl VxlanPlanner {
    /// Entries for one peer subnet through `dev`: a direct route when allowed
    /// and the peer is directly connected, else the (neigh, fdb, onlink route)
    /// triple.
    fn plan_family(
        &self,
        d: &mut Desired,
        dev: &Dev,
        subnet: IpNet,
        public: IpAddr,
        mac: Mac,
        direct: &DirectPeers,
    ) {
        if let Some(oif) = direct.get(&public).filter(|_| self.direct_routing) {
            d.add_route(RouteSpec {
                dst: subnet,
                gateway: public,
                oif: *oif,
                onlink: false,
            });
            return;
        }
        d.add_neigh(NeighSpec {
            ifindex: dev.index,
            ip: subnet.network(),
            mac,
        });
        d.add_fdb(FdbSpec {
            ifindex: dev.index,
            mac,
            dst: public,
        });
        d.add_route(RouteSpec {
            dst: subnet,
            gateway: subnet.network(),
            oif: dev.index,
            onlink: true,
        });
    }
}

impl Planner for VxlanPlanner {
    type Peer = VxlanPeer;

    fn peer(&self, lease: &Lease) -> Option<VxlanPeer> {
        let v6_text = lease.key.ipv6.map(|n| n.to_string()).unwrap_or_default();
        if lease.attrs.backend_type.as_deref() != Some("vxlan") {
            tracing::warn!(
                "ignoring non-vxlan v4Subnet({}) v6Subnet({v6_text}): type={}",
                lease.key.ipv4,
                lease.attrs.backend_type.as_deref().unwrap_or("")
            );
            return None;
        }
        let mac = match (&self.v4, vtep_mac(lease.attrs.backend_data.as_ref())) {
            (None, _) => None,
            (Some(_), Ok(m)) => Some(m),
            (Some(_), Err(e)) => {
                tracing::error!("error decoding subnet lease JSON of {}: {e}", lease.key);
                None
            }
        };
        let mac_v6 = match (&self.v6, lease.key.ipv6, lease.attrs.public_ipv6) {
            (Some(_), Some(_), Some(_)) => match vtep_mac(lease.attrs.backend_v6_data.as_ref()) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!("error decoding v6 subnet lease JSON of {}: {e}", lease.key);
                    None
                }
            },
            _ => None,
        };
        if mac.is_none() && mac_v6.is_none() {
            return None;
        }
        Some(VxlanPeer {
            key: lease.key,
            public_ip: lease.attrs.public_ip,
            public_ipv6: lease.attrs.public_ipv6,
            mac,
            mac_v6,
        })
    }

    fn lookups(&self, p: &VxlanPeer) -> Vec<IpAddr> {
        if !self.direct_routing {
            return Vec::new();
        }
        let mut v = Vec::new();
        if p.mac.is_some() && self.v4.is_some() {
            v.push(IpAddr::V4(p.public_ip));
        }
        if let (Some(ip), Some(_), Some(_)) = (p.public_ipv6, p.mac_v6, &self.v6) {
            v.push(IpAddr::V6(ip));
        }
        v
    }

    fn desired(&self, peers: &BTreeMap<SubnetKey, VxlanPeer>, direct: &DirectPeers) -> Desired {
        let mut d = Desired::default();
        for p in peers.values() {
            if let (Some(dev), Some(mac)) = (&self.v4, p.mac) {
                self.plan_family(
                    &mut d,
                    dev,
                    IpNet::V4(p.key.ipv4),
                    IpAddr::V4(p.public_ip),
                    mac,
                    direct,
                );
            }
            if let (Some(dev), Some(mac), Some(sn), Some(public)) =
                (&self.v6, p.mac_v6, p.key.ipv6, p.public_ipv6)
            {
                self.plan_family(&mut d, dev, IpNet::V6(sn), IpAddr::V6(public), mac, direct);
            }
        }
        d
    }

    fn ownership(&self) -> Ownership {
        Ownership {
            networks: self.networks.clone(),
            own_subnets: self.own_subnets.clone(),
            devices: self.v4.iter().chain(&self.v6).map(|d| d.index).collect(),
            gateway_oifs: vec![self.ext_index],
        }
    }

    fn uses_v6(&self) -> bool {
        self.v6.is_some()
    }

    fn device_name(&self, index: u32) -> String {
        match self.v4.iter().chain(&self.v6).find(|d| d.index == index) {
            Some(d) => d.name.clone(),
            None => format!("#{index}"),
        }
    }

    fn added_line(&self, p: &VxlanPeer) -> String {
        let mac = p
            .mac
            .or(p.mac_v6)
            .map(|m| m.to_string())
            .unwrap_or_default();
        format!(
            "subnet added: {} PublicIP: {} VtepMAC: {mac}",
            p.key, p.public_ip
        )
    }

    fn removed_line(&self, p: &VxlanPeer) -> String {
        format!("subnet removed: {} PublicIP: {}", p.key, p.public_ip)
    }
}

/// What to do about the vxlan link a backend wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkVerdict {
    /// No link by that name: create it.
    Create,
    /// A compatible link exists: keep it (and its MAC), fixing what can be
    /// changed in place.
    Adopt {
        index: u32,
        mac: Mac,
        change: LinkChange,
    },
    /// A link by that name exists but cannot be made right in place.
    Recreate {
        index: u32,
        reason: String,
        old_mac: Option<Mac>,
    },
}

/// Decides whether an existing link can be adopted: upstream's
/// `vxlanLinksIncompat` (type, VNI, underlay device, local address, group,
/// l2miss, port, GBP; unset values on either side match), plus the learning
/// flag, which upstream silently leaves as it was.
pub fn vxlan_verdict(want: &VxlanSpec, have: Option<&LinkState>) -> LinkVerdict {
    let Some(have) = have else {
        return LinkVerdict::Create;
    };
    let recreate = |reason: String| LinkVerdict::Recreate {
        index: have.index,
        reason,
        old_mac: have.mac,
    };
    let (Some("vxlan"), Some(v)) = (have.kind.as_deref(), have.vxlan.as_ref()) else {
        return recreate(format!(
            "link type: vxlan vs {}",
            have.kind.as_deref().unwrap_or("unknown")
        ));
    };
    let w = &want.attrs;
    let differ =
        |a: Option<String>, b: Option<String>| matches!((a, b), (Some(a), Some(b)) if a != b);
    let reason = if w.vni != v.vni {
        Some(format!("vni: {} vs {}", w.vni, v.vni))
    } else if differ(
        w.link.filter(|i| *i > 0).map(|i| i.to_string()),
        v.link.filter(|i| *i > 0).map(|i| i.to_string()),
    ) {
        Some(format!(
            "vtep (external) interface: {:?} vs {:?}",
            w.link, v.link
        ))
    } else if differ(
        w.local.map(|a| a.to_string()),
        v.local.map(|a| a.to_string()),
    ) {
        Some(format!(
            "vtep (external) IP: {:?} vs {:?}",
            w.local, v.local
        ))
    } else if differ(
        w.group.map(|a| a.to_string()),
        v.group.map(|a| a.to_string()),
    ) {
        Some(format!("group address: {:?} vs {:?}", w.group, v.group))
    } else if w.l2miss != v.l2miss {
        Some(format!("l2miss: {} vs {}", w.l2miss, v.l2miss))
    } else if differ(
        w.port.filter(|p| *p > 0).map(|p| p.to_string()),
        v.port.filter(|p| *p > 0).map(|p| p.to_string()),
    ) {
        Some(format!("port: {:?} vs {:?}", w.port, v.port))
    } else if w.gbp != v.gbp {
        Some(format!("gbp: {} vs {}", w.gbp, v.gbp))
    } else if w.learning != v.learning {
        Some(format!("learning: {} vs {}", w.learning, v.learning))
    } else {
        None
    };
    if let Some(reason) = reason {
        return recreate(reason);
    }
    let mac = match have.mac {
        Some(m) if m.is_usable_unicast() => m,
        _ => return recreate("the existing link has no usable MAC address".to_owned()),
    };
    let change = LinkChange {
        up: false,
        mtu: (have.mtu != want.mtu).then_some(want.mtu),
        mac: None,
    };
    LinkVerdict::Adopt {
        index: have.index,
        mac,
        change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kernel::VxlanAttrs;
    use crate::config::NetworkConfig;

    const MAC_A: Mac = Mac([0x0a, 1, 2, 3, 4, 5]);
    const MAC_B: Mac = Mac([0x0a, 9, 9, 9, 9, 9]);
    const ETH: u32 = 2;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg(json: &str) -> Result<VxlanConfig, ConfigError> {
        let c = NetworkConfig::parse(&format!(r#"{{"Network":"10.5.0.0/16","Backend":{json}}}"#))
            .unwrap();
        VxlanConfig::from_backend(&c.backend, false)
    }

    #[test]
    fn options_default_like_upstream_and_match_case_insensitively() {
        assert_eq!(cfg(r#"{"Type":"vxlan"}"#).unwrap(), VxlanConfig::default());
        let c = cfg(r#"{"Type":"vxlan","vni":4,"PORT":4789,"mtu":9000,"gbp":true,"learning":true,"directrouting":true}"#).unwrap();
        assert_eq!(
            c,
            VxlanConfig {
                vni: 4,
                port: Some(4789),
                mtu: Some(9000),
                gbp: true,
                learning: true,
                direct_routing: true
            }
        );
        assert_eq!(c.device_name(), "flannel.4");
        assert_eq!(c.device_name_v6(), "flannel-v6.4");
        assert_eq!(
            cfg(r#"{"Type":"vxlan","Port":0}"#).unwrap().port,
            None,
            "0 means the kernel default"
        );
        for bad in [
            r#"{"Type":"vxlan","VNI":"1"}"#,
            r#"{"Type":"vxlan","VNI":-1}"#,
            r#"{"Type":"vxlan","VNI":16777216}"#,
            r#"{"Type":"vxlan","Port":70000}"#,
            r#"{"Type":"vxlan","GBP":"yes"}"#,
            r#"{"Type":"vxlan","MTU":100}"#,
        ] {
            assert!(cfg(bad).is_err(), "{bad}");
        }
        let long = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan","VNI":100000}}"#).unwrap();
        assert_eq!(
            VxlanConfig::from_backend(&long.backend, true)
                .unwrap_err()
                .key,
            "Backend.VNI"
        );
    }

    #[test]
    fn lease_data_is_byte_for_byte_upstreams() {
        let mac = Mac::parse("c6:d2:32:6f:8f:44").unwrap();
        assert_eq!(
            lease_data(1, mac).get(),
            r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#
        );
        assert_eq!(
            lease_data(65536 + 7, mac).get(),
            r#"{"VNI":7,"VtepMAC":"c6:d2:32:6f:8f:44"}"#
        );
        assert_eq!(vtep_mac(Some(&lease_data(1, mac))), Ok(mac));
        assert_eq!(
            vtep_mac(Some(
                &RawJson::new(r#"{"vtepmac":"C6-D2-32-6F-8F-44"}"#).unwrap()
            )),
            Ok(mac)
        );
        for bad in [
            r#"{}"#,
            r#"[]"#,
            r#""x""#,
            r#"{"VtepMAC":5}"#,
            r#"{"VtepMAC":"nope"}"#,
        ] {
            assert!(
                vtep_mac(Some(&RawJson::new(bad).unwrap())).is_err(),
                "{bad}"
            );
        }
        assert!(vtep_mac(None).is_err());
    }

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".into(),
            mac: MAC_A,
            mtu: 1450,
            attrs: VxlanAttrs {
                vni: 1,
                link: Some(ETH),
                local: Some(ip("192.0.2.1")),
                ..Default::default()
            },
        }
    }

    fn existing() -> LinkState {
        LinkState {
            index: 9,
            name: "flannel.1".into(),
            kind: Some("vxlan".into()),
            mac: Some(MAC_B),
            mtu: 1450,
            up: true,
            vxlan: Some(VxlanAttrs {
                port: Some(8472),
                ..spec().attrs
            }),
        }
    }

    #[test]
    fn a_compatible_link_is_adopted_with_its_mac() {
        assert_eq!(vxlan_verdict(&spec(), None), LinkVerdict::Create);
        assert_eq!(
            vxlan_verdict(&spec(), Some(&existing())),
            LinkVerdict::Adopt {
                index: 9,
                mac: MAC_B,
                change: LinkChange::default()
            }
        );
        let smaller = LinkState {
            mtu: 1400,
            ..existing()
        };
        assert_eq!(
            vxlan_verdict(&spec(), Some(&smaller)),
            LinkVerdict::Adopt {
                index: 9,
                mac: MAC_B,
                change: LinkChange {
                    mtu: Some(1450),
                    ..Default::default()
                }
            }
        );
    }

    #[test]
    fn an_incompatible_link_is_recreated_keeping_its_mac() {
        let cases: Vec<(LinkState, &str)> = vec![
            (
                LinkState {
                    kind: Some("veth".into()),
                    vxlan: None,
                    ..existing()
                },
                "link type",
            ),
            (
                LinkState {
                    vxlan: Some(VxlanAttrs {
                        vni: 2,
                        ..existing().vxlan.unwrap()
                    }),
                    ..existing()
                },
                "vni",
            ),
            (
                LinkState {
                    vxlan: Some(VxlanAttrs {
                        link: Some(3),
                        ..existing().vxlan.unwrap()
                    }),
                    ..existing()
                },
                "interface",
            ),
            (
                LinkState {
                    vxlan: Some(VxlanAttrs {
                        local: Some(ip("192.0.2.9")),
                        ..existing().vxlan.unwrap()
                    }),
                    ..existing()
                },
                "IP",
            ),
            (
                LinkState {
                    vxlan: Some(VxlanAttrs {
                        gbp: true,
                        ..existing().vxlan.unwrap()
                    }),
                    ..existing()
                },
                "gbp",
            ),
            (
                LinkState {
                    vxlan: Some(VxlanAttrs {
                        learning: true,
                        ..existing().vxlan.unwrap()
                    }),
                    ..existing()
                },
                "learning",
            ),
        ];
        for (have, word) in cases {
            match vxlan_verdict(&spec(), Some(&have)) {
                LinkVerdict::Recreate {
                    index: 9,
                    reason,
                    old_mac,
                } => {
                    assert!(reason.contains(word), "{reason} should mention {word}");
                    assert_eq!(old_mac, Some(MAC_B));
                }
                other => panic!("{word}: {other:?}"),
            }
        }
        // A configured port must match; an unset one adopts whatever the kernel chose.
        let port = VxlanSpec {
            attrs: VxlanAttrs {
                port: Some(4789),
                ..spec().attrs
            },
            ..spec()
        };
        assert!(matches!(
            vxlan_verdict(&port, Some(&existing())),
            LinkVerdict::Recreate { .. }
        ));
        assert!(matches!(
            vxlan_verdict(&spec(), Some(&existing())),
            LinkVerdict::Adopt { .. }
        ));
    }
}
