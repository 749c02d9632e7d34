//! What one worker counts: operations, bytes, latencies and errors by kind. Each worker owns its
//! tally (no sharing, no locks); the coordinator merges them at the end.

use std::ops::AddAssign;
use std::time::{Duration, Instant};

use super::histogram::Latency;
use super::pacing::Timeline;

/// Errors by kind. Every one of these is a failure: the run exits non-zero if any is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    /// A connect that failed (refused, reset, no address), or a socket that could not be made.
    pub connect: u64,
    /// A connection the server closed or reset while it was in use.
    pub closed: u64,
    /// Bytes, a datagram or a line that differs from what was sent (or more bytes than sent).
    pub corrupt: u64,
    /// Messages, datagrams or lines that never arrived (in flight when the run ended, in flight
    /// on a connection that died, or skipped over in a line sequence).
    pub lost: u64,
    /// Broadcast lines delivered twice.
    pub duplicated: u64,
    /// Broadcast lines delivered after a later line of the same sender.
    pub reordered: u64,
    /// Broadcast lines delivered back to their own sender.
    pub self_delivered: u64,
    /// Connects or probes that took longer than the connect timeout; broadcast lines given up on
    /// after a stall of the send window.
    pub timeouts: u64,
    /// Broadcast receivers that never saw the sync line (the server never registered them).
    pub unsynced: u64,
}

impl Errors {
    /// Every kind with its name, in report order.
    pub fn kinds(&self) -> [(&'static str, u64); 9] {
        [
            ("connect", self.connect),
            ("closed", self.closed),
            ("corrupt", self.corrupt),
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("reordered", self.reordered),
            ("self_delivered", self.self_delivered),
            ("timeouts", self.timeouts),
            ("unsynced", self.unsynced),
        ]
    }

    pub fn total(&self) -> u64 {
        self.kinds().iter().map(|(_, n)| n).sum()
    }
}

impl AddAssign for Errors {
    fn add_assign(&mut self, o: Errors) {
        self.connect += o.connect;
        self.closed += o.closed;
        self.corrupt += o.corrupt;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.self_delivered += o.self_delivered;
        self.timeouts += o.timeouts;
        self.unsynced += o.unsynced;
    }
}

/// One worker's counts.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Operations completed in the measured window (echo messages, datagrams, line deliveries,
    /// connection cycles, connections held).
    pub ops: u64,
    /// Payload bytes of those operations (one way).
    pub bytes: u64,
    /// Their latencies.
    pub latency: Latency,
    /// Operations started in the window (broadcast: lines sent; UDP: datagrams sent).
    pub sent: u64,
    pub errors: Errors,
    /// UDP only, not errors (UDP may do both): datagrams that came back after a later one, and
    /// replies that matched nothing in flight (duplicates, or late after being counted lost).
    pub udp_reordered: u64,
    pub udp_late: u64,
    /// Since the last progress report: operations completed (in or out of the window) and their
    /// latencies (recorded only with `progress` on: a second histogram costs every operation
    /// ~10 ns, which only the progress line needs).
    pub interval_ops: u64,
    pub interval_latency: Latency,
    pub progress: bool,
}

impl Tally {
    /// One operation completed at `now` after `latency`, carrying `bytes` of payload.
    pub fn complete(&mut self, timeline: &Timeline, now: Instant, latency: Duration, bytes: u64) {
        if timeline.counts(now) {
            self.ops += 1;
            self.bytes += bytes;
            self.latency.record(latency);
        }
        self.interval_ops += 1;
        if self.progress {
            self.interval_latency.record(latency);
        }
    }

    /// Add another worker's final counts.
    pub fn merge(&mut self, o: &Tally) {
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.latency.merge(&o.latency);
        self.sent += o.sent;
        self.errors += o.errors;
        self.udp_reordered += o.udp_reordered;
        self.udp_late += o.udp_late;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_only_the_window_counts_but_progress_sees_everything() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let tl = Timeline::new(t0, ms(100), ms(100), ms(100));
        let mut t = Tally {
            progress: true,
            ..Tally::default()
        };
        t.complete(&tl, t0 + ms(50), ms(1), 64); // warm-up
        t.complete(&tl, t0 + ms(150), ms(2), 64);
        t.complete(&tl, t0 + ms(250), ms(3), 64); // drain
        assert_eq!((t.ops, t.bytes, t.latency.count()), (1, 64, 1));
        assert_eq!(t.interval_ops, 3);
        assert_eq!(t.interval_latency.count(), 3);
    }

    #[test]
    fn test_merge_adds_counts_errors_and_histograms() {
        let t0 = Instant::now();
        let tl = Timeline::new(t0, Duration::ZERO, Duration::from_secs(9), Duration::ZERO);
        let mut a = Tally::default();
        a.complete(&tl, t0, Duration::from_micros(10), 1);
        a.errors.lost = 2;
        let mut b = Tally::default();
        b.complete(&tl, t0, Duration::from_micros(30), 1);
        b.errors.corrupt = 1;
        b.errors.lost = 1;
        a.merge(&b);
        assert_eq!(a.ops, 2);
        assert_eq!(a.latency.percentiles().max, 30);
        assert_eq!(a.errors.lost, 3);
        assert_eq!(a.errors.total(), 4);
    }
}
