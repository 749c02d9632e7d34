//! The results of a run: the summary printed on stdout, the one-line JSON object (`--json`),
//! the progress line printed on stderr every second, and the exit status.
//!
//! The JSON is written by hand: one object, its values numbers or short ASCII strings, which a
//! 40-line writer produces exactly (no serde needed). Figures that could not be measured (no
//! `--pid`, no `/proc`) are `null`, never a made-up 0.
//!
//! Pure: formatting only.

use std::fmt::Write as _;
use std::time::Duration;

use super::histogram::Percentiles;
use super::procstat::{Snapshot, Usage};
use super::tally::{Errors, Tally};
use super::{Mode, Plan};
use crate::procfs::ProcSample;

/// The server's figures (with `--pid`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerFigures {
    pub pid: u32,
    /// CPU seconds in the measured window.
    pub cpu_s: Option<f64>,
    /// CPU seconds per million operations (= microseconds per operation).
    pub cpu_s_per_million: Option<f64>,
    /// Resident memory before the first connection, at the end of the window, and its peak.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub hwm_kib: u64,
    /// (after - before) / connections open at the end, in bytes.
    pub rss_per_conn_b: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub mode: Mode,
    pub label: String,
    pub target: String,
    pub connections: usize,
    pub senders: usize,
    pub size: usize,
    pub pipeline: usize,
    pub rate: Option<f64>,
    pub threads: usize,
    pub window_s: f64,
    pub setup_s: f64,
    /// Operations completed in the window (idle: connections held at the end).
    pub ops: u64,
    pub throughput_per_sec: f64,
    /// Payload megabytes (10^6) per second, one way.
    pub mb_per_sec: f64,
    /// Broadcast: lines sent in the window; UDP: datagrams sent.
    pub sent: u64,
    pub latency: Percentiles,
    pub errors: Errors,
    pub udp_reordered: u64,
    pub udp_late: u64,
    /// Connections open at the end.
    pub open: u64,
    pub server: Option<ServerFigures>,
    pub usage: Usage,
    pub cpu: Option<usize>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: &Plan,
        tally: Tally,
        open: u64,
        window_s: f64,
        setup_s: f64,
        before: &Snapshot,
        end: &Snapshot,
        usage: Usage,
    ) -> Report {
        let (ops, throughput) = match plan.mode {
            // Idle's figure of merit is what it holds; its rate is how fast it got there.
            Mode::Idle => (open, open as f64 / setup_s.max(1e-9)),
            _ => (tally.ops, tally.ops as f64 / window_s),
        };
        let per_million =
            |cpu: f64| (ops > 0 && plan.mode != Mode::Idle).then(|| cpu / (ops as f64 / 1e6));
        let server = plan.pid.map(|pid| {
            let b = before.server.unwrap_or_default();
            let e: ProcSample = end.server.unwrap_or_default();
            ServerFigures {
                pid,
                cpu_s: usage.server_cpu_s,
                cpu_s_per_million: usage.server_cpu_s.and_then(per_million),
                rss_before_kib: b.rss_kib,
                rss_after_kib: e.rss_kib,
                hwm_kib: e.hwm_kib,
                rss_per_conn_b: (open > 0 && before.server.is_some() && end.server.is_some())
                    .then(|| (e.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / open as f64),
            }
        });
        Report {
            mode: plan.mode,
            label: plan.label.clone(),
            target: plan.target.to_string(),
            connections: plan.connections,
            senders: if plan.mode == Mode::Broadcast {
                plan.senders
            } else {
                0
            },
            size: plan.size,
            pipeline: plan.pipeline,
            rate: plan.rate,
            threads: plan.threads,
            window_s,
            setup_s,
            ops,
            throughput_per_sec: throughput,
            mb_per_sec: tally.bytes as f64 / window_s / 1e6,
            sent: tally.sent,
            latency: tally.latency.percentiles(),
            errors: tally.errors,
            udp_reordered: tally.udp_reordered,
            udp_late: tally.udp_late,
            open,
            server,
            usage,
            cpu: plan.cpu,
        }
    }

    /// 0 if every payload arrived intact and nothing failed; 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.errors.total() == 0 { 0 } else { 1 }
    }

    /// The human summary (several lines, each ending in a newline).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let m = self.mode;
        let _ = write!(s, "resound bench {} -> {}", m.name(), self.target);
        if !self.label.is_empty() {
            let _ = write!(s, "  [{}]", self.label);
        }
        let _ = write!(s, "  connections={}", self.connections);
        if m == Mode::Broadcast {
            let _ = write!(s, " senders={}", self.senders);
        }
        let _ = write!(s, " size={}", self.size);
        if matches!(m, Mode::Echo | Mode::Udp) && self.rate.is_none() {
            let _ = write!(s, " pipeline={}", self.pipeline);
        }
        if let Some(r) = self.rate {
            let _ = write!(s, " rate={r}/s (open loop)");
        }
        let _ = writeln!(
            s,
            " threads={}  (window {:.2} s, setup {:.2} s)",
            self.threads, self.window_s, self.setup_s
        );
        if m == Mode::Idle {
            let _ = writeln!(
                s,
                "  held {} connections for {:.2} s (opened at {:.0}/s)",
                self.open, self.window_s, self.throughput_per_sec
            );
        } else {
            let _ = write!(
                s,
                "  throughput: {:.0} {}/s ({} in {:.2} s)",
                self.throughput_per_sec,
                m.op_name(),
                self.ops,
                self.window_s
            );
            if matches!(m, Mode::Echo | Mode::Udp | Mode::Broadcast) {
                let _ = write!(s, ", {:.1} MB/s", self.mb_per_sec);
            }
            let _ = writeln!(s);
        }
        if m == Mode::Broadcast {
            let _ = writeln!(
                s,
                "  lines sent: {} ({:.0}/s)",
                self.sent,
                self.sent as f64 / self.window_s
            );
        }
        let l = &self.latency;
        let what = match m {
            Mode::Echo | Mode::Udp => "round trip",
            Mode::Broadcast => "fan-out",
            Mode::Connect | Mode::Idle => "connect",
        };
        let _ = writeln!(
            s,
            "  {what} latency (µs): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.1}  (n={})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
        );
        let _ = write!(s, "  errors: {}", self.errors.total());
        let nonzero: Vec<String> = self
            .errors
            .kinds()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if !nonzero.is_empty() {
            let _ = write!(s, " ({})", nonzero.join(", "));
        }
        let _ = writeln!(s);
        if m == Mode::Udp {
            let _ = writeln!(
                s,
                "  udp: {} sent, {} came back out of order, {} late or duplicated (not errors)",
                self.sent, self.udp_reordered, self.udp_late
            );
        }
        if let Some(sv) = &self.server {
            let _ = write!(s, "  server pid {}:", sv.pid);
            match sv.cpu_s {
                Some(c) => {
                    let _ = write!(s, " cpu {c:.2} s ({:.1} %)", 100.0 * c / self.window_s);
                }
                None => {
                    let _ = write!(s, " cpu unknown (cannot read /proc/{})", sv.pid);
                }
            }
            if let Some(pm) = sv.cpu_s_per_million {
                let _ = write!(
                    s,
                    ", {pm:.3} cpu-s per million {} ({pm:.3} µs each)",
                    m.op_name()
                );
            }
            let _ = writeln!(s);
            let _ = write!(
                s,
                "  server rss: {} -> {} KiB ({:+} KiB), peak {} KiB",
                sv.rss_before_kib,
                sv.rss_after_kib,
                sv.rss_after_kib as i64 - sv.rss_before_kib as i64,
                sv.hwm_kib
            );
            if let Some(b) = sv.rss_per_conn_b.filter(|_| m != Mode::Udp) {
                let _ = write!(s, ", {b:.0} B per open connection");
            }
            let _ = writeln!(s);
        }
        let u = &self.usage;
        let _ = write!(s, " ");
        if let (Some(cpu), Some(b)) = (self.cpu, u.cpu_busy_pct) {
            let _ = write!(s, " cpu{cpu} busy {b:.1} % (incl. softirq);");
        }
        let _ = write!(s, " loader cpu {:.1} %", u.loader_cpu_pct);
        if let (Some(o), Some(ou)) = (u.other_cpu_pct, u.other_user_pct) {
            let _ = write!(s, "; other processes {o:.1} % (user {ou:.1} %)");
            // Quiet, both are about 0 (softirq work for our own traffic is charged to the
            // server or to us, or is a few percent at most).
            if o > 25.0 || ou > 10.0 {
                let _ = write!(s, "  ** machine not quiet: figures disturbed **");
            }
        }
        let _ = writeln!(s);
        s
    }

    /// One JSON object on one line (no trailing newline).
    pub fn json(&self) -> String {
        let l = &self.latency;
        let mut latency = Json::new();
        latency
            .uint("p50", l.p50)
            .uint("p90", l.p90)
            .uint("p99", l.p99)
            .uint("p999", l.p999)
            .uint("max", l.max)
            .num("mean", Some(l.mean))
            .uint("count", l.count);
        let mut kinds = Json::new();
        for (k, n) in self.errors.kinds() {
            kinds.uint(k, n);
        }
        let sv = self.server.unwrap_or_default();
        let has = self.server.is_some();
        let u = &self.usage;
        let mut j = Json::new();
        j.str("mode", self.mode.name())
            .str("label", &self.label)
            .str("target", &self.target)
            .uint("connections", self.connections as u64)
            .uint("senders", self.senders as u64)
            .uint("size", self.size as u64)
            .uint("pipeline", self.pipeline as u64)
            .num("rate", self.rate)
            .uint("threads", self.threads as u64)
            .num("duration_s", Some(self.window_s))
            .num("setup_s", Some(self.setup_s))
            .uint("ops", self.ops)
            .num("throughput_per_sec", Some(self.throughput_per_sec))
            .num("mb_per_sec", Some(self.mb_per_sec))
            .uint("sent", self.sent)
            .obj("latency_us", &latency)
            .uint("errors", self.errors.total())
            .obj("errors_by_kind", &kinds)
            .uint("udp_reordered", self.udp_reordered)
            .uint("udp_late", self.udp_late)
            .uint("open", self.open)
            .num("server_pid", has.then_some(sv.pid as f64))
            .num("server_cpu_s", sv.cpu_s)
            .num("server_cpu_s_per_million", sv.cpu_s_per_million)
            .num(
                "server_rss_before_kib",
                has.then_some(sv.rss_before_kib as f64),
            )
            .num(
                "server_rss_after_kib",
                has.then_some(sv.rss_after_kib as f64),
            )
            .num("server_hwm_kib", has.then_some(sv.hwm_kib as f64))
            .num("server_rss_per_conn_b", sv.rss_per_conn_b)
            .num("cpu_busy_pct", u.cpu_busy_pct)
            .num(
                "cpu_busy_s_per_million",
                u.cpu_busy_s
                    .filter(|_| self.ops > 0 && self.mode != Mode::Idle)
                    .map(|b| b / (self.ops as f64 / 1e6)),
            )
            .num("loader_cpu_pct", Some(u.loader_cpu_pct))
            .num("other_cpu_pct", u.other_cpu_pct)
            .num("other_user_pct", u.other_user_pct);
        j.finish()
    }
}

