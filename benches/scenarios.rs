//! End-to-end load scenarios: `resound serve` as a child pinned to CPU 0, driven by the
//! `resound bench` library from this process pinned to CPU 1, each scenario on a fresh server.
//! Prints a table of medians and writes every run to `target/bench-results.json`.
//!
//! ```text
//! cargo bench --bench scenarios                       # every scenario, 3 repeats, 3 s each
//! cargo bench --bench scenarios -- echo64p16,connect  # some of them
//! cargo bench --bench scenarios -- cluster            # 3 nodes bridged through Redis vs 1,
//!                                                     # 2 --reuseport workers vs 1 (only when
//!                                                     # named: benches/cluster.sh, which needs
//!                                                     # redis-server)
//!     --repeat N      repeats per scenario (medians are reported)      [3]
//!     --secs S        measured seconds per run (idle: seconds held)    [3]
//!     --servers LIST  resound and/or c (the C epoll floor of ../shared/peers)  [resound]
//!     --loadgen       also run ../shared/peers/bin/loadgen on each server, right after
//!                     our harness, for a side-by-side of the two load generators
//! ```
//!
//! Why this shape: on a 2-core machine the load generator and the server compete for CPU, so
//! each gets its own core; rates then mostly measure whichever side saturates first, which is
//! why the key column is the server's CPU time per operation (from /proc), not the rate. Runs
//! are noisy on a shared VM: compare medians of runs made side by side, not numbers from
//! different days.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use resound::bench::{self, Mode, Plan, Report};
use resound::procfs;

/// One scenario: a name, a mode and what it changes in the plan.
struct Scenario {
    name: &'static str,
    mode: Mode,
    connections: usize,
    size: usize,
    pipeline: usize,
    what: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "echo64p16",
        mode: Mode::Echo,
        connections: 100,
        size: 64,
        pipeline: 16,
        what: "echo 64 B x 100 conns, 16 in flight each",
    },
    Scenario {
        name: "echo64c1k",
        mode: Mode::Echo,
        connections: 1000,
        size: 64,
        pipeline: 1,
        what: "echo 64 B x 1000 conns, 1 in flight each",
    },
    Scenario {
        name: "echo16k",
        mode: Mode::Echo,
        connections: 10,
        size: 16384,
        pipeline: 1,
        what: "echo 16 KiB x 10 conns",
    },
    Scenario {
        name: "bcast100",
        mode: Mode::Broadcast,
        connections: 100,
        size: 64,
        pipeline: 1,
        what: "broadcast 64 B lines, 1 sender -> 100 receivers, window 64",
    },
    Scenario {
        name: "bcast1k",
        mode: Mode::Broadcast,
        connections: 1000,
        size: 64,
        pipeline: 1,
        what: "broadcast 64 B lines, 1 sender -> 1000 receivers, window 64",
    },
    Scenario {
        name: "connect",
        mode: Mode::Connect,
        connections: 50,
        size: 1,
        pipeline: 1,
        what: "connect, 1-byte echo, close; 50 at a time",
    },
    Scenario {
        name: "idle10k",
        mode: Mode::Idle,
        connections: 10_000,
        size: 1,
        pipeline: 1,
        what: "hold 10 000 connections: server RSS per connection",
    },
];

const SERVER_CPU: usize = 0;
const LOAD_CPU: usize = 1;

struct Options {
    only: Vec<String>,
    repeat: usize,
    secs: f64,
    servers: Vec<String>,
    loadgen: bool,
}

fn options() -> Options {
    let mut o = Options {
        only: Vec::new(),
        repeat: 3,
        secs: 3.0,
        servers: vec!["resound".into()],
        loadgen: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {} // cargo passes it to every bench target
            "--repeat" => {
                o.repeat = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--repeat N")
            }
            "--secs" => o.secs = args.next().and_then(|v| v.parse().ok()).expect("--secs S"),
            "--servers" => {
                o.servers = args
                    .next()
                    .expect("--servers LIST")
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--loadgen" => o.loadgen = true,
            s if !s.starts_with('-') => o.only.extend(s.split(',').map(String::from)),
            s => panic!("unknown option {s}"),
        }
    }
    o
}

fn peers() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/bin")
}

