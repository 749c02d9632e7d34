//! What the kernel says about CPU and memory: the server's CPU time and resident memory, one
//! CPU's busy share, the whole machine's CPU time, and the load generator's own CPU time.
//!
//! Why these and not only msgs/s: on a 2-core machine the load generator is often the bottleneck,
//! so a rate mostly measures the generator. The server's CPU-seconds per million operations
//! (utime + stime from `/proc/PID/stat` across the measured window, divided by the operations)
//! does not depend on how fast it was driven, and stays comparable between servers. The busy share
//! of the server's CPU (`/proc/stat`) adds softirq work that runs outside the server's own
//! accounting. "Other" CPU — the machine's total minus the server's minus ours — flags a run
//! disturbed by someone else's work.
//!
//! The parsers are pure functions of the file text; the readers are one `read_to_string` each.

use std::fs;
use std::io;

/// Clock ticks per second for `/proc` times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// One look at a process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// utime + stime, in seconds.
    pub cpu_s: f64,
    /// utime alone, in seconds.
    pub user_s: f64,
    /// Resident memory now, and its peak ("high water mark"), in KiB.
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// utime and stime (in ticks) from the text of `/proc/PID/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and parentheses, so
/// fields are counted from the *last* `)`: after it come state (field 3), ..., utime (14), stime
/// (15).
pub fn parse_pid_stat(text: &str) -> Option<(u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The value in KiB of a `Key:   1234 kB` line of `/proc/PID/status`.
pub fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Read process `pid`'s CPU time and memory.
pub fn sample_process(pid: u32) -> io::Result<ProcSample> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}"),
        )
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (utime, stime) = parse_pid_stat(&stat).ok_or_else(bad)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hz = ticks_per_sec();
    Ok(ProcSample {
        cpu_s: (utime + stime) as f64 / hz,
        user_s: utime as f64 / hz,
        rss_kib: parse_status_kib(&status, "VmRSS").ok_or_else(bad)?,
        hwm_kib: parse_status_kib(&status, "VmHWM").ok_or_else(bad)?,
    })
}

/// One `cpu` line of `/proc/stat`, in ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Everything but idle and iowait.
    pub busy: u64,
    /// Every field (user nice system idle iowait irq softirq steal).
    pub total: u64,
    /// user + nice.
    pub user: u64,
}

/// The line for CPU `cpu` (`Some(n)` for `cpuN`, `None` for the all-CPU `cpu` line).
pub fn parse_proc_stat(text: &str, cpu: Option<usize>) -> Option<CpuTimes> {
    let want = match cpu {
        Some(n) => format!("cpu{n}"),
        None => "cpu".to_string(),
    };
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(want.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some(CpuTimes {
        busy: total - v[3] - v[4],
        total,
        user: v[0] + v[1],
    })
}

pub fn sample_cpu(cpu: Option<usize>) -> Option<CpuTimes> {
    parse_proc_stat(&fs::read_to_string("/proc/stat").ok()?, cpu)
}

/// This process's CPU time (all threads): (user + system, user) in seconds.
pub fn self_cpu() -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    let user = secs(ru.ru_utime);
    (user + secs(ru.ru_stime), user)
}

/// Everything sampled at one instant (the start or the end of the measured window).
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub server: Option<ProcSample>,
    pub server_cpu: Option<CpuTimes>,
    pub machine: Option<CpuTimes>,
    pub loader_cpu_s: f64,
    pub loader_user_s: f64,
}

/// Take a [`Snapshot`]: `pid` is the server (if any), `cpu` the CPU it runs on (if known).
pub fn snapshot(pid: Option<u32>, cpu: Option<usize>) -> Snapshot {
    let (loader_cpu_s, loader_user_s) = self_cpu();
    Snapshot {
        server: pid.and_then(|p| sample_process(p).ok()),
        server_cpu: cpu.and_then(|c| sample_cpu(Some(c))),
        machine: sample_cpu(None),
        loader_cpu_s,
        loader_user_s,
    }
}

/// CPU use over the measured window, derived from two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Server CPU seconds in the window.
    pub server_cpu_s: Option<f64>,
    /// Busy share of the server's CPU, percent.
    pub cpu_busy_pct: Option<f64>,
    /// Busy seconds of the server's CPU in the window.
    pub cpu_busy_s: Option<f64>,
    /// The load generator's CPU, percent of one CPU.
    pub loader_cpu_pct: f64,
    /// CPU used by neither the server nor the generator, percent of one CPU; and of it, the
    /// user-mode part (softirq work run from the idle task is system time, so on a quiet machine
    /// `other_user_pct` is about 0 even when `other_cpu_pct` is not).
    pub other_cpu_pct: Option<f64>,
    pub other_user_pct: Option<f64>,
}

