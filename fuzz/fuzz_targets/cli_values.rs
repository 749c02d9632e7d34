//! The command line's value parsers (sizes, counts, seconds, addresses) on arbitrary strings:
//! a clear error or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resound::cli::{parse_addr, parse_count, parse_secs, parse_size};

fuzz_target!(|s: &str| {
    let _ = parse_size(s);
    let _ = parse_count(s);
    let _ = parse_secs(s);
    // Only literal addresses: a fuzzer must not make DNS queries ("localhost:" is local).
    if !s.contains(':') || s.starts_with("localhost:") || s.parse::<std::net::SocketAddr>().is_ok() {
        let _ = parse_addr(s);
    }
});
