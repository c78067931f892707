//! Numbers derived from the samples: spreads, percentiles, ratios to the no-tracer rate, and
//! per-connection costs.

use super::{
    plan::Config,
    run::{Round, Sample},
};

/// Median, min and max.
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Spread {
    pub(super) fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// "median (min–max)" with `f` for each number.
    pub(super) fn show(&self, f: impl Fn(f64) -> String) -> String {
        format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
    }
}

/// Nearest-rank percentile of sorted values.
pub(super) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n.max(1)) - 1).copied()
}

/// Ratios of `config`'s rate to the no-tracer rate of the same round.
pub(super) fn ratios(rounds: &[Round], config: Config) -> Vec<f64> {
    paired(rounds, config, Config::NoTracer)
}

/// `config`'s rate over `base`'s, per round where both ran.
pub(super) fn paired(rounds: &[Round], config: Config, base: Config) -> Vec<f64> {
    let ratio = |r: &Round| {
        let base = r.samples.get(&base)?.rate;
        Some(r.samples.get(&config)?.rate / base)
    };
    rounds.iter().filter_map(ratio).collect()
}

pub(super) fn samples(rounds: &[Round], config: Config) -> impl Iterator<Item = &Sample> {
    rounds.iter().filter_map(move |r| r.samples.get(&config))
}

pub(super) fn summary_number(sample: &Sample, key: &str) -> Option<f64> {
    sample.summary.as_ref()?.get(key)?.as_f64()
}

/// Agent CPU milliseconds per 10,000 connections.
pub(super) fn cpu_per_10k(sample: &Sample) -> Option<f64> {
    Some(sample.cpu_s? * 1e3 / (sample.connections / 10_000.0))
}

/// Total run time / total runs of the sample's BPF programs, in ns.
pub(super) fn ns_per_run(sample: &Sample) -> Option<f64> {
    let runs = total_runs(sample);
    let ns: u64 = sample.progs.iter().map(|p| p.run_time_ns).sum();
    (runs > 0).then(|| ns as f64 / runs as f64)
}

pub(super) fn total_runs(sample: &Sample) -> u64 {
    sample.progs.iter().map(|p| p.run_cnt).sum()
}

pub(super) fn cpu_percent(sample: &Sample) -> Option<f64> {
    Some(sample.cpu_s? / sample.wall_s * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_percentile() {
        let s = Spread::of([3.0, 1.0, 2.0, 10.0]).expect("values");
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 99.0), Some(99.0));
        assert_eq!(percentile(&sorted, 50.0), Some(50.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