/// The progress line: `[  3.0 s] 123456 messages/s  p99 87 µs  errors 0`.
pub fn progress_line(elapsed: Duration, rate: f64, ops: &str, p99_us: u64, errors: u64) -> String {
    format!(
        "[{:5.1} s] {:>9.0} {ops}/s  p99 {p99_us} µs  errors {errors}",
        elapsed.as_secs_f64(),
        rate
    )
}

/// A minimal writer for one JSON object.
pub struct Json {
    out: String,
}

impl Default for Json {
    fn default() -> Self {
        Self::new()
    }
}

impl Json {
    pub fn new() -> Json {
        Json {
            out: String::from("{"),
        }
    }

    fn key(&mut self, k: &str) -> &mut Json {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        push_string(&mut self.out, k);
        self.out.push(':');
        self
    }

    pub fn str(&mut self, k: &str, v: &str) -> &mut Json {
        self.key(k);
        push_string(&mut self.out, v);
        self
    }

    pub fn uint(&mut self, k: &str, v: u64) -> &mut Json {
        self.key(k);
        let _ = write!(self.out, "{v}");
        self
    }

    /// A number, or `null` if unknown or not finite (JSON has no NaN).
    pub fn num(&mut self, k: &str, v: Option<f64>) -> &mut Json {
        self.key(k);
        match v {
            Some(x) if x.is_finite() => {
                // Integers print without a fraction; others with up to 4 decimals.
                if x.fract() == 0.0 && x.abs() < 1e15 {
                    let _ = write!(self.out, "{x:.0}");
                } else {
                    let _ = write!(self.out, "{}", (x * 1e4).round() / 1e4);
                }
            }
            _ => self.out.push_str("null"),
        }
        self
    }

