//! Stopping: the signals, the [`Handle`] that stops a server from another thread, and the
//! graceful drain.
//!
//! Both signals and handles end up as *stop requests* counted by [`Stop`]. The first starts a
//! graceful drain: stop accepting, let every connection finish what it was doing when the stop
//! came, close each through FIN-WAIT, for at most `--drain-timeout`. The second stops at once.
//!
//! | signal | what it does | why |
//! |---|---|---|
//! | SIGINT, SIGTERM | graceful drain; a second one stops at once | Ctrl-C and `kill`, as every server |
//! | SIGQUIT | the same as SIGTERM | nginx's graceful QUIT; never a core dump that drops clients |
//! | SIGUSR1 | log the stats line now | ask a running server how it is doing |
//! | SIGHUP, SIGUSR2 | logged and ignored | a closed terminal or a stray `kill -HUP` must not drop every client (Redis ignores SIGHUP too); there is no configuration to reload |

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::info;
use mio::{Interest, Registry, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;

/// A cloneable, thread-safe way to stop a running server.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

struct Inner {
    waker: Waker,
    requests: AtomicUsize,
}

impl Handle {
    pub(crate) fn new(waker: Waker) -> Handle {
        Handle {
            inner: Arc::new(Inner {
                waker,
                requests: AtomicUsize::new(0),
            }),
        }
    }

    /// Ask the server to stop: the first call starts a graceful shutdown (stop accepting,
    /// finish every connection, at most `drain_timeout`); a second call stops at once.
    pub fn shutdown(&self) {
        self.inner.requests.fetch_add(1, Ordering::SeqCst);
        // If the wake fails the loop is gone already; nothing left to stop.
        let _ = self.inner.waker.wake();
    }

    /// How many stop requests were made through handles.
    fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }
}

/// What the loop must do about stop requests this turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopStep {
    /// Nothing new.
    None,
    /// The first request: begin the graceful drain.
    Drain,
    /// A further request: close everything now.
    Now,
}

/// Where stop requests come from (signals and handles) and how many were handled.
pub struct Stop {
    handle: Handle,
    signals: Option<Signals>,
    signals_seen: usize,
    handled: usize,
    /// SIGUSR1 arrived: the stats line is wanted now.
    stats_wanted: bool,
}

impl Stop {
    /// Requests through `handle`; signals too when `signals_token` is given (the binary; the
    /// in-process tests use the handle only).
    pub fn new(
        handle: Handle,
        registry: &Registry,
        signals_token: Option<Token>,
    ) -> io::Result<Stop> {
        let signals = match signals_token {
            Some(token) => {
                let mut signals =
                    Signals::new([SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2])?;
                registry.register(&mut signals, token, Interest::READABLE)?;
                Some(signals)
            }
            None => None,
        };
        Ok(Stop {
            handle,
            signals,
            signals_seen: 0,
            handled: 0,
            stats_wanted: false,
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The signals' token was readable: take every pending signal.
    pub fn on_signals(&mut self) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        for signal in signals.pending() {
            match signal {
                SIGINT | SIGTERM | SIGQUIT => {
                    info!("received {}", name(signal));
                    self.signals_seen += 1;
                }
                SIGUSR1 => self.stats_wanted = true,
                _ => info!(
                    "received {}: ignored (SIGTERM or SIGINT stops the server)",
                    name(signal)
                ),
            }
        }
    }

    /// Was SIGUSR1 received since the last call?
    pub fn take_stats_wanted(&mut self) -> bool {
        std::mem::take(&mut self.stats_wanted)
    }

    /// Is a request waiting to be handled? (Then `poll` must not sleep.)
    pub fn pending(&self) -> bool {
        self.requests() > self.handled
    }

    /// Handle new requests: the first starts the drain, any later one stops at once.
    pub fn step(&mut self) -> StopStep {
        let requests = self.requests();
        if requests <= self.handled {
            return StopStep::None;
        }
        let first = self.handled == 0;
        self.handled = requests;
        if first && requests == 1 {
            StopStep::Drain
        } else {
            StopStep::Now
        }
    }

    fn requests(&self) -> usize {
        self.handle.requests() + self.signals_seen
    }
}

fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGQUIT => "SIGQUIT",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        _ => "a signal",
    }
}

/// The state of a graceful stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// Serving normally.
    Serving,
    /// Draining: every connection finishes, until this deadline (None: a deadline too far to
    /// represent, i.e. never).
    Until(Option<Instant>),
    /// Closing everything now.
    Now,
}

impl Drain {
    /// Begin draining at `now` for at most `timeout`.
    pub fn begin(now: Instant, timeout: Duration) -> Drain {
        Drain::Until(now.checked_add(timeout))
    }

    /// Is a stop under way (the loop ends when the last connection is gone)?
    pub fn stopping(self) -> bool {
        self != Drain::Serving
    }

    /// The drain's deadline, for the poll timeout.
    pub fn deadline(self) -> Option<Instant> {
        match self {
            Drain::Until(until) => until,
            Drain::Serving | Drain::Now => None,
        }
    }

    /// Has the drain run out of time at `now`?
    pub fn expired(self, now: Instant) -> bool {
        self.deadline().is_some_and(|until| until <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop() -> (Stop, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let handle = Handle::new(Waker::new(poll.registry(), Token(0)).unwrap());
        (Stop::new(handle, poll.registry(), None).unwrap(), poll)
    }

    #[test]
    fn test_first_request_drains_second_stops_now() {
        let (mut stop, _poll) = stop();
        assert!(!stop.pending());
        assert_eq!(stop.step(), StopStep::None);
        stop.handle().shutdown();
        assert!(stop.pending());
        assert_eq!(stop.step(), StopStep::Drain);
        assert_eq!(stop.step(), StopStep::None, "handled once");
        stop.handle().shutdown();
        assert_eq!(stop.step(), StopStep::Now);
    }

    #[test]
    fn test_two_requests_before_the_loop_looks_stop_now() {
        let (mut stop, _poll) = stop();
        stop.handle().shutdown();
        stop.handle().shutdown();
        assert_eq!(stop.step(), StopStep::Now);
    }

    #[test]
    fn test_drain_deadline_and_expiry() {
        let now = Instant::now();
        let d = Drain::begin(now, Duration::from_secs(5));
        assert!(d.stopping());
        assert!(!d.expired(now));
        assert!(d.expired(now + Duration::from_secs(5)));
        let forever = Drain::begin(now, Duration::MAX);
        assert_eq!(
            forever.deadline(),
            None,
            "too far to represent: never, not a panic"
        );
        assert!(!forever.expired(now + Duration::from_secs(1 << 40)));
        assert!(!Drain::Serving.stopping());
    }
}
