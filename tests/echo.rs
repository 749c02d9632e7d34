//! TCP echo over loopback: every byte back in order, half-close, backpressure, many clients,
//! resets, connection limits.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use socket2::SockRef;
use util::*;

/// 1 MiB echoed, then the client's half-close: every byte comes back, then EOF.
#[test]
fn one_mib_then_half_close_returns_every_byte_then_eof() {
    let server = start(|_| {});
    let data = pattern(0, 1 << 20);
    let got = echo_round_trip(connect_echo(&server), data.clone());
    assert_same(&got, &data);
    let totals = server.stop().unwrap();
    assert_eq!(totals.bytes_in, 1 << 20);
    assert_eq!(totals.bytes_out, 1 << 20);
    assert_eq!(totals.closed, 1);
}

/// A client that half-closes and keeps reading still gets everything (the CLOSE-WAIT flush),
/// even when it starts reading only after its FIN.
#[test]
fn half_closed_client_that_reads_late_gets_everything() {
    let server = start(|_| {});
    let mut client = connect_echo(&server);
    let data = pattern(7, 200_000);
    client.write_all(&data).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let got = read_to_eof(&mut client);
    assert_same(&got, &data);
}

/// Many small writes and reads interleaved on one connection come back in order.
#[test]
fn ping_pong_messages_come_back_in_order() {
    let server = start(|_| {});
    let mut client = connect_echo(&server);
    for i in 0..1000 {
        let msg = format!("message {i}\n");
        client.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0; msg.len()];
        client.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
}

/// A client that writes 64 MiB without reading is slowed down by the server (its writes block)
/// instead of being buffered: the server's memory grows by less than a few MiB. Then it reads,
/// and gets all 64 MiB back intact.
#[test]
fn writer_that_never_reads_is_paused_not_buffered() {
    const TOTAL: usize = 64 << 20;
    let server = ServerProcess::start(&["--echo", "127.0.0.1:0", "--max-buffer", "1m"], 1);
    let rss_before = server.rss_kib();
    let mut client = connect(server.addr("echo"));
    let data = pattern(0, TOTAL);

    // Write without reading until no progress is possible: the server has stopped reading.
    let sent = write_until_stalled(&mut client, &data, Duration::from_millis(500));
    assert!(
        sent < TOTAL,
        "the server kept reading 64 MiB from a client that never reads"
    );
    let grown_kib = server.rss_kib().saturating_sub(rss_before);
    assert!(
        grown_kib < 4 * 1024,
        "server RSS grew {grown_kib} KiB while blocked ({sent} bytes sent)"
    );

    // Now read while writing the rest: every byte must come back intact.
    client.set_nonblocking(false).unwrap();
    let got = echo_round_trip_from(client, data.clone(), sent);
    assert_same(&got, &data);
    let grown_kib = server.rss_kib().saturating_sub(rss_before);
    assert!(grown_kib < 4 * 1024, "server RSS grew {grown_kib} KiB");
}

/// Like `echo_round_trip`, for a connection on which `data[..already]` was sent already.
fn echo_round_trip_from(stream: std::net::TcpStream, data: Vec<u8>, already: usize) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data[already..]).expect("write");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut reader = stream;
    let got = read_to_eof(&mut reader);
    sender.join().unwrap();
    got
}

/// 2000 clients connected at once each get their own bytes back.
#[test]
fn two_thousand_concurrent_connections() {
    let server = start(|_| {});
    let mut clients: Vec<_> = (0..2000).map(|_| connect_echo(&server)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("client {i:04}\n").as_bytes()).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut back = [0; 12];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, format!("client {i:04}\n").as_bytes());
    }
    for c in &clients {
        c.shutdown(Shutdown::Write).unwrap();
    }
    for c in &mut clients {
        assert!(read_to_eof(c).is_empty());
    }
    let totals = server.stop().unwrap();
    assert_eq!(totals.accepted, 2000);
    assert_eq!(totals.closed, 2000);
}

