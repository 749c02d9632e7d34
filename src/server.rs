//! The event loop: one thread, one `mio::Poll`, every socket.
//!
//! Where the Go seeds run a goroutine per connection and let each block in `Accept`, `Read` or
//! `Write`, this loop asks the kernel which sockets are ready and does a bounded amount of work
//! for each, never blocking. One turn of the loop:
//!
//! 1. `poll` — sleep until a socket is ready, a timer is due, or a stop is requested (never
//!    sleep if the run queue already holds work);
//! 2. record what each event says (a hint: the next read or write finds out the truth) and put
//!    the connection on the run queue;
//! 3. accept new clients (at most [`ACCEPTS_PER_TURN`] per listener), echo UDP datagrams;
//! 4. visit every connection on the run queue once: flush, read, hand bytes to its service,
//!    each bounded by [`IO_BUDGET`]. A connection with work left goes back on the queue for the
//!    next turn — edge-triggered readiness will not remind us. Broadcast lines read in a visit
//!    are queued (by reference) to every other member of the room;
//! 5. flush every broadcast recipient that got lines this turn, once, in one vectored write —
//!    so lines from several senders in one turn cost each recipient one syscall;
//! 6. fire due timers (idle and closing timeouts, the drain deadline, the stats line);
//! 7. sweep: free the connections that reached CLOSED during this turn. Freeing is deferred to
//!    here so a slab slot is never reused while an event for its old owner may still be in the
//!    batch being processed.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::Config;
use crate::connection::{Connection, ReadOutcome};
use crate::lifecycle::{AbortReason, CloseReason, Event, Phase};
use crate::listener::{self, Accepted, Acceptor};
use crate::service::broadcast::LINE_TOO_LONG;
use crate::service::files::Outcome;
use crate::service::{Output, ServiceKind, Session, echo};
use crate::shutdown::Handle;
use crate::stats::{Snapshot, Stats};
use crate::storage::Store;
use crate::timer::Timers;
use crate::udp::{self, UdpEcho};

// Fixed sockets get fixed tokens; connections get `FIRST_CONN + slab key`.
const ECHO_LISTENER: Token = Token(0);
const BROADCAST_LISTENER: Token = Token(1);
const FILES_LISTENER: Token = Token(2);
const UDP_SOCKET: Token = Token(8);
const SIGNALS: Token = Token(9);
const WAKER: Token = Token(10);
const FIRST_CONN: usize = 16;

/// Bytes read from, and bytes written to, one connection per visit. Large enough that a bulk
/// transfer pays a loop turn per 64 KiB, small enough that one fast client delays the others by
/// microseconds, not milliseconds.
pub const IO_BUDGET: usize = 64 * 1024;

/// New connections accepted per listener per turn: a connect flood is served in slices, between
/// which the existing clients get their turn.
pub const ACCEPTS_PER_TURN: usize = 256;

/// How long to stop accepting when the kernel has no descriptor or memory to give (nginx waits
/// similarly); the clients wait in the backlog meanwhile.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Events taken from the kernel per `poll`.
const EVENTS_CAPACITY: usize = 1024;

/// The read buffer shared by every connection: bytes live here only between a `read` and the
/// write that echoes them, so an idle connection owns no buffer at all.
const SCRATCH: usize = 64 * 1024;

/// A socket the server is serving on: what `listening <service> <proto> <addr>` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub service: ServiceKind,
    pub addr: SocketAddr,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listening {} {} {}",
            self.service,
            self.service.proto(),
            self.addr
        )
    }
}

/// A bound, not yet running server. `bind`, read [`Server::bound`] and [`Server::handle`], then
/// [`Server::run`] until it is stopped.
pub struct Server {
    poll: Poll,
    events: Events,
    core: Core,
}

struct Listener {
    service: ServiceKind,
    token: Token,
    acceptor: Acceptor,
    /// The last accept pass stopped at its cap: connections may still be waiting.
    pending: bool,
}

/// Everything but the poller, so the loop can iterate the events while mutating the rest.
struct Core {
    registry: Registry,
    config: Config,
    listeners: Vec<Listener>,
    udp: Option<UdpEcho>,
    /// The receiving directory, if the files service runs.
    store: Option<Store>,
    bound: Vec<Bound>,

