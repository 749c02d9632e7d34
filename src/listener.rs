//! Binding sockets (the seeds' `net.Listen` and `net.ListenUDP`) and accepting connections
//! (`Accept`), including what to do when the process runs out of file descriptors.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use crate::config::Config;
use crate::service::ServiceKind;
use crate::udp::UdpEcho;

/// The accept backlog asked of the kernel (it caps it at `net.core.somaxconn`). mio and std use
/// 1024 and 128; a connect flood fills those long before a busy loop comes back to accept.
pub const BACKLOG: i32 = 4096;

/// The line a client turned away at accept time receives before the close.
pub const TOO_MANY: &[u8] = b"error: too many connections\n";

/// Bind a TCP listener: SO_REUSEADDR (so a restart does not wait out TIME-WAIT), non-blocking,
/// a deep backlog, TCP_NODELAY and (unless `keepalive` is None) TCP keepalive; SO_REUSEPORT if
/// `reuseport` (see [`set_reuse_port`]).
///
/// The last two are set on the *listener* because Linux copies a listening socket's options
/// into every socket it accepts: one setsockopt at start-up instead of five per connection
/// (only the idle time is set again per connection, see [`spread_keepalive`]).
/// TCP_NODELAY because every service answers small messages at once, where Nagle's algorithm
/// would only add latency. Keepalive because a peer that vanishes without a FIN or a reset (a
/// cable pulled, a machine powered off) would otherwise hold its connection forever when no
/// idle timeout is set: after `keepalive` of silence the kernel probes it, and gives up after
/// four unanswered probes a quarter of that apart.
pub fn bind_tcp(
    addr: SocketAddr,
    keepalive: Option<Duration>,
    reuseport: bool,
) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    set_reuse_port(&socket, reuseport)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(idle) = keepalive {
        let interval = (idle / 4).max(Duration::from_secs(1));
        let params = TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval)
            .with_retries(4);
        socket.set_tcp_keepalive(&params)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Bind a non-blocking UDP socket; SO_REUSEPORT if `reuseport` (see [`set_reuse_port`]).
pub fn bind_udp(addr: SocketAddr, reuseport: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    set_reuse_port(&socket, reuseport)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into()))
}

/// `--reuseport`: SO_REUSEPORT, so that several processes (all with the option, all run by the
/// same user) can bind the same address. One single-threaded loop per core then serves one
/// port, with no shared state and no lock.
///
/// What the kernel does, honestly:
/// * **placement is by hash, not by load**: each new connection (each datagram's source) goes to
///   the listener a hash of its addresses picks. A busy process gets its share of new clients
///   all the same, and a process's long-lived clients stay where they are.
/// * **closing a listener drops what is queued on it**: connections the kernel completed but
///   the process has not accepted are reset, unless `net.ipv4.tcp_migrate_req=1` (Linux 5.14+)
///   moves them to another listener of the group. So a graceful stop accepts what is queued
///   before it closes ([`Accepting::take_backlog_and_close`]); a connection that completes in the
///   microseconds between that last accept and the close can still be lost without the sysctl.
///
/// Without the option (the default), a second process on the same address fails to start with
/// `cannot bind ... Address already in use`, as before: sharing a port must be asked for by everyone.
fn set_reuse_port(socket: &Socket, reuseport: bool) -> io::Result<()> {
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    Ok(())
}

/// Give one accepted connection its own keepalive idle time, between `idle` and twice that,
/// chosen by a hash of `seed` (the connection's id).
///
/// Without the spread, connections accepted together probe together: the kernel's timer wheel
/// fires every keepalive timer of a 2-second bucket in one tick, and ten thousand probes at
/// once overflow the receive backlog (`net.core.netdev_max_backlog`, 1000) — on loopback, the
/// probes and their answers are dropped, four rounds in a row for the same connections, and
/// the kernel resets them as dead. The soak test saw a thousand healthy idle connections killed
/// this way. Spread over `idle`, the probes of 20 000 connections come ~700 per tick.
pub fn spread_keepalive(stream: &TcpStream, idle: Duration, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    let extra = idle.as_secs_f64() * (x % 1024) as f64 / 1024.0;
    // Linux takes whole seconds up to MAX_TCP_KEEPIDLE (32767).
    let secs = (idle.as_secs_f64() + extra).round().clamp(1.0, 32_767.0);
    let params = TcpKeepalive::new().with_time(Duration::from_secs(secs as u64));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&params) {
        // The listener's own keepalive (inherited) still applies; only the spread is lost.
        debug!("cannot spread keepalive: {e}");
    }
}

