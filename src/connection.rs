//! The connection core: everything one TCP connection decides, and no I/O.
//!
//! A Go handler keeps this state on its goroutine's stack and lets the kernel block it. A
//! readiness loop has to keep it explicitly, per connection, between events. This file is that
//! state and its rules, written the sans-IO way (as quinn-proto and smoltcp are): the thin I/O
//! layer in `tcp.rs` performs a syscall and *tells the core what happened*; the core updates
//! its state and *says what to do next*. No socket, no clock: `now` is an argument. That is why
//! every rule below is unit-tested without a socket, with a fake clock.
//!
//! What goes in (inputs):
//! * [`Connection::on_readiness`]: what an epoll event said (a hint, never the truth);
//! * [`Connection::on_read`] / [`Connection::on_write`]: what a `read` or `write` returned;
//! * [`Connection::queue_copy`] / [`Connection::queue_shared`]: bytes the service owes the peer;
//! * [`Connection::close`] / [`Connection::abort`]: the server's decisions;
//! * [`Connection::begin_drain`]: a graceful stop began;
//! * [`Connection::settle`] (end of a visit) and [`Connection::on_timer`]: time passing.
//!
//! What comes out:
//! * queries that drive the I/O layer: [`Connection::wants_read`], [`Connection::read_allowance`],
//!   [`Connection::wants_flush`], [`Connection::transmit`] (the slices to write);
//! * [`Connection::poll_action`]: effects on the socket — shut down the write side (our FIN),
//!   make the close a reset, change the registered interest;
//! * [`Connection::deadline`]: when [`Connection::on_timer`] must run next.
//!
//! The phase rules themselves are a table in [`crate::lifecycle`]; this file feeds it and acts
//! on what it returns. The one rule worth repeating: **our FIN goes out only after every byte we
//! owe** — the core asks for `shutdown(Write)` only on entering FIN-WAIT-2, which the table
//! allows only from an empty queue.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::debug;

use crate::lifecycle::{AbortReason, CloseReason, Event, Phase};
use crate::outqueue::{OutQueue, Payload};

/// What one readiness event said about the socket. Edge-triggered epoll reports each change
/// once, so this is remembered until a read or write finds out the truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Bytes (or a FIN, or an error) may be waiting to be read.
    pub readable: bool,
    /// The send buffer may have room.
    pub writable: bool,
    /// The peer closed its side or the socket failed: a FIN or an error sits behind the data.
    pub hup: bool,
}

/// What one `read` call returned, as the I/O layer reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadResult {
    /// `n` bytes arrived, `asked` were asked for.
    Data {
        /// Bytes read.
        n: usize,
        /// The buffer's size: a shorter read means the receive queue is empty for now.
        asked: usize,
    },
    /// `read()` returned 0: the peer's FIN.
    Eof,
    /// The receive queue is empty for now.
    WouldBlock,
    /// The read failed (usually a reset).
    Error(io::ErrorKind),
}

/// What one `write` call returned, as the I/O layer reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// The kernel took this many bytes.
    Wrote(usize),
    /// The send buffer is full: the peer's receive window is closed, or the network is slow.
    WouldBlock,
    /// The write failed (usually a reset or EPIPE).
    Error(io::ErrorKind),
}

/// Where the bytes of a write came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The head of the output queue (from [`Connection::transmit`]): consumed once written.
    Queue,
    /// A reply written straight through, never queued (the queue was empty).
    Direct,
}

/// What a read means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Hand these `n` bytes to the service.
    Deliver(usize),
    /// This many bytes read in a closing phase, only to find the peer's FIN: dropped.
    Discard(usize),
    /// The peer's FIN. `deliver`: the service was still taking input, so it must hear of it
    /// (a last unterminated line, the end of a file).
    Eof {
        /// The service was taking input and must be told.
        deliver: bool,
    },
    /// Nothing (the queue was empty, or the read failed and the connection is now CLOSED).
    Nothing,
}

/// An effect on the socket that the core asks the I/O layer to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `shutdown(Write)`: our FIN, after every byte we owed. If it fails, report it with
    /// [`Connection::abort`].
    ShutdownWrite,
    /// Make the coming close abortive (`SO_LINGER` 0, so `close()` sends a reset and frees the
    /// kernel's buffers at once).
    ResetOnClose,
    /// Register for these events: readable always, writable only while bytes are queued.
    /// If re-registering fails, report it with [`Connection::abort`].
    Interest {
        /// Include WRITABLE.
        writable: bool,
    },
}

