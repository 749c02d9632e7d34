//! File transfer, receiving side: the seeds' protocol, made safe.
//!
//! ```text
//! client                                     server
//!   NAME            (seed form: no newline)    ─┐
//!   NAME\n          (seed form, newline-ended)  ├  the header
//!   "<SIZE> <NAME>\n" (framed form)            ─┘
//!                                            <─  "ok"  (exactly two bytes), or "error: ...\n"
//!   content ... then close / half-close       ─>
//!                                            <─  "done <BYTES> <ALG>:<HEX>\n", or "error: ...\n"
//! ```
//!
//! The seeds' Go sender writes the bare name and waits for "ok"; with no delimiter, the only
//! sign that the name is complete is that the sender goes quiet. resound's own sender uses the
//! framed header, which carries the size, so that a transfer cut short — even by an orderly
//! close — is detected, and a newline, so that the header's end is explicit. A name ended by a
//! newline and no size (`notes.txt\n`) is the nc habit, `(printf 'notes.txt\n'; cat notes.txt)
//! | nc -N host 7002`, and what `resound send -` sends for a stream of unknown length: like the
//! bare name, its content runs until EOF, but its end needs no silence. `ALG` in the final line
//! is `blake3` or `sha256` (`serve --hash`; see [`crate::digest`]).
//!
//! Telling the forms apart without ever misreading a header split across TCP segments:
//! * a line that starts with digits and a space (`2024 notes.txt\n`) is a framed header;
//! * any other line ending in `\n` is a newline-ended seed name (`notes.txt\n`, `12345\n`);
//! * bytes without a newline that cannot become a framed header (`photo.jpg`) followed by
//!   [`SEED_SILENCE`] (100 ms) of silence are a seed-form name;
//! * bytes without a newline that could still become one (digits, then a space and more:
//!   `2024 notes.txt`, `12345`) are taken as a seed-form name only after
//!   [`MAYBE_FRAMED_SILENCE`] (1 s) of silence, or when the header timeout expires with at least
//!   100 ms of silence, whichever comes first.
//!
//! The silence counts from the last byte received, not from the connect, and the parser itself
//! never looks at time: the same bytes give the same answer however TCP split them. So a framed
//! header is misread only if its sender goes silent for a whole second in the middle of it —
//! which `resound send` cannot do: it writes its header (at most [`MAX_HEADER`] bytes) with one
//! `write`, in one segment. The price of the second is paid only by seed names that start with
//! digits and a space, or are all digits.
//!
//! This module decides (the [`Transfer`] machine, behind the one [`Service`] interface);
//! `storage.rs` touches the disk; the loop moves the bytes.

use std::fmt;
use std::time::{Duration, Instant};

use log::info;

use super::{Action, Cx, OnStop, Service, Shared};
use crate::digest::{self, Done, Hasher};
use crate::lifecycle::CloseReason;
use crate::storage::{RESERVED_PREFIX, Store, Upload};

/// The longest file name accepted (the common filesystem limit, in bytes).
pub const MAX_NAME: usize = 255;

/// The most digits a size may have (u64::MAX has 20).
const MAX_DIGITS: usize = 20;

/// A header, newline included, can be no longer than this: 20 digits, a space, a name, "\r\n".
pub const MAX_HEADER: usize = MAX_DIGITS + 1 + MAX_NAME + 2;

/// How long a name without a newline must be followed by silence to count as a seed-form name.
/// The seeds' sender writes its name in one `write` and then waits: on any network that
/// delivers a name within a tenth of a second, 100 ms only adds a tenth to its start.
pub const SEED_SILENCE: Duration = Duration::from_millis(100);

/// The same for bytes that could still become a framed header (`2024 notes.txt`, `12345`):
/// longer, because misreading the first part of a split framed header as a name would store
/// the rest of the header as content. One second is past any pause between the segments of one
/// small `write`, short of a retransmission on a very slow link; and a seed sender whose name
/// happens to start with digits waits a second for its `ok` instead of the whole header timeout.
pub const MAYBE_FRAMED_SILENCE: Duration = Duration::from_secs(1);

/// The reply that lets the sender stream. Exactly two bytes: the seeds' sender compares the
/// reply with "ok".
pub const OK: &[u8] = b"ok";

/// Why a name is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// Nothing at all.
    Empty,
    /// `.` or `..`.
    Dots,
    /// A `/` or a backslash: not a base name.
    Separator,
    /// A NUL byte, which would cut the name short in C.
    Nul,
    /// C0 controls, DEL, C1 controls: escape sequences for someone's terminal.
    Control,
    /// Bidirectional text controls: `invoice\u{202E}txt.exe` shows as `invoiceexe.txt`.
    Bidi,
    /// Nothing but whitespace (or invisible characters): a name no one can see or type.
    Blank,
    /// More than 255 bytes.
    TooLong,
    /// Not UTF-8.
    NotUtf8,
    /// `.resound-*`: the server's own names (its temporaries, the old partial directory).
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameError::Empty => "invalid name: empty",
            NameError::Dots => "invalid name: '.' and '..' are not file names",
            NameError::Separator => "invalid name: must be a base name, without '/' or '\\'",
            NameError::Nul => "invalid name: contains a NUL byte",
            NameError::Control => "invalid name: contains control characters",
            NameError::Bidi => "invalid name: contains bidirectional text controls",
            NameError::Blank => "invalid name: only whitespace or invisible characters",
            NameError::TooLong => "invalid name: longer than 255 bytes",
            NameError::NotUtf8 => "invalid name: not UTF-8",
            NameError::Reserved => "invalid name: names starting with .resound- are reserved",
        })
    }
}

/// Accept only a plain base name: nothing that could leave the directory, hide a NUL from C,
/// smuggle escape sequences into someone's terminal, or show a reader something other than
/// what it is.
pub fn validate_name(raw: &[u8]) -> Result<&str, NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > MAX_NAME {
        return Err(NameError::TooLong);
    }
    if raw == b"." || raw == b".." {
        return Err(NameError::Dots);
    }
    if raw.contains(&b'/') || raw.contains(&b'\\') {
        return Err(NameError::Separator);
    }
    if raw.contains(&0) {
        return Err(NameError::Nul);
    }
    // C0 controls and DEL are single bytes; C1 controls (U+0080-U+009F) are characters,
    // checked once the bytes are known to be UTF-8. (A raw byte 0x9B, the 8-bit CSI, is not
    // UTF-8 at all.)
    if raw.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(NameError::Control);
    }
    let name = std::str::from_utf8(raw).map_err(|_| NameError::NotUtf8)?;
    if name.chars().any(|c| c.is_control()) {
        return Err(NameError::Control);
    }
    if name.chars().any(is_bidi_control) {
        return Err(NameError::Bidi);
    }
    if name.chars().all(is_blank) {
        return Err(NameError::Blank);
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(NameError::Reserved);
    }
    Ok(name)
}

/// Unicode's Bidi_Control characters: ALM (U+061C), LRM and RLM (U+200E, U+200F), the
/// embeddings and overrides LRE..RLO (U+202A-U+202E), the isolates LRI..PDI (U+2066-U+2069).
/// Each reorders what a terminal or a file manager shows.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Whitespace (Unicode White_Space: spaces, no-break spaces, the typographic spaces) or a
/// character that shows nothing (zero-width space and joiners, word joiner, BOM).
fn is_blank(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// Why a header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The name is refused.
    Name(NameError),
    /// The size is not a decimal number that fits in 64 bits.
    BadSize,
    /// More bytes than any header can have, and no newline.
    TooLong,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Name(e) => e.fmt(f),
            HeaderError::BadSize => f.write_str("bad header: the size is not a decimal number"),
            HeaderError::TooLong => f.write_str("bad header: too long"),
        }
    }
}

