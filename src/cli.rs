//! The command line: `resound serve ...`. Parsing is clap's (it gives `--help`, clear errors and
//! exit status 2 on a usage error for free); turning the arguments into a [`Config`] and the
//! value parsers (addresses, sizes, seconds) are here.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config};

#[derive(Parser, Debug)]
#[command(
    name = "resound",
    version,
    about = "A single-threaded mio event loop serving TCP echo, TCP broadcast, file transfer \
             and UDP echo.",
    long_about = None,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the servers (all of them on their default addresses if none is named).
    Serve(Box<ServeArgs>),
    /// Send a file to a files service; exits 0 only when the server confirms every byte.
    Send(SendArgs),
    /// Load-test a server (resound or any other speaking the same protocol).
    Bench(crate::bench::BenchArgs),
}

#[derive(Args, Debug)]
#[command(after_help = "\
What goes on the wire:
  FILE         '<SIZE> <NAME>\\n', wait for 'ok', the content (sendfile(2)), half-close, then
               read 'done <BYTES> <ALG>:<HEX>' (ALG is blake3 or sha256, the server's choice).
  - --name N   standard input, whose size is unknown: 'N\\n' (a name ended by a newline), wait
               for 'ok', the content until EOF, half-close, then the same 'done' line, which must
               match every byte read and their hash. N may not start with digits and a space.
  --seed       the seeds' protocol: the bare name, wait for 'ok', the content, close. Their
               receiver never confirms: a clean close after 'ok' exits 0 and says that nothing
               was confirmed (a receiver that does send 'done' is checked).
A FILE must be a regular file (a FIFO or device is refused at once: send it with
'resound send - --name N < PATH'); one that changes size or mtime while being sent fails, and the
connection is reset so that nothing is stored. A refusal from the server mid-stream (a size
limit, a full disk) stops the transfer as soon as it arrives.

Exit status: 0 when the 'done' line matches what was sent (or, with --seed, the receiver closed
cleanly); 1 on any failure (the message says what happened); 2 on a usage error.
Progress (rate, ETA) is drawn on stderr when stderr is a terminal; the result line goes to
stdout.")]
pub struct SendArgs {
    /// The file to send, or - for standard input (then --name is required).
    pub file: PathBuf,

    /// The files service's address.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, default_value = "127.0.0.1:7002")]
    pub to: SocketAddr,

    /// Store the file under this name instead of its own base name.
    #[arg(long, value_name = "NAME", required_if_eq("file", "-"))]
    pub name: Option<String>,

    /// How long to wait to connect, for each reply of the server, and for it to take more of
    /// the file (0 = forever).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30")]
    pub timeout: Duration,

    /// No progress line, even on a terminal.
    #[arg(long, short)]
    pub quiet: bool,

    /// Speak the seeds' bare-name protocol (for their Go receiver, which never confirms).
    #[arg(long)]
    pub seed: bool,

    /// Copy the file through a buffer with read/write instead of sendfile(2) (for a filesystem
    /// where sendfile misbehaves, or to compare the two).
    #[arg(long)]
    pub no_sendfile: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "\
With none of --echo/--broadcast/--files/--udp given, every service starts on its default
address: echo 127.0.0.1:7000 (tcp), broadcast 127.0.0.1:7001 (tcp), files 127.0.0.1:7002 (tcp),
udp 127.0.0.1:7000. Name any of them and only those start.
Port 0 picks a free port. Each bound socket is printed on stdout as
`listening <service> <tcp|udp> <ip:port>`.

SIGINT/SIGTERM stop accepting and drain every connection (at most --drain-timeout);
a second signal stops at once. Logging: RUST_LOG=debug shows every connection's phases.")]
pub struct ServeArgs {
    /// TCP echo: every byte back, in order.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub echo: Option<SocketAddr>,

    /// TCP broadcast: every line a client sends goes to every other client.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub broadcast: Option<SocketAddr>,

    /// File transfer: receive files into --dir (send them with `resound send`).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub files: Option<SocketAddr>,

    /// UDP echo: every datagram back to its sender.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub udp: Option<SocketAddr>,

    /// Where received files are stored (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./received")]
    pub dir: PathBuf,

    /// Largest file accepted; a larger declared size is refused at once.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "4g")]
    pub max_file_size: usize,

    /// A file transfer's header must arrive within SECS of the connect.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs, default_value = "10")]
    pub header_timeout: Duration,

    /// A file transfer that receives nothing for SECS is abandoned (nothing is stored).
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs, default_value = "60")]
    pub transfer_timeout: Duration,

    /// The hash in a file transfer's final line, `done <BYTES> <ALG>:<HEX>`: blake3 is several
    /// times cheaper per byte (check a stored file with `b3sum`); sha256 matches `sha256sum`.
    #[arg(long, value_name = "ALG", value_enum, default_value_t = crate::digest::Algorithm::Blake3)]
    pub hash: crate::digest::Algorithm,

    /// Clients served at once; past it a client gets "error: too many connections" and is
    /// closed [default: the descriptor limit minus 32]
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub max_conns: Option<usize>,

    /// Close a connection with no byte in or out for SECS (0 = never).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "0")]
    pub idle_timeout: Duration,

    /// TCP keepalive: probe a connection silent for SECS to 2xSECS (spread per connection), and
    /// drop it after four unanswered probes SECS/4 apart, so vanished peers are found even
    /// without --idle-timeout (0 = off).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "60")]
    pub keepalive: Duration,

    /// Bytes queued for one client before the server stops reading from it, until the queue
    /// drains below half (k/m/g suffixes: 1k = 1024).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "1m")]
    pub max_buffer: usize,

    /// Longest broadcast line, without its newline; a client sending a longer one gets
    /// "error: line too long" and is closed.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64k")]
    pub max_line: usize,

    /// A broadcast client with more than BYTES of lines queued for it is disconnected at once.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "16m")]
    pub bcast_hard_limit: usize,

    /// A broadcast client with more than BYTES queued for --bcast-soft-time is disconnected.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "4m")]
    pub bcast_soft_limit: usize,

    /// How long a broadcast client may stay over --bcast-soft-limit.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "10")]
    pub bcast_soft_time: Duration,

    /// On SIGINT/SIGTERM, how long to let connections finish before closing them.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "5")]
    pub drain_timeout: Duration,

    /// Log a stats line every SECS (0 = never); totals are always logged on exit.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "0")]
    pub stats_interval: Duration,
}

