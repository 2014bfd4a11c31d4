//! CNI spec types: commands, environment, versions, validated names, error codes and
//! the error type with its JSON form, and the parts of a plugin result we read.
//!
//! Everything here follows the CNI spec (<https://www.cni.dev/docs/spec/>) and the
//! behaviour of libcni's `skel` package (v1.3.0), which upstream's plugin is built on:
//! the same env checks, the same name rules and, where they exist, the same messages.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Every spec version we accept in `cniVersion`, oldest first (libcni v1.3.0 `version.All`).
pub const SUPPORTED_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The spec version of our own VERSION answer (libcni's `version.Current()`).
pub const CURRENT_VERSION: &str = "1.1.0";

/// The version a config without `cniVersion` means (libcni's `ConfigDecoder`).
pub const IMPLICIT_VERSION: &str = "0.1.0";

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`; the spec spells commands in capitals only.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }

    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Gc => "GC",
            Self::Status => "STATUS",
            Self::Version => "VERSION",
        }
    }

    /// The environment variables this command cannot run without, in skel's order.
    pub fn required_env(self) -> &'static [&'static str] {
        match self {
            Self::Add | Self::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            // DEL may come after the namespace is gone, so CNI_NETNS is optional.
            Self::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Self::Gc | Self::Status => &["CNI_PATH"],
            Self::Version => &[],
        }
    }

    /// Whether the per-attachment checks (network name, container id, ifname) apply.
    pub fn is_per_attachment(self) -> bool {
        matches!(self, Self::Add | Self::Del | Self::Check)
    }

    /// The oldest config version allowing this command (CHECK arrived in 0.4.0,
    /// GC and STATUS in 1.1.0).
    pub fn min_version(self) -> Option<&'static str> {
        match self {
            Self::Check => Some("0.4.0"),
            Self::Gc | Self::Status => Some("1.1.0"),
            Self::Add | Self::Del | Self::Version => None,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CNI environment of one invocation. Empty strings stand for unset variables,
/// as in skel (`os.Getenv`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: path of the container's network namespace.
    pub netns: String,
    /// `CNI_IFNAME`: interface name to create inside the container.
    pub ifname: String,
    /// `CNI_ARGS`: extra `K=V;K=V` arguments, passed through untouched.
    pub args: String,
    /// `CNI_PATH`: colon-separated directories to search for plugins.
    pub path: String,
}

impl CniEnv {
    /// Reads the variables through `get` (the process environment in the binary, a map
    /// in tests). Variables that are not valid UTF-8 count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name| get(name).unwrap_or_default();
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }

    /// Reads the variables from the process environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `(name, value)` of every variable except `CNI_COMMAND`, as a delegate gets them.
    pub fn vars(&self) -> [(&'static str, &str); 5] {
        [
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
            ("CNI_PATH", &self.path),
        ]
    }

    /// The value of a variable by name (for the required-variables check).
    fn get(&self, name: &str) -> &str {
        if name == "CNI_COMMAND" {
            return &self.command;
        }
        self.vars()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v)
    }

    /// The names of required variables that are unset for `command`.
    pub fn missing(&self, command: Option<Command>) -> Vec<&'static str> {
        let required = command.map_or(&[][..], Command::required_env);
        std::iter::once("CNI_COMMAND")
            .chain(required.iter().copied())
            .filter(|n| self.get(n).is_empty())
            .collect()
    }
}

/// A `major.minor.patch` spec version, compared numerically (libcni's `ParseVersion`:
/// missing parts are 0, more than three parts is an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecVersion(u64, u64, u64);

impl SpecVersion {
    /// Parses `s`; the error says what is wrong in libcni's words.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(Self(0, 1, 0));
        }
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() > 3 {
            return Err(format!("invalid version {s:?}: too many parts"));
        }
        let num = |i: usize, what: &str| -> Result<u64, String> {
            parts.get(i).map_or(Ok(0), |p| {
                p.parse()
                    .map_err(|_| format!("failed to convert {what} version part {p:?}"))
            })
        };
        Ok(Self(num(0, "major")?, num(1, "minor")?, num(2, "micro")?))
    }
}

/// A container id checked against the spec's rule (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`).
///
/// The rule matters beyond the spec here: the id names our state file, so it must
/// never contain `/` or start with `.` (no path escapes, no clash with temp files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerId(String);

