//! Past one process: `--bridge` nodes sharing a broadcast room through a real `redis-server`,
//! and `--reuseport` processes sharing a port. Every process is the real binary; every port is
//! picked by the kernel; every wait is on a log line or a read, bounded by `util::TIMEOUT`.
//!
//! These tests need `redis-server`. On a fresh Debian machine run as root (as CI is), the first
//! test that needs it installs it (`apt-get install -y redis-server`), so the README's one test
//! command sets everything up; elsewhere they fail and say how to install it: a skipped test
//! would pass for a broken bridge.

mod util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;

use util::*;

// ------------------------------------------------------------------------ a real Redis

/// Install Redis once per test process if it is missing and we may (root, with apt-get).
/// Anything else is left to the clear failure in [`Redis::start_on`].
fn ensure_redis_installed() {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let present = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if present || !root || Command::new("apt-get").arg("--version").output().is_err() {
            return;
        }
        eprintln!("redis-server is missing: installing it with apt-get (once)");
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
        };
        let _ = apt(&["update", "-qq"]);
        let _ = apt(&["install", "-y", "-qq", "redis-server"]);
    });
}

/// A `redis-server` child on a loopback port, without persistence, stopped by PID on drop.
struct Redis {
    child: Child,
    port: u16,
    /// Redis's log (it logs to stdout), line by line.
    log: mpsc::Receiver<String>,
}

