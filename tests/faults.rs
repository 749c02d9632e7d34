//! Faults a high-connection-count server must survive: running out of descriptors, clients that
//! never read, connect floods and churn. Each keeps serving, loses nothing and never spins.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use socket2::SockRef;
use util::*;

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    resound::procfs::sample_process(pid)
        .expect("the server's /proc entry")
        .cpu_s
}

/// One echo round trip: "served", or the server's rejection line.
fn probe(client: &mut TcpStream) -> Result<(), String> {
    if client.write_all(b"ping").is_err() {
        return Err(String::from_utf8_lossy(&read_to_eof(client)).into_owned());
    }
    let mut back = [0; 4];
    match client.read_exact(&mut back) {
        Ok(()) if &back == b"ping" => Ok(()),
        Ok(()) => {
            let mut rest = back.to_vec();
            let _ = client.read_to_end(&mut rest);
            Err(String::from_utf8_lossy(&rest).into_owned())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Under a lowered RLIMIT_NOFILE the accept loop runs out of descriptors: the clients it
/// cannot take are told so and closed (never left hanging), the server does not spin while
/// saturated, and once descriptors are free again new clients are served.
#[test]
fn fd_exhaustion_sheds_clients_without_spinning_and_recovers() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resound"));
    // --max-conns far above the limit, so it is EMFILE that stops the accept loop.
    cmd.args(["serve", "--echo", "127.0.0.1:0", "--max-conns", "10000"]);
    with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 48);
    let server = ServerProcess::start_command(cmd, 1);
    let addr = server.addr("echo");

    let mut served = Vec::new();
    let mut shed = 0;
    for _ in 0..80 {
        let mut client = connect(addr);
        match probe(&mut client) {
            Ok(()) => served.push(client),
            Err(reply) => {
                assert_eq!(reply, "error: too many connections\n");
                shed += 1;
            }
        }
    }
    assert!(served.len() > 20, "only {} clients served", served.len());
    assert!(shed > 0, "the limit was never reached");

    // Saturated: no descriptor left. The loop must sleep, not spin on the listener.
    let before = cpu_seconds(server.pid());
    let window = Instant::now();
    let mut late = connect(addr); // one more knocking while saturated
    assert_eq!(
        probe(&mut late),
        Err("error: too many connections\n".into())
    );
    thread::sleep(Duration::from_millis(1000)); // the measurement window itself
    let used = cpu_seconds(server.pid()) - before;
    let share = used / window.elapsed().as_secs_f64();
    assert!(
        share < 0.3,
        "server used {:.0}% CPU while saturated",
        share * 100.0
    );

    // Free some descriptors: service resumes by itself. Each EOF arrives only after the
    // server released that connection.
    for mut c in served.drain(..10) {
        c.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_eof(&mut c).is_empty());
    }
    let mut after = connect(addr);
    assert_eq!(
        probe(&mut after),
        Ok(()),
        "not served after descriptors were freed"
    );
    for c in &mut served {
        assert_eq!(probe(c), Ok(()), "an established client was disturbed");
    }
}

/// 100 clients that write and never read: each is paused at --max-buffer, so the server's memory
/// stays bounded, and a well-behaved client next to them is served all along.
#[test]
fn hundred_clients_that_never_read() {
    let server = ServerProcess::start(&["--echo", "127.0.0.1:0", "--max-buffer", "256k"], 1);
    let addr = server.addr("echo");
    let rss_before = server.rss_kib();
    let junk = pattern(0, 2 << 20);
    let mut hogs = Vec::new();
    for _ in 0..100 {
        let mut hog = connect(addr);
        write_until_stalled(&mut hog, &junk, Duration::from_millis(200));
        hogs.push(hog);
    }
    let mut good = connect(addr);
    for i in 0..100 {
        let msg = format!("still served {i}\n");
        good.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0; msg.len()];
        good.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    // 100 x (256 KiB queue + one 64 KiB read) at most, plus slack for the allocator.
    let grown = server.rss_kib().saturating_sub(rss_before);
    assert!(grown < 48 * 1024, "server RSS grew by {grown} KiB");
    drop(hogs);
}

/// A flood of connections opened and dropped at once (half of them with resets), then churn
/// from several threads for two seconds: every connection is served, none is leaked.
#[test]
fn connect_flood_and_churn() {
    let server = start(|_| {});
    let addr = server.addr(resound::ServiceKind::Echo);

    // Flood: 2000 connects back to back, then all dropped.
    let flood: Vec<TcpStream> = (0..2000).map(|_| connect(addr)).collect();
    for (i, c) in flood.iter().enumerate() {
        if i % 2 == 0 {
            SockRef::from(c).set_linger(Some(Duration::ZERO)).unwrap();
        }
    }
    drop(flood);

    // Churn: connect, one echo, close, as fast as four threads go.
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, cycles) = (stop.clone(), cycles.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut c = connect(addr);
                    c.write_all(b"x").unwrap();
                    let mut back = [0; 1];
                    c.read_exact(&mut back).unwrap();
                    c.shutdown(Shutdown::Write).unwrap();
                    assert!(read_to_eof(&mut c).is_empty());
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(2)); // how long to churn
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let churned = cycles.load(Ordering::Relaxed);
    assert!(churned > 100, "only {churned} cycles");

    let totals = server.stop().unwrap();
    assert_eq!(totals.accepted, 2000 + churned);
    assert_eq!(totals.closed, totals.accepted, "a connection was leaked");
}