impl ContainerId {
    /// Checks `id` as libcni's `ValidateContainerID` does.
    pub fn new(id: &str) -> Result<Self, CniError> {
        if id.is_empty() {
            return Err(CniError::MissingContainerId);
        }
        if !is_valid_name(id) {
            return Err(CniError::BadContainerId(id.to_owned()));
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The spec's rule for container ids and network names.
pub fn is_valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a network name as libcni's `ValidateNetworkName` does.
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::MissingNetworkName);
    }
    if !is_valid_name(name) {
        return Err(CniError::BadNetworkName(name.to_owned()));
    }
    Ok(())
}

/// Longest interface name the kernel accepts (`IFNAMSIZ` − 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Checks `CNI_IFNAME` as libcni's `ValidateInterfaceName` does.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = |msg: &'static str, details: String| Err(CniError::BadIfName { msg, details });
    if name.is_empty() {
        return bad("interface name is empty", String::new());
    }
    if name.len() > MAX_IFNAME_LEN {
        let details = format!(
            "interface name should be less than {} characters",
            MAX_IFNAME_LEN + 1
        );
        return bad("interface name is too long", details);
    }
    if name == "." || name == ".." {
        return bad("interface name is . or ..", String::new());
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad(
            "interface name contains / or : or whitespace characters",
            String::new(),
        );
    }
    Ok(())
}

/// A CNI error code (spec section "Error").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const INCOMPATIBLE_VERSION: Self = Self(1);
    pub const UNSUPPORTED_FIELD: Self = Self(2);
    pub const UNKNOWN_CONTAINER: Self = Self(3);
    pub const INVALID_ENVIRONMENT: Self = Self(4);
    pub const IO_FAILURE: Self = Self(5);
    pub const DECODING_FAILURE: Self = Self(6);
    pub const INVALID_NETWORK_CONFIG: Self = Self(7);
    pub const TRY_AGAIN_LATER: Self = Self(11);
    pub const PLUGIN_NOT_AVAILABLE: Self = Self(50);
    /// libcni's `ErrInternal`: what upstream reports for every plain Go error.
    pub const INTERNAL: Self = Self(999);
}

/// An error exactly as a delegate plugin reported it; we pass it on unchanged, as
/// skel does (`errors.As` unwraps upstream's "failed to delegate add" wrapper).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PluginError {
    #[serde(default = "internal")]
    pub code: ErrorCode,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

fn internal() -> ErrorCode {
    ErrorCode::INTERNAL
}

