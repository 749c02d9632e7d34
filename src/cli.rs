//! The command line: `resound serve ...`. Parsing is clap's (it gives `--help`, clear errors and
//! exit status 2 on a usage error for free); turning the arguments into a [`Config`] is here, the
//! value parsers (addresses, durations, sizes, counts) are in [`units`](crate::units).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, BridgeUrl, Config};
use crate::units::{
    parse_connect_addr, parse_count, parse_duration, parse_keepalive, parse_listen_addr,
    parse_positive_duration, parse_size,
};

#[derive(Parser, Debug)]
#[command(
    name = "resound",
    version,
    about = "A single-threaded mio event loop serving TCP echo, TCP broadcast, file transfer \
             and UDP echo.",
    long_about = None,
    arg_required_else_help = true
)]
/// The whole command line.
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

#[derive(Subcommand, Debug)]
/// The subcommands.
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
  FILE         '<SIZE> <NAME>\\n', wait for 'ok', the content (see --sendfile), half-close, then
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
/// `resound send`'s arguments.
pub struct SendArgs {
    /// The file to send, or - for standard input (then --name is required).
    pub file: PathBuf,

    /// The files service's address.
    #[arg(long, value_name = "ADDR", value_parser = parse_connect_addr, default_value = "127.0.0.1:7002")]
    pub to: SocketAddr,

    /// Store the file under this name instead of its own base name.
    #[arg(long, value_name = "NAME", required_if_eq("file", "-"))]
    pub name: Option<String>,

    /// How long to wait to connect, for each reply of the server, and for it to take more of
    /// the file (0 = forever).
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "30")]
    pub timeout: Duration,

    /// No progress line, even on a terminal.
    #[arg(long, short)]
    pub quiet: bool,

    /// Speak the seeds' bare-name protocol (for their Go receiver, which never confirms).
    #[arg(long)]
    pub seed: bool,

    /// How the file's bytes reach the socket: `on` = sendfile(2) from the page cache, `off` =
    /// read into a buffer and write, `auto` = sendfile unless the destination is a loopback
    /// address. (Over loopback the receiving process copies straight out of the sender's
    /// pages, which costs it more than copying a plain buffer: measured end to end there,
    /// 0.705 s per GiB with `off` against 0.869 s with `on`. Over a network sendfile saves the
    /// sender a copy.)
    #[arg(long, value_name = "MODE", value_enum, default_value = "auto")]
    pub sendfile: SendfileMode,
}

/// `resound send --sendfile MODE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SendfileMode {
    /// sendfile(2) unless the destination is a loopback address.
    Auto,
    /// Always sendfile(2) for a regular file.
    On,
    /// Always read into a buffer and write.
    Off,
}

impl SendfileMode {
    /// Use sendfile(2) for a file sent to `to`?
    pub fn use_sendfile(self, to: SocketAddr) -> bool {
        match self {
            SendfileMode::Auto => !to.ip().is_loopback(),
            SendfileMode::On => true,
            SendfileMode::Off => false,
        }
    }
}

#[derive(Args, Debug)]
#[command(after_help = "\
With none of --echo/--broadcast/--files/--udp given, every service starts on its default
address: echo 127.0.0.1:7000 (tcp), broadcast 127.0.0.1:7001 (tcp), files 127.0.0.1:7002 (tcp),
udp 127.0.0.1:7000. Name any of them and only those start.
Port 0 picks a free port. Each bound socket is printed on stdout as
`listening <service> <tcp|udp> <ip:port>`.

Addresses: IP:PORT, [v6]:PORT, HOST:PORT, or PORT / :PORT for 0.0.0.0:PORT (every IPv4
interface). Durations: seconds (30, 0.5) or with a unit (1500ms, 2m, 1h), at most 10 years.
Sizes: 64k, 1.5m, 4g, 1t (1k = 1024).

Signals: SIGINT, SIGTERM and SIGQUIT stop accepting and drain: a connection with nothing
owed either way is closed at once, the others finish what they were doing (at most
--drain-timeout); a second signal stops at once. SIGUSR1 logs the stats line now. SIGHUP and
SIGUSR2 are logged and ignored. With --bridge, the drain also waits (within the same
timeout) for Redis to confirm every batch published.
Logging: RUST_LOG=debug shows every connection's phases, RUST_LOG=trace what echo returns.")]
/// `resound serve`'s arguments.
pub struct ServeArgs {
    /// TCP echo: every byte back, in order.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub echo: Option<SocketAddr>,

    /// TCP broadcast: every line a client sends goes to every other client.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub broadcast: Option<SocketAddr>,

    /// File transfer: receive files into --dir (send them with `resound send`).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub files: Option<SocketAddr>,

    /// UDP echo: every datagram back to its sender.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub udp: Option<SocketAddr>,

    /// Where received files are stored (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./received")]
    pub dir: PathBuf,

    /// Largest file accepted; a larger declared size is refused at once.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "4g")]
    pub max_file_size: usize,

