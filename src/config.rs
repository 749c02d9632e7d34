//! Everything `resound serve` can be told, with its defaults. The CLI (`cli.rs`) builds one of
//! these; tests build one directly and bind to port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::digest;
use crate::service::files::Limits;

/// Echo's address when no service is named on the command line.
pub const DEFAULT_ECHO: &str = "127.0.0.1:7000";
/// Broadcast's address when no service is named on the command line.
pub const DEFAULT_BROADCAST: &str = "127.0.0.1:7001";
/// The files service's address when no service is named on the command line.
pub const DEFAULT_FILES: &str = "127.0.0.1:7002";
/// UDP echo's address when no service is named on the command line (the same port as TCP
/// echo: TCP and UDP ports are separate name spaces).
pub const DEFAULT_UDP: &str = "127.0.0.1:7000";

/// How many file descriptors `--max-conns` leaves for everything that is not a client: the
/// listeners, the UDP socket, epoll, the signal pipe, logging, the spare descriptor kept for
/// EMFILE. Redis reserves 32 the same way.
pub const FD_RESERVE: usize = 32;

/// A descriptor limit under this is worth a warning at start-up (1024 is a common default).
const LOW_FD_LIMIT: usize = 4096;

/// The whole configuration of a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// TCP echo listener (`--echo`).
    pub echo: Option<SocketAddr>,
    /// TCP line broadcast listener (`--broadcast`).
    pub broadcast: Option<SocketAddr>,
    /// File receiving listener (`--files`).
    pub files: Option<SocketAddr>,
    /// UDP echo socket (`--udp`).
    pub udp: Option<SocketAddr>,
    /// Where received files are stored (`--dir`); created if missing.
    pub dir: PathBuf,
    /// Largest file accepted (`--max-file-size`).
    pub max_file_size: u64,
    /// A file transfer's header must arrive within this time (`--header-timeout`).
    pub header_timeout: Duration,
    /// A file transfer with no byte for this long is abandoned (`--transfer-timeout`).
    pub transfer_timeout: Duration,
    /// The hash the files service reports in its `done` line (`--hash`): BLAKE3 is several
    /// times cheaper per byte, SHA-256 matches `sha256sum`.
    pub hash: digest::Algorithm,
    /// Clients served at once (`--max-conns`); past it a client is told so and closed.
    pub max_conns: usize,
    /// Close a connection with no byte in or out for this long (`--idle-timeout`; None = never).
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive idle time on accepted sockets (`--keepalive`; None = off).
    pub keepalive: Option<Duration>,
    /// Bytes queued for one peer before the server stops reading from it (`--max-buffer`).
    pub max_buffer: usize,
    /// Longest broadcast line accepted, without its `\n` (`--max-line`).
    pub max_line: usize,
    /// A broadcast client whose pending output passes this is disconnected at once
    /// (`--bcast-hard-limit`).
    pub bcast_hard_limit: usize,
    /// ... and one whose pending output stays over this for `bcast_soft_time` is disconnected
    /// too (`--bcast-soft-limit`, `--bcast-soft-time`): Redis's pub/sub output limits.
    pub bcast_soft_limit: usize,
    /// How long a broadcast client may stay over `bcast_soft_limit`.
    pub bcast_soft_time: Duration,
    /// What all clients together may pin in queued output and buffered input
    /// (`--max-memory`); over it, the client pinning the most is disconnected.
    pub max_memory: usize,
    /// How long a graceful shutdown waits for connections to finish (`--drain-timeout`).
    pub drain_timeout: Duration,
    /// Print a stats line this often (`--stats-interval`; None = never).
    pub stats_interval: Option<Duration>,
    /// How long a connection may stay in a closing phase the server started (FIN-WAIT-1/2,
    /// CLOSING) before it is released anyway: a peer that never reads what it is owed, or never
    /// sends its FIN, must not hold a descriptor forever.
    pub close_timeout: Duration,
    /// SO_REUSEPORT on every socket (`--reuseport`): several processes serve the same
    /// addresses, and the kernel spreads clients over them (by a hash of the addresses, not
    /// by load).
    pub reuseport: bool,
    /// Bridge the broadcast room through this Redis pub/sub channel (`--bridge`).
    pub bridge: Option<BridgeUrl>,
    /// Bytes the bridge may owe Redis before it drops batches (`--bridge-max-queue`): a slow
    /// or stalled Redis costs completeness on the other nodes, never memory here.
    pub bridge_max_queue: usize,
    /// Install SIGINT/SIGTERM handlers (the binary does; in-process tests use the [`Handle`]).
    ///
    /// [`Handle`]: crate::Handle
    pub handle_signals: bool,
}

impl Default for Config {
    /// No service at all, default limits. Name at least one service before binding.
    fn default() -> Config {
        Config {
            echo: None,
            broadcast: None,
            files: None,
            udp: None,
            dir: PathBuf::from("received"),
            max_file_size: 4 << 30,
            header_timeout: Duration::from_secs(10),
            transfer_timeout: Duration::from_secs(60),
            hash: digest::Algorithm::Blake3,
            max_conns: default_max_conns(),
            idle_timeout: None,
            keepalive: Some(Duration::from_secs(60)),
            max_buffer: 1024 * 1024,
            max_line: 64 * 1024,
            bcast_hard_limit: 16 * 1024 * 1024,
            bcast_soft_limit: 4 * 1024 * 1024,
            bcast_soft_time: Duration::from_secs(10),
            max_memory: crate::budget::default_limit(),
            drain_timeout: Duration::from_secs(5),
            stats_interval: None,
            close_timeout: Duration::from_secs(5),
            reuseport: false,
            bridge: None,
            bridge_max_queue: 16 * 1024 * 1024,
            handle_signals: false,
        }
    }
}

