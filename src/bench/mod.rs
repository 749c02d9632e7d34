//! `resound bench`: a load generator for echo, line-broadcast and UDP echo servers — resound or
//! any other server speaking the same protocols — that measures throughput, latency with
//! microsecond resolution, payload integrity, and (with `--pid`) the server's own CPU and memory.
//!
//! # Layout
//!
//! * this file: the [`Plan`] (what to run), the coordinator that starts the workers, steps the
//!   run through its phases, samples `/proc`, prints progress and builds the [`Report`].
//! * [`worker`]: one thread's mio loop, shared by every mode; [`pool`] and [`dial`]: its TCP
//!   connections, from the non-blocking connect to the close.
//! * one file per mode, each a [`worker::Driver`]: [`echo`], [`broadcast`], [`udp`],
//!   [`connect`] (also the probe that `idle` uses), [`idle`].
//! * pure parts, unit-tested without sockets: [`payload`] (byte streams and their check),
//!   [`line`](mod@line) (the broadcast line format and sequence checking), [`pacing`] (phases and the
//!   open-loop schedule), [`histogram`], [`tally`], [`report`] (text and JSON), [`procstat`]
//!   (parsing `/proc`).
//! * [`args`]: the command line, in clap's derive style like `resound serve`.
//!
//! # A run
//!
//! 1. **Setup.** Each worker opens its connections (at most 128 connects in progress per
//!    worker, or `--connect-rate`), and reports when all are open or failed. Broadcast then syncs:
//!    sender 0 sends sync lines until every other connection has seen one, proving the server
//!    has registered all receivers.
//! 2. **Warm-up** (`--warmup`), then the **measured window** (`--duration`): only operations that
//!    complete inside the window count, so connection setup and cold caches do not.
//! 3. **Drain** (`--drain`): no new operations; what is in flight may still arrive. Whatever
//!    has not arrived at the end is lost, and a loss is an error.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

pub mod args;
pub mod broadcast;
pub mod connect;
pub mod dial;
pub mod echo;
pub mod histogram;
pub mod idle;
pub mod line;
pub mod pacing;
pub mod payload;
pub mod pool;
pub mod procstat;
pub mod report;
pub mod tally;
pub mod udp;
pub mod worker;

pub use args::BenchArgs;
pub use report::Report;

use dial::{Dialer, source_addrs};
use histogram::Latency;
use pacing::{Pacer, Timeline, share};
use tally::{Errors, Tally};
use worker::{Command, Control, Message, WorkerResult};

/// The read buffer of each worker (also the largest write): 64 KiB, like the server's.
pub const READ_BUF: usize = 64 * 1024;

/// How long the broadcast sync handshake may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub mode: Mode,
    pub target: SocketAddr,
    /// echo/udp: connections (sockets); broadcast: receivers; connect: connects in progress at
    /// once; idle: connections to hold.
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// echo/udp: message size; broadcast: line size (newline included); connect/idle: bytes
    /// echoed to confirm each connection (0 = none).
    pub size: usize,
    /// Closed loop: messages in flight per connection (echo, udp).
    pub pipeline: usize,
    /// Open loop: operations per second in total (echo, udp: messages; broadcast: lines sent).
    pub rate: Option<f64>,
    /// Connections opened per second (connect: cycles; others: during setup).
    pub connect_rate: Option<f64>,
    /// Broadcast: sending connections (they receive too).
    pub senders: usize,
    /// Broadcast, closed loop: lines per sender not yet delivered everywhere.
    pub window: usize,
    pub threads: usize,
    /// Source addresses 127.0.0.1..N (None: as many as needed).
    pub src_ips: Option<usize>,
    /// UDP: set SO_BROADCAST.
    pub broadcast: bool,
    /// The server's process, for CPU and memory figures.
    pub pid: Option<u32>,
    /// The CPU the server runs on, for its busy share.
    pub cpu: Option<usize>,
    pub drain: Duration,
    pub setup_timeout: Duration,
    /// No progress lines on stderr.
    pub quiet: bool,
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
            target,
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

    /// Check the plan; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.threads == 0 || self.threads > 256 {
            return Err("--threads must be 1..256".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        if self.pipeline == 0 {
            return Err("--pipeline must be at least 1".into());
        }
        if self.rate.is_some_and(|r| r <= 0.0 || !r.is_finite())
            || self
                .connect_rate
                .is_some_and(|r| r <= 0.0 || !r.is_finite())
        {
            return Err("rates must be positive".into());
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
            Mode::Broadcast if self.window == 0 => Err("--window must be at least 1".into()),
            Mode::Connect | Mode::Idle if self.size > READ_BUF => {
                Err(format!("the probe --size may be at most {READ_BUF}"))
            }
            _ => Ok(()),
        }
    }
}

