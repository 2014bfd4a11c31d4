//! `flannelctl` end to end: the real binary against a real etcd (Debian's etcd-server on
//! loopback) and real `flanneld` processes on the alloc backend (no datapath, no root).
//! Every subcommand runs in both output forms; `-o json` is parsed with serde_json.
//!
//! Tier: etcd (a real etcd on loopback; no root).

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

const NET16: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#;

/// What one `flannelctl` run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self:#?}"))
    }

    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{self:#?}");
        self
    }
}

/// Runs `flannelctl args…` with no FLANNELD_* variables but `envs`.
fn flannelctl_env(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flannelctl"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLANNELD_")) {
        cmd.env_remove(k);
    }
    let out = cmd.args(args).envs(envs.iter().copied()).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `flannelctl --etcd-endpoints=<etcd> args…`.
fn flannelctl(etcd: &Etcd, args: &[&str]) -> Run {
    let endpoints = format!("--etcd-endpoints={}", etcd.endpoint);
    let mut all = vec![endpoints.as_str()];
    all.extend_from_slice(args);
    flannelctl_env(&all, &[])
}

/// A flanneld on loopback advertising `public_ip` (alloc backend: it only holds a lease).
fn daemon(etcd: &Etcd, public_ip: &str) -> Flanneld {
    Flanneld::spawn(
        &[
            &format!("--etcd-endpoints={}", etcd.endpoint),
            "--iface=lo",
            &format!("--public-ip={public_ip}"),
        ],
        &[],
    )
}

/// `10.5.3.1/24` (subnet.env) → `10.5.3.0/24` (the lease's subnet).
fn net_of(subnet_env_value: &str) -> String {
    let (ip, len) = subnet_env_value.split_once('/').unwrap();
    let (head, last) = ip.rsplit_once('.').unwrap();
    format!("{head}.{}/{len}", last.parse::<u8>().unwrap() - 1)
}

fn key(subnet: &str) -> String {
    format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-"))
}

/// The etcd lease ID attached to `key` (0 for none), from `etcdctl -w json`.
fn etcd_lease_of(etcd: &Etcd, key: &str) -> i64 {
    let out: Value = serde_json::from_str(&etcd.must(&["get", key, "-w", "json"])).unwrap();
    out["kvs"][0]["lease"].as_i64().unwrap_or(0)
}

fn value_of(etcd: &Etcd, key: &str) -> String {
    etcd.must(&["get", key, "--print-value-only"])
        .trim()
        .to_owned()
}

