//! A worker's TCP connections: opening them (at a bounded concurrency or a paced rate),
//! confirming each connect, routing readiness events, closing and reopening them.
//!
//! Each connection is a [`Link`] in a fixed vector; its token is its index plus a generation
//! number in the upper bits, bumped at every (re)open, so an event still queued for a socket
//! that has since been closed and replaced is recognised and ignored.
//!
//! Sockets are registered once for both READABLE and WRITABLE, edge-triggered: writable events
//! come only after a write has filled the socket, so they cost nothing while writes succeed, and
//! no `epoll_ctl` is needed to switch interest.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::dial::{Dialer, connect_finished};
use super::pacing::Pacer;
use super::worker::Cx;

/// Connects in progress at once per worker during setup: enough to open thousands of
/// connections a second, few enough not to overflow the server's accept backlog.
pub const MAX_CONNECTING: usize = 128;

/// A connect (or a probe) that has not finished after this long counts as a timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No socket (not yet opened, or closed and ready to be reopened).
    Unopened,
    /// `connect` issued at this time; waiting for the handshake.
    Connecting(Instant),
    Open,
    /// Failed or closed for good.
    Dead,
}

/// One connection and its mode's state `S`.
pub struct Link<S> {
    /// The connection's number in the whole run (not only this worker).
    pub id: usize,
    pub state: LinkState,
    pub stream: Option<TcpStream>,
    /// The last event said the peer closed or the socket failed: a short read does not prove
    /// the receive queue empty (the FIN behind the data raises no new edge), so read until
    /// `read` says so.
    pub hup: bool,
    generation: u32,
    pub st: S,
}

/// What an event meant for a link.
pub enum LinkEvent {
    /// The connect finished; it took this long.
    Connected(Duration),
    /// The connect failed (already counted as a connect error, the link is closed).
    ConnectFailed,
    /// The open connection may be readable and/or writable.
    Ready { readable: bool, writable: bool },
}

/// What one `read` produced.
pub enum ReadResult {
    Data(usize),
    Eof,
    WouldBlock,
    Failed,
}

pub struct Pool<S> {
    pub links: Vec<Link<S>>,
    dialer: Dialer,
    connecting: usize,
    /// Links below this index have been opened at least once (setup opens them in order).
    next_unopened: usize,
}

impl<S> Pool<S> {
    pub fn new(dialer: Dialer, links: impl IntoIterator<Item = (usize, S)>) -> Pool<S> {
        Pool {
            links: links
                .into_iter()
                .map(|(id, st)| Link {
                    id,
                    state: LinkState::Unopened,
                    stream: None,
                    hup: false,
                    generation: 0,
                    st,
                })
                .collect(),
            dialer,
            connecting: 0,
            next_unopened: 0,
        }
    }

    fn token(i: usize, generation: u32) -> Token {
        Token(((generation as usize) << 32) | i)
    }

