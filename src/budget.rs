//! One memory budget over every client: `--max-memory`.
//!
//! Per-client limits (`--max-buffer` for echo, the broadcast output limits) bound what one
//! client can make the server hold. They do not bound the sum: ten thousand clients each just
//! under their limit is still 10 000 × 16 MiB. The budget does, the way Redis's `maxmemory`
//! does for its data: the loop keeps a running total of what clients pin, and when the total is
//! over the budget it disconnects the client pinning the most, then the next, until the total is
//! under again.
//!
//! What counts ("pinned"):
//! * each client's own output queue — owned chunks by their capacity, plus one slot per chunk;
//! * each client's buffered input — a partial broadcast line, a file header;
//! * shared broadcast payloads, **once** however many queues hold them (their [`Ledger`]).
//!
//! What does not: the kernel's socket buffers (the kernel bounds them itself), the slab entry
//! of an idle connection (a few hundred bytes, bounded by `--max-conns`).
//!
//! The loop tells the budget how each client's pinned bytes changed after every visit
//! ([`Budget::account`]); the check is one comparison. Only when the total is over does the
//! loop rank clients, and it evicts at most [`EVICTIONS_PER_TURN`] per turn so that a mass
//! eviction is spread over turns instead of stalling every other client.
//!
//! Freed memory does not go back to the system by itself: glibc's allocator keeps freed pages
//! of its heap for later. After a burst, [`Budget::should_give_back`] tells the loop when to
//! call `malloc_trim`, which returns every free page — so RSS comes back down after the
//! clients that caused it leave.

use std::time::{Duration, Instant};

use crate::outqueue::Ledger;

/// Clients evicted per loop turn at most, while over the budget.
pub const EVICTIONS_PER_TURN: usize = 64;

/// Give memory back once the total has dropped this much below its high-water mark.
const GIVE_BACK_STEP: usize = 16 << 20;

/// And at most this often (trimming a large heap takes a few milliseconds).
const GIVE_BACK_EVERY: Duration = Duration::from_secs(1);

/// The default `--max-memory`: 1 GiB, or a quarter of physical memory if that is less.
pub fn default_limit() -> usize {
    // SAFETY: sysconf has no preconditions; it returns -1 when a value is unknown.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let gib = 1usize << 30;
    if pages <= 0 || page <= 0 {
        return gib;
    }
    let physical = (pages as u128 * page as u128).min(usize::MAX as u128) as usize;
    gib.min(physical / 4)
}

/// The running total of pinned memory, against its limit.
pub struct Budget {
    limit: usize,
    /// What clients pin alone: the sum of every client's last accounted value.
    clients: usize,
    /// Shared payloads, each counted once while any queue holds it.
    shared: Ledger,
    /// Clients evicted for the budget.
    evicted: u64,
    /// The highest total since memory was last given back.
    high_water: usize,
    last_give_back: Option<Instant>,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            clients: 0,
            shared: Ledger::default(),
            evicted: 0,
            high_water: 0,
            last_give_back: None,
        }
    }

    /// The ledger shared payloads are counted in.
    pub fn ledger(&self) -> &Ledger {
        &self.shared
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Pinned bytes now.
    pub fn total(&self) -> usize {
        self.clients + self.shared.get()
    }

    /// Is the total over the limit?
    pub fn over(&self) -> bool {
        self.total() > self.limit
    }

    /// Clients evicted so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// A client's pinned bytes went from `before` to `after`.
    pub fn account(&mut self, before: usize, after: usize) {
        self.clients = self.clients - before + after;
        self.high_water = self.high_water.max(self.total());
    }

    /// Pick who to evict: `candidates` are (what each pins, its key) for clients with output
    /// queued (one with nothing queued is never chosen: its memory is not the problem). The
    /// largest first, at most [`EVICTIONS_PER_TURN`]. The loop evicts them in order while
    /// [`Budget::over`] stays true, counting each with [`Budget::note_eviction`].
    pub fn rank(candidates: impl Iterator<Item = (usize, usize)>) -> Vec<(usize, usize)> {
        let mut ranked: Vec<(usize, usize)> = candidates.filter(|&(bytes, _)| bytes > 0).collect();
        // Only the largest few matter: select them, then sort just those.
        if ranked.len() > EVICTIONS_PER_TURN {
            ranked.select_nth_unstable_by(EVICTIONS_PER_TURN - 1, |a, b| b.cmp(a));
            ranked.truncate(EVICTIONS_PER_TURN);
        }
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        ranked
    }

    /// One client was evicted for the budget.
    pub fn note_eviction(&mut self) {
        self.evicted += 1;
    }

    /// Has the total dropped [`GIVE_BACK_STEP`] below its high-water mark?
    fn give_back_pending(&self) -> bool {
        self.high_water >= self.total() + GIVE_BACK_STEP
    }

    /// When memory should next be given back, if some is waiting to be (for the poll timeout:
    /// the last clients of a burst may leave within a second of the previous give-back, and
    /// the loop must wake up to return their memory too).
    pub fn give_back_at(&self) -> Option<Instant> {
        if !self.give_back_pending() {
            return None;
        }
        Some(match self.last_give_back {
            Some(t) => t + GIVE_BACK_EVERY,
            None => Instant::now(),
        })
    }

    /// Should the loop give freed memory back to the system now? Yes once the total has
    /// dropped [`GIVE_BACK_STEP`] below its high-water mark, at most every
    /// [`GIVE_BACK_EVERY`].
    pub fn should_give_back(&mut self, now: Instant) -> bool {
        if !self.give_back_pending()
            || self
                .last_give_back
                .is_some_and(|t| now < t + GIVE_BACK_EVERY)
        {
            return false;
        }
        self.last_give_back = Some(now);
        self.high_water = self.total();
        true
    }
}

