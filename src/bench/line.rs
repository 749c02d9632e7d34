//! The broadcast mode's line format, and the per-sender sequence checker that turns the lines a
//! receiver gets into "delivered", "lost", "duplicated" and "reordered".
//!
//! A line is exactly `size` bytes, newline included:
//!
//! ```text
//! ~b0001.00000000002a.0000000012345678:filler...\n
//!   ^^^^ sender (hex)   ^^^^^^^^^^^^^^^^ send time, ns since the run's epoch (hex)
//!        ^^^^^^^^^^^^ sequence number, per sender (hex)
//! ```
//!
//! The filler is printable and determined by (sender, sequence), so a receiver can check every
//! byte of every line without knowing anything but the line size. Fixed-width hex keeps encoding
//! and parsing to a few dozen byte operations, with no allocation.
//!
//! The line is parsed from its *end*: the last `size - 1` bytes before the newline are ours, and
//! anything before them is a prefix the server added (a chat server that writes `alice: ` in front
//! of each line still works). The carried send time gives the fan-out latency of each delivery.
//!
//! Pure: no I/O, no clock.

use std::fmt;

use super::payload::{MAX_CHUNK, PERIOD, Pattern};

/// The printable filler stream: the payload pattern mapped onto `!`..`~` once, so encoding a
/// line is a copy and checking one is a `memcmp` (mapping each byte on every line cost the
/// receive path a third of its time).
pub struct Filler {
    table: Box<[u8]>,
}

impl Filler {
    /// Map `pattern` onto printable bytes (done once per run).
    pub fn new(pattern: &Pattern) -> Filler {
        let mut table = Vec::with_capacity(PERIOD + MAX_CHUNK);
        for offset in (0..PERIOD + MAX_CHUNK).step_by(MAX_CHUNK) {
            let n = MAX_CHUNK.min(PERIOD + MAX_CHUNK - offset);
            table.extend(
                pattern
                    .slice(0, offset as u64, n)
                    .iter()
                    .map(|&b| printable(b)),
            );
        }
        Filler {
            table: table.into_boxed_slice(),
        }
    }

    /// `len` (at most [`MAX_CHUNK`]) filler bytes of line (`sender`, `seq`) from `offset` on.
    fn slice(&self, sender: u16, seq: u64, offset: usize, len: usize) -> &[u8] {
        let start = (filler_phase(sender, seq) + offset) % PERIOD;
        &self.table[start..start + len]
    }
}

/// Bytes before the filler: `~b` + 4 + `.` + 12 + `.` + 16 + `:`.
pub const HEADER: usize = 37;

/// The smallest line size: a header and the newline.
pub const MIN_LINE: usize = HEADER + 1;

/// The largest line size the broadcast mode accepts.
pub const MAX_LINE: usize = 64 * 1024;

/// The most senders: the sender field is 4 hex digits.
pub const MAX_SENDERS: usize = 0xffff;

/// Sent by sender 0 before measuring until every other connection has seen one: proof that the
/// server has registered every receiver, so no receiver misses the first measured lines.
pub const SYNC: &[u8] = b"~sync";

/// What a received line turned out to be.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Line {
    /// The sync line ([`SYNC`]).
    Sync,
    /// A data line: who sent it, its number in that sender's sequence, and when it was sent
    /// (ns since the run's epoch).
    Data {
        /// The sender.
        sender: u16,
        /// Its sequence number.
        seq: u64,
        /// Its send time.
        sent_ns: u64,
    },
}

/// Why a received line was rejected (each counts as one corrupted line).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum LineError {
    /// Shorter than a line, or no header where one should be.
    Malformed,
    /// The header parsed but the filler differs from what that sender sent: the line arrived,
    /// damaged (its sender and number are known, so it is not also counted as missing).
    Filler {
        /// The sender its header names.
        sender: u16,
        /// The sequence number its header carries.
        seq: u64,
    },
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LineError::Malformed => "malformed line",
            LineError::Filler { .. } => "line body differs from what was sent",
        })
    }
}

/// Append line `seq` of `sender`, stamped `sent_ns`, exactly `size` bytes, to `out`.
pub fn encode(
    filler: &Filler,
    sender: u16,
    seq: u64,
    sent_ns: u64,
    size: usize,
    out: &mut Vec<u8>,
) {
    debug_assert!((MIN_LINE..=MAX_LINE).contains(&size));
    out.extend_from_slice(b"~b");
    put_hex(out, sender as u64, 4);
    out.push(b'.');
    put_hex(out, seq, 12);
    out.push(b'.');
    put_hex(out, sent_ns, 16);
    out.push(b':');
    let mut offset = 0;
    while offset < size - MIN_LINE {
        let n = (size - MIN_LINE - offset).min(MAX_CHUNK);
        out.extend_from_slice(filler.slice(sender, seq, offset, n));
        offset += n;
    }
    out.push(b'\n');
}

