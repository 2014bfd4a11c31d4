//! The control plane against a real etcd (Debian's etcd-server) on loopback,
//! with real `flanneld` processes using the alloc backend.
//!
//! Tier: etcd (a real etcd on loopback; no root).

mod common;

use std::time::Duration;

use common::*;

const NET16: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#;

/// A flanneld on loopback advertising 127.0.<a>.<b>.
fn daemon(etcd: &Etcd, public_ip: &str, extra: &[&str], envs: &[(&str, &str)]) -> Flanneld {
    let mut args = vec![
        format!("--etcd-endpoints={}", etcd.endpoint),
        "--iface=lo".into(),
        format!("--public-ip={public_ip}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Flanneld::spawn(&args, envs)
}

/// The lease key for a `FLANNEL_SUBNET` value (`10.5.3.1/24` ⇒ `…/10.5.3.0-24`).
fn key_of(subnet_env_value: &str) -> String {
    let (ip, len) = subnet_env_value.split_once('/').unwrap();
    let mut octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    octets[3] -= 1;
    let net = octets
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(".");
    format!("/coreos.com/network/subnets/{net}-{len}")
}

/// The network form of a `FLANNEL_SUBNET` value, as the daemon logs it (`10.5.3.0/24`).
fn net_of(subnet_env_value: &str) -> String {
    key_of(subnet_env_value)
        .rsplit('/')
        .next()
        .unwrap()
        .replace('-', "/")
}

/// Waits until daemon `d` has logged `line`; panics with `what` and the log otherwise.
fn wait_log(d: &Flanneld, line: &str, timeout: Duration, what: &str) {
    wait_until(timeout, || d.log().contains(line).then_some(()))
        .unwrap_or_else(|| panic!("{what}:\n{}", d.log()));
}

fn lease_value(etcd: &Etcd, key: &str) -> Option<String> {
    let out = etcd.must(&["get", key, "--print-value-only"]);
    let v = out.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// The etcd lease ID attached to `key` (0 for none), from `etcdctl -w json`.
fn etcd_lease_of(etcd: &Etcd, key: &str) -> i64 {
    let out = etcd.must(&["get", key, "-w", "json"]);
    let marker = "\"lease\":";
    match out.find(marker) {
        Some(i) => out[i + marker.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap(),
        None => 0,
    }
}

#[test]
fn three_daemons_hold_distinct_leases_in_upstream_format() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let mut ds: Vec<Flanneld> = (1..=3)
        .map(|i| daemon(&etcd, &format!("127.0.0.{i}"), &[], &[]))
        .collect();
    let subnets: Vec<String> = ds.iter_mut().map(|d| d.wait_subnet(secs(20))).collect();
    let mut unique = subnets.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "distinct subnets: {subnets:?}");
    let leases = etcd.leases();
    assert_eq!(leases.len(), 3, "{leases:?}");
    for (i, s) in subnets.iter().enumerate() {
        let value = lease_value(&etcd, &key_of(s)).expect("lease key exists");
        assert_eq!(
            value,
            format!(r#"{{"PublicIP":"127.0.0.{}","PublicIPv6":null}}"#, i + 1)
        );
        assert_ne!(etcd_lease_of(&etcd, &key_of(s)), 0, "lease carries a TTL");
    }
    // subnet.env as upstream writes it.
    let text = std::fs::read_to_string(&ds[0].subnet_file).unwrap();
    assert_eq!(
        text,
        format!("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET={}\nFLANNEL_MTU=65536\nFLANNEL_IPMASQ=false\n", subnets[0])
    );
    // Each daemon sees the other two.
    for (i, d) in ds.iter().enumerate() {
        for (j, s) in subnets.iter().enumerate() {
            if i == j {
                continue;
            }
            let net = net_of(s);
            let what = format!("daemon {i} never saw {net}");
            wait_log(d, &format!("lease added subnet={net}"), secs(10), &what);
        }
    }
}

#[test]
fn health_and_readiness_follow_startup() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    let mut d = daemon(&etcd, "127.0.0.1", &[], &[]);
    // No config yet: alive but not ready, and saying why.
    let waiting = wait_until(secs(10), || {
        d.http_get("/readyz").filter(|(c, _)| *c == 503)
    });
    assert_eq!(waiting.unwrap().1, "flanneld is not ready yet");
    assert_eq!(
        d.http_get("/healthz").unwrap(),
        (200, "flanneld is running".into())
    );
    wait_until(secs(10), || {
        d.log()
            .contains("flannel config not found in etcd")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no waiting log line:\n{}", d.log()));
    etcd.put_config(NET16);
    d.wait_subnet(secs(20));
    let ready = wait_until(secs(5), || d.http_get("/readyz").filter(|(c, _)| *c == 200));
    assert_eq!(ready.unwrap().1, "flanneld is ready");
}

#[test]
fn sigterm_exits_zero_and_a_restart_gets_the_same_subnet() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let mut d = daemon(&etcd, "127.0.0.7", &[], &[]);
    let first = d.wait_subnet(secs(20));
    d.signal("TERM");
    let status = d.wait_exit(secs(10)).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log());
    assert!(
        lease_value(&etcd, &key_of(&first)).is_some(),
        "the lease stays in etcd"
    );

    std::fs::remove_file(&d.subnet_file).unwrap();
    d.restart();
    assert_eq!(d.wait_subnet(secs(20)), first, "reused by PublicIP");
    // SIGKILL too.
    d.restart();
    assert_eq!(d.wait_subnet(secs(20)), first);
    assert_eq!(etcd.leases().len(), 1);
}

#[test]
fn previous_subnet_env_is_reused_when_free() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let mut d = daemon(&etcd, "127.0.0.8", &[], &[]);
    std::fs::write(
        &d.subnet_file,
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.77.1/24\n",
    )
    .unwrap();
    d.restart();
    assert_eq!(d.wait_subnet(secs(20)), "10.5.77.1/24");
}

#[test]
fn lease_renews_before_expiry() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let mut d = daemon(
        &etcd,
        "127.0.0.1",
        &[],
        &[("FLANNEL_RS_TEST_LEASE_TTL_SECS", "4")],
    );
    let key = key_of(&d.wait_subnet(secs(20)));
    let first = etcd_lease_of(&etcd, &key);
    // Two TTLs later the key must still be there, on a newer etcd lease.
    std::thread::sleep(Duration::from_secs(9));
    assert!(
        lease_value(&etcd, &key).is_some(),
        "lease expired; log:\n{}",
        d.log()
    );
    let now = etcd_lease_of(&etcd, &key);
    assert!(
        now != 0 && now != first,
        "renewal grants a new etcd lease ({first} → {now})"
    );
    assert!(d.log().contains("renewed lease"), "{}", d.log());
}

