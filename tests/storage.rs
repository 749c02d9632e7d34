//! Storage that never leaves `--dir`, over real sockets on loopback: several servers on one
//! directory, the named-temporaries fallback, the symbolic-link attack of issue 15, directory
//! faults found before `ok`, and a low descriptor limit. (The transfer timeout counted from
//! `ok`, issue 15, is tested on a fake clock in `src/service/files.rs`.)

mod util;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use resound::ServiceKind;
use socket2::SockRef;
use util::*;

/// `resound serve --files 127.0.0.1:0 --dir DIR`, as a process of its own; with `named`, on
/// named temporaries.
fn serve_files(dir: &Path, named: bool, extra: &[&str]) -> ServerProcess {
    let mut cmd = files_command(dir);
    cmd.args(extra);
    if named {
        cmd.env(NAMED_TEMPORARIES_ENV, "1");
    }
    ServerProcess::start_command(cmd, 1)
}

/// One whole framed transfer; returns what the server said after `ok` (or its refusal).
fn transfer(addr: SocketAddr, name: &str, content: &[u8]) -> String {
    let (mut s, reply) = send_header(addr, format!("{} {name}\n", content.len()).as_bytes());
    if reply != "ok" {
        return reply;
    }
    s.write_all(content).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    String::from_utf8(read_to_eof(&mut s)).unwrap()
}

/// Transfers that fail every way that leaves a temporary behind if anything does: a reset in
/// mid-stream, a clean close short of the declared size, content past the declared size.
fn failed_transfers(addr: SocketAddr) {
    let (mut s, reply) = send_header(addr, b"100000 reset.bin\n");
    assert_eq!(reply, "ok");
    s.write_all(&pattern(0, 50_000)).unwrap();
    SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);

    let (mut s, reply) = send_header(addr, b"10 short.txt\n");
    assert_eq!(reply, "ok");
    s.write_all(b"12345").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        String::from_utf8(read_to_eof(&mut s)).unwrap(),
        "error: short transfer: 5 of 10 bytes\n"
    );

    let (mut s, reply) = send_header(addr, b"2 long.txt\n");
    assert_eq!(reply, "ok");
    let _ = s.write_all(b"abc");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.starts_with(b"error: more data"), "{answer:?}");
}

// ---------------------------------------------------------------- several servers, one dir

/// Two files services on one `--dir` (two processes): starting the second, and its own
/// transfers good and bad, do not harm the first's transfer in progress; afterwards the
/// directory holds exactly the stored files.
fn two_processes_on_one_dir(named: bool) {
    let dir = Dir::new(&format!("two-{named}"));
    // A temporary as another process (or a crash) leaves it in the fallback: never removed.
    let theirs = ".resound-tmp-1-0123456789abcdef";
    if named {
        fs::write(dir.path(theirs), b"not ours").unwrap();
    }
    let mut first = serve_files(&dir.0, named, &[]);
    let big = pattern(7, 3 << 20);
    let (mut s, reply) = send_header(
        first.addr("files"),
        format!("{} big.bin\n", big.len()).as_bytes(),
    );
    assert_eq!(reply, "ok");
    s.write_all(&big[..1 << 20]).unwrap();

    let mut second = serve_files(&dir.0, named, &[]);
    let done = transfer(second.addr("files"), "second.txt", b"from the second");
    assert!(done.starts_with("done 15 "), "{done}");
    failed_transfers(second.addr("files"));
    // The same name as the transfer in progress: free there, so it is received; the first
    // to finish keeps the name, the other is told.
    let (mut rival, reply) = send_header(second.addr("files"), b"5 big.bin\n");
    assert_eq!(reply, "ok");

    s.write_all(&big[1 << 20..]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let done = String::from_utf8(read_to_eof(&mut s)).unwrap();
    assert!(done.starts_with(&format!("done {} ", big.len())), "{done}");
    assert_same(&fs::read(dir.path("big.bin")).unwrap(), &big);
    rival.write_all(b"rival").unwrap();
    rival.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        String::from_utf8(read_to_eof(&mut rival)).unwrap(),
        "error: file exists\n"
    );
    stop_gracefully(&mut second);
    stop_gracefully(&mut first);

    let mut want = vec!["big.bin", "second.txt"];
    if named {
        want.insert(0, theirs);
    }
    assert_eq!(names_in(&dir.0), want);
}

#[test]
fn two_processes_on_one_dir_leave_each_other_alone() {
    two_processes_on_one_dir(false);
}

