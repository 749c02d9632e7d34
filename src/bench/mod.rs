//! `resound bench`: a load generator for echo, line-broadcast and UDP echo servers — resound or
//! any other server speaking the same protocols — that measures throughput, latency with
//! microsecond resolution, payload integrity, and (with `--pid`) the server's own CPU and memory.
//!
//! # Layout
//!
//! * this file: the [`Plan`] (what to run), the coordinator that starts the workers, steps the
//!   run through its phases, samples `/proc`, prints progress and builds the [`Report`].
//! * `worker`: one thread's mio loop, shared by every mode; `pool` and `dial`: its TCP
//!   connections, from the non-blocking connect to the close — the one read loop, write loop and
//!   failure count every mode uses.
//! * one file per mode, each a `Driver`: `echo`, `broadcast`, `udp`, `connect` (also the probe
//!   that `idle` uses), `idle`.
//! * pure parts, unit-tested without sockets: [`payload`] (byte streams and their check),
//!   `line` (the broadcast line format and sequence checking), `pacing` (phases and the
//!   open-loop schedule), `histogram`, `tally`, `report` (text and JSON), `procstat` (CPU and
//!   memory over the window, from [`crate::procfs`]).
//! * `args`: the command line ([`BenchArgs`]), in clap's derive style like `resound serve`.
//!
//! What the rest of the crate, the tests and `benches/` use is `pub` here and documented:
//! [`run`], [`Plan`], [`Mode`], [`Report`] and the types of its fields, [`BenchArgs`] and
//! [`main`]; and three pure parts whole: [`payload`] (also the tests' payloads), [`histogram`]
//! and [`line`](mod@line), whose hot paths `benches/micro.rs` measures. Every other module is private to
//! `bench`.
//!
//! # A run
//!
//! 1. **Setup.** Each worker opens its connections (at most 128 connects in progress per
//!    worker, or `--connect-rate`), and reports when all are open or failed; `connect` runs one
//!    cycle per slot, `udp` has each socket's probe datagram answered. If nothing at all could be
//!    opened the run stops here, naming the error (`connect 127.0.0.1:9: Connection refused`).
//!    Broadcast then syncs: sender 0 sends sync lines until every other connection has seen one,
//!    proving the server has registered all receivers.
//! 2. **Warm-up** (`--warmup`), then the **measured window** (`--duration`): only operations that
//!    complete inside the window count, so connection setup and cold caches do not.
//! 3. **Drain** (`--drain`): no new operations; what is in flight may still arrive. Whatever
//!    has not arrived at the end is lost, and a loss is an error.

#![warn(missing_docs)]

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

mod args;
mod broadcast;
mod connect;
mod dial;
mod echo;
pub mod histogram;
mod idle;
pub mod line;
mod pacing;
pub mod payload;
mod pool;
mod procstat;
mod report;
mod tally;
mod udp;
mod worker;

pub use args::BenchArgs;
pub use histogram::Percentiles;
pub use procstat::Usage;
pub use report::{Interval, Report, ServerFigures};
pub use tally::{Cause, CauseKind, Errors};

use crate::units::MAX_DURATION;
use dial::{Dialer, source_addrs};
use histogram::Latency;
use pacing::{Pacer, Timeline, share};
use report::Measured;
use tally::{Causes, Tally};
use worker::{Command, Control, Message, WorkerResult};

/// The read buffer of each worker (also the largest write): 64 KiB, like the server's.
pub(crate) const READ_BUF: usize = 64 * 1024;

/// How long the broadcast sync handshake may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest `--pipeline` and `--window`: far more in flight than any server keeps up with,
/// and small enough that their bookkeeping cannot exhaust memory.
const MAX_IN_FLIGHT: usize = 1 << 20;

