//! The results as a reader sees them: the log lines, the Markdown table, the JSON and the
//! SVG plot.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::stats::{ratio, Figures, Latency};
use super::Mode;

/// One figure of a mode, for the plot.
type Metric = fn(&Figures) -> f64;

/// `p50 / p99 / max` in µs, for the log.
pub fn lat(l: &Latency) -> String {
    format!("{:.0} / {:.0} / {:.0} µs", l.p50, l.p99, l.max)
}

/// `kind mean, …` of one phase, for the log.
pub fn show_batches(b: &[(String, f64)]) -> String {
    b.iter()
        .map(|(k, v)| format!("{k} {v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `x` to `prec` places, or a dash.
fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{x:.prec$}"))
}

/// The Markdown table of every mode (ratios to `base`, kernel VXLAN), its notes, and the
/// udp modes' batch sizes.
pub fn render_table(results: &[(&Mode, Figures)], base: &Figures) -> String {
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

/// The results as `throughput.json`.
pub fn to_json(
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
pub fn svg(results: &[(&Mode, Figures)], machine: &str) -> String {
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

/// `t` escaped for SVG text.
fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
