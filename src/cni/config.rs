//! Our network config (the JSON on stdin), the facts we take from subnet.env, and the
//! delegate config built from both. Pure: no files, no processes.
//!
//! The delegate rules mirror `flannel-io/cni-plugin` (`flannel.go` `cmdAdd`,
//! `flannel_linux.go` `doCmdAdd`/`getDelegateIPAM`), see `flannel-reference.md` §8.
//! Keys of our own config match case-insensitively, as Go's `encoding/json` does for
//! struct fields; keys inside `delegate` and `ipam` are map keys in Go, so they match
//! exactly.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{json, Map, Value};

use super::types::CniError;
use crate::compat::DEFAULT_SUBNET_FILE;
use crate::subnet::env::SubnetEnv;

/// Where the plugin keeps each container's delegate config (upstream's `defaultDataDir`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// The delegate type when `delegate.type` is not set.
pub const DEFAULT_DELEGATE_TYPE: &str = "bridge";

/// The IPAM type when `ipam.type` is not set.
pub const DEFAULT_IPAM_TYPE: &str = "host-local";

/// The flannel plugin's network config.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`; empty when absent (then the delegate keeps its own, if any).
    pub cni_version: String,
    /// `name`, copied into the delegate.
    pub name: String,
    /// `subnetFile`: the subnet.env flanneld writes.
    pub subnet_file: PathBuf,
    /// `dataDir`: where delegate configs are kept between ADD and DEL.
    pub data_dir: PathBuf,
    /// `delegate`: the base of the delegate config.
    pub delegate: Option<Map<String, Value>>,
    /// `ipam`: the base of the delegate's IPAM section.
    pub ipam: Option<Map<String, Value>>,
    /// `runtimeConfig`: copied into the delegate.
    pub runtime_config: Option<Map<String, Value>>,
    /// `prevResult`: only used to pass CHECK through to the delegate.
    pub prev_result: Option<Map<String, Value>>,
    /// `debug` (ours; upstream has no such key): log the delegate config on every ADD.
    /// Upstream's plugin is silent there, so by default ours is too.
    pub debug: bool,
}

impl NetConf {
    /// Reads the config from the (already decoded) stdin object.
    ///
    /// A `null` value means "absent", as in Go. An empty `subnetFile` or `dataDir` also
    /// means the default: upstream would open "" or write state files into its working
    /// directory, which is never what anyone wants.
    pub fn from_json(obj: &Map<String, Value>) -> Result<Self, CniError> {
        let path_or = |key, default: &str| -> Result<PathBuf, CniError> {
            let s = string_field(obj, key)?;
            Ok(PathBuf::from(if s.is_empty() {
                default.to_owned()
            } else {
                s
            }))
        };
        Ok(Self {
            cni_version: string_field(obj, "cniVersion")?,
            name: string_field(obj, "name")?,
            subnet_file: path_or("subnetFile", DEFAULT_SUBNET_FILE)?,
            data_dir: path_or("dataDir", DEFAULT_DATA_DIR)?,
            delegate: object_field(obj, "delegate")?,
            ipam: object_field(obj, "ipam")?,
            runtime_config: object_field(obj, "runtimeConfig")?,
            prev_result: object_field(obj, "prevResult")?,
            debug: bool_field(obj, "debug")?,
        })
    }
}

/// A field of our config by name: the exact key if present, else the first key that
/// matches ignoring ASCII case (Go's rule for struct fields).
pub fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// A string field; absent or `null` is "".
pub fn string_field(obj: &Map<String, Value>, name: &str) -> Result<String, CniError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(CniError::BadNetConf(format!(
            "{name:?} must be a string, not {}",
            kind(other)
        ))),
    }
}

/// A boolean field; absent or `null` is `false`.
fn bool_field(obj: &Map<String, Value>, name: &str) -> Result<bool, CniError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(CniError::BadNetConf(format!(
            "{name:?} must be a boolean, not {}",
            kind(other)
        ))),
    }
}

/// An object field; absent or `null` is `None`.
fn object_field(
    obj: &Map<String, Value>,
    name: &str,
) -> Result<Option<Map<String, Value>>, CniError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(other) => Err(CniError::BadNetConf(format!(
            "{name:?} must be an object, not {}",
            kind(other)
        ))),
    }
}

