//! Step 4 — receiving files: a name, `ok`, the content, the sender's close. It replaces:
//!
//! ```go
//! c, _ := ln.Accept()                    // in a goroutine per client:
//! n, _ := c.Read(buf)                    // the name: whatever the first Read returns
//! f, _ := os.Create(string(buf[:n]))     // "../../etc/x" would be written too
//! c.Write([]byte("ok"))
//! io.Copy(f, c)                          // the content, until the sender closes (EOF)
//! f.Close(); c.Close()
//! ```
//!
//! What changes: the transfer is a small state machine (`Stage`) that moves one event at a
//! time. "Whatever the first Read returns" becomes "what arrived before the socket ran dry
//! (`WouldBlock`)", or everything before a `\n` — the sender writes its name in one go and then
//! waits for `ok`, so a dry socket means the name is complete. The name must be a plain file
//! name; the reply waits in `owed` if the socket cannot take it; content goes to the file as it
//! arrives; a reset removes the partial file.
//!
//! ```text
//! cargo run --example 04_files -- 7002 received/      # ADDR (as in 01_echo) and a directory
//! (printf 'notes.txt\n'; cat notes.txt) | nc -N 127.0.0.1 7002
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
/// Registered once, both ways: edge-triggered WRITABLE only fires after a write was refused.
const READ_WRITE: Interest = Interest::READABLE.add(Interest::WRITABLE);
/// The longest name most file systems take, in bytes.
const MAX_NAME: usize = 255;

/// Where a transfer is; each event moves it on at most as far as the bytes allow.
enum Stage {
    /// Collecting the name.
    Name(Vec<u8>),
    /// `ok` sent; every byte goes to the file until the sender's FIN.
    Content {
        file: File,
        path: PathBuf,
        bytes: u64,
    },
    /// An error line owed, then our FIN; reading and discarding until the sender's FIN.
    Refused { fin_sent: bool },
}

struct Transfer {
    stream: TcpStream,
    peer: SocketAddr,
    stage: Stage,
    /// `ok` or an error line the socket has not taken yet.
    owed: Vec<u8>,
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = listen_addr(args.next()).unwrap_or_else(|e| {
        eprintln!("04_files: {e}");
        std::process::exit(2)
    });
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "received".into()));
    fs::create_dir_all(&dir)?;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening files tcp {}", listener.local_addr()?);
    let mut events = Events::with_capacity(256);
    let mut transfers: Slab<Transfer> = Slab::new();
    let mut buf = vec![0; 64 * 1024];

    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => result?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut transfers);
                continue;
            }
            let key = event.token().0;
            let Some(t) = transfers.get_mut(key) else {
                continue;
            };
            let done = match serve(t, &mut buf, &dir) {
                Ok(done) => done,
                Err(e) => {
                    // Reset or I/O error: a file cut short must not look like a received one.
                    if let Stage::Content { path, .. } = &t.stage {
                        let _ = fs::remove_file(path);
                    }
                    println!("conn {key} {} error: {e}", t.peer);
                    true
                }
            };
            if done {
                transfers.remove(key); // drop = close()
            }
        }
    }
}

fn accept_all(listener: &TcpListener, poll: &Poll, transfers: &mut Slab<Transfer>) {
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let key = transfers.vacant_key();
                if let Err(e) = poll
                    .registry()
                    .register(&mut stream, Token(key), READ_WRITE)
                {
                    eprintln!("register {peer}: {e}");
                    continue;
                }
                let (stage, owed) = (Stage::Name(Vec::new()), Vec::new());
                transfers.insert(Transfer {
                    stream,
                    peer,
                    stage,
                    owed,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return eprintln!("accept: {e}"), // EMFILE: see 01_echo
        }
    }
}