/// What the header bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Header<'a> {
    /// No newline yet. `maybe_framed`: these bytes could still become a framed header.
    Incomplete {
        /// These bytes could still become a framed header.
        maybe_framed: bool,
    },
    /// A complete framed header; it took the first `len` bytes (newline included).
    Framed {
        /// The declared size.
        size: u64,
        /// The file's name.
        name: &'a str,
        /// Bytes the header took, newline included.
        len: usize,
    },
    /// A seed-form name ended by a newline (`NAME\n`, no size): the content runs until EOF.
    /// It took the first `len` bytes (newline included).
    NameLine {
        /// The file's name.
        name: &'a str,
        /// Bytes the line took, newline included.
        len: usize,
    },
    /// Refused.
    Invalid(HeaderError),
}

/// Parse the bytes received before the reply. Pure: the same bytes give the same answer
/// however TCP split them.
pub fn parse_header(buf: &[u8]) -> Header<'_> {
    // The length limit is checked the same way whether or not the newline has arrived, so a
    // header is judged the same however it was split.
    let Some(nl) = memchr::memchr(b'\n', &buf[..buf.len().min(MAX_HEADER)]) else {
        if buf.len() >= MAX_HEADER {
            return Header::Invalid(HeaderError::TooLong);
        }
        return Header::Incomplete {
            maybe_framed: could_be_framed(buf),
        };
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let len = nl + 1;
    let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
    // The framed shape is digits and a space; any other line is a name. (`12345\n` is a name:
    // without the space there is no size.)
    if digits == 0 || line.get(digits) != Some(&b' ') {
        return match validate_name(line) {
            Ok(name) => Header::NameLine { name, len },
            Err(e) => Header::Invalid(HeaderError::Name(e)),
        };
    }
    let (digits, name) = (&line[..digits], &line[digits + 1..]);
    if digits.len() > MAX_DIGITS {
        return Header::Invalid(HeaderError::BadSize);
    }
    let Some(size) = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
    else {
        return Header::Invalid(HeaderError::BadSize);
    };
    match validate_name(name) {
        Ok(name) => Header::Framed { size, name, len },
        Err(e) => Header::Invalid(HeaderError::Name(e)),
    }
}

/// Could `buf` be the start of `<SIZE> <NAME>\n`? Digits (at most 20), then optionally a space
/// and anything.
fn could_be_framed(buf: &[u8]) -> bool {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && digits <= MAX_DIGITS && (digits == buf.len() || buf[digits] == b' ')
}

/// How long a header without a newline must be followed by silence before it is taken as a
/// seed-form name: [`SEED_SILENCE`], or [`MAYBE_FRAMED_SILENCE`] for bytes that could still
/// become a framed header.
fn seed_silence(buf: &[u8]) -> Duration {
    if could_be_framed(buf) {
        MAYBE_FRAMED_SILENCE
    } else {
        SEED_SILENCE
    }
}

/// The limits a transfer is held to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest file accepted (`--max-file-size`).
    pub max_file_size: u64,
    /// The whole header must arrive within this time of the connect (`--header-timeout`).
    pub header_timeout: Duration,
    /// A transfer with no byte for this long is abandoned (`--transfer-timeout`), counted from
    /// the `ok` and then from each byte: the wait for the `ok` is the header's business.
    pub transfer_timeout: Duration,
    /// The hash in the `done` line (`--hash`).
    pub hash: digest::Algorithm,
}

/// What the loop must do after an input.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do yet.
    Continue,
    /// Send these bytes (the "ok").
    Reply(&'static [u8]),
    /// The file is stored: send `line` (`done <BYTES> <ALG>:<HEX>\n`).
    Done {
        /// The `done` line.
        line: String,
        /// The name stored.
        name: String,
        /// The bytes stored.
        bytes: u64,
    },
    /// Send `error: <reason>\n` and close through FIN-WAIT. Nothing is stored.
    Refuse(String),
}

/// One connection to the files service.
pub struct Transfer {
    stage: Stage,
    started: Instant,
    /// When the last byte arrived — or, once receiving, the `ok` was decided, if that is
    /// later: the seed-form silence counts from it, and so does the transfer timeout, which
    /// must not count the time a seed-form name waited for its `ok`.
    last_input: Instant,
}

// The whole `Transfer` is boxed in the connection's session, so the size difference between
// the stages costs one allocation per file connection, not per connection.
#[allow(clippy::large_enum_variant)]
enum Stage {
    /// Collecting the header (at most [`MAX_HEADER`] bytes).
    Header(Vec<u8>),
    /// "ok" sent; content goes to the upload.
    Receiving(Receiving),
    /// Done or refused: nothing more is accepted.
    Over,
}

struct Receiving {
    upload: Upload,
    name: String,
    /// The framed form's declared size; None for the seed form (EOF alone ends it).
    declared: Option<u64>,
    received: u64,
    hasher: Hasher,
}

/// The transfer machine's own interface, in the sans-IO manner of quinn-proto: inputs are
/// `handle_*` (bytes, EOF, a timer), each with `now`, each answering with an [`Outcome`]; when
/// to be woken next is [`Transfer::poll_deadline`]. No socket, no clock. The [`Service`]
/// implementation below is the only caller besides the tests.
impl Transfer {
    /// A connection that just arrived: waiting for its header.
    pub fn new(now: Instant) -> Transfer {
        Transfer {
            stage: Stage::Header(Vec::new()),
            started: now,
            last_input: now,
        }
    }

    /// Is content being received (the "ok" was sent)?
    pub fn is_receiving(&self) -> bool {
        matches!(self.stage, Stage::Receiving(_))
    }

    /// Bytes arrived.
    pub fn handle_input(
        &mut self,
        data: &[u8],
        now: Instant,
        store: &mut Store,
        limits: &Limits,
    ) -> Outcome {
        self.last_input = now;
        match &mut self.stage {
            Stage::Header(buf) => {
                // The parser never looks past MAX_HEADER bytes, so the buffer keeps no more
                // (and allocates no more). The rest of this read — content sent without
                // waiting for "ok", up to a whole 1 MiB read — goes to the content path
                // straight from `data`, never copied here.
                let take = data.len().min(MAX_HEADER - buf.len());
                let want = buf.len() + take;
                if want > buf.capacity() {
                    // Doubling, as a Vec grows, but never past MAX_HEADER.
                    let cap = (2 * buf.capacity()).max(want).clamp(16, MAX_HEADER);
                    buf.reserve_exact(cap - buf.len());
                }
                buf.extend_from_slice(&data[..take]);
                let rest = &data[take..];
                let buf = std::mem::take(buf);
                match parse_header(&buf) {
                    Header::Incomplete { .. } => {
                        // Incomplete means shorter than MAX_HEADER: all of `data` was taken.
                        debug_assert!(rest.is_empty());
                        self.stage = Stage::Header(buf);
                        Outcome::Continue
                    }
                    Header::Invalid(e) => self.refuse(e.to_string()),
                    Header::Framed { size, name, len } => {
                        if size > limits.max_file_size {
                            return self.refuse(too_large(limits));
                        }
                        if let Err(reason) = self.begin(name, Some(size), now, store, limits) {
                            return self.refuse(reason);
                        }
                        // A sender that did not wait for "ok" sent content already.
                        self.first_content(&buf[len..], rest, limits)
                    }
                    Header::NameLine { name, len } => {
                        // No size: like the bare name, the content runs until EOF, and the
                        // size limit is enforced as it arrives.
                        if let Err(reason) = self.begin(name, None, now, store, limits) {
                            return self.refuse(reason);
                        }
                        self.first_content(&buf[len..], rest, limits)
                    }
                }
            }
            Stage::Receiving(_) => self.receive(data, limits),
            Stage::Over => Outcome::Continue,
        }
    }