/// The JSON type of `v`, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a complete subnet.env tells the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelEnv {
    /// `FLANNEL_NETWORK` then `FLANNEL_IPV6_NETWORK`: each gets a route in the pod.
    pub networks: Vec<IpNet>,
    /// Network form of `FLANNEL_SUBNET` then `FLANNEL_IPV6_SUBNET`: the IPAM ranges.
    pub subnets: Vec<IpNet>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: flanneld masquerades, so the delegate must not.
    pub ipmasq: bool,
}

impl FlannelEnv {
    /// Checks that `env` (read from `path`) has what ADD needs, as upstream's
    /// `subnetEnv.missing` does: a network and a subnet of either family, the MTU and
    /// the masquerade flag. The error text is upstream's (`"<file> is missing …"`).
    pub fn from_subnet_env(env: &SubnetEnv, path: &Path) -> Result<Self, CniError> {
        // Each family's networks: one, or the comma list flanneld v0.21-v0.24 wrote for a
        // config with several (upstream: `loadFlannelSubnetEnv` splits, dedups, and
        // `getDelegateIPAM` adds a route per network).
        let networks: Vec<IpNet> = env
            .all_networks()
            .into_iter()
            .map(IpNet::V4)
            .chain(env.all_ipv6_networks().into_iter().map(IpNet::V6))
            .collect();
        let subnets: Vec<IpNet> = env
            .subnet
            .map(IpNet::V4)
            .into_iter()
            .chain(env.ipv6_subnet.map(IpNet::V6))
            .map(|n| n.trunc())
            .collect();
        let mut missing = Vec::new();
        if networks.is_empty() {
            missing.extend(["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]);
        }
        if subnets.is_empty() {
            missing.extend(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]);
        }
        if env.mtu.is_none() {
            missing.push("FLANNEL_MTU");
        }
        if env.ipmasq.is_none() {
            missing.push("FLANNEL_IPMASQ");
        }
        match (env.mtu, env.ipmasq) {
            (Some(mtu), Some(ipmasq)) if missing.is_empty() => Ok(Self {
                networks,
                subnets,
                mtu,
                ipmasq,
            }),
            _ => Err(CniError::SubnetEnv(format!(
                "{} is missing {}",
                path.display(),
                missing.join(", ")
            ))),
        }
    }
}

/// Builds the delegate config for ADD from our config and subnet.env, applying
/// upstream's defaults in upstream's order. Keys the user set in `delegate` win over
/// every default except `name`, `cniVersion` (ours when set), `ipam` and
/// `runtimeConfig`, which flannel owns.
pub fn build_delegate(conf: &NetConf, env: &FlannelEnv) -> Result<Map<String, Value>, CniError> {
    let mut delegate = conf.delegate.clone().unwrap_or_default();
    check_user_delegate(&delegate)?;
    if let Some(rc) = &conf.runtime_config {
        delegate.insert("runtimeConfig".into(), Value::Object(rc.clone()));
    }
    delegate.insert("name".into(), conf.name.clone().into());
    delegate
        .entry("type")
        .or_insert_with(|| DEFAULT_DELEGATE_TYPE.into());
    // If flannel is not masquerading, the delegate should.
    delegate
        .entry("ipMasq")
        .or_insert_with(|| (!env.ipmasq).into());
    delegate.entry("mtu").or_insert_with(|| env.mtu.into());
    if delegate.get("type").and_then(Value::as_str) == Some(DEFAULT_DELEGATE_TYPE) {
        delegate.entry("isGateway").or_insert(Value::Bool(true));
    }
    if !conf.cni_version.is_empty() {
        delegate.insert("cniVersion".into(), conf.cni_version.clone().into());
    }
    delegate.insert(
        "ipam".into(),
        Value::Object(delegate_ipam(conf.ipam.as_ref(), env)?),
    );
    Ok(delegate)
}

/// The runtime's `prevResult` as CHECK hands it to the delegate: each route without a
/// `gw` gets the gateway of the first `ips` entry of its family, if there is one.
///
/// Why: the spec says a route without `gw` goes via "a default gateway (as determined
/// by the plugin)", and the reference plugins (bridge, macvlan, ipvlan, ptp, through
/// `ipam.ConfigureIface`) install it via the interface's gateway. But their CHECK
/// (`ip.ValidateExpectedRoute`, containernetworking/plugins 1.1.1 as Debian ships it)
/// then looks for a route *without* a gateway and fails. Flannel's routes never carry
/// a `gw`, so without this every healthy pod would fail CHECK. Filling in the gateway
/// the plugin itself used keeps the check meaningful and the verdict right.
pub fn prev_result_for_check(prev: &Map<String, Value>) -> Map<String, Value> {
    let mut prev = prev.clone();
    let gateways: Vec<IpAddr> = prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("gateway")?.as_str()?.parse().ok())
        .collect();
    let Some(Value::Array(routes)) = prev.get_mut("routes") else {
        return prev;
    };
    for route in routes.iter_mut().filter_map(Value::as_object_mut) {
        if route.get("gw").is_some_and(|gw| !gw.is_null()) {
            continue;
        }
        let Some(dst) = route
            .get("dst")
            .and_then(Value::as_str)
            .and_then(|d| d.parse::<IpNet>().ok())
        else {
            continue;
        };
        if let Some(gw) = gateways
            .iter()
            .find(|gw| gw.is_ipv4() == dst.addr().is_ipv4())
        {
            route.insert("gw".into(), gw.to_string().into());
        }
    }
    prev
}