/// The timeouts the core is held to (from the [`Config`](crate::Config)); passed in, not
/// stored, so that ten thousand idle connections do not keep ten thousand copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Close a connection with no byte in or out for this long (`--idle-timeout`).
    pub idle: Option<Duration>,
    /// Release a connection stuck in a closing phase after this long (`--close-timeout`).
    pub close: Duration,
}

/// `drain_limit` when no graceful stop is under way.
const NOT_DRAINING: u64 = u64::MAX;

// Pending socket effects, as bits: each is needed at most once.
const PENDING_SHUTDOWN: u8 = 1;
const PENDING_RESET: u8 = 2;

/// One TCP connection's state. Holds no socket; see the module doc.
pub struct Connection {
    /// A number that is never reused, for log lines (slab keys are).
    id: u64,
    peer: SocketAddr,
    phase: Phase,
    out: OutQueue,

    // --- readiness, as the edge-triggered events reported it ---
    /// The socket may have bytes (or a FIN) to read: set by a readable event, cleared by a read
    /// that found the receive queue empty. Edge-triggered epoll reports each arrival once, so
    /// this flag is the only memory of "there is more to read".
    read_ready: bool,
    /// The socket may accept more bytes: cleared by a write that would block, set by a writable
    /// event. A fresh socket is writable.
    write_ready: bool,
    /// The last event said the peer closed or the socket failed. Until a read sees the FIN (or
    /// the error), a short read does not prove the receive queue is drained: the FIN sits
    /// behind the data, and its edge has already been reported.
    hup: bool,

    // --- flow control ---
    /// This connection's own replies are flow-controlled (echo): reading pauses while its queue
    /// is over `--max-buffer`. Broadcast members are not paused by what *others* queue for
    /// them; output limits evict them instead (see `room.rs`).
    flow_controlled: bool,
    /// Reading is suspended because the output queue reached `--max-buffer`.
    read_paused: bool,
    /// WRITABLE is part of the registered interest (only while the queue is non-empty).
    write_interest: bool,
    /// Socket effects asked for and not yet carried out (`PENDING_*` bits).
    pending: u8,
    /// A byte moved since the last [`Connection::settle`] (it refreshes `last_active`).
    moved: bool,

    // --- graceful stop ---
    /// During a graceful stop: the value of `bytes_in` at which every byte the kernel had
    /// received (and acknowledged) when the stop began has been served. [`NOT_DRAINING`]
    /// otherwise (a sentinel rather than an `Option`: eight bytes less per connection).
    drain_limit: u64,

    // --- time ---
    /// When a byte last moved in either direction (for `--idle-timeout`).
    last_active: Instant,
    /// When the closing phase the server started must end (set on entering FIN-WAIT-1).
    closing_deadline: Option<Instant>,

    // --- counters ---
    bytes_in: u64,
    bytes_out: u64,
    /// Of `bytes_in`, those read in a closing phase and dropped.
    discarded: u64,
}

impl Connection {
    /// A connection just accepted: ESTABLISHED, nothing read, nothing owed.
    pub fn new(id: u64, peer: SocketAddr, now: Instant, flow_controlled: bool) -> Connection {
        Connection {
            id,
            peer,
            phase: Phase::Established,
            out: OutQueue::new(),
            read_ready: false,
            write_ready: true,
            hup: false,
            flow_controlled,
            read_paused: false,
            write_interest: false,
            pending: 0,
            moved: false,
            drain_limit: NOT_DRAINING,
            last_active: now,
            closing_deadline: None,
            bytes_in: 0,
            bytes_out: 0,
            discarded: 0,
        }
    }

    // ---------------------------------------------------------------- what it is

    /// The number in every log line about this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The lifecycle phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Payload bytes read from the peer.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Payload bytes the kernel accepted for the peer.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Of [`Connection::bytes_in`], those read after the server decided to close, and dropped.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Bytes owed to the peer and not yet accepted by the kernel.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// What the output queue costs this peer, shared payloads included (what output limits
    /// are checked against, and what ranks clients for `--max-memory`).
    pub fn footprint(&self) -> usize {
        self.out.footprint()
    }

