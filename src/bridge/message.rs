//! What travels on the bus, and the RESP it travels in. Pure: bytes in, values out.
//!
//! # A bus message
//!
//! One message per fan-out batch: a one-line text header, then the batch exactly as the room
//! holds it (one or more whole lines, each ending in `\n`):
//!
//! ```text
//! resound1 <NODE> <SEQ>\n<LINES...>
//! resound1 9f3a0c2e71d4b805 42\nhello from the left\nand again\n
//! ```
//!
//! * `NODE`: 16 lowercase hex digits, drawn at random when the node starts: a node drops the
//!   messages it published itself (Redis sends them back to its own subscription), and a peer's
//!   restart is a new node, with a sequence of its own.
//! * `SEQ`: the node's message number, decimal, from 1, one per batch it *produced* (published
//!   or not): a gap in a peer's numbers is a batch this node never got, whatever lost it.
//!
//! Text, not binary, so that `redis-cli SUBSCRIBE CHANNEL` shows the traffic legibly; the
//! header costs ~30 bytes per batch, not per line.
//!
//! # RESP
//!
//! Redis speaks RESP2 (`*3\r\n$7\r\nPUBLISH\r\n...`). Encoding a command and decoding Redis's
//! replies is the `redis-protocol` crate's job: it works on byte slices, with no I/O and no
//! async runtime, which is exactly the sans-IO shape the link needs. What is here is the thin
//! glue: which commands we send and which replies we expect.

use std::fmt;
use std::ops::Range;

use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, RangeFrame};

/// The first word of every bus message: the format's name and version.
pub const MAGIC: &[u8] = b"resound1 ";

/// A message's header: who sent it and its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sending node.
    pub node: u64,
    /// Its number in the sender's sequence (from 1).
    pub seq: u64,
}

/// Append the header line for `header` to `out`.
pub fn write_header(out: &mut Vec<u8>, header: Header) {
    use std::io::Write;
    out.extend_from_slice(MAGIC);
    // Writing to a Vec cannot fail.
    let _ = writeln!(out, "{:016x} {}", header.node, header.seq);
}

/// Why a message from the bus was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadMessage {
    /// It does not start with [`MAGIC`]: not ours, or another version.
    UnknownFormat,
    /// The header line is malformed.
    BadHeader,
    /// No lines after the header, or the last one does not end in `\n`.
    NotWholeLines,
}

impl fmt::Display for BadMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadMessage::UnknownFormat => "unknown format (no 'resound1' header)",
            BadMessage::BadHeader => "malformed header",
            BadMessage::NotWholeLines => "body is not whole lines",
        })
    }
}

/// Split a bus message into its header and the range of its body (the lines) in `payload`.
pub fn parse(payload: &[u8]) -> Result<(Header, Range<usize>), BadMessage> {
    let rest = payload
        .strip_prefix(MAGIC)
        .ok_or(BadMessage::UnknownFormat)?;
    let eol = memchr::memchr(b'\n', rest).ok_or(BadMessage::BadHeader)?;
    let line = std::str::from_utf8(&rest[..eol]).map_err(|_| BadMessage::BadHeader)?;
    let (node, seq) = line.split_once(' ').ok_or(BadMessage::BadHeader)?;
    // Exactly the forms `write_header` produces: a sender we do not understand is skipped, not
    // guessed at.
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if node.len() != 16 || !digits(node, 16) || node.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(BadMessage::BadHeader);
    }
    if !digits(seq, 10) {
        return Err(BadMessage::BadHeader);
    }
    let header = Header {
        node: u64::from_str_radix(node, 16).map_err(|_| BadMessage::BadHeader)?,
        seq: seq.parse().map_err(|_| BadMessage::BadHeader)?,
    };
    let start = MAGIC.len() + eol + 1;
    if payload.len() == start || payload.last() != Some(&b'\n') {
        return Err(BadMessage::NotWholeLines);
    }
    Ok((header, start..payload.len()))
}

/// Lines in a body of whole lines.
pub fn count_lines(body: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', body).count()
}

// ------------------------------------------------------------------------ RESP

/// Append a command (an array of bulk strings, as Redis expects every command) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let frames: Vec<BorrowedFrame<'_>> =
        args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    let frame = BorrowedFrame::Array(&frames);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    // The buffer was sized by the crate's own `encode_len`, so encoding cannot run short.
    let n = encode_borrowed(&mut out[start..], &frame, false).expect("buffer sized by encode_len");
    out.truncate(start + n);
}

/// What one reply or push from Redis says, as far as the link cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `["subscribe", channel, count]`: the subscription is in place.
    Subscribed(Vec<u8>),
    /// `["message", channel, payload]`: something published on a channel we subscribe to. The
    /// payload is a range of the decoded buffer (no copy yet).
    Message {
        channel: Vec<u8>,
        payload: Range<usize>,
    },
    /// `:N`, the answer to a PUBLISH (how many subscribers got it).
    Integer(i64),
    /// `-ERR ...`: Redis refused a command.
    Error(String),
    /// Any other well-formed frame (logged and skipped).
    Other(&'static str),
}

/// The RESP stream could not be parsed: the connection cannot be resynchronised and must be
/// dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

