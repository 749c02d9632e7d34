//! Step 3 — UDP: an echo server, and a broadcast sender. They replace:
//!
//! ```go
//! pc, _ := net.ListenUDP("udp", &net.UDPAddr{Port: 7000})       // the echo server
//! for { n, from, _ := pc.ReadFromUDP(buf); pc.WriteToUDP(buf[:n], from) }
//!
//! c, _ := net.ListenUDP("udp4", nil)                              // the broadcast sender
//! c.WriteToUDP([]byte("hello"), &net.UDPAddr{IP: net.IPv4bcast, Port: 7000})
//! ```
//!
//! What changes: UDP has no connections, so there is no accept, no slab, no lifecycle: one
//! socket, one token. `recv_from` is drained until `WouldBlock` like any edge-triggered read. A
//! reply the socket cannot take now is dropped, not queued: the network may drop any datagram
//! anyway, and a queue would only add memory and delay. Go sets SO_BROADCAST on every UDP socket
//! for you; here the sender asks for it, or sending to a broadcast address fails with EACCES.
//!
//! ```text
//! cargo run --example 03_udp -- 7000                              # echo on 0.0.0.0:7000
//! cargo run --example 03_udp -- send 127.255.255.255:7000 hello   # loopback's broadcast address
//! ```
//!
//! Why the receiver binds 0.0.0.0 (every interface, what `7000` alone means): a broadcast
//! datagram is addressed to 127.255.255.255 (or 255.255.255.255, or a LAN's x.x.x.255), not to
//! 127.0.0.1. A socket bound to 127.0.0.1 only takes datagrams addressed to 127.0.0.1, so it
//! never sees a broadcast; a socket bound to 0.0.0.0 takes any destination address of the host.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

const SOCKET: Token = Token(0);
/// How long the sender listens for replies (the echo of its broadcast from every receiver).
const REPLY_WINDOW: Duration = Duration::from_secs(1);

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["send", to, ref msg @ ..] => match to.parse() {
            Ok(to) => send(to, msg.first().copied().unwrap_or("hello")),
            Err(_) => usage(),
        },
        [] => echo("127.0.0.1:0".parse().unwrap()),
        [addr] => match listen_addr(addr) {
            Some(addr) => echo(addr),
            None => usage(),
        },
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("03_udp: {e}"); // "Permission denied" without SO_BROADCAST, for one
        std::process::exit(1);
    }
    Ok(())
}

/// The echo server: every datagram back to where it came from.
fn echo(addr: SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut socket = UdpSocket::bind(addr)?;
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE)?; // never WRITABLE: nothing waits
    println!("listening udp udp {}", socket.local_addr()?);
    let mut events = Events::with_capacity(16);
    let mut buf = vec![0; 65_535]; // a datagram is read whole, or cut: make room for any
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => result?,
        }
        loop {
            let (n, from) = match socket.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break, // drained: next edge
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An ICMP error from an earlier reply (port unreachable, say) is reported once,
                // by the next call: note it and read on.
                Err(e) => {
                    println!("recv: {e}");
                    continue;
                }
            };
            println!("udp {from} {n} bytes");
            match socket.send_to(&buf[..n], from) {
                Ok(_) => {}
                // Full send buffer (WouldBlock) or any other failure: this reply is lost.
                Err(e) => println!("reply to {from} dropped: {e}"),
            }
        }
    }
}

/// The broadcast sender: one datagram to `to`, then print the replies for a second.
fn send(to: SocketAddr, msg: &str) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut socket = UdpSocket::bind("0.0.0.0:0".parse().unwrap())?; // any port: replies come here
    // Without it the kernel refuses any send to a broadcast address (EACCES): sending to every
    // host on a network must be asked for.
    socket.set_broadcast(true)?;
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE)?;
    println!("sending udp {}", socket.local_addr()?);
    // On a fresh socket the send buffer is empty; a WouldBlock here would just be an error.
    socket.send_to(msg.as_bytes(), to)?;
    let deadline = Instant::now() + REPLY_WINDOW;
    let mut events = Events::with_capacity(16);
    let mut buf = vec![0; 65_535];
    // Go would set a read deadline; an event loop passes a timeout to poll instead.
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match poll.poll(&mut events, Some(left)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => result?,
        }
        loop {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    println!("reply from {from}: {}", String::from_utf8_lossy(&buf[..n]))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// `PORT` or `:PORT` is 0.0.0.0:PORT, every interface: the form that hears broadcasts.
fn listen_addr(arg: &str) -> Option<SocketAddr> {
    match arg.strip_prefix(':').unwrap_or(arg).parse::<u16>() {
        Ok(port) => Some(SocketAddr::from(([0, 0, 0, 0], port))),
        Err(_) => arg.parse().ok(),
    }
}

fn usage() -> io::Result<()> {
    eprintln!("usage: 03_udp [PORT | :PORT | IP:PORT]    |    03_udp send IP:PORT [MESSAGE]");
    std::process::exit(2)
}

// Where resound does more:
// * src/udp.rs: the same echo, bounded to 64 datagrams per loop turn so that a UDP flood cannot
//   starve the TCP clients, with counters for what was received, sent and dropped;
// * src/listener.rs (bind_udp) and src/server.rs: the UDP socket as one more token in the loop;
// * src/bench/udp.rs: `resound bench udp --broadcast`, a load generator that sets SO_BROADCAST.
