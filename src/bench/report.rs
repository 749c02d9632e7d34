//! The results of a run: the summary printed on stdout, the JSON document (`--json`), the
//! progress line printed on stderr every second, and the exit status.
//!
//! What a report says must be true: figures that could not be measured (no `--pid`, no `/proc`,
//! a process gone, no operation completed) are `null` in JSON and `-` in text, never a made-up
//! 0; the generator's own shortfall ("rate not reached") is its own line, not a loss charged to
//! the server; and anything that makes a figure doubtful is said in a warning.
//!
//! The JSON is one object on one line, like iperf3's `-J`: the version, a timestamp, the full
//! parameters, the totals and the per-second series, so runs can be archived and plotted. It is
//! built with `serde_json` (correct escaping and number syntax for free).
//!
//! Pure: formatting and arithmetic only.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::histogram::Percentiles;
use super::procstat::{Snapshot, Usage};
use super::tally::{Cause, CauseKind, Errors, Tally};
use super::{Mode, Plan};

/// The server's figures (with `--pid`). Each is `None` when it could not be read (the process
/// was gone at the start or the end of the window).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerFigures {
    /// The process measured.
    pub pid: u32,
    /// CPU seconds in the measured window.
    pub cpu_s: Option<f64>,
    /// CPU seconds per million operations (= microseconds per operation).
    pub cpu_s_per_million: Option<f64>,
    /// Resident memory before the first connection, in KiB.
    pub rss_before_kib: Option<u64>,
    /// Resident memory at the end of the window, in KiB.
    pub rss_after_kib: Option<u64>,
    /// Peak resident memory ("high water mark") at the end, in KiB.
    pub hwm_kib: Option<u64>,
    /// (after - before) / connections open at the end, in bytes.
    pub rss_per_conn_b: Option<f64>,
}

/// One second of the run, as the progress line showed it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Interval {
    /// Seconds since the load started (the end of this interval).
    pub t_s: f64,
    /// Operations completed in the interval (warm-up and drain included).
    pub ops: u64,
    /// The same per second.
    pub per_sec: f64,
    /// Their latencies (empty unless [`Plan::per_second_latency`]).
    ///
    /// [`Plan::per_second_latency`]: super::Plan::per_second_latency
    pub latency: Percentiles,
    /// Errors so far (cumulative).
    pub errors: u64,
}

/// What a run measured, handed to [`Report::new`].
#[derive(Clone, Debug)]
pub struct Measured {
    /// Every worker's counts, merged.
    pub tally: Tally,
    /// Connections (or answered UDP sockets) open at the end.
    pub open: u64,
    /// The measured window and the setup, in seconds.
    pub window_s: f64,
    pub setup_s: f64,
    /// Samples before the first connection, and at the end of the window.
    pub before: Snapshot,
    pub end: Snapshot,
    /// CPU use over the window.
    pub usage: Usage,
    /// The per-second series.
    pub series: Vec<Interval>,
    /// When the run started (wall clock, for the record).
    pub started: SystemTime,
    /// With `--pid`: how many child processes the server had at the end.
    pub server_children: Option<usize>,
}

/// The results of one run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The plan that ran (every parameter, for the record).
    pub plan: Plan,
    /// The measured window, in seconds.
    pub window_s: f64,
    /// How long opening the connections took, in seconds.
    pub setup_s: f64,
    /// Operations completed in the window (idle: connections held at the end).
    pub ops: u64,
    /// Operations per second in the window (idle: connections opened per second of setup).
    pub throughput_per_sec: f64,
    /// Payload megabytes (10^6) per second, one way.
    pub mb_per_sec: f64,
    /// Operations sent whole in the window (echo: messages; broadcast: lines; udp: datagrams).
    pub sent: u64,
    /// Operations sent whole over the whole run (warm-up and drain included).
    pub sent_total: u64,
    /// Operations completed over the whole run.
    pub completed: u64,
    /// Operations in flight on a connection that failed (counted with that failure).
    pub abandoned: u64,
    /// Open loop: operations the schedule called for.
    pub scheduled: u64,
    /// Operations never sent whole: open loop, the generator's shortfall; closed loop,
    /// messages a server that stopped reading never took.
    pub not_sent: u64,
    /// Open loop: the rate actually sent, per second (`None` in closed loop).
    pub rate_achieved: Option<f64>,
    /// Latencies of the operations completed in the window.
    pub latency: Percentiles,
    /// Errors by kind, over the whole run.
    pub errors: Errors,
    /// Why connects, connections and sends failed, most frequent first.
    pub causes: Vec<Cause>,
    /// UDP: replies that came back after a later one (not errors).
    pub udp_reordered: u64,
    /// UDP: replies that matched nothing in flight: duplicated, or late (not errors).
    pub udp_late: u64,
    /// Connections open at the end.
    pub open: u64,
    /// The server's figures, with `--pid`.
    pub server: Option<ServerFigures>,
    /// CPU use over the window.
    pub usage: Usage,
    /// One entry per second of load.
    pub series: Vec<Interval>,
    /// Whatever makes a figure doubtful, in words.
    pub warnings: Vec<String>,
    /// When the run started.
    pub started: SystemTime,
}