/// The highest `--rate` and `--connect-rate`, per second: a billion, far beyond one machine.
const MAX_RATE: f64 = 1e9;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// TCP echo: every byte sent must come back, in order.
    Echo,
    /// TCP line broadcast: every line a sender writes must reach every other connection.
    Broadcast,
    /// UDP echo: every datagram must come back whole.
    Udp,
    /// Connection churn: connect, (probe,) close, again.
    Connect,
    /// Open connections and hold them.
    Idle,
}

impl Mode {
    /// The mode's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Broadcast => "broadcast",
            Mode::Udp => "udp",
            Mode::Connect => "connect",
            Mode::Idle => "idle",
        }
    }

    /// What one operation is, for reports.
    pub fn op_name(self) -> &'static str {
        match self {
            Mode::Echo => "messages",
            Mode::Broadcast => "deliveries",
            Mode::Udp => "datagrams",
            Mode::Connect => "connections",
            Mode::Idle => "connections held",
        }
    }
}

/// Everything a run needs. [`Plan::new`] gives each mode's defaults; the command line
/// ([`BenchArgs`]) and the benches override fields.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What to measure.
    pub mode: Mode,
    /// The servers: connection (or UDP socket) `k` goes to `targets[k % n]`. Several targets
    /// make one room of a broadcast service spread over several nodes: every check holds across
    /// them.
    pub targets: Vec<SocketAddr>,
    /// echo/udp: connections (sockets); broadcast: receivers; connect: connects in progress at
    /// once; idle: connections to hold.
    pub connections: usize,
    /// The measured window.
    pub duration: Duration,
    /// Load before the window, not counted.
    pub warmup: Duration,
    /// echo/udp: message size; broadcast: line size (newline included); connect/idle: bytes
    /// echoed to confirm each connection (0 = none).
    pub size: usize,
    /// Closed loop: messages in flight per connection (echo, udp).
    pub pipeline: usize,
    /// Open loop: operations per second in total (echo, udp: messages; broadcast: lines sent).
    pub rate: Option<f64>,
    /// Open loop: a rate not reached is an error (exit status 1), not only a line of the report.
    pub strict_rate: bool,
    /// Connections opened per second (connect: cycles; others: during setup).
    pub connect_rate: Option<f64>,
    /// Broadcast: sending connections (they receive too).
    pub senders: usize,
    /// Broadcast, closed loop: lines per sender not yet delivered everywhere.
    pub window: usize,
    /// Load-generating threads, each its own event loop.
    pub threads: usize,
    /// Source addresses 127.0.0.1..N (None: as many as needed).
    pub src_ips: Option<usize>,
    /// UDP: set SO_BROADCAST.
    pub broadcast: bool,
    /// The server's process, for CPU and memory figures.
    pub pid: Option<u32>,
    /// The CPU the server runs on, for its busy share.
    pub cpu: Option<usize>,
    /// After the window, how long to wait for what is in flight.
    pub drain: Duration,
    /// How long opening the connections may take.
    pub setup_timeout: Duration,
    /// No progress lines on stderr.
    pub quiet: bool,
    /// Record each second's latencies too (the progress lines and the report's per-second
    /// series); a second histogram costs every operation about 10 ns.
    pub per_second_latency: bool,
    /// A tag carried into the report.
    pub label: String,
}

impl Plan {
    /// `mode` against `target` with that mode's defaults.
    pub fn new(mode: Mode, target: SocketAddr) -> Plan {
        let (connections, size) = match mode {
            Mode::Echo | Mode::Udp | Mode::Broadcast => (10, 64),
            Mode::Connect => (50, 1),
            Mode::Idle => (1000, 1),
        };
        Plan {
            mode,
            targets: vec![target],
            connections,
            duration: Duration::from_secs(5),
            warmup: if mode == Mode::Idle {
                Duration::ZERO
            } else {
                Duration::from_millis(500)
            },
            size,
            pipeline: 1,
            rate: None,
            strict_rate: false,
            connect_rate: None,
            senders: 1,
            window: 64,
            threads: 1,
            src_ips: None,
            broadcast: false,
            pid: None,
            cpu: None,
            drain: Duration::from_secs(2),
            setup_timeout: Duration::from_secs(30),
            quiet: false,
            per_second_latency: true,
            label: String::new(),
        }
    }