/// Move the transfer on as far as the socket allows. Returns true when it is finished.
fn serve(t: &mut Transfer, buf: &mut [u8], dir: &Path) -> io::Result<bool> {
    loop {
        while !t.owed.is_empty() {
            match t.stream.write(&t.owed) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()), // retrying would spin
                Ok(n) => drop(t.owed.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // Our FIN goes only after the error line is written: TCP queues it behind the bytes
        // the kernel has, not behind those still in `owed`.
        if let Stage::Refused { fin_sent } = &mut t.stage
            && !*fin_sent
        {
            *fin_sent = true;
            let _ = t.stream.shutdown(Shutdown::Write); // fails only if the peer is gone
        }
        let n = match t.stream.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The socket ran dry. If a name has begun, the sender is waiting for our `ok`:
                // the name is complete. Otherwise wait for the next edge.
                match &mut t.stage {
                    Stage::Name(name) if !name.is_empty() => {
                        let name = std::mem::take(name);
                        decide(t, &name, dir);
                        continue; // send the reply
                    }
                    _ => return Ok(false),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match &mut t.stage {
            Stage::Content { path, bytes, .. } if n == 0 => {
                println!("conn {} stored {} ({bytes} bytes)", t.peer, path.display());
                return Ok(true); // the sender's FIN ends the file; our close answers it
            }
            _ if n == 0 => return Ok(true), // a FIN before any name, or after a refusal
            Stage::Content { file, bytes, .. } => {
                file.write_all(&buf[..n])?; // the page cache takes it in microseconds
                *bytes += n as u64;
            }
            Stage::Refused { .. } => {} // discard
            Stage::Name(name) => {
                name.extend_from_slice(&buf[..n]);
                if let Some(end) = name.iter().position(|&b| b == b'\n') {
                    // The nc habit: the name ends with `\n`, and content may follow in the same read.
                    let (name, rest) = (name[..end].to_vec(), name[end + 1..].to_vec());
                    decide(t, &name, dir);
                    if let Stage::Content { file, bytes, .. } = &mut t.stage {
                        file.write_all(&rest)?;
                        *bytes += rest.len() as u64;
                    }
                } else if name.len() > MAX_NAME {
                    refuse(t, "name too long");
                }
            }
        }
    }
}

/// The name is complete: open the file and owe `ok`, or refuse.
fn decide(t: &mut Transfer, name: &[u8], dir: &Path) {
    let name = match std::str::from_utf8(name) {
        Ok(name)
            if name.len() <= MAX_NAME
                && !matches!(name, "" | "." | "..")
                && !name.contains(['/', '\0']) =>
        {
            name
        }
        _ => return refuse(t, "invalid name"),
    };
    let path = dir.join(name);
    // create_new: never replace a file, never follow a link planted under that name.
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(file) => {
            println!("conn {} receiving {name}", t.peer);
            t.stage = Stage::Content {
                file,
                path,
                bytes: 0,
            };
            t.owed.extend_from_slice(b"ok");
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => refuse(t, "file exists"),
        Err(e) => refuse(t, &format!("cannot store file: {e}")),
    }
}

/// Owe an error line, then our FIN, then read until the sender's FIN. Closing at once, with its
/// bytes unread, would make our kernel send a reset, which can destroy the line before it is read.
fn refuse(t: &mut Transfer, why: &str) {
    println!("conn {} refused: {why}", t.peer);
    t.owed
        .extend_from_slice(format!("error: {why}\n").as_bytes());
    t.stage = Stage::Refused { fin_sent: false };
}

/// `PORT` or `:PORT` is every IPv4 interface; none is 127.0.0.1:0 (see 01_echo).
fn listen_addr(arg: Option<String>) -> Result<SocketAddr, String> {
    let arg = arg.unwrap_or_else(|| "127.0.0.1:0".into());
    match arg.strip_prefix(':').unwrap_or(&arg).parse::<u16>() {
        Ok(port) => Ok(SocketAddr::from(([0, 0, 0, 0], port))),
        Err(_) => arg
            .parse()
            .map_err(|_| format!("{arg:?}: not PORT, :PORT or IP:PORT")),
    }
}

// Where resound does more:
// * src/service/files.rs: the header as a pure parser with three forms — this bare name, `NAME\n`,
//   and `<SIZE> <NAME>\n`, whose size tells a complete file from one cut short by an orderly
//   close (here indistinguishable) —, a silence timer instead of trusting one read, a header
//   timeout, size limits, every hostile name, and a hash in a final `done` line;
// * src/storage.rs: content goes to a temporary file, renamed into place only when complete.
