//! One accepted TCP connection's socket: the thin I/O layer under the connection core.
//!
//! This is the only code that reads from or writes to a client's `TcpStream`. Each method does
//! one kind of syscall, reports the result to the sans-IO core ([`Connection`]) and returns;
//! every decision — when to read, how much, what a short read means, when our FIN may go, when
//! to reset — is the core's. Keeping this layer this thin is what lets the rules be tested
//! without sockets.
//!
//! [`connect_finished`] is here too: the one check of a non-blocking connect of ours, which the
//! bridge's links to other nodes and the load generator's connections share.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::connection::{Action, Connection, Input, ReadResult, Readiness, Source, WriteResult};
use crate::lifecycle::AbortReason;

/// The most iovecs handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// A client's socket and its core.
pub struct TcpConn {
    stream: TcpStream,
    /// Everything the connection decides; see `connection.rs`.
    pub core: Connection,
}

impl TcpConn {
    pub fn new(stream: TcpStream, core: Connection) -> TcpConn {
        TcpConn { stream, core }
    }

    /// Register with the poller. Readable only: WRITABLE is added while something is queued
    /// (the core asks for it through [`Action::Interest`]).
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.stream, token, Interest::READABLE)
    }

    /// Translate a mio event for the core.
    pub fn on_event(&mut self, event: &mio::event::Event) {
        let failed = event.is_error();
        self.core.on_readiness(Readiness {
            readable: event.is_readable(),
            writable: event.is_writable() || event.is_write_closed() || failed,
            hup: event.is_read_closed() || failed,
        });
    }

    /// One `read` into `buf`; the core says what it means.
    pub fn read(&mut self, buf: &mut [u8]) -> Input {
        let asked = buf.len();
        let result = match retry(|| (&self.stream).read(buf)) {
            Ok(0) => ReadResult::Eof,
            Ok(n) => ReadResult::Data { n, asked },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadResult::WouldBlock,
            Err(e) => ReadResult::Error(e.kind()),
        };
        self.core.on_read(result)
    }

    /// Send a reply: straight to the socket if nothing is queued ahead of it, the rest (what
    /// the kernel would not take) into the queue. Never blocks, never drops.
    pub fn send(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() && self.core.can_write_through() {
            let result = write_result(retry(|| (&self.stream).write(rest)));
            let n = self.core.on_write(result, Source::Direct);
            rest = &rest[n..];
        }
        self.core.queue_copy(rest);
    }

    /// Write what is queued, at most `budget` bytes, in as few syscalls as the iovec limit
    /// allows.
    pub fn flush(&mut self, budget: usize) {
        let mut left = budget;
        while left > 0 && self.core.wants_flush() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.core.transmit(left, &mut slices);
            // One piece (the common case) takes a plain write: the kernel's vectored path
            // copies the iovec array in first, which is pure overhead for a single buffer.
            let result = retry(|| {
                if n == 1 {
                    (&self.stream).write(&slices[0])
                } else {
                    (&self.stream).write_vectored(&slices[..n])
                }
            });
            let written = self.core.on_write(write_result(result), Source::Queue);
            left -= written.min(left);
        }
    }

    /// The bytes the kernel holds in this socket's receive queue (`FIONREAD`): what a graceful
    /// stop still serves.
    pub fn unread_in_kernel(&self) -> u64 {
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int: the bytes waiting in the socket's receive queue.
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::FIONREAD, &mut pending) };
        if rc == 0 { pending.max(0) as u64 } else { 0 }
    }

    /// Is the kernel done with this socket both ways: no byte received and unread
    /// (`FIONREAD`), none sent and unacknowledged by the peer (`SIOCOUTQ`; a sent FIN counts
    /// until it is acknowledged)? Then a graceful stop may release it at once.
    pub fn kernel_idle(&self) -> bool {
        let mut unacked: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int: bytes in the send queue, not yet
        // acknowledged.
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut unacked) };
        rc == 0 && unacked == 0 && self.unread_in_kernel() == 0
    }

    /// Carry out every effect the core asks for. A failure is reported back to the core (which
    /// then closes the connection), never ignored.
    pub fn carry_out(&mut self, registry: &Registry, token: Token) {
        while let Some(action) = self.core.poll_action() {
            let result = match action {
                Action::ShutdownWrite => self.stream.shutdown(Shutdown::Write),
                // SO_LINGER 0: close() sends a reset and frees the kernel's buffers at once.
                Action::ResetOnClose => {
                    socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO))
                }
                Action::Interest { writable } => {
                    let interest = if writable {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    registry.reregister(&mut self.stream, token, interest)
                }
            };
            if let Err(e) = result {
                // A peer that already reset makes shutdown fail: nothing left to wait for.
                self.core.abort(AbortReason::Io(e.kind()));
            }
        }
    }
}

/// Run a syscall again when a signal interrupted it before it did anything.
pub(crate) fn retry(mut syscall: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match syscall() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// Has a non-blocking connect finished? Ask after the socket's first event (writable, or an
/// error): writable does not mean connected, so this is mio's recipe for
/// `TcpStream::connect` — `take_error()` (`SO_ERROR`: refused, unreachable...), then
/// `peer_addr()`. `Ok(true)`: connected; `Ok(false)`: still in progress (a spurious wake-up:
/// `ENOTCONN`, or `EINPROGRESS`); `Err`: it failed, with the reason.
pub(crate) fn connect_finished(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A `write` result for the core.
fn write_result(result: io::Result<usize>) -> WriteResult {
    match result {
        Ok(n) => WriteResult::Wrote(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => WriteResult::WouldBlock,
        Err(e) => WriteResult::Error(e.kind()),
    }
}
