//! The smallest honest mio echo server: read this before `src/`.
//!
//! ```text
//! cargo run --example minimal_echo            # listens on 127.0.0.1:9000
//! nc 127.0.0.1 9000                           # type; every line comes back
//! ```
//!
//! One thread, one `Poll`, a slab of connections. What it shows, in ~100 lines:
//! * readiness is edge-triggered: on an event, read (or write, or accept) until `WouldBlock`,
//!   because the kernel will not report the same readiness twice;
//! * `read() == 0` is the peer's FIN: all its data came before it;
//! * a write the socket does not take is kept and retried on WRITABLE, and while it waits we
//!   stop reading — the non-blocking form of Go's blocking `conn.Write`.
//!
//! What resound adds on top: per-turn budgets (fairness), a lifecycle with orderly closes,
//! limits, timers, graceful shutdown, and surviving EMFILE — see the README's tour.

use std::io::{self, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX); // connections use slab keys as tokens

struct Conn {
    stream: TcpStream,
    pending: Vec<u8>, // bytes the socket would not take yet
}

fn main() -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(256);
    let mut listener = TcpListener::bind("127.0.0.1:9000".parse().unwrap())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Slab<Conn> = Slab::new();
    let mut buf = vec![0; 64 * 1024]; // one read buffer for everybody
    println!("listening on {}", listener.local_addr()?);

    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                // Accept until WouldBlock (an error like EMFILE just waits for the next event:
                // the real server handles it, see src/listener.rs).
                while let Ok((mut stream, _peer)) = listener.accept() {
                    let key = conns.vacant_key();
                    poll.registry()
                        .register(&mut stream, Token(key), Interest::READABLE)?;
                    conns.insert(Conn {
                        stream,
                        pending: Vec::new(),
                    });
                }
                continue;
            }
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue; // a stale event for a connection we already dropped
            };
            // A reset or another error ends the connection too.
            let done = serve(conn, &mut buf).unwrap_or(true);
            if done {
                // Dropping the stream closes the socket, which also removes it from epoll.
                conns.remove(key);
            } else {
                // WRITABLE interest only while something waits to be written (resound
                // re-registers only when that changes: each call is a syscall).
                let interest = if conn.pending.is_empty() {
                    Interest::READABLE
                } else {
                    Interest::READABLE | Interest::WRITABLE
                };
                poll.registry()
                    .reregister(&mut conn.stream, Token(key), interest)?;
            }
        }
    }
}

/// Flush what is pending, then echo until the socket has nothing more to read. Returns true
/// when the connection is finished.
fn serve(conn: &mut Conn, buf: &mut [u8]) -> io::Result<bool> {
    // Read only once everything owed is sent: a client that does not read its echo stops
    // being read (backpressure), and memory per connection stays at one read.
    if !write_some(&mut conn.stream, &mut conn.pending)? {
        return Ok(false);
    }
    loop {
        match conn.stream.read(buf) {
            Ok(0) => return Ok(true), // the peer's FIN; nothing is pending (see above)
            Ok(n) => {
                conn.pending.extend_from_slice(&buf[..n]);
                if !write_some(&mut conn.stream, &mut conn.pending)? {
                    return Ok(false); // the socket is full: wait for WRITABLE
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Write as much of `pending` as the socket takes. Returns true if all of it went.
fn write_some(stream: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<bool> {
    while !pending.is_empty() {
        match stream.write(pending) {
            // A socket that takes nothing would make this loop spin forever.
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
