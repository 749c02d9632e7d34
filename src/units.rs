//! The values the command line takes: addresses, durations, byte sizes and counts, parsed the same
//! way by `serve`, `send` and `bench`.
//!
//! Every parser here is a `fn(&str) -> Result<T, String>` for clap's `value_parser`: on `Err`
//! clap prints `invalid value 'X' for '--flag <UNIT>': <our message>` and exits with status 2, so
//! a message says *why* and gives an example, and the flag is named for free.
//!
//! **No value may break the program later.** A duration is added to `Instant::now()` somewhere
//! (a deadline, a timer), and `Instant + Duration` panics on overflow; a size may be doubled or
//! summed. So every duration is at most [`MAX_DURATION`] and every size at most [`MAX_SIZE`]:
//! refused here, at the command line, rather than found on the first client's connect. NaN,
//! infinities and negative numbers are refused too; `0` is accepted where the flag documents it
//! as "off" ([`parse_duration`]) and refused where it would mean nothing ([`parse_positive_duration`]).
//!
//! **Forms.**
//! * Addresses: `IP:PORT`, `[v6]:PORT`, `HOST:PORT` (resolved once, at start-up), and `PORT` or
//!   `:PORT` — which mean two different things, as in Go and nc: a *listening* flag
//!   ([`parse_listen_addr`]: `serve --echo 7000`) binds every IPv4 interface, `0.0.0.0:7000`,
//!   like Go's `net.Listen("tcp", ":7000")` and `nc -l 7000`; a *connecting* flag
//!   ([`parse_connect_addr`]: `send --to :7002`, `bench -t 7000`) goes to this machine,
//!   `127.0.0.1`, like Go's `net.Dial("tcp", ":7002")`.
//! * Durations: a number of seconds (`5`, `0.5`), or a number with a unit: `1500ms`, `2.5s`,
//!   `2m`, `1h`.
//! * Sizes: bytes with binary suffixes, fractions allowed: `65536`, `64k`, `64KiB`, `1.5m`,
//!   `4g`, `1t` (1k = 1024).
//! * Counts: decimal suffixes: `100`, `10k`, `1.5m` (1k = 1000).
//!
//! Why not humantime for durations: it takes no bare numbers (every existing script passes
//! `--idle-timeout 30`), no fractions (`0.5s`), and reads `m` as minutes but `M` as months; the
//! four units we need and the range check are a dozen lines here.
//!
//! Pure, apart from resolving a `HOST:PORT` with the system's resolver.
//!
//! One helper goes the other way, from a value to the words a user reads: [`strip_os_error`],
//! an I/O error as `send` (and `bench`, which has its own copy for now) prints it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// The longest duration any flag accepts: 10 years (of 365 days). Far beyond any timeout anyone
/// means, and far below where `Instant + Duration` could overflow (`Instant` counts from boot in
/// an `i64` of seconds).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The largest byte size any flag accepts: 1 PiB (2^50). No buffer, line or file on one machine
/// comes near it, and sums of a few of them cannot overflow a `u64`.
pub const MAX_SIZE: u64 = 1 << 50;

/// The largest count any flag accepts (connections, rates, windows): 2^40, about 10^12.
pub const MAX_COUNT: u64 = 1 << 40;

/// Linux's largest TCP keepalive idle time (`TCP_KEEPIDLE`, `MAX_TCP_KEEPIDLE` in the kernel):
/// the socket option refuses more with `EINVAL`.
pub const MAX_KEEPALIVE: Duration = Duration::from_secs(32_767);

// --- addresses ---

/// What an address argument names, before any resolution.
#[derive(Debug, PartialEq, Eq)]
pub enum HostPort {
    /// A literal `IP:PORT` or `[v6]:PORT`.
    Addr(SocketAddr),
    /// `PORT` or `:PORT` alone: the host depends on whether we listen or connect.
    Port(u16),
    /// `HOST:PORT`, to be resolved.
    Name(String, u16),
}

