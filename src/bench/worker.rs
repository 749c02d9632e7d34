//! One load-generating thread: a mio loop that drives its share of the sockets through a
//! [`Driver`] (one per mode) and talks to the coordinator.
//!
//! The worker knows nothing of echo or broadcast. It polls, hands each event to the driver, calls
//! the driver once per loop turn (pacing, opening connections), reports progress every second,
//! and ends when the run's [`Timeline`] says so: at the end of the measured window no new
//! operation starts; the worker keeps reading until nothing is in flight or the drain deadline
//! passes, then the driver counts what is still missing as lost.
//!
//! Commands from the coordinator arrive on a channel, with a [`Waker`] to interrupt `poll`.
//! Deadlines closer than a few milliseconds are slept with a `timerfd` (nanosecond precision):
//! `epoll_wait` rounds its timeout up to whole milliseconds, which would bunch an open-loop
//! schedule into 1 ms bursts and add up to a millisecond of our own delay to every latency.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use super::histogram::Latency;
use super::pacing::{Phase, Timeline};
use super::tally::{Causes, Errors, Tally};
use super::{Plan, Shared};

pub const WAKER: Token = Token(usize::MAX);
pub const TIMER: Token = Token(usize::MAX - 1);

/// How often progress is reported.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// When nothing else is due, look at the clock this often anyway (connect timeouts, setup).
const IDLE_TICK: Duration = Duration::from_millis(50);

/// Deadlines closer than this are slept with the timerfd instead of `epoll_wait`'s timeout.
const FINE_SLEEP: Duration = Duration::from_millis(5);

/// From the coordinator to a worker.
#[derive(Debug)]
pub enum Command {
    /// Broadcast only: every connection is open; start the sync handshake.
    Sync,
    /// Load starts now; here are the phases.
    Start(Timeline),
    /// Stop at once (the coordinator gave up, e.g. a setup timeout).
    Stop,
}

/// From a worker to the coordinator.
#[derive(Debug)]
pub enum Message {
    /// Every connection of this worker is open or has failed (UDP: every socket's probe is
    /// answered or given up; connect: every slot has done one cycle): `open` succeeded, and
    /// here is why the others failed.
    Settled {
        open: u64,
        errors: Errors,
        causes: Causes,
    },
    /// Broadcast: this many of the worker's connections have now seen a sync line.
    Synced { worker: usize, synced: u64 },
    /// The worker could not run (e.g. no poller): the run is abandoned.
    Failed { worker: usize, error: String },
    /// Progress since the last report.
    Interval {
        worker: usize,
        ops: u64,
        latency: Box<Latency>,
        errors: Errors,
    },
    /// The worker has finished; its final counts.
    Done {
        worker: usize,
        result: Box<WorkerResult>,
    },
}

/// What a worker hands back.
#[derive(Debug, Default)]
pub struct WorkerResult {
    pub tally: Tally,
    /// Broadcast only: per open connection, the sender it is itself (if any), the next sequence
    /// number it expected from each sender, and the damaged lines it could not place: the
    /// coordinator counts the lines that never arrived.
    pub expected_next: Vec<(Option<u16>, Vec<u64>, u64)>,
    /// Connections open at the end (idle: the connections held).
    pub open: u64,
}

/// What a driver may use during a call.
pub struct Cx<'a> {
    pub registry: &'a Registry,
    /// The time, read once per loop turn after `poll`.
    pub now: Instant,
    /// The phases, once the load has started.
    pub timeline: Option<Timeline>,
    /// The broadcast sync handshake is on.
    pub syncing: bool,
    pub tally: &'a mut Tally,
    /// The read buffer shared by all of this worker's sockets.
    pub buf: &'a mut [u8],
    pub plan: &'a Plan,
    pub shared: &'a Shared,
}

impl Cx<'_> {
    /// Load is running and new operations may start.
    pub fn sending(&self) -> bool {
        self.timeline.is_some_and(|t| t.sending(self.now))
    }
}

/// A mode's behaviour, driven by the worker loop.
pub trait Driver {
    /// A readiness event for one of the driver's tokens.
    fn event(&mut self, cx: &mut Cx, event: &Event);
    /// Once per loop turn, after the events: open connections, send what pacing says is due,
    /// check timeouts.
    fn turn(&mut self, cx: &mut Cx);
    /// Setup is over (every socket is open or has failed): how many succeeded. `None` while
    /// setup goes on.
    fn settled(&self) -> Option<u64>;
    /// Broadcast: connections that have seen a sync line.
    fn synced(&self) -> u64 {
        0
    }
    /// Operations started and not yet completed; the drain waits for 0.
    fn in_flight(&self, cx: &Cx) -> u64;
    /// The next instant the driver needs a turn even without events (pacing).
    fn wake_at(&self, cx: &Cx) -> Option<Instant>;
    /// The run is over: count what is missing and close everything.
    fn finish(&mut self, cx: &mut Cx, result: &mut WorkerResult);
}

