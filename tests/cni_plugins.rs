//! The `flannel` CNI binary driving Debian's real plugins (bridge, host-local, macvlan)
//! against real network namespaces. Needs root.
//!
//! Each test makes two namespaces of its own: a "host" one, where the binary runs (via
//! `ip netns exec`, so the bridge and host-side veths the delegate creates land there
//! and never in the machine's root namespace), and a "container" one, given to the
//! plugin as `CNI_NETNS`. Every file (subnet.env, dataDir, host-local's store) lives in a
//! temp dir. [`Lab`]'s `Drop` deletes both namespaces, and with them every link, even
//! when the test panics.
//!
//! [`Lab::plugin`] is the way to run the binary with a given subnet file inside a
//! namespace; the multi-host end-to-end test can use the same recipe.
//!
//! Tier: netns (root): two namespaces per test, no etcd, no daemon.

mod common;

use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{run_with_stdin, unique, wait_until, Cap, CNI_PLUGIN_DIR};
use flannel_rs::cni::types::SpecVersion;
use flannel_rs::cni::AddResult;
use ipnet::IpNet;
use serde_json::{json, Value};

const NETWORK: &str = "10.244.0.0/16";
const SUBNET: &str = "10.244.7.0/24";
const GATEWAY: &str = "10.244.7.1";
const MTU: u32 = 1400;

/// One run of the binary.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "plugin failed: stdout {} stderr {}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn result(&self) -> AddResult {
        AddResult::parse(self.stdout.as_bytes())
            .unwrap_or_else(|e| panic!("result does not parse ({e}): {}", self.stdout))
    }

    fn error(&self) -> Value {
        assert_eq!(
            self.code,
            Some(1),
            "expected a failure: stdout {} stderr {}",
            self.stdout,
            self.stderr
        );
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("error is not JSON ({e}): {}", self.stdout))
    }
}

/// A host namespace, a container namespace and a temp dir with subnet.env; a unique
/// bridge name. Dropping it deletes the namespaces (and so every link in them).
struct Lab {
    host: String,
    ctr: String,
    bridge: String,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        // Built before anything exists, so Drop cleans up whatever a failure leaves.
        let lab = Lab {
            host: unique("cnih"),
            ctr: unique("cnic"),
            bridge: unique("cbr"),
            dir: tempfile::tempdir().unwrap(),
        };
        for ns in [&lab.host, &lab.ctr] {
            sh("ip", &["netns", "add", ns]);
            sh("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        let env = format!(
            "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={GATEWAY}/24\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"
        );
        fs::write(lab.subnet_file(), env).unwrap();
        lab
    }

    fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("flannel")
    }

    fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.ctr)
    }

    /// Our config for spec `version`: flannel's files in the temp dir, host-local's
    /// store too (its default is global), the lab's bridge name, plus `delegate` keys.
    /// subnet.env says flannel masquerades, so the delegate gets `ipMasq: false` and
    /// needs no iptables.
    fn conf(&self, version: &str, delegate: Value) -> Value {
        let mut conf = json!({
            "cniVersion": version,
            "name": "flannel-test",
            "type": "flannel",
            "subnetFile": self.subnet_file(),
            "dataDir": self.data_dir(),
            "ipam": {"dataDir": self.dir.path().join("ipam")},
            "delegate": {"bridge": self.bridge},
        });
        for (k, v) in delegate.as_object().unwrap() {
            conf["delegate"][k] = v.clone();
        }
        conf
    }

    /// Runs the `flannel` binary inside the host namespace for container `id`, with
    /// `conf` on stdin and the container namespace as `CNI_NETNS`.
    fn plugin(&self, command: &str, id: &str, conf: &Value) -> Out {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host, env!("CARGO_BIN_EXE_flannel")])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", self.netns_path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PLUGIN_DIR)
            .env_remove("CNI_ARGS");
        let out = run_with_stdin(cmd, &conf.to_string());
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `ip -j <args>` in namespace `ns`; `None` if the command fails (e.g. no such link).
    fn ip(&self, ns: &str, args: &[&str]) -> Option<Value> {
        let out = Command::new("ip")
            .args(["-n", ns, "-j"])
            .args(args)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    }

    /// The IPv4 addresses (with prefix) of `dev` in `ns`.
    fn addrs(&self, ns: &str, dev: &str) -> Vec<IpNet> {
        let Some(Value::Array(links)) = self.ip(ns, &["-4", "addr", "show", "dev", dev]) else {
            return Vec::new();
        };
        links
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| {
                format!("{}/{}", a["local"].as_str()?, a["prefixlen"])
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// The link kind (`bridge`, `veth`, `macvlan`) and MTU of `dev` in `ns`.
    fn link(&self, ns: &str, dev: &str) -> Option<(String, u64)> {
        let links = self.ip(ns, &["-d", "link", "show", "dev", dev])?;
        let link = &links[0];
        Some((
            link["linkinfo"]["info_kind"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            link["mtu"].as_u64().unwrap_or(0),
        ))
    }

    /// Whether the container has a route `dst` via `gw` on eth0.
    fn has_route(&self, dst: &str, gw: &str) -> bool {
        let routes = self
            .ip(&self.ctr, &["-4", "route", "show"])
            .unwrap_or(Value::Null);
        routes
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["dst"] == dst && r["gateway"] == gw && r["dev"] == "eth0")
    }

    /// Pings `to` from the container until it answers or 10 s pass.
    fn ping_from_container(&self, to: &str) -> bool {
        wait_until(Duration::from_secs(10), || {
            let ok = Command::new("ip")
                .args(["netns", "exec", &self.ctr, "ping", "-c1", "-W1", to])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(())
        })
        .is_some()
    }

    fn state_file(&self, id: &str) -> PathBuf {
        self.data_dir().join(id)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.ctr, &self.host] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn subnet() -> IpNet {
    SUBNET.parse().unwrap()
}

/// The single address a result assigns, checked to be a host of our subnet.
fn pod_address(result: &AddResult) -> IpNet {
    let addrs = result.addresses();
    assert_eq!(addrs.len(), 1, "{result:?}");
    let addr = addrs[0];
    assert!(
        subnet().contains(&addr.addr()) && addr.prefix_len() == 24,
        "{addr} not in {SUBNET}"
    );
    assert_ne!(
        addr.addr(),
        GATEWAY.parse::<IpAddr>().unwrap(),
        "the gateway address is the bridge's"
    );
    addr
}

/// The spec versions the installed bridge plugin speaks.
fn bridge_versions() -> Vec<String> {
    let out = Command::new(format!("{CNI_PLUGIN_DIR}/bridge"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn bridge_add_check_del_lifecycle() {
    require!(Cap::Root, Cap::Netns, Cap::CniPlugins);
    let lab = Lab::new();
    let conf = lab.conf("1.0.0", json!({}));

    let out = lab.plugin("ADD", "ctr-a", &conf).ok();
    let result = out.result();
    assert_eq!(result.cni_version, "1.0.0");
    let addr = pod_address(&result);
    assert_eq!(result.ips[0].gateway, Some(GATEWAY.parse().unwrap()));
    assert!(
        result.interfaces.iter().any(|i| i.name == lab.bridge),
        "bridge in result: {:?}",
        result.interfaces
    );

    // The container: its address, flannel's MTU, and the route to the whole network.
    assert_eq!(lab.addrs(&lab.ctr, "eth0"), vec![addr]);
    assert_eq!(
        lab.link(&lab.ctr, "eth0"),
        Some(("veth".to_owned(), u64::from(MTU)))
    );
    assert!(
        lab.has_route(NETWORK, GATEWAY),
        "route {NETWORK} via {GATEWAY}: {:?}",
        lab.ip(&lab.ctr, &["route"])
    );
    // The host side: our bridge, holding the gateway address (isGateway defaulted on).
    assert_eq!(
        lab.link(&lab.host, &lab.bridge).map(|l| l.0),
        Some("bridge".to_owned())
    );
    assert_eq!(
        lab.addrs(&lab.host, &lab.bridge),
        vec![format!("{GATEWAY}/24").parse::<IpNet>().unwrap()]
    );
    assert!(
        lab.ping_from_container(GATEWAY),
        "container cannot reach its gateway"
    );
    // The saved delegate config.
    let saved: Value = serde_json::from_slice(&fs::read(lab.state_file("ctr-a")).unwrap()).unwrap();
    assert_eq!(
        (saved["type"].as_str(), saved["bridge"].as_str()),
        (Some("bridge"), Some(lab.bridge.as_str()))
    );
    assert_eq!(
        (saved["ipMasq"].clone(), saved["mtu"].clone()),
        (json!(false), json!(MTU))
    );

    // CHECK: the runtime hands back the ADD result as prevResult.
    let mut check = conf.clone();
    check["prevResult"] = serde_json::from_str(&out.stdout).unwrap();
    lab.plugin("CHECK", "ctr-a", &check).ok();

    lab.plugin("DEL", "ctr-a", &conf).ok();
    assert_eq!(
        lab.link(&lab.ctr, "eth0"),
        None,
        "DEL removes the container interface"
    );
    assert!(
        !lab.state_file("ctr-a").exists(),
        "DEL removes the state file"
    );
    let lease = lab
        .dir
        .path()
        .join("ipam/flannel-test")
        .join(addr.addr().to_string());
    assert!(!lease.exists(), "host-local released {addr}");
    lab.plugin("DEL", "ctr-a", &conf).ok();
}

#[test]
fn check_reports_a_broken_pod_network() {
    require!(Cap::Root, Cap::Netns, Cap::CniPlugins);
    let lab = Lab::new();
    let conf = lab.conf("1.0.0", json!({}));
    let out = lab.plugin("ADD", "ctr-b", &conf).ok();
    sh("ip", &["-n", &lab.ctr, "link", "del", "eth0"]);
    let mut check = conf.clone();
    check["prevResult"] = serde_json::from_str(&out.stdout).unwrap();
    let err = lab.plugin("CHECK", "ctr-b", &check).error();
    assert!(
        err["msg"].is_string(),
        "the bridge plugin's error comes through: {err}"
    );
    lab.plugin("DEL", "ctr-b", &conf).ok();
}

#[test]
fn default_gateway_option_gives_a_default_route() {
    require!(Cap::Root, Cap::Netns, Cap::CniPlugins);
    let lab = Lab::new();
    let conf = lab.conf(
        "0.3.1",
        json!({"isDefaultGateway": true, "hairpinMode": true}),
    );
    pod_address(&lab.plugin("ADD", "ctr-c", &conf).ok().result());
    assert!(
        lab.has_route("default", GATEWAY),
        "{:?}",
        lab.ip(&lab.ctr, &["route"])
    );
    assert!(
        lab.has_route(NETWORK, GATEWAY),
        "the flannel route is still there"
    );
    lab.plugin("DEL", "ctr-c", &conf).ok();
}

/// A subnet.env as flanneld v0.21-v0.24 wrote it for a config with several networks: the
/// pod gets a route to each, and the saved delegate config is the one upstream's plugin
/// builds (`loadFlannelSubnetEnv` splits and dedups; `getDelegateIPAM` adds the routes).
#[test]
fn subnet_env_listing_several_networks_routes_each() {
    require!(Cap::Root, Cap::Netns, Cap::CniPlugins);
    let lab = Lab::new();
    fs::write(
        lab.subnet_file(),
        format!(
            "FLANNEL_NETWORK={NETWORK},192.168.0.0/16,{NETWORK}\nFLANNEL_SUBNET={GATEWAY}/24\n\
             FLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"
        ),
    )
    .unwrap();
    let conf = lab.conf("1.0.0", json!({}));
    let addr = pod_address(&lab.plugin("ADD", "ctr-l", &conf).ok().result());
    assert!(SUBNET.parse::<IpNet>().unwrap().contains(&addr.addr()));
    for dst in [NETWORK, "192.168.0.0/16"] {
        assert!(
            lab.has_route(dst, GATEWAY),
            "route {dst} via {GATEWAY}: {:?}",
            lab.ip(&lab.ctr, &["route"])
        );
    }
    let saved: Value = serde_json::from_slice(&fs::read(lab.state_file("ctr-l")).unwrap()).unwrap();
    let upstream = json!({
        "cniVersion": "1.0.0",
        "name": "flannel-test",
        "type": "bridge",
        "bridge": lab.bridge,
        "ipMasq": false,
        "isGateway": true,
        "mtu": MTU,
        "ipam": {
            "type": "host-local",
            "dataDir": lab.dir.path().join("ipam"),
            "ranges": [[{"subnet": SUBNET}]],
            "routes": [{"dst": NETWORK}, {"dst": "192.168.0.0/16"}],
        },
    });
    assert_eq!(saved, upstream);
    lab.plugin("DEL", "ctr-l", &conf).ok();
    assert_eq!(
        lab.link(&lab.ctr, "eth0"),
        None,
        "DEL removes the interface"
    );
    assert!(
        !lab.state_file("ctr-l").exists(),
        "DEL removes the state file"
    );
}

#[test]
fn macvlan_delegate_on_a_veth_master() {
    require!(Cap::Root, Cap::Netns, Cap::CniPlugins, Cap::Veth);
    let lab = Lab::new();
    let master = unique("mv");
    let peer = unique("mvp");
    sh(
        "ip",
        &[
            "-n", &lab.host, "link", "add", &master, "type", "veth", "peer", "name", &peer,
        ],
    );
    sh("ip", &["-n", &lab.host, "link", "set", &master, "up"]);
    sh("ip", &["-n", &lab.host, "link", "set", &peer, "up"]);
    let mut conf = lab.conf(
        "1.0.0",
        json!({"type": "macvlan", "master": master, "mode": "bridge"}),
    );
    conf["delegate"].as_object_mut().unwrap().remove("bridge");

    let out = lab.plugin("ADD", "ctr-m", &conf).ok();
    let result = out.result();
    let addr = pod_address(&result);
    assert_eq!(
        lab.link(&lab.ctr, "eth0"),
        Some(("macvlan".to_owned(), u64::from(MTU)))
    );
    assert_eq!(lab.addrs(&lab.ctr, "eth0"), vec![addr]);
    assert!(
        lab.has_route(NETWORK, GATEWAY),
        "{:?}",
        lab.ip(&lab.ctr, &["route"])
    );
    let saved: Value = serde_json::from_slice(&fs::read(lab.state_file("ctr-m")).unwrap()).unwrap();
    assert_eq!(
        (saved["type"].as_str(), saved.get("isGateway")),
        (Some("macvlan"), None)
    );
    let mut check = conf.clone();
    check["prevResult"] = serde_json::from_str(&out.stdout).unwrap();
    lab.plugin("CHECK", "ctr-m", &check).ok();

    lab.plugin("DEL", "ctr-m", &conf).ok();
    assert_eq!(lab.link(&lab.ctr, "eth0"), None);
    assert!(!lab.state_file("ctr-m").exists());
    lab.plugin("DEL", "ctr-m", &conf).ok();
}

/// Every version we support, through the real bridge plugin: where the plugin speaks
/// it, the result parses in that version's shape (and CHECK works from 0.4.0); where it
/// does not (1.1.0 with Debian's plugins 1.1.1), its refusal reaches the runtime intact.
#[test]
fn results_of_every_supported_version_parse() {
    require!(Cap::Root, Cap::Netns, Cap::CniPlugins);
    let lab = Lab::new();
    let bridge_speaks = bridge_versions();
    for (i, version) in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("ver-{i}");
        let conf = lab.conf(version, json!({}));
        let out = lab.plugin("ADD", &id, &conf);
        if !bridge_speaks.iter().any(|v| v == version) {
            let err = out.error();
            assert_eq!(
                (err["code"].as_u64(), err["msg"].as_str()),
                (Some(1), Some("incompatible CNI versions")),
                "{version}"
            );
            let _ = lab.plugin("DEL", &id, &conf);
            assert!(!lab.state_file(&id).exists());
            continue;
        }
        let out = out.ok();
        let result = out.result();
        assert_eq!(result.cni_version, version);
        let addr = pod_address(&result);
        assert_eq!(lab.addrs(&lab.ctr, "eth0"), vec![addr], "{version}");
        let legacy = matches!(version, "0.1.0" | "0.2.0");
        assert_eq!(
            result.ip4.is_some(),
            legacy,
            "{version}: ip4 only before 0.3.0"
        );
        assert_eq!(
            result.ips.is_empty(),
            legacy,
            "{version}: ips from 0.3.0 on"
        );
        if !legacy {
            let has_version_field = result.ips[0].version.is_some();
            assert_eq!(
                has_version_field,
                version != "1.0.0",
                "{version}: ips[].version dropped in 1.0.0"
            );
            assert!(result
                .interfaces
                .iter()
                .any(|i| i.sandbox.as_deref() == Some(lab.netns_path().as_str())));
        }
        let routes = result.all_routes();
        assert!(
            routes
                .iter()
                .any(|r| r.dst == NETWORK.parse::<IpNet>().unwrap()),
            "{version}: {routes:?}"
        );
        if SpecVersion::parse(version) >= SpecVersion::parse("0.4.0") {
            let mut check = conf.clone();
            check["prevResult"] = serde_json::from_str(&out.stdout).unwrap();
            lab.plugin("CHECK", &id, &check).ok();
        }
        lab.plugin("DEL", &id, &conf).ok();
        assert_eq!(lab.link(&lab.ctr, "eth0"), None, "{version}");
    }
}