    conns: Slab<Connection>,
    /// Connections to visit this turn (events) and next turn (leftover work).
    run_queue: Vec<usize>,
    /// Connections that reached CLOSED this turn, freed by the sweep.
    closed: Vec<usize>,
    /// The broadcast room: every broadcast connection, by slab key. Lines go to the members
    /// that are ESTABLISHED (a client that half-closed gets what was queued, then EOF).
    room: Vec<usize>,
    /// Line batches read during one visit, fanned out once the sender is released.
    outbox: Vec<(Rc<[u8]>, usize)>,
    /// Broadcast recipients that got lines this turn and must be flushed before the next poll.
    flush_list: Vec<usize>,
    /// During a drain: some broadcast member still has input to read that was received before
    /// the stop. Until it is read (and its lines queued to everyone), no member is closed, so
    /// a line acknowledged before the stop reaches every member still connected.
    bcast_inputs_pending: bool,
    timers: Timers,
    scratch: Box<[u8]>,
    next_id: u64,

    stats: Stats,
    next_stats: Option<Instant>,
    accept_paused_until: Option<Instant>,
    last_reject_log: Option<Instant>,

    handle: Handle,
    signals: Option<Signals>,
    signals_seen: usize,
    stop_requests: usize,
    draining_until: Option<Instant>,
    stop_now: bool,
    /// The time, read once per turn: every decision in a turn uses the same clock.
    now: Instant,
}

impl Server {
    /// Bind every configured socket and set up the poller. Errors name the socket that failed.
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let handle = Handle::new(Waker::new(&registry, WAKER)?);

        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        let context = |service: ServiceKind, addr: SocketAddr| {
            move |e: io::Error| {
                io::Error::new(
                    e.kind(),
                    format!("cannot bind {service} {} {addr}: {e}", service.proto()),
                )
            }
        };
        let tcp_services = [
            (ServiceKind::Echo, config.echo, ECHO_LISTENER),
            (ServiceKind::Broadcast, config.broadcast, BROADCAST_LISTENER),
            (ServiceKind::Files, config.files, FILES_LISTENER),
        ];
        for (service, addr, token) in tcp_services {
            let Some(addr) = addr else { continue };
            let mut tcp =
                listener::bind_tcp(addr, config.keepalive).map_err(context(service, addr))?;
            registry.register(&mut tcp, token, Interest::READABLE)?;
            bound.push(Bound {
                service,
                addr: tcp.local_addr()?,
            });
            listeners.push(Listener {
                service,
                token,
                acceptor: Acceptor::new(tcp),
                pending: true,
            });
        }
        let udp = match config.udp {
            Some(addr) => {
                let service = ServiceKind::Udp;
                let mut socket = listener::bind_udp(addr).map_err(context(service, addr))?;
                registry.register(&mut socket, UDP_SOCKET, Interest::READABLE)?;
                bound.push(Bound {
                    service,
                    addr: socket.local_addr()?,
                });
                Some(UdpEcho::new(socket))
            }
            None => None,
        };
        if bound.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no service configured",
            ));
        }
        let store = match config.files {
            Some(_) => Some(Store::open(&config.dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot use directory {}: {e}", config.dir.display()),
                )
            })?),
            None => None,
        };
        let signals = if config.handle_signals {
            let mut signals = Signals::new([SIGINT, SIGTERM])?;
            registry.register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };

        let now = Instant::now();
        Ok(Server {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            core: Core {
                registry,
                next_stats: config.stats_interval.map(|i| now + i),
                config,
                listeners,
                udp,
                store,
                bound,
                conns: Slab::new(),
                run_queue: Vec::new(),
                closed: Vec::new(),
                room: Vec::new(),
                outbox: Vec::new(),
                flush_list: Vec::new(),
                bcast_inputs_pending: false,
                timers: Timers::new(),
                scratch: vec![0; SCRATCH.max(udp::MAX_DATAGRAM)].into_boxed_slice(),
                next_id: 1,
                stats: Stats::default(),
                accept_paused_until: None,
                last_reject_log: None,
                handle,
                signals,
                signals_seen: 0,
                stop_requests: 0,
                draining_until: None,
                stop_now: false,
                now,
            },
        })
    }

    /// The sockets bound, with their actual addresses (port 0 resolved).
    pub fn bound(&self) -> Vec<Bound> {
        self.core.bound.clone()
    }

    /// A handle that stops this server from another thread.
    pub fn handle(&self) -> Handle {
        self.core.handle.clone()
    }

    /// Serve until stopped (a signal or [`Handle::shutdown`]) and every connection has been
    /// drained or the drain timeout passed. Returns the totals.
    pub fn run(mut self) -> io::Result<Stats> {
        loop {
            let timeout = self.core.poll_timeout();
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let core = &mut self.core;
            core.now = Instant::now();
            for event in self.events.iter() {
                core.dispatch(event);
            }
            core.turn();
            if core.finished() {
                return Ok(core.finish());
            }
        }
    }
}

