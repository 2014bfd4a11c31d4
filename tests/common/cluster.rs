//! A whole flannel cluster on one machine, in network namespaces:
//!
//! ```text
//!  fabric netns: bridge br0 192.0.2.254/24, etcd on 192.0.2.254:2379
//!     │ veth            │ veth            │ veth
//!  host0 netns       host1 netns       host2 netns      eth0 192.0.2.(i+1)/24, flanneld
//!     │ veth pod0       │                 │              pod0 = FLANNEL_SUBNET (.1)
//!  pod0 netns        pod1 netns        pod2 netns       eth0 = subnet .2, default via .1
//! ```
//!
//! Every namespace name carries a per-test prefix; `Drop` kills the daemons and
//! etcd and deletes the namespaces (and with them every link), even when the
//! test panics. Traffic never leaves these namespaces.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{in_netns, unique, wait_until, Etcd, Flanneld};

/// Fabric address of host `i`.
pub fn host_ip(i: usize) -> String {
    format!("192.0.2.{}", i + 1)
}

pub const FABRIC_IP: &str = "192.0.2.254";

/// One host of the cluster.
pub struct Host {
    pub netns: String,
    pub pod_netns: String,
    pub daemon: Option<Flanneld>,
    /// `FLANNEL_SUBNET` once the daemon has written it (`10.5.3.1/24`).
    pub subnet: Option<String>,
    /// Extra flanneld flags this host runs with.
    pub extra_args: Vec<String>,
    pod_ready: bool,
}

pub struct Cluster {
    pub prefix: String,
    pub fabric: String,
    pub etcd: Option<Etcd>,
    pub hosts: Vec<Host>,
    /// More namespaces a test made (CNI pods, outside hosts): deleted in `Drop`.
    pub extra_netns: Vec<String>,
}

