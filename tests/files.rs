//! File transfer over loopback: `resound send`, the seeds' bare-name form, hostile names,
//! concurrency, and every way a transfer can end short — none of which may leave a file.

mod util;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use resound::ServiceKind;
use socket2::SockRef;
use util::*;

/// Run `resound send FILE --to ADDR [extra]`; returns (success, stdout, stderr).
fn resound_send(file: &Path, to: SocketAddr, extra: &[&str]) -> (bool, String, String) {
    let to = to.to_string();
    let mut args: Vec<&OsStr> = vec![
        "send".as_ref(),
        file.as_os_str(),
        "--to".as_ref(),
        to.as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let out = run_resound(&args, Stdio::null(), None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A 50 MiB random file arrives byte-identical, and `resound send` says so.
#[test]
fn fifty_mib_file_arrives_identical() {
    let dir = Dir::new("big");
    let src = Dir::new("big-src");
    let file = src.0.join("random.bin");
    let data = pattern(12345, 50 << 20);
    fs::write(&file, &data).unwrap();
    let server = start_files(&dir.0, |_| {});
    let (ok, stdout, stderr) = resound_send(&file, server.addr(ServiceKind::Files), &[]);
    assert!(ok, "send failed: {stderr}");
    assert!(stdout.contains("stored, confirmed by blake3 "), "{stdout}");
    assert_eq!(
        stdout.matches('\r').count(),
        0,
        "no progress bar when stdout is a pipe"
    );
    assert_same(&fs::read(dir.0.join("random.bin")).unwrap(), &data);
    dir.assert_holds(&["random.bin"]);
    let totals = server.stop().unwrap();
    assert_eq!(totals.files_stored, 1);
}

/// The seeds' sender: the bare name, wait for exactly "ok", the content, close.
#[test]
fn seed_form_raw_client() {
    let dir = Dir::new("seed");
    let server = start_files(&dir.0, |_| {});
    let mut s = connect(server.addr(ServiceKind::Files));
    s.write_all(b"from-go.txt").unwrap();
    let mut reply = [0; 2];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"ok");
    s.write_all(b"content of the seed transfer\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let done = String::from_utf8(read_to_eof(&mut s)).unwrap();
    assert!(done.starts_with("done 29 "), "{done}");
    assert_eq!(
        fs::read(dir.0.join("from-go.txt")).unwrap(),
        b"content of the seed transfer\n"
    );
}

/// An empty file (EOF right after "ok") is stored empty.
#[test]
fn empty_file_is_stored_empty() {
    let dir = Dir::new("empty");
    let server = start_files(&dir.0, |_| {});
    let (mut s, reply) = send_header(server.addr(ServiceKind::Files), b"0 nothing\n");
    assert_eq!(reply, "ok");
    s.shutdown(Shutdown::Write).unwrap();
    let done = String::from_utf8(read_to_eof(&mut s)).unwrap();
    assert_eq!(
        done,
        "done 0 blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\n"
    );
    assert_eq!(fs::read(dir.0.join("nothing")).unwrap(), b"");
}

/// `serve --hash sha256`: the final line is the stored file's SHA-256, as `sha256sum` prints it.
#[test]
fn sha256_when_the_server_is_told_so() {
    let dir = Dir::new("sha256");
    let server = start_files(&dir.0, |c| c.hash = resound::digest::Algorithm::Sha256);
    let (mut s, reply) = send_header(server.addr(ServiceKind::Files), b"5 hello.txt\n");
    assert_eq!(reply, "ok");
    s.write_all(b"hello").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        String::from_utf8(read_to_eof(&mut s)).unwrap(),
        "done 5 sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\n"
    );
}

/// The nc habit, `(printf 'notes.txt\n'; cat notes.txt) | nc -N host port`: a name ended by a
/// newline and no size, the content right behind it, until EOF.
#[test]
fn name_line_without_size_then_content_until_eof() {
    let dir = Dir::new("name-line");
    // A header timeout far past the test's read timeout: only the newline can end this header.
    let server = start_files(&dir.0, |c| c.header_timeout = Duration::from_secs(3600));
    let mut s = connect(server.addr(ServiceKind::Files));
    s.write_all(b"notes.txt\nfirst line\nsecond line\n")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let answer = String::from_utf8(read_to_eof(&mut s)).unwrap();
    let rest = answer.strip_prefix("ok").expect("ok first");
    let done = resound::digest::Done::parse(rest).unwrap();
    let stored = fs::read(dir.0.join("notes.txt")).unwrap();
    assert_eq!(stored, b"first line\nsecond line\n");
    assert!(done.confirms(
        stored.len() as u64,
        &resound::digest::hash(done.digest.algorithm, &stored)
    ));
}

/// A bare seed name that starts like a framed header (`2024 notes.txt`) gets its `ok` after a
/// second of silence, not after the header timeout.
#[test]
fn seed_name_with_leading_digits_does_not_wait_for_the_header_timeout() {
    let dir = Dir::new("digits-space");
    // The header timeout is past the read timeout: an `ok` can only come from the silence rule.
    let server = start_files(&dir.0, |c| c.header_timeout = Duration::from_secs(3600));
    let mut s = connect(server.addr(ServiceKind::Files));
    s.write_all(b"2024 notes.txt").unwrap();
    let mut ok = [0; 2];
    s.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok");
    s.write_all(b"agenda").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(
        String::from_utf8(read_to_eof(&mut s))
            .unwrap()
            .starts_with("done 6 ")
    );
    assert_eq!(fs::read(dir.0.join("2024 notes.txt")).unwrap(), b"agenda");
}

/// Every hostile name is refused with an error reply, and nothing is created anywhere.
#[test]
fn every_hostile_name_is_refused_and_nothing_is_created() {
    // The received directory sits alone in a parent, so an escape would show up there.
    let parent = Dir::new("hostile");
    let dir = Dir(parent.0.join("received"));
    let server = start_files(&dir.0, |_| {});
    let long = "n".repeat(256);
    let names: Vec<&[u8]> = vec![
        b"",
        b".",
        b"..",
        b"../escape",
        b"/etc/passwd",
        b"sub/dir",
        b"back\\slash",
        b"nul\0byte",
        b"esc\x1b]0;pwned\x07",
        b".resound-partial",
        long.as_bytes(),
    ];
    for name in names {
        let mut header = b"5 ".to_vec();
        header.extend_from_slice(name);
        header.push(b'\n');
        let (_, reply) = send_header(server.addr(ServiceKind::Files), &header);
        assert!(
            reply.starts_with("error: invalid name"),
            "{name:?}: {reply}"
        );
    }
    // The same names in the seed form.
    for name in [&b"../escape"[..], b"a/b", b".."] {
        let mut s = connect(server.addr(ServiceKind::Files));
        s.write_all(name).unwrap();
        let reply = String::from_utf8(read_to_eof(&mut s)).unwrap();
        assert!(
            reply.starts_with("error: invalid name"),
            "{name:?}: {reply}"
        );
    }
    dir.assert_holds(&[]);
    drop(server);
    // Nothing appeared next to the directory either.
    parent.assert_holds(&["received"]);
}

/// 20 transfers at once all arrive intact.
#[test]
fn twenty_concurrent_transfers() {
    let dir = Dir::new("concurrent");
    let src = Dir::new("concurrent-src");
    let server = start_files(&dir.0, |_| {});
    let to = server.addr(ServiceKind::Files);
    let senders: Vec<_> = (0..20)
        .map(|i| {
            let file = src.0.join(format!("file-{i:02}"));
            fs::write(&file, pattern(i * 1000, 200_000 + i * 7919)).unwrap();
            thread::spawn(move || {
                resound::send::send(&resound::send::SendOptions {
                    source: resound::send::Source::Path(&file),
                    to,
                    name: None,
                    timeout: Some(TIMEOUT),
                    progress: false,
                    seed: false,
                    sendfile: true,
                })
                .map(|sent| sent.bytes)
                .map_err(|e| e.to_string())
            })
        })
        .collect();
    for (i, s) in senders.into_iter().enumerate() {
        assert_eq!(s.join().unwrap(), Ok(200_000 + i as u64 * 7919));
    }
    for i in 0..20usize {
        let got = fs::read(dir.0.join(format!("file-{i:02}"))).unwrap();
        assert_same(&got, &pattern(i * 1000, 200_000 + i * 7919));
    }
    let want: Vec<String> = (0..20).map(|i| format!("file-{i:02}")).collect();
    dir.assert_holds(&want.iter().map(String::as_str).collect::<Vec<_>>());
}

/// A reset in the middle of the content leaves no file and no temporary.
#[test]
fn reset_mid_stream_leaves_nothing() {
    let dir = Dir::new("reset");
    let server = start_files(&dir.0, |_| {});
    let (mut s, reply) = send_header(server.addr(ServiceKind::Files), b"1000000 cut.bin\n");
    assert_eq!(reply, "ok");
    s.write_all(&pattern(0, 300_000)).unwrap();
    SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
    // Stopping the server waits for every connection to be released.
    server.stop().unwrap();
    dir.assert_holds(&[]);
}

/// A framed transfer that closes cleanly but early is reported short, and leaves nothing.
#[test]
fn framed_transfer_closed_early_leaves_nothing() {
    let dir = Dir::new("short");
    let server = start_files(&dir.0, |_| {});
    let (mut s, reply) = send_header(server.addr(ServiceKind::Files), b"100 short.txt\n");
    assert_eq!(reply, "ok");
    s.write_all(&[b'x'; 50]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let answer = String::from_utf8(read_to_eof(&mut s)).unwrap();
    assert_eq!(answer, "error: short transfer: 50 of 100 bytes\n");
    server.stop().unwrap();
    dir.assert_holds(&[]);
}

/// An existing file is never overwritten; the sender is told, and `resound send` fails.
#[test]
fn existing_name_is_not_overwritten() {
    let dir = Dir::new("exists");
    fs::write(dir.0.join("keep.txt"), b"precious").unwrap();
    let src = Dir::new("exists-src");
    fs::write(src.0.join("keep.txt"), b"intruder").unwrap();
    let server = start_files(&dir.0, |_| {});
    let (ok, _, stderr) = resound_send(
        &src.0.join("keep.txt"),
        server.addr(ServiceKind::Files),
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.starts_with(&format!(
            "resound send: {} refused the file: file exists; send it under another name with \
             --name NAME",
            server.addr(ServiceKind::Files)
        )),
        "{stderr}"
    );
    assert_eq!(fs::read(dir.0.join("keep.txt")).unwrap(), b"precious");
    // Under another name it goes through.
    let (ok, _, stderr) = resound_send(
        &src.0.join("keep.txt"),
        server.addr(ServiceKind::Files),
        &["--name", "keep-2.txt"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(fs::read(dir.0.join("keep-2.txt")).unwrap(), b"intruder");
}

/// A declared size over --max-file-size is refused before any content; a seed-form transfer
/// that grows past it is stopped and leaves nothing.
#[test]
fn max_file_size_is_enforced_both_ways() {
    let dir = Dir::new("max");
    let server = start_files(&dir.0, |c| c.max_file_size = 1000);
    let (_, reply) = send_header(server.addr(ServiceKind::Files), b"1001 big\n");
    assert_eq!(reply, "error: file too large: the limit is 1000 bytes\n");

    let mut s = connect(server.addr(ServiceKind::Files));
    s.write_all(b"growing").unwrap();
    let mut ok = [0; 2];
    s.read_exact(&mut ok).unwrap();
    let _ = s.write_all(&[0; 5000]);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.starts_with(b"error: file too large"), "{answer:?}");
    server.stop().unwrap();
    dir.assert_holds(&[]);
}

/// A client that connects and never sends, or trickles its header byte by byte (a
/// slowloris), is told and closed at the header timeout.
#[test]
fn header_that_never_arrives_times_out() {
    let dir = Dir::new("slowloris");
    let server = start_files(&dir.0, |c| c.header_timeout = Duration::from_millis(300));
    let mut silent = connect(server.addr(ServiceKind::Files));
    assert_eq!(read_to_eof(&mut silent), b"error: header timeout\n");

    let mut trickle = connect(server.addr(ServiceKind::Files));
    let mut writer = trickle.try_clone().unwrap();
    thread::spawn(move || {
        // One byte every 20 ms (pacing, not synchronisation): never silent, never a header.
        while writer.write_all(b"7").is_ok() {
            thread::sleep(Duration::from_millis(20));
        }
    });
    let mut answer = Vec::new();
    let _ = trickle.read_to_end(&mut answer); // EOF, or a reset once the trickle hits a closed socket
    assert!(answer.starts_with(b"error: header timeout\n"), "{answer:?}");
    dir.assert_holds(&[]);
}

/// A seed-form name that looks like the start of a framed header ("123") is taken as a name
/// once the header timeout shows that no newline is coming.
#[test]
fn seed_name_that_looks_like_a_header_still_works() {
    let dir = Dir::new("digits");
    let server = start_files(&dir.0, |c| c.header_timeout = Duration::from_millis(300));
    let mut s = connect(server.addr(ServiceKind::Files));
    s.write_all(b"123").unwrap();
    let mut ok = [0; 2];
    s.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok");
    s.write_all(b"digits").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(
        String::from_utf8(read_to_eof(&mut s))
            .unwrap()
            .starts_with("done 6 ")
    );
    assert_eq!(fs::read(dir.0.join("123")).unwrap(), b"digits");
}

/// A write error (here RLIMIT_FSIZE, as a full disk would) answers `error`, leaves nothing —
/// with named temporaries, the one that was written is removed — and the server goes on
/// serving. A process of its own (for the limit), so the named temporaries are chosen with
/// the environment variable.
fn write_error_is_reported_and_the_server_carries_on(named: bool) {
    let dir = Dir::new(&format!("fsize-{named}"));
    let mut cmd = files_command(&dir.0);
    with_rlimit(&mut cmd, libc::RLIMIT_FSIZE, 1 << 20);
    if named {
        cmd.env(NAMED_TEMPORARIES_ENV, "1");
    }
    let mut server = ServerProcess::start_command(cmd, 1);
    let addr = server.addr("files");
    let (mut s, reply) = send_header(addr, b"3000000 too-big.bin\n");
    assert_eq!(reply, "ok");
    // The temporary exists from the `ok` on: visible only if named, so that the check after
    // the failure below means something.
    let during = dir.names();
    if named {
        assert!(
            during.len() == 1 && during[0].starts_with(".resound-tmp-"),
            "{during:?}"
        );
    } else {
        assert!(during.is_empty(), "{during:?}");
    }
    let _ = s.write_all(&pattern(0, 3_000_000));
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("error: cannot store file"), "{answer}");
    // The temporary is dropped before the error is sent.
    dir.assert_holds(&[]);

    // Still serving.
    let (mut s, reply) = send_header(addr, b"5 small.txt\n");
    assert_eq!(reply, "ok");
    s.write_all(b"small").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(
        String::from_utf8(read_to_eof(&mut s))
            .unwrap()
            .starts_with("done 5 ")
    );
    stop_gracefully(&mut server);
    dir.assert_holds(&["small.txt"]);
}

#[test]
fn write_error_is_reported_and_leaves_nothing() {
    write_error_is_reported_and_the_server_carries_on(false);
}

#[test]
fn write_error_is_reported_and_leaves_nothing_with_named_temporaries() {
    write_error_is_reported_and_the_server_carries_on(true);
}

/// A graceful stop lets a transfer in progress finish.
#[test]
fn graceful_stop_lets_a_transfer_finish() {
    let dir = Dir::new("drain");
    let server = start_files(&dir.0, |_| {});
    let (mut s, reply) = send_header(server.addr(ServiceKind::Files), b"10 late.txt\n");
    assert_eq!(reply, "ok");
    s.write_all(b"01234").unwrap();
    server.handle().shutdown();
    s.write_all(b"56789").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(
        String::from_utf8(read_to_eof(&mut s))
            .unwrap()
            .starts_with("done 10 ")
    );
    server.join().unwrap();
    assert_eq!(fs::read(dir.0.join("late.txt")).unwrap(), b"0123456789");
}
