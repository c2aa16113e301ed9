//! Percentiles of one repetition, medians across repetitions, and paired ratios between arms
//! with their spread.
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
/// spread of p50 (range and interquartile range over the repetitions).
#[derive(Clone, Debug, Serialize)]
pub struct Aggregate {
    pub p50_us: f64,
    pub p99_us: f64,
    pub per_sec: f64,
    pub p50_min_us: f64,
    pub p50_max_us: f64,
    pub p50_q1_us: f64,
    pub p50_q3_us: f64,
    pub reps: Vec<Summary>,
}

impl Aggregate {
    pub fn new(reps: Vec<Summary>) -> Self {
        let p50: Vec<f64> = reps.iter().map(|r| r.p50_us).collect();
        let p99: Vec<f64> = reps.iter().map(|r| r.p99_us).collect();
        let rate: Vec<f64> = reps.iter().map(|r| r.per_sec).collect();
        let mut sorted = p50.clone();
        sorted.sort_by(f64::total_cmp);
        Self {
            p50_q1_us: quantile(&sorted, 0.25),
            p50_q3_us: quantile(&sorted, 0.75),
            p50_us: median(&p50),
            p99_us: median(&p99),
            per_sec: median(&rate),
            p50_min_us: p50.iter().copied().fold(f64::INFINITY, f64::min),
            p50_max_us: p50.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            reps,
        }
    }
}

/// splitmix64: the benchmark's reproducible randomness (round orders, bootstrap resamples).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is below 2^-40 for the sizes used here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Linearly interpolated quantile (`q` in 0..=1) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Bootstrap resamples of the median for [`Ratio`]'s 95% interval.
const BOOTSTRAP: usize = 4000;

/// A ratio between two arms measured in the same rounds: one ratio per round (the arms'
/// per-round figures divided, so a slow phase of the machine that hits both cancels), their
/// median, interquartile range, and a bootstrap 95% interval of the median.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub rounds: usize,
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    /// Percentile-bootstrap 95% interval of the median.
    pub ci_low: f64,
    pub ci_high: f64,
    pub per_round: Vec<f64>,
}

/// Where a measured ratio stands against a ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The whole 95% interval is at or below the ceiling.
    Met,
    /// The whole 95% interval is above it.
    Missed,
    /// The interval straddles the ceiling: this run cannot tell.
    NotResolved,
}

impl Ratio {
    /// Pairs `num[i] / den[i]` round by round (rounds where either is missing or not positive
    /// are left out). `None` when no round pairs.
    pub fn paired(num: &[f64], den: &[f64]) -> Option<Self> {
        let per_round: Vec<f64> = num
            .iter()
            .zip(den)
            .filter(|(n, d)| n.is_finite() && d.is_finite() && **n > 0.0 && **d > 0.0)
            .map(|(n, d)| n / d)
            .collect();
        Self::from_ratios(per_round)
    }

    pub fn from_ratios(per_round: Vec<f64>) -> Option<Self> {
        if per_round.is_empty() {
            return None;
        }
        let mut sorted = per_round.clone();
        sorted.sort_by(f64::total_cmp);
        // Seeded from the data: the same rounds always give the same interval.
        let seed = per_round
            .iter()
            .fold(0x5eed_u64, |h, r| h.rotate_left(7) ^ r.to_bits());
        let mut rng = Rng::new(seed);
        let n = sorted.len();
        let mut medians = Vec::with_capacity(BOOTSTRAP);
        let mut sample = vec![0.0; n];
        for _ in 0..BOOTSTRAP {
            for x in sample.iter_mut() {
                *x = sorted[rng.below(n)];
            }
            medians.push(median(&sample));
        }
        medians.sort_by(f64::total_cmp);
        Some(Self {
            rounds: n,
            median: median(&sorted),
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
            ci_low: quantile(&medians, 0.025),
            ci_high: quantile(&medians, 0.975),
            per_round,
        })
    }

    /// Against a ceiling: met only when the whole interval is at or below it.
    pub fn verdict(&self, ceiling: f64) -> Verdict {
        if self.ci_high <= ceiling {
            Verdict::Met
        } else if self.ci_low > ceiling {
            Verdict::Missed
        } else {
            Verdict::NotResolved
        }
    }

    /// `1.043x [1.031-1.058], IQR 1.020-1.061, 40 rounds`.
    pub fn describe(&self) -> String {
        format!(
            "{:.3}x [95% {:.3}-{:.3}], IQR {:.3}-{:.3}, {} rounds",
            self.median, self.ci_low, self.ci_high, self.q1, self.q3, self.rounds
        )
    }

    /// `1.043x [1.031-1.058]`, for table cells.
    pub fn short(&self) -> String {
        format!(
            "{:.3}x [{:.3}-{:.3}]",
            self.median, self.ci_low, self.ci_high
        )
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

    #[test]
    fn interpolated_quantiles() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&v, 0.25), 2.0);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), 1.5);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn shuffle_is_a_permutation_and_varies() {
        let mut rng = Rng::new(7);
        let mut orders = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut v: Vec<u8> = (0..5).collect();
            rng.shuffle(&mut v);
            let mut sorted = v.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
            orders.insert(v);
        }
        assert!(orders.len() > 10, "only {} distinct orders", orders.len());
    }

    #[test]
    fn paired_ratios_cancel_a_shared_slow_phase() {
        // Both arms jump between a fast and a slow mode together (the VM's bimodal rounds);
        // the lbctl arm is 4% slower in each. Unpaired medians would mix the modes.
        let direct: Vec<f64> = (0..40)
            .map(|i| if i % 3 == 0 { 10.0 } else { 6.5 })
            .collect();
        let lbctl: Vec<f64> = direct.iter().map(|d| d * 1.04).collect();
        let r = Ratio::paired(&lbctl, &direct).unwrap();
        assert!((r.median - 1.04).abs() < 1e-9, "{r:?}");
        assert!((r.ci_low - 1.04).abs() < 1e-9 && (r.ci_high - 1.04).abs() < 1e-9);
        assert_eq!(r.verdict(1.05), Verdict::Met);
        assert_eq!(r.verdict(1.03), Verdict::Missed);
    }

    #[test]
    fn a_wide_interval_straddling_the_ceiling_is_not_resolved() {
        // Ratios spread evenly over 0.95..1.11: median 1.03, interval well around it.
        let ratios: Vec<f64> = (0..33).map(|i| 0.95 + 0.005 * f64::from(i)).collect();
        let r = Ratio::from_ratios(ratios).unwrap();
        assert!((r.median - 1.03).abs() < 1e-9);
        assert!(r.ci_low < 1.03 && r.ci_high > 1.03, "{r:?}");
        assert!(r.q1 < r.median && r.median < r.q3);
        assert_eq!(r.verdict(1.03), Verdict::NotResolved);
        assert_eq!(r.verdict(1.2), Verdict::Met);
        assert_eq!(r.verdict(0.9), Verdict::Missed);
        // Bad rounds are left out, and no round at all gives no ratio.
        assert_eq!(
            Ratio::paired(&[1.0, f64::NAN], &[1.0, 2.0]).unwrap().rounds,
            1
        );
        assert!(Ratio::paired(&[1.0], &[0.0]).is_none());
    }
}
