//! The bridge: one broadcast room spanning every resound process subscribed to the same Redis
//! pub/sub channel (`serve --bridge redis://HOST:PORT/CHANNEL`).
//!
//! ```text
//!   clients ──> resound A ──PUBLISH──>  ┌───────┐  ──message──> resound B ──> clients
//!   clients ──> resound B ──PUBLISH──>  │ Redis │  ──message──> resound C ──> clients
//!   clients ──> resound C ──PUBLISH──>  └───────┘  ──message──> resound A ──> clients
//! ```
//!
//! Redis is the engine, not something built here: each node PUBLISHes what its own members
//! say and SUBSCRIBEs to what the others say. The link lives inside the same single-threaded
//! mio loop as everything else — two non-blocking sockets with their own tokens, no thread, no
//! async runtime, no blocking call:
//!
//! * [`message`]: what travels on the bus — one message per fan-out batch, a small text header
//!   (`resound1 NODE SEQ\n`) then the batch's whole lines — and the RESP glue around the
//!   `redis-protocol` crate's sans-IO codec;
//! * [`link`]: the link's state machine (DOWN, CONNECTING, SUBSCRIBING, UP), sans-IO and
//!   unit-tested on a fake clock against a fake Redis;
//! * this file: the thin I/O layer, [`Bridge`] — it connects, reads and writes the two
//!   sockets, and tells the link what happened.
//!
//! # What a node promises
//!
//! * **Local first.** Local members get a line before it is published: the loop flushes the
//!   room, then hands the turn's batches to the bridge. A Redis outage never stops local
//!   delivery.
//! * **Per-sender order, no total order.** A batch is published once, whole, on one
//!   connection; Redis delivers one publisher's messages to every subscriber in order. Lines of
//!   two senders on different nodes may arrive in different orders at different members.
//! * **At most once.** A node drops its own messages (Redis echoes them back) and duplicates;
//!   nothing is retried. What is lost is *counted*: `bridge_dropped` for our batches not
//!   published (queue over `--bridge-max-queue`, link down), `bridge_lost` for a peer's
//!   batches we never got (gaps in its sequence numbers).
//! * **Remote lines are lines.** They enter the room through the same door as local ones,
//!   under the same slow-consumer limits.
//! * **Redis down or slow.** Nothing is buffered for an outage; the link reconnects with a
//!   jittered backoff (100 ms doubling to 5 s) and logs `bridge up` / `bridge down: <reason>`.
//!   A node Redis evicts for reading too slowly (its `client-output-buffer-limit pubsub`) just
//!   reconnects the same way, and counts the gap.
//!
//! The host is resolved once, at start-up (see [`BridgeUrl`]): the
//! system resolver blocks, and the loop must not.

pub mod link;
pub mod message;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::config::BridgeUrl;
use crate::tcp::{connect_finished, retry};
use link::{Action, Conn, Counters, Link};

/// Bytes read from one of the link's sockets per loop turn: the same fairness as a client's.
const READ_BUDGET: usize = 64 * 1024;

/// One of the link's sockets as the loop sees it.
struct Socket {
    token: Token,
    stream: Option<TcpStream>,
    /// `connect` is in progress: the next writable (or error) event says how it went.
    connecting: bool,
    /// May have bytes (or an EOF, an error) to read: set by events, cleared by a short read.
    readable: bool,
    /// May take bytes: cleared by `WouldBlock`, set by events.
    writable: bool,
    /// The last event said the peer closed or the socket failed: the EOF (or error) sits
    /// behind the data, its edge already reported, so a short read does not mean "drained".
    hup: bool,
    /// WRITABLE is in the registered interest (only while connecting or owing bytes, so an
    /// idle link costs no wake-ups).
    write_interest: bool,
}

impl Socket {
    fn new(token: Token) -> Socket {
        Socket {
            token,
            stream: None,
            connecting: false,
            readable: false,
            writable: false,
            hup: false,
            write_interest: false,
        }
    }
}

/// The Redis link and its two sockets. See the module doc.
pub struct Bridge {
    link: Link,
    addr: SocketAddr,
    sockets: [Socket; 2],
}