    /// Heap memory the output queue alone holds (shared payloads are counted once elsewhere).
    pub fn pinned(&self) -> usize {
        self.out.pinned()
    }

    /// When a byte last moved.
    pub fn last_active(&self) -> Instant {
        self.last_active
    }

    // ---------------------------------------------------------------- reading

    /// Record what a readiness event says. Events are hints (spurious wake-ups happen); the
    /// reads and writes that follow find out the truth.
    pub fn on_readiness(&mut self, r: Readiness) {
        if r.readable || r.hup {
            self.read_ready = true;
        }
        if r.hup {
            self.hup = true;
        }
        if r.writable {
            self.write_ready = true;
        }
    }

    /// Is a read worth trying now?
    pub fn wants_read(&self) -> bool {
        self.read_ready && !self.read_paused && self.phase.reads() && self.read_allowance(1) > 0
    }

    /// How many bytes the next read may take, at most `max`: during a drain, no more than the
    /// limit (in a closing phase input is only discarded, so there is no limit).
    pub fn read_allowance(&self, max: usize) -> usize {
        if self.drain_limit == NOT_DRAINING || !self.phase.delivers_input() {
            return max;
        }
        let left = self.drain_limit.saturating_sub(self.bytes_in);
        max.min(usize::try_from(left).unwrap_or(max))
    }

    /// A `read` returned `result`.
    ///
    /// A read that returns fewer bytes than asked means the receive queue was empty at that
    /// instant; anything arriving later raises a new edge. So there is no need to spend one
    /// more `read` to hear `WouldBlock` — the same shortcut tokio takes, worth a syscall per
    /// event. The exception is `hup`: the FIN (or error) that follows the data was reported in
    /// the same event and no new edge will come for it, so reading goes on until it is seen.
    pub fn on_read(&mut self, result: ReadResult) -> Input {
        match result {
            ReadResult::Data { n, asked } => {
                if n < asked && !self.hup {
                    self.read_ready = false;
                }
                self.bytes_in += n as u64;
                self.moved = true;
                if self.phase.delivers_input() {
                    Input::Deliver(n)
                } else {
                    self.discarded += n as u64;
                    Input::Discard(n)
                }
            }
            ReadResult::Eof => {
                self.read_ready = false;
                let deliver = self.phase.delivers_input();
                self.step(Event::PeerFin);
                Input::Eof { deliver }
            }
            ReadResult::WouldBlock => {
                self.read_ready = false;
                self.hup = false;
                Input::Nothing
            }
            ReadResult::Error(kind) => {
                self.step(Event::Abort(AbortReason::Io(kind)));
                Input::Nothing
            }
        }
    }

    // ---------------------------------------------------------------- writing

    /// Is a flush of the queue worth trying now?
    pub fn wants_flush(&self) -> bool {
        self.write_ready && !self.out.is_empty() && self.phase.writes()
    }

    /// May a reply be written straight to the socket, skipping the queue? Only when nothing is
    /// queued ahead of it (order) and the socket last said it had room.
    pub fn can_write_through(&self) -> bool {
        self.write_ready && self.out.is_empty() && self.phase.writes()
    }

    /// Fill `slices` with the head of the queue, at most `budget` bytes, for one (vectored)
    /// write. Returns how many slices were filled.
    pub fn transmit<'a>(&'a self, budget: usize, slices: &mut [IoSlice<'a>]) -> usize {
        self.out.io_slices(budget, slices)
    }

    /// A `write` of bytes from `source` returned `result`. Returns the bytes written (0 if
    /// none).
    pub fn on_write(&mut self, result: WriteResult, source: Source) -> usize {
        match result {
            // A socket that takes nothing is as good as dead; without this, a loop would spin.
            WriteResult::Wrote(0) => {
                self.step(Event::Abort(AbortReason::Io(io::ErrorKind::WriteZero)));
                0
            }
            WriteResult::Wrote(n) => {
                if source == Source::Queue {
                    self.out.consume(n);
                }
                self.bytes_out += n as u64;
                self.moved = true;
                n
            }
            WriteResult::WouldBlock => {
                self.write_ready = false;
                0
            }
            WriteResult::Error(kind) => {
                self.step(Event::Abort(AbortReason::Io(kind)));
                0
            }
        }
    }

    /// Queue a copy of `bytes` (what a write-through left over), unless our side is closed.
    pub fn queue_copy(&mut self, bytes: &[u8]) {
        if self.phase.writes() {
            self.out.push_copy(bytes);
        }
    }

