//! UDP echo: each datagram back to its sender. The seeds' `ReadFromUDP` / `WriteToUDP` loop.
//!
//! UDP has no connection, no lifecycle and no backpressure: a datagram arrives whole or not at
//! all, and a reply the socket cannot take right now is simply lost — exactly what the network
//! may do to it anyway. So a send that would block is counted as dropped and the loop moves on;
//! queueing replies would only add memory and latency for a protocol whose users already expect
//! loss.

use std::io;

use log::debug;
use mio::net::UdpSocket;

use crate::stats::Stats;

/// The most datagrams echoed per loop turn, so a flood on the UDP port cannot starve the TCP
/// connections; if more are waiting the loop comes back next turn.
pub const DATAGRAMS_PER_TURN: usize = 64;

/// The largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP). The scratch buffer must hold it.
pub const MAX_DATAGRAM: usize = 65_507;

pub struct UdpEcho {
    pub socket: UdpSocket,
    /// Datagrams may be waiting (edge-triggered: set by an event, cleared by `WouldBlock`).
    pub ready: bool,
}

impl UdpEcho {
    pub fn new(socket: UdpSocket) -> UdpEcho {
        UdpEcho {
            socket,
            ready: false,
        }
    }

    /// Echo waiting datagrams, at most [`DATAGRAMS_PER_TURN`]. `scratch` must hold
    /// [`MAX_DATAGRAM`] bytes. Returns true if more may be waiting.
    pub fn echo(&mut self, scratch: &mut [u8], stats: &mut Stats) -> bool {
        debug_assert!(scratch.len() >= MAX_DATAGRAM);
        let mut handled = 0;
        while self.ready && handled < DATAGRAMS_PER_TURN {
            match self.socket.recv_from(scratch) {
                Ok((n, from)) => {
                    handled += 1;
                    stats.udp_in += 1;
                    match self.socket.send_to(&scratch[..n], from) {
                        Ok(_) => stats.udp_out += 1,
                        Err(e) => {
                            // WouldBlock (the send buffer is full) or a transient error: the
                            // reply is lost, like any datagram may be.
                            stats.udp_dropped += 1;
                            debug!("udp reply to {from} dropped: {e}");
                        }
                    }
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
        self.ready
    }
}