/// Everything that makes the plugin fail.
///
/// Policy: every variant becomes the CNI error JSON on stdout plus exit status 1
/// ([`CniError::to_json`]). [`CniError::code`] picks the spec code; `Display` is the
/// whole `msg` (the CNI error has one message string, so causes are formatted in rather
/// than chained) and [`CniError::details`] the optional `details`. Messages are
/// upstream's wherever upstream has one, so operators' searches still find them.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("required env variables [{}] missing", .0.join(","))]
    MissingEnv(Vec<&'static str>),
    #[error("unknown CNI_COMMAND: {0}")]
    UnknownCommand(String),
    #[error("error reading from stdin: {0}")]
    ReadStdin(io::Error),
    #[error("error unmarshall network config: {0}")]
    BadConfigJson(String),
    #[error("missing network name")]
    MissingNetworkName,
    #[error("invalid characters found in network name")]
    BadNetworkName(String),
    #[error("missing containerID")]
    MissingContainerId,
    #[error("invalid characters in containerID")]
    BadContainerId(String),
    #[error("{msg}")]
    BadIfName { msg: &'static str, details: String },
    #[error("decoding version from network config: {0}")]
    BadVersion(String),
    #[error("incompatible CNI versions")]
    IncompatibleVersion(String),
    #[error("config version does not allow {0}")]
    CommandNotAllowed(Command),
    #[error("failed to load netconf: {0}")]
    BadNetConf(String),
    #[error("'delegate' dictionary, if present, must have (string) 'type' field")]
    DelegateTypeNotString,
    #[error("'delegate' dictionary must not have 'name' field, it'll be set by flannel")]
    DelegateHasName,
    #[error("'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")]
    DelegateHasIpam,
    #[error("failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes: {0}")]
    BadIpamRoutes(String),
    /// subnet.env is missing, unreadable or incomplete: flanneld has not (yet) written it.
    #[error(
        "failed to load flannel 'subnet.env' file: {0}. Check the flannel pod log for this node."
    )]
    SubnetEnv(String),
    #[error("failed to {action} delegate config {}: {source}", path.display())]
    State {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("failed to delegate {}: {reason}", .command.as_str().to_lowercase())]
    BadPluginName { command: Command, reason: String },
    #[error("failed to delegate {}: failed to find plugin {plugin:?} in path [{}]",
        .command.as_str().to_lowercase(), .paths.join(" "))]
    PluginNotFound {
        command: Command,
        plugin: String,
        paths: Vec<String>,
    },
    #[error("failed to delegate {}: cannot run {}: {source}", .command.as_str().to_lowercase(), path.display())]
    PluginExec {
        command: Command,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}", .0.msg)]
    PluginFailed(PluginError),
    #[error("failed to delegate {}: {plugin} returned an unusable result: {reason}",
        .command.as_str().to_lowercase())]
    PluginResult {
        command: Command,
        plugin: String,
        reason: String,
    },
}

impl CniError {
    /// The spec error code for this failure.
    ///
    /// Upstream reports every error of its own as 999 (internal); we use the spec's
    /// specific codes where one fits (config problems 6/7, a missing subnet.env 11 "try
    /// again later", file errors 5), which runtimes treat the same way but humans and
    /// tools can tell apart.
    pub fn code(&self) -> ErrorCode {
        use CniError::*;
        match self {
            IncompatibleVersion(_) | CommandNotAllowed(_) => ErrorCode::INCOMPATIBLE_VERSION,
            MissingContainerId => ErrorCode::UNKNOWN_CONTAINER,
            MissingEnv(_) | UnknownCommand(_) | BadContainerId(_) | BadIfName { .. } => {
                ErrorCode::INVALID_ENVIRONMENT
            }
            ReadStdin(_) | State { .. } => ErrorCode::IO_FAILURE,
            BadConfigJson(_) | BadVersion(_) | BadNetConf(_) => ErrorCode::DECODING_FAILURE,
            MissingNetworkName
            | BadNetworkName(_)
            | DelegateTypeNotString
            | DelegateHasName
            | DelegateHasIpam
            | BadIpamRoutes(_)
            | BadPluginName { .. } => ErrorCode::INVALID_NETWORK_CONFIG,
            SubnetEnv(_) => ErrorCode::TRY_AGAIN_LATER,
            PluginFailed(e) => e.code,
            PluginNotFound { .. } | PluginExec { .. } | PluginResult { .. } => ErrorCode::INTERNAL,
        }
    }

    /// The `details` string (empty when there is nothing to add).
    pub fn details(&self) -> String {
        use CniError::*;
        match self {
            BadNetworkName(s) | BadContainerId(s) => s.clone(),
            BadIfName { details, .. } => details.clone(),
            IncompatibleVersion(config) => {
                let supported: Vec<String> = SUPPORTED_VERSIONS
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect();
                format!(
                    "config is {config:?}, plugin supports [{}]",
                    supported.join(" ")
                )
            }
            SubnetEnv(_) => "flanneld writes this file once it holds a subnet lease; \
                             it may not be running on this node yet"
                .to_owned(),
            PluginFailed(e) => e.details.clone(),
            _ => String::new(),
        }
    }