/// A worker's connection to the coordinator.
pub struct Control {
    pub index: usize,
    pub commands: Receiver<Command>,
    pub messages: Sender<Message>,
}

/// Make a poller and its waker (the coordinator keeps the waker).
pub fn poller() -> io::Result<(Poll, Arc<Waker>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    Ok((poll, waker))
}

/// Run one worker to the end. Each turn of the loop sleeps until the next thing is due, hands
/// the events to the driver, gives the driver its turn, tells the coordinator what is new, and
/// ends the run when the timeline (or the coordinator) says so.
pub fn run<D: Driver>(
    mut poll: Poll,
    mut driver: D,
    control: Control,
    plan: &Plan,
    shared: &Shared,
) -> io::Result<()> {
    let timer = FineTimer::new(poll.registry())?;
    let mut events = Events::with_capacity(1024);
    let mut tally = Tally {
        progress: plan.per_second_latency,
        ..Tally::default()
    };
    let mut buf = vec![0u8; super::READ_BUF];
    let mut link = Link::new(control);
    // An owned handle to the registry, so one context can live across `poll`, which needs the
    // poller itself mutably.
    let registry = poll.registry().try_clone()?;
    let mut cx = Cx {
        registry: &registry,
        now: Instant::now(),
        timeline: None,
        syncing: false,
        tally: &mut tally,
        buf: &mut buf,
        plan,
        shared,
    };

    loop {
        cx.now = Instant::now();
        let deadline = next_deadline(&driver, &cx, link.next_report);
        wait_until(&mut poll, &mut events, &timer, deadline, cx.now)?;

        cx.now = Instant::now();
        for event in events.iter() {
            match event.token() {
                WAKER => link.take_commands(&mut cx),
                TIMER => timer.clear()?,
                _ => driver.event(&mut cx, event),
            }
        }
        driver.turn(&mut cx);

        link.tell_news(&driver, &mut cx);
        if over(&driver, &cx) || link.stop {
            link.finish(&mut driver, &mut cx);
            return Ok(());
        }
    }
}

/// The next instant a turn is due even without events: the driver's own (pacing), the next
/// progress report, the end of the window or of the drain, and at the latest the idle tick.
#[inline]
fn next_deadline<D: Driver>(driver: &D, cx: &Cx, next_report: Option<Instant>) -> Instant {
    let now = cx.now;
    [
        driver.wake_at(cx),
        next_report,
        cx.timeline.map(|t| match t.phase(now) {
            Phase::Warmup | Phase::Measure => t.measure_until,
            Phase::Drain | Phase::Over => t.drain_until,
        }),
        Some(now + IDLE_TICK),
    ]
    .into_iter()
    .flatten()
    .min()
    .expect("the idle tick is always there")
}

/// Wait for events until `deadline` (`now` is the time it was computed at). A deadline closer
/// than [`FINE_SLEEP`] is left to the timerfd, since `epoll_wait` would round it up to a whole
/// millisecond. An interrupted wait is an ordinary wake-up.
#[inline]
fn wait_until(
    poll: &mut Poll,
    events: &mut Events,
    timer: &FineTimer,
    deadline: Instant,
    now: Instant,
) -> io::Result<()> {
    let wait = deadline.saturating_duration_since(now);
    let timeout = if wait > Duration::ZERO && wait < FINE_SLEEP {
        timer.arm(deadline, wait)?;
        None
    } else {
        Some(wait)
    };
    if let Err(e) = poll.poll(events, timeout)
        && e.kind() != io::ErrorKind::Interrupted
    {
        return Err(e);
    }
    Ok(())
}

/// The run is over for this worker: the drain has nothing left in flight, or it has run out.
#[inline]
fn over<D: Driver>(driver: &D, cx: &Cx) -> bool {
    match cx.timeline.map(|t| t.phase(cx.now)) {
        Some(Phase::Drain) => driver.in_flight(cx) == 0,
        Some(Phase::Over) => true,
        Some(Phase::Warmup | Phase::Measure) | None => false,
    }
}

/// The worker's end of its link to the coordinator: the channels, and what has been said over
/// them so far (so that each piece of news is sent once).
struct Link {
    control: Control,
    /// [`Message::Settled`] has been sent.
    settled_sent: bool,
    /// The synced count last sent in [`Message::Synced`].
    synced_sent: u64,
    /// When the next [`Message::Interval`] is due (once the load has started).
    next_report: Option<Instant>,
    /// The coordinator said [`Command::Stop`].
    stop: bool,
}

impl Link {
    fn new(control: Control) -> Link {
        Link {
            control,
            settled_sent: false,
            synced_sent: 0,
            next_report: None,
            stop: false,
        }
    }

