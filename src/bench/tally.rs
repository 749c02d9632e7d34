//! What one worker counts: operations, bytes, latencies, errors by kind and their causes. Each
//! worker owns its tally (no sharing, no locks); the coordinator merges them at the end.
//!
//! **Every operation has one fate, and every fault is counted once.** An operation (a message, a
//! datagram, a line delivery) is completed, or lost (sent whole, never answered, on a connection
//! that stayed up), or corrupt, or abandoned (in flight on a connection that failed: the failure
//! is the one error, its operations are not counted again as lost), or never sent (the schedule
//! or the pipeline wanted it but it never went on the wire whole: not counted as lost).

use std::io;
use std::net::SocketAddr;
use std::ops::AddAssign;
use std::time::{Duration, Instant};

use super::histogram::Latency;
use super::pacing::{Pacer, Timeline};

/// Errors by kind. Every one of these is a failure: the run exits non-zero if any is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    /// A connect that failed (refused, reset, no address), or a socket that could not be made.
    pub connect: u64,
    /// A connection the server closed or reset while it was in use.
    pub closed: u64,
    /// Bytes, a datagram or a line that differs from what was sent (or more bytes than sent).
    pub corrupt: u64,
    /// Messages, datagrams or lines sent whole that never arrived, on a connection that stayed
    /// up (in flight when the run ended, or skipped over in a line sequence).
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
    /// UDP datagrams the kernel refused to send (e.g. `Permission denied` for a broadcast
    /// address without `--broadcast`).
    pub send: u64,
}

impl Errors {
    /// Every kind with its name, in report order.
    pub fn kinds(&self) -> [(&'static str, u64); 10] {
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
            ("send", self.send),
        ]
    }

    /// All errors of every kind.
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
        self.send += o.send;
    }
}

/// The kinds of error that have a cause worth naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CauseKind {
    /// A TCP connect (or a UDP probe) failed.
    Connect,
    /// A connection in use was closed or failed.
    Closed,
    /// A UDP send failed.
    Send,
}

impl CauseKind {
    /// The word the report uses.
    pub fn name(self) -> &'static str {
        match self {
            CauseKind::Connect => "connect",
            CauseKind::Closed => "closed",
            CauseKind::Send => "send",
        }
    }
}

/// One cause of errors: what failed, against which target, why, how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// What failed.
    pub kind: CauseKind,
    /// The server address it failed against.
    pub target: SocketAddr,
    /// The OS error number; 0 for an orderly close by the server (EOF).
    pub errno: i32,
    /// How many times.
    pub count: u64,
}

impl Cause {
    /// Why, in words: the system's message for the errno without its `(os error N)` tail.
    pub fn reason(&self) -> String {
        if self.errno == 0 {
            return "closed by the server".into();
        }
        crate::units::strip_os_error(&io::Error::from_raw_os_error(self.errno))
    }
}

/// Errors counted by cause (a handful of distinct ones: a linear list is enough).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Causes(pub Vec<Cause>);

impl Causes {
    /// Count one error of `kind` against `target` for `error` (`None`: the server closed).
    pub fn count(&mut self, kind: CauseKind, target: SocketAddr, error: Option<&io::Error>) {
        // An error without an errno (rare: mio's own) counts under EIO rather than vanishing.
        let errno = error.map_or(0, |e| e.raw_os_error().unwrap_or(libc::EIO));
        self.add(kind, target, errno, 1);
    }

    fn add(&mut self, kind: CauseKind, target: SocketAddr, errno: i32, n: u64) {
        match self
            .0
            .iter_mut()
            .find(|c| c.kind == kind && c.target == target && c.errno == errno)
        {
            Some(c) => c.count += n,
            None => self.0.push(Cause {
                kind,
                target,
                errno,
                count: n,
            }),
        }
    }

    /// Add another worker's causes.
    pub fn merge(&mut self, other: &Causes) {
        for c in &other.0 {
            self.add(c.kind, c.target, c.errno, c.count);
        }
    }

    /// The most frequent cause of `kind`.
    pub fn top(&self, kind: CauseKind) -> Option<&Cause> {
        self.0
            .iter()
            .filter(|c| c.kind == kind)
            .max_by_key(|c| c.count)
    }

