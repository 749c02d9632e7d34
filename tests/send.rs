//! `resound send` over loopback: every form it speaks (a file with `sendfile` or copied, standard
//! input, the seeds' protocol), and every way it must fail instead of claiming a transfer it
//! cannot vouch for. Against an in-process server, the real binary, or a small receiver written
//! here when the test needs the receiver to misbehave at a chosen moment.

mod util;

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use resound::ServiceKind;
use resound::digest::{self, Algorithm};
use resound::send::{self, SendOptions, Sent, Source};
use util::*;

/// In-process `send` of a file.
fn send_file(file: &Path, to: SocketAddr, name: &str, sendfile: bool) -> Result<Sent, String> {
    send::send(&SendOptions {
        source: Source::Path(file),
        to,
        name: Some(name),
        timeout: Some(TIMEOUT),
        progress: false,
        seed: false,
        sendfile,
    })
    .map_err(|e| e.to_string())
}

/// `resound send ARGS` as a child process (bounded: see [`run_resound`]); its stdin is given,
/// or fed by `feed` on a thread.
fn run_send(args: &[&OsStr], stdin: Stdio, feed: Option<Feed>) -> Output {
    let args: Vec<&OsStr> = std::iter::once("send".as_ref())
        .chain(args.iter().copied())
        .collect();
    run_resound(&args, stdin, feed)
}

/// The file stored as `name` in `dst` is `data`, and `sent` was confirmed with its `algorithm`
/// hash.
fn assert_stored(dst: &Dir, name: &str, data: &[u8], sent: &Sent, algorithm: Algorithm) {
    let stored = fs::read(dst.path(name)).unwrap();
    assert_same(&stored, data);
    assert_eq!(
        sent.confirmed,
        Some(digest::hash(algorithm, &stored)),
        "{name}"
    );
}

/// How a fake receiver knows that the header is over.
enum HeaderEnd {
    /// At its newline (what `resound send` sends for a file or a stream).
    Newline,
    /// After this many bytes: the seeds' bare name, which has no end of its own.
    Bytes(usize),
}

