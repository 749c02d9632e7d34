//! UDP echo over loopback: each datagram back to its sender, whole.

mod util;

use std::net::UdpSocket;
use std::time::Duration;

use resound::ServiceKind;
use util::*;

/// Send `payload` and wait for its echo. UDP may lose a datagram even on loopback (a full
/// buffer), so a lost one is retried a few times.
fn round_trip(socket: &UdpSocket, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; 65536];
    for _ in 0..5 {
        socket.send(payload).expect("send");
        if let Ok(n) = socket.recv(&mut buf) {
            return buf[..n].to_vec();
        }
    }
    panic!("no echo for a {}-byte datagram", payload.len());
}

fn client(server: &resound::Running) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server.addr(ServiceKind::Udp)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket
}

/// Datagrams of 0, 1, 1472 (a full Ethernet payload) and 65507 bytes (the IPv4 maximum) come
/// back whole.
#[test]
fn datagrams_of_every_size_come_back_whole() {
    let server = start(|_| {});
    let socket = client(&server);
    for size in [0, 1, 1472, 65507] {
        let payload = pattern(size, size);
        assert_eq!(round_trip(&socket, &payload), payload, "size {size}");
    }
    let totals = server.stop().unwrap();
    assert!(totals.udp_out >= 4);
}

/// Each sender gets its own datagrams back, not someone else's.
#[test]
fn replies_go_to_their_own_sender() {
    let server = start(|_| {});
    let a = client(&server);
    let b = client(&server);
    for i in 0..100 {
        let ma = format!("a{i}");
        let mb = format!("b{i}");
        assert_eq!(round_trip(&a, ma.as_bytes()), ma.as_bytes());
        assert_eq!(round_trip(&b, mb.as_bytes()), mb.as_bytes());
    }
}