/// The same on named temporaries, the fallback for file systems without O_TMPFILE.
#[test]
fn two_processes_on_one_dir_leave_each_other_alone_with_named_temporaries() {
    two_processes_on_one_dir(true);
}

/// Two transfers of one name to two processes: the first to finish stores it, the other is
/// told `file exists`; nothing is replaced.
#[test]
fn one_name_sent_to_two_processes_is_stored_once() {
    let dir = Dir::new("one-name");
    let mut a = serve_files(&dir.0, false, &[]);
    let mut b = serve_files(&dir.0, false, &[]);
    let (mut sa, reply) = send_header(a.addr("files"), b"5 same.txt\n");
    assert_eq!(reply, "ok");
    let (mut sb, reply) = send_header(b.addr("files"), b"5 same.txt\n");
    assert_eq!(reply, "ok");
    sb.write_all(b"BBBBB").unwrap();
    sb.shutdown(Shutdown::Write).unwrap();
    assert!(
        String::from_utf8(read_to_eof(&mut sb))
            .unwrap()
            .starts_with("done 5 ")
    );
    sa.write_all(b"AAAAA").unwrap();
    sa.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        String::from_utf8(read_to_eof(&mut sa)).unwrap(),
        "error: file exists\n"
    );
    assert_eq!(fs::read(dir.path("same.txt")).unwrap(), b"BBBBB");
    stop_gracefully(&mut a);
    stop_gracefully(&mut b);
    assert_eq!(names_in(&dir.0), ["same.txt"]);
}

// ---------------------------------------------------------------- never leaving --dir

/// Issue 15's attack: `ln -s /some/dir DIR/.resound-partial`, then serve. The target keeps
/// every file, and receives nothing, through start, good transfers and failed ones.
fn link_at_the_old_partial_directory(named: bool) {
    let dir = Dir::new(&format!("attack-{named}"));
    let target = Dir::new(&format!("attack-target-{named}"));
    fs::write(target.path("precious-1"), b"one").unwrap();
    fs::write(target.path("precious-2"), b"two").unwrap();
    symlink(&target.0, dir.path(".resound-partial")).unwrap();

    let mut server = serve_files(&dir.0, named, &[]);
    let addr = server.addr("files");
    assert!(transfer(addr, "stored.txt", b"hello").starts_with("done 5 "));
    failed_transfers(addr);
    // The link's own name is no file name.
    let (_, reply) = send_header(addr, b"1 .resound-partial\n");
    assert!(reply.starts_with("error: invalid name"), "{reply}");
    stop_gracefully(&mut server);

    assert_eq!(names_in(&target.0), ["precious-1", "precious-2"]);
    assert_eq!(fs::read(target.path("precious-1")).unwrap(), b"one");
    assert_eq!(fs::read(target.path("precious-2")).unwrap(), b"two");
    assert_eq!(names_in(&dir.0), [".resound-partial", "stored.txt"]);
    assert!(
        fs::symlink_metadata(dir.path(".resound-partial"))
            .unwrap()
            .is_symlink()
    );
    // And the operator was told (the log lines are kept after the process ends).
    server.wait_for_log(".resound-partial: a symbolic link");
}

#[test]
fn link_at_the_old_partial_directory_leaves_its_target_untouched() {
    link_at_the_old_partial_directory(false);
}

#[test]
fn link_at_the_old_partial_directory_leaves_its_target_untouched_with_named_temporaries() {
    link_at_the_old_partial_directory(true);
}