    /// Sockets the run opens (broadcast: receivers and senders).
    pub fn sockets(&self) -> usize {
        self.connections
            + if self.mode == Mode::Broadcast {
                self.senders
            } else {
                0
            }
    }

    /// Check the plan; the error says what is wrong. Pure: whether `--pid` and `--cpu` exist on
    /// this machine is checked when the run starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err("--target needs at least one address".into());
        }
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.threads == 0 || self.threads > 256 {
            return Err("--threads must be 1..256".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        for (flag, d) in [
            ("--duration", self.duration),
            ("--warmup", self.warmup),
            ("--drain", self.drain),
            ("--setup-timeout", self.setup_timeout),
        ] {
            if d > MAX_DURATION {
                return Err(format!("{flag} may be at most 10 years"));
            }
        }
        if self.pipeline == 0 || self.pipeline > MAX_IN_FLIGHT {
            return Err(format!("--pipeline must be 1..{MAX_IN_FLIGHT}"));
        }
        let bad_rate = |r: Option<f64>| r.is_some_and(|r| !(r > 0.0 && r <= MAX_RATE));
        if bad_rate(self.rate) || bad_rate(self.connect_rate) {
            return Err("rates must be positive and at most 1g per second".into());
        }
        match self.mode {
            Mode::Echo if self.size == 0 => Err("echo needs --size of at least 1".into()),
            Mode::Udp if !(payload::DATAGRAM_HEADER..=65_507).contains(&self.size) => Err(format!(
                "udp --size must be {}..65507 (a sequence number and a socket id lead each datagram)",
                payload::DATAGRAM_HEADER
            )),
            Mode::Broadcast if !(line::MIN_LINE..=line::MAX_LINE).contains(&self.size) => {
                Err(format!(
                    "broadcast --size must be {}..{} (each line carries a {}-byte header)",
                    line::MIN_LINE,
                    line::MAX_LINE,
                    line::HEADER
                ))
            }
            Mode::Broadcast if self.senders == 0 || self.senders > line::MAX_SENDERS => {
                Err(format!("--senders must be 1..{}", line::MAX_SENDERS))
            }
            Mode::Broadcast if self.window == 0 || self.window > MAX_IN_FLIGHT => {
                Err(format!("--window must be 1..{MAX_IN_FLIGHT}"))
            }
            Mode::Connect | Mode::Idle if self.size > READ_BUF => {
                Err(format!("the probe --size may be at most {READ_BUF}"))
            }
            _ => Ok(()),
        }
    }

    /// Check what the plan names on this machine: the `--pid` process must exist and the
    /// `--cpu` must be online, or their figures would be made up.
    fn check_host(&self) -> Result<(), String> {
        if let Some(pid) = self.pid
            && !crate::procfs::process_exists(pid)
        {
            return Err(format!(
                "--pid {pid}: no such process (/proc/{pid} does not exist)"
            ));
        }
        if let Some(cpu) = self.cpu {
            let ids = crate::procfs::cpu_ids().map_err(|e| format!("--cpu: /proc/stat: {e}"))?;
            if !ids.contains(&cpu) {
                let list: Vec<String> = ids.iter().map(|c| c.to_string()).collect();
                return Err(format!(
                    "--cpu {cpu}: this machine's CPUs are {}",
                    list.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// What every worker shares: read-only tables, and the few counters modes coordinate through.
pub(crate) struct Shared {
    pub pattern: payload::Pattern,
    /// The broadcast lines' printable filler.
    pub filler: line::Filler,
    /// Broadcast timestamps are nanoseconds since this instant (one process, one clock).
    pub epoch: Instant,
    /// Broadcast: connections open (a line is delivered when all of them but its sender have it).
    pub live: AtomicU64,
    /// Broadcast: each sender's send window.
    pub windows: Vec<broadcast::Window>,
}

/// A run that cannot start: a usage error (bad values, not enough descriptors, a `--pid` that
/// does not exist): [`io::ErrorKind::InvalidInput`], exit status 2.
fn usage_error(e: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

/// Run `plan` to the end and report.
///
/// Errors: a plan that cannot run ([`io::ErrorKind::InvalidInput`]: bad values, not enough file
/// descriptors, a `--pid` or `--cpu` that does not exist); a setup that could not open a single
/// connection (the error names the target and why); a thread that cannot start. Failures of the
/// server once the run is going are not errors of the run: they are counted in the report.
pub fn run(plan: &Plan) -> io::Result<Report> {
    plan.validate().map_err(usage_error)?;
    plan.check_host().map_err(usage_error)?;
    check_fd_limit(plan.sockets())?;
    let started = SystemTime::now();
    let threads = plan.threads.min(plan.sockets());
    let pattern = payload::Pattern::new();
    let shared = Arc::new(Shared {
        filler: line::Filler::new(&pattern),
        pattern,
        epoch: Instant::now(),
        live: AtomicU64::new(0),
        windows: if plan.mode == Mode::Broadcast {
            let window = if plan.rate.is_some() {
                broadcast::paced_window(plan.senders)
            } else {
                plan.window
            };
            (0..plan.senders)
                .map(|_| broadcast::Window::new(window))
                .collect()
        } else {
            Vec::new()
        },
    });
    let plan_arc = Arc::new(plan.clone());
    let before = procstat::snapshot(plan.pid, plan.cpu);
    let setup_start = Instant::now();

    let (msg_tx, msg_rx) = mpsc::channel();
    let mut workers = Vec::new();
    for t in 0..threads {
        let (poll, waker) = worker::poller()?;
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let control = Control {
            index: t,
            commands: cmd_rx,
            messages: msg_tx.clone(),
        };
        let (plan, shared) = (plan_arc.clone(), shared.clone());
        let ids: Vec<usize> = (t..plan.sockets()).step_by(threads).collect();
        let handle = thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || {
                let failed = control.messages.clone();
                if let Err(e) = run_worker(poll, control, &plan, &shared, t, threads, ids) {
                    let _ = failed.send(Message::Failed {
                        worker: t,
                        error: e.to_string(),
                    });
                }
            })?;
        workers.push((cmd_tx, waker, handle));
    }
    drop(msg_tx);
    let coordinator = Coordinator {
        plan,
        started,
        messages: msg_rx,
        workers,
    };
    let outcome = coordinator.drive(&shared, setup_start, before);
    coordinator.stop_and_join();
    Ok(Report::new(plan, outcome?))
}

/// The coordinator's side of the run: the workers' channels, and the run's three phases.
struct Coordinator<'a> {
    plan: &'a Plan,
    /// When the run started (wall clock, for the report).
    started: SystemTime,
    messages: mpsc::Receiver<Message>,
    workers: Vec<(
        mpsc::Sender<Command>,
        Arc<mio::Waker>,
        thread::JoinHandle<()>,
    )>,
}

/// What setup came to, over every worker.
#[derive(Default)]
struct Setup {
    open: u64,
    errors: tally::Errors,
    causes: Causes,
    timed_out: bool,
}

impl Coordinator<'_> {
    fn tell(&self, cmd: &dyn Fn() -> Command) {
        for (tx, waker, _) in &self.workers {
            let _ = tx.send(cmd());
            let _ = waker.wake();
        }
    }

    /// Stop every worker that is still running and wait for them all.
    fn stop_and_join(self) {
        self.tell(&|| Command::Stop);
        for (_, _, handle) in self.workers {
            let _ = handle.join();
        }
    }

    /// The run, from setup to the last worker's result.
    fn drive(
        &self,
        shared: &Shared,
        setup_start: Instant,
        before: procstat::Snapshot,
    ) -> io::Result<Measured> {
        let plan = self.plan;
        let setup = self.settle(setup_start)?;
        if setup.open == 0 && !setup.timed_out {
            return Err(setup_failure(plan, &setup));
        }
        let unsynced = if plan.mode == Mode::Broadcast {
            self.sync(shared, setup.open)?
        } else {
            0
        };
        let setup_s = setup_start.elapsed().as_secs_f64();
        if !plan.quiet && plan.mode != Mode::Connect {
            eprintln!("{}", setup_line(plan, &setup, setup_s, unsynced));
        }
        self.load(shared, setup_start, setup_s, unsynced, before)
    }

    /// 1. Setup: wait for every worker to settle (or the setup timeout).
    fn settle(&self, setup_start: Instant) -> io::Result<Setup> {
        let plan = self.plan;
        let mut setup = Setup::default();
        let mut settled = 0;
        let deadline = setup_start + plan.setup_timeout;
        while settled < self.workers.len() {
            match self
                .messages
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Message::Settled {
                    open,
                    errors,
                    causes,
                    ..
                }) => {
                    settled += 1;
                    setup.open += open;
                    setup.errors += errors;
                    setup.causes.merge(&causes);
                }
                Ok(Message::Failed { worker, error }) => return Err(worker_failed(worker, error)),
                Ok(_) => {}
                Err(_) => {
                    if !plan.quiet {
                        eprintln!(
                            "setup: timed out after {:.1} s; starting anyway",
                            plan.setup_timeout.as_secs_f64()
                        );
                    }
                    setup.timed_out = true;
                    break;
                }
            }
        }
        Ok(setup)
    }

    /// Broadcast: start the sync handshake and wait (on the workers' messages) until every
    /// connection but sender 0 has seen a sync line, or [`SYNC_TIMEOUT`] (at most the setup
    /// timeout). Returns how many never did.
    fn sync(&self, shared: &Shared, open: u64) -> io::Result<u64> {
        shared
            .live
            .store(open, std::sync::atomic::Ordering::Relaxed);
        self.tell(&|| Command::Sync);
        let want = open.saturating_sub(1);
        let mut by_worker = vec![0; self.workers.len()];
        let until = Instant::now() + SYNC_TIMEOUT.min(self.plan.setup_timeout);
        while by_worker.iter().sum::<u64>() < want {
            match self
                .messages
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(Message::Synced { worker, synced }) => by_worker[worker] = synced,
                Ok(Message::Failed { worker, error }) => return Err(worker_failed(worker, error)),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("a bench worker exited during the sync"));
                }
            }
        }
        Ok(want.saturating_sub(by_worker.iter().sum()))
    }

    /// Steps 2 and 3: the load, the progress lines and the per-second series, until every
    /// worker has finished its drain; then the totals.
    fn load(
        &self,
        shared: &Shared,
        setup_start: Instant,
        setup_s: f64,
        unsynced: u64,
        before: procstat::Snapshot,
    ) -> io::Result<Measured> {
        let plan = self.plan;
        let timeline = Timeline::new(Instant::now(), plan.warmup, plan.duration, plan.drain);
        self.tell(&|| Command::Start(timeline));
        let mut edges = WindowEdges::new(plan, timeline, before);
        let mut progress = Progress::new(timeline, self.workers.len(), unsynced);
        let results = self.collect(&mut edges, &mut progress)?;
        let (at_start, at_end) = edges.finish();

        let window_s = timeline.window_secs();
        // Idle's figures cover the whole hold, connections opening included.
        let secs = if plan.mode == Mode::Idle {
            (timeline.measure_until - setup_start).as_secs_f64()
        } else {
            window_s
        };
        let usage = procstat::usage(&at_start, &at_end, secs, crate::procfs::ticks_per_sec());
        Ok(Measured {
            tally: totals(plan, shared, &results, unsynced),
            open: results.iter().map(|r| r.open).sum(),
            window_s,
            setup_s,
            before,
            end: at_end,
            usage,
            series: progress.series,
            started: self.started,
            server_children: plan.pid.and_then(crate::procfs::child_count),
        })
    }

    /// Until every worker has sent its result: sample `/proc` at the edges of the window, close
    /// each second of progress, and take in the workers' messages. The results, by worker.
    fn collect(
        &self,
        edges: &mut WindowEdges,
        progress: &mut Progress,
    ) -> io::Result<Vec<WorkerResult>> {
        let threads = self.workers.len();
        let mut results: Vec<Option<WorkerResult>> = (0..threads).map(|_| None).collect();
        let mut done = 0;
        while done < threads {
            let now = Instant::now();
            edges.sample_due(now);
            progress.tick(now, self.plan);
            let wake = edges.due_by(progress.next_tick);
            match self
                .messages
                .recv_timeout(wake.saturating_duration_since(now))
            {
                Ok(Message::Interval {
                    worker,
                    ops,
                    latency,
                    errors,
                }) => progress.add(worker, ops, &latency, errors),
                Ok(Message::Done { worker, result }) => {
                    results[worker] = Some(*result);
                    done += 1;
                }
                Ok(Message::Failed { worker, error }) => return Err(worker_failed(worker, error)),
                Ok(Message::Settled { .. } | Message::Synced { .. })
                | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("a bench worker exited without a result"));
                }
            }
        }
        Ok(results.into_iter().flatten().collect())
    }
}

