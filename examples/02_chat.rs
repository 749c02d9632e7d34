//! Step 2 — a chat room: every line a client sends goes to every other client. It replaces:
//!
//! ```go
//! func handle(c net.Conn) {
//!     out := make(chan string, 16)                    // this client's queue, and its writer:
//!     go func() { for l := range out { c.Write([]byte(l)) } }()
//!     entering <- out
//!     for sc := bufio.NewScanner(c); sc.Scan(); { messages <- msg{out, sc.Text() + "\n"} }
//!     leaving <- out
//!     c.Close()
//! }
//! // and one broadcaster goroutine:  for each m: for each o != m.from: o <- m.text
//! ```
//!
//! What changes: no goroutines, no channels; the loop owns the room. The whole lines of a read
//! become one `Rc<[u8]>`, queued by reference to each other client (N pointers, not N copies).
//! Queues are bounded: a client that stops reading is dropped; in Go its full channel blocks all.

use std::collections::VecDeque;
use std::io::ErrorKind::{ConnectionAborted, Interrupted, WouldBlock};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
const READ_WRITE: Interest = Interest::READABLE.add(Interest::WRITABLE);
const MAX_LINE: usize = 64 * 1024; // the start of a line is kept until its `\n` arrives
const MAX_QUEUED: usize = 1024 * 1024; // else one client that never reads would keep every line

struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    partial: Vec<u8>,          // the start of a line whose `\n` has not arrived yet
    queue: VecDeque<Rc<[u8]>>, // batches owed, each shared with the other recipients
    sent: usize,               // bytes of the front batch already written
    queued: usize,             // bytes left to write, for the bound
    closing: Option<String>,   // why it was closed: it is freed at the end of the batch of events
}

fn main() -> io::Result<()> {
    let arg = std::env::args().nth(1).unwrap_or("127.0.0.1:0".into());
    let Ok(addr) = arg.parse::<SocketAddr>() else {
        eprintln!("usage: 02_chat [IP:PORT]");
        std::process::exit(2)
    };
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening chat tcp {}", listener.local_addr()?);
    let mut events = Events::with_capacity(256);
    let mut clients: Slab<Client> = Slab::new();
    let mut buf = vec![0; 64 * 1024];

    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == Interrupted => continue,
            result => result?,
        }
        for event in events.iter() {
            let key = event.token().0;
            if event.token() == LISTENER {
                loop {
                    // Accept every waiting client: one edge may stand for several.
                    let (mut stream, peer) = match listener.accept() {
                        Ok(accepted) => accepted,
                        Err(e) if e.kind() == WouldBlock => break,
                        Err(e) if matches!(e.kind(), Interrupted | ConnectionAborted) => continue,
                        Err(e) => break eprintln!("accept: {e}"), // EMFILE: see 01_echo
                    };
                    let token = Token(clients.vacant_key());
                    let Ok(()) = poll.registry().register(&mut stream, token, READ_WRITE) else {
                        continue; // dropping `stream` closes it
                    };
                    println!("conn {} {peer} joined", token.0);
                    clients.insert(Client {
                        stream,
                        peer,
                        partial: Vec::new(),
                        queue: VecDeque::new(),
                        sent: 0,
                        queued: 0,
                        closing: None,
                    });
                }
            } else if clients.get(key).is_some_and(|c| c.closing.is_none()) {
                clients[key].closing = serve(&mut clients, key, &mut buf);
            }
        }
        // Free the closed only now: a slot freed mid-batch could pass a stale event to a newcomer.
        clients.retain(|key, c| {
            let Some(why) = &c.closing else { return true };
            println!("conn {key} {} {why}", c.peer);
            false // removed from the slab, and drop = close()
        });
    }
}

/// Read `key` until `WouldBlock`, passing its whole lines on; then pay it. `Some(why)` closes it.
fn serve(clients: &mut Slab<Client>, key: usize, buf: &mut [u8]) -> Option<String> {
    while clients[key].partial.len() <= MAX_LINE {
        let c = &mut clients[key];
        let n = match c.stream.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == WouldBlock => return flush(c),
            Err(e) if e.kind() == Interrupted => continue,
            Err(e) => return Some(format!("error: {e}")),
        };
        c.partial.extend_from_slice(&buf[..n]);
        if n == 0 && !c.partial.is_empty() {
            c.partial.push(b'\n'); // the FIN ends a last line that had no `\n`
        }
        if let Some(end) = c.partial.iter().rposition(|&b| b == b'\n') {
            let batch: Rc<[u8]> = c.partial.drain(..=end).collect(); // whole lines only
            for (other, o) in clients.iter_mut() {
                if other != key && o.closing.is_none() {
                    o.queued += batch.len();
                    o.queue.push_back(Rc::clone(&batch)); // a pointer, not a copy
                    o.closing = flush(o);
                }
            }
        }
        if n == 0 {
            return Some("left".into()); // what it is still owed is not sent
        }
    }
    Some("error: line too long".into())
}

/// Write what is queued until done or refused (WRITABLE brings us back). `Some(why)` closes it.
fn flush(c: &mut Client) -> Option<String> {
    while let Some(front) = c.queue.front() {
        match c.stream.write(&front[c.sent..]) {
            Ok(0) => return Some("error: write took nothing".into()), // retrying would spin
            Ok(n) => (c.sent, c.queued) = (c.sent + n, c.queued - n),
            Err(e) if e.kind() == WouldBlock => break,
            Err(e) if e.kind() == Interrupted => continue,
            Err(e) => return Some(format!("error: {e}")),
        }
        if c.sent == front.len() {
            c.queue.pop_front(); // the last recipient to write a batch frees it
            c.sent = 0;
        }
    }
    (c.queued > MAX_QUEUED).then(|| format!("dropped: {} B queued, over {MAX_QUEUED}", c.queued))
}

// Where resound does more: src/room.rs, a soft limit beside this hard one and a vectored write per
// member per turn; src/service/broadcast.rs, a pure line framer; src/connection.rs, a client that
// leaves gets what it is owed before our FIN (here it is cut off), a dropped one is reset to free
// its kernel buffers at once; src/server.rs, a read budget per turn (here a flood keeps the loop).
