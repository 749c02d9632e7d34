//! The command line's value parsers (sizes, counts, durations, addresses) on arbitrary strings:
//! a clear error or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resound::units::{
    parse_connect_addr, parse_count, parse_duration, parse_keepalive, parse_listen_addr,
    parse_positive_duration, parse_size, parse_size_or_zero,
};

fuzz_target!(|s: &str| {
    let _ = parse_size(s);
    let _ = parse_size_or_zero(s);
    let _ = parse_count(s);
    let _ = parse_duration(s);
    let _ = parse_positive_duration(s);
    let _ = parse_keepalive(s);
    // Only literal addresses: a fuzzer must not make DNS queries ("localhost:" is local).
    if !s.contains(':') || s.starts_with("localhost:") || s.parse::<std::net::SocketAddr>().is_ok() {
        let _ = parse_connect_addr(s);
        let _ = parse_listen_addr(s);
    }
});
