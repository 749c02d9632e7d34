//! `resound bench` against real servers on loopback: each mode for about a second against an
//! in-process resound on port 0, asserting zero errors and counts that do not depend on speed
//! (every operation accounted for once, an open loop's schedule to the operation); and servers
//! that misbehave on purpose, are down, or are not what `--pid` says, to prove that each check
//! fails when it should and that every fault is counted once. The one timing asserted is the
//! issue's own: a target that is down fails within 2 s.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use resound::ServiceKind;
use resound::bench::{self, CauseKind, Mode, Plan, Report};
use serde_json::Value;

/// A short plan: 0.2 s warm-up, 1 s measured, quiet.
fn plan(mode: Mode, target: SocketAddr) -> Plan {
    let mut p = Plan::new(mode, target);
    p.warmup = Duration::from_millis(200);
    p.duration = Duration::from_secs(1);
    p.drain = Duration::from_secs(2);
    p.quiet = true;
    p
}

fn run(plan: &Plan) -> Report {
    bench::run(plan).expect("the bench runs")
}

fn assert_clean(r: &Report) {
    assert_eq!(
        r.errors.total(),
        0,
        "errors: {:?}\n{}",
        r.errors,
        r.summary()
    );
    assert_eq!(r.exit_code(), 0);
    assert!(r.ops > 0, "no operation completed:\n{}", r.summary());
}

/// Closed-loop echo over several connections and two worker threads.
#[test]
fn test_echo_closed_loop_is_clean() {
    let server = util::start(|_| {});
    let mut p = plan(Mode::Echo, server.addr(ServiceKind::Echo));
    p.connections = 8;
    p.pipeline = 4;
    p.threads = 2;
    p.pid = Some(std::process::id());
    let r = run(&p);
    assert_clean(&r);
    assert_eq!(r.open, 8);
    assert_eq!(r.latency.count, r.ops);
    assert!(r.server.unwrap().cpu_s.is_some());
    let stats = server.stop().unwrap();
    assert_eq!(stats.accepted, 8);
}

/// Large messages come back in many short reads; every byte is still checked.
#[test]
fn test_echo_of_large_messages_is_clean() {
    let server = util::start(|_| {});
    let mut p = plan(Mode::Echo, server.addr(ServiceKind::Echo));
    p.connections = 2;
    p.size = 100_000; // not a multiple of anything the server reads or writes
    let r = run(&p);
    assert_clean(&r);
    let bytes = r.mb_per_sec * 1e6 * r.window_s;
    assert!(
        (bytes - (r.ops * 100_000) as f64).abs() < 1.0,
        "{bytes} bytes"
    );
}

/// Open loop: the schedule decides how many messages are sent, whatever the server does.
#[test]
fn test_echo_open_loop_sends_on_schedule() {
    let server = util::start(|_| {});
    let mut p = plan(Mode::Echo, server.addr(ServiceKind::Echo));
    p.connections = 4;
    p.rate = Some(2000.0);
    let r = run(&p);
    assert_clean(&r);
    // 2000/s from the start of the warm-up to the end of the window (1.2 s), one worker: the
    // schedule holds exactly 2400 messages, each sent or (a generator behind) never sent, and
    // every one sent came back.
    assert_eq!(r.scheduled, 2400, "{}", r.summary());
    assert_eq!(r.sent_total + r.not_sent, r.scheduled, "{}", r.summary());
    assert_eq!(r.completed, r.sent_total, "{}", r.summary());
    assert_accounted(&r);
}

#[test]
fn test_udp_round_trips_are_clean() {
    let server = util::start(|_| {});
    let mut p = plan(Mode::Udp, server.addr(ServiceKind::Udp));
    p.connections = 4;
    p.pipeline = 2;
    p.broadcast = true; // SO_BROADCAST set; a unicast target still works
    let r = run(&p);
    assert_clean(&r);
    assert!(r.sent > 0);
}

#[test]
fn test_connect_churn_is_clean() {
    let server = util::start(|_| {});
    let mut p = plan(Mode::Connect, server.addr(ServiceKind::Echo));
    p.connections = 4;
    let r = run(&p);
    assert_clean(&r);
    let stats = server.stop().unwrap();
    assert!(
        stats.accepted >= r.ops,
        "{} accepted, {} cycles",
        stats.accepted,
        r.ops
    );
}