    /// Start connecting link `i`. A failure to even start counts as a connect error.
    pub fn open(&mut self, cx: &mut Cx, i: usize) -> bool {
        let link = &mut self.links[i];
        link.generation = link.generation.wrapping_add(1);
        link.hup = false;
        let token = Self::token(i, link.generation);
        let opened = self.dialer.dial().and_then(|mut stream| {
            cx.registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => {
                link.stream = Some(stream);
                link.state = LinkState::Connecting(cx.now);
                self.connecting += 1;
                true
            }
            Err(_) => {
                cx.tally.errors.connect += 1;
                link.state = LinkState::Dead;
                false
            }
        }
    }

    /// Setup: open links in order, at most [`MAX_CONNECTING`] in progress at once, and no faster
    /// than `pacer` (`--connect-rate`) if there is one.
    pub fn open_initial(&mut self, cx: &mut Cx, mut pacer: Option<&mut Pacer>) {
        while self.next_unopened < self.links.len() && self.connecting < MAX_CONNECTING {
            if let Some(p) = pacer.as_deref_mut()
                && p.next_due(cx.now).is_none()
            {
                return;
            }
            let i = self.next_unopened;
            self.next_unopened += 1;
            self.open(cx, i);
        }
    }

    /// More links wait to be opened during setup, and there is room to open one.
    pub fn can_open_more(&self) -> bool {
        self.next_unopened < self.links.len() && self.connecting < MAX_CONNECTING
    }

    /// Every link has been opened and none is still connecting.
    pub fn settled(&self) -> bool {
        self.next_unopened == self.links.len() && self.connecting == 0
    }

    pub fn connecting(&self) -> usize {
        self.connecting
    }

    /// Which link an event is for, and what it means. `None`: a stale event, or a spurious
    /// wake-up of a connect still in progress.
    pub fn event(&mut self, cx: &mut Cx, event: &Event) -> Option<(usize, LinkEvent)> {
        let i = event.token().0 & 0xffff_ffff;
        let generation = (event.token().0 >> 32) as u32;
        let link = self.links.get_mut(i)?;
        if link.generation != generation {
            return None;
        }
        let stream = link.stream.as_ref()?;
        if event.is_read_closed() || event.is_error() {
            link.hup = true;
        }
        match link.state {
            LinkState::Connecting(since) => match connect_finished(stream) {
                Ok(false) => None,
                Ok(true) => {
                    link.state = LinkState::Open;
                    self.connecting -= 1;
                    Some((
                        i,
                        LinkEvent::Connected(cx.now.saturating_duration_since(since)),
                    ))
                }
                Err(_) => {
                    cx.tally.errors.connect += 1;
                    self.close(i, LinkState::Dead);
                    Some((i, LinkEvent::ConnectFailed))
                }
            },
            LinkState::Open => Some((
                i,
                LinkEvent::Ready {
                    readable: event.is_readable() || event.is_read_closed() || event.is_error(),
                    writable: event.is_writable() || event.is_error(),
                },
            )),
            _ => None,
        }
    }

    /// Close link `i` (dropping the socket closes and deregisters it) and leave it in `state`
    /// (`Unopened` to reopen it later, `Dead` for good).
    pub fn close(&mut self, i: usize, state: LinkState) {
        let link = &mut self.links[i];
        if matches!(link.state, LinkState::Connecting(_)) {
            self.connecting -= 1;
        }
        link.stream = None;
        link.state = state;
    }

    /// Count and close the connects that have been in progress for longer than
    /// [`CONNECT_TIMEOUT`]; `then` is the state they are left in.
    pub fn expire_connects(&mut self, cx: &mut Cx, then: LinkState) {
        if self.connecting == 0 {
            return;
        }
        for i in 0..self.links.len() {
            if let LinkState::Connecting(since) = self.links[i].state
                && cx.now.saturating_duration_since(since) > CONNECT_TIMEOUT
            {
                cx.tally.errors.timeouts += 1;
                self.close(i, then);
            }
        }
    }

    /// One `read` from link `i` into `buf`.
    pub fn read(&mut self, i: usize, buf: &mut [u8]) -> ReadResult {
        let Some(stream) = self.links[i].stream.as_mut() else {
            return ReadResult::Failed;
        };
        loop {
            return match stream.read(buf) {
                Ok(0) => ReadResult::Eof,
                Ok(n) => ReadResult::Data(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.links[i].hup = false;
                    ReadResult::WouldBlock
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => ReadResult::Failed,
            };
        }
    }

    /// One `write` of `bytes` to link `i`: `Ok(n)` written (0 if the socket is full), `Err` if
    /// the connection failed.
    pub fn write(&mut self, i: usize, bytes: &[u8]) -> io::Result<usize> {
        let Some(stream) = self.links[i].stream.as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        loop {
            return match stream.write(bytes) {
                Ok(0) if !bytes.is_empty() => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Links currently open.
    pub fn open_count(&self) -> u64 {
        self.links
            .iter()
            .filter(|l| l.state == LinkState::Open)
            .count() as u64
    }
}

/// When a setup paced by `--connect-rate` next needs a turn: only while links are waiting and
/// there is room to open one (a schedule that is behind would otherwise make the loop spin).
pub fn connect_wake<S>(pool: &Pool<S>, pacer: &Option<Pacer>) -> Option<Instant> {
    pacer
        .as_ref()
        .filter(|_| pool.can_open_more())
        .map(|p| p.next_at())
}
