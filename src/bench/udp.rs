//! The `udp` mode: `-c` UDP sockets exchanging datagrams of `--size` bytes with a UDP echo server.
//!
//! Each datagram carries its sequence number and its socket's id (`payload.rs`), so a reply is
//! matched to the request it answers wherever it comes in the order, and checked byte for byte.
//! UDP may lose, duplicate and reorder, and a UDP echo server drops replies it cannot send at
//! once, so unlike TCP there is no stream to follow:
//!
//! * a datagram not answered within [`LOSS_TIMEOUT`] is **lost** (an error: the exit status says
//!   so), and in closed loop its slot in the pipeline is given to a new one;
//! * a reply for a datagram older than one already answered came back **out of order**, and a
//!   reply that matches nothing in flight is **late or duplicated**: both are counted but are not
//!   errors, UDP allows them;
//! * a datagram the kernel refuses to send is a **send** error, named by its errno
//!   (`Permission denied`: a broadcast address without `--broadcast`), and is not in flight.
//!
//! **Setup** proves a server answers before the load starts: every socket sends a probe datagram
//! (resent every [`PROBE_EVERY`]) until its reply comes back, for at most [`PROBE_TIMEOUT`]. For
//! a unicast target, a *connected* canary socket sends probes too: a connected UDP socket is told
//! of the ICMP "port unreachable" that the unconnected ones never hear, so a target with nothing
//! listening fails at once as `Connection refused`.
//!
//! Sockets are bound to the unspecified address (`0.0.0.0:0` or `[::]:0`) and not `connect`ed:
//! with `--broadcast` (SO_BROADCAST) a datagram may go to a broadcast address such as
//! `127.255.255.255`, and the replies then come from the server's own address, which a connected
//! socket would filter out — and a socket bound to the broadcast address would never receive
//! them.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};

use super::Plan;
use super::pacing::{BURST, OpenLoop};
use super::payload::{check_datagram, fill_datagram};
use super::tally::CauseKind;
use super::worker::{Cx, Driver, WorkerResult};

/// A datagram unanswered for this long is lost.
pub const LOSS_TIMEOUT: Duration = Duration::from_secs(1);

/// Setup: how long a socket waits for the reply to its probe datagram, in all.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Setup: how often an unanswered probe is sent again (UDP may drop it).
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// The sequence number of probe datagrams (never one of the run's).
const PROBE_SEQ: u64 = u64::MAX;

/// The socket id the canaries put in their probes.
const CANARY_ID: u32 = u32::MAX;

/// Tokens of the canary sockets start here (socket `k` has token `k`).
const CANARY_TOKEN: usize = 1 << 40;

/// Datagrams received per socket per event, so one busy socket cannot starve the others.
const RECV_BUDGET: usize = 256;

/// Where a socket's setup probe stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// Not sent yet.
    Unsent,
    /// Sent (last at this time), no reply yet.
    Waiting(Instant),
    /// The server answered.
    Answered,
    /// Sending failed, or the target refused (the cause is counted); or no reply in time.
    Failed,
}

struct Sock {
    id: u32,
    socket: UdpSocket,
    target: SocketAddr,
    probe: Probe,
    next_seq: u64,
    /// Datagrams in flight: sequence number and start (or intended) time, oldest first.
    in_flight: VecDeque<(u64, Instant)>,
    /// The highest sequence number answered so far.
    highest: Option<u64>,
}

/// A connected socket that learns whether anything listens at a unicast target (setup only).
struct Canary {
    socket: UdpSocket,
    target: SocketAddr,
}

