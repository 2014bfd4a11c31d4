//! `flannelctl`'s command line. The etcd and health-server flags are flanneld's own
//! ([`EtcdFlags`], [`HealthzFlags`]), so one environment (`FLANNELD_*`) serves both programs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use super::{CtlError, Exit};
use crate::cli::{EtcdFlags, HealthzFlags};
use crate::subnet::lease::SubnetKey;

/// The exit statuses, as `--help` lists them (keep in step with [`Exit`]).
const AFTER_HELP: &str = "\
Exit status:
  0  success
  1  the operation failed (etcd or the daemon unreachable, a change refused or raced)
  2  usage error (bad flags or arguments; also `status` without --healthz-port)
  3  not found (no such lease, no network config in etcd)
  4  invalid network config (the key at fault is named; nothing is written)

etcd flags are flanneld's and read the same FLANNELD_* variables (FLANNELD_ETCD_ENDPOINTS,
FLANNELD_ETCD_PREFIX, ...); `status` finds the local daemon through FLANNELD_HEALTHZ_IP and
FLANNELD_HEALTHZ_PORT as flanneld does. Flags may be spelled -flag or --flag.";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "flannelctl",
    version = crate::cli::VERSION,
    about = "Inspect and manage a flannel network: leases and reservations and the network \
             config in etcd, and the local flanneld's state.",
    after_help = AFTER_HELP
)]
pub struct Ctl {
    #[command(flatten)]
    pub etcd: EtcdFlags,

    #[command(flatten)]
    pub healthz: HealthzFlags,

    /// Output format: aligned tables for people, or JSON for scripts (stable field names).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// List every lease and reservation in etcd.
    ///
    /// Columns: subnet, public IP, backend, backend data (VTEP MAC for vxlan), time left on
    /// the etcd lease (`reserved` for a reservation), and the type. Keys whose value does
    /// not parse are listed as malformed (and warned about on stderr).
    Leases,

    /// Show one lease or reservation in full.
    ///
    /// Exit 3 when there is none for SUBNET.
    Lease {
        /// The subnet, as `10.5.34.0/24` or as its etcd key name `10.5.34.0-24`.
        #[arg(value_parser = parse_subnet)]
        subnet: SubnetKey,
    },

    /// Reserve SUBNET for the node with --public-ip.
    ///
    /// A reservation is a lease key without a TTL (upstream's Documentation/reservations.md):
    /// it never expires, and the flanneld with that public IP takes it at start-up. Refused
    /// (exit 1) where a live lease holds the subnet; refused (exit 2) where the network
    /// config would not let a daemon keep it. Run again to change the public IP.
    Reserve {
        /// The subnet to reserve, e.g. `10.5.34.0/24` (a network address of SubnetLen).
        #[arg(value_parser = parse_subnet)]
        subnet: SubnetKey,
        /// The public IP of the node the subnet is for (its flanneld's --public-ip).
        #[arg(long)]
        public_ip: Ipv4Addr,
        /// The node's public IPv6 address, for dual-stack networks.
        #[arg(long)]
        public_ipv6: Option<Ipv6Addr>,
    },

    /// Remove a reservation.
    ///
    /// Only a key without a TTL is removed: a live lease is refused (exit 1), since its
    /// daemon would only renew it. Exit 3 when there is no such key. A running flanneld
    /// that held the reservation keeps its subnet, as an ordinary lease with a TTL.
    Unreserve {
        /// The reserved subnet, e.g. `10.5.34.0/24`.
        #[arg(value_parser = parse_subnet)]
        subnet: SubnetKey,
    },

    /// Read, write or check the network config (`<prefix>/config`).
    #[command(subcommand)]
    Config(ConfigCommand),

    /// Show the local flanneld's state, from its health server.
    ///
    /// `GET /status`: lease and expiry, peers, forwarding counters and drops, etcd health,
    /// last reconcile. Needs the daemon's --healthz-port (0, the default, means it runs no
    /// server: exit 2) and --healthz-ip when it is not loopback or 0.0.0.0.
    Status,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Print the network config stored in etcd.
    ///
    /// Exit 3 when there is none. An invalid stored config is printed with a warning.
    Get,
    /// Validate FILE, then write it to etcd.
    ///
    /// The checks are flanneld's own. An invalid config is refused with the key at fault
    /// named (exit 4) and nothing is written.
    Set {
        /// The config JSON (`-` reads standard input).
        file: PathBuf,
    },
    /// Validate FILE with flanneld's own checks, writing nothing.
    ///
    /// Exit 4, naming the key at fault, when it is invalid. Needs no etcd.
    Check {
        /// The config JSON (`-` reads standard input).
        file: PathBuf,
    },
}