/// The `/proc` snapshots at the edges of the measured window, each taken when the edge passes.
struct WindowEdges {
    timeline: Timeline,
    pid: Option<u32>,
    cpu: Option<usize>,
    at_start: Option<procstat::Snapshot>,
    at_end: Option<procstat::Snapshot>,
}

impl WindowEdges {
    /// Idle's window starts with the first connection, so its start is the snapshot `before`.
    fn new(plan: &Plan, timeline: Timeline, before: procstat::Snapshot) -> WindowEdges {
        WindowEdges {
            timeline,
            pid: plan.pid,
            cpu: plan.cpu,
            at_start: (plan.mode == Mode::Idle).then_some(before),
            at_end: None,
        }
    }

    /// Take the snapshot of each edge that `now` has passed and that has none yet.
    fn sample_due(&mut self, now: Instant) {
        if self.at_start.is_none() && now >= self.timeline.measure_from {
            self.at_start = Some(procstat::snapshot(self.pid, self.cpu));
        }
        if self.at_end.is_none() && now >= self.timeline.measure_until {
            self.at_end = Some(procstat::snapshot(self.pid, self.cpu));
        }
    }

    /// The earlier of `wake` and the next edge still to be sampled.
    fn due_by(&self, mut wake: Instant) -> Instant {
        if self.at_start.is_none() {
            wake = wake.min(self.timeline.measure_from);
        }
        if self.at_end.is_none() {
            wake = wake.min(self.timeline.measure_until);
        }
        wake
    }

