//! The connection of `resound send`: connect, the header, the `ok`, the content, the final line.
//!
//! Everything before and after the content is plain blocking I/O with timeouts: one request, one
//! reply. The content is different, because the server may speak while we write: a refusal
//! (`error: file too large`, a full disk) arrives mid-stream, and a blocking `write` would not
//! notice it until the server's close timeout fills our send buffer. So the content is written
//! with the socket non-blocking, and before each write `poll` asks for both readiness kinds at
//! once: writable means go on; readable (a line, a FIN or a reset) means the server has stopped
//! reading, and we stop writing and read its line. The poll returns the moment the server's line
//! arrives, so a refusal is reported as soon as it is sent.
//!
//! The bytes go out with `sendfile(2)` from a regular file — the kernel hands the file's page-cache
//! pages to the socket, and the content is never copied through this process for sending — or
//! with `write` from the buffer they were read into (standard input, `--sendfile off`, or a file
//! whose filesystem has no `sendfile`: the first `EINVAL`/`ENOSYS`/`EOPNOTSUPP` switches to it).
//! Either way the bytes are hashed from that buffer: it holds exactly the range about to be sent.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::SockRef;

use super::input::Input;
use super::progress::Progress;
use super::{Refusal, SendError};
use crate::digest::Hasher;

/// Bytes read, hashed and handed to the socket at a time. Big enough that per-chunk costs (a
/// `pread`, a `poll`, a `sendfile`) vanish, small enough to stay in the L2 cache between the
/// read and the hash.
pub const CHUNK: usize = 256 * 1024;

/// The longest line read from the server; a reply is short, and a server that never ends its
/// line must not grow this buffer forever.
const MAX_LINE: usize = 4096;

/// How long to wait for the rest of the server's line once it has started speaking mid-stream.
const LINE_GRACE: Duration = Duration::from_secs(1);

/// What [`Conn::stream`] did.
pub struct Streamed {
    pub bytes: u64,
    /// The content went out with `sendfile` (false: copied through the buffer).
    pub sendfile: bool,
}

/// One connection to a files service.
pub struct Conn {
    sock: TcpStream,
    pub addr: SocketAddr,
    /// For the connect and for each wait (None = wait forever).
    timeout: Option<Duration>,
}