    /// The sender's FIN.
    pub fn handle_eof(&mut self) -> Outcome {
        match std::mem::replace(&mut self.stage, Stage::Over) {
            Stage::Header(buf) if buf.is_empty() => Outcome::Continue,
            Stage::Header(_) => Outcome::Refuse("incomplete header".into()),
            Stage::Over => Outcome::Continue,
            Stage::Receiving(r) => {
                if let Some(declared) = r.declared
                    && r.received < declared
                {
                    // Dropping the upload deletes what arrived.
                    return Outcome::Refuse(format!(
                        "short transfer: {} of {declared} bytes",
                        r.received
                    ));
                }
                let done = Done {
                    bytes: r.received,
                    digest: r.hasher.finalize(),
                };
                match r.upload.commit() {
                    Ok(()) => Outcome::Done {
                        line: done.line(),
                        name: r.name,
                        bytes: r.received,
                    },
                    Err(e) => Outcome::Refuse(e.to_string()),
                }
            }
        }
    }

    /// A timer fired. Called early (a spurious wake-up, a deadline that moved), it does
    /// nothing: every rule below checks its own time.
    pub fn handle_timer(&mut self, now: Instant, store: &mut Store, limits: &Limits) -> Outcome {
        match &self.stage {
            Stage::Header(buf) => {
                let expired = now >= self.started + limits.header_timeout;
                // Silent long enough for this kind of name; or, at the header timeout, silent
                // at all (a sender still trickling bytes then is a slowloris, refused below).
                let silent = now >= self.last_input + seed_silence(buf)
                    || (expired && now >= self.last_input + SEED_SILENCE);
                if !buf.is_empty() && silent {
                    return self.begin_seed(now, store, limits);
                }
                if expired {
                    return self.refuse("header timeout".into());
                }
                Outcome::Continue
            }
            Stage::Receiving(_) if now >= self.last_input + limits.transfer_timeout => {
                self.refuse("transfer timeout".into())
            }
            Stage::Receiving(_) | Stage::Over => Outcome::Continue,
        }
    }

    /// When [`Transfer::handle_timer`] should next be called.
    pub fn poll_deadline(&self, limits: &Limits) -> Option<Instant> {
        match &self.stage {
            Stage::Header(buf) => {
                let header = self.started + limits.header_timeout;
                if buf.is_empty() {
                    Some(header)
                } else {
                    Some(header.min(self.last_input + seed_silence(buf)))
                }
            }
            Stage::Receiving(_) => Some(self.last_input + limits.transfer_timeout),
            Stage::Over => None,
        }
    }

    /// The seed form: the whole header buffer is the name.
    fn begin_seed(&mut self, now: Instant, store: &mut Store, limits: &Limits) -> Outcome {
        let Stage::Header(buf) = std::mem::replace(&mut self.stage, Stage::Over) else {
            return Outcome::Continue;
        };
        let name = match validate_name(&buf) {
            Ok(name) => name,
            Err(e) => return self.refuse(e.to_string()),
        };
        match self.begin(name, None, now, store, limits) {
            Ok(()) => Outcome::Reply(OK),
            Err(reason) => self.refuse(reason),
        }
    }

    /// Create the temporary — before the `ok`, so that a directory that cannot take the file
    /// is said in the reply — and start receiving. The transfer timeout counts from `now`.
    fn begin(
        &mut self,
        name: &str,
        declared: Option<u64>,
        now: Instant,
        store: &mut Store,
        limits: &Limits,
    ) -> Result<(), String> {
        let upload = store.begin(name).map_err(|e| e.to_string())?;
        self.last_input = now;
        self.stage = Stage::Receiving(Receiving {
            upload,
            name: name.to_string(),
            declared,
            received: 0,
            hasher: Hasher::new(limits.hash),
        });
        Ok(())
    }

    /// The content that came with the header, in order: what followed the newline in the
    /// header buffer, then the rest of the read. `ok`, unless it already breaks a limit.
    fn first_content(&mut self, buffered: &[u8], rest: &[u8], limits: &Limits) -> Outcome {
        match self.receive(buffered, limits) {
            Outcome::Continue => {}
            refused => return refused,
        }
        match self.receive(rest, limits) {
            Outcome::Continue => Outcome::Reply(OK),
            refused => refused,
        }
    }

    /// Content bytes: checked against the limits, written, hashed.
    fn receive(&mut self, data: &[u8], limits: &Limits) -> Outcome {
        let Stage::Receiving(r) = &mut self.stage else {
            return Outcome::Continue;
        };
        if data.is_empty() {
            return Outcome::Continue;
        }
        let received = r.received + data.len() as u64;
        if r.declared.is_some_and(|declared| received > declared) {
            return self.refuse("more data than the declared size".into());
        }
        if received > limits.max_file_size {
            return self.refuse(too_large(limits));
        }
        if let Err(e) = r.upload.write(data) {
            return self.refuse(e.to_string());
        }
        r.hasher.update(data);
        r.received = received;
        Outcome::Continue
    }

    /// End the transfer with an error; whatever was written is deleted.
    fn refuse(&mut self, reason: String) -> Outcome {
        self.stage = Stage::Over;
        Outcome::Refuse(reason)
    }
}

/// The files service behind the one service interface: each input is handed to the transfer
/// machine above, and its [`Outcome`] becomes actions.
impl Service for Transfer {
    fn on_input(&mut self, data: &[u8], cx: &mut Cx<'_>) {
        let Some(store) = cx.shared.store.as_mut() else {
            return; // no files listener, so no files connection
        };
        let outcome = self.handle_input(data, cx.now, store, &cx.shared.file_limits);
        carry_out(outcome, cx);
    }

    fn on_eof(&mut self, cx: &mut Cx<'_>) {
        let outcome = self.handle_eof();
        carry_out(outcome, cx);
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) {
        // No deadline check here: before its deadline `handle_timer` answers `Continue`.
        let Some(store) = cx.shared.store.as_mut() else {
            return;
        };
        let outcome = self.handle_timer(cx.now, store, &cx.shared.file_limits);
        carry_out(outcome, cx);
    }

    fn deadline(&self, shared: &Shared) -> Option<Instant> {
        self.poll_deadline(&shared.file_limits)
    }

    fn on_stop(&self) -> OnStop {
        if self.is_receiving() {
            OnStop::Finish
        } else {
            OnStop::ServePending
        }
    }

    fn buffered(&self) -> usize {
        match &self.stage {
            Stage::Header(buf) => buf.capacity(),
            Stage::Receiving(_) | Stage::Over => 0,
        }
    }

