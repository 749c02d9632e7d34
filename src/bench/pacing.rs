//! Time in a run: its phases ([`Timeline`]) and the open-loop send schedule ([`Pacer`]; and
//! [`OpenLoop`], which deals it out round robin over a driver's sockets).
//!
//! **Coordinated omission.** A closed-loop load generator sends the next message only when the
//! previous one returns, so when the server stalls for 100 ms the generator stalls too and records
//! *one* slow message, where real users arriving at a steady rate would have seen hundreds. In open
//! loop (`--rate`) every message has an *intended* send time fixed in advance by the schedule, and
//! its latency is measured from that time, not from when the generator actually got to send it:
//! a stall then shows up in every message that should have been sent during it.
//!
//! **A schedule the generator cannot keep.** Coordinated-omission correction charges the server
//! for every operation late because of *it*. But if the generator itself falls behind — it cannot
//! issue operations as fast as the schedule asks — its own backlog would be charged instead, and
//! it would keep growing. So an operation more than [`MAX_LAG`] behind its intended time is not
//! sent at all: it is counted as *never sent*, and the report says the rate was not reached.
//!
//! Pure: the caller passes `now` in.

use std::time::{Duration, Instant};

use super::tally::Tally;

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
    /// The phases from `start` on. The durations are at most [`MAX_DURATION`] each (the command
    /// line and [`Plan::validate`] see to it), so these sums cannot overflow.
    ///
    /// [`MAX_DURATION`]: crate::units::MAX_DURATION
    /// [`Plan::validate`]: super::Plan::validate
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

/// How far behind its schedule the generator may fall before it gives operations up.
pub const MAX_LAG: Duration = Duration::from_millis(100);

/// Operations a driver takes from its schedule per loop turn at most, so that a generator behind
/// schedule still reads its sockets between bursts (and its replies are still timed).
pub const BURST: usize = 1024;

/// An open-loop schedule: operation `k` (from 0) is due at `start + k / rate`.
///
/// Due times are computed from `k`, never accumulated, so rounding never drifts; and a generator
/// that falls behind gets every missed operation back at once, each with its own intended time —
/// up to [`MAX_LAG`] behind; older ones are skipped and counted.
#[derive(Clone, Debug)]
pub struct Pacer {
    start: Instant,
    /// Nanoseconds between operations (fractional: 3 per second is 333 333 333.3 ns).
    interval_ns: f64,
    /// Operations taken so far (handed to the driver to send).
    issued: u64,
    /// Operations given up: due more than [`MAX_LAG`] ago, or never taken before the window
    /// closed ([`Pacer::close`]).
    skipped: u64,
}

impl Pacer {
    /// `rate` operations per second from `start` on. `rate` must be positive.
    pub fn new(start: Instant, rate: f64) -> Pacer {
        assert!(rate > 0.0, "rate must be positive");
        Pacer {
            start,
            interval_ns: 1e9 / rate,
            issued: 0,
            skipped: 0,
        }
    }

    /// When operation `k` is due.
    pub fn due_at(&self, k: u64) -> Instant {
        // Saturating float-to-int casts: a schedule centuries long is nonsense, never a panic.
        self.start + Duration::from_nanos((k as f64 * self.interval_ns) as u64)
    }

    /// The first operation due at or after `t`.
    fn first_due_from(&self, t: Instant) -> u64 {
        let ns = t.saturating_duration_since(self.start).as_nanos() as f64;
        let mut k = (ns / self.interval_ns).ceil() as u64;
        // The division rounds; settle on the exact boundary with `due_at` itself.
        while k > 0 && self.due_at(k - 1) >= t {
            k -= 1;
        }
        while self.due_at(k) < t {
            k += 1;
        }
        k
    }

    /// Take the next operation if it is due by `now`; returns its intended send time.
    /// Operations due more than [`MAX_LAG`] before `now` are skipped first.
    pub fn next_due(&mut self, now: Instant) -> Option<Instant> {
        let mut at = self.due_at(self.issued);
        if at > now {
            return None;
        }
        if now.duration_since(at) > MAX_LAG {
            let k = self.first_due_from(now - MAX_LAG);
            self.skipped += k - self.issued;
            self.issued = k;
            at = self.due_at(k);
            if at > now {
                return None;
            }
        }
        self.issued += 1;
        Some(at)
    }

    /// The window is over: give up every operation due before `until` not taken yet, and return
    /// (operations the schedule called for, operations given up) over the whole schedule.
    pub fn close(&mut self, until: Instant) -> (u64, u64) {
        let k = self.first_due_from(until).max(self.issued);
        self.skipped += k - self.issued;
        self.issued = k;
        (self.issued, self.skipped)
    }

    /// When the next operation is due (for the poll timeout).
    pub fn next_at(&self) -> Instant {
        self.due_at(self.issued)
    }

    /// Operations taken so far (skipped ones included).
    #[cfg(test)]
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// Operations given up so far.
    #[cfg(test)]
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

/// An open-loop sender's side of the schedule, shared by the modes that spread one schedule
/// over their sockets (echo, udp): the [`Pacer`], and which socket gets the next operation,
/// round robin.
#[derive(Debug, Default)]
pub struct OpenLoop {
    /// Set when the load starts; taken when the schedule is settled ([`Tally::close_schedule`]).
    pacer: Option<Pacer>,
    /// The socket to try first for the next operation.
    round_robin: usize,
}

impl OpenLoop {
    /// The load starts: `rate` operations per second from `start` on.
    pub fn start(&mut self, start: Instant, rate: f64) {
        self.pacer = Some(Pacer::new(start, rate));
    }

