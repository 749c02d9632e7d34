//! The `connect` mode (connection churn), and the probe that it and `idle` use to confirm a
//! connection.
//!
//! Each of `-c` slots loops: connect, (probe,) close, connect again. The latency recorded is the
//! connect's: from the `connect` call to the handshake completing. A connect alone does not prove
//! the server did anything — the kernel completes the handshake and queues the connection before
//! the server accepts it — so by default each connection also echoes one byte (`--size`, the
//! *probe*): a cycle then costs the server an accept, a read, a write and a close, and the rate
//! measures the server. `--size 0` skips the probe for servers that do not echo.
//!
//! With `--connect-rate`, cycles start on a schedule instead of as soon as a slot frees up, and
//! `-c` caps how many may be in progress.
//!
//! Setup runs one cycle in every slot before the load starts: a server that is down or does not
//! echo is found (and named) there, at once, instead of as a run full of failed cycles.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use mio::event::Event;

use super::Plan;
use super::dial::Dialer;
use super::pacing::Pacer;
use super::pool::{Fault, Hangup, LinkEvent, LinkState, Pool, ReadEnd};
use super::worker::{Cx, Driver, WorkerResult};

/// One connection's probe: `size` pattern bytes written and read back.
#[derive(Default)]
pub struct Probe {
    written: usize,
    read: usize,
    /// Connect mode: how long the connect took (the cycle's latency, recorded when it
    /// completes).
    pub connect_latency: Duration,
    /// The probe has come back (or there is none).
    pub done: bool,
}

/// What [`Probe::advance`] concluded.
#[derive(Debug)]
pub enum ProbeStatus {
    /// Waiting for the socket.
    Pending,
    /// Every probe byte came back intact.
    Done,
    /// The connection failed, closed, or sent bytes other than the probe's.
    Failed(Fault),
}

impl Probe {
    /// Write what is left of link `i`'s probe and read what has come back.
    pub fn advance(pool: &mut Pool<Probe>, i: usize, cx: &mut Cx, size: usize) -> ProbeStatus {
        let p = &pool.links[i].st;
        if p.written < size {
            let from = p.written;
            let bytes = cx.shared.pattern.slice(0, from as u64, size - from);
            match pool.write_some(i, bytes) {
                Ok(n) => pool.links[i].st.written += n,
                Err(e) => return ProbeStatus::Failed(Fault::Closed(Hangup::Failed(e))),
            }
        }
        if pool.links[i].st.read == size {
            return Self::done(&mut pool.links[i].st);
        }
        let end = pool.read_all(cx, i, |cx, p, got| {
            if p.read + got.len() > p.written || !cx.shared.pattern.matches(0, p.read as u64, got) {
                return ControlFlow::Break(());
            }
            p.read += got.len();
            ControlFlow::Continue(())
        });
        match end {
            ReadEnd::Stopped(()) => ProbeStatus::Failed(Fault::Corrupt),
            ReadEnd::Hangup(how) => ProbeStatus::Failed(Fault::Closed(how)),
            ReadEnd::Drained if pool.links[i].st.read == size => Self::done(&mut pool.links[i].st),
            ReadEnd::Drained => ProbeStatus::Pending,
        }
    }

    fn done(p: &mut Probe) -> ProbeStatus {
        p.done = true;
        ProbeStatus::Done
    }
}

pub struct Churn {
    pool: Pool<Probe>,
    size: usize,
    /// This worker's share of `--connect-rate`; its schedule starts with the load.
    rate: Option<f64>,
    pacer: Option<Pacer>,
    started: bool,
    /// Setup: slots whose first cycle has not ended yet (`None` before setup began).
    setup_pending: Option<usize>,
    /// Setup: first cycles that succeeded.
    setup_ok: u64,
}

impl Churn {
    pub fn new(dialer: Dialer, ids: &[usize], plan: &Plan, rate: Option<f64>) -> Churn {
        Churn {
            pool: Pool::new(dialer, ids.iter().map(|&id| (id, Probe::default()))),
            size: plan.size,
            rate,
            pacer: None,
            started: false,
            setup_pending: None,
            setup_ok: 0,
        }
    }

