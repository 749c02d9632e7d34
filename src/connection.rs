//! One TCP connection: its socket, its output queue, its lifecycle phase and what the last
//! readiness events said. This is the only code that reads from or writes to a `TcpStream`.
//!
//! The loop (`server.rs`) decides *when* to read and write a connection; this file decides
//! *how*: one `read` at a time with the edge-triggered rules, writes that go straight to the
//! socket when nothing is queued, queueing of what the socket refuses, vectored flushes, the
//! backpressure switch, and every phase change with its log line.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::debug;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::config::Config;
use crate::lifecycle::{AbortReason, Event, Phase};
use crate::outqueue::OutQueue;
use crate::service::{Output, ServiceKind, Session};

/// The most iovecs handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// What one `read` call produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes are at the start of the buffer.
    Data(usize),
    /// `read()` returned 0: the peer's FIN.
    Eof,
    /// The receive queue is empty for now.
    WouldBlock,
    /// The read failed (usually a reset); the connection has been aborted.
    Failed,
}

pub struct Connection {
    /// A number that is never reused, for log lines (slab keys are).
    pub id: u64,
    pub peer: SocketAddr,
    /// The service's own state for this client.
    pub session: Session,
    stream: TcpStream,
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
    /// Reading is suspended because the output queue reached `--max-buffer`.
    read_paused: bool,
    /// WRITABLE is part of the registered interest (only while the queue is non-empty).
    write_interest: bool,
    /// During a graceful shutdown: the value of `bytes_in` at which every byte the kernel had
    /// received (and acknowledged) when the shutdown began has been served.
    drain_limit: Option<u64>,

    // --- bookkeeping for the loop ---
    /// The connection is in the loop's run queue.
    pub queued: bool,
    /// The connection is in the loop's list of broadcast recipients to flush this turn.
    pub flush_pending: bool,
    /// When a byte last moved in either direction (for `--idle-timeout`).
    pub last_active: Instant,
    /// When the closing phase the server started must end (set on entering FIN-WAIT-1).
    pub closing_deadline: Option<Instant>,
    /// The earliest time this connection has an entry in the loop's timer queue.
    pub timer_at: Option<Instant>,
    /// Payload bytes read from and written to this peer.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Of `bytes_in`, those read in a closing phase and dropped.
    pub discarded: u64,
}

impl Connection {
    pub fn new(
        id: u64,
        stream: TcpStream,
        peer: SocketAddr,
        service: ServiceKind,
        now: Instant,
    ) -> Connection {
        Connection {
            id,
            peer,
            session: Session::new(service, now),
            stream,
            phase: Phase::Established,
            out: OutQueue::new(),
            read_ready: false,
            write_ready: true,
            hup: false,
            read_paused: false,
            write_interest: false,
            drain_limit: None,
            queued: false,
            flush_pending: false,
            last_active: now,
            closing_deadline: None,
            timer_at: None,
            bytes_in: 0,
            bytes_out: 0,
            discarded: 0,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn service(&self) -> ServiceKind {
        self.session.kind()
    }

    /// Memory the output queue holds (what output limits are checked against).
    pub fn queue_footprint(&self) -> usize {
        self.out.footprint()
    }

    /// Queue a shared chunk (a broadcast line batch) behind whatever is queued. No write is
    /// attempted: the loop flushes every recipient once per turn, so chunks from several
    /// senders leave in one vectored write.
    pub fn queue_shared(&mut self, chunk: Rc<[u8]>) {
        if self.phase.writes() {
            self.out.push_shared(chunk);
        }
    }

    /// Register with the poller. Readable only: WRITABLE is added while something is queued.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.stream, token, Interest::READABLE)
    }

    /// Record what a readiness event says. Events are hints (spurious wake-ups happen); the
    /// reads and writes that follow find out the truth.
    pub fn on_readiness(&mut self, event: &mio::event::Event) {
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read_ready = true;
        }
        if event.is_read_closed() || event.is_error() {
            self.hup = true;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            self.write_ready = true;
        }
    }