    /// The next operation due by `now`, and the socket to send it on: the first of the
    /// `sockets` from the round-robin position on that is `usable`. `None` when there is
    /// nothing more to send this turn: nothing is due yet; or the window is over (the schedule
    /// is settled); or no socket is usable — then this operation and every later one cannot be
    /// sent (the sockets' failures are counted already): never sent, and the schedule settled.
    pub fn next(
        &mut self,
        tally: &mut Tally,
        tl: &Timeline,
        now: Instant,
        sockets: usize,
        usable: impl Fn(usize) -> bool,
    ) -> Option<(usize, Instant)> {
        if !tl.sending(now) {
            tally.close_schedule(&mut self.pacer, tl.measure_until);
            return None;
        }
        let at = self.pacer.as_mut()?.next_due(now)?;
        let Some(i) = (0..sockets)
            .map(|k| (self.round_robin + k) % sockets)
            .find(|&i| usable(i))
        else {
            tally.not_sent += 1;
            tally.close_schedule(&mut self.pacer, tl.measure_until);
            return None;
        };
        self.round_robin = (i + 1) % sockets;
        Some((i, at))
    }

    /// The run is over: settle the schedule up to `until` if the window did not already.
    pub fn close(&mut self, tally: &mut Tally, until: Instant) {
        tally.close_schedule(&mut self.pacer, until);
    }

    /// When the next operation is due, while the schedule runs (for the poll timeout).
    pub fn next_at(&self) -> Option<Instant> {
        self.pacer.as_ref().map(Pacer::next_at)
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
    fn test_a_generator_far_behind_skips_what_is_too_late_and_counts_it() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 1000.0); // every 1 ms
        // Stalled for 1 s: the operations due more than MAX_LAG (100 ms) ago are given up; the
        // rest come back with their own intended times, the oldest 100 ms late.
        let now = t0 + ms(1000);
        assert_eq!(p.next_due(now), Some(t0 + ms(900)));
        assert_eq!(p.skipped(), 900);
        let rest = std::iter::from_fn(|| p.next_due(now)).count();
        assert_eq!(rest, 100);
        assert_eq!(p.issued(), 1001);
        // The window closes at 1.5 s with the generator stuck at 1 s: the 499 operations due
        // in between were never taken; 1500 were called for in all.
        assert_eq!(p.close(t0 + ms(1500)), (1500, 900 + 499));
        // Closing again changes nothing.
        assert_eq!(p.close(t0 + ms(1500)), (1500, 1399));
    }

    #[test]
    fn test_a_slow_schedule_is_not_skipped_over() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 2.0); // every 500 ms: lag is measured per operation
        assert_eq!(p.next_due(t0 + ms(10)), Some(t0));
        assert_eq!(p.next_due(t0 + ms(550)), Some(t0 + ms(500)));
        assert_eq!(p.next_due(t0 + ms(1200)), None); // op 2 (1000 ms) is 200 ms late: skipped
        assert_eq!(p.skipped(), 1);
        assert_eq!(p.next_at(), t0 + ms(1500));
    }

    #[test]
    fn test_open_loop_goes_round_robin_over_usable_sockets() {
        let t0 = Instant::now();
        let tl = Timeline::new(t0, ms(0), ms(1000), ms(0));
        let mut tally = Tally::default();
        let mut ol = OpenLoop::default();
        // Before the load starts there is no schedule.
        assert_eq!(ol.next(&mut tally, &tl, t0, 3, |_| true), None);
        ol.start(t0, 1000.0); // every 1 ms
        let now = t0 + ms(4);
        let usable = |i: usize| i != 1; // socket 1 failed
        let picks: Vec<usize> = std::iter::from_fn(|| ol.next(&mut tally, &tl, now, 3, usable))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(picks, [0, 2, 0, 2, 0]);
        assert_eq!(ol.next_at(), Some(t0 + ms(5)));
        assert_eq!((tally.scheduled, tally.not_sent), (0, 0));
    }

    #[test]
    fn test_open_loop_with_no_usable_socket_gives_up_the_rest_of_the_schedule() {
        let t0 = Instant::now();
        let tl = Timeline::new(t0, ms(0), ms(1000), ms(0));
        let mut tally = Tally::default();
        let mut ol = OpenLoop::default();
        ol.start(t0, 1000.0);
        assert!(ol.next(&mut tally, &tl, t0 + ms(1), 2, |_| true).is_some());
        // Every socket is gone at 10 ms: the operation taken is never sent, nor is any later.
        assert_eq!(ol.next(&mut tally, &tl, t0 + ms(10), 2, |_| false), None);
        assert_eq!((tally.scheduled, tally.not_sent), (1000, 999));
        assert_eq!(ol.next_at(), None);
        // The end of the run settles nothing twice.
        ol.close(&mut tally, t0 + ms(1000));
        assert_eq!((tally.scheduled, tally.not_sent), (1000, 999));
    }

    #[test]
    fn test_open_loop_settles_its_schedule_when_the_window_closes() {
        let t0 = Instant::now();
        let tl = Timeline::new(t0, ms(0), ms(10), ms(100));
        let mut tally = Tally::default();
        let mut ol = OpenLoop::default();
        ol.start(t0, 1000.0);
        assert!(ol.next(&mut tally, &tl, t0, 1, |_| true).is_some());
        assert_eq!(ol.next(&mut tally, &tl, t0 + ms(20), 1, |_| true), None);
        assert_eq!((tally.scheduled, tally.not_sent), (10, 9));
    }

    #[test]
    fn test_share_splits_fractionally() {
        assert!((share(10.0, 3) - 10.0 / 3.0).abs() < 1e-12);
        assert_eq!(share(10.0, 0), 10.0);
    }
}
