//! `resound send`: the sending side of the file transfer.
//!
//! ```text
//! resound send FILE [--name NAME]     "<SIZE> <NAME>\n", ok, content, half-close, "done ..."
//! resound send - --name NAME          "<NAME>\n",        ok, content until EOF, half-close, "done ..."
//! resound send FILE --seed            "<NAME>",          ok, content, close   (the seeds' receiver)
//! ```
//!
//! * **A file** goes in the framed form (`<SIZE> <NAME>\n`): the server can then tell a complete
//!   file from one cut short, even by an orderly close. It exits 0 only when the server's
//!   `done <BYTES> <ALG>:<HEX>` line matches what was sent, count and hash; it prints which
//!   algorithm confirmed it.
//! * **Standard input** (`-`) has no size, so it goes as a name ended by a newline (`NAME\n`)
//!   and the content runs until our half-close; the `done` line must still match the bytes and
//!   the hash sent. (A name that starts with digits and a space cannot be sent this way: the
//!   server would read the digits as a size. It is refused here, before connecting.)
//! * **`--seed`** speaks the seeds' bare-name protocol to their Go receiver: the name with no
//!   newline, wait for `ok`, the content, then close. That receiver never confirms anything, so
//!   a clean close after `ok` is a success that says nothing was confirmed; a receiver that does
//!   send `done` (resound's) is checked as usual.
//!
//! Which hash the server uses is only known from its `done` line. A file is hashed with BLAKE3
//! (the server's default) as it is sent, and read again with SHA-256 afterwards if the server
//! answers in SHA-256 (`serve --hash sha256`, or an older server). Standard input cannot be read
//! again, so it is hashed both ways as it goes.
//!
//! A file that changes while it is sent (its size or modification time, see `input.rs`) is
//! never confirmed: the connection is reset instead of half-closed, so the server stores
//! nothing, and the exit status is 1.
//!
//! Unlike the server this is a blocking client: one connection, one stream of bytes, and
//! memory of one 256 KiB buffer whatever the size. The content is the one part that is not
//! plain blocking I/O: see `wire.rs` for `sendfile` and for hearing a refusal mid-stream.
//!
//! Every failure is a [`SendError`] whose message names what it is about (the file, or the
//! server's address) and why; `main` prints it as `resound send: <what>: <why>`.

mod input;
mod progress;
mod wire;

use std::fmt;
use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::digest::{Algorithm, Digest, Done, DoneError, Hasher};
use crate::service::files::{self, Header};
use crate::storage::StoreError;
use crate::units::strip_os_error;

pub use input::Source;

use input::Input;
use progress::Progress;
use wire::Conn;

/// What `resound send` needs.
#[derive(Clone, Copy, Debug)]
pub struct SendOptions<'a> {
    /// What to send: a file, or standard input.
    pub source: Source<'a>,
    /// The files service's address.
    pub to: SocketAddr,
    /// Store under this name instead of the file's own (required for standard input).
    pub name: Option<&'a str>,
    /// How long to wait to connect, for each reply, and for the server to take more of the file
    /// (None = forever).
    pub timeout: Option<Duration>,
    /// Draw a progress line on stderr.
    pub progress: bool,
    /// Speak the seeds' bare-name protocol.
    pub seed: bool,
    /// Send a regular file with `sendfile(2)`; false copies it through a buffer with `write`.
    pub sendfile: bool,
}

/// A finished transfer.
#[derive(Debug)]
pub struct Sent {
    /// The name the file was stored under.
    pub name: String,
    /// Bytes sent.
    pub bytes: u64,
    /// The hash the server confirmed the transfer with; None when the receiver (a seed
    /// receiver, `--seed`) closed without confirming anything.
    pub confirmed: Option<Digest>,
    /// From the connect to the confirmation.
    pub elapsed: Duration,
    /// The content went out with `sendfile(2)` (false: copied through a buffer).
    pub sendfile: bool,
}

impl fmt::Display for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "sent {:?}: {} in {:.2} s ({}/s); ",
            self.name,
            human(self.bytes as f64),
            secs,
            human(self.bytes as f64 / secs),
        )?;
        match &self.confirmed {
            Some(d) => write!(f, "stored, confirmed by {} {}", d.algorithm, d.hex()),
            None => f.write_str(
                "the receiver took it and closed without a confirmation (the seeds' protocol \
                 has none): nothing was confirmed",
            ),
        }
    }
}

