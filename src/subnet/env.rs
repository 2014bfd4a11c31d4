//! `/run/flannel/subnet.env`: the file flanneld writes for the CNI plugin and
//! reads back at start-up to reuse its previous subnet.
//!
//! Written exactly as upstream does (plain `KEY=value` lines, no quotes, fixed
//! order) and replaced atomically; read tolerantly (comments, quotes, `export`),
//! as upstream's godotenv reader is.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};

/// The variables of a subnet.env file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the whole overlay network (absent when the file lists several).
    pub network: Option<Ipv4Net>,
    /// The networks of a `FLANNEL_NETWORK` that lists several, in network form, duplicates
    /// dropped, in order; empty otherwise. flanneld v0.21 to v0.24 wrote
    /// `10.1.0.0/16,192.168.0.0/16` for a config with several networks; the CNI plugin
    /// routes each (upstream's `loadFlannelSubnetEnv`), the daemon ignores such a list.
    pub networks: Vec<Ipv4Net>,
    /// `FLANNEL_SUBNET`: this node's subnet, with the first host address (`10.5.52.1/24`).
    pub subnet: Option<Ipv4Net>,
    /// `FLANNEL_IPV6_NETWORK` (absent when the file lists several).
    pub ipv6_network: Option<Ipv6Net>,
    /// The networks of a `FLANNEL_IPV6_NETWORK` that lists several, as
    /// [`SubnetEnv::networks`].
    pub ipv6_networks: Vec<Ipv6Net>,
    /// `FLANNEL_IPV6_SUBNET`, with the first host address.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// `FLANNEL_MTU`: the MTU pods should use.
    pub mtu: Option<u32>,
    /// `FLANNEL_IPMASQ`: whether flanneld masquerades (so the CNI plugin must not).
    pub ipmasq: Option<bool>,
}

/// A subnet.env line that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {key}: {reason}")]
pub struct EnvError {
    pub line: usize,
    pub key: String,
    pub reason: String,
}

impl SubnetEnv {
    /// Every IPv4 network the file names: the list of several, or the one network.
    pub fn all_networks(&self) -> Vec<Ipv4Net> {
        match self.networks.as_slice() {
            [] => self.network.iter().map(Ipv4Net::trunc).collect(),
            list => list.to_vec(),
        }
    }

    /// Every IPv6 network the file names, as [`SubnetEnv::all_networks`].
    pub fn all_ipv6_networks(&self) -> Vec<Ipv6Net> {
        match self.ipv6_networks.as_slice() {
            [] => self.ipv6_network.iter().map(Ipv6Net::trunc).collect(),
            list => list.to_vec(),
        }
    }