    /// The error JSON the spec wants on stdout, stamped with `cni_version`. Indented
    /// like libcni's output; `details` is left out when empty, as Go's `omitempty` does.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: ErrorCode,
            msg: String,
            #[serde(skip_serializing_if = "String::is_empty")]
            details: String,
        }
        let json = Json {
            cni_version,
            code: self.code(),
            msg: self.to_string(),
            details: self.details(),
        };
        pretty(&json)
    }
}

/// Our answer to VERSION.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    /// The versions this plugin speaks.
    pub fn ours() -> Self {
        Self {
            cni_version: CURRENT_VERSION.to_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

/// JSON with 4-space indentation, as Go's `json.MarshalIndent(v, "", "    ")`.
fn pretty(value: &impl Serialize) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(b"    "),
    );
    // Serializing our own plain structs into memory cannot fail; an empty string is
    // the harmless fallback rather than a panic.
    if value.serialize(&mut ser).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The parts of an ADD result that we and our tests read, in every spec version:
/// `ips`/`interfaces`/`routes` from 0.3.0 on, `ip4`/`ip6` before. Unknown fields are
/// ignored, so a result that parses here is at least shaped like a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddResult {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<ResultInterface>,
    #[serde(default)]
    pub ips: Vec<ResultIp>,
    #[serde(default)]
    pub routes: Vec<ResultRoute>,
    /// 0.1.0/0.2.0 only.
    #[serde(default)]
    pub ip4: Option<LegacyIp>,
    /// 0.1.0/0.2.0 only.
    #[serde(default)]
    pub ip6: Option<LegacyIp>,
}

impl AddResult {
    /// Parses a plugin's stdout.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Every address the result assigns (with prefix length), whatever the version.
    pub fn addresses(&self) -> Vec<IpNet> {
        let legacy = self.ip4.iter().chain(&self.ip6).map(|l| l.ip);
        self.ips.iter().map(|i| i.address).chain(legacy).collect()
    }

    /// Every route the result asks for, whatever the version.
    pub fn all_routes(&self) -> Vec<ResultRoute> {
        let legacy = self
            .ip4
            .iter()
            .chain(&self.ip6)
            .flat_map(|l| l.routes.iter().cloned());
        self.routes.iter().cloned().chain(legacy).collect()
    }
}

/// An `interfaces` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResultInterface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// The netns path for container-side interfaces, absent for host-side ones.
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// An `ips` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResultIp {
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
    /// `"4"`/`"6"`: present in 0.3.x and 0.4.0, dropped in 1.0.0.
    #[serde(default)]
    pub version: Option<String>,
}

/// A `routes` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResultRoute {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

