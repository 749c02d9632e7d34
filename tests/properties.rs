//! Property tests of the sans-IO parts: random event sequences through the real connection core,
//! random chunkings of broadcast lines and file headers. Whatever order events come in and however TCP
//! splits the bytes, the invariants hold.

use std::io::IoSlice;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use resound::connection::{
    Action, Connection, Input, ReadResult, Readiness, Source, Timeouts, WriteResult,
};
use resound::lifecycle::{AbortReason, CloseReason, Phase};
use resound::service::broadcast::LineFramer;
use resound::service::files::{Header, parse_header};

// --- the lifecycle: the real connection core, driven like the I/O layer drives it ---

/// What can happen to a connection, as the I/O layer sees it.
#[derive(Clone, Debug)]
enum Op {
    /// The service queues bytes for the peer.
    Queue(u16),
    /// The socket takes up to this many queued bytes.
    Flush(u16),
    /// The socket's send buffer is full.
    WouldBlock,
    /// A writable event.
    Writable,
    /// Bytes arrive from the peer.
    Data(u16),
    /// The peer's FIN arrives.
    PeerFin,
    /// The server decides to close.
    Close,
    /// The connection is aborted.
    Abort,
    /// Time passes (seconds).
    Wait(u8),
    /// A graceful stop releases the connection if it owes nothing.
    Release,
}

/// Byte counts: mostly small (so queues empty and refill often, where the rules bite), some
/// large.
fn bytes() -> impl Strategy<Value = u16> {
    prop_oneof![3 => 0u16..64, 1 => any::<u16>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => bytes().prop_map(Op::Queue),
        3 => bytes().prop_map(Op::Flush),
        1 => Just(Op::WouldBlock),
        1 => Just(Op::Writable),
        2 => bytes().prop_map(Op::Data),
        1 => Just(Op::PeerFin),
        1 => Just(Op::Close),
        1 => Just(Op::Abort),
        1 => (0u8..20).prop_map(Op::Wait),
        1 => Just(Op::Release),
    ]
}

const TIMEOUTS: Timeouts = Timeouts {
    idle: Some(Duration::from_secs(30)),
    close: Duration::from_secs(5),
};

/// What the test knows independently of the core: bytes handed to it and bytes the socket took.
#[derive(Default)]
struct Ledger {
    /// Bytes the core accepted to send (queued while our side was open).
    owed: u64,
    /// Bytes the socket took.
    written: u64,
    fin_read: bool,
    our_fin_sent: bool,
    aborted: bool,
}

/// Apply one op to the core, as the I/O layer would.
fn apply(c: &mut Connection, op: &Op, ledger: &mut Ledger, now: &mut Instant) {
    match *op {
        Op::Queue(n) => {
            if c.phase().writes() {
                ledger.owed += u64::from(n);
            }
            c.queue_copy(&vec![0; usize::from(n)]);
        }
        Op::Flush(n) => {
            if c.wants_flush() {
                let mut slices = [IoSlice::new(&[]); 8];
                let k = c.transmit(usize::from(n).max(1), &mut slices);
                let len: usize = slices[..k].iter().map(|s| s.len()).sum();
                ledger.written += c.on_write(WriteResult::Wrote(len), Source::Queue) as u64;
            }
        }
        Op::WouldBlock => {
            c.on_write(WriteResult::WouldBlock, Source::Queue);
        }
        Op::Writable => c.on_readiness(Readiness {
            writable: true,
            ..Readiness::default()
        }),
        Op::Data(n) => {
            c.on_readiness(Readiness {
                readable: true,
                ..Readiness::default()
            });
            if c.wants_read() {
                let n = usize::from(n).max(1);
                let input = c.on_read(ReadResult::Data { n, asked: n });
                assert!(matches!(input, Input::Deliver(_) | Input::Discard(_)));
            }
        }
        Op::PeerFin => {
            c.on_readiness(Readiness {
                readable: true,
                hup: true,
                ..Readiness::default()
            });
            // A FIN can only be read while the read side is open, and only once.
            if c.wants_read() && !ledger.fin_read {
                ledger.fin_read = true;
                c.on_read(ReadResult::Eof);
            }
        }
        Op::Close => c.close(CloseReason::Shutdown),
        Op::Release => c.release(),
        Op::Abort => {
            if c.phase() != Phase::Closed {
                ledger.aborted = true;
            }
            c.abort(AbortReason::Drain);
        }
        Op::Wait(secs) => {
            *now += Duration::from_secs(u64::from(secs));
            let before = c.phase();
            c.on_timer(*now, &TIMEOUTS);
            if c.phase() == Phase::Closed && before != Phase::Closed && before != Phase::Established
            {
                // A timeout in a closing phase or CLOSE-WAIT is an abort: it may drop bytes.
                ledger.aborted = true;
            }
        }
    }
}

