//! Binding sockets (the seeds' `net.Listen` and `net.ListenUDP`) and accepting connections
//! (`Accept`), including what to do when the process runs out of file descriptors.

use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream, UdpSocket};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

/// The accept backlog asked of the kernel (it caps it at `net.core.somaxconn`). mio and std use
/// 1024 and 128; a connect flood fills those long before a busy loop comes back to accept.
const BACKLOG: i32 = 4096;

/// The line a client turned away at accept time receives before the close.
pub const TOO_MANY: &[u8] = b"error: too many connections\n";

/// Bind a TCP listener: SO_REUSEADDR (so a restart does not wait out TIME-WAIT), non-blocking,
/// a deep backlog, TCP_NODELAY and (unless `keepalive` is None) TCP keepalive.
///
/// The last two are set on the *listener* because Linux copies a listening socket's options
/// into every socket it accepts: one setsockopt at start-up instead of five per connection
/// (only the idle time is set again per connection, see [`spread_keepalive`]).
/// TCP_NODELAY because every service answers small messages at once, where Nagle's algorithm
/// would only add latency. Keepalive because a peer that vanishes without a FIN or a reset (a
/// cable pulled, a machine powered off) would otherwise hold its connection forever when no
/// idle timeout is set: after `keepalive` of silence the kernel probes it, and gives up after
/// four unanswered probes a quarter of that apart.
pub fn bind_tcp(addr: SocketAddr, keepalive: Option<Duration>) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
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

/// Bind a non-blocking UDP socket.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr)
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
    let secs = (idle.as_secs_f64() + extra)
        .round()
        .clamp(1.0, i32::MAX as f64) as libc::c_int;
    // SAFETY: setsockopt with a valid descriptor and a pointer to one c_int of the right size.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
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