/// Idle: every connection confirmed and held; the server's memory is reported.
#[test]
fn test_idle_holds_every_connection() {
    let server = util::start(|_| {});
    let mut p = plan(Mode::Idle, server.addr(ServiceKind::Echo));
    p.connections = 50;
    p.duration = Duration::from_millis(300);
    p.pid = Some(std::process::id());
    let r = run(&p);
    assert_clean(&r);
    assert_eq!(r.open, 50);
    assert_eq!(r.ops, 50);
    assert_eq!(r.latency.count, 50);
    assert!(r.server.unwrap().rss_per_conn_b.is_some());
    let stats = server.stop().unwrap();
    assert_eq!(stats.accepted, 50);
}

// --- broadcast ---

/// An in-process resound with the broadcast service on port 0.
fn start_broadcast() -> resound::Running {
    util::start(|c| c.broadcast = Some("127.0.0.1:0".parse().unwrap()))
}

/// Closed loop (window): two senders on two threads, every line delivered everywhere.
#[test]
fn test_broadcast_window_is_clean() {
    let server = start_broadcast();
    let mut p = plan(Mode::Broadcast, server.addr(ServiceKind::Broadcast));
    p.connections = 20;
    p.senders = 2;
    p.threads = 2;
    let r = run(&p);
    assert_clean(&r);
    assert!(r.sent > 0);
    assert_eq!(r.open, 22);
}

/// Open loop: paced lines, each stamped with its intended send time.
#[test]
fn test_broadcast_paced_is_clean() {
    let server = start_broadcast();
    let mut p = plan(Mode::Broadcast, server.addr(ServiceKind::Broadcast));
    p.connections = 10;
    p.rate = Some(500.0);
    p.size = 200;
    let r = run(&p);
    assert_clean(&r);
    // 500 lines/s over the warm-up and the window (1.2 s): exactly 600 lines scheduled, each
    // sent or never sent, and each one sent delivered to all 10 receivers.
    assert_eq!(r.scheduled, 600, "{}", r.summary());
    assert_eq!(r.sent_total + r.not_sent, r.scheduled, "{}", r.summary());
    assert_eq!(r.completed, r.sent_total * 10, "{}", r.summary());
}

// --- several targets ---

/// `--target A,B`: connections go round robin, and each server sees its share.
#[test]
fn test_echo_spreads_connections_over_several_targets() {
    let (a, b) = (util::start(|_| {}), util::start(|_| {}));
    let mut p = plan(Mode::Echo, a.addr(ServiceKind::Echo));
    p.targets.push(b.addr(ServiceKind::Echo));
    p.connections = 4;
    let r = run(&p);
    assert_clean(&r);
    assert_accounted(&r);
    assert!(
        r.summary()
            .contains(&format!("-> {},{}", p.targets[0], p.targets[1]))
    );
    assert_eq!(a.stop().unwrap().accepted, 2);
    assert_eq!(b.stop().unwrap().accepted, 2);
}

/// One broadcast room served on two addresses (as the nodes of a scale-out room would be): a
/// relay that passes every line it reads on any connection to every other connection.
fn room_on_two_addresses() -> (SocketAddr, SocketAddr) {
    use std::sync::{Arc, Mutex};
    let members: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        addrs.push(listener.local_addr().unwrap());
        let members = members.clone();
        thread::spawn(move || {
            for stream in listener.incoming().take(3) {
                let Ok(stream) = stream else { return };
                let me = stream.peer_addr().unwrap();
                members.lock().unwrap().push(stream.try_clone().unwrap());
                let members = members.clone();
                thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        for m in members.lock().unwrap().iter_mut() {
                            if m.peer_addr().ok() != Some(me) {
                                let _ = m.write_all(&buf[..n]);
                            }
                        }
                    }
                });
            }
        });
    }
    (addrs[0], addrs[1])
}