/// Parse one received line (`line` without its newline) that should carry `size - 1` bytes of
/// ours at its end.
pub fn decode(filler: &Filler, line: &[u8], size: usize) -> Result<Line, LineError> {
    if line.ends_with(SYNC) {
        return Ok(Line::Sync);
    }
    let body = size - 1;
    if line.len() < body {
        return Err(LineError::Malformed);
    }
    let ours = &line[line.len() - body..];
    if &ours[..2] != b"~b" || ours[6] != b'.' || ours[19] != b'.' || ours[36] != b':' {
        return Err(LineError::Malformed);
    }
    let (Some(sender), Some(seq), Some(sent_ns)) = (
        parse_hex(&ours[2..6]),
        parse_hex(&ours[7..19]),
        parse_hex(&ours[20..36]),
    ) else {
        return Err(LineError::Malformed);
    };
    let sender = sender as u16;
    for (i, chunk) in ours[HEADER..].chunks(MAX_CHUNK).enumerate() {
        if chunk != filler.slice(sender, seq, i * MAX_CHUNK, chunk.len()) {
            return Err(LineError::Filler { sender, seq });
        }
    }
    Ok(Line::Data {
        sender,
        seq,
        sent_ns,
    })
}

fn filler_phase(sender: u16, seq: u64) -> usize {
    ((seq.wrapping_mul(40_503) + sender as u64 * 977) % PERIOD as u64) as usize
}

/// Map a pattern byte onto `!`..`~` (never a newline or a space).
fn printable(b: u8) -> u8 {
    33 + b % 94
}

fn put_hex(out: &mut Vec<u8>, v: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (4 * i)) & 0xf) as usize]);
    }
}

/// The value of each byte as a hex digit, or 0xff: a table lookup per digit instead of two
/// range comparisons (this runs 32 times per received line).
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

fn parse_hex(s: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in s {
        let d = HEX_VALUE[c as usize];
        if d == 0xff {
            return None;
        }
        v = v << 4 | d as u64;
    }
    Some(v)
}

// --- sequence checking ---

/// What one line's sequence number means for the receiver that got it.
#[derive(Debug, PartialEq, Eq)]
pub enum SeqOutcome {
    /// The next line expected.
    InOrder,
    /// Ahead of the next expected: this many lines before it are missing (for now).
    Gap(u64),
    /// A line that was missing arrived late: delivered, but out of order.
    Reordered,
    /// A line already delivered arrived again.
    Duplicate,
}

/// The most separate gaps remembered per sender. Past it the oldest gap is written off as lost:
/// memory stays bounded when a server drops lines all the time.
const MAX_GAPS: usize = 1024;

/// What one receiver has seen of one sender's lines: the next sequence number expected and the
/// gaps behind it. A line filling a gap is reordered; one that fills nothing is a duplicate;
/// whatever is still in a gap at the end is lost.
#[derive(Debug, Default, Clone)]
pub struct SeqTrack {
    next: u64,
    /// Missing sequence numbers as half-open ranges, oldest first, never overlapping.
    gaps: Vec<(u64, u64)>,
    /// Lines of gaps that were dropped to respect [`MAX_GAPS`]: lost for good.
    written_off: u64,
}