/// What one accept attempt produced.
pub enum Accepted {
    /// A new client.
    Conn(TcpStream, SocketAddr),
    /// No connection waiting.
    Empty,
    /// Out of descriptors: one waiting client was accepted with the spare descriptor, told
    /// `error: too many connections` and closed, so the listener does not stay readable forever.
    Shed,
    /// Out of descriptors (with no spare left) or out of kernel memory: stop accepting for a
    /// while; the waiting clients stay in the backlog.
    Pause(io::Error),
}

/// A listener plus the spare descriptor that lets it survive EMFILE.
///
/// When `accept` fails with EMFILE the pending connection stays in the backlog and the
/// listener stays readable. A level-triggered loop would spin on it; an edge-triggered one
/// would never hear of it again. libuv's answer, taken here: keep one descriptor open on
/// `/dev/null`; on EMFILE close it, accept the waiting client with the freed number, tell it why
/// and close it, then reopen the spare. The client gets a clear answer instead of a hang, and
/// the loop keeps draining the backlog at a bounded cost per client.
pub struct Acceptor {
    pub listener: TcpListener,
    spare: Option<File>,
}

impl Acceptor {
    pub fn new(listener: TcpListener) -> Acceptor {
        Acceptor {
            listener,
            spare: File::open("/dev/null").ok(),
        }
    }

    pub fn accept(&mut self) -> Accepted {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => return Accepted::Conn(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::Empty,
                // A client that gave up while waiting in the backlog, or a signal: next.
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                // Linux reserves the descriptor before it looks at the queue, so EMFILE comes
                // back whether or not a client is waiting: only the second accept, with the
                // spare's number free, tells.
                Err(e) if is_out_of_fds(&e) => {
                    let Some(spare) = self.spare.take() else {
                        self.spare = File::open("/dev/null").ok();
                        return Accepted::Pause(e);
                    };
                    drop(spare);
                    let outcome = match self.listener.accept() {
                        Ok((stream, _)) => {
                            reject(stream);
                            Accepted::Shed
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Accepted::Empty,
                        Err(e) => Accepted::Pause(e),
                    };
                    self.spare = File::open("/dev/null").ok();
                    return outcome;
                }
                // ENOBUFS, ENOMEM and anything unexpected: back off rather than spin.
                Err(e) => return Accepted::Pause(e),
            }
        }
    }
}

/// Tell a client we cannot serve it, and close. The socket is fresh, so its send buffer is
/// empty and this small write cannot block.
pub fn reject(stream: TcpStream) {
    let _ = (&stream).write(TOO_MANY);
}

fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// New connections accepted per listener per turn: a connect flood is served in slices, between
/// which the existing clients get their turn.
pub const ACCEPTS_PER_TURN: usize = 256;

/// How long to stop accepting when the kernel has no descriptor or memory to give (nginx waits
/// similarly); the clients wait in the backlog meanwhile.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// One listening socket and what the loop knows about it.
struct Listener {
    service: ServiceKind,
    token: Token,
    acceptor: Acceptor,
    /// Connections may be waiting: set by an event, cleared by an accept that found none.
    /// (A pass stopped at its cap leaves it set, so the next turn goes on.)
    pending: bool,
    /// Accepted this turn.
    taken: usize,
}

/// A client taken from a listener's backlog.
pub struct NewClient {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub service: ServiceKind,
}

/// The accept state of the loop: every listener, the fairness cap, the pause after running out
/// of descriptors or memory, and the rate-limited log of turned-away clients.
#[derive(Default)]
pub struct Accepting {
    listeners: Vec<Listener>,
    /// Index of the listener `next` tries first.
    cursor: usize,
    /// Accepts are paused until then (EMFILE with no spare descriptor, ENOBUFS, ENOMEM).
    paused_until: Option<Instant>,
    last_reject_log: Option<Instant>,
    /// Clients turned away (out of descriptors here; `--max-conns` by the loop).
    pub rejected: u64,
}