    /// The snapshots at the start and the end. An end never reached is sampled now; a start
    /// never reached is the end (an empty window).
    fn finish(self) -> (procstat::Snapshot, procstat::Snapshot) {
        let at_end = self
            .at_end
            .unwrap_or_else(|| procstat::snapshot(self.pid, self.cpu));
        let at_start = self.at_start.unwrap_or(at_end);
        (at_start, at_end)
    }
}

/// The per-second series as it is built: what the workers have reported since the last tick,
/// and the seconds closed so far.
struct Progress {
    /// When the load started (the progress line's clock).
    start: Instant,
    /// The next second is closed at this instant; a little after the workers' own second, so
    /// that their reports are in.
    next_tick: Instant,
    /// When the second being counted began.
    last_tick: Instant,
    /// Operations completed in it, over every worker, and their latencies (empty unless
    /// [`Plan::per_second_latency`]).
    ops: u64,
    latency: Latency,
    /// Each worker's errors so far (they are cumulative).
    errors_by_worker: Vec<tally::Errors>,
    /// Broadcast receivers that never synced: errors from the start.
    unsynced: u64,
    /// The seconds closed so far.
    series: Vec<Interval>,
}

impl Progress {
    fn new(timeline: Timeline, threads: usize, unsynced: u64) -> Progress {
        Progress {
            start: timeline.start,
            next_tick: timeline.start + worker::INTERVAL + Duration::from_millis(50),
            last_tick: timeline.start,
            ops: 0,
            latency: Latency::new(),
            errors_by_worker: vec![tally::Errors::default(); threads],
            unsynced,
            series: Vec::new(),
        }
    }

