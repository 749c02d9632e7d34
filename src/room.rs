//! The broadcast room: who is in it, how a chunk of lines reaches every other member, and what
//! happens to a member that does not keep up.
//!
//! The seeds' chat server has a broadcaster goroutine that owns the set of clients and a
//! channel per client; a slow client blocks its own writer goroutine, and its channel buffer
//! grows or blocks the broadcaster. Here the room is a plain value owned by the loop:
//!
//! * **membership**: the slab keys of the member connections, with O(1) join and leave;
//! * **fan-out**: [`Room::publish`] takes a chunk of whole lines from a member (or from
//!   elsewhere: another node, through a bridge); [`Room::fan_out`] queues it *by reference* to
//!   every other member that still takes lines — N members cost N pointers, not N copies;
//! * **the flush list**: every member that got something this turn, so the loop writes to each
//!   once per turn, with one vectored write carrying the lines of every sender;
//! * **output limits**, Redis's answer to slow consumers of pushed data: past the hard limit a
//!   member is evicted at once; over the soft limit for longer than the soft time, too. A slow
//!   member never slows the sender or the others, and never grows the server's memory without
//!   bound;
//! * **the drain ordering guarantee**: during a graceful stop no member is closed while another
//!   member still has unread input that arrived before the stop — a line the kernel
//!   acknowledged before the stop reaches every member still connected;
//! * **the seam for a bridge**: when one is attached, the chunks local members produce are
//!   also kept for it ([`Room::take_outgoing`]), and chunks from elsewhere enter through the
//!   same [`Room::publish`], under the same limits.
//!
//! The room does no I/O: it reaches member connections through the small [`Mailbox`] trait,
//! which the loop's connections implement and the tests fake.

use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::outqueue::{Ledger, Payload};

/// What the room needs of a member connection.
pub trait Mailbox {
    /// Does it still take lines? (ESTABLISHED: a member that half-closed gets what was queued
    /// before its FIN, then EOF; a closed one nothing.)
    fn takes_lines(&self) -> bool;
    /// Queue a payload behind what it is owed; no write yet.
    fn queue(&mut self, payload: &Rc<Payload>);
    /// Memory its output queue holds now.
    fn footprint(&self) -> usize;
    /// Disconnect it now (a reset), saying why.
    fn evict(&mut self, why: Eviction);
    /// Does input that arrived before a graceful stop remain unread?
    fn has_unread_input(&self) -> bool;
}

/// Where a chunk comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A local member, by slab key: it does not get its own lines back.
    Member(usize),
    /// Another node, through a bridge: every local member gets it.
    Elsewhere,
}

/// The output limits (`--bcast-hard-limit`, `--bcast-soft-limit`, `--bcast-soft-time`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLimits {
    /// A member whose queue passes this is evicted at once.
    pub hard: usize,
    /// A member whose queue stays over this for `soft_time` is evicted.
    pub soft: usize,
    /// How long a member may stay over the soft limit.
    pub soft_time: Duration,
}

/// Why a member was evicted (what its log line says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Its queue passed the hard limit.
    Hard { queued: usize, limit: usize },
    /// Its queue stayed over the soft limit for the soft time.
    Soft {
        queued: usize,
        limit: usize,
        time: Duration,
    },
}

impl Eviction {
    /// The short reason for the lifecycle's log line.
    pub fn reason(self) -> &'static str {
        match self {
            Eviction::Hard { .. } => "output over the hard limit",
            Eviction::Soft { .. } => "output over the soft limit",
        }
    }
}

impl fmt::Display for Eviction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Eviction::Hard { queued, limit } => {
                write!(f, "{queued} bytes queued, over the hard limit of {limit}")
            }
            Eviction::Soft {
                queued,
                limit,
                time,
            } => write!(
                f,
                "{queued} bytes queued, over the soft limit of {limit} for {time:?}"
            ),
        }
    }
}

/// The room's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Lines received from local members.
    pub lines_in: u64,
    /// Lines queued to members (one line to N members counts N).
    pub lines_out: u64,
    /// Members evicted for not keeping up (each counted once).
    pub evicted: u64,
}

/// One member's place in the room.
struct Seat {
    key: usize,
    /// Since when its queue has been over the soft limit, if it is.
    over_soft_since: Option<Instant>,
    /// It is on this turn's flush list.
    to_flush: bool,
}