/// Pin the calling thread (and the threads and processes it starts later) to `cpu`.
fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A server child pinned to CPU 0, with the address it printed.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `server` for `mode`; `Err(why)` if it cannot serve it (e.g. no `--broadcast` on this
/// branch of resound).
fn start_server(server: &str, mode: Mode) -> Result<Server, String> {
    let bcast = mode == Mode::Broadcast;
    let mut cmd = match server {
        "resound" => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_resound"));
            c.args([
                "serve",
                if bcast { "--broadcast" } else { "--echo" },
                "127.0.0.1:0",
            ]);
            c
        }
        "c" => Command::new(peers().join(if bcast { "c_bcast" } else { "c_echo" })),
        other => return Err(format!("unknown server {other}")),
    };
    if server == "c" {
        cmd.arg("127.0.0.1:0");
    }
    cmd.env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: sched_setaffinity is a plain system call, safe between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(SERVER_CPU, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {server}: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.starts_with("listening") && line.contains(" tcp ") => {
                let addr = line.split_whitespace().nth(3).and_then(|a| a.parse().ok());
                let addr = addr.ok_or_else(|| format!("bad listening line {line:?}"))?;
                return Ok(Server { child, addr });
            }
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let out = child
                    .wait_with_output()
                    .map(|o| o.stderr)
                    .unwrap_or_default();
                let stderr = String::from_utf8_lossy(&out);
                let why = stderr
                    .lines()
                    .find(|l| l.contains("error"))
                    .or(stderr.lines().last())
                    .unwrap_or("no output");
                let hint = if server == "resound" && bcast {
                    " (this resound has no --broadcast service yet)"
                } else {
                    ""
                };
                return Err(format!("{server} did not start: {why}{hint}"));
            }
        }
    }
}

/// One measurement, from either load generator.
#[derive(Clone, Default)]
struct Figures {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_us_per_op: f64,
    rss_per_conn: f64,
    errors: f64,
    loader_pct: f64,
    other_pct: f64,
    json: String,
}

fn with_resound_bench(s: &Scenario, server: &Server, secs: f64) -> Figures {
    let mut plan = Plan::new(s.mode, server.addr);
    plan.connections = s.connections;
    plan.size = s.size;
    plan.pipeline = s.pipeline;
    plan.duration = Duration::from_secs_f64(secs);
    plan.pid = Some(server.child.id());
    plan.cpu = Some(SERVER_CPU);
    plan.quiet = true;
    plan.per_second_latency = false; // as measured before the series existed
    plan.label = s.name.into();
    let r: Report = bench::run(&plan).expect("bench runs");
    let sv = r.server.unwrap_or_default();
    Figures {
        rate: r.throughput_per_sec,
        p50: r.latency.p50 as f64,
        p99: r.latency.p99 as f64,
        cpu_us_per_op: sv.cpu_s_per_million.unwrap_or(f64::NAN),
        rss_per_conn: sv.rss_per_conn_b.unwrap_or(f64::NAN),
        errors: r.errors.total() as f64,
        loader_pct: r.usage.loader_cpu_pct,
        other_pct: r.usage.other_cpu_pct.unwrap_or(f64::NAN),
        json: r.json(),
    }
}

/// The same scenario with the independent C loader, for a side-by-side.
fn with_loadgen(s: &Scenario, server: &Server, secs: f64) -> Option<Figures> {
    let bin = peers().join("loadgen");
    if !bin.exists() {
        return None;
    }
    let mode = match s.mode {
        Mode::Echo => "echo",
        Mode::Broadcast => "bcast",
        Mode::Connect => "connect",
        Mode::Idle => "idle",
        Mode::Udp => return None,
    };
    let mut cmd = Command::new(bin);
    cmd.args([
        mode,
        "-a",
        &server.addr.to_string(),
        "-c",
        &s.connections.to_string(),
    ])
    .args(["-s", &s.size.to_string(), "-d", &secs.to_string()])
    .args([
        "--pid",
        &server.child.id().to_string(),
        "--cpu",
        &SERVER_CPU.to_string(),
        "--json",
    ]);
    match s.mode {
        Mode::Echo => {
            cmd.args(["-p", &s.pipeline.to_string()]);
        }
        Mode::Broadcast => {
            cmd.args(["-k", "1", "-W", "64"]);
        }
        _ => {}
    }
    let out = cmd.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text.lines().find(|l| l.starts_with('{'))?.to_string();
    let num = |key: &str| -> f64 {
        let pat = format!("\"{key}\":");
        json.find(&pat)
            .and_then(|i| {
                let rest = &json[i + pat.len()..];
                let end = rest.find([',', '}']).unwrap_or(rest.len());
                rest[..end].parse().ok()
            })
            .filter(|v: &f64| *v >= 0.0)
            .unwrap_or(f64::NAN)
    };
    let rate = if s.mode == Mode::Idle {
        f64::NAN
    } else {
        num("rate")
    };
    Some(Figures {
        rate,
        p50: num("p50_us"),
        p99: num("p99_us"),
        cpu_us_per_op: num("server_cpu_s_per_M"),
        rss_per_conn: num("rss_per_conn_b"),
        errors: num("errors"),
        loader_pct: num("loader_cpu_pct"),
        other_pct: num("other_cpu_pct"),
        json,
    })
}

