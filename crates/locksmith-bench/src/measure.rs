//! Timing loops and order statistics.
//!
//! Every number the harness reports is a median with percentiles over samples, never a
//! mean: a shared 2-core machine has outliers, and the median shrugs them off.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// How long and how often to measure.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Samples per row (one timed batch each, for ns/op rows).
    pub samples: usize,
    /// Target wall time of one batch; the batch size is calibrated to it.
    pub batch_time: Duration,
    /// Samples for latency rows (one hand-off or round trip each).
    pub latency_samples: usize,
    /// Runs of a throughput row, and how long each lasts.
    pub runs: usize,
    /// Length of one throughput run.
    pub run_time: Duration,
    /// Cap on samples of anything slower than about a millisecond (store round trips).
    pub slow_samples: usize,
}

impl Budget {
    /// The full run: a few minutes for all Rust peers on 2 cores.
    pub fn full() -> Self {
        Budget {
            samples: 51,
            batch_time: Duration::from_millis(10),
            latency_samples: 2000,
            runs: 7,
            run_time: Duration::from_millis(400),
            slow_samples: 200,
        }
    }

    /// The smoke run: every scenario, briefly.
    pub fn quick() -> Self {
        Budget {
            samples: 5,
            batch_time: Duration::from_millis(2),
            latency_samples: 50,
            runs: 2,
            run_time: Duration::from_millis(50),
            slow_samples: 20,
        }
    }
}

/// Order statistics of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Median.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Number of samples.
    pub n: u64,
}

/// Percentile by linear interpolation between closest ranks; `sorted` must be sorted and
/// non-empty, `q` in 0..=1.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

impl Stats {
    /// Order statistics of `samples` (NaNs dropped); `None` if nothing is left.
    pub fn of(samples: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Stats {
            median: percentile(&v, 0.5),
            p10: percentile(&v, 0.1),
            p90: percentile(&v, 0.9),
            p99: percentile(&v, 0.99),
            n: v.len() as u64,
        })
    }

    /// The same statistics with every value multiplied by `k` (unit change).
    pub fn scaled(self, k: f64) -> Stats {
        Stats {
            median: self.median * k,
            p10: self.p10 * k,
            p90: self.p90 * k,
            p99: self.p99 * k,
            n: self.n,
        }
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`, comparable between processes of one host.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Result of [`ns_per_op`]: the statistics and the batch size that was used.
#[derive(Debug, Clone, Copy)]
pub struct PerOp {
    /// ns per operation, over samples.
    pub stats: Stats,
    /// Operations per sample.
    pub batch: u64,
}

/// Times `op` in batches: calibrates a batch to `budget.batch_time`, then takes
/// `samples` batches and reports ns per operation. `op` returning an error stops the
/// measurement and returns it.
pub fn ns_per_op<E>(
    budget: &Budget,
    samples: usize,
    mut op: impl FnMut() -> Result<(), E>,
) -> Result<PerOp, E> {
    ns_per_op_batched(budget, samples, |k| {
        for _ in 0..k {
            op()?;
        }
        Ok(())
    })
}

/// Like [`ns_per_op`], but `batch(k)` runs `k` operations itself (so that, e.g., an async
/// batch enters its runtime once, not once per operation).
pub fn ns_per_op_batched<E>(
    budget: &Budget,
    samples: usize,
    mut batch_fn: impl FnMut(u64) -> Result<(), E>,
) -> Result<PerOp, E> {
    // Warm up and calibrate: grow the batch until it takes a tenth of the target.
    let mut batch: u64 = 1;
    loop {
        let t = Instant::now();
        batch_fn(batch)?;
        let el = t.elapsed();
        if el >= budget.batch_time / 10 || batch >= 1 << 30 {
            let per = el.as_nanos().max(1) as f64 / batch as f64;
            batch = ((budget.batch_time.as_nanos() as f64 / per) as u64).max(1);
            break;
        }
        batch *= 4;
    }
    let mut v = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let t = Instant::now();
        batch_fn(batch)?;
        v.push(t.elapsed().as_nanos() as f64 / batch as f64);
    }
    let stats = Stats::of(&v).unwrap_or(Stats {
        median: f64::NAN,
        p10: f64::NAN,
        p90: f64::NAN,
        p99: f64::NAN,
        n: 0,
    });
    Ok(PerOp { stats, batch })
}

/// [`ns_per_op`] for an operation that cannot fail.
pub fn ns_per_op_infallible(budget: &Budget, samples: usize, mut op: impl FnMut()) -> PerOp {
    match ns_per_op::<std::convert::Infallible>(budget, samples, || {
        op();
        Ok(())
    }) {
        Ok(p) => p,
        Err(e) => match e {},
    }
}

/// Keeps a value alive and opaque to the optimiser.
pub fn keep<T>(x: T) -> T {
    black_box(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0, f64::NAN]).unwrap();
        assert_eq!(s.median, 3.0);
        assert_eq!(s.n, 5);
        assert!((s.p10 - 1.4).abs() < 1e-9);
        assert!(Stats::of(&[]).is_none());
    }
}
