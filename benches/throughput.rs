//! End-to-end throughput of the udp backend against the kernel's VXLAN, side by side on one
//! netns testbed (`cargo bench --bench throughput`, root only; exits cleanly without it).
//!
//! ```text
//!  fabric netns: bridge br0, etcd          (tests/common/cluster.rs)
//!     │ veth                │ veth
//!  host0 netns: flanneld   host1 netns: flanneld
//!     │ veth pod0            │ veth pod0
//!  pod0 netns  ── iperf3 / ping ──▶  pod1 netns
//! ```
//!
//! For each datapath (plain underlay routes, kernel VXLAN through our flanneld's vxlan
//! backend, our udp backend on io_uring with and without TUN/UDP offloads and with busy
//! polling, on recvmmsg/sendmsg with offloads, and with one packet per syscall as upstream
//! does) it measures pod to pod: iperf3 TCP with 1 and 4 streams, iperf3 UDP with 64-byte
//! payloads (packets/s delivered and loss), ping latency (200 pings at 10 ms) and back-to-back
//! request/response latency (`sockperf ping-pong`, UDP, full round trips), each as p50, p99 and
//! maximum; the whole machine's CPU time per Gbit and per million packets (busy time from
//! `/proc/stat` around each run, so the kernel's datapaths are costed like ours: both hosts
//! share the machine's cores), and the daemons' peak RSS (`VmHWM`). Each figure is the median of `FLANNEL_BENCH_RUNS` runs (default 3) of
//! `FLANNEL_BENCH_SECS` seconds (default 4). Results: one table on stdout, and
//! `target/bench/throughput.json` and `target/bench/throughput.svg`. `FLANNEL_BENCH_MODES`
//! (comma-separated keys of `MODES`) runs other modes instead, VXLAN always included: e.g.
//! `udp,udp-perslot` (multishot against one request per buffer) or
//! `udp-d4,udp-d8,udp,udp-d32,udp-d64` (the ring-depth sweep).
//!
//! `FLANNEL_BENCH_BASELINE=/path/to/an/older/flanneld` measures every udp mode twice, once
//! with this build's daemon and once with that binary (its rows say "baseline"): a
//! before/after comparison of a datapath change in one run, on one machine.
//!
//! For the udp modes it also reports the batch sizes the daemons saw during each TCP phase
//! (from their `/metrics`: datagrams per UDP send and receive, segments per TUN read and
//! write, packets per worker wake-up, as means over the phase). They show whether
//! interleaved flows break super-packets into small pieces.
//!
//! Throughput is only ever reported here, never asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::cluster::{host_ip, run, sh, Cluster};
use common::{in_netns, probe, wait_until, Cap, NETNS_HEALTHZ_PORT};
use serde_json::{json, Value};

const NETWORK: &str = "10.5.0.0/16";

/// One datapath under test.
struct Mode {
    key: &'static str,
    label: &'static str,
    /// `None`: plain routes over the underlay, no daemon.
    backend: Option<&'static str>,
    flags: &'static [&'static str],
}