pub struct Udp {
    socks: Vec<Sock>,
    /// Setup only; a canary's token is [`CANARY_TOKEN`] + its index, so a finished one leaves
    /// `None` behind rather than shifting the others.
    canaries: Vec<Option<Canary>>,
    size: usize,
    pipeline: usize,
    /// Open loop: this worker's share of `--rate`, and its schedule (from the load's start).
    rate: Option<f64>,
    open_loop: OpenLoop,
    /// Setup: when the probes are given up (`None` before they start).
    probe_deadline: Option<Instant>,
    /// Setup: sockets whose probe is neither answered nor given up yet. Counted down where a
    /// probe ends, so that once setup is over no turn or wake-up looks at the probes again.
    probes_pending: usize,
    /// Setup: when the canaries last sent.
    canary_sent: Option<Instant>,
    started: bool,
    in_flight: u64,
    /// Damaged replies that could not be matched to the datagram they answer: as many of the
    /// datagrams that will time out are theirs, and are not counted again as lost.
    unplaced: u64,
    /// The datagram being sent (every byte rewritten per datagram).
    out: Vec<u8>,
    last_scan: Option<Instant>,
}

/// The address to bind a client socket to for `target`: the unspecified address of its family,
/// never the target itself (a broadcast or multicast address cannot be a source, and a socket
/// bound to one would not receive the unicast replies).
fn local_for(target: SocketAddr) -> SocketAddr {
    let any: IpAddr = match target.ip() {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(any, 0)
}

/// Can a connected canary tell us about this target? Not for a broadcast or multicast address
/// (the replies come from elsewhere), nor for 255.255.255.255.
fn unicast(target: SocketAddr) -> bool {
    match target.ip() {
        IpAddr::V4(ip) => !ip.is_broadcast() && !ip.is_multicast() && !ip.is_unspecified(),
        IpAddr::V6(ip) => !ip.is_multicast() && !ip.is_unspecified(),
    }
}

impl Udp {
    /// Bind and register one socket per id (socket `id` talks to target `id % n`). `rate` is
    /// this worker's share of `--rate`.
    pub fn new(
        registry: &Registry,
        ids: &[usize],
        plan: &Plan,
        rate: Option<f64>,
    ) -> io::Result<Udp> {
        let mut socks = Vec::with_capacity(ids.len());
        for (k, &id) in ids.iter().enumerate() {
            let target = plan.targets[id % plan.targets.len()];
            let mut socket = UdpSocket::bind(local_for(target))?;
            if plan.broadcast {
                socket.set_broadcast(true)?;
            }
            registry.register(&mut socket, Token(k), Interest::READABLE)?;
            socks.push(Sock {
                id: id as u32,
                socket,
                target,
                probe: Probe::Unsent,
                next_seq: 0,
                in_flight: VecDeque::new(),
                highest: None,
            });
        }
        let mut canaries = Vec::new();
        let mut targets: Vec<SocketAddr> = socks.iter().map(|s| s.target).collect();
        targets.sort();
        targets.dedup();
        for target in targets.into_iter().filter(|&t| unicast(t)) {
            // Best effort: it only names an error sooner. (A subnet's broadcast address such as
            // 127.255.255.255 looks unicast from here; connecting to it is refused, and the
            // probes of the real sockets tell what there is to tell.)
            let Ok(mut socket) = UdpSocket::bind(local_for(target)) else {
                continue;
            };
            let token = Token(CANARY_TOKEN + canaries.len());
            if socket.connect(target).is_ok()
                && registry
                    .register(&mut socket, token, Interest::READABLE)
                    .is_ok()
            {
                canaries.push(Some(Canary { socket, target }));
            }
        }
        Ok(Udp {
            probes_pending: socks.len(),
            socks,
            canaries,
            size: plan.size,
            pipeline: plan.pipeline,
            rate,
            open_loop: OpenLoop::default(),
            probe_deadline: None,
            canary_sent: None,
            started: false,
            in_flight: 0,
            unplaced: 0,
            out: vec![0; plan.size],
            last_scan: None,
        })
    }

    /// Send datagram `seq` of socket `k`. `Ok(false)`: the socket buffer is full (nothing was
    /// sent; try again later). `Err`: the kernel refused it.
    fn send_seq(&mut self, cx: &mut Cx, k: usize, seq: u64) -> io::Result<bool> {
        let sock = &mut self.socks[k];
        fill_datagram(&cx.shared.pattern, sock.id, seq, &mut self.out);
        loop {
            return match sock.socket.send_to(&self.out, sock.target) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Send the next datagram of socket `k`, started (or due) at `at`. False if it was not sent
    /// (the socket buffer is full, or the send failed: counted, with its cause).
    fn send(&mut self, cx: &mut Cx, k: usize, at: Instant) -> bool {
        let seq = self.socks[k].next_seq;
        match self.send_seq(cx, k, seq) {
            Ok(true) => {
                let sock = &mut self.socks[k];
                sock.in_flight.push_back((seq, at));
                sock.next_seq += 1;
                self.in_flight += 1;
                cx.tally.count_sent(1, cx.timeline.as_ref(), cx.now);
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.socks[k].next_seq += 1;
                cx.tally.errors.send += 1;
                let target = self.socks[k].target;
                cx.tally.causes.count(CauseKind::Send, target, Some(&e));
                false
            }
        }
    }

    /// Closed loop: keep `--pipeline` datagrams in flight on socket `k`.
    fn refill(&mut self, cx: &mut Cx, k: usize) {
        if self.rate.is_some() || !cx.sending() || self.socks[k].probe != Probe::Answered {
            return;
        }
        while self.socks[k].in_flight.len() < self.pipeline {
            if !self.send(cx, k, cx.now) {
                return;
            }
        }
    }

    fn receive(&mut self, cx: &mut Cx, k: usize) {
        for _ in 0..RECV_BUDGET {
            let sock = &mut self.socks[k];
            let n = match sock.socket.recv_from(cx.buf) {
                Ok((n, _from)) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An unconnected socket is told of no ICMP error; anything else here is
                // transient, and what it cost shows up as losses.
                Err(_) => break,
            };
            let seq = match check_datagram(&cx.shared.pattern, sock.id, self.size, &cx.buf[..n]) {
                Ok(seq) => seq,
                Err(e) => {
                    cx.tally.errors.corrupt += 1;
                    // The datagram it answers, if it can be told, is accounted for here.
                    let pos = e
                        .seq()
                        .and_then(|seq| sock.in_flight.iter().position(|&(s, _)| s == seq));
                    match pos {
                        Some(pos) => {
                            sock.in_flight.remove(pos);
                            self.in_flight -= 1;
                        }
                        None => self.unplaced += 1,
                    }
                    continue;
                }
            };
            if seq == PROBE_SEQ {
                if matches!(sock.probe, Probe::Waiting(_)) {
                    sock.probe = Probe::Answered;
                    self.probes_pending -= 1;
                }
                continue; // a probe's reply (or a late copy of one): not part of the run
            }
            let Some(pos) = sock.in_flight.iter().position(|&(s, _)| s == seq) else {
                cx.tally.udp_late += 1;
                continue;
            };
            let (_, started) = sock.in_flight.remove(pos).expect("found");
            self.in_flight -= 1;
            if sock.highest.is_some_and(|h| seq < h) {
                cx.tally.udp_reordered += 1;
            }
            sock.highest = Some(sock.highest.map_or(seq, |h| h.max(seq)));
            if let Some(tl) = &cx.timeline {
                cx.tally.complete(
                    tl,
                    cx.now,
                    cx.now.saturating_duration_since(started),
                    self.size as u64,
                );
            }
        }
        self.refill(cx, k);
    }

    /// A canary socket is readable: a reply (the target answers: the canary has done its job),
    /// or an error such as `Connection refused` (nothing listens there: every socket talking to
    /// that target fails now, with the cause).
    fn canary(&mut self, cx: &mut Cx, c: usize) {
        let Some(canary) = self.canaries.get(c).and_then(Option::as_ref) else {
            return;
        };
        let target = canary.target;
        match canary.socket.recv(cx.buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                for sock in self.socks.iter_mut().filter(|s| s.target == target) {
                    if matches!(sock.probe, Probe::Waiting(_) | Probe::Unsent) {
                        sock.probe = Probe::Failed;
                        self.probes_pending -= 1;
                        cx.tally.errors.connect += 1;
                        cx.tally.causes.count(CauseKind::Connect, target, Some(&e));
                    }
                }
            }
            _ => {}
        }
        // Either way this target has told us what the canary could learn.
        self.canaries[c] = None;
    }

    /// Setup: send the probes that are due (first ones, or again after [`PROBE_EVERY`]), and
    /// give up on the unanswered ones at the deadline.
    fn probe(&mut self, cx: &mut Cx) {
        let deadline = *self
            .probe_deadline
            .get_or_insert_with(|| cx.now + PROBE_TIMEOUT);
        for k in 0..self.socks.len() {
            match self.socks[k].probe {
                Probe::Waiting(_) | Probe::Unsent if cx.now >= deadline => {
                    // No reply in time: the server is not there, or answers nobody.
                    self.socks[k].probe = Probe::Failed;
                    self.probes_pending -= 1;
                    cx.tally.errors.timeouts += 1;
                    let timed_out = io::Error::from_raw_os_error(libc::ETIMEDOUT);
                    let target = self.socks[k].target;
                    cx.tally
                        .causes
                        .count(CauseKind::Connect, target, Some(&timed_out));
                    continue;
                }
                Probe::Waiting(last) if cx.now < last + PROBE_EVERY => continue,
                Probe::Waiting(_) | Probe::Unsent => {}
                Probe::Answered | Probe::Failed => continue,
            }
            match self.send_seq(cx, k, PROBE_SEQ) {
                Ok(_) => self.socks[k].probe = Probe::Waiting(cx.now),
                Err(e) => {
                    // A refusal will not change by trying again: count it, name it, move on.
                    self.socks[k].probe = Probe::Failed;
                    self.probes_pending -= 1;
                    cx.tally.errors.send += 1;
                    let target = self.socks[k].target;
                    cx.tally.causes.count(CauseKind::Send, target, Some(&e));
                }
            }
        }
        if self.canary_sent.is_none_or(|t| cx.now >= t + PROBE_EVERY) {
            self.canary_sent = Some(cx.now);
            fill_datagram(&cx.shared.pattern, CANARY_ID, PROBE_SEQ, &mut self.out);
            for c in self.canaries.iter().flatten() {
                // Its fate shows as a reply or an error on the canary; nothing to do here.
                let _ = c.socket.send(&self.out);
            }
        }
    }

    /// Sockets whose probe the server answered: the sockets the run uses.
    fn answered(&self) -> u64 {
        self.socks
            .iter()
            .filter(|s| s.probe == Probe::Answered)
            .count() as u64
    }

    /// Setup: when the next probe is due to be sent again or given up.
    fn next_probe_at(&self, now: Instant) -> Option<Instant> {
        self.socks
            .iter()
            .filter_map(|s| match s.probe {
                Probe::Waiting(last) => Some(last + PROBE_EVERY),
                Probe::Unsent => Some(now),
                Probe::Answered | Probe::Failed => None,
            })
            .min()
            .map(|t| t.min(self.probe_deadline.unwrap_or(t)))
    }

    /// Count datagrams unanswered for [`LOSS_TIMEOUT`] as lost.
    fn expire(&mut self, cx: &mut Cx) {
        for k in 0..self.socks.len() {
            let sock = &mut self.socks[k];
            let mut expired = 0;
            while let Some(&(_, at)) = sock.in_flight.front() {
                if cx.now.saturating_duration_since(at) < LOSS_TIMEOUT {
                    break;
                }
                sock.in_flight.pop_front();
                expired += 1;
            }
            self.in_flight -= expired;
            self.count_lost(cx, expired);
            self.refill(cx, k);
        }
    }

    /// `n` datagrams never came back; those a damaged reply already stood for are not counted
    /// again.
    fn count_lost(&mut self, cx: &mut Cx, n: u64) {
        let placed = n.min(self.unplaced);
        self.unplaced -= placed;
        cx.tally.errors.lost += n - placed;
    }

    /// Open loop: send what the schedule says is due, at most [`BURST`] per turn, round robin
    /// over the answered sockets.
    fn pace(&mut self, cx: &mut Cx) {
        let Some(tl) = cx.timeline else { return };
        let n = self.socks.len();
        for _ in 0..BURST {
            let answered = |k: usize| self.socks[k].probe == Probe::Answered;
            let Some((k, at)) = self.open_loop.next(cx.tally, &tl, cx.now, n, answered) else {
                return;
            };
            let seq = self.socks[k].next_seq;
            if !self.send(cx, k, at) && self.socks[k].next_seq == seq {
                // Our own socket buffer is full: this datagram is dropped here, as a UDP
                // sender does; it is the generator's shortfall, not a loss of the server's.
                cx.tally.not_sent += 1;
            }
        }
    }
}

impl Driver for Udp {
    fn event(&mut self, cx: &mut Cx, event: &Event) {
        let t = event.token().0;
        if t >= CANARY_TOKEN {
            return self.canary(cx, t - CANARY_TOKEN);
        }
        if t < self.socks.len() && event.is_readable() {
            self.receive(cx, t);
        }
    }

    fn turn(&mut self, cx: &mut Cx) {
        if self.probes_pending > 0 {
            self.probe(cx);
        }
        if self.probes_pending == 0 {
            // Every probe has ended: the canaries have nothing left to tell.
            self.canaries.clear();
        }
        let Some(tl) = cx.timeline else { return };
        if !self.started {
            self.started = true;
            if let Some(rate) = self.rate {
                self.open_loop.start(tl.start, rate);
            }
            for k in 0..self.socks.len() {
                self.refill(cx, k);
            }
        }
        self.pace(cx);
        if self
            .last_scan
            .is_none_or(|t| cx.now >= t + Duration::from_millis(10))
        {
            self.last_scan = Some(cx.now);
            self.expire(cx);
        }
    }

    fn settled(&self) -> Option<u64> {
        debug_assert_eq!(
            self.probes_pending,
            self.socks
                .iter()
                .filter(|s| matches!(s.probe, Probe::Waiting(_) | Probe::Unsent))
                .count(),
            "every probe that ended was counted down"
        );
        (self.probes_pending == 0).then(|| self.answered())
    }

    fn in_flight(&self, _cx: &Cx) -> u64 {
        self.in_flight
    }

    fn wake_at(&self, cx: &Cx) -> Option<Instant> {
        let pacing = self.open_loop.next_at();
        // While datagrams are in flight, look for losses every 10 ms.
        let scan = (self.in_flight > 0).then(|| cx.now + Duration::from_millis(10));
        // While probing (setup only), resend or give up on time.
        let probe = if self.probes_pending > 0 {
            self.next_probe_at(cx.now)
        } else {
            None
        };
        pacing.into_iter().chain(scan).chain(probe).min()
    }

    fn finish(&mut self, cx: &mut Cx, result: &mut WorkerResult) {
        if let Some(tl) = cx.timeline {
            self.open_loop.close(cx.tally, tl.measure_until.min(cx.now));
        }
        let n = self.in_flight;
        self.count_lost(cx, n);
        result.open = self.answered();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn test_never_bound_to_the_target_nor_connected_to_a_broadcast() {
        for t in ["127.255.255.255:7000", "127.0.0.1:7000", "224.0.0.1:7000"] {
            assert_eq!(local_for(addr(t)), addr("0.0.0.0:0"), "{t}");
        }
        assert_eq!(local_for(addr("[::1]:7000")), addr("[::]:0"));
        assert!(unicast(addr("127.0.0.1:7000")));
        assert!(!unicast(addr("255.255.255.255:7000")));
        assert!(!unicast(addr("239.1.2.3:7000")));
    }
}
