//! The bytes the echo and UDP modes send, and the check that what comes back is exactly them.
//!
//! An echo server may split and merge writes as it likes, so the echo mode cannot send
//! self-describing messages and parse them back: it sends one long byte stream per connection and
//! checks every returned byte against the byte it sent at that offset. The stream is a slice of a
//! fixed pseudo-random table whose length is a prime ([`PERIOD`]), started at a different offset
//! on each connection. Because the period shares no factor with any message size, a chunk that is
//! lost, duplicated or returned out of place lands on different bytes and fails the comparison —
//! the check catches reordering, not only flipped bits.
//!
//! Pure: no I/O, no clock.

/// The pattern repeats every `PERIOD` bytes; prime, so it is coprime to every message size.
pub const PERIOD: usize = 65_521;

/// The longest slice [`Pattern::slice`] hands out: the writers and the read buffer use chunks of
/// at most this size.
pub const MAX_CHUNK: usize = 64 * 1024;

/// The shared, read-only pattern table: `PERIOD` bytes followed by a copy of the first
/// `MAX_CHUNK`, so that any slice of up to `MAX_CHUNK` bytes at any phase is contiguous and can be
/// written or compared without copying.
pub struct Pattern {
    table: Box<[u8]>,
}

impl Default for Pattern {
    fn default() -> Self {
        Self::new()
    }
}

impl Pattern {
    /// Build the table (128 KiB, computed once per run).
    pub fn new() -> Pattern {
        let mut table = vec![0u8; PERIOD + MAX_CHUNK];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for b in table.iter_mut().take(PERIOD) {
            // xorshift64*: cheap, and no short cycles that could hide a misplaced chunk.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            *b = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
        }
        // The tail repeats the start, byte i being byte i - PERIOD. Not one `copy_within`: the
        // tail (MAX_CHUNK) is longer than the period, so its last 15 bytes repeat bytes of the
        // tail itself — copied in one go from the table's unfilled end they were zeros, and a
        // 64 KiB slice starting in the last 15 phases was wrong (a false `corrupt` on large
        // echo messages, whose writes and reads are 64 KiB at arbitrary phases).
        for i in PERIOD..table.len() {
            table[i] = table[i - PERIOD];
        }
        Pattern {
            table: table.into_boxed_slice(),
        }
    }

    /// `len` bytes (at most [`MAX_CHUNK`]) of the stream that starts at phase `base`, from byte
    /// `offset` of that stream on.
    pub fn slice(&self, base: usize, offset: u64, len: usize) -> &[u8] {
        debug_assert!(len <= MAX_CHUNK);
        let start = ((base as u64 + offset) % PERIOD as u64) as usize;
        &self.table[start..start + len]
    }

    /// `len` bytes of the stream at phase `base` from byte `offset` on, in a new buffer of any
    /// length (the tests' payloads: megabytes that must arrive exactly).
    pub fn stream(&self, base: usize, offset: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = (len - out.len()).min(MAX_CHUNK);
            out.extend_from_slice(self.slice(base, offset + out.len() as u64, n));
        }
        out
    }

    /// Does `got` equal the stream at phase `base` from byte `offset` on? Any length.
    pub fn matches(&self, base: usize, offset: u64, got: &[u8]) -> bool {
        got.chunks(MAX_CHUNK).enumerate().all(|(i, chunk)| {
            chunk == self.slice(base, offset + (i * MAX_CHUNK) as u64, chunk.len())
        })
    }
}

/// The phase of connection `id`'s stream: spread over the table so neighbouring connections never
/// send the same bytes (a reply delivered to the wrong connection fails the check).
pub fn phase_of(id: usize) -> usize {
    // 40_503 is coprime to PERIOD, so ids 0..PERIOD get distinct phases.
    (id.wrapping_mul(40_503)) % PERIOD
}

// --- UDP datagrams ---

/// A UDP datagram starts with its sequence number (8 bytes, little-endian) and the id of the
/// socket that sent it (4 bytes); the rest is pattern bytes chosen by both, so a datagram that is
/// truncated, padded, altered or delivered to the wrong socket fails [`check_datagram`].
pub const DATAGRAM_HEADER: usize = 12;

/// Fill `buf` (its whole length, at least [`DATAGRAM_HEADER`]) with datagram `seq` of socket
/// `socket`.
pub fn fill_datagram(pattern: &Pattern, socket: u32, seq: u64, buf: &mut [u8]) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..12].copy_from_slice(&socket.to_le_bytes());
    let body = &mut buf[DATAGRAM_HEADER..];
    let len = body.len();
    body.copy_from_slice(pattern.slice(datagram_phase(socket, seq), 0, len));
}

/// Why a received datagram was rejected. Where its header still reads, the sequence number it
/// carries is given, so the datagram it answers is accounted for once (as corrupt, not also as
/// lost).
#[derive(Debug, PartialEq, Eq)]
pub enum DatagramError {
    /// Not the size sent, or shorter than a header.
    Size {
        /// The sequence number, if the header is whole.
        seq: Option<u64>,
    },
    /// Sent by another socket (the server answered the wrong peer).
    WrongSocket,
    /// The body differs from what was sent.
    Corrupt {
        /// The sequence number it carries.
        seq: u64,
    },
}

impl DatagramError {
    /// The sequence number of the datagram this reply answers, if it can be told.
    pub fn seq(&self) -> Option<u64> {
        match *self {
            DatagramError::Size { seq } => seq,
            DatagramError::Corrupt { seq } => Some(seq),
            DatagramError::WrongSocket => None,
        }
    }
}

