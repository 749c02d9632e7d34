//! The `idle` mode: open `-c` connections, confirm each with a probe echo (`--size`, default 1
//! byte; 0 = none), and hold them for `--duration` without a byte more.
//!
//! This is the figure for a server's memory per connection: with `--pid`, the report divides the
//! growth of the server's RSS by the connections held. A held connection should stay silent: data
//! or an EOF from the server counts as an error.

use std::ops::ControlFlow;
use std::time::Instant;

use mio::event::Event;

use super::Plan;
use super::connect::{Probe, ProbeStatus};
use super::dial::Dialer;
use super::pacing::Pacer;
use super::pool::{Fault, LinkEvent, LinkState, Pool, ReadEnd, connect_wake};
use super::worker::{Cx, Driver, WorkerResult};

pub struct Idle {
    pool: Pool<Probe>,
    size: usize,
    connect_pacer: Option<Pacer>,
    /// Connections whose probe is still in progress.
    probing: usize,
}

impl Idle {
    pub fn new(dialer: Dialer, ids: &[usize], plan: &Plan, connect_pacer: Option<Pacer>) -> Idle {
        Idle {
            pool: Pool::new(dialer, ids.iter().map(|&id| (id, Probe::default()))),
            size: plan.size,
            connect_pacer,
            probing: 0,
        }
    }

    fn probe_result(&mut self, cx: &mut Cx, i: usize, status: ProbeStatus) {
        match status {
            ProbeStatus::Pending => return,
            ProbeStatus::Done => {}
            ProbeStatus::Failed(fault) => self.pool.fail(cx, i, fault, LinkState::Dead),
        }
        self.probing -= 1;
    }

    /// A held connection is readable: the server sent data or closed it. Both are wrong.
    fn check_silent(&mut self, cx: &mut Cx, i: usize) {
        match self.pool.read_all(cx, i, |_, _, _| ControlFlow::Break(())) {
            ReadEnd::Drained => {}
            ReadEnd::Stopped(()) => self.pool.fail(cx, i, Fault::Corrupt, LinkState::Dead),
            ReadEnd::Hangup(how) => self.pool.fail(cx, i, Fault::Closed(how), LinkState::Dead),
        }
    }
}

impl Driver for Idle {
    fn event(&mut self, cx: &mut Cx, event: &Event) {
        let Some((i, what)) = self.pool.event(cx, event) else {
            return;
        };
        let size = self.size;
        match what {
            LinkEvent::ConnectFailed => {}
            LinkEvent::Connected(latency) => {
                cx.tally.latency.record(latency);
                self.probing += 1;
                let status = Probe::advance(&mut self.pool, i, cx, size);
                self.probe_result(cx, i, status);
            }
            LinkEvent::Ready { readable, .. } => {
                if !self.pool.links[i].st.done {
                    let status = Probe::advance(&mut self.pool, i, cx, size);
                    self.probe_result(cx, i, status);
                } else if readable {
                    self.check_silent(cx, i);
                }
            }
        }
    }

    fn turn(&mut self, cx: &mut Cx) {
        self.pool.open_initial(cx, self.connect_pacer.as_mut());
        self.pool.expire_connects(cx, LinkState::Dead);
    }

    fn settled(&self) -> Option<u64> {
        (self.pool.settled() && self.probing == 0).then(|| self.pool.open_count())
    }

    fn in_flight(&self, _cx: &Cx) -> u64 {
        0
    }

    fn wake_at(&self, _cx: &Cx) -> Option<Instant> {
        connect_wake(&self.pool, &self.connect_pacer)
    }

    fn finish(&mut self, cx: &mut Cx, result: &mut WorkerResult) {
        // A probe that never came back: the server took the connection but never answered.
        cx.tally.errors.timeouts += self.probing as u64;
        result.open = self.pool.open_count();
    }
}
