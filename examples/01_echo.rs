//! Step 1 — a TCP echo server on one thread, with no blocking call anywhere. It replaces:
//!
//! ```go
//! ln, _ := net.Listen("tcp", ":7000")
//! for {
//!     c, _ := ln.Accept()                 // blocks until a client connects
//!     go func() {                         // a goroutine, and its stack, per client
//!         defer c.Close()
//!         buf := make([]byte, 4096)
//!         for n, err := c.Read(buf); err == nil; n, err = c.Read(buf) { // io.EOF: the FIN
//!             c.Write(buf[:n])            // blocks while the client does not read
//!         }
//!     }()
//! }
//! ```
//!
//! What changes: nothing blocks. One `Poll` sleeps until the kernel says a socket is ready, then
//! the loop does what it can without waiting. Each change of phase is printed as `ss -tan` names
//! it: ESTABLISHED, CLOSE-WAIT, CLOSED. Run it with `cargo run --example 01_echo -- 7000` (PORT
//! or :PORT = 0.0.0.0:PORT; IP:PORT; none = 127.0.0.1:0) and, in another terminal,
//! `echo hi | nc -N 127.0.0.1 7000` (-N sends the FIN at the end of input).

use std::io::ErrorKind::{ConnectionAborted, Interrupted, WouldBlock, WriteZero};
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX); // a connection's token is its slab key: never this high
/// Each client is registered once, for both. Readiness is edge-triggered (an event says "this
/// changed", once), so WRITABLE wakes us only when a send buffer that refused us has room again
/// (level-triggered, as `poll(2)` is, it would fire on every wait while there is room: a spin).
const READ_WRITE: Interest = Interest::READABLE.add(Interest::WRITABLE);
/// Echo owed to a client before we stop reading it, as a goroutine stuck in `Write` does.
const MAX_OWED: usize = 256 * 1024;

/// What the goroutine kept on its stack: the echo its blocked `Write` holds (`owed`), and whether
/// it saw the FIN (`fin`: CLOSE-WAIT, nothing more to read, maybe echo still to send).
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    owed: Vec<u8>,
    fin: bool,
}

fn main() -> io::Result<()> {
    // `PORT` or `:PORT` is every IPv4 interface, as in Go's `net.Listen("tcp", ":PORT")`.
    let arg = std::env::args().nth(1).unwrap_or("127.0.0.1:0".into());
    let port = arg.strip_prefix(':').unwrap_or(&arg).parse::<u16>().ok();
    let any_interface = port.map(|port| SocketAddr::from(([0, 0, 0, 0], port)));
    let Some(addr) = any_interface.or_else(|| arg.parse().ok()) else {
        eprintln!("01_echo: {arg:?}: not PORT, :PORT or IP:PORT");
        std::process::exit(2)
    };
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?; // bind + listen, non-blocking
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening echo tcp {}", listener.local_addr()?); // port 0 resolved
    let mut events = Events::with_capacity(256);
    let mut conns: Slab<Conn> = Slab::new();
    let mut buf = vec![0; 64 * 1024]; // one read buffer shared by every connection

    loop {
        // The only place this thread waits. A signal may interrupt it: wait again.
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == Interrupted => continue,
            result => result?,
        }
        for event in events.iter() {
            let key = event.token().0;
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut conns);
            } else if let Some(c) = conns.get_mut(key) {
                // The event is a hint, not a promise: serve() tries; the syscalls tell the truth.
                let why = match serve(c, key, &mut buf) {
                    Ok(false) => continue, // waiting for the kernel: a new edge brings us back
                    Ok(true) => "all echo sent; close() sends our FIN".to_string(),
                    Err(e) => format!("error: {e}"), // a reset, say
                };
                let phase = if c.fin { "CLOSE-WAIT" } else { "ESTABLISHED" };
                println!("conn {key} {} {phase} -> CLOSED ({why})", c.peer);
                conns.remove(key); // drop = close(), which also takes it out of the poll
            }
        }
    }
}

/// Accept every waiting client: one edge may stand for several, and is not repeated.
fn accept_all(listener: &TcpListener, poll: &Poll, conns: &mut Slab<Conn>) {
    loop {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == WouldBlock => return,
            // A signal, or a client that gave up while in the backlog: take the next one.
            Err(e) if matches!(e.kind(), Interrupted | ConnectionAborted) => continue,
            Err(e) => return eprintln!("accept: {e}"), // EMFILE: it waits for the next edge
        };
        let token = Token(conns.vacant_key());
        if let Err(e) = poll.registry().register(&mut stream, token, READ_WRITE) {
            eprintln!("register {peer}: {e}"); // dropping `stream` closes it
            continue;
        }
        println!("conn {} {peer} LISTEN -> ESTABLISHED", token.0);
        conns.insert(Conn {
            stream,
            peer,
            owed: Vec::new(),
            fin: false,
        });
    }
}

/// Do all this connection can do now. Returns true when it is finished.
fn serve(c: &mut Conn, key: usize, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        // Pay what we owe first, in order. What the socket refuses (WouldBlock) stays owed.
        while !c.owed.is_empty() {
            match c.stream.write(&c.owed) {
                Ok(0) => return Err(WriteZero.into()), // retrying would spin
                Ok(n) => _ = c.owed.drain(..n),
                Err(e) if e.kind() == WouldBlock => break,
                Err(e) if e.kind() == Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // No reading after the FIN, nor while we owe MAX_OWED (backpressure, or a client that
        // never reads would grow our memory without end). Done once the FIN came and all is paid.
        if c.fin || c.owed.len() >= MAX_OWED {
            return Ok(c.owed.is_empty()); // else the WRITABLE edge brings us back
        }
        match c.stream.read(buf) {
            Ok(0) => {
                let (peer, owed) = (c.peer, c.owed.len());
                println!("conn {key} {peer} ESTABLISHED -> CLOSE-WAIT (peer FIN; {owed} B owed)");
                c.fin = true;
            }
            Ok(n) => c.owed.extend_from_slice(&buf[..n]), // written at the loop's top
            // Drained, so the next arrival is a new edge. Stopping before WouldBlock would
            // hang this client: no event ever comes for bytes that are already waiting.
            Err(e) if e.kind() == WouldBlock => return Ok(false),
            Err(e) if e.kind() == Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

// Where resound does more:
// * src/server.rs: the loop in named steps; a run queue gives a client at most 64 KiB per turn
//   (here a client that sends and reads fast keeps the loop to itself);
// * src/listener.rs: out of descriptors, a spare one turns waiting clients away (no stall);
// * src/lifecycle.rs, src/connection.rs: the server closing first (FIN-WAIT-1/2, CLOSING), idle
//   timeouts (here a client in CLOSE-WAIT that never reads is kept forever), resets that say why.
