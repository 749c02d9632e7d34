//! `resound bench` against real servers on loopback: each mode for about a second against an
//! in-process resound on port 0, asserting counts and zero errors (never a speed); and servers
//! that misbehave on purpose, to prove the checks can fail.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::Duration;

use resound::ServiceKind;
use resound::bench::{self, Mode, Plan, Report};

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
    // Never more than the schedule holds for the warm-up and the window.
    assert!(r.ops <= 2000 * 12 / 10 + 1, "{} messages", r.ops);
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
    // Each line reaches the 10 receivers; the window boundaries cut a few either way.
    assert!(r.sent >= 400 && r.sent <= 600, "{} lines sent", r.sent);
    assert!(
        r.ops >= r.sent * 9 && r.ops <= r.sent * 11,
        "{} deliveries",
        r.ops
    );
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

#[test]
fn test_a_flipped_byte_is_reported_as_corruption() {
    let addr = bad_server(2, flip_one_byte);
    let mut p = plan(Mode::Echo, addr);
    p.connections = 2;
    let r = run(&p);
    assert_eq!(r.errors.corrupt, 2, "{}", r.summary());
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn test_unanswered_messages_are_reported_lost() {
    let addr = bad_server(3, swallow);
    let mut p = plan(Mode::Echo, addr);
    p.connections = 3;
    p.pipeline = 2;
    p.drain = Duration::from_millis(200);
    let r = run(&p);
    assert_eq!(r.ops, 0);
    assert_eq!(r.errors.lost, 6, "{}", r.summary());
    assert_eq!(r.exit_code(), 1);
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

/// A server that takes each connection and closes it at once: counted, never a crash.
#[test]
fn test_connections_closed_by_the_server_are_counted() {
    let addr = bad_server(4, drop);
    let mut p = plan(Mode::Echo, addr);
    p.connections = 4;
    p.duration = Duration::from_millis(300);
    let r = run(&p);
    assert_eq!(r.errors.closed, 4, "{}", r.summary());
    assert_eq!(r.ops, 0);
    assert_eq!(r.exit_code(), 1);
}

/// Nobody listening: every connect fails, is counted, and the run still ends with a report.
#[test]
fn test_a_vanished_server_is_counted_not_fatal() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut p = plan(Mode::Echo, addr);
    p.connections = 5;
    p.duration = Duration::from_millis(200);
    let r = run(&p);
    assert_eq!(r.errors.connect, 5);
    assert_eq!(r.exit_code(), 1);
}

/// The real binary: a usage error is 2, a corrupted payload is 1, and --json prints one line.
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
    assert!(stdout.contains("\"mode\":\"echo\""), "{stdout}");
    assert!(stdout.contains("\"corrupt\":1"), "{stdout}");

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
