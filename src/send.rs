//! `resound send FILE --to ADDR`: the sending side of the file transfer.
//!
//! It speaks the framed form (`<SIZE> <NAME>\n`), so the server can tell a complete file from
//! one cut short, and it exits 0 only when the server's `done <BYTES> <SHA256>` line matches
//! what was sent, byte count and hash.
//!
//! Unlike the server this is a plain blocking client: one connection, one stream of bytes, and
//! a blocking `write` is exactly the backpressure wanted — when the server (or the network)
//! falls behind, the kernel's send buffer fills and `write` waits, so memory stays at one
//! buffer whatever the file's size. An event loop would add nothing here.

use std::fmt;
use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::digest::{Algorithm, Digest, Done, Hasher};
use crate::service::files::{self, OK};

/// Bytes read from the file and written to the socket at a time.
const CHUNK: usize = 256 * 1024;

/// What `resound send` needs.
pub struct SendOptions<'a> {
    pub file: &'a Path,
    pub to: SocketAddr,
    /// Store under this name instead of the file's own.
    pub name: Option<&'a str>,
    /// How long to wait for the connection and for each reply.
    pub timeout: Duration,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
}

/// A confirmed transfer.
#[derive(Debug)]
pub struct Sent {
    pub name: String,
    pub bytes: u64,
    /// The hash the server confirmed the transfer with.
    pub digest: Digest,
    pub elapsed: Duration,
}

impl fmt::Display for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "sent {:?}: {} in {:.2} s ({}/s); stored, {} {}",
            self.name,
            human(self.bytes as f64),
            secs,
            human(self.bytes as f64 / secs),
            self.digest.algorithm,
            self.digest.hex()
        )
    }
}

/// Everything that can go wrong, each with a message that says what to do about it.
#[derive(Debug)]
pub enum SendError {
    File(io::Error),
    BadName(String),
    Connect(io::Error),
    /// The server answered `error: ...`.
    Refused(String),
    /// The connection broke or timed out.
    Io(&'static str, io::Error),
    /// The server's reply was not part of the protocol.
    Protocol(String),
    /// The server stored something other than what was sent.
    Mismatch {
        sent: u64,
        sent_hash: Digest,
        stored: String,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::File(e) => write!(f, "cannot read the file: {e}"),
            SendError::BadName(why) => write!(f, "cannot send under that name: {why}"),
            SendError::Connect(e) => write!(f, "cannot connect: {e}"),
            SendError::Refused(why) => write!(f, "the server refused the file: {why}"),
            SendError::Io(what, e) => write!(f, "transfer failed while {what}: {e}"),
            SendError::Protocol(what) => write!(f, "unexpected reply from the server: {what}"),
            SendError::Mismatch {
                sent,
                sent_hash,
                stored,
            } => write!(
                f,
                "the server's confirmation does not match: sent {sent} bytes with \
                 {sent_hash}, server said {stored:?}"
            ),
        }
    }
}

