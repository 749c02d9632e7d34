//! The `broadcast` mode: `-c` receivers and `--senders` senders on one line-broadcast server.
//! Every line a sender writes should reach every other connection (senders receive too), once,
//! intact, and in the order that sender wrote it.
//!
//! Each line carries its sender, its sequence number and its send time (`line.rs`). Every
//! connection checks every line it receives: format and filler (corrupt), per-sender order
//! (lost, duplicated, reordered), and that it is not its own (self-delivered); latency is
//! receive time minus send time, per delivery. At the end, each connection's next expected
//! sequence number is compared with what each sender sent: the difference was never delivered.
//!
//! **Pacing.** With `--rate R`, senders write R lines/s in total on an open-loop schedule; each
//! line is stamped with its *intended* send time. Without it, each sender keeps at most
//! `--window` lines not yet delivered to every other connection: it sends as fast as the server
//! fans out. "Delivered everywhere" is counted in a shared per-sender ring of atomic counters —
//! receivers increment, the sender's worker reads — so the window works across threads.
//! A line that some receiver never gets would stall the window for good, so after
//! [`STALL`] without progress the sender gives up on it (counted as a timeout).
//!
//! **Counted once.** A damaged line whose header still reads is corrupt, and its sequence number
//! is taken as seen (it arrived), so it does not open a gap too. A line too damaged to name its
//! sender will show up as a gap as well; such a gap is put down to the damaged line (one error,
//! not two). Lines a sender never managed to write (the server stopped reading it) were not
//! sent, and are not counted as lost at the receivers.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mio::event::Event;

use super::dial::Dialer;
use super::line::{self, Line, LineError, SeqOutcome, SeqTrack};
use super::pacing::{Pacer, share};
use super::pool::{Fault, Hangup, LinkEvent, LinkState, Pool, ReadEnd, connect_wake};
use super::worker::{Cx, Driver, WorkerResult};
use super::{Plan, Shared};

/// The window used with `--rate`: not meant to limit the rate, only to size the delivery
/// bookkeeping ring — 64k lines in flight over all senders (4 bytes each; a server that far
/// behind is in trouble anyway), at least 1024 per sender.
pub fn paced_window(senders: usize) -> usize {
    ((1 << 16) / senders.max(1)).max(1024)
}

/// Give up on the oldest undelivered line after this long without progress.
pub const STALL: Duration = Duration::from_secs(2);

/// Bytes a sender may queue for its socket before it stops generating lines.
const OUT_CAP: usize = 256 * 1024;

/// How long sync lines are apart.
const SYNC_EVERY: Duration = Duration::from_millis(50);

/// A server may put a prefix before each relayed line; a partial line longer than this
/// beyond the line size is garbage.
const MAX_PREFIX: usize = 4096;

/// One sender's delivery bookkeeping, shared by every worker.
pub struct Window {
    /// Deliveries of line `seq`, at `seq % len`, for the lines in flight.
    counts: Box<[AtomicU32]>,
    /// Lines below this have been delivered everywhere (or given up on).
    acked: AtomicU64,
    /// Lines sent so far (published by the sender's worker).
    sent: AtomicU64,
    /// The sender will send no more lines (the measured window is over, or its connection is
    /// gone). Until then a line may still be on its way out even if `sent == acked`: a worker
    /// whose clock already says "drain" must not stop reading because another worker, whose turn
    /// began a moment earlier, has not published its last lines yet.
    done: AtomicBool,
}

impl Window {
    pub fn new(len: usize) -> Window {
        Window {
            counts: (0..len).map(|_| AtomicU32::new(0)).collect(),
            acked: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }
    }

    fn len(&self) -> u64 {
        self.counts.len() as u64
    }

