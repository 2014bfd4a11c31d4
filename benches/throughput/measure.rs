//! One measurement each, pod 0 to pod 1: iperf3 TCP and 64-byte UDP, ping and sockperf
//! latency, CPU time (the whole machine's and the daemons'), peak RSS, and the daemons'
//! batch-size counters from `/metrics`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::common::cluster::{run, Cluster};
use super::common::{in_netns, wait_until, NETNS_HEALTHZ_PORT};
use super::stats::Latency;

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
pub fn iperf_tcp(c: &Cluster, secs: u32, streams: u32) -> (f64, f64) {
    let (secs, streams) = (secs.to_string(), streams.to_string());
    let v = iperf3(c, &["-t", &secs, "-P", &streams]);
    let sum = &v["end"]["sum_received"];
    (
        sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
        sum["bytes"].as_f64().unwrap_or(0.0),
    )
}

/// UDP with 64-byte payloads, unlimited rate: (packets/s delivered, loss %, packets delivered).
pub fn iperf_udp64(c: &Cluster, secs: u32) -> (f64, f64, f64) {
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
pub fn ping_latency(c: &Cluster, peer: &str) -> Latency {
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
pub fn request_response(c: &Cluster, peer: &str, secs: u32) -> Latency {
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

/// A snapshot of the whole machine's CPU time (the `cpu` line of `/proc/stat`).
pub struct MachineCpu {
    busy_ticks: f64,
}

impl MachineCpu {
    pub fn now() -> MachineCpu {
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
    pub fn busy_seconds(&self) -> f64 {
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
pub fn cpu_seconds(pids: &[u32]) -> f64 {
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

/// The process's peak resident set size (`VmHWM`), in MB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
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

/// Both daemons' batch-size histograms, summed: `(kind, sum, count)` per kind, from
/// `/metrics` (`flannel_udp_batch_size_{sum,count}{kind=...}`).
pub fn batch_sums(c: &Cluster) -> Vec<(String, f64, f64)> {
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
