//! The Redis link's core: every decision, no I/O (sans-IO, in the style of `connection.rs`).
//!
//! The I/O layer (`bridge.rs`) opens the two sockets, reads and writes them, and reports what
//! happened; this core keeps the state and says what to do next. `now` is always an argument,
//! so every rule is unit-tested below on a fake clock, two links talking through a fake Redis.
//!
//! Inputs: [`Link::handle_timeout`], [`Link::handle_connected`], [`Link::handle_input`],
//! [`Link::handle_closed`], [`Link::on_written`] (what the sockets did) and [`Link::publish`]
//! (a batch from the room).
//! Outputs: [`Link::poll_action`] (open or close the sockets), [`Link::transmit`] (bytes to
//! write), [`Link::poll_lines`] (a batch from another node, for the room),
//! [`Link::deadline`] (when to call `handle_timeout`), [`Link::counters`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::message::{self, Header, Reply};

/// How long opening both connections and subscribing may take before the attempt counts as
/// failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The reconnect delay starts here and doubles per failed attempt...
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ... up to this. Each delay is drawn between half and all of it (jitter), so nodes that lost
/// Redis together do not all come back in the same millisecond.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The most undecoded input kept for one connection. A frame larger than this is not one we
/// sent (a batch is at most a read's worth of lines), and waiting for its end would let a
/// broken broker grow our memory without bound.
pub const MAX_INPUT: usize = 64 << 20;

/// Peers remembered for gap counting. Every restart of a node is a new peer, so the table is
/// bounded: the peer heard from least recently makes room for a new one.
const MAX_PEERS: usize = 1024;

/// At most one "skipped a bad message" warning per this interval (a broken publisher on the
/// channel must not flood the log).
const BAD_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The link's phases. `Display` prints them as the log does: `bridge state=DOWN=>CONNECTING`.
///
/// ```text
///            timer (backoff)          both TCP connects done        subscribe confirmed
///   DOWN ----------------------> CONNECTING --------------> SUBSCRIBING -------------> UP
///    ^                               |                          |                     |
///    +-------------------------------+--------------------------+---------------------+
///      any error, EOF, malformed RESP, refused SUBSCRIBE, or CONNECT_TIMEOUT: close both
///      sockets, drop what is queued, wait a jittered backoff (100 ms doubling to 5 s)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No connection; waiting for the backoff timer.
    Down,
    /// Both sockets are connecting (non-blocking `connect` in progress).
    Connecting,
    /// Both connected; SUBSCRIBE sent, its confirmation not yet received.
    Subscribing,
    /// Subscribed: messages flow both ways.
    Up,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Down => "DOWN",
            State::Connecting => "CONNECTING",
            State::Subscribing => "SUBSCRIBING",
            State::Up => "UP",
        })
    }
}

/// One of the link's two connections. RESP2 puts a subscribed connection in a mode where it
/// may only (un)subscribe, so publishing needs a second one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conn {
    /// SUBSCRIBE CHANNEL: other nodes' batches come in here.
    Sub,
    /// PUBLISH CHANNEL ...: our batches go out here; Redis answers each with `:N`.
    Pub,
}

impl Conn {
    /// Both, in the order the I/O layer services them.
    pub const BOTH: [Conn; 2] = [Conn::Sub, Conn::Pub];

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Conn::Sub => "subscriber",
            Conn::Pub => "publisher",
        })
    }
}

/// What the link asks the I/O layer to do with the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open both connections (non-blocking); report each with [`Link::handle_connected`] or
    /// [`Link::handle_closed`].
    Connect,
    /// Close both connections.
    Close,
}

/// The link's counters, in bus messages (batches), since the server started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages from other nodes handed to the room (`bridge_in`).
    pub received: u64,
    /// Our messages Redis confirmed (`bridge_out`).
    pub published: u64,
    /// Peers' messages this node never got: gaps in their sequence numbers (`bridge_lost`).
    pub lost: u64,
    /// Our batches not published: the link was down, the queue was full, or the link went down
    /// before Redis confirmed them (`bridge_dropped`).
    pub dropped: u64,
}

/// One connection's buffers.
#[derive(Default)]
struct Side {
    /// The TCP connect completed.
    open: bool,
    /// Encoded commands not yet written; `out[sent..]` is what is owed.
    out: Vec<u8>,
    sent: usize,
    /// Bytes read and not yet decoded (a frame cut by TCP waits here for its end).
    input: Vec<u8>,
}

