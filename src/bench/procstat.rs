//! What the load cost, from the kernel's figures: the server's CPU time and resident memory, one
//! CPU's busy share, the whole machine's CPU time, and the load generator's own CPU time, sampled
//! at the edges of the measured window ([`Snapshot`]) and turned into [`Usage`].
//!
//! Why these and not only msgs/s: on a 2-core machine the load generator is often the bottleneck,
//! so a rate mostly measures the generator. The server's CPU-seconds per million operations
//! (utime + stime from `/proc/PID/stat` across the measured window, divided by the operations)
//! does not depend on how fast it was driven, and stays comparable between servers. The busy share
//! of the server's CPU (`/proc/stat`) adds softirq work that runs outside the server's own
//! accounting. "Other" CPU — the machine's total minus the server's minus ours — flags a run
//! disturbed by someone else's work; without `--pid` the server cannot be told apart from the
//! others, so there is no such figure.
//!
//! Reading `/proc` is [`crate::procfs`]'s; this file only does the arithmetic.

use crate::procfs::{self, CpuTimes, ProcSample};

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
    let (loader_cpu_s, loader_user_s) = procfs::self_cpu();
    Snapshot {
        server: pid.and_then(|p| procfs::sample_process(p).ok()),
        server_cpu: cpu.and_then(|c| procfs::sample_cpu(Some(c))),
        machine: procfs::sample_cpu(None),
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
    /// The load generator's CPU seconds.
    pub loader_cpu_s: f64,
    /// The same, in percent of one CPU.
    pub loader_cpu_pct: f64,
    /// CPU used by neither the server nor the generator, percent of one CPU; and of it, the
    /// user-mode part (softirq work run from the idle task is system time, so on a quiet machine
    /// `other_user_pct` is about 0 even when `other_cpu_pct` is not). Known only with the
    /// server's own figure (`--pid`): without it the server is one of the "others".
    pub other_cpu_pct: Option<f64>,
    /// The user-mode part of `other_cpu_pct`.
    pub other_user_pct: Option<f64>,
    /// Without `--pid`: the server's and everyone else's CPU together, which cannot be told
    /// apart (percent of one CPU).
    pub server_and_other_cpu_pct: Option<f64>,
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
    let others = |cpu_s: f64| {
        machine.map(|(a, b)| pct(((b.busy - a.busy) as f64 / hz - cpu_s - loader_s).max(0.0)))
    };
    Usage {
        server_cpu_s,
        cpu_busy_pct: busy
            .filter(|(a, b)| b.total > a.total)
            .map(|(a, b)| 100.0 * (b.busy - a.busy) as f64 / (b.total - a.total) as f64),
        cpu_busy_s: busy.map(|(a, b)| (b.busy - a.busy) as f64 / hz),
        loader_cpu_s: loader_s,
        loader_cpu_pct: pct(loader_s),
        other_cpu_pct: server_cpu_s.and_then(others),
        other_user_pct: server.and_then(|_| {
            machine.map(|(a, b)| {
                pct(((b.user - a.user) as f64 / hz - server_user_s - loader_user_s).max(0.0))
            })
        }),
        server_and_other_cpu_pct: server_cpu_s.is_none().then(|| others(0.0)).flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(u.server_and_other_cpu_pct, None);

        // Without the server's figures, its CPU is among the others': no "other" figure, only
        // the two together (3.5 - 1.8 = 1.7 s over 2 s).
        let (a, b) = (
            Snapshot { server: None, ..a },
            Snapshot { server: None, ..b },
        );
        let u = usage(&a, &b, 2.0, 100.0);
        assert_eq!((u.other_cpu_pct, u.other_user_pct), (None, None));
        assert!(close(u.server_and_other_cpu_pct.unwrap(), 85.0));
    }
}