#[test]
fn deleted_lease_is_reacquired_without_exiting() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let mut d = daemon(&etcd, "127.0.0.1", &[], &[]);
    let key = key_of(&d.wait_subnet(secs(20)));
    etcd.must(&["del", &key]);
    let back = wait_until(secs(10), || lease_value(&etcd, &key));
    assert!(back.is_some(), "lease not re-acquired; log:\n{}", d.log());
    assert!(d.try_exit().is_none(), "daemon must keep running");
    assert!(d.log().contains("re-acquired our subnet"), "{}", d.log());
}

/// Genuinely lost: our key was deleted and another host created it anew before we could
/// take it back. We move to another subnet and never fight over this one (upstream #1289).
/// (A write over our *live* key is a stray one and is undone instead: see
/// `a_stray_write_over_our_live_key_is_undone`.)
#[test]
fn a_lease_taken_over_by_another_host_is_replaced_by_a_new_one() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let mut d = daemon(&etcd, "127.0.0.1", &[], &[]);
    let old = d.wait_subnet(secs(20));
    // Paused meanwhile, so the other host surely wins the race for the deleted key.
    let other = r#"{"PublicIP":"192.0.2.99","PublicIPv6":null}"#;
    let new = d.lose_subnet(&etcd, &key_of(&old), other, &old, || {});
    assert!(lease_value(&etcd, &key_of(&new))
        .unwrap()
        .contains("127.0.0.1"));
    assert!(
        lease_value(&etcd, &key_of(&old))
            .unwrap()
            .contains("192.0.2.99"),
        "the other host's value is untouched"
    );
}