    pub fn obj(&mut self, k: &str, v: &Json) -> &mut Json {
        self.key(k);
        self.out.push_str(&v.out);
        self.out.push('}');
        self
    }

    pub fn finish(&self) -> String {
        format!("{}}}", self.out)
    }
}

fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::histogram::Latency;

    fn sample_report(mode: Mode) -> Report {
        let mut plan = Plan::new(mode, "127.0.0.1:7000".parse().unwrap());
        plan.pid = Some(42);
        plan.label = "a \"quoted\" label".into();
        let mut tally = Tally {
            ops: 2_000_000,
            bytes: 128_000_000,
            latency: Latency::new(),
            ..Tally::default()
        };
        tally.latency.record(Duration::from_micros(100));
        let server = |cpu_s, rss_kib| ProcSample {
            cpu_s,
            user_s: 0.0,
            rss_kib,
            hwm_kib: 3000,
        };
        let before = Snapshot {
            server: Some(server(1.0, 2000)),
            ..Snapshot::default()
        };
        let end = Snapshot {
            server: Some(server(2.0, 2200)),
            ..Snapshot::default()
        };
        let usage = Usage {
            server_cpu_s: Some(0.9),
            loader_cpu_pct: 99.5,
            ..Usage::default()
        };
        Report::new(&plan, tally, 100, 2.0, 0.1, &before, &end, usage)
    }

    #[test]
    fn test_figures_derived_from_the_tally() {
        let r = sample_report(Mode::Echo);
        assert_eq!(r.throughput_per_sec, 1_000_000.0);
        assert_eq!(r.mb_per_sec, 64.0);
        let sv = r.server.unwrap();
        // 0.9 s of server CPU for 2 M messages: 0.45 µs each.
        assert!((sv.cpu_s_per_million.unwrap() - 0.45).abs() < 1e-12);
        assert_eq!(sv.rss_per_conn_b, Some(200.0 * 1024.0 / 100.0));
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn test_idle_reports_what_it_holds() {
        let r = sample_report(Mode::Idle);
        assert_eq!(r.ops, 100);
        assert_eq!(r.server.unwrap().cpu_s_per_million, None);
        assert!(r.summary().contains("held 100 connections"));
    }

    #[test]
    fn test_any_error_makes_the_exit_status_non_zero() {
        let mut r = sample_report(Mode::Echo);
        r.errors.lost = 1;
        assert_eq!(r.exit_code(), 1);
        assert!(r.summary().contains("errors: 1 (lost 1)"));
    }

    #[test]
    fn test_json_is_one_line_with_the_required_fields() {
        let j = sample_report(Mode::Echo).json();
        assert!(!j.contains('\n'));
        assert!(j.starts_with("{\"mode\":\"echo\",\"label\":\"a \\\"quoted\\\" label\""));
        for field in [
            "\"throughput_per_sec\":1000000,",
            "\"latency_us\":{\"p50\":100,\"p90\":100,\"p99\":100,\"p999\":100,\"max\":100,",
            "\"errors\":0,",
            "\"errors_by_kind\":{\"connect\":0,",
            "\"server_cpu_s_per_million\":0.45,",
            "\"cpu_busy_pct\":null,",
        ] {
            assert!(j.contains(field), "{field} missing in {j}");
        }
        assert!(j.ends_with('}'));
        assert_eq!(j.matches('{').count(), j.matches('}').count());
    }

    #[test]
    fn test_json_numbers_and_strings() {
        let mut j = Json::new();
        j.num("a", Some(f64::NAN))
            .num("b", Some(1.23456789))
            .num("c", Some(3.0))
            .str("d", "x\ny\\");
        assert_eq!(
            j.finish(),
            r#"{"a":null,"b":1.2346,"c":3,"d":"x\u000ay\\"}"#
        );
    }

    #[test]
    fn test_progress_line() {
        assert_eq!(
            progress_line(Duration::from_millis(3050), 1234.4, "messages", 87, 2),
            "[  3.0 s]      1234 messages/s  p99 87 µs  errors 2"
        );
    }
}
