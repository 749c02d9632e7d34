//! The examples (`examples/01_echo.rs` ... `04_files.rs`) run as real processes, talked to over
//! loopback the way a learner would with `nc`, so that they cannot rot.
//!
//! Each example prints the address it bound as its first line on stdout (the last word of the
//! line), and then one line per thing that happened; the tests read those lines instead of
//! sleeping. Every read has a timeout, every port is 0, and every process is killed and every
//! directory removed when its test ends, passed or not.
//!
//! Where the binaries come from: `cargo test` builds every example before it runs any test,
//! into `target/<profile>/examples/`, beside the `deps/` directory this test runs from. A lone
//! `cargo test --test examples` builds none of them, though, and would run stale ones after an
//! edit; so the first test that needs an example runs `cargo build --examples` once, with the
//! cargo, manifest and profile of this run (a no-op taking a fraction of a second when nothing
//! changed), and then looks next to `deps/`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The longest any one wait in these tests may take.
const TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- running an example

/// `target/<profile>/examples/NAME`, freshly built.
fn example_path(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(build_examples)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing after `cargo build --examples`",
        path.display()
    );
    path
}

/// Run `cargo build --examples` for the profile this test was built with; returns the directory
/// the examples are in.
fn build_examples() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // .../target/<profile>/deps/examples-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => return Err("cannot tell the build profile".into()),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(cargo)
        .args(["build", "--examples", "--quiet", "--profile", profile])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build --examples failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(profile_dir.join("examples"))
}

/// An example running as a child process. Killed when dropped.
struct Example {
    name: String,
    child: Child,
    /// The address it printed on its first line.
    addr: SocketAddr,
    /// Its stdout, line by line; disconnects when the process exits.
    lines: Receiver<String>,
    /// Every stdout line seen so far, for failure messages.
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Example {
    /// Start `examples/NAME ARGS` and read the address from its first line.
    fn start(name: &str, args: &[&str]) -> Example {
        let mut child = Command::new(example_path(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = BufReader::new(child.stderr.take().unwrap());
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in pipe.lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut example = Example {
            name: name.into(),
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            lines,
            seen: Vec::new(),
            stderr,
        };
        let first = example.expect_line("");
        let word = first.split_whitespace().last().unwrap_or_default();
        example.addr = word
            .parse()
            .unwrap_or_else(|_| panic!("{name}: first line {first:?} does not end in an address"));
        example
    }

    /// The next stdout line containing `needle`, or why none came: the process exited, or
    /// nothing matched within [`TIMEOUT`].
    fn line(&mut self, needle: &str) -> Result<String, String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no line containing {needle:?} within {TIMEOUT:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("exited before printing a line with {needle:?}"));
                }
            }
        }
    }

    /// The next stdout line containing `needle`; fails the test, with everything the example
    /// printed, if none comes.
    fn expect_line(&mut self, needle: &str) -> String {
        self.line(needle)
            .unwrap_or_else(|why| panic!("{}", self.report(&why)))
    }

    /// A failure message: what went wrong, then all the example printed.
    fn report(&self, why: &str) -> String {
        format!(
            "{}: {why}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name,
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Wait for the process to exit by itself (its stdout closes), at most [`TIMEOUT`].
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("{}", self.report("did not exit")),
            }
        }
        self.child.wait().expect("wait")
    }

    /// The bound address with 0.0.0.0 replaced by 127.0.0.1: where a local client connects.
    fn local(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.addr.port()))
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("resound-examples-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A TCP connection with read and write timeouts.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// `len` bytes that no off-by-some-bytes bug reproduces by chance (period 251, a prime).
fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect()
}

fn read_line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a line");
    line
}

// ---------------------------------------------------------------- 01_echo

/// A megabyte comes back byte for byte even though it is four times the server's bound on
/// owed echo (backpressure, then resumption); after our half-close the rest and EOF arrive,
/// and the server prints ESTABLISHED -> CLOSE-WAIT -> CLOSED for this very connection.
#[test]
fn echo_round_trip_half_close_and_its_phases() {
    let mut echo = Example::start("01_echo", &["127.0.0.1:0"]);
    assert!(echo.addr.ip().is_loopback(), "{}", echo.addr);
    let stream = connect(echo.addr);
    let me = stream.local_addr().unwrap().to_string();
    let sent = payload(1 << 20);
    let mut writer = stream.try_clone().unwrap();
    let data = sent.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap(); // our FIN
    });
    let mut got = Vec::new();
    (&stream).read_to_end(&mut got).expect("echo, then EOF");
    sender.join().unwrap();
    assert!(
        got == sent,
        "echo differs: {} bytes back of {}",
        got.len(),
        sent.len()
    );

    let accepted = echo.expect_line(&me);
    assert!(accepted.ends_with("LISTEN -> ESTABLISHED"), "{accepted}");
    let fin = echo.expect_line(&me);
    assert!(fin.contains("ESTABLISHED -> CLOSE-WAIT (peer FIN"), "{fin}");
    let closed = echo.expect_line(&me);
    assert!(closed.contains("CLOSE-WAIT -> CLOSED"), "{closed}");
}