    /// Setup: a slot's first cycle ended (`ok`: intact).
    fn setup_cycle_ended(&mut self, ok: bool) {
        if let Some(n) = self.setup_pending.as_mut().filter(|n| **n > 0) {
            *n -= 1;
            self.setup_ok += ok as u64;
        }
    }

    fn free_slot(&self) -> bool {
        self.pool
            .links
            .iter()
            .any(|l| l.state == LinkState::Unopened)
    }

    /// A cycle ended: count it if it succeeded, close the socket, free the slot.
    fn end_cycle(&mut self, cx: &mut Cx, i: usize, status: ProbeStatus) {
        match status {
            ProbeStatus::Pending => {}
            ProbeStatus::Done => {
                if let Some(tl) = &cx.timeline {
                    let latency = self.pool.links[i].st.connect_latency;
                    cx.tally.complete(tl, cx.now, latency, self.size as u64);
                }
                self.setup_cycle_ended(cx.timeline.is_none());
                self.pool.close(i, LinkState::Unopened);
            }
            ProbeStatus::Failed(fault) => {
                self.setup_cycle_ended(false);
                self.pool.fail(cx, i, fault, LinkState::Unopened);
            }
        }
    }
}

impl Driver for Churn {
    fn event(&mut self, cx: &mut Cx, event: &Event) {
        let Some((i, what)) = self.pool.event(cx, event) else {
            return;
        };
        let size = self.size;
        let status = match what {
            // A failed connect is counted by the pool; the slot is retried.
            LinkEvent::ConnectFailed => {
                self.pool.links[i].state = LinkState::Unopened;
                self.setup_cycle_ended(false);
                return;
            }
            LinkEvent::Connected(latency) => {
                self.pool.links[i].st = Probe {
                    connect_latency: latency,
                    ..Probe::default()
                };
                Probe::advance(&mut self.pool, i, cx, size)
            }
            LinkEvent::Ready { .. } => Probe::advance(&mut self.pool, i, cx, size),
        };
        self.end_cycle(cx, i, status);
    }

    fn turn(&mut self, cx: &mut Cx) {
        let expired = self.pool.expire_connects(cx, LinkState::Unopened);
        for _ in 0..expired {
            self.setup_cycle_ended(false); // timed out
        }
        if self.setup_pending.is_none() {
            // Setup: one cycle per slot, all at once.
            self.setup_pending = Some(self.pool.links.len());
            for i in 0..self.pool.links.len() {
                if !self.pool.open(cx, i) {
                    self.pool.links[i].state = LinkState::Unopened;
                    self.setup_cycle_ended(false);
                }
            }
        }
        let Some(tl) = cx.timeline else { return };
        if !self.started {
            self.started = true;
            self.pacer = self.rate.map(|r| Pacer::new(tl.start, r));
        }
        if !cx.sending() {
            return;
        }
        for i in 0..self.pool.links.len() {
            if self.pool.links[i].state != LinkState::Unopened {
                continue;
            }
            if let Some(p) = self.pacer.as_mut()
                && p.next_due(cx.now).is_none()
            {
                break;
            }
            if !self.pool.open(cx, i) {
                // Could not even start (no descriptor or port): the pool counted it; retry later.
                self.pool.links[i].state = LinkState::Unopened;
                break;
            }
        }
    }

    fn settled(&self) -> Option<u64> {
        (self.setup_pending == Some(0)).then_some(self.setup_ok)
    }

    fn in_flight(&self, _cx: &Cx) -> u64 {
        self.pool
            .links
            .iter()
            .filter(|l| matches!(l.state, LinkState::Connecting(_) | LinkState::Open))
            .count() as u64
    }

    fn wake_at(&self, cx: &Cx) -> Option<Instant> {
        // Only while a slot is free: a schedule that is behind with every slot busy would
        // otherwise make the loop spin.
        let pacer = self
            .pacer
            .as_ref()
            .filter(|_| cx.sending() && self.free_slot());
        pacer.map(|p| p.next_at())
    }

    fn finish(&mut self, cx: &mut Cx, _result: &mut WorkerResult) {
        // A cycle still in progress after the drain is a connect or probe that never finished.
        cx.tally.errors.timeouts += self.in_flight(cx);
    }
}