/// The broadcast checks hold across targets: a room spread over two addresses is clean, two
/// separate rooms are not (lines sent on one never reach the receivers on the other).
#[test]
fn test_broadcast_checks_hold_across_targets() {
    let (a, b) = room_on_two_addresses();
    let mut p = plan(Mode::Broadcast, a);
    p.targets.push(b);
    p.connections = 5; // 5 receivers and 1 sender: 3 connections on each address
    p.rate = Some(200.0);
    let r = run(&p);
    assert_clean(&r);
    assert_eq!(r.open, 6);
    assert_eq!(r.completed, r.sent_total * 5, "{}", r.summary());

    let (one, two) = (start_broadcast(), start_broadcast());
    let mut p = plan(Mode::Broadcast, one.addr(ServiceKind::Broadcast));
    p.targets.push(two.addr(ServiceKind::Broadcast));
    p.connections = 3;
    p.rate = Some(200.0);
    // The sync cannot succeed and the drain cannot end early: keep both short.
    p.setup_timeout = Duration::from_secs(1);
    p.drain = Duration::from_millis(300);
    let r = run(&p);
    // The receivers on the other server never see the sync line, nor any line.
    assert!(r.errors.unsynced > 0, "{}", r.summary());
    assert!(r.errors.lost > 0, "{}", r.summary());
    assert_eq!(r.exit_code(), 1);
}

// --- servers that misbehave ---

/// A TCP server on a free port that runs `serve` on each of its first `conns` connections, each
/// in its own thread; the threads end when the client closes.
fn bad_server(conns: usize, serve: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().take(conns) {
            let Ok(stream) = stream else { return };
            thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// An address nobody listens on, held: a TCP socket bound to it without `listen`, so the kernel
/// refuses every connect there, and no other test can take the port while the caller keeps the
/// socket.
fn closed_port() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

/// Echoes faithfully, except one bit of byte 1000.
fn flip_one_byte(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut offset = 0;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            return;
        }
        if (offset..offset + n).contains(&1000) {
            buf[1000 - offset] ^= 0x10;
        }
        offset += n;
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Reads everything, echoes nothing.
fn swallow(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// Echoes the first 64 bytes, then closes.
fn echo_once_then_close(mut s: TcpStream) {
    let mut buf = [0u8; 64];
    if s.read_exact(&mut buf).is_ok() {
        let _ = s.write_all(&buf);
    }
}

/// Every operation sent is accounted for once: completed, lost, abandoned with a failed
/// connection, or the one corrupt message of a connection that failed the check.
fn assert_accounted(r: &Report) {
    let fates = r.completed + r.errors.lost + r.abandoned + r.errors.corrupt;
    assert_eq!(r.sent_total, fates, "{}", r.summary());
}

/// One flipped bit is one error: the corrupt message, not also a lost one.
#[test]
fn test_a_flipped_byte_is_one_corruption() {
    let addr = bad_server(2, flip_one_byte);
    let mut p = plan(Mode::Echo, addr);
    p.connections = 2;
    let r = run(&p);
    assert_eq!(r.errors.corrupt, 2, "{}", r.summary());
    assert_eq!(r.errors.total(), 2, "{}", r.summary());
    assert_accounted(&r);
    assert_eq!(r.exit_code(), 1);
}

/// Messages sent whole and never answered are lost; with nothing completed the report says so
/// and shows no latency at all.
#[test]
fn test_unanswered_messages_are_lost_and_nothing_measured_is_said() {
    let addr = bad_server(3, swallow);
    let mut p = plan(Mode::Echo, addr);
    p.connections = 3;
    p.pipeline = 2;
    p.drain = Duration::from_millis(200);
    let r = run(&p);
    assert_eq!(r.ops, 0);
    assert_eq!(r.errors.lost, 6, "{}", r.summary());
    assert_eq!(r.sent_total, 6);
    assert_accounted(&r);
    assert_eq!(r.exit_code(), 1);
    let text = r.summary();
    assert!(text.contains("no round trip completed"), "{text}");
    assert!(text.contains("p50 -  p90 -"), "{text}");
    let j: Value = serde_json::from_str(&r.json()).unwrap();
    assert_eq!(j["latency_us"]["p50"], Value::Null);
    assert_eq!(j["latency_us"]["count"], 0);
}

/// A broadcast relay that also sends every line back to its sender: caught as self-delivery.
#[test]
fn test_lines_returned_to_their_sender_are_reported() {
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = 4; // 3 receivers and 1 sender
    thread::spawn(move || {
        let all: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        for stream in listener.incoming().take(conns) {
            let Ok(stream) = stream else { return };
            all.lock().unwrap().push(stream.try_clone().unwrap());
            let all = all.clone();
            thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    for s in all.lock().unwrap().iter_mut() {
                        let _ = s.write_all(&buf[..n]);
                    }
                }
            });
        }
    });
    let mut p = plan(Mode::Broadcast, addr);
    p.connections = conns - 1;
    p.rate = Some(200.0);
    let r = run(&p);
    assert!(r.errors.self_delivered > 0, "{}", r.summary());
    assert_eq!(r.errors.total(), r.errors.self_delivered, "{}", r.summary());
    assert!(r.ops > 0);
    assert_eq!(r.exit_code(), 1);
}