    /// Queue a shared payload (a broadcast batch), by reference if it is large, unless our
    /// side is closed.
    pub fn queue_shared(&mut self, payload: &Rc<Payload>) {
        if self.phase.writes() {
            self.out.push_shared(payload);
        }
    }

    /// Update the backpressure switch of a flow-controlled connection: stop reading at
    /// `max_buffer` queued bytes, resume below half of it. The gap keeps a connection that
    /// hovers at the limit from flapping.
    ///
    /// This is where the Go version's blocking `Write` went: a Go echo handler that cannot
    /// write stops reading too, because it is stuck in `Write`. Here the loop keeps running
    /// and only this connection stops being read, so its peer's sends fill the kernel's
    /// buffers and TCP's window closes on *it*, not on everybody.
    pub fn update_flow(&mut self, max_buffer: usize) {
        if !self.flow_controlled {
            return;
        }
        let queued = self.out.len();
        if queued >= max_buffer {
            self.read_paused = true;
        } else if queued < max_buffer / 2 || queued == 0 {
            self.read_paused = false;
        }
    }

    // ---------------------------------------------------------------- closing

    /// The server decides to close, in order: flush what is owed, then our FIN.
    pub fn close(&mut self, reason: CloseReason) {
        self.step(Event::Close(reason));
    }

    /// The connection must end now (an I/O error, a timeout, an eviction).
    pub fn abort(&mut self, reason: AbortReason) {
        self.step(Event::Abort(reason));
    }

    /// A graceful stop begins: serve exactly `kernel_pending` more bytes — those the kernel
    /// holds for us now (`FIONREAD`), which its TCP already acknowledged and the peer rightly
    /// believes delivered — and nothing that arrives later. Without this bound a client that
    /// streams without pause would hold the drain until its timeout. `finish_input`: the
    /// service wants the rest of the input anyway (a file in mid-transfer).
    pub fn begin_drain(&mut self, kernel_pending: u64, finish_input: bool) {
        self.read_ready = true;
        if !finish_input {
            self.drain_limit = (self.bytes_in + kernel_pending).min(NOT_DRAINING - 1);
        }
    }

    /// Is a graceful stop under way, has every byte that was pending when it began been served,
    /// and is nothing owed any more? Then the connection can be closed.
    pub fn is_drained(&self) -> bool {
        self.drain_limit != NOT_DRAINING && self.read_allowance(1) == 0 && self.out.is_empty()
    }

    /// A graceful stop found nothing owed either way: the queue is empty, and the kernel holds
    /// no unread byte for us and no unacknowledged byte for the peer (the I/O layer asked it).
    /// Release the connection now instead of waiting for the peer's FIN, which an idle client
    /// would never send.
    pub fn release(&mut self) {
        if self.out.is_empty() {
            self.step(Event::Release);
        }
    }

    /// Does input received before the stop remain unread? (A broadcast member's unread lines
    /// must reach the room before any member is closed; see `room.rs`.)
    pub fn has_unread_input(&self) -> bool {
        self.phase == Phase::Established && self.read_allowance(1) > 0
    }

    /// The end of a visit (or of any change): refresh the activity time if bytes moved, let the
    /// phases that wait for an empty queue move on, and start the clock of a closing phase.
    pub fn settle(&mut self, now: Instant, timeouts: &Timeouts) {
        if self.moved {
            self.moved = false;
            self.last_active = now;
        }
        if self.out.is_empty() {
            self.step(Event::Flushed);
        }
        if self.phase.is_closing_actively() && self.closing_deadline.is_none() {
            self.closing_deadline = now.checked_add(timeouts.close);
        }
    }

    // ---------------------------------------------------------------- time

