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
//! * [`send`]: `resound send`, the blocking client that sends a file and checks its receipt.
//! * [`server`]: the event loop. Tokens, the accept loop, the run queue, broadcast fan-out and
//!   output limits, timers, graceful shutdown and the deferred-close sweep. Decides *when* each
//!   socket is served.
//! * [`listener`]: binding sockets and accepting clients, including running out of descriptors.
//! * [`connection`]: one TCP connection — the only code that reads or writes a `TcpStream`.
//!   Edge-triggered reads, write-through with queueing, backpressure, phase changes.
//! * [`lifecycle`]: the phases and the rules between them, free of I/O and unit-tested.
//! * [`outqueue`]: the bytes owed to a peer that its socket would not take yet.
//! * [`service`]: what each service does with the bytes it gets: echo, the broadcast line
//!   framer, the file-transfer header parser and transfer state machine.
//! * [`storage`]: the receiving directory: temporaries, no-replace renames, cleanup.
//! * [`udp`]: the UDP echo socket: no connections, no queue, drops instead of blocking.
//! * [`timer`]: the lazy deadline queue behind idle and closing timeouts.
//! * [`shutdown`]: the [`Handle`] that stops a server from another thread.
//! * [`stats`]: counters and the stats line.
//! * [`procfs`]: the descriptor limit and `/proc` (CPU time, memory), for the server, the
//!   load generator and the tests.
//! * [`units`]: the values flags take (addresses, durations, sizes, counts), parsed and bounded.
//! * [`bench`](mod@bench): `resound bench`, the load generator (a client: separate from everything above).
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

pub mod bench;
pub mod cli;
pub mod config;
pub mod connection;
pub mod lifecycle;
pub mod listener;
pub mod outqueue;
pub mod procfs;
pub mod send;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod stats;
pub mod storage;
pub mod timer;
pub mod udp;
pub mod units;

pub use config::Config;
pub use server::{Bound, Server};
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
    /// Every socket bound, with its actual address.
    pub fn bound(&self) -> &[Bound] {
        &self.bound
    }

    /// The address `service` is bound to. Panics if that service is not running.
    pub fn addr(&self, service: ServiceKind) -> SocketAddr {
        self.bound
            .iter()
            .find(|b| b.service == service)
            .unwrap_or_else(|| panic!("{service} is not running"))
            .addr
    }

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