    /// The waker fired: carry out every command waiting on the channel.
    #[inline]
    fn take_commands(&mut self, cx: &mut Cx) {
        while let Ok(cmd) = self.control.commands.try_recv() {
            match cmd {
                Command::Sync => cx.syncing = true,
                Command::Start(t) => {
                    cx.syncing = false;
                    cx.timeline = Some(t);
                    self.next_report = Some(t.start + INTERVAL);
                }
                Command::Stop => self.stop = true,
            }
        }
    }

    /// After each turn, tell the coordinator what is new.
    #[inline]
    fn tell_news<D: Driver>(&mut self, driver: &D, cx: &mut Cx) {
        self.tell_settled(driver, cx);
        self.tell_synced(driver);
        self.tell_progress(cx);
    }

    /// Once, when setup is over: how many sockets opened, and why the others failed.
    #[inline]
    fn tell_settled<D: Driver>(&mut self, driver: &D, cx: &Cx) {
        if !self.settled_sent
            && let Some(open) = driver.settled()
        {
            self.settled_sent = true;
            let _ = self.control.messages.send(Message::Settled {
                open,
                errors: cx.tally.errors,
                causes: cx.tally.causes.clone(),
            });
        }
    }

    /// Broadcast: how many connections have seen a sync line, whenever that number changes.
    #[inline]
    fn tell_synced<D: Driver>(&mut self, driver: &D) {
        let synced = driver.synced();
        if synced != self.synced_sent {
            self.synced_sent = synced;
            let _ = self.control.messages.send(Message::Synced {
                worker: self.control.index,
                synced,
            });
        }
    }

    /// Every [`INTERVAL`] once the load has started: the last second's progress.
    #[inline]
    fn tell_progress(&mut self, cx: &mut Cx) {
        if let Some(at) = self.next_report
            && cx.now >= at
        {
            self.next_report = Some(at + INTERVAL);
            self.send_interval(cx);
        }
    }

    /// Send what was counted since the last report, and start counting the next second. Once a
    /// second, so kept out of line: the check above stays small enough to inline in every turn.
    #[inline(never)]
    fn send_interval(&self, cx: &mut Cx) {
        let latency = Box::new(cx.tally.interval_latency.clone());
        cx.tally.interval_latency.reset();
        let ops = std::mem::take(&mut cx.tally.interval_ops);
        let errors = cx.tally.errors;
        let _ = self.control.messages.send(Message::Interval {
            worker: self.control.index,
            ops,
            latency,
            errors,
        });
    }

    /// The run is over: the driver counts what is missing and closes everything, and the final
    /// counts go to the coordinator.
    fn finish<D: Driver>(&self, driver: &mut D, cx: &mut Cx) {
        let mut result = WorkerResult::default();
        driver.finish(cx, &mut result);
        result.tally = std::mem::take(cx.tally);
        let _ = self.control.messages.send(Message::Done {
            worker: self.control.index,
            result: Box::new(result),
        });
    }
}

/// A `timerfd` registered with the poller: a one-shot wake-up with nanosecond precision.
struct FineTimer {
    fd: OwnedFd,
    /// The deadline it is armed for and has not fired yet: a loop turn woken by a socket before
    /// it, with the same deadline ahead, need not pay a `timerfd_settime` again (in open loop
    /// that is every other wake-up).
    armed_for: std::cell::Cell<Option<Instant>>,
}

impl FineTimer {
    fn new(registry: &Registry) -> io::Result<FineTimer> {
        // SAFETY: timerfd_create returns a new descriptor or -1.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we own from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), TIMER, Interest::READABLE)?;
        Ok(FineTimer {
            fd,
            armed_for: std::cell::Cell::new(None),
        })
    }

    /// Fire once at `deadline`, which is `after` from now.
    fn arm(&self, deadline: Instant, after: Duration) -> io::Result<()> {
        if self.armed_for.get() == Some(deadline) {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                // A zero value would disarm the timer; wake at least a nanosecond from now.
                tv_nsec: (after.subsec_nanos().max(1)) as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and a valid itimerspec.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed_for.set(Some(deadline));
        Ok(())
    }

    /// Consume the expiration count so the next expiry raises a new edge.
    fn clear(&self) -> io::Result<()> {
        self.armed_for.set(None);
        let mut n = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer.
        let rc = unsafe { libc::read(self.fd.as_raw_fd(), n.as_mut_ptr().cast(), 8) };
        if rc == 8 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            // A spurious wake-up: the timer had not expired (or was re-armed) after all.
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(()),
            // A timerfd read is 8 bytes or an error; anything else means the timer is broken
            // and every deadline of this worker with it.
            _ if rc < 0 => Err(io::Error::new(e.kind(), format!("timerfd read: {e}"))),
            _ => Err(io::Error::other(format!(
                "timerfd read returned {rc} bytes"
            ))),
        }
    }
}