/// A subnet as an operator types it (`10.5.34.0/24`) or as etcd names it (`10.5.34.0-24`,
/// dual stack `10.42.1.0-24&2001:cafe:42:1::-64`).
pub fn parse_subnet(text: &str) -> Result<SubnetKey, String> {
    // Slashes would be read as key path separators: the key form uses dashes.
    SubnetKey::parse(&text.replace('/', "-"))
        .map_err(|_| format!("{text:?} is not a subnet (like 10.5.34.0/24)"))
}

/// Where the local daemon's `/status` is: flanneld listens on `--healthz-ip`, and an
/// unspecified address (`0.0.0.0`, `::`, the default) means every interface, so loopback
/// reaches it. Port 0 means the daemon runs no health server at all.
pub fn status_addr(flags: &HealthzFlags) -> Result<SocketAddr, CtlError> {
    if flags.healthz_port == 0 {
        return Err(CtlError::new(
            Exit::Usage,
            "no health server to ask: --healthz-port is 0 (the default), which means flanneld \
             runs none. Start flanneld with --healthz-port=PORT and give flannelctl the same \
             --healthz-port (or FLANNELD_HEALTHZ_PORT)",
        ));
    }
    let ip = if flags.healthz_ip.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        flags.healthz_ip
    };
    Ok(SocketAddr::new(ip, flags.healthz_port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Ctl {
        let mut argv = vec!["flannelctl"];
        argv.extend_from_slice(args);
        let argv = crate::cli::normalize_go_flags_for(&Ctl::command(), argv);
        Ctl::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Ctl::command().debug_assert();
    }

    #[test]
    fn etcd_and_health_flags_are_flanneld_s_and_go_anywhere() {
        let c = parse(&[
            "-etcd-endpoints=http://10.0.0.1:2379",
            "leases",
            "-o",
            "json",
        ]);
        assert_eq!(c.etcd.endpoints(), ["http://10.0.0.1:2379"]);
        assert_eq!(c.output, Output::Json);
        let c = parse(&["status", "--healthz-port", "9000", "-etcd-prefix", "/x"]);
        assert_eq!(c.healthz.healthz_port, 9000);
        assert_eq!(c.etcd.etcd_prefix, "/x");
        let c = parse(&["leases"]);
        assert_eq!(c.etcd.etcd_prefix, "/coreos.com/network");
        assert_eq!(c.output, Output::Table);
    }

    #[test]
    fn etcd_options_are_built_as_flanneld_builds_them() {
        let o = parse(&["leases"]).etcd.options();
        assert_eq!(
            o.endpoints,
            ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!((o.cafile, o.username, o.password), (None, None, None));
        // A username without a password logs in with an empty one.
        let o = parse(&["--etcd-username=u", "--etcd-cafile=/ca", "leases"])
            .etcd
            .options();
        assert_eq!(o.username.as_deref(), Some("u"));
        assert_eq!(o.password.as_deref(), Some(""));
        assert_eq!(o.cafile, Some(PathBuf::from("/ca")));
    }

    #[test]
    fn subnets_are_taken_in_either_spelling() {
        let a = parse_subnet("10.5.34.0/24").unwrap();
        assert_eq!(a, parse_subnet("10.5.34.0-24").unwrap());
        assert_eq!(a.to_string(), "10.5.34.0-24");
        let dual = parse_subnet("10.42.1.0/24&2001:cafe:42:1::/64").unwrap();
        assert!(dual.ipv6.is_some());
        for bad in ["10.5.34.0", "nope", "10.5.34.0/33", ""] {
            assert!(parse_subnet(bad).is_err(), "{bad}");
        }
        let c = parse(&["reserve", "10.5.7.0/24", "--public-ip", "192.0.2.9"]);
        match c.command {
            Command::Reserve { public_ip, .. } => {
                assert_eq!(public_ip, Ipv4Addr::new(192, 0, 2, 9))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn status_goes_to_loopback_for_an_unspecified_address_and_needs_a_port() {
        let flags = |ip: &str, port| HealthzFlags {
            healthz_ip: ip.parse().unwrap(),
            healthz_port: port,
        };
        assert_eq!(
            status_addr(&flags("0.0.0.0", 8080)).unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            status_addr(&flags("::", 8080)).unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            status_addr(&flags("10.1.2.3", 81)).unwrap(),
            "10.1.2.3:81".parse().unwrap()
        );
        let e = status_addr(&flags("0.0.0.0", 0)).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(e.message.contains("--healthz-port is 0"), "{}", e.message);
    }

    #[test]
    fn help_documents_the_exit_statuses() {
        let help = Ctl::command().render_long_help().to_string();
        for line in [
            "3  not found",
            "4  invalid network config",
            "FLANNELD_ETCD_ENDPOINTS",
        ] {
            assert!(help.contains(line), "{line}:\n{help}");
        }
    }
}
