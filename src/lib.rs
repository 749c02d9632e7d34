#![warn(missing_docs)]
//! resound: TCP echo, TCP broadcast, file transfer and UDP echo on one single-threaded mio event
//! loop, written to be read.
//!
//! Every connection is an explicit state machine named after TCP's own lifecycle
//! (ESTABLISHED, CLOSE-WAIT, FIN-WAIT-1, FIN-WAIT-2, CLOSING, CLOSED), and every place where a
//! goroutine-per-connection server would block becomes a readiness event, a buffer and a limit.
//!
//! # Layout
//!
//! Follow one byte from accept to close by reading the files in this order:
//!
//! * `main.rs`, [`cli`]: the `resound` command; parses arguments into a [`Config`].
//! * `server.rs`: the event loop, [`Server`]. One turn is seven numbered steps (poll, note the
//!   events, take in stop requests / clients / datagrams, visit ready connections, flush the
//!   room, fire timers, sweep), each one call into the type that owns that concern.
//! * `listener.rs`: binding sockets and accepting clients, including running out of descriptors.
//! * `tcp.rs`: one client's socket — the only code that reads or writes a client `TcpStream`,
//!   a thin layer that reports each syscall's result to the core and carries out its actions.
//! * [`connection`]: the sans-IO connection core — readiness, reads, writes, backpressure,
//!   the graceful drain, timeouts — events in, actions out, unit-tested on a fake clock.
//! * [`lifecycle`]: the phases and the rules between them.
//! * [`outqueue`]: the bytes owed to a peer that its socket would not take yet.
//! * [`service`]: what each service does with the bytes it gets, behind one interface:
//!   echo (TCP and UDP), the broadcast line framer, the file-transfer header parser and
//!   transfer state machine.
//! * `budget.rs`: `--max-memory`, one budget over what every client pins.
//! * `room.rs`: the broadcast room — membership, fan-out, output limits, the drain guarantee.
//! * `bridge.rs`: `--bridge`, the room spanning several processes through Redis pub/sub — the
//!   bus message format, the link's sans-IO state machine (`bridge/link.rs`) and its two
//!   non-blocking sockets.
//! * `storage.rs`: the receiving directory: nameless temporaries, no-replace links, never
//!   leaving `--dir`.
//! * [`digest`]: the two hash algorithms and the `done <BYTES> <ALG>:<HEX>` line, shared by the
//!   files service and `resound send`.
//! * `udp.rs`: the UDP socket: no connections, no queue, drops instead of blocking.
//! * `timer.rs`: the lazy deadline queue behind every per-connection timeout.
//! * `shutdown.rs`: signals, the [`Handle`], the graceful drain.
//! * [`stats`]: counters and the stats line.
//! * [`procfs`]: the descriptor limit and `/proc` (CPU time, memory), for the server, the
//!   load generator and the tests.
//! * [`units`]: the values flags take (addresses, durations, sizes, counts), parsed and bounded.
//! * [`send`]: `resound send`, the blocking client that sends a file and checks its receipt.
//! * [`bench`](mod@bench): `resound bench`, the load generator (a client: separate from
//!   everything above).
//!
//! The public modules are the ones the binary, the tests, the benchmarks and the fuzz targets
//! use; the rest is private to the server.
//!
//! # Running a server in-process
//!
//! ```
//! use resound::{Config, ServiceKind};
//! use std::io::{Read, Write};
//!
//! let config = Config { echo: Some("127.0.0.1:0".parse().unwrap()), ..Config::default() };
//! let server = resound::spawn(config).unwrap();
//! let mut client = std::net::TcpStream::connect(server.addr(ServiceKind::Echo)).unwrap();
//! client.write_all(b"hello").unwrap();
//! let mut reply = [0; 5];
//! client.read_exact(&mut reply).unwrap();
//! assert_eq!(&reply, b"hello");
//! drop(client); // our FIN: a graceful stop waits for it
//! let totals = server.stop().unwrap();
//! assert_eq!(totals.accepted, 1);
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

// The public surface, chosen on purpose: what the binary, the tests, the benchmarks and the
// fuzz targets use, each documented. Everything else is the server's own business.
pub mod bench;
pub mod cli;
pub mod config;
pub mod connection;
pub mod digest;
pub mod lifecycle;
pub mod outqueue;
pub mod procfs;
pub mod send;
pub mod service;
pub mod stats;
pub mod units;

pub(crate) mod bridge;
pub(crate) mod budget;
pub(crate) mod listener;
pub(crate) mod room;
pub(crate) mod server;
pub(crate) mod shutdown;
pub(crate) mod storage;
pub(crate) mod tcp;
pub(crate) mod timer;
pub(crate) mod udp;

pub use config::Config;
pub use listener::Bound;
pub use server::Server;
pub use service::ServiceKind;
pub use shutdown::Handle;
pub use stats::Stats;

/// A server running on its own thread (see [`spawn`]). Dropping it stops the server at once.
pub struct Running {
    bound: Vec<Bound>,
    handle: Handle,
    thread: Option<JoinHandle<io::Result<Stats>>>,
}

impl Running {
    /// The address `service` is bound to. Panics if that service is not running.
    pub fn addr(&self, service: ServiceKind) -> SocketAddr {
        self.bound
            .iter()
            .find(|b| b.service == service)
            .unwrap_or_else(|| panic!("{service} is not running"))
            .addr
    }

    /// A handle that stops the server from any thread.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stop gracefully (as on SIGTERM) and wait for the loop to finish; returns its totals.
    pub fn stop(self) -> io::Result<Stats> {
        self.handle.shutdown();
        self.join()
    }

    /// Wait for the loop to finish after a [`Handle::shutdown`].
    pub fn join(mut self) -> io::Result<Stats> {
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("server thread panicked")))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // Two requests: stop at once, so a failing test does not hang on a drain.
            self.handle.shutdown();
            self.handle.shutdown();
            let _ = thread.join();
        }
    }
}

/// Bind `config`'s sockets and run the loop on a new thread. Returns once the sockets are bound,
/// so their addresses (port 0 resolved) can be read at once.
pub fn spawn(config: Config) -> io::Result<Running> {
    let (tx, rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name("resound-loop".into())
        .spawn(move || {
            let server = match Server::bind(config) {
                Ok(server) => server,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(Stats::default());
                }
            };
            let _ = tx.send(Ok((server.bound(), server.handle())));
            server.run()
        })?;
    match rx.recv() {
        Ok(Ok((bound, handle))) => Ok(Running {
            bound,
            handle,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(io::Error::other("server thread exited before binding")),
    }
}