/// The `ip4`/`ip6` object of 0.1.0/0.2.0 results.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LegacyIp {
    pub ip: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub routes: Vec<ResultRoute>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_rule() {
        for ok in ["a", "0", "abc-DEF_1.2", "k8s_POD.x-1"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", "../x", "a/b", "-a", "_a", ".a", "a b", "é", "a:b",
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn container_id_rejects_path_escapes() {
        assert_eq!(ContainerId::new("abc.1").unwrap().as_str(), "abc.1");
        let err = ContainerId::new("../etc").unwrap_err();
        assert_eq!(
            (err.code(), err.to_string(), err.details()),
            (
                ErrorCode::INVALID_ENVIRONMENT,
                "invalid characters in containerID".into(),
                "../etc".into()
            )
        );
        assert_eq!(
            ContainerId::new("").unwrap_err().code(),
            ErrorCode::UNKNOWN_CONTAINER
        );
    }

    #[test]
    fn ifname_rules_match_libcni() {
        let cases = [
            ("eth0", None),
            ("123456789012345", None),
            ("", Some("interface name is empty")),
            ("1234567890123456", Some("interface name is too long")),
            (".", Some("interface name is . or ..")),
            ("..", Some("interface name is . or ..")),
            (
                "a/b",
                Some("interface name contains / or : or whitespace characters"),
            ),
            (
                "a:b",
                Some("interface name contains / or : or whitespace characters"),
            ),
            (
                "a b",
                Some("interface name contains / or : or whitespace characters"),
            ),
        ];
        for (name, want) in cases {
            let got = validate_ifname(name).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), want, "{name:?}");
        }
    }

    #[test]
    fn versions_compare_numerically() {
        let v = |s| SpecVersion::parse(s).unwrap();
        assert!(v("0.10.0") > v("0.4.0"));
        assert!(v("1.0") == v("1.0.0"));
        assert!(v("") == v("0.1.0"));
        assert!(SpecVersion::parse("1.0.0.0")
            .unwrap_err()
            .contains("too many parts"));
        assert!(SpecVersion::parse("x.1").is_err());
    }

    #[test]
    fn missing_env_lists_names_in_skel_order() {
        let env = CniEnv {
            command: "ADD".into(),
            ifname: "eth0".into(),
            ..CniEnv::default()
        };
        assert_eq!(
            env.missing(Some(Command::Add)),
            ["CNI_CONTAINERID", "CNI_NETNS", "CNI_PATH"]
        );
        let del = CniEnv {
            command: "DEL".into(),
            container_id: "c".into(),
            ifname: "e".into(),
            path: "/p".into(),
            ..CniEnv::default()
        };
        assert!(
            del.missing(Some(Command::Del)).is_empty(),
            "DEL needs no CNI_NETNS"
        );
        assert_eq!(CniEnv::default().missing(None), ["CNI_COMMAND"]);
        assert!(CniEnv {
            command: "VERSION".into(),
            ..CniEnv::default()
        }
        .missing(Some(Command::Version))
        .is_empty());
    }

    #[test]
    fn error_json_has_version_code_msg_and_optional_details() {
        let json: serde_json::Value =
            serde_json::from_str(&CniError::BadContainerId("x/y".into()).to_json("1.0.0")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cniVersion": "1.0.0", "code": 4, "msg": "invalid characters in containerID", "details": "x/y"})
        );
        let json: serde_json::Value =
            serde_json::from_str(&CniError::MissingNetworkName.to_json("0.3.1")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cniVersion": "0.3.1", "code": 7, "msg": "missing network name"})
        );
    }

    #[test]
    fn incompatible_version_details_name_config_and_supported_list() {
        let e = CniError::IncompatibleVersion("9.9.9".into());
        assert_eq!(e.code(), ErrorCode::INCOMPATIBLE_VERSION);
        assert_eq!(
            e.details(),
            r#"config is "9.9.9", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]"#
        );
    }

    #[test]
    fn plugin_errors_pass_through_unchanged() {
        let e = CniError::PluginFailed(
            serde_json::from_str(r#"{"code":7,"msg":"m","details":"d","x":1}"#).unwrap(),
        );
        assert_eq!(
            (e.code(), e.to_string(), e.details()),
            (ErrorCode(7), "m".into(), "d".into())
        );
    }

    #[test]
    fn add_result_reads_every_version_shape() {
        let v1 = br#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/n"}],
            "ips":[{"address":"10.1.17.2/24","gateway":"10.1.17.1","interface":0}],
            "routes":[{"dst":"10.1.0.0/16"}],"dns":{}}"#;
        let r = AddResult::parse(v1).unwrap();
        assert_eq!(
            r.addresses(),
            vec!["10.1.17.2/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            r.all_routes()[0].dst,
            "10.1.0.0/16".parse::<IpNet>().unwrap()
        );
        let v02 = br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.1.17.3/24","gateway":"10.1.17.1",
            "routes":[{"dst":"10.1.0.0/16","gw":"10.1.17.1"}]},"dns":{}}"#;
        let r = AddResult::parse(v02).unwrap();
        assert_eq!(
            r.addresses(),
            vec!["10.1.17.3/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(r.all_routes()[0].gw, Some("10.1.17.1".parse().unwrap()));
        assert!(AddResult::parse(b"[1]").is_err());
        assert!(AddResult::parse(br#"{"ips":[{"address":"nope"}]}"#).is_err());
    }
}