proptest! {
    /// The real core, any event sequence: CLOSED is terminal; our FIN (`shutdown(Write)`) is
    /// asked for only once every byte we owed has been written; no orderly path to CLOSED
    /// loses a queued byte; nothing is read after the peer's FIN nor written after ours.
    #[test]
    fn lifecycle_invariants_hold_for_any_event_sequence(ops in prop::collection::vec(op(), 0..80)) {
        let mut now = Instant::now();
        let mut c = Connection::new(1, "127.0.0.1:9".parse().unwrap(), now, true);
        let mut ledger = Ledger::default();
        for op in ops {
            let before = c.phase();
            apply(&mut c, &op, &mut ledger, &mut now);
            c.settle(now, &TIMEOUTS);
            while let Some(action) = c.poll_action() {
                if action == Action::ShutdownWrite {
                    prop_assert_eq!(ledger.written, ledger.owed, "our FIN overtook queued bytes");
                    prop_assert!(!ledger.our_fin_sent, "two FINs");
                    ledger.our_fin_sent = true;
                }
            }
            if before == Phase::Closed {
                prop_assert_eq!(c.phase(), Phase::Closed, "CLOSED is terminal");
            }
            if c.phase() == Phase::Closed && !ledger.aborted {
                prop_assert_eq!(ledger.written, ledger.owed, "an orderly close lost queued bytes");
            }
            if ledger.fin_read {
                prop_assert!(!c.phase().reads() && !c.wants_read(), "{} reads after the peer's FIN", c.phase());
            }
            if ledger.our_fin_sent {
                prop_assert!(!c.phase().writes() && !c.can_write_through(), "{} writes after our FIN", c.phase());
            }
        }
    }

    /// Once both sides have said FIN and nothing is owed, the connection is CLOSED.
    #[test]
    fn both_fins_and_nothing_owed_means_closed(server_first in any::<bool>(), owed in 0u16..100) {
        let now = Instant::now();
        let mut c = Connection::new(1, "127.0.0.1:9".parse().unwrap(), now, true);
        let mut ledger = Ledger::default();
        let mut t = now;
        apply(&mut c, &Op::Queue(owed), &mut ledger, &mut t);
        if server_first {
            c.close(CloseReason::Idle);
            c.settle(now, &TIMEOUTS);
        }
        apply(&mut c, &Op::PeerFin, &mut ledger, &mut t);
        apply(&mut c, &Op::Flush(u16::MAX), &mut ledger, &mut t);
        c.settle(now, &TIMEOUTS);
        prop_assert_eq!(c.phase(), Phase::Closed);
    }
}

// --- broadcast framing ---

/// Split `data` at the given fractions.
fn chunk<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points {
        pieces.push(&data[start..p]);
        start = p;
    }
    pieces.push(&data[start..]);
    pieces
}

/// Lines from a small alphabet so that newlines are frequent and lengths vary.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![8 => Just(b'a'), 2 => Just(b'\n'), 1 => Just(b'b')],
        0..400,
    )
}

