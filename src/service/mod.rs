//! The services: what the server does with the bytes a client sends.
//!
//! Every service has the same shape, the [`Service`] trait: it is handed input — bytes, the
//! peer's EOF, a timer — and `now`, and answers with [`Action`]s: reply bytes, a shared chunk
//! for the broadcast room, close in order, reset. It never touches a socket or a clock, so it is
//! tested by feeding it bytes and collecting what it asks for (a `Vec<Action>` is an
//! [`Actions`] sink). The loop (`server.rs`) carries the actions out in one place.
//!
//! | service | session state | input | actions |
//! |---|---|---|---|
//! | [`echo`] (TCP and UDP) | none | bytes | `Reply` the same bytes |
//! | [`broadcast`] | the unterminated line | bytes, EOF | `Share` whole lines; `Reply` + `Close` on an overlong line |
//! | [`files`] | header, then the upload | bytes, EOF, timer | `Reply` `ok` / `done` / `error`, `Close` |

use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use crate::lifecycle::{AbortReason, CloseReason};
use crate::stats::Stats;
use crate::storage::Store;

pub mod broadcast;
pub mod echo;
pub mod files;

/// What a service asks the loop to do for the connection (or datagram) it was handed.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Send these bytes to the peer (in order, after anything owed already).
    Reply(&'a [u8]),
    /// Whole lines for the broadcast room: every other member gets `chunk`, by reference.
    Share {
        /// One or more complete lines, `\n` included.
        chunk: Rc<[u8]>,
        /// How many lines `chunk` holds (for the counters).
        lines: usize,
    },
    /// Close in order: flush what is owed, then our FIN.
    Close(CloseReason),
    /// End the connection now.
    Reset(AbortReason),
}

/// Where a service puts its actions. The loop's implementation carries each out at once;
/// tests collect them.
pub trait Actions {
    /// Take one action.
    fn act(&mut self, action: Action<'_>);
}

/// An action with its bytes owned, as tests collect them.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// [`Action::Reply`].
    Reply(Vec<u8>),
    /// [`Action::Share`].
    Share(Vec<u8>, usize),
    /// [`Action::Close`].
    Close(CloseReason),
    /// [`Action::Reset`].
    Reset(AbortReason),
}

impl Actions for Vec<Recorded> {
    fn act(&mut self, action: Action<'_>) {
        self.push(match action {
            Action::Reply(bytes) => Recorded::Reply(bytes.to_vec()),
            Action::Share { chunk, lines } => Recorded::Share(chunk.to_vec(), lines),
            Action::Close(reason) => Recorded::Close(reason),
            Action::Reset(reason) => Recorded::Reset(reason),
        });
    }
}

/// What the services share across connections: the receiving directory, the limits they
/// enforce, the counters they keep.
pub struct Shared {
    /// The files service's directory (None when it is not running).
    pub store: Option<Store>,
    /// Longest broadcast line, without its `\n` (`--max-line`).
    pub max_line: usize,
    /// What each file transfer is held to.
    pub file_limits: files::Limits,
    /// The server's counters.
    pub stats: Stats,
}

/// Everything a service sees besides its input: who the peer is (for log lines), the time,
/// the shared state, and where to put its actions.
pub struct Cx<'a> {
    /// The connection's log number.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The time of this loop turn.
    pub now: Instant,
    /// State shared by every connection.
    pub shared: &'a mut Shared,
    /// Where actions go.
    pub out: &'a mut dyn Actions,
}

impl Cx<'_> {
    /// Shorthand for `self.out.act(action)`.
    pub fn act(&mut self, action: Action<'_>) {
        self.out.act(action);
    }
}

/// What a graceful stop means for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStop {
    /// Serve what the kernel held when the stop came, then close.
    ServePending,
    /// Keep taking input until the client is done (a file in mid-transfer: cutting it would
    /// only make the sender start over), within the drain timeout.
    Finish,
}

