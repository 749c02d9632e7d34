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
//! the loop does what it can without waiting. What the goroutine kept on its stack (the bytes its
//! blocked `Write` holds, whether it saw EOF) is kept in a `Conn` between events, and each change
//! of phase is printed with the names `ss -tan` uses: ESTABLISHED, CLOSE-WAIT, CLOSED.
//!
//! ```text
//! cargo run --example 01_echo -- 7000  # PORT or :PORT = 0.0.0.0:PORT; IP:PORT; none = 127.0.0.1:0
//! echo hi | nc -N 127.0.0.1 7000       # another terminal; -N sends the FIN at the end of input
//! ```

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

/// The listener's token. A connection's token is its slab key, which never gets this high.
const LISTENER: Token = Token(usize::MAX);
/// A client is registered for both, once. mio's readiness is edge-triggered: an event says
/// "this changed", once. So WRITABLE costs no wake-up while we write freely: on its own it comes
/// only when a send buffer that refused us (WouldBlock) has room again, when something is owed.
/// (Level-triggered, as `poll(2)` is, it would fire on every wait while there is room: a spin.)
const READ_WRITE: Interest = Interest::READABLE.add(Interest::WRITABLE);

/// Echo owed to one client before we stop reading it. Go has this bound for free (a goroutine
/// stuck in `Write` does not `Read`); here nothing is stuck, so we stop on purpose, or a client
/// that sends without reading would grow our memory without end.
const MAX_OWED: usize = 256 * 1024;

/// What the goroutine kept on its stack, kept between events instead.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Echo the socket has not taken yet: what a blocked `c.Write` holds in Go.
    owed: Vec<u8>,
    /// `read` returned 0: the peer's FIN came, after all its data. We are in CLOSE-WAIT: nothing
    /// more to read, but maybe echo still to send. (src/lifecycle.rs has every phase.)
    fin: bool,
}

impl Conn {
    fn phase(&self) -> &'static str {
        if self.fin {
            "CLOSE-WAIT"
        } else {
            "ESTABLISHED"
        }
    }
}

fn main() -> io::Result<()> {
    let addr = listen_addr(std::env::args().nth(1)).unwrap_or_else(|e| {
        eprintln!("01_echo: {e}");
        std::process::exit(2)
    });
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
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => result?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut conns);
                continue;
            }
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue; // already closed
            };
            // The event is a hint, not a promise: serve() tries, and the syscalls tell the truth.
            let why = match serve(conn, key, &mut buf) {
                Ok(false) => continue, // waiting for the kernel: a new edge will bring us back
                Ok(true) => "all echo sent; close() sends our FIN".to_string(),
                Err(e) => format!("error: {e}"), // a reset, say
            };
            let (peer, phase) = (conn.peer, conn.phase());
            println!("conn {key} {peer} {phase} -> CLOSED ({why})");
            conns.remove(key); // drop = close(), which also takes it out of the poll
        }
    }
}

/// Accept every waiting client. Readiness is edge-triggered: one event may stand for several
/// clients and is not repeated, so we go on until `WouldBlock`.
fn accept_all(listener: &TcpListener, poll: &Poll, conns: &mut Slab<Conn>) {
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let key = conns.vacant_key();
                if let Err(e) = poll
                    .registry()
                    .register(&mut stream, Token(key), READ_WRITE)
                {
                    eprintln!("register {peer}: {e}"); // dropping `stream` closes it
                    continue;
                }
                println!("conn {key} {peer} LISTEN -> ESTABLISHED");
                let (owed, fin) = (Vec::new(), false);
                conns.insert(Conn {
                    stream,
                    peer,
                    owed,
                    fin,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            // A signal, or a client that gave up while in the backlog: take the next one.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            // Out of descriptors (EMFILE) and the like: the client waits in the backlog until
            // another one arrives and makes a new edge.
            Err(e) => return eprintln!("accept: {e}"),
        }
    }
}

/// Do all this connection can do now. Returns true when it is finished.
fn serve(conn: &mut Conn, key: usize, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        let n = write_some(&mut conn.stream, &conn.owed)?; // pay what we owe first: in order
        conn.owed.drain(..n);
        if conn.fin {
            return Ok(conn.owed.is_empty()); // else wait for the WRITABLE edge
        }
        let room = buf.len().min(MAX_OWED - conn.owed.len());
        if room == 0 {
            return Ok(false); // backpressure: not another byte in until the client reads
        }
        match conn.stream.read(&mut buf[..room]) {
            Ok(0) => {
                let (peer, owed) = (conn.peer, conn.owed.len());
                println!("conn {key} {peer} ESTABLISHED -> CLOSE-WAIT (peer FIN; {owed} B owed)");
                conn.fin = true;
            }
            Ok(n) => conn.owed.extend_from_slice(&buf[..n]), // written at the loop's top
            // Drained, so the next arrival is a new edge. Stopping before WouldBlock would
            // hang this client: no event ever comes for bytes that are already waiting.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Write as much of `bytes` as the socket takes now; returns how much that was.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()), // retrying would spin
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break, // full: WRITABLE will say
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `PORT` or `:PORT` is every IPv4 interface, as in Go's `net.Listen("tcp", ":PORT")`.
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
// * src/server.rs: the same loop in seven named steps, with a run queue, so that a client gets
//   at most 64 KiB per turn (here one client that sends and reads fast keeps the loop to itself);
// * src/listener.rs: out of descriptors, a spare one turns waiting clients away (no stall);
// * src/connection.rs, src/lifecycle.rs: the whole lifecycle — the server closing first
//   (FIN-WAIT-1, FIN-WAIT-2, CLOSING), idle and close timeouts (here a client in CLOSE-WAIT
//   that never reads is kept forever), resets that say why; src/tcp.rs does the syscalls.
