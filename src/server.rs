//! The event loop: one thread, one `mio::Poll`, every socket.
//!
//! Where the Go seeds run a goroutine per connection and let each block in `Accept`, `Read` or
//! `Write`, this loop asks the kernel which sockets are ready and does a bounded amount of work
//! for each, never blocking. [`Server::run`] is the whole loop; one turn is seven steps:
//!
//! 1. **poll** — sleep until a socket is ready, a deadline is due or a stop is requested; never
//!    sleep while the run queue holds work ([`Core::poll_timeout`]);
//! 2. **note** what each event says — a hint: the next read or write finds out the truth — and
//!    put the connection on the run queue ([`Core::note`]);
//! 3. **take in** stop requests, new clients (at most
//!    [`ACCEPTS_PER_TURN`](listener::ACCEPTS_PER_TURN) per listener) and UDP datagrams
//!    ([`Core::take_in`]);
//! 4. **visit** every connection on the run queue once: flush, read, hand the bytes to its
//!    service and carry out what the service asks, within a budget — [`BULK_BUDGET`] shared
//!    by the connections ready this turn, at least [`IO_BUDGET`] each
//!    ([`Core::visit_ready`]). A connection with work left goes back on the queue for the
//!    next turn — edge-triggered readiness will not remind us. Lines a broadcast member sent
//!    are fanned out to the room as soon as its visit ends;
//! 5. **bound memory**: write to every broadcast member that got lines this turn, once, in
//!    one vectored write — lines from several senders cost each member one syscall — then, if
//!    clients pin more than `--max-memory` in total, disconnect the largest
//!    ([`Core::bound_memory`]). With `--bridge`, what other nodes said joins the room just
//!    before ([`Core::bridge_in`]), and what local members said is published just after —
//!    they have it first ([`Core::bridge_out`]);
//! 6. **fire timers**: idle and closing timeouts, output limits, file deadlines, the stats
//!    line, and the drain's progress and deadline ([`Core::fire_timers`]);
//! 7. **sweep**: free the connections that reached CLOSED during this turn
//!    ([`Core::sweep`]). Freeing is deferred to here so a slab slot is never reused while an
//!    event for its old owner may still be in the batch being processed.
//!
//! Each step is one call into a type that owns its concern: [`Accepting`] (listeners),
//! [`UdpEcho`], the connections ([`TcpConn`] with its sans-IO [`Connection`] core, and a
//! [`Session`] of its service), the [`Room`], the [`Budget`], the [`Timers`], [`Stop`] and
//! [`Drain`].
//!
//! # Tokens
//!
//! | token | socket |
//! |---|---|
//! | 0, 1, 2 | the echo, broadcast and files listeners |
//! | 8 | the UDP socket |
//! | 9 | the signal pipe |
//! | 10 | the waker ([`Handle::shutdown`] from another thread) |
//! | 11, 12 | the bridge's subscriber and publisher connections to Redis (`--bridge`) |
//! | 16 + K | the client connection in slab slot K |