/// A broadcast relay that damages lines on their way: the filler of some (their header still
/// reads), the header of others (they cannot say whose they are). Each damaged line is one
/// `corrupt` error: not also a gap in its sender's sequence, nor a stall of its window.
#[test]
fn test_damaged_broadcast_lines_are_counted_once() {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = 4; // 3 receivers and 1 sender
    thread::spawn(move || {
        let all: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let damaged = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for stream in listener.incoming().take(conns) {
            let Ok(stream) = stream else { return };
            let me = stream.peer_addr().unwrap();
            all.lock().unwrap().push(stream.try_clone().unwrap());
            let all = all.clone();
            let damaged = damaged.clone();
            thread::spawn(move || {
                let mut lines = BufReader::new(stream);
                let mut line = Vec::new();
                let mut n = 0u64;
                while matches!(lines.read_until(b'\n', &mut line), Ok(k) if k > 0) {
                    if line.starts_with(b"~b") {
                        n += 1;
                        match n % 10 {
                            3 => line[50] ^= 1,  // the filler
                            7 => line[0] = b'X', // the header
                            _ => {}
                        }
                        if n % 10 == 3 || n % 10 == 7 {
                            damaged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    for m in all.lock().unwrap().iter_mut() {
                        if m.peer_addr().ok() != Some(me) {
                            let _ = m.write_all(&line);
                        }
                    }
                    line.clear();
                }
            });
        }
    });
    // Closed loop with a small window: a damaged line that never counted as delivered would
    // stall the sender (a window of 4) after 6 lines. It would give that line up (a timeout)
    // only after 2 s without progress (broadcast's STALL), longer than the whole run sends
    // (1.2 s) and drains (0.5 s): so a stall shows as a handful of lines sent, not as an error.
    let mut p = plan(Mode::Broadcast, addr);
    p.connections = conns - 1;
    p.window = 4;
    p.drain = Duration::from_millis(500);
    let r = run(&p);
    assert!(r.errors.corrupt > 0, "{}", r.summary());
    assert_eq!(r.errors.total(), r.errors.corrupt, "{}", r.summary());
    assert!(r.sent_total > 20, "the window stalled: {}", r.summary());
    assert_eq!(r.exit_code(), 1);
}

/// A server that closes each connection after one message: one `closed` per connection, the
/// second message in flight abandoned with it (not counted again as lost).
#[test]
fn test_connections_closed_by_the_server_are_counted_once() {
    let addr = bad_server(4, echo_once_then_close);
    let mut p = plan(Mode::Echo, addr);
    p.connections = 4;
    p.pipeline = 2; // both messages written at once; the first comes back
    p.duration = Duration::from_millis(300);
    let r = run(&p);
    assert_eq!(r.errors.closed, 4, "{}", r.summary());
    assert_eq!(r.errors.total(), 4, "{}", r.summary());
    // A connection may have written a third message before the close reached it.
    assert_eq!(r.completed, 4, "{}", r.summary());
    assert!(r.abandoned >= 4, "{}", r.summary());
    assert_accounted(&r);
    // Closed in order, or reset when our next message reached a socket the server had closed.
    assert!(
        r.causes.iter().all(|c| c.kind == CauseKind::Closed),
        "{}",
        r.summary()
    );
    assert_eq!(r.causes.iter().map(|c| c.count).sum::<u64>(), 4);
    assert_eq!(r.exit_code(), 1);
}

/// A server that closes every connection at once: nothing can be measured, and the cause is
/// named — at setup if the close arrives with the connect (the run stops there), or as one
/// `closed` per connection, with its cause, and "no round trip completed" if it comes a moment
/// later (which of the two is up to the scheduler).
#[test]
fn test_a_server_closing_everything_at_once_is_named() {
    let addr = bad_server(4, drop);
    let mut p = plan(Mode::Echo, addr);
    p.connections = 4;
    p.duration = Duration::from_millis(300);
    match bench::run(&p) {
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains(&format!("{addr}: connection closed by the server")),
                "{e}"
            );
            assert!(e.contains("closed all 4 connections"), "{e}");
        }
        Ok(r) => {
            let text = r.summary();
            assert_eq!(r.errors.closed, 4, "{text}");
            assert_eq!(r.errors.total(), 4, "{text}");
            assert!(text.contains("no round trip completed"), "{text}");
            // Closed in order, or reset if a message was on its way when the server closed.
            assert!(
                r.causes.iter().all(|c| c.kind == CauseKind::Closed),
                "{text}"
            );
            assert_eq!(r.causes.iter().map(|c| c.count).sum::<u64>(), 4, "{text}");
            assert_eq!(r.exit_code(), 1);
        }
    }
}

