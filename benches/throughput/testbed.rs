//! The testbed around each mode: the datapath set up on the two-host netns cluster (a
//! network config in etcd and both daemons, or plain underlay routes), and torn down again.

use std::path::Path;

use super::common::cluster::{host_ip, run, sh, Cluster};
use super::Mode;

const NETWORK: &str = "10.5.0.0/16";

/// The network config in etcd for `backend`.
pub fn config(backend: &str) -> String {
    format!(r#"{{"Network":"{NETWORK}","Backend":{{"Type":"{backend}"}}}}"#)
}

/// Puts `mode`'s datapath up between pod 0 and pod 1: the config in etcd and both daemons
/// (running `bin`, pod MTU as the daemon says), or plain routes. The daemons' PIDs.
pub fn set_up(c: &mut Cluster, mode: &Mode, bin: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    match mode.backend {
        Some(backend) => {
            c.etcd().put_config(&config(backend));
            c.start_all_bin(bin, mode.flags);
            for i in 0..2 {
                let mtu = subnet_env(c, i, "FLANNEL_MTU").unwrap_or_else(|| "1472".into());
                sh(
                    Some(&c.hosts[i].pod_netns),
                    "ip",
                    &["link", "set", "eth0", "mtu", &mtu],
                );
                pids.push(c.daemon(i).child.as_ref().expect("daemon running").id());
            }
        }
        None => underlay_routes(c, "add"),
    }
    pids
}

/// Takes `mode`'s datapath down again: the daemons and their devices, or the plain routes.
pub fn tear_down(c: &mut Cluster, mode: &Mode) {
    match mode.backend {
        Some(_) => {
            for i in 0..2 {
                c.kill(i);
                // The vxlan device outlives its daemon (as upstream's); the TUN does not.
                let _ = run(Some(&c.hosts[i].netns), "ip", &["link", "del", "flannel.1"]);
            }
        }
        None => underlay_routes(c, "del"),
    }
}

/// Plain routes from each host to the other's pod subnet via its underlay address, pod MTU
/// 1500: the no-overlay reference.
fn underlay_routes(c: &Cluster, op: &str) {
    for (i, other) in [(0usize, 1usize), (1, 0)] {
        let subnet = c.hosts[other].subnet.as_deref().expect("subnet leased");
        let net: ipnet::Ipv4Net = subnet.parse().expect("FLANNEL_SUBNET");
        let (net, via) = (net.trunc().to_string(), host_ip(other));
        sh(
            Some(&c.hosts[i].netns),
            "ip",
            &["route", op, &net, "via", &via, "dev", "eth0"],
        );
        if op == "add" {
            sh(
                Some(&c.hosts[i].pod_netns),
                "ip",
                &["link", "set", "eth0", "mtu", "1500"],
            );
        }
    }
}

fn subnet_env(c: &Cluster, i: usize, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(&c.daemon(i).subnet_file).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(str::to_owned)
    })
}