/// Send one file; `Ok` only once the server has confirmed every byte.
pub fn send(opts: &SendOptions) -> Result<Sent, SendError> {
    let mut file = File::open(opts.file).map_err(SendError::File)?;
    let meta = file.metadata().map_err(SendError::File)?;
    if !meta.is_file() {
        return Err(SendError::File(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let size = meta.len();
    let name = match opts.name {
        Some(name) => name.to_string(),
        None => opts
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| SendError::BadName("the file name is not UTF-8".into()))?
            .to_string(),
    };
    files::validate_name(name.as_bytes()).map_err(|e| SendError::BadName(e.to_string()))?;

    let mut sock =
        TcpStream::connect_timeout(&opts.to, opts.timeout).map_err(SendError::Connect)?;
    sock.set_read_timeout(Some(opts.timeout))
        .map_err(SendError::Connect)?;
    sock.set_write_timeout(Some(opts.timeout))
        .map_err(SendError::Connect)?;
    let started = Instant::now();

    sock.write_all(format!("{size} {name}\n").as_bytes())
        .map_err(|e| SendError::Io("sending the header", e))?;
    let mut reply = [0; 2];
    sock.read_exact(&mut reply)
        .map_err(|e| SendError::Io("waiting for the server's answer", e))?;
    if reply != OK {
        let rest = read_line(&mut sock, &reply);
        return Err(refusal_or_protocol(rest));
    }

    let mut progress = opts.progress.then(|| Progress::new(size));
    // Which hash the server uses is only known from its `done` line, so both are kept.
    let mut hashers = Algorithm::ALL.map(Hasher::new);
    let mut buf = vec![0; CHUNK];
    let mut sent = 0u64;
    while sent < size {
        let want = (size - sent).min(CHUNK as u64) as usize;
        let n = file.read(&mut buf[..want]).map_err(SendError::File)?;
        if n == 0 {
            break; // the file shrank; the server will report the short transfer
        }
        for h in &mut hashers {
            h.update(&buf[..n]);
        }
        if let Err(e) = sock.write_all(&buf[..n]) {
            // The server may have said why it stopped reading (a full disk, a limit).
            let said = read_line(&mut sock, b"");
            if said.starts_with("error") {
                return Err(refusal_or_protocol(said));
            }
            return Err(SendError::Io("sending the file", e));
        }
        sent += n as u64;
        if let Some(p) = &mut progress {
            p.update(sent);
        }
    }
    if let Some(p) = &mut progress {
        p.finish(sent);
    }
    // Our FIN says "that is all"; the server answers with what it stored.
    sock.shutdown(Shutdown::Write)
        .map_err(|e| SendError::Io("finishing", e))?;
    let line = read_line(&mut sock, b"");
    let done = match Done::parse(&line) {
        Ok(done) => done,
        Err(_) => return Err(refusal_or_protocol(line)),
    };
    let sent_hash = hashers
        .into_iter()
        .find(|h| h.algorithm() == done.digest.algorithm)
        .expect("a hasher for every algorithm")
        .finalize();
    if sent == size && done.confirms(sent, &sent_hash) {
        Ok(Sent {
            name,
            bytes: sent,
            digest: sent_hash,
            elapsed: started.elapsed(),
        })
    } else {
        Err(SendError::Mismatch {
            sent,
            sent_hash,
            stored: line.trim_end().to_string(),
        })
    }
}

/// Read one line (or what arrives before EOF, an error or the timeout), after `prefix`.
fn read_line(sock: &mut TcpStream, prefix: &[u8]) -> String {
    let mut line = prefix.to_vec();
    let mut byte = [0; 1];
    while !line.ends_with(b"\n") && line.len() < 4096 {
        match sock.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

fn refusal_or_protocol(line: String) -> SendError {
    let line = line.trim_end();
    match line.strip_prefix("error") {
        Some(reason) => SendError::Refused(reason.trim_start_matches([':', ' ']).to_string()),
        None if line.is_empty() => {
            SendError::Protocol("the connection closed without a reply".into())
        }
        None => SendError::Protocol(line.to_string()),
    }
}

/// A one-line progress bar on stdout, redrawn at most ten times a second.
struct Progress {
    total: u64,
    started: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress {
            total,
            started: Instant::now(),
            last_draw: None,
        }
    }

    fn update(&mut self, done: u64) {
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now < t + Duration::from_millis(100))
        {
            return;
        }
        self.last_draw = Some(now);
        self.draw(done);
    }

    fn finish(&mut self, done: u64) {
        self.draw(done);
        println!();
    }

    fn draw(&self, done: u64) {
        const WIDTH: usize = 30;
        let frac = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let filled = ((frac * WIDTH as f64) as usize).min(WIDTH);
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        print!(
            "\r[{}{}] {:3.0}% {} / {}  {}/s   ",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            frac * 100.0,
            human(done as f64),
            human(self.total as f64),
            human(rate)
        );
        let _ = io::stdout().flush();
    }
}

/// Is stdout a terminal (so a progress bar makes sense)?
pub fn stdout_is_terminal() -> bool {
    io::stdout().is_terminal()
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[0])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_human_sizes() {
        assert_eq!(human(0.0), "0 B");
        assert_eq!(human(1023.0), "1023 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }

    #[test]
    fn test_server_errors_become_refusals() {
        match refusal_or_protocol("error: file exists\n".into()) {
            SendError::Refused(why) => assert_eq!(why, "file exists"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refusal_or_protocol(String::new()),
            SendError::Protocol(_)
        ));
        assert!(matches!(
            refusal_or_protocol("nonsense\n".into()),
            SendError::Protocol(_)
        ));
    }
}
