//! Step 2 — a chat room: every line a client sends goes to every other client. It replaces:
//!
//! ```go
//! func handle(c net.Conn) {
//!     out := make(chan string, 16)                  // this client's queue...
//!     go func() { for l := range out { c.Write([]byte(l)) } }() // ...and its writer goroutine
//!     entering <- out
//!     for sc := bufio.NewScanner(c); sc.Scan(); {   // Read, split into lines
//!         messages <- msg{out, sc.Text() + "\n"}
//!     }
//!     leaving <- out; c.Close()
//! }
//! // broadcaster goroutine: for m := range messages { for o := range clients { if o != m.from { o <- m.text } } }
//! ```
//!
//! What changes: no goroutines, no channels. The loop owns every client. The complete lines of
//! one read become one `Rc<[u8]>` batch, queued by reference to each other client: N recipients
//! cost N pointers, not N copies. Each queue is bounded: a client that stops reading is dropped
//! (reset), where in Go its full channel would block the broadcaster, and so everyone.
//!
//! ```text
//! cargo run --example 02_chat -- 7001      # then `nc 127.0.0.1 7001` in two terminals
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
/// Registered once, both ways: edge-triggered WRITABLE only fires after a write was refused.
const READ_WRITE: Interest = Interest::READABLE.add(Interest::WRITABLE);
/// The longest line (without its `\n`): the start of a line is kept until its end arrives.
const MAX_LINE: usize = 64 * 1024;
/// Bytes queued for one client before it is dropped. Without a bound, one client that never
/// reads would make the server keep every line ever sent.
const MAX_QUEUED: usize = 1024 * 1024;

struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    /// The start of a line whose `\n` has not arrived yet.
    partial: Vec<u8>,
    /// Batches owed to this client, shared with the other recipients; `sent` bytes of the
    /// front one are written already; `queued` counts what is left, for the bound.
    queue: VecDeque<Rc<[u8]>>,
    sent: usize,
    queued: usize,
    /// Sent its FIN: it gets no new lines, and is closed once it has what it was owed.
    leaving: bool,
    /// Why it is being closed: it is freed after this batch of events (see `main`).
    closing: Option<String>,
}

fn main() -> io::Result<()> {
    let addr = listen_addr(std::env::args().nth(1)).unwrap_or_else(|e| {
        eprintln!("02_chat: {e}");
        std::process::exit(2)
    });
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
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => result?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut clients);
                continue;
            }
            let key = event.token().0;
            match clients.get(key) {
                Some(c) if c.closing.is_none() => {}
                _ => continue, // gone, or on its way out
            }
            if let Err(e) = take_lines(&mut clients, key, &mut buf) {
                close(&mut clients[key], format!("error: {e}"));
            }
            let c = &mut clients[key];
            match flush(c) {
                Err(e) => close(c, format!("error: {e}")),
                Ok(()) if c.leaving && c.queue.is_empty() => close(c, "left".into()),
                Ok(()) => {}
            }
        }
        // Free the closed clients only now. A client dropped while serving another one may
        // still have an event further down this batch; had we freed its slab slot at once, a
        // client accepted in between could get that slot, and the stale event with it.
        let closed: Vec<usize> = clients
            .iter()
            .filter(|(_, c)| c.closing.is_some())
            .map(|(k, _)| k)
            .collect();
        for key in closed {
            let c = clients.remove(key); // drop = close()
            println!("conn {key} {} {}", c.peer, c.closing.unwrap());
        }
    }
}

fn accept_all(listener: &TcpListener, poll: &Poll, clients: &mut Slab<Client>) {
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let key = clients.vacant_key();
                if let Err(e) = poll
                    .registry()
                    .register(&mut stream, Token(key), READ_WRITE)
                {
                    eprintln!("register {peer}: {e}");
                    continue;
                }
                println!("conn {key} {peer} joined");
                let (partial, queue) = (Vec::new(), VecDeque::new());
                let (sent, queued, leaving, closing) = (0, 0, false, None);
                clients.insert(Client {
                    stream,
                    peer,
                    partial,
                    queue,
                    sent,
                    queued,
                    leaving,
                    closing,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return eprintln!("accept: {e}"), // EMFILE: see 01_echo
        }
    }
}

/// Read everything `key` sent (until `WouldBlock`); the complete lines of each read go to the
/// others as one batch. A last line without `\n` at the FIN is delivered with one added.
fn take_lines(clients: &mut Slab<Client>, key: usize, buf: &mut [u8]) -> io::Result<()> {
    while !clients[key].leaving {
        let c = &mut clients[key];
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
        // Everything up to the last `\n` is whole lines: one shared batch.
        if let Some(end) = c.partial.iter().rposition(|&b| b == b'\n') {
            let batch: Rc<[u8]> = Rc::from(&c.partial[..=end]);
            c.partial.drain(..=end);
            fan_out(clients, key, &batch);
        }
        if clients[key].partial.len() > MAX_LINE {
            return Err(io::Error::other("line too long"));
        }
    }
    Ok(())
}

/// Queue `batch` to every client but its sender, and write it to each right away.
fn fan_out(clients: &mut Slab<Client>, from: usize, batch: &Rc<[u8]>) {
    for (key, c) in clients.iter_mut() {
        if key == from || c.leaving || c.closing.is_some() {
            continue;
        }
        c.queue.push_back(Rc::clone(batch)); // a pointer, not a copy
        c.queued += batch.len();
        if let Err(e) = flush(c) {
            close(c, format!("error: {e}"));
        } else if c.queued > MAX_QUEUED {
            // A reset, not a FIN: a FIN would wait behind megabytes this client is not reading.
            let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
            close(
                c,
                format!(
                    "dropped: {} bytes queued, over {MAX_QUEUED} (reset)",
                    c.queued
                ),
            );
        }
    }
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

fn close(c: &mut Client, why: String) {
    c.closing.get_or_insert(why);
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
// * src/room.rs: the same fan-out, plus a soft limit (over 4 MiB for 10 s) beside the hard one,
//   and one vectored write per member per loop turn carrying every sender's lines;
// * src/service/broadcast.rs: the line framer, pure and property-tested, that refuses an
//   overlong line with a message; src/outqueue.rs: the queue of shared and copied bytes;
// * src/server.rs: a per-turn read budget, so one sender flooding the room cannot keep the loop
//   (here `take_lines` reads one client until it has nothing more).
