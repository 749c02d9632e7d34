//! TCP broadcast over loopback: lines to every other client, whole and in order; the final
//! unterminated line; overlong lines; slow consumers evicted without hurting anyone else.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use resound::ServiceKind;
use util::*;

fn start_bcast(tweak: impl FnOnce(&mut resound::Config)) -> resound::Running {
    start(|c| {
        c.broadcast = Some("127.0.0.1:0".parse().unwrap());
        tweak(c)
    })
}

fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line
}

fn send(r: &mut BufReader<TcpStream>, bytes: &[u8]) {
    r.get_mut().write_all(bytes).unwrap();
}

/// A's line reaches B and C, and not A; then B's reaches A and C.
#[test]
fn a_line_reaches_every_other_client_and_not_its_sender() {
    let server = start_bcast(|_| {});
    let mut room = join_room(server.addr(ServiceKind::Broadcast), 3);
    send(&mut room[0], b"hello from A\n");
    assert_eq!(read_line(&mut room[1]), "hello from A\n");
    assert_eq!(read_line(&mut room[2]), "hello from A\n");
    send(&mut room[1], b"hello from B\n");
    // A's next line is B's: it never got its own.
    assert_eq!(read_line(&mut room[0]), "hello from B\n");
    assert_eq!(read_line(&mut room[2]), "hello from B\n");
    drop(room);
    let totals = server.stop().unwrap();
    // 2 join lines + 2 hello lines were received; each reached the other members present.
    assert_eq!(totals.lines_in, 4);
}

/// 1000 lines arrive in the order sent.
#[test]
fn a_thousand_lines_arrive_in_order() {
    let server = start_bcast(|_| {});
    let mut room = join_room(server.addr(ServiceKind::Broadcast), 2);
    let mut all = Vec::new();
    for i in 0..1000 {
        all.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    send(&mut room[0], &all);
    for i in 0..1000 {
        assert_eq!(read_line(&mut room[1]), format!("line {i}\n"));
    }
}

/// Two senders at full speed: the receiver gets every line of each, whole (never split or
/// interleaved with the other's bytes) and in each sender's order.
#[test]
fn concurrent_senders_never_split_or_interleave_lines() {
    const LINES: usize = 20_000;
    let server = start_bcast(|_| {});
    let room = join_room(server.addr(ServiceKind::Broadcast), 3);
    let mut room = room.into_iter();
    let senders: Vec<_> = ["A", "B"]
        .iter()
        .map(|name| {
            let mut s = room.next().unwrap().into_inner();
            // Each sender drains what it receives (the other sender's lines) in a thread, so
            // that it is not evicted as a slow consumer.
            let mut sink = s.try_clone().unwrap();
            thread::spawn(move || {
                let mut buf = [0; 65536];
                while matches!(sink.read(&mut buf), Ok(n) if n > 0) {}
            });
            thread::spawn(move || {
                let mut batch = Vec::new();
                for i in 0..LINES {
                    // Lines of varying length, so writes split them at arbitrary places.
                    let pad = "x".repeat(i % 97);
                    batch.extend_from_slice(format!("{name} {i} {pad}\n").as_bytes());
                    if batch.len() > 8000 {
                        s.write_all(&batch).unwrap();
                        batch.clear();
                    }
                }
                s.write_all(&batch).unwrap();
                s
            })
        })
        .collect();
    let mut receiver = room.next().unwrap();
    let mut next = [0usize; 2];
    for _ in 0..2 * LINES {
        let line = read_line(&mut receiver);
        let mut parts = line.trim_end_matches('\n').splitn(3, ' ');
        let who = match parts.next() {
            Some("A") => 0,
            Some("B") => 1,
            other => panic!("corrupt line {line:?} ({other:?})"),
        };
        let i: usize = parts.next().unwrap().parse().expect("whole line");
        assert_eq!(i, next[who], "sender {who} out of order");
        assert_eq!(
            parts.next().unwrap_or(""),
            "x".repeat(i % 97),
            "line {line:?}"
        );
        next[who] += 1;
    }
    assert_eq!(next, [LINES, LINES]);
    for s in senders {
        s.join().unwrap();
    }
}

/// A last line without "\n" at the sender's EOF is delivered with "\n" appended, and the
/// sender is closed in order (it reads EOF).
#[test]
fn unterminated_final_line_is_delivered_with_a_newline() {
    let server = start_bcast(|_| {});
    let mut room = join_room(server.addr(ServiceKind::Broadcast), 2);
    send(&mut room[0], b"first\nlast words");
    room[0].get_ref().shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_line(&mut room[1]), "first\n");
    assert_eq!(read_line(&mut room[1]), "last words\n");
    assert!(read_to_eof(room[0].get_mut()).is_empty());
}

/// A line over --max-line: no part of it is delivered, its sender gets one error line and EOF,
/// and everyone else carries on.
#[test]
fn overlong_line_is_refused_and_its_sender_closed() {
    let server = start_bcast(|c| c.max_line = 100);
    let mut room = join_room(server.addr(ServiceKind::Broadcast), 3);
    let mut bad = b"fine\n".to_vec();
    bad.extend_from_slice(&[b'x'; 150]);
    bad.extend_from_slice(b"\nafter\n");
    send(&mut room[0], &bad);
    assert_eq!(read_line(&mut room[1]), "fine\n");
    assert_eq!(read_line(&mut room[2]), "fine\n");
    let mut rest = Vec::new();
    room[0].read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"error: line too long\n");

    // The others are unaffected; the refused line and what followed it never arrive.
    send(&mut room[1], b"still here\n");
    assert_eq!(read_line(&mut room[2]), "still here\n");
}

