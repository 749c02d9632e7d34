//! TCP broadcast (chat): every complete line a client sends goes to every *other* client.
//!
//! The seeds' chat server reads lines in one goroutine per client and pushes each to the other
//! clients through channels. Here the work splits in two:
//!
//! * framing, in this file and free of I/O: bytes in, whole lines out. A line is delivered
//!   only once its `\n` has arrived, so it is never split; the complete lines of one read are
//!   stored once, in one reference-counted chunk, and the member asks for that chunk to be
//!   shared ([`Action::Share`]) — N recipients cost N pointers, not N copies, and because a
//!   chunk holds only whole lines, lines from different senders never interleave;
//! * the room (`room.rs`): who the members are, fan-out of shared chunks to each one's queue,
//!   and the output limits that evict a member that does not keep up.
//!
//! A final unterminated line at the sender's EOF is delivered with `\n` appended, so nothing a
//! client sent is lost. A line longer than `--max-line` (without its `\n`) is a protocol error:
//! no part of it is delivered; the sender gets `error: line too long` and is closed.

use std::rc::Rc;

use super::{Action, Cx, Service};
use crate::lifecycle::CloseReason;

/// What a client that sent an overlong line receives before the server closes it.
pub const LINE_TOO_LONG: &[u8] = b"error: line too long\n";

/// Per-connection state of a broadcast member: only the line it is in the middle of. (Its
/// place in the room and its output limits are the room's business.)
#[derive(Debug, Default)]
pub struct Member {
    /// The unterminated line received so far.
    pub framer: LineFramer,
}

impl Service for Member {
    fn on_input(&mut self, data: &[u8], cx: &mut Cx<'_>) {
        let framed = self.framer.push(data, cx.shared.max_line);
        if let Some(chunk) = framed.lines {
            cx.act(Action::Share {
                chunk,
                lines: framed.count,
            });
        }
        if framed.too_long {
            cx.act(Action::Reply(LINE_TOO_LONG));
            cx.act(Action::Close(CloseReason::Protocol("line too long")));
        }
    }

    fn buffered(&self) -> usize {
        self.framer.capacity()
    }

    /// Nothing a client sent is lost: a last line without `\n` still goes out.
    fn on_eof(&mut self, cx: &mut Cx<'_>) {
        if let Some(chunk) = self.framer.finish() {
            cx.act(Action::Share { chunk, lines: 1 });
        }
    }
}

/// What one batch of input produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Framed {
    /// The complete lines, `\n` included, ready to be shared with every recipient.
    pub lines: Option<Rc<[u8]>>,
    /// How many lines `lines` holds.
    pub count: usize,
    /// A line exceeded the limit: nothing of it (or after it) is in `lines`, and the sender
    /// must be closed.
    pub too_long: bool,
}

/// Splits a byte stream into whole lines. Holds only the unterminated tail: an empty `Vec`,
/// with no allocation, between lines.
#[derive(Debug, Default)]
pub struct LineFramer {
    partial: Vec<u8>,
}

impl LineFramer {
    /// Bytes of the unterminated line held.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Heap bytes held for the unterminated line.
    pub fn capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// Take in `data`; return the complete lines it finishes. A line longer than `max_line`
    /// bytes (not counting `\n`), complete or still pending, makes `too_long` true; the lines
    /// before it are still returned, and the framer keeps nothing.
    pub fn push(&mut self, data: &[u8], max_line: usize) -> Framed {
        let Some(last_nl) = memchr::memrchr(b'\n', data) else {
            // No line ends here: everything extends the pending line.
            if self.partial.len() + data.len() > max_line {
                self.partial = Vec::new();
                return Framed {
                    too_long: true,
                    ..Framed::default()
                };
            }
            self.partial.extend_from_slice(data);
            return Framed::default();
        };
        let (complete, rest) = data.split_at(last_nl + 1);

        // Check every line's length; the first overlong one ends the batch.
        let mut count = 0;
        let mut start = 0; // of the current line, in (partial ++ complete) coordinates
        let mut valid_end = None; // where the valid lines end, if a line is too long
        for nl in memchr::memchr_iter(b'\n', complete) {
            let end = self.partial.len() + nl; // position of this '\n'
            if end - start > max_line {
                valid_end = Some(start);
                break;
            }
            count += 1;
            start = end + 1;
        }
        let too_long = valid_end.is_some() || rest.len() > max_line;
        let total = self.partial.len() + complete.len();
        let lines = take_prefix(&self.partial, complete, valid_end.unwrap_or(total));
        self.partial = if too_long { Vec::new() } else { rest.to_vec() };
        Framed {
            lines,
            count,
            too_long,
        }
    }

    /// The peer's EOF: the unterminated final line, with `\n` appended, if there is one.
    pub fn finish(&mut self) -> Option<Rc<[u8]>> {
        if self.partial.is_empty() {
            return None;
        }
        let mut line = std::mem::take(&mut self.partial);
        line.push(b'\n');
        Some(Rc::from(line))
    }
}

