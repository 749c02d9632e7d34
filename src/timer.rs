//! Per-connection deadlines for the event loop: idle timeouts and closing timeouts.
//!
//! A loop with ten thousand connections cannot afford to touch a timer structure on every byte,
//! so this is a *lazy* timer queue: a min-heap of "look at connection K at time T" entries. A
//! connection's real deadline may move later (it was active again) without the heap knowing;
//! when an entry comes due, the loop recomputes that connection's deadline and either acts or
//! schedules a new entry. A deadline only needs a new entry when it moves *earlier* than the one
//! already scheduled. Entries for connections that have gone (or whose slab slot was reused) are
//! harmless for the same reason: the loop re-checks before acting.
//!
//! The poll timeout is the earliest entry, so the loop sleeps exactly until there is work.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A min-heap of (deadline, connection key).
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Timers {
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Ask to be told about `key` at `at`.
    pub fn schedule(&mut self, at: Instant, key: usize) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest scheduled time, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Remove and return one entry that is due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn test_due_entries_come_out_earliest_first_and_only_when_due() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut timers = Timers::new();
        timers.schedule(t0 + 3 * s, 3);
        timers.schedule(t0 + s, 1);
        timers.schedule(t0 + 2 * s, 2);
        assert_eq!(timers.next_deadline(), Some(t0 + s));
        assert_eq!(timers.pop_due(t0), None);
        assert_eq!(timers.pop_due(t0 + 2 * s), Some((t0 + s, 1)));
        assert_eq!(timers.pop_due(t0 + 2 * s), Some((t0 + 2 * s, 2)));
        assert_eq!(timers.pop_due(t0 + 2 * s), None);
        assert_eq!(timers.next_deadline(), Some(t0 + 3 * s));
    }
}