use std::io;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::{Events, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::bridge::Bridge;
use crate::budget::{self, Budget};
use crate::config::Config;
use crate::connection::{Connection, Input, Timeouts};
use crate::lifecycle::{AbortReason, CloseReason, Phase};
use crate::listener::{self, Accepting, Bound, NewClient};
use crate::room::{Eviction, Mailbox, Origin, OutputLimits, Room};
use crate::service::{Action, Actions, Cx, OnStop, Service, ServiceKind, Session, Shared};
use crate::shutdown::{Drain, Handle, Stop, StopStep};
use crate::stats::{Reporter, Snapshot, Stats, Ticker};
use crate::storage::Store;
use crate::tcp::TcpConn;
use crate::timer::Timers;
use crate::udp::{self, UdpEcho};

// Fixed sockets get fixed tokens; connections get `FIRST_CONN + slab key`.
const ECHO_LISTENER: Token = Token(0);
const BROADCAST_LISTENER: Token = Token(1);
const FILES_LISTENER: Token = Token(2);
const UDP_SOCKET: Token = Token(8);
const SIGNALS: Token = Token(9);
const WAKER: Token = Token(10);
const BRIDGE_SUB: Token = Token(11);
const BRIDGE_PUB: Token = Token(12);
const FIRST_CONN: usize = 16;

/// Bytes read from, and bytes written to, one connection per visit. Large enough that a bulk
/// transfer pays a loop turn per 64 KiB, small enough that one fast client delays the others by
/// microseconds, not milliseconds.
pub const IO_BUDGET: usize = 64 * 1024;

/// Clients refused at `--max-conns` that may be closed in order at once (each holds a
/// descriptor for up to `--close-timeout`); past it, refusals are immediate.
const MAX_REFUSING: usize = 16;

/// During a graceful stop, how often connections waiting for the peer's acknowledgement of
/// our FIN are looked at again.
const DRAIN_RECHECK: Duration = Duration::from_millis(20);

/// Events taken from the kernel per `poll`.
const EVENTS_CAPACITY: usize = 1024;

/// What the connections ready in one turn may read and write in all, shared among them (each
/// still gets at least [`IO_BUDGET`]): when few are ready, nobody waits behind them, so each
/// may take more per syscall — a bulk upload alone pays a loop turn, a read, a hash call and a
/// file write per MiB instead of per 64 KiB. Measured on a 1 GiB upload
/// (`benches/file_transfer.sh`): 64 KiB 0.78x `nc`, 256 KiB 1.09x, 1 MiB 1.15x; an echo
/// client's p99 during uploads is 1.5x its idle p99 (a visit takes ~0.4 ms), when the disk keeps up
/// (`benches/file_fairness.sh`; a disk under writeback throttling stalls the file writes).
pub const BULK_BUDGET: usize = 1024 * 1024;

/// The read buffer shared by every connection: bytes live here only between a `read` and the
/// write that echoes them (or the file write that stores them), so an idle connection owns no
/// buffer at all.
const SCRATCH: usize = BULK_BUDGET;

/// A bound, not yet running server. `bind`, read [`Server::bound`] and [`Server::handle`], then
/// [`Server::run`] until it is stopped.
pub struct Server {
    poll: Poll,
    events: Events,
    core: Core,
}

/// One client connection as the loop holds it.
struct Client {
    /// The socket and the sans-IO connection core.
    tcp: TcpConn,
    /// The service's state for this client.
    session: Session,
    /// The connection is on the run queue.
    queued: bool,
    /// The time of this connection's entry in the timer queue that counts (see `timer.rs`).
    timer_at: Option<Instant>,
    /// What this client pinned when the budget last heard of it (see `budget.rs`). Four bytes,
    /// not eight: an idle connection's size is what ten thousand of them cost, and one client
    /// pinning over 4 GiB is simply counted as 4 GiB.
    pinned: u32,
    /// Turned away at `--max-conns`, and being closed in order.
    refused: bool,
}

/// Everything but the poller, so the loop can iterate the events while mutating the rest.
struct Core {
    registry: Registry,
    config: Config,
    timeouts: Timeouts,
    accepting: Accepting,
    udp: Option<UdpEcho>,
    clients: Slab<Client>,
    /// Connections to visit this turn (events) and next turn (leftover work).
    run_queue: Vec<usize>,
    /// Connections that reached CLOSED this turn, freed by the sweep.
    closed: Vec<usize>,
    room: Room,
    /// The Redis link that spans the room over several processes (`--bridge`; None: no cost).
    bridge: Option<Bridge>,
    /// Clients refused at `--max-conns` that are still being closed in order.
    refusing: usize,
    /// `--max-memory`: what every client pins, in total.
    budget: Budget,
    /// What the services share: the store, their limits, the counters.
    shared: Shared,
    timers: Timers,
    stop: Stop,
    drain: Drain,
    /// During a drain, when to look again for connections the peer has acknowledged.
    drain_recheck: Option<Instant>,
    ticker: Ticker,
    reporter: Reporter,
    scratch: Box<[u8]>,
    bound: Vec<Bound>,
    next_id: u64,
    /// The time, read once per turn: every decision in a turn uses the same clock.
    now: Instant,
}

impl Server {
    /// Bind every configured socket and set up the poller. Errors name the socket that failed.
    pub fn bind(config: Config) -> io::Result<Server> {
        let warnings = config.check_against_system();
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let handle = Handle::new(Waker::new(&registry, WAKER)?);
        let stop = Stop::new(handle, &registry, config.handle_signals.then_some(SIGNALS))?;

        let tokens = listener::Tokens {
            echo: ECHO_LISTENER,
            broadcast: BROADCAST_LISTENER,
            files: FILES_LISTENER,
            udp: UDP_SOCKET,
        };
        let (accepting, udp, bound) = listener::bind_all(&config, &registry, tokens)?;
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

        // The operator's view, as Redis gives it at start-up: what runs, and within what.
        info!("{}", crate::stats::startup_line(&config, &bound));
        for warning in warnings {
            warn!("{warning}");
        }

        let now = Instant::now();
        let budget = Budget::new(config.max_memory);
        let mut room = Room::new(
            OutputLimits {
                hard: config.bcast_hard_limit,
                soft: config.bcast_soft_limit,
                soft_time: config.bcast_soft_time,
            },
            budget.ledger(),
        );
        let bridge = match &config.bridge {
            Some(_) if config.broadcast.is_none() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "--bridge needs the broadcast service (--broadcast)",
                ));
            }
            Some(url) => {
                room.attach_bridge();
                let tokens = [BRIDGE_SUB, BRIDGE_PUB];
                Some(Bridge::new(url, config.bridge_max_queue, tokens, now))
            }
            None => None,
        };
        Ok(Server {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            core: Core {
                registry,
                timeouts: Timeouts {
                    idle: config.idle_timeout,
                    close: config.close_timeout,
                },
                accepting,
                udp,
                clients: Slab::new(),
                run_queue: Vec::new(),
                closed: Vec::new(),
                room,
                bridge,
                budget,
                refusing: 0,
                shared: Shared {
                    store,
                    max_line: config.max_line,
                    file_limits: config.file_limits(),
                    stats: Stats::default(),
                },
                timers: Timers::new(),
                stop,
                drain: Drain::Serving,
                drain_recheck: None,
                ticker: Ticker::new(config.stats_interval, now),
                reporter: Reporter::default(),
                scratch: vec![0; SCRATCH.max(udp::MAX_DATAGRAM)].into_boxed_slice(),
                bound,
                next_id: 1,
                now,
                config,
            },
        })
    }

    /// The sockets bound, with their actual addresses (port 0 resolved).
    pub fn bound(&self) -> Vec<Bound> {
        self.core.bound.clone()
    }

    /// A handle that stops this server from another thread.
    pub fn handle(&self) -> Handle {
        self.core.stop.handle()
    }

    /// Serve until stopped (a signal or [`Handle::shutdown`]) and every connection has been
    /// drained or the drain timeout passed. Returns the totals.
    pub fn run(mut self) -> io::Result<Stats> {
        loop {
            // 1. poll
            let timeout = self.core.poll_timeout();
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let core = &mut self.core;
            core.now = Instant::now();
            // 2. note
            for event in self.events.iter() {
                core.note(event);
            }
            // 3-7
            core.turn();
            if core.finished() {
                return Ok(core.finish());
            }
        }
    }
}

