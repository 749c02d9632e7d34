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
//! What changes: no goroutines, no channels; the loop owns the room. The complete lines of one
//! read become one `Rc<[u8]>` batch, queued by reference to each other client: N recipients cost
//! N pointers, not N copies. Each queue is bounded: a client that stops reading is dropped,
//! where in Go its full channel would block the broadcaster, and so everyone.
//!
//! ```text
//! cargo run --example 02_chat -- 127.0.0.1:7001    # then `nc 127.0.0.1 7001` in two terminals
//! ```

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
/// Registered once, both ways: edge-triggered WRITABLE wakes us only after a refused write.
const READ_WRITE: Interest = Interest::READABLE.add(Interest::WRITABLE);
/// The longest line (the start of a line is kept until its `\n` arrives).
const MAX_LINE: usize = 64 * 1024;
/// Bytes queued for one client before it is dropped. Without a bound, one client that never
/// reads would make the server keep every line sent from then on.
const MAX_QUEUED: usize = 1024 * 1024;

struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    /// The start of a line whose `\n` has not arrived yet.
    partial: Vec<u8>,
    /// Batches owed, shared with the other recipients; `sent` bytes of the front one are
    /// written; `queued` is what is left, for the bound.
    queue: VecDeque<Rc<[u8]>>,
    sent: usize,
    queued: usize,
    /// Sent its FIN: it gets no new lines, and is closed once it has what it is owed.
    leaving: bool,
    /// Why it is closed; it is freed after this batch of events (see `main`).
    closing: Option<String>,
}

#[derive(Default)]
struct Room {
    clients: Slab<Client>,
    /// Keys of the clients closed during this batch of events.
    closing: Vec<usize>,
}

impl Room {
    fn close(&mut self, key: usize, why: String) {
        if self.clients[key].closing.is_none() {
            self.clients[key].closing = Some(why);
            self.closing.push(key);
        }
    }

    /// Queue `batch` to every client but its sender, and write to each right away.
    fn fan_out(&mut self, from: usize, batch: &Rc<[u8]>) {
        let mut failed = Vec::new();
        for (key, c) in self.clients.iter_mut() {
            if key == from || c.leaving || c.closing.is_some() {
                continue;
            }
            c.queue.push_back(Rc::clone(batch)); // a pointer, not a copy
            c.queued += batch.len();
            if let Err(e) = flush(c) {
                failed.push((key, format!("error: {e}")));
            } else if c.queued > MAX_QUEUED {
                // A reset, not a FIN: a FIN would wait behind megabytes it does not read.
                let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
                failed.push((
                    key,
                    format!("dropped: {} B queued, over {MAX_QUEUED}", c.queued),
                ));
            }
        }
        for (key, why) in failed {
            self.close(key, why);
        }
    }
}

fn main() -> io::Result<()> {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
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
    let mut room = Room::default();
    let mut buf = vec![0; 64 * 1024];

    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => result?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut room.clients);
                continue;
            }
            let key = event.token().0;
            if room.clients.get(key).is_none_or(|c| c.closing.is_some()) {
                continue; // gone, or on its way out
            }
            if let Err(e) = take_lines(&mut room, key, &mut buf) {
                room.close(key, format!("error: {e}"));
            }
            let c = &mut room.clients[key];
            match flush(c) {
                Err(e) => room.close(key, format!("error: {e}")),
                Ok(()) if c.leaving && c.queue.is_empty() => room.close(key, "left".into()),
                Ok(()) => {}
            }
        }
        // Free the closed clients only now. One dropped while serving another may still have
        // an event further down this batch: had its slab slot been freed at once, a client
        // accepted in between could take the slot, and receive that stale event.
        for key in room.closing.drain(..) {
            let c = room.clients.remove(key); // drop = close()
            println!("conn {key} {} {}", c.peer, c.closing.unwrap_or_default());
        }
    }
}

fn accept_all(listener: &TcpListener, poll: &Poll, clients: &mut Slab<Client>) {
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let key = clients.vacant_key();
                if poll
                    .registry()
                    .register(&mut stream, Token(key), READ_WRITE)
                    .is_ok()
                {
                    println!("conn {key} {peer} joined");
                    let (partial, queue, sent, queued) = (vec![], VecDeque::new(), 0, 0);
                    let (leaving, closing) = (false, None);
                    let client = Client {
                        stream,
                        peer,
                        partial,
                        queue,
                        sent,
                        queued,
                        leaving,
                        closing,
                    };
                    clients.insert(client);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return eprintln!("accept: {e}"), // EMFILE: see 01_echo
        }
    }
}

/// Read all `key` sent (until `WouldBlock`); the complete lines of each read go to the others
/// as one batch. A last line without `\n` at the FIN is delivered with one added.
fn take_lines(room: &mut Room, key: usize, buf: &mut [u8]) -> io::Result<()> {
    while !room.clients[key].leaving {
        let c = &mut room.clients[key];
        match c.stream.read(buf) {
            Ok(0) => {
                c.leaving = true;
                if !c.partial.is_empty() {
                    c.partial.push(b'\n');
                }
            }
            Ok(n) => c.partial.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if let Some(end) = c.partial.iter().rposition(|&b| b == b'\n') {
            let batch: Rc<[u8]> = Rc::from(&c.partial[..=end]); // whole lines only
            c.partial.drain(..=end);
            room.fan_out(key, &batch);
        }
        if room.clients[key].partial.len() > MAX_LINE {
            return Err(io::Error::other("line too long"));
        }
    }
    Ok(())
}

/// Write what is queued until done or the socket is full (its WRITABLE edge brings us back).
fn flush(c: &mut Client) -> io::Result<()> {
    while let Some(front) = c.queue.front() {
        match c.stream.write(&front[c.sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()), // retrying would spin
            Ok(n) => {
                (c.sent, c.queued) = (c.sent + n, c.queued - n);
                if c.sent == front.len() {
                    c.queue.pop_front(); // the last recipient to write a batch frees it
                    c.sent = 0;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// Where resound does more:
// * src/room.rs: the same fan-out with a soft limit (over 4 MiB for 10 s) beside the hard one,
//   and one vectored write per member per loop turn carrying every sender's lines;
// * src/service/broadcast.rs: the line framer, pure and property-tested, which answers an
//   overlong line with an error line; src/outqueue.rs: a queue of shared and copied bytes;
// * src/server.rs: a read budget per turn, so one sender flooding the room cannot keep the
//   loop to itself (here `take_lines` reads a client until it has nothing more).