/// Decode one frame from the front of `buf`: `Ok(None)` if it is not complete yet, else the
/// reply and the bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Reply, usize)>, Malformed> {
    let Some((frame, used)) = decode_range(buf).map_err(|e| Malformed(e.to_string()))? else {
        return Ok(None);
    };
    // The crate's ranges are (start, end) pairs into `buf`.
    let bytes = |&(start, end): &(usize, usize)| &buf[start..end];
    let reply = match frame {
        RangeFrame::Integer(n) => Reply::Integer(n),
        RangeFrame::Error(r) => Reply::Error(String::from_utf8_lossy(bytes(&r)).into_owned()),
        RangeFrame::Array(items) => match items.as_slice() {
            [
                RangeFrame::BulkString(kind),
                RangeFrame::BulkString(channel),
                third,
            ] => match (bytes(kind), third) {
                (b"message", RangeFrame::BulkString(payload)) => Reply::Message {
                    channel: bytes(channel).to_vec(),
                    payload: payload.0..payload.1,
                },
                (b"subscribe", RangeFrame::Integer(_)) => {
                    Reply::Subscribed(bytes(channel).to_vec())
                }
                _ => Reply::Other("an unexpected push"),
            },
            _ => Reply::Other("an unexpected array"),
        },
        RangeFrame::SimpleString(_) => Reply::Other("a simple string"),
        RangeFrame::BulkString(_) => Reply::Other("a bulk string"),
        RangeFrame::Null => Reply::Other("a null"),
    };
    Ok(Some((reply, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(node: u64, seq: u64, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        write_header(&mut m, Header { node, seq });
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn test_a_message_round_trips_and_reads_as_text() {
        let m = message(0x9f3a_0c2e_71d4_b805, 42, b"hi\nthere\n");
        assert_eq!(m, b"resound1 9f3a0c2e71d4b805 42\nhi\nthere\n");
        let (h, body) = parse(&m).unwrap();
        assert_eq!(
            h,
            Header {
                node: 0x9f3a_0c2e_71d4_b805,
                seq: 42
            }
        );
        assert_eq!(&m[body.clone()], b"hi\nthere\n");
        assert_eq!(count_lines(&m[body]), 2);
    }

    #[test]
    fn test_bad_messages_are_named_not_guessed() {
        let cases: &[(&[u8], BadMessage)] = &[
            (b"hello\n", BadMessage::UnknownFormat),
            (
                b"resound2 0000000000000001 1\nx\n",
                BadMessage::UnknownFormat,
            ),
            (b"resound1 0000000000000001 1", BadMessage::BadHeader),
            (b"resound1 1 1\nx\n", BadMessage::BadHeader),
            (b"resound1 000000000000000G 1\nx\n", BadMessage::BadHeader),
            (b"resound1 000000000000000A 1\nx\n", BadMessage::BadHeader),
            (b"resound1 0000000000000001 -1\nx\n", BadMessage::BadHeader),
            (
                b"resound1 0000000000000001 99999999999999999999\nx\n",
                BadMessage::BadHeader,
            ),
            (b"resound1 0000000000000001 1 2\nx\n", BadMessage::BadHeader),
            (b"resound1 0000000000000001 1\n", BadMessage::NotWholeLines),
            (
                b"resound1 0000000000000001 1\nno newline",
                BadMessage::NotWholeLines,
            ),
        ];
        for (m, want) in cases {
            assert_eq!(parse(m), Err(*want), "{:?}", String::from_utf8_lossy(m));
        }
    }

    #[test]
    fn test_commands_are_arrays_of_bulk_strings() {
        let mut out = b"before".to_vec();
        encode_command(&mut out, &[b"SUBSCRIBE", b"room"]);
        assert_eq!(out, b"before*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nroom\r\n");
    }

    #[test]
    fn test_decode_what_redis_sends() {
        let buf = b"*3\r\n$9\r\nsubscribe\r\n$4\r\nroom\r\n:1\r\n";
        assert_eq!(
            decode(buf).unwrap(),
            Some((Reply::Subscribed(b"room".to_vec()), buf.len()))
        );
        let buf = b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$3\r\nab\n\r\n:7\r\n";
        let (reply, used) = decode(buf).unwrap().unwrap();
        let Reply::Message { channel, payload } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(channel, b"room");
        assert_eq!(&buf[payload], b"ab\n");
        assert_eq!(decode(&buf[used..]).unwrap(), Some((Reply::Integer(7), 4)));
        assert_eq!(
            decode(b"-ERR unknown command\r\n").unwrap(),
            Some((Reply::Error("ERR unknown command".into()), 22))
        );
        assert_eq!(
            decode(b"+OK\r\n").unwrap(),
            Some((Reply::Other("a simple string"), 5))
        );
    }

    #[test]
    fn test_a_frame_cut_anywhere_waits_for_the_rest() {
        let buf = b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$3\r\nab\n\r\n";
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn test_garbage_is_malformed_not_a_panic() {
        for junk in [&b"?what\r\n"[..], b"$-5\r\n", b"*x\r\n", b":12a\r\n"] {
            assert!(decode(junk).is_err(), "{junk:?}");
        }
    }
}