impl Side {
    fn owed(&self) -> usize {
        self.out.len() - self.sent
    }

    fn reset(&mut self) {
        *self = Side::default();
    }
}

/// What a peer's sequence number says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seq {
    /// The next one (or the first heard from this peer).
    InOrder,
    /// `n` messages were skipped.
    Gap(u64),
    /// At or before one already delivered: a duplicate, dropped.
    Old,
}

/// The next sequence number expected from each peer.
#[derive(Default)]
struct Peers {
    next: HashMap<u64, (u64, u64)>, // node -> (next seq, last heard: a tick)
    tick: u64,
}

impl Peers {
    fn check(&mut self, h: Header) -> Seq {
        self.tick += 1;
        if !self.next.contains_key(&h.node) && self.next.len() >= MAX_PEERS {
            let stalest = self
                .next
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(&n, _)| n);
            if let Some(node) = stalest {
                self.next.remove(&node);
            }
        }
        let entry = self.next.entry(h.node).or_insert((h.seq, 0));
        let expected = entry.0;
        entry.1 = self.tick;
        if h.seq < expected {
            return Seq::Old;
        }
        entry.0 = h.seq + 1;
        match h.seq - expected {
            0 => Seq::InOrder,
            n => Seq::Gap(n),
        }
    }
}

/// The link. See the module doc.
pub struct Link {
    state: State,
    /// `redis://ADDR/CHANNEL`, for log lines.
    name: String,
    channel: Vec<u8>,
    /// Our node id (the header's NODE).
    node: u64,
    /// The last sequence number we drew.
    seq: u64,
    /// `--bridge-max-queue`: encoded bytes the publisher may owe before batches are dropped.
    max_queue: usize,
    sides: [Side; 2],
    subscribed: bool,
    /// PUBLISHes queued or written that Redis has not answered yet.
    unanswered: u64,
    /// Attempts failed since the link was last up (the backoff's exponent).
    failures: u32,
    /// DOWN: when to try again. CONNECTING/SUBSCRIBING: when to give up.
    timer: Option<Instant>,
    /// xorshift state for the jitter (seeded from the node id: no clock, no OS call here).
    rng: u64,
    actions: VecDeque<Action>,
    /// Batches from other nodes for the room.
    lines: VecDeque<(Rc<[u8]>, usize)>,
    peers: Peers,
    counters: Counters,
    /// Scratch for one message (header + batch) while it is encoded.
    message: Vec<u8>,
    /// Bad messages skipped since the last warning, and when that was.
    bad_skipped: u64,
    bad_logged_at: Option<Instant>,
    /// An error reply on this publisher connection was logged already.
    pub_error_logged: bool,
}

impl Link {
    /// A link for `channel`, DOWN, with its first attempt due at `now`.
    pub fn new(name: String, channel: &[u8], node: u64, max_queue: usize, now: Instant) -> Link {
        Link {
            state: State::Down,
            name,
            channel: channel.to_vec(),
            node,
            seq: 0,
            max_queue,
            sides: [Side::default(), Side::default()],
            subscribed: false,
            unanswered: 0,
            failures: 0,
            timer: Some(now),
            // xorshift must not start at 0.
            rng: node | 1,
            actions: VecDeque::new(),
            lines: VecDeque::new(),
            peers: Peers::default(),
            counters: Counters::default(),
            message: Vec::new(),
            bad_skipped: 0,
            bad_logged_at: None,
            pub_error_logged: false,
        }
    }

    // ---------------------------------------------------------------- what it is