impl Bridge {
    /// A bridge to `url`, its first connection attempt due at `now`. `tokens` are the poll
    /// tokens of the subscriber and the publisher connections.
    pub fn new(url: &BridgeUrl, max_queue: usize, tokens: [Token; 2], now: Instant) -> Bridge {
        let node = node_id();
        log::info!("bridge: node {node:016x}, {url}");
        Bridge {
            link: Link::new(
                url.to_string(),
                url.channel.as_bytes(),
                node,
                max_queue,
                now,
            ),
            addr: url.addr,
            sockets: tokens.map(Socket::new),
        }
    }

    /// An event for `token`: if it is one of ours, note what it says (a hint, as always).
    pub fn on_event(&mut self, event: &mio::event::Event) {
        let Some(s) = self.sockets.iter_mut().find(|s| s.token == event.token()) else {
            return;
        };
        let failed = event.is_error();
        s.readable |= event.is_readable() || event.is_read_closed() || failed;
        s.hup |= event.is_read_closed() || failed;
        s.writable |= event.is_writable() || event.is_write_closed() || failed;
    }

    /// A batch local members sent (they have had it already). Published if the link is up and
    /// the queue has room; dropped and counted otherwise.
    pub fn publish(&mut self, batch: &[u8]) {
        self.link.publish(batch);
    }

    /// A turn's first half, before the room is flushed: timers, connects, and reads within
    /// the budget. What other nodes said is then in [`Bridge::poll_lines`], so it leaves in
    /// the same write to each member as this turn's local lines.
    pub fn receive(&mut self, now: Instant, scratch: &mut [u8], registry: &Registry) {
        self.link.handle_timeout(now);
        self.carry_out(registry, now);
        for conn in Conn::BOTH {
            self.check_connect(conn, now);
        }
        self.carry_out(registry, now);
        for conn in Conn::BOTH {
            self.read(conn, scratch, now);
        }
        self.carry_out(registry, now);
    }

    /// A turn's second half, after the room was flushed (local members first): write what the
    /// link owes — this turn's batches, a SUBSCRIBE.
    pub fn send(&mut self, now: Instant, registry: &Registry) {
        for conn in Conn::BOTH {
            self.write(conn, now);
        }
        self.carry_out(registry, now);
        self.update_interest(registry, now);
    }

    /// The next batch another node published, for the room.
    pub fn poll_lines(&mut self) -> Option<(Rc<[u8]>, usize)> {
        self.link.poll_lines()
    }

    /// Is there input left over from this turn's budget (so `poll` must not sleep)?
    pub fn busy(&self) -> bool {
        self.sockets
            .iter()
            .any(|s| s.readable && s.stream.is_some() && !s.connecting)
    }

    /// When [`Bridge::receive`] must run even without an event (backoff, connect timeout).
    pub fn deadline(&self) -> Option<Instant> {
        self.link.deadline()
    }

    /// Has every batch been confirmed by Redis or given up on? A graceful stop waits for this.
    pub fn flushed(&self) -> bool {
        self.link.flushed()
    }

    /// Bytes still owed to Redis.
    pub fn queued(&self) -> usize {
        self.link.queued()
    }

    /// The link's counters.
    pub fn counters(&self) -> Counters {
        self.link.counters()
    }

    // ---------------------------------------------------------------- the syscalls

    /// Carry out what the link asks: open or close both sockets.
    fn carry_out(&mut self, registry: &Registry, now: Instant) {
        while let Some(action) = self.link.poll_action() {
            match action {
                Action::Connect => {
                    for conn in Conn::BOTH {
                        if let Err(e) = self.connect(conn, registry) {
                            self.link.handle_closed(conn, &e.to_string(), now);
                            break;
                        }
                    }
                }
                // Dropping a stream closes it, which also removes it from epoll.
                Action::Close => {
                    for s in &mut self.sockets {
                        *s = Socket::new(s.token);
                    }
                }
            }
        }
    }