    /// A graceful shutdown begins: serve exactly what the kernel holds for us now — bytes its
    /// TCP already acknowledged, which the peer rightly believes delivered — and nothing that
    /// arrives later. Without this bound a client that streams without pause would hold the
    /// drain until its timeout.
    pub fn begin_drain(&mut self) {
        self.read_ready = true;
        if let Session::Files(transfer) = &self.session
            && transfer.is_receiving()
        {
            // A file in mid-transfer is allowed to finish (within the drain timeout): cutting
            // it would only make the sender start over.
            return;
        }
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int: the bytes waiting in the socket's receive queue.
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::FIONREAD, &mut pending) };
        let pending = if rc == 0 { pending.max(0) as u64 } else { 0 };
        self.drain_limit = Some(self.bytes_in + pending);
    }

    /// How many bytes the next read may take, at most `max`: during a drain, no more than the
    /// limit (in a closing phase input is only discarded, so there is no limit).
    pub fn read_allowance(&self, max: usize) -> usize {
        match self.drain_limit {
            Some(limit) if self.phase.delivers_input() => {
                max.min(usize::try_from(limit.saturating_sub(self.bytes_in)).unwrap_or(max))
            }
            _ => max,
        }
    }

    /// Is a read worth trying now?
    pub fn wants_read(&self) -> bool {
        self.read_ready && !self.read_paused && self.phase.reads() && self.read_allowance(1) > 0
    }

    /// Is a flush worth trying now?
    pub fn wants_flush(&self) -> bool {
        self.write_ready && !self.out.is_empty() && self.phase.writes()
    }

    /// Is a graceful shutdown under way, has every byte that was pending when it began been served,
    /// and is nothing owed any more? Then the connection can be closed.
    pub fn is_drained(&self) -> bool {
        self.drain_limit.is_some() && self.read_allowance(1) == 0 && self.out.is_empty()
    }

    /// One `read` into `buf`.
    ///
    /// A read that returns fewer bytes than asked means the receive queue was empty at that
    /// instant; anything arriving later raises a new edge. So the caller need not spend one more
    /// `read` to hear `WouldBlock` — the same shortcut tokio takes, worth a syscall per event.
    /// The exception is `hup`: the FIN (or error) that follows the data was reported in the
    /// same event and no new edge will come for it, so we keep reading until we see it.
    pub fn read(&mut self, buf: &mut [u8]) -> ReadOutcome {
        loop {
            return match (&self.stream).read(buf) {
                Ok(0) => {
                    self.read_ready = false;
                    ReadOutcome::Eof
                }
                Ok(n) => {
                    if n < buf.len() && !self.hup {
                        self.read_ready = false;
                    }
                    self.bytes_in += n as u64;
                    ReadOutcome::Data(n)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read_ready = false;
                    self.hup = false;
                    ReadOutcome::WouldBlock
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.step(Event::Abort(AbortReason::Io(e.kind())));
                    ReadOutcome::Failed
                }
            };
        }
    }

    /// Write what is queued, at most `budget` bytes. Clears `write_ready` if the socket fills
    /// up; aborts the connection on a write error.
    pub fn flush(&mut self, budget: usize) {
        let mut left = budget;
        while self.wants_flush() && left > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.out.io_slices(left, &mut slices);
            // One piece (the common case) takes a plain write: the kernel's vectored path
            // copies the iovec array in first, which is pure overhead for a single buffer.
            let result = if n == 1 {
                (&self.stream).write(&slices[0])
            } else {
                (&self.stream).write_vectored(&slices[..n])
            };
            match result {
                Ok(0) => {
                    self.step(Event::Abort(AbortReason::Io(io::ErrorKind::WriteZero)));
                }
                Ok(written) => {
                    self.out.consume(written);
                    self.bytes_out += written as u64;
                    left -= written;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write_ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.step(Event::Abort(AbortReason::Io(e.kind()))),
            }
        }
    }

    /// Update the backpressure switch: stop reading at `max_buffer` queued bytes, resume below
    /// half of it. The gap keeps a connection that hovers at the limit from flapping.
    pub fn update_flow(&mut self, max_buffer: usize) {
        let queued = self.out.len();
        if queued >= max_buffer {
            self.read_paused = true;
        } else if queued < max_buffer / 2 || queued == 0 {
            self.read_paused = false;
        }
    }

    /// Feed the lifecycle the one input that depends on the queue: when nothing is owed, the
    /// phases that were waiting for a flush move on.
    pub fn settle(&mut self) {
        if self.out.is_empty() {
            self.step(Event::Flushed);
        }
    }

    /// The one place a phase changes. Logs `conn ID PEER FROM -> TO (why)` and runs the entry
    /// action of the new phase.
    pub fn step(&mut self, event: Event) {
        let from = self.phase;
        let to = from.next(&event);
        if from == to {
            return;
        }
        debug!(
            "conn {} {} {} -> {} ({})",
            self.id, self.peer, from, to, event
        );
        self.phase = to;
        if to == Phase::FinWait2 {
            // Our FIN goes out after every byte we owed. If the peer already reset, the
            // shutdown fails and there is nothing left to wait for.
            if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                self.step(Event::Abort(AbortReason::Io(e.kind())));
            }
        }
        if to == Phase::Closed {
            // Nothing queued can ever be sent now; free it at once.
            self.out = OutQueue::new();
            if let Event::Abort(reason) = event
                && reason.resets()
            {
                // The peer is not reading what we owe it, so a FIN would wait behind those
                // bytes in the kernel for minutes. SO_LINGER 0 makes close() send a reset and
                // free the socket's kernel buffers now — which is the point of giving up.
                let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
            }
        }
    }

    /// Make the registered interest match the queue: WRITABLE only while bytes are waiting.
    /// Re-registering costs a syscall, so only a change of state triggers it.
    pub fn update_interest(&mut self, registry: &Registry, token: Token) {
        let want = !self.out.is_empty() && self.phase.writes();
        if want == self.write_interest || self.phase == Phase::Closed {
            return;
        }
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match registry.reregister(&mut self.stream, token, interest) {
            Ok(()) => self.write_interest = want,
            Err(e) => self.step(Event::Abort(AbortReason::Io(e.kind()))),
        }
    }

    /// The next time a timer must look at this connection: the closing deadline while the
    /// server is closing it; otherwise the earliest of the idle deadline, the end of the grace
    /// period over the soft output limit, and the service's own deadline (file transfers).
    pub fn deadline(&self, config: &Config) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            p if p.is_closing_actively() => self.closing_deadline,
            _ => {
                let idle = config.idle_timeout.map(|idle| self.last_active + idle);
                let soft = self
                    .over_soft_since()
                    .map(|since| since + config.bcast_soft_time);
                let service = match &self.session {
                    Session::Files(transfer) => transfer.deadline(&config.file_limits()),
                    Session::Echo | Session::Broadcast(_) => None,
                };
                idle.into_iter().chain(soft).chain(service).min()
            }
        }
    }

    /// Since when a broadcast member's output has been over the soft limit, if it is.
    pub fn over_soft_since(&self) -> Option<Instant> {
        match &self.session {
            Session::Broadcast(member) => member.over_soft_since,
            Session::Echo | Session::Files(_) => None,
        }
    }
}

impl Output for Connection {
    /// Write `bytes` now if nothing is queued ahead of them; queue whatever the socket does not
    /// take. Never blocks, never drops.
    fn send(&mut self, bytes: &[u8]) {
        if !self.phase.writes() {
            return;
        }
        let mut rest = bytes;
        if self.out.is_empty() {
            while self.write_ready && !rest.is_empty() && self.phase.writes() {
                match (&self.stream).write(rest) {
                    Ok(0) => self.step(Event::Abort(AbortReason::Io(io::ErrorKind::WriteZero))),
                    Ok(n) => {
                        rest = &rest[n..];
                        self.bytes_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write_ready = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => self.step(Event::Abort(AbortReason::Io(e.kind()))),
                }
            }
        }
        if self.phase.writes() {
            self.out.push_copy(rest);
        }
    }
}
