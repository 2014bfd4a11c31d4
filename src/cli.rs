//! `flanneld` flags with upstream's Go `flag` semantics.
//!
//! Go accepts `-flag` as well as `--flag`, `-flag=value` and `-flag value`,
//! treats `-boolflag` as true (only `-boolflag=false` turns it off), and
//! upstream reads `FLANNELD_<NAME>` for every flag not given on the command
//! line. clap does the parsing; [`normalize_go_flags`] rewrites single-dash long
//! names first, and each flag carries its `FLANNELD_*` variable.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::{ArgAction, CommandFactory, Parser};

use crate::compat;
use crate::datapath::IoChoice;
use crate::subnet::env::parse_go_bool;
use crate::subnet::registry::EtcdOptions;

/// `--udp-io` is the datapath's own [`IoChoice`], spelled for clap here so that `datapath`
/// does not depend on clap.
impl clap::ValueEnum for IoChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &[IoChoice::Auto, IoChoice::Uring, IoChoice::Mmsg]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            IoChoice::Auto => "io_uring where the kernel allows it, else recvmmsg/sendmsg",
            IoChoice::Uring => "io_uring only; start-up fails where it is unavailable",
            IoChoice::Mmsg => "recvmmsg/sendmsg and plain TUN reads/writes",
        };
        Some(clap::builder::PossibleValue::new(self.name()).help(help))
    }
}

/// The etcd flags, shared by `flanneld` and `flannelctl` (flattened into both): the same
/// names, `FLANNELD_*` variables and defaults, so an operator's environment serves both.
/// `global`: `flannelctl` takes them before or after its subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdFlags {
    /// A comma-delimited list of etcd endpoints.
    #[arg(long, global = true, env = "FLANNELD_ETCD_ENDPOINTS", default_value = compat::DEFAULT_ETCD_ENDPOINTS)]
    pub etcd_endpoints: String,

    /// etcd prefix under which the network config and the leases live.
    #[arg(long, global = true, env = "FLANNELD_ETCD_PREFIX", default_value = compat::DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,

    /// SSL key file used to secure etcd communication.
    #[arg(long, global = true, env = "FLANNELD_ETCD_KEYFILE", default_value = "")]
    pub etcd_keyfile: String,

    /// SSL certification file used to secure etcd communication.
    #[arg(
        long,
        global = true,
        env = "FLANNELD_ETCD_CERTFILE",
        default_value = ""
    )]
    pub etcd_certfile: String,

    /// SSL Certificate Authority file used to secure etcd communication.
    #[arg(long, global = true, env = "FLANNELD_ETCD_CAFILE", default_value = "")]
    pub etcd_cafile: String,

    /// Username for BasicAuth to etcd.
    #[arg(
        long,
        global = true,
        env = "FLANNELD_ETCD_USERNAME",
        default_value = ""
    )]
    pub etcd_username: String,

    /// Password for BasicAuth to etcd.
    #[arg(
        long,
        global = true,
        env = "FLANNELD_ETCD_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub etcd_password: String,
}

impl EtcdFlags {
    /// The etcd endpoints, split and trimmed.
    pub fn endpoints(&self) -> Vec<String> {
        self.etcd_endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// How to reach etcd, for [`crate::subnet::registry::Registry::connect`]. An empty
    /// flag means "not given" (Go's zero value). A username without a password logs in
    /// with an empty password, as upstream's client does.
    pub fn options(&self) -> EtcdOptions {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        EtcdOptions {
            endpoints: self.endpoints(),
            prefix: self.etcd_prefix.clone(),
            cafile: non_empty(&self.etcd_cafile).map(PathBuf::from),
            certfile: non_empty(&self.etcd_certfile).map(PathBuf::from),
            keyfile: non_empty(&self.etcd_keyfile).map(PathBuf::from),
            username: non_empty(&self.etcd_username),
            password: non_empty(&self.etcd_password)
                .or_else(|| non_empty(&self.etcd_username).map(|_| String::new())),
            // A fresh record of how requests fare; the daemon puts in the one /metrics reads.
            health: Default::default(),
        }
    }
}

/// The health server flags, shared by `flanneld` (where it listens) and `flannelctl` (where
/// it finds the local daemon's `/status`).
#[derive(Debug, Clone, clap::Args)]
pub struct HealthzFlags {
    /// The IP address on which the /healthz and /readyz server listens.
    #[arg(
        long,
        global = true,
        env = "FLANNELD_HEALTHZ_IP",
        default_value = "0.0.0.0"
    )]
    pub healthz_ip: IpAddr,

    /// The port on which the health server listens (0 disables it).
    #[arg(
        long,
        global = true,
        env = "FLANNELD_HEALTHZ_PORT",
        default_value_t = 0
    )]
    pub healthz_port: u16,
}