    /// The phase.
    pub fn state(&self) -> State {
        self.state
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// When [`Link::handle_timeout`] must run next.
    pub fn deadline(&self) -> Option<Instant> {
        self.timer
    }

    /// Has every batch handed to [`Link::publish`] been confirmed by Redis or given up on? (A
    /// graceful stop waits for this, within `--drain-timeout`.)
    pub fn flushed(&self) -> bool {
        self.unanswered == 0
    }

    /// Bytes the publisher connection owes (the publish queue).
    pub fn queued(&self) -> usize {
        self.sides[Conn::Pub.index()].owed()
    }

    // ---------------------------------------------------------------- inputs

    /// Time passed: start an attempt when the backoff ends; fail one that takes too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(at) = self.timer else { return };
        if at > now {
            return;
        }
        match self.state {
            // The backoff is over: try again.
            State::Down => {
                self.set_state(State::Connecting);
                self.timer = now.checked_add(CONNECT_TIMEOUT);
                self.actions.push_back(Action::Connect);
            }
            // An attempt hangs (a firewall dropping SYNs, a Redis that never answers).
            State::Connecting | State::Subscribing => {
                let phase = self.state;
                self.down(format!("no answer for {CONNECT_TIMEOUT:?} ({phase})"), now);
            }
            State::Up => self.timer = None,
        }
    }

    /// A connection's `connect` completed.
    pub fn handle_connected(&mut self, conn: Conn) {
        if self.state != State::Connecting {
            return; // a stale report after the link went down
        }
        self.sides[conn.index()].open = true;
        if conn == Conn::Sub {
            // Pipelined at once: Redis answers with a `subscribe` push once it is in place.
            message::encode_command(
                &mut self.sides[conn.index()].out,
                &[b"SUBSCRIBE", &self.channel],
            );
        }
        if self.sides.iter().all(|s| s.open) {
            self.set_state(State::Subscribing);
            self.advance();
        }
    }

    /// Bytes read from a connection.
    pub fn handle_input(&mut self, conn: Conn, data: &[u8], now: Instant) {
        if !self.sides[conn.index()].open {
            return;
        }
        let mut input = std::mem::take(&mut self.sides[conn.index()].input);
        input.extend_from_slice(data);
        let mut used = 0;
        loop {
            match message::decode(&input[used..]) {
                Ok(Some((reply, n))) => {
                    let frame = &input[used..used + n];
                    used += n;
                    self.on_reply(conn, reply, frame, now);
                    if self.state == State::Down {
                        return; // the reply took the link down; its buffers are gone
                    }
                }
                Ok(None) => break,
                // RESP has no resynchronisation point: after garbage, nothing that follows can
                // be trusted. Start over on fresh connections.
                Err(e) => {
                    self.down(format!("malformed RESP from Redis ({})", e.0), now);
                    return;
                }
            }
        }
        input.drain(..used);
        if input.len() > MAX_INPUT {
            self.down(format!("a frame from Redis over {MAX_INPUT} bytes"), now);
            return;
        }
        self.sides[conn.index()].input = input;
    }

    /// A connection failed or was closed (by Redis, or a reset): the link goes down.
    pub fn handle_closed(&mut self, conn: Conn, why: &str, now: Instant) {
        if self.state != State::Down {
            self.down(format!("{conn} connection: {why}"), now);
        }
    }

    /// The socket took `n` bytes of what [`Link::transmit`] offered.
    pub fn on_written(&mut self, conn: Conn, n: usize) {
        let side = &mut self.sides[conn.index()];
        side.sent += n;
        if side.sent == side.out.len() {
            side.out.clear();
            side.sent = 0;
        } else if side.sent > 64 * 1024 && side.sent > side.out.len() / 2 {
            // A publisher that never fully drains must not keep its written prefix forever:
            // compacting when it is half the buffer costs O(1) per byte, amortised.
            side.out.drain(..side.sent);
            side.sent = 0;
        }
    }

    /// A batch of whole lines local members sent (they have it already). It gets the next
    /// sequence number whether or not it can be published, so peers see a gap for it.
    pub fn publish(&mut self, batch: &[u8]) {
        self.seq += 1;
        if self.state != State::Up {
            // Nothing is buffered for an outage: local delivery goes on, peers count the gap.
            self.counters.dropped += 1;
            return;
        }
        self.message.clear();
        message::write_header(
            &mut self.message,
            Header {
                node: self.node,
                seq: self.seq,
            },
        );
        self.message.extend_from_slice(batch);
        let side = &mut self.sides[Conn::Pub.index()];
        let before = side.out.len();
        message::encode_command(&mut side.out, &[b"PUBLISH", &self.channel, &self.message]);
        // Past the bound, the batch is dropped rather than queued: a slow Redis costs
        // completeness on the other nodes, never memory or latency here.
        if side.owed() > self.max_queue {
            side.out.truncate(before);
            self.counters.dropped += 1;
            return;
        }
        self.unanswered += 1;
    }