    /// A file transfer's header must arrive within SECS of the connect.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_duration, default_value = "10")]
    pub header_timeout: Duration,

    /// A file transfer that receives nothing for SECS is abandoned (nothing is stored).
    #[arg(long, value_name = "SECS", value_parser = parse_positive_duration, default_value = "60")]
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
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "0")]
    pub idle_timeout: Duration,

    /// TCP keepalive: probe a connection silent for SECS to 2xSECS (spread per connection), and
    /// drop it after four unanswered probes SECS/4 apart, so vanished peers are found even
    /// without --idle-timeout (0 = off).
    #[arg(long, value_name = "SECS", value_parser = parse_keepalive, default_value = "60")]
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
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "10")]
    pub bcast_soft_time: Duration,

    /// What all clients together may pin in queued output and buffered input; over it, the
    /// client pinning the most is disconnected [default: 1g, or a quarter of physical memory
    /// if less]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_memory: Option<usize>,

    /// How long a connection the server is closing may wait for the peer to read what it is
    /// owed and to send its FIN (FIN-WAIT, CLOSING) before it is reset.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_duration, default_value = "5")]
    pub close_timeout: Duration,

    /// On SIGINT/SIGTERM, how long to let connections finish before closing them.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "5")]
    pub drain_timeout: Duration,

    /// Log a stats line every SECS (0 = never); totals are always logged on exit.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "0")]
    pub stats_interval: Duration,

    /// Share every port with other `serve --reuseport` processes (SO_REUSEPORT): run one per
    /// core; the kernel spreads new clients over them by a hash of their addresses.
    #[arg(long)]
    pub reuseport: bool,

    /// Span the broadcast room over every process bridged to one Redis pub/sub channel. URL:
    /// redis://HOST:PORT/CHANNEL; PORT 6379 if left out; HOST resolved once, at start-up.
    #[arg(long, value_name = "URL", value_parser = BridgeUrl::parse)]
    pub bridge: Option<BridgeUrl>,

    /// Bytes the bridge may owe Redis; past it, batches are dropped (and counted) rather than
    /// queued.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "16m")]
    pub bridge_max_queue: usize,
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
        if let Some(bytes) = self.max_memory {
            config.max_memory = bytes;
        }
        config.drain_timeout = self.drain_timeout;
        config.close_timeout = self.close_timeout;
        config.stats_interval = nonzero(self.stats_interval);
        config.reuseport = self.reuseport;
        config.bridge = self.bridge;
        config.bridge_max_queue = self.bridge_max_queue;
        config.handle_signals = true;
        config
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Every duration flag refuses a value that would overflow a deadline later, with clap's
    /// usage error (exit status 2) naming the flag.
    #[test]
    fn test_huge_durations_are_usage_errors_naming_the_flag() {
        let cases: &[&[&str]] = &[
            &["serve", "--idle-timeout"],
            &["serve", "--header-timeout"],
            &["serve", "--transfer-timeout"],
            &["serve", "--keepalive"],
            &["serve", "--bcast-soft-time"],
            &["serve", "--drain-timeout"],
            &["serve", "--stats-interval"],
            &["send", "f", "--timeout"],
            &["bench", "echo", "-t", "1", "--duration"],
            &["bench", "echo", "-t", "1", "--warmup"],
            &["bench", "echo", "-t", "1", "--drain"],
            &["bench", "echo", "-t", "1", "--setup-timeout"],
        ];
        for args in cases {
            let flag = args.last().unwrap();
            for value in ["1e19", "NaN", "inf", "1e400", "87601h"] {
                let argv = [&["resound"], *args, &[value]].concat();
                let e = Cli::try_parse_from(&argv).unwrap_err();
                assert_eq!(e.exit_code(), 2, "{argv:?}");
                assert!(e.to_string().contains(flag), "{argv:?}: {e}");
            }
        }
        let e = Cli::try_parse_from(["resound", "serve", "--keepalive", "0.5"]).unwrap_err();
        assert!(e.to_string().contains("--keepalive"), "{e}");
    }

    #[test]
    fn test_a_port_alone_listens_everywhere_and_connects_here() {
        let cli = Cli::try_parse_from(["resound", "serve", "--echo", "7000", "--udp", ":7000"]);
        let Command::Serve(args) = cli.unwrap().command else {
            panic!("serve")
        };
        assert_eq!(args.echo, Some("0.0.0.0:7000".parse().unwrap()));
        assert_eq!(args.udp, Some("0.0.0.0:7000".parse().unwrap()));
        let cli = Cli::try_parse_from(["resound", "send", "f", "--to", ":7002", "--timeout", "2m"]);
        let Command::Send(args) = cli.unwrap().command else {
            panic!("send")
        };
        assert_eq!(args.to, "127.0.0.1:7002".parse().unwrap());
        assert_eq!(args.timeout, Duration::from_secs(120));
    }

    #[test]
    fn test_clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