    /// A client still sending its header is waiting for a reply: give it one.
    fn on_drained(&mut self, cx: &mut Cx<'_>) {
        cx.act(Action::Reply(b"error: server shutting down\n"));
    }
}

/// Turn what the transfer machine decided into actions, log lines and counters.
fn carry_out(outcome: Outcome, cx: &mut Cx<'_>) {
    match outcome {
        Outcome::Continue => {}
        Outcome::Reply(bytes) => cx.act(Action::Reply(bytes)),
        Outcome::Done { line, name, bytes } => {
            info!("conn {} {} stored {name:?} ({bytes} bytes)", cx.id, cx.peer);
            cx.shared.stats.files_stored += 1;
            cx.act(Action::Reply(line.as_bytes()));
        }
        Outcome::Refuse(reason) => {
            info!("conn {} {} file transfer refused: {reason}", cx.id, cx.peer);
            cx.shared.stats.files_refused += 1;
            cx.act(Action::Reply(format!("error: {reason}\n").as_bytes()));
            cx.act(Action::Close(CloseReason::Protocol(
                "file transfer refused",
            )));
        }
    }
}

fn too_large(limits: &Limits) -> String {
    format!(
        "file too large: the limit is {} bytes",
        limits.max_file_size
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use crate::storage::Temporaries;
    use crate::storage::tests::{TempDir, names_in};
    use std::fs;

    const LIMITS: Limits = Limits {
        max_file_size: 1000,
        header_timeout: Duration::from_secs(10),
        transfer_timeout: Duration::from_secs(60),
        hash: Algorithm::Blake3,
    };

    // --- names ---

    #[test]
    fn test_every_hostile_name_is_refused() {
        let cases: &[(&[u8], NameError)] = &[
            (b"", NameError::Empty),
            (b".", NameError::Dots),
            (b"..", NameError::Dots),
            (b"../etc/passwd", NameError::Separator),
            (b"/etc/passwd", NameError::Separator),
            (b"a/b", NameError::Separator),
            (b"..\\windows", NameError::Separator),
            (b"a\\b", NameError::Separator),
            (b"a\0b", NameError::Nul),
            (b"\0", NameError::Nul),
            (b"bell\x07", NameError::Control),
            (b"esc\x1b[2J", NameError::Control),
            (b"tab\there", NameError::Control),
            (b"del\x7f", NameError::Control),
            (b"\x7f", NameError::Control),
            // C1 controls, as UTF-8: U+0080, U+0085 (NEL), U+009B (CSI: `csi\u{9b}2J` clears a
            // terminal), U+009F.
            (b"a\xc2\x80", NameError::Control),
            (b"nel\xc2\x85", NameError::Control),
            (b"csi\xc2\x9b2J", NameError::Control),
            (b"\xc2\x9f", NameError::Control),
            // The same as raw bytes are not UTF-8.
            (b"csi\x9b2J", NameError::NotUtf8),
            (b"\xff\xfe", NameError::NotUtf8),
            (b".resound-partial", NameError::Reserved),
            (b".resound-tmp-1-0123456789abcdef", NameError::Reserved),
            (b".resound-", NameError::Reserved),
        ];
        for (raw, want) in cases {
            assert_eq!(validate_name(raw), Err(*want), "{raw:?}");
        }
        assert_eq!(validate_name(&[b'a'; 256]), Err(NameError::TooLong));
    }

    #[test]
    fn test_bidi_controls_are_refused_wherever_they_are() {
        let controls = [
            '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
            '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ];
        for c in controls {
            for name in [
                format!("invoice{c}txt.exe"),
                format!("{c}a"),
                format!("a{c}"),
            ] {
                assert_eq!(
                    validate_name(name.as_bytes()),
                    Err(NameError::Bidi),
                    "U+{:04X} in {name:?}",
                    c as u32
                );
            }
        }
        // The neighbours of the ranges are ordinary characters.
        for c in ['\u{200D}', '\u{2029}', '\u{202F}', '\u{2065}', '\u{206A}'] {
            let name = format!("a{c}b");
            assert!(validate_name(name.as_bytes()).is_ok(), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn test_names_of_only_whitespace_are_refused() {
        for name in [
            " ",
            "   ",
            "\u{00A0}",          // no-break space
            " \u{2003}\u{3000}", // em space, ideographic space
            "\u{200B}",          // zero-width space
            "\u{FEFF}\u{2060}",  // BOM, word joiner
        ] {
            assert_eq!(
                validate_name(name.as_bytes()),
                Err(NameError::Blank),
                "{name:?}"
            );
        }
        // Whitespace in or around a visible name is fine.
        for name in [" a", "a ", "two words", "a\u{00A0}b"] {
            assert_eq!(validate_name(name.as_bytes()), Ok(name));
        }
    }

    #[test]
    fn test_ordinary_names_pass() {
        for name in [
            "a",
            "photo.jpg",
            ".hidden",
            "with space",
            "...",
            "ünïcödé.txt",
            "日本語.txt",
            "עברית.txt", // right-to-left letters are text, not controls
            ".resound",  // only the `.resound-` prefix is reserved
        ] {
            assert_eq!(validate_name(name.as_bytes()), Ok(name));
        }
        let longest = "n".repeat(255);
        assert_eq!(validate_name(longest.as_bytes()), Ok(longest.as_str()));
    }

    // --- headers ---

    #[test]
    fn test_framed_header_parses_size_and_name() {
        assert_eq!(
            parse_header(b"1234 report 2024.pdf\nCONTENT"),
            Header::Framed {
                size: 1234,
                name: "report 2024.pdf",
                len: 21
            }
        );
        assert_eq!(
            parse_header(b"0 empty\r\n"),
            Header::Framed {
                size: 0,
                name: "empty",
                len: 9
            }
        );
    }

    #[test]
    fn test_bad_framed_headers_are_refused() {
        let bad: &[(&[u8], HeaderError)] = &[
            (b"99999999999999999999 name\n", HeaderError::BadSize),
            (b"12 \n", HeaderError::Name(NameError::Empty)),
            (b"12 ../x\n", HeaderError::Name(NameError::Separator)),
            (b"12 ..\n", HeaderError::Name(NameError::Dots)),
            (b"12 a\0b\n", HeaderError::Name(NameError::Nul)),
        ];
        for (raw, want) in bad {
            assert_eq!(parse_header(raw), Header::Invalid(*want), "{raw:?}");
        }
        assert_eq!(
            parse_header(&[b'x'; MAX_HEADER]),
            Header::Invalid(HeaderError::TooLong)
        );
        assert_eq!(
            parse_header(&[b'x'; MAX_HEADER - 1]),
            Header::Incomplete {
                maybe_framed: false
            }
        );
        // Found by fuzzing: leading zeros made a 400-byte header parse when it arrived whole,
        // though any split of it was refused as too long.
        let mut zeros = vec![b'0'; 400];
        zeros.extend_from_slice(b"3 name\n");
        assert_eq!(parse_header(&zeros), Header::Invalid(HeaderError::TooLong));
        let mut zeros = vec![b'0'; 30];
        zeros.extend_from_slice(b"3 name\n");
        assert_eq!(parse_header(&zeros), Header::Invalid(HeaderError::BadSize));
    }

    #[test]
    fn test_a_line_without_a_size_is_a_name() {
        for (raw, name) in [
            (&b"notes.txt\n"[..], "notes.txt"),
            (b"notes.txt\r\n", "notes.txt"),
            (b"12345\n", "12345"),
            (b"12x name\n", "12x name"),
            (b" 12 name\n", " 12 name"),
            (b"-1 name\n", "-1 name"),
        ] {
            let len = memchr::memchr(b'\n', raw).unwrap() + 1;
            assert_eq!(parse_header(raw), Header::NameLine { name, len }, "{raw:?}");
        }
        // What follows the newline is content, not part of the header.
        assert_eq!(
            parse_header(b"a.txt\nfirst line\n"),
            Header::NameLine {
                name: "a.txt",
                len: 6
            }
        );
        // The name rules hold for this form too.
        for (raw, want) in [
            (&b"\n"[..], NameError::Empty),
            (b"\r\n", NameError::Empty),
            (b"../x\n", NameError::Separator),
            (b"..\n", NameError::Dots),
            (b"a\x1bb\n", NameError::Control),
        ] {
            assert_eq!(
                parse_header(raw),
                Header::Invalid(HeaderError::Name(want)),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn test_incomplete_headers_say_whether_they_could_be_framed() {
        for (raw, framed) in [
            (&b"1"[..], true),
            (b"123", true),
            (b"123 ", true),
            (b"123 some na", true),
            (b"photo.jpg", false),
            (b"2024-report.pdf", false),
            (b"a", false),
        ] {
            assert_eq!(
                parse_header(raw),
                Header::Incomplete {
                    maybe_framed: framed
                },
                "{raw:?}"
            );
        }
    }

    #[test]
    fn test_header_parse_does_not_depend_on_segmentation() {
        let header = b"4096 some file.bin\n";
        for split in 1..header.len() {
            // Every prefix short of the newline is incomplete and could be framed...
            assert_eq!(
                parse_header(&header[..split]),
                Header::Incomplete { maybe_framed: true },
                "split at {split}"
            );
        }
        // ...so silence never turns it into a seed name, and the whole is the same header.
        assert!(matches!(
            parse_header(header),
            Header::Framed { size: 4096, .. }
        ));
    }

    // --- transfers ---

    /// A store in a fresh directory, and the fake clock's zero. Named temporaries (the
    /// fallback), because they are visible: "leaves nothing" then means something. The
    /// storage tests run both kinds.
    fn setup(tag: &str) -> (TempDir, Store, Instant) {
        let dir = TempDir::new(tag);
        let store = Store::open_with(&dir.0, Temporaries::Named).unwrap();
        (dir, store, Instant::now())
    }

    #[test]
    fn test_framed_transfer_stores_the_file_and_reports_its_hash() {
        let (dir, mut store, t0) = setup("xfer-framed");
        let mut t = Transfer::new(t0);
        assert_eq!(
            t.handle_input(b"5 hi.txt\n", t0, &mut store, &LIMITS),
            Outcome::Reply(OK)
        );
        assert_eq!(
            t.handle_input(b"hel", t0, &mut store, &LIMITS),
            Outcome::Continue
        );
        assert_eq!(
            t.handle_input(b"lo", t0, &mut store, &LIMITS),
            Outcome::Continue
        );
        let Outcome::Done { line, bytes, .. } = t.handle_eof() else {
            panic!("not done")
        };
        assert_eq!(bytes, 5);
        // `printf hello | b3sum`
        assert_eq!(
            line,
            "done 5 blake3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f\n"
        );
        assert_eq!(fs::read(dir.0.join("hi.txt")).unwrap(), b"hello");
    }

    #[test]
    fn test_sha256_when_configured() {
        let (_dir, mut store, t0) = setup("xfer-sha256");
        let limits = Limits {
            hash: Algorithm::Sha256,
            ..LIMITS
        };
        let mut t = Transfer::new(t0);
        t.handle_input(b"5 hi.txt\nhello", t0, &mut store, &limits);
        let Outcome::Done { line, .. } = t.handle_eof() else {
            panic!("not done")
        };
        // `printf hello | sha256sum`
        assert_eq!(
            line,
            "done 5 sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\n"
        );
    }

    #[test]
    fn test_framed_header_split_byte_by_byte_is_read_the_same() {
        let (dir, mut store, t0) = setup("xfer-split");
        let mut t = Transfer::new(t0);
        let header = b"3 abc\n";
        let pause = MAYBE_FRAMED_SILENCE - Duration::from_millis(1);
        for (i, b) in header.iter().enumerate() {
            let later = t0 + pause * i as u32; // long pauses between bytes
            let out = t.handle_input(&[*b], later, &mut store, &LIMITS);
            // Silence short of a second never makes a partial framed header a seed name.
            assert_eq!(
                t.handle_timer(later + pause, &mut store, &LIMITS),
                Outcome::Continue
            );
            if i + 1 < header.len() {
                assert_eq!(out, Outcome::Continue);
            } else {
                assert_eq!(out, Outcome::Reply(OK));
            }
        }
        t.handle_input(b"xyz", t0, &mut store, &LIMITS);
        assert!(matches!(t.handle_eof(), Outcome::Done { bytes: 3, .. }));
        assert_eq!(fs::read(dir.0.join("abc")).unwrap(), b"xyz");
    }

    #[test]
    fn test_seed_form_name_then_silence_then_content_until_eof() {
        let (dir, mut store, t0) = setup("xfer-seed");
        let mut t = Transfer::new(t0);
        assert_eq!(
            t.handle_input(b"notes.txt", t0, &mut store, &LIMITS),
            Outcome::Continue
        );
        assert_eq!(t.poll_deadline(&LIMITS), Some(t0 + SEED_SILENCE));
        assert_eq!(
            t.handle_timer(t0 + SEED_SILENCE / 2, &mut store, &LIMITS),
            Outcome::Continue
        );
        assert_eq!(
            t.handle_timer(t0 + SEED_SILENCE, &mut store, &LIMITS),
            Outcome::Reply(OK)
        );
        t.handle_input(b"line one\n", t0, &mut store, &LIMITS);
        assert!(matches!(t.handle_eof(), Outcome::Done { bytes: 9, .. }));
        assert_eq!(fs::read(dir.0.join("notes.txt")).unwrap(), b"line one\n");
    }

    #[test]
    fn test_seed_name_that_looks_like_a_header_waits_one_second_of_silence() {
        let (dir, mut store, t0) = setup("xfer-seed-digits");
        let mut t = Transfer::new(t0);
        t.handle_input(b"2024 notes", t0, &mut store, &LIMITS);
        let quiet = t0 + MAYBE_FRAMED_SILENCE;
        assert_eq!(t.poll_deadline(&LIMITS), Some(quiet));
        assert_eq!(
            t.handle_timer(quiet - Duration::from_millis(1), &mut store, &LIMITS),
            Outcome::Continue
        );
        assert_eq!(
            t.handle_timer(quiet, &mut store, &LIMITS),
            Outcome::Reply(OK)
        );
        assert!(matches!(t.handle_eof(), Outcome::Done { bytes: 0, .. }));
        assert!(dir.0.join("2024 notes").exists());
    }

    #[test]
    fn test_silence_counts_from_the_last_byte() {
        let (dir, mut store, t0) = setup("xfer-seed-digits-late");
        let mut t = Transfer::new(t0);
        t.handle_input(b"2024", t0, &mut store, &LIMITS);
        let later = t0 + Duration::from_millis(900);
        t.handle_input(b" notes", later, &mut store, &LIMITS);
        assert_eq!(t.poll_deadline(&LIMITS), Some(later + MAYBE_FRAMED_SILENCE));
        assert_eq!(
            t.handle_timer(t0 + MAYBE_FRAMED_SILENCE, &mut store, &LIMITS),
            Outcome::Continue
        );
        assert_eq!(
            t.handle_timer(later + MAYBE_FRAMED_SILENCE, &mut store, &LIMITS),
            Outcome::Reply(OK)
        );
        assert!(matches!(t.handle_eof(), Outcome::Done { bytes: 0, .. }));
        assert!(dir.0.join("2024 notes").exists());
    }

    #[test]
    fn test_header_timeout_shorter_than_a_second_still_takes_a_digit_name() {
        let (dir, mut store, t0) = setup("xfer-seed-digits-short");
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let mut t = Transfer::new(t0);
        t.handle_input(b"123", t0, &mut store, &limits);
        let expiry = t0 + limits.header_timeout;
        assert_eq!(t.poll_deadline(&limits), Some(expiry));
        assert_eq!(
            t.handle_timer(expiry, &mut store, &limits),
            Outcome::Reply(OK)
        );
        assert!(matches!(t.handle_eof(), Outcome::Done { bytes: 0, .. }));
        assert!(dir.0.join("123").exists());
    }

    #[test]
    fn test_name_line_then_content_until_eof() {
        let (dir, mut store, t0) = setup("xfer-name-line");
        let mut t = Transfer::new(t0);
        // The nc habit: name, newline and content in one go, no waiting for "ok".
        assert_eq!(
            t.handle_input(b"notes.txt\nfirst ", t0, &mut store, &LIMITS),
            Outcome::Reply(OK)
        );
        assert_eq!(t.poll_deadline(&LIMITS), Some(t0 + LIMITS.transfer_timeout));
        t.handle_input(b"line\n", t0, &mut store, &LIMITS);
        let Outcome::Done { line, bytes, name } = t.handle_eof() else {
            panic!("not done")
        };
        assert_eq!((bytes, name.as_str()), (11, "notes.txt"));
        assert_eq!(
            Done::parse(&line).unwrap().digest,
            digest::hash(Algorithm::Blake3, b"first line\n")
        );
        assert_eq!(fs::read(dir.0.join("notes.txt")).unwrap(), b"first line\n");
    }

    #[test]
    fn test_name_line_is_held_to_the_size_limit_as_content_arrives() {
        let (dir, mut store, t0) = setup("xfer-name-line-limit");
        let mut t = Transfer::new(t0);
        assert_eq!(
            t.handle_input(b"big\n", t0, &mut store, &LIMITS),
            Outcome::Reply(OK)
        );
        assert_eq!(
            t.handle_input(&[0; 1000], t0, &mut store, &LIMITS),
            Outcome::Continue
        );
        assert!(matches!(
            t.handle_input(&[0; 1], t0, &mut store, &LIMITS),
            Outcome::Refuse(_)
        ));
        // Over the limit in the very first read too.
        let mut t = Transfer::new(t0);
        let mut first = b"big2\n".to_vec();
        first.extend_from_slice(&[0; 1001]);
        assert!(matches!(
            t.handle_input(&first, t0, &mut store, &LIMITS),
            Outcome::Refuse(_)
        ));
        assert!(names_in(&dir.0).is_empty());
    }

    /// Content sent with the header, without waiting for `ok` (the nc habit, or a sender that
    /// does not wait), in one read of up to 1 MiB: stored whole and in order, though only the
    /// first [`MAX_HEADER`] bytes of the read pass through the header buffer.
    #[test]
    fn test_content_in_the_headers_read_is_stored_whole() {
        let (dir, mut store, t0) = setup("xfer-header-read");
        let limits = Limits {
            max_file_size: 4 << 20,
            ..LIMITS
        };
        let content: Vec<u8> = (0..1usize << 20).map(|i| (i * 7 % 251) as u8).collect();
        // (name, the header's pieces): all but the last arrive alone, the last with the content.
        let cases: [(&str, &[&[u8]]); 3] = [
            ("line", &[b"line\n"]),
            ("framed", &[b"1048576 framed\n"]),
            ("split", &[b"10485", b"76 split\n"]),
        ];
        for (name, header) in cases {
            let mut t = Transfer::new(t0);
            let (last, earlier) = header.split_last().unwrap();
            for piece in earlier {
                assert_eq!(
                    t.handle_input(piece, t0, &mut store, &limits),
                    Outcome::Continue
                );
            }
            let read = [last, &content[..]].concat();
            assert_eq!(
                t.handle_input(&read, t0, &mut store, &limits),
                Outcome::Reply(OK),
                "{name}"
            );
            let Outcome::Done { line, bytes, .. } = t.handle_eof() else {
                panic!("{name}: not done")
            };
            assert_eq!(bytes, content.len() as u64, "{name}");
            assert_eq!(
                Done::parse(&line).unwrap().digest,
                digest::hash(Algorithm::Blake3, &content),
                "{name}"
            );
            assert!(fs::read(dir.0.join(name)).unwrap() == content, "{name}");
        }
    }

    /// The header buffer holds and allocates at most [`MAX_HEADER`] bytes, whether the bytes
    /// trickle in or come in one large read.
    #[test]
    fn test_header_buffer_is_bounded_by_the_longest_header() {
        let (_dir, mut store, t0) = setup("xfer-header-bound");
        let mut t = Transfer::new(t0);
        for _ in 0..MAX_HEADER - 1 {
            assert_eq!(
                t.handle_input(b"7", t0, &mut store, &LIMITS),
                Outcome::Continue
            );
            assert!(t.buffered() <= MAX_HEADER, "{}", t.buffered());
        }
        assert_eq!(
            t.handle_input(b"7", t0, &mut store, &LIMITS),
            Outcome::Refuse(HeaderError::TooLong.to_string())
        );
        // A megabyte without a newline is refused the same, without being copied.
        let mut t = Transfer::new(t0);
        t.handle_input(b"77", t0, &mut store, &LIMITS);
        assert_eq!(
            t.handle_input(&[b'7'; 1 << 20], t0, &mut store, &LIMITS),
            Outcome::Refuse(HeaderError::TooLong.to_string())
        );
    }

    #[test]
    fn test_header_that_never_completes_times_out() {
        let (_dir, mut store, t0) = setup("xfer-slowloris");
        let mut t = Transfer::new(t0);
        // A byte every 50 ms (a slowloris): never silent long enough to be a seed name.
        let step = Duration::from_millis(50);
        let mut now = t0;
        while now < t0 + LIMITS.header_timeout {
            assert_eq!(t.handle_timer(now, &mut store, &LIMITS), Outcome::Continue);
            t.handle_input(b"1", now, &mut store, &LIMITS);
            now += step;
        }
        // The last byte came 50 ms ago: not silence, so not a seed-form name either.
        assert_eq!(
            t.handle_timer(now, &mut store, &LIMITS),
            Outcome::Refuse("header timeout".into())
        );
        // One that connects and sends nothing at all, likewise.
        let mut idle = Transfer::new(t0);
        assert_eq!(
            idle.handle_timer(t0 + LIMITS.header_timeout, &mut store, &LIMITS),
            Outcome::Refuse("header timeout".into())
        );
    }

    #[test]
    fn test_short_framed_transfer_leaves_nothing() {
        let (dir, mut store, t0) = setup("xfer-short");
        let mut t = Transfer::new(t0);
        t.handle_input(b"10 short.bin\n12345", t0, &mut store, &LIMITS);
        assert_eq!(
            t.handle_eof(),
            Outcome::Refuse("short transfer: 5 of 10 bytes".into())
        );
        assert!(names_in(&dir.0).is_empty());
    }

    #[test]
    fn test_more_than_declared_is_refused() {
        let (dir, mut store, t0) = setup("xfer-long");
        let mut t = Transfer::new(t0);
        assert_eq!(
            t.handle_input(b"2 x\n", t0, &mut store, &LIMITS),
            Outcome::Reply(OK)
        );
        assert!(matches!(
            t.handle_input(b"abc", t0, &mut store, &LIMITS),
            Outcome::Refuse(_)
        ));
        assert!(!dir.0.join("x").exists());
    }

    #[test]
    fn test_size_limits() {
        let (dir, mut store, t0) = setup("xfer-limit");
        let mut t = Transfer::new(t0);
        assert_eq!(
            t.handle_input(b"1001 big\n", t0, &mut store, &LIMITS),
            Outcome::Refuse("file too large: the limit is 1000 bytes".into())
        );
        // Seed form: no declared size, so the limit is enforced as content arrives.
        let mut t = Transfer::new(t0);
        t.handle_input(b"big", t0, &mut store, &LIMITS);
        assert_eq!(
            t.handle_timer(t0 + SEED_SILENCE, &mut store, &LIMITS),
            Outcome::Reply(OK)
        );
        assert_eq!(
            t.handle_input(&[0; 1000], t0, &mut store, &LIMITS),
            Outcome::Continue
        );
        assert!(matches!(
            t.handle_input(&[0; 1], t0, &mut store, &LIMITS),
            Outcome::Refuse(_)
        ));
        assert!(!dir.0.join("big").exists());
    }

    #[test]
    fn test_existing_name_is_refused_in_the_reply() {
        let (dir, mut store, t0) = setup("xfer-exists");
        fs::write(dir.0.join("taken"), b"keep me").unwrap();
        let mut t = Transfer::new(t0);
        assert_eq!(
            t.handle_input(b"3 taken\n", t0, &mut store, &LIMITS),
            Outcome::Refuse("file exists".into())
        );
        assert_eq!(fs::read(dir.0.join("taken")).unwrap(), b"keep me");
    }

    #[test]
    fn test_stalled_transfer_times_out_and_leaves_nothing() {
        let (dir, mut store, t0) = setup("xfer-stall");
        let mut t = Transfer::new(t0);
        t.handle_input(b"100 stall\nsome", t0, &mut store, &LIMITS);
        assert_eq!(t.poll_deadline(&LIMITS), Some(t0 + LIMITS.transfer_timeout));
        assert_eq!(
            t.handle_timer(t0 + LIMITS.transfer_timeout, &mut store, &LIMITS),
            Outcome::Refuse("transfer timeout".into())
        );
        assert!(names_in(&dir.0).is_empty());
    }

    /// Issue 15: with `--header-timeout 2 --transfer-timeout 2`, a seed name that waited a
    /// second for its `ok` was timed out a second after it. The silence before `ok` is the
    /// header's; the transfer's own counts from `ok`.
    #[test]
    fn test_transfer_timeout_counts_from_ok_for_a_seed_name() {
        let limits = Limits {
            header_timeout: Duration::from_secs(2),
            transfer_timeout: Duration::from_secs(2),
            ..LIMITS
        };
        // (name, when its `ok` comes): the 1 s rule, the 100 ms rule, the header timeout.
        let short_header = Limits {
            header_timeout: Duration::from_millis(500),
            ..limits
        };
        for (name, limits, ok_after) in [
            (&b"2024 notes"[..], limits, MAYBE_FRAMED_SILENCE),
            (b"photo.jpg", limits, SEED_SILENCE),
            (b"123", short_header, short_header.header_timeout),
        ] {
            let (_dir, mut store, t0) = setup("xfer-timeout-from-ok");
            let mut t = Transfer::new(t0);
            t.handle_input(name, t0, &mut store, &limits);
            let ok_at = t0 + ok_after;
            assert_eq!(
                t.handle_timer(ok_at, &mut store, &limits),
                Outcome::Reply(OK)
            );
            let expiry = ok_at + limits.transfer_timeout;
            assert_eq!(t.poll_deadline(&limits), Some(expiry), "{name:?}");
            assert_eq!(
                t.handle_timer(expiry - Duration::from_millis(1), &mut store, &limits),
                Outcome::Continue,
                "{name:?}"
            );
            assert_eq!(
                t.handle_timer(expiry, &mut store, &limits),
                Outcome::Refuse("transfer timeout".into())
            );
        }
    }

    /// Content resets the transfer's clock; silence after it is counted from the last byte.
    #[test]
    fn test_transfer_timeout_counts_from_the_last_byte_once_receiving() {
        let (_dir, mut store, t0) = setup("xfer-timeout-last-byte");
        let mut t = Transfer::new(t0);
        t.handle_input(b"100 f\n", t0, &mut store, &LIMITS);
        let later = t0 + Duration::from_secs(50);
        t.handle_input(b"abc", later, &mut store, &LIMITS);
        assert_eq!(
            t.poll_deadline(&LIMITS),
            Some(later + LIMITS.transfer_timeout)
        );
    }

    /// A directory that cannot take the file is found before `ok`, in every header form, and
    /// the reason names the directory.
    #[test]
    fn test_storage_fault_is_refused_before_ok_naming_the_path() {
        let (dir, mut store, t0) = setup("xfer-fault");
        fs::remove_dir_all(&dir.0).unwrap();
        let removed = format!(
            "cannot store file: {}: the directory was removed while the server was running",
            dir.0.display()
        );
        let mut framed = Transfer::new(t0);
        assert_eq!(
            framed.handle_input(b"5 a.txt\nhello", t0, &mut store, &LIMITS),
            Outcome::Refuse(removed.clone())
        );
        let mut line = Transfer::new(t0);
        assert_eq!(
            line.handle_input(b"a.txt\n", t0, &mut store, &LIMITS),
            Outcome::Refuse(removed.clone())
        );
        let mut seed = Transfer::new(t0);
        seed.handle_input(b"a.txt", t0, &mut store, &LIMITS);
        assert_eq!(
            seed.handle_timer(t0 + SEED_SILENCE, &mut store, &LIMITS),
            Outcome::Refuse(removed)
        );
        assert!(!dir.0.exists(), "never created again by the server");
    }

    #[test]
    fn test_empty_file_is_stored_empty() {
        let (dir, mut store, t0) = setup("xfer-empty");
        let mut t = Transfer::new(t0);
        t.handle_input(b"0 empty\n", t0, &mut store, &LIMITS);
        let Outcome::Done { line, .. } = t.handle_eof() else {
            panic!()
        };
        assert_eq!(
            line,
            "done 0 blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\n"
        );
        assert_eq!(fs::read(dir.0.join("empty")).unwrap(), b"");
    }

    // --- the service, as the loop drives it ---

    use crate::service::Recorded;
    use crate::service::testing::{run, shared};

    /// Shared state as the loop holds it, with a store (named temporaries, as in `setup`) in a
    /// fresh directory; the limits are `testing::shared`'s, the same as [`LIMITS`].
    fn service_setup(tag: &str) -> (TempDir, Shared, Instant) {
        let (dir, store, t0) = setup(tag);
        (dir, shared(Some(store)), t0)
    }

    fn refused(reason: &str) -> [Recorded; 2] {
        [
            Recorded::Reply(format!("error: {reason}\n").into_bytes()),
            Recorded::Close(CloseReason::Protocol("file transfer refused")),
        ]
    }

    #[test]
    fn test_service_refusal_is_an_error_line_then_an_orderly_close_and_is_counted() {
        let (dir, mut sh, t0) = service_setup("svc-refuse");
        let mut t = Transfer::new(t0);
        let got = run(&mut sh, t0, |cx| t.on_input(b"1001 big\n", cx));
        assert_eq!(got, refused("file too large: the limit is 1000 bytes"));
        assert_eq!((sh.stats.files_refused, sh.stats.files_stored), (1, 0));
        // Over: whatever comes after is ignored, and counted no more.
        let got = run(&mut sh, t0, |cx| {
            t.on_input(b"more", cx);
            t.on_eof(cx);
        });
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(sh.stats.files_refused, 1);
        assert!(names_in(&dir.0).is_empty());
    }

    #[test]
    fn test_service_done_replies_the_line_and_is_counted() {
        let (dir, mut sh, t0) = service_setup("svc-done");
        let mut t = Transfer::new(t0);
        let got = run(&mut sh, t0, |cx| t.on_input(b"5 hi.txt\nhel", cx));
        assert_eq!(got, [Recorded::Reply(OK.to_vec())]);
        let got = run(&mut sh, t0, |cx| {
            t.on_input(b"lo", cx);
            t.on_eof(cx);
        });
        let line = Done {
            bytes: 5,
            digest: digest::hash(Algorithm::Blake3, b"hello"),
        }
        .line();
        assert_eq!(got, [Recorded::Reply(line.into_bytes())]);
        assert_eq!((sh.stats.files_stored, sh.stats.files_refused), (1, 0));
        assert_eq!(names_in(&dir.0), ["hi.txt"]);
    }

    #[test]
    fn test_service_timer_acts_only_at_the_deadline_it_gave() {
        let (_dir, mut sh, t0) = service_setup("svc-timer");
        let mut t = Transfer::new(t0);
        run(&mut sh, t0, |cx| t.on_input(b"photo.jpg", cx));
        let due = t.deadline(&sh).unwrap();
        assert_eq!(due, t0 + SEED_SILENCE);
        // A spurious wake-up before it: nothing.
        let early = run(&mut sh, due - Duration::from_millis(1), |cx| t.on_timer(cx));
        assert!(early.is_empty(), "{early:?}");
        let got = run(&mut sh, due, |cx| t.on_timer(cx));
        assert_eq!(got, [Recorded::Reply(OK.to_vec())]);
        // A header timeout is a refusal like any other.
        let mut idle = Transfer::new(t0);
        let due = idle.deadline(&sh).unwrap();
        let got = run(&mut sh, due, |cx| idle.on_timer(cx));
        assert_eq!(got, refused("header timeout"));
        assert_eq!(sh.stats.files_refused, 1);
    }

    /// Issue 15, verbatim, as the loop drives it, on a fake clock: with `--header-timeout 2
    /// --transfer-timeout 2`, the seed-form name `2024 notes` waits a second for its `ok`;
    /// content 1.5 s after the `ok` — past a transfer timeout counted from the name, short of
    /// one counted from the `ok` — is stored.
    #[test]
    fn test_service_issue_15_transfer_timeout_counts_from_ok() {
        let (dir, mut sh, t0) = service_setup("svc-issue-15");
        sh.file_limits.header_timeout = Duration::from_secs(2);
        sh.file_limits.transfer_timeout = Duration::from_secs(2);
        let mut t = Transfer::new(t0);
        assert!(run(&mut sh, t0, |cx| t.on_input(b"2024 notes", cx)).is_empty());
        // Digits and a space could still become a framed header: a second of silence.
        let ok_at = t.deadline(&sh).unwrap();
        assert_eq!(ok_at, t0 + MAYBE_FRAMED_SILENCE);
        let got = run(&mut sh, ok_at, |cx| t.on_timer(cx));
        assert_eq!(got, [Recorded::Reply(OK.to_vec())]);
        assert_eq!(t.deadline(&sh), Some(ok_at + Duration::from_secs(2)));
        // Woken where the bug timed it out (2 s after the name), and 1.5 s after the `ok`.
        let later = ok_at + Duration::from_millis(1500);
        for now in [t0 + Duration::from_secs(2), later] {
            let got = run(&mut sh, now, |cx| t.on_timer(cx));
            assert!(got.is_empty(), "{now:?}: {got:?}");
        }
        let got = run(&mut sh, later, |cx| {
            t.on_input(b"agenda", cx);
            t.on_eof(cx);
        });
        let done = Done {
            bytes: 6,
            digest: digest::hash(Algorithm::Blake3, b"agenda"),
        };
        assert_eq!(got, [Recorded::Reply(done.line().into_bytes())]);
        assert_eq!(fs::read(dir.0.join("2024 notes")).unwrap(), b"agenda");
    }

    #[test]
    fn test_service_graceful_stop_lets_only_a_transfer_in_progress_finish() {
        let (_dir, mut sh, t0) = service_setup("svc-stop");
        let mut t = Transfer::new(t0);
        assert_eq!(t.on_stop(), OnStop::ServePending, "no header yet");
        run(&mut sh, t0, |cx| t.on_input(b"3 f", cx));
        assert_eq!(t.on_stop(), OnStop::ServePending, "header in progress");
        run(&mut sh, t0, |cx| t.on_input(b"\nab", cx));
        assert_eq!(t.on_stop(), OnStop::Finish, "receiving");
        run(&mut sh, t0, |cx| {
            t.on_input(b"c", cx);
            t.on_eof(cx);
        });
        assert_eq!(t.on_stop(), OnStop::ServePending, "done");
        assert_eq!(sh.stats.files_stored, 1);
    }

    #[test]
    fn test_service_drained_header_is_told_the_server_is_shutting_down() {
        let (_dir, mut sh, t0) = service_setup("svc-drained");
        let mut t = Transfer::new(t0);
        run(&mut sh, t0, |cx| t.on_input(b"notes", cx));
        let got = run(&mut sh, t0, |cx| t.on_drained(cx));
        assert_eq!(
            got,
            [Recorded::Reply(b"error: server shutting down\n".to_vec())]
        );
    }

    #[test]
    fn test_service_buffered_is_the_header_buffer_and_nothing_after_it() {
        let (_dir, mut sh, t0) = service_setup("svc-buffered");
        let mut t = Transfer::new(t0);
        assert_eq!(t.buffered(), 0, "nothing allocated before the first byte");
        run(&mut sh, t0, |cx| t.on_input(b"12 some", cx));
        let Stage::Header(buf) = &t.stage else {
            panic!("still in the header")
        };
        assert_eq!(buf, b"12 some");
        assert_eq!(t.buffered(), buf.capacity());
        run(&mut sh, t0, |cx| t.on_input(b" name\nabc", cx));
        assert!(t.is_receiving());
        assert_eq!(t.buffered(), 0, "content is never buffered by the service");
    }
}