    /// The file's text, in upstream's order and formats.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &dyn std::fmt::Display| out.push_str(&format!("{k}={v}\n"));
        if let Some(list) = list_of_several(&self.networks) {
            line("FLANNEL_NETWORK", &list);
        } else if let Some(n) = &self.network {
            line("FLANNEL_NETWORK", n);
        }
        if let Some(s) = &self.subnet {
            line("FLANNEL_SUBNET", s);
        }
        if let Some(list) = list_of_several(&self.ipv6_networks) {
            line("FLANNEL_IPV6_NETWORK", &list);
        } else if let Some(n) = &self.ipv6_network {
            line("FLANNEL_IPV6_NETWORK", n);
        }
        if let Some(s) = &self.ipv6_subnet {
            line("FLANNEL_IPV6_SUBNET", s);
        }
        if let Some(m) = &self.mtu {
            line("FLANNEL_MTU", m);
        }
        if let Some(m) = &self.ipmasq {
            line("FLANNEL_IPMASQ", m);
        }
        out
    }

    /// Parses subnet.env text. Unknown keys are ignored; a known key with a bad
    /// value is an error naming it. A comma-separated list with more than one
    /// entry (upstream's multi-CIDR era) is treated as absent, as upstream's daemon
    /// does; the network keys' lists are kept whole in `networks`/`ipv6_networks`
    /// for the CNI plugin, which accepts them as upstream's does.
    pub fn parse(text: &str) -> Result<Self, EnvError> {
        let mut env = SubnetEnv::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            let value = unquote(value.trim());
            let err = |reason: String| EnvError {
                line: i + 1,
                key: key.to_owned(),
                reason,
            };
            match key {
                "FLANNEL_NETWORK" => {
                    (env.network, env.networks) = one_or_several(value).map_err(err)?;
                    continue;
                }
                "FLANNEL_IPV6_NETWORK" => {
                    (env.ipv6_network, env.ipv6_networks) = one_or_several(value).map_err(err)?;
                    continue;
                }
                _ => {}
            }
            if value.contains(',') {
                continue;
            }
            match key {
                "FLANNEL_SUBNET" => {
                    env.subnet = Some(value.parse().map_err(|e| err(format!("{e}")))?)
                }
                "FLANNEL_IPV6_SUBNET" => {
                    env.ipv6_subnet = Some(value.parse().map_err(|e| err(format!("{e}")))?)
                }
                "FLANNEL_MTU" => env.mtu = Some(value.parse().map_err(|e| err(format!("{e}")))?),
                "FLANNEL_IPMASQ" => {
                    env.ipmasq =
                        Some(parse_go_bool(value).ok_or_else(|| err("not a boolean".into()))?)
                }
                _ => {}
            }
        }
        Ok(env)
    }

    /// Reads and parses a file; a missing file is `Ok(None)`.
    pub fn read(path: &Path) -> io::Result<Option<Self>> {
        match fs::read_to_string(path) {
            Ok(text) => SubnetEnv::parse(&text).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the file atomically: a temp file in the same directory, fsync,
    /// mode 0644 whatever the umask, then rename over the target. The parent
    /// directory is created (0755) if needed.
    pub fn write_atomic(&self, path: &Path) -> io::Result<()> {
        write_file_atomic(path, self.render().as_bytes(), 0o644)
    }
}

/// Writes `data` to `path` atomically with exactly `mode` (temp file + fsync + rename).
pub fn write_file_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(temp_name(name));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The temporary file's name for `name`: `.<name>.tmp<pid>`, with `<name>` cut short so
/// the whole stays within the kernel's file-name limit (a CNI container id may itself be
/// 255 bytes long). One process writes one file at a time, so the pid keeps it unique.
fn temp_name(name: &std::ffi::OsStr) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    const NAME_MAX: usize = 255;
    let suffix = format!(".tmp{}", std::process::id());
    let name = name.as_bytes();
    let keep = name.len().min(NAME_MAX - 1 - suffix.len());
    let mut out = Vec::with_capacity(NAME_MAX);
    out.push(b'.');
    out.extend_from_slice(&name[..keep]);
    out.extend_from_slice(suffix.as_bytes());
    std::ffi::OsString::from_vec(out)
}

/// A network key's value: one network (as written), or the list of several (`None`, list).
/// A list that names one network only (`a,a`) counts as that one network.
fn one_or_several<N>(value: &str) -> Result<(Option<N>, Vec<N>), String>
where
    N: std::str::FromStr<Err = ipnet::AddrParseError> + Truncate + PartialEq + Copy,
{
    if !value.contains(',') {
        return Ok((Some(value.parse().map_err(|e| format!("{e}"))?), Vec::new()));
    }
    let list: Vec<N> = network_list(value)?;
    Ok(match list.as_slice() {
        [one] => (Some(*one), Vec::new()),
        _ => (None, list),
    })
}