impl SeqTrack {
    /// Line `seq` arrived: what does it mean?
    pub fn observe(&mut self, seq: u64) -> SeqOutcome {
        if seq == self.next {
            self.next += 1;
            return SeqOutcome::InOrder;
        }
        if seq > self.next {
            let missing = seq - self.next;
            if self.gaps.len() == MAX_GAPS {
                let (a, b) = self.gaps.remove(0);
                self.written_off += b - a;
            }
            self.gaps.push((self.next, seq));
            self.next = seq + 1;
            return SeqOutcome::Gap(missing);
        }
        // Behind `next`: either it fills a gap or it was seen before.
        let Some(i) = self.gaps.iter().position(|&(a, b)| a <= seq && seq < b) else {
            return SeqOutcome::Duplicate;
        };
        let (a, b) = self.gaps[i];
        match (seq == a, seq + 1 == b) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 += 1,
            (false, true) => self.gaps[i].1 -= 1,
            (false, false) => {
                self.gaps[i].1 = seq;
                self.gaps.insert(i + 1, (seq + 1, b));
            }
        }
        SeqOutcome::Reordered
    }

    /// The next sequence number expected (every line below it was seen or is in a gap).
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Lines missing so far: in gaps, or written off.
    #[cfg(test)]
    pub fn missing(&self) -> u64 {
        self.written_off + self.gaps.iter().map(|&(a, b)| b - a).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filler() -> Filler {
        Filler::new(&Pattern::new())
    }

    fn line(p: &Filler, sender: u16, seq: u64, ts: u64, size: usize) -> Vec<u8> {
        let mut v = Vec::new();
        encode(p, sender, seq, ts, size, &mut v);
        v
    }

    #[test]
    fn test_encoded_lines_have_the_exact_size_and_one_newline() {
        let p = filler();
        for size in [MIN_LINE, 64, 1000, MAX_LINE] {
            assert!(!line(&p, 3, 99, 12345, size)[..size - 1].contains(&b'\n'));
            let l = line(&p, 3, 99, 12345, size);
            assert_eq!(l.len(), size);
            assert_eq!(l.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(*l.last().unwrap(), b'\n');
        }
        assert_eq!(
            &line(&p, 1, 42, 0x1234_5678, MIN_LINE)[..],
            b"~b0001.00000000002a.0000000012345678:\n"
        );
    }

    #[test]
    fn test_decode_round_trips_and_ignores_a_server_prefix() {
        let p = filler();
        let l = line(&p, 7, 1 << 40, u64::MAX, 80);
        let want = Line::Data {
            sender: 7,
            seq: 1 << 40,
            sent_ns: u64::MAX,
        };
        assert_eq!(decode(&p, &l[..79], 80), Ok(want));
        let prefixed = [b"127.0.0.1:4242: ".as_slice(), &l[..79]].concat();
        assert_eq!(decode(&p, &prefixed, 80), Ok(want));
        assert_eq!(decode(&p, b"~sync", 80), Ok(Line::Sync));
        assert_eq!(decode(&p, b"bob: ~sync", 80), Ok(Line::Sync));
    }

    #[test]
    fn test_decode_rejects_damaged_lines() {
        let p = filler();
        let l = line(&p, 2, 5, 77, 64);
        let body = &l[..63];
        assert_eq!(decode(&p, &body[1..], 64), Err(LineError::Malformed));
        let mut flipped = body.to_vec();
        flipped[50] ^= 0x01;
        let damaged = LineError::Filler { sender: 2, seq: 5 };
        assert_eq!(decode(&p, &flipped, 64), Err(damaged));
        let mut bad_hex = body.to_vec();
        bad_hex[10] = b'g';
        assert_eq!(decode(&p, &bad_hex, 64), Err(LineError::Malformed));
        // Another line's filler under this header (a spliced line) is caught.
        let other = line(&p, 2, 6, 77, 64);
        let spliced = [&body[..HEADER], &other[HEADER..63]].concat();
        assert_eq!(decode(&p, &spliced, 64), Err(damaged));
    }

    #[test]
    fn test_seq_track_in_order_then_gap_then_late_arrivals() {
        let mut t = SeqTrack::default();
        assert_eq!(t.observe(0), SeqOutcome::InOrder);
        assert_eq!(t.observe(1), SeqOutcome::InOrder);
        assert_eq!(t.observe(5), SeqOutcome::Gap(3)); // 2, 3, 4 missing
        assert_eq!(t.missing(), 3);
        assert_eq!(t.observe(3), SeqOutcome::Reordered); // splits the gap
        assert_eq!(t.observe(3), SeqOutcome::Duplicate);
        assert_eq!(t.observe(2), SeqOutcome::Reordered);
        assert_eq!(t.missing(), 1);
        assert_eq!(t.observe(1), SeqOutcome::Duplicate);
        assert_eq!(t.observe(5), SeqOutcome::Duplicate);
        assert_eq!(t.observe(4), SeqOutcome::Reordered);
        assert_eq!(t.missing(), 0);
        assert_eq!(t.next(), 6);
    }

    #[test]
    fn test_seq_track_memory_is_bounded_and_overflow_counts_as_lost() {
        let mut t = SeqTrack::default();
        for i in 0..(MAX_GAPS as u64 + 10) {
            assert_eq!(t.observe(i * 2 + 1), SeqOutcome::Gap(1));
        }
        assert_eq!(t.gaps.len(), MAX_GAPS);
        assert_eq!(t.missing(), MAX_GAPS as u64 + 10);
        // A written-off line arriving late is indistinguishable from a duplicate.
        assert_eq!(t.observe(0), SeqOutcome::Duplicate);
    }
}