/// The one interface of every service. All methods but `on_input` have defaults, so a
/// service implements only the inputs it cares about.
pub trait Service {
    /// Bytes from the peer, in order.
    fn on_input(&mut self, data: &[u8], cx: &mut Cx<'_>);

    /// The peer's FIN: nothing more will arrive. (The connection is in CLOSE-WAIT: replies
    /// still go out, then the server closes.)
    fn on_eof(&mut self, _cx: &mut Cx<'_>) {}

    /// A deadline from [`Service::deadline`] may have passed.
    fn on_timer(&mut self, _cx: &mut Cx<'_>) {}

    /// When [`Service::on_timer`] should next run.
    fn deadline(&self, _shared: &Shared) -> Option<Instant> {
        None
    }

    /// A graceful stop began.
    fn on_stop(&self) -> OnStop {
        OnStop::ServePending
    }

    /// The loop is about to close this connection at the end of a graceful stop: a last word.
    fn on_drained(&mut self, _cx: &mut Cx<'_>) {}

    /// Heap bytes of input this session holds (a partial line, a header): part of what
    /// `--max-memory` bounds.
    fn buffered(&self) -> usize {
        0
    }
}

/// Which service a socket serves. The name is the one printed in `listening <name> <proto>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// TCP echo.
    Echo,
    /// TCP line broadcast (chat).
    Broadcast,
    /// File transfer, receiving side.
    Files,
    /// UDP echo.
    Udp,
}

impl ServiceKind {
    /// The transport: "tcp" or "udp".
    pub fn proto(self) -> &'static str {
        match self {
            ServiceKind::Echo | ServiceKind::Broadcast | ServiceKind::Files => "tcp",
            ServiceKind::Udp => "udp",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceKind::Echo => "echo",
            ServiceKind::Broadcast => "broadcast",
            ServiceKind::Files => "files",
            ServiceKind::Udp => "udp",
        })
    }
}

/// The per-connection state of the service a TCP connection belongs to: the one place that
/// maps a [`ServiceKind`] to its type, so the loop never has to.
pub enum Session {
    /// Echo keeps no state.
    Echo(echo::Echo),
    /// A member of the broadcast room.
    Broadcast(broadcast::Member),
    /// Boxed: a transfer's state (hasher, file, header) is larger than everything else a
    /// connection holds, and only file connections should pay for it.
    Files(Box<files::Transfer>),
}

impl Session {
    /// The state a new connection to `kind` starts with. UDP has no connections.
    pub fn new(kind: ServiceKind, now: Instant) -> Option<Session> {
        match kind {
            ServiceKind::Echo => Some(Session::Echo(echo::Echo)),
            ServiceKind::Broadcast => Some(Session::Broadcast(broadcast::Member::default())),
            ServiceKind::Files => Some(Session::Files(Box::new(files::Transfer::new(now)))),
            ServiceKind::Udp => None,
        }
    }

    /// Which service this is.
    pub fn kind(&self) -> ServiceKind {
        match self {
            Session::Echo(_) => ServiceKind::Echo,
            Session::Broadcast(_) => ServiceKind::Broadcast,
            Session::Files(_) => ServiceKind::Files,
        }
    }

    /// Are this session's replies flow-controlled (reading pauses while they pile up)? Only
    /// echo's: its output is its own input, so pausing the input bounds it. A broadcast
    /// member's queue is filled by *others*, and is bounded by eviction instead.
    pub fn flow_controlled(&self) -> bool {
        matches!(self, Session::Echo(_))
    }

    fn inner(&mut self) -> &mut dyn Service {
        match self {
            Session::Echo(s) => s,
            Session::Broadcast(s) => s,
            Session::Files(s) => s.as_mut(),
        }
    }

    fn inner_ref(&self) -> &dyn Service {
        match self {
            Session::Echo(s) => s,
            Session::Broadcast(s) => s,
            Session::Files(s) => s.as_ref(),
        }
    }
}

impl Service for Session {
    fn on_input(&mut self, data: &[u8], cx: &mut Cx<'_>) {
        self.inner().on_input(data, cx);
    }

    fn on_eof(&mut self, cx: &mut Cx<'_>) {
        self.inner().on_eof(cx);
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) {
        self.inner().on_timer(cx);
    }

    fn deadline(&self, shared: &Shared) -> Option<Instant> {
        self.inner_ref().deadline(shared)
    }

    fn on_stop(&self) -> OnStop {
        self.inner_ref().on_stop()
    }

    fn on_drained(&mut self, cx: &mut Cx<'_>) {
        self.inner().on_drained(cx);
    }

    fn buffered(&self) -> usize {
        self.inner_ref().buffered()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A harness for services: feed input, collect actions, with a fake clock.

    use super::*;

    /// Shared state for tests: no store, small limits.
    pub fn shared(store: Option<Store>) -> Shared {
        Shared {
            store,
            max_line: 16,
            file_limits: files::Limits {
                max_file_size: 1000,
                header_timeout: std::time::Duration::from_secs(10),
                transfer_timeout: std::time::Duration::from_secs(60),
                hash: crate::digest::Algorithm::Blake3,
            },
            stats: Stats::default(),
        }
    }

    /// Run `f` with a context whose actions are recorded; return them.
    pub fn run(shared: &mut Shared, now: Instant, f: impl FnOnce(&mut Cx<'_>)) -> Vec<Recorded> {
        let mut out = Vec::new();
        let mut cx = Cx {
            id: 1,
            peer: "127.0.0.1:9".parse().unwrap(),
            now,
            shared,
            out: &mut out,
        };
        f(&mut cx);
        out
    }
}
