//! The connection lifecycle seen from a client: orderly closes, graceful shutdown with clients
//! mid-stream, the second signal, the closing phases' EOF.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use util::*;

/// Stream `data` on `stream` from a thread until it is all sent or the server closes; returns
/// the thread's handle.
fn stream_in_background(stream: &TcpStream, data: Arc<Vec<u8>>) -> thread::JoinHandle<()> {
    let mut writer = stream.try_clone().unwrap();
    thread::spawn(move || {
        // Once the server closes, writes fail (EPIPE/reset): that ends the stream.
        let _ = writer.write_all(&data);
    })
}

/// Read until at least `n` bytes have arrived.
fn read_at_least(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    stream.read_exact(&mut got).unwrap();
    got
}

/// Read until EOF; a reset after EOF-less data counts as the end too, but is reported.
fn read_rest(stream: &mut TcpStream, got: &mut Vec<u8>) -> std::io::Result<()> {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e),
        }
    }
}

/// SIGTERM while clients are mid-stream: every byte the server read is echoed before its FIN
/// (bytes_in - discarded == bytes_out, and the clients receive exactly that), clients see an
/// orderly EOF, and the process exits 0.
#[test]
fn sigterm_with_clients_mid_stream_flushes_everything_and_exits_0() {
    let mut server = ServerProcess::start(&["--echo", "127.0.0.1:0"], 1);
    let data = Arc::new(pattern(0, 256 << 20));
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(server.addr("echo"))).collect();
    let writers: Vec<_> = clients
        .iter()
        .map(|c| stream_in_background(c, data.clone()))
        .collect();
    // Each client has data flowing in both directions before the signal.
    let mut received: Vec<Vec<u8>> = clients
        .iter_mut()
        .map(|c| read_at_least(c, 1 << 20))
        .collect();

    server.signal(libc::SIGTERM);

    for (client, got) in clients.iter_mut().zip(&mut received) {
        read_rest(client, got).expect("an orderly EOF, not a reset");
        assert!(got.len() < data.len(), "the stream was cut by the shutdown");
        assert_same(got, &data[..got.len()]);
        // Our FIN lets the server's FIN-WAIT-2 finish.
        let _ = client.shutdown(Shutdown::Write);
    }
    let totals = server.wait_for_log("stopped; totals:");
    let status = server.wait();
    assert!(status.success(), "exit status {status:?}");
    for w in writers {
        w.join().unwrap();
    }
    let served = stat(&totals, "bytes_in") - stat(&totals, "discarded");
    let delivered: usize = received.iter().map(Vec::len).sum();
    assert_eq!(
        served,
        stat(&totals, "bytes_out"),
        "every byte read was echoed"
    );
    assert_eq!(delivered as u64, stat(&totals, "bytes_out"));
}

/// A second SIGTERM stops at once, even while a connection could hold the drain for a minute.
#[test]
fn second_signal_exits_at_once() {
    let mut server = ServerProcess::start(&["--echo", "127.0.0.1:0", "--drain-timeout", "60"], 1);
    // A client that writes and never reads: its queue never empties, so the drain cannot end.
    let mut client = connect(server.addr("echo"));
    write_until_stalled(
        &mut client,
        &pattern(0, 32 << 20),
        Duration::from_millis(300),
    );
    server.signal(libc::SIGTERM);
    server.wait_for_log("shutting down");
    server.signal(libc::SIGTERM);
    server.wait_for_log("second stop request");
    let status = server.wait();
    assert!(status.success(), "exit status {status:?}");
}

/// A stop with idle clients (an echo client that got its echo, a broadcast member) is prompt:
/// they owe and are owed nothing, so they are closed at once — an orderly EOF, not a reset —
/// instead of holding the drain until a timeout (here a minute, so a regression cannot pass).
#[test]
fn stop_with_idle_clients_is_prompt() {
    let mut server = ServerProcess::start(
        &[
            "--echo",
            "127.0.0.1:0",
            "--broadcast",
            "127.0.0.1:0",
            "--drain-timeout",
            "60",
            "--close-timeout",
            "60",
        ],
        2,
    );
    let mut echo = connect(server.addr("echo"));
    echo.write_all(b"last words").unwrap();
    let mut back = [0; 10];
    echo.read_exact(&mut back).unwrap();
    let mut room = join_room(server.addr("broadcast"), 2);

    server.signal(libc::SIGINT);
    server.wait_for_log("a second SIGINT or SIGTERM stops at once");
    assert!(read_to_eof(&mut echo).is_empty(), "an orderly EOF");
    for member in &mut room {
        let mut rest = Vec::new();
        member.read_to_end(&mut rest).expect("an orderly EOF");
        assert!(rest.is_empty());
    }
    // Bounded by the helper's timeout (20 s), well under the 60 s either timeout would take.
    let status = server.wait();
    assert!(status.success(), "exit status {status:?}");
}

/// In-process, the same for a client that keeps its side open after the server's FIN: it
/// acknowledged everything, so the stop does not wait for its FIN.
#[test]
fn graceful_stop_does_not_wait_for_an_idle_peer_fin() {
    let server = start(|c| {
        c.drain_timeout = Duration::from_secs(60);
        c.close_timeout = Duration::from_secs(60);
    });
    let mut client = connect_echo(&server);
    client.write_all(b"last words").unwrap();
    let mut back = [0; 10];
    client.read_exact(&mut back).unwrap();

    server.handle().shutdown();
    assert!(read_to_eof(&mut client).is_empty());
    // Without the release this would take the full minute: fail at the helper's timeout.
    let (tx, rx) = std::sync::mpsc::channel();
    // (The receiver may be gone after a timeout: nothing to report then.)
    thread::spawn(move || {
        let _ = tx.send(server.join());
    });
    let totals = rx
        .recv_timeout(TIMEOUT)
        .expect("the stop waited for an idle client")
        .unwrap();
    assert_eq!(totals.closed, 1);
    assert_eq!(totals.bytes_out, 10);
    drop(client);
}

/// A client that is owed bytes it never reads cannot hold a graceful stop beyond its timeout.
#[test]
fn drain_timeout_ends_a_stop_that_a_client_holds_up() {
    let server = start(|c| {
        c.drain_timeout = Duration::from_millis(300);
        c.close_timeout = Duration::from_secs(60);
    });
    let mut client = connect_echo(&server);
    write_until_stalled(
        &mut client,
        &pattern(0, 32 << 20),
        Duration::from_millis(300),
    );
    server.handle().shutdown();
    // We never read what we are owed; the server gives up after the drain timeout and exits.
    let totals = server.join().unwrap();
    assert_eq!(totals.closed, 1);
    drop(client);
}

/// A FIN-WAIT connection whose peer never sends its FIN is released after the close timeout,
/// while the server keeps running.
#[test]
fn fin_wait_without_peer_fin_is_released_after_close_timeout() {
    let server = start(|c| {
        c.idle_timeout = Some(Duration::from_millis(200));
        c.close_timeout = Duration::from_millis(200);
    });
    let mut client = connect_echo(&server);
    // Idle: the server closes it (FIN-WAIT-1, FIN-WAIT-2) and we read its FIN...
    assert!(read_to_eof(&mut client).is_empty());
    // ...we never send ours, and the server gives up on us after the close timeout: it
    // releases the socket with a reset, which ends our side too.
    assert!(
        wait_hangup(&client, TIMEOUT),
        "the FIN-WAIT connection was never released"
    );
    assert!(client.write_all(b"are you there?").is_err());
    drop(server);
}
