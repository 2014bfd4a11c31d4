//! Restarting and upgrading a udp node on a real netns cluster: `SIGUSR2`
//! re-executes host 1's daemon in place while pods of hosts 0 and 2 ping and stream UDP to
//! host 1's pod; nothing may be lost. Also the refused hand-overs, the gap a SIGKILL
//! leaves, and a daemon back after SIGKILL (same subnet; other offload flags).
//!
//! Host 1 runs a *copy* of the tests' flanneld in a temporary directory, so a test can put
//! another binary in its place (by rename, as package managers do) or remove it.
//!
//! Tier: netns (root): a cluster in network namespaces with a real etcd and real daemons.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

const UDP_NET: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#;
/// Pings per run, 10 ms apart.
const PINGS: u32 = 500;
/// Each UDP stream's rate and datagram size. Two streams share host 1's receive path with
/// the pings; on a 2-core machine running three daemons, two iperf3 pairs and the tests'
/// own builds, a higher rate starts losing datagrams at the receiving iperf3's socket with
/// or without a restart, which would hide what these tests check.
/// `FLANNEL_RESTART_RATE` overrides it.
const UDP_RATE: &str = "100M";
const UDP_LEN: &str = "1400";
/// Seconds of traffic; the restart happens after the first 1.5.
const TRAFFIC_SECS: u32 = 5;

/// The capabilities every test here needs; then takes [`SERIAL`] for the rest of the test.
macro_rules! require_restart {
    () => {
        require_udp_cluster!(Cap::Iperf3);
        let _serial = serial();
    };
}

/// One test at a time: they measure loss, and two clusters streaming at once on a 2-core
/// machine would lose datagrams to each other's load. Every test here holds it, also those
/// that measure nothing: their cluster's load would spoil the others' figures.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`SERIAL`] until the guard drops (a test that panicked holding it does not matter).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The marker `daemon::handover::BUILD_TAG` starts with, and the tag of the tests' build.
const TAG_MARKER: &[u8] = b"FLANNEL_RS_BUILD_TAG=dev\0";

/// Host 1's binary: a copy of the tests' build in `dir`.
fn copy_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("flanneld");
    std::fs::copy(flanneld_bin(), &bin).unwrap();
    bin
}

/// A second build for the upgrade: the same code with another version string. Rather than
/// compiling the project twice (minutes on two cores), the copy gets another build tag in
/// the fixed-size static that holds it; the bytes, the inode and the version the daemon
/// reports all differ.
fn upgraded_binary(dir: &Path, tag: &str) -> PathBuf {
    let mut bytes = std::fs::read(flanneld_bin()).unwrap();
    let at: Vec<usize> = bytes
        .windows(TAG_MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == TAG_MARKER)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        at.len(),
        1,
        "the build tag marker appears once in the binary"
    );
    let new = format!("FLANNEL_RS_BUILD_TAG={tag}\0");
    assert!(new.len() <= 48);
    bytes[at[0]..at[0] + new.len()].copy_from_slice(new.as_bytes());
    let path = dir.join("flanneld.new");
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Three udp hosts, host 1 on the copy at `bin`, every pod wired.
fn cluster(bin: &Path) -> Cluster {
    cluster_with(bin, &[])
}

/// As [`cluster`], host 1 with `extra` flags.
fn cluster_with(bin: &Path, extra: &[&str]) -> Cluster {
    let mut c = Cluster::new(3, UDP_NET);
    c.start(0, &[]);
    c.start_bin(1, bin, extra);
    c.start(2, &[]);
    for i in 0..3 {
        c.wait_ready(i);
    }
    for (a, b) in [(0, 1), (2, 1), (1, 0)] {
        assert!(
            c.ping(a, &c.pod_ip(b), secs(10)),
            "pod{a} -> pod{b} before the test"
        );
    }
    c
}

/// What must not change across a hand-over: PID, subnet.env and host 1's lease.
#[derive(Debug, PartialEq)]
struct Identity {
    pid: Option<u32>,
    subnet_env: String,
    lease: Option<(String, String)>,
}

fn identity(c: &Cluster) -> Identity {
    let key = c.lease_key(1);
    Identity {
        pid: c.daemon(1).pid(),
        subnet_env: std::fs::read_to_string(&c.daemon(1).subnet_file).unwrap(),
        lease: c.etcd().leases().into_iter().find(|(k, _)| *k == key),
    }
}