/// Everything that can go wrong, each with a message that says what it is about and why.
#[derive(Debug)]
pub enum SendError {
    /// The file (or standard input) cannot be opened or read.
    Input {
        /// What was being read (a path, or standard input).
        what: String,
        /// Why it failed.
        err: io::Error,
    },
    /// A path that is not a regular file.
    NotRegular {
        /// The path given.
        path: String,
        /// What it is instead.
        kind: FileKind,
    },
    /// The file changed while it was being sent.
    Changed {
        /// The file.
        path: String,
        /// What changed (its size, its modification time).
        how: String,
    },
    /// The name cannot be sent (the reason says why).
    BadName {
        /// The name.
        name: String,
        /// Why it cannot be sent.
        why: String,
    },
    /// The connection could not be made.
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// Why it failed.
        err: io::Error,
    },
    /// Nothing happened for `after`.
    Timeout {
        /// The server's address.
        addr: SocketAddr,
        /// How long nothing happened.
        after: Duration,
        /// What was awaited.
        waiting_for: &'static str,
    },
    /// The server answered `error: <reason>`.
    Refused {
        /// The server's address.
        addr: SocketAddr,
        /// What the server said after `error: `.
        reason: Refusal,
    },
    /// The connection failed (reset, broken pipe).
    Broken {
        /// The server's address.
        addr: SocketAddr,
        /// What was under way.
        during: &'static str,
        /// The error.
        err: io::Error,
    },
    /// The server closed the connection without a word.
    Closed {
        /// The server's address.
        addr: SocketAddr,
        /// What was under way.
        during: String,
    },
    /// The server's reply was not part of the protocol.
    Protocol {
        /// The server's address.
        addr: SocketAddr,
        /// What it said.
        said: String,
    },
    /// The server stored something other than what was sent.
    Mismatch {
        /// The server's address.
        addr: SocketAddr,
        /// Bytes sent.
        sent: u64,
        /// The hash of what was sent.
        digest: Digest,
        /// The server's `done` line.
        said: String,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Input { what, err } => write!(f, "{what}: {}", strip_os_error(err)),
            SendError::NotRegular { path, kind } => {
                write!(f, "{path}: is {kind}, not a regular file")?;
                if kind.streams() {
                    write!(
                        f,
                        "; to send what it streams, use `resound send - --name NAME < {path}`"
                    )?;
                }
                Ok(())
            }
            SendError::Changed { path, how } => write!(
                f,
                "{path}: changed while being sent ({how}); the transfer was abandoned and \
                 nothing was confirmed"
            ),
            SendError::BadName { name, why } => write!(f, "cannot send as {name:?}: {why}"),
            SendError::Connect { addr, err } => {
                write!(f, "cannot connect to {addr}: {}", strip_os_error(err))
            }
            SendError::Timeout {
                addr,
                after,
                waiting_for,
            } => write!(
                f,
                "{addr}: timed out after {} waiting for {waiting_for}",
                secs(*after)
            ),
            SendError::Refused { addr, reason } => {
                write!(f, "{addr} refused the file: {reason}")?;
                if let Refusal::NameTaken(_) = reason {
                    f.write_str("; send it under another name with --name NAME")?;
                }
                Ok(())
            }
            SendError::Broken { addr, during, err } => {
                write!(
                    f,
                    "{addr}: connection lost while {during}: {}",
                    strip_os_error(err)
                )
            }
            SendError::Closed { addr, during } => write!(
                f,
                "{addr}: the server closed the connection while {during}, without saying why"
            ),
            SendError::Protocol { addr, said } => {
                write!(f, "{addr}: unexpected reply from the server: {said:?}")
            }
            SendError::Mismatch {
                addr,
                sent,
                digest,
                said,
            } => write!(
                f,
                "{addr}: the server's confirmation does not match: sent {sent} bytes with \
                 {digest}, the server said {said:?}"
            ),
        }
    }
}

impl std::error::Error for SendError {}

/// What a path that is not a regular file is instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A directory: nothing to stream.
    Directory,
    /// A named pipe.
    Fifo,
    /// A character device (a terminal, `/dev/zero`).
    CharDevice,
    /// A block device (a disk).
    BlockDevice,
    /// A Unix socket.
    Socket,
    /// None of the above.
    Unknown,
}

impl FileKind {
    /// Does it give a stream of bytes that `send - --name NAME < PATH` could send? Everything
    /// but a directory.
    pub fn streams(self) -> bool {
        self != FileKind::Directory
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a FIFO",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Socket => "a socket",
            FileKind::Unknown => "an unknown kind of file",
        })
    }
}

/// A server's refusal, `error: <reason>`, sorted by what the sender can do about it. The
/// server's words are kept as they were said; `Display` gives them back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The name is taken — a file of that name exists, or another transfer of it is in
    /// progress — and the same file under another name would go through.
    NameTaken(String),
    /// Anything else.
    Other(String),
}

