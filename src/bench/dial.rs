//! Opening client connections without blocking, to one target or several (`--target A,B`:
//! connection `id` goes to target `id % n`, round robin), and choosing their source addresses.
//!
//! `connect(2)` on a non-blocking socket returns `EINPROGRESS` at once; the socket becomes
//! writable when the handshake finishes either way. Writable does not mean connected: the
//! caller then asks [`crate::tcp::connect_finished`] (`SO_ERROR`, then `peer_addr()`: the recipe
//! mio documents for `TcpStream::connect`), as the bridge does for its own connections.
//!
//! **Source addresses.** A TCP connection is named by (source IP, source port, destination IP,
//! destination port), and Linux hands out source ports from `ip_local_port_range` — 28 232 ports
//! by default. So one source address can hold about 28k connections to one server address. The
//! loopback network is all of 127.0.0.0/8, though, so past that the dialer binds each socket to
//! 127.0.0.1, 127.0.0.2, ... in turn before connecting. `IP_BIND_ADDRESS_NO_PORT` tells the kernel
//! to pick the port at `connect` time, where it can check the full 4-tuple, instead of at `bind`
//! time, where it would have to reserve the port for every destination.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

/// Connections one source address can hold to one destination with the default port range.
pub const PORTS_PER_SOURCE: usize = 28_000;

/// The source addresses to spread `conns` connections to `targets` over.
///
/// `requested`: `Some(n)` = use 127.0.0.1 .. 127.0.0.n (loopback targets only); `None` = as many
/// as `conns` needs at [`PORTS_PER_SOURCE`] each per target (one, i.e. no binding, up to 28k per
/// target). `churn`: the
/// connections are opened and closed all the time (connect mode), which leaves each closed one in
/// TIME-WAIT for a minute; then even a few concurrent connections need several sources, so 16
/// are used by default. An empty list means "let the kernel choose" (no bind).
pub fn source_addrs(
    targets: &[SocketAddr],
    conns: usize,
    requested: Option<usize>,
    churn: bool,
) -> Vec<IpAddr> {
    let loopback_v4 = targets
        .iter()
        .all(|t| matches!(t.ip(), IpAddr::V4(ip) if ip.is_loopback()));
    let n = match requested {
        Some(n) => n,
        None if churn => 16,
        None => conns.div_ceil(PORTS_PER_SOURCE * targets.len().max(1)),
    };
    if !loopback_v4 || n <= 1 {
        return Vec::new();
    }
    (1..=n.min(254) as u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

/// Opens connections to the targets, rotating over source addresses.
pub struct Dialer {
    targets: Vec<SocketAddr>,
    sources: Vec<IpAddr>,
    next_source: usize,
}

impl Dialer {
    /// `targets` must not be empty (a plan always has one).
    pub fn new(targets: Vec<SocketAddr>, sources: Vec<IpAddr>, first: usize) -> Dialer {
        assert!(!targets.is_empty(), "a dialer needs a target");
        Dialer {
            targets,
            next_source: first,
            sources,
        }
    }

    /// The target of connection `id` (round robin over the targets).
    pub fn target(&self, id: usize) -> SocketAddr {
        self.targets[id % self.targets.len()]
    }

    /// Start connecting: a non-blocking socket with `TCP_NODELAY` (a load generator's small
    /// messages must not wait for Nagle), bound to the next source address if there are several,
    /// with `connect` issued. Errors here are immediate failures (no descriptor, no port).
    pub fn dial(&mut self, id: usize) -> io::Result<TcpStream> {
        let target = self.target(id);
        let domain = Domain::for_address(target);
        let socket = Socket::new(
            domain,
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        socket.set_tcp_nodelay(true)?;
        if !self.sources.is_empty() {
            let src = self.sources[self.next_source % self.sources.len()];
            self.next_source = self.next_source.wrapping_add(1);
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads one int from a valid pointer.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            socket.bind(&SocketAddr::new(src, 0).into())?;
        }
        match socket.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(socket.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn test_one_source_is_enough_below_28k_connections() {
        assert!(source_addrs(&[addr("127.0.0.1:7000")], 10_000, None, false).is_empty());
        assert!(source_addrs(&[addr("127.0.0.1:7000")], 28_000, None, false).is_empty());
    }

    #[test]
    fn test_more_connections_spread_over_loopback_sources() {
        let s = source_addrs(&[addr("127.0.0.1:7000")], 60_000, None, false);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(
            source_addrs(&[addr("127.0.0.1:7000")], 10, None, true).len(),
            16
        );
        assert_eq!(
            source_addrs(&[addr("127.0.0.1:7000")], 10, Some(4), false).len(),
            4
        );
        assert_eq!(
            source_addrs(&[addr("127.0.0.1:7000")], 10, Some(999), false).len(),
            254
        );
    }

    #[test]
    fn test_each_target_has_its_own_ports_and_connections_go_round_robin() {
        let two = [addr("127.0.0.1:7000"), addr("127.0.0.1:7001")];
        assert!(source_addrs(&two, 50_000, None, false).is_empty());
        assert_eq!(source_addrs(&two, 60_000, None, false).len(), 2);
        let mixed = [addr("127.0.0.1:7000"), addr("10.0.0.1:7000")];
        assert!(source_addrs(&mixed, 10, Some(4), false).is_empty());
        let d = Dialer::new(two.to_vec(), Vec::new(), 0);
        assert_eq!(
            [d.target(0), d.target(1), d.target(2)],
            [two[0], two[1], two[0]]
        );
    }

    #[test]
    fn test_non_loopback_targets_let_the_kernel_choose() {
        assert!(source_addrs(&[addr("10.0.0.1:7000")], 60_000, None, false).is_empty());
        assert!(source_addrs(&[addr("[::1]:7000")], 60_000, Some(4), false).is_empty());
    }
}