impl Core {
    /// How long `poll` may sleep: not at all if work is waiting, else until the next deadline.
    fn poll_timeout(&self) -> Option<Duration> {
        let accept_ready = self.accept_paused_until.is_none();
        if !self.run_queue.is_empty()
            || (accept_ready && self.listeners.iter().any(|l| l.pending))
            || self.udp.as_ref().is_some_and(|u| u.ready)
            || self.stop_requested()
        {
            return Some(Duration::ZERO);
        }
        let deadline = [
            self.timers.next_deadline(),
            self.draining_until,
            self.accept_paused_until,
            self.next_stats,
        ]
        .into_iter()
        .flatten()
        .min();
        deadline.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Step 2: note what one event says.
    fn dispatch(&mut self, event: &mio::event::Event) {
        match event.token() {
            SIGNALS => self.collect_signals(),
            WAKER => {} // stop requests are read once per turn
            UDP_SOCKET => {
                if let Some(udp) = &mut self.udp {
                    udp.ready = true;
                }
            }
            Token(t) if t >= FIRST_CONN => {
                let key = t - FIRST_CONN;
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.on_readiness(event);
                    enqueue(&mut self.run_queue, conn, key);
                }
            }
            token => {
                if let Some(l) = self.listeners.iter_mut().find(|l| l.token == token) {
                    l.pending = true;
                }
            }
        }
    }

    /// Steps 3 to 7.
    fn turn(&mut self) {
        self.handle_stop_requests();
        if self.accept_paused_until.is_some_and(|t| t <= self.now) {
            self.accept_paused_until = None;
        }
        for i in 0..self.listeners.len() {
            if self.listeners[i].pending && self.accept_paused_until.is_none() {
                self.accept_some(i);
            }
        }
        if let Some(udp) = &mut self.udp {
            udp.echo(&mut self.scratch, &mut self.stats);
        }

        let mut queue = std::mem::take(&mut self.run_queue);
        for &key in &queue {
            // `queued` is false if this key was freed and reused since it was queued.
            if let Some(conn) = self.conns.get_mut(key)
                && conn.queued
            {
                conn.queued = false;
                self.visit(key);
            }
        }
        queue.clear();
        if self.run_queue.is_empty() {
            self.run_queue = queue; // keep the allocation
        }

        self.flush_recipients();
        self.fire_timers();
        self.check_drain();
        self.sweep();
    }

