//! TCP echo: every byte back, in order. The seeds' `io.Copy(conn, conn)`.
//!
//! There is no framing and no state: a read of N bytes produces N bytes of output. What makes the
//! service correct under load lives elsewhere — the output queue keeps what the socket will not
//! take, and the connection stops reading while that queue is full, so a client that writes
//! without reading slows itself down instead of growing the server's memory.

use super::Output;

/// Hand the bytes just read back to the client.
pub fn on_input(data: &[u8], out: &mut impl Output) {
    out.send(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_echo_returns_every_byte_in_order_whatever_the_chunking() {
        let input: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        for chunk in [1, 7, 1000, 10_000] {
            let mut out = Vec::new();
            for piece in input.chunks(chunk) {
                on_input(piece, &mut out);
            }
            assert_eq!(out, input);
        }
    }
}