    /// Start a non-blocking connect: `connect(2)` returns at once with EINPROGRESS, and the
    /// socket turns writable when the handshake is done (or failed).
    fn connect(&mut self, conn: Conn, registry: &Registry) -> io::Result<()> {
        let s = &mut self.sockets[conn as usize];
        let mut stream = TcpStream::connect(self.addr)?;
        // Small messages, sent at once: Nagle would hold a PUBLISH while the last one is
        // unacknowledged, adding a round trip to cross-node latency.
        stream.set_nodelay(true)?;
        registry.register(
            &mut stream,
            s.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        *s = Socket {
            stream: Some(stream),
            connecting: true,
            write_interest: true,
            ..Socket::new(s.token)
        };
        Ok(())
    }

    /// A connecting socket had an event: find out whether the handshake finished (not yet: a
    /// spurious wake-up).
    fn check_connect(&mut self, conn: Conn, now: Instant) {
        let s = &mut self.sockets[conn as usize];
        let Some(stream) = &s.stream else { return };
        if !s.connecting || !(s.writable || s.readable) {
            return;
        }
        match connect_finished(stream) {
            Ok(true) => {
                s.connecting = false;
                self.link.handle_connected(conn);
            }
            Ok(false) => {
                s.writable = false;
                s.readable = false;
            }
            Err(e) => self.link.handle_closed(conn, &e.to_string(), now),
        }
    }

    /// Write what the link owes on `conn`, until done or the socket is full.
    fn write(&mut self, conn: Conn, now: Instant) {
        let s = &mut self.sockets[conn as usize];
        let Some(stream) = &s.stream else { return };
        while s.writable && !s.connecting {
            let bytes = self.link.transmit(conn);
            if bytes.is_empty() {
                return;
            }
            match retry(|| (&*stream).write(bytes)) {
                Ok(0) => {
                    self.link.handle_closed(conn, "write returned 0", now);
                    return;
                }
                Ok(n) => self.link.on_written(conn, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.writable = false,
                Err(e) => {
                    self.link.handle_closed(conn, &e.to_string(), now);
                    return;
                }
            }
        }
    }

    /// Read from `conn`, at most [`READ_BUDGET`] bytes, handing each read to the link.
    fn read(&mut self, conn: Conn, scratch: &mut [u8], now: Instant) {
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let s = &mut self.sockets[conn as usize];
            let Some(stream) = &s.stream else { return };
            if !s.readable || s.connecting {
                return;
            }
            let want = budget.min(scratch.len());
            match retry(|| (&*stream).read(&mut scratch[..want])) {
                Ok(0) => {
                    // Redis closed it: a restart, `CLIENT KILL`, or its output limit for slow
                    // subscribers.
                    self.link.handle_closed(conn, "closed by Redis", now);
                    return;
                }
                Ok(n) => {
                    // A short read: the receive queue is empty for now (as in `connection.rs`) —
                    // unless an EOF is known to follow: Redis's output limit closes a node that
                    // stopped reading, and the EOF queues behind megabytes no new edge reports.
                    if n < want && !s.hup {
                        s.readable = false;
                    }
                    budget -= n;
                    self.link.handle_input(conn, &scratch[..n], now);
                    if self.link.state() == link::State::Down {
                        return; // what it read took the link down; the socket is closing
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.readable = false,
                Err(e) => {
                    self.link.handle_closed(conn, &e.to_string(), now);
                    return;
                }
            }
        }
    }

    /// Ask for WRITABLE only while connecting or owing bytes.
    fn update_interest(&mut self, registry: &Registry, now: Instant) {
        for conn in Conn::BOTH {
            let want = !self.link.transmit(conn).is_empty();
            let s = &mut self.sockets[conn as usize];
            let Some(stream) = &mut s.stream else {
                continue;
            };
            let want = want || s.connecting;
            if want == s.write_interest {
                continue;
            }
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match registry.reregister(stream, s.token, interest) {
                Ok(()) => s.write_interest = want,
                Err(e) => {
                    self.link.handle_closed(conn, &e.to_string(), now);
                    self.carry_out(registry, now);
                    return;
                }
            }
        }
    }
}

/// 64 random bits for the node id. Should the kernel's pool fail us, the time and the process
/// id make a value no other node is likely to share.
fn node_id() -> u64 {
    if let Ok(random) = crate::storage::random_u64() {
        return random;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
