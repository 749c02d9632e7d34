//! The hash that proves a file arrived whole: the two algorithms, a streaming hasher over either,
//! and the server's final line `done <BYTES> <ALG>:<HEX>`, written and read.
//!
//! ```text
//! done 5 blake3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f
//! done 5 sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
//! done 5 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824     (older servers)
//! ```
//!
//! Why two algorithms: the hash runs over every byte on both ends, so its speed is a large part
//! of the cost of a transfer. SHA-256, even with the CPU's SHA extensions, runs at 1.75 GB/s on
//! one core here; BLAKE3 uses the vector units (AVX-512/AVX2 on x86) and runs at 7.3 GB/s, four
//! times faster (`cargo bench --bench hash`, 64 KiB slices), so it is the default (`serve --hash
//! blake3`). SHA-256 stays available (`serve --hash sha256`) for people who check a stored file
//! with `sha256sum`; a BLAKE3 one is checked with `b3sum`. Both give 32 bytes, printed as 64
//! lowercase hex digits, exactly as `sha256sum` and `b3sum` print them.
//!
//! The line names its algorithm so a sender never has to guess; the old form without a name
//! (servers before the algorithm was chosen) is read as SHA-256, which is what it was.
//!
//! This module is pure: it hashes bytes it is given and formats or parses one line.

use std::fmt;

use sha2::Digest as _;

/// A hash algorithm the files service can confirm a transfer with.
///
/// The names are the ones on the wire and on the command line (`--hash blake3`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Algorithm {
    /// BLAKE3 (`b3sum`): several GB/s on one core with SIMD. The default.
    #[default]
    Blake3,
    /// SHA-256 (`sha256sum`): slower, but checkable with tools found everywhere.
    Sha256,
}

impl Algorithm {
    /// Every algorithm, in order of preference.
    pub const ALL: [Algorithm; 2] = [Algorithm::Blake3, Algorithm::Sha256];

    /// The name on the wire: `blake3`, `sha256`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Blake3 => "blake3",
            Algorithm::Sha256 => "sha256",
        }
    }

    /// The algorithm a wire name stands for (exact, lowercase: the line is machine-written).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Both algorithms give 32 bytes.
pub const DIGEST_LEN: usize = 32;

/// A finished hash and the algorithm that made it. `Display` gives `blake3:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    /// Which hash.
    pub algorithm: Algorithm,
    /// The hash itself.
    pub bytes: [u8; DIGEST_LEN],
}

impl Digest {
    /// The hash alone, as `b3sum` or `sha256sum` prints it: 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        hex(&self.bytes)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A running hash of either algorithm: feed it the bytes in any pieces, then `finalize`.
///
/// The pieces do not matter (the digest of `ab` fed as `a` then `b` is the digest of `ab`),
/// which is what lets both ends hash a stream however TCP or the disk cut it.
#[derive(Clone)]
// A BLAKE3 state is ~1.9 KB (its stack of chaining values), a SHA-256 one ~100 bytes. One hasher
// lives per transfer, inside a boxed transfer on the server and once in the sender: boxing the
// large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Hasher {
    /// BLAKE3 (SIMD).
    Blake3(blake3::Hasher),
    /// SHA-256 (with the CPU's SHA extensions where it has them).
    Sha256(sha2::Sha256),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Blake3 => Hasher::Blake3(blake3::Hasher::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// Which hash this is.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Blake3(_) => Algorithm::Blake3,
            Hasher::Sha256(_) => Algorithm::Sha256,
        }
    }

    /// Feed the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            // BLAKE3 hashes 1 KiB chunks side by side in vector registers (16 at once with
            // AVX-512), so it is fastest fed large slices: the server's reads (64 KiB to 1 MiB)
            // and the sender's chunks (256 KiB) are.
            Hasher::Blake3(h) => {
                h.update(data);
            }
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// The hash of everything fed.
    pub fn finalize(self) -> Digest {
        let algorithm = self.algorithm();
        let bytes: [u8; DIGEST_LEN] = match self {
            Hasher::Blake3(h) => *h.finalize().as_bytes(),
            Hasher::Sha256(h) => h.finalize().into(),
        };
        Digest { algorithm, bytes }
    }
}

/// Hash `data` in one go.
pub fn hash(algorithm: Algorithm, data: &[u8]) -> Digest {
    let mut h = Hasher::new(algorithm);
    h.update(data);
    h.finalize()
}

/// The server's final line: the file is stored, this many bytes, with this hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    /// The byte count the server stored.
    pub bytes: u64,
    /// The hash of what it stored.
    pub digest: Digest,
}