/// The delegate type (the plugin to run) of a built or saved delegate config.
pub fn delegate_type(delegate: &Map<String, Value>) -> Option<&str> {
    delegate.get("type").and_then(Value::as_str)
}

/// Refuses what upstream refuses in the user's `delegate` object.
fn check_user_delegate(delegate: &Map<String, Value>) -> Result<(), CniError> {
    if delegate.get("type").is_some_and(|t| !t.is_string()) {
        return Err(CniError::DelegateTypeNotString);
    }
    if delegate.contains_key("name") {
        return Err(CniError::DelegateHasName);
    }
    if delegate.contains_key("ipam") {
        return Err(CniError::DelegateHasIpam);
    }
    Ok(())
}

/// The delegate's IPAM: our `ipam` (or `{}`), `type` defaulting to host-local, `ranges`
/// replaced by one range set per subnet, `routes` = the user's routes plus one per
/// flannel network.
fn delegate_ipam(
    input: Option<&Map<String, Value>>,
    env: &FlannelEnv,
) -> Result<Map<String, Value>, CniError> {
    let mut ipam = input.cloned().unwrap_or_default();
    ipam.entry("type")
        .or_insert_with(|| DEFAULT_IPAM_TYPE.into());
    let ranges: Vec<Value> = env
        .subnets
        .iter()
        .map(|s| json!([{ "subnet": s.to_string() }]))
        .collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes = user_routes(input)?;
    routes.extend(env.networks.iter().map(|n| json!({ "dst": n.to_string() })));
    ipam.insert("routes".into(), Value::Array(routes));
    Ok(ipam)
}

/// The user's `ipam.routes`, checked as upstream does by decoding them into CNI routes
/// (an object with a CIDR `dst` and, optionally, an IP `gw`). They are kept as
/// written, so route fields newer than this code still reach the IPAM plugin.
fn user_routes(ipam: Option<&Map<String, Value>>) -> Result<Vec<Value>, CniError> {
    let routes = match ipam.and_then(|m| m.get("routes")) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(routes)) => routes,
        Some(other) => {
            return Err(CniError::BadIpamRoutes(format!(
                "expected a list, found {}",
                kind(other)
            )))
        }
    };
    for (i, route) in routes.iter().enumerate() {
        check_route(route)
            .map_err(|reason| CniError::BadIpamRoutes(format!("route {i}: {reason}")))?;
    }
    Ok(routes.clone())
}