    /// Accept waiting clients on listener `i`, at most [`ACCEPTS_PER_TURN`].
    fn accept_some(&mut self, i: usize) {
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listeners[i].acceptor.accept() {
                Accepted::Conn(stream, peer) => {
                    let service = self.listeners[i].service;
                    self.admit(stream, peer, service);
                }
                Accepted::Empty => {
                    self.listeners[i].pending = false;
                    return;
                }
                Accepted::Shed => {
                    self.stats.rejected += 1;
                    self.log_rejection("out of file descriptors");
                }
                Accepted::Pause(e) => {
                    warn!(
                        "accept on {}: {e}; pausing accepts for {ACCEPT_PAUSE:?}",
                        self.listeners[i].service
                    );
                    self.accept_paused_until = Some(self.now + ACCEPT_PAUSE);
                    return;
                }
            }
        }
        // The cap was reached; `pending` stays set, so the next turn accepts more.
    }

    /// Take a new client in, or turn it away if `--max-conns` is reached.
    fn admit(&mut self, stream: mio::net::TcpStream, peer: SocketAddr, service: ServiceKind) {
        if self.conns.len() >= self.config.max_conns {
            listener::reject(stream);
            self.stats.rejected += 1;
            self.log_rejection("--max-conns reached");
            return;
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let id = self.next_id;
        self.next_id += 1;
        if let Some(idle) = self.config.keepalive {
            listener::spread_keepalive(&stream, idle, id);
        }
        let mut conn = Connection::new(id, stream, peer, service, self.now);
        if let Err(e) = conn.register(&self.registry, Token(FIRST_CONN + key)) {
            warn!("conn {id} {peer}: cannot register: {e}");
            return;
        }
        debug!("conn {id} {peer} LISTEN -> ESTABLISHED (accepted on {service})");
        if let Session::Broadcast(member) = &mut conn.session {
            member.room_slot = self.room.len();
            self.room.push(key);
        }
        entry.insert(conn);
        self.stats.accepted += 1;
        self.after_visit(key, false);
    }

    fn log_rejection(&mut self, why: &str) {
        // A flood would log a line per client; one line a second says the same.
        if self
            .last_reject_log
            .is_none_or(|t| self.now >= t + Duration::from_secs(1))
        {
            warn!(
                "turning clients away: {why} ({} rejected so far)",
                self.stats.rejected
            );
            self.last_reject_log = Some(self.now);
        }
    }

    /// Step 4 for one connection: flush, read, deliver, each within its budget.
    fn visit(&mut self, key: usize) {
        let max_buffer = self.config.max_buffer;
        let max_line = self.config.max_line;
        let limits = self.config.file_limits();
        let now = self.now;
        let conn = &mut self.conns[key];
        if conn.phase() == Phase::Closed {
            return;
        }
        let moved_before = conn.bytes_in + conn.bytes_out;
        let service = conn.service();

        // Write first: it frees queue space, which may lift the read pause below.
        conn.flush(IO_BUDGET);
        if service == ServiceKind::Echo {
            conn.update_flow(max_buffer);
        }

        let mut budget = IO_BUDGET;
        while budget > 0 && conn.wants_read() {
            let want = conn.read_allowance(budget.min(self.scratch.len()));
            match conn.read(&mut self.scratch[..want]) {
                ReadOutcome::Data(n) => {
                    budget -= n;
                    let data = &self.scratch[..n];
                    if !conn.phase().delivers_input() {
                        // A closing phase reads only to find the peer's FIN.
                        conn.discarded += n as u64;
                        continue;
                    }
                    match &mut conn.session {
                        Session::Echo => {
                            echo::on_input(data, conn);
                            conn.update_flow(max_buffer);
                        }
                        Session::Broadcast(member) => {
                            let framed = member.framer.push(data, max_line);
                            if let Some(lines) = framed.lines {
                                self.outbox.push((lines, framed.count));
                            }
                            if framed.too_long {
                                conn.send(LINE_TOO_LONG);
                                conn.step(Event::Close(CloseReason::Protocol("line too long")));
                            }
                        }
                        Session::Files(transfer) => {
                            let store = self.store.as_mut().expect("files service has a store");
                            let outcome = transfer.on_input(data, now, store, &limits);
                            apply_files(conn, outcome, &mut self.stats);
                        }
                    }
                }
                ReadOutcome::Eof => {
                    // Nothing a client sent is lost: a last line without "\n" still goes out.
                    if conn.phase().delivers_input() {
                        match &mut conn.session {
                            Session::Echo => {}
                            Session::Broadcast(member) => {
                                if let Some(line) = member.framer.finish() {
                                    self.outbox.push((line, 1));
                                }
                            }
                            Session::Files(transfer) => {
                                let outcome = transfer.on_eof();
                                apply_files(conn, outcome, &mut self.stats);
                            }
                        }
                    }
                    conn.step(Event::PeerFin);
                }
                ReadOutcome::WouldBlock | ReadOutcome::Failed => {}
            }
        }

        // Graceful shutdown closes a connection once it has served what was pending and owes
        // nothing (and, for broadcast, once no member has unread lines that it might owe).
        if conn.phase() == Phase::Established
            && conn.is_drained()
            && (service != ServiceKind::Broadcast || !self.bcast_inputs_pending)
        {
            if service == ServiceKind::Files {
                // A client still sending its header is waiting for a reply: give it one.
                conn.send(b"error: server shutting down\n");
            }
            conn.step(Event::Close(CloseReason::Shutdown));
        }
        conn.settle();
        let moved = conn.bytes_in + conn.bytes_out != moved_before;

        if !self.outbox.is_empty() {
            let mut outbox = std::mem::take(&mut self.outbox);
            for (lines, count) in outbox.drain(..) {
                self.fan_out(key, lines, count);
            }
            self.outbox = outbox;
        }
        self.after_visit(key, moved);
    }

    /// Queue a batch of lines from `sender` to every other established member of the room: a
    /// pointer each, no copy. A recipient whose queue passes the hard limit is evicted on the
    /// spot: a slow consumer must never slow the sender or the other recipients, nor grow the
    /// server's memory without bound. The writes happen in [`Core::flush_recipients`].
    fn fan_out(&mut self, sender: usize, lines: Rc<[u8]>, count: usize) {
        self.stats.lines_in += count as u64;
        for &key in &self.room {
            let conn = &mut self.conns[key];
            if key == sender || conn.phase() != Phase::Established {
                continue;
            }
            conn.queue_shared(lines.clone());
            self.stats.lines_out += count as u64;
            let queued = conn.queue_footprint();
            if queued > self.config.bcast_hard_limit {
                warn!(
                    "conn {} {} evicted: {queued} bytes queued, over the hard limit of {}",
                    conn.id, conn.peer, self.config.bcast_hard_limit
                );
                conn.step(Event::Abort(AbortReason::Evicted(
                    "output over the hard limit",
                )));
                self.stats.evicted += 1;
            }
            if !conn.flush_pending {
                conn.flush_pending = true;
                self.flush_list.push(key);
            }
        }
    }

    /// Step 5: write out what fan-out queued this turn, one vectored write per recipient.
    fn flush_recipients(&mut self) {
        let mut list = std::mem::take(&mut self.flush_list);
        for &key in &list {
            let conn = &mut self.conns[key];
            conn.flush_pending = false;
            let before = conn.bytes_out;
            conn.flush(IO_BUDGET);
            conn.settle();
            let moved = conn.bytes_out != before;
            self.after_visit(key, moved);
        }
        list.clear();
        self.flush_list = list;
    }

    /// Bookkeeping after anything happened to a connection: activity time, CLOSED, closing
    /// deadline, registered interest, run queue, timer.
    fn after_visit(&mut self, key: usize, moved: bool) {
        let now = self.now;
        let conn = &mut self.conns[key];
        if moved {
            conn.last_active = now;
        }
        if conn.phase().is_closing_actively() && conn.closing_deadline.is_none() {
            conn.closing_deadline = Some(now + self.config.close_timeout);
        }
        conn.update_interest(&self.registry, Token(FIRST_CONN + key));
        if conn.phase() == Phase::Closed {
            self.closed.push(key);
            return;
        }
        if conn.wants_read() || conn.wants_flush() {
            enqueue(&mut self.run_queue, conn, key);
        }
        let footprint = conn.queue_footprint();
        if let Session::Broadcast(member) = &mut conn.session {
            // The soft limit's clock runs only while the queue stays over it.
            if footprint > self.config.bcast_soft_limit {
                member.over_soft_since.get_or_insert(now);
            } else {
                member.over_soft_since = None;
            }
        }
        if let Some(at) = conn.deadline(&self.config)
            && conn.timer_at.is_none_or(|t| at < t)
        {
            conn.timer_at = Some(at);
            self.timers.schedule(at, key);
        }
    }

    /// Step 5: act on every connection timer that is due.
    fn fire_timers(&mut self) {
        while let Some((at, key)) = self.timers.pop_due(self.now) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue; // the connection is gone
            };
            if conn.timer_at != Some(at) {
                continue; // superseded by an earlier entry, or the slot was reused
            }
            conn.timer_at = None;
            let now = self.now;
            let moved_before = conn.bytes_in + conn.bytes_out;
            if conn.phase().is_closing_actively() {
                if conn.closing_deadline.is_some_and(|d| d <= now) {
                    conn.step(Event::Abort(AbortReason::CloseTimeout));
                }
            } else {
                let soft_time = self.config.bcast_soft_time;
                let limits = self.config.file_limits();
                if conn
                    .over_soft_since()
                    .is_some_and(|since| since + soft_time <= now)
                {
                    warn!(
                        "conn {} {} evicted: {} bytes queued, over the soft limit of {} \
                         for {soft_time:?}",
                        conn.id,
                        conn.peer,
                        conn.queue_footprint(),
                        self.config.bcast_soft_limit
                    );
                    self.stats.evicted += 1;
                    conn.step(Event::Abort(AbortReason::Evicted(
                        "output over the soft limit",
                    )));
                } else if let Session::Files(transfer) = &mut conn.session
                    && transfer.deadline(&limits).is_some_and(|d| d <= now)
                {
                    let store = self.store.as_mut().expect("files service has a store");
                    let outcome = transfer.on_timer(now, store, &limits);
                    apply_files(conn, outcome, &mut self.stats);
                }
                if self
                    .config
                    .idle_timeout
                    .is_some_and(|idle| conn.last_active + idle <= now)
                {
                    let event = match conn.phase() {
                        Phase::Established => Event::Close(CloseReason::Idle),
                        // CLOSE-WAIT that made no progress for the idle timeout: the peer
                        // reads nothing of what we owe it. There is no orderly way left.
                        _ => Event::Abort(AbortReason::IdleTimeout),
                    };
                    conn.step(event);
                }
                conn.settle();
            }
            let moved = conn.bytes_in + conn.bytes_out != moved_before;
            self.after_visit(key, moved);
        }

        if let Some(at) = self.next_stats
            && at <= self.now
        {
            info!("stats: {}", self.snapshot());
            let interval = self.config.stats_interval.unwrap_or(Duration::MAX);
            self.next_stats = Some((at + interval).max(self.now));
        }
    }

    /// Step 6: free every connection that reached CLOSED this turn. Dropping the stream closes
    /// the descriptor, which also removes it from epoll: no explicit deregister needed, since
    /// the descriptor is never shared.
    fn sweep(&mut self) {
        for key in self.closed.drain(..) {
            if self
                .conns
                .get(key)
                .is_some_and(|c| c.phase() == Phase::Closed)
            {
                let conn = self.conns.remove(key);
                if let Session::Broadcast(member) = &conn.session {
                    let slot = member.room_slot;
                    self.room.swap_remove(slot);
                    if let Some(&moved) = self.room.get(slot)
                        && let Session::Broadcast(m) = &mut self.conns[moved].session
                    {
                        m.room_slot = slot;
                    }
                }
                self.stats.closed += 1;
                self.stats.bytes_in += conn.bytes_in;
                self.stats.bytes_out += conn.bytes_out;
                self.stats.discarded += conn.discarded;
                debug!(
                    "conn {} {} released: {} bytes in, {} out",
                    conn.id, conn.peer, conn.bytes_in, conn.bytes_out
                );
            }
        }
    }

    // --- stopping ---

    fn collect_signals(&mut self) {
        if let Some(signals) = &mut self.signals {
            for signal in signals.pending() {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                info!("received {name}");
                self.signals_seen += 1;
            }
        }
    }

    fn stop_requested(&self) -> bool {
        self.handle.requests() + self.signals_seen > self.stop_requests
    }

    /// The first stop request starts the drain; the second stops at once.
    fn handle_stop_requests(&mut self) {
        let requests = self.handle.requests() + self.signals_seen;
        if requests <= self.stop_requests {
            return;
        }
        if self.stop_requests == 0 {
            self.begin_drain();
        }
        if requests >= 2 {
            info!("second stop request: closing every connection now");
            self.stop_now = true;
            self.abort_all();
        }
        self.stop_requests = requests;
    }

    /// Stop accepting and let every connection finish: each is closed through FIN-WAIT once it
    /// has no unread input and no unsent output.
    fn begin_drain(&mut self) {
        info!(
            "shutting down: listeners closed, draining {} connection(s) for at most {:?}",
            self.conns.len(),
            self.config.drain_timeout
        );
        self.draining_until = Some(self.now + self.config.drain_timeout);
        // Dropping a listener closes it; clients still in its backlog are refused.
        self.listeners.clear();
        self.udp = None;
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            conn.begin_drain();
            enqueue(&mut self.run_queue, conn, key);
        }
        self.bcast_inputs_pending = !self.room.is_empty();
    }

    fn check_drain(&mut self) {
        let Some(until) = self.draining_until else {
            return;
        };
        if until <= self.now && !self.conns.is_empty() {
            warn!(
                "drain timeout: closing {} connection(s) that did not finish",
                self.conns.len()
            );
            self.abort_all();
            return;
        }
        if self.bcast_inputs_pending {
            let conns = &self.conns;
            let unread = self.room.iter().any(|&key| {
                let c = &conns[key];
                c.phase() == Phase::Established && c.read_allowance(1) > 0
            });
            if !unread {
                // Every line received before the stop is queued: members may now close once
                // they owe nothing. Visit them all so the idle ones do.
                self.bcast_inputs_pending = false;
                for &key in &self.room {
                    enqueue(&mut self.run_queue, &mut self.conns[key], key);
                }
            }
        }
    }

    fn abort_all(&mut self) {
        for (key, conn) in self.conns.iter_mut() {
            if conn.phase() != Phase::Closed {
                conn.step(Event::Abort(AbortReason::Drain));
                self.closed.push(key);
            }
        }
    }

    fn finished(&self) -> bool {
        (self.draining_until.is_some() || self.stop_now) && self.conns.is_empty()
    }

    // --- stats ---

    /// The totals so far, including what live connections have moved.
    fn totals(&self) -> Stats {
        let mut totals = self.stats.clone();
        for (_, conn) in &self.conns {
            totals.bytes_in += conn.bytes_in;
            totals.bytes_out += conn.bytes_out;
            totals.discarded += conn.discarded;
        }
        totals
    }

    fn snapshot(&self) -> Snapshot {
        let mut phases = [0; Phase::ALL.len()];
        for (_, conn) in &self.conns {
            phases[conn.phase().index()] += 1;
        }
        Snapshot {
            totals: self.totals(),
            phases,
        }
    }

    fn finish(&mut self) -> Stats {
        let snapshot = self.snapshot();
        info!("stopped; totals: {snapshot}");
        snapshot.totals
    }
}

/// Carry out what the files service decided for a connection.
fn apply_files(conn: &mut Connection, outcome: Outcome, stats: &mut Stats) {
    match outcome {
        Outcome::Continue => {}
        Outcome::Reply(bytes) => conn.send(bytes),
        Outcome::Done { line, name, bytes } => {
            info!(
                "conn {} {} stored {name:?} ({bytes} bytes)",
                conn.id, conn.peer
            );
            stats.files_stored += 1;
            conn.send(line.as_bytes());
        }
        Outcome::Refuse(reason) => {
            info!(
                "conn {} {} file transfer refused: {reason}",
                conn.id, conn.peer
            );
            stats.files_refused += 1;
            conn.send(format!("error: {reason}\n").as_bytes());
            conn.step(Event::Close(CloseReason::Protocol("file transfer refused")));
        }
    }
}

/// Put a connection on the run queue unless it is there already.
fn enqueue(run_queue: &mut Vec<usize>, conn: &mut Connection, key: usize) {
    if !conn.queued {
        conn.queued = true;
        run_queue.push(key);
    }
}