impl Config {
    /// What an operator should know about the limits against the system's: a `--max-conns`
    /// above what the descriptor limit can hold (the kernel caps it: past that, clients are
    /// shed with `error: too many connections`), a low descriptor limit, a listen backlog
    /// capped by `net.core.somaxconn`. Returns the warnings.
    pub fn check_against_system(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let fds = crate::procfs::fd_limit();
        let most = default_max_conns();
        if self.max_conns > most {
            warnings.push(format!(
                "--max-conns {} is more than the descriptor limit of {fds} allows: at most \
                 {most} clients will be served (raise it with `ulimit -n`)",
                self.max_conns
            ));
        }
        if fds < LOW_FD_LIMIT {
            warnings.push(format!(
                "the descriptor limit is {fds}: at most {most} clients \
                 (raise it with `ulimit -n`)"
            ));
        }
        if let Some(cap) = crate::procfs::somaxconn()
            && cap < crate::listener::BACKLOG as usize
        {
            warnings.push(format!(
                "listen backlog {} capped to {cap} by net.core.somaxconn: a connect burst \
                 larger than that is refused (raise it with `sysctl net.core.somaxconn`)",
                crate::listener::BACKLOG
            ));
        }
        warnings
    }

    /// The effective limits, for the start-up line.
    pub fn limits_summary(&self) -> String {
        let secs = |d: Option<Duration>| d.map_or("off".to_string(), |d| format!("{d:?}"));
        format!(
            "max conns {} (fd limit {} allows {}), listen backlog {} (somaxconn {}), max memory {} MiB, \
             max buffer {} KiB, idle timeout {}, keepalive {}, drain timeout {:?}",
            self.max_conns,
            crate::procfs::fd_limit(),
            default_max_conns(),
            crate::listener::BACKLOG,
            crate::procfs::somaxconn().map_or("?".to_string(), |n| n.to_string()),
            self.max_memory >> 20,
            self.max_buffer >> 10,
            secs(self.idle_timeout),
            secs(self.keepalive),
            self.drain_timeout
        )
    }

    /// The limits the files service holds each transfer to.
    pub fn file_limits(&self) -> Limits {
        Limits {
            max_file_size: self.max_file_size,
            header_timeout: self.header_timeout,
            transfer_timeout: self.transfer_timeout,
            hash: self.hash,
        }
    }
}

/// The descriptor limit of this process (RLIMIT_NOFILE's soft value, read by
/// [`procfs::fd_limit`](crate::procfs::fd_limit)) minus [`FD_RESERVE`]: the clients it can hold.
pub fn default_max_conns() -> usize {
    crate::procfs::fd_limit().saturating_sub(FD_RESERVE).max(1)
}

/// Where the bridge meets the other nodes: `redis://HOST[:PORT]/CHANNEL` (`--bridge`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeUrl {
    /// Redis's address, resolved once, at start-up: a name is never looked up again, because
    /// the system resolver blocks and the loop must not (restart to follow a moved Redis).
    pub addr: SocketAddr,
    /// The pub/sub channel every node of the room uses.
    pub channel: String,
}

impl BridgeUrl {
    /// Parse `redis://HOST[:PORT]/CHANNEL` (port 6379 by default). For clap's `value_parser`.
    pub fn parse(s: &str) -> Result<BridgeUrl, String> {
        let form = "expected redis://HOST[:PORT]/CHANNEL, e.g. redis://127.0.0.1:6379/room";
        if s.starts_with("rediss://") {
            return Err(format!("'{s}': TLS (rediss://) is not supported; {form}"));
        }
        let rest = s
            .strip_prefix("redis://")
            .ok_or_else(|| format!("'{s}': {form}"))?;
        let (host_port, channel) = rest
            .split_once('/')
            .ok_or_else(|| format!("'{s}': no channel; {form}"))?;
        if host_port.contains('@') {
            return Err(format!(
                "'{s}': credentials are not supported (run Redis without AUTH on a trusted network)"
            ));
        }
        if channel.is_empty() || channel.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "'{s}': the channel must be a non-empty name without spaces; {form}"
            ));
        }
        // A bare host gets Redis's port; `[v6]` alone too.
        let has_port = match host_port.rsplit_once(':') {
            Some((host, _)) => !host.is_empty() && (!host.contains(':') || host.ends_with(']')),
            None => false,
        };
        let with_port = if has_port {
            host_port.to_string()
        } else {
            format!("{host_port}:6379")
        };
        let addr = crate::units::parse_connect_addr(&with_port)?;
        Ok(BridgeUrl {
            addr,
            channel: channel.to_string(),
        })
    }
}

impl std::fmt::Display for BridgeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}/{}", self.addr, self.channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_bridge_urls() {
        let u = BridgeUrl::parse("redis://127.0.0.1:7379/room").unwrap();
        assert_eq!(u.addr, "127.0.0.1:7379".parse().unwrap());
        assert_eq!(u.channel, "room");
        assert_eq!(u.to_string(), "redis://127.0.0.1:7379/room");
        let u = BridgeUrl::parse("redis://127.0.0.1/a:b").unwrap();
        assert_eq!(
            u.addr,
            "127.0.0.1:6379".parse().unwrap(),
            "Redis's port by default"
        );
        assert_eq!(u.channel, "a:b");
        let u = BridgeUrl::parse("redis://[::1]/room").unwrap();
        assert_eq!(u.addr, "[::1]:6379".parse().unwrap());
        for bad in [
            "127.0.0.1:6379/room",
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:6379/",
            "redis://127.0.0.1:6379/two words",
            "redis://:secret@127.0.0.1:6379/room",
            "rediss://127.0.0.1:6379/room",
            "redis://127.0.0.1:99999/room",
        ] {
            assert!(BridgeUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