/// Wait (at most 30 s) until the machine is quiet: other processes busy under 10 % of one CPU
/// (user and system time: a neighbour's loopback load test is mostly kernel time) over half a
/// second, while nothing of ours runs. Returns false if it never was; the run goes ahead and its
/// `other CPU` column shows the disturbance.
fn wait_for_quiet() -> bool {
    let hz = procfs::ticks_per_sec();
    for _ in 0..60 {
        let a = procfs::sample_cpu(None);
        thread::sleep(Duration::from_millis(500));
        let b = procfs::sample_cpu(None);
        match a.zip(b) {
            Some((a, b)) if ((b.busy - a.busy) as f64 / hz) / 0.5 < 0.10 => return true,
            Some(_) => {}
            None => return true, // no /proc/stat: nothing to wait for
        }
    }
    false
}

/// The interference cell, starred when the run was disturbed.
fn disturbed(other_pct: f64) -> String {
    let star = if other_pct > 10.0 { " *" } else { "" };
    format!("{}{star}", cell(other_pct, 1))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn medians(runs: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
    Figures {
        rate: m(|f| f.rate),
        p50: m(|f| f.p50),
        p99: m(|f| f.p99),
        cpu_us_per_op: m(|f| f.cpu_us_per_op),
        rss_per_conn: m(|f| f.rss_per_conn),
        errors: runs.iter().map(|f| f.errors).sum(),
        loader_pct: m(|f| f.loader_pct),
        other_pct: m(|f| f.other_pct),
        json: String::new(),
    }
}

fn cell(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if decimals == 0 && v >= 10_000.0 {
        return format!("{:.1}k", v / 1000.0);
    }
    format!("{v:.decimals$}")
}

/// `cluster`: the scaling-out scenarios. They start several servers and a Redis at once, so
/// `benches/cluster.sh` runs them (the same script by hand or here), with this build's binary.
/// Whether the script succeeded.
fn run_cluster(o: &Options) -> bool {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/cluster.sh");
    let status = Command::new("bash")
        .arg(script)
        .args([o.secs.to_string(), o.repeat.to_string()])
        .env("BIN", env!("CARGO_BIN_EXE_resound"))
        .status();
    match status {
        Ok(status) if status.success() => true,
        Ok(status) => {
            eprintln!("cluster: benches/cluster.sh failed ({status})");
            false
        }
        Err(e) => {
            eprintln!("cluster: cannot run benches/cluster.sh: {e}");
            false
        }
    }
}

/// The scenarios named on the command line (all of them if none is named), in table order.
/// A name that is no scenario is said on stderr: `cargo bench NAME` passes its filter to every
/// bench target, so it is not an error here, but it must not pass for a scenario run.
fn choose(only: &[String]) -> Vec<&'static Scenario> {
    for name in only {
        if !SCENARIOS.iter().any(|s| s.name == *name) {
            eprintln!("no scenario is named {name:?}");
        }
    }
    SCENARIOS
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|n| n == s.name))
        .collect()
}

/// Pin this process (the load generator) to its CPU if there is a second one; how many CPUs
/// there are.
fn pin_load() -> usize {
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cpus > LOAD_CPU {
        pin_self(LOAD_CPU);
    } else {
        eprintln!("only one CPU: server and load share it; rates mean little");
    }
    cpus
}

/// One row of the table: a scenario on one server with one load generator, and the medians of
/// its runs (`None`: skipped, and why was said on stderr).
struct Row {
    scenario: &'static Scenario,
    server: String,
    loader: &'static str,
    medians: Option<Figures>,
}