/// Split an address argument into its parts without resolving anything.
pub fn split_host_port(s: &str) -> Result<HostPort, String> {
    let t = s.trim();
    let expected = || {
        format!(
            "'{s}' is not an address: expected IP:PORT, [v6]:PORT, HOST:PORT or PORT \
             (e.g. 127.0.0.1:7000, localhost:7000, :7000)"
        )
    };
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(HostPort::Addr(addr));
    }
    let port = |p: &str| -> Result<u16, String> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(expected());
        }
        p.parse()
            .map_err(|_| format!("'{s}': port {p} is not in 0..65535"))
    };
    let bare = t.strip_prefix(':').unwrap_or(t);
    if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        return port(bare).map(HostPort::Port);
    }
    let Some((host, p)) = t.rsplit_once(':') else {
        return Err(expected());
    };
    let port = port(p)?;
    if host.contains(':') || host.starts_with('[') {
        // `::1:7000` is ambiguous, `[::1]:7000` is not; a bracketed host that did not parse
        // above is not an IPv6 address.
        return Err(format!(
            "'{s}': an IPv6 address goes in brackets, e.g. [::1]:{port}"
        ));
    }
    if host.is_empty() {
        return Err(expected());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("'{s}': '{host}' is not an IPv4 address"));
    }
    let valid = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
    if !host.bytes().all(valid) {
        return Err(expected());
    }
    Ok(HostPort::Name(host.to_string(), port))
}

/// An address to listen on: `PORT` and `:PORT` mean every IPv4 interface (`0.0.0.0:PORT`).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    resolve(s, Ipv4Addr::UNSPECIFIED.into())
}

/// An address to connect to: `PORT` and `:PORT` mean this machine (`127.0.0.1:PORT`).
pub fn parse_connect_addr(s: &str) -> Result<SocketAddr, String> {
    resolve(s, Ipv4Addr::LOCALHOST.into())
}

fn resolve(s: &str, port_only_host: IpAddr) -> Result<SocketAddr, String> {
    match split_host_port(s)? {
        HostPort::Addr(addr) => Ok(addr),
        HostPort::Port(port) => Ok(SocketAddr::new(port_only_host, port)),
        HostPort::Name(host, port) => {
            let addrs: Vec<SocketAddr> = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve '{host}': {e}"))?
                .collect();
            // IPv4 first: `localhost` often resolves to ::1 before 127.0.0.1, and the defaults
            // (and most servers) listen on IPv4 only.
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .copied()
                .ok_or_else(|| format!("'{host}' has no address"))
        }
    }
}

// --- numbers ---

/// Split `s` into a number and the letters after it: `1.5m` -> (1.5, "m"). The number is Rust's
/// float syntax (so `1e19` is read, and refused by the caller's range check with a clear reason).
fn number_and_suffix(s: &str) -> Result<(f64, String), String> {
    let t = s.trim();
    // After the last character that is not a letter (by its byte length: it may be any
    // Unicode character, and slicing inside one would panic).
    let split = t
        .char_indices()
        .rev()
        .find(|&(_, c)| !c.is_ascii_alphabetic())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let (num, suffix) = t.split_at(split);
    let x: f64 = num.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if x.is_nan() || x.is_infinite() {
        return Err(format!("'{s}' is not a finite number"));
    }
    if x < 0.0 {
        return Err(format!("'{s}' is negative"));
    }
    Ok((x, suffix.to_string()))
}

// --- durations ---

/// A duration: seconds (`5`, `0.5`) or with a unit (`1500ms`, `2s`, `2m`, `1h`), at most
/// [`MAX_DURATION`]. `0` is accepted: flags where it means "off" say so.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (x, unit) = number_and_suffix(s)
        .map_err(|e| format!("{e}: expected a duration such as 30, 0.5, 1500ms, 2m or 1h"))?;
    let unit_ns: f64 = match unit.as_str() {
        "" | "s" => 1e9,
        "ms" => 1e6,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    let ns = x * unit_ns;
    if ns > MAX_DURATION.as_nanos() as f64 {
        return Err(format!(
            "'{s}' is longer than the longest duration allowed, {} s (10 years)",
            MAX_DURATION.as_secs()
        ));
    }
    let rounded = ns.round();
    if x > 0.0 && rounded < 1.0 {
        return Err(format!("'{s}' is shorter than a nanosecond"));
    }
    // In range (checked above), so the cast neither saturates nor wraps.
    Ok(Duration::from_nanos(rounded as u64))
}

/// A duration more than zero (see [`parse_duration`]).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

/// A TCP keepalive idle time: `0` (off), or 1 s to [`MAX_KEEPALIVE`] (Linux's limit: the kernel
/// counts keepalive in whole seconds and refuses more).
pub fn parse_keepalive(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !d.is_zero() && d < Duration::from_secs(1) {
        return Err(format!(
            "'{s}' is less than 1 s, the shortest keepalive the kernel takes (0 = off)"
        ));
    }
    if d > MAX_KEEPALIVE {
        return Err(format!(
            "'{s}' is more than {} s, the longest keepalive Linux takes (0 = off)",
            MAX_KEEPALIVE.as_secs()
        ));
    }
    Ok(d)
}

// --- sizes and counts ---