impl Accepting {
    /// Add a bound listener, registered under `token`.
    pub fn add(
        &mut self,
        service: ServiceKind,
        mut listener: TcpListener,
        registry: &Registry,
        token: Token,
    ) -> io::Result<()> {
        registry.register(&mut listener, token, Interest::READABLE)?;
        self.listeners.push(Listener {
            service,
            token,
            acceptor: Acceptor::new(listener),
            pending: true,
            taken: 0,
        });
        Ok(())
    }

    /// An event for `token`: if it is one of ours, remember that clients may be waiting.
    pub fn on_event(&mut self, token: Token) -> bool {
        match self.listeners.iter_mut().find(|l| l.token == token) {
            Some(l) => {
                l.pending = true;
                true
            }
            None => false,
        }
    }

    /// Start a turn: lift an expired pause, reset the per-turn caps.
    pub fn begin_turn(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
        }
        for l in &mut self.listeners {
            l.taken = 0;
        }
    }

    /// Is an accept worth trying now (so `poll` must not sleep)?
    pub fn ready(&self) -> bool {
        self.paused_until.is_none() && self.listeners.iter().any(|l| l.pending)
    }

    /// When a pause ends (for the poll timeout).
    pub fn deadline(&self) -> Option<Instant> {
        self.paused_until
    }

    /// The next waiting client, at most [`ACCEPTS_PER_TURN`] per listener per turn, or None
    /// when every listener is empty, capped or paused.
    pub fn next(&mut self, now: Instant) -> Option<NewClient> {
        while self.paused_until.is_none() && self.cursor < self.listeners.len() {
            let l = &mut self.listeners[self.cursor];
            if !l.pending || l.taken >= ACCEPTS_PER_TURN {
                self.cursor += 1;
                continue;
            }
            match l.acceptor.accept() {
                Accepted::Conn(stream, peer) => {
                    l.taken += 1;
                    let service = l.service;
                    return Some(NewClient {
                        stream,
                        peer,
                        service,
                    });
                }
                Accepted::Empty => l.pending = false,
                Accepted::Shed => {
                    self.reject_logged(now, "out of file descriptors");
                }
                Accepted::Pause(e) => {
                    warn!(
                        "accept on {}: {e}; pausing accepts for {ACCEPT_PAUSE:?}",
                        l.service
                    );
                    self.paused_until = now.checked_add(ACCEPT_PAUSE);
                }
            }
        }
        self.cursor = 0;
        None
    }

    /// Turn a client away (`--max-conns` reached): tell it why and close.
    pub fn turn_away(&mut self, client: NewClient, now: Instant, why: &str) {
        reject(client.stream);
        self.reject_logged(now, why);
    }

    /// Count a client refused elsewhere (told by the loop itself), with the same rate-limited
    /// log line.
    pub fn count_refusal(&mut self, now: Instant, why: &str) {
        self.reject_logged(now, why);
    }

    fn reject_logged(&mut self, now: Instant, why: &str) {
        self.rejected += 1;
        // A flood would log a line per client; one line a second says the same.
        if self
            .last_reject_log
            .is_none_or(|t| now >= t + Duration::from_secs(1))
        {
            warn!(
                "turning clients away: {why} ({} rejected so far)",
                self.rejected
            );
            self.last_reject_log = Some(now);
        }
    }

    /// Stop accepting, graceful form: take every client already waiting in a backlog (the kernel
    /// completed their handshakes, so they believe they are connected and may have sent a
    /// request), then close every listener. Closing with clients queued would reset them.
    /// At most one backlog's worth per listener, so this ends even under a connect flood.
    pub fn take_backlog_and_close(&mut self) -> Vec<NewClient> {
        let mut waiting = Vec::new();
        for l in &mut self.listeners {
            for _ in 0..BACKLOG {
                match l.acceptor.accept() {
                    Accepted::Conn(stream, peer) => waiting.push(NewClient {
                        stream,
                        peer,
                        service: l.service,
                    }),
                    Accepted::Shed => {
                        self.rejected += 1;
                    }
                    Accepted::Empty | Accepted::Pause(_) => break,
                }
            }
        }
        if !waiting.is_empty() {
            debug!(
                "accepted {} queued client(s) before closing the listeners",
                waiting.len()
            );
        }
        self.close_all();
        waiting
    }

    /// Stop accepting: close every listener. Clients still in a backlog are refused by the
    /// kernel.
    pub fn close_all(&mut self) {
        self.listeners.clear();
    }
}