/// Checks one route object.
fn check_route(route: &Value) -> Result<(), String> {
    let Value::Object(obj) = route else {
        return Err(format!("expected an object, found {}", kind(route)));
    };
    match field(obj, "dst") {
        Some(Value::String(dst)) => {
            dst.parse::<IpNet>()
                .map_err(|e| format!("dst {dst:?}: {e}"))?;
        }
        Some(other) => return Err(format!("dst must be a CIDR string, not {}", kind(other))),
        None => return Err("dst is missing".into()),
    }
    match field(obj, "gw") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(gw)) => gw
            .parse::<std::net::IpAddr>()
            .map(drop)
            .map_err(|e| format!("gw {gw:?}: {e}")),
        Some(other) => Err(format!(
            "gw must be an IP address string, not {}",
            kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::types::ErrorCode;

    /// A subnet.env of both families, flannel masquerading, MTU 1450.
    fn env() -> FlannelEnv {
        FlannelEnv::from_subnet_env(
            &SubnetEnv::parse(
                "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n\
                 FLANNEL_IPV6_NETWORK=2001:db8:42::/56\nFLANNEL_IPV6_SUBNET=2001:db8:42:17::1/64\n\
                 FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            )
            .unwrap(),
            Path::new("/run/flannel/subnet.env"),
        )
        .unwrap()
    }

    fn v4_env(ipmasq: bool) -> FlannelEnv {
        FlannelEnv {
            networks: vec!["10.1.0.0/16".parse().unwrap()],
            subnets: vec!["10.1.17.0/24".parse().unwrap()],
            mtu: 1472,
            ipmasq,
        }
    }

    fn conf(json: Value) -> NetConf {
        NetConf::from_json(json.as_object().unwrap()).unwrap()
    }

    fn build(json: Value, env: &FlannelEnv) -> Result<Value, CniError> {
        build_delegate(&conf(json), env).map(Value::Object)
    }

    #[test]
    fn config_defaults_and_case_insensitive_keys() {
        let c = conf(json!({"name": "n", "type": "flannel"}));
        assert_eq!(c.subnet_file, Path::new("/run/flannel/subnet.env"));
        assert_eq!(c.data_dir, Path::new("/var/lib/cni/flannel"));
        assert_eq!(
            (
                c.cni_version.as_str(),
                c.delegate.is_none(),
                c.ipam.is_none()
            ),
            ("", true, true)
        );
        let c = conf(json!({"name": "n", "SubnetFile": "/a", "datadir": "/b", "subnetFile": "/c"}));
        assert_eq!(
            (c.subnet_file.to_str(), c.data_dir.to_str()),
            (Some("/c"), Some("/b")),
            "exact key wins"
        );
        let c = conf(json!({"name": "n", "subnetFile": null, "dataDir": "", "delegate": null}));
        assert_eq!(
            (c.subnet_file.to_str(), c.data_dir.to_str()),
            (Some(DEFAULT_SUBNET_FILE), Some(DEFAULT_DATA_DIR))
        );
        assert!(c.delegate.is_none());
    }

    #[test]
    fn config_type_errors_are_decoding_failures() {
        for bad in [
            json!({"name": 1}),
            json!({"name": "n", "subnetFile": 3}),
            json!({"name": "n", "delegate": "bridge"}),
            json!({"name": "n", "ipam": []}),
            json!({"name": "n", "runtimeConfig": true}),
        ] {
            let err = NetConf::from_json(bad.as_object().unwrap()).unwrap_err();
            assert_eq!(err.code(), ErrorCode::DECODING_FAILURE, "{bad}");
            assert!(
                err.to_string().starts_with("failed to load netconf: "),
                "{err}"
            );
        }
    }

    /// Upstream's README example: `{"name":"mynet","type":"flannel"}` with a v4 env.
    #[test]
    fn minimal_config_gives_upstreams_bridge_delegate() {
        let got = build(json!({"name": "mynet", "type": "flannel"}), &v4_env(true)).unwrap();
        let want = json!({
            "name": "mynet",
            "type": "bridge",
            "mtu": 1472,
            "ipMasq": false,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.1.17.0/24"}]],
                "routes": [{"dst": "10.1.0.0/16"}],
            },
        });
        assert_eq!(got, want);
    }

    /// Each row: our config, the subnet.env's masquerade flag, and the delegate keys
    /// that must result (`None` = key absent).
    #[test]
    fn delegate_defaults_and_overrides() {
        type Row = (
            &'static str,
            Value,
            bool,
            Vec<(&'static str, Option<Value>)>,
        );
        let rows: Vec<Row> = vec![
            (
                "name comes from ours",
                json!({"name": "net1"}),
                true,
                vec![("name", Some(json!("net1")))],
            ),
            (
                "type defaults to bridge",
                json!({"name": "n"}),
                true,
                vec![("type", Some(json!("bridge")))],
            ),
            (
                "type override kept",
                json!({"name": "n", "delegate": {"type": "macvlan"}}),
                true,
                vec![("type", Some(json!("macvlan")))],
            ),
            (
                "ipMasq = !FLANNEL_IPMASQ (true)",
                json!({"name": "n"}),
                true,
                vec![("ipMasq", Some(json!(false)))],
            ),
            (
                "ipMasq = !FLANNEL_IPMASQ (false)",
                json!({"name": "n"}),
                false,
                vec![("ipMasq", Some(json!(true)))],
            ),
            (
                "ipMasq override kept",
                json!({"name": "n", "delegate": {"ipMasq": false}}),
                false,
                vec![("ipMasq", Some(json!(false)))],
            ),
            (
                "mtu defaults to FLANNEL_MTU",
                json!({"name": "n"}),
                true,
                vec![("mtu", Some(json!(1472)))],
            ),
            (
                "mtu override kept",
                json!({"name": "n", "delegate": {"mtu": 1400}}),
                true,
                vec![("mtu", Some(json!(1400)))],
            ),
            (
                "a null override is still an override",
                json!({"name": "n", "delegate": {"mtu": null}}),
                true,
                vec![("mtu", Some(Value::Null))],
            ),
            (
                "bridge gets isGateway",
                json!({"name": "n"}),
                true,
                vec![("isGateway", Some(json!(true)))],
            ),
            (
                "explicit bridge gets isGateway",
                json!({"name": "n", "delegate": {"type": "bridge"}}),
                true,
                vec![("isGateway", Some(json!(true)))],
            ),
            (
                "isGateway override kept",
                json!({"name": "n", "delegate": {"isGateway": false}}),
                true,
                vec![("isGateway", Some(json!(false)))],
            ),
            (
                "non-bridge gets no isGateway",
                json!({"name": "n", "delegate": {"type": "macvlan", "master": "eth0"}}),
                true,
                vec![("isGateway", None), ("master", Some(json!("eth0")))],
            ),
            (
                "no cniVersion: none added",
                json!({"name": "n"}),
                true,
                vec![("cniVersion", None)],
            ),
            (
                "cniVersion from ours",
                json!({"name": "n", "cniVersion": "0.3.1"}),
                true,
                vec![("cniVersion", Some(json!("0.3.1")))],
            ),
            (
                "ours overrides the delegate's cniVersion",
                json!({"name": "n", "cniVersion": "1.0.0", "delegate": {"cniVersion": "0.3.0"}}),
                true,
                vec![("cniVersion", Some(json!("1.0.0")))],
            ),
            (
                "delegate's cniVersion kept when ours is absent",
                json!({"name": "n", "delegate": {"cniVersion": "0.3.0"}}),
                true,
                vec![("cniVersion", Some(json!("0.3.0")))],
            ),
            (
                "other delegate keys pass through",
                json!({"name": "n", "delegate": {"bridge": "mynet0", "hairpinMode": true, "isDefaultGateway": true}}),
                true,
                vec![
                    ("bridge", Some(json!("mynet0"))),
                    ("hairpinMode", Some(json!(true))),
                    ("isDefaultGateway", Some(json!(true))),
                ],
            ),
            (
                "runtimeConfig copied",
                json!({"name": "n", "runtimeConfig": {"portMappings": [{"hostPort": 80}]}}),
                true,
                vec![(
                    "runtimeConfig",
                    Some(json!({"portMappings": [{"hostPort": 80}]})),
                )],
            ),
            (
                "ours replaces the delegate's runtimeConfig",
                json!({"name": "n", "runtimeConfig": {"a": 1}, "delegate": {"runtimeConfig": {"b": 2}}}),
                true,
                vec![("runtimeConfig", Some(json!({"a": 1})))],
            ),
            (
                "empty runtimeConfig still copied",
                json!({"name": "n", "runtimeConfig": {}}),
                true,
                vec![("runtimeConfig", Some(json!({})))],
            ),
            (
                "no runtimeConfig: none added",
                json!({"name": "n"}),
                true,
                vec![("runtimeConfig", None)],
            ),
            (
                "capabilities, args and prevResult are not passed",
                json!({"name": "n", "capabilities": {"portMappings": true}, "args": {"a": 1}, "prevResult": {}}),
                true,
                vec![("capabilities", None), ("args", None), ("prevResult", None)],
            ),
        ];
        for (what, input, ipmasq, want) in rows {
            let got = build(input, &v4_env(ipmasq)).unwrap_or_else(|e| panic!("{what}: {e}"));
            for (key, value) in &want {
                assert_eq!(got.get(key), value.as_ref(), "{what}: key {key} in {got}");
            }
        }
    }

    /// Each row: our `ipam` section (if any), and the delegate's `ipam` that must result.
    #[test]
    fn ipam_defaults_and_overrides() {
        let rows: Vec<(&str, Option<Value>, Value)> = vec![
            (
                "no ipam: host-local, subnet, flannel route",
                None,
                json!({"type": "host-local", "ranges": [[{"subnet": "10.1.17.0/24"}]], "routes": [{"dst": "10.1.0.0/16"}]}),
            ),
            (
                "ipam type kept",
                Some(json!({"type": "static"})),
                json!({"type": "static", "ranges": [[{"subnet": "10.1.17.0/24"}]], "routes": [{"dst": "10.1.0.0/16"}]}),
            ),
            (
                "other ipam keys kept",
                Some(json!({"dataDir": "/tmp/x", "resolvConf": "/r"})),
                json!({"type": "host-local", "dataDir": "/tmp/x", "resolvConf": "/r",
                       "ranges": [[{"subnet": "10.1.17.0/24"}]], "routes": [{"dst": "10.1.0.0/16"}]}),
            ),
            (
                "user ranges and subnet are replaced / kept as written",
                Some(
                    json!({"ranges": [[{"subnet": "192.168.0.0/24"}]], "subnet": "192.168.1.0/24"}),
                ),
                json!({"type": "host-local", "subnet": "192.168.1.0/24",
                       "ranges": [[{"subnet": "10.1.17.0/24"}]], "routes": [{"dst": "10.1.0.0/16"}]}),
            ),
            (
                "user routes come first, then the flannel network",
                Some(
                    json!({"routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.17.254"}]}),
                ),
                json!({"type": "host-local", "ranges": [[{"subnet": "10.1.17.0/24"}]],
                       "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.17.254"}, {"dst": "10.1.0.0/16"}]}),
            ),
            (
                "null routes are no routes",
                Some(json!({"routes": null})),
                json!({"type": "host-local", "ranges": [[{"subnet": "10.1.17.0/24"}]], "routes": [{"dst": "10.1.0.0/16"}]}),
            ),
        ];
        for (what, ipam, want) in rows {
            let mut input = json!({"name": "n"});
            if let Some(ipam) = ipam {
                input["ipam"] = ipam;
            }
            let got = build(input, &v4_env(true)).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got["ipam"], want, "{what}");
        }
    }

    #[test]
    fn dual_stack_gets_both_ranges_and_routes() {
        let got = build(json!({"name": "n"}), &env()).unwrap();
        assert_eq!(
            got["ipam"],
            json!({
                "type": "host-local",
                "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "2001:db8:42:17::/64"}]],
                "routes": [{"dst": "10.1.0.0/16"}, {"dst": "2001:db8:42::/56"}],
            })
        );
        assert_eq!(
            (got["mtu"].clone(), got["ipMasq"].clone()),
            (json!(1450), json!(false))
        );
    }

    /// flanneld v0.21-v0.24's subnet.env for a config with several networks: one route
    /// per network, duplicates dropped, in the file's order (upstream's
    /// `loadFlannelSubnetEnv` + `getDelegateIPAM`).
    #[test]
    fn network_lists_give_one_route_per_network() {
        let text = "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16,10.1.0.0/16\n\
                    FLANNEL_SUBNET=10.1.17.1/24\n\
                    FLANNEL_IPV6_NETWORK=2001:db8:42::/56,2001:db8:99::/56\n\
                    FLANNEL_IPV6_SUBNET=2001:db8:42:17::1/64\n\
                    FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let env =
            FlannelEnv::from_subnet_env(&SubnetEnv::parse(text).unwrap(), Path::new("s")).unwrap();
        let got = build(json!({"name": "n"}), &env).unwrap();
        assert_eq!(
            got["ipam"],
            json!({
                "type": "host-local",
                "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "2001:db8:42:17::/64"}]],
                "routes": [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"},
                           {"dst": "2001:db8:42::/56"}, {"dst": "2001:db8:99::/56"}],
            })
        );
    }

    #[test]
    fn ipv6_only_env_is_complete() {
        let text =
            "FLANNEL_IPV6_NETWORK=2001:db8:42::/56\nFLANNEL_IPV6_SUBNET=2001:db8:42:17::1/64\n\
                    FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        let env =
            FlannelEnv::from_subnet_env(&SubnetEnv::parse(text).unwrap(), Path::new("s")).unwrap();
        let got = build(json!({"name": "n"}), &env).unwrap();
        assert_eq!(
            got["ipam"]["ranges"],
            json!([[{"subnet": "2001:db8:42:17::/64"}]])
        );
        assert_eq!(got["ipam"]["routes"], json!([{"dst": "2001:db8:42::/56"}]));
    }

    #[test]
    fn incomplete_subnet_env_names_what_is_missing() {
        let rows = [
            ("", "s is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"),
            ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPMASQ=true\n", "s is missing FLANNEL_MTU"),
            ("FLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1\nFLANNEL_IPMASQ=true\n", "s is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK"),
            ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1\n", "s is missing FLANNEL_IPMASQ"),
        ];
        for (text, want) in rows {
            let err = FlannelEnv::from_subnet_env(&SubnetEnv::parse(text).unwrap(), Path::new("s"))
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::TRY_AGAIN_LATER);
            assert_eq!(
                err.to_string(),
                format!("failed to load flannel 'subnet.env' file: {want}. Check the flannel pod log for this node.")
            );
        }
    }

    #[test]
    fn forbidden_delegate_keys_use_upstreams_errors() {
        let rows = [
            (
                json!({"type": 5}),
                "'delegate' dictionary, if present, must have (string) 'type' field",
            ),
            (
                json!({"type": null}),
                "'delegate' dictionary, if present, must have (string) 'type' field",
            ),
            (
                json!({"name": "x"}),
                "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
            ),
            (
                json!({"ipam": {}}),
                "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel",
            ),
        ];
        for (delegate, msg) in rows {
            let err = build(json!({"name": "n", "delegate": delegate}), &v4_env(true)).unwrap_err();
            assert_eq!(
                (err.code(), err.to_string()),
                (ErrorCode::INVALID_NETWORK_CONFIG, msg.to_owned()),
                "{delegate}"
            );
        }
    }

    #[test]
    fn bad_ipam_routes_are_refused() {
        for routes in [
            json!("10.0.0.0/8"),
            json!([5]),
            json!([{"gw": "10.0.0.1"}]),
            json!([{"dst": "10.0.0.0/33"}]),
            json!([{"dst": 1}]),
            json!([{"dst": "10.0.0.0/8", "gw": "x"}]),
        ] {
            let err = build(
                json!({"name": "n", "ipam": {"routes": routes}}),
                &v4_env(true),
            )
            .unwrap_err();
            assert_eq!(err.code(), ErrorCode::INVALID_NETWORK_CONFIG, "{routes}");
            assert!(
                err.to_string().contains("failed to parse ipam.routes"),
                "{err}"
            );
        }
    }

    #[test]
    fn delegate_type_reads_built_and_saved_configs() {
        let d = build_delegate(&conf(json!({"name": "n"})), &v4_env(true)).unwrap();
        assert_eq!(delegate_type(&d), Some("bridge"));
        assert_eq!(delegate_type(json!({"type": 1}).as_object().unwrap()), None);
    }

    #[test]
    fn check_fills_missing_route_gateways_per_family() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "10.1.17.2/24", "gateway": "10.1.17.1"},
                    {"address": "2001:db8::2/64", "gateway": "2001:db8::1"}],
            "routes": [{"dst": "10.1.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.1.17.254"},
                       {"dst": "2001:db8:42::/56", "gw": null}, {"dst": "bogus"}, 7],
        });
        let got = prev_result_for_check(prev.as_object().unwrap());
        assert_eq!(
            Value::Array(got["routes"].as_array().unwrap().clone()),
            json!([{"dst": "10.1.0.0/16", "gw": "10.1.17.1"}, {"dst": "0.0.0.0/0", "gw": "10.1.17.254"},
                   {"dst": "2001:db8:42::/56", "gw": "2001:db8::1"}, {"dst": "bogus"}, 7])
        );
        let no_gateway =
            json!({"ips": [{"address": "10.1.17.2/24"}], "routes": [{"dst": "10.1.0.0/16"}]});
        let got = prev_result_for_check(no_gateway.as_object().unwrap());
        assert_eq!(Value::Object(got), no_gateway, "nothing to fill in");
    }
}
