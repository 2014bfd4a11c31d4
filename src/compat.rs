//! Names, paths, ports and keys that users and upstream flannel depend on.
//!
//! Everything here is part of the drop-in contract with upstream flanneld
//! (see `flannel-reference.md`): changing a value breaks mixed clusters or
//! existing node configuration.

use std::time::Duration;

/// Default `--etcd-endpoints`.
pub const DEFAULT_ETCD_ENDPOINTS: &str = "http://127.0.0.1:4001,http://127.0.0.1:2379";
/// Default `--etcd-prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";
/// Default `--subnet-file`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default `--subnet-lease-renew-margin`, in minutes.
pub const DEFAULT_RENEW_MARGIN_MINUTES: u32 = 60;
/// Default `--iptables-resync`, in seconds.
pub const DEFAULT_IPTABLES_RESYNC_SECS: u32 = 5;

/// TTL of a subnet lease in etcd (upstream's `subnetTTL`).
pub const SUBNET_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Test-only override of [`SUBNET_TTL`], in seconds. Lets integration tests watch
/// a lease renew or expire in seconds instead of a day. Never set it in production.
pub const ENV_TEST_LEASE_TTL: &str = "FLANNEL_RS_TEST_LEASE_TTL_SECS";

/// The etcd key holding the network config.
pub fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

/// The etcd key prefix under which every lease lives (with the trailing slash).
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// Default UDP port of the udp backend.
pub const UDP_DEFAULT_PORT: u16 = 8285;
/// Name of the udp backend's TUN device.
pub const UDP_TUN_NAME: &str = "flannel0";
/// Bytes the udp backend's encapsulation costs (outer IPv4 + UDP header).
pub const UDP_OVERHEAD: u32 = 28;

/// Response bodies of the health server, as upstream writes them.
pub const HEALTHZ_BODY: &str = "flanneld is running";
pub const READYZ_OK_BODY: &str = "flanneld is ready";
pub const READYZ_WAIT_BODY: &str = "flanneld is not ready yet";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tolerate_a_trailing_slash_in_the_prefix() {
        assert_eq!(
            config_key("/coreos.com/network"),
            "/coreos.com/network/config"
        );
        assert_eq!(
            config_key("/coreos.com/network/"),
            "/coreos.com/network/config"
        );
        assert_eq!(subnets_prefix("/x/"), "/x/subnets/");
    }
}