const MODES: [Mode; 12] = [
    Mode {
        key: "underlay",
        label: "underlay (no overlay)",
        backend: None,
        flags: &[],
    },
    Mode {
        key: "vxlan",
        label: "kernel VXLAN",
        backend: Some("vxlan"),
        flags: &[],
    },
    Mode {
        key: "udp",
        label: "udp (io_uring, offloads)",
        backend: Some("udp"),
        flags: &[],
    },
    Mode {
        key: "udp-nooff",
        label: "udp (io_uring, no offloads)",
        backend: Some("udp"),
        flags: &["--udp-offload=false"],
    },
    Mode {
        key: "udp-mmsg",
        label: "udp (mmsg, offloads)",
        backend: Some("udp"),
        flags: &["--udp-io=mmsg"],
    },
    Mode {
        key: "udp-poll",
        label: "udp (io_uring, busy-poll 50 µs)",
        backend: Some("udp"),
        flags: &["--udp-busy-poll=50"],
    },
    // Only when named in FLANNEL_BENCH_MODES: the multishot comparison and the ring-depth
    // sweep behind `UringConfig::DEFAULT_DEPTH`.
    Mode {
        key: "udp-perslot",
        label: "udp (io_uring, a request per buffer)",
        backend: Some("udp"),
        flags: &["--udp-multishot=false"],
    },
    Mode {
        key: "udp-d4",
        label: "udp (io_uring, 4 buffers)",
        backend: Some("udp"),
        flags: &["--udp-batch=4"],
    },
    Mode {
        key: "udp-d8",
        label: "udp (io_uring, 8 buffers)",
        backend: Some("udp"),
        flags: &["--udp-batch=8"],
    },
    Mode {
        key: "udp-d32",
        label: "udp (io_uring, 32 buffers)",
        backend: Some("udp"),
        flags: &["--udp-batch=32"],
    },
    Mode {
        key: "udp-d64",
        label: "udp (io_uring, 64 buffers)",
        backend: Some("udp"),
        flags: &["--udp-batch=64"],
    },
    Mode {
        key: "udp-1pkt",
        label: "udp (1 pkt/syscall)",
        backend: Some("udp"),
        flags: &[
            "--udp-batch=1",
            "--udp-workers=1",
            "--udp-gso=false",
            "--udp-offload=false",
        ],
    },
];

/// One figure of a mode, for the plot.
type Metric = fn(&Figures) -> f64;

/// Percentiles of a latency sample, in µs.
#[derive(Clone, Copy)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            p50: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
        }
    }
}