/// A socket the server is serving on: what `listening <service> <proto> <addr>` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// The service behind it.
    pub service: ServiceKind,
    /// The address it is bound to (port 0 resolved).
    pub addr: SocketAddr,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listening {} {} {}",
            self.service,
            self.service.proto(),
            self.addr
        )
    }
}

/// The poll tokens of the fixed sockets (the loop owns the token layout; see `server.rs`).
pub struct Tokens {
    /// The echo listener.
    pub echo: Token,
    /// The broadcast listener.
    pub broadcast: Token,
    /// The files listener.
    pub files: Token,
    /// The UDP socket.
    pub udp: Token,
}

/// Bind and register every socket `config` names: the TCP listeners (as an [`Accepting`]), the
/// UDP socket, and what was bound where (port 0 resolved). Errors name the socket.
pub fn bind_all(
    config: &Config,
    registry: &Registry,
    tokens: Tokens,
) -> io::Result<(Accepting, Option<UdpEcho>, Vec<Bound>)> {
    let mut bound = Vec::new();
    let accepting = bind_listeners(config, registry, &tokens, &mut bound)?;
    let udp = bind_udp_echo(config, registry, tokens.udp, &mut bound)?;
    Ok((accepting, udp, bound))
}

/// Bind the TCP listeners the config names.
fn bind_listeners(
    config: &Config,
    registry: &Registry,
    tokens: &Tokens,
    bound: &mut Vec<Bound>,
) -> io::Result<Accepting> {
    let mut accepting = Accepting::default();
    let tcp_services = [
        (ServiceKind::Echo, config.echo, tokens.echo),
        (ServiceKind::Broadcast, config.broadcast, tokens.broadcast),
        (ServiceKind::Files, config.files, tokens.files),
    ];
    for (service, addr, token) in tcp_services {
        let Some(addr) = addr else { continue };
        let tcp = bind_tcp(addr, config.keepalive, config.reuseport)
            .map_err(bind_error(service, addr))?;
        bound.push(Bound {
            service,
            addr: tcp.local_addr()?,
        });
        accepting.add(service, tcp, registry, token)?;
    }
    Ok(accepting)
}

/// Bind the UDP socket, if the config names one.
fn bind_udp_echo(
    config: &Config,
    registry: &Registry,
    token: Token,
    bound: &mut Vec<Bound>,
) -> io::Result<Option<UdpEcho>> {
    let Some(addr) = config.udp else {
        return Ok(None);
    };
    let service = ServiceKind::Udp;
    let socket = bind_udp(addr, config.reuseport).map_err(bind_error(service, addr))?;
    bound.push(Bound {
        service,
        addr: socket.local_addr()?,
    });
    let mut udp = UdpEcho::new(socket);
    registry.register(udp.socket_mut(), token, Interest::READABLE)?;
    Ok(Some(udp))
}

/// `cannot bind echo tcp 127.0.0.1:7000: Address already in use (os error 98)`.
fn bind_error(service: ServiceKind, addr: SocketAddr) -> impl Fn(io::Error) -> io::Error {
    move |e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind {service} {} {addr}: {e}", service.proto()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection options are set once on the listener and must reach every accepted
    /// socket: if a kernel ever stopped copying them, this fails.
    #[test]
    fn test_accepted_sockets_inherit_nodelay_and_keepalive() {
        let listener = bind_tcp(
            "127.0.0.1:0".parse().unwrap(),
            Some(Duration::from_secs(42)),
            false,
        )
        .unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let accepted = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);

        // The per-connection spread stays within [idle, 2 x idle) and varies.
        let mut seen = std::collections::HashSet::new();
        for id in 1..=50 {
            spread_keepalive(&accepted, Duration::from_secs(42), id);
            let t = sock.tcp_keepalive_time().unwrap();
            assert!(
                t >= Duration::from_secs(42) && t <= Duration::from_secs(84),
                "{t:?}"
            );
            seen.insert(t);
        }
        assert!(seen.len() > 10, "keepalive times are not spread: {seen:?}");
    }
}
