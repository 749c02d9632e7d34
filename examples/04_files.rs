//! Step 4 — receiving files: a name, `ok`, the content, the sender's close. It replaces:
//!
//! ```go
//! c, _ := ln.Accept()                   // then, in a goroutine per client:
//! n, _ := c.Read(buf)                   // the name: whatever the first Read returns
//! f, _ := os.Create(string(buf[:n]))    // "../../etc/x" would be written too
//! c.Write([]byte("ok"))
//! io.Copy(f, c)                         // the content, until the sender closes (EOF)
//! f.Close(); c.Close()
//! ```
//!
//! What changes: each transfer is a small state machine (`Stage`) moved on by events. "What the
//! first Read returns" becomes "what arrived before the socket ran dry (`WouldBlock`)": the
//! sender writes its name at once and then waits for `ok`, so a dry socket means the name is
//! all there. The name must be a plain file name; `ok` waits in `owed` if the socket cannot
//! take it; content goes to the file as it arrives; a reset removes the partial file.
//!
//! ```text
//! cargo run --example 04_files -- 127.0.0.1:7002 received/          # IP:PORT and a directory
//! (printf notes.txt; sleep 1; cat notes.txt) | nc -N 127.0.0.1 7002  # name, pause, content
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
/// Registered once, both ways: edge-triggered WRITABLE wakes us only after a refused write.
const READ_WRITE: Interest = Interest::READABLE.add(Interest::WRITABLE);
/// The longest name most file systems take, in bytes; also what we buffer before a decision.
const MAX_NAME: usize = 255;

/// Where a transfer is.
enum Stage {
    /// Collecting the name until the socket runs dry.
    Name(Vec<u8>),
    /// `ok` owed or sent; every byte goes to the file until the sender's FIN.
    Content {
        file: File,
        path: PathBuf,
        bytes: u64,
    },
    /// An error line owed, then our FIN; what the sender still sends is read and discarded.
    Refused,
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
    let arg = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "received".into()));
    let Ok(addr) = arg.parse::<SocketAddr>() else {
        eprintln!("usage: 04_files [IP:PORT [DIR]]");
        std::process::exit(2)
    };
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
            match serve(t, &mut buf, &dir) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    println!("conn {} error: {e}", t.peer);
                    // A reset mid-transfer: a file cut short must not look like a received one.
                    if let Stage::Content { path, .. } = &t.stage {
                        let _ = fs::remove_file(path);
                    }
                }
            }
            transfers.remove(key); // drop = close()
        }
    }
}

fn accept_all(listener: &TcpListener, poll: &Poll, transfers: &mut Slab<Transfer>) {
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let token = Token(transfers.vacant_key());
                if poll
                    .registry()
                    .register(&mut stream, token, READ_WRITE)
                    .is_ok()
                {
                    let (stage, owed) = (Stage::Name(Vec::new()), Vec::new());
                    transfers.insert(Transfer {
                        stream,
                        peer,
                        stage,
                        owed,
                    });
                }
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
                Ok(n) => {
                    t.owed.drain(..n);
                    if t.owed.is_empty() && matches!(t.stage, Stage::Refused) {
                        // Our FIN, behind the error line: TCP queues it after what it holds.
                        let _ = t.stream.shutdown(Shutdown::Write); // fails if the peer is gone
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let n = match (t.stream.read(buf), &mut t.stage) {
            (Ok(n), _) => n,
            // Dry after part of a name: the sender now waits for our reply, so that is the name.
            (Err(e), Stage::Name(name)) if e.kind() == io::ErrorKind::WouldBlock => {
                if name.is_empty() {
                    return Ok(false); // nothing yet: wait for the next edge
                }
                let name = std::mem::take(name);
                decide(t, &name, dir);
                continue; // send the reply
            }
            (Err(e), _) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            (Err(e), _) if e.kind() == io::ErrorKind::Interrupted => continue,
            (Err(e), _) => return Err(e),
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
            Stage::Name(name) => {
                name.extend_from_slice(&buf[..n]);
                if name.len() > MAX_NAME {
                    refuse(t, "name too long");
                }
            }
            // Discarded. Closing now, with bytes unread, would make our kernel send a reset,
            // which can destroy the error line before the sender reads it.
            Stage::Refused => {}
        }
    }
}

/// The name is complete: open the file and owe `ok`, or refuse.
fn decide(t: &mut Transfer, name: &[u8], dir: &Path) {
    let name = match std::str::from_utf8(name) {
        Ok(name) if !matches!(name, "." | "..") && !name.contains(['/', '\0']) => name,
        _ => return refuse(t, "invalid name"), // it could leave `dir`, or is not text
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

/// Owe an error line; our FIN follows it (see `serve`), then we read until the sender's FIN.
fn refuse(t: &mut Transfer, why: &str) {
    println!("conn {} refused: {why}", t.peer);
    t.owed
        .extend_from_slice(format!("error: {why}\n").as_bytes());
    t.stage = Stage::Refused;
}

// Where resound does more:
// * src/service/files.rs: the header as a pure parser of three forms — this bare name, `NAME\n`
//   (the nc habit) and `<SIZE> <NAME>\n`, whose size tells a complete file from one cut short
//   by an orderly close (here they look the same) —, a silence timer instead of trusting one
//   dry socket, a header timeout, a size limit, every hostile name, a final `done` line with a
//   hash; src/storage.rs: content goes to a temporary file, renamed into place when complete.