/// What `--version` prints (flannelctl) and what flanneld's version starts with: the
/// package version and the commit it was built from (`unknown` outside a git checkout;
/// see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FLANNEL_RS_COMMIT"),
    ")"
);

#[derive(Debug, Clone, Parser)]
#[command(
    name = "flanneld",
    about = "flannel-rs: a drop-in flanneld. Flags may be spelled -flag or --flag; \
             every flag not given is read from FLANNELD_<FLAG> (e.g. FLANNELD_ETCD_ENDPOINTS).",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(flatten)]
    pub etcd: EtcdFlags,

    /// Interface to use (IP or name) for inter-host communication. May be repeated; the first that exists wins.
    #[arg(long, env = "FLANNELD_IFACE", action = ArgAction::Append)]
    pub iface: Vec<String>,

    /// Regex of the interface to use (matched against IPs, then names). May be repeated; checked after --iface.
    #[arg(long, env = "FLANNELD_IFACE_REGEX", action = ArgAction::Append)]
    pub iface_regex: Vec<String>,

    /// Use the interface the kernel would use to reach this IP.
    #[arg(long, env = "FLANNELD_IFACE_CAN_REACH", default_value = "")]
    pub iface_can_reach: String,

    /// IP accessible by other nodes for inter-host communication (default: the interface's address).
    #[arg(long, env = "FLANNELD_PUBLIC_IP", default_value = "")]
    pub public_ip: String,

    /// IPv6 accessible by other nodes for inter-host communication (default: the interface's address).
    #[arg(long, env = "FLANNELD_PUBLIC_IPV6", default_value = "")]
    pub public_ipv6: String,

    /// Filename where env variables (subnet, MTU, ...) will be written to.
    #[arg(long, env = "FLANNELD_SUBNET_FILE", default_value = compat::DEFAULT_SUBNET_FILE)]
    pub subnet_file: PathBuf,

    /// Subnet lease renewal margin, in minutes (1 to 1439): the lease is renewed this long before it expires.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = compat::DEFAULT_RENEW_MARGIN_MINUTES)]
    pub subnet_lease_renew_margin: u32,

    /// Setup IP masquerade rule for traffic destined outside of overlay network.
    #[arg(long, env = "FLANNELD_IP_MASQ", value_parser = go_bool, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true")]
    pub ip_masq: bool,

    /// Don't use --random-fully in the masquerade rules.
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", value_parser = go_bool, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true")]
    pub ip_masq_fully_random_disable: bool,

    #[command(flatten)]
    pub healthz: HealthzFlags,

    /// Resync period of the iptables rules, in seconds.
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = compat::DEFAULT_IPTABLES_RESYNC_SECS)]
    pub iptables_resync: u32,

    /// Add default accept rules to the FORWARD chain of iptables.
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", value_parser = go_bool, num_args = 0..=1,
          require_equals = true, default_value = "true", default_missing_value = "true")]
    pub iptables_forward_rules: bool,

    /// Add a blackhole route for this node's own subnet once the lease is held, so traffic
    /// to an unused pod address here is dropped instead of leaving by the default route
    /// (where no bridge owns the subnet, e.g. Canal). Kept on a clean stop, as upstream does.
    #[arg(long, env = "FLANNELD_IP_BLACKHOLE_ROUTE", value_parser = go_bool, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true")]
    pub ip_blackhole_route: bool,

    /// Path to the network configuration file. When given, the config is read from this file instead of etcd.
    #[arg(long, env = "FLANNELD_NET_CONFIG_PATH")]
    pub net_config_path: Option<PathBuf>,

    /// Contact the Kubernetes API for subnet assignment instead of etcd (not supported by flannel-rs).
    #[arg(long, env = "FLANNELD_KUBE_SUBNET_MGR", value_parser = go_bool, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true")]
    pub kube_subnet_mgr: bool,

    /// Log level verbosity (klog style: 0 info, 1-3 debug, 4+ trace).
    #[arg(long = "v", env = "FLANNELD_V", default_value_t = 0)]
    pub v: u32,

    /// Print the version and exit.
    #[arg(long, env = "FLANNELD_VERSION", value_parser = go_bool, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true")]
    pub version: bool,

    /// udp backend: number of worker threads, one TUN queue each (default: one per CPU).
    #[arg(long, env = "FLANNELD_UDP_WORKERS")]
    pub udp_workers: Option<usize>,

    /// udp backend: I/O method.
    #[arg(long, env = "FLANNELD_UDP_IO", value_enum, default_value_t = IoChoice::Auto)]
    pub udp_io: IoChoice,

    /// udp backend: most packets moved per system call. 1 is upstream's design (one packet
    /// per read/send, on the recvmmsg/sendmsg path), kept as a benchmark baseline. On the
    /// io_uring path: buffers per direction in each worker's ring (default 16).
    // One flag for three settings, kept as one for compatibility: the mmsg batch, the
    // io_uring ring depth, and (at 1) one packet per system call with the offloads off
    // (`UdpOptions::with_batch_flag` derives them).
    #[arg(long, env = "FLANNELD_UDP_BATCH")]
    pub udp_batch: Option<usize>,

    /// udp backend: send runs of packets to one peer, and the segments of TCP super-packets,
    /// with one UDP GSO send each (the wire still carries one inner packet per datagram).
    /// false: one send per datagram, on both I/O paths (for kernels or devices that mangle
    /// UDP GSO; a GSO send failing with EIO/EINVAL also turns it off, by itself).
    #[arg(long, env = "FLANNELD_UDP_GSO", value_parser = go_bool, num_args = 0..=1,
          require_equals = true, default_value = "true", default_missing_value = "true")]
    pub udp_gso: bool,

    /// udp backend: TUN offloads. The kernel hands over TCP super-packets of up to 64 KiB,
    /// which leave in UDP GSO sends, one inner packet per datagram as upstream's wire format
    /// wants; received datagrams come in with UDP GRO and go back to the TUN coalesced.
    #[arg(long, env = "FLANNELD_UDP_OFFLOAD", value_parser = go_bool, num_args = 0..=1,
          require_equals = true, default_value = "true", default_missing_value = "true")]
    pub udp_offload: bool,

    /// udp backend, io_uring path: one multishot TUN read and UDP receive per worker, taking
    /// buffers from provided-buffer rings, where the kernel has them (6.7+); false: one
    /// request per buffer.
    #[arg(long, env = "FLANNELD_UDP_MULTISHOT", value_parser = go_bool, num_args = 0..=1,
          require_equals = true, default_value = "true", default_missing_value = "true")]
    pub udp_multishot: bool,

    /// udp backend, io_uring path: microseconds a worker polls for work before it sleeps
    /// (0: never). Lowers latency by skipping wake-ups, at the cost of CPU.
    #[arg(long, env = "FLANNELD_UDP_BUSY_POLL", default_value_t = 0)]
    pub udp_busy_poll: u64,

    /// Log line format on stderr: text (klog-like, the default) or json (one object per line,
    /// with every field: subnet, public_ip, op, ...).
    #[arg(long, env = "FLANNELD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// udp backend: export per-peer traffic series on /metrics (flannel_udp_peer_*) and in
    /// /status. Off by default: one series per peer can be many, and counting costs a lock
    /// per batch.
    #[arg(long, env = "FLANNELD_METRICS_PER_PEER", value_parser = go_bool, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true")]
    pub metrics_per_peer: bool,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Largest `--udp-batch`: io_uring buffers per direction (each holds a 64 KiB datagram).
