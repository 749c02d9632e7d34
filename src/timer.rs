//! Per-connection deadlines for the event loop: idle and closing timeouts, soft output limits,
//! file-transfer deadlines.
//!
//! A loop with ten thousand connections cannot afford to touch a timer structure on every byte,
//! so this is a *lazy* timer queue: a min-heap of "look at connection K at time T" entries. A
//! connection's real deadline may move later (it was active again) without the heap knowing;
//! when an entry comes due, the loop recomputes that connection's deadline and either acts or
//! schedules a new entry. A deadline only needs a new entry when it moves *earlier* than the one
//! already scheduled. The loop remembers, per connection, the entry that counts (`timer_at`);
//! any other entry for it is stale and skipped when it comes due.
//!
//! Stale entries would pile up, though: a connection that closes long before its idle timeout
//! leaves its entry behind, and with `--idle-timeout 3600` and thousands of connections a
//! second, that is gigabytes a day. So the heap is *compacted* — stale entries dropped — once
//! it holds more than twice as many entries as there can be live ones, which costs O(1)
//! amortised per entry and keeps memory proportional to the connections that exist.
//!
//! The poll timeout is the earliest entry, so the loop sleeps exactly until there is work.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Entries kept regardless of how few connections exist, so a small server never compacts.
const COMPACT_FLOOR: usize = 1024;

/// A min-heap of (deadline, connection key).
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Timers {
    /// An empty queue.
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Ask to be told about `key` at `at`.
    pub fn schedule(&mut self, at: Instant, key: usize) {
        self.heap.push(Reverse((at, key)));
    }

    /// Entries held, stale ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
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

    /// If the heap holds more than twice `live` entries (the most that can still count), drop
    /// every entry for which `counts(key, at)` is false.
    pub fn compact_if_bloated(&mut self, live: usize, counts: impl Fn(usize, Instant) -> bool) {
        if self.heap.len() <= live.saturating_mul(2).max(COMPACT_FLOOR) {
            return;
        }
        self.heap.retain(|Reverse((at, key))| counts(*key, *at));
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

    #[test]
    fn test_compaction_drops_stale_entries_and_keeps_live_ones() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut timers = Timers::new();
        // 10 000 connections came and went, each leaving an entry an hour away; 5 are live.
        for key in 0..10_000 {
            timers.schedule(t0 + hour, key);
        }
        let live = |key: usize, _at: Instant| key < 5;
        timers.compact_if_bloated(5, live);
        assert_eq!(timers.len(), 5);
        for key in 0..5 {
            assert_eq!(timers.pop_due(t0 + hour).map(|e| e.1), Some(key));
        }
    }

    #[test]
    fn test_no_compaction_while_the_heap_is_small_or_mostly_live() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        for key in 0..COMPACT_FLOOR {
            timers.schedule(t0, key);
        }
        timers.compact_if_bloated(0, |_, _| false);
        assert_eq!(timers.len(), COMPACT_FLOOR, "under the floor: left alone");
        for key in 0..COMPACT_FLOOR {
            timers.schedule(t0, key);
        }
        timers.compact_if_bloated(COMPACT_FLOOR, |_, _| false);
        assert_eq!(
            timers.len(),
            2 * COMPACT_FLOOR,
            "not over twice the live count"
        );
    }
}