/// `:0` listens on every interface (Go's `net.Listen(":0")`), no argument on 127.0.0.1, and
/// anything else is a usage error (exit status 2).
#[test]
fn echo_port_forms() {
    let mut everywhere = Example::start("01_echo", &[":0"]);
    assert!(everywhere.addr.ip().is_unspecified(), "{}", everywhere.addr);
    let mut stream = connect(everywhere.local());
    stream.write_all(b"hi\n").unwrap();
    let mut back = [0; 3];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hi\n");
    everywhere.expect_line("LISTEN -> ESTABLISHED");

    let here = Example::start("01_echo", &[]);
    assert_eq!(here.addr.ip().to_string(), "127.0.0.1");

    let out = Command::new(example_path("01_echo"))
        .arg("nonsense")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
}

// ---------------------------------------------------------------- 02_chat

/// Each client gets the other's lines and never its own; a last line without `\n` is delivered
/// with one at the sender's FIN, and the sender then gets EOF.
#[test]
fn chat_clients_see_each_other_but_not_themselves() {
    let mut chat = Example::start("02_chat", &["127.0.0.1:0"]);
    let mut a = BufReader::new(connect(chat.addr));
    let mut b = BufReader::new(connect(chat.addr));
    // A line B sent reaching A proves that both are in the room.
    b.get_mut().write_all(b"hello from b\n").unwrap();
    assert_eq!(read_line(&mut a), "hello from b\n");
    a.get_mut().write_all(b"hello from a\n").unwrap();
    // Had B got its own line, it would come first: the server read it first.
    assert_eq!(read_line(&mut b), "hello from a\n");
    // Had A got its own line, it would come before this one, sent after A's reached B.
    b.get_mut().write_all(b"bye").unwrap();
    b.get_mut().shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_line(&mut a), "bye\n");
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).expect("EOF after leaving");
    assert!(
        rest.is_empty(),
        "B got {:?}",
        String::from_utf8_lossy(&rest)
    );
    chat.expect_line("left");
}

/// A client that never reads is dropped once a megabyte is queued for it, and the room goes on.
#[test]
fn chat_drops_a_client_that_does_not_read() {
    let mut chat = Example::start("02_chat", &["127.0.0.1:0"]);
    let mut sender = BufReader::new(connect(chat.addr));
    let mut sleeper = connect(chat.addr);
    sleeper.write_all(b"sleeper here\n").unwrap();
    assert_eq!(read_line(&mut sender), "sleeper here\n");
    let sleeper_addr = sleeper.local_addr().unwrap().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = sender.get_ref().try_clone().unwrap();
    let flood = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let line = [b"x".repeat(999), b"\n".to_vec()].concat();
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) && sent < (256 << 20) {
                writer
                    .write_all(&line)
                    .expect("the server keeps reading the sender");
                sent += line.len();
            }
            sent
        })
    };
    let dropped = chat.expect_line("dropped");
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().unwrap();
    assert!(dropped.contains(&sleeper_addr), "{dropped}");
    assert!(sent > 1 << 20, "dropped after only {sent} bytes: {dropped}");

    // The room still works for a newcomer.
    let mut newcomer = BufReader::new(connect(chat.addr));
    newcomer.get_mut().write_all(b"new here\n").unwrap();
    assert_eq!(read_line(&mut sender), "new here\n");
    sender.get_mut().write_all(b"welcome\n").unwrap();
    assert_eq!(read_line(&mut newcomer), "welcome\n");
    drop(sleeper);
}

// ---------------------------------------------------------------- 03_udp

fn udp_socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket
}

/// A datagram comes back whole, from the server's address, and the server prints it.
#[test]
fn udp_echo_round_trip() {
    let mut udp = Example::start("03_udp", &["127.0.0.1:0"]);
    let socket = udp_socket();
    socket.send_to(b"ping over udp", udp.addr).unwrap();
    let mut buf = [0; 64];
    let (n, from) = socket.recv_from(&mut buf).expect("the echo");
    assert_eq!(&buf[..n], b"ping over udp");
    assert_eq!(from, udp.addr);
    let me = socket.local_addr().unwrap();
    udp.expect_line(&format!("udp {me} 13 bytes"));
}