impl Core {
    /// Step 1's timeout: not at all if work is waiting, else until the next deadline.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.run_queue.is_empty()
            || self.accepting.ready()
            || self.udp.as_ref().is_some_and(UdpEcho::ready)
            || self.stop.pending()
            || self.budget.over()
            || self.bridge.as_ref().is_some_and(Bridge::busy)
        {
            return Some(Duration::ZERO);
        }
        let deadline = [
            self.timers.next_deadline(),
            self.drain.deadline(),
            self.drain_recheck,
            self.accepting.deadline(),
            self.ticker.next(),
            self.budget.give_back_at(),
            self.bridge.as_ref().and_then(Bridge::deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        deadline.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Step 2: note what one event says.
    fn note(&mut self, event: &mio::event::Event) {
        match event.token() {
            SIGNALS => self.stop.on_signals(),
            WAKER => {} // stop requests are read once per turn
            BRIDGE_SUB | BRIDGE_PUB => {
                if let Some(bridge) = &mut self.bridge {
                    bridge.on_event(event);
                }
            }
            UDP_SOCKET => {
                if let Some(udp) = &mut self.udp {
                    udp.on_event();
                }
            }
            Token(t) if t >= FIRST_CONN => {
                let key = t - FIRST_CONN;
                if let Some(client) = self.clients.get_mut(key) {
                    client.tcp.on_event(event);
                    enqueue(&mut self.run_queue, client, key);
                }
            }
            token => {
                self.accepting.on_event(token);
            }
        }
    }

    /// Steps 3 to 7.
    fn turn(&mut self) {
        self.take_in(); // 3
        self.visit_ready(); // 4
        self.bridge_in(); // 5, with --bridge
        self.bound_memory(); // 5
        self.bridge_out(); // 5, with --bridge
        self.fire_timers(); // 6
        self.sweep(); // 7
    }

    // ------------------------------------------------------------------ 3. take in

    /// Step 3: stop requests, new clients, datagrams.
    fn take_in(&mut self) {
        match self.stop.step() {
            StopStep::None => {}
            StopStep::Drain => self.begin_drain(),
            StopStep::Now => {
                if !self.drain.stopping() {
                    self.begin_drain();
                }
                info!("second stop request: closing every connection now");
                self.drain = Drain::Now;
                self.abort_all();
            }
        }
        self.accepting.begin_turn(self.now);
        while let Some(client) = self.accepting.next(self.now) {
            self.admit(client);
        }
        if let Some(udp) = &mut self.udp {
            udp.serve(&mut self.scratch, &mut self.shared, self.now);
        }
    }

    /// Take a new client in, or turn it away if `--max-conns` is reached.
    fn admit(&mut self, new: NewClient) {
        let full = self.clients.len() - self.refusing >= self.config.max_conns;
        if full && self.refusing >= MAX_REFUSING {
            // Too many are being refused already: the short way (a client that already sent
            // data may see a reset instead of the line).
            self.accepting
                .turn_away(new, self.now, "--max-conns reached");
            return;
        }
        let Some(session) = Session::new(new.service, self.now) else {
            return; // not a TCP service; cannot happen
        };
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        let id = self.next_id;
        self.next_id += 1;
        if let Some(idle) = self.config.keepalive {
            listener::spread_keepalive(&new.stream, idle, id);
        }
        let core = Connection::new(id, new.peer, self.now, session.flow_controlled());
        let mut tcp = TcpConn::new(new.stream, core);
        if let Err(e) = tcp.register(&self.registry, token(key)) {
            warn!("conn {id} {}: cannot register: {e}", new.peer);
            return;
        }
        debug!(
            "conn {id} {} LISTEN -> ESTABLISHED (accepted on {})",
            new.peer, new.service
        );
        if full {
            // Refused the long way, as a lingering close: the line, our FIN after it, then
            // whatever the client sent is read and discarded until its FIN (or the close
            // timeout). Closing at once with its data unread would make the kernel answer
            // with a reset, which can destroy the line before the client reads it.
            tcp.send(listener::TOO_MANY);
            tcp.core
                .close(CloseReason::Protocol("too many connections"));
            self.accepting
                .count_refusal(self.now, "--max-conns reached");
            self.refusing += 1;
        } else {
            if session.kind() == ServiceKind::Broadcast {
                self.room.join(key);
            }
            self.shared.stats.accepted += 1;
        }
        entry.insert(Client {
            tcp,
            session,
            queued: false,
            timer_at: None,
            pinned: 0,
            refused: full,
        });
        self.after_visit(key);
    }

    // ------------------------------------------------------------------ 4. visit

    /// Step 4: visit every connection on the run queue once.
    fn visit_ready(&mut self) {
        let mut queue = std::mem::take(&mut self.run_queue);
        // A turn does about BULK_BUDGET of bulk work in all, shared by whoever is ready, and
        // never less than IO_BUDGET per connection: one upload alone gets 1 MiB per visit, ten
        // get 100 KiB each, a hundred get 64 KiB each.
        let budget = (BULK_BUDGET / queue.len().max(1)).clamp(IO_BUDGET, BULK_BUDGET);
        for &key in &queue {
            // `queued` is false if this key was freed and reused since it was queued.
            if let Some(client) = self.clients.get_mut(key)
                && client.queued
            {
                client.queued = false;
                self.visit(key, budget);
            }
        }
        queue.clear();
        if self.run_queue.is_empty() {
            self.run_queue = queue; // keep the allocation
        }
    }

    /// One connection: flush, read, deliver, each within `budget` bytes.
    fn visit(&mut self, key: usize, budget: usize) {
        let now = self.now;
        let max_buffer = self.config.max_buffer;
        let client = &mut self.clients[key];
        if client.tcp.core.phase() == Phase::Closed {
            return;
        }
        // Write first: it frees queue space, which may lift the read pause below.
        client.tcp.flush(budget);
        client.tcp.core.update_flow(max_buffer);

        let mut budget = budget;
        while budget > 0 && client.tcp.core.wants_read() {
            let want = client
                .tcp
                .core
                .read_allowance(budget.min(self.scratch.len()));
            match client.tcp.read(&mut self.scratch[..want]) {
                Input::Deliver(n) => {
                    budget -= n;
                    let data = &self.scratch[..n];
                    serve(
                        client,
                        key,
                        &mut self.room,
                        &mut self.shared,
                        now,
                        |s, cx| s.on_input(data, cx),
                    );
                    client.tcp.core.update_flow(max_buffer);
                }
                Input::Discard(n) => budget -= n,
                Input::Eof { deliver: true } => {
                    serve(
                        client,
                        key,
                        &mut self.room,
                        &mut self.shared,
                        now,
                        |s, cx| s.on_eof(cx),
                    );
                }
                Input::Eof { deliver: false } | Input::Nothing => {}
            }
        }

        // A graceful stop closes a connection once it has served what was pending and owes
        // nothing — and, for a broadcast member, once the room allows it. If the kernel holds
        // nothing either way, it is released at once; otherwise our FIN goes out after what
        // is owed, and the connection is released when the peer has acknowledged it all.
        if client.tcp.core.phase() == Phase::Established
            && client.tcp.core.is_drained()
            && self.room.may_close(key)
        {
            serve(
                client,
                key,
                &mut self.room,
                &mut self.shared,
                now,
                |s, cx| s.on_drained(cx),
            );
            if client.tcp.kernel_idle() {
                client.tcp.core.release();
            }
            client.tcp.core.close(CloseReason::Shutdown);
        }
        // The sender is released: its lines can go to the others.
        self.room.fan_out(&mut self.clients);
        self.after_visit(key);
    }

    /// Bookkeeping after anything happened to a connection: settle its core, carry out the
    /// socket effects it asks for, then CLOSED, the run queue, the soft limit, the timer.
    fn after_visit(&mut self, key: usize) {
        let now = self.now;
        let client = &mut self.clients[key];
        client.tcp.core.settle(now, &self.timeouts);
        client.tcp.carry_out(&self.registry, token(key));
        let pinned =
            u32::try_from(client.tcp.core.pinned() + client.session.buffered()).unwrap_or(u32::MAX);
        if pinned != client.pinned {
            self.budget.account(client.pinned as usize, pinned as usize);
            client.pinned = pinned;
        }
        if client.tcp.core.phase() == Phase::Closed {
            self.closed.push(key);
            return;
        }
        if client.tcp.core.wants_read() || client.tcp.core.wants_flush() {
            enqueue(&mut self.run_queue, client, key);
        }
        self.room.note_queue(key, client.tcp.core.footprint(), now);
        let deadline = [
            client.tcp.core.deadline(&self.timeouts),
            client.session.deadline(&self.shared),
            self.room.deadline(key),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(at) = deadline
            && client.timer_at.is_none_or(|t| at < t)
        {
            client.timer_at = Some(at);
            self.timers.schedule(at, key);
        }
    }

    // ------------------------------------------------------------------ 5. bound memory

    /// Step 5: write out what the room queued this turn (one vectored write per member), then
    /// hold the memory budget.
    fn bound_memory(&mut self) {
        let list = self.room.take_flush_list();
        for &key in &list {
            let client = &mut self.clients[key];
            client.tcp.flush(IO_BUDGET);
            self.after_visit(key);
        }
        self.room.recycle_flush_list(list);
        if self.budget.over() {
            self.hold_budget();
        }
    }

    /// Over `--max-memory`: disconnect the clients pinning the most, until under (at most
    /// [`budget::EVICTIONS_PER_TURN`] this turn; the next turn goes on).
    fn hold_budget(&mut self) {
        let candidates = self.clients.iter().filter_map(|(key, c)| {
            let core = &c.tcp.core;
            (core.queued() > 0 && core.phase() != Phase::Closed).then(|| (core.footprint(), key))
        });
        for (footprint, key) in Budget::rank(candidates) {
            if !self.budget.over() {
                break;
            }
            let core = &mut self.clients[key].tcp.core;
            warn!(
                "evicted {}: {footprint} bytes pinned, over --max-memory of {} (conn {})",
                core.peer(),
                self.budget.limit(),
                core.id()
            );
            core.abort(AbortReason::Evicted("over --max-memory"));
            self.budget.note_eviction();
            self.after_visit(key);
        }
    }

    /// Step 5, with `--bridge` only, before the flush: drive the Redis link's timers, connects
    /// and reads, and fan out what other nodes published — so it leaves in the same write to
    /// each member as this turn's local lines.
    fn bridge_in(&mut self) {
        let Some(bridge) = &mut self.bridge else {
            return;
        };
        bridge.receive(self.now, &mut self.scratch, &self.registry);
        let mut remote = false;
        while let Some((batch, lines)) = bridge.poll_lines() {
            self.room.publish(Origin::Elsewhere, batch, lines);
            remote = true;
        }
        if remote {
            self.room.fan_out(&mut self.clients);
        }
    }

    /// Step 5, with `--bridge` only, after the flush: publish the batches local members sent
    /// this turn (they have had them first).
    fn bridge_out(&mut self) {
        let Some(bridge) = &mut self.bridge else {
            return;
        };
        for batch in self.room.take_outgoing() {
            bridge.publish(&batch);
        }
        bridge.send(self.now, &self.registry);
    }

    // ------------------------------------------------------------------ 6. timers

    /// Step 6: act on every deadline that is due; the stats line; the drain.
    fn fire_timers(&mut self) {
        let now = self.now;
        while let Some((at, key)) = self.timers.pop_due(now) {
            let Some(client) = self.clients.get_mut(key) else {
                continue; // the connection is gone
            };
            if client.timer_at != Some(at) {
                continue; // superseded by an earlier entry, or the slot was reused
            }
            client.timer_at = None;
            if !client.tcp.core.phase().is_closing_actively() {
                self.room.on_timer(key, client, now);
                if client.tcp.core.phase() != Phase::Closed {
                    serve(
                        client,
                        key,
                        &mut self.room,
                        &mut self.shared,
                        now,
                        |s, cx| s.on_timer(cx),
                    );
                }
            }
            client.tcp.core.on_timer(now, &self.timeouts);
            self.after_visit(key);
        }
        let clients = &self.clients;
        self.timers.compact_if_bloated(clients.len(), |key, at| {
            clients.get(key).is_some_and(|c| c.timer_at == Some(at))
        });

        if self.budget.should_give_back(now) {
            budget::give_back();
        }
        if self.stop.take_stats_wanted() {
            info!("stats: {}", self.snapshot()); // asked for: always
        }
        if self.ticker.due(now)
            && let Some(line) = self.reporter.periodic(now, self.snapshot())
        {
            info!("stats: {line}");
        }
        self.check_drain();
    }

    // ------------------------------------------------------------------ 7. sweep

    /// Step 7: free every connection that reached CLOSED this turn. Dropping the stream closes
    /// the descriptor, which also removes it from epoll: no explicit deregister needed, since
    /// the descriptor is never shared.
    fn sweep(&mut self) {
        for key in self.closed.drain(..) {
            if self
                .clients
                .get(key)
                .is_some_and(|c| c.tcp.core.phase() == Phase::Closed)
            {
                let client = self.clients.remove(key);
                self.room.leave(key);
                self.budget.account(client.pinned as usize, 0);
                let core = &client.tcp.core;
                let stats = &mut self.shared.stats;
                if client.refused {
                    self.refusing -= 1;
                } else {
                    stats.closed += 1;
                }
                stats.bytes_in += core.bytes_in();
                stats.bytes_out += core.bytes_out();
                stats.discarded += core.discarded();
                debug!(
                    "conn {} {} released: {} bytes in, {} out",
                    core.id(),
                    core.peer(),
                    core.bytes_in(),
                    core.bytes_out()
                );
            }
        }
    }

    // ------------------------------------------------------------------ stopping

    /// Stop accepting and let every connection finish: each is closed through FIN-WAIT once it
    /// has no unread input and no unsent output.
    fn begin_drain(&mut self) {
        info!(
            "shutting down: listeners closed, draining {} connection(s) for at most {:?} \
             (a second SIGINT or SIGTERM stops at once)",
            self.clients.len(),
            self.config.drain_timeout
        );
        self.drain = Drain::begin(self.now, self.config.drain_timeout);
        // Clients already in a backlog were told they are connected: serve them like the rest
        // (closing the listener with them queued would reset them), then close the listeners.
        for client in self.accepting.take_backlog_and_close() {
            self.admit(client);
        }
        self.udp = None;
        for (key, client) in self.clients.iter_mut() {
            let finish = client.session.on_stop() == OnStop::Finish;
            let pending = if finish {
                0
            } else {
                client.tcp.unread_in_kernel()
            };
            client.tcp.core.begin_drain(pending, finish);
            enqueue(&mut self.run_queue, client, key);
        }
        self.room.begin_drain();
    }

    /// The drain's progress (the room's hold) and its deadline.
    fn check_drain(&mut self) {
        if !self.drain.stopping() {
            return;
        }
        self.release_acknowledged();
        if self.drain.expired(self.now) && !self.clients.is_empty() {
            warn!(
                "drain timeout: closing {} connection(s) that did not finish",
                self.clients.len()
            );
            self.abort_all();
            return;
        }
        if self.room.check_drain(&self.clients) {
            // Every line received before the stop is queued: members may now close once they
            // owe nothing. Visit them all so the idle ones do.
            for key in self.room.members() {
                enqueue(&mut self.run_queue, &mut self.clients[key], key);
            }
        }
    }

    /// During a drain: release every connection whose FIN the peer has acknowledged with all
    /// that came before it. Waiting for the peer's own FIN would hold the stop for a client
    /// that is simply idle — it has everything and may never close. Readiness does not report
    /// an acknowledgement, so these are looked at every [`DRAIN_RECHECK`] while any remains.
    fn release_acknowledged(&mut self) {
        if self.drain_recheck.is_some_and(|t| t > self.now) {
            return;
        }
        let mut released = Vec::new();
        let mut waiting = false;
        for (key, client) in self.clients.iter_mut() {
            if client.tcp.core.phase() != Phase::FinWait2 {
                continue;
            }
            if client.tcp.kernel_idle() {
                client.tcp.core.release();
                released.push(key);
            } else {
                waiting = true;
            }
        }
        for key in released {
            self.after_visit(key);
        }
        self.drain_recheck = waiting.then(|| self.now + DRAIN_RECHECK);
    }

    fn abort_all(&mut self) {
        for (key, client) in self.clients.iter_mut() {
            if client.tcp.core.phase() != Phase::Closed {
                client.tcp.core.abort(AbortReason::Drain);
                self.closed.push(key);
            }
        }
    }

    /// Stopping, every connection gone, and the bridge has published what they said (or the
    /// drain ran out of time).
    fn finished(&self) -> bool {
        self.drain.stopping()
            && self.clients.is_empty()
            && self.bridge.as_ref().is_none_or(|b| {
                b.flushed() || self.drain == Drain::Now || self.drain.expired(self.now)
            })
    }

    // ------------------------------------------------------------------ stats

    /// The totals so far, including what live connections have moved.
    fn totals(&self) -> Stats {
        let mut totals = self.shared.stats.clone();
        let room = self.room.counters();
        totals.lines_in = room.lines_in;
        totals.lines_out = room.lines_out;
        totals.evicted = room.evicted + self.budget.evicted();
        totals.rejected += self.accepting.rejected;
        if let Some(bridge) = &self.bridge {
            let c = bridge.counters();
            totals.bridge_in = c.received;
            totals.bridge_out = c.published;
            totals.bridge_lost = c.lost;
            totals.bridge_dropped = c.dropped;
        }
        for (_, client) in &self.clients {
            let core = &client.tcp.core;
            totals.bytes_in += core.bytes_in();
            totals.bytes_out += core.bytes_out();
            totals.discarded += core.discarded();
        }
        totals
    }

    fn snapshot(&self) -> Snapshot {
        let mut phases = [0; Phase::ALL.len()];
        for (_, client) in &self.clients {
            phases[client.tcp.core.phase().index()] += 1;
        }
        Snapshot {
            totals: self.totals(),
            phases,
        }
    }

    fn finish(&mut self) -> Stats {
        if let Some(bridge) = self.bridge.as_ref().filter(|b| !b.flushed()) {
            warn!(
                "bridge: stopping with publishes unconfirmed by Redis ({} bytes unsent)",
                bridge.queued()
            );
        }
        let snapshot = self.snapshot();
        info!("stopped; totals: {snapshot}");
        snapshot.totals
    }
}

/// The loop's one `apply`: what a service asks, carried out for the client it serves.
struct Apply<'a> {
    tcp: &'a mut TcpConn,
    room: &'a mut Room,
    key: usize,
}

impl Actions for Apply<'_> {
    fn act(&mut self, action: Action<'_>) {
        match action {
            Action::Reply(bytes) => self.tcp.send(bytes),
            Action::Share { chunk, lines } => {
                self.room.publish(Origin::Member(self.key), chunk, lines)
            }
            Action::Close(reason) => self.tcp.core.close(reason),
            Action::Reset(reason) => self.tcp.core.abort(reason),
        }
    }
}

/// Hand one input to a client's service (`input` calls the right method), with [`Apply`]
/// carrying out what it asks.
fn serve(
    client: &mut Client,
    key: usize,
    room: &mut Room,
    shared: &mut Shared,
    now: Instant,
    input: impl FnOnce(&mut Session, &mut Cx<'_>),
) {
    let (id, peer) = (client.tcp.core.id(), client.tcp.core.peer());
    let mut apply = Apply {
        tcp: &mut client.tcp,
        room,
        key,
    };
    let mut cx = Cx {
        id,
        peer,
        now,
        shared,
        out: &mut apply,
    };
    input(&mut client.session, &mut cx);
}

impl Mailbox for Client {
    fn takes_lines(&self) -> bool {
        self.tcp.core.phase() == Phase::Established
    }

    fn queue(&mut self, payload: &std::rc::Rc<crate::outqueue::Payload>) {
        self.tcp.core.queue_shared(payload);
    }

    fn footprint(&self) -> usize {
        self.tcp.core.footprint()
    }

    fn evict(&mut self, why: Eviction) {
        let core = &mut self.tcp.core;
        // The same shape as the budget's eviction line: `evicted PEER: why (conn N)`.
        warn!("evicted {}: {why} (conn {})", core.peer(), core.id());
        core.abort(AbortReason::Evicted(why.reason()));
    }

    fn has_unread_input(&self) -> bool {
        self.tcp.core.has_unread_input()
    }
}

/// The poll token of the connection in slab slot `key`.
fn token(key: usize) -> Token {
    Token(FIRST_CONN + key)
}

/// Put a connection on the run queue unless it is there already.
fn enqueue(run_queue: &mut Vec<usize>, client: &mut Client, key: usize) {
    if !client.queued {
        client.queued = true;
        run_queue.push(key);
    }
}