/// A client that resets its connection in the middle of a transfer (unread echo pending, a
/// write queued) is released, and the other clients never notice.
#[test]
fn a_reset_leaves_other_clients_untouched() {
    let server = start(|c| c.max_buffer = 64 * 1024);
    let mut steady = connect_echo(&server);
    steady.write_all(b"before\n").unwrap();
    let mut back = [0; 7];
    steady.read_exact(&mut back).unwrap();

    let mut rude = connect_echo(&server);
    write_until_stalled(&mut rude, &pattern(0, 8 << 20), Duration::from_millis(200));
    // SO_LINGER 0: close() sends a reset instead of a FIN.
    SockRef::from(&rude)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(rude);

    steady.write_all(b"after\n").unwrap();
    let mut back = [0; 6];
    steady.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"after\n");
    steady.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut steady).is_empty());

    let totals = server.stop().unwrap();
    assert_eq!(totals.accepted, 2);
    assert_eq!(totals.closed, 2, "the reset connection was released");
}

/// Past `--max-conns` a client is told so and closed; the others are untouched; once one
/// leaves, a new client is served again.
#[test]
fn max_conns_turns_clients_away_with_a_reason() {
    let server = start(|c| c.max_conns = 2);
    let mut a = connect_echo(&server);
    let mut b = connect_echo(&server);
    for c in [&mut a, &mut b] {
        c.write_all(b"hi").unwrap();
        let mut back = [0; 2];
        c.read_exact(&mut back).unwrap();
    }

    let mut third = connect_echo(&server);
    assert_eq!(read_to_eof(&mut third), b"error: too many connections\n");

    // `a` leaves. Its EOF arrives only after the server released it.
    a.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut a).is_empty());
    let mut fourth = connect_echo(&server);
    fourth.write_all(b"served").unwrap();
    let mut back = [0; 6];
    fourth.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"served");

    b.write_all(b"still").unwrap();
    let mut back = [0; 5];
    b.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still");
    drop((b, fourth));
    let totals = server.stop().unwrap();
    assert_eq!(totals.rejected, 1);
}

/// A client turned away at `--max-conns` that had already sent data still receives its error
/// line and an orderly EOF: the server reads and discards what it sent before closing, instead
/// of closing with data unread (which makes the kernel send a reset).
#[test]
fn refused_client_that_already_sent_data_still_reads_its_reason() {
    let server = start(|c| c.max_conns = 1);
    let mut a = connect_echo(&server);
    a.write_all(b"hi").unwrap();
    let mut back = [0; 2];
    a.read_exact(&mut back).unwrap();

    for _ in 0..5 {
        let mut late = connect_echo(&server);
        let writer = {
            let mut w = late.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = w.write_all(&pattern(0, 256 << 10));
                let _ = w.shutdown(Shutdown::Write);
            })
        };
        let mut got = Vec::new();
        late.read_to_end(&mut got)
            .expect("an orderly EOF after the line, not a reset");
        assert_eq!(got, b"error: too many connections\n");
        writer.join().unwrap();
    }
    drop(a);
    let totals = server.stop().unwrap();
    assert_eq!(totals.rejected, 5);
    assert_eq!(totals.accepted, 1);
}

/// With `--idle-timeout`, a silent client is closed in order (it reads EOF, not a reset),
/// while a client that keeps talking stays.
#[test]
fn idle_client_is_closed_active_one_stays() {
    let server = start(|c| c.idle_timeout = Some(Duration::from_secs(1)));
    let mut idle = connect_echo(&server);
    let mut active = connect_echo(&server);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(read_to_eof(&mut idle)));
    // Keep the active client busy until the idle one has been closed.
    let mut rounds = 0;
    let got = loop {
        active.write_all(b"x").unwrap();
        let mut back = [0; 1];
        active.read_exact(&mut back).unwrap();
        rounds += 1;
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(got) => break got,
            Err(_) => assert!(rounds < 1000, "idle client never closed"),
        }
    };
    assert!(got.is_empty(), "an idle client gets EOF");
    active.write_all(b"y").unwrap();
    let mut back = [0; 1];
    active.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"y", "the active client is still served");
}