    /// A worker's [`Message::Interval`].
    fn add(&mut self, worker: usize, ops: u64, latency: &Latency, errors: tally::Errors) {
        self.ops += ops;
        self.latency.merge(latency);
        self.errors_by_worker[worker] = errors;
    }

    /// If the tick is due: close the second (a progress line on stderr unless `--quiet`, an
    /// entry in the series) and start the next.
    fn tick(&mut self, now: Instant, plan: &Plan) {
        if now < self.next_tick {
            return;
        }
        let errors = self.errors_by_worker.iter().map(|e| e.total()).sum::<u64>() + self.unsynced;
        let secs = now.duration_since(self.last_tick).as_secs_f64();
        let sample = Interval {
            t_s: now.duration_since(self.start).as_secs_f64(),
            ops: self.ops,
            per_sec: self.ops as f64 / secs,
            latency: self.latency.percentiles(),
            errors,
        };
        if !plan.quiet {
            let p99 = (sample.latency.count > 0).then_some(sample.latency.p99);
            eprintln!(
                "{}",
                report::progress_line(
                    now.duration_since(self.start),
                    sample.per_sec,
                    plan.mode.op_name(),
                    p99,
                    errors
                )
            );
        }
        self.series.push(sample);
        self.ops = 0;
        self.latency.reset();
        self.last_tick = now;
        self.next_tick += worker::INTERVAL;
    }
}