/// Runs a command; panics with its output when it fails.
pub fn sh(netns: Option<&str>, program: &str, args: &[&str]) -> String {
    let out = run(netns, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} in {netns:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run(netns: Option<&str>, program: &str, args: &[&str]) -> Output {
    in_netns(netns, program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

impl Cluster {
    /// Builds the fabric and `n` hosts, starts etcd and stores `config`.
    /// Daemons are not started yet (see [`Cluster::start`]).
    pub fn new(n: usize, config: &str) -> Cluster {
        let prefix = unique("fl");
        let fabric = format!("{prefix}fab");
        let mut c = Cluster {
            prefix,
            fabric: fabric.clone(),
            etcd: None,
            hosts: Vec::new(),
            extra_netns: Vec::new(),
        };
        sh(None, "ip", &["netns", "add", &fabric]);
        let ns = Some(fabric.as_str());
        sh(ns, "ip", &["link", "set", "lo", "up"]);
        sh(
            ns,
            "ip",
            &["link", "add", "br0", "type", "bridge", "forward_delay", "0"],
        );
        sh(
            ns,
            "ip",
            &["addr", "add", &format!("{FABRIC_IP}/24"), "dev", "br0"],
        );
        sh(ns, "ip", &["link", "set", "br0", "up"]);
        let etcd = Etcd::start_in(&fabric, FABRIC_IP);
        etcd.put_config(config);
        c.etcd = Some(etcd);
        for _ in 0..n {
            c.add_host();
        }
        c
    }

    pub fn etcd(&self) -> &Etcd {
        self.etcd.as_ref().expect("etcd running")
    }

    /// Adds a host namespace wired to the fabric; returns its index.
    pub fn add_host(&mut self) -> usize {
        let i = self.hosts.len();
        let netns = format!("{}h{i}", self.prefix);
        let pod_netns = format!("{}p{i}", self.prefix);
        for ns in [&netns, &pod_netns] {
            sh(None, "ip", &["netns", "add", ns]);
            sh(Some(ns), "ip", &["link", "set", "lo", "up"]);
        }
        let peer = format!("vh{i}");
        sh(
            Some(&netns),
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                &self.fabric,
            ],
        );
        sh(
            Some(&self.fabric),
            "ip",
            &["link", "set", &peer, "master", "br0", "up"],
        );
        sh(
            Some(&netns),
            "ip",
            &["addr", "add", &format!("{}/24", host_ip(i)), "dev", "eth0"],
        );
        sh(Some(&netns), "ip", &["link", "set", "eth0", "up"]);
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            sh(Some(&netns), "sysctl", &["-qw", &format!("{k}={v}")]);
        }
        self.hosts.push(Host {
            netns,
            pod_netns,
            daemon: None,
            subnet: None,
            extra_args: Vec::new(),
            pod_ready: false,
        });
        i
    }

    /// Starts flanneld on host `i` with `extra` flags (kept for restarts).
    pub fn start(&mut self, i: usize, extra: &[&str]) {
        self.start_bin(i, std::path::Path::new(super::flanneld_bin()), extra);
    }

    /// As [`Cluster::start`], running the binary at `bin`.
    pub fn start_bin(&mut self, i: usize, bin: &std::path::Path, extra: &[&str]) {
        let endpoint = self.etcd().endpoint.clone();
        let h = &mut self.hosts[i];
        h.extra_args = extra.iter().map(|s| s.to_string()).collect();
        let mut args = vec![
            format!("--etcd-endpoints={endpoint}"),
            "--iface=eth0".to_owned(),
            "-v=1".to_owned(),
        ];
        args.extend(h.extra_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        h.daemon = Some(Flanneld::spawn_bin_in(bin, Some(&h.netns), &args, &[]));
    }

    /// Starts every host and waits until each has its subnet and pod.
    pub fn start_all(&mut self, extra: &[&str]) {
        self.start_all_bin(std::path::Path::new(super::flanneld_bin()), extra);
    }

    /// As [`Cluster::start_all`], with the daemon binary `bin` (an older build, say).
    pub fn start_all_bin(&mut self, bin: &std::path::Path, extra: &[&str]) {
        for i in 0..self.hosts.len() {
            self.start_bin(i, bin, extra);
        }
        for i in 0..self.hosts.len() {
            self.wait_ready(i);
        }
    }

    /// Waits for host `i`'s subnet.env, then wires its pod namespace.
    /// Creates a namespace (lo up) named `<prefix><suffix>`, deleted in `Drop`.
    pub fn add_netns(&mut self, suffix: &str) -> String {
        let name = format!("{}{suffix}", self.prefix);
        sh(None, "ip", &["netns", "add", &name]);
        self.extra_netns.push(name.clone());
        sh(Some(&name), "ip", &["link", "set", "lo", "up"]);
        name
    }

    /// Waits for host `i`'s subnet.env only (no pod wiring): `FLANNEL_SUBNET`.
    pub fn wait_lease(&mut self, i: usize) -> String {
        let h = &mut self.hosts[i];
        let subnet = h
            .daemon
            .as_mut()
            .expect("daemon started")
            .wait_subnet(Duration::from_secs(30));
        h.subnet = Some(subnet.clone());
        subnet
    }

    pub fn wait_ready(&mut self, i: usize) -> String {
        let h = &mut self.hosts[i];
        let d = h.daemon.as_mut().expect("daemon started");
        let subnet = d.wait_subnet(Duration::from_secs(30));
        let mtu = std::fs::read_to_string(&d.subnet_file)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("FLANNEL_MTU=").map(str::to_owned))
            })
            .unwrap_or_else(|| "1472".into());
        if !h.pod_ready || h.subnet.as_deref() != Some(subnet.as_str()) {
            let (ns, pns) = (h.netns.clone(), h.pod_netns.clone());
            if h.pod_ready {
                let _ = run(Some(&ns), "ip", &["link", "del", "pod0"]);
            }
            let (gw, len) = subnet.split_once('/').unwrap();
            let pod = pod_ip_of(&subnet);
            sh(
                Some(&ns),
                "ip",
                &[
                    "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", &pns,
                ],
            );
            sh(Some(&ns), "ip", &["addr", "add", &subnet, "dev", "pod0"]);
            sh(Some(&ns), "ip", &["link", "set", "pod0", "up"]);
            sh(
                Some(&pns),
                "ip",
                &["addr", "add", &format!("{pod}/{len}"), "dev", "eth0"],
            );
            sh(
                Some(&pns),
                "ip",
                &["link", "set", "eth0", "mtu", &mtu, "up"],
            );
            sh(Some(&pns), "ip", &["route", "add", "default", "via", gw]);
            h.pod_ready = true;
        }
        h.subnet = Some(subnet.clone());
        subnet
    }

    /// The pod address on host `i` (subnet .2).
    pub fn pod_ip(&self, i: usize) -> String {
        pod_ip_of(self.hosts[i].subnet.as_deref().expect("host ready"))
    }

    /// One ping from pod `from` to `ip`, waiting at most `wait` for the reply.
    pub fn ping_once(&self, from: usize, ip: &str, wait: Duration) -> bool {
        let w = wait.as_secs().max(1).to_string();
        run(
            Some(&self.hosts[from].pod_netns),
            "ping",
            &["-c", "1", "-W", &w, "-n", "-q", ip],
        )
        .status
        .success()
    }

    /// Pings until one reply arrives or `timeout` passes.
    pub fn ping(&self, from: usize, ip: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.ping_once(from, ip, Duration::from_secs(1))
                .then_some(())
        })
        .is_some()
    }

    /// iperf3 TCP from pod `from` to pod `to` for `secs`: received Gbit/s.
    pub fn iperf(&self, from: usize, to: usize, secs: u32, streams: u32) -> Result<f64, String> {
        let server = in_netns(Some(&self.hosts[to].pod_netns), "iperf3")
            .args(["-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let _server = KillOnDrop(server);
        let target = self.pod_ip(to);
        let (secs, streams) = (secs.to_string(), streams.to_string());
        // The server may not listen yet, or refuse a first control connection: retry until a
        // run reports a throughput (iperf3 then exits 0 with `end.sum_received`).
        let mut last = String::new();
        let got = wait_until(Duration::from_secs(10), || {
            let o = run(
                Some(&self.hosts[from].pod_netns),
                "iperf3",
                &[
                    "-c", &target, "-p", "5201", "-t", &secs, "-P", &streams, "-J",
                ],
            );
            last = String::from_utf8_lossy(&o.stdout).into_owned();
            let v: serde_json::Value = serde_json::from_str(&last).ok()?;
            let bps = v["end"]["sum_received"]["bits_per_second"].as_f64()?;
            (o.status.success() && !v["intervals"].as_array()?.is_empty()).then_some(bps / 1e9)
        });
        got.ok_or_else(|| format!("iperf3 gave no throughput within 10 s; last output: {last}"))
    }

    /// Kills host `i`'s daemon with SIGKILL (its TUN device goes with it).
    pub fn kill(&mut self, i: usize) {
        if let Some(d) = self.hosts[i].daemon.as_mut() {
            d.kill();
        }
    }

    /// Stops host `i`'s daemon with SIGTERM, waits for it to exit and returns its log.
    pub fn stop(&mut self, i: usize) -> String {
        let d = self.hosts[i].daemon.as_mut().expect("daemon started");
        d.signal("TERM");
        let status = d.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "flanneld {i} did not exit 0 on SIGTERM ({status:?}):\n{}",
            d.log()
        );
        d.log()
    }

    /// Starts host `i`'s daemon again with the same flags and waits for it.
    pub fn restart(&mut self, i: usize) -> String {
        self.kill(i);
        let extra: Vec<String> = self.hosts[i].extra_args.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.start(i, &extra);
        self.wait_ready(i)
    }

    /// Takes host `i`'s subnet away while its daemon runs: the daemon is paused, its lease
    /// deleted and the key written again as another host's (192.0.2.99), then resumed. Returns
    /// the new subnet (`FLANNEL_SUBNET` form) once subnet.env shows it; `wait_ready` re-wires
    /// the pod afterwards.
    pub fn take_subnet_away(&mut self, i: usize) -> String {
        let before = self.hosts[i].subnet.clone().expect("host ready");
        let key = self.lease_key(i);
        self.daemon(i).lose_subnet(
            self.etcd(),
            &key,
            r#"{"PublicIP":"192.0.2.99","PublicIPv6":null}"#,
            &before,
            || {},
        )
    }

    /// The whole move, checked: pods of hosts `i` and `peer` reach each other, host `i`'s subnet
    /// is taken away ([`Cluster::take_subnet_away`]), its pod re-wired on the new subnet; then
    /// pods reach each other again both ways, `dev` (flannel0, flannel.1; `None` for host-gw)
    /// carries the new subnet's /32 and nothing of the old one, and neither host has a route
    /// into the old subnet (its new holder, 192.0.2.99, publishes no backend type, so no
    /// backend but udp, which routes in userspace, programs one). Returns (old, new) subnets.
    pub fn check_move(&mut self, i: usize, peer: usize, dev: Option<&str>) -> (String, String) {
        let secs = Duration::from_secs;
        for (a, b) in [(i, peer), (peer, i)] {
            assert!(
                self.ping(a, &self.pod_ip(b), secs(10)),
                "before the move: pod{a} -> pod{b}"
            );
        }
        let old = self.hosts[i].subnet.clone().expect("host ready");
        let new = self.take_subnet_away(i);
        assert_eq!(self.wait_ready(i), new);
        for (a, b) in [(i, peer), (peer, i)] {
            assert!(
                self.ping(a, &self.pod_ip(b), secs(15)),
                "after the move {old} -> {new}: pod{a} -> pod{b}\nlog{i}:\n{}\nlog{peer}:\n{}",
                self.daemon(i).log(),
                self.daemon(peer).log()
            );
        }
        let net = |s: &str| {
            let n: ipnet::Ipv4Net = s.parse().unwrap();
            n.trunc()
        };
        let (old_net, new_net) = (net(&old), net(&new));
        let ns = self.hosts[i].netns.clone();
        if let Some(dev) = dev {
            let addrs = wait_until(secs(5), || {
                let a = sh(Some(&ns), "ip", &["-4", "-o", "addr", "show", "dev", dev]);
                let has = |n: ipnet::Ipv4Net| a.contains(&format!(" {}/32 ", n.network()));
                (has(new_net) && !has(old_net)).then_some(a)
            });
            assert!(
                addrs.is_some(),
                "{dev} after the move {old_net} -> {new_net}:\n{}\n{}",
                sh(Some(&ns), "ip", &["-4", "addr", "show", "dev", dev]),
                self.daemon(i).log()
            );
        }
        for h in [i, peer] {
            let hns = self.hosts[h].netns.clone();
            let routes = || sh(Some(&hns), "ip", &["-4", "route", "show", "table", "all"]);
            let gone = wait_until(secs(5), || {
                (!routes().contains(&old_net.to_string())).then_some(())
            });
            assert!(
                gone.is_some(),
                "host {h} still routes our old subnet {old_net}:\n{}\n{}",
                routes(),
                self.daemon(h).log()
            );
        }
        (old, new)
    }

    pub fn daemon(&self, i: usize) -> &Flanneld {
        self.hosts[i].daemon.as_ref().expect("daemon started")
    }

    /// etcd key of host `i`'s lease.
    pub fn lease_key(&self, i: usize) -> String {
        let subnet = self.hosts[i].subnet.as_deref().expect("host ready");
        let (ip, len) = subnet.split_once('/').unwrap();
        let mut o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
        o[3] -= 1;
        format!(
            "/coreos.com/network/subnets/{}.{}.{}.{}-{len}",
            o[0], o[1], o[2], o[3]
        )
    }
}

fn pod_ip_of(subnet: &str) -> String {
    let ip = subnet.split('/').next().unwrap();
    let mut o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
    o[3] += 1;
    format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut d) = h.daemon.take() {
                d.kill();
            }
        }
        if let Some(mut e) = self.etcd.take() {
            e.stop();
        }
        let mut names: Vec<String> = vec![self.fabric.clone()];
        names.extend(self.extra_netns.iter().cloned());
        for h in &self.hosts {
            names.push(h.netns.clone());
            names.push(h.pod_netns.clone());
        }
        for ns in names {
            // Kill anything left inside (iperf3 servers, stray processes).
            if let Ok(o) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}