pub const MAX_UDP_BATCH: usize = 4096;
/// Largest `--udp-busy-poll`, in microseconds: past this, polling only burns CPU.
pub const MAX_BUSY_POLL_US: u64 = 10_000;

/// A flag combination that upstream also refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct FlagError {
    pub flag: &'static str,
    pub reason: String,
}

impl Cli {
    /// Parses Go-style arguments (`argv[0]` first).
    pub fn parse_go<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Cli::try_parse_from(normalize_go_flags(args))
    }

    /// The etcd endpoints, split and trimmed.
    pub fn endpoints(&self) -> Vec<String> {
        self.etcd.endpoints()
    }

    /// Checks what clap cannot: ranges and cross-flag rules.
    pub fn validate(&self) -> Result<(), FlagError> {
        if !(1..=1439).contains(&self.subnet_lease_renew_margin) {
            return Err(FlagError {
                flag: "subnet-lease-renew-margin",
                reason: "must be between 1 and 1439 (minutes)".into(),
            });
        }
        if self.endpoints().is_empty() {
            return Err(FlagError {
                flag: "etcd-endpoints",
                reason: "no endpoint given".into(),
            });
        }
        if self.kube_subnet_mgr {
            return Err(FlagError {
                flag: "kube-subnet-mgr",
                reason: "the Kubernetes subnet manager is not supported by flannel-rs; use etcd"
                    .into(),
            });
        }
        if self.etcd.etcd_keyfile.is_empty() != self.etcd.etcd_certfile.is_empty() {
            return Err(FlagError {
                flag: "etcd-certfile",
                reason: "--etcd-certfile and --etcd-keyfile must be given together".into(),
            });
        }
        self.public_ip()?;
        self.public_ipv6()?;
        for re in &self.iface_regex {
            regex::Regex::new(re).map_err(|e| FlagError {
                flag: "iface-regex",
                reason: format!("{re:?}: {e}"),
            })?;
        }
        if !self.iface_can_reach.is_empty() && self.iface_can_reach.parse::<IpAddr>().is_err() {
            return Err(FlagError {
                flag: "iface-can-reach",
                reason: format!("{:?} is not an IP address", self.iface_can_reach),
            });
        }
        if self.udp_workers == Some(0) {
            return Err(FlagError {
                flag: "udp-workers",
                reason: "must be at least 1".into(),
            });
        }
        if self.udp_batch == Some(0) {
            return Err(FlagError {
                flag: "udp-batch",
                reason: "must be at least 1".into(),
            });
        }
        if self.udp_batch.is_some_and(|b| b > MAX_UDP_BATCH) {
            return Err(FlagError {
                flag: "udp-batch",
                reason: format!("must be at most {MAX_UDP_BATCH}"),
            });
        }
        if self.udp_busy_poll > MAX_BUSY_POLL_US {
            return Err(FlagError {
                flag: "udp-busy-poll",
                reason: format!("must be at most {MAX_BUSY_POLL_US} (microseconds)"),
            });
        }
        Ok(())
    }

    /// `--public-ip`, parsed.
    pub fn public_ip(&self) -> Result<Option<Ipv4Addr>, FlagError> {
        parse_opt(&self.public_ip, "public-ip")
    }

    /// `--public-ipv6`, parsed.
    pub fn public_ipv6(&self) -> Result<Option<Ipv6Addr>, FlagError> {
        parse_opt(&self.public_ipv6, "public-ipv6")
    }

    /// The flags as upstream logs them at start-up (password hidden).
    pub fn summary(&self) -> String {
        let mut c = self.clone();
        if !c.etcd.etcd_password.is_empty() {
            c.etcd.etcd_password = "******".into();
        }
        format!("{c:?}")
    }
}