/// No seat (in [`Room::seat_of`]).
const NO_SEAT: u32 = u32::MAX;

/// The broadcast room. See the module doc.
pub struct Room {
    seats: Vec<Seat>,
    /// Slab key -> index in `seats` (or [`NO_SEAT`]). Dense, like slab keys.
    seat_of: Vec<u32>,
    /// Chunks published since the last fan-out.
    outbox: Vec<(Origin, Rc<Payload>, usize)>,
    /// Where shared payloads are counted for `--max-memory`.
    ledger: Ledger,
    /// Members that got chunks this turn and must be flushed before the next poll.
    flush_list: Vec<usize>,
    /// Chunks local members produced, kept for a bridge (None: no bridge attached).
    outgoing: Option<Vec<Rc<[u8]>>>,
    limits: OutputLimits,
    /// During a drain: some member may still have unread input from before the stop, so no
    /// member may be closed yet.
    inputs_pending: bool,
    counters: Counters,
}

impl Room {
    /// An empty room held to `limits`, counting its payloads in `ledger`.
    pub fn new(limits: OutputLimits, ledger: &Ledger) -> Room {
        Room {
            seats: Vec::new(),
            seat_of: Vec::new(),
            outbox: Vec::new(),
            ledger: ledger.clone(),
            flush_list: Vec::new(),
            outgoing: None,
            limits,
            inputs_pending: false,
            counters: Counters::default(),
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Is the connection `key` a member?
    pub fn is_member(&self, key: usize) -> bool {
        self.seat(key).is_some()
    }

    fn seat(&self, key: usize) -> Option<usize> {
        match self.seat_of.get(key) {
            Some(&i) if i != NO_SEAT => Some(i as usize),
            _ => None,
        }
    }

    /// A new member.
    pub fn join(&mut self, key: usize) {
        if self.seat_of.len() <= key {
            self.seat_of.resize(key + 1, NO_SEAT);
        }
        self.seat_of[key] = self.seats.len() as u32;
        self.seats.push(Seat {
            key,
            over_soft_since: None,
            to_flush: false,
        });
    }

    /// A member leaves (its connection is released). O(1): the last seat takes its place.
    pub fn leave(&mut self, key: usize) {
        let Some(i) = self.seat(key) else { return };
        self.seats.swap_remove(i);
        self.seat_of[key] = NO_SEAT;
        if let Some(moved) = self.seats.get(i) {
            self.seat_of[moved.key] = i as u32;
        }
    }

    /// Take a chunk of whole lines for the other members. Nothing is queued until
    /// [`Room::fan_out`]: the sender finishes its visit first.
    pub fn publish(&mut self, origin: Origin, chunk: Rc<[u8]>, lines: usize) {
        match origin {
            Origin::Member(_) => {
                self.counters.lines_in += lines as u64;
                if let Some(outgoing) = &mut self.outgoing {
                    outgoing.push(chunk.clone());
                }
            }
            // Counted by the bridge, per message (`bridge_in`).
            Origin::Elsewhere => {}
        }
        let payload = Rc::new(Payload::new(chunk, &self.ledger));
        self.outbox.push((origin, payload, lines));
    }

    /// Queue every published chunk to every member that takes lines, except its sender. A
    /// member whose queue passes the hard limit is evicted on the spot. Every member that got
    /// something goes on the flush list.
    pub fn fan_out<M: Mailbox>(&mut self, conns: &mut Slab<M>) {
        for (origin, chunk, lines) in self.outbox.drain(..) {
            for seat in &mut self.seats {
                let conn = &mut conns[seat.key];
                if origin == Origin::Member(seat.key) || !conn.takes_lines() {
                    continue;
                }
                conn.queue(&chunk);
                self.counters.lines_out += lines as u64;
                let queued = conn.footprint();
                if queued > self.limits.hard {
                    conn.evict(Eviction::Hard {
                        queued,
                        limit: self.limits.hard,
                    });
                    self.counters.evicted += 1;
                }
                if !seat.to_flush {
                    seat.to_flush = true;
                    self.flush_list.push(seat.key);
                }
            }
        }
    }

    /// The members to flush this turn (the list is emptied). Give the vector back with
    /// [`Room::recycle_flush_list`] to keep its allocation.
    pub fn take_flush_list(&mut self) -> Vec<usize> {
        for &key in &self.flush_list {
            if let Some(i) = self.seat(key) {
                self.seats[i].to_flush = false;
            }
        }
        std::mem::take(&mut self.flush_list)
    }

    /// Hand back the vector [`Room::take_flush_list`] returned, emptied.
    pub fn recycle_flush_list(&mut self, mut list: Vec<usize>) {
        list.clear();
        if self.flush_list.is_empty() {
            self.flush_list = list;
        }
    }

    /// After a member's queue changed: start or stop its soft-limit clock. The clock runs only
    /// while the queue stays over the soft limit.
    pub fn note_queue(&mut self, key: usize, footprint: usize, now: Instant) {
        let Some(i) = self.seat(key) else { return };
        let seat = &mut self.seats[i];
        if footprint > self.limits.soft {
            seat.over_soft_since.get_or_insert(now);
        } else {
            seat.over_soft_since = None;
        }
    }

    /// When the member `key` must be looked at again (the end of its soft-limit grace time).
    pub fn deadline(&self, key: usize) -> Option<Instant> {
        let since = self.seats[self.seat(key)?].over_soft_since?;
        since.checked_add(self.limits.soft_time)
    }

    /// A timer for `key` fired: evict it if it has been over the soft limit for too long.
    pub fn on_timer<M: Mailbox>(&mut self, key: usize, conn: &mut M, now: Instant) {
        if self.deadline(key).is_none_or(|d| d > now) || !conn.takes_lines() {
            return;
        }
        conn.evict(Eviction::Soft {
            queued: conn.footprint(),
            limit: self.limits.soft,
            time: self.limits.soft_time,
        });
        self.counters.evicted += 1;
    }

    // ---------------------------------------------------------------- a bridge

    /// A bridge is attached: from now on, keep the chunks local members produce for it.
    pub fn attach_bridge(&mut self) {
        self.outgoing.get_or_insert_with(Vec::new);
    }

    /// The chunks local members produced since the last call (none without a bridge),
    /// drained in place so the list keeps its allocation from turn to turn.
    pub fn take_outgoing(&mut self) -> impl Iterator<Item = Rc<[u8]>> + '_ {
        self.outgoing.iter_mut().flat_map(|out| out.drain(..))
    }

    // ---------------------------------------------------------------- graceful stop

    /// A graceful stop begins: hold every member open until no member has unread input from
    /// before the stop (see [`Room::check_drain`]).
    pub fn begin_drain(&mut self) {
        self.inputs_pending = !self.seats.is_empty();
    }

    /// May the connection `key` be closed now that it owes nothing? Not a member: yes. A
    /// member: only once every line received before the stop has been fanned out, or it could
    /// miss one.
    pub fn may_close(&self, key: usize) -> bool {
        !self.inputs_pending || !self.is_member(key)
    }

    /// At the end of a turn during a drain: has every member's pre-stop input been read (and
    /// so fanned out)? Returns true when the hold is lifted this turn: the caller then visits
    /// every member, so the idle ones close.
    pub fn check_drain<M: Mailbox>(&mut self, conns: &Slab<M>) -> bool {
        if !self.inputs_pending {
            return false;
        }
        let unread = self
            .seats
            .iter()
            .any(|seat| conns[seat.key].has_unread_input());
        if unread || !self.outbox.is_empty() {
            return false;
        }
        self.inputs_pending = false;
        true
    }

    /// Every member's key.
    pub fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.seats.iter().map(|seat| seat.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member without a socket: what it was sent, and what it still has to read.
    #[derive(Default)]
    struct Fake {
        got: Vec<u8>,
        chunks: usize,
        /// Input that arrived before the stop, not yet read.
        unread: Vec<u8>,
        closed: bool,
        evicted: Vec<Eviction>,
    }

    impl Mailbox for Fake {
        fn takes_lines(&self) -> bool {
            !self.closed
        }
        fn queue(&mut self, payload: &Rc<Payload>) {
            self.got.extend_from_slice(payload.bytes());
            self.chunks += 1;
        }
        fn footprint(&self) -> usize {
            self.got.len()
        }
        fn evict(&mut self, why: Eviction) {
            self.evicted.push(why);
            self.closed = true;
        }
        fn has_unread_input(&self) -> bool {
            !self.closed && !self.unread.is_empty()
        }
    }

    const LIMITS: OutputLimits = OutputLimits {
        hard: 100,
        soft: 10,
        soft_time: Duration::from_secs(10),
    };

    fn room_of(n: usize) -> (Room, Slab<Fake>, Vec<usize>) {
        let mut room = Room::new(LIMITS, &Ledger::default());
        let mut conns = Slab::new();
        let keys: Vec<usize> = (0..n).map(|_| conns.insert(Fake::default())).collect();
        for &k in &keys {
            room.join(k);
        }
        (room, conns, keys)
    }

    fn chunk(s: &str) -> Rc<[u8]> {
        Rc::from(s.as_bytes())
    }

    #[test]
    fn test_a_chunk_reaches_every_other_member_and_not_its_sender() {
        let (mut room, mut conns, k) = room_of(3);
        room.publish(Origin::Member(k[0]), chunk("hi\n"), 1);
        room.fan_out(&mut conns);
        assert_eq!(conns[k[0]].got, b"");
        assert_eq!(conns[k[1]].got, b"hi\n");
        assert_eq!(conns[k[2]].got, b"hi\n");
        assert_eq!(room.counters().lines_in, 1);
        assert_eq!(room.counters().lines_out, 2);
    }

    #[test]
    fn test_chunks_from_elsewhere_reach_every_member() {
        let (mut room, mut conns, k) = room_of(2);
        room.publish(Origin::Elsewhere, chunk("remote\n"), 1);
        room.fan_out(&mut conns);
        assert_eq!(conns[k[0]].got, b"remote\n");
        assert_eq!(conns[k[1]].got, b"remote\n");
        assert_eq!(room.counters().lines_in, 0, "not a local member's line");
        assert_eq!(room.counters().lines_out, 2);
    }

    #[test]
    fn test_each_member_is_on_the_flush_list_once_per_turn() {
        let (mut room, mut conns, k) = room_of(3);
        room.publish(Origin::Member(k[0]), chunk("a\n"), 1);
        room.publish(Origin::Member(k[1]), chunk("b\n"), 1);
        room.fan_out(&mut conns);
        let mut list = room.take_flush_list();
        list.sort_unstable();
        assert_eq!(list, k, "every member got something, each is listed once");
        room.recycle_flush_list(list);
        assert!(room.take_flush_list().is_empty());
        // Marks were cleared: a new turn lists them again.
        room.publish(Origin::Member(k[0]), chunk("c\n"), 1);
        room.fan_out(&mut conns);
        assert_eq!(room.take_flush_list().len(), 2);
    }

    #[test]
    fn test_a_member_over_the_hard_limit_is_evicted_once() {
        let (mut room, mut conns, k) = room_of(2);
        let big = chunk(&"x".repeat(60));
        for _ in 0..4 {
            room.publish(Origin::Member(k[0]), big.clone(), 1);
        }
        room.fan_out(&mut conns);
        assert_eq!(
            conns[k[1]].evicted,
            [Eviction::Hard {
                queued: 120,
                limit: 100
            }]
        );
        assert_eq!(
            conns[k[1]].chunks, 2,
            "nothing is queued to an evicted member"
        );
        assert_eq!(room.counters().evicted, 1);
        // The soft limit's timer must not evict it a second time.
        room.note_queue(k[1], 120, Instant::now());
        room.on_timer(k[1], &mut conns[k[1]], Instant::now() + LIMITS.soft_time);
        assert_eq!(room.counters().evicted, 1);
    }

    #[test]
    fn test_soft_limit_evicts_only_after_its_time_and_resets_when_under() {
        let (mut room, mut conns, k) = room_of(2);
        let t0 = Instant::now();
        room.note_queue(k[1], 50, t0);
        assert_eq!(room.deadline(k[1]), Some(t0 + LIMITS.soft_time));
        room.note_queue(k[1], 50, t0 + Duration::from_secs(5));
        assert_eq!(
            room.deadline(k[1]),
            Some(t0 + LIMITS.soft_time),
            "the clock keeps running while over"
        );
        room.on_timer(k[1], &mut conns[k[1]], t0 + Duration::from_secs(9));
        assert!(conns[k[1]].evicted.is_empty());
        room.note_queue(k[1], 5, t0 + Duration::from_secs(9));
        assert_eq!(room.deadline(k[1]), None, "under again: the clock stops");
        room.note_queue(k[1], 50, t0 + Duration::from_secs(12));
        room.on_timer(k[1], &mut conns[k[1]], t0 + Duration::from_secs(21));
        assert!(conns[k[1]].evicted.is_empty(), "a fresh grace time");
        room.on_timer(k[1], &mut conns[k[1]], t0 + Duration::from_secs(22));
        assert_eq!(conns[k[1]].evicted.len(), 1);
    }

    #[test]
    fn test_leaving_keeps_the_other_seats_reachable() {
        let (mut room, mut conns, k) = room_of(4);
        room.leave(k[0]);
        room.leave(k[0]); // twice is harmless
        assert_eq!(room.members().count(), 3);
        assert!(!room.is_member(k[0]));
        room.publish(Origin::Member(k[3]), chunk("x\n"), 1);
        room.fan_out(&mut conns);
        assert_eq!(conns[k[0]].got, b"", "gone");
        assert_eq!(conns[k[1]].got, b"x\n");
        assert_eq!(conns[k[2]].got, b"x\n");
        assert_eq!(conns[k[3]].got, b"", "the sender, moved to slot 0");
        let mut members: Vec<usize> = room.members().collect();
        members.sort_unstable();
        assert_eq!(members, &k[1..]);
    }

    #[test]
    fn test_a_bridge_gets_local_chunks_only() {
        let (mut room, mut conns, k) = room_of(2);
        room.publish(Origin::Member(k[0]), chunk("before\n"), 1);
        assert_eq!(room.take_outgoing().count(), 0, "no bridge yet");
        room.attach_bridge();
        room.publish(Origin::Member(k[0]), chunk("local\n"), 1);
        room.publish(Origin::Elsewhere, chunk("remote\n"), 1);
        room.fan_out(&mut conns);
        let out: Vec<Rc<[u8]>> = room.take_outgoing().collect();
        assert_eq!(out.len(), 1);
        assert_eq!(&*out[0], b"local\n");
        assert_eq!(room.take_outgoing().count(), 0);
    }

    // --- the drain ordering guarantee ---

    /// One loop turn during a drain, in the order the loop would visit: a member with unread
    /// input reads it (and its lines are published); a member that owes nothing is closed if
    /// the room allows it. Then the fan-out and the end-of-turn check.
    fn drain_turn(room: &mut Room, conns: &mut Slab<Fake>, order: &[usize]) {
        for &key in order {
            if conns[key].closed {
                continue;
            }
            let unread = std::mem::take(&mut conns[key].unread);
            if !unread.is_empty() {
                room.publish(Origin::Member(key), Rc::from(unread), 1);
            } else if room.may_close(key) {
                conns[key].closed = true;
            }
        }
        room.fan_out(conns);
        room.check_drain(conns);
    }

    #[test]
    fn test_drain_closes_no_member_before_every_pre_stop_line_is_fanned_out() {
        // The losing interleaving: the idle member B is visited before the sender A, whose
        // line arrived before the stop. Without the guard B is closed first and never gets it.
        let (mut room, mut conns, k) = room_of(2);
        let (a, b) = (k[0], k[1]);
        conns[a].unread = b"said before the stop\n".to_vec();
        room.begin_drain();
        assert!(!room.may_close(b), "A still has unread input");
        assert!(!room.check_drain(&conns), "the hold is not lifted early");

        drain_turn(&mut room, &mut conns, &[b, a]);
        assert_eq!(conns[b].got, b"said before the stop\n");
        assert!(room.may_close(b), "lifted once everything is fanned out");
        drain_turn(&mut room, &mut conns, &[b, a]);
        assert!(conns[a].closed && conns[b].closed);
    }

    #[test]
    fn test_drain_without_pending_input_lifts_at_once_and_ignores_non_members() {
        let (mut room, conns, k) = room_of(2);
        assert!(room.may_close(k[0]), "no drain: no hold");
        room.begin_drain();
        assert!(room.may_close(999), "not a member");
        assert!(!room.may_close(k[0]));
        assert!(room.check_drain(&conns), "nothing unread: lifted");
        assert!(room.may_close(k[0]));
        assert!(!room.check_drain(&conns), "lifted once");
    }
}
