//! The figures of a mode and how runs reduce to them: medians over runs (latency maxima
//! over all runs), ratios to a baseline, mean batch sizes between two counter readings.

/// Percentiles of a latency sample, in µs.
#[derive(Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
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
pub struct Figures {
    pub tcp1: f64,
    pub tcp4: f64,
    pub udp_pps: f64,
    pub udp_loss: f64,
    /// Whole-machine CPU per Gbit/s during the TCP runs: busy CPU % (100 = one core) per
    /// Gbit/s delivered, i.e. 100 × busy CPU-seconds per Gbit.
    pub cpu_pct_per_gbps1: f64,
    pub cpu_pct_per_gbps4: f64,
    /// Whole-machine busy CPU-seconds per million 64-byte packets delivered.
    pub cpu_s_per_mpkt: f64,
    pub ping: Latency,
    pub rr: Latency,
    /// The flanneld processes' own CPU-seconds per GB (udp only; in the JSON).
    pub daemon_cpu_s_per_gb: Option<f64>,
    pub rss_mb: Option<f64>,
    /// udp modes: mean batch size per kind during the 1- and 4-stream TCP phases.
    pub batches1: Vec<(String, f64)>,
    pub batches4: Vec<(String, f64)>,
}

/// One mode's figures from its runs' samples: the median of each (NaN ones left out), the
/// largest latency maxima, and the median run's batch size per kind.
pub fn summarize(samples: &[Figures]) -> Figures {
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
    out
}

/// Mean batch size per kind between two [`batch_sums`](super::measure::batch_sums) readings (NaN without batches).
pub fn batch_means(
    before: &[(String, f64, f64)],
    after: &[(String, f64, f64)],
) -> Vec<(String, f64)> {
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

/// The median of the finite values (NaN if there are none).
pub fn median(mut v: Vec<f64>) -> f64 {
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

/// `x / base`, NaN when there is no usable base.
pub fn ratio(x: f64, base: f64) -> f64 {
    if base > 0.0 && base.is_finite() {
        x / base
    } else {
        f64::NAN
    }
}