impl ServeArgs {
    /// The server configuration these arguments describe.
    pub fn into_config(self) -> Config {
        let mut config = Config::default();
        let named = [self.echo, self.broadcast, self.files, self.udp];
        if named.iter().all(Option::is_none) {
            let default = |addr: &str| Some(addr.parse().expect("valid default"));
            config.echo = default(config::DEFAULT_ECHO);
            config.broadcast = default(config::DEFAULT_BROADCAST);
            config.files = default(config::DEFAULT_FILES);
            config.udp = default(config::DEFAULT_UDP);
        } else {
            config.echo = self.echo;
            config.broadcast = self.broadcast;
            config.files = self.files;
            config.udp = self.udp;
        }
        config.dir = self.dir;
        config.max_file_size = self.max_file_size as u64;
        config.header_timeout = self.header_timeout;
        config.transfer_timeout = self.transfer_timeout;
        config.hash = self.hash;
        if let Some(n) = self.max_conns {
            config.max_conns = n;
        }
        config.idle_timeout = nonzero(self.idle_timeout);
        config.keepalive = nonzero(self.keepalive);
        config.max_buffer = self.max_buffer;
        config.max_line = self.max_line;
        config.bcast_hard_limit = self.bcast_hard_limit;
        config.bcast_soft_limit = self.bcast_soft_limit;
        config.bcast_soft_time = self.bcast_soft_time;
        config.drain_timeout = self.drain_timeout;
        config.stats_interval = nonzero(self.stats_interval);
        config.handle_signals = true;
        config
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// `IP:PORT` (v4 or `[v6]:port`), or `localhost:PORT`.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let bad = || format!("'{s}' is not an address: expected IP:PORT, e.g. 127.0.0.1:7000");
    if !s.starts_with("localhost:") {
        return Err(bad());
    }
    s.to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

/// A positive count: `100`, `10k`, `1m` (decimal: 1k = 1000).
pub fn parse_count(s: &str) -> Result<usize, String> {
    let n = parse_scaled(s, 1000)?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// A positive byte size: `65536`, `64k`, `64KiB`, `1m`, `1MiB`, `1g` (binary: 1k = 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let n = parse_scaled(s, 1024)?;
    if n == 0 {
        return Err("must be at least 1 byte".into());
    }
    Ok(n)
}

/// A number with an optional k/m/g suffix (also kb/kib, mb/mib, gb/gib, any case), scaled by
/// powers of `unit`.
fn parse_scaled(s: &str, unit: usize) -> Result<usize, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a number (e.g. 1000, 64k, 1m)"))?;
    let scale = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => unit,
        "m" | "mb" | "mib" => unit * unit,
        "g" | "gb" | "gib" => unit * unit * unit,
        _ => return Err(format!("'{s}': unknown suffix '{suffix}' (use k, m or g)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Seconds, more than zero.
pub fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    let d = parse_secs(s)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

/// Seconds, possibly fractional: `5`, `0.5`. Zero is allowed (callers read it as "off").
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds (e.g. 5 or 0.5)"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("'{s}': seconds must be a finite number >= 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sizes_use_binary_suffixes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("1MB"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1t").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn test_counts_use_decimal_suffixes() {
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("1m"), Ok(1_000_000));
        assert!(parse_count("0").is_err());
    }

    #[test]
    fn test_seconds_may_be_fractional_but_not_negative() {
        assert_eq!(parse_secs("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_secs("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_secs("0"), Ok(Duration::ZERO));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("inf").is_err());
        assert!(parse_secs("NaN").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn test_addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:0"),
            Ok("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(parse_addr("[::1]:7000"), Ok("[::1]:7000".parse().unwrap()));
        assert!(parse_addr("localhost:7000").unwrap().ip().is_loopback());
        assert!(parse_addr("127.0.0.1").is_err());
        assert!(parse_addr("127.0.0.1:99999").is_err());
        assert!(parse_addr("example.com:80").is_err());
    }

    #[test]
    fn test_no_service_named_means_all_defaults() {
        let cli = Cli::try_parse_from(["resound", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let config = args.into_config();
        assert_eq!(config.echo, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(config.broadcast, Some("127.0.0.1:7001".parse().unwrap()));
        assert_eq!(config.files, Some("127.0.0.1:7002".parse().unwrap()));
        assert_eq!(config.udp, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(config.dir, PathBuf::from("./received"));
        assert_eq!(config.max_buffer, 1 << 20);
        assert_eq!(config.max_line, 64 << 10);
        assert_eq!(config.idle_timeout, None);
    }

    #[test]
    fn test_naming_one_service_starts_only_that_one() {
        let cli = Cli::try_parse_from(["resound", "serve", "--udp", "127.0.0.1:0"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let config = args.into_config();
        assert_eq!(config.echo, None);
        assert_eq!(config.broadcast, None);
        assert_eq!(config.udp, Some("127.0.0.1:0".parse().unwrap()));
    }

    #[test]
    fn test_clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
