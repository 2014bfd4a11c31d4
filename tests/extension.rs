//! The extension backend with real commands: small shell scripts (run by our commands through
//! `sh -c`) write what they receive — arguments, variables, stdin as hex — to
//! files, against a real etcd and real `flanneld` processes.
//!
//! Loopback tests run one daemon each: extension leases carry the interface address (127.0.0.1
//! on `lo`) whatever `--public-ip` says, so two daemons on `lo` would be the same host. Other
//! hosts are simulated by writing their leases into etcd. The cluster tests run three daemons in
//! network namespaces.
//!
//! Tier: etcd (a real etcd on loopback; no root); the two cluster tests are netns (root).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::*;
use common::*;

/// Records one add/remove call as a line: `<what> ns=<netns> SUBNET=… PUBLIC_IP=… NETWORK=…
/// stdin=<hex>`. `$1` = what, `$2` = log file.
const HOOK_SH: &str = r#"ns=$(ip netns identify $$ 2>/dev/null)
stdin=$(od -An -tx1 | tr -d ' \n')
echo "$1 ns=$ns SUBNET=$SUBNET PUBLIC_IP=$PUBLIC_IP NETWORK=${NETWORK-unset} IPV6SUBNET=${IPV6SUBNET-unset} stdin=$stdin" >> "$2"
"#;

/// Records the post-startup call to `$1`, with the rest of the arguments.
const POST_SH: &str = r#"out=$1; shift
{ echo "args=$*"; echo "NETWORK=$NETWORK"; echo "SUBNET=$SUBNET"; echo "IPV6SUBNET=$IPV6SUBNET"
  echo "PUBLIC_IP=$PUBLIC_IP"; echo "PUBLIC_IPV6=$PUBLIC_IPV6"; echo "stdin=$(od -An -tx1 | tr -d ' \n')"; } > "$out"
"#;

/// Prints this host's "backend data": a stdout line and a stderr line.
const PRE_SH: &str = r#"echo "key-$(ip netns identify $$ 2>/dev/null)"
echo "from-stderr" >&2
"#;

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// `10.5.3.1/24` ⇒ `10.5.3.0/24`.
fn net_of(subnet_env_value: &str) -> String {
    let (ip, len) = subnet_env_value.split_once('/').unwrap();
    let mut o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
    o[3] -= 1;
    format!("{}.{}.{}.{}/{len}", o[0], o[1], o[2], o[3])
}

fn key_of(subnet_env_value: &str) -> String {
    format!(
        "/coreos.com/network/subnets/{}",
        net_of(subnet_env_value).replace('/', "-")
    )
}

/// A config whose commands run the recording scripts in `dir`.
fn recording_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"extension",
            "PreStartupCommand":"sh {d}/pre.sh",
            "PostStartupCommand":"sh {d}/post.sh {d}/post.out $SUBNET ${{FROM_ENV}}",
            "SubnetAddCommand":"sh {d}/hook.sh add {d}/events",
            "SubnetRemoveCommand":"sh {d}/hook.sh remove {d}/events"}}}}"#
    )
}

fn write_scripts(dir: &Path) {
    script(dir, "pre.sh", PRE_SH);
    script(dir, "post.sh", POST_SH);
    script(dir, "hook.sh", HOOK_SH);
}