/// Nobody listening: setup fails at once (within 2 s), naming the error and the target, and
/// the binary exits 1 with it.
#[test]
fn test_a_target_that_is_down_fails_fast_naming_the_error() {
    let (_held, addr) = closed_port();
    for mode in [Mode::Echo, Mode::Broadcast, Mode::Connect, Mode::Idle] {
        let mut p = plan(mode, addr);
        p.connections = 5;
        let e = bench::run(&p).unwrap_err();
        assert_ne!(
            e.kind(),
            std::io::ErrorKind::InvalidInput,
            "not a usage error"
        );
        let e = e.to_string();
        assert!(
            e.contains(&format!("connect {addr}: Connection refused")),
            "{mode:?}: {e}"
        );
    }
    let start = Instant::now();
    let (status, stderr) = util::run_binary(&["bench", "echo", "-t", &addr.to_string()]);
    let took = start.elapsed();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("connect {addr}: Connection refused")),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// UDP: a port with nothing behind it is refused at once, by name.
#[test]
fn test_a_udp_target_that_is_down_fails_fast() {
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut p = plan(Mode::Udp, addr);
    p.connections = 3;
    let e = bench::run(&p).unwrap_err().to_string();
    assert!(
        e.contains(&format!("udp {addr}: Connection refused")),
        "{e}"
    );
}

/// UDP: a server that takes datagrams and never answers fails setup after the probe timeout,
/// saying so (not a run full of losses).
#[test]
fn test_a_udp_target_that_never_answers_fails_after_the_probe() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let mut p = plan(Mode::Udp, addr);
    p.connections = 2;
    let e = bench::run(&p).unwrap_err().to_string();
    assert!(
        e.contains(&format!("udp {addr}: no reply to the probe datagrams")),
        "{e}"
    );
    drop(silent);
}

/// Some connections fail: the run goes on with the others, and the report names the cause
/// with its count.
#[test]
fn test_partial_setup_failures_are_counted_by_cause() {
    let server = util::start(|_| {});
    let (_held, dead) = closed_port();
    let mut p = plan(Mode::Echo, server.addr(ServiceKind::Echo));
    p.targets.push(dead);
    p.connections = 4;
    let r = run(&p);
    assert!(r.ops > 0);
    assert_eq!(r.errors.connect, 2, "{}", r.summary());
    assert_eq!(r.errors.total(), 2, "{}", r.summary());
    let text = r.summary();
    assert!(
        text.contains(&format!("connect {dead}: Connection refused x2")),
        "{text}"
    );
    assert_eq!(r.exit_code(), 1);
}