/// The first `len` bytes of `a ++ b`, in one new shared allocation (None if `len` is 0). This is
/// the one copy a line costs, however many recipients it has.
fn take_prefix(a: &[u8], b: &[u8], len: usize) -> Option<Rc<[u8]>> {
    if len == 0 {
        return None;
    }
    if a.is_empty() {
        return Some(Rc::from(&b[..len]));
    }
    // A chain of two slices has an exact length, so `collect` allocates once.
    Some(a.iter().chain(b).take(len).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(f: &Framed) -> &[u8] {
        f.lines.as_deref().unwrap_or(b"")
    }

    #[test]
    fn test_complete_lines_come_out_whole_and_counted() {
        let mut fr = LineFramer::default();
        let out = fr.push(b"one\ntwo\n", 100);
        assert_eq!(lines(&out), b"one\ntwo\n");
        assert_eq!(out.count, 2);
        assert!(!out.too_long);
        assert_eq!(fr.pending(), 0);
    }

    #[test]
    fn test_partial_line_waits_for_its_newline() {
        let mut fr = LineFramer::default();
        assert_eq!(fr.push(b"hel", 100), Framed::default());
        assert_eq!(fr.pending(), 3);
        let out = fr.push(b"lo\nwor", 100);
        assert_eq!(lines(&out), b"hello\n");
        assert_eq!(out.count, 1);
        assert_eq!(fr.pending(), 3);
        assert_eq!(lines(&fr.push(b"ld\n", 100)), b"world\n");
    }

    #[test]
    fn test_empty_lines_are_lines() {
        let mut fr = LineFramer::default();
        let out = fr.push(b"\n\n", 100);
        assert_eq!(lines(&out), b"\n\n");
        assert_eq!(out.count, 2);
    }

    #[test]
    fn test_eof_delivers_the_unterminated_line_with_a_newline() {
        let mut fr = LineFramer::default();
        fr.push(b"last words", 100);
        assert_eq!(fr.finish().as_deref(), Some(&b"last words\n"[..]));
        assert_eq!(fr.finish(), None);
    }

    #[test]
    fn test_a_line_of_exactly_max_line_passes() {
        let mut fr = LineFramer::default();
        let out = fr.push(b"12345\n", 5);
        assert_eq!(lines(&out), b"12345\n");
        assert!(!out.too_long);
    }

    #[test]
    fn test_overlong_complete_line_is_not_delivered_but_earlier_ones_are() {
        let mut fr = LineFramer::default();
        let out = fr.push(b"ok\n123456\nlater\n", 5);
        assert_eq!(lines(&out), b"ok\n");
        assert_eq!(out.count, 1);
        assert!(out.too_long);
        assert_eq!(fr.pending(), 0);
    }

    #[test]
    fn test_overlong_pending_line_is_caught_before_its_newline() {
        let mut fr = LineFramer::default();
        assert!(!fr.push(b"1234", 5).too_long);
        let out = fr.push(b"56", 5);
        assert!(out.too_long);
        assert_eq!(out.lines, None);
        assert_eq!(fr.pending(), 0, "nothing of the line is kept");
    }

    #[test]
    fn test_overlong_tail_after_good_lines() {
        let mut fr = LineFramer::default();
        let out = fr.push(b"fine\n1234567", 5);
        assert_eq!(lines(&out), b"fine\n");
        assert!(out.too_long);
    }

    #[test]
    fn test_overlong_line_spanning_the_pending_part() {
        let mut fr = LineFramer::default();
        fr.push(b"abc", 5);
        let out = fr.push(b"def\n", 5);
        assert!(out.too_long);
        assert_eq!(out.lines, None);
    }

    #[test]
    fn test_result_does_not_depend_on_how_tcp_split_the_bytes() {
        let input: Vec<u8> = (0..500)
            .flat_map(|i| format!("line number {i} {}\n", "x".repeat(i % 37)).into_bytes())
            .chain(b"tail".iter().copied())
            .collect();
        for step in [1, 2, 3, 7, 64, 1000, input.len()] {
            let mut fr = LineFramer::default();
            let mut got = Vec::new();
            let mut count = 0;
            for piece in input.chunks(step) {
                let out = fr.push(piece, 100);
                assert!(!out.too_long);
                got.extend_from_slice(lines(&out));
                count += out.count;
            }
            got.extend_from_slice(&fr.finish().unwrap());
            assert_eq!(got.len(), input.len() + 1, "step {step}");
            assert_eq!(&got[..input.len()], &input[..], "step {step}");
            assert_eq!(count, 500);
        }
    }

    // --- the member, as the loop drives it ---

    use crate::service::Recorded;
    use crate::service::testing::{run, shared};
    use std::time::Instant;

    #[test]
    fn test_member_shares_each_reads_complete_lines_as_one_chunk() {
        let mut sh = shared(None);
        let mut m = Member::default();
        let got = run(&mut sh, Instant::now(), |cx| m.on_input(b"a\nb\npart", cx));
        assert_eq!(got, [Recorded::Share(b"a\nb\n".to_vec(), 2)]);
        let got = run(&mut sh, Instant::now(), |cx| m.on_input(b"ial", cx));
        assert!(got.is_empty(), "no line ends: nothing shared yet");
        let got = run(&mut sh, Instant::now(), |cx| m.on_eof(cx));
        assert_eq!(got, [Recorded::Share(b"partial\n".to_vec(), 1)]);
    }

    #[test]
    fn test_member_with_an_overlong_line_is_told_and_closed_after_its_good_lines() {
        let mut sh = shared(None); // max_line 16
        let mut m = Member::default();
        let got = run(&mut sh, Instant::now(), |cx| {
            m.on_input(b"fine\nthis line is far too long\n", cx)
        });
        assert_eq!(
            got,
            [
                Recorded::Share(b"fine\n".to_vec(), 1),
                Recorded::Reply(LINE_TOO_LONG.to_vec()),
                Recorded::Close(CloseReason::Protocol("line too long")),
            ]
        );
    }

    #[test]
    fn test_member_eof_without_a_pending_line_shares_nothing() {
        let mut sh = shared(None);
        let mut m = Member::default();
        let got = run(&mut sh, Instant::now(), |cx| {
            m.on_input(b"done\n", cx);
            m.on_eof(cx);
        });
        assert_eq!(got, [Recorded::Share(b"done\n".to_vec(), 1)]);
    }
}
