//! The `echo` mode: N connections, each sending one long pattern stream cut into messages of
//! `--size` bytes and checking every byte that comes back.
//!
//! * Closed loop (default): each connection keeps `--pipeline` messages in flight; a message's
//!   latency runs from the loop turn that issued it to the read that completed it.
//! * Open loop (`--rate`): this worker's share of the rate is issued on a fixed schedule, round
//!   robin over its connections, whatever the replies do; latency runs from each message's
//!   *intended* send time (see `pacing.rs`), so a stall of the server is charged to every message
//!   it delayed.
//!
//! A message is "complete" when the stream has come back up to its last byte. Replies may arrive
//! split or merged anyhow: a short read is just the next part of the stream. A message is "sent"
//! once its last byte is written: one the run ends with unwritten was never sent (the server
//! stopped reading, or the generator fell behind), one written and never answered is lost.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::Instant;

use mio::event::Event;

use super::Plan;
use super::dial::Dialer;
use super::pacing::{BURST, OpenLoop, Pacer};
use super::payload::{MAX_CHUNK, phase_of};
use super::pool::{Fault, Hangup, LinkEvent, LinkState, Pool, ReadEnd, connect_wake};
use super::worker::{Cx, Driver, WorkerResult};

/// One connection's stream.
#[derive(Default)]
pub struct Stream {
    /// Where in the pattern this connection's stream starts.
    base: usize,
    /// Bytes of the stream issued (owed to the socket), written, and read back.
    issued: u64,
    written: u64,
    read: u64,
    /// The start time (issue or intended) of every message in flight, oldest first.
    in_flight: VecDeque<Instant>,
}

impl Stream {
    /// Of the messages in flight, how many are written whole (the oldest ones); the rest are
    /// not, or only in part.
    fn written_whole(&self, size: u64) -> u64 {
        (self.written / size - self.read / size).min(self.in_flight.len() as u64)
    }
}

pub struct Echo {
    pool: Pool<Stream>,
    size: u64,
    pipeline: usize,
    /// Open loop: this worker's share of `--rate`, and its schedule (from the load's start).
    rate: Option<f64>,
    open_loop: OpenLoop,
    connect_pacer: Option<Pacer>,
    started: bool,
    in_flight: u64,
}

impl Echo {
    /// The connections numbered `ids`; `rate` is this worker's share of `--rate`.
    pub fn new(
        dialer: Dialer,
        ids: &[usize],
        plan: &Plan,
        rate: Option<f64>,
        connect_pacer: Option<Pacer>,
    ) -> Echo {
        let streams = ids.iter().map(|&id| {
            let stream = Stream {
                base: phase_of(id),
                ..Stream::default()
            };
            (id, stream)
        });
        Echo {
            pool: Pool::new(dialer, streams),
            size: plan.size as u64,
            pipeline: plan.pipeline,
            rate,
            open_loop: OpenLoop::default(),
            connect_pacer,
            started: false,
            in_flight: 0,
        }
    }

    /// Add one message to connection `i`'s stream, started (or due) at `at`.
    fn issue(&mut self, i: usize, at: Instant) {
        let st = &mut self.pool.links[i].st;
        st.issued += self.size;
        st.in_flight.push_back(at);
        self.in_flight += 1;
    }

    /// Closed loop: top connection `i` up to `--pipeline` messages in flight.
    fn refill(&mut self, cx: &Cx, i: usize) {
        if self.rate.is_some() || !cx.sending() {
            return;
        }
        while self.pool.links[i].st.in_flight.len() < self.pipeline {
            self.issue(i, cx.now);
        }
    }

    /// Write what connection `i` owes, straight from the pattern table, until the socket is full.
    fn flush(&mut self, cx: &mut Cx, i: usize) {
        loop {
            let st = &self.pool.links[i].st;
            let owed = st.issued - st.written;
            if owed == 0 {
                return;
            }
            let len = owed.min(MAX_CHUNK as u64) as usize;
            let chunk = cx.shared.pattern.slice(st.base, st.written, len);
            match self.pool.write_some(i, chunk) {
                Ok(n) => {
                    let st = &mut self.pool.links[i].st;
                    let whole_before = st.written / self.size;
                    st.written += n as u64;
                    let whole = st.written / self.size - whole_before;
                    cx.tally.count_sent(whole, cx.timeline.as_ref(), cx.now);
                    if n < len {
                        return; // full: the writable edge will bring us back
                    }
                }
                Err(e) => return self.fail(cx, i, Fault::Closed(Hangup::Failed(e))),
            }
        }
    }