impl Report {
    /// The report of `plan`'s run from what it measured.
    pub fn new(plan: &Plan, m: Measured) -> Report {
        let tally = &m.tally;
        let (ops, throughput) = match plan.mode {
            // Idle's figure of merit is what it holds; its rate is how fast it got there.
            Mode::Idle => (m.open, m.open as f64 / m.setup_s.max(1e-9)),
            _ => (tally.ops, tally.ops as f64 / m.window_s),
        };
        let per_million =
            |cpu: f64| (ops > 0 && plan.mode != Mode::Idle).then(|| cpu / (ops as f64 / 1e6));
        let server = plan.pid.map(|pid| {
            let (b, e) = (m.before.server, m.end.server);
            ServerFigures {
                pid,
                cpu_s: m.usage.server_cpu_s,
                cpu_s_per_million: m.usage.server_cpu_s.and_then(per_million),
                rss_before_kib: b.map(|s| s.rss_kib),
                rss_after_kib: e.map(|s| s.rss_kib),
                hwm_kib: e.map(|s| s.hwm_kib),
                rss_per_conn_b: b
                    .zip(e)
                    .filter(|_| m.open > 0)
                    .map(|(b, e)| (e.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / m.open as f64),
            }
        });
        let run_s = (plan.warmup + plan.duration).as_secs_f64();
        let rate_achieved = plan.rate.filter(|_| tally.scheduled > 0).map(|rate| {
            let kept = tally.scheduled.saturating_sub(tally.not_sent);
            rate.min(kept as f64 / run_s.max(1e-9))
        });
        let mut report = Report {
            plan: plan.clone(),
            window_s: m.window_s,
            setup_s: m.setup_s,
            ops,
            throughput_per_sec: throughput,
            mb_per_sec: tally.bytes as f64 / m.window_s / 1e6,
            sent: tally.sent,
            sent_total: tally.sent_total,
            completed: tally.completed,
            abandoned: tally.abandoned,
            scheduled: tally.scheduled,
            not_sent: tally.not_sent,
            rate_achieved,
            latency: tally.latency.percentiles(),
            errors: tally.errors,
            causes: tally.causes.sorted(),
            udp_reordered: tally.udp_reordered,
            udp_late: tally.udp_late,
            open: m.open,
            server,
            usage: m.usage,
            series: m.series,
            warnings: Vec::new(),
            started: m.started,
        };
        report.warnings = report.doubts(&m.before, &m.end, m.server_children);
        report
    }

    /// Open loop: the schedule was not kept (some operations were never sent).
    pub fn rate_not_reached(&self) -> bool {
        self.plan.rate.is_some() && self.not_sent > 0
    }

    /// 0 if every payload arrived intact, nothing failed and something was measured (and, with
    /// `--strict-rate`, the rate was reached); 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        let nothing = self.ops == 0;
        let strict = self.plan.strict_rate && self.rate_not_reached();
        if self.errors.total() > 0 || nothing || strict {
            1
        } else {
            0
        }
    }