/// Every chosen scenario on every server with every loader, `o.repeat` times each, on a fresh
/// server each time. The rows of the table; each run's JSON is pushed onto `json`.
fn measure_all(o: &Options, chosen: &[&'static Scenario], json: &mut Vec<String>) -> Vec<Row> {
    let loaders: &[&'static str] = if o.loadgen {
        &["resound-bench", "loadgen"]
    } else {
        &["resound-bench"]
    };
    let mut rows = Vec::new();
    for &s in chosen {
        for server in &o.servers {
            for &loader in loaders {
                let medians = measure(o, s, server, loader, json);
                rows.push(Row {
                    scenario: s,
                    server: server.clone(),
                    loader,
                    medians,
                });
            }
        }
    }
    rows
}

/// One row: `o.repeat` runs of scenario `s` on `server` with `loader`, each printed on stderr
/// and its JSON pushed onto `json`; their medians, or `None` if it could not run at all.
fn measure(
    o: &Options,
    s: &Scenario,
    server: &str,
    loader: &str,
    json: &mut Vec<String>,
) -> Option<Figures> {
    let mut runs = Vec::new();
    let mut skipped = None;
    for _ in 0..o.repeat {
        if !wait_for_quiet() {
            eprintln!("machine busy for 30 s (other processes' CPU > 10 %): measuring anyway");
        }
        let srv = match start_server(server, s.mode) {
            Ok(srv) => srv,
            Err(why) => {
                skipped = Some(why);
                break;
            }
        };
        let f = match loader {
            "loadgen" => match with_loadgen(s, &srv, o.secs) {
                Some(f) => f,
                None => {
                    skipped = Some("loadgen is not built or failed".into());
                    break;
                }
            },
            _ => with_resound_bench(s, &srv, o.secs),
        };
        eprintln!(
            "{:<10} {:<8} {:<13} {:>10}/s  p99 {:>6} µs  server {:>7} µs/op  errors {}",
            s.name,
            server,
            loader,
            cell(f.rate, 0),
            cell(f.p99, 0),
            cell(f.cpu_us_per_op, 3),
            f.errors
        );
        json.push(format!(
            "{{\"scenario\":\"{}\",\"server\":\"{server}\",\"loader\":\"{loader}\",\"report\":{}}}",
            s.name, f.json
        ));
        runs.push(f);
    }
    match skipped {
        Some(why) if runs.is_empty() => {
            eprintln!("{:<10} {:<8} {:<13} skipped: {why}", s.name, server, loader);
            None
        }
        _ => Some(medians(&runs)),
    }
}

/// The table of medians on stdout, then what each chosen scenario is.
fn print_table(o: &Options, rows: &[Row], chosen: &[&Scenario]) {
    println!();
    println!(
        "medians of {} run(s), {} s each; server pinned to CPU {SERVER_CPU}, load to CPU {LOAD_CPU}",
        o.repeat, o.secs
    );
    println!("(* = median run disturbed: other processes used over 10 % of a CPU)");
    println!(
        "| scenario | server | loader | ops/s | p50 µs | p99 µs | server CPU µs/op | server RSS B/conn | errors | loader CPU % | other CPU % |"
    );
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for Row {
        scenario: s,
        server,
        loader,
        medians,
    } in rows
    {
        match medians {
            None => println!(
                "| {} | {server} | {loader} | skipped | | | | | | | |",
                s.name
            ),
            Some(f) => println!(
                "| {} | {server} | {loader} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.name,
                cell(f.rate, 0),
                cell(f.p50, 0),
                cell(f.p99, 0),
                cell(f.cpu_us_per_op, 3),
                if s.mode == Mode::Idle {
                    cell(f.rss_per_conn, 0)
                } else {
                    "-".into()
                },
                f.errors,
                cell(f.loader_pct, 0),
                disturbed(f.other_pct)
            ),
        }
    }
    println!();
    for s in chosen {
        println!("  {:<10} {}", s.name, s.what);
    }
}

/// Every run's JSON into `target/bench-results.json` (or under `CARGO_TARGET_DIR`).
fn write_results(cpus: usize, o: &Options, json: &[String]) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = target.join("bench-results.json");
    let body = format!(
        "{{\"cpus\":{cpus},\"repeat\":{},\"secs\":{},\"runs\":[\n{}\n]}}\n",
        o.repeat,
        o.secs,
        json.join(",\n")
    );
    match std::fs::write(&path, body) {
        Ok(()) => println!("\nevery run: {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

/// `cluster` (when named) runs first, through its script; then the chosen scenarios are
/// measured, tabled and written out. Nothing is written when no scenario was chosen (only
/// `cluster`, or only names that are no scenario): an earlier run's results stay. Exit status
/// 1 when `cluster.sh` failed.
fn main() -> ExitCode {
    let mut o = options();
    let asked = o.only.len();
    o.only.retain(|n| n != "cluster");
    let cluster_ok = o.only.len() == asked || run_cluster(&o);
    let status = if cluster_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if asked > 0 && o.only.is_empty() {
        return status;
    }
    let chosen = choose(&o.only);
    if chosen.is_empty() {
        eprintln!("no scenario chosen: nothing measured, nothing written");
        return status;
    }
    let cpus = pin_load();
    let mut json = Vec::new();
    let rows = measure_all(&o, &chosen, &mut json);
    print_table(&o, &rows, &chosen);
    write_results(cpus, &o, &json);
    status
}
