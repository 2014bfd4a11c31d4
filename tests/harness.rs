//! The netns cluster harness itself: hosts get leases through the fabric's
//! etcd, pods reach their own host, and everything is gone after `Drop`.
//!
//! Tier: netns (root): a cluster in network namespaces with a real etcd and real daemons.

mod common;

use common::cluster::*;
use common::*;

#[test]
fn cluster_builds_runs_alloc_daemons_and_cleans_up() {
    require_cluster!();
    let names;
    {
        let mut c = Cluster::new(2, r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#);
        c.start_all(&[]);
        let (s0, s1) = (
            c.hosts[0].subnet.clone().unwrap(),
            c.hosts[1].subnet.clone().unwrap(),
        );
        assert_ne!(s0, s1);
        // The lease advertises the host's fabric address.
        let v = c
            .etcd()
            .must(&["get", &c.lease_key(1), "--print-value-only"]);
        assert_eq!(
            v.trim(),
            format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, host_ip(1))
        );
        // A pod reaches its own host's end of the pod veth.
        let gw = s0.split('/').next().unwrap().to_owned();
        assert!(c.ping(0, &gw, secs(5)), "pod0 → host0");
        // alloc forwards nothing: pod 0 cannot reach pod 1.
        assert!(!c.ping_once(0, &c.pod_ip(1), secs(1)));
        names = vec![
            c.fabric.clone(),
            c.hosts[0].netns.clone(),
            c.hosts[1].pod_netns.clone(),
        ];
    }
    let listed = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    for n in names {
        assert!(!listed.contains(&n), "{n} left behind");
    }
}
