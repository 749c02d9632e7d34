//! What the kernel says about processes and CPUs: the descriptor limit, a process's CPU time and
//! memory from `/proc/PID/stat` and `/proc/PID/status`, CPU time per CPU from `/proc/stat`. One
//! reader for the server (its default `--max-conns`), `resound bench` (`--pid`, `--cpu`) and the
//! tests (a server's RSS).
//!
//! The parsers are pure functions of the file text, unit-tested on fixed samples; the readers are
//! one `read_to_string` (or one system call) each.

use std::fs;
use std::io;

/// RLIMIT_NOFILE's soft limit: how many descriptors this process may hold open (`ulimit -n`).
/// 1024 (the usual default) if it cannot be read.
pub fn fd_limit() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
}

/// `net.core.somaxconn`: the kernel's cap on a listen backlog (None if unreadable).
pub fn somaxconn() -> Option<usize> {
    fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

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
    /// The peak of `rss_kib`, in KiB.
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

/// Does process `pid` exist (and can we see it)?
pub fn process_exists(pid: u32) -> bool {
    pid > 0 && fs::metadata(format!("/proc/{pid}/stat")).is_ok()
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

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    sample_process(pid).map(|s| s.rss_kib)
}

/// How many child processes `pid` has now (the `children` lists of its threads,
/// `/proc/PID/task/TID/children`); `None` if the kernel does not say. A server that forks per
/// client (socat `fork`, inetd style) does its work in them, where `/proc/PID/stat` does not
/// count it.
pub fn child_count(pid: u32) -> Option<usize> {
    let mut n = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("children");
        n += fs::read_to_string(path).ok()?.split_whitespace().count();
    }
    Some(n)
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

/// The numbers of the CPUs `/proc/stat` lists (`cpu0`, `cpu1`, ...): the ones online.
pub fn parse_cpu_ids(text: &str) -> Vec<usize> {
    text.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_prefix("cpu")?
                .parse()
                .ok()
        })
        .collect()
}

/// CPU `cpu`'s times (`None`: the whole machine's), from `/proc/stat`.
pub fn sample_cpu(cpu: Option<usize>) -> Option<CpuTimes> {
    parse_proc_stat(&fs::read_to_string("/proc/stat").ok()?, cpu)
}

/// The CPUs online, from `/proc/stat`.
pub fn cpu_ids() -> io::Result<Vec<usize>> {
    Ok(parse_cpu_ids(&fs::read_to_string("/proc/stat")?))
}

/// This process's CPU time (all threads): (user + system, user) in seconds.
pub fn self_cpu() -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass; all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a valid pointer; on failure `ru` stays zero.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    let user = secs(ru.ru_utime);
    (user + secs(ru.ru_stime), user)
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

    const PROC_STAT: &str = "cpu  100 5 50 1000 10 1 4 0 0 0\n\
                             cpu0 60 0 30 400 5 1 4 0 0 0\n\
                             cpu1 40 5 20 600 5 0 0 0 0 0\n\
                             intr 1 2 3\n\
                             cpufreq 7\n";

    #[test]
    fn test_proc_stat_lines() {
        let all = parse_proc_stat(PROC_STAT, None).unwrap();
        assert_eq!(all.total, 1170);
        assert_eq!(all.busy, 1170 - 1000 - 10);
        assert_eq!(all.user, 105);
        let c0 = parse_proc_stat(PROC_STAT, Some(0)).unwrap();
        assert_eq!(c0.busy, 95);
        assert_eq!(parse_proc_stat(PROC_STAT, Some(2)), None);
    }

    #[test]
    fn test_cpu_ids_are_the_numbered_cpu_lines() {
        assert_eq!(parse_cpu_ids(PROC_STAT), vec![0, 1]);
    }

    #[test]
    fn test_reading_this_process_and_machine_works() {
        let me = sample_process(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(0));
        assert!(sample_cpu(None).unwrap().total > 0);
        assert!(!cpu_ids().unwrap().is_empty());
        assert!(fd_limit() > 0);
        assert!(child_count(std::process::id()).is_some());
    }
}