    /// A receiver got line `seq`.
    fn deliver(&self, seq: u64) {
        if seq >= self.acked.load(Ordering::Relaxed) && seq < self.sent.load(Ordering::Relaxed) {
            self.counts[(seq % self.len()) as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines sent and not yet delivered everywhere.
    pub fn outstanding(&self) -> u64 {
        self.sent
            .load(Ordering::Relaxed)
            .saturating_sub(self.acked.load(Ordering::Relaxed))
    }

    /// Nothing more will be sent, and everything sent has been delivered everywhere.
    pub fn finished(&self) -> bool {
        // Acquire pairs with the Release store of `done`: every `sent` published before it
        // is visible here.
        self.done.load(Ordering::Acquire) && self.outstanding() == 0
    }
}

/// One connection of the broadcast mode.
#[derive(Default)]
pub struct Peer {
    /// The sender this connection is, if it is one.
    sender: Option<u16>,
    /// The start of a line whose newline has not arrived yet.
    partial: Vec<u8>,
    /// What has been seen of each sender.
    tracks: Vec<SeqTrack>,
    synced: bool,
    /// Damaged lines whose sender could not be read: the next gap is theirs (see the module doc).
    unplaced: u64,
    // --- senders only ---
    out: Vec<u8>,
    out_sent: usize,
    seq: u64,
    pacer: Option<Pacer>,
    last_progress: Option<Instant>,
    last_sync: Option<Instant>,
}

/// What every line handled in one read shares.
struct Reading<'a> {
    size: usize,
    senders: usize,
    /// One clock for the whole batch, in the lines' unit (ns since the epoch).
    now_ns: u64,
    /// Connections of this driver that saw their first sync line.
    synced: &'a mut u64,
}

pub struct Broadcast {
    pool: Pool<Peer>,
    size: usize,
    senders: usize,
    /// Lines per second for each sender (open loop).
    rate: Option<f64>,
    connect_pacer: Option<Pacer>,
    started: bool,
    /// Indexes of this worker's sender links.
    sender_links: Vec<usize>,
    /// Connections that have seen a sync line.
    synced: u64,
}

impl Broadcast {
    /// Connections `ids`: below `plan.connections` receivers, from there on senders.
    pub fn new(
        dialer: Dialer,
        ids: &[usize],
        plan: &Plan,
        connect_pacer: Option<Pacer>,
    ) -> Broadcast {
        let peers = ids.iter().map(|&id| {
            let sender = id.checked_sub(plan.connections).map(|s| s as u16);
            let peer = Peer {
                sender,
                tracks: vec![SeqTrack::default(); plan.senders],
                ..Peer::default()
            };
            (id, peer)
        });
        let pool = Pool::new(dialer, peers);
        let sender_links = (0..pool.links.len())
            .filter(|&i| pool.links[i].st.sender.is_some())
            .collect();
        Broadcast {
            pool,
            size: plan.size,
            senders: plan.senders,
            rate: plan.rate.map(|r| share(r, plan.senders)),
            connect_pacer,
            started: false,
            sender_links,
            synced: 0,
        }
    }

    /// Read everything link `i` has and handle each complete line.
    fn read(&mut self, cx: &mut Cx, i: usize) {
        let mut reading = Reading {
            size: self.size,
            senders: self.senders,
            now_ns: cx.now.saturating_duration_since(cx.shared.epoch).as_nanos() as u64,
            synced: &mut self.synced,
        };
        let end = self.pool.read_all(cx, i, |cx, peer, got| {
            take_lines(cx, peer, got, &mut reading);
            ControlFlow::<()>::Continue(())
        });
        if let ReadEnd::Hangup(how) = end {
            self.kill(cx, i, how);
        }
    }

    /// The server closed or reset link `i` (or a write to it failed).
    fn kill(&mut self, cx: &mut Cx, i: usize, how: Hangup) {
        if self.pool.links[i].state == LinkState::Open {
            cx.shared.live.fetch_sub(1, Ordering::Relaxed);
        }
        self.pool.fail(cx, i, Fault::Closed(how), LinkState::Dead);
    }

    /// Write what sender link `i` has queued.
    fn flush(&mut self, cx: &mut Cx, i: usize) {
        let st = &self.pool.links[i].st;
        if st.out_sent == st.out.len() {
            return;
        }
        // The queue is taken out of the link while the pool writes it (one borrow at a time).
        let out = std::mem::take(&mut self.pool.links[i].st.out);
        let from = self.pool.links[i].st.out_sent;
        let written = self.pool.write_some(i, &out[from..]);
        let st = &mut self.pool.links[i].st;
        st.out = out;
        match written {
            Ok(n) => {
                st.out_sent += n;
                if st.out_sent == st.out.len() {
                    st.out.clear();
                    st.out_sent = 0;
                }
            }
            Err(e) => self.kill(cx, i, Hangup::Failed(e)),
        }
    }

    /// Sender link `i`'s turn: sync lines before the run; during it, advance the window and
    /// queue the lines the window or the schedule allows.
    fn send(&mut self, cx: &mut Cx, i: usize) {
        let shared: &Shared = cx.shared;
        let state = self.pool.links[i].state;
        let peer = &mut self.pool.links[i].st;
        let s = peer.sender.expect("a sender link") as usize;
        let w = &shared.windows[s];
        match state {
            LinkState::Open => {}
            // Gone for good: it will send nothing more.
            LinkState::Dead => {
                if let Some(tl) = cx.timeline {
                    cx.tally.close_schedule(&mut peer.pacer, tl.measure_until);
                }
                return w.done.store(true, Ordering::Release);
            }
            // Still connecting (setup): it may yet send. Marking it done here once let a
            // worker in the drain see this window "finished" whenever its receivers had
            // caught up, and stop reading while the sender sent one more window (found as a
            // flaky test: exactly one window lost at the other thread's receivers).
            LinkState::Unopened | LinkState::Connecting(_) => return,
        }
        let Some(tl) = cx.timeline else {
            let due = peer.last_sync.is_none_or(|t| cx.now >= t + SYNC_EVERY);
            if cx.syncing && s == 0 && due && peer.out.is_empty() {
                peer.out.extend_from_slice(line::SYNC);
                peer.out.push(b'\n');
                peer.last_sync = Some(cx.now);
            }
            return self.flush(cx, i);
        };
        if !tl.sending(cx.now) {
            // This turn sends nothing and no later one will: every line is published.
            cx.tally.close_schedule(&mut peer.pacer, tl.measure_until);
            w.done.store(true, Ordering::Release);
        }
        let expected = shared.live.load(Ordering::Relaxed).saturating_sub(1) as u32;
        let mut acked = w.acked.load(Ordering::Relaxed);
        let last = peer.last_progress.get_or_insert(cx.now);
        while acked < peer.seq {
            let slot = &w.counts[(acked % w.len()) as usize];
            if slot.load(Ordering::Relaxed) < expected {
                break;
            }
            slot.store(0, Ordering::Relaxed);
            acked += 1;
            *last = cx.now;
        }
        if acked < peer.seq && cx.now.saturating_duration_since(*last) > STALL {
            w.counts[(acked % w.len()) as usize].store(0, Ordering::Relaxed);
            acked += 1;
            cx.tally.errors.timeouts += 1;
            *last = cx.now;
        }
        if acked == peer.seq {
            *last = cx.now;
        }
        w.acked.store(acked, Ordering::Relaxed);

        let mut room = w.len() - (peer.seq - acked);
        // Once `done` may have been published, not one more line.
        while room > 0 && peer.out.len() < OUT_CAP && tl.sending(cx.now) {
            let stamp = match peer.pacer.as_mut() {
                Some(p) => match p.next_due(cx.now) {
                    Some(at) => at,
                    None => break,
                },
                None => cx.now,
            };
            let ns = stamp.saturating_duration_since(shared.epoch).as_nanos() as u64;
            line::encode(
                &shared.filler,
                s as u16,
                peer.seq,
                ns,
                self.size,
                &mut peer.out,
            );
            peer.seq += 1;
            room -= 1;
            cx.tally.count_sent(1, Some(&tl), stamp);
        }
        w.sent.store(peer.seq, Ordering::Relaxed);
        self.flush(cx, i);
    }
}

/// Split what one read returned into lines and check each; an unfinished line waits in
/// `peer.partial` for the next read.
fn take_lines(cx: &mut Cx, peer: &mut Peer, got: &[u8], r: &mut Reading) {
    let n = got.len();
    let mut rest = 0;
    loop {
        // Fast path: a line of exactly our size ends where it should, so skip the search.
        // (Safe: a newline hidden inside those bytes would fail the check of the line's body
        // and be counted as corrupt, and the next search finds the true boundary again.)
        let whole = rest + r.size <= n && got[rest + r.size - 1] == b'\n';
        let end = if whole && peer.partial.is_empty() {
            rest + r.size - 1
        } else if let Some(nl) = memchr::memchr(b'\n', &got[rest..]) {
            rest + nl
        } else {
            break;
        };
        if peer.partial.is_empty() {
            handle_line(cx, peer, &got[rest..end], r);
        } else {
            let mut joined = std::mem::take(&mut peer.partial);
            joined.extend_from_slice(&got[rest..end]);
            handle_line(cx, peer, &joined, r);
            joined.clear();
            peer.partial = joined; // keep the allocation
        }
        rest = end + 1;
    }
    peer.partial.extend_from_slice(&got[rest..]);
    if peer.partial.len() > r.size + MAX_PREFIX {
        cx.tally.errors.corrupt += 1;
        peer.unplaced += 1;
        peer.partial.clear();
    }
}

/// One complete line (without its newline) received by `peer`.
fn handle_line(cx: &mut Cx, peer: &mut Peer, text: &[u8], r: &mut Reading) {
    let errors = &mut cx.tally.errors;
    let (sender, seq, sent_ns) = match line::decode(&cx.shared.filler, text, r.size) {
        Err(LineError::Malformed) => {
            errors.corrupt += 1;
            peer.unplaced += 1;
            return;
        }
        // Damaged, but it names its sender and number: counted as corrupt below, and taken as
        // seen (it did arrive) so that it opens no gap.
        Err(LineError::Filler { sender, seq }) => (sender, seq, None),
        Ok(Line::Sync) => {
            if peer.sender == Some(0) {
                errors.self_delivered += 1;
            } else if !peer.synced {
                peer.synced = true;
                *r.synced += 1;
            }
            return;
        }
        Ok(Line::Data {
            sender,
            seq,
            sent_ns,
        }) => (sender, seq, Some(sent_ns)),
    };
    if sender as usize >= r.senders {
        errors.corrupt += 1;
        peer.unplaced += 1;
        return;
    }
    if peer.sender == Some(sender) {
        return errors.self_delivered += 1;
    }
    match peer.tracks[sender as usize].observe(seq) {
        SeqOutcome::InOrder => {}
        SeqOutcome::Gap(n) => {
            let placed = n.min(peer.unplaced);
            peer.unplaced -= placed;
            errors.lost += n - placed;
            // The damaged lines that stand for this gap did arrive: the sender's window moves
            // on (or it would stall on them, and count a timeout for the same fault).
            for missing in seq - n..seq - n + placed {
                cx.shared.windows[sender as usize].deliver(missing);
            }
        }
        SeqOutcome::Reordered => {
            // It was counted lost when the gap opened; it is late instead.
            errors.lost = errors.lost.saturating_sub(1);
            errors.reordered += 1;
        }
        SeqOutcome::Duplicate => return errors.duplicated += 1,
    }
    // Delivered (damaged or not): the sender's window moves on.
    cx.shared.windows[sender as usize].deliver(seq);
    let Some(sent_ns) = sent_ns else {
        return errors.corrupt += 1;
    };
    if let Some(tl) = &cx.timeline {
        let latency = Duration::from_nanos(r.now_ns.saturating_sub(sent_ns));
        cx.tally.complete(tl, cx.now, latency, r.size as u64);
    }
}

impl Driver for Broadcast {
    fn event(&mut self, cx: &mut Cx, event: &Event) {
        let Some((i, what)) = self.pool.event(cx, event) else {
            return;
        };
        match what {
            // Lines (or an EOF) may arrive in the same event that completed the connect; its
            // edge will not come again.
            LinkEvent::Connected(_) => self.read(cx, i),
            LinkEvent::ConnectFailed => {}
            LinkEvent::Ready { readable, writable } => {
                if readable {
                    self.read(cx, i);
                }
                if writable && self.pool.links[i].state == LinkState::Open {
                    self.flush(cx, i);
                }
            }
        }
    }

    fn turn(&mut self, cx: &mut Cx) {
        self.pool.open_initial(cx, self.connect_pacer.as_mut());
        self.pool.expire_connects(cx, LinkState::Dead);
        if let Some(tl) = cx.timeline
            && !self.started
        {
            self.started = true;
            for &i in &self.sender_links {
                self.pool.links[i].st.pacer = self.rate.map(|r| Pacer::new(tl.start, r));
            }
        }
        for k in 0..self.sender_links.len() {
            let i = self.sender_links[k];
            self.send(cx, i);
        }
    }

    fn settled(&self) -> Option<u64> {
        self.pool.settled().then(|| self.pool.open_count())
    }

    fn synced(&self) -> u64 {
        self.synced
    }

    fn in_flight(&self, cx: &Cx) -> u64 {
        // Every worker waits for every sender: its receivers must read until all lines are in.
        cx.shared.windows.iter().filter(|w| !w.finished()).count() as u64
    }

    fn wake_at(&self, cx: &Cx) -> Option<Instant> {
        let mut wake = connect_wake(&self.pool, &self.connect_pacer);
        let mut soon = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        for &i in &self.sender_links {
            let peer = &self.pool.links[i].st;
            if self.pool.links[i].state != LinkState::Open {
                continue;
            }
            if cx.syncing && cx.timeline.is_none() {
                soon(peer.last_sync.map_or(cx.now, |t| t + SYNC_EVERY));
            }
            if cx.sending()
                && let Some(p) = &peer.pacer
            {
                soon(p.next_at());
            }
            // Deliveries counted by other threads raise no event here: look again soon while
            // this sender has lines in flight. (With one thread every delivery is counted in
            // this loop, and the turn after it sees it: no timer needed.)
            if cx.plan.threads > 1
                && cx.timeline.is_some()
                && cx.shared.windows[peer.sender.expect("sender") as usize].outstanding() > 0
            {
                soon(cx.now + Duration::from_micros(200));
            }
        }
        wake
    }

    fn finish(&mut self, cx: &mut Cx, result: &mut WorkerResult) {
        for k in 0..self.sender_links.len() {
            let i = self.sender_links[k];
            let peer = &mut self.pool.links[i].st;
            if let Some(tl) = cx.timeline {
                cx.tally
                    .close_schedule(&mut peer.pacer, tl.measure_until.min(cx.now));
            }
            // Lines still queued here never reached the server: not sent, so not lost either.
            let unwritten = (peer.out.len() - peer.out_sent).div_ceil(self.size) as u64;
            cx.tally.not_sent += unwritten;
            cx.tally.sent_total = cx.tally.sent_total.saturating_sub(unwritten);
            cx.tally.sent = cx.tally.sent.saturating_sub(unwritten);
            let w = &cx.shared.windows[peer.sender.expect("a sender") as usize];
            w.sent
                .store(peer.seq.saturating_sub(unwritten), Ordering::Relaxed);
        }
        for link in &self.pool.links {
            if link.state == LinkState::Open {
                let next = link.st.tracks.iter().map(SeqTrack::next).collect();
                result
                    .expected_next
                    .push((link.st.sender, next, link.st.unplaced));
            }
        }
        result.open = self.pool.open_count();
    }
}

/// Lines sent that some open connection never received (and that no gap or damaged line
/// already counted).
pub fn undelivered(shared: &Shared, results: &[WorkerResult]) -> u64 {
    let sent: Vec<u64> = shared
        .windows
        .iter()
        .map(|w| w.sent.load(Ordering::Relaxed))
        .collect();
    results
        .iter()
        .flat_map(|r| &r.expected_next)
        .map(|(own, next, unplaced)| {
            let missing: u64 = (0..sent.len())
                .filter(|&s| *own != Some(s as u16))
                .map(|s| sent[s].saturating_sub(next[s]))
                .sum();
            // Lines too damaged to name their sender, already counted as corrupt.
            missing.saturating_sub(*unplaced)
        })
        .sum()
}