impl Conn {
    pub fn connect(addr: SocketAddr, timeout: Option<Duration>) -> Result<Conn, SendError> {
        let sock = match timeout {
            Some(t) => TcpStream::connect_timeout(&addr, t),
            None => TcpStream::connect(addr),
        };
        let sock = sock.map_err(|err| match err.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => SendError::Timeout {
                addr,
                after: timeout.unwrap_or_default(),
                waiting_for: "the connection",
            },
            _ => SendError::Connect { addr, err },
        })?;
        let conn = Conn {
            sock,
            addr,
            timeout,
        };
        conn.sock
            .set_read_timeout(timeout)
            .and_then(|()| conn.sock.set_write_timeout(timeout))
            .map_err(|e| conn.broke("connecting", e))?;
        Ok(conn)
    }

    /// Write the header, in one `write`: the server tells a split framed header from a seed
    /// name by silence, so the header must never be sent in pieces by us.
    pub fn send_header(&mut self, header: &[u8]) -> Result<(), SendError> {
        (&self.sock)
            .write_all(header)
            .map_err(|e| self.failed("sending the header", "the server to take the header", e))
    }

    /// Wait for `ok` (exactly two bytes); anything else is the server's refusal or nonsense.
    pub fn read_ok(&mut self) -> Result<(), SendError> {
        const WAITING: &str = "the server's answer to the header";
        let mut reply = Vec::with_capacity(2);
        while reply.len() < 2 {
            let mut byte = [0; 2];
            match (&self.sock).read(&mut byte[..2 - reply.len()]) {
                Ok(0) => break,
                Ok(n) => reply.extend_from_slice(&byte[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failed("waiting for 'ok'", WAITING, e)),
            }
        }
        if reply == b"ok" {
            return Ok(());
        }
        let line = self.read_line(reply, WAITING)?;
        Err(self.refusal(line, "waiting for 'ok'"))
    }

    /// Send the content: read a chunk, hash it, write it, watching for the server's line.
    pub fn stream(
        &mut self,
        input: &mut Input,
        hashers: &mut [Hasher],
        progress: &mut Option<Progress>,
        use_sendfile: bool,
    ) -> Result<Streamed, SendError> {
        self.sock
            .set_nonblocking(true)
            .map_err(|e| self.broke("sending the file", e))?;
        let mut sendfile_ok = use_sendfile && input.file().is_some();
        let mut buf = vec![0; CHUNK];
        let mut sent = 0u64;
        loop {
            if let Some(fd) = input.stream_fd() {
                // A stream may be slow to give its next bytes; the server must still be heard.
                self.wait_readable(fd, sent)?;
            }
            let n = input.read_at(sent, &mut buf)?;
            if n == 0 {
                break;
            }
            for h in hashers.iter_mut() {
                h.update(&buf[..n]);
            }
            let mut off = 0;
            while off < n {
                self.wait_writable(sent + off as u64)?;
                let wrote = match input.file() {
                    Some(file) if sendfile_ok => {
                        sendfile(&self.sock, file, sent + off as u64, n - off)
                    }
                    _ => (&self.sock).write(&buf[off..n]),
                };
                match wrote {
                    Ok(k) => off += k,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) if sendfile_ok && sendfile_unsupported(&e) => {
                        log::debug!("sendfile: {e}; copying through the buffer instead");
                        sendfile_ok = false;
                    }
                    // The server may have said why it stopped (EPIPE after its close).
                    Err(e) => return Err(self.stopped(sent + off as u64, Some(e))),
                }
            }
            sent += n as u64;
            if let Some(p) = progress {
                p.update(sent);
            }
        }
        self.sock
            .set_nonblocking(false)
            .map_err(|e| self.broke("sending the file", e))?;
        Ok(Streamed {
            bytes: sent,
            sendfile: sendfile_ok,
        })
    }

    /// Our FIN: "that is all". The server answers with what it stored.
    pub fn finish(&mut self) -> Result<(), SendError> {
        self.sock
            .shutdown(Shutdown::Write)
            .map_err(|e| self.broke("finishing", e))
    }

    /// The line after our FIN ("" if the server closed without one). A timeout is reported
    /// as waiting for `waiting_for`.
    pub fn read_final(&mut self, waiting_for: &'static str) -> Result<String, SendError> {
        self.read_line(Vec::new(), waiting_for)
    }

    /// Close with a reset instead of a FIN, so the server drops what it received: after a
    /// FIN it would store the file (the framed form once every declared byte has arrived; the
    /// other forms at once).
    pub fn abort(self) {
        let _ = SockRef::from(&self.sock).set_linger(Some(Duration::ZERO));
    }

    /// Wait until `input` (standard input) has bytes or its end, or the server speaks. No
    /// timeout: how fast our own input comes is not the server's business.
    fn wait_readable(&mut self, input: RawFd, sent: u64) -> Result<(), SendError> {
        let mut pfds = [
            libc::pollfd {
                fd: input,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: two valid pollfds, on descriptors we hold.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.broke("sending the file", e));
            }
            if pfds[1].revents != 0 {
                return Err(self.stopped(sent, None));
            }
            // Readable, at its end (POLLHUP) or broken (POLLERR, POLLNVAL): the read says which.
            return Ok(());
        }
    }

    /// Wait until the socket takes more, or the server speaks, or the timeout passes.
    fn wait_writable(&mut self, sent: u64) -> Result<(), SendError> {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLOUT | libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd, on a descriptor we hold.
            let n = unsafe { libc::poll(&mut pfd, 1, poll_ms(self.timeout)) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.broke("sending the file", e));
            }
            if n == 0 {
                return Err(SendError::Timeout {
                    addr: self.addr,
                    after: self.timeout.unwrap_or_default(),
                    waiting_for: "the server to take more of the file",
                });
            }
            // Readable (a line, a FIN), or an error or hang-up: the server stopped reading.
            if pfd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                return Err(self.stopped(sent, None));
            }
            return Ok(());
        }
    }

    /// The server stopped reading after `sent` bytes: say why, in its words if it gave any.
    fn stopped(&mut self, sent: u64, write_error: Option<io::Error>) -> SendError {
        let _ = self.sock.set_nonblocking(false);
        let _ = self.sock.set_read_timeout(Some(LINE_GRACE));
        let during = "sending the file";
        match self.read_line(Vec::new(), "the server's reason") {
            Ok(line) if !line.is_empty() => self.refusal(line, during),
            Ok(_) => match write_error {
                Some(e) => self.broke(during, e),
                None => SendError::Closed {
                    addr: self.addr,
                    during: format!("{during}, after {sent} bytes"),
                },
            },
            Err(e) => match write_error {
                Some(e) => self.broke(during, e),
                None => e,
            },
        }
    }

    /// Read one line (or what arrives before EOF), after `prefix`. A read timeout is reported
    /// as waiting for `waiting_for`.
    fn read_line(
        &mut self,
        prefix: Vec<u8>,
        waiting_for: &'static str,
    ) -> Result<String, SendError> {
        let mut line = prefix;
        let mut chunk = [0; 256];
        while !line.contains(&b'\n') && line.len() < MAX_LINE {
            match (&self.sock).read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => line.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failed("reading the server's reply", waiting_for, e)),
            }
        }
        // Only the first line counts; a server says nothing after its last line.
        if let Some(nl) = line.iter().position(|&b| b == b'\n') {
            line.truncate(nl + 1);
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// A line that is not the one hoped for: the server's `error: ...`, or not the protocol.
    pub fn refusal(&self, line: String, during: &str) -> SendError {
        let line = line.trim_end();
        match line.strip_prefix("error") {
            Some(reason) => SendError::Refused {
                addr: self.addr,
                reason: Refusal::new(reason.trim_start_matches([':', ' '])),
            },
            None if line.is_empty() => SendError::Closed {
                addr: self.addr,
                during: during.to_string(),
            },
            None => SendError::Protocol {
                addr: self.addr,
                said: line.to_string(),
            },
        }
    }

    /// An I/O error: a timeout says what it waited for, anything else that the connection broke.
    fn failed(&self, during: &'static str, waiting_for: &'static str, e: io::Error) -> SendError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => SendError::Timeout {
                addr: self.addr,
                after: self.timeout.unwrap_or_default(),
                waiting_for,
            },
            _ => self.broke(during, e),
        }
    }

    fn broke(&self, during: &'static str, err: io::Error) -> SendError {
        SendError::Broken {
            addr: self.addr,
            during,
            err,
        }
    }
}

/// `sendfile(2)`: up to `count` bytes of `file` from `offset` to the socket, without copying
/// them through this process.
fn sendfile(
    sock: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    count: usize,
) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset beyond off_t"))?;
    // SAFETY: two descriptors we hold, and a valid pointer to an off_t that sendfile updates;
    // with an explicit offset the file's own position is neither used nor changed.
    let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The errors with which a kernel or a filesystem says "no sendfile from this file".
fn sendfile_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

/// A poll(2) timeout in milliseconds: -1 for none, at most i32::MAX, and never 0 for a
/// non-zero duration (a sub-millisecond timeout must still wait).
fn poll_ms(timeout: Option<Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(t) => i32::try_from(t.as_millis().max(1)).unwrap_or(i32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_poll_timeouts() {
        assert_eq!(poll_ms(None), -1);
        assert_eq!(poll_ms(Some(Duration::from_micros(10))), 1);
        assert_eq!(poll_ms(Some(Duration::from_secs(3))), 3000);
        assert_eq!(poll_ms(Some(Duration::from_secs(u64::MAX))), i32::MAX);
    }
}
