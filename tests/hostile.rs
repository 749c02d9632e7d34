//! Hostile clients and absurd values: what each attack would do without its bound, and the
//! bound that holds it. Memory is measured as the server process's RSS (`/proc/PID/status`)
//! with generous margins; nothing here depends on how fast the machine is.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use util::*;

const MIB: u64 = 1024; // in KiB, as /proc reports RSS

/// A client whose receive buffer is tiny and which never reads: everything sent to it piles up
/// in the server.
fn non_reader(addr: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Make sure the broadcast server has admitted every one of `members`: each says `join K`, and
/// an observer must hear it (only members' lines are read and fanned out). The observer is
/// returned, still a member; it must go on reading or leave.
fn sync_room(addr: SocketAddr, members: &mut [TcpStream]) -> BufReader<TcpStream> {
    let mut observer = BufReader::new(connect(addr));
    // The observer must be admitted before the joins are sent: prove it with its own line,
    // which the first member would receive — but members never read. So send the joins
    // repeatedly until the observer hears them all.
    let deadline = Instant::now() + TIMEOUT;
    let mut heard = vec![false; members.len()];
    while heard.iter().any(|h| !h) {
        assert!(Instant::now() < deadline, "members were never admitted");
        for (k, m) in members.iter_mut().enumerate() {
            if !heard[k] {
                m.write_all(format!("join {k}\n").as_bytes()).unwrap();
            }
        }
        observer
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut line = String::new();
        while let Ok(n) = observer.read_line(&mut line) {
            if n == 0 {
                break;
            }
            if let Some(k) = line.trim().strip_prefix("join ") {
                heard[k.parse::<usize>().unwrap()] = true;
            }
            line.clear();
        }
    }
    observer.get_ref().set_read_timeout(Some(TIMEOUT)).unwrap();
    observer
}

/// Write `data` without reading, until it is all sent (true), or the socket stalls for
/// `stall` or the server drops the connection (an eviction is a reset).
fn write_until_stalled_or_dropped(s: &mut TcpStream, data: &[u8], stall: Duration) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut done = 0;
    while done < data.len() {
        match s.write(&data[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !wait_writable(s, stall) {
                    return false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Wait for the attackers' threads, probing the echo service at `probe` all along (the loop must
/// go on serving), and return their sockets with the server's peak RSS meanwhile, in KiB.
fn peak_rss_while(
    server: &ServerProcess,
    attackers: Vec<thread::JoinHandle<TcpStream>>,
    probe: SocketAddr,
) -> (Vec<TcpStream>, u64) {
    let mut peak = 0;
    while attackers.iter().any(|t| !t.is_finished()) {
        peak = peak.max(server.rss_kib());
        echo_probe(probe);
    }
    let sockets = attackers.into_iter().map(|t| t.join().unwrap()).collect();
    (sockets, peak.max(server.rss_kib()))
}

/// One echo round trip on a fresh connection: the loop is still serving everyone else.
fn echo_probe(addr: SocketAddr) {
    let mut c = connect(addr);
    c.write_all(b"still there?").unwrap();
    let mut got = [0; 12];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still there?");
}

/// Broadcast receivers that never read while two senders push 64 MiB of lines: without a
/// global bound every receiver would pin all of it (shared, so ~60 MiB in total); with
/// `--max-memory 8m` the receivers pinning the most are evicted, RSS stays near the budget,
/// each eviction is logged and counted once, and the server goes on serving: an echo client,
/// and a fresh broadcast pair that can still talk.
#[test]
fn broadcast_receivers_that_never_read_are_held_to_the_memory_budget() {
    let server = ServerProcess::start(
        &[
            "--broadcast",
            "127.0.0.1:0",
            "--echo",
            "127.0.0.1:0",
            "--max-memory",
            "8m",
            "--bcast-hard-limit",
            "1g",
            "--bcast-soft-limit",
            "1g",
        ],
        2,
    );
    let addr = server.addr("broadcast");
    let rss_before = server.rss_kib();
    let mut receivers: Vec<TcpStream> = (0..40).map(|_| non_reader(addr)).collect();
    let observer = sync_room(addr, &mut receivers);
    drop(observer);

    let senders: Vec<_> = (0..2)
        .map(|_| {
            let mut s = connect(addr);
            thread::spawn(move || {
                let batch = vec![b'\n'; 60_000];
                // The server may close a sender too (it only evicts clients with output
                // queued, but a sender's write can still fail if the loop stops): stop then.
                for _ in 0..(32 << 20) / batch.len() {
                    if s.write_all(&batch).is_err() {
                        break;
                    }
                }
                s
            })
        })
        .collect();
    let (senders, peak) = peak_rss_while(&server, senders, server.addr("echo"));
    let grown = peak.saturating_sub(rss_before);
    assert!(
        grown < 32 * MIB,
        "RSS grew by {grown} KiB under an 8 MiB budget"
    );
    // A fresh pair can still talk (the senders' last lines may still be arriving: skip them).
    drop(senders);
    let mut a = connect(addr);
    let mut b = BufReader::new(connect(addr));
    let deadline = Instant::now() + TIMEOUT;
    'talk: loop {
        assert!(Instant::now() < deadline, "the fresh pair never talked");
        a.write_all(b"after the storm\n").unwrap();
        b.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut line = String::new();
        while b.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line == "after the storm\n" {
                break 'talk;
            }
            line.clear();
        }
    }
    drop((a, b, receivers));
    server.signal(libc::SIGTERM);
    let logs = server.logs_until("stopped; totals:");
    let evictions: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("over --max-memory"))
        .collect();
    // Every client that never reads may be evicted: 40 receivers and the 2 senders (each
    // receives the other's lines). Each once: one log line per client, matching the counter.
    let mut peers: Vec<&str> = evictions
        .iter()
        .map(|l| {
            l.split("evicted ")
                .nth(1)
                .unwrap()
                .split(':')
                .take(2)
                .last()
                .unwrap()
        })
        .collect();
    peers.sort_unstable();
    peers.dedup();
    assert!(!evictions.is_empty(), "the budget never acted");
    assert_eq!(peers.len(), evictions.len(), "a client evicted twice");
    assert_eq!(
        stat(logs.last().unwrap(), "evicted"),
        evictions.len() as u64
    );
}

/// Echo clients that write 16 MiB each and never read, with the per-client `--max-buffer`
/// raised out of the way: the budget alone must hold the sum, while a well-behaved client is
/// served throughout.
#[test]
fn echo_writers_that_never_read_are_held_to_the_memory_budget() {
    let server = ServerProcess::start(
        &[
            "--echo",
            "127.0.0.1:0",
            "--max-buffer",
            "64m",
            "--max-memory",
            "16m",
        ],
        1,
    );
    let addr = server.addr("echo");
    let rss_before = server.rss_kib();
    let data = pattern(0, 16 << 20);
    let writers: Vec<_> = (0..12)
        .map(|_| {
            let data = data.clone();
            let mut s = non_reader(addr);
            thread::spawn(move || {
                write_until_stalled_or_dropped(&mut s, &data, Duration::from_secs(2));
                s
            })
        })
        .collect();
    let (writers, peak) = peak_rss_while(&server, writers, addr);
    let grown = peak.saturating_sub(rss_before);
    assert!(
        grown < 48 * MIB,
        "RSS grew by {grown} KiB under a 16 MiB budget"
    );
    server.wait_for_log("over --max-memory");
    echo_probe(addr);
    drop(writers);
}

/// After a burst of clients that pinned ~100 MiB leave, the server gives the memory back to
/// the system: RSS returns within 32 MiB of where it started, within 10 s.
#[test]
fn memory_is_given_back_after_a_burst() {
    let server = ServerProcess::start(
        &[
            "--echo",
            "127.0.0.1:0",
            "--max-buffer",
            "64m",
            "--max-memory",
            "1g",
        ],
        1,
    );
    let addr = server.addr("echo");
    let rss_before = server.rss_kib();
    // Many small writes, so the queues are many small chunks scattered over the heap.
    let writers: Vec<_> = (0..12)
        .map(|i| {
            let mut s = non_reader(addr);
            s.set_nodelay(true).unwrap();
            thread::spawn(move || {
                let piece = pattern(i, 3000);
                for _ in 0..(12 << 20) / piece.len() {
                    if !write_until_stalled_or_dropped(&mut s, &piece, Duration::from_secs(2)) {
                        break;
                    }
                }
                s
            })
        })
        .collect();
    let writers: Vec<TcpStream> = writers.into_iter().map(|t| t.join().unwrap()).collect();
    let burst = server.rss_kib();
    assert!(
        burst > rss_before + 64 * MIB,
        "the burst should pin memory: {rss_before} -> {burst} KiB"
    );
    // A client that stays: its queue is allocated above the burst's, at the top of the heap,
    // where it keeps the allocator from shrinking the heap on its own when the burst leaves.
    let mut anchor = non_reader(addr);
    write_until_stalled_or_dropped(&mut anchor, &pattern(0, 8 << 20), Duration::from_secs(1));
    drop(writers);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now_kib = server.rss_kib();
    while now_kib > rss_before + 32 * MIB && Instant::now() < deadline {
        // Nothing to await: RSS is only observable by looking.
        thread::sleep(Duration::from_millis(100));
        now_kib = server.rss_kib();
    }
    assert!(
        now_kib <= rss_before + 32 * MIB,
        "RSS stayed at {now_kib} KiB after the burst (started at {rss_before}, peaked at {burst})"
    );
    drop(anchor);
}

/// 20 000 connect/close cycles with `--idle-timeout 3600`: a closed connection's idle deadline
/// leaves with it, so RSS stays flat (it grew 24 bytes a cycle when deadlines stayed in the
/// timer heap until they expired).
#[test]
fn rss_stays_flat_under_churn_with_a_long_idle_timeout() {
    let server = ServerProcess::start(&["--echo", "127.0.0.1:0", "--idle-timeout", "3600"], 1);
    let addr = server.addr("echo");
    let churn = |n: usize| {
        for _ in 0..n {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"x").unwrap();
            let mut one = [0; 1];
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            c.read_exact(&mut one).unwrap();
        }
    };
    churn(3000); // warm up: allocator pools, the slab, the timer heap's floor
    let before = server.rss_kib();
    churn(20_000);
    let after = server.rss_kib();
    assert!(
        after <= before + 256,
        "RSS grew from {before} to {after} KiB over 20 000 cycles"
    );
}

/// The largest value every duration flag accepts, with a client on every service: nothing
/// overflows (an `Instant + Duration` panic used to kill the server on the first connect).
#[test]
fn the_largest_durations_never_panic() {
    let dir = std::env::temp_dir().join(format!("resound-hostile-{}", std::process::id()));
    let max = format!("{}", resound::units::MAX_DURATION.as_secs());
    let mut server = ServerProcess::start(
        &[
            "--echo",
            "127.0.0.1:0",
            "--broadcast",
            "127.0.0.1:0",
            "--files",
            "127.0.0.1:0",
            "--udp",
            "127.0.0.1:0",
            "--dir",
            dir.to_str().unwrap(),
            "--idle-timeout",
            &max,
            "--header-timeout",
            &max,
            "--transfer-timeout",
            &max,
            "--bcast-soft-time",
            &max,
            "--stats-interval",
            &max,
            "--drain-timeout",
            &max,
            "--keepalive",
            "32767",
        ],
        4,
    );
    let mut echo = connect(server.addr("echo"));
    echo.write_all(b"hi").unwrap();
    let mut got = [0; 2];
    echo.read_exact(&mut got).unwrap();
    let mut room = join_room(server.addr("broadcast"), 2);
    room[0].get_mut().write_all(b"line\n").unwrap();
    let mut line = String::new();
    room[1].read_line(&mut line).unwrap();
    let mut files = connect(server.addr("files"));
    files.write_all(b"5 x.txt\nhello").unwrap();
    files.shutdown(std::net::Shutdown::Write).unwrap();
    let reply = read_to_eof(&mut files);
    assert!(reply.starts_with(b"okdone 5 "), "{reply:?}");
    drop((echo, room));
    server.signal(libc::SIGINT);
    assert!(server.wait().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP and SIGUSR2 are logged and ignored (the server keeps serving), SIGUSR1 logs the
/// stats line at once, SIGQUIT drains like SIGTERM and exits 0 with its totals.
#[test]
fn signals_other_than_stop_never_kill_the_server() {
    let mut server = ServerProcess::start(&["--echo", "127.0.0.1:0"], 1);
    let addr = server.addr("echo");
    for (signal, name) in [(libc::SIGHUP, "SIGHUP"), (libc::SIGUSR2, "SIGUSR2")] {
        server.signal(signal);
        server.wait_for_log(&format!("received {name}: ignored"));
        echo_probe(addr);
    }
    server.signal(libc::SIGUSR1);
    let stats = server.wait_for_log("stats: ");
    assert!(stat(&stats, "accepted") >= 2, "{stats}");
    server.signal(libc::SIGQUIT);
    server.wait_for_log("stopped; totals:");
    assert!(server.wait().success());
}
