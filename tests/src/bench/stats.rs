//! Percentiles of one repetition, and medians across repetitions.
use serde::Serialize;

/// One repetition: latencies in microseconds, and operations per second over its wall time.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    pub per_sec: f64,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Summary {
    pub fn from_ns(samples_ns: &[u64], elapsed_ns: u64) -> Self {
        let mut us: Vec<f64> = samples_ns.iter().map(|&n| n as f64 / 1000.0).collect();
        us.sort_by(f64::total_cmp);
        let mean = us.iter().sum::<f64>() / us.len().max(1) as f64;
        Self {
            count: us.len(),
            p50_us: percentile(&us, 50.0),
            p90_us: percentile(&us, 90.0),
            p99_us: percentile(&us, 99.0),
            p999_us: percentile(&us, 99.9),
            min_us: us.first().copied().unwrap_or(f64::NAN),
            max_us: us.last().copied().unwrap_or(f64::NAN),
            mean_us: mean,
            per_sec: us.len() as f64 / (elapsed_ns.max(1) as f64 / 1e9),
        }
    }
}

/// Several repetitions of one measurement: medians of the per-repetition figures, and the
/// spread of p50.
#[derive(Clone, Debug, Serialize)]
pub struct Aggregate {
    pub p50_us: f64,
    pub p99_us: f64,
    pub per_sec: f64,
    pub p50_min_us: f64,
    pub p50_max_us: f64,
    pub reps: Vec<Summary>,
}

impl Aggregate {
    pub fn new(reps: Vec<Summary>) -> Self {
        let p50: Vec<f64> = reps.iter().map(|r| r.p50_us).collect();
        let p99: Vec<f64> = reps.iter().map(|r| r.p99_us).collect();
        let rate: Vec<f64> = reps.iter().map(|r| r.per_sec).collect();
        Self {
            p50_us: median(&p50),
            p99_us: median(&p99),
            per_sec: median(&rate),
            p50_min_us: p50.iter().copied().fold(f64::INFINITY, f64::min),
            p50_max_us: p50.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            reps,
        }
    }
}

/// Latencies in milliseconds (control plane).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct MsSummary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl MsSummary {
    pub fn from_ms(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Self {
            count: v.len(),
            p50_ms: percentile(&v, 50.0),
            p99_ms: percentile(&v, 99.0),
            max_ms: v.last().copied().unwrap_or(f64::NAN),
            mean_ms: v.iter().sum::<f64>() / v.len().max(1) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
        let s = Summary::from_ns(&[1000, 2000, 3000], 1_000_000_000);
        assert_eq!((s.p50_us, s.per_sec), (2.0, 3.0));
    }
}