/// A fake receiver's start: accept one connection (reads time out after [`TIMEOUT`]), read the
/// header, answer `ok`. Returns the connection and the header.
fn accept_and_ok(listener: &TcpListener, end: HeaderEnd) -> (TcpStream, Vec<u8>) {
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    // Byte by byte: reading exactly the header does not depend on how it was segmented.
    let over = |header: &[u8]| match end {
        HeaderEnd::Newline => header.ends_with(b"\n"),
        HeaderEnd::Bytes(n) => header.len() == n,
    };
    let mut header = Vec::new();
    let mut byte = [0; 1];
    while !over(&header) {
        s.read_exact(&mut byte).unwrap();
        header.push(byte[0]);
    }
    s.write_all(b"ok").unwrap();
    (s, header)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An empty file, a single byte, sizes around each boundary a transfer crosses — the server's
/// smallest read (64 KiB, when many connections share a loop turn), the sender's chunk
/// (256 KiB, `send/wire.rs`'s CHUNK), the server's largest read (1 MiB, an upload alone in its
/// turn) — and several MiB.
const SIZES: [usize; 12] = [
    0,
    1,
    (64 << 10) - 1,
    (64 << 10) + 1,
    (256 << 10) - 1,
    256 << 10,
    (256 << 10) + 1,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    (1 << 20) + (256 << 10) + 1,
    5 << 20,
];

/// For each size, with `sendfile` and copied: the stored file is the one sent, and its BLAKE3
/// hash is the one in the server's final line.
#[test]
fn stored_hash_equals_the_final_line_for_every_size() {
    let src = Dir::new("sizes-src");
    let dst = Dir::new("sizes-dst");
    let server = start_files(&dst.0, |_| {});
    let to = server.addr(ServiceKind::Files);
    for size in SIZES {
        let data = pattern(size, size);
        let file = src.file(&format!("in-{size}"), &data);
        for sendfile in [true, false] {
            let name = format!("out-{size}-{sendfile}");
            let sent = send_file(&file, to, &name, sendfile).unwrap();
            assert_eq!(sent.bytes, size as u64);
            // A regular file goes out with sendfile when asked (no silent fallback here).
            assert_eq!(sent.sendfile, sendfile, "{name}");
            assert_stored(&dst, &name, &data, &sent, Algorithm::Blake3);
        }
    }
}

/// The same against `serve --hash sha256`: the sender reads the file again to hash it the
/// server's way, and the final line is the stored file's SHA-256.
#[test]
fn sha256_server_is_checked_too() {
    let src = Dir::new("sha-src");
    let dst = Dir::new("sha-dst");
    let server = start_files(&dst.0, |c| c.hash = Algorithm::Sha256);
    let to = server.addr(ServiceKind::Files);
    for size in [0, 64 * 1024 + 1, 5 << 20] {
        let data = pattern(7 * size, size);
        let file = src.file(&format!("in-{size}"), &data);
        let name = format!("out-{size}");
        let sent = send_file(&file, to, &name, true).unwrap();
        assert_stored(&dst, &name, &data, &sent, Algorithm::Sha256);
    }
}

/// `sendfile` and the plain copy store byte-identical files (an odd size, so the last chunk is
/// partial).
#[test]
fn sendfile_and_plain_copy_store_identical_files() {
    let src = Dir::new("same-src");
    let dst = Dir::new("same-dst");
    let server = start_files(&dst.0, |_| {});
    let to = server.addr(ServiceKind::Files);
    let data = pattern(99, (3 << 20) + 12345);
    let file = src.file("payload", &data);
    let a = send_file(&file, to, "via-sendfile", true).unwrap();
    let b = send_file(&file, to, "via-copy", false).unwrap();
    assert!(a.sendfile && !b.sendfile);
    let via_sendfile = fs::read(dst.path("via-sendfile")).unwrap();
    let via_copy = fs::read(dst.path("via-copy")).unwrap();
    assert_same(&via_sendfile, &via_copy);
    assert_same(&via_sendfile, &data);
    assert_eq!(a.confirmed, b.confirmed);
}

/// `send - --name NAME`: standard input, size unknown, framed by a newline-ended name; the
/// final line must still match every byte and the hash, in either algorithm.
#[test]
fn standard_input_is_sent_and_confirmed() {
    let dst = Dir::new("stdin-dst");
    for algorithm in Algorithm::ALL {
        let server = start_files(&dst.0, |c| c.hash = algorithm);
        let to = server.addr(ServiceKind::Files).to_string();
        let data = pattern(5, (2 << 20) + 3);
        let feed = data.clone();
        let name = format!("from-stdin-{algorithm}");
        let out = run_send(
            &[
                "-".as_ref(),
                "--name".as_ref(),
                name.as_ref(),
                "--to".as_ref(),
                to.as_ref(),
            ],
            Stdio::piped(),
            Some(Box::new(move |mut pipe| {
                pipe.write_all(&feed).unwrap();
                // Dropping the pipe is the EOF that ends the transfer.
            })),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stored = fs::read(dst.path(&name)).unwrap();
        assert_same(&stored, &data);
        let stdout = text(&out.stdout);
        let want = format!(
            "stored, confirmed by {algorithm} {}",
            digest::hash(algorithm, &stored).hex()
        );
        assert!(stdout.contains(&want), "{stdout}");
    }
}

/// Standard input needs a name (a usage error), and one the server would not misread as a
/// size (refused before connecting: the address here has no listener, so a connect would fail
/// with another message).
#[test]
fn standard_input_needs_a_usable_name() {
    let out = run_send(&["-".as_ref()], Stdio::null(), None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--name"),
        "{}",
        text(&out.stderr)
    );

    let out = run_send(
        &[
            "-".as_ref(),
            "--name".as_ref(),
            "2024 notes".as_ref(),
            "--to".as_ref(),
            unused_addr().to_string().as_ref(),
        ],
        Stdio::null(),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("resound send: cannot send as \"2024 notes\": ")
            && stderr.contains("read as a size"),
        "{stderr}"
    );
}

/// `--seed` against a receiver of the seeds' protocol: the bare name (no newline), `ok`, the
/// content, close — and no confirmation, which `send` says while exiting 0.
#[test]
fn seed_protocol_receiver_that_never_confirms() {
    let src = Dir::new("seed-src");
    let data = pattern(3, 300_000);
    let file = src.file("seeded.bin", &data);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = thread::spawn(move || {
        // The Go receiver does one Read for the name; reading until the name is complete is
        // the same on loopback.
        let (mut s, name) = accept_and_ok(&listener, HeaderEnd::Bytes(b"seeded.bin".len()));
        let mut content = Vec::new();
        s.read_to_end(&mut content).unwrap();
        (name, content) // dropping `s` closes: all a seed receiver ever says
    });
    let out = run_send(
        &[
            file.as_os_str(),
            "--seed".as_ref(),
            "--to".as_ref(),
            addr.to_string().as_ref(),
        ],
        Stdio::null(),
        None,
    );
    let (name, content) = receiver.join().unwrap();
    assert_eq!(name, b"seeded.bin", "the bare name, nothing after it");
    assert_same(&content, &data);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("nothing was confirmed"), "{stdout}");
}

/// `--seed` against resound, which does send `done`: it is checked like any other.
#[test]
fn seed_protocol_against_resound_is_confirmed() {
    let src = Dir::new("seed-resound-src");
    let dst = Dir::new("seed-resound-dst");
    let server = start_files(&dst.0, |_| {});
    let data = pattern(11, 100_000);
    let file = src.file("seed-to-resound", &data);
    let sent = send::send(&SendOptions {
        source: Source::Path(&file),
        to: server.addr(ServiceKind::Files),
        name: None,
        timeout: Some(TIMEOUT),
        progress: false,
        seed: true,
        sendfile: true,
    })
    .unwrap();
    assert_stored(&dst, "seed-to-resound", &data, &sent, Algorithm::Blake3);
}

/// A seed receiver that resets the connection instead of closing it has not taken the file:
/// `--seed` fails.
#[test]
fn seed_receiver_that_resets_is_a_failure() {
    let src = Dir::new("seed-reset-src");
    let file = src.file("reset.bin", &pattern(0, 4 << 20));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = accept_and_ok(&listener, HeaderEnd::Bytes(b"reset.bin".len()));
        let mut some = [0; 1000];
        s.read_exact(&mut some).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        // Dropped with unread data and linger 0: a reset.
    });
    let out = run_send(
        &[
            file.as_os_str(),
            "--seed".as_ref(),
            "--to".as_ref(),
            addr.to_string().as_ref(),
        ],
        Stdio::null(),
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).starts_with(&format!("resound send: {addr}: ")),
        "{}",
        text(&out.stderr)
    );
}