/// Check a datagram that came back to socket `socket`, expecting `size` bytes; returns its
/// sequence number.
pub fn check_datagram(
    pattern: &Pattern,
    socket: u32,
    size: usize,
    got: &[u8],
) -> Result<u64, DatagramError> {
    if got.len() < DATAGRAM_HEADER {
        return Err(DatagramError::Size { seq: None });
    }
    let seq = u64::from_le_bytes(got[..8].try_into().expect("8 bytes"));
    let from = u32::from_le_bytes(got[8..12].try_into().expect("4 bytes"));
    if from != socket {
        return Err(DatagramError::WrongSocket);
    }
    if got.len() != size {
        return Err(DatagramError::Size { seq: Some(seq) });
    }
    if !pattern.matches(datagram_phase(socket, seq), 0, &got[DATAGRAM_HEADER..]) {
        return Err(DatagramError::Corrupt { seq });
    }
    Ok(seq)
}

fn datagram_phase(socket: u32, seq: u64) -> usize {
    ((seq.wrapping_mul(7_717) ^ (socket as u64).wrapping_mul(104_729)) % PERIOD as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_slices_wrap_around_the_period_seamlessly() {
        let p = Pattern::new();
        let whole: Vec<u8> = (0..PERIOD as u64 + 100)
            .map(|i| p.slice(7, i, 1)[0])
            .collect();
        assert_eq!(
            p.slice(7, PERIOD as u64 - 10, 20),
            &whole[PERIOD - 10..PERIOD + 10]
        );
        assert_eq!(&whole[..100], &whole[PERIOD..PERIOD + 100]);
    }

    #[test]
    fn test_full_length_slices_at_the_last_phases_are_the_stream() {
        let p = Pattern::new();
        // One period, byte by byte: the reference every slice must agree with.
        let period: Vec<u8> = (0..PERIOD as u64).map(|i| p.slice(0, i, 1)[0]).collect();
        let stream = |from: usize, len: usize| -> Vec<u8> {
            (from..from + len).map(|i| period[i % PERIOD]).collect()
        };
        for phase in (0..64).chain(PERIOD - 64..PERIOD) {
            assert!(
                p.slice(0, phase as u64, MAX_CHUNK) == stream(phase, MAX_CHUNK),
                "the {MAX_CHUNK}-byte slice at phase {phase} is not the stream"
            );
        }
    }

    #[test]
    fn test_matches_accepts_the_stream_split_anywhere() {
        let p = Pattern::new();
        let stream: Vec<u8> = p.slice(3, 0, 5000).to_vec();
        assert!(p.matches(3, 0, &stream));
        // A short read: any prefix, then the rest at its offset.
        assert!(p.matches(3, 0, &stream[..1]));
        assert!(p.matches(3, 1, &stream[1..]));
        // Lengths beyond one chunk are compared chunk by chunk.
        let long = p.stream(3, 0, 3 * MAX_CHUNK + 5);
        assert!(p.matches(3, 0, &long));
        assert!(p.matches(3, 100, &p.stream(3, 100, PERIOD * 2)));
        assert_eq!(&p.stream(3, 7, 10)[..], p.slice(3, 7, 10));
    }

    #[test]
    fn test_matches_catches_flips_drops_and_misplaced_chunks() {
        let p = Pattern::new();
        let stream = p.slice(0, 0, 256).to_vec();
        let mut flipped = stream.clone();
        flipped[100] ^= 1;
        assert!(!p.matches(0, 0, &flipped));
        // A dropped 64-byte message shifts the rest onto the wrong offsets.
        let dropped = [&stream[..64], &stream[128..]].concat();
        assert!(!p.matches(0, 0, &dropped));
        // Two messages swapped.
        let swapped = [&stream[64..128], &stream[..64], &stream[128..]].concat();
        assert!(!p.matches(0, 0, &swapped));
        // Another connection's bytes.
        assert!(!p.matches(phase_of(1), 0, &stream));
    }

    #[test]
    fn test_phases_are_distinct_for_neighbouring_connections() {
        let phases: std::collections::HashSet<usize> = (0..20_000).map(phase_of).collect();
        assert_eq!(phases.len(), 20_000);
    }

    #[test]
    fn test_datagrams_round_trip_and_reject_damage() {
        let p = Pattern::new();
        let mut buf = vec![0; 64];
        fill_datagram(&p, 5, 42, &mut buf);
        assert_eq!(check_datagram(&p, 5, 64, &buf), Ok(42));
        assert_eq!(
            check_datagram(&p, 6, 64, &buf),
            Err(DatagramError::WrongSocket)
        );
        let short = DatagramError::Size { seq: Some(42) };
        assert_eq!(check_datagram(&p, 5, 65, &buf), Err(short));
        assert_eq!(
            check_datagram(&p, 5, 64, &buf[..63]).unwrap_err().seq(),
            Some(42)
        );
        assert_eq!(
            check_datagram(&p, 5, 64, &buf[..11]),
            Err(DatagramError::Size { seq: None })
        );
        buf[40] ^= 0x80;
        assert_eq!(
            check_datagram(&p, 5, 64, &buf),
            Err(DatagramError::Corrupt { seq: 42 })
        );
        // The smallest datagram is a bare header.
        let mut tiny = vec![0; DATAGRAM_HEADER];
        fill_datagram(&p, 1, 7, &mut tiny);
        assert_eq!(check_datagram(&p, 1, DATAGRAM_HEADER, &tiny), Ok(7));
    }
}