    /// Read what connection `i` has, check it, complete messages.
    fn read(&mut self, cx: &mut Cx, i: usize) {
        let size = self.size;
        let in_flight = &mut self.in_flight;
        let end = self.pool.read_all(cx, i, |cx, st, got| {
            if st.read + got.len() as u64 > st.written
                || !cx.shared.pattern.matches(st.base, st.read, got)
            {
                return ControlFlow::Break(());
            }
            let before = st.read / size;
            st.read += got.len() as u64;
            for _ in before..st.read / size {
                let started = st.in_flight.pop_front().expect("a message per issued size");
                *in_flight -= 1;
                if let Some(tl) = cx.timeline {
                    let latency = cx.now.saturating_duration_since(started);
                    cx.tally.complete(&tl, cx.now, latency, size);
                }
            }
            ControlFlow::Continue(())
        });
        match end {
            ReadEnd::Drained => {}
            ReadEnd::Hangup(how) => self.fail(cx, i, Fault::Closed(how)),
            ReadEnd::Stopped(()) => self.fail(cx, i, Fault::Corrupt),
        }
    }

    /// Connection `i` failed (closed, reset, or sent something wrong): one error, counted by
    /// the pool. Its messages in flight are accounted for once: a corrupt reply is the oldest
    /// message's; the others written whole are abandoned with the connection, the rest were
    /// never sent.
    fn fail(&mut self, cx: &mut Cx, i: usize, fault: Fault) {
        let st = &mut self.pool.links[i].st;
        let mut whole = st.written_whole(self.size);
        let mut unsent = st.in_flight.len() as u64 - whole;
        if matches!(fault, Fault::Corrupt) {
            // The corrupt message itself is the error, not also abandoned or unsent.
            if whole > 0 {
                whole -= 1;
            } else {
                unsent = unsent.saturating_sub(1);
            }
        }
        cx.tally.abandoned += whole;
        cx.tally.not_sent += unsent;
        self.in_flight -= st.in_flight.len() as u64;
        st.in_flight.clear();
        self.pool.fail(cx, i, fault, LinkState::Dead);
    }

    fn is_open(&self, i: usize) -> bool {
        self.pool.links[i].state == LinkState::Open
    }

    /// Open loop: send what the schedule says is due, at most [`BURST`] per turn, round robin
    /// over the open connections.
    fn pace(&mut self, cx: &mut Cx) {
        let Some(tl) = cx.timeline else { return };
        let n = self.pool.links.len();
        for _ in 0..BURST {
            let open = |i: usize| self.pool.links[i].state == LinkState::Open;
            let Some((i, at)) = self.open_loop.next(cx.tally, &tl, cx.now, n, open) else {
                return;
            };
            self.issue(i, at);
            self.flush(cx, i);
        }
    }
}

impl Driver for Echo {
    fn event(&mut self, cx: &mut Cx, event: &Event) {
        let Some((i, what)) = self.pool.event(cx, event) else {
            return;
        };
        match what {
            LinkEvent::Connected(_) => {
                // The event that completed the connect may also carry the server's EOF (a
                // server at its connection limit answers and closes): that edge will not come
                // again, so look now.
                if self.pool.links[i].hup {
                    self.read(cx, i);
                }
                if self.started && self.is_open(i) {
                    self.refill(cx, i);
                    self.flush(cx, i);
                }
            }
            LinkEvent::ConnectFailed => {}
            LinkEvent::Ready { readable, writable } => {
                if readable {
                    self.read(cx, i);
                }
                if self.is_open(i) {
                    self.refill(cx, i);
                }
                if self.is_open(i) && (writable || readable) {
                    self.flush(cx, i);
                }
            }
        }
    }

    fn turn(&mut self, cx: &mut Cx) {
        self.pool.open_initial(cx, self.connect_pacer.as_mut());
        self.pool.expire_connects(cx, LinkState::Dead);
        let Some(tl) = cx.timeline else { return };
        if !self.started {
            self.started = true;
            if let Some(rate) = self.rate {
                self.open_loop.start(tl.start, rate);
            }
            for i in 0..self.pool.links.len() {
                if self.is_open(i) {
                    self.refill(cx, i);
                    self.flush(cx, i);
                }
            }
        }
        self.pace(cx);
    }

    fn settled(&self) -> Option<u64> {
        self.pool.settled().then(|| self.pool.open_count())
    }

    fn in_flight(&self, _cx: &Cx) -> u64 {
        self.in_flight
    }

    fn wake_at(&self, _cx: &Cx) -> Option<Instant> {
        self.open_loop
            .next_at()
            .into_iter()
            .chain(connect_wake(&self.pool, &self.connect_pacer))
            .min()
    }

    fn finish(&mut self, cx: &mut Cx, result: &mut WorkerResult) {
        if let Some(tl) = cx.timeline {
            self.open_loop.close(cx.tally, tl.measure_until.min(cx.now));
        }
        // What is still in flight on a live connection: lost if the server had it whole.
        for link in &self.pool.links {
            let whole = link.st.written_whole(self.size);
            cx.tally.errors.lost += whole;
            cx.tally.not_sent += link.st.in_flight.len() as u64 - whole;
        }
        result.open = self.pool.open_count();
    }
}