    // ---------------------------------------------------------------- outputs

    /// The next thing to do with the sockets.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The bytes `conn` owes, for one write.
    pub fn transmit(&self, conn: Conn) -> &[u8] {
        let side = &self.sides[conn.index()];
        &side.out[side.sent..]
    }

    /// The next batch from another node, with its line count, for the room.
    pub fn poll_lines(&mut self) -> Option<(Rc<[u8]>, usize)> {
        self.lines.pop_front()
    }

    // ---------------------------------------------------------------- the rules

    /// One frame from Redis.
    fn on_reply(&mut self, conn: Conn, reply: Reply, frame: &[u8], now: Instant) {
        match (conn, reply) {
            // Our subscription is in place.
            (Conn::Sub, Reply::Subscribed(channel)) if channel == self.channel => {
                self.subscribed = true;
                self.advance();
            }
            // Someone published on our channel.
            (Conn::Sub, Reply::Message { channel, payload }) if channel == self.channel => {
                self.on_message(&frame[payload], now);
            }
            // SUBSCRIBE refused (a Redis that wants AUTH, say): retrying will not help soon,
            // but the backoff keeps it cheap.
            (Conn::Sub, Reply::Error(e)) => self.down(format!("SUBSCRIBE refused: {e}"), now),
            // The answer to one PUBLISH: published.
            (Conn::Pub, Reply::Integer(_)) => {
                self.unanswered = self.unanswered.saturating_sub(1);
                self.counters.published += 1;
            }
            // One PUBLISH refused: that batch is lost; the connection is still good.
            (Conn::Pub, Reply::Error(e)) => {
                self.unanswered = self.unanswered.saturating_sub(1);
                self.counters.dropped += 1;
                if !std::mem::replace(&mut self.pub_error_logged, true) {
                    warn!("bridge: Redis refused a PUBLISH: {e} (further refusals: debug)");
                } else {
                    debug!("bridge: Redis refused a PUBLISH: {e}");
                }
            }
            (conn, reply) => debug!("bridge: skipped {reply:?} on the {conn} connection"),
        }
    }

    /// A message on our channel: ours (dropped), a peer's (to the room), or bad (skipped).
    fn on_message(&mut self, payload: &[u8], now: Instant) {
        let (header, body) = match message::parse(payload) {
            Ok(parsed) => parsed,
            Err(why) => {
                self.bad_message(why, now);
                return;
            }
        };
        if header.node == self.node {
            return; // our own, echoed back by Redis: local members had it first
        }
        match self.peers.check(header) {
            Seq::InOrder => {}
            Seq::Gap(n) => {
                debug!("bridge: {n} message(s) from node {:016x} lost", header.node);
                self.counters.lost += n;
            }
            Seq::Old => {
                debug!("bridge: duplicate from node {:016x} skipped", header.node);
                return;
            }
        }
        let body = &payload[body];
        self.counters.received += 1;
        self.lines
            .push_back((Rc::from(body), message::count_lines(body)));
    }

