//! Counters the loop keeps, and the `key=value` line `--stats-interval` prints.

use std::fmt;
use std::time::{Duration, Instant};

use crate::lifecycle::Phase;

/// Totals since the server started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted and served.
    pub accepted: u64,
    /// TCP connections turned away (`--max-conns` reached, or out of descriptors).
    pub rejected: u64,
    /// TCP connections released.
    pub closed: u64,
    /// TCP payload bytes read from clients.
    pub bytes_in: u64,
    /// TCP payload bytes written to clients.
    pub bytes_out: u64,
    /// Of `bytes_in`, bytes read only to find the peer's FIN after the server decided to close
    /// (FIN-WAIT), and so not served. Every other byte read is answered.
    pub discarded: u64,
    /// Broadcast lines received from senders.
    pub lines_in: u64,
    /// Broadcast lines queued to recipients (one line to N recipients counts N).
    pub lines_out: u64,
    /// Broadcast clients disconnected for not keeping up with their output.
    pub evicted: u64,
    /// Files received and stored.
    pub files_stored: u64,
    /// File transfers refused or failed (bad name, exists, too large, short, timeout, disk).
    pub files_refused: u64,
    /// UDP datagrams received.
    pub udp_in: u64,
    /// UDP datagrams echoed.
    pub udp_out: u64,
    /// UDP replies the socket would not take (dropped, as UDP may).
    pub udp_dropped: u64,
    /// `--bridge`: messages (batches of lines) from other nodes given to the room.
    pub bridge_in: u64,
    /// `--bridge`: our messages Redis confirmed.
    pub bridge_out: u64,
    /// `--bridge`: other nodes' messages never received (gaps in their sequence numbers).
    pub bridge_lost: u64,
    /// `--bridge`: our batches not published (link down, `--bridge-max-queue` full, or the
    /// link lost before Redis confirmed them).
    pub bridge_dropped: u64,
}

/// Stats plus the number of live connections in each phase: what a stats line prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The counters.
    pub totals: Stats,
    /// Live connections per phase, indexed by [`Phase::index`].
    pub phases: [usize; Phase::ALL.len()],
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let live: usize = self.phases.iter().sum();
        write!(f, "conns={live}")?;
        for phase in Phase::ALL {
            if phase != Phase::Closed {
                write!(f, " {phase}={}", self.phases[phase.index()])?;
            }
        }
        let s = &self.totals;
        write!(
            f,
            " accepted={} rejected={} closed={} bytes_in={} bytes_out={} discarded={} \
             lines_in={} lines_out={} evicted={} files_stored={} files_refused={} \
             udp_in={} udp_out={} udp_dropped={} \
             bridge_in={} bridge_out={} bridge_lost={} bridge_dropped={}",
            s.accepted,
            s.rejected,
            s.closed,
            s.bytes_in,
            s.bytes_out,
            s.discarded,
            s.lines_in,
            s.lines_out,
            s.evicted,
            s.files_stored,
            s.files_refused,
            s.udp_in,
            s.udp_out,
            s.udp_dropped,
            s.bridge_in,
            s.bridge_out,
            s.bridge_lost,
            s.bridge_dropped
        )
    }
}

/// The start-up line, Redis style: the version, the services and where, the effective limits.
pub fn startup_line(config: &crate::Config, bound: &[crate::Bound]) -> String {
    let services: Vec<String> = bound
        .iter()
        .map(|b| format!("{} {} {}", b.service, b.service.proto(), b.addr))
        .collect();
    format!(
        "resound {} (pid {}) serving {}; {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        services.join(", "),
        config.limits_summary()
    )
}

/// Per-second rates between two snapshots: what the periodic stats line adds.
pub struct Rates {
    /// Connections accepted per second.
    pub accepted: f64,
    /// Bytes read per second.
    pub bytes_in: f64,
    /// Bytes written per second.
    pub bytes_out: f64,
    /// Broadcast deliveries per second.
    pub lines_out: f64,
    /// UDP datagrams received per second.
    pub udp_in: f64,
}