/// The medians of one mode.
#[derive(Default, Clone)]
struct Figures {
    tcp1: f64,
    tcp4: f64,
    udp_pps: f64,
    udp_loss: f64,
    /// Whole-machine CPU per Gbit/s during the TCP runs: busy CPU % (100 = one core) per
    /// Gbit/s delivered, i.e. 100 × busy CPU-seconds per Gbit.
    cpu_pct_per_gbps1: f64,
    cpu_pct_per_gbps4: f64,
    /// Whole-machine busy CPU-seconds per million 64-byte packets delivered.
    cpu_s_per_mpkt: f64,
    ping: Latency,
    rr: Latency,
    /// The flanneld processes' own CPU-seconds per GB (udp only; in the JSON).
    daemon_cpu_s_per_gb: Option<f64>,
    rss_mb: Option<f64>,
    /// udp modes: mean batch size per kind during the 1- and 4-stream TCP phases.
    batches1: Vec<(String, f64)>,
    batches4: Vec<(String, f64)>,
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and a multi-minute measurement in a debug build is no test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("throughput bench: not run (use `cargo bench --bench throughput`)");
        return;
    }
    let caps = [
        Cap::Root,
        Cap::Netns,
        Cap::Veth,
        Cap::Vxlan,
        Cap::Tun,
        Cap::Etcd,
        Cap::Iperf3,
    ];
    let missing: Vec<String> = caps
        .iter()
        .filter_map(|&c| probe(c).err().map(|e| format!("{c:?}: {e}")))
        .collect();
    if !missing.is_empty() {
        println!("throughput bench skipped: it needs root, network namespaces, etcd and iperf3.");
        for m in missing {
            println!("  missing {m}");
        }
        return;
    }
    let runs: usize = env_or("FLANNEL_BENCH_RUNS", 3).max(1);
    let secs: u32 = env_or("FLANNEL_BENCH_SECS", 4).max(1);
    let only: Option<String> = std::env::var("FLANNEL_BENCH_MODES").ok();
    let machine = machine();
    println!("flanneld: {}", common::flanneld_bin());
    println!("machine: {machine}; {runs} runs x {secs} s per figure");

    let baseline = std::env::var("FLANNEL_BENCH_BASELINE").ok();
    if let Some(b) = &baseline {
        println!("baseline flanneld: {b}");
    }
    let mut cluster = Cluster::new(2, &config("vxlan"));
    let mut results: Vec<(&Mode, Figures)> = Vec::new();
    // VXLAN first: it leases the subnets that the underlay's plain routes then reuse (each
    // daemon gets its own lease back on every restart: same public IP).
    let default_order = [
        "underlay",
        "udp",
        "udp-nooff",
        "udp-poll",
        "udp-mmsg",
        "udp-1pkt",
    ];
    let mut order = vec!["vxlan"];
    match only.as_deref() {
        Some(list) => order.extend(list.split(',').filter(|k| *k != "vxlan")),
        None => order.extend(default_order),
    }
    for key in order {
        let Some(mode) = MODES.iter().find(|m| m.key == key) else {
            let keys: Vec<&str> = MODES.iter().map(|m| m.key).collect();
            panic!("FLANNEL_BENCH_MODES: unknown mode {key:?}; modes: {keys:?}");
        };
        println!("== {}", mode.label);
        let bin = std::path::Path::new(common::flanneld_bin());
        let figures = run_mode(&mut cluster, mode, bin, runs, secs);
        results.push((mode, figures));
        if let (Some(old), Some("udp")) = (&baseline, mode.backend) {
            // A bench binary runs once: leaking the few bytes of a row's names is simplest.
            let old_mode: &'static Mode = Box::leak(Box::new(Mode {
                key: Box::leak(format!("{}+baseline", mode.key).into_boxed_str()),
                label: Box::leak(format!("{} · baseline", mode.label).into_boxed_str()),
                ..*mode
            }));
            println!("== {}", old_mode.label);
            let figures = run_mode(&mut cluster, old_mode, old.as_ref(), runs, secs);
            results.push((old_mode, figures));
        }
    }
    // Table order: as in MODES, a baseline row after its mode's (the sort is stable).
    results.sort_by_key(|(m, _)| {
        let key = m.key.split('+').next().unwrap_or(m.key);
        MODES.iter().position(|x| x.key == key)
    });
    let base = results
        .iter()
        .find(|(m, _)| m.key == "vxlan")
        .map(|(_, f)| f.clone())
        .unwrap_or_default();
    let table = render_table(&results, &base);
    println!("\n{table}");
    let dir = out_dir();
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let json = to_json(&results, &base, &machine, runs, secs);
    std::fs::write(
        dir.join("throughput.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("throughput.svg"), svg(&results, &machine)).unwrap();
    std::fs::write(dir.join("throughput.md"), format!("{machine}\n\n{table}")).unwrap();
    println!(
        "wrote {0}/throughput.json, {0}/throughput.svg, {0}/throughput.md",
        dir.display()
    );
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("nproc {cpus}, Linux {}", kernel.trim())
}

fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench")
}