fn parse_opt<T: std::str::FromStr>(text: &str, flag: &'static str) -> Result<Option<T>, FlagError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| FlagError {
        flag,
        reason: format!("{text:?} is not a valid address"),
    })
}

/// Go's boolean syntax for flags and `FLANNELD_*` values.
fn go_bool(v: &str) -> Result<bool, String> {
    parse_go_bool(v).ok_or_else(|| format!("{v:?} is not a boolean (use true or false)"))
}

/// Rewrites Go-style single-dash long flags (`-etcd-prefix=/x`, `-v 2`) into
/// clap's double-dash form. Unknown names, `-h` and everything after `--` are
/// left alone.
pub fn normalize_go_flags<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    normalize_go_flags_for(&Cli::command(), args)
}

/// [`normalize_go_flags`] for another command's top-level long flags (`flannelctl` takes
/// flanneld's etcd and health flags spelled the same ways).
pub fn normalize_go_flags_for<I, T>(cmd: &clap::Command, args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let longs: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    let mut out = Vec::new();
    let mut done = false;
    for (i, arg) in args.into_iter().map(Into::into).enumerate() {
        if i == 0 || done {
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            done = true;
            out.push(arg);
            continue;
        }
        match text.strip_prefix('-') {
            Some(rest) if !rest.starts_with('-') => {
                let name = rest.split('=').next().unwrap_or(rest);
                if longs.iter().any(|l| l == name) {
                    out.push(format!("--{rest}").into());
                } else {
                    out.push(arg);
                }
            }
            _ => out.push(arg),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut argv = vec!["flanneld"];
        argv.extend_from_slice(args);
        Cli::parse_go(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn udp_io_takes_the_datapath_choices_by_their_names() {
        assert_eq!(parse(&[]).udp_io, IoChoice::Auto);
        assert_eq!(parse(&["-udp-io=uring"]).udp_io, IoChoice::Uring);
        assert_eq!(parse(&["--udp-io", "mmsg"]).udp_io, IoChoice::Mmsg);
        assert!(Cli::parse_go(["flanneld", "--udp-io=epoll"]).is_err());
    }

    #[test]
    fn defaults_match_upstream() {
        let c = parse(&[]);
        assert_eq!(
            c.etcd.etcd_endpoints,
            "http://127.0.0.1:4001,http://127.0.0.1:2379"
        );
        assert_eq!(c.endpoints().len(), 2);
        assert_eq!(c.etcd.etcd_prefix, "/coreos.com/network");
        assert_eq!(c.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(c.subnet_lease_renew_margin, 60);
        assert!(!c.ip_masq);
        assert!(c.iptables_forward_rules);
        assert_eq!(c.iptables_resync, 5);
        assert_eq!(c.healthz.healthz_ip, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.healthz.healthz_port, 0);
        assert_eq!(c.v, 0);
        assert!(c.net_config_path.is_none());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn single_and_double_dash_both_work() {
        let c = parse(&[
            "-etcd-prefix=/a",
            "--iface",
            "eth0",
            "-iface=10.0.0.1",
            "-v",
            "3",
            "-healthz-port",
            "8080",
        ]);
        assert_eq!(c.etcd.etcd_prefix, "/a");
        assert_eq!(c.iface, vec!["eth0", "10.0.0.1"]);
        assert_eq!(c.v, 3);
        assert_eq!(c.healthz.healthz_port, 8080);
        assert_eq!(parse(&["--v=2"]).v, 2);
        assert_eq!(parse(&["-v=4"]).v, 4);
    }

    #[test]
    fn bool_flags_follow_go_rules() {
        assert!(parse(&["-ip-masq"]).ip_masq);
        assert!(parse(&["--ip-masq=true"]).ip_masq);
        assert!(!parse(&["-ip-masq=false"]).ip_masq);
        assert!(parse(&["-ip-masq=1"]).ip_masq);
        assert!(!parse(&["--iptables-forward-rules=f"]).iptables_forward_rules);
        assert!(
            !parse(&[]).ip_blackhole_route,
            "off by default, as upstream"
        );
        assert!(parse(&["--ip-blackhole-route"]).ip_blackhole_route);
        assert!(parse(&["-ip-blackhole-route=true"]).ip_blackhole_route);
        assert!(Cli::parse_go(["flanneld", "--ip-masq=maybe"]).is_err());
    }

    #[test]
    fn margin_is_range_checked() {
        for bad in ["0", "1440"] {
            let c = parse(&["--subnet-lease-renew-margin", bad]);
            assert_eq!(c.validate().unwrap_err().flag, "subnet-lease-renew-margin");
        }
        assert!(parse(&["--subnet-lease-renew-margin=1439"])
            .validate()
            .is_ok());
    }

    #[test]
    fn cross_flag_rules() {
        assert_eq!(
            parse(&["--public-ip=nope"]).validate().unwrap_err().flag,
            "public-ip"
        );
        assert_eq!(
            parse(&["--etcd-keyfile=/k"]).validate().unwrap_err().flag,
            "etcd-certfile"
        );
        assert_eq!(
            parse(&["--iface-regex=("]).validate().unwrap_err().flag,
            "iface-regex"
        );
        assert_eq!(
            parse(&["-kube-subnet-mgr"]).validate().unwrap_err().flag,
            "kube-subnet-mgr"
        );
        assert_eq!(
            parse(&["--etcd-endpoints=,"]).validate().unwrap_err().flag,
            "etcd-endpoints"
        );
        assert_eq!(
            parse(&["--public-ip=192.0.2.7"]).public_ip().unwrap(),
            Some(Ipv4Addr::new(192, 0, 2, 7))
        );
    }

    #[test]
    fn normalizer_leaves_unknown_and_positional_args_alone() {
        let out = normalize_go_flags(["flanneld", "-h", "-unknown", "--", "-iface"]);
        assert_eq!(out, vec!["flanneld", "-h", "-unknown", "--", "-iface"]);
    }

    #[test]
    fn log_format_and_per_peer_metrics() {
        let c = parse(&[]);
        assert_eq!((c.log_format, c.metrics_per_peer), (LogFormat::Text, false));
        let c = parse(&["-log-format=json", "-metrics-per-peer"]);
        assert_eq!((c.log_format, c.metrics_per_peer), (LogFormat::Json, true));
        assert!(Cli::parse_go(["flanneld", "--log-format=xml"]).is_err());
    }

    #[test]
    fn every_flag_has_its_flanneld_env_var() {
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let want = format!("FLANNELD_{}", long.to_uppercase().replace('-', "_"));
            let got = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            if long == "help" {
                continue;
            }
            assert_eq!(got.as_deref(), Some(want.as_str()), "--{long}");
        }
    }
}