/// A stray write over our live key (same key incarnation, no etcd lease attached): our
/// value is written back, attached to a fresh etcd lease, and the subnet is kept.
#[test]
fn a_stray_write_over_our_live_key_is_undone() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let mut d = daemon(&etcd, "127.0.0.1", &[], &[]);
    let subnet = d.wait_subnet(secs(20));
    let key = key_of(&subnet);
    let ours = lease_value(&etcd, &key).unwrap();
    etcd.must(&[
        "put",
        &key,
        r#"{"PublicIP":"192.0.2.99","PublicIPv6":null}"#,
    ]);
    let back = wait_until(secs(10), || {
        (lease_value(&etcd, &key).as_deref() == Some(ours.as_str())).then_some(())
    });
    assert!(back.is_some(), "not restored; log:\n{}", d.log());
    assert!(d.log().contains("overwritten in place"), "{}", d.log());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.wait_subnet(secs(1)), subnet, "the subnet is kept");
    assert_eq!(lease_value(&etcd, &key), Some(ours), "and stays ours");
    let json = etcd.must(&["get", &key, "-w", "json"]);
    assert!(
        !json.contains(r#""lease":0"#) && json.contains(r#""lease":"#),
        "attached to an etcd lease again: {json}"
    );
}

#[test]
fn watcher_sees_hosts_join_and_expire() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let mut a = daemon(&etcd, "127.0.0.1", &[], &[]);
    a.wait_subnet(secs(20));
    let mut b = daemon(
        &etcd,
        "127.0.0.2",
        &[],
        &[("FLANNEL_RS_TEST_LEASE_TTL_SECS", "3")],
    );
    let subnet = b.wait_subnet(secs(20));
    let (sb, net) = (key_of(&subnet), net_of(&subnet));
    wait_log(
        &a,
        &format!("lease added subnet={net}"),
        secs(10),
        "join not seen",
    );
    // B dies; its short lease expires; A sees the removal.
    b.kill();
    wait_log(
        &a,
        &format!("lease removed subnet={net}"),
        secs(15),
        "expiry not seen",
    );
    assert!(lease_value(&etcd, &sb).is_none());
}

#[test]
fn malformed_leases_are_skipped_without_harm() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    // Three subnets: .64, .128, .192 (the first, .0, is never used).
    etcd.put_config(r#"{"Network":"10.9.0.0/24","SubnetLen":26,"Backend":{"Type":"alloc"}}"#);
    etcd.must(&[
        "put",
        "/coreos.com/network/subnets/10.9.0.64-26",
        "{not json",
    ]);
    etcd.must(&["put", "/coreos.com/network/subnets/not-a-subnet", "x"]);
    let mut a = daemon(&etcd, "127.0.0.1", &[], &[]);
    let sa = a.wait_subnet(secs(20));
    assert!(sa == "10.9.0.129/26" || sa == "10.9.0.193/26", "{sa}");
    let mut b = daemon(&etcd, "127.0.0.2", &[], &[]);
    let sb = b.wait_subnet(secs(20));
    assert_ne!(sa, sb);
    assert_eq!(
        a.log().matches("skipping malformed lease").count(),
        1,
        "logged once:\n{}",
        a.log()
    );
    assert_eq!(
        lease_value(&etcd, "/coreos.com/network/subnets/10.9.0.64-26").as_deref(),
        Some("{not json")
    );
    // Network full (the malformed key still occupies its subnet): a third host fails clearly.
    let mut c = daemon(&etcd, "127.0.0.3", &[], &[]);
    let status = c.wait_exit(secs(20)).expect("third daemon exits");
    assert_eq!(status.code(), Some(1));
    assert!(c.log().contains("out of subnets"), "{}", c.log());
    assert!(a.try_exit().is_none() && b.try_exit().is_none());
}