/// The sender mode's datagram to 127.255.255.255 reaches a receiver bound to 0.0.0.0, whose
/// echo comes back to the sender.
#[test]
fn udp_broadcast_reaches_a_receiver_bound_to_every_interface() {
    let mut receiver = Example::start("03_udp", &["0"]);
    assert!(receiver.addr.ip().is_unspecified(), "{}", receiver.addr);
    let target = format!("127.255.255.255:{}", receiver.addr.port());
    let mut sender = Example::start("03_udp", &["send", &target, "hello everyone"]);
    let reply = format!(
        "reply from 127.0.0.1:{}: hello everyone",
        receiver.addr.port()
    );
    if let Err(why) = sender.line(&reply) {
        panic!(
            "{}\n\nThe broadcast did not come back. If stderr says `Permission denied`, this \
             sandbox refuses SO_BROADCAST; if nothing arrived, it does not deliver loopback \
             broadcasts (`ip route show table local` should list `broadcast 127.255.255.255 \
             dev lo`). Either way the example could not be checked here.",
            sender.report(&why)
        );
    }
    receiver.expect_line("udp 127.0.0.1:");
    assert!(sender.wait().success(), "{}", sender.report("failed"));
}

/// Why the receiver must bind 0.0.0.0: bound to 127.0.0.1, it never sees a broadcast. Shown
/// without waiting for an absence: a broadcast then a unicast datagram go out; if the first
/// echo is the unicast one, the broadcast was not delivered (loopback keeps their order).
#[test]
fn udp_receiver_bound_to_loopback_does_not_hear_broadcasts() {
    let mut receiver = Example::start("03_udp", &["127.0.0.1:0"]);
    let socket = udp_socket();
    socket.set_broadcast(true).unwrap();
    let port = receiver.addr.port();
    socket
        .send_to(b"broadcast", ("127.255.255.255", port))
        .expect("SO_BROADCAST is set; a refusal here means the sandbox forbids broadcast");
    socket.send_to(b"unicast", receiver.addr).unwrap();
    let mut buf = [0; 64];
    let (n, _) = socket.recv_from(&mut buf).expect("the unicast echo");
    assert_eq!(
        &buf[..n],
        b"unicast",
        "a receiver bound to 127.0.0.1 heard a broadcast"
    );
    let first = receiver.expect_line("udp ");
    assert!(first.ends_with(" 7 bytes"), "{first}");
}

// ---------------------------------------------------------------- 04_files

/// The seeds' sender: the bare name, wait for `ok`, the content, close. The file is stored byte
/// for byte, and the server closes after it.
#[test]
fn files_seed_sender_stores_the_file_byte_identical() {
    let dir = TempDir::new("seed");
    let mut files = Example::start("04_files", &["127.0.0.1:0", dir.0.to_str().unwrap()]);
    let mut stream = connect(files.addr);
    stream.write_all(b"report.bin").unwrap();
    let mut ok = [0; 2];
    stream.read_exact(&mut ok).expect("the reply to the name");
    assert_eq!(&ok, b"ok");
    let content = payload(3 << 20);
    stream.write_all(&content).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF once stored");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    files.expect_line(&format!("report.bin ({} bytes)", content.len()));
    let stored = fs::read(dir.0.join("report.bin")).unwrap();
    assert!(
        stored == content,
        "stored {} bytes of {}",
        stored.len(),
        content.len()
    );
}

/// A name with a `/` (or `.`, `..`) is refused with an error line and creates nothing, inside
/// the directory or out of it; an existing file is never replaced.
#[test]
fn files_refuses_paths_and_existing_names() {
    let parent = TempDir::new("refuse");
    let dir = parent.0.join("received");
    let mut files = Example::start("04_files", &["127.0.0.1:0", dir.to_str().unwrap()]);
    let send_name = |name: &[u8]| {
        let mut stream = connect(files.addr);
        stream.write_all(name).unwrap();
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .expect("a reply, then EOF");
        reply
    };
    for name in ["a/b", "../escaped", "/tmp/absolute", "..", "."] {
        let reply = send_name(name.as_bytes());
        assert_eq!(reply, "error: invalid name\n", "name {name:?}");
    }
    fs::write(dir.join("kept.txt"), b"original").unwrap();
    assert_eq!(send_name(b"kept.txt"), "error: file exists\n");
    files.expect_line("refused: file exists");

    let names: Vec<_> = fs::read_dir(&parent.0)
        .unwrap()
        .chain(fs::read_dir(&dir).unwrap())
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        ["received", "kept.txt"],
        "only what was there before"
    );
    assert_eq!(fs::read(dir.join("kept.txt")).unwrap(), b"original");
}
