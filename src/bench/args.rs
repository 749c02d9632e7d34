//! `resound bench MODE --target ADDR [flags]`: the command line, in tcpkali's vocabulary where it
//! has a word for the thing (`-c`, `-d`, `--warmup`, `--rate`, `--connect-rate`, `--json`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::{Mode, Plan};
use crate::units::{parse_connect_addr, parse_count, parse_duration, parse_size_or_zero};

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Modes and their defaults:
  echo       10 connections x 64 B messages, 1 in flight each (--pipeline), or --rate msgs/s
  broadcast  10 receivers + 1 sender (--senders), 64 B lines, --window 64 or --rate lines/s
  udp        10 sockets x 64 B datagrams, 1 in flight each, or --rate datagrams/s
  connect    50 connects in progress; each echoes a 1-byte probe, then closes (--size 0: none)
  idle       1000 connections, each confirmed by a 1-byte probe, held for --duration

Addresses: IP:PORT, [v6]:PORT, HOST:PORT, or PORT / :PORT for 127.0.0.1:PORT; several
targets (-t A,B) share the connections round robin. Counts take decimal suffixes (10k =
10 000), sizes binary ones (64k = 65 536), durations seconds or a unit (0.5, 1500ms, 2m).
Exit status: 0 = every payload intact and no error; 1 = errors (corrupt, lost, closed, ...),
nothing measured, or a setup that opened nothing (the message says why); 2 = usage error.")]
/// `resound bench`'s arguments (see `resound bench --help`).
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,

    /// The server, or several (A,B,...: connections, or UDP sockets, round robin).
    #[arg(
        short = 't',
        long,
        value_name = "ADDR[,ADDR...]",
        value_parser = parse_connect_addr,
        value_delimiter = ',',
        required = true
    )]
    pub target: Vec<SocketAddr>,

    /// Connections (echo, idle), sockets (udp), receivers (broadcast), or connects in progress
    /// at once (connect).
    #[arg(short = 'c', long, value_name = "N", value_parser = parse_count)]
    pub connections: Option<usize>,

    /// Measured time.
    #[arg(short = 'd', long, value_name = "SECS", value_parser = parse_duration, default_value = "5")]
    pub duration: Duration,

    /// Load before measuring [default: 0.5; idle: 0].
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// Message, datagram or line size in bytes (broadcast: newline included, at least 38);
    /// connect/idle: probe bytes echoed per connection (0 = none).
    #[arg(short = 's', long, value_name = "BYTES", value_parser = parse_size_or_zero)]
    pub size: Option<usize>,

    /// Closed loop: messages in flight per connection (echo, udp).
    #[arg(short = 'p', long, value_name = "K", value_parser = parse_count, default_value = "1")]
    pub pipeline: usize,

    /// Open loop: messages (echo, udp) or lines (broadcast) per second in total; latency is
    /// measured from each one's intended send time.
    #[arg(short = 'r', long, value_name = "R", value_parser = parse_count)]
    pub rate: Option<usize>,

    /// Open loop: a rate not reached (operations the generator could not send on time) is an
    /// error, exit status 1; without it, only a line of the report.
    #[arg(long)]
    pub strict_rate: bool,

    /// Connections opened per second (connect: cycles; other modes: during setup).
    #[arg(long, value_name = "R", value_parser = parse_count)]
    pub connect_rate: Option<usize>,

    /// Broadcast: sending connections (they also receive).
    #[arg(long, value_name = "N", value_parser = parse_count, default_value = "1")]
    pub senders: usize,

    /// Broadcast, closed loop: lines per sender not yet delivered to every receiver.
    #[arg(long, value_name = "N", value_parser = parse_count, default_value = "64")]
    pub window: usize,

    /// Load-generating threads, each its own event loop.
    #[arg(long, value_name = "N", value_parser = parse_count, default_value = "1")]
    pub threads: usize,

    /// Spread connections over source addresses 127.0.0.1..N [default: 1 per 28k
    /// connections; connect: 16].
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub src_ips: Option<usize>,

    /// UDP: set SO_BROADCAST, so --target may be a broadcast address (e.g. 127.255.255.255:PORT;
    /// the server must listen on 0.0.0.0:PORT to hear it).
    #[arg(long)]
    pub broadcast: bool,

    /// The server's process id: report its CPU time per operation and its memory, from /proc.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// The CPU the server runs on: report that CPU's busy share (softirq included).
    #[arg(long, value_name = "N")]
    pub cpu: Option<usize>,

    /// After the measured time, how long to wait for what is still in flight.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "2")]
    pub drain: Duration,

    /// How long opening the connections may take.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "30")]
    pub setup_timeout: Duration,

    /// Print the summary as one JSON object on one line.
    #[arg(long)]
    pub json: bool,

    /// No progress lines on stderr.
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// A tag carried into the report.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub label: String,
}