impl Refusal {
    /// Sort the reason a server gave (the text after `error: `). The words that mean "the name
    /// is taken" are the files service's own (`storage.rs`'s `StoreError`), compared whole.
    pub fn new(reason: &str) -> Refusal {
        let taken = [StoreError::Exists, StoreError::Busy].map(|e| e.to_string());
        if taken.iter().any(|t| t == reason) {
            Refusal::NameTaken(reason.to_string())
        } else {
            Refusal::Other(reason.to_string())
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NameTaken(reason) | Refusal::Other(reason) => f.write_str(reason),
        }
    }
}

/// Send one file (or standard input); `Ok` only once the server has confirmed every byte, or,
/// with `--seed`, once the receiver has taken them and closed.
pub fn send(opts: &SendOptions) -> Result<Sent, SendError> {
    let mut input = Input::open(opts.source)?;
    let name = match (opts.name, opts.source) {
        (Some(name), _) => name.to_string(),
        (None, Source::Path(path)) => path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| SendError::BadName {
                name: path.display().to_string(),
                why: "the file name is not UTF-8; give one with --name NAME".into(),
            })?
            .to_string(),
        (None, Source::Stdin) => {
            return Err(SendError::BadName {
                name: "-".into(),
                why: "standard input has no name; give one with --name NAME".into(),
            });
        }
    };
    let header = header(&name, input.size(), opts.seed)?;

    let mut conn = Conn::connect(opts.to, opts.timeout)?;
    let started = Instant::now();
    conn.send_header(&header)?;
    conn.read_ok()?;

    // The server names its algorithm only at the end: a file can be read again to hash it
    // another way, a stream cannot, so a stream is hashed both ways.
    let mut hashers: Vec<Hasher> = if input.rereadable() {
        vec![Hasher::new(Algorithm::Blake3)]
    } else {
        Algorithm::ALL.map(Hasher::new).to_vec()
    };
    let mut progress = opts.progress.then(|| Progress::new(input.size()));
    let streamed = conn
        .stream(&mut input, &mut hashers, &mut progress, opts.sendfile)
        .and_then(|streamed| input.check_unchanged().map(|()| streamed));
    let (sent, sendfile) = match streamed {
        Ok(s) => (s.bytes, s.sendfile),
        Err(e) => {
            // A FIN now would let the server store what it has.
            conn.abort();
            return Err(e);
        }
    };
    if let Some(p) = progress.take() {
        p.finish(sent);
    }
    conn.finish()?;

    let line = conn.read_final(if opts.seed {
        "the receiver to close the connection"
    } else {
        "the server's confirmation"
    })?;
    let elapsed = started.elapsed();
    if line.is_empty() && opts.seed {
        // The seeds' receiver: `ok`, read to EOF, close. A clean close is all it can say.
        return Ok(Sent {
            name,
            bytes: sent,
            confirmed: None,
            elapsed,
            sendfile,
        });
    }
    let done = match Done::parse(&line) {
        Ok(done) => done,
        Err(DoneError::NotDone) => return Err(conn.refusal(line, "waiting for 'done'")),
        Err(e) => {
            return Err(SendError::Protocol {
                addr: conn.addr,
                said: format!("{} ({e})", line.trim_end()),
            });
        }
    };
    let algorithm = done.digest.algorithm;
    let digest = match hashers.into_iter().find(|h| h.algorithm() == algorithm) {
        Some(h) => h.finalize(),
        None => input.rehash(algorithm, &mut vec![0; wire::CHUNK])?,
    };
    if done.confirms(sent, &digest) {
        return Ok(Sent {
            name,
            bytes: sent,
            confirmed: Some(digest),
            elapsed,
            sendfile,
        });
    }
    // A file modified after its pages were read and before they were sent explains a
    // mismatch better than a mismatch does.
    input.check_unchanged()?;
    Err(SendError::Mismatch {
        addr: conn.addr,
        sent,
        digest,
        said: line.trim_end().to_string(),
    })
}