/// A rate the generator cannot reach is its own finding, not losses charged to the server: the
/// server answered everything it was sent. It is an error only with --strict-rate.
#[test]
fn test_a_rate_not_reached_is_not_a_loss() {
    let server = util::start(|_| {});
    let mut p = plan(Mode::Echo, server.addr(ServiceKind::Echo));
    p.rate = Some(1e8);
    p.warmup = Duration::ZERO;
    p.duration = Duration::from_millis(500);
    let r = run(&p);
    assert!(r.rate_not_reached(), "{}", r.summary());
    assert!(
        r.not_sent > 0 && r.scheduled > r.not_sent,
        "{}",
        r.summary()
    );
    assert_eq!(r.errors.total(), 0, "{}", r.summary());
    assert_accounted(&r);
    assert!(
        r.summary().contains("rate not reached: "),
        "{}",
        r.summary()
    );
    assert_eq!(r.exit_code(), 0);
    p.strict_rate = true;
    let r = run(&p);
    assert!(r.rate_not_reached());
    assert_eq!(r.exit_code(), 1);
}

/// Without --pid the server's CPU cannot be told from other processes': no "machine not
/// quiet" guess, and the report says what is unknown.
#[test]
fn test_without_pid_the_server_cpu_is_unknown_not_interference() {
    let server = util::start(|_| {});
    let p = plan(Mode::Echo, server.addr(ServiceKind::Echo));
    let r = run(&p);
    let text = r.summary();
    assert!(text.contains("server CPU unknown (pass --pid)"), "{text}");
    assert!(!text.contains("not quiet"), "{text}");
    assert_eq!(r.usage.other_cpu_pct, None);
}

/// --pid of a process that does none of the work (here a shell whose child sleeps, as a
/// forking server's parent would idle): its child process is warned about. (The warning that
/// its CPU time is too small for the work done depends on speed; `report.rs` tests that rule.)
#[test]
fn test_a_pid_that_does_not_do_the_work_is_warned_about() {
    use std::os::unix::process::CommandExt;
    let mut parent = Command::new("sh")
        .args(["-c", "sleep 30 & wait"])
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = parent.id();
    // The child is listed once the shell has forked it; a read of /proc, not a sleep.
    let deadline = Instant::now() + util::TIMEOUT;
    while resound::procfs::child_count(pid) != Some(1) {
        assert!(Instant::now() < deadline, "the shell never forked");
        thread::yield_now();
    }
    let server = util::start(|_| {});
    let mut p = plan(Mode::Echo, server.addr(ServiceKind::Echo));
    p.pid = Some(pid);
    let r = run(&p);
    // SAFETY: kill(2) on the process group we created.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    let _ = parent.wait();
    let warnings = r.warnings.join("\n");
    assert!(warnings.contains("1 child process"), "{warnings}");
    assert!(r.summary().contains("** warning:"));
}

/// --pid of a process that does not exist and --cpu beyond the machine are usage errors, not
/// figures of 0.
#[test]
fn test_a_missing_pid_or_cpu_is_a_usage_error() {
    let (_held, target) = closed_port();
    let target = target.to_string();
    // Linux pids are below pid_max, at most 2^22.
    for (flag, value) in [("--pid", "4194304"), ("--cpu", "4096")] {
        let (status, stderr) = util::run_binary(&["bench", "echo", "-t", &target, flag, value]);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("{flag} {value}")), "{stderr}");
    }
}

// --- UDP broadcast ---

/// The seeds' SO_BROADCAST sender works end to end: datagrams to 127.255.255.255 reach a server
/// listening on 0.0.0.0, its replies reach the generator, nothing is lost. Without --broadcast
/// the kernel's refusal is named, with the way out.
#[test]
fn test_udp_to_a_broadcast_address() {
    let server = util::ServerProcess::start(&["--udp", "0.0.0.0:0"], 1);
    let port = server.addr("udp").port();
    let target: SocketAddr = format!("127.255.255.255:{port}").parse().unwrap();
    let mut p = plan(Mode::Udp, target);
    p.connections = 2;
    p.broadcast = true;
    let r = run(&p);
    assert_clean(&r);
    assert_eq!(r.errors.lost, 0);
    assert_accounted(&r);

    p.broadcast = false;
    let e = bench::run(&p).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "send to {target}: Permission denied: sending to a broadcast address needs \
             --broadcast"
        )),
        "{e}"
    );
}