/// Every worker's counts merged, with the errors only the coordinator can count: receivers
/// that never synced, and broadcast lines that never arrived anywhere.
fn totals(plan: &Plan, shared: &Shared, results: &[WorkerResult], unsynced: u64) -> Tally {
    let mut tally = Tally::default();
    for r in results {
        tally.merge(&r.tally);
    }
    tally.errors.unsynced += unsynced;
    if plan.mode == Mode::Broadcast {
        tally.errors.lost += broadcast::undelivered(shared, results);
    }
    tally
}

/// A worker could not run (no poller, no socket...): the run is abandoned.
fn worker_failed(worker: usize, error: String) -> io::Error {
    io::Error::other(format!("bench worker {worker} failed: {error}"))
}

/// Why a setup opened nothing, in one line: the most frequent cause, named with its target.
fn setup_failure(plan: &Plan, setup: &Setup) -> io::Error {
    let all = plan.sockets();
    let cause = [CauseKind::Send, CauseKind::Connect, CauseKind::Closed]
        .into_iter()
        .find_map(|k| setup.causes.top(k));
    let why = match cause {
        Some(c) => report::cause_words(c, plan),
        None if setup.errors.corrupt > 0 => format!(
            "{}: the probe came back altered",
            report::targets_text(plan)
        ),
        None if setup.errors.timeouts > 0 => {
            format!("{}: connects timed out", report::targets_text(plan))
        }
        None if plan.mode == Mode::Udp => format!(
            "udp {}: no reply to probe datagrams within {} s (is a UDP echo server there?)",
            report::targets_text(plan),
            udp::PROBE_TIMEOUT.as_secs()
        ),
        None => format!("{}: nothing could be opened", report::targets_text(plan)),
    };
    let tail = match cause.map(|c| c.kind) {
        Some(CauseKind::Closed) => format!("the server closed all {all} connections in setup"),
        _ if plan.mode == Mode::Udp => format!("0 of {all} sockets answered"),
        _ => format!("0 of {all} connections opened"),
    };
    io::Error::other(format!("{why} ({tail})"))
}

