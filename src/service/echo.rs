//! Echo: every byte back, in order. The seeds' `io.Copy(conn, conn)` for TCP, and their
//! `ReadFromUDP` / `WriteToUDP` loop for UDP — the same service behind both transports.
//!
//! There is no framing and no state: input of N bytes produces a reply of the same N bytes.
//! What makes TCP echo correct under load lives elsewhere — the output queue keeps what the
//! socket will not take, and the connection stops reading while that queue is full
//! (`connection.rs`), so a client that writes without reading slows itself down instead of
//! growing the server's memory. For UDP the reply is one datagram to the sender, dropped if the
//! socket cannot take it (`udp.rs`).

use log::trace;

use super::{Action, Cx, Service};

/// The echo service. No state: a zero-sized type.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Service for Echo {
    fn on_input(&mut self, data: &[u8], cx: &mut Cx<'_>) {
        trace!("conn {} {} echo {}", cx.id, cx.peer, Preview(data));
        cx.act(Action::Reply(data));
    }
}

/// The first bytes of a buffer, escaped, for trace logs: what a learner comparing with the Go
/// server's `fmt.Println` wants to see, without flooding the log with a megabyte.
pub struct Preview<'a>(pub &'a [u8]);

impl std::fmt::Display for Preview<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 32;
        let head = &self.0[..self.0.len().min(SHOWN)];
        write!(f, "{} bytes \"{}\"", self.0.len(), head.escape_ascii())?;
        if self.0.len() > SHOWN {
            f.write_str("...")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Recorded;
    use crate::service::testing::{run, shared};
    use std::time::Instant;

    #[test]
    fn test_echo_replies_with_exactly_its_input_and_nothing_else() {
        let mut sh = shared(None);
        for input in [&b""[..], b"a", b"hello\n", &[0u8, 255, 10, 13]] {
            let got = run(&mut sh, Instant::now(), |cx| Echo.on_input(input, cx));
            assert_eq!(got, [Recorded::Reply(input.to_vec())]);
        }
    }

    #[test]
    fn test_echo_ignores_eof_and_timers() {
        let mut sh = shared(None);
        let got = run(&mut sh, Instant::now(), |cx| {
            Echo.on_eof(cx);
            Echo.on_timer(cx);
        });
        assert!(got.is_empty(), "the connection closes itself after the FIN");
    }

    #[test]
    fn test_preview_escapes_and_truncates() {
        assert_eq!(Preview(b"hi\n").to_string(), "3 bytes \"hi\\n\"");
        let long = [b'x'; 40];
        assert_eq!(
            Preview(&long).to_string(),
            format!("40 bytes \"{}\"...", "x".repeat(32))
        );
    }
}