impl Rates {
    /// The rates from `before` to `after`, `secs` apart.
    pub fn between(before: &Stats, after: &Stats, secs: f64) -> Rates {
        let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs.max(1e-9);
        Rates {
            accepted: per_s(before.accepted, after.accepted),
            bytes_in: per_s(before.bytes_in, after.bytes_in),
            bytes_out: per_s(before.bytes_out, after.bytes_out),
            lines_out: per_s(before.lines_out, after.lines_out),
            udp_in: per_s(before.udp_in, after.udp_in),
        }
    }
}

impl fmt::Display for Rates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted/s={:.0} bytes_in/s={:.0} bytes_out/s={:.0} lines_out/s={:.0} udp_in/s={:.0}",
            self.accepted, self.bytes_in, self.bytes_out, self.lines_out, self.udp_in
        )
    }
}

/// What the periodic stats line remembers: the last snapshot it printed, and when.
#[derive(Default)]
pub struct Reporter {
    last: Option<(Instant, Snapshot)>,
}

impl Reporter {
    /// The periodic line for `snapshot` taken at `now`: None if nothing changed since the
    /// last one printed (an idle server does not repeat itself every interval), else the
    /// snapshot followed by the rates since then.
    pub fn periodic(&mut self, now: Instant, snapshot: Snapshot) -> Option<String> {
        let line = match &self.last {
            Some((_, last)) if *last == snapshot => return None,
            Some((then, last)) => {
                let secs = now.saturating_duration_since(*then).as_secs_f64();
                let rates = Rates::between(&last.totals, &snapshot.totals, secs);
                format!("{snapshot} {rates}")
            }
            None => snapshot.to_string(),
        };
        self.last = Some((now, snapshot));
        Some(line)
    }
}

/// When the periodic stats line is due (`--stats-interval`).
pub struct Ticker {
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl Ticker {
    /// Every `interval` from `now` (None: never).
    pub fn new(interval: Option<Duration>, now: Instant) -> Ticker {
        Ticker {
            interval,
            next: interval.and_then(|i| now.checked_add(i)),
        }
    }

    /// The next time a line is due (for the poll timeout).
    pub fn next(&self) -> Option<Instant> {
        self.next
    }

    /// Is a line due at `now`? If so, the next one is scheduled (never in the past, so a
    /// loop that fell behind does not print a burst).
    pub fn due(&mut self, now: Instant) -> bool {
        match (self.next, self.interval) {
            (Some(at), Some(interval)) if at <= now => {
                self.next = at.checked_add(interval).map(|t| t.max(now));
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(accepted: u64, bytes_in: u64) -> Snapshot {
        Snapshot {
            totals: Stats {
                accepted,
                bytes_in,
                ..Stats::default()
            },
            phases: [accepted as usize, 0, 0, 0, 0, 0],
        }
    }

    #[test]
    fn test_periodic_line_is_skipped_while_nothing_changes_and_carries_rates() {
        let t0 = Instant::now();
        let mut r = Reporter::default();
        assert!(r.periodic(t0, snap(1, 10)).is_some(), "the first line");
        let s = Duration::from_secs(1);
        assert_eq!(
            r.periodic(t0 + s, snap(1, 10)),
            None,
            "idle: nothing printed"
        );
        assert_eq!(r.periodic(t0 + 2 * s, snap(1, 10)), None);
        let line = r.periodic(t0 + 4 * s, snap(5, 410)).unwrap();
        assert!(
            line.ends_with("accepted/s=1 bytes_in/s=100 bytes_out/s=0 lines_out/s=0 udp_in/s=0"),
            "{line}"
        );
    }

    #[test]
    fn test_snapshot_line_names_every_open_phase() {
        let snap = Snapshot {
            totals: Stats {
                accepted: 3,
                closed: 1,
                ..Stats::default()
            },
            phases: [1, 0, 0, 1, 0, 0],
        };
        assert_eq!(
            snap.to_string(),
            "conns=2 ESTABLISHED=1 CLOSE-WAIT=0 FIN-WAIT-1=0 FIN-WAIT-2=1 CLOSING=0 \
             accepted=3 rejected=0 closed=1 bytes_in=0 bytes_out=0 discarded=0 lines_in=0 lines_out=0 evicted=0 files_stored=0 files_refused=0 udp_in=0 udp_out=0 udp_dropped=0 bridge_in=0 bridge_out=0 bridge_lost=0 bridge_dropped=0"
        );
    }
}