    /// The next time [`Connection::on_timer`] must look at this connection: the end of the
    /// closing phase while the server is closing it, else the idle deadline.
    pub fn deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            p if p.is_closing_actively() => self.closing_deadline,
            _ => timeouts
                .idle
                .and_then(|idle| self.last_active.checked_add(idle)),
        }
    }

    /// Time passed: end a closing phase that outlived `--close-timeout`, or a connection idle
    /// for `--idle-timeout`.
    pub fn on_timer(&mut self, now: Instant, timeouts: &Timeouts) {
        if self.phase.is_closing_actively() {
            if self.closing_deadline.is_some_and(|d| d <= now) {
                self.step(Event::Abort(AbortReason::CloseTimeout));
            }
            return;
        }
        let idle_over = timeouts
            .idle
            .and_then(|idle| self.last_active.checked_add(idle))
            .is_some_and(|d| d <= now);
        if idle_over {
            let event = match self.phase {
                Phase::Established => Event::Close(CloseReason::Idle),
                // CLOSE-WAIT that made no progress for the idle timeout: the peer reads
                // nothing of what we owe it. There is no orderly way left.
                _ => Event::Abort(AbortReason::IdleTimeout),
            };
            self.step(event);
        }
    }

    // ---------------------------------------------------------------- effects

    /// The next effect on the socket to carry out, if any: the FIN and the reset first (they
    /// change what the peer sees), then the registered interest.
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.pending & PENDING_SHUTDOWN != 0 {
            self.pending &= !PENDING_SHUTDOWN;
            return Some(Action::ShutdownWrite);
        }
        if self.pending & PENDING_RESET != 0 {
            self.pending &= !PENDING_RESET;
            return Some(Action::ResetOnClose);
        }
        // Re-registering costs a syscall, so only a change asks for it.
        let want = !self.out.is_empty() && self.phase.writes();
        if want != self.write_interest && self.phase != Phase::Closed {
            self.write_interest = want;
            return Some(Action::Interest { writable: want });
        }
        None
    }

    /// The one place a phase changes. Logs `conn ID PEER FROM -> TO (why)` and asks for the
    /// entry action of the new phase.
    fn step(&mut self, event: Event) {
        let from = self.phase;
        let to = from.next(&event);
        if from == to {
            return;
        }
        // An abort says what kind of end it is: a reset we send, or a socket already dead.
        let how = match event {
            Event::Abort(reason) if reason.resets() => "; reset sent",
            Event::Abort(AbortReason::Io(_)) => "; the socket failed",
            _ => "",
        };
        debug!(
            "conn {} {} {} -> {} ({event}{how})",
            self.id, self.peer, from, to
        );
        self.phase = to;
        if to == Phase::FinWait2 {
            // Our FIN goes out after every byte we owed (the table enters FIN-WAIT-2 only
            // from an empty queue).
            self.pending |= PENDING_SHUTDOWN;
        }
        if to == Phase::Closed {
            // Nothing queued can ever be sent now; free it at once.
            self.out = OutQueue::new();
            if let Event::Abort(reason) = event
                && reason.resets()
            {
                // The peer is not reading what we owe it, so a FIN would wait behind those
                // bytes in the kernel for minutes. A reset frees the socket's kernel buffers
                // now — which is the point of giving up.
                self.pending |= PENDING_RESET;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Tests by phase, smoltcp style: a fixture puts a connection in a phase, the test feeds it
    //! what the socket would report and checks what it asks for. The clock is fake.

    use super::*;

    const T: Timeouts = Timeouts {
        idle: Some(Duration::from_secs(30)),
        close: Duration::from_secs(5),
    };

    fn t0() -> Instant {
        // Any fixed instant works: the core only compares instants it was given.
        Instant::now()
    }

    fn conn(now: Instant) -> Connection {
        Connection::new(1, "127.0.0.1:9".parse().unwrap(), now, true)
    }

    /// Every effect the core asks for right now.
    fn actions(c: &mut Connection) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    /// A connection in CLOSE-WAIT: the peer's FIN read, `owed` bytes still queued.
    fn close_wait(now: Instant, owed: &[u8]) -> Connection {
        let mut c = conn(now);
        c.queue_copy(owed);
        c.on_readiness(Readiness {
            readable: true,
            hup: true,
            ..Readiness::default()
        });
        assert_eq!(c.on_read(ReadResult::Eof), Input::Eof { deliver: true });
        c.settle(now, &T);
        c
    }

    /// A connection the server decided to close with `owed` bytes queued: FIN-WAIT-1, or
    /// FIN-WAIT-2 at once if nothing was owed.
    fn fin_wait_1(now: Instant, owed: &[u8]) -> Connection {
        let mut c = conn(now);
        c.queue_copy(owed);
        c.close(CloseReason::Idle);
        c.settle(now, &T);
        let want = if owed.is_empty() {
            Phase::FinWait2
        } else {
            Phase::FinWait1
        };
        assert_eq!(c.phase(), want);
        c
    }

    /// Write the whole queue, as a socket with room would take it.
    fn flush_all(c: &mut Connection) {
        let mut slices = [IoSlice::new(&[]); 8];
        let n = c.transmit(usize::MAX, &mut slices);
        let len: usize = slices[..n].iter().map(|s| s.len()).sum();
        c.on_write(WriteResult::Wrote(len), Source::Queue);
    }

    // --- ESTABLISHED ---

    #[test]
    fn test_established_reads_after_a_readable_event_only() {
        let mut c = conn(t0());
        assert!(!c.wants_read(), "no event yet");
        c.on_readiness(Readiness {
            readable: true,
            ..Readiness::default()
        });
        assert!(c.wants_read());
        assert_eq!(
            c.on_read(ReadResult::Data { n: 10, asked: 100 }),
            Input::Deliver(10)
        );
        assert!(!c.wants_read(), "a short read proves the queue was empty");
    }

    #[test]
    fn test_established_short_read_after_hup_keeps_reading_to_find_the_fin() {
        let mut c = conn(t0());
        c.on_readiness(Readiness {
            readable: true,
            hup: true,
            ..Readiness::default()
        });
        c.on_read(ReadResult::Data { n: 10, asked: 100 });
        assert!(c.wants_read(), "the FIN's edge is already spent; read on");
        assert_eq!(c.on_read(ReadResult::Eof), Input::Eof { deliver: true });
        assert_eq!(c.phase(), Phase::CloseWait);
        assert!(!c.wants_read());
    }

    #[test]
    fn test_established_full_read_keeps_reading() {
        let mut c = conn(t0());
        c.on_readiness(Readiness {
            readable: true,
            ..Readiness::default()
        });
        c.on_read(ReadResult::Data { n: 100, asked: 100 });
        assert!(
            c.wants_read(),
            "a full buffer says nothing about what is left"
        );
        c.on_read(ReadResult::WouldBlock);
        assert!(!c.wants_read());
    }

    #[test]
    fn test_established_write_through_only_with_an_empty_queue() {
        let mut c = conn(t0());
        assert!(c.can_write_through());
        assert_eq!(
            c.on_write(WriteResult::Wrote(3), Source::Direct),
            3,
            "a direct write does not touch the queue"
        );
        c.queue_copy(b"rest");
        assert!(!c.can_write_through(), "order: the queue goes first");
        assert!(c.wants_flush());
    }

    #[test]
    fn test_established_queue_asks_for_writable_interest_and_drops_it_when_empty() {
        let now = t0();
        let mut c = conn(now);
        c.queue_copy(b"hello");
        assert_eq!(actions(&mut c), [Action::Interest { writable: true }]);
        assert_eq!(actions(&mut c), [], "asked once, not on every turn");
        c.on_write(WriteResult::WouldBlock, Source::Queue);
        assert!(!c.wants_flush(), "wait for the writable event");
        c.on_readiness(Readiness {
            writable: true,
            ..Readiness::default()
        });
        flush_all(&mut c);
        c.settle(now, &T);
        assert_eq!(c.phase(), Phase::Established);
        assert_eq!(actions(&mut c), [Action::Interest { writable: false }]);
    }

    #[test]
    fn test_established_backpressure_pauses_reading_and_resumes_below_half() {
        let mut c = conn(t0());
        c.on_readiness(Readiness {
            readable: true,
            ..Readiness::default()
        });
        c.queue_copy(&[0; 100]);
        c.update_flow(100);
        assert!(!c.wants_read(), "paused at the limit");
        c.on_write(WriteResult::Wrote(40), Source::Queue);
        c.update_flow(100);
        assert!(!c.wants_read(), "60 left: still over half");
        c.on_write(WriteResult::Wrote(20), Source::Queue);
        c.update_flow(100);
        assert!(c.wants_read(), "40 left: resumed");
    }

    #[test]
    fn test_broadcast_member_is_not_paused_by_what_others_queue() {
        let mut c = Connection::new(1, "127.0.0.1:9".parse().unwrap(), t0(), false);
        c.on_readiness(Readiness {
            readable: true,
            ..Readiness::default()
        });
        let ledger = crate::outqueue::Ledger::default();
        c.queue_shared(&Rc::new(Payload::new(Rc::from(&[b'x'; 1000][..]), &ledger)));
        c.update_flow(10);
        assert!(c.wants_read());
    }

    #[test]
    fn test_established_read_error_is_closed_without_a_reset_request() {
        let mut c = conn(t0());
        c.queue_copy(b"owed");
        assert_eq!(
            c.on_read(ReadResult::Error(io::ErrorKind::ConnectionReset)),
            Input::Nothing
        );
        assert_eq!(c.phase(), Phase::Closed);
        assert_eq!(c.queued(), 0, "nothing can be sent: the queue is freed");
        assert_eq!(
            actions(&mut c),
            [],
            "the socket is dead; no linger, no interest"
        );
    }

    #[test]
    fn test_established_write_of_zero_bytes_aborts() {
        let mut c = conn(t0());
        c.on_write(WriteResult::Wrote(0), Source::Direct);
        assert_eq!(c.phase(), Phase::Closed);
    }

    #[test]
    fn test_established_idle_timeout_closes_in_order() {
        let now = t0();
        let mut c = conn(now);
        assert_eq!(c.deadline(&T), Some(now + Duration::from_secs(30)));
        c.on_timer(now + Duration::from_secs(29), &T);
        assert_eq!(c.phase(), Phase::Established);
        c.on_timer(now + Duration::from_secs(30), &T);
        assert_eq!(c.phase(), Phase::FinWait1);
    }

    #[test]
    fn test_established_activity_moves_the_idle_deadline() {
        let now = t0();
        let mut c = conn(now);
        let later = now + Duration::from_secs(20);
        c.on_readiness(Readiness {
            readable: true,
            ..Readiness::default()
        });
        c.on_read(ReadResult::Data { n: 1, asked: 10 });
        c.settle(later, &T);
        assert_eq!(c.deadline(&T), Some(later + Duration::from_secs(30)));
        c.on_timer(now + Duration::from_secs(30), &T);
        assert_eq!(c.phase(), Phase::Established, "the old deadline is void");
    }

    #[test]
    fn test_an_absurd_idle_timeout_means_never_not_a_panic() {
        let now = t0();
        let huge = Timeouts {
            idle: Some(Duration::MAX),
            close: Duration::MAX,
        };
        let mut c = conn(now);
        assert_eq!(c.deadline(&huge), None);
        c.on_timer(now, &huge);
        c.close(CloseReason::Idle);
        c.settle(now, &huge);
        assert_eq!(c.deadline(&huge), None);
    }

    // --- CLOSE-WAIT ---

    #[test]
    fn test_close_wait_flushes_then_closes() {
        let now = t0();
        let mut c = close_wait(now, b"still owed");
        assert_eq!(c.phase(), Phase::CloseWait);
        assert!(c.wants_flush());
        flush_all(&mut c);
        c.settle(now, &T);
        assert_eq!(c.phase(), Phase::Closed);
        assert_eq!(c.bytes_out(), 10);
    }

    #[test]
    fn test_close_wait_with_nothing_owed_closes_at_once() {
        let now = t0();
        let c = close_wait(now, b"");
        assert_eq!(c.phase(), Phase::Closed);
    }

    #[test]
    fn test_close_wait_does_not_read_again() {
        let c = close_wait(t0(), b"x");
        assert!(!c.wants_read());
    }

    #[test]
    fn test_close_wait_that_makes_no_progress_is_reset_after_the_idle_timeout() {
        let now = t0();
        let mut c = close_wait(now, b"never read by the peer");
        c.on_timer(now + Duration::from_secs(30), &T);
        assert_eq!(c.phase(), Phase::Closed);
        assert_eq!(actions(&mut c), [Action::ResetOnClose]);
    }

    // --- FIN-WAIT-1 / FIN-WAIT-2 / CLOSING ---

    #[test]
    fn test_fin_wait_1_sends_our_fin_only_after_every_queued_byte() {
        let now = t0();
        let mut c = fin_wait_1(now, b"owed");
        assert!(
            !actions(&mut c).contains(&Action::ShutdownWrite),
            "no FIN while bytes are owed"
        );
        flush_all(&mut c);
        c.settle(now, &T);
        assert_eq!(c.phase(), Phase::FinWait2);
        assert_eq!(
            actions(&mut c),
            [Action::ShutdownWrite, Action::Interest { writable: false }]
        );
    }

    #[test]
    fn test_fin_wait_reads_only_to_discard_until_the_peer_fin() {
        let now = t0();
        let mut c = fin_wait_1(now, b"");
        assert_eq!(c.phase(), Phase::FinWait2);
        c.on_readiness(Readiness {
            readable: true,
            ..Readiness::default()
        });
        assert_eq!(
            c.on_read(ReadResult::Data { n: 7, asked: 7 }),
            Input::Discard(7)
        );
        assert_eq!(c.discarded(), 7);
        assert_eq!(c.on_read(ReadResult::Eof), Input::Eof { deliver: false });
        assert_eq!(c.phase(), Phase::Closed);
    }

    #[test]
    fn test_fin_wait_1_peer_fin_goes_closing_then_closed_when_flushed() {
        let now = t0();
        let mut c = fin_wait_1(now, b"owed");
        c.on_readiness(Readiness {
            readable: true,
            hup: true,
            ..Readiness::default()
        });
        c.on_read(ReadResult::Eof);
        assert_eq!(c.phase(), Phase::Closing);
        flush_all(&mut c);
        c.settle(now, &T);
        assert_eq!(c.phase(), Phase::Closed);
    }

    #[test]
    fn test_closing_phase_is_released_with_a_reset_after_the_close_timeout() {
        let now = t0();
        let mut c = fin_wait_1(now, b"the peer never reads this");
        assert_eq!(c.deadline(&T), Some(now + T.close));
        c.on_timer(now + T.close - Duration::from_millis(1), &T);
        assert_eq!(c.phase(), Phase::FinWait1);
        c.on_timer(now + T.close, &T);
        assert_eq!(c.phase(), Phase::Closed);
        assert!(actions(&mut c).contains(&Action::ResetOnClose));
    }

    #[test]
    fn test_fin_wait_2_waits_for_the_peer_fin_only_until_the_close_timeout() {
        let now = t0();
        let mut c = fin_wait_1(now, b"");
        assert_eq!(c.phase(), Phase::FinWait2);
        c.on_timer(now + T.close, &T);
        assert_eq!(c.phase(), Phase::Closed);
    }

    #[test]
    fn test_no_write_after_our_fin() {
        let now = t0();
        let mut c = fin_wait_1(now, b"");
        c.queue_copy(b"late");
        assert_eq!(c.queued(), 0);
        assert!(!c.can_write_through());
    }

    // --- graceful stop ---

    #[test]
    fn test_drain_serves_exactly_what_the_kernel_held() {
        let now = t0();
        let mut c = conn(now);
        c.begin_drain(10, false);
        assert!(c.wants_read());
        assert_eq!(c.read_allowance(64), 10);
        assert!(c.has_unread_input());
        c.on_read(ReadResult::Data { n: 10, asked: 10 });
        assert_eq!(c.read_allowance(64), 0);
        assert!(
            !c.wants_read(),
            "bytes that came after the stop are not served"
        );
        assert!(c.is_drained());
        assert!(!c.has_unread_input());
    }

    #[test]
    fn test_drain_waits_for_what_is_owed() {
        let now = t0();
        let mut c = conn(now);
        c.queue_copy(b"owed");
        c.begin_drain(0, false);
        assert!(!c.is_drained());
        flush_all(&mut c);
        assert!(c.is_drained());
    }

    #[test]
    fn test_release_at_a_stop_never_drops_owed_bytes() {
        let now = t0();
        let mut c = conn(now);
        c.queue_copy(b"owed");
        c.release();
        assert_eq!(c.phase(), Phase::Established, "bytes are owed: no release");
        flush_all(&mut c);
        c.release();
        assert_eq!(c.phase(), Phase::Closed);
        assert_eq!(actions(&mut c), [], "a plain close(): no reset");
    }

    #[test]
    fn test_release_after_our_fin() {
        let now = t0();
        let mut c = fin_wait_1(now, b"");
        assert_eq!(c.phase(), Phase::FinWait2);
        c.release();
        assert_eq!(c.phase(), Phase::Closed);
    }

    #[test]
    fn test_drain_lets_a_service_finish_its_input() {
        let mut c = conn(t0());
        c.begin_drain(0, true);
        assert!(!c.is_drained(), "a file in mid-transfer is not cut");
        assert_eq!(c.read_allowance(64), 64);
    }
}