/// A byte size more than zero: `65536`, `64k`, `64KiB`, `1.5m`, `1MB`, `4g`, `1t` (binary:
/// 1k = 1024), at most [`MAX_SIZE`].
pub fn parse_size(s: &str) -> Result<usize, String> {
    let n = parse_size_or_zero(s)?;
    if n == 0 {
        return Err("must be at least 1 byte".into());
    }
    Ok(n)
}

/// A byte size that may be 0 (see [`parse_size`]).
pub fn parse_size_or_zero(s: &str) -> Result<usize, String> {
    let example = "e.g. 65536, 64k, 1.5m, 4g";
    let (x, suffix) = number_and_suffix(s).map_err(|e| format!("{e} ({example})"))?;
    let scale: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "'{s}': unknown suffix '{suffix}' (use k, m, g or t; {example})"
            ));
        }
    };
    let bytes = (x * scale as f64).round();
    if bytes > MAX_SIZE as f64 {
        return Err(format!(
            "'{s}' is more than the largest size allowed, 2^50 bytes (1 PiB)"
        ));
    }
    usize::try_from(bytes as u64).map_err(|_| format!("'{s}' does not fit in memory"))
}

/// A count more than zero: `100`, `10k`, `1.5m`, `2g` (decimal: 1k = 1000), at most
/// [`MAX_COUNT`].
pub fn parse_count(s: &str) -> Result<usize, String> {
    let example = "e.g. 100, 10k, 1.5m";
    let (x, suffix) = number_and_suffix(s).map_err(|e| format!("{e} ({example})"))?;
    let scale: f64 = match suffix.to_ascii_lowercase().as_str() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        _ => {
            return Err(format!(
                "'{s}': unknown suffix '{suffix}' (use k, m or g; {example})"
            ));
        }
    };
    let n = (x * scale).round();
    if n > MAX_COUNT as f64 {
        return Err(format!(
            "'{s}' is more than the largest count allowed, 2^40"
        ));
    }
    if n < 1.0 {
        return Err("must be at least 1".into());
    }
    usize::try_from(n as u64).map_err(|_| format!("'{s}' is too large for this machine"))
}

// --- messages ---