fn loopback_daemon(etcd: &Etcd, envs: &[(&str, &str)]) -> Flanneld {
    let args = [
        format!("--etcd-endpoints={}", etcd.endpoint),
        "--iface=lo".into(),
        "--public-ip=127.0.0.9".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Flanneld::spawn(&args, envs)
}

/// The recording scripts in a temp dir, an etcd holding the config that runs them, and a
/// daemon on loopback with `FROM_ENV` in its environment.
fn recording_daemon() -> (tempfile::TempDir, Etcd, Flanneld) {
    let dir = tempfile::tempdir().unwrap();
    write_scripts(dir.path());
    let etcd = Etcd::start();
    etcd.put_config(&recording_config(dir.path()));
    let d = loopback_daemon(&etcd, &[("FROM_ENV", "from-the-daemon-env")]);
    (dir, etcd, d)
}

#[test]
fn pre_startup_output_is_published_and_post_startup_gets_upstreams_variables() {
    require!(Cap::Etcd);
    let (dir, etcd, mut d) = recording_daemon();
    let subnet = d.wait_subnet(secs(20));

    // BackendData = combined stdout+stderr, trimmed, as a JSON string; PublicIP = lo's address,
    // not --public-ip.
    let value = etcd.must(&["get", &key_of(&subnet), "--print-value-only"]);
    assert_eq!(
        value.trim(),
        r#"{"PublicIP":"127.0.0.1","PublicIPv6":null,"BackendType":"extension","BackendData":"key-\nfrom-stderr"}"#
    );
    let post = read(&dir.path().join("post.out"));
    let want = format!(
        "args={net} from-the-daemon-env\nNETWORK=10.5.0.0/16\nSUBNET={net}\nIPV6SUBNET=::/0\nPUBLIC_IP=127.0.0.1\nPUBLIC_IPV6=<nil>\nstdin=0a\n",
        net = net_of(&subnet)
    );
    assert_eq!(post, want, "log:\n{}", d.log());
    let env = std::fs::read_to_string(&d.subnet_file).unwrap();
    assert!(env.contains("FLANNEL_MTU=65536"), "MTU is lo's: {env}");
}

/// The lease is lost while the daemon runs and its subnet taken by another host; the
/// daemon moves to a new subnet and runs the PostStartupCommand again, with exactly the
/// variables a start on the new subnet gets.
#[test]
fn a_moved_subnet_runs_post_startup_again_with_the_new_one() {
    require!(Cap::Etcd);
    let (dir, etcd, mut d) = recording_daemon();
    let first = d.wait_subnet(secs(20));
    let post = dir.path().join("post.out");
    let want = |subnet: &str| {
        format!(
            "args={net} from-the-daemon-env\nNETWORK=10.5.0.0/16\nSUBNET={net}\nIPV6SUBNET=::/0\nPUBLIC_IP=127.0.0.1\nPUBLIC_IPV6=<nil>\nstdin=0a\n",
            net = net_of(subnet)
        )
    };
    assert_eq!(read(&post), want(&first), "log:\n{}", d.log());

    let other = r#"{"PublicIP":"192.0.2.99","PublicIPv6":null}"#;
    let moved = d.lose_subnet(&etcd, &key_of(&first), other, &first, || {});
    let ran = wait_until(secs(10), || (read(&post) == want(&moved)).then_some(()));
    assert!(
        ran.is_some(),
        "post.out after the move to {moved}:\n{}\nlog:\n{}",
        read(&post),
        d.log()
    );
    assert!(d.try_exit().is_none(), "{}", d.log());
}

#[test]
fn remote_extension_leases_run_add_and_remove_with_their_data_on_stdin() {
    require!(Cap::Etcd);
    let dir = tempfile::tempdir().unwrap();
    write_scripts(dir.path());
    let etcd = Etcd::start();
    etcd.put_config(&recording_config(dir.path()));
    let mut d = loopback_daemon(&etcd, &[]);
    d.wait_subnet(secs(20));
    let events = dir.path().join("events");

    // Another host (as upstream would write it), a vxlan host, and one without BackendData.
    let remote = "/coreos.com/network/subnets/10.5.77.0-24";
    etcd.must(&["put", remote, r#"{"PublicIP":"192.0.2.77","PublicIPv6":null,"BackendType":"extension","BackendData":"remote-key\nline2"}"#]);
    etcd.must(&["put", "/coreos.com/network/subnets/10.5.78.0-24", r#"{"PublicIP":"192.0.2.78","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#]);
    etcd.must(&[
        "put",
        "/coreos.com/network/subnets/10.5.79.0-24",
        r#"{"PublicIP":"192.0.2.79","PublicIPv6":null,"BackendType":"extension"}"#,
    ]);
    let add77 = format!(
        "add ns= SUBNET=10.5.77.0/24 PUBLIC_IP=192.0.2.77 NETWORK=unset IPV6SUBNET=unset stdin={}",
        hex("remote-key\nline2\n")
    );
    let add79 =
        "add ns= SUBNET=10.5.79.0/24 PUBLIC_IP=192.0.2.79 NETWORK=unset IPV6SUBNET=unset stdin=0a";
    wait_until(secs(10), || read(&events).contains(add79).then_some(())).unwrap_or_else(|| {
        panic!(
            "no add for 10.5.79.0/24: {}\nlog:\n{}",
            read(&events),
            d.log()
        )
    });
    assert_eq!(
        read(&events).lines().collect::<Vec<_>>(),
        [add77.as_str(), add79]
    );
    assert!(
        d.log()
            .contains("ignoring non-extension subnet 10.5.78.0/24: type=vxlan"),
        "{}",
        d.log()
    );

    etcd.must(&["del", remote]);
    let remove77 = add77.replacen("add", "remove", 1);
    wait_until(secs(10), || read(&events).contains(&remove77).then_some(()))
        .unwrap_or_else(|| panic!("no remove: {}\nlog:\n{}", read(&events), d.log()));
    assert_eq!(read(&events).lines().count(), 3, "{}", read(&events));
    assert!(d.try_exit().is_none());
}

#[test]
fn failing_add_command_is_logged_retried_and_never_stops_the_daemon() {
    require!(Cap::Etcd);
    let dir = tempfile::tempdir().unwrap();
    let d_ = dir.path().display();
    // Fails (exit 3, with a message) the first time, succeeds the second.
    script(
        dir.path(),
        "flaky.sh",
        &format!(
            "if [ ! -e {d_}/failed-once ]; then touch {d_}/failed-once; echo 'device not ready' >&2; exit 3; fi\necho \"ok $SUBNET\" >> {d_}/done\n"
        ),
    );
    let etcd = Etcd::start();
    etcd.put_config(&format!(
        r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"extension","SubnetAddCommand":"sh {d_}/flaky.sh"}}}}"#
    ));
    let mut d = loopback_daemon(&etcd, &[]);
    let subnet = d.wait_subnet(secs(20));
    // Without a PreStartupCommand no BackendData is published.
    let value = etcd.must(&["get", &key_of(&subnet), "--print-value-only"]);
    assert_eq!(
        value.trim(),
        r#"{"PublicIP":"127.0.0.1","PublicIPv6":null,"BackendType":"extension"}"#
    );

    etcd.must(&["put", "/coreos.com/network/subnets/10.5.90.0-24", r#"{"PublicIP":"192.0.2.90","PublicIPv6":null,"BackendType":"extension","BackendData":"x"}"#]);
    let done = dir.path().join("done");
    wait_until(secs(20), || {
        read(&done).contains("ok 10.5.90.0/24").then_some(())
    })
    .unwrap_or_else(|| panic!("never retried; log:\n{}", d.log()));
    let log = d.log();
    assert!(
        log.contains("SubnetAddCommand")
            && log.contains("exit status: 3")
            && log.contains("device not ready"),
        "{log}"
    );
    assert!(log.contains("will retry in 5s"), "{log}");
    assert!(d.try_exit().is_none());
}

#[test]
fn failing_pre_or_post_startup_command_exits_1() {
    require!(Cap::Etcd);
    let dir = tempfile::tempdir().unwrap();
    let d_ = dir.path().display();
    script(
        dir.path(),
        "fail.sh",
        "echo 'cannot create device' >&2; exit 4\n",
    );
    for option in ["PreStartupCommand", "PostStartupCommand"] {
        let etcd = Etcd::start();
        etcd.put_config(&format!(r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"extension","{option}":"sh {d_}/fail.sh"}}}}"#));
        let mut d = loopback_daemon(&etcd, &[]);
        let status = d
            .wait_exit(secs(20))
            .unwrap_or_else(|| panic!("{option}: still running; log:\n{}", d.log()));
        assert_eq!(status.code(), Some(1), "{option}; log:\n{}", d.log());
        let log = d.log();
        assert!(
            log.contains(option)
                && log.contains("cannot create device")
                && log.contains("exit status: 4"),
            "{log}"
        );
        // Pre-startup fails before any lease exists; post-startup after.
        assert_eq!(
            etcd.leases().is_empty(),
            option == "PreStartupCommand",
            "{option}"
        );
    }
}

/// A cluster of `n` extension hosts running `config`, all started.
fn extension_cluster(n: usize, config: &str) -> Cluster {
    let mut c = Cluster::new(n, config);
    c.start_all(&[]);
    c
}

#[test]
fn three_hosts_see_each_others_subnets_addresses_and_data() {
    require_cluster!();
    let dir = tempfile::tempdir().unwrap();
    write_scripts(dir.path());
    let events = dir.path().join("events");
    let mut c = extension_cluster(3, &recording_config(dir.path()));
    let nets: Vec<String> = (0..3)
        .map(|i| net_of(c.hosts[i].subnet.as_deref().unwrap()))
        .collect();
    let names: Vec<String> = c.hosts.iter().map(|h| h.netns.clone()).collect();
    let add = |i: usize, j: usize| {
        format!(
            "add ns={} SUBNET={} PUBLIC_IP={} NETWORK=unset IPV6SUBNET=unset stdin={}",
            names[i],
            nets[j],
            host_ip(j),
            hex(&format!("key-{}\nfrom-stderr\n", names[j]))
        )
    };
    let all_adds: Vec<String> = (0..3)
        .flat_map(|i| (0..3).filter(move |j| *j != i).map(move |j| (i, j)))
        .map(|(i, j)| add(i, j))
        .collect();
    wait_until(secs(20), || {
        all_adds
            .iter()
            .all(|a| read(&events).lines().any(|l| l == a))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("missing adds; want {all_adds:#?}\ngot:\n{}", read(&events)));
    // Each host's lease carries its own eth0 address and its pre-startup output.
    for i in 0..3 {
        let v = c
            .etcd()
            .must(&["get", &c.lease_key(i), "--print-value-only"]);
        assert_eq!(
            v.trim(),
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"extension","BackendData":"key-{}\nfrom-stderr"}}"#,
                host_ip(i),
                c.hosts[i].netns
            )
        );
    }

    // Host 2 leaves: its lease is deleted (as an operator or expiry would); 0 and 1 run remove.
    c.kill(2);
    c.etcd().must(&["del", &c.lease_key(2)]);
    let removes: Vec<String> = [0, 1]
        .iter()
        .map(|i| add(*i, 2).replacen("add", "remove", 1))
        .collect();
    wait_until(secs(20), || {
        removes
            .iter()
            .all(|r| read(&events).lines().any(|l| l == r))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("missing removes {removes:#?}\ngot:\n{}", read(&events)));
    // Exactly the six adds and two removes: nothing ran twice.
    assert_eq!(read(&events).lines().count(), 8, "{}", read(&events));
}

#[test]
fn host_gw_by_extension_gives_pod_to_pod_ping() {
    require_cluster!();
    // The seed's example: plain `ip` commands with the variables, no script.
    let c = extension_cluster(
        3,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"extension",
            "SubnetAddCommand":"ip route add $SUBNET via $PUBLIC_IP",
            "SubnetRemoveCommand":"ip route del $SUBNET via $PUBLIC_IP"}}"#,
    );
    for (from, to) in [(0, 1), (1, 2), (2, 0)] {
        let ip = c.pod_ip(to);
        assert!(
            c.ping(from, &ip, Duration::from_secs(15)),
            "pod{from} → pod{to} ({ip}); routes on host{from}:\n{}\nlog:\n{}",
            sh(Some(&c.hosts[from].netns), "ip", &["route"]),
            c.daemon(from).log()
        );
    }
}