proptest! {
    /// Whatever the chunking: the lines delivered are exactly the complete lines before the
    /// first overlong one, whole and in order; the overlong line is flagged; the unterminated
    /// tail comes out at EOF.
    #[test]
    fn framing_does_not_depend_on_chunking(
        data in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        max_line in 1usize..40,
    ) {
        // The expected result, computed directly.
        let mut want = Vec::new();
        let mut want_too_long = false;
        let mut rest: &[u8] = &data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if nl > max_line {
                want_too_long = true;
                break;
            }
            want.extend_from_slice(&rest[..=nl]);
            rest = &rest[nl + 1..];
        }
        let tail_too_long = !want_too_long && rest.len() > max_line;
        want_too_long |= tail_too_long;

        let mut framer = LineFramer::default();
        let mut got = Vec::new();
        let mut too_long = false;
        for piece in chunk(&data, &cuts) {
            let out = framer.push(piece, max_line);
            if let Some(lines) = out.lines {
                got.extend_from_slice(&lines);
            }
            if out.too_long {
                too_long = true;
                break; // the server closes the sender here
            }
        }
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(too_long, want_too_long);
        if !too_long {
            let last = framer.finish();
            if rest.is_empty() {
                prop_assert!(last.is_none());
            } else {
                let mut line = rest.to_vec();
                line.push(b'\n');
                prop_assert_eq!(last.as_deref(), Some(&line[..]));
            }
        }
    }
}

// --- file headers ---

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._-]{1,40}".prop_filter("not a dot name", |n| n != "." && n != "..")
}

proptest! {
    /// Every strict prefix of a framed header is incomplete and could still be framed (so no
    /// silence ever turns it into a seed-form name), and the whole parses to the same size and
    /// name, whatever follows it.
    #[test]
    fn framed_header_is_never_misread_when_split(
        size in any::<u64>(),
        name in name(),
        crlf in any::<bool>(),
        trailing in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut header = format!("{size} {name}").into_bytes();
        if crlf {
            header.push(b'\r');
        }
        header.push(b'\n');
        for cut in 1..header.len() {
            prop_assert_eq!(
                parse_header(&header[..cut]),
                Header::Incomplete { maybe_framed: true },
                "prefix of {} bytes", cut
            );
        }
        let len = header.len();
        header.extend_from_slice(&trailing);
        prop_assert_eq!(parse_header(&header), Header::Framed { size, name: &name, len });
    }

    /// A name ended by a newline, without a size, is never misread either: every strict prefix
    /// is incomplete (and could be framed only when the name starts like a size), and the whole
    /// is that name, whatever follows it.
    #[test]
    fn name_line_is_never_misread_when_split(
        name in name().prop_filter("not the framed shape", |n| {
            let digits = n.bytes().take_while(u8::is_ascii_digit).count();
            digits == 0 || n.as_bytes().get(digits) != Some(&b' ')
        }),
        crlf in any::<bool>(),
        trailing in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut header = name.clone().into_bytes();
        if crlf {
            header.push(b'\r');
        }
        header.push(b'\n');
        for cut in 1..header.len() {
            prop_assert!(
                matches!(parse_header(&header[..cut]), Header::Incomplete { .. }),
                "prefix of {} bytes", cut
            );
        }
        let len = header.len();
        header.extend_from_slice(&trailing);
        prop_assert_eq!(parse_header(&header), Header::NameLine { name: &name, len });
    }

    /// Arbitrary bytes never panic the parser; a "complete" verdict always points at a newline
    /// inside the buffer, every byte before which was still incomplete; and nothing without a
    /// newline is ever complete.
    #[test]
    fn header_parser_is_total(buf in prop::collection::vec(
        prop_oneof![4 => any::<u8>(), 1 => Just(b'\n'), 2 => b'0'..=b'9', 1 => Just(b' ')],
        0..400,
    )) {
        match parse_header(&buf) {
            Header::Framed { len, .. } | Header::NameLine { len, .. } => {
                prop_assert!(len <= buf.len());
                prop_assert_eq!(buf[len - 1], b'\n');
                for cut in 0..len - 1 {
                    let incomplete = matches!(parse_header(&buf[..cut]), Header::Incomplete { .. });
                    prop_assert!(incomplete, "prefix of {} bytes", cut);
                }
            }
            Header::Incomplete { .. } => prop_assert!(!buf.contains(&b'\n')),
            Header::Invalid(_) => {}
        }
    }
}