impl Redis {
    /// Start Redis on a free loopback port (the kernel picks one; if another process takes it
    /// before Redis binds it, try another).
    fn start() -> Redis {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if let Some(redis) = Redis::start_on(port) {
                return redis;
            }
        }
        panic!("redis-server could not bind any of 5 free ports");
    }

    /// Start Redis on `port`; None if the port is taken.
    fn start_on(port: u16) -> Option<Redis> {
        ensure_redis_installed();
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "redis-server is not installed, and the cluster tests need a real one: \
                 install it with `apt-get install -y redis-server` (Debian/Ubuntu), or run \
                 .ci/run, which does"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let (tx, log) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let redis = Redis { child, port, log };
        loop {
            // The log ends (the channel disconnects) if Redis exits, e.g. on a taken port.
            match redis.log.recv_timeout(TIMEOUT) {
                Ok(line) if line.contains("Ready to accept connections") => return Some(redis),
                Ok(line) if line.contains("Address already in use") => return None,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    fn url(&self, channel: &str) -> String {
        format!("redis://127.0.0.1:{}/{channel}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Stop it now, by PID (SIGKILL), and reap it.
    fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }

    /// Send `signal` to Redis (SIGSTOP to freeze it, SIGCONT to wake it).
    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Has Redis logged a line containing `needle` (looking only at what arrived already)?
    fn logged(&self, needle: &str) -> bool {
        self.log.try_iter().any(|line| line.contains(needle))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain RESP2 client connection (the test's own, to configure Redis and to publish or
/// listen on a channel directly).
struct Resp {
    stream: TcpStream,
    input: Vec<u8>,
}

impl Resp {
    fn connect(redis: &Redis) -> Resp {
        Resp {
            stream: connect(redis.addr()),
            input: Vec::new(),
        }
    }

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn send(&mut self, args: &[&[u8]]) {
        self.stream.write_all(&Resp::encode(args)).unwrap();
    }

    /// The next frame Redis sends.
    fn frame(&mut self) -> redis_protocol::resp2::types::OwnedFrame {
        loop {
            if let Some((frame, n)) = redis_protocol::resp2::decode::decode(&self.input).unwrap() {
                self.input.drain(..n);
                return frame;
            }
            let mut buf = [0; 4096];
            let n = self.stream.read(&mut buf).expect("read from Redis");
            assert!(n > 0, "Redis closed the connection");
            self.input.extend_from_slice(&buf[..n]);
        }
    }

    fn command(&mut self, args: &[&[u8]]) -> redis_protocol::resp2::types::OwnedFrame {
        self.send(args);
        self.frame()
    }

    /// The payload of the next `message` push (on a subscribed connection).
    fn message(&mut self) -> Vec<u8> {
        use redis_protocol::resp2::types::OwnedFrame::{Array, BulkString};
        loop {
            if let Array(items) = self.frame()
                && let [BulkString(kind), _, BulkString(payload)] = &items[..]
                && kind == b"message"
            {
                return payload.clone();
            }
        }
    }
}

/// A bus message as a node publishes it, from node `node`.
fn bus_message(node: u64, seq: u64, lines: &[u8]) -> Vec<u8> {
    let mut m = format!("resound1 {node:016x} {seq}\n").into_bytes();
    m.extend_from_slice(lines);
    m
}

// ------------------------------------------------------------------------ nodes and clients

/// A `resound serve --broadcast` bridged to `redis` on channel `room`, up (subscribed).
fn node(redis: &Redis, extra: &[&str]) -> ServerProcess {
    let url = redis.url("room");
    let mut args = vec!["--broadcast", "127.0.0.1:0", "--bridge", &url];
    args.extend_from_slice(extra);
    let node = ServerProcess::start(&args, 1);
    node.wait_for_log("bridge up");
    node
}

type Client = BufReader<TcpStream>;

fn client(node: &ServerProcess) -> Client {
    BufReader::new(connect(node.addr("broadcast")))
}

fn say(c: &mut Client, line: &str) {
    c.get_mut().write_all(line.as_bytes()).unwrap();
}

fn hear(c: &mut Client) -> String {
    let mut line = String::new();
    c.read_line(&mut line).expect("a line");
    line
}

/// Ask a node for its stats line (SIGUSR1) and return it.
fn stats(node: &ServerProcess) -> String {
    node.signal(libc::SIGUSR1);
    node.wait_for_log("stats:")
}

/// Connect one client per entry of `on` (the node it joins) and make sure every one is in the
/// room before returning: all connect first, then each says `join K` and every other client,
/// on whatever node, must hear it. This also proves the bridge carries lines between every
/// pair of nodes.
///
/// Connecting them all before anyone speaks matters: a node admits a client before it reads
/// the next message from Redis, but nothing orders the admission on one node with the delivery
/// of a line on another. A client that connects after a line was said elsewhere may or may not
/// get it — which is exactly the "no total order" the bridge documents.
fn join(nodes: &[&ServerProcess], on: &[usize]) -> Vec<Client> {
    let mut room: Vec<Client> = on.iter().map(|&n| client(nodes[n])).collect();
    for k in 0..room.len() {
        say(&mut room[k], &format!("join {k}\n"));
        for (m, member) in room.iter_mut().enumerate() {
            if m != k {
                assert_eq!(hear(member), format!("join {k}\n"), "client {m}");
            }
        }
    }
    room
}

// ------------------------------------------------------------------------ the bridge

/// 3 bridged nodes, 2 clients on each, 50 tagged lines per client: every client gets every
/// other client's lines exactly once and in that sender's order, and never its own.
#[test]
fn three_bridged_nodes_deliver_every_line_once_in_sender_order() {
    const LINES: usize = 50;
    let redis = Redis::start();
    let nodes: Vec<ServerProcess> = (0..3).map(|_| node(&redis, &[])).collect();
    let refs: Vec<&ServerProcess> = nodes.iter().collect();
    let mut clients = join(&refs, &[0, 1, 2, 0, 1, 2]);

    for (i, c) in clients.iter_mut().enumerate() {
        let mut all = String::new();
        for n in 0..LINES {
            all.push_str(&format!("c{i} {n}\n"));
        }
        all.push_str(&format!("c{i} done\n"));
        say(c, &all);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut next = [0usize; 6];
        let mut done = [false; 6];
        done[i] = true;
        while !done.iter().all(|&d| d) {
            let line = hear(c);
            let (who, what) = line
                .trim_end()
                .strip_prefix('c')
                .and_then(|l| l.split_once(' '))
                .unwrap_or_else(|| panic!("client {i}: unexpected line {line:?}"));
            let who: usize = who.parse().unwrap();
            assert_ne!(who, i, "client {i} got its own line {line:?}");
            assert!(!done[who], "client {i}: {line:?} after c{who}'s last line");
            if what == "done" {
                assert_eq!(next[who], LINES, "client {i}: c{who} done early");
                done[who] = true;
            } else {
                let n: usize = what.parse().unwrap();
                assert_eq!(n, next[who], "client {i}: c{who}'s lines out of order");
                next[who] += 1;
            }
        }
    }
    for node in &nodes {
        let line = stats(node);
        assert_eq!(stat(&line, "bridge_lost"), 0, "{line}");
        assert_eq!(stat(&line, "bridge_dropped"), 0, "{line}");
        assert!(stat(&line, "bridge_in") > 0, "{line}");
    }
}

/// Redis killed: each node goes on delivering locally, and buffers nothing for the outage.
/// Redis restarted on the same port: `bridge up` again, and lines cross nodes again.
///
/// The restart must reuse the port (the nodes know no other), so in the moment between the kill
/// and the restart another test could take it as an ephemeral port; then `start_on` fails
/// loudly rather than the test passing wrongly. Nothing else here binds a port it did not ask
/// the kernel for, so this has not been seen.
#[test]
fn redis_down_keeps_local_delivery_and_a_restart_brings_the_bridge_back() {
    let redis = Redis::start();
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let mut c = join(&[&a, &b], &[0, 0, 1]); // a1, a2 on A; b1 on B

    let port = redis.kill();
    a.wait_for_log("bridge down");
    b.wait_for_log("bridge down");
    say(&mut c[0], "while Redis is down\n");
    assert_eq!(hear(&mut c[1]), "while Redis is down\n", "local delivery");

    let _redis = Redis::start_on(port).expect("the port Redis had is free again");
    a.wait_for_log("bridge up");
    b.wait_for_log("bridge up");
    say(&mut c[0], "after the restart\n");
    assert_eq!(hear(&mut c[1]), "after the restart\n");
    assert_eq!(
        hear(&mut c[2]),
        "after the restart\n",
        "B's member gets the next line, and never the one said during the outage"
    );
    say(&mut c[2], "from B\n");
    assert_eq!(hear(&mut c[0]), "from B\n");
    assert_eq!(hear(&mut c[1]), "from B\n");

    let line = stats(&a);
    assert!(
        stat(&line, "bridge_dropped") >= 1,
        "the outage's batch: {line}"
    );
    let line = stats(&b);
    assert_eq!(
        stat(&line, "bridge_lost"),
        1,
        "B counts A's missing batch: {line}"
    );
}

/// A node frozen (SIGSTOP) while its channel floods is evicted by Redis's pub/sub output
/// limit; after SIGCONT it reconnects, serves again, and counts the messages it missed.
#[test]
fn a_node_evicted_by_redis_reconnects_and_counts_what_it_lost() {
    const PEER: u64 = 0x7e57_7e57_7e57_7e57; // a fake node: the test publishes as it
    let redis = Redis::start();
    let mut admin = Resp::connect(&redis);
    admin.command(&[
        b"CONFIG",
        b"SET",
        b"client-output-buffer-limit",
        b"pubsub 256kb 0 0",
    ]);
    let frozen = node(&redis, &[]);

    frozen.signal(libc::SIGSTOP);
    // Flood the channel until Redis gives up on the frozen node (its socket buffers fill, then
    // Redis's output buffer for it passes 256 KiB), at most 256 MiB.
    let lines = format!("{}\n", "x".repeat(99)).repeat(40); // 4000 bytes
    let mut flood = Resp::connect(&redis);
    let mut seq = 0;
    let evicted = loop {
        if redis.logged("output buffer limits") {
            break true;
        }
        if seq >= 64 * 1024 {
            break false;
        }
        let mut burst = Vec::new();
        for _ in 0..64 {
            seq += 1;
            let m = bus_message(PEER, seq, lines.as_bytes());
            burst.extend(Resp::encode(&[b"PUBLISH", b"room", &m]));
        }
        flood.stream.write_all(&burst).unwrap();
        for _ in 0..64 {
            flood.frame(); // each PUBLISH's answer
        }
    };
    assert!(evicted, "Redis never evicted the frozen node");
    frozen.signal(libc::SIGCONT);
    frozen.wait_for_log("bridge down");
    frozen.wait_for_log("bridge up");

    // It serves again: a member's line reaches the channel, and the channel reaches members.
    let mut listener = Resp::connect(&redis);
    listener.command(&[b"SUBSCRIBE", b"room"]);
    let mut member = client(&frozen);
    say(&mut member, "back\n");
    assert!(listener.message().ends_with(b"\nback\n"));
    seq += 1;
    flood.command(&[b"PUBLISH", b"room", &bus_message(PEER, seq, b"marker\n")]);
    assert_eq!(hear(&mut member), "marker\n");

    let line = stats(&frozen);
    let (got, lost) = (stat(&line, "bridge_in"), stat(&line, "bridge_lost"));
    assert!(
        lost > 0,
        "the messages dropped with the eviction are counted: {line}"
    );
    assert_eq!(
        got + lost,
        seq,
        "every message is either received or counted lost: {line}"
    );
}

/// A graceful stop publishes what members said before it, within --drain-timeout: with Redis
/// frozen, node A's publishes pile up in its own queue (more than the kernel's buffers hold);
/// SIGTERM to A, then Redis wakes: A waits for Redis to confirm them all before it exits, so the
/// last line still reaches the member on B. (Exiting with the queue unsent would lose it: the
/// kernel only delivers what was already written to the socket.)
#[test]
fn a_graceful_stop_publishes_what_members_said_before_it() {
    const LINES: usize = 160_000;
    let redis = Redis::start();
    // Redis must not evict B, which is about to receive 16 MB at once.
    let mut admin = Resp::connect(&redis);
    admin.command(&[
        b"CONFIG",
        b"SET",
        b"client-output-buffer-limit",
        b"pubsub 0 0 0",
    ]);
    let (mut a, b) = (
        node(&redis, &["--bridge-max-queue", "64m"]),
        node(&redis, &[]),
    );
    let mut c = join(&[&a, &b], &[1, 0]); // b1 on B, a1 on A
    redis.signal(libc::SIGSTOP);
    let line = format!("{}\n", "z".repeat(99));
    let batch = line.repeat(1000);
    let mut sender = c.remove(1).into_inner();
    for _ in 0..LINES / 1000 {
        sender.write_all(batch.as_bytes()).unwrap();
    }
    sender.write_all(b"last words\n").unwrap();
    sender.shutdown(Shutdown::Write).unwrap();
    // A's member closes once A has read (and queued for Redis) every line it sent.
    assert!(read_to_eof(&mut sender).is_empty());
    a.signal(libc::SIGTERM);
    redis.signal(libc::SIGCONT);
    let mut reader = c.remove(0);
    let mut got = String::new();
    for _ in 0..LINES {
        got.clear();
        reader.read_line(&mut got).unwrap();
        assert_eq!(got, line);
    }
    assert_eq!(hear(&mut reader), "last words\n");
    assert!(a.wait().success());
}

/// Anything else published on the channel — a stranger's text, a message with a broken
/// header — is logged and skipped; the node stays up and delivers the next good message.
#[test]
fn bad_messages_on_the_channel_are_logged_and_skipped() {
    let redis = Redis::start();
    let n = node(&redis, &[]);
    let mut member = client(&n);
    let mut publisher = Resp::connect(&redis);
    // The member is in the room once its own line reaches the channel.
    let mut listener = Resp::connect(&redis);
    listener.command(&[b"SUBSCRIBE", b"room"]);
    say(&mut member, "here\n");
    assert!(listener.message().ends_with(b"\nhere\n"));
    for junk in [
        &b"hello, anyone?"[..],
        b"resound1 nothex 1\nx\n",
        b"resound1 0000000000000001 1\nno newline",
    ] {
        publisher.command(&[b"PUBLISH", b"room", junk]);
    }
    publisher.command(&[b"PUBLISH", b"room", &bus_message(1, 2, b"good\n")]);
    assert_eq!(hear(&mut member), "good\n");
    assert!(n.wait_for_log("skipped").contains("bad message"));
}

/// A Redis that stops reading (SIGSTOP) fills the publish queue: past --bridge-max-queue,
/// batches are dropped and counted (memory stays bounded), and local members get every line
/// all along.
#[test]
fn a_stalled_redis_costs_dropped_batches_not_memory_or_local_lines() {
    const LINES: usize = 200_000;
    let redis = Redis::start();
    let n = node(&redis, &["--bridge-max-queue", "64k"]);
    let mut room = join(&[&n], &[0, 0]);
    redis.signal(libc::SIGSTOP);

    // 200 000 lines of 100 bytes (20 MB: more than the kernel buffers between us and Redis
    // hold), read by the other member as they come.
    let mut sender = room.remove(0).into_inner();
    let mut reader = room.remove(0);
    let writer = thread::spawn(move || {
        let line = format!("{}\n", "y".repeat(99));
        let batch = line.repeat(1000);
        for _ in 0..LINES / 1000 {
            sender.write_all(batch.as_bytes()).unwrap();
        }
        sender
    });
    let mut got = 0;
    let mut buf = vec![0; 1 << 16];
    while got < LINES * 100 {
        let k = reader.read(&mut buf).expect("read");
        assert!(k > 0, "closed after {got} bytes");
        got += k;
    }
    assert_eq!(got, LINES * 100, "every line, locally");
    let _sender = writer.join().unwrap();
    let line = stats(&n);
    assert!(stat(&line, "bridge_dropped") > 0, "{line}");
    assert_eq!(stat(&line, "evicted"), 0, "{line}");
    // 20 MB went through; the queue for Redis is bounded at 64 KiB.
    let rss = n.rss_kib();
    assert!(rss < 32 * 1024, "RSS {rss} KiB with a 64 KiB publish queue");
    redis.signal(libc::SIGCONT);
}

/// --bridge without the broadcast service is refused at start; a malformed URL is a usage
/// error naming the flag.
#[test]
fn bridge_flags_are_checked_at_start() {
    let (status, stderr) = run_binary(&[
        "serve",
        "--echo",
        "127.0.0.1:0",
        "--bridge",
        "redis://127.0.0.1:6379/room",
    ]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--bridge needs the broadcast service"),
        "{stderr}"
    );
    let (status, stderr) = run_binary(&["serve", "--bridge", "127.0.0.1:6379/room"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--bridge"), "{stderr}");
}

// ------------------------------------------------------------------------ --reuseport

/// Two `--reuseport` processes on one port both get connections; stopping one leaves the
/// other serving every new one.
#[test]
fn two_reuseport_processes_share_a_port_and_survive_each_other() {
    const CONNS: usize = 32;
    let a = ServerProcess::start(
        &[
            "--echo",
            "127.0.0.1:0",
            "--udp",
            "127.0.0.1:0",
            "--reuseport",
        ],
        2,
    );
    let (addr, udp) = (a.addr("echo").to_string(), a.addr("udp").to_string());
    // The second binds the same TCP and UDP addresses.
    let mut b = ServerProcess::start(&["--echo", &addr, "--udp", &udp, "--reuseport"], 2);
    assert_eq!(b.addr("udp"), a.addr("udp"));
    let addr: SocketAddr = addr.parse().unwrap();

    let echo = |mut s: TcpStream| {
        s.write_all(b"x").unwrap();
        let mut back = [0];
        s.read_exact(&mut back).unwrap();
        s
    };
    // 32 connections from different source ports: the chance that the kernel's hash sends
    // them all to one process is 2^-31.
    let conns: Vec<TcpStream> = (0..CONNS).map(|_| echo(connect(addr))).collect();
    let (sa, sb) = (stats(&a), stats(&b));
    let (na, nb) = (stat(&sa, "accepted"), stat(&sb, "accepted"));
    assert_eq!(na + nb, CONNS as u64);
    assert!(na > 0 && nb > 0, "one process got none: {na} and {nb}");

    drop(conns);
    b.signal(libc::SIGTERM);
    assert!(b.wait().success());
    for _ in 0..CONNS {
        drop(echo(connect(addr)));
    }
    let sa = stats(&a);
    assert_eq!(
        stat(&sa, "accepted"),
        na + CONNS as u64,
        "A took every new one"
    );
}

/// Without `--reuseport` on both, a second process on the same port fails with a clear error.
#[test]
fn sharing_a_port_needs_reuseport_on_both() {
    for first in [&[][..], &["--reuseport"][..]] {
        let mut args = vec!["--echo", "127.0.0.1:0"];
        args.extend_from_slice(first);
        let a = ServerProcess::start(&args, 1);
        let addr = a.addr("echo").to_string();
        let (status, stderr) = run_binary(&["serve", "--echo", &addr]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "cannot bind echo tcp {addr}: Address already in use"
            )),
            "{stderr}"
        );
    }
}

/// A graceful stop serves the clients already waiting in the listener's backlog (closing the
/// listener with them queued would reset them).
#[test]
fn a_graceful_stop_serves_clients_queued_in_the_backlog() {
    let mut server = ServerProcess::start(&["--echo", "127.0.0.1:0"], 1);
    let addr = server.addr("echo");
    // Frozen, the server cannot accept: the kernel completes the handshakes and queues them.
    server.signal(libc::SIGSTOP);
    let queued: Vec<TcpStream> = (0..5)
        .map(|i| {
            let mut c = connect(addr);
            c.write_all(format!("queued {i}\n").as_bytes()).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            c
        })
        .collect();
    // On waking, the stop and the waiting clients come in the same turn: the stop first.
    server.signal(libc::SIGTERM);
    server.signal(libc::SIGCONT);
    for (i, mut c) in queued.into_iter().enumerate() {
        assert_eq!(read_to_eof(&mut c), format!("queued {i}\n").as_bytes());
    }
    assert!(server.wait().success());
}