    /// Sorted by kind, then most frequent first.
    pub fn sorted(&self) -> Vec<Cause> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.kind.cmp(&b.kind).then(b.count.cmp(&a.count)));
        v
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
    /// Operations completed over the whole run (warm-up and drain included): with `sent_total`
    /// and the errors, the account of every operation.
    pub completed: u64,
    /// Operations sent whole in the measured window (echo: messages written; udp: datagrams;
    /// broadcast: lines).
    pub sent: u64,
    /// Operations sent whole over the whole run.
    pub sent_total: u64,
    /// Open loop: operations the schedule called for (up to the end of the window).
    pub scheduled: u64,
    /// Operations never sent whole, in either loop. Open loop: of those scheduled, the ones the
    /// generator gave up (too far behind its schedule, its own UDP socket buffer full, or no
    /// socket left to send on). Both loops: operations issued but still unwritten, whole or in
    /// part, when their connection failed or the run ended (a server that stopped reading
    /// never took them). Not an error in itself.
    pub not_sent: u64,
    /// Operations in flight on a connection that failed: counted with that failure, not as lost.
    pub abandoned: u64,
    pub errors: Errors,
    /// Why connects, connections and sends failed.
    pub causes: Causes,
    /// UDP only, not errors (UDP may do both): datagrams that came back after a later one, and
    /// replies that matched nothing in flight (duplicates, or late after being counted lost).
    pub udp_reordered: u64,
    pub udp_late: u64,
    /// Since the last progress report: operations completed (in or out of the window) and their
    /// latencies (recorded only with `progress` on: a second histogram costs every operation
    /// ~10 ns, which only the progress line and the per-second series need).
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
        self.completed += 1;
        self.interval_ops += 1;
        if self.progress {
            self.interval_latency.record(latency);
        }
    }

    /// `n` operations sent whole at `now` (`timeline`: where the run is, if the load has
    /// started; nothing sent before it is part of the account).
    pub fn count_sent(&mut self, n: u64, timeline: Option<&Timeline>, now: Instant) {
        if let Some(tl) = timeline {
            self.sent_total += n;
            if tl.counts(now) {
                self.sent += n;
            }
        }
    }

    /// An open-loop schedule is over (the window closed, or nothing is left to send on): take
    /// `pacer` and settle its account — every operation it called for is scheduled, those it
    /// gave up are never sent. A schedule already settled (or none) adds nothing.
    pub fn close_schedule(&mut self, pacer: &mut Option<Pacer>, until: Instant) {
        if let Some(mut pacer) = pacer.take() {
            let (scheduled, skipped) = pacer.close(until);
            self.scheduled += scheduled;
            self.not_sent += skipped;
        }
    }

    /// Add another worker's final counts.
    pub fn merge(&mut self, o: &Tally) {
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.latency.merge(&o.latency);
        self.completed += o.completed;
        self.sent += o.sent;
        self.sent_total += o.sent_total;
        self.scheduled += o.scheduled;
        self.not_sent += o.not_sent;
        self.abandoned += o.abandoned;
        self.errors += o.errors;
        self.causes.merge(&o.causes);
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
        assert_eq!(t.completed, 3);
        assert_eq!(t.interval_ops, 3);
        assert_eq!(t.interval_latency.count(), 3);
        t.count_sent(1, None, t0); // setup: not part of the run's account
        t.count_sent(1, Some(&tl), t0 + ms(50));
        t.count_sent(2, Some(&tl), t0 + ms(150));
        assert_eq!((t.sent, t.sent_total), (2, 3));
    }

    #[test]
    fn test_a_schedule_is_settled_once() {
        let t0 = Instant::now();
        let mut pacer = Some(Pacer::new(t0, 1000.0)); // every 1 ms
        let taken = std::iter::from_fn(|| {
            pacer
                .as_mut()
                .unwrap()
                .next_due(t0 + Duration::from_millis(4))
        });
        assert_eq!(taken.count(), 5);
        let mut t = Tally::default();
        t.close_schedule(&mut pacer, t0 + Duration::from_millis(10));
        assert_eq!((t.scheduled, t.not_sent), (10, 5));
        assert!(pacer.is_none());
        t.close_schedule(&mut pacer, t0 + Duration::from_millis(20));
        assert_eq!((t.scheduled, t.not_sent), (10, 5));
    }

    #[test]
    fn test_merge_adds_counts_errors_causes_and_histograms() {
        let t0 = Instant::now();
        let tl = Timeline::new(t0, Duration::ZERO, Duration::from_secs(9), Duration::ZERO);
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let mut a = Tally::default();
        a.complete(&tl, t0, Duration::from_micros(10), 1);
        a.errors.lost = 2;
        a.causes.count(CauseKind::Connect, target, Some(&refused));
        let mut b = Tally::default();
        b.complete(&tl, t0, Duration::from_micros(30), 1);
        b.errors.corrupt = 1;
        b.errors.lost = 1;
        b.causes.count(CauseKind::Connect, target, Some(&refused));
        b.causes.count(CauseKind::Closed, target, None);
        a.merge(&b);
        assert_eq!(a.ops, 2);
        assert_eq!(a.latency.percentiles().max, 30);
        assert_eq!(a.errors.lost, 3);
        assert_eq!(a.errors.total(), 4);
        let top = a.causes.top(CauseKind::Connect).unwrap();
        assert_eq!(
            (top.count, top.reason().as_str()),
            (2, "Connection refused")
        );
        assert_eq!(
            a.causes.top(CauseKind::Closed).unwrap().reason(),
            "closed by the server"
        );
        assert_eq!(a.causes.sorted().len(), 2);
    }
}