    /// What makes the figures doubtful.
    fn doubts(&self, before: &Snapshot, end: &Snapshot, children: Option<usize>) -> Vec<String> {
        let mut w = Vec::new();
        let Some(sv) = &self.server else {
            return w;
        };
        let pid = sv.pid;
        if before.server.is_none() || end.server.is_none() {
            w.push(format!(
                "server pid {pid}: /proc/{pid} could not be read at the {} of the run \
                 (the process is gone?): its figures are unknown",
                if before.server.is_none() {
                    "start"
                } else {
                    "end"
                }
            ));
        }
        if let Some(n) = children.filter(|&n| n > 0) {
            w.push(format!(
                "server pid {pid} has {n} child process{}: their CPU and memory are not counted \
                 (a server that forks per client does its work there)",
                if n == 1 { "" } else { "es" }
            ));
        }
        // A server does at least a fair share of the generator's work per operation (both sides
        // make the same system calls); one that used almost nothing did not do the work itself.
        let loader_s = self.usage.loader_cpu_s;
        if let Some(cpu) = sv.cpu_s
            && self.plan.mode != Mode::Idle
            && self.ops >= 1000
            && loader_s >= 0.1
            && cpu < loader_s / 50.0
        {
            w.push(format!(
                "server pid {pid} used {cpu:.3} s of CPU while {} {} completed and the generator \
                 used {loader_s:.2} s: the work is done elsewhere (child processes, other threads \
                 or processes) and is not counted here",
                self.ops,
                self.plan.mode.op_name()
            ));
        }
        if let (Some(o), Some(ou)) = (self.usage.other_cpu_pct, self.usage.other_user_pct)
            && (o > 25.0 || ou > 10.0)
        {
            // Quiet, both are about 0 (softirq work for our own traffic is charged to the
            // server or to us, or is a few percent at most).
            w.push(format!(
                "machine not quiet: other processes used {o:.1} % of a CPU (user {ou:.1} %): \
                 figures disturbed"
            ));
        }
        w
    }