#[test]
fn twenty_daemons_at_once_get_the_twenty_free_subnets() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(
        r#"{"Network":"10.20.0.0/16","SubnetMin":"10.20.1.0","SubnetMax":"10.20.20.0","Backend":{"Type":"alloc"}}"#,
    );
    let mut ds: Vec<Flanneld> = (1..=20)
        .map(|i| daemon(&etcd, &format!("127.0.1.{i}"), &[], &[]))
        .collect();
    let mut subnets: Vec<String> = ds.iter_mut().map(|d| d.wait_subnet(secs(60))).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 20, "{subnets:?}");
    assert_eq!(etcd.leases().len(), 20);
    let mut extra = daemon(&etcd, "127.0.1.21", &[], &[]);
    let status = extra.wait_exit(secs(30)).expect("21st daemon exits");
    assert_eq!(status.code(), Some(1));
    assert!(
        extra.log().contains("out of subnets: all 20 subnets"),
        "{}",
        extra.log()
    );
}

#[test]
fn etcd_restart_under_a_running_daemon() {
    require!(Cap::Etcd);
    let mut etcd = Etcd::start();
    etcd.put_config(NET16);
    let mut a = daemon(&etcd, "127.0.0.1", &[], &[]);
    let key = key_of(&a.wait_subnet(secs(20)));
    etcd.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        a.try_exit().is_none(),
        "daemon must survive etcd going away"
    );
    assert_eq!(a.http_get("/healthz").map(|r| r.0), Some(200));
    etcd.restart();
    assert!(lease_value(&etcd, &key).is_some(), "lease survives");
    // The watch resumed: a host joining after the outage is seen.
    let mut b = daemon(&etcd, "127.0.0.2", &[], &[]);
    let net = net_of(&b.wait_subnet(secs(20)));
    wait_log(
        &a,
        &format!("lease added subnet={net}"),
        secs(20),
        "watch did not resume",
    );
    assert!(a.try_exit().is_none());
}

#[test]
fn daemon_waits_for_etcd_at_startup_and_fails_over_between_endpoints() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let dead = format!("http://127.0.0.1:{}", free_port());
    // Only a dead endpoint: the daemon waits and says so.
    let mut lonely = Flanneld::spawn(&[&format!("--etcd-endpoints={dead}"), "--iface=lo"], &[]);
    wait_until(secs(15), || {
        lonely.log().contains("etcd is unreachable").then_some(())
    })
    .unwrap_or_else(|| panic!("{}", lonely.log()));
    assert!(lonely.try_exit().is_none());
    // A dead endpoint first, a live one second.
    let both = format!("--etcd-endpoints={dead},{}", etcd.endpoint);
    let mut d = Flanneld::spawn(&[&both, "--iface=lo", "--public-ip=127.0.0.2"], &[]);
    d.wait_subnet(secs(30));
}

#[test]
fn reservations_stay_permanent() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let key = "/coreos.com/network/subnets/10.5.200.0-24";
    etcd.must(&["put", key, r#"{"PublicIP":"127.0.0.9","PublicIPv6":null}"#]);
    let mut d = daemon(&etcd, "127.0.0.9", &[], &[]);
    assert_eq!(d.wait_subnet(secs(20)), "10.5.200.1/24");
    assert_eq!(etcd_lease_of(&etcd, key), 0, "a reservation gets no TTL");
    assert_eq!(
        lease_value(&etcd, key).unwrap(),
        r#"{"PublicIP":"127.0.0.9","PublicIPv6":null}"#
    );
}

#[test]
fn bad_configs_exit_nonzero_naming_the_key() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    for (config, key) in [
        ("not json", "config"),
        (r#"{"Backend":{"Type":"alloc"}}"#, "Network"),
        (
            r#"{"Network":"10.5.0.0/16","SubnetLen":31,"Backend":{"Type":"alloc"}}"#,
            "SubnetLen",
        ),
        (
            r#"{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0","Backend":{"Type":"alloc"}}"#,
            "SubnetMin",
        ),
        (
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"frobnicate"}}"#,
            "Backend.Type",
        ),
    ] {
        etcd.put_config(config);
        let mut d = daemon(&etcd, "127.0.0.1", &[], &[]);
        let status = d
            .wait_exit(secs(20))
            .unwrap_or_else(|| panic!("{config}: still running:\n{}", d.log()));
        assert_eq!(status.code(), Some(1), "{config}");
        let log = d.log();
        let line = log
            .lines()
            .find(|l| l.contains("invalid network config"))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(
            line.contains(&format!("config: {key}: ")),
            "{config}: {line}"
        );
    }
    assert!(
        etcd.leases().is_empty(),
        "nothing was written for a bad config"
    );
}

