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
//! split or merged anyhow: a short read is just the next part of the stream.

use std::collections::VecDeque;
use std::time::Instant;

use mio::event::Event;

use super::Plan;
use super::dial::Dialer;
use super::pacing::Pacer;
use super::payload::{MAX_CHUNK, Pattern, phase_of};
use super::pool::{LinkEvent, LinkState, Pool, ReadResult, connect_wake};
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

pub struct Echo {
    pool: Pool<Stream>,
    size: u64,
    pipeline: usize,
    /// Open loop: this worker's schedule (set when the load starts).
    rate: Option<f64>,
    pacer: Option<Pacer>,
    connect_pacer: Option<Pacer>,
    /// The next connection to give an open-loop message to.
    round_robin: usize,
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
            pacer: None,
            connect_pacer,
            round_robin: 0,
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
        let pattern: &Pattern = &cx.shared.pattern;
        loop {
            let st = &self.pool.links[i].st;
            let owed = st.issued - st.written;
            if owed == 0 {
                return;
            }
            let chunk = pattern.slice(st.base, st.written, owed.min(MAX_CHUNK as u64) as usize);
            match self.pool.write(i, chunk) {
                Ok(0) => return, // full: the writable edge will bring us back
                Ok(n) => self.pool.links[i].st.written += n as u64,
                Err(_) => return self.kill(cx, i, false),
            }
        }
    }

    /// Read what connection `i` has, check it, complete messages.
    fn read(&mut self, cx: &mut Cx, i: usize) {
        loop {
            let n = match self.pool.read(i, cx.buf) {
                ReadResult::Data(n) => n,
                ReadResult::WouldBlock => return,
                ReadResult::Eof | ReadResult::Failed => return self.kill(cx, i, false),
            };
            let st = &mut self.pool.links[i].st;
            let got = &cx.buf[..n];
            if st.read + n as u64 > st.written || !cx.shared.pattern.matches(st.base, st.read, got)
            {
                return self.kill(cx, i, true);
            }
            let before = st.read / self.size;
            st.read += n as u64;
            let after = st.read / self.size;
            for _ in before..after {
                let started = st.in_flight.pop_front().expect("a message per issued size");
                self.in_flight -= 1;
                if let Some(tl) = &cx.timeline {
                    cx.tally.complete(
                        tl,
                        cx.now,
                        cx.now.saturating_duration_since(started),
                        self.size,
                    );
                }
            }
            // A short read means the receive queue was empty a moment ago; anything arriving
            // later raises a new edge. Unless the peer closed: its FIN raises no new edge.
            if n < cx.buf.len() && !self.pool.links[i].hup {
                return;
            }
        }
    }

    /// The connection failed (closed, reset, or sent something wrong): count it, and count its
    /// messages in flight as lost.
    fn kill(&mut self, cx: &mut Cx, i: usize, corrupt: bool) {
        if corrupt {
            cx.tally.errors.corrupt += 1;
        } else {
            cx.tally.errors.closed += 1;
        }
        let lost = self.pool.links[i].st.in_flight.len() as u64;
        cx.tally.errors.lost += lost;
        self.in_flight -= lost;
        self.pool.links[i].st.in_flight.clear();
        self.pool.close(i, LinkState::Dead);
    }

    fn is_open(&self, i: usize) -> bool {
        self.pool.links[i].state == LinkState::Open
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
            self.pacer = self.rate.map(|r| Pacer::new(tl.start, r));
            for i in 0..self.pool.links.len() {
                if self.is_open(i) {
                    self.refill(cx, i);
                    self.flush(cx, i);
                }
            }
        }
        let n = self.pool.links.len();
        while let Some(pacer) = self.pacer.as_mut() {
            let Some(at) = pacer.next_due(cx.now) else {
                break;
            };
            if !tl.sending(at) {
                self.pacer = None;
                break;
            }
            // The next open connection, round robin; if none is open the message is not sent
            // (every connection has failed, which is counted already).
            let Some(i) = (0..n)
                .map(|k| (self.round_robin + k) % n)
                .find(|&i| self.is_open(i))
            else {
                self.pacer = None; // nothing left to send on; stop the schedule
                break;
            };
            self.round_robin = (i + 1) % n;
            self.issue(i, at);
            self.flush(cx, i);
        }
    }

    fn settled(&self) -> bool {
        self.pool.settled()
    }

    fn open_count(&self) -> u64 {
        self.pool.open_count()
    }

    fn in_flight(&self, _cx: &Cx) -> u64 {
        self.in_flight
    }

    fn wake_at(&self, _cx: &Cx) -> Option<Instant> {
        let pacing = self.pacer.as_ref().map(|p| p.next_at());
        pacing
            .into_iter()
            .chain(connect_wake(&self.pool, &self.connect_pacer))
            .min()
    }

    fn finish(&mut self, cx: &mut Cx, result: &mut WorkerResult) {
        cx.tally.errors.lost += self.in_flight;
        result.open = self.pool.open_count();
    }
}