/// The header for `name`: framed when the size is known, a newline-ended name when it is not,
/// the bare name for `--seed`. Each is checked with the server's own parser, so that what we
/// send is read back as what we mean.
fn header(name: &str, size: Option<u64>, seed: bool) -> Result<Vec<u8>, SendError> {
    let bad = |why: String| SendError::BadName {
        name: name.to_string(),
        why,
    };
    files::validate_name(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let header = match (seed, size) {
        (true, _) => name.as_bytes().to_vec(),
        (false, Some(size)) => format!("{size} {name}\n").into_bytes(),
        (false, None) => format!("{name}\n").into_bytes(),
    };
    match (files::parse_header(&header), seed, size) {
        (Header::Invalid(e), ..) => Err(bad(e.to_string())),
        // The bare name has no newline: the receiver takes it after a silence.
        (Header::Incomplete { .. }, true, _) => Ok(header),
        (Header::Framed { .. }, false, Some(_)) | (Header::NameLine { .. }, false, None) => {
            Ok(header)
        }
        (Header::Framed { .. }, false, None) => Err(bad(
            "it starts with digits and a space, which the server would read as a size; \
             standard input needs another name (or --seed)"
                .into(),
        )),
        _ => Err(bad("the server would not read this header as sent".into())),
    }
}

/// Is stderr a terminal (so a progress line makes sense)?
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

/// A duration as people write it: `30 s`, `0.5 s`.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
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

    fn addr() -> SocketAddr {
        "127.0.0.1:7002".parse().unwrap()
    }

    #[test]
    fn test_human_sizes() {
        assert_eq!(human(0.0), "0 B");
        assert_eq!(human(1023.0), "1023 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }

    // --- headers ---

    #[test]
    fn test_each_form_gets_its_header() {
        assert_eq!(header("a.txt", Some(5), false).unwrap(), b"5 a.txt\n");
        assert_eq!(header("a.txt", None, false).unwrap(), b"a.txt\n");
        assert_eq!(header("a.txt", Some(5), true).unwrap(), b"a.txt");
        assert_eq!(header("a.txt", None, true).unwrap(), b"a.txt");
        // A name the framed form carries fine, whatever it looks like.
        assert_eq!(
            header("2024 notes", Some(1), false).unwrap(),
            b"1 2024 notes\n"
        );
    }

    #[test]
    fn test_stream_name_that_looks_like_a_size_is_refused() {
        let err = header("2024 notes", None, false).unwrap_err();
        assert!(err.to_string().contains("read as a size"), "{err}");
        // Digits alone are a name (no space, no size).
        assert_eq!(header("2024", None, false).unwrap(), b"2024\n");
        // The seeds' form has no size to confuse it with.
        assert!(header("2024 notes", None, true).is_ok());
    }

    #[test]
    fn test_bad_names_are_refused_before_connecting() {
        for seed in [false, true] {
            for size in [Some(1), None] {
                for name in ["", "..", "a/b", "esc\x1b[2J", "new\nline"] {
                    assert!(
                        matches!(header(name, size, seed), Err(SendError::BadName { .. })),
                        "{name:?} seed={seed} size={size:?}"
                    );
                }
            }
        }
    }

    // --- messages ---

    #[test]
    fn test_messages_name_what_and_why() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let e = SendError::Connect {
            addr: addr(),
            err: refused,
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to 127.0.0.1:7002: Connection refused"
        );
        let e = SendError::Timeout {
            addr: addr(),
            after: Duration::from_secs(30),
            waiting_for: "the server's confirmation",
        };
        assert_eq!(
            e.to_string(),
            "127.0.0.1:7002: timed out after 30 s waiting for the server's confirmation"
        );
        for taken in ["file exists", "a transfer of that name is in progress"] {
            let e = SendError::Refused {
                addr: addr(),
                reason: Refusal::new(taken),
            };
            assert_eq!(
                e.to_string(),
                format!(
                    "127.0.0.1:7002 refused the file: {taken}; send it under another name with \
                     --name NAME"
                )
            );
        }
        for other in [
            "file too large: the limit is 5 bytes",
            "file exists, sort of",
        ] {
            let e = SendError::Refused {
                addr: addr(),
                reason: Refusal::new(other),
            };
            assert_eq!(
                e.to_string(),
                format!("127.0.0.1:7002 refused the file: {other}")
            );
        }
        // A directory has nothing to stream; a FIFO is pointed at `send -`.
        let e = SendError::NotRegular {
            path: "d".into(),
            kind: FileKind::Directory,
        };
        assert_eq!(e.to_string(), "d: is a directory, not a regular file");
        let e = SendError::NotRegular {
            path: "p".into(),
            kind: FileKind::Fifo,
        };
        assert!(
            e.to_string()
                .ends_with("use `resound send - --name NAME < p`"),
            "{e}"
        );
    }

    #[test]
    fn test_seconds_print_plainly() {
        assert_eq!(secs(Duration::from_secs(30)), "30 s");
        assert_eq!(secs(Duration::from_millis(500)), "0.5 s");
    }
}
