//! Property tests of the sans-IO parts: random event sequences through the lifecycle, random
//! chunkings of broadcast lines and file headers. Whatever order events come in and however TCP
//! splits the bytes, the invariants hold.

use proptest::prelude::*;

use resound::lifecycle::{AbortReason, CloseReason, Event, Phase};
use resound::service::broadcast::LineFramer;
use resound::service::files::{Header, parse_header};

// --- the lifecycle, driven like a connection drives it ---

/// What can happen to a connection, as the connection layer sees it.
#[derive(Clone, Debug)]
enum Op {
    /// The service queues bytes for the peer.
    Queue(u16),
    /// The socket takes up to this many queued bytes.
    Flush(u16),
    PeerFin,
    Close,
    Abort,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u16>().prop_map(Op::Queue),
        3 => any::<u16>().prop_map(Op::Flush),
        1 => Just(Op::PeerFin),
        1 => Just(Op::Close),
        1 => Just(Op::Abort),
    ]
}

/// A model connection: a phase, the bytes owed, and what has been done with them.
struct Model {
    phase: Phase,
    queued: u64,
    fin_seen: bool,
    our_fin_sent: bool,
}

impl Model {
    fn step(&mut self, event: Event) {
        let next = self.phase.next(&event);
        if self.phase == Phase::Closed {
            assert_eq!(next, Phase::Closed, "CLOSED is terminal");
        }
        if next == Phase::FinWait2 && self.phase != Phase::FinWait2 {
            assert_eq!(self.queued, 0, "our FIN must follow every byte we owed");
            self.our_fin_sent = true;
        }
        if next == Phase::Closed && self.phase != Phase::Closed && !matches!(event, Event::Abort(_))
        {
            assert_eq!(self.queued, 0, "an orderly close lost queued bytes");
        }
        self.phase = next;
    }

    /// What the connection layer does after every change: report an empty queue.
    fn settle(&mut self) {
        if self.queued == 0 {
            self.step(Event::Flushed);
        }
    }
}

proptest! {
    /// CLOSED is terminal; no orderly path to CLOSED loses a queued byte; our FIN never
    /// overtakes queued bytes; no phase reads after the peer's FIN or writes after ours.
    #[test]
    fn lifecycle_invariants_hold_for_any_event_sequence(ops in prop::collection::vec(op(), 0..60)) {
        let mut m = Model { phase: Phase::Established, queued: 0, fin_seen: false, our_fin_sent: false };
        for op in ops {
            match op {
                Op::Queue(n) => {
                    if m.phase.writes() {
                        m.queued += u64::from(n);
                    }
                }
                Op::Flush(n) => {
                    if m.phase.writes() {
                        m.queued -= m.queued.min(u64::from(n));
                    }
                }
                Op::PeerFin => {
                    // A FIN can only be read while the read side is open, and only once.
                    if m.phase.reads() && !m.fin_seen {
                        m.fin_seen = true;
                        m.step(Event::PeerFin);
                    }
                }
                Op::Close => m.step(Event::Close(CloseReason::Shutdown)),
                Op::Abort => m.step(Event::Abort(AbortReason::Drain)),
            }
            m.settle();
            if m.fin_seen {
                prop_assert!(!m.phase.reads(), "{} reads after the peer's FIN", m.phase);
            }
            if m.our_fin_sent {
                prop_assert!(!m.phase.writes(), "{} writes after our FIN", m.phase);
            }
        }
    }

    /// Once both sides have said FIN and nothing is owed, the connection is CLOSED.
    #[test]
    fn both_fins_and_nothing_owed_means_closed(server_first in any::<bool>()) {
        let mut m = Model { phase: Phase::Established, queued: 0, fin_seen: false, our_fin_sent: false };
        if server_first {
            m.step(Event::Close(CloseReason::Idle));
            m.settle();
            m.step(Event::PeerFin);
        } else {
            m.step(Event::PeerFin);
        }
        m.settle();
        prop_assert_eq!(m.phase, Phase::Closed);
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