/// `setup: 8 of 10 connections open in 0.01 s; 2 failed: connect 127.0.0.1:7001: Connection
/// refused x2`.
fn setup_line(plan: &Plan, setup: &Setup, setup_s: f64, unsynced: u64) -> String {
    let mut line = format!(
        "setup: {} of {} {} in {setup_s:.2} s",
        setup.open,
        plan.sockets(),
        if plan.mode == Mode::Udp {
            "sockets answered"
        } else {
            "connections open"
        }
    );
    let failed: Vec<String> = setup
        .causes
        .sorted()
        .iter()
        .map(|c| report::cause_text(c, plan))
        .collect();
    if !failed.is_empty() {
        line += &format!("; failed: {}", failed.join(", "));
    }
    if unsynced > 0 {
        line += &format!(", {unsynced} never synced");
    }
    line
}

/// Build this worker's driver for the plan's mode and run it.
fn run_worker(
    poll: mio::Poll,
    control: Control,
    plan: &Plan,
    shared: &Shared,
    index: usize,
    threads: usize,
    ids: Vec<usize>,
) -> io::Result<()> {
    let churn = plan.mode == Mode::Connect;
    let sources = source_addrs(&plan.targets, plan.sockets(), plan.src_ips, churn);
    let dialer = Dialer::new(plan.targets.clone(), sources, index);
    // Setup pacing (every mode but connect, which paces its cycles once the load starts).
    let connect_pacer = plan
        .connect_rate
        .filter(|_| plan.mode != Mode::Connect)
        .map(|r| Pacer::new(Instant::now(), share(r, threads)));
    let rate = plan.rate.map(|r| share(r, threads));
    match plan.mode {
        Mode::Echo => {
            let driver = echo::Echo::new(dialer, &ids, plan, rate, connect_pacer);
            worker::run(poll, driver, control, plan, shared)
        }
        Mode::Broadcast => {
            let driver = broadcast::Broadcast::new(dialer, &ids, plan, connect_pacer);
            worker::run(poll, driver, control, plan, shared)
        }
        Mode::Udp => {
            let driver = udp::Udp::new(poll.registry(), &ids, plan, rate)?;
            worker::run(poll, driver, control, plan, shared)
        }
        Mode::Connect => {
            let cycle_rate = plan.connect_rate.map(|r| share(r, threads));
            let driver = connect::Churn::new(dialer, &ids, plan, cycle_rate);
            worker::run(poll, driver, control, plan, shared)
        }
        Mode::Idle => {
            let driver = idle::Idle::new(dialer, &ids, plan, connect_pacer);
            worker::run(poll, driver, control, plan, shared)
        }
    }
}

/// Fail early, with the way out, if the run needs more descriptors than this process may open.
fn check_fd_limit(sockets: usize) -> io::Result<()> {
    let limit = crate::procfs::fd_limit();
    // Each worker also holds an epoll, a waker and a timer; stdio and a margin.
    let need = sockets.saturating_add(64);
    if need > limit {
        return Err(usage_error(format!(
            "{sockets} connections need about {need} file descriptors but the limit is {limit} \
             (ulimit -n): raise it, or split the load over several `resound bench` processes"
        )));
    }
    Ok(())
}

/// `resound bench`: run, print the summary (or the JSON line) on stdout, and turn the result into
/// the exit status: 0 if every payload arrived intact; 1 on any error, when nothing could be
/// measured, or when the setup opened nothing (the message says why); 2 if the run could not
/// start (a usage error).
pub fn main(args: BenchArgs) -> std::process::ExitCode {
    let json = args.json;
    let plan = args.into_plan();
    match run(&plan) {
        Ok(report) => {
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.summary());
            }
            std::process::ExitCode::from(report.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("resound bench: {e}");
            let usage = e.kind() == io::ErrorKind::InvalidInput;
            std::process::ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