impl BenchArgs {
    /// The run these arguments describe (each mode's defaults for what is not given).
    pub fn into_plan(self) -> Plan {
        let first = self.target[0];
        let mut plan = Plan::new(self.mode, first);
        plan.targets = self.target;
        if let Some(c) = self.connections {
            plan.connections = c;
        }
        plan.duration = self.duration;
        if let Some(w) = self.warmup {
            plan.warmup = w;
        }
        if let Some(s) = self.size {
            plan.size = s;
        }
        plan.pipeline = self.pipeline;
        plan.rate = self.rate.map(|r| r as f64);
        plan.strict_rate = self.strict_rate;
        plan.connect_rate = self.connect_rate.map(|r| r as f64);
        plan.senders = self.senders;
        plan.window = self.window;
        plan.threads = self.threads;
        plan.src_ips = self.src_ips;
        plan.broadcast = self.broadcast;
        plan.pid = self.pid;
        plan.cpu = self.cpu;
        plan.drain = self.drain;
        plan.setup_timeout = self.setup_timeout;
        plan.quiet = self.quiet;
        // The progress lines and the JSON series show them; a quiet text run needs neither.
        plan.per_second_latency = !self.quiet || self.json;
        plan.label = self.label;
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn plan(args: &[&str]) -> Plan {
        let cli = Cli::try_parse_from([&["resound", "bench"], args].concat()).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("not a bench command")
        };
        args.into_plan()
    }

    #[test]
    fn test_each_mode_gets_its_defaults() {
        let p = plan(&["echo", "--target", "127.0.0.1:7000"]);
        assert_eq!(
            (p.mode, p.connections, p.size, p.pipeline),
            (Mode::Echo, 10, 64, 1)
        );
        assert_eq!(p.warmup, Duration::from_millis(500));
        let p = plan(&["idle", "-t", "127.0.0.1:7000"]);
        assert_eq!((p.connections, p.size, p.warmup), (1000, 1, Duration::ZERO));
        let p = plan(&["connect", "-t", "127.0.0.1:7000"]);
        assert_eq!((p.connections, p.size), (50, 1));
    }

    #[test]
    fn test_tcpkali_style_flags_with_suffixes() {
        let p = plan(&[
            "echo",
            "-t",
            "127.0.0.1:7000",
            "-c",
            "10k",
            "-d",
            "2.5",
            "--warmup",
            "0",
            "--size",
            "16k",
            "--rate",
            "1m",
            "--connect-rate",
            "5k",
            "--threads",
            "2",
            "--json",
            "--quiet",
        ]);
        assert_eq!(p.connections, 10_000);
        assert_eq!(p.duration, Duration::from_millis(2500));
        assert_eq!(p.warmup, Duration::ZERO);
        assert_eq!(p.size, 16 * 1024);
        assert_eq!(p.rate, Some(1e6));
        assert_eq!(p.connect_rate, Some(5000.0));
        assert_eq!(p.threads, 2);
        assert!(p.quiet);
    }

    #[test]
    fn test_several_targets_and_the_port_alone() {
        let p = plan(&["broadcast", "-t", "127.0.0.1:7001,7002", "--strict-rate"]);
        let want: Vec<SocketAddr> = vec![
            "127.0.0.1:7001".parse().unwrap(),
            "127.0.0.1:7002".parse().unwrap(),
        ];
        assert_eq!(p.targets, want);
        assert!(p.strict_rate);
        let p = plan(&["echo", "-t", ":7000", "-d", "1500ms", "--warmup", "1m"]);
        assert_eq!(
            p.targets,
            vec!["127.0.0.1:7000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(p.duration, Duration::from_millis(1500));
        assert_eq!(p.warmup, Duration::from_secs(60));
    }

    #[test]
    fn test_probe_size_may_be_zero_and_bad_values_are_usage_errors() {
        assert_eq!(
            plan(&["connect", "-t", "127.0.0.1:1", "--size", "0"]).size,
            0
        );
        for bad in [
            &["echo"][..],
            &["echo", "-t", "nowhere"],
            &["echo", "-t", "127.0.0.1:1", "-c", "0"],
            &["flood", "-t", "127.0.0.1:1"],
            &["echo", "-t", "127.0.0.1:1", "--rate", "fast"],
        ] {
            let r = Cli::try_parse_from([&["resound", "bench"], bad].concat());
            assert!(r.is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn test_plans_that_cannot_run_are_rejected_with_a_reason() {
        let mut p = plan(&["broadcast", "-t", "127.0.0.1:1", "--size", "20"]);
        assert!(p.validate().unwrap_err().contains("38"));
        p.size = 64;
        assert_eq!(p.validate(), Ok(()));
        let p = plan(&["udp", "-t", "127.0.0.1:1", "--size", "8"]);
        assert!(p.validate().is_err());
        let p = plan(&["echo", "-t", "127.0.0.1:1", "--size", "0"]);
        assert!(p.validate().is_err());
        // A library caller can build any plan: durations that could overflow a deadline are
        // refused here too.
        let mut p = plan(&["echo", "-t", "127.0.0.1:1"]);
        p.drain = Duration::MAX;
        assert!(p.validate().unwrap_err().contains("--drain"));
        p.drain = Duration::ZERO;
        p.pipeline = 1 << 30;
        assert!(p.validate().is_err());
    }
}