#[test]
fn config_from_net_config_path_and_flags_from_env() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("net-conf.json");
    std::fs::write(
        &conf,
        r#"{"network":"10.44.0.0/16","backend":{"type":"alloc"}}"#,
    )
    .unwrap();
    let conf = conf.display().to_string();
    let mut d = Flanneld::spawn(
        &["-net-config-path", &conf],
        &[
            ("FLANNELD_ETCD_ENDPOINTS", etcd.endpoint.as_str()),
            ("FLANNELD_IFACE", "lo"),
            ("FLANNELD_PUBLIC_IP", "127.0.0.5"),
            ("FLANNELD_ETCD_PREFIX", "/custom/net"),
        ],
    );
    let s = d.wait_subnet(secs(20));
    assert!(s.starts_with("10.44."), "{s}");
    let out = etcd.must(&[
        "get",
        "--prefix",
        "/custom/net/subnets/",
        "--print-value-only",
    ]);
    assert!(out.contains("127.0.0.5"), "{out}");
}

#[test]
fn tls_and_password_authentication() {
    require!(Cap::Etcd);
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(dir.path());
    let etcd = Etcd::start_tls(&tls);
    etcd.put_config(NET16);
    etcd.must(&["user", "add", "root:rootpw"]);
    etcd.must(&["user", "add", "flannel:flannelpw"]);
    etcd.must(&["role", "add", "flannel"]);
    etcd.must(&[
        "role",
        "grant-permission",
        "flannel",
        "--prefix=true",
        "readwrite",
        "/coreos.com/network/",
    ]);
    etcd.must(&["user", "grant-role", "flannel", "flannel"]);
    etcd.must(&["auth", "enable"]);
    let (ca, cert, key) = (
        tls.ca.display().to_string(),
        tls.client_cert.display().to_string(),
        tls.client_key.display().to_string(),
    );
    let tls_args = [
        format!("--etcd-cafile={ca}"),
        format!("--etcd-certfile={cert}"),
        format!("--etcd-keyfile={key}"),
        "--etcd-username=flannel".to_owned(),
    ];
    let mut args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    args.push("--etcd-password=flannelpw");
    let mut d = daemon(&etcd, "127.0.0.1", &args, &[]);
    d.wait_subnet(secs(30));
    assert!(
        !d.log().contains("flannelpw"),
        "the password is never logged"
    );

    // A wrong password never gets a lease.
    args.pop();
    args.push("--etcd-password=wrong");
    let mut bad = daemon(&etcd, "127.0.0.2", &args, &[]);
    wait_until(secs(15), || {
        bad.log().contains("etcd is unreachable").then_some(())
    })
    .unwrap_or_else(|| panic!("{}", bad.log()));
    assert!(
        bad.log().contains("authentication failed"),
        "says why: {}",
        bad.log()
    );
    assert!(!bad.subnet_file.exists());
    assert!(bad.try_exit().is_none(), "keeps retrying");
}

#[test]
fn go_style_flags_and_version() {
    let out = std::process::Command::new(flanneld_bin())
        .arg("-version")
        .output()
        .unwrap();
    assert!(out.status.success());
    // The version first (as upstream prints it), then the commit and the build tag.
    let printed = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        printed.trim(),
        format!(
            "{} (commit {}, build dev)",
            env!("CARGO_PKG_VERSION"),
            env!("FLANNEL_RS_COMMIT")
        )
    );
    let out = std::process::Command::new(flanneld_bin())
        .arg("--subnet-lease-renew-margin=0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("subnet-lease-renew-margin"));
    let out = std::process::Command::new(flanneld_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--etcd-endpoints",
        "--iface-regex",
        "--iface-can-reach",
        "--subnet-lease-renew-margin",
        "--healthz-port",
    ] {
        assert!(help.contains(flag), "--help mentions {flag}");
    }
}

