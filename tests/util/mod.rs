//! Shared helpers for the integration tests: start a server (in-process or as the real binary)
//! on port 0, connect with timeouts, generate and check payloads.
//!
//! Every socket here talks to loopback only and every blocking call has a timeout, so a broken
//! server fails a test instead of hanging it.

#![allow(dead_code)] // each test file uses a different subset

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use resound::{Config, Running, ServiceKind};

/// The longest any single blocking operation in a test may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A config with echo and UDP on ephemeral loopback ports.
pub fn config() -> Config {
    Config {
        echo: Some("127.0.0.1:0".parse().unwrap()),
        udp: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    }
}

/// Start an in-process server (echo + UDP on port 0) after letting `tweak` adjust the config.
pub fn start(tweak: impl FnOnce(&mut Config)) -> Running {
    let mut config = config();
    tweak(&mut config);
    resound::spawn(config).expect("server starts")
}

/// Connect with read and write timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Connect to the echo service of an in-process server.
pub fn connect_echo(server: &Running) -> TcpStream {
    connect(server.addr(ServiceKind::Echo))
}

/// Read until EOF (the read timeout bounds each read).
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("read to EOF");
    got
}

/// Write `data` from a helper thread, then half-close; read everything back until EOF on this
/// thread. Reading and writing at once is required: echo cannot run ahead of a client that
/// does not read.
pub fn echo_round_trip(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(&data).expect("write");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut reader = stream;
    let got = read_to_eof(&mut reader);
    sender.join().unwrap();
    got
}

/// `len` bytes of a deterministic pseudo-random stream, starting at `offset` in it: the stream
/// `resound bench` sends ([`Pattern`](resound::bench::payload::Pattern)), whose period is a prime
/// (65 521 bytes), so a lost, duplicated or misplaced chunk of any size a server uses shows up as
/// a mismatch.
pub fn pattern(offset: usize, len: usize) -> Vec<u8> {
    static PATTERN: std::sync::OnceLock<resound::bench::payload::Pattern> =
        std::sync::OnceLock::new();
    PATTERN
        .get_or_init(resound::bench::payload::Pattern::new)
        .stream(0, offset as u64, len)
}

/// Assert `got` equals `want`, reporting the first difference instead of two huge buffers.
pub fn assert_same(got: &[u8], want: &[u8]) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("payload differs at byte {i} of {}", want.len());
    }
    assert_eq!(got.len(), want.len(), "payload length");
}

// --- the real binary ---

/// `resound serve ARGS` as a child process, with the addresses it printed.
pub struct ServerProcess {
    pub child: Child,
    pub bound: Vec<(String, String, SocketAddr)>,
    /// Lines the server logged, collected by a background thread.
    stderr_lines: mpsc::Receiver<String>,
    /// Lines on stdout after the listening lines; disconnects when the process exits (its end
    /// of the pipe closes), which is how `wait` learns of the exit without polling.
    stdout_lines: mpsc::Receiver<String>,
}

impl ServerProcess {
    /// Start `resound serve ARGS` and wait for its `listening` lines (one per socket in
    /// `expect`).
    pub fn start(args: &[&str], expect: usize) -> ServerProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_resound"));
        cmd.arg("serve").args(args);
        ServerProcess::start_command(cmd, expect)
    }

    /// Start a prepared `resound serve` command (e.g. with resource limits).
    pub fn start_command(mut cmd: Command, expect: usize) -> ServerProcess {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn resound");
        let stderr_lines = collect_lines(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut bound = Vec::new();
        while bound.len() < expect {
            let line = rx
                .recv_timeout(TIMEOUT)
                .expect("server prints its listening lines");
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts.len(), 4, "unexpected stdout line {line:?}");
            assert_eq!(parts[0], "listening", "unexpected stdout line {line:?}");
            bound.push((
                parts[1].to_string(),
                parts[2].to_string(),
                parts[3].parse().expect("address"),
            ));
        }
        ServerProcess {
            child,
            bound,
            stderr_lines,
            stdout_lines: rx,
        }
    }

    /// The address printed for `service`.
    pub fn addr(&self, service: &str) -> SocketAddr {
        self.bound
            .iter()
            .find(|(s, _, _)| s == service)
            .unwrap_or_else(|| panic!("no {service} socket"))
            .2
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Wait for the process to exit, at most `TIMEOUT`.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("server did not exit in time"),
            }
        }
        self.child.wait().expect("wait")
    }

    /// Wait for a log line containing `needle`; returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?}"),
            }
        }
    }

    /// Every log line up to and including the first one containing `needle`.
    pub fn logs_until(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(_) => panic!("no log line containing {needle:?}"),
            }
        }
    }

    /// VmRSS of the server in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(stderr: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// VmRSS of process `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    resound::procfs::rss_kib(pid).expect("read /proc/PID/status")
}

/// Parse `key=value` pairs out of a stats log line.
pub fn stat(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .expect("number")
}