/// `--dir` that is a symbolic link, or a file: the server refuses to start, naming the path.
#[test]
fn dir_that_is_a_link_or_a_file_is_refused_at_start() {
    let parent = Dir::new("dir-link");
    fs::create_dir(parent.path("real")).unwrap();
    symlink(parent.path("real"), parent.path("link")).unwrap();
    fs::write(parent.path("file"), b"").unwrap();
    for (name, why) in [("link", "symbolic link"), ("file", "not a directory")] {
        let path = parent.path(name);
        let (status, stderr) = run_binary(&[
            "serve",
            "--files",
            "127.0.0.1:0",
            "--dir",
            path.to_str().unwrap(),
        ]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    }
    assert!(names_in(&parent.path("real")).is_empty());
}

// ---------------------------------------------------------------- faults before `ok`

/// A directory the server cannot write into is refused at the header — never after the
/// upload — and the error names it; the start warns. (Root writes anywhere, so as root the
/// server runs as `nobody`.)
#[test]
fn read_only_dir_is_refused_at_the_header_naming_it() {
    let parent = Dir::new("read-only");
    let dir = parent.path("received");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = files_command(&dir);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // SAFETY: setgroups, setgid and setuid are async-signal-safe; they run in the child
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let server = ServerProcess::start_command(cmd, 1);
    server.wait_for_log("cannot create files here");
    let addr = server.addr("files");
    let refused = format!(
        "error: cannot store file: {}: Permission denied",
        dir.display()
    );
    let (_, reply) = send_header(addr, b"5 a.txt\n");
    assert!(reply.starts_with(&refused), "{reply}");
    // The seed form hears it in place of its `ok`, too.
    let mut s = connect(addr);
    s.write_all(b"seed.txt").unwrap();
    let reply = String::from_utf8(read_to_eof(&mut s)).unwrap();
    assert!(reply.starts_with(&refused), "{reply}");
    assert!(names_in(&dir).is_empty());
}

/// `rm -rf DIR` while serving: a transfer is refused at its header, saying so and naming DIR;
/// once DIR is created again, the server stores into the new one.
#[test]
fn removed_dir_is_reported_and_a_recreated_one_is_used() {
    let parent = Dir::new("removed");
    let dir = parent.path("received");
    let server = start_files(&dir, |_| {});
    let addr = server.addr(ServiceKind::Files);
    assert!(transfer(addr, "before.txt", b"1").starts_with("done 1 "));
    fs::remove_dir_all(&dir).unwrap();
    let (_, reply) = send_header(addr, b"1 during.txt\n");
    assert_eq!(
        reply,
        format!(
            "error: cannot store file: {}: the directory was removed while the server was \
             running\n",
            dir.display()
        )
    );
    assert!(!dir.exists(), "the server does not create it again itself");
    fs::create_dir(&dir).unwrap();
    assert!(transfer(addr, "after.txt", b"2").starts_with("done 1 "));
    assert_eq!(names_in(&dir), ["after.txt"]);
}

// ---------------------------------------------------------------- descriptors

/// Under a low RLIMIT_NOFILE with the default `--max-conns` (the limit − 32), each transfer
/// needs a second descriptor for its file. Clients for whom none is left hear `error: too many
/// connections` — at accept or at the header — never `os error 24`; the others are stored,
/// and once they are done the server serves again.
#[test]
fn no_client_sees_os_error_24_under_a_low_descriptor_limit() {
    let dir = Dir::new("emfile");
    let mut cmd = files_command(&dir.0);
    with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 64);
    let mut server = ServerProcess::start_command(cmd, 1);
    let addr = server.addr("files");
    // 40 clients connect before any sends its header: the server admits 32 (--max-conns),
    // each holding one descriptor, and then has fewer left than headers to come.
    let mut clients: Vec<TcpStream> = (0..40).map(|_| connect(addr)).collect();
    for (i, s) in clients.iter_mut().enumerate() {
        // A client turned away at accept may be closed already; its reply is read below.
        let _ = s.write_all(format!("5 f-{i:02}\n").as_bytes());
    }
    let mut stored = Vec::new();
    let mut turned_away = 0;
    let mut receiving = Vec::new();
    for (i, mut s) in clients.into_iter().enumerate() {
        let mut reply = [0; 2];
        s.read_exact(&mut reply).unwrap();
        if &reply == b"ok" {
            receiving.push((i, s));
            continue;
        }
        let mut rest = reply.to_vec();
        let _ = s.read_to_end(&mut rest); // a reset after the line is fine
        assert_eq!(
            String::from_utf8_lossy(&rest),
            "error: too many connections\n",
            "client {i}"
        );
        turned_away += 1;
    }
    for (i, mut s) in receiving {
        s.write_all(b"12345").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let done = String::from_utf8(read_to_eof(&mut s)).unwrap();
        assert!(done.starts_with("done 5 "), "client {i}: {done}");
        stored.push(format!("f-{i:02}"));
    }
    assert!(
        !stored.is_empty() && turned_away > 8,
        "stored {stored:?}, turned away {turned_away}"
    );
    assert_eq!(names_in(&dir.0), stored);
    // Descriptors are free again: a new client is served.
    assert!(transfer(addr, "later.txt", b"again").starts_with("done 5 "));
    stop_gracefully(&mut server);
}
