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
//!
//! The parts: `testbed` puts each mode's datapath up and down on the netns cluster,
//! `measure` runs one measurement each, `stats` reduces the runs to a mode's figures,
//! `render` writes the table, JSON and plot. This file says what is measured and in what order.

#[path = "../../tests/common/mod.rs"]
mod common;
mod measure;
mod render;
mod stats;
mod testbed;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::Cluster;
use common::{probe, Cap};
use measure::{
    batch_sums, cpu_seconds, iperf_tcp, iperf_udp64, peak_rss_mb, ping_latency, request_response,
    MachineCpu,
};
use render::{lat, render_table, show_batches, svg, to_json};
use stats::{batch_means, summarize, Figures};

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
    let mut cluster = Cluster::new(2, &testbed::config("vxlan"));
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
        let bin = Path::new(common::flanneld_bin());
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

/// Sets the datapath up, measures it `runs` times, tears it down again.
fn run_mode(c: &mut Cluster, mode: &Mode, bin: &Path, runs: usize, secs: u32) -> Figures {
    let pids = testbed::set_up(c, mode, bin);
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
    let mut out = summarize(&samples);
    if !pids.is_empty() {
        out.rss_mb = pids.iter().filter_map(|&p| peak_rss_mb(p)).reduce(f64::max);
    }
    // Only the udp backend forwards in the daemon; with VXLAN the kernel does the work.
    if mode.backend == Some("udp") {
        out.daemon_cpu_s_per_gb = (tcp_bytes > 0.0).then(|| daemon_cpu / (tcp_bytes / 1e9));
    }
    testbed::tear_down(c, mode);
    out
}
