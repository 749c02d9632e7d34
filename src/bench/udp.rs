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
//!   errors, UDP allows them.
//!
//! Sockets are not `connect`ed: with `--broadcast` (SO_BROADCAST) a datagram may go to a
//! broadcast address, and the replies then come from the server's own address, which a connected
//! socket would filter out.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};

use super::Plan;
use super::pacing::Pacer;
use super::payload::{check_datagram, fill_datagram};
use super::worker::{Cx, Driver, WorkerResult};

/// A datagram unanswered for this long is lost.
pub const LOSS_TIMEOUT: Duration = Duration::from_secs(1);

/// Datagrams received per socket per event, so one busy socket cannot starve the others.
const RECV_BUDGET: usize = 256;

struct Sock {
    id: u32,
    socket: UdpSocket,
    next_seq: u64,
    /// Datagrams in flight: sequence number and start (or intended) time, oldest first.
    in_flight: VecDeque<(u64, Instant)>,
    /// The highest sequence number answered so far.
    highest: Option<u64>,
}

pub struct Udp {
    socks: Vec<Sock>,
    target: SocketAddr,
    size: usize,
    pipeline: usize,
    rate: Option<f64>,
    pacer: Option<Pacer>,
    round_robin: usize,
    started: bool,
    in_flight: u64,
    /// A datagram ready to go that the socket refused (`WouldBlock`): sent first next time.
    out: Vec<u8>,
    last_scan: Option<Instant>,
}

impl Udp {
    /// Bind and register one socket per id. `rate` is this worker's share of `--rate`.
    pub fn new(
        registry: &Registry,
        ids: &[usize],
        plan: &Plan,
        rate: Option<f64>,
    ) -> io::Result<Udp> {
        let local: IpAddr = match plan.target.ip() {
            ip if ip.is_loopback() => ip,
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let mut socks = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            let mut socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
            if plan.broadcast {
                socket.set_broadcast(true)?;
            }
            registry.register(&mut socket, Token(i), Interest::READABLE)?;
            socks.push(Sock {
                id: id as u32,
                socket,
                next_seq: 0,
                in_flight: VecDeque::new(),
                highest: None,
            });
        }
        Ok(Udp {
            socks,
            target: plan.target,
            size: plan.size,
            pipeline: plan.pipeline,
            rate,
            pacer: None,
            round_robin: 0,
            started: false,
            in_flight: 0,
            out: vec![0; plan.size],
            last_scan: None,
        })
    }

    /// Send the next datagram of socket `k`, started (or due) at `at`. False if the socket
    /// buffer is full (nothing was sent; try again later).
    fn send(&mut self, cx: &mut Cx, k: usize, at: Instant) -> bool {
        let sock = &mut self.socks[k];
        fill_datagram(&cx.shared.pattern, sock.id, sock.next_seq, &mut self.out);
        match sock.socket.send_to(&self.out, self.target) {
            Ok(_) => {
                sock.in_flight.push_back((sock.next_seq, at));
                sock.next_seq += 1;
                self.in_flight += 1;
                if cx.timeline.is_some_and(|t| t.counts(cx.now)) {
                    cx.tally.sent += 1;
                }
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            // ECONNREFUSED (an ICMP port unreachable from an earlier datagram) and the like: the
            // datagram is gone; it will time out and count as lost.
            Err(_) => {
                sock.in_flight.push_back((sock.next_seq, at));
                sock.next_seq += 1;
                self.in_flight += 1;
                true
            }
        }
    }

    /// Closed loop: keep `--pipeline` datagrams in flight on socket `k`.
    fn refill(&mut self, cx: &mut Cx, k: usize) {
        if self.rate.is_some() || !cx.sending() {
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
                // An ICMP error for an earlier datagram: nothing to read here.
                Err(_) => continue,
            };
            let seq = match check_datagram(&cx.shared.pattern, sock.id, self.size, &cx.buf[..n]) {
                Ok(seq) => seq,
                Err(_) => {
                    cx.tally.errors.corrupt += 1;
                    continue;
                }
            };
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

    /// Count datagrams unanswered for [`LOSS_TIMEOUT`] as lost.
    fn expire(&mut self, cx: &mut Cx) {
        for k in 0..self.socks.len() {
            let sock = &mut self.socks[k];
            while let Some(&(_, at)) = sock.in_flight.front() {
                if cx.now.saturating_duration_since(at) < LOSS_TIMEOUT {
                    break;
                }
                sock.in_flight.pop_front();
                self.in_flight -= 1;
                cx.tally.errors.lost += 1;
            }
            self.refill(cx, k);
        }
    }
}

impl Driver for Udp {
    fn event(&mut self, cx: &mut Cx, event: &Event) {
        let k = event.token().0;
        if k < self.socks.len() && event.is_readable() {
            self.receive(cx, k);
        }
    }

    fn turn(&mut self, cx: &mut Cx) {
        let Some(tl) = cx.timeline else { return };
        if !self.started {
            self.started = true;
            self.pacer = self.rate.map(|r| Pacer::new(tl.start, r));
            for k in 0..self.socks.len() {
                self.refill(cx, k);
            }
        }
        while let Some(pacer) = self.pacer.as_mut() {
            let at = pacer.next_at();
            if at > cx.now {
                break;
            }
            if !tl.sending(at) {
                self.pacer = None;
                break;
            }
            let k = self.round_robin;
            if !self.send(cx, k, at) {
                break; // the socket is full: this datagram waits (its intended time stays)
            }
            self.pacer.as_mut().expect("pacing").next_due(cx.now);
            self.round_robin = (k + 1) % self.socks.len();
        }
        if self
            .last_scan
            .is_none_or(|t| cx.now >= t + Duration::from_millis(10))
        {
            self.last_scan = Some(cx.now);
            self.expire(cx);
        }
    }

    fn settled(&self) -> bool {
        true
    }

    fn open_count(&self) -> u64 {
        self.socks.len() as u64
    }

    fn in_flight(&self, _cx: &Cx) -> u64 {
        self.in_flight
    }

    fn wake_at(&self, cx: &Cx) -> Option<Instant> {
        let pacing = self.pacer.as_ref().map(|p| p.next_at());
        // While datagrams are in flight, look for losses every 10 ms.
        let scan = (self.in_flight > 0).then(|| cx.now + Duration::from_millis(10));
        pacing.into_iter().chain(scan).min()
    }

    fn finish(&mut self, cx: &mut Cx, result: &mut WorkerResult) {
        cx.tally.errors.lost += self.in_flight;
        result.open = self.socks.len() as u64;
    }
}
