//! The connection lifecycle: which phase of TCP's closing dance a connection is in, as the
//! application sees it, and the rules that move it from one phase to the next.
//!
//! This module does no I/O. The connection layer (`connection.rs`) feeds it [`Event`]s — "the
//! peer's FIN arrived", "the output queue is empty", "the server wants to close", "the socket
//! failed" — and performs the entry action of whatever phase comes back (`shutdown(Write)` on
//! entering FIN-WAIT-2, releasing the socket on entering CLOSED).
//!
//! ```text
//!                         peer FIN                         output flushed
//!   ESTABLISHED ─────────────────────────> CLOSE-WAIT ─────────────────────────┐
//!        │                                                                     │
//!        │ server closes          output flushed:                 peer FIN     v
//!        └────────────> FIN-WAIT-1 ───────────────> FIN-WAIT-2 ─────────────> CLOSED
//!                            │     shutdown(Write)                             ^
//!                            │ peer FIN                       output flushed   │
//!                            └────────────────────> CLOSING ───────────────────┘
//!
//!   any phase ── reset, I/O error, timeout ──> CLOSED
//! ```
//!
//! The names are TCP's own (RFC 793), because each phase corresponds to the kernel state the
//! socket is in, or is about to enter, when the application behaves this way:
//!
//! * `ESTABLISHED`: both directions open; reading and writing.
//! * `CLOSE-WAIT`: `read()` returned 0. The peer's FIN comes *after* every byte it sent, so all
//!   its data has been read. Nothing more will arrive; flush what we owe, then close (the kernel
//!   then sends our FIN and sits in LAST-ACK).
//! * `FIN-WAIT-1`: the server decided to close (shutdown, idle timeout, a limit, a protocol
//!   error). Like TCP, which queues its FIN behind unsent data, we first flush what we owe;
//!   input is read and discarded from here on.
//! * `FIN-WAIT-2`: our FIN is sent (`shutdown(Write)`); we keep reading and discarding until the
//!   peer's FIN (or a timeout). Closing before that would, if the peer still sends, make our
//!   kernel answer with a reset that can destroy data the peer has not read yet.
//! * `CLOSING`: the peer's FIN arrived while we were still flushing in FIN-WAIT-1 (a
//!   simultaneous close): flush, then close.
//! * `CLOSED`: released. Terminal.

use std::fmt;
use std::io;

/// The phase of one connection. Carries no data, like smoltcp's `State`; whatever a phase needs
/// (queued bytes, deadlines) lives in the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Both directions open.
    Established,
    /// The peer's FIN was read; we flush what we owe, then close.
    CloseWait,
    /// The server decided to close; flushing what we owe before our FIN.
    FinWait1,
    /// Our FIN is sent; waiting for the peer's.
    FinWait2,
    /// Both closed at once; flushing, then close.
    Closing,
    /// Released.
    Closed,
}

impl Phase {
    /// Every phase, in the order the stats line prints them.
    pub const ALL: [Phase; 6] = [
        Phase::Established,
        Phase::CloseWait,
        Phase::FinWait1,
        Phase::FinWait2,
        Phase::Closing,
        Phase::Closed,
    ];

    /// A small dense index, for per-phase counters.
    pub fn index(self) -> usize {
        match self {
            Phase::Established => 0,
            Phase::CloseWait => 1,
            Phase::FinWait1 => 2,
            Phase::FinWait2 => 3,
            Phase::Closing => 4,
            Phase::Closed => 5,
        }
    }

    /// Does the socket still have a read side worth reading? False once the peer's FIN has
    /// been seen (or the connection is gone).
    pub fn reads(self) -> bool {
        match self {
            Phase::Established | Phase::FinWait1 | Phase::FinWait2 => true,
            Phase::CloseWait | Phase::Closing | Phase::Closed => false,
        }
    }

    /// Is what we read handed to the service? Only while established: once the server has
    /// decided to close, input is read (to find the peer's FIN) and discarded.
    pub fn delivers_input(self) -> bool {
        self == Phase::Established
    }

    /// May we still write? False once our FIN is sent (or the connection is gone).
    pub fn writes(self) -> bool {
        match self {
            Phase::Established | Phase::CloseWait | Phase::FinWait1 | Phase::Closing => true,
            Phase::FinWait2 | Phase::Closed => false,
        }
    }

    /// Has the server decided to close? These phases are bounded by a timeout, so that a peer
    /// that never reads or never sends its FIN cannot hold the connection forever.
    pub fn is_closing_actively(self) -> bool {
        matches!(self, Phase::FinWait1 | Phase::FinWait2 | Phase::Closing)
    }