    /// What one operation is, in a sentence that says none completed.
    fn nothing_completed(&self) -> &'static str {
        match self.plan.mode {
            Mode::Echo | Mode::Udp => "no round trip completed in the measured window",
            Mode::Broadcast => "no line was delivered in the measured window",
            Mode::Connect => "no connection cycle completed in the measured window",
            Mode::Idle => "no connection is held",
        }
    }

    /// The human summary (several lines, each ending in a newline).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let p = &self.plan;
        let m = p.mode;
        let _ = write!(s, "resound bench {} -> {}", m.name(), targets_text(p));
        if !p.label.is_empty() {
            let _ = write!(s, "  [{}]", p.label);
        }
        let _ = write!(s, "  connections={}", p.connections);
        if m == Mode::Broadcast {
            let _ = write!(s, " senders={}", p.senders);
        }
        let _ = write!(s, " size={}", p.size);
        if matches!(m, Mode::Echo | Mode::Udp) && p.rate.is_none() {
            let _ = write!(s, " pipeline={}", p.pipeline);
        }
        if let Some(r) = p.rate {
            let _ = write!(s, " rate={r}/s (open loop)");
        }
        let _ = writeln!(
            s,
            " threads={}  (window {:.2} s, setup {:.2} s)",
            p.threads, self.window_s, self.setup_s
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
        if self.ops == 0 {
            let _ = writeln!(s, "  {}", self.nothing_completed());
        }
        if let (true, Some(rate), Some(got)) = (self.rate_not_reached(), p.rate, self.rate_achieved)
        {
            let _ = writeln!(
                s,
                "  rate not reached: {got:.0}/s of {rate}/s ({} of {} {} never sent: the \
                 generator, or a server that stopped reading, could not keep up){}",
                self.not_sent,
                self.scheduled,
                m.op_name(),
                if self.plan.strict_rate {
                    " -- an error with --strict-rate"
                } else {
                    ""
                }
            );
        }
        if matches!(m, Mode::Echo | Mode::Udp | Mode::Broadcast) {
            let what = match m {
                Mode::Broadcast => "lines sent",
                Mode::Udp => "datagrams sent",
                _ => "messages sent",
            };
            let _ = write!(
                s,
                "  {what}: {} in the window ({:.0}/s), {} in all; {} completed",
                self.sent,
                self.sent as f64 / self.window_s,
                self.sent_total,
                self.completed
            );
            if self.abandoned > 0 {
                let _ = write!(
                    s,
                    ", {} in flight on connections that failed (counted with those failures)",
                    self.abandoned
                );
            }
            if self.not_sent > 0 && p.rate.is_none() {
                let _ = write!(s, ", {} never written whole", self.not_sent);
            }
            let _ = writeln!(s);
        }
        let l = &self.latency;
        let what = match m {
            Mode::Echo | Mode::Udp => "round trip",
            Mode::Broadcast => "fan-out",
            Mode::Connect | Mode::Idle => "connect",
        };
        let us = |v: u64| {
            if l.count == 0 {
                "-".to_string()
            } else {
                v.to_string()
            }
        };
        let _ = writeln!(
            s,
            "  {what} latency (µs): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}  (n={})",
            us(l.p50),
            us(l.p90),
            us(l.p99),
            us(l.p999),
            us(l.max),
            if l.count == 0 {
                "-".into()
            } else {
                format!("{:.1}", l.mean)
            },
            l.count
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
        for c in &self.causes {
            let _ = writeln!(s, "    {}", cause_text(c, &self.plan));
        }
        if m == Mode::Udp {
            let _ = writeln!(
                s,
                "  udp: {} came back out of order, {} late or duplicated (not errors)",
                self.udp_reordered, self.udp_late
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
            let kib = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            let _ = write!(
                s,
                "  server rss: {} -> {} KiB",
                kib(sv.rss_before_kib),
                kib(sv.rss_after_kib)
            );
            if let (Some(b), Some(a)) = (sv.rss_before_kib, sv.rss_after_kib) {
                let _ = write!(s, " ({:+} KiB)", a as i64 - b as i64);
            }
            let _ = write!(s, ", peak {} KiB", kib(sv.hwm_kib));
            if let Some(b) = sv.rss_per_conn_b.filter(|_| m != Mode::Udp) {
                let _ = write!(s, ", {b:.0} B per open connection");
            }
            let _ = writeln!(s);
        }
        let u = &self.usage;
        let _ = write!(s, " ");
        if let (Some(cpu), Some(b)) = (p.cpu, u.cpu_busy_pct) {
            let _ = write!(s, " cpu{cpu} busy {b:.1} % (incl. softirq);");
        }
        let _ = write!(s, " loader cpu {:.1} %", u.loader_cpu_pct);
        if let (Some(o), Some(ou)) = (u.other_cpu_pct, u.other_user_pct) {
            let _ = write!(s, "; other processes {o:.1} % (user {ou:.1} %)");
        } else if let Some(both) = u.server_and_other_cpu_pct {
            let _ = write!(
                s,
                "; server and other processes {both:.1} % together: server CPU unknown \
                 (pass --pid)"
            );
        }
        let _ = writeln!(s);
        for w in &self.warnings {
            let _ = writeln!(s, "  ** warning: {w}");
        }
        s
    }

    /// The whole report as one JSON object (one line with `to_string`).
    pub fn json_value(&self) -> Value {
        let l = &self.latency;
        let us = |v: u64| (l.count > 0).then_some(v);
        let latency = json!({
            "p50": us(l.p50),
            "p90": us(l.p90),
            "p99": us(l.p99),
            "p999": us(l.p999),
            "max": us(l.max),
            "mean": (l.count > 0).then(|| num(l.mean)),
            "count": l.count,
        });
        let kinds: serde_json::Map<String, Value> = self
            .errors
            .kinds()
            .iter()
            .map(|&(k, n)| (k.to_string(), n.into()))
            .collect();
        let causes: Vec<Value> = self
            .causes
            .iter()
            .map(|c| {
                json!({
                    "kind": c.kind.name(),
                    "target": c.target.to_string(),
                    "error": c.reason(),
                    "errno": c.errno,
                    "count": c.count,
                })
            })
            .collect();
        let series: Vec<Value> = self
            .series
            .iter()
            .map(|i| {
                let p = &i.latency;
                let us = |v: u64| (p.count > 0).then_some(v);
                json!({
                    "t_s": num(i.t_s),
                    "ops": i.ops,
                    "per_sec": num(i.per_sec),
                    "p50_us": us(p.p50),
                    "p99_us": us(p.p99),
                    "max_us": us(p.max),
                    "errors": i.errors,
                })
            })
            .collect();
        let sv = self.server;
        let u = &self.usage;
        let p = &self.plan;
        let unix = self
            .started
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let params = json!({
                "mode": p.mode.name(),
                "targets": p.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                "connections": p.connections,
                "duration_s": num(p.duration.as_secs_f64()),
                "warmup_s": num(p.warmup.as_secs_f64()),
                "drain_s": num(p.drain.as_secs_f64()),
                "setup_timeout_s": num(p.setup_timeout.as_secs_f64()),
                "size": p.size,
                "pipeline": p.pipeline,
                "rate": p.rate.map(num),
                "connect_rate": p.connect_rate.map(num),
                "senders": p.senders,
                "window": p.window,
                "threads": p.threads,
                "src_ips": p.src_ips,
                "broadcast": p.broadcast,
                "pid": p.pid,
                "cpu": p.cpu,
                "strict_rate": p.strict_rate,
                "label": p.label,
        });
        // Three objects made into one (a single `json!` of this size exceeds the macro's
        // recursion limit).
        let mut j = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "timestamp": rfc3339(unix),
            "timestamp_unix": num(unix.as_secs_f64()),
            "params": params,
            "mode": p.mode.name(),
            "label": p.label,
            "target": targets_text(p),
            "connections": p.connections,
            "senders": if p.mode == Mode::Broadcast { p.senders } else { 0 },
            "size": p.size,
            "pipeline": p.pipeline,
            "rate": p.rate.map(num),
            "threads": p.threads,
            "duration_s": num(self.window_s),
            "setup_s": num(self.setup_s),
            "ops": self.ops,
            "throughput_per_sec": num(self.throughput_per_sec),
            "mb_per_sec": num(self.mb_per_sec),
            "sent": self.sent,
            "sent_total": self.sent_total,
            "completed": self.completed,
            "abandoned": self.abandoned,
            "scheduled": self.scheduled,
            "not_sent": self.not_sent,
            "rate_achieved_per_sec": self.rate_achieved.map(num),
            "rate_reached": p.rate.map(|_| !self.rate_not_reached()),
        });
        let figures = json!({
            "latency_us": latency,
            "errors": self.errors.total(),
            "errors_by_kind": kinds,
            "causes": causes,
            "udp_reordered": self.udp_reordered,
            "udp_late": self.udp_late,
            "open": self.open,
            "server_pid": sv.map(|s| s.pid),
            "server_cpu_s": sv.and_then(|s| s.cpu_s).map(num),
            "server_cpu_s_per_million": sv.and_then(|s| s.cpu_s_per_million).map(num),
            "server_rss_before_kib": sv.and_then(|s| s.rss_before_kib),
            "server_rss_after_kib": sv.and_then(|s| s.rss_after_kib),
            "server_hwm_kib": sv.and_then(|s| s.hwm_kib),
            "server_rss_per_conn_b": sv.and_then(|s| s.rss_per_conn_b).map(num),
            "cpu_busy_pct": u.cpu_busy_pct.map(num),
            "cpu_busy_s_per_million": u
                .cpu_busy_s
                .filter(|_| self.ops > 0 && p.mode != Mode::Idle)
                .map(|b| num(b / (self.ops as f64 / 1e6))),
            "loader_cpu_pct": num(u.loader_cpu_pct),
            "other_cpu_pct": u.other_cpu_pct.map(num),
            "other_user_pct": u.other_user_pct.map(num),
            "server_and_other_cpu_pct": u.server_and_other_cpu_pct.map(num),
            "warnings": self.warnings,
            "series": series,
        });
        if let (Some(j), Value::Object(figures)) = (j.as_object_mut(), figures) {
            j.extend(figures);
        }
        j
    }

    /// One JSON object on one line (no trailing newline).
    pub fn json(&self) -> String {
        self.json_value().to_string()
    }
}

