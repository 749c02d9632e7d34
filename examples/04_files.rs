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
//! first Read returns" becomes "what arrived before the socket ran dry (`WouldBlock`)": a sender
//! writes its name, then waits for `ok`, so a dry socket means the name is all there. Try it with
//! `(printf notes.txt; sleep 1; cat notes.txt) | nc -N IP PORT`: the sleep makes the socket dry.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind::{AlreadyExists, ConnectionAborted, Interrupted, WouldBlock, WriteZero};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
const READ_WRITE: Interest = Interest::READABLE.add(Interest::WRITABLE);
const MAX_NAME: usize = 255; // the longest name most file systems take, in bytes

enum Stage {
    Name(Vec<u8>),                         // collecting the name until the socket runs dry
    Content { file: File, path: PathBuf }, // `ok` owed or sent; the rest goes to the file
    Refused, // error line owed, then our FIN; we read on, as a reset could destroy that line
}

struct Transfer {
    stream: TcpStream,
    peer: SocketAddr,
    stage: Stage,
    owed: Vec<u8>, // `ok` or an error line the socket has not taken yet
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let arg = args.next().unwrap_or("127.0.0.1:0".into());
    let dir = PathBuf::from(args.next().unwrap_or("received".into()));
    let Ok(addr) = arg.parse::<SocketAddr>() else {
        eprintln!("usage: 04_files [IP:PORT [DIR]]");
        std::process::exit(2);
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
            Err(e) if e.kind() == Interrupted => continue,
            result => result?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    let (mut stream, peer) = match listener.accept() {
                        Ok(accepted) => accepted,
                        Err(e) if e.kind() == WouldBlock => break,
                        Err(e) if matches!(e.kind(), Interrupted | ConnectionAborted) => continue,
                        Err(e) => break eprintln!("accept: {e}"), // EMFILE: see 01_echo
                    };
                    let token = Token(transfers.vacant_key());
                    let Ok(()) = poll.registry().register(&mut stream, token, READ_WRITE) else {
                        continue; // dropping `stream` closes it
                    };
                    transfers.insert(Transfer {
                        stream,
                        peer,
                        stage: Stage::Name(Vec::new()),
                        owed: Vec::new(),
                    });
                }
            } else if let Some(t) = transfers.get_mut(event.token().0) {
                match serve(t, &mut buf, &dir) {
                    Ok(false) => continue, // waiting for the next edge
                    Ok(true) => {}
                    Err(e) => println!("conn {} error: {e}", t.peer),
                }
                transfers.remove(event.token().0); // drop = close()
            }
        }
    }
}

/// Move the transfer on as far as the socket allows. Returns true when it is finished.
fn serve(t: &mut Transfer, buf: &mut [u8], dir: &Path) -> io::Result<bool> {
    loop {
        while !t.owed.is_empty() {
            match t.stream.write(&t.owed) {
                Ok(0) => return Err(WriteZero.into()), // retrying would spin
                Ok(n) => _ = t.owed.drain(..n),
                Err(e) if e.kind() == WouldBlock => return Ok(false),
                Err(e) if e.kind() == Interrupted => continue,
                Err(e) => return Err(e),
            }
            if t.owed.is_empty() && matches!(t.stage, Stage::Refused) {
                let _ = t.stream.shutdown(Shutdown::Write); // our FIN, behind the error line
            }
        }
        match (t.stream.read(buf), &mut t.stage) {
            (Ok(0), Stage::Content { file, path }) => {
                let (bytes, path) = (file.metadata()?.len(), path.display());
                println!("conn {} stored {path} ({bytes} bytes)", t.peer);
                return Ok(true); // the sender's FIN ends the file; our close answers it
            }
            (Ok(0), _) => return Ok(true), // a FIN before any name, or after a refusal
            (Ok(n), Stage::Content { file, .. }) => file.write_all(&buf[..n])?, // to the page cache
            (Ok(n), Stage::Name(name)) if name.len() + n > MAX_NAME => refuse(t, "name too long"),
            (Ok(n), Stage::Name(name)) => name.extend_from_slice(&buf[..n]),
            (Ok(_), Stage::Refused) => {} // dropped: unread bytes would make our close a reset
            // Dry after part of a name: the sender now waits for our reply, so that is the name.
            (Err(e), Stage::Name(name)) if e.kind() == WouldBlock && !name.is_empty() => {
                decide(&std::mem::take(name), t, dir) // the loop's top sends the reply
            }
            (Err(e), _) if e.kind() == WouldBlock => return Ok(false),
            (Err(e), _) if e.kind() == Interrupted => {}
            (Err(e), _) => return Err(e),
        }
    }
}

/// The name is complete: open the file and owe `ok`, or refuse.
fn decide(name: &[u8], t: &mut Transfer, dir: &Path) {
    let path = match std::str::from_utf8(name) {
        Ok(name) if !matches!(name, "." | "..") && !name.contains(['/', '\0']) => dir.join(name),
        _ => return refuse(t, "invalid name"), // it could leave `dir`, or is not text
    };
    // create_new: never replace a file, never follow a link planted under that name.
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(file) => (t.stage, t.owed) = (Stage::Content { file, path }, b"ok".to_vec()),
        Err(e) if e.kind() == AlreadyExists => refuse(t, "file exists"),
        Err(e) => refuse(t, &format!("cannot store file: {e}")),
    }
}

fn refuse(t: &mut Transfer, why: &str) {
    println!("conn {} refused: {why}", t.peer);
    (t.stage, t.owed) = (Stage::Refused, format!("error: {why}\n").into_bytes());
}

// Where resound does more: src/service/files.rs, also `NAME\n` and `<SIZE> <NAME>\n` headers (the
// size tells a whole file from one cut short), a silence timer, a size limit, a final hash line;
// src/storage.rs, a temporary file renamed when complete (here a reset leaves a partial file).