/// A UDP echo server that drops some datagrams, cuts the replies of others down to 4 bytes (too
/// short to say which datagram they answer) and flips a bit in others: each fault is one error
/// — a drop is lost, a damaged reply corrupt, not also lost — and every datagram is accounted
/// for.
#[test]
fn test_udp_losses_and_damage_are_counted_once() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    socket.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            // The datagram's sequence number leads it; the setup probes (u64::MAX) pass.
            let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
            let reply = match seq % 7 {
                _ if seq == u64::MAX => len,
                3 => continue, // dropped
                5 => 4,        // cut short
                6 => {
                    buf[len - 1] ^= 1; // one bit of the body: the header still names it
                    len
                }
                _ => len,
            };
            let _ = socket.send_to(&buf[..reply], from);
        }
    });
    let mut p = plan(Mode::Udp, addr);
    p.connections = 2;
    p.pipeline = 4;
    p.duration = Duration::from_millis(500);
    let r = run(&p);
    assert!(r.errors.lost > 0, "{}", r.summary());
    assert!(r.errors.corrupt > 0, "{}", r.summary());
    let faults = r.errors.lost + r.errors.corrupt;
    assert_eq!(r.errors.total(), faults, "{}", r.summary());
    assert_accounted(&r);
}

// --- the command line ---

/// The real binary: a usage error is 2, a corrupted payload is 1, and --json prints one JSON
/// document with the version, the full parameters, a timestamp and the per-second series.
#[test]
fn test_cli_exit_status_and_json() {
    let bin = env!("CARGO_BIN_EXE_resound");
    let addr = bad_server(1, flip_one_byte).to_string();
    let out = Command::new(bin)
        .args([
            "bench", "echo", "--target", &addr, "-c", "1", "-d", "0.5", "--warmup", "0",
        ])
        .args(["--json", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let j: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["mode"], "echo");
    assert_eq!(j["errors_by_kind"]["corrupt"], 1);
    assert_eq!(j["errors"], 1);

    let server = util::start(|_| {});
    let target = server.addr(ServiceKind::Echo).to_string();
    let out = Command::new(bin)
        .args(["bench", "echo", "-t", &target, "-c", "2", "-d", "1.2s"])
        .args(["--warmup", "0", "--json", "--quiet", "--label", "ci"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    let stamp = j["timestamp"].as_str().unwrap();
    assert!(stamp.len() == 20 && stamp.ends_with('Z'), "{stamp}");
    assert!(j["timestamp_unix"].as_f64().unwrap() > 1.7e9);
    let params = &j["params"];
    assert_eq!(params["targets"], serde_json::json!([target]));
    assert_eq!(params["connections"], 2);
    assert_eq!(params["duration_s"], 1.2);
    assert_eq!(params["label"], "ci");
    assert_eq!(params["pid"], Value::Null);
    let series = j["series"].as_array().unwrap();
    assert!(!series.is_empty(), "{j}");
    assert!(series[0]["ops"].as_u64().unwrap() > 0, "{j}");
    assert!(
        series[0]["p99_us"].as_u64().is_some(),
        "--json records them: {j}"
    );
    assert!(j["latency_us"]["p50"].as_u64().is_some());
    assert_eq!(j["errors"], 0);
    assert_eq!(j["sent_total"], j["completed"]);

    let out = Command::new(bin)
        .args(["bench", "echo", "--target", &addr, "--size", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin)
        .args(["bench", "udp", "--target", &addr, "--size", "4"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a plan that cannot run is a usage error"
    );
}

/// No duration can panic later: a value past the 10-year maximum is a usage error (exit 2) that
/// names the flag, for `serve` (which used to panic on the first connect) and for `bench`.
#[test]
fn test_huge_durations_exit_2_naming_the_flag() {
    for (args, flag) in [
        (
            &["serve", "--echo", "127.0.0.1:0", "--idle-timeout", "1e19"][..],
            "--idle-timeout",
        ),
        (
            &["serve", "--echo", "127.0.0.1:0", "--keepalive", "0.001"],
            "--keepalive",
        ),
        (
            &["bench", "echo", "-t", "127.0.0.1:9", "-d", "1e19"],
            "--duration",
        ),
        (
            &["bench", "echo", "-t", "127.0.0.1:9", "--warmup", "NaN"],
            "--warmup",
        ),
    ] {
        let (status, stderr) = util::run_binary(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}
