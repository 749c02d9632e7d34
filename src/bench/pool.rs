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
//!
//! Every driver reads, writes and gives up on a connection through the pool: [`Pool::read_all`]
//! is the one read loop (until `WouldBlock`, with the hang-up rule), [`Pool::write_some`] the one
//! write loop, and [`Pool::fail`] counts a failed connection once, with its cause, and closes it.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::dial::Dialer;
use super::pacing::Pacer;
use super::tally::CauseKind;
use super::worker::Cx;
use crate::tcp::connect_finished;

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

/// How a connection ended from our side's point of view.
#[derive(Debug)]
pub enum Hangup {
    /// The server closed it in order (`read` returned 0).
    Eof,
    /// Reset, or another error (with its errno).
    Failed(io::Error),
}

/// Where [`Pool::read_all`] stopped.
#[derive(Debug)]
pub enum ReadEnd<B> {
    /// Everything the socket had was handled; more will raise a new edge.
    Drained,
    /// The peer closed the connection, or it failed.
    Hangup(Hangup),
    /// The handler stopped reading (it found something wrong) and said why.
    Stopped(B),
}

/// Why a connection is given up (see [`Pool::fail`]).
#[derive(Debug)]
pub enum Fault {
    /// The server closed or reset it, or a read or write failed.
    Closed(Hangup),
    /// It delivered bytes other than those expected.
    Corrupt,
}

pub struct Pool<S> {
    pub links: Vec<Link<S>>,
    dialer: Dialer,
    /// Connects in progress (the setup keeps at most [`MAX_CONNECTING`]).
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
        let opened = self.dialer.dial(link.id).and_then(|mut stream| {
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
            Err(e) => {
                cx.tally.errors.connect += 1;
                let target = self.dialer.target(link.id);
                cx.tally.causes.count(CauseKind::Connect, target, Some(&e));
                link.state = LinkState::Dead;
                false
            }
        }
    }

    /// The server address of link `i`.
    pub fn target(&self, i: usize) -> SocketAddr {
        self.dialer.target(self.links[i].id)
    }

    /// Setup: open links in order, at most [`MAX_CONNECTING`] in progress at once, and no faster
    /// than `pacer` (`--connect-rate`) if there is one.
    pub fn open_initial(&mut self, cx: &mut Cx, mut pacer: Option<&mut Pacer>) {
        while self.can_open_more() {
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
                Err(e) => {
                    cx.tally.errors.connect += 1;
                    let target = self.target(i);
                    cx.tally.causes.count(CauseKind::Connect, target, Some(&e));
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
    /// [`CONNECT_TIMEOUT`]; `then` is the state they are left in. How many there were.
    pub fn expire_connects(&mut self, cx: &mut Cx, then: LinkState) -> usize {
        if self.connecting == 0 {
            return 0;
        }
        let mut expired = 0;
        for i in 0..self.links.len() {
            if let LinkState::Connecting(since) = self.links[i].state
                && cx.now.saturating_duration_since(since) > CONNECT_TIMEOUT
            {
                cx.tally.errors.timeouts += 1;
                let timed_out = io::Error::from_raw_os_error(libc::ETIMEDOUT);
                let target = self.target(i);
                cx.tally
                    .causes
                    .count(CauseKind::Connect, target, Some(&timed_out));
                self.close(i, then);
                expired += 1;
            }
        }
        expired
    }

    /// Read link `i` until the socket would block, handing each chunk read to `handle` with the
    /// link's state; `handle` may stop early by returning `Break(why)`.
    ///
    /// The hang-up rule lives here: a short read means the receive queue was empty a moment ago
    /// and anything arriving later raises a new edge — unless the last event said the peer
    /// closed or the socket failed (`hup`): a FIN behind the data raises no new edge, so then
    /// the loop reads on until `read` itself reports the end.
    ///
    /// The worker's read buffer is lent out of `cx` for the duration, so `handle` gets the
    /// context (tally, shared tables) and the bytes at once.
    pub fn read_all<B>(
        &mut self,
        cx: &mut Cx,
        i: usize,
        mut handle: impl FnMut(&mut Cx, &mut S, &[u8]) -> ControlFlow<B>,
    ) -> ReadEnd<B> {
        let buf = std::mem::take(&mut cx.buf);
        let link = &mut self.links[i];
        let end = loop {
            let Some(stream) = link.stream.as_mut() else {
                break ReadEnd::Hangup(Hangup::Failed(io::ErrorKind::NotConnected.into()));
            };
            match stream.read(buf) {
                Ok(0) => break ReadEnd::Hangup(Hangup::Eof),
                Ok(n) => {
                    if let ControlFlow::Break(why) = handle(cx, &mut link.st, &buf[..n]) {
                        break ReadEnd::Stopped(why);
                    }
                    if n < buf.len() && !link.hup {
                        break ReadEnd::Drained;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    link.hup = false;
                    break ReadEnd::Drained;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break ReadEnd::Hangup(Hangup::Failed(e)),
            }
        };
        cx.buf = buf;
        end
    }

    /// Write as much of `bytes` to link `i` as the socket takes now: `Ok(n)` written (less than
    /// `bytes.len()`, maybe 0, when the socket is full: its writable edge will come), `Err` if the
    /// connection failed.
    pub fn write_some(&mut self, i: usize, bytes: &[u8]) -> io::Result<usize> {
        let Some(stream) = self.links[i].stream.as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut done = 0;
        while done < bytes.len() {
            match stream.write(&bytes[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Give up link `i`: count the fault once (a closed connection with its cause), close the
    /// socket and leave the link `then` (`Dead`, or `Unopened` to reuse the slot). What the
    /// connection still had in flight is the driver's to account for, before calling this.
    pub fn fail(&mut self, cx: &mut Cx, i: usize, fault: Fault, then: LinkState) {
        match fault {
            Fault::Corrupt => cx.tally.errors.corrupt += 1,
            Fault::Closed(how) => {
                cx.tally.errors.closed += 1;
                let error = match &how {
                    Hangup::Eof => None,
                    Hangup::Failed(e) => Some(e),
                };
                let target = self.target(i);
                cx.tally.causes.count(CauseKind::Closed, target, error);
            }
        }
        self.close(i, then);
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