    fn bad_message(&mut self, why: message::BadMessage, now: Instant) {
        self.bad_skipped += 1;
        if self
            .bad_logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= BAD_LOG_INTERVAL)
        {
            warn!(
                "bridge: skipped {} bad message(s) on the channel; last: {why}",
                self.bad_skipped
            );
            self.bad_skipped = 0;
            self.bad_logged_at = Some(now);
        }
    }

    /// SUBSCRIBING and the subscription confirmed: UP.
    fn advance(&mut self) {
        if self.state == State::Subscribing && self.subscribed {
            self.set_state(State::Up);
            self.timer = None;
            self.failures = 0;
            info!("bridge up: subscribed to {}", self.name);
        }
    }

    /// Lose the link: close both sockets, give up what is queued, schedule the next attempt.
    fn down(&mut self, reason: String, now: Instant) {
        let was = self.state;
        if was == State::Down {
            return;
        }
        // What Redis never confirmed may or may not have been published; counted as dropped
        // (the honest bound: peers count the gap if it really was lost).
        self.counters.dropped += self.unanswered;
        self.unanswered = 0;
        self.subscribed = false;
        self.pub_error_logged = false;
        for side in &mut self.sides {
            side.reset();
        }
        self.actions.push_back(Action::Close);
        let delay = self.backoff();
        self.failures = self.failures.saturating_add(1);
        self.timer = now.checked_add(delay);
        self.set_state(State::Down);
        if was == State::Up || self.failures == 1 {
            warn!("bridge down: {reason}; next attempt in {delay:.1?}");
        } else {
            info!("bridge still down: {reason}; next attempt in {delay:.1?}");
        }
    }

    /// The next reconnect delay: `BACKOFF_MIN` doubled per failure, at most `BACKOFF_MAX`, and
    /// drawn between half and all of that.
    fn backoff(&mut self) -> Duration {
        let full = BACKOFF_MIN
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_MAX);
        // xorshift64: plenty for spreading reconnects.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let fraction = (self.rng >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        full.mul_f64(0.5 + 0.5 * fraction)
    }

    fn set_state(&mut self, state: State) {
        debug!("bridge state={}=>{}", self.state, state);
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: u64 = 0x1111_2222_3333_4444;
    const PEER: u64 = 0xaaaa_bbbb_cccc_dddd;
    const SUBSCRIBED: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$4\r\nroom\r\n:1\r\n";

    fn link(now: Instant) -> Link {
        Link::new("redis://test/room".into(), b"room", NODE, 1024, now)
    }

    /// A message frame as Redis pushes it to a subscriber.
    fn push(node: u64, seq: u64, body: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        message::write_header(&mut payload, Header { node, seq });
        payload.extend_from_slice(body);
        let mut frame = format!(
            "*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n${}\r\n",
            payload.len()
        )
        .into_bytes();
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\r\n");
        frame
    }

    /// A link in CONNECTING (its first attempt started at `t0`).
    fn connecting(t0: Instant) -> Link {
        let mut l = link(t0);
        l.handle_timeout(t0);
        assert_eq!(l.poll_action(), Some(Action::Connect));
        assert_eq!(l.state(), State::Connecting);
        l
    }

    /// A link in UP.
    fn up(t0: Instant) -> Link {
        let mut l = connecting(t0);
        l.handle_connected(Conn::Sub);
        l.handle_connected(Conn::Pub);
        l.handle_input(Conn::Sub, SUBSCRIBED, t0);
        assert_eq!(l.state(), State::Up);
        let n = l.transmit(Conn::Sub).len();
        l.on_written(Conn::Sub, n);
        l
    }

    /// Write everything the publisher owes; return it.
    fn written(l: &mut Link) -> Vec<u8> {
        let out = l.transmit(Conn::Pub).to_vec();
        l.on_written(Conn::Pub, out.len());
        out
    }

    // --- DOWN ---

    #[test]
    fn test_down_connects_when_its_timer_is_due_and_not_before() {
        let t0 = Instant::now();
        let mut l = link(t0);
        assert_eq!(l.state(), State::Down);
        assert_eq!(l.deadline(), Some(t0), "the first attempt is due at once");
        l.handle_timeout(t0);
        assert_eq!(l.poll_action(), Some(Action::Connect));
        assert_eq!(l.deadline(), Some(t0 + CONNECT_TIMEOUT));
    }

    #[test]
    fn test_down_drops_batches_and_counts_them_without_buffering() {
        let t0 = Instant::now();
        let mut l = link(t0);
        l.publish(b"a\n");
        l.publish(b"b\n");
        assert_eq!(l.counters().dropped, 2);
        assert!(l.transmit(Conn::Pub).is_empty());
        assert!(l.flushed(), "nothing owed: a graceful stop need not wait");
    }

    #[test]
    fn test_down_backoff_doubles_with_jitter_up_to_five_seconds() {
        let t0 = Instant::now();
        let mut l = link(t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..10 {
            l.handle_timeout(now);
            assert_eq!(l.poll_action(), Some(Action::Connect));
            l.handle_closed(Conn::Sub, "connection refused", now);
            assert_eq!(l.poll_action(), Some(Action::Close));
            let at = l.deadline().unwrap();
            delays.push(at - now);
            now = at;
        }
        let full = |i: u32| (BACKOFF_MIN * (1 << i)).min(BACKOFF_MAX);
        for (i, d) in delays.iter().enumerate() {
            let f = full(i as u32);
            assert!(
                *d >= f / 2 && *d <= f,
                "attempt {i}: {d:?} not in [{:?}, {f:?}]",
                f / 2
            );
        }
        assert!(delays[9] >= BACKOFF_MAX / 2);
        assert_ne!(delays[8], delays[9], "jittered, not fixed");
    }

    // --- CONNECTING ---

    #[test]
    fn test_connecting_subscribes_as_soon_as_the_subscriber_is_connected() {
        let t0 = Instant::now();
        let mut l = connecting(t0);
        l.handle_connected(Conn::Sub);
        assert_eq!(
            l.transmit(Conn::Sub),
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nroom\r\n"
        );
        assert_eq!(
            l.state(),
            State::Connecting,
            "the publisher is not connected yet"
        );
        l.handle_connected(Conn::Pub);
        assert_eq!(l.state(), State::Subscribing);
    }

    #[test]
    fn test_connecting_that_hangs_fails_after_the_connect_timeout() {
        let t0 = Instant::now();
        let mut l = connecting(t0);
        l.handle_timeout(t0 + CONNECT_TIMEOUT - Duration::from_millis(1));
        assert_eq!(l.state(), State::Connecting);
        l.handle_timeout(t0 + CONNECT_TIMEOUT);
        assert_eq!(l.state(), State::Down);
        assert_eq!(l.poll_action(), Some(Action::Close));
    }

    #[test]
    fn test_connecting_ignores_a_stale_connect_after_going_down() {
        let t0 = Instant::now();
        let mut l = connecting(t0);
        l.handle_closed(Conn::Pub, "refused", t0);
        l.handle_connected(Conn::Sub);
        assert_eq!(l.state(), State::Down);
        assert!(l.transmit(Conn::Sub).is_empty());
    }

    // --- SUBSCRIBING ---

    #[test]
    fn test_subscribing_goes_up_on_the_confirmation_even_when_cut_by_tcp() {
        let t0 = Instant::now();
        let mut l = connecting(t0);
        l.handle_connected(Conn::Sub);
        l.handle_connected(Conn::Pub);
        for &b in SUBSCRIBED {
            assert_eq!(l.state(), State::Subscribing);
            l.handle_input(Conn::Sub, &[b], t0);
        }
        assert_eq!(l.state(), State::Up);
        assert_eq!(l.deadline(), None);
    }

    #[test]
    fn test_subscribing_refused_goes_down() {
        let t0 = Instant::now();
        let mut l = connecting(t0);
        l.handle_connected(Conn::Sub);
        l.handle_connected(Conn::Pub);
        l.handle_input(Conn::Sub, b"-NOAUTH Authentication required.\r\n", t0);
        assert_eq!(l.state(), State::Down);
    }

    // --- UP ---

    #[test]
    fn test_up_publishes_one_message_per_batch_with_a_growing_sequence() {
        let t0 = Instant::now();
        let mut l = up(t0);
        l.publish(b"hello\n");
        l.publish(b"a\nb\n");
        let out = written(&mut l);
        let mut want = Vec::new();
        message::encode_command(
            &mut want,
            &[b"PUBLISH", b"room", b"resound1 1111222233334444 1\nhello\n"],
        );
        message::encode_command(
            &mut want,
            &[b"PUBLISH", b"room", b"resound1 1111222233334444 2\na\nb\n"],
        );
        assert_eq!(out, want);
        assert!(!l.flushed(), "not confirmed yet");
        l.handle_input(Conn::Pub, b":2\r\n:2\r\n", t0);
        assert!(l.flushed());
        assert_eq!(l.counters().published, 2);
    }

    #[test]
    fn test_up_delivers_peers_batches_and_drops_its_own() {
        let t0 = Instant::now();
        let mut l = up(t0);
        let mut input = push(PEER, 1, b"one\ntwo\n");
        input.extend(push(NODE, 1, b"mine\n"));
        input.extend(push(PEER, 2, b"three\n"));
        l.handle_input(Conn::Sub, &input, t0);
        assert_eq!(l.poll_lines(), Some((Rc::from(&b"one\ntwo\n"[..]), 2)));
        assert_eq!(l.poll_lines(), Some((Rc::from(&b"three\n"[..]), 1)));
        assert_eq!(l.poll_lines(), None);
        assert_eq!(l.counters().received, 2);
        assert_eq!(l.counters().lost, 0);
    }

    #[test]
    fn test_up_counts_a_gap_in_a_peers_sequence_and_skips_duplicates() {
        let t0 = Instant::now();
        let mut l = up(t0);
        // The first message heard from a peer sets its baseline: no loss is assumed before.
        l.handle_input(Conn::Sub, &push(PEER, 10, b"a\n"), t0);
        l.handle_input(Conn::Sub, &push(PEER, 14, b"b\n"), t0);
        assert_eq!(l.counters().lost, 3, "11, 12 and 13 never came");
        l.handle_input(Conn::Sub, &push(PEER, 12, b"late\n"), t0);
        assert_eq!(l.counters().received, 2, "an old number is a duplicate");
        let got: Vec<_> = std::iter::from_fn(|| l.poll_lines()).collect();
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn test_up_bad_messages_are_skipped_and_the_link_stays_up() {
        let t0 = Instant::now();
        let mut l = up(t0);
        let mut junk = b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$5\r\nhello\r\n".to_vec();
        junk.extend(push(PEER, 1, b"")); // no lines
        junk.extend(b"*3\r\n$7\r\nmessage\r\n$5\r\nother\r\n$2\r\nhi\r\n"); // another channel
        junk.extend(b"+OK\r\n"); // not a push at all
        junk.extend(push(PEER, 2, b"fine\n"));
        l.handle_input(Conn::Sub, &junk, t0);
        assert_eq!(l.state(), State::Up);
        assert_eq!(l.poll_lines(), Some((Rc::from(&b"fine\n"[..]), 1)));
        assert_eq!(l.poll_lines(), None);
    }

    #[test]
    fn test_up_malformed_resp_takes_the_link_down() {
        let t0 = Instant::now();
        let mut l = up(t0);
        l.publish(b"x\n");
        l.handle_input(Conn::Sub, b"?garbage\r\n", t0);
        assert_eq!(l.state(), State::Down);
        assert_eq!(l.poll_action(), Some(Action::Close));
        assert_eq!(
            l.counters().dropped,
            1,
            "the unconfirmed publish is given up"
        );
        assert!(l.flushed());
    }

    #[test]
    fn test_up_an_oversized_frame_takes_the_link_down_instead_of_growing() {
        let t0 = Instant::now();
        let mut l = up(t0);
        l.handle_input(Conn::Sub, format!("${}\r\n", MAX_INPUT * 2).as_bytes(), t0);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..=MAX_INPUT >> 20 {
            l.handle_input(Conn::Sub, &chunk, t0);
        }
        assert_eq!(l.state(), State::Down);
    }

    #[test]
    fn test_up_queue_over_its_bound_drops_whole_batches() {
        let t0 = Instant::now();
        let mut l = up(t0); // max_queue 1024
        let line = [b'x'; 249];
        let mut batch = line.to_vec();
        batch.push(b'\n');
        for _ in 0..5 {
            l.publish(&batch);
        }
        let c = l.counters();
        assert_eq!(c.dropped, 2, "three fit in 1024 bytes, two do not");
        assert!(l.queued() <= 1024);
        // Once written, there is room again.
        written(&mut l);
        l.publish(&batch);
        assert_eq!(l.counters().dropped, 2);
        // The sequence counts every batch: peers will see the two dropped ones as a gap.
        assert!(String::from_utf8_lossy(l.transmit(Conn::Pub)).contains(" 6\n"));
    }

    #[test]
    fn test_up_a_refused_publish_is_counted_and_the_link_stays_up() {
        let t0 = Instant::now();
        let mut l = up(t0);
        l.publish(b"x\n");
        written(&mut l);
        l.handle_input(Conn::Pub, b"-OOM command not allowed\r\n", t0);
        assert_eq!(l.state(), State::Up);
        assert_eq!(l.counters().dropped, 1);
        assert!(l.flushed());
    }

    #[test]
    fn test_up_evicted_by_redis_reconnects_and_counts_what_it_missed() {
        // Redis's pub/sub output limit closes a slow subscriber: an EOF on the subscriber.
        let t0 = Instant::now();
        let mut l = up(t0);
        l.handle_input(Conn::Sub, &push(PEER, 1, b"before\n"), t0);
        l.handle_closed(Conn::Sub, "closed by Redis", t0);
        assert_eq!(l.state(), State::Down);
        assert_eq!(l.poll_action(), Some(Action::Close));
        let retry = l.deadline().unwrap();
        assert!(retry - t0 >= BACKOFF_MIN / 2 && retry - t0 <= BACKOFF_MIN);
        l.handle_timeout(retry);
        assert_eq!(l.poll_action(), Some(Action::Connect));
        l.handle_connected(Conn::Sub);
        l.handle_connected(Conn::Pub);
        l.handle_input(Conn::Sub, SUBSCRIBED, retry);
        assert_eq!(l.state(), State::Up);
        l.handle_input(Conn::Sub, &push(PEER, 7, b"after\n"), retry);
        assert_eq!(
            l.counters().lost,
            5,
            "2..=6 were published while we were away"
        );
    }

    #[test]
    fn test_up_written_prefix_is_compacted_when_never_fully_drained() {
        let t0 = Instant::now();
        let mut l = Link::new("t".into(), b"room", NODE, 1 << 30, t0);
        l.handle_timeout(t0);
        l.handle_connected(Conn::Sub);
        l.handle_connected(Conn::Pub);
        l.handle_input(Conn::Sub, SUBSCRIBED, t0);
        let batch = vec![b'y'; 1000];
        for _ in 0..1000 {
            l.publish(&batch);
            l.publish(&batch);
            let n = l.transmit(Conn::Pub).len();
            l.on_written(Conn::Pub, n - 500); // always a little behind
        }
        assert!(l.queued() == 500);
        assert!(l.sides[Conn::Pub.index()].out.len() < 256 * 1024);
    }

    // --- two links through a fake Redis ---

    /// A fake Redis: take every PUBLISH each link wrote and push it, as a `message`, to every
    /// link (its sender included, as Redis does).
    fn relay(links: &mut [Link], now: Instant) {
        use redis_protocol::resp2::{decode::decode, types::OwnedFrame};
        let mut pushes = Vec::new();
        for l in links.iter_mut() {
            let out = written(l);
            let mut at = 0;
            while let Some((frame, n)) = decode(&out[at..]).unwrap() {
                at += n;
                let OwnedFrame::Array(args) = frame else {
                    panic!("not a command")
                };
                let [
                    OwnedFrame::BulkString(cmd),
                    OwnedFrame::BulkString(_),
                    OwnedFrame::BulkString(payload),
                ] = &args[..]
                else {
                    panic!("not PUBLISH room PAYLOAD")
                };
                assert_eq!(cmd, b"PUBLISH");
                let mut push = format!(
                    "*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n${}\r\n",
                    payload.len()
                )
                .into_bytes();
                push.extend_from_slice(payload);
                push.extend_from_slice(b"\r\n");
                pushes.push(push);
                l.handle_input(Conn::Pub, b":2\r\n", now);
            }
        }
        for l in links.iter_mut() {
            for p in &pushes {
                l.handle_input(Conn::Sub, p, now);
            }
        }
    }

    fn lines_of(l: &mut Link) -> Vec<u8> {
        std::iter::from_fn(|| l.poll_lines())
            .flat_map(|(chunk, _)| chunk.to_vec())
            .collect()
    }

    #[test]
    fn test_two_nodes_get_each_others_batches_in_order_and_never_their_own() {
        let t0 = Instant::now();
        let mut a = up(t0);
        let mut b = Link::new("redis://test/room".into(), b"room", PEER, 1024, t0);
        b.handle_timeout(t0);
        b.handle_connected(Conn::Sub);
        b.handle_connected(Conn::Pub);
        b.handle_input(Conn::Sub, SUBSCRIBED, t0);
        let n = b.transmit(Conn::Sub).len();
        b.on_written(Conn::Sub, n);
        let mut links = [a, b];
        for i in 0..5 {
            links[0].publish(format!("a{i}\n").as_bytes());
            links[1].publish(format!("b{i}\n").as_bytes());
        }
        relay(&mut links, t0);
        [a, b] = links;
        assert_eq!(lines_of(&mut a), b"b0\nb1\nb2\nb3\nb4\n");
        assert_eq!(lines_of(&mut b), b"a0\na1\na2\na3\na4\n");
        for l in [&a, &b] {
            assert!(l.flushed());
            let c = l.counters();
            assert_eq!((c.received, c.published, c.lost, c.dropped), (5, 5, 0, 0));
        }
    }
}