/// What happened between `a` and `b`, `secs` apart.
pub fn usage(a: &Snapshot, b: &Snapshot, secs: f64, hz: f64) -> Usage {
    let server = a.server.zip(b.server);
    let server_cpu_s = server.map(|(a, b)| b.cpu_s - a.cpu_s);
    let server_user_s = server.map(|(a, b)| b.user_s - a.user_s).unwrap_or(0.0);
    let loader_s = b.loader_cpu_s - a.loader_cpu_s;
    let loader_user_s = b.loader_user_s - a.loader_user_s;
    let busy = a.server_cpu.zip(b.server_cpu);
    let machine = a.machine.zip(b.machine);
    let pct = |s: f64| 100.0 * s / secs;
    Usage {
        server_cpu_s,
        cpu_busy_pct: busy
            .filter(|(a, b)| b.total > a.total)
            .map(|(a, b)| 100.0 * (b.busy - a.busy) as f64 / (b.total - a.total) as f64),
        cpu_busy_s: busy.map(|(a, b)| (b.busy - a.busy) as f64 / hz),
        loader_cpu_pct: pct(loader_s),
        other_cpu_pct: machine.map(|(a, b)| {
            pct(((b.busy - a.busy) as f64 / hz - server_cpu_s.unwrap_or(0.0) - loader_s).max(0.0))
        }),
        other_user_pct: machine.map(|(a, b)| {
            pct(((b.user - a.user) as f64 / hz - server_user_s - loader_user_s).max(0.0))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pid_stat_fields_are_counted_from_the_last_parenthesis() {
        let text = "4242 (evil) name (x)) S 1 4242 4242 0 -1 4194560 120 0 0 0 731 269 0 0 20 0 \
                    1 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_pid_stat(text), Some((731, 269)));
        assert_eq!(parse_pid_stat("garbage"), None);
    }

    #[test]
    fn test_status_values_in_kib() {
        let text = "Name:\tresound\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\nThreads:\t1\n";
        assert_eq!(parse_status_kib(text, "VmRSS"), Some(4096));
        assert_eq!(parse_status_kib(text, "VmHWM"), Some(5120));
        assert_eq!(parse_status_kib(text, "VmSwap"), None);
    }

    #[test]
    fn test_proc_stat_lines() {
        let text = "cpu  100 5 50 1000 10 1 4 0 0 0\n\
                    cpu0 60 0 30 400 5 1 4 0 0 0\n\
                    cpu1 40 5 20 600 5 0 0 0 0 0\n\
                    intr 1 2 3\n";
        let all = parse_proc_stat(text, None).unwrap();
        assert_eq!(all.total, 1170);
        assert_eq!(all.busy, 1170 - 1000 - 10);
        assert_eq!(all.user, 105);
        let c0 = parse_proc_stat(text, Some(0)).unwrap();
        assert_eq!(c0.busy, 95);
        assert_eq!(parse_proc_stat(text, Some(2)), None);
    }

    #[test]
    fn test_usage_subtracts_server_and_loader_from_the_machine() {
        let a = Snapshot {
            server: Some(ProcSample {
                cpu_s: 1.0,
                user_s: 0.5,
                ..Default::default()
            }),
            server_cpu: Some(CpuTimes {
                busy: 0,
                total: 0,
                user: 0,
            }),
            machine: Some(CpuTimes {
                busy: 0,
                total: 0,
                user: 0,
            }),
            loader_cpu_s: 10.0,
            loader_user_s: 4.0,
        };
        // Over 2 s: server 1.5 s (0.5 user), loader 1.8 s (0.8 user), machine 3.5 s busy of
        // which 1.5 s user, cpu0 150 of 200 ticks busy.
        let b = Snapshot {
            server: Some(ProcSample {
                cpu_s: 2.5,
                user_s: 1.0,
                ..Default::default()
            }),
            server_cpu: Some(CpuTimes {
                busy: 150,
                total: 200,
                user: 0,
            }),
            machine: Some(CpuTimes {
                busy: 350,
                total: 400,
                user: 150,
            }),
            loader_cpu_s: 11.8,
            loader_user_s: 4.8,
        };
        let u = usage(&a, &b, 2.0, 100.0);
        let close = |x: f64, y: f64| (x - y).abs() < 1e-9;
        assert!(close(u.server_cpu_s.unwrap(), 1.5));
        assert!(close(u.cpu_busy_pct.unwrap(), 75.0));
        assert!(close(u.cpu_busy_s.unwrap(), 1.5));
        assert!(close(u.loader_cpu_pct, 90.0));
        assert!(close(u.other_cpu_pct.unwrap(), 10.0)); // 3.5 - 1.5 - 1.8 = 0.2 s
        assert!(close(u.other_user_pct.unwrap(), 10.0)); // 1.5 - 0.5 - 0.8 = 0.2 s
    }

    #[test]
    fn test_sampling_this_process_works() {
        let me = sample_process(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
        assert!(sample_cpu(None).unwrap().total > 0);
    }
}