/// A refusal in the middle of the content (here the size limit, hit by a stream of unknown
/// size) stops `send` with the server's reason. The stream never ends, so only hearing the
/// refusal can end the sender.
#[test]
fn refusal_mid_stream_stops_the_sender_with_the_reason() {
    let dst = Dir::new("refuse-dst");
    let server = start_files(&dst.0, |c| c.max_file_size = 1 << 20);
    let to = server.addr(ServiceKind::Files).to_string();
    let out = run_send(
        &[
            "-".as_ref(),
            "--name".as_ref(),
            "endless".as_ref(),
            "--to".as_ref(),
            to.as_ref(),
        ],
        Stdio::piped(),
        Some(Box::new(|mut pipe| {
            let chunk = pattern(0, 64 * 1024);
            // Until the sender exits and the pipe breaks.
            while pipe.write_all(&chunk).is_ok() {}
        })),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "resound send: {to} refused the file: file too large: the limit is 1048576 bytes\n"
        )
    );
    server.stop().unwrap();
    assert!(!dst.path("endless").exists());
}

/// The same for a file, against a receiver that says `error: ...` mid-stream and then stops
/// reading without closing (a server in its close timeout). `--timeout` is an hour: a sender
/// that only learns of the refusal when its writes time out cannot pass.
#[test]
fn refusal_mid_file_is_heard_while_writing() {
    let src = Dir::new("refuse-file-src");
    // Sparse: 256 MiB of zeros, far more than loopback socket buffers hold, and no disk.
    let file = src.path("huge.bin");
    File::create(&file).unwrap().set_len(256 << 20).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let receiver = thread::spawn(move || {
        let (mut s, header) = accept_and_ok(&listener, HeaderEnd::Newline);
        let mut some = vec![0; 1 << 20];
        s.read_exact(&mut some).unwrap();
        s.write_all(b"error: cannot store file: No space left on device\n")
            .unwrap();
        // Hold the connection, reading nothing, until the sender has exited.
        let _ = done_rx.recv_timeout(TIMEOUT);
        String::from_utf8(header).unwrap()
    });
    let out = run_send(
        &[
            file.as_os_str(),
            "--to".as_ref(),
            addr.to_string().as_ref(),
            "--timeout".as_ref(),
            "3600".as_ref(),
        ],
        Stdio::null(),
        None,
    );
    done_tx.send(()).unwrap();
    assert_eq!(
        receiver.join().unwrap(),
        format!("{} huge.bin\n", 256 << 20)
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "resound send: {addr} refused the file: cannot store file: No space left on device\n"
        )
    );
}

