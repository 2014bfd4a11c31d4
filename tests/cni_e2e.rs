//! End to end: pods created by our `flannel` CNI plugin (delegating to Debian's
//! bridge and host-local) on two hosts of a netns cluster running the udp
//! backend reach each other.
//!
//! Tier: netns (root): a cluster in network namespaces with a real etcd and real daemons.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::cluster::*;
use common::*;

/// Runs the plugin for `command` inside host `i`'s namespace for pod namespace `pod`.
fn plugin(c: &Cluster, i: usize, command: &str, pod: &str, state: &std::path::Path) -> String {
    let subnet_file = c.daemon(i).subnet_file.display().to_string();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "e2e",
        "type": "flannel",
        "subnetFile": subnet_file,
        "dataDir": state.join("flannel").display().to_string(),
        "delegate": {"isDefaultGateway": true, "ipMasq": false},
        "ipam": {"dataDir": state.join("ipam").display().to_string()},
    });
    let mut child = in_netns(Some(&c.hosts[i].netns), env!("CARGO_BIN_EXE_flannel"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod)
        .env("CNI_NETNS", format!("/var/run/netns/{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PLUGIN_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn pods_made_by_our_plugin_ping_across_hosts_over_udp() {
    require!(
        Cap::Root,
        Cap::Netns,
        Cap::Veth,
        Cap::Tun,
        Cap::Etcd,
        Cap::CniPlugins
    );
    let mut c = Cluster::new(2, r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#);
    let state = tempfile::tempdir().unwrap();
    let mut pods = Vec::new();
    for i in 0..2 {
        c.start(i, &[]);
        let subnet = c.wait_lease(i);
        let pod = c.add_netns(&format!("cni{i}"));
        let result = plugin(&c, i, "ADD", &pod, &state.path().join(format!("h{i}")));
        let v: serde_json::Value = serde_json::from_str(&result).unwrap();
        let ip = v["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let prefix = subnet.rsplit_once('.').unwrap().0;
        assert!(ip.starts_with(prefix), "pod address {ip} inside {subnet}");
        pods.push((pod, ip));
    }
    let ping = |from: &str, to: &str| {
        wait_until(secs(10), || {
            run(Some(from), "ping", &["-c", "1", "-W", "1", to])
                .status
                .success()
                .then_some(())
        })
        .is_some()
    };
    assert!(
        ping(&pods[0].0, &pods[1].1),
        "pod 0 → pod 1; log:\n{}",
        c.daemon(0).log()
    );
    assert!(ping(&pods[1].0, &pods[0].1), "pod 1 → pod 0");
    for (i, (pod, _)) in pods.iter().enumerate() {
        plugin(&c, i, "DEL", pod, &state.path().join(format!("h{i}")));
    }
}
