//! The UDP socket: datagrams in, the echo service, datagrams out. The seeds' `ReadFromUDP` /
//! `WriteToUDP` loop, made non-blocking.
//!
//! UDP has no connection, no lifecycle and no backpressure: a datagram arrives whole or not at
//! all, and a reply the socket cannot take right now is simply lost — exactly what the network
//! may do to it anyway. So a send that would block is counted as dropped and the loop moves on;
//! queueing replies would only add memory and latency for a protocol whose users already expect
//! loss. The service is the same [`Echo`] that TCP uses: only the transport differs.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use log::debug;
use mio::net::UdpSocket;

use crate::service::echo::{Echo, Preview};
use crate::service::{Action, Actions, Cx, Service, Shared};

/// The most datagrams echoed per loop turn, so a flood on the UDP port cannot starve the TCP
/// connections; if more are waiting the loop comes back next turn.
pub const DATAGRAMS_PER_TURN: usize = 64;

/// The largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP). The scratch buffer must hold it.
pub const MAX_DATAGRAM: usize = 65_507;

/// The UDP echo socket.
pub struct UdpEcho {
    socket: UdpSocket,
    /// Datagrams may be waiting (edge-triggered: set by an event, cleared by `WouldBlock`).
    ready: bool,
}

/// Where the echo service's reply to one datagram goes: one datagram back to its sender.
struct Reply<'a> {
    socket: &'a UdpSocket,
    to: SocketAddr,
    /// Replies sent and dropped.
    sent: u64,
    dropped: u64,
}

impl Actions for Reply<'_> {
    fn act(&mut self, action: Action<'_>) {
        // A datagram service can only reply; closing or sharing means nothing without a
        // connection, and echo never asks for them.
        let Action::Reply(bytes) = action else { return };
        match self.socket.send_to(bytes, self.to) {
            Ok(_) => self.sent += 1,
            Err(e) => {
                // WouldBlock (the send buffer is full) or a transient error: the reply is
                // lost, like any datagram may be.
                self.dropped += 1;
                debug!("udp reply to {} dropped: {e}", self.to);
            }
        }
    }
}

impl UdpEcho {
    /// Serve on a bound socket.
    pub fn new(socket: UdpSocket) -> UdpEcho {
        UdpEcho {
            socket,
            ready: false,
        }
    }

    /// The socket, to register it.
    pub fn socket_mut(&mut self) -> &mut UdpSocket {
        &mut self.socket
    }

    /// An event said datagrams may be waiting.
    pub fn on_event(&mut self) {
        self.ready = true;
    }

    /// Are datagrams waiting (so `poll` must not sleep)?
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Echo waiting datagrams, at most [`DATAGRAMS_PER_TURN`]. `scratch` must hold
    /// [`MAX_DATAGRAM`] bytes.
    pub fn serve(&mut self, scratch: &mut [u8], shared: &mut Shared, now: Instant) {
        debug_assert!(scratch.len() >= MAX_DATAGRAM);
        let mut handled = 0;
        while self.ready && handled < DATAGRAMS_PER_TURN {
            match self.socket.recv_from(scratch) {
                Ok((n, from)) => {
                    handled += 1;
                    shared.stats.udp_in += 1;
                    debug!("udp {from} {}", Preview(&scratch[..n]));
                    let mut reply = Reply {
                        socket: &self.socket,
                        to: from,
                        sent: 0,
                        dropped: 0,
                    };
                    let mut cx = Cx {
                        id: 0,
                        peer: from,
                        now,
                        shared,
                        out: &mut reply,
                    };
                    Echo.on_input(&scratch[..n], &mut cx);
                    shared.stats.udp_out += reply.sent;
                    shared.stats.udp_dropped += reply.dropped;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // A pending socket error (an ICMP report, say) is returned once and then
                    // cleared; count it as a turn's work so a strange error cannot spin us.
                    handled += 1;
                    debug!("udp recv: {e}");
                }
            }
        }
    }
}