/// A child killed on drop unless waited for with [`Spawned::finish`].
struct Spawned(Option<Child>);

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Spawned {
    fn new(c: Child) -> Spawned {
        Spawned(Some(c))
    }

    fn finish(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

/// The traffic of one test: pod0 pings pod1 every 10 ms; pods 0 and 2 each stream UDP to
/// pod1 at a fixed rate.
struct Traffic {
    ping: Spawned,
    streams: Vec<Spawned>,
    _servers: Vec<Spawned>,
}

impl Traffic {
    fn start(c: &Cluster) -> Traffic {
        let target = c.pod_ip(1);
        let rate = std::env::var("FLANNEL_RESTART_RATE").unwrap_or_else(|_| UDP_RATE.into());
        let mut servers = Vec::new();
        let mut streams = Vec::new();
        for (k, from) in [0usize, 2].into_iter().enumerate() {
            let port = (5301 + k).to_string();
            let server = in_netns(Some(&c.hosts[1].pod_netns), "iperf3")
                .args(["-s", "-1", "-p", &port])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            servers.push(Spawned::new(server));
            // The server listens once its port is bound.
            let ns = c.hosts[1].pod_netns.clone();
            let bound = wait_until(secs(5), || {
                let o = run(Some(&ns), "ss", &["-ltnH", &format!("sport = :{port}")]);
                (!String::from_utf8_lossy(&o.stdout).trim().is_empty()).then_some(())
            });
            assert!(bound.is_some(), "iperf3 server on port {port} listens");
            let client = in_netns(Some(&c.hosts[from].pod_netns), "iperf3")
                .args([
                    "-c",
                    &target,
                    "-p",
                    &port,
                    "-u",
                    "-b",
                    &rate,
                    "-l",
                    UDP_LEN,
                    // The receiving iperf3's socket buffer (the server takes the client's):
                    // with the default 208 KiB the receiving application itself drops
                    // datagrams under load (UdpRcvbufErrors in the pod), restart or not.
                    "-w",
                    "4M",
                    "-t",
                    &TRAFFIC_SECS.to_string(),
                    "-J",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            streams.push(Spawned::new(client));
        }
        let ping = in_netns(Some(&c.hosts[0].pod_netns), "ping")
            .args(["-i", "0.01", "-c", &PINGS.to_string(), "-n", "-q", &target])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Traffic {
            ping: Spawned::new(ping),
            streams,
            _servers: servers,
        }
    }

    /// Waits for the traffic to end: (pings sent, pings answered, [(datagrams, lost)]).
    fn finish(self) -> (u64, u64, Vec<(u64, u64)>) {
        let ping = self.ping.finish();
        let text = String::from_utf8_lossy(&ping.stdout).into_owned();
        let summary = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary: {text}"));
        let num = |word: &str| -> u64 {
            let before = summary.split(word).next().unwrap_or_default();
            let n = before
                .trim_end()
                .rsplit([' ', ','])
                .next()
                .unwrap_or_default();
            n.parse()
                .unwrap_or_else(|_| panic!("{word} in {summary:?}"))
        };
        let (sent, answered) = (num("packets transmitted"), num("received"));
        let streams = self
            .streams
            .into_iter()
            .map(|s| {
                let o = s.finish();
                let out = String::from_utf8_lossy(&o.stdout).into_owned();
                let v: serde_json::Value = serde_json::from_str(&out)
                    .unwrap_or_else(|e| panic!("iperf3 JSON: {e}: {out}"));
                let sum = &v["end"]["sum"];
                match (sum["packets"].as_u64(), sum["lost_packets"].as_u64()) {
                    (Some(p), Some(l)) if p > 0 => (p, l),
                    _ => panic!("no UDP packet counts in iperf3's output: {out}"),
                }
            })
            .collect();
        (sent, answered, streams)
    }
}

/// Runs the traffic and, 1.5 s into it, `during`; returns (sent, answered, streams).
fn across(c: &mut Cluster, during: impl FnOnce(&mut Cluster)) -> (u64, u64, Vec<(u64, u64)>) {
    let traffic = Traffic::start(c);
    std::thread::sleep(Duration::from_millis(1500));
    during(c);
    traffic.finish()
}

fn wait_log(c: &Cluster, i: usize, needle: &str, timeout: Duration) -> String {
    let got = wait_until(timeout, || {
        let log = c.daemon(i).log();
        log.contains(needle).then_some(log)
    });
    got.unwrap_or_else(|| {
        panic!(
            "host {i} never logged {needle:?}; log:\n{}",
            c.daemon(i).log()
        )
    })
}

/// The datapath gap the new image measured (`datapath_gap=1.2 ms`), for the report.
fn gap_of(log: &str) -> String {
    log.lines()
        .rev()
        .find_map(|l| l.split("datapath_gap=").nth(1))
        .map(|rest| {
            rest.trim_start_matches('"')
                .split(" ms")
                .next()
                .unwrap_or(rest)
                .to_owned()
                + " ms"
        })
        .unwrap_or_else(|| "?".into())
}

/// Where the kernel dropped packets, for failure messages: UDP receive-buffer errors in
/// every namespace of the cluster, and the TUN devices' drops.
fn kernel_drops(c: &Cluster) -> String {
    // Per-CPU backlog drops (machine-wide): the second column of /proc/net/softnet_stat.
    let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    let backlog: Vec<&str> = softnet
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let mut out = format!("softnet backlog drops per CPU (hex, since boot): {backlog:?}\n");
    for h in &c.hosts {
        for ns in [&h.netns, &h.pod_netns] {
            let o = run(
                Some(ns),
                "nstat",
                &["-az", "UdpRcvbufErrors", "UdpInErrors"],
            );
            let counters: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("Udp"))
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("="))
                .collect();
            out.push_str(&format!("{ns}: {}\n", counters.join(" ")));
        }
        let o = run(
            Some(&h.netns),
            "ip",
            &["-s", "-o", "link", "show", "flannel0"],
        );
        out.push_str(&format!("{}\n", String::from_utf8_lossy(&o.stdout).trim()));
    }
    out
}

fn assert_lossless(what: &str, c: &Cluster, result: &(u64, u64, Vec<(u64, u64)>)) {
    let (sent, answered, streams) = result;
    println!(
        "{what}: pings {answered}/{sent} answered; UDP streams (datagrams, lost): {streams:?}; datapath gap {}",
        gap_of(&c.daemon(1).log())
    );
    if *answered != *sent || streams.iter().any(|s| s.1 > 0) {
        println!("{what}: kernel drops:\n{}", kernel_drops(c));
    }
    assert_eq!(*sent, u64::from(PINGS), "{what}: every ping was sent");
    assert_eq!(
        answered,
        sent,
        "{what}: pings lost; log of host 1:\n{}",
        c.daemon(1).log()
    );
    for (k, (packets, lost)) in streams.iter().enumerate() {
        assert_eq!(
            *lost,
            0,
            "{what}: stream {k} lost {lost} of {packets} datagrams; log of host 1:\n{}",
            c.daemon(1).log()
        );
    }
}

/// The control: the same traffic with no restart loses nothing, so a loss in the tests below
/// is the restart's.
#[test]
fn the_traffic_alone_loses_no_packet() {
    require_restart!();
    let dir = tempfile::tempdir().unwrap();
    let bin = copy_binary(dir.path());
    let mut c = cluster(&bin);
    let result = across(&mut c, |_| {});
    assert_lossless("no restart (control)", &c, &result);
}

/// Host 1 (on a copy of the binary in `dir`, with `extra` flags) is re-executed while the
/// traffic runs: `during` sends `SIGUSR2` (after whatever it prepares, given the binary's
/// path). Asserts that nothing was lost, that the new image took over, and that the PID,
/// subnet.env and lease are those of before; returns the cluster and host 1's log.
fn lossless_hand_over(
    what: &str,
    dir: &Path,
    extra: &[&str],
    during: impl FnOnce(&mut Cluster, &Path),
) -> (Cluster, String) {
    let bin = copy_binary(dir);
    let mut c = cluster_with(&bin, extra);
    let before = identity(&c);
    let result = across(&mut c, |c| during(c, &bin));
    let log = wait_log(&c, 1, "took over the udp datapath", secs(10));
    assert_lossless(what, &c, &result);
    assert!(
        log.contains("SIGUSR2: re-executing in place"),
        "the old image logged the re-exec:\n{log}"
    );
    // subnet.env is rewritten by the new image once it holds the lease again.
    wait_until(secs(10), || (identity(&c) == before).then_some(()));
    assert_eq!(identity(&c), before, "PID, subnet.env and lease unchanged");
    assert!(
        c.hosts[1].daemon.as_mut().unwrap().try_exit().is_none(),
        "the daemon still runs:\n{log}"
    );
    (c, log)
}

#[test]
fn a_planned_restart_loses_no_packet() {
    require_restart!();
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = lossless_hand_over("planned restart", dir.path(), &[], |c, _| {
        c.daemon(1).signal("USR2")
    });
    for (a, b) in [(1, 0), (1, 2), (2, 1)] {
        assert!(c.ping(a, &c.pod_ip(b), secs(5)), "pod{a} -> pod{b} after");
    }
    // Two more back to back: the second arrives while the first re-exec is under way, and
    // must not kill the starting image (it is blocked across the exec, then handled).
    let pid = c.daemon(1).pid();
    c.daemon(1).signal("USR2");
    c.daemon(1).signal("USR2");
    let took = |c: &Cluster| {
        c.daemon(1)
            .log()
            .matches("took over the udp datapath")
            .count()
    };
    assert!(
        wait_until(secs(10), || (took(&c) >= 2).then_some(())).is_some(),
        "{}",
        c.daemon(1).log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut c = c;
    assert!(
        c.hosts[1].daemon.as_mut().unwrap().try_exit().is_none(),
        "a SIGUSR2 during the re-exec killed the daemon:\n{}",
        c.daemon(1).log()
    );
    assert_eq!(c.daemon(1).pid(), pid);
    assert!(c.ping(0, &c.pod_ip(1), secs(5)), "{}", c.daemon(1).log());
}

/// The same on the recvmmsg/sendmsg path: its workers hand over between two rounds.
#[test]
fn a_planned_restart_on_the_mmsg_path_loses_no_packet() {
    require_restart!();
    let dir = tempfile::tempdir().unwrap();
    let what = "planned restart, mmsg path";
    let (_, log) = lossless_hand_over(what, dir.path(), &["--udp-io=mmsg"], |c, _| {
        c.daemon(1).signal("USR2")
    });
    assert!(log.contains("io=recvmmsg/sendmsg"), "{log}");
}

#[test]
fn an_upgrade_by_rename_loses_no_packet() {
    require_restart!();
    let dir = tempfile::tempdir().unwrap();
    let new = upgraded_binary(dir.path(), "upgrade2");
    let (c, log) = lossless_hand_over("upgrade", dir.path(), &[], |c, bin| {
        // As a package manager puts a new version in place: rename over the old path.
        std::fs::rename(&new, bin).unwrap();
        c.daemon(1).signal("USR2");
    });
    let took = log
        .lines()
        .find(|l| l.contains("took over the udp datapath"))
        .unwrap();
    // Both images are this build (version and commit) with different build tags.
    let old = flannel_rs::daemon::handover::version();
    let upgraded = old.replace("build dev)", "build upgrade2)");
    assert!(
        took.contains(&format!("from={old}")) && took.contains(&format!("to={upgraded}")),
        "the new image names both versions: {took}"
    );
    let pid = c.daemon(1).pid().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe,
        dir.path().join("flanneld"),
        "the process runs the renamed-in binary, not the deleted one"
    );
}

/// Host 1 gets `SIGUSR2` after `prepare` spoiled its binary: the running image must carry on
/// (same PID, lease, subnet.env), say so with `needle` and the binary's path, and lose
/// nothing.
fn refused_hand_over(what: &str, prepare: impl FnOnce(&Path), needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let bin = copy_binary(dir.path());
    let mut c = cluster(&bin);
    let before = identity(&c);
    let result = across(&mut c, |c| {
        prepare(&bin);
        c.daemon(1).signal("USR2");
    });
    let log = wait_log(&c, 1, needle, secs(5));
    assert!(
        log.contains("the running daemon carries on") && log.contains(&bin.display().to_string()),
        "the refusal names the path and says the daemon carries on:\n{log}"
    );
    assert_lossless(what, &c, &result);
    assert_eq!(
        identity(&c),
        before,
        "the same process, lease and subnet.env"
    );
    assert!(!log.contains("took over"), "no new image ran:\n{log}");
}

/// The path is checked before anything stops, so nothing even pauses.
#[test]
fn a_missing_binary_leaves_the_old_image_running() {
    require_restart!();
    let remove = |bin: &Path| std::fs::remove_file(bin).unwrap();
    refused_hand_over("missing binary", remove, "SIGUSR2: not re-executing");
}

/// An executable file the kernel cannot run (`execve` fails with `ENOEXEC`): the workers
/// were stopped for the exec and start again on the same queues and sockets; what arrived
/// meanwhile waited there.
#[test]
fn a_binary_execve_refuses_leaves_the_old_image_running() {
    require_restart!();
    let garbage = |bin: &Path| {
        let new = bin.with_extension("new");
        std::fs::write(&new, b"not a program\n").unwrap();
        std::fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::rename(&new, bin).unwrap();
    };
    refused_hand_over("execve refused", garbage, "SIGUSR2: re-exec failed");
}

#[test]
fn a_changed_backend_config_restarts_the_datapath_clean() {
    require_restart!();
    let dir = tempfile::tempdir().unwrap();
    let bin = copy_binary(dir.path());
    let c = cluster(&bin);
    let before = identity(&c);
    // The other hosts read the config only at start; host 1's new image sees the change.
    c.etcd()
        .put_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Workers":1}}"#);
    c.daemon(1).signal("USR2");
    wait_log(
        &c,
        1,
        "not keeping the handed-over udp datapath: the network config changed",
        secs(10),
    );
    // Then a fresh datapath, with the new config's one worker.
    let fresh = wait_until(secs(10), || {
        let log = c.daemon(1).log();
        let (_, after) = log.split_once("not keeping the handed-over")?;
        let line = after.lines().find(|l| l.contains("udp backend running"))?;
        Some(line.to_owned())
    });
    let fresh = fresh.unwrap_or_else(|| panic!("no fresh datapath:\n{}", c.daemon(1).log()));
    assert!(fresh.contains("workers=1"), "{fresh}");
    for (a, b) in [(0, 1), (1, 0), (2, 1)] {
        assert!(
            c.ping(a, &c.pod_ip(b), secs(10)),
            "pod{a} -> pod{b} after the clean restart:\n{}",
            c.daemon(1).log()
        );
    }
    wait_until(secs(10), || (identity(&c) == before).then_some(()));
    assert_eq!(identity(&c), before, "PID, subnet.env and lease unchanged");
}

#[test]
fn a_garbled_hand_over_starts_clean() {
    require_restart!();
    let mut c = Cluster::new(2, UDP_NET);
    c.start_all(&[]);
    // A daemon that finds a hand-over variable it cannot use (fds that are not open, as
    // after an incompatible old image) says why and starts as if there were none.
    let endpoint = c.etcd().endpoint.clone();
    let ns = c.hosts[1].netns.clone();
    c.kill(1);
    let mut d = Flanneld::spawn_in(
        Some(&ns),
        &[&format!("--etcd-endpoints={endpoint}"), "--iface=eth0"],
        &[("FLANNEL_RS_HANDOVER", "memfd=900;fds=901,902")],
    );
    d.wait_subnet(secs(30));
    let log = d.log();
    assert!(
        log.contains("cannot take over the running datapath") && log.contains("starting clean"),
        "{log}"
    );
    c.hosts[1].daemon = Some(d);
    c.wait_ready(1);
    assert!(c.ping(0, &c.pod_ip(1), secs(10)), "{}", c.daemon(1).log());
}

/// Pings pod1 from pod0 every 10 ms while `f` runs (1 s into them); returns the longest
/// time between two answered pings, in ms, and how many of 400 were answered.
fn ping_gap(c: &mut Cluster, f: impl FnOnce(&mut Cluster)) -> (f64, usize) {
    let target = c.pod_ip(1);
    let ping = in_netns(Some(&c.hosts[0].pod_netns), "ping")
        .args(["-D", "-i", "0.01", "-c", "400", "-W", "1", "-n", &target])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ping = Spawned::new(ping);
    std::thread::sleep(Duration::from_millis(1000));
    f(c);
    let out = ping.finish();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // `[1733140000.123456] 64 bytes from …: icmp_seq=12 …`
    let times: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
    (gap * 1000.0, times.len())
}

/// Today's way, for comparison: SIGTERM (the device goes away) and a new daemon. Only
/// reported, and traffic must come back.
#[test]
fn a_plain_restart_gap_for_comparison() {
    require_restart!();
    let mut c = Cluster::new(3, UDP_NET);
    c.start_all(&[]);
    assert!(c.ping(0, &c.pod_ip(1), secs(10)));
    let (gap, answered) = ping_gap(&mut c, |c| {
        c.stop(1);
        c.restart(1);
    });
    println!(
        "SIGTERM + start (no hand-over): longest gap between answered pings {gap:.0} ms \
         ({answered} of 400 answered)"
    );
    assert!(answered > 100, "traffic came back: {answered} answered");
}

/// SIGKILL, then a new daemon: the TUN device (persistent) and its route stay, so traffic
/// resumes once the new process reads its queues. Reports the gap between the last ping
/// answered before and the first answered after.
#[test]
fn sigkill_and_restart_gap() {
    require_restart!();
    let mut c = Cluster::new(3, UDP_NET);
    c.start_all(&[]);
    assert!(c.ping(0, &c.pod_ip(1), secs(10)));
    let ns = c.hosts[1].netns.clone();
    let mut kept = (String::new(), String::new());
    let mut ready = Duration::ZERO;
    let (gap, answered) = ping_gap(&mut c, |c| {
        let killed = Instant::now();
        c.kill(1);
        kept = (
            sh(Some(&ns), "ip", &["-o", "link", "show", "flannel0"]),
            sh(Some(&ns), "ip", &["-4", "route", "show", "10.5.0.0/16"]),
        );
        c.restart(1);
        ready = killed.elapsed();
    });
    println!(
        "SIGKILL + restart: longest gap between answered pings {gap:.0} ms ({answered} of 400 \
         answered; the new daemon had written subnet.env {:.0} ms after the kill)",
        ready.as_secs_f64() * 1000.0
    );
    assert!(
        kept.0.contains("flannel0") && kept.1.contains("flannel0"),
        "the device and its route survive the kill: {kept:?}"
    );
    assert!(answered > 100, "pings answered: {answered}");
    assert!(
        gap < 2000.0,
        "traffic resumed within 2 s of the kill (gap {gap:.0} ms); log:\n{}",
        c.daemon(1).log()
    );
}

/// SIGKILL and a new daemon: it gets the same subnet back and traffic flows again, both
/// ways.
#[test]
fn sigkill_and_restart_keeps_the_subnet_and_traffic_resumes() {
    require_udp_cluster!();
    let _serial = serial();
    let mut c = Cluster::new(2, UDP_NET);
    c.start_all(&[]);
    let before = c.hosts[1].subnet.clone();
    assert!(c.ping(0, &c.pod_ip(1), secs(10)));
    let after = c.restart(1);
    assert_eq!(Some(after), before, "same subnet after SIGKILL + restart");
    assert!(
        c.ping(0, &c.pod_ip(1), secs(10)),
        "traffic resumes:\n{}",
        c.daemon(1).log()
    );
    assert!(c.ping(1, &c.pod_ip(0), secs(10)));
}

/// A daemon killed with SIGKILL comes straight back with the other offload setting (as in a
/// node-by-node change of flags): whatever its previous incarnation's io_uring still held of
/// the TUN device, pods reach each other again, both ways.
#[test]
fn sigkill_and_restart_with_the_other_offload_setting() {
    require_udp_cluster!();
    let _serial = serial();
    let mut c = Cluster::new(2, UDP_NET);
    let modes: [&[&str]; 3] = [
        &["--udp-io=uring", "--udp-offload=false"],
        &["--udp-io=uring", "--udp-offload=true"],
        &["--udp-io=mmsg", "--udp-offload=false"],
    ];
    for (round, flags) in modes.iter().enumerate() {
        if round > 0 {
            c.kill(0);
            c.kill(1);
        }
        c.start_all(flags);
        for (a, b) in [(0, 1), (1, 0)] {
            assert!(
                c.ping(a, &c.pod_ip(b), secs(10)),
                "{flags:?}: pod{a} -> pod{b}\nlog{a}:\n{}\nlog{b}:\n{}",
                c.daemon(a).log(),
                c.daemon(b).log()
            );
        }
    }
}