    /// The rule table. Returns the phase that `event` leads to from `self` (possibly `self`).
    ///
    /// `Flushed` means "the output queue is empty right now"; the connection layer feeds it
    /// after every change, so a phase that waits for a flush moves on as soon as nothing is owed.
    pub fn next(self, event: &Event) -> Phase {
        use Event::*;
        use Phase::*;
        match (self, event) {
            // A reset, an I/O error or a timeout ends the connection in any phase.
            (_, Abort(_)) => Closed,
            // CLOSED is terminal: nothing revives a released connection.
            (Closed, _) => Closed,

            // Nothing owed, nothing unread, and the peer acknowledged every byte: at a
            // graceful stop there is nothing to wait for. close(); the kernel sends our FIN.
            (Established, Release) => Closed,
            // Our FIN and everything before it acknowledged: the peer has it all.
            (FinWait2, Release) => Closed,
            // Still owing bytes: a release waits for the flush (never loses them).
            (CloseWait | FinWait1 | Closing, Release) => self,

            // The peer finished sending: stop reading, flush what we owe, then close.
            (Established, PeerFin) => CloseWait,
            // Nothing owed is the normal state of an established connection.
            (Established, Flushed) => Established,
            // The server wants out: flush what we owe first, our FIN goes after it.
            (Established, Close(_)) => FinWait1,

            // Everything owed is delivered: close (the kernel sends FIN, LAST-ACK).
            (CloseWait, Flushed) => Closed,
            // Already closing once flushed; a second FIN cannot arrive.
            (CloseWait, PeerFin | Close(_)) => CloseWait,

            // Owed bytes flushed: send our FIN (shutdown(Write)) and wait for the peer's.
            (FinWait1, Flushed) => FinWait2,
            // The peer closed too while we were flushing: finish flushing, then close.
            (FinWait1, PeerFin) => Closing,
            (FinWait1, Close(_)) => FinWait1,

            // Both FINs exchanged: release (the kernel keeps TIME-WAIT for us).
            (FinWait2, PeerFin) => Closed,
            (FinWait2, Flushed | Close(_)) => FinWait2,

            // Simultaneous close: once flushed, release.
            (Closing, Flushed) => Closed,
            (Closing, PeerFin | Close(_)) => Closing,
        }
    }
}

impl fmt::Display for Phase {
    /// The RFC spelling, so the log reads like `ss -tan`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Established => "ESTABLISHED",
            Phase::CloseWait => "CLOSE-WAIT",
            Phase::FinWait1 => "FIN-WAIT-1",
            Phase::FinWait2 => "FIN-WAIT-2",
            Phase::Closing => "CLOSING",
            Phase::Closed => "CLOSED",
        })
    }
}

/// Why the server decided to close a connection (the input that starts FIN-WAIT-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Graceful shutdown: the connection has no pending input or output left.
    Shutdown,
    /// No byte in or out for `--idle-timeout`.
    Idle,
    /// The client broke the service's protocol; the text says how.
    Protocol(&'static str),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Shutdown => f.write_str("shutting down"),
            CloseReason::Idle => f.write_str("idle timeout"),
            CloseReason::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

/// Why a connection ends at once, skipping the orderly phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// A read or write failed: usually a reset from the peer.
    Io(io::ErrorKind),
    /// A closing phase (FIN-WAIT, CLOSING) outlived its timeout: the peer never read what we
    /// owed or never sent its FIN.
    CloseTimeout,
    /// CLOSE-WAIT made no progress for `--idle-timeout`: the peer reads nothing of what we owe.
    IdleTimeout,
    /// Graceful shutdown's `--drain-timeout` expired, or a second signal arrived.
    Drain,
    /// A slow consumer: its output queue passed a limit; the text says which.
    Evicted(&'static str),
}

impl AbortReason {
    /// Should the close be abortive (a reset)? Yes when we give up on a peer that does not read
    /// what it is owed: an orderly FIN could only be sent after those bytes, so it would keep
    /// kernel memory for minutes. After an I/O error the socket is dead anyway; at the end of a
    /// drain the kernel may still deliver what it holds, which is kinder to the peer.
    pub fn resets(self) -> bool {
        match self {
            AbortReason::Evicted(_) | AbortReason::CloseTimeout | AbortReason::IdleTimeout => true,
            AbortReason::Io(_) | AbortReason::Drain => false,
        }
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Io(kind) => write!(f, "I/O error: {kind}"),
            AbortReason::CloseTimeout => f.write_str("close timeout"),
            AbortReason::IdleTimeout => f.write_str("idle timeout"),
            AbortReason::Drain => f.write_str("drain timeout"),
            AbortReason::Evicted(why) => write!(f, "evicted: {why}"),
        }
    }
}

/// An input to the lifecycle machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `read()` returned 0: the peer's FIN, after all of its data.
    PeerFin,
    /// The output queue is empty.
    Flushed,
    /// The server decided to close, in order.
    Close(CloseReason),
    /// The connection must end now.
    Abort(AbortReason),
    /// A graceful stop releases a connection that owes nothing, has nothing unread, and whose
    /// every byte (our FIN included, if sent) the peer has acknowledged.
    Release,
}

