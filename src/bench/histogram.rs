//! Latency histograms: microsecond resolution, any range a run can produce, and merging across
//! worker threads.
//!
//! An HDR histogram (Gil Tene's design, the `hdrhistogram` crate) keeps 3 significant digits at
//! every magnitude in a fixed ~180 KB: 1 µs steps below 2 ms, 1 ms steps near an hour. Recording
//! is a few arithmetic operations and an increment, so each worker records every operation into
//! its own histogram without locks, and the coordinator adds them up at the end — percentiles of
//! the merged histogram are exact percentiles of all the operations, unlike an average of
//! per-thread percentiles.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The largest latency recorded as itself; longer ones are recorded as this (an hour, in µs).
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Latency {
    hist: Histogram<u64>,
    /// The exact largest value (the histogram keeps 3 significant digits: 5000 µs would come
    /// back as 5003, and the worst case deserves its exact figure).
    max: u64,
}

/// The percentiles a report prints, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    /// Values recorded; 0 means the others mean nothing (reports show `-` and `null`).
    pub count: u64,
    /// The median.
    pub p50: u64,
    /// The 90th percentile.
    pub p90: u64,
    /// The 99th percentile.
    pub p99: u64,
    /// The 99.9th percentile.
    pub p999: u64,
    /// The exact largest value.
    pub max: u64,
    /// The average.
    pub mean: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram (1 µs to an hour, 3 significant digits).
    pub fn new() -> Latency {
        Latency {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("valid bounds"),
            max: 0,
        }
    }

    /// Record one latency. Sub-microsecond latencies count as 0 µs; over an hour, as an hour.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_US)
            .min(MAX_US);
        self.hist.saturating_record(us);
        self.max = self.max.max(us);
    }

    /// Add every value of `other` (another thread's histogram) to this one.
    pub fn merge(&mut self, other: &Latency) {
        self.hist
            .add(&other.hist)
            .expect("histograms with the same bounds always merge");
        self.max = self.max.max(other.max);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Forget every value (keeps the allocation).
    pub fn reset(&mut self) {
        self.hist.reset();
        self.max = 0;
    }

    /// The value at percentile `p` (0 to 100), in µs: the smallest recorded value that `p`
    /// percent of the values are at or below (up to the histogram's 3-digit precision, and never
    /// above the exact maximum).
    pub fn percentile(&self, p: f64) -> u64 {
        if self.hist.is_empty() {
            return 0;
        }
        self.hist.value_at_percentile(p).min(self.max)
    }

    /// The figures a report prints (all 0, with `count` 0, when empty).
    pub fn percentiles(&self) -> Percentiles {
        if self.hist.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: self.hist.len(),
            p50: self.percentile(50.0),
            p90: self.percentile(90.0),
            p99: self.percentile(99.0),
            p999: self.percentile(99.9),
            max: self.max,
            mean: self.hist.mean(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn test_percentiles_of_a_known_distribution() {
        let mut h = Latency::new();
        for i in 1..=1000 {
            h.record(us(i));
        }
        let p = h.percentiles();
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, 500);
        assert_eq!(p.p90, 900);
        assert_eq!(p.p99, 990);
        assert!((999..=1000).contains(&p.p999), "{}", p.p999);
        assert_eq!(p.max, 1000);
        assert!((p.mean - 500.5).abs() < 0.5);
    }

    #[test]
    fn test_microsecond_resolution_and_clamping() {
        let mut h = Latency::new();
        h.record(Duration::from_nanos(999)); // below 1 µs: 0
        h.record(us(17));
        assert_eq!(h.percentile(50.0), 0);
        assert_eq!(h.percentiles().max, 17);
        h.record(Duration::from_secs(10 * 3600)); // beyond the range: clamped, not lost
        assert_eq!(h.count(), 3);
        assert_eq!(h.percentiles().max, MAX_US);
    }

    #[test]
    fn test_merging_gives_the_percentiles_of_all_values_not_an_average() {
        // Thread A saw 99 fast operations, thread B one slow one.
        let mut a = Latency::new();
        for _ in 0..99 {
            a.record(us(10));
        }
        let mut b = Latency::new();
        b.record(us(5000));
        assert_eq!(b.percentile(99.0), 5000);
        a.merge(&b);
        let p = a.percentiles();
        assert_eq!(p.count, 100);
        assert_eq!(p.p99, 10); // 99 of 100 values are 10 µs
        assert_eq!(p.max, 5000);
        assert_eq!(a.percentile(100.0), 5000);
    }

    #[test]
    fn test_empty_and_reset() {
        let mut h = Latency::new();
        assert_eq!(h.percentiles(), Percentiles::default());
        h.record(us(3));
        h.reset();
        assert_eq!(h.count(), 0);
        assert_eq!(h.percentile(99.0), 0);
    }
}