/// A file that grows while it is sent fails, and the connection is reset rather than closed,
/// so even a receiver that got every declared byte stores nothing.
#[test]
fn file_growing_during_send_fails_and_resets() {
    let src = Dir::new("grow-src");
    let file = src.file("growing.bin", &pattern(0, 32 << 20));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let path = file.clone();
    let receiver = thread::spawn(move || {
        let (mut s, _) = accept_and_ok(&listener, HeaderEnd::Newline);
        // The sender is mid-file: 1 MiB read of 32, and the rest cannot fit in the buffers.
        let mut some = vec![0; 1 << 20];
        s.read_exact(&mut some).unwrap();
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"one more line\n")
            .unwrap();
        // Read on: a clean EOF would mean the sender half-closed (the server would store).
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
    });
    let out = run_send(
        &[file.as_os_str(), "--to".as_ref(), addr.to_string().as_ref()],
        Stdio::null(),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "resound send: {}: changed while being sent",
            file.display()
        )),
        "{stderr}"
    );
    let ended = receiver.join().unwrap();
    assert_eq!(
        ended.map_err(|e| e.kind()).err(),
        Some(io::ErrorKind::ConnectionReset),
        "the receiver must see a reset, not an orderly end"
    );
}

/// A FIFO is refused at once: opening it does not wait for a writer that never comes.
#[test]
fn fifo_is_refused_without_hanging() {
    let src = Dir::new("fifo");
    let fifo = src.0.join("pipe");
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // The address is never reached: the input is checked before connecting.
    let out = run_send(
        &[
            fifo.as_os_str(),
            "--to".as_ref(),
            unused_addr().to_string().as_ref(),
        ],
        Stdio::null(),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "resound send: {}: is a FIFO, not a regular file; to send what it streams, use \
             `resound send - --name NAME < ",
            fifo.display()
        )),
        "{stderr}"
    );
}

/// Errors name what they are about: the address that refused the connection, and how long
/// was waited for what.
#[test]
fn errors_name_the_address_and_what_was_awaited() {
    let src = Dir::new("errors");
    let file = src.file("x", b"x");
    let nobody = unused_addr();
    let out = run_send(
        &[
            file.as_os_str(),
            "--to".as_ref(),
            nobody.to_string().as_ref(),
        ],
        Stdio::null(),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("resound send: cannot connect to {nobody}: Connection refused\n")
    );

    // A listener that never accepts: the kernel completes the handshake, nobody answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let out = run_send(
        &[
            file.as_os_str(),
            "--to".as_ref(),
            addr.to_string().as_ref(),
            "--timeout".as_ref(),
            "0.2".as_ref(),
        ],
        Stdio::null(),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "resound send: {addr}: timed out after 0.2 s waiting for the server's answer to \
             the header\n"
        )
    );
    drop(silent);
}

/// Progress goes to stderr, and only on a terminal: with pipes, stdout holds the result line
/// alone and stderr is empty.
#[test]
fn no_progress_without_a_terminal() {
    let src = Dir::new("quiet-src");
    let dst = Dir::new("quiet-dst");
    let server = start_files(&dst.0, |_| {});
    let file = src.file("q.bin", &pattern(0, 3 << 20));
    let to = server.addr(ServiceKind::Files).to_string();
    let out = run_send(
        &[file.as_os_str(), "--to".as_ref(), to.as_ref()],
        Stdio::null(),
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("sent \"q.bin\": 3.0 MiB in "),
        "{stdout}"
    );
}

/// A loopback address with no listener: bound to learn a free port, then closed.
fn unused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