impl fmt::Display for Event {
    /// The reason printed in a transition's log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::PeerFin => f.write_str("peer FIN"),
            Event::Flushed => f.write_str("output flushed"),
            Event::Close(reason) => reason.fmt(f),
            Event::Abort(reason) => reason.fmt(f),
            Event::Release => f.write_str("shutting down: nothing owed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event::*;
    use Phase::*;

    const SHUTDOWN: Event = Close(CloseReason::Shutdown);
    const RESET: Event = Abort(AbortReason::Io(io::ErrorKind::ConnectionReset));

    /// Feed a sequence of events from a starting phase; return every phase visited.
    fn run(start: Phase, events: &[Event]) -> Vec<Phase> {
        let mut phase = start;
        let mut seen = vec![phase];
        for event in events {
            phase = phase.next(event);
            seen.push(phase);
        }
        seen
    }

    // --- ESTABLISHED ---

    #[test]
    fn test_established_stays_while_nothing_happens() {
        assert_eq!(Established.next(&Flushed), Established);
    }

    #[test]
    fn test_established_peer_fin_goes_close_wait() {
        assert_eq!(Established.next(&PeerFin), CloseWait);
    }

    #[test]
    fn test_established_server_close_goes_fin_wait_1() {
        assert_eq!(Established.next(&SHUTDOWN), FinWait1);
        assert_eq!(Established.next(&Close(CloseReason::Idle)), FinWait1);
    }

    #[test]
    fn test_established_reset_goes_closed() {
        assert_eq!(Established.next(&RESET), Closed);
    }

    // --- CLOSE-WAIT ---

    #[test]
    fn test_close_wait_flushes_then_closes() {
        assert_eq!(
            run(Established, &[PeerFin, Flushed]),
            [Established, CloseWait, Closed]
        );
    }

    #[test]
    fn test_close_wait_ignores_server_close_until_flushed() {
        // A shutdown while we still owe the peer bytes must not skip the flush.
        assert_eq!(CloseWait.next(&SHUTDOWN), CloseWait);
    }

    #[test]
    fn test_close_wait_reset_goes_closed() {
        assert_eq!(CloseWait.next(&RESET), Closed);
    }

    // --- FIN-WAIT-1 / FIN-WAIT-2 ---

    #[test]
    fn test_fin_wait_flushes_sends_fin_then_waits_for_peer_fin() {
        assert_eq!(
            run(Established, &[SHUTDOWN, Flushed, Flushed, PeerFin]),
            [Established, FinWait1, FinWait2, FinWait2, Closed]
        );
    }

    #[test]
    fn test_fin_wait_1_peer_fin_goes_closing_then_closed() {
        assert_eq!(
            run(Established, &[SHUTDOWN, PeerFin, Flushed]),
            [Established, FinWait1, Closing, Closed]
        );
    }

    #[test]
    fn test_fin_wait_timeout_goes_closed() {
        for phase in [FinWait1, FinWait2, Closing] {
            assert_eq!(phase.next(&Abort(AbortReason::CloseTimeout)), Closed);
        }
    }

    // --- CLOSED ---

    // --- a graceful stop's release ---

    #[test]
    fn test_release_ends_an_idle_connection_or_a_finished_fin_wait_2() {
        assert_eq!(Established.next(&Release), Closed);
        assert_eq!(FinWait2.next(&Release), Closed);
    }

    #[test]
    fn test_release_never_skips_a_flush() {
        for phase in [CloseWait, FinWait1, Closing] {
            assert_eq!(phase.next(&Release), phase, "{phase}");
        }
    }

    #[test]
    fn test_closed_is_terminal() {
        for event in [PeerFin, Flushed, SHUTDOWN, RESET, Release] {
            assert_eq!(Closed.next(&event), Closed);
        }
    }

    // --- what each phase permits ---

    #[test]
    fn test_reading_stops_at_peer_fin_and_writing_at_our_fin() {
        assert!(Established.reads() && Established.writes() && Established.delivers_input());
        assert!(!CloseWait.reads() && CloseWait.writes());
        assert!(FinWait1.reads() && FinWait1.writes() && !FinWait1.delivers_input());
        assert!(FinWait2.reads() && !FinWait2.writes());
        assert!(!Closing.reads() && Closing.writes());
        assert!(!Closed.reads() && !Closed.writes());
    }

    #[test]
    fn test_every_phase_has_a_distinct_index_and_rfc_name() {
        let names: Vec<String> = Phase::ALL.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            names,
            [
                "ESTABLISHED",
                "CLOSE-WAIT",
                "FIN-WAIT-1",
                "FIN-WAIT-2",
                "CLOSING",
                "CLOSED"
            ]
        );
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(p.index(), i);
        }
    }

    #[test]
    fn test_event_reasons_read_well_in_the_log() {
        assert_eq!(PeerFin.to_string(), "peer FIN");
        assert_eq!(SHUTDOWN.to_string(), "shutting down");
        assert_eq!(RESET.to_string(), "I/O error: connection reset");
    }
}