impl Done {
    /// The line as sent, newline included: `done 5 blake3:<hex>\n`.
    pub fn line(&self) -> String {
        format!("{self}\n")
    }

    /// Read a `done` line (its trailing `\n` or `\r\n` optional). Accepts
    /// `done <BYTES> <ALG>:<HEX64>` and the older `done <BYTES> <HEX64>`, which is SHA-256.
    pub fn parse(line: &str) -> Result<Done, DoneError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut fields = line.split(' ');
        let (Some("done"), Some(bytes), Some(hash), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(if line.starts_with("done") {
                DoneError::Malformed
            } else {
                DoneError::NotDone
            });
        };
        // `u64::from_str` would take a leading '+'; the line is decimal digits only.
        if bytes.is_empty() || !bytes.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DoneError::BadCount);
        }
        let bytes = bytes.parse().map_err(|_| DoneError::BadCount)?;
        let (algorithm, hex) = match hash.split_once(':') {
            Some((name, hex)) => (
                Algorithm::from_name(name)
                    .ok_or_else(|| DoneError::UnknownAlgorithm(name.to_string()))?,
                hex,
            ),
            None => (Algorithm::Sha256, hash),
        };
        let digest = Digest {
            algorithm,
            bytes: parse_hex(hex).ok_or(DoneError::BadHash)?,
        };
        Ok(Done { bytes, digest })
    }

    /// Does this line confirm that `bytes` bytes with `digest` were stored? The algorithms must
    /// agree too: a digest of one is never compared with the other's.
    pub fn confirms(&self, bytes: u64, digest: &Digest) -> bool {
        self.bytes == bytes && self.digest == *digest
    }
}

impl fmt::Display for Done {
    /// The line without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "done {} {}", self.bytes, self.digest)
    }
}

/// Why a line is not a `done` line we can check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DoneError {
    /// It does not start with `done` (an `error: ...` line, or something else entirely).
    NotDone,
    /// Not `done <BYTES> <HASH>`.
    Malformed,
    /// The byte count is not a decimal number that fits in 64 bits.
    BadCount,
    /// `<ALG>:` names an algorithm this program does not know.
    UnknownAlgorithm(String),
    /// The hash is not 64 hex digits.
    BadHash,
}

impl fmt::Display for DoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DoneError::NotDone => f.write_str("not a 'done' line"),
            DoneError::Malformed => f.write_str("expected 'done <BYTES> <ALG>:<HEX>'"),
            DoneError::BadCount => f.write_str("the byte count is not a number"),
            DoneError::UnknownAlgorithm(name) => {
                write!(f, "unknown hash algorithm {name:?} (known: blake3, sha256)")
            }
            DoneError::BadHash => f.write_str("the hash is not 64 hex digits"),
        }
    }
}

