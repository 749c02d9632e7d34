//! Time in a run: its phases ([`Timeline`]) and the open-loop send schedule ([`Pacer`]).
//!
//! **Coordinated omission.** A closed-loop load generator sends the next message only when the
//! previous one returns, so when the server stalls for 100 ms the generator stalls too and records
//! *one* slow message, where real users arriving at a steady rate would have seen hundreds. In open
//! loop (`--rate`) every message has an *intended* send time fixed in advance by the schedule, and
//! its latency is measured from that time, not from when the generator actually got to send it:
//! a stall then shows up in every message that should have been sent during it.
//!
//! Pure: the caller passes `now` in.

use std::time::{Duration, Instant};

/// The phases of a run, decided once by the coordinator and shared by every worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeline {
    /// Load starts (warm-up begins).
    pub start: Instant,
    /// Measurement starts: operations completed from here on count.
    pub measure_from: Instant,
    /// Measurement ends; no new operation is started after it.
    pub measure_until: Instant,
    /// Operations still in flight at this time are lost.
    pub drain_until: Instant,
}

/// Where `now` falls in a [`Timeline`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Measure,
    /// No new operations; waiting for those in flight.
    Drain,
    Over,
}

impl Timeline {
    pub fn new(start: Instant, warmup: Duration, duration: Duration, drain: Duration) -> Timeline {
        let measure_from = start + warmup;
        let measure_until = measure_from + duration;
        Timeline {
            start,
            measure_from,
            measure_until,
            drain_until: measure_until + drain,
        }
    }

    pub fn phase(&self, now: Instant) -> Phase {
        if now < self.measure_from {
            Phase::Warmup
        } else if now < self.measure_until {
            Phase::Measure
        } else if now < self.drain_until {
            Phase::Drain
        } else {
            Phase::Over
        }
    }

    /// Does an operation completed at `at` count in the results?
    pub fn counts(&self, at: Instant) -> bool {
        self.measure_from <= at && at < self.measure_until
    }

    /// May a new operation be started at `now`?
    pub fn sending(&self, now: Instant) -> bool {
        now < self.measure_until
    }

    /// The measured window in seconds.
    pub fn window_secs(&self) -> f64 {
        (self.measure_until - self.measure_from).as_secs_f64()
    }
}

/// An open-loop schedule: operation `k` (from 0) is due at `start + k / rate`.
///
/// Due times are computed from `k`, never accumulated, so rounding never drifts; and a generator
/// that falls behind gets every missed operation back at once, each with its own intended time.
#[derive(Clone, Debug)]
pub struct Pacer {
    start: Instant,
    /// Nanoseconds between operations (fractional: 3 per second is 333 333 333.3 ns).
    interval_ns: f64,
    issued: u64,
}

impl Pacer {
    /// `rate` operations per second from `start` on. `rate` must be positive.
    pub fn new(start: Instant, rate: f64) -> Pacer {
        assert!(rate > 0.0, "rate must be positive");
        Pacer {
            start,
            interval_ns: 1e9 / rate,
            issued: 0,
        }
    }

    /// When operation `k` is due.
    pub fn due_at(&self, k: u64) -> Instant {
        self.start + Duration::from_nanos((k as f64 * self.interval_ns) as u64)
    }

    /// Take the next operation if it is due by `now`; returns its intended send time.
    pub fn next_due(&mut self, now: Instant) -> Option<Instant> {
        let at = self.due_at(self.issued);
        if at <= now {
            self.issued += 1;
            Some(at)
        } else {
            None
        }
    }

    /// When the next operation is due (for the poll timeout).
    pub fn next_at(&self) -> Instant {
        self.due_at(self.issued)
    }

    /// Operations taken so far.
    pub fn issued(&self) -> u64 {
        self.issued
    }
}

/// One of `n` equal parts of a total rate; fractional, so 10 msgs/s over 3 workers is 3.33/s each
/// and the parts add up to the total.
pub fn share(total: f64, n: usize) -> f64 {
    total / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn test_timeline_phases_and_window() {
        let t0 = Instant::now();
        let tl = Timeline::new(t0, ms(500), ms(2000), ms(1000));
        assert_eq!(tl.phase(t0), Phase::Warmup);
        assert_eq!(tl.phase(t0 + ms(499)), Phase::Warmup);
        assert_eq!(tl.phase(t0 + ms(500)), Phase::Measure);
        assert_eq!(tl.phase(t0 + ms(2499)), Phase::Measure);
        assert_eq!(tl.phase(t0 + ms(2500)), Phase::Drain);
        assert_eq!(tl.phase(t0 + ms(3500)), Phase::Over);
        assert!(!tl.counts(t0 + ms(100)));
        assert!(tl.counts(t0 + ms(500)));
        assert!(!tl.counts(t0 + ms(2500)));
        assert!(tl.sending(t0 + ms(2499)) && !tl.sending(t0 + ms(2500)));
        assert!((tl.window_secs() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn test_pacer_issues_on_schedule_without_drift() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 3.0); // every 333.33 ms
        assert_eq!(p.next_due(t0), Some(t0));
        assert_eq!(p.next_due(t0 + ms(333)), None);
        assert_eq!(p.next_at(), t0 + Duration::from_nanos(333_333_333));
        // Operation 3000 is due at exactly 1000 s: no accumulated rounding error.
        assert_eq!(p.due_at(3000), t0 + Duration::from_secs(1000));
    }

    #[test]
    fn test_pacer_catches_up_with_the_intended_times_after_a_stall() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 1000.0);
        // The generator was stalled for 10 ms: 11 operations are due, each with its own time,
        // so each one's latency includes the time it waited.
        let due: Vec<Instant> = std::iter::from_fn(|| p.next_due(t0 + ms(10))).collect();
        assert_eq!(due.len(), 11);
        assert_eq!(due[0], t0);
        assert_eq!(due[10], t0 + ms(10));
        assert_eq!(p.issued(), 11);
    }

    #[test]
    fn test_share_splits_fractionally() {
        assert!((share(10.0, 3) - 10.0 / 3.0).abs() < 1e-12);
        assert_eq!(share(10.0, 0), 10.0);
    }
}