/// Return free heap pages to the system (`malloc_trim`). A no-op where the C library has no
/// such call.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outqueue::Payload;
    use std::rc::Rc;

    #[test]
    fn test_total_follows_clients_and_counts_shared_payloads_once() {
        let mut b = Budget::new(900);
        b.account(0, 300);
        b.account(0, 200);
        assert_eq!(b.total(), 500);
        let p = Rc::new(Payload::new(Rc::from(&[0u8; 400][..]), b.ledger()));
        let held_by_50_queues: Vec<_> = (0..50).map(|_| p.clone()).collect();
        assert_eq!(b.total(), 900, "one payload, counted once");
        assert!(!b.over());
        b.account(200, 201);
        assert!(b.over());
        drop(p);
        assert!(b.over(), "still held");
        drop(held_by_50_queues);
        assert!(!b.over());
        b.account(300, 0);
        b.account(201, 0);
        assert_eq!(b.total(), 0);
    }

    #[test]
    fn test_ranking_takes_the_largest_first_and_never_an_empty_queue() {
        let candidates = vec![(10, 1), (0, 2), (500, 3), (70, 4)];
        assert_eq!(
            Budget::rank(candidates.into_iter()),
            [(500, 3), (70, 4), (10, 1)]
        );
        let many = (0..1000).map(|k| (k, k));
        let ranked = Budget::rank(many);
        assert_eq!(ranked.len(), EVICTIONS_PER_TURN);
        assert_eq!(ranked[0], (999, 999));
        assert_eq!(ranked[EVICTIONS_PER_TURN - 1].0, 1000 - EVICTIONS_PER_TURN);
    }

    #[test]
    fn test_memory_is_given_back_after_a_drop_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut b = Budget::new(usize::MAX);
        b.account(0, 100 << 20);
        assert!(
            !b.should_give_back(t0),
            "at the high-water mark: nothing to give"
        );
        b.account(100 << 20, 90 << 20);
        assert!(!b.should_give_back(t0), "a small drop");
        b.account(90 << 20, 10 << 20);
        assert!(b.should_give_back(t0));
        b.account(0, 50 << 20);
        b.account(50 << 20, 0);
        assert!(!b.should_give_back(t0), "once a second");
        assert_eq!(
            b.give_back_at(),
            Some(t0 + GIVE_BACK_EVERY),
            "but not forgotten"
        );
        assert!(b.should_give_back(t0 + GIVE_BACK_EVERY));
        assert_eq!(b.give_back_at(), None);
    }

    #[test]
    fn test_default_limit_is_at_most_a_gibibyte() {
        let limit = default_limit();
        assert!(limit > 0 && limit <= 1 << 30);
    }
}