/// An I/O error's reason without Rust's ` (os error N)` suffix: `Connection refused`, as people
/// read it in a message that already says what failed.
pub fn strip_os_error(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn test_os_errors_lose_their_number_and_nothing_else() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(strip_os_error(&refused), "Connection refused");
        let ours = io::Error::other("bad (os error 5) in the middle");
        assert_eq!(strip_os_error(&ours), "bad (os error 5) in the middle");
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn test_durations_take_seconds_and_units() {
        assert_eq!(parse_duration("5"), Ok(secs(5)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(secs(5400)));
        assert_eq!(parse_duration(" 3s "), Ok(secs(3)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0.1"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("87600h"), Ok(MAX_DURATION));
    }

    #[test]
    fn test_durations_beyond_the_maximum_or_not_numbers_are_refused() {
        for bad in [
            "1e19",
            "87601h",
            "315360001",
            "-1",
            "-0.5s",
            "inf",
            "NaN",
            "infs",
            "soon",
            "5 s",
            "5d",
            "5M",
            "",
            "s",
            "1e-12",
            "0x10",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("1e19").unwrap_err().contains("10 years"));
        assert!(parse_duration("5d").unwrap_err().contains("ms, s, m or h"));
        assert_eq!(
            parse_positive_duration("0"),
            Err("must be more than 0".into())
        );
    }

    #[test]
    fn test_keepalive_is_off_or_one_second_to_the_kernels_maximum() {
        assert_eq!(parse_keepalive("0"), Ok(Duration::ZERO));
        assert_eq!(parse_keepalive("1"), Ok(secs(1)));
        assert_eq!(parse_keepalive("32767"), Ok(MAX_KEEPALIVE));
        assert_eq!(parse_keepalive("2h"), Ok(secs(7200)));
        assert!(
            parse_keepalive("0.001")
                .unwrap_err()
                .contains("less than 1 s")
        );
        assert!(parse_keepalive("999ms").is_err());
        assert!(parse_keepalive("32768").unwrap_err().contains("32767"));
        assert!(parse_keepalive("1e19").is_err());
    }

    #[test]
    fn test_sizes_use_binary_suffixes_and_fractions() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("1MB"), Ok(1 << 20));
        assert_eq!(parse_size("1.5m"), Ok(3 << 19));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert_eq!(parse_size("1024t"), Ok(1 << 50));
        assert_eq!(parse_size_or_zero("0"), Ok(0));
        for bad in [
            "0",
            "-1",
            "1025t",
            "1p",
            "k",
            "99999999999999999999",
            "1e30",
            "NaN",
            "inf",
            "",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn test_counts_use_decimal_suffixes() {
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("1m"), Ok(1_000_000));
        assert_eq!(parse_count("1.5k"), Ok(1500));
        for bad in ["0", "0.4", "-3", "1t", "1e13", "lots"] {
            assert!(parse_count(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn test_port_alone_listens_everywhere_but_connects_here() {
        let any: IpAddr = Ipv4Addr::UNSPECIFIED.into();
        let here: IpAddr = Ipv4Addr::LOCALHOST.into();
        assert_eq!(parse_listen_addr("7000"), Ok(SocketAddr::new(any, 7000)));
        assert_eq!(parse_listen_addr(":7000"), Ok(SocketAddr::new(any, 7000)));
        assert_eq!(parse_connect_addr("7000"), Ok(SocketAddr::new(here, 7000)));
        assert_eq!(parse_connect_addr(":0"), Ok(SocketAddr::new(here, 0)));
    }

    #[test]
    fn test_literal_and_named_addresses() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(parse_listen_addr("127.0.0.1:0"), Ok(addr("127.0.0.1:0")));
        assert_eq!(parse_connect_addr("[::1]:7000"), Ok(addr("[::1]:7000")));
        let local = parse_connect_addr("localhost:7000").unwrap();
        assert_eq!(local, addr("127.0.0.1:7000"), "IPv4 first");
        assert_eq!(
            split_host_port("my-host.example:80"),
            Ok(HostPort::Name("my-host.example".into(), 80))
        );
    }

    #[test]
    fn test_bad_addresses_say_what_is_expected() {
        for (bad, says) in [
            ("127.0.0.1", "IP:PORT"),
            ("nonsense", "IP:PORT"),
            ("127.0.0.1:99999", "99999"),
            ("70000", "70000"),
            ("::1:7000", "brackets"),
            ("[nonsense]:7000", "brackets"),
            ("1.2.3.256:80", "not an IPv4 address"),
            ("host name:80", "IP:PORT"),
            (":", "IP:PORT"),
            ("host:", "IP:PORT"),
            ("", "IP:PORT"),
        ] {
            let e = split_host_port(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    /// Values across the whole range, as a user (or a script gone wrong) might type them.
    fn any_value() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            Just("0".to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|x| x.to_string()),
            any::<f64>().prop_map(|x| format!("{x:e}")),
            (0u32..400).prop_map(|e| format!("1e{e}")),
            (0u32..400).prop_map(|e| format!("1e-{e}")),
            Just("18446744073709551616".to_string()), // 2^64
            Just("1e30".to_string()),
            Just("NaN".to_string()),
            Just("-inf".to_string()),
            Just("0.0000000001".to_string()),
        ];
        let suffix = prop_oneof![
            Just(""),
            Just("ms"),
            Just("s"),
            Just("m"),
            Just("h"),
            Just("k"),
            Just("KiB"),
            Just("g"),
            Just("t"),
            Just("x"),
        ];
        prop_oneof![
            (number, suffix).prop_map(|(n, s)| format!("{n}{s}")),
            ".{0,24}",
        ]
    }

    proptest! {
        /// No value makes a parser panic, and whatever one accepts is within its maximum.
        #[test]
        fn prop_every_parser_refuses_or_stays_in_range(s in any_value()) {
            for parse in [parse_duration, parse_positive_duration] {
                if let Ok(d) = parse(&s) {
                    prop_assert!(d <= MAX_DURATION, "{s:?} -> {d:?}");
                }
            }
            if let Ok(d) = parse_keepalive(&s) {
                prop_assert!(d.is_zero() || (secs(1) <= d && d <= MAX_KEEPALIVE), "{s:?}");
            }
            for parse in [parse_size, parse_size_or_zero] {
                if let Ok(n) = parse(&s) {
                    prop_assert!(n as u64 <= MAX_SIZE, "{s:?} -> {n}");
                }
            }
            if let Ok(n) = parse_count(&s) {
                prop_assert!(n >= 1 && n as u64 <= MAX_COUNT, "{s:?} -> {n}");
            }
            // Addresses without resolving: a property test must not query DNS.
            let _ = split_host_port(&s);
        }

        /// Whatever is accepted survives being added to now, as every deadline does.
        #[test]
        fn prop_accepted_durations_can_be_deadlines(s in any_value()) {
            if let Ok(d) = parse_duration(&s) {
                let now = std::time::Instant::now();
                prop_assert!(now.checked_add(d).and_then(|t| t.checked_add(d)).is_some());
            }
        }
    }
}
