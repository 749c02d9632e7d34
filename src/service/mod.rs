//! The services: what the server does with the bytes a client sends. Each is pure logic — bytes
//! in, bytes out through an [`Output`] — so it is tested without sockets; the loop
//! (`server.rs`) and the connection (`connection.rs`) do the I/O.

use std::fmt;
use std::time::Instant;

pub mod broadcast;
pub mod echo;
pub mod files;

/// Where a service puts the bytes it owes its client. The connection implements it (write now,
/// or queue what the socket will not take); tests use a `Vec<u8>`.
pub trait Output {
    fn send(&mut self, bytes: &[u8]);
}

impl Output for Vec<u8> {
    fn send(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Which service a socket serves. The name is the one printed in `listening <name> <proto>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// TCP echo.
    Echo,
    /// TCP line broadcast (chat).
    Broadcast,
    /// File transfer, receiving side.
    Files,
    /// UDP echo.
    Udp,
}

impl ServiceKind {
    /// The transport: "tcp" or "udp".
    pub fn proto(self) -> &'static str {
        match self {
            ServiceKind::Echo | ServiceKind::Broadcast | ServiceKind::Files => "tcp",
            ServiceKind::Udp => "udp",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceKind::Echo => "echo",
            ServiceKind::Broadcast => "broadcast",
            ServiceKind::Files => "files",
            ServiceKind::Udp => "udp",
        })
    }
}

/// The per-connection state of the service a TCP connection belongs to.
pub enum Session {
    /// Echo keeps no state.
    Echo,
    Broadcast(broadcast::Member),
    /// Boxed: a transfer's state (hasher, file, header) is larger than everything else a
    /// connection holds, and only file connections should pay for it.
    Files(Box<files::Transfer>),
}

impl Session {
    pub fn new(kind: ServiceKind, now: Instant) -> Session {
        match kind {
            ServiceKind::Echo => Session::Echo,
            ServiceKind::Broadcast => Session::Broadcast(broadcast::Member::default()),
            ServiceKind::Files => Session::Files(Box::new(files::Transfer::new(now))),
            ServiceKind::Udp => unreachable!("UDP has no connections"),
        }
    }

    pub fn kind(&self) -> ServiceKind {
        match self {
            Session::Echo => ServiceKind::Echo,
            Session::Broadcast(_) => ServiceKind::Broadcast,
            Session::Files(_) => ServiceKind::Files,
        }
    }
}