#[test]
fn leases_and_lease_show_live_leases_reservations_and_malformed_keys() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let mut a = daemon(&etcd, "127.0.0.1");
    let mut b = daemon(&etcd, "127.0.0.2");
    let (sa, sb) = (
        net_of(&a.wait_subnet(secs(20))),
        net_of(&b.wait_subnet(secs(20))),
    );
    etcd.must(&[
        "put",
        &key("10.5.200.0/24"),
        r#"{"PublicIP":"192.0.2.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
    ]);
    etcd.must(&["put", &key("10.5.201.0/24"), "{not json"]);

    let table = flannelctl(&etcd, &["leases"]).ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with("SUBNET") && lines[0].contains("TIME LEFT"),
        "{table:#?}"
    );
    let row = |subnet: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(subnet))
            .unwrap_or_else(|| panic!("{subnet} missing:\n{}", table.stdout))
    };
    assert!(row(&sa).contains("127.0.0.1") && row(&sa).ends_with("lease"));
    assert!(row(&sb).contains("127.0.0.2"));
    let reserved = row("10.5.200.0/24");
    assert!(reserved.contains("VtepMAC=c6:d2:32:6f:8f:44"), "{reserved}");
    assert!(reserved.contains("reserved") && reserved.ends_with("reservation"));
    assert!(row("10.5.201.0-24").ends_with("malformed"));
    assert!(
        table.stderr.contains("malformed lease key 10.5.201.0-24"),
        "{table:#?}"
    );

    let json = flannelctl(&etcd, &["leases", "-o", "json"]).ok().json();
    let leases = json["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 3, "{json:#}");
    let live = leases.iter().find(|l| l["subnet"] == sa.as_str()).unwrap();
    assert_eq!(live["public_ip"], "127.0.0.1");
    assert_eq!(live["reservation"], false);
    let ttl = live["ttl_seconds"].as_u64().unwrap();
    assert!(ttl > 23 * 3600 && ttl <= 24 * 3600, "{live}");
    let res = leases
        .iter()
        .find(|l| l["subnet"] == "10.5.200.0/24")
        .unwrap();
    assert_eq!(res["reservation"], true);
    assert_eq!(res["ttl_seconds"], Value::Null);
    assert_eq!(res["backend_data"]["VtepMAC"], "c6:d2:32:6f:8f:44");
    assert_eq!(json["malformed"][0]["key"], "10.5.201.0-24");

    // One lease, either spelling; both forms.
    let one = flannelctl(&etcd, &["lease", &sb]).ok();
    assert!(
        one.stdout.contains("127.0.0.2") && one.stdout.contains("etcd lease"),
        "{one:#?}"
    );
    let one = flannelctl(&etcd, &["-o", "json", "lease", &sb.replace('/', "-")])
        .ok()
        .json();
    assert_eq!(one["subnet"], sb.as_str());
    assert!(one["etcd_lease_id"].is_string());

    // Not found: exit 3, and a JSON error document for scripts.
    let missing = flannelctl(&etcd, &["lease", "10.5.250.0/24", "-o", "json"]);
    assert_eq!(missing.code, 3, "{missing:#?}");
    assert_eq!(missing.json()["error"]["kind"], "not_found");
    assert!(missing
        .stderr
        .contains("no lease or reservation for 10.5.250.0/24"));
}

#[test]
fn reserve_then_a_daemon_with_that_public_ip_gets_the_subnet() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);

    let made = flannelctl(
        &etcd,
        &[
            "reserve",
            "10.5.42.0/24",
            "--public-ip",
            "127.0.0.9",
            "-o",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(made["action"], "created");
    assert_eq!(made["lease"]["reservation"], true);
    // Upstream's lease JSON, and no etcd lease: a reservation never expires.
    let k = key("10.5.42.0/24");
    assert_eq!(
        value_of(&etcd, &k),
        r#"{"PublicIP":"127.0.0.9","PublicIPv6":null}"#
    );
    assert_eq!(etcd_lease_of(&etcd, &k), 0);
    // Running it again changes nothing but says so (and a table this time).
    let again = flannelctl(&etcd, &["reserve", "10.5.42.0/24", "--public-ip=127.0.0.9"]).ok();
    assert!(
        again
            .stdout
            .contains("reserved 10.5.42.0/24 for 127.0.0.9 (updated)"),
        "{again:#?}"
    );

    // A daemon with that public IP takes the reserved subnet, and it stays a reservation.
    let mut d = daemon(&etcd, "127.0.0.9");
    assert_eq!(d.wait_subnet(secs(20)), "10.5.42.1/24", "log:\n{}", d.log());
    assert_eq!(etcd_lease_of(&etcd, &k), 0, "still without TTL");
    let shown = flannelctl(&etcd, &["lease", "10.5.42.0/24", "-o", "json"])
        .ok()
        .json();
    assert_eq!(
        (&shown["public_ip"], &shown["reservation"]),
        (&"127.0.0.9".into(), &true.into())
    );

    // A live lease is neither unreserved nor reserved over.
    let mut other = daemon(&etcd, "127.0.0.10");
    let live = net_of(&other.wait_subnet(secs(20)));
    let before = value_of(&etcd, &key(&live));
    let refused = flannelctl(&etcd, &["unreserve", &live, "-o", "json"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("is a live lease held by 127.0.0.10"),
        "{refused:#?}"
    );
    assert_eq!(refused.json()["error"]["kind"], "failed");
    let refused = flannelctl(&etcd, &["reserve", &live, "--public-ip", "127.0.0.11"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert_eq!(
        value_of(&etcd, &key(&live)),
        before,
        "the live lease is untouched"
    );

    // A second key with a node's public IP competes with its lease: written, with a warning.
    let twice = flannelctl(
        &etcd,
        &["reserve", "10.5.44.0/24", "--public-ip", "127.0.0.10"],
    )
    .ok();
    assert!(
        twice
            .stderr
            .contains(&format!("127.0.0.10 also holds {live}")),
        "{twice:#?}"
    );
    flannelctl(&etcd, &["unreserve", "10.5.44.0/24"]).ok();

    // A subnet the config does not allow would be deleted by the daemon: refused.
    let unfit = flannelctl(
        &etcd,
        &["reserve", "10.6.1.0/24", "--public-ip", "127.0.0.12"],
    );
    assert_eq!(unfit.code, 2, "{unfit:#?}");
    assert!(
        unfit.stderr.contains("does not fit the network config"),
        "{unfit:#?}"
    );
    let host_bits = flannelctl(
        &etcd,
        &["reserve", "10.5.43.7/24", "--public-ip", "127.0.0.12"],
    );
    assert_eq!(host_bits.code, 2, "{host_bits:#?}");

    // Unreserved under its running node: the daemon keeps its subnet as an ordinary lease.
    let gone = flannelctl(&etcd, &["unreserve", "10.5.42.0/24", "-o", "json"])
        .ok()
        .json();
    assert_eq!(gone["action"], "deleted");
    wait_until(secs(10), || (etcd_lease_of(&etcd, &k) != 0).then_some(()))
        .unwrap_or_else(|| panic!("no lease back on {k}; log:\n{}", d.log()));
    assert!(value_of(&etcd, &k).contains("127.0.0.9"));
    // Once that node is gone and its lease with it, there is nothing left to remove.
    d.kill();
    etcd.must(&["del", &k]);
    let none = flannelctl(&etcd, &["unreserve", "10.5.42.0/24"]);
    assert_eq!(none.code, 3, "{none:#?}");
}

#[test]
fn config_get_set_and_check_validate_like_the_daemon() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &good,
        r#"{"Network":"10.7.0.0/16","SubnetLen":20,"Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    std::fs::write(&bad, r#"{"Network":"10.7.0.0/16","SubnetLen":40}"#).unwrap();
    let (good, bad) = (good.to_str().unwrap(), bad.to_str().unwrap());

    // No config yet: not found.
    let none = flannelctl(&etcd, &["config", "get", "-o", "json"]);
    assert_eq!(none.code, 3, "{none:#?}");
    assert_eq!(none.json()["error"]["kind"], "not_found");

    // check needs no etcd at all.
    let checked = flannelctl_env(&["config", "check", good, "-o", "json"], &[])
        .ok()
        .json();
    assert_eq!(checked["valid"], true);
    assert_eq!(checked["summary"]["ipv4"]["subnet_len"], 20);
    assert_eq!(checked["summary"]["backend"], "vxlan");
    let invalid = flannelctl_env(&["config", "check", bad, "-o", "json"], &[]);
    assert_eq!(invalid.code, 4, "{invalid:#?}");
    assert_eq!(invalid.json()["error"]["key"], "SubnetLen");
    assert!(invalid.stderr.contains("SubnetLen"), "{invalid:#?}");

    // What the daemon refuses after parsing is refused here too.
    let v6_only = dir.path().join("v6.json");
    std::fs::write(
        &v6_only,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56"}"#,
    )
    .unwrap();
    let v6 = flannelctl_env(
        &["config", "check", v6_only.to_str().unwrap(), "-o", "json"],
        &[],
    );
    assert_eq!(v6.code, 4, "{v6:#?}");
    assert_eq!(v6.json()["error"]["key"], "EnableIPv4");

    // set: a bad config is refused with its key named and nothing is written.
    etcd.put_config(NET16);
    let refused = flannelctl(&etcd, &["config", "set", bad]);
    assert_eq!(refused.code, 4, "{refused:#?}");
    assert!(refused.stderr.contains("SubnetLen"), "{refused:#?}");
    assert_eq!(value_of(&etcd, "/coreos.com/network/config"), NET16);

    // A good one is written as given; the etcd flags come from FLANNELD_* as for flanneld.
    let env = [("FLANNELD_ETCD_ENDPOINTS", etcd.endpoint.as_str())];
    let set = flannelctl_env(&["config", "set", good], &env).ok();
    assert!(set
        .stdout
        .contains("wrote the network config to /coreos.com/network/config"));
    assert_eq!(
        value_of(&etcd, "/coreos.com/network/config"),
        std::fs::read_to_string(good).unwrap()
    );
    let got = flannelctl_env(&["config", "get"], &env).ok();
    assert_eq!(got.stdout.trim(), std::fs::read_to_string(good).unwrap());
    let got = flannelctl_env(&["config", "get", "-o", "json"], &env)
        .ok()
        .json();
    assert_eq!(got["valid"], true);
    assert_eq!(got["config"]["SubnetLen"], 20);
    assert_eq!(got["summary"]["ipv4"]["network"], "10.7.0.0/16");

    // Another prefix is another network.
    let elsewhere = flannelctl(&etcd, &["--etcd-prefix=/other", "config", "get"]);
    assert_eq!(elsewhere.code, 3, "{elsewhere:#?}");
}

#[test]
fn status_shows_the_local_daemon_s_lease_and_backend() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let mut d = daemon(&etcd, "127.0.0.5");
    let subnet = net_of(&d.wait_subnet(secs(20)));
    let port = d.healthz_port.to_string();

    // subnet.env is written a moment before the daemon calls itself ready.
    let status = || flannelctl_env(&["status", "--healthz-port", &port, "-o", "json"], &[]);
    let json = wait_until(secs(5), || {
        let run = status();
        (run.code == 0 && run.json()["ready"] == true).then(|| run.json())
    })
    .unwrap_or_else(|| panic!("{:#?}\nflanneld log:\n{}", status(), d.log()));
    assert_eq!(json["backend"], "alloc");
    assert_eq!(json["lease"]["subnet"], subnet.as_str());
    assert_eq!(json["lease"]["public_ip"], "127.0.0.5");
    // The port from flanneld's own variable; 0.0.0.0 means loopback.
    let table = flannelctl_env(
        &["status"],
        &[
            ("FLANNELD_HEALTHZ_PORT", &port),
            ("FLANNELD_HEALTHZ_IP", "0.0.0.0"),
        ],
    )
    .ok();
    assert!(table.stdout.contains(&subnet), "{table:#?}");
    assert!(table.stdout.contains("backend alloc"), "{table:#?}");
}

#[test]
fn unreachable_things_and_bad_usage_have_their_exit_statuses() {
    // No etcd needed: nothing answers on these ports.
    let closed = free_port().to_string();
    let dead = format!("--etcd-endpoints=http://127.0.0.1:{closed}");
    let down = flannelctl_env(&[&dead, "leases", "-o", "json"], &[]);
    assert_eq!(down.code, 1, "{down:#?}");
    assert!(down.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot reach etcd"));
    let no_daemon = flannelctl_env(&["status", "--healthz-port", &closed], &[]);
    assert_eq!(no_daemon.code, 1, "{no_daemon:#?}");
    assert!(
        no_daemon.stderr.contains("cannot ask the local flanneld"),
        "{no_daemon:#?}"
    );
    let no_port = flannelctl_env(&["status"], &[]);
    assert_eq!(no_port.code, 2, "{no_port:#?}");
    assert!(
        no_port.stderr.contains("--healthz-port is 0"),
        "{no_port:#?}"
    );

    for usage in [
        vec!["reserve", "10.5.1.0/24"],
        vec!["lease", "not-a-subnet"],
        vec!["frobnicate"],
        vec![],
    ] {
        let r = flannelctl_env(&usage, &[]);
        assert_eq!(r.code, 2, "{usage:?}: {r:#?}");
    }
    let help = flannelctl_env(&["--help"], &[]).ok();
    assert!(help.stdout.contains("Exit status:"), "{help:#?}");
    for cmd in [
        "leases",
        "lease",
        "reserve",
        "unreserve",
        "config",
        "status",
    ] {
        assert!(help.stdout.contains(cmd), "{cmd} not in --help");
    }
    let sub = flannelctl_env(&["reserve", "--help"], &[]).ok();
    assert!(sub.stdout.contains("without a TTL"), "{sub:#?}");
}

#[test]
fn tls_and_a_password_come_from_flanneld_s_flags_and_variables() {
    require!(Cap::Etcd);
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(dir.path());
    let etcd = Etcd::start_tls(&tls);
    etcd.put_config(NET16);
    etcd.must(&["user", "add", "root:rootpw"]);
    etcd.must(&["auth", "enable"]);
    let (ca, cert, key) = (
        tls.ca.display().to_string(),
        tls.client_cert.display().to_string(),
        tls.client_key.display().to_string(),
    );
    let endpoints = format!("--etcd-endpoints={}", etcd.endpoint);
    let env = [
        ("FLANNELD_ETCD_CAFILE", ca.as_str()),
        ("FLANNELD_ETCD_CERTFILE", cert.as_str()),
        ("FLANNELD_ETCD_KEYFILE", key.as_str()),
        ("FLANNELD_ETCD_USERNAME", "root"),
        ("FLANNELD_ETCD_PASSWORD", "rootpw"),
    ];
    let got = flannelctl_env(&[&endpoints, "config", "get"], &env).ok();
    assert_eq!(got.stdout.trim(), NET16);
    // Without the password, etcd refuses: the operation failed.
    let refused = flannelctl_env(&[&endpoints, "config", "get"], &env[..3]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    // Half a client identity is a usage error, as for flanneld.
    let half = flannelctl_env(
        &[
            &endpoints,
            "--etcd-cafile",
            &ca,
            "--etcd-certfile",
            &cert,
            "leases",
        ],
        &[],
    );
    assert_eq!(half.code, 2, "{half:#?}");
}