/// Lowercase hex, as `sha256sum` and `b3sum` print it.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// 64 hex digits (either case) to 32 bytes.
fn parse_hex(s: &str) -> Option<[u8; DIGEST_LEN]> {
    let s = s.as_bytes();
    if s.len() != DIGEST_LEN * 2 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0; DIGEST_LEN];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published digests of the empty input and of "hello" (`printf hello | b3sum`,
    // `printf hello | sha256sum`): the crates are checked against the standard, not themselves.
    const BLAKE3_EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    const BLAKE3_HELLO: &str = "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f";
    const SHA256_EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const SHA256_HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    // --- hashing ---

    #[test]
    fn test_known_digests() {
        assert_eq!(hash(Algorithm::Blake3, b"").hex(), BLAKE3_EMPTY);
        assert_eq!(hash(Algorithm::Blake3, b"hello").hex(), BLAKE3_HELLO);
        assert_eq!(hash(Algorithm::Sha256, b"").hex(), SHA256_EMPTY);
        assert_eq!(hash(Algorithm::Sha256, b"hello").hex(), SHA256_HELLO);
        assert_eq!(
            hash(Algorithm::Blake3, b"hello").to_string(),
            format!("blake3:{BLAKE3_HELLO}")
        );
    }

    #[test]
    fn test_pieces_do_not_change_the_digest() {
        // Long enough to span many BLAKE3 chunks (1 KiB) and SIMD batches.
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for algorithm in Algorithm::ALL {
            let whole = hash(algorithm, &data);
            for piece in [1, 63, 1024, 1025, 65_536, 100_000] {
                let mut h = Hasher::new(algorithm);
                for chunk in data.chunks(piece) {
                    h.update(chunk);
                }
                assert_eq!(h.finalize(), whole, "{algorithm}, pieces of {piece}");
            }
        }
    }

    #[test]
    fn test_algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.name()), Some(a));
        }
        assert_eq!(Algorithm::from_name("BLAKE3"), None);
        assert_eq!(Algorithm::from_name("md5"), None);
        assert_eq!(Algorithm::default(), Algorithm::Blake3);
    }

    // --- the done line ---

    #[test]
    fn test_done_line_format() {
        let done = Done {
            bytes: 5,
            digest: hash(Algorithm::Blake3, b"hello"),
        };
        assert_eq!(done.line(), format!("done 5 blake3:{BLAKE3_HELLO}\n"));
        let done = Done {
            bytes: 0,
            digest: hash(Algorithm::Sha256, b""),
        };
        assert_eq!(done.line(), format!("done 0 sha256:{SHA256_EMPTY}\n"));
    }

    #[test]
    fn test_done_line_parses_back() {
        for algorithm in Algorithm::ALL {
            let done = Done {
                bytes: u64::MAX,
                digest: hash(algorithm, b"x"),
            };
            assert_eq!(Done::parse(&done.line()), Ok(done));
            assert_eq!(Done::parse(&done.to_string()), Ok(done), "without newline");
            assert_eq!(Done::parse(&format!("{done}\r\n")), Ok(done), "CRLF");
        }
    }

    #[test]
    fn test_old_form_without_algorithm_is_sha256() {
        let done = Done::parse(&format!("done 5 {SHA256_HELLO}\n")).unwrap();
        assert_eq!(done.bytes, 5);
        assert_eq!(done.digest, hash(Algorithm::Sha256, b"hello"));
        // Upper-case hex is the same hash.
        let upper = Done::parse(&format!("done 5 {}", SHA256_HELLO.to_uppercase())).unwrap();
        assert_eq!(upper, done);
    }

    #[test]
    fn test_confirms_only_the_same_count_hash_and_algorithm() {
        let sent = hash(Algorithm::Blake3, b"hello");
        let done = Done::parse(&format!("done 5 blake3:{BLAKE3_HELLO}")).unwrap();
        assert!(done.confirms(5, &sent));
        assert!(!done.confirms(4, &sent), "byte count differs");
        assert!(
            !done.confirms(5, &hash(Algorithm::Blake3, b"hellO")),
            "hash differs"
        );
        // The same 32 bytes under another algorithm's name confirm nothing.
        let relabelled = Digest {
            algorithm: Algorithm::Sha256,
            bytes: sent.bytes,
        };
        assert!(!done.confirms(5, &relabelled));
    }

    #[test]
    fn test_unknown_algorithm_is_named() {
        let err = Done::parse(&format!("done 5 md5:{BLAKE3_HELLO}")).unwrap_err();
        assert_eq!(err, DoneError::UnknownAlgorithm("md5".into()));
        assert!(err.to_string().contains("\"md5\""), "{err}");
    }

    #[test]
    fn test_malformed_done_lines() {
        let h = BLAKE3_HELLO;
        let cases: &[(String, DoneError)] = &[
            (String::new(), DoneError::NotDone),
            ("error: file exists\n".into(), DoneError::NotDone),
            ("ok".into(), DoneError::NotDone),
            ("done".into(), DoneError::Malformed),
            ("done 5".into(), DoneError::Malformed),
            (format!("done 5 blake3:{h} extra"), DoneError::Malformed),
            (format!("done  5 blake3:{h}"), DoneError::Malformed),
            (format!("done5 blake3:{h}"), DoneError::Malformed),
            (format!("done -5 blake3:{h}"), DoneError::BadCount),
            (format!("done +5 blake3:{h}"), DoneError::BadCount),
            (
                format!("done 99999999999999999999 blake3:{h}"),
                DoneError::BadCount,
            ),
            ("done 5 blake3:abc".into(), DoneError::BadHash),
            (format!("done 5 blake3:{h}0"), DoneError::BadHash),
            (
                format!("done 5 blake3:{}", "g".repeat(64)),
                DoneError::BadHash,
            ),
            ("done 5 blake3:".into(), DoneError::BadHash),
            (
                format!("done 5 :{h}"),
                DoneError::UnknownAlgorithm(String::new()),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(Done::parse(line).as_ref(), Err(want), "{line:?}");
        }
    }

    #[test]
    fn test_hex_is_lowercase_and_round_trips() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        let d = hash(Algorithm::Sha256, b"hello");
        assert_eq!(parse_hex(&d.hex()), Some(d.bytes));
    }
}