/// A comma-separated list of networks, as upstream's CNI plugin reads it: each entry in
/// network form (host bits cleared, as Go's `net.ParseCIDR` returns it), a repeated
/// network dropped, the order kept. One bad entry fails the whole list.
fn network_list<N>(value: &str) -> Result<Vec<N>, String>
where
    N: std::str::FromStr<Err = ipnet::AddrParseError> + Truncate + PartialEq,
{
    let mut out: Vec<N> = Vec::new();
    for entry in value.split(',') {
        let net = entry
            .trim()
            .parse::<N>()
            .map_err(|e| format!("{entry:?}: {e}"))?
            .truncated();
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

/// Network form of an address with a prefix (`Ipv4Net::trunc` and `Ipv6Net::trunc`).
trait Truncate {
    fn truncated(self) -> Self;
}

impl Truncate for Ipv4Net {
    fn truncated(self) -> Self {
        self.trunc()
    }
}

impl Truncate for Ipv6Net {
    fn truncated(self) -> Self {
        self.trunc()
    }
}

/// The `a,b,...` form of a list of more than one network (`None` for zero or one: those are
/// written from the single-network field, as flanneld does).
fn list_of_several<N: std::fmt::Display>(nets: &[N]) -> Option<String> {
    (nets.len() > 1).then(|| {
        nets.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> SubnetEnv {
        SubnetEnv {
            network: Some("10.5.0.0/16".parse().unwrap()),
            subnet: Some("10.5.52.1/24".parse().unwrap()),
            ipv6_network: Some("2001:cafe:42::/56".parse().unwrap()),
            ipv6_subnet: Some("2001:cafe:42::1/64".parse().unwrap()),
            mtu: Some(1450),
            ipmasq: Some(false),
            ..SubnetEnv::default()
        }
    }

    #[test]
    fn renders_upstream_golden_text() {
        let golden = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\n\
                      FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
                      FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        assert_eq!(full().render(), golden);
        let v4_only = SubnetEnv {
            ipv6_network: None,
            ipv6_subnet: None,
            ipmasq: Some(true),
            ..full()
        };
        assert_eq!(
            v4_only.render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn parse_reads_back_what_render_writes() {
        assert_eq!(SubnetEnv::parse(&full().render()).unwrap(), full());
    }

    #[test]
    fn parse_tolerates_comments_quotes_and_export() {
        let env = SubnetEnv::parse(
            "# c\nexport FLANNEL_SUBNET=\"10.1.2.1/24\"\nFLANNEL_MTU='1400'\nOTHER=x\n",
        )
        .unwrap();
        assert_eq!(env.subnet, Some("10.1.2.1/24".parse().unwrap()));
        assert_eq!(env.mtu, Some(1400));
    }

    #[test]
    fn network_lists_are_kept_for_the_cni_plugin_and_round_trip() {
        let text = "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16,10.1.7.0/16\n\
                    FLANNEL_IPV6_NETWORK=2001:cafe::/56,2001:cafe::/56\n";
        let env = SubnetEnv::parse(text).unwrap();
        let v4: Vec<Ipv4Net> = ["10.1.0.0/16", "192.168.0.0/16"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        // The daemon sees no single network; the plugin sees both, deduplicated.
        assert_eq!((env.network, env.networks.clone()), (None, v4.clone()));
        assert_eq!(env.all_networks(), v4);
        // A list naming one network only is that network.
        let v6: Ipv6Net = "2001:cafe::/56".parse().unwrap();
        assert_eq!(
            (env.ipv6_network, env.all_ipv6_networks()),
            (Some(v6), vec![v6])
        );
        assert_eq!(SubnetEnv::parse(&env.render()).unwrap(), env);
        assert!(env
            .render()
            .contains("FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\n"));
        // One bad entry fails the list, naming the key.
        let err = SubnetEnv::parse("FLANNEL_NETWORK=10.1.0.0/16,nonsense\n").unwrap_err();
        assert_eq!(err.key, "FLANNEL_NETWORK");
        assert!(err.reason.contains("nonsense"), "{err}");
    }

    #[test]
    fn multi_entry_lists_are_ignored_and_bad_values_named() {
        let env = SubnetEnv::parse("FLANNEL_SUBNET=10.1.2.1/24,10.2.2.1/24\n").unwrap();
        assert_eq!(env.subnet, None);
        let err = SubnetEnv::parse("FLANNEL_MTU=abc\n").unwrap_err();
        assert_eq!(err.key, "FLANNEL_MTU");
        assert_eq!(err.line, 1);
    }

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        full().write_atomic(&path).unwrap();
        let v4_only = SubnetEnv {
            ipv6_network: None,
            ipv6_subnet: None,
            ..full()
        };
        v4_only.write_atomic(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), Some(v4_only));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
        assert_eq!(SubnetEnv::read(&dir.path().join("missing")).unwrap(), None);
    }
}