/// Run `resound ARGS`, which is expected to exit by itself, and return (status, stderr).
/// Bounded like every run here (see [`run_resound`]).
pub fn run_binary(args: &[&str]) -> (ExitStatus, String) {
    let out = run_resound(args, Stdio::null(), None);
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What writes a child's standard input, on a thread of its own, while the test reads its output.
pub type Feed = Box<dyn FnOnce(ChildStdin) + Send>;

/// Run `resound ARGS` to completion and collect what it printed. Its standard input is `stdin`,
/// written by `feed` (on a thread) if `stdin` is piped. Bounded: a process still running, or
/// still holding its output open, after [`TIMEOUT`] (a server that started when the test meant
/// it to refuse, a sender that hangs) is killed and the test fails instead of hanging.
pub fn run_resound<S: AsRef<OsStr>>(args: &[S], stdin: Stdio, feed: Option<Feed>) -> Output {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_resound"))
        .args(&args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn resound");
    if let Some(feed) = feed {
        let pipe = child.stdin.take().expect("piped stdin");
        thread::spawn(move || feed(pipe));
    }
    // Both pipes reach EOF when the process exits; the child is reaped only after that, so a
    // kill here can never hit another process that reused its pid.
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let deadline = Instant::now() + TIMEOUT;
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    };
    match (collect(stdout), collect(stderr)) {
        (Some(stdout), Some(stderr)) => Output {
            status: child.wait().expect("wait for resound"),
            stdout,
            stderr,
        },
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("resound {args:?} did not finish within {TIMEOUT:?}");
        }
    }
}

/// Everything `pipe` gives until EOF, read on a thread of its own.
fn read_all(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    rx
}

/// Wait until `fd` is writable or `timeout` passes; true if writable.
pub fn wait_writable(stream: &TcpStream, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    n > 0
}

/// Write `data` without reading anything back, until it is all sent or the socket has accepted
/// nothing for `stall` (the peer stopped reading). Returns the bytes written. The stream is
/// left non-blocking.
pub fn write_until_stalled(stream: &mut TcpStream, data: &[u8], stall: Duration) -> usize {
    stream.set_nonblocking(true).unwrap();
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_writable(stream, stall) {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("write: {e}"),
        }
    }
    done
}

/// Wait until the peer reset or fully closed `stream` (POLLERR/POLLHUP), ignoring unread data;
/// true if it did within `timeout`.
pub fn wait_hangup(stream: &TcpStream, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0, // POLLERR and POLLHUP are always reported; nothing else is asked for
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    n > 0
}

/// Connect `n` clients to the broadcast service at `addr` and make sure the server has admitted
/// every one before returning: each newcomer sends `join K` and every earlier client must
/// receive it (a line can only reach members, and only members' lines are read). Those join
/// lines are consumed here.
pub fn join_room(addr: SocketAddr, n: usize) -> Vec<BufReader<TcpStream>> {
    let mut room: Vec<BufReader<TcpStream>> = Vec::new();
    for k in 0..n {
        let mut newcomer = connect(addr);
        if k > 0 {
            newcomer
                .write_all(format!("join {k}\n").as_bytes())
                .unwrap();
            for member in &mut room {
                let mut line = String::new();
                member.read_line(&mut line).unwrap();
                assert_eq!(line, format!("join {k}\n"));
            }
        }
        room.push(BufReader::new(newcomer));
    }
    room
}

// --- the files service ---

/// Set to 1, this environment variable makes a `resound serve` process receive into named
/// temporaries (the fallback for file systems without `O_TMPFILE`), as `storage.rs` documents:
/// the only way to choose them in a process of its own.
pub const NAMED_TEMPORARIES_ENV: &str = "RESOUND_NAMED_TEMPORARIES";

/// A fresh, empty directory under the system's temp dir, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    /// `resound-test-TAG-PID`, created empty.
    pub fn new(tag: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("resound-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    /// `DIR/NAME`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Write `data` to `DIR/NAME`; returns the path.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, data).unwrap();
        path
    }

    /// Every name in the directory, hidden ones included, sorted.
    pub fn names(&self) -> Vec<String> {
        names_in(&self.0)
    }

    /// Assert that the directory holds exactly `want` (sorted), nothing else: neither a file
    /// that should not have been stored nor a temporary left behind, hidden or not.
    pub fn assert_holds(&self, want: &[&str]) {
        let names = self.names();
        assert_eq!(names, want, "{} holds {names:?}", self.0.display());
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // Make it removable again (a test may have made it read-only).
        let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Every name in `dir`, hidden ones included, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// An in-process server (see [`start`]) with the files service on port 0 too, storing into
/// `dir`, after letting `tweak` adjust the config.
pub fn start_files(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Running {
    let dir = dir.to_path_buf();
    start(|c| {
        c.files = Some("127.0.0.1:0".parse().unwrap());
        c.dir = dir;
        tweak(c);
    })
}

/// `resound serve --files 127.0.0.1:0 --dir DIR`, to be adjusted (arguments, environment,
/// limits) and started with [`ServerProcess::start_command`].
pub fn files_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resound"));
    cmd.args(["serve", "--files", "127.0.0.1:0", "--dir"])
        .arg(dir);
    cmd
}

/// Stop a server process as an operator would (SIGTERM) and wait for it to exit cleanly:
/// every connection has been released and every temporary closed when this returns.
pub fn stop_gracefully(server: &mut ServerProcess) {
    server.signal(libc::SIGTERM);
    assert!(server.wait().success(), "the server exits 0 on SIGTERM");
}

/// Give the process `cmd` will start the resource limit `resource` (soft and hard) = `value`.
pub fn with_rlimit(cmd: &mut Command, resource: libc::__rlimit_resource_t, value: libc::rlim_t) {
    // SAFETY: setrlimit is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::setrlimit(resource, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Connect to a files service and send `header`; returns the socket and the reply: `ok`, or
/// the whole error line.
pub fn send_header(addr: SocketAddr, header: &[u8]) -> (TcpStream, String) {
    let mut s = connect(addr);
    s.write_all(header).unwrap();
    let mut reply = [0; 2];
    s.read_exact(&mut reply).unwrap();
    let mut reply = reply.to_vec();
    if reply != b"ok" {
        s.read_to_end(&mut reply).unwrap();
    }
    (s, String::from_utf8_lossy(&reply).into_owned())
}