/// A cause of errors in words, without its count: `connect 127.0.0.1:9: Connection refused`.
pub fn cause_words(c: &Cause, plan: &Plan) -> String {
    let (t, why) = (c.target, c.reason());
    match (c.kind, plan.mode) {
        (CauseKind::Connect, Mode::Udp) if c.errno == libc::ETIMEDOUT => format!(
            "udp {t}: no reply to the probe datagrams within {} s",
            super::udp::PROBE_TIMEOUT.as_secs()
        ),
        (CauseKind::Connect, Mode::Udp) => format!("udp {t}: {why}"),
        (CauseKind::Connect, _) => format!("connect {t}: {why}"),
        (CauseKind::Closed, _) if c.errno == 0 => format!("{t}: connection {why}"),
        (CauseKind::Closed, _) => format!("{t}: connection failed: {why}"),
        (CauseKind::Send, _) if c.errno == libc::EACCES && !plan.broadcast => {
            format!("send to {t}: {why}: sending to a broadcast address needs --broadcast")
        }
        (CauseKind::Send, _) => format!("send to {t}: {why}"),
    }
}

/// A cause of errors in words with its count: `connect 127.0.0.1:9: Connection refused x5`.
pub fn cause_text(c: &Cause, plan: &Plan) -> String {
    format!("{} x{}", cause_words(c, plan), c.count)
}