fn config(backend: &str) -> String {
    format!(r#"{{"Network":"{NETWORK}","Backend":{{"Type":"{backend}"}}}}"#)
}

/// Sets the datapath up, measures it `runs` times, tears it down again.
fn run_mode(
    c: &mut Cluster,
    mode: &Mode,
    bin: &std::path::Path,
    runs: usize,
    secs: u32,
) -> Figures {
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
    let peer = c.pod_ip(1);
    assert!(
        c.ping(0, &peer, Duration::from_secs(20)),
        "{}: pod 0 cannot reach pod 1",
        mode.label
    );

    let mut samples: Vec<Figures> = Vec::new();
    let (mut daemon_cpu, mut tcp_bytes) = (0.0, 0.0);
    for run_no in 0..runs {
        let mut f = Figures::default();
        let cpu0 = cpu_seconds(&pids);
        let udp = mode.backend == Some("udp");
        let batches0 = if udp { batch_sums(c) } else { Vec::new() };
        let busy = MachineCpu::now();
        let (g1, b1) = iperf_tcp(c, secs, 1);
        f.cpu_pct_per_gbps1 = 100.0 * busy.busy_seconds() / (b1 * 8.0 / 1e9);
        let batches1 = if udp { batch_sums(c) } else { Vec::new() };
        let busy = MachineCpu::now();
        let (g4, b4) = iperf_tcp(c, secs, 4);
        f.cpu_pct_per_gbps4 = 100.0 * busy.busy_seconds() / (b4 * 8.0 / 1e9);
        if udp {
            let batches4 = batch_sums(c);
            f.batches1 = batch_means(&batches0, &batches1);
            f.batches4 = batch_means(&batches1, &batches4);
            println!(
                "  run {}: mean batch sizes, tcp1: {}; tcp4: {}",
                run_no + 1,
                show_batches(&f.batches1),
                show_batches(&f.batches4)
            );
        }
        daemon_cpu += cpu_seconds(&pids) - cpu0;
        tcp_bytes += b1 + b4;
        let busy = MachineCpu::now();
        let (pps, loss, delivered) = iperf_udp64(c, secs);
        f.cpu_s_per_mpkt = busy.busy_seconds() / (delivered / 1e6);
        f.ping = ping_latency(c, &peer);
        f.rr = request_response(c, &peer, secs);
        (f.tcp1, f.tcp4, f.udp_pps, f.udp_loss) = (g1, g4, pps, loss);
        println!(
            "  run {}: tcp1 {g1:.2} Gbit/s ({:.1} % CPU per Gbit/s), tcp4 {g4:.2} Gbit/s ({:.1} %), \
             udp64 {:.0} kpps ({loss:.1}% lost, {:.2} CPU s/Mpkt), ping p50/p99/max {}, rr {}",
            run_no + 1,
            f.cpu_pct_per_gbps1,
            f.cpu_pct_per_gbps4,
            pps / 1e3,
            f.cpu_s_per_mpkt,
            lat(&f.ping),
            lat(&f.rr),
        );
        samples.push(f);
    }
    let med = |get: fn(&Figures) -> f64| median(samples.iter().map(get).collect());
    // Latency maxima are the maximum over all runs: the tail is what they are for.
    let max = |get: fn(&Figures) -> f64| {
        samples
            .iter()
            .map(get)
            .filter(|v| v.is_finite())
            .reduce(f64::max)
            .unwrap_or(f64::NAN)
    };
    let mut out = Figures {
        tcp1: med(|f| f.tcp1),
        tcp4: med(|f| f.tcp4),
        udp_pps: med(|f| f.udp_pps),
        udp_loss: med(|f| f.udp_loss),
        cpu_pct_per_gbps1: med(|f| f.cpu_pct_per_gbps1),
        cpu_pct_per_gbps4: med(|f| f.cpu_pct_per_gbps4),
        cpu_s_per_mpkt: med(|f| f.cpu_s_per_mpkt),
        ping: Latency {
            p50: med(|f| f.ping.p50),
            p99: med(|f| f.ping.p99),
            max: max(|f| f.ping.max),
        },
        rr: Latency {
            p50: med(|f| f.rr.p50),
            p99: med(|f| f.rr.p99),
            max: max(|f| f.rr.max),
        },
        ..Figures::default()
    };
    if !pids.is_empty() {
        out.rss_mb = pids.iter().filter_map(|&p| peak_rss_mb(p)).reduce(f64::max);
    }
    // Batch sizes: the median run's per kind.
    let med_batches = |get: fn(&Figures) -> &Vec<(String, f64)>| -> Vec<(String, f64)> {
        let Some(first) = samples.first() else {
            return Vec::new();
        };
        get(first)
            .iter()
            .enumerate()
            .map(|(k, (kind, _))| {
                let v = samples.iter().filter_map(|f| get(f).get(k).map(|x| x.1));
                (kind.clone(), median(v.collect()))
            })
            .collect()
    };
    out.batches1 = med_batches(|f| &f.batches1);
    out.batches4 = med_batches(|f| &f.batches4);
    // Only the udp backend forwards in the daemon; with VXLAN the kernel does the work.
    if mode.backend == Some("udp") {
        out.daemon_cpu_s_per_gb = (tcp_bytes > 0.0).then(|| daemon_cpu / (tcp_bytes / 1e9));
    }
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
    out
}

/// Both daemons' batch-size histograms, summed: `(kind, sum, count)` per kind, from
/// `/metrics` (`flannel_udp_batch_size_{sum,count}{kind=...}`).
fn batch_sums(c: &Cluster) -> Vec<(String, f64, f64)> {
    let mut out: Vec<(String, f64, f64)> = Vec::new();
    for h in &c.hosts {
        let url = format!("http://127.0.0.1:{NETNS_HEALTHZ_PORT}/metrics");
        let fetch = format!(
            "import urllib.request; print(urllib.request.urlopen({url:?}).read().decode())"
        );
        let page = run(Some(&h.netns), "python3", &["-c", &fetch]);
        for line in String::from_utf8_lossy(&page.stdout).lines() {
            let Some(rest) = line.strip_prefix("flannel_udp_batch_size_") else {
                continue;
            };
            let Some((series, value)) = rest.split_once(' ') else {
                continue;
            };
            // Only the sums and counts (not the buckets, whose labels go on past `kind`).
            let Some((which @ ("sum" | "count"), labels)) = series.split_once("{kind=\"") else {
                continue;
            };
            let kind = labels.trim_end_matches("\"}").to_owned();
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let i = match out.iter().position(|(k, ..)| *k == kind) {
                Some(i) => i,
                None => {
                    out.push((kind, 0.0, 0.0));
                    out.len() - 1
                }
            };
            if which == "sum" {
                out[i].1 += v;
            } else {
                out[i].2 += v;
            }
        }
    }
    out
}

/// Mean batch size per kind between two [`batch_sums`] readings (NaN without batches).
fn batch_means(before: &[(String, f64, f64)], after: &[(String, f64, f64)]) -> Vec<(String, f64)> {
    after
        .iter()
        .map(|(kind, sum, count)| {
            let (s0, c0) = before
                .iter()
                .find(|(k, ..)| k == kind)
                .map_or((0.0, 0.0), |(_, s, c)| (*s, *c));
            let n = count - c0;
            (
                kind.clone(),
                if n > 0.0 { (sum - s0) / n } else { f64::NAN },
            )
        })
        .collect()
}

fn show_batches(b: &[(String, f64)]) -> String {
    b.iter()
        .map(|(k, v)| format!("{k} {v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
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

/// Runs iperf3 from pod 0 to pod 1 with `args`; the parsed JSON report, or `Null` when three
/// attempts failed (the figure then drops out of the median, and the error is printed).
fn iperf3(c: &Cluster, args: &[&str]) -> Value {
    let target = c.pod_ip(1);
    let mut full = vec!["-c", target.as_str(), "-p", "5201", "-J"];
    full.extend_from_slice(args);
    for attempt in 1..=3 {
        let mut server = in_netns(Some(&c.hosts[1].pod_netns), "iperf3")
            .args(["-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start iperf3 server");
        let report = wait_until(Duration::from_secs(5), || {
            let o = run(Some(&c.hosts[0].pod_netns), "iperf3", &full);
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            (o.status.success() || !text.contains("unable to connect")).then_some(text)
        });
        let _ = server.kill();
        let _ = server.wait();
        let v: Value = serde_json::from_str(&report.unwrap_or_default()).unwrap_or(Value::Null);
        match v["error"].as_str() {
            None if v.is_object() => return v,
            err => println!(
                "  iperf3 {args:?} attempt {attempt} failed: {}",
                err.unwrap_or("no report")
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Value::Null
}

/// TCP with `streams` streams: (Gbit/s received, bytes received).
fn iperf_tcp(c: &Cluster, secs: u32, streams: u32) -> (f64, f64) {
    let (secs, streams) = (secs.to_string(), streams.to_string());
    let v = iperf3(c, &["-t", &secs, "-P", &streams]);
    let sum = &v["end"]["sum_received"];
    (
        sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
        sum["bytes"].as_f64().unwrap_or(0.0),
    )
}

/// UDP with 64-byte payloads, unlimited rate: (packets/s delivered, loss %, packets delivered).
fn iperf_udp64(c: &Cluster, secs: u32) -> (f64, f64, f64) {
    let secs = secs.to_string();
    let v = iperf3(c, &["-u", "-l", "64", "-b", "0", "-t", &secs]);
    // The receiver's view (iperf3 >= 3.11 reports it as `sum_received`; older ones in `sum`).
    let sum = if v["end"]["sum_received"].is_object() {
        &v["end"]["sum_received"]
    } else {
        &v["end"]["sum"]
    };
    let Some(packets) = sum["packets"].as_f64() else {
        return (f64::NAN, f64::NAN, 0.0);
    };
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let seconds = sum["seconds"].as_f64().filter(|s| *s > 0.0).unwrap_or(1.0);
    let delivered = (packets - lost).max(0.0);
    let loss = if packets > 0.0 {
        100.0 * lost / packets
    } else {
        100.0
    };
    (delivered / seconds, loss, delivered)
}

/// 200 pings 10 ms apart from pod 0 to pod 1: round trips in µs.
fn ping_latency(c: &Cluster, peer: &str) -> Latency {
    let out = run(
        Some(&c.hosts[0].pod_netns),
        "ping",
        &["-n", "-c", "200", "-i", "0.01", "-W", "1", peer],
    );
    let mut rtts: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|ms| ms * 1000.0)
        .collect();
    rtts.sort_by(f64::total_cmp);
    if rtts.is_empty() {
        return Latency::default();
    }
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Back-to-back UDP request/response for `secs` seconds from pod 0 to pod 1 with `sockperf
/// ping-pong` (one message in flight, full round trips): the latency of the datapath itself,
/// without ping's 10 ms of idle between samples. All NaN when sockperf is missing.
fn request_response(c: &Cluster, peer: &str, secs: u32) -> Latency {
    const PORT: &str = "11111";
    let Ok(mut server) = in_netns(Some(&c.hosts[1].pod_netns), "sockperf")
        .args(["server", "-i", peer, "-p", PORT])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        println!(
            "  sockperf not found: no request/response latency (scripts/bench.sh installs it)"
        );
        return Latency::default();
    };
    std::thread::sleep(Duration::from_millis(300));
    let secs = secs.to_string();
    let out = run(
        Some(&c.hosts[0].pod_netns),
        "sockperf",
        &[
            "ping-pong",
            "-i",
            peer,
            "-p",
            PORT,
            "-t",
            &secs,
            "--full-rtt",
        ],
    );
    let _ = server.kill();
    let _ = server.wait();
    parse_sockperf(&String::from_utf8_lossy(&out.stdout))
}

/// sockperf's summary lines: `---> percentile 50.000 =   12.278`, `---> <MAX> observation = …`.
fn parse_sockperf(text: &str) -> Latency {
    let find = |label: &str| {
        text.lines()
            .find(|l| l.contains(label))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Latency {
        p50: find("percentile 50.000"),
        p99: find("percentile 99.000"),
        max: find("<MAX> observation"),
    }
}

/// `p50 / p99 / max` in µs, for the log.
fn lat(l: &Latency) -> String {
    format!("{:.0} / {:.0} / {:.0} µs", l.p50, l.p99, l.max)
}

/// A snapshot of the whole machine's CPU time (the `cpu` line of `/proc/stat`).
struct MachineCpu {
    busy_ticks: f64,
}

impl MachineCpu {
    fn now() -> MachineCpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let f: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        let total: f64 = f.iter().sum();
        let idle = f.get(3).unwrap_or(&0.0) + f.get(4).unwrap_or(&0.0);
        MachineCpu {
            busy_ticks: total - idle,
        }
    }

    /// Busy CPU-seconds of all cores together since this snapshot.
    fn busy_seconds(&self) -> f64 {
        (MachineCpu::now().busy_ticks - self.busy_ticks) / clock_ticks()
    }
}

/// Clock ticks per second of /proc's counters (100 on every common Linux build; asked once).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of the processes, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // Fields after the parenthesised command name; utime and stime are fields 14, 15.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / clock_ticks()
}

fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn ratio(x: f64, base: f64) -> f64 {
    if base > 0.0 && base.is_finite() {
        x / base
    } else {
        f64::NAN
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{x:.prec$}"))
}

fn render_table(results: &[(&Mode, Figures)], base: &Figures) -> String {
    let mut t = String::new();
    t.push_str("| datapath | TCP 1 stream Gbit/s | CPU % per Gbit/s | TCP 4 streams Gbit/s | CPU % per Gbit/s | UDP 64 B kpps | CPU s/Mpkt | UDP loss | ping p50 / p99 / max µs | request/response p50 / p99 / max µs | daemon peak RSS MB |\n");
    t.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let fig = |x: f64, b: f64, prec: usize| format!("{x:.prec$} ({:.2}×)", ratio(x, b));
    for (m, f) in results {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} % | {} / {:.0} / {:.0} | {} / {:.0} / {:.0} | {} |",
            m.label,
            fig(f.tcp1, base.tcp1, 2),
            fig(f.cpu_pct_per_gbps1, base.cpu_pct_per_gbps1, 1),
            fig(f.tcp4, base.tcp4, 2),
            fig(f.cpu_pct_per_gbps4, base.cpu_pct_per_gbps4, 1),
            fig(f.udp_pps / 1e3, base.udp_pps / 1e3, 0),
            fig(f.cpu_s_per_mpkt, base.cpu_s_per_mpkt, 2),
            f.udp_loss,
            fig(f.ping.p50, base.ping.p50, 0),
            f.ping.p99,
            f.ping.max,
            fig(f.rr.p50, base.rr.p50, 0),
            f.rr.p99,
            f.rr.max,
            opt(f.rss_mb, 1),
        );
    }
    t.push_str("\nRatios in parentheses are to kernel VXLAN (for CPU and latency, lower is better). CPU is the whole machine's busy time from /proc/stat during the run (both hosts share its cores), per Gbit/s delivered (100 % = one core) and per million 64-byte packets delivered. Latency p50 and p99 are medians over the runs, max the largest sample of all runs; request/response is `sockperf ping-pong` (UDP, full round trips). RSS is the larger of the two flanneld processes' VmHWM.\n");
    let with_batches: Vec<_> = results
        .iter()
        .filter(|(_, f)| !f.batches1.is_empty())
        .collect();
    if let Some((_, first)) = with_batches.first() {
        let kinds: Vec<&str> = first.batches1.iter().map(|(k, _)| k.as_str()).collect();
        let _ = writeln!(
            t,
            "\nMean batch sizes of the udp modes (both daemons, during the TCP runs; {}), 1 stream → 4 streams:\n",
            kinds.join(" / ")
        );
        let _ = writeln!(t, "| datapath | {} |", kinds.join(" | "));
        let _ = writeln!(t, "|---{}|", "|---".repeat(kinds.len()));
        for (m, f) in with_batches {
            let cells: Vec<String> = f
                .batches1
                .iter()
                .zip(&f.batches4)
                .map(|((_, a), (_, b))| format!("{a:.1} → {b:.1}"))
                .collect();
            let _ = writeln!(t, "| {} | {} |", m.label, cells.join(" | "));
        }
    }
    t
}

fn to_json(
    results: &[(&Mode, Figures)],
    base: &Figures,
    machine: &str,
    runs: usize,
    secs: u32,
) -> Value {
    let rows: Vec<Value> = results
        .iter()
        .map(|(m, f)| {
            json!({
                "mode": m.key,
                "label": m.label,
                "flags": m.flags,
                "tcp1_gbps": f.tcp1, "tcp1_vs_vxlan": ratio(f.tcp1, base.tcp1),
                "tcp4_gbps": f.tcp4, "tcp4_vs_vxlan": ratio(f.tcp4, base.tcp4),
                "udp64_pps": f.udp_pps, "udp64_vs_vxlan": ratio(f.udp_pps, base.udp_pps),
                "udp64_loss_percent": f.udp_loss,
                "cpu_pct_per_gbps_tcp1": f.cpu_pct_per_gbps1,
                "cpu_pct_per_gbps_tcp1_vs_vxlan": ratio(f.cpu_pct_per_gbps1, base.cpu_pct_per_gbps1),
                "cpu_pct_per_gbps_tcp4": f.cpu_pct_per_gbps4,
                "cpu_pct_per_gbps_tcp4_vs_vxlan": ratio(f.cpu_pct_per_gbps4, base.cpu_pct_per_gbps4),
                "cpu_s_per_mpkt": f.cpu_s_per_mpkt,
                "cpu_s_per_mpkt_vs_vxlan": ratio(f.cpu_s_per_mpkt, base.cpu_s_per_mpkt),
                "ping_us": {"p50": f.ping.p50, "p99": f.ping.p99, "max": f.ping.max},
                "ping_p50_vs_vxlan": ratio(f.ping.p50, base.ping.p50),
                "rr_us": {"p50": f.rr.p50, "p99": f.rr.p99, "max": f.rr.max},
                "rr_p50_vs_vxlan": ratio(f.rr.p50, base.rr.p50),
                "daemon_cpu_s_per_gb": f.daemon_cpu_s_per_gb,
                "peak_rss_mb": f.rss_mb,
                "mean_batch_tcp1": f.batches1.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "mean_batch_tcp4": f.batches4.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            })
        })
        .collect();
    json!({ "machine": machine, "runs": runs, "seconds_per_run": secs, "results": rows })
}

/// Six bar-chart panels (TCP 1 and 4 streams, their CPU per Gbit/s, UDP 64 B,
/// request/response p50), one bar per datapath.
fn svg(results: &[(&Mode, Figures)], machine: &str) -> String {
    const COLORS: [&str; 12] = [
        "#9e9e9e", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#d62728", "#8c564b", "#e377c2",
        "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8",
    ];
    let panels: [(&str, Metric); 6] = [
        ("TCP 1 stream (Gbit/s)", |f| f.tcp1),
        ("TCP 4 streams (Gbit/s)", |f| f.tcp4),
        ("CPU % per Gbit/s, 1 stream (lower is better)", |f| {
            f.cpu_pct_per_gbps1
        }),
        ("CPU % per Gbit/s, 4 streams (lower is better)", |f| {
            f.cpu_pct_per_gbps4
        }),
        ("UDP 64 B (kpps delivered)", |f| f.udp_pps / 1e3),
        ("request/response p50 (µs, lower is better)", |f| f.rr.p50),
    ];
    let (pw, ph, top) = (300.0, 220.0, 60.0);
    let width = pw * panels.len() as f64 + 20.0;
    let height = top + ph + 40.0 + 20.0 * results.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14">flannel-rs udp backend vs kernel VXLAN, pod to pod over netns ({})</text>"#,
        esc(machine)
    );
    for (p, (title, get)) in panels.iter().enumerate() {
        let x0 = 10.0 + pw * p as f64;
        let max = results
            .iter()
            .map(|(_, f)| get(f))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#,
            x0 + 10.0,
            top - 10.0,
            esc(title)
        );
        let bw = (pw - 40.0) / results.len().max(1) as f64;
        for (k, (_, f)) in results.iter().enumerate() {
            let v = get(f);
            let h = if max > 0.0 && v.is_finite() {
                (ph - 20.0) * v / max
            } else {
                0.0
            };
            let x = x0 + 10.0 + bw * k as f64;
            let y = top + ph - h;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#,
                bw * 0.8,
                COLORS[k % COLORS.len()]
            );
            let label = if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            };
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
                x + bw * 0.4,
                y - 3.0
            );
        }
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            x0 + 5.0,
            top + ph,
            x0 + pw - 25.0,
            top + ph
        );
    }
    for (k, (m, _)) in results.iter().enumerate() {
        let y = top + ph + 25.0 + 20.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<rect x="20" y="{}" width="12" height="12" fill="{}"/>"#,
            y - 10.0,
            COLORS[k % COLORS.len()]
        );
        let _ = writeln!(s, r#"<text x="38" y="{y}">{}</text>"#, esc(m.label));
    }
    s.push_str("</svg>\n");
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