/// An overlong line that never ends is caught before its newline arrives.
#[test]
fn endless_line_is_refused_without_waiting_for_its_end() {
    let server = start_bcast(|c| c.max_line = 1000);
    let mut room = join_room(server.addr(ServiceKind::Broadcast), 2);
    send(&mut room[0], &[b'y'; 5000]);
    let mut rest = Vec::new();
    room[0].read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"error: line too long\n");
}

/// A client that never reads while ~100 MiB of lines flow to another: every line arrives at the
/// reader, the slow one is evicted (a reset), and the server's memory stays bounded.
#[test]
fn slow_consumer_is_evicted_and_memory_stays_bounded() {
    const LINES: usize = 1_000_000;
    const LINE: usize = 100;
    let mut server = ServerProcess::start(
        &[
            "--broadcast",
            "127.0.0.1:0",
            "--bcast-hard-limit",
            "8m",
            "--bcast-soft-limit",
            "2m",
        ],
        1,
    );
    let rss_before = server.rss_kib();
    let mut room = join_room(server.addr("broadcast"), 3);
    let slow = room.pop().unwrap();
    let mut reader = room.pop().unwrap();
    let sender = room.pop().unwrap().into_inner();

    let writer = thread::spawn(move || {
        let mut s = sender;
        let mut batch = Vec::with_capacity(64 * 1024);
        for i in 0..LINES {
            let head = format!("{i:010} ");
            batch.extend_from_slice(head.as_bytes());
            batch.extend(std::iter::repeat_n(b'z', LINE - head.len() - 1));
            batch.push(b'\n');
            if batch.len() >= 60_000 {
                s.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        s.write_all(&batch).unwrap();
        s
    });
    let mut line = Vec::with_capacity(LINE);
    let mut peak_kib = 0;
    for i in 0..LINES {
        line.clear();
        reader.read_until(b'\n', &mut line).unwrap();
        assert_eq!(line.len(), LINE, "line {i}");
        assert_eq!(&line[..10], format!("{i:010}").as_bytes(), "line {i}");
        if i % 100_000 == 0 {
            peak_kib = peak_kib.max(server.rss_kib());
        }
    }
    let sender = writer.join().unwrap();

    // The slow client was reset by the server (it never read a byte).
    assert!(
        wait_hangup(slow.get_ref(), TIMEOUT),
        "the slow consumer was never evicted"
    );
    let grown = peak_kib.max(server.rss_kib()).saturating_sub(rss_before);
    assert!(grown < 24 * 1024, "server RSS grew by {grown} KiB");

    drop((sender, reader, slow));
    server.signal(libc::SIGTERM);
    let totals = server.wait_for_log("stopped; totals:");
    assert_eq!(stat(&totals, "evicted"), 1);
    assert!(server.wait().success());
}

/// A client that stays over the soft limit for the soft time is evicted even under the hard
/// limit; the reader next to it is not.
#[test]
fn soft_limit_evicts_after_its_grace_time() {
    let server = start_bcast(|c| {
        c.bcast_hard_limit = 64 << 20;
        c.bcast_soft_limit = 256 << 10;
        c.bcast_soft_time = Duration::from_millis(300);
    });
    let mut room = join_room(server.addr(ServiceKind::Broadcast), 3);
    let slow = room.pop().unwrap();
    let mut reader = room.pop().unwrap();
    let mut sender = room.pop().unwrap();
    // Enough to overflow the slow client's kernel buffers and leave > 256 KiB queued.
    let line = format!("{}\n", "s".repeat(999));
    let lines = 16 * 1024;
    let payload = line.repeat(lines);
    let w = thread::spawn(move || {
        sender.get_mut().write_all(payload.as_bytes()).unwrap();
        sender
    });
    for _ in 0..lines {
        assert_eq!(read_line(&mut reader), line);
    }
    let _sender = w.join().unwrap();
    assert!(wait_hangup(slow.get_ref(), TIMEOUT), "never evicted");
    drop((slow, _sender, reader));
    let totals = server.stop().unwrap();
    assert_eq!(totals.evicted, 1, "only the slow client was evicted");
}

/// A graceful stop still delivers every line the server had received when it began — to every
/// member, even those with nothing of their own to finish — then closes everyone in order.
#[test]
fn graceful_stop_delivers_lines_received_before_it() {
    let server = start_bcast(|_| {});
    let mut room = join_room(server.addr(ServiceKind::Broadcast), 3);
    // Far more than one visit reads (64 KiB), so when the stop begins the sender still has
    // bytes in the server's receive queue while the others have nothing left of their own.
    let mut lines = Vec::new();
    for i in 0..100_000 {
        lines.extend_from_slice(format!("parting line {i}\n").as_bytes());
    }
    let mut readers: Vec<_> = room
        .drain(..2)
        .map(|mut member| {
            thread::spawn(move || {
                let mut got = Vec::new();
                member.read_to_end(&mut got).unwrap();
                got
            })
        })
        .collect();
    // On loopback, write() returns once the bytes sit in the server's receive queue.
    room[0].get_mut().write_all(&lines).unwrap();
    server.handle().shutdown();
    let got: Vec<Vec<u8>> = readers.drain(..).map(|r| r.join().unwrap()).collect();
    assert!(read_to_eof(room[0].get_mut()).is_empty());
    drop(room);
    let totals = server.join().unwrap();
    // Every line the server took in (2 join lines, then a prefix of ours) reached both others,
    // whole.
    let served = totals.lines_in as usize - 2;
    assert!(served > 0);
    for got in got {
        assert_eq!(got.iter().filter(|&&b| b == b'\n').count(), served);
        assert_same(&got, &lines[..got.len()]);
    }
}