/// What every worker shares: read-only tables, and the few counters modes coordinate through.
pub struct Shared {
    pub pattern: payload::Pattern,
    /// The broadcast lines' printable filler.
    pub filler: line::Filler,
    /// Broadcast timestamps are nanoseconds since this instant (one process, one clock).
    pub epoch: Instant,
    /// Broadcast: connections that have seen a sync line.
    pub synced: AtomicU64,
    /// Broadcast: connections open (a line is delivered when all of them but its sender have it).
    pub live: AtomicU64,
    /// Broadcast: each sender's send window.
    pub windows: Vec<broadcast::Window>,
}

/// Run `plan` to the end and report. Errors: a plan that cannot run (bad values, not enough file
/// descriptors, a thread that cannot start). Failures of the server are not errors of the run:
/// they are counted in the report.
pub fn run(plan: &Plan) -> io::Result<Report> {
    plan.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    check_fd_limit(plan.sockets())?;
    let threads = plan.threads.min(plan.sockets());
    let pattern = payload::Pattern::new();
    let shared = Arc::new(Shared {
        filler: line::Filler::new(&pattern),
        pattern,
        epoch: Instant::now(),
        synced: AtomicU64::new(0),
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
    let tell = |cmd: &dyn Fn() -> Command| {
        for (tx, waker, _) in &workers {
            let _ = tx.send(cmd());
            let _ = waker.wake();
        }
    };

    // 1. Setup.
    let mut settled = 0;
    let mut open = 0;
    let deadline = setup_start + plan.setup_timeout;
    while settled < threads {
        match msg_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Message::Settled { open: n, .. }) => {
                settled += 1;
                open += n;
            }
            Ok(Message::Failed { error, .. }) => {
                tell(&|| Command::Stop);
                return Err(io::Error::other(error));
            }
            Ok(_) => {}
            Err(_) => {
                if !plan.quiet {
                    eprintln!(
                        "setup: timed out after {:?}; starting anyway",
                        plan.setup_timeout
                    );
                }
                break;
            }
        }
    }
    let mut unsynced = 0;
    if plan.mode == Mode::Broadcast {
        shared.live.store(open, Ordering::Relaxed);
        tell(&|| Command::Sync);
        let want = open.saturating_sub(1);
        let until = Instant::now() + SYNC_TIMEOUT;
        while shared.synced.load(Ordering::Relaxed) < want && Instant::now() < until {
            thread::sleep(Duration::from_millis(2));
        }
        unsynced = want.saturating_sub(shared.synced.load(Ordering::Relaxed));
    }
    let setup_s = setup_start.elapsed().as_secs_f64();
    if !plan.quiet && plan.mode != Mode::Connect {
        eprintln!(
            "setup: {open} of {} connections open in {setup_s:.2} s{}",
            plan.sockets(),
            if unsynced > 0 {
                format!(", {unsynced} never synced")
            } else {
                String::new()
            }
        );
    }

    // 2. Load.
    let timeline = Timeline::new(Instant::now(), plan.warmup, plan.duration, plan.drain);
    tell(&|| Command::Start(timeline));
    let mut at_start = None;
    let mut at_end = None;
    if plan.mode == Mode::Idle {
        at_start = Some(before);
    }
    let mut next_tick = timeline.start + worker::INTERVAL + Duration::from_millis(50);
    let mut last_tick = timeline.start;
    let mut interval_ops = 0;
    let mut interval_latency = Latency::new();
    let mut errors_by_worker = vec![Errors::default(); threads];
    let mut results: Vec<Option<WorkerResult>> = (0..threads).map(|_| None).collect();
    let mut done = 0;
    while done < threads {
        let now = Instant::now();
        if at_start.is_none() && now >= timeline.measure_from {
            at_start = Some(procstat::snapshot(plan.pid, plan.cpu));
        }
        if at_end.is_none() && now >= timeline.measure_until {
            at_end = Some(procstat::snapshot(plan.pid, plan.cpu));
        }
        if now >= next_tick {
            if !plan.quiet {
                let errors: u64 = errors_by_worker.iter().map(|e| e.total()).sum();
                let secs = now.duration_since(last_tick).as_secs_f64();
                eprintln!(
                    "{}",
                    report::progress_line(
                        now.duration_since(timeline.start),
                        interval_ops as f64 / secs,
                        plan.mode.op_name(),
                        interval_latency.percentile(99.0),
                        errors + unsynced
                    )
                );
            }
            interval_ops = 0;
            interval_latency.reset();
            last_tick = now;
            next_tick += worker::INTERVAL;
        }
        let mut wake = next_tick;
        if at_start.is_none() {
            wake = wake.min(timeline.measure_from);
        }
        if at_end.is_none() {
            wake = wake.min(timeline.measure_until);
        }
        match msg_rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Message::Interval {
                worker,
                ops,
                latency,
                errors,
            }) => {
                interval_ops += ops;
                interval_latency.merge(&latency);
                errors_by_worker[worker] = errors;
            }
            Ok(Message::Done { worker, result }) => {
                results[worker] = Some(*result);
                done += 1;
            }
            Ok(Message::Failed { error, .. }) => {
                tell(&|| Command::Stop);
                return Err(io::Error::other(error));
            }
            Ok(Message::Settled { .. }) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("a bench worker exited without a result"));
            }
        }
    }
    let at_end = at_end.unwrap_or_else(|| procstat::snapshot(plan.pid, plan.cpu));
    let at_start = at_start.unwrap_or(at_end);
    for (_, _, handle) in workers {
        let _ = handle.join();
    }

    // 3. Totals.
    let results: Vec<WorkerResult> = results.into_iter().flatten().collect();
    let mut tally = Tally::default();
    for r in &results {
        tally.merge(&r.tally);
    }
    tally.errors.unsynced += unsynced;
    if plan.mode == Mode::Broadcast {
        tally.errors.lost += broadcast::undelivered(&shared, &results);
    }
    let held: u64 = results.iter().map(|r| r.open).sum();
    let window_s = timeline.window_secs();
    // Idle's figures cover the whole hold, connections opening included.
    let secs = if plan.mode == Mode::Idle {
        (timeline.measure_until - setup_start).as_secs_f64()
    } else {
        window_s
    };
    let usage = procstat::usage(&at_start, &at_end, secs, crate::procfs::ticks_per_sec());
    Ok(Report::new(
        plan, tally, held, window_s, setup_s, &before, &at_end, usage,
    ))
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
    let sources = source_addrs(plan.target, plan.sockets(), plan.src_ips, churn);
    let dialer = Dialer::new(plan.target, sources, index);
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
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{sockets} connections need about {need} file descriptors but the limit is \
                 {limit} (ulimit -n): raise it, or split the load over several `resound bench` \
                 processes"
            ),
        ));
    }
    Ok(())
}

/// `resound bench`: run, print the summary (or the JSON line) on stdout, and turn the result into
/// the exit status: 0 if every payload arrived intact, 1 on any error, 2 if the run could not
/// start (like a usage error).
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
            std::process::ExitCode::from(2)
        }
    }
}