/// The target, or the targets joined with commas.
pub fn targets_text(plan: &Plan) -> String {
    let t: Vec<String> = plan.targets.iter().map(|t| t.to_string()).collect();
    t.join(",")
}

/// A JSON number with at most 4 decimals (`null` if not finite: JSON has no NaN).
fn num(x: f64) -> Value {
    if !x.is_finite() {
        return Value::Null;
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return json!(x as i64);
    }
    json!((x * 1e4).round() / 1e4)
}

/// `since_epoch` as an RFC 3339 UTC time, `2026-12-16T09:30:00Z`.
fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of day `z` since 1970-01-01 (Howard Hinnant's days-to-civil
/// method: count in 400-year eras of 146 097 days, with years starting in March so that the
/// leap day falls at the end).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The progress line: `[  3.0 s] 123456 messages/s  p99 87 µs  errors 0` (`p99 -` if nothing
/// completed in that second).
pub fn progress_line(
    elapsed: Duration,
    rate: f64,
    ops: &str,
    p99_us: Option<u64>,
    errors: u64,
) -> String {
    format!(
        "[{:5.1} s] {:>9.0} {ops}/s  p99 {} µs  errors {errors}",
        elapsed.as_secs_f64(),
        rate,
        p99_us.map_or("-".to_string(), |p| p.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::histogram::Latency;
    use crate::bench::tally::Causes;
    use crate::procfs::ProcSample;

    fn measured(tally: Tally) -> Measured {
        let server = |cpu_s, rss_kib| ProcSample {
            cpu_s,
            user_s: 0.0,
            rss_kib,
            hwm_kib: 3000,
        };
        Measured {
            tally,
            open: 100,
            window_s: 2.0,
            setup_s: 0.1,
            before: Snapshot {
                server: Some(server(1.0, 2000)),
                ..Snapshot::default()
            },
            end: Snapshot {
                server: Some(server(2.0, 2200)),
                ..Snapshot::default()
            },
            usage: Usage {
                server_cpu_s: Some(0.9),
                loader_cpu_s: 1.99,
                loader_cpu_pct: 99.5,
                ..Usage::default()
            },
            series: vec![Interval {
                t_s: 1.0,
                ops: 5,
                per_sec: 5.0,
                ..Interval::default()
            }],
            started: UNIX_EPOCH + Duration::from_secs(1_765_000_000),
            server_children: Some(0),
        }
    }

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
        Report::new(&plan, measured(tally))
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
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
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
    fn test_an_empty_run_says_so_with_no_made_up_latency() {
        let plan = Plan::new(Mode::Echo, "127.0.0.1:7000".parse().unwrap());
        let r = Report::new(&plan, measured(Tally::default()));
        assert_eq!(r.exit_code(), 1, "nothing measured is a failed run");
        let text = r.summary();
        assert!(text.contains("no round trip completed"), "{text}");
        assert!(text.contains("p50 -  p90 -"), "{text}");
        let j = r.json_value();
        assert_eq!(j["latency_us"]["p50"], Value::Null);
        assert_eq!(j["latency_us"]["mean"], Value::Null);
        assert_eq!(j["latency_us"]["count"], 0);
    }

    #[test]
    fn test_rate_not_reached_is_its_own_line_and_an_error_only_when_strict() {
        let mut plan = Plan::new(Mode::Echo, "127.0.0.1:7000".parse().unwrap());
        plan.rate = Some(1000.0);
        plan.warmup = Duration::ZERO;
        plan.duration = Duration::from_secs(2);
        let tally = Tally {
            ops: 1500,
            scheduled: 2000,
            not_sent: 500,
            ..Tally::default()
        };
        let r = Report::new(&plan, measured(tally.clone()));
        assert_eq!(r.rate_achieved, Some(750.0));
        assert!(r.summary().contains("rate not reached: 750/s of 1000/s"));
        assert_eq!(r.errors.total(), 0);
        assert_eq!(r.exit_code(), 0);
        plan.strict_rate = true;
        assert_eq!(Report::new(&plan, measured(tally)).exit_code(), 1);
    }

    #[test]
    fn test_without_pid_the_server_is_not_counted_among_the_others() {
        let plan = Plan::new(Mode::Echo, "127.0.0.1:7000".parse().unwrap());
        let mut m = measured(Tally {
            ops: 10,
            ..Tally::default()
        });
        m.usage = Usage {
            loader_cpu_pct: 90.0,
            server_and_other_cpu_pct: Some(95.0),
            ..Usage::default()
        };
        let text = Report::new(&plan, m).summary();
        assert!(text.contains("server CPU unknown (pass --pid)"), "{text}");
        assert!(!text.contains("not quiet"), "{text}");
    }

    #[test]
    fn test_a_server_that_did_not_do_the_work_is_warned_about() {
        let mut plan = Plan::new(Mode::Echo, "127.0.0.1:7000".parse().unwrap());
        plan.pid = Some(42);
        let mut m = measured(Tally {
            ops: 100_000,
            ..Tally::default()
        });
        m.usage.server_cpu_s = Some(0.0);
        m.server_children = Some(3);
        let r = Report::new(&plan, m);
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("3 child processes"));
        assert!(r.warnings[1].contains("done elsewhere"));
        // A process gone before the end: its figures are unknown, not 0.
        let mut m = measured(Tally::default());
        m.end.server = None;
        let r = Report::new(&plan, m);
        assert!(r.warnings[0].contains("could not be read at the end"));
        assert_eq!(r.server.unwrap().rss_after_kib, None);
        assert!(r.summary().contains("server rss: 2000 -> - KiB"));
    }

    #[test]
    fn test_json_carries_version_time_parameters_and_series() {
        let r = sample_report(Mode::Echo);
        let text = r.json();
        assert!(!text.contains('\n'));
        let j: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(j["timestamp"], "2025-12-06T05:46:40Z");
        assert_eq!(j["params"]["targets"][0], "127.0.0.1:7000");
        assert_eq!(j["params"]["duration_s"], 5);
        assert_eq!(j["label"], "a \"quoted\" label");
        assert_eq!(j["latency_us"]["p50"], 100);
        assert_eq!(j["server_cpu_s_per_million"], 0.45);
        assert_eq!(j["cpu_busy_pct"], Value::Null);
        assert_eq!(j["series"][0]["ops"], 5);
        assert_eq!(j["series"][0]["p99_us"], Value::Null);
        assert_eq!(j["errors_by_kind"]["connect"], 0);
    }

    #[test]
    fn test_causes_are_named_with_their_target_and_hint() {
        let mut plan = Plan::new(Mode::Udp, "127.255.255.255:7000".parse().unwrap());
        let mut causes = Causes::default();
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        causes.count(CauseKind::Send, plan.targets[0], Some(&denied));
        let c = &causes.sorted()[0];
        assert_eq!(
            cause_text(c, &plan),
            "send to 127.255.255.255:7000: Permission denied: sending to a broadcast address \
             needs --broadcast x1"
        );
        plan.broadcast = true;
        assert!(!cause_text(c, &plan).contains("needs --broadcast"));
    }

    #[test]
    fn test_dates() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(Duration::from_secs(4_107_542_399)),
            "2100-02-28T23:59:59Z"
        );
    }

    #[test]
    fn test_progress_line() {
        assert_eq!(
            progress_line(Duration::from_millis(3050), 1234.4, "messages", Some(87), 2),
            "[  3.0 s]      1234 messages/s  p99 87 µs  errors 2"
        );
        assert!(progress_line(Duration::ZERO, 0.0, "messages", None, 0).contains("p99 - µs"));
    }
}