#[test]
fn dual_stack_leases_carry_both_subnets() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd42::/56","Backend":{"Type":"alloc"}}"#);
    let mut d = daemon(&etcd, "127.0.0.1", &["--public-ipv6=fd00::1"], &[]);
    d.wait_subnet(secs(20));
    let env = std::fs::read_to_string(&d.subnet_file).unwrap();
    assert!(env.contains("FLANNEL_IPV6_NETWORK=fd42::/56\n"), "{env}");
    let v6 = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
        .expect("IPv6 subnet written");
    assert!(
        v6.starts_with("fd42:0:0:") && v6.ends_with("::1/64"),
        "{v6}"
    );
    let leases = etcd.leases();
    assert_eq!(leases.len(), 1);
    let (key, value) = &leases[0];
    assert!(
        key.contains("-24&fd42:0:0:") && key.ends_with("::-64"),
        "{key}"
    );
    assert_eq!(value, r#"{"PublicIP":"127.0.0.1","PublicIPv6":"fd00::1"}"#);
}

#[test]
fn interface_chosen_by_regex_or_by_route() {
    require!(Cap::Etcd);
    let etcd = Etcd::start();
    etcd.put_config(NET16);
    let ep = format!("--etcd-endpoints={}", etcd.endpoint);
    for how in [
        r"--iface-regex=^127\.0\.0\.1$",
        "--iface-regex=^l.$",
        "--iface-can-reach=127.0.0.1",
    ] {
        let mut d = Flanneld::spawn(&[&ep, how, "--public-ip=127.0.0.4"], &[]);
        d.wait_subnet(secs(20));
        assert!(
            d.log().contains("using external interface iface=lo"),
            "{how}: {}",
            d.log()
        );
        d.kill();
    }
    let mut d = Flanneld::spawn(&[&ep, "--iface=nosuchif0"], &[]);
    assert_eq!(d.wait_exit(secs(10)).and_then(|s| s.code()), Some(1));
    assert!(
        d.log().contains("failed to find interface to use"),
        "{}",
        d.log()
    );
}

#[test]
fn a_bad_config_file_fails_before_etcd_is_contacted() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("net-conf.json");
    std::fs::write(&conf, r#"{"Network":"10.5.0.0/16","SubnetMax":"10.5.0.7"}"#).unwrap();
    let dead = format!("--etcd-endpoints=http://127.0.0.1:{}", free_port());
    let mut d = Flanneld::spawn(
        &[&dead, &format!("--net-config-path={}", conf.display())],
        &[],
    );
    assert_eq!(
        d.wait_exit(secs(10)).and_then(|s| s.code()),
        Some(1),
        "{}",
        d.log()
    );
    assert!(
        d.log()
            .contains("invalid network config: SubnetMax: 10.5.0.7 is not on a /24 boundary"),
        "{}",
        d.log()
    );
}

#[test]
fn fails_over_between_members_of_an_etcd_cluster() {
    require!(Cap::Etcd);
    let mut members = Etcd::start_cluster(3);
    members[0].put_config(NET16);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    let ep = format!("--etcd-endpoints={}", endpoints.join(","));
    let mut a = Flanneld::spawn(&[&ep, "--iface=lo", "--public-ip=127.0.0.1"], &[]);
    let key = key_of(&a.wait_subnet(secs(20)));
    // Lose each member in turn (quorum stays): whichever member the daemon's
    // watch and writes used, it carries on through the others.
    for i in 0..3 {
        members[i].stop();
        let other = &members[(i + 1) % 3];
        // The survivors may first have to elect a new leader.
        wait_until(secs(20), || other.ctl(&["del", &key]).ok()).expect("delete through a survivor");
        let back = wait_until(secs(20), || lease_value(other, &key));
        assert!(
            back.is_some(),
            "member {i} down: lease not re-acquired:\n{}",
            a.log()
        );
        members[i].restart();
    }
    members[2].stop();
    let mut b = Flanneld::spawn(&[&ep, "--iface=lo", "--public-ip=127.0.0.2"], &[]);
    let net = net_of(&b.wait_subnet(secs(30)));
    wait_log(
        &a,
        &format!("lease added subnet={net}"),
        secs(20),
        "watch did not fail over",
    );
    assert!(a.try_exit().is_none());
}
