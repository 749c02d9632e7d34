//! The command line contract: usage errors exit 2, the listening lines, defaults, stats.

mod util;

use std::io::{Read, Write};

use util::*;

/// Every usage error is a clear message on stderr and exit status 2.
#[test]
fn bad_flags_exit_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--bogus"], "--bogus"),
        (&["serve", "--echo", "nonsense"], "nonsense"),
        (&["serve", "--echo", "127.0.0.1"], "IP:PORT"),
        (&["serve", "--echo", "127.0.0.1:70000"], "70000"),
        (&["serve", "--max-buffer", "lots"], "lots"),
        (&["serve", "--max-buffer", "0"], "at least"),
        (&["serve", "--max-conns", "-3"], "-3"),
        (&["serve", "--idle-timeout", "-1"], "-1"),
        (&["serve", "--drain-timeout", "soon"], "soon"),
        (&["serve", "--header-timeout", "0"], "more than 0"),
        (&["send"], "FILE"),
        (&["send", "x", "--to", "nowhere"], "nowhere"),
        (&["frobnicate"], "frobnicate"),
        (&[], "Usage"),
    ];
    for (args, needle) in cases {
        let (status, stderr) = run_binary(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// `--help` documents every flag of `serve`.
#[test]
fn help_documents_every_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_resound"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--echo",
        "--broadcast",
        "--files",
        "--dir",
        "--max-file-size",
        "--header-timeout",
        "--transfer-timeout",
        "--max-line",
        "--bcast-hard-limit",
        "--bcast-soft-limit",
        "--bcast-soft-time",
        "--udp",
        "--max-conns",
        "--idle-timeout",
        "--max-buffer",
        "--drain-timeout",
        "--stats-interval",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// Port 0 resolves to a real port, printed as `listening <service> <proto> <ip:port>`, and the
/// printed addresses serve.
#[test]
fn listening_lines_name_each_bound_socket() {
    let dir = std::env::temp_dir().join(format!("resound-cli-{}", std::process::id()));
    let mut server = ServerProcess::start(
        &[
            "--echo",
            "127.0.0.1:0",
            "--broadcast",
            "127.0.0.1:0",
            "--files",
            "127.0.0.1:0",
            "--dir",
            dir.to_str().unwrap(),
            "--udp",
            "127.0.0.1:0",
        ],
        4,
    );
    let kinds: Vec<_> = server
        .bound
        .iter()
        .map(|(s, p, _)| format!("{s} {p}"))
        .collect();
    assert_eq!(kinds, ["echo tcp", "broadcast tcp", "files tcp", "udp udp"]);
    assert!(dir.join(".resound-partial").is_dir(), "--dir is created");
    assert!(server.bound.iter().all(|(_, _, a)| a.port() != 0));

    let mut c = connect(server.addr("echo"));
    c.write_all(b"ok").unwrap();
    let mut back = [0; 2];
    c.read_exact(&mut back).unwrap();
    drop(c);
    server.signal(libc::SIGINT);
    assert!(server.wait().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A port that is taken is a clear error and exit status 1 (not a usage error).
#[test]
fn address_in_use_exits_1_naming_the_socket() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, stderr) = run_binary(&["serve", "--echo", &addr]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot bind echo tcp {addr}")),
        "{stderr}"
    );
}

/// `--stats-interval` logs the stats line, with connections per phase and byte counts.
#[test]
fn stats_interval_logs_phases_and_counters() {
    let server = ServerProcess::start(&["--echo", "127.0.0.1:0", "--stats-interval", "0.1"], 1);
    let mut c = connect(server.addr("echo"));
    c.write_all(b"12345").unwrap();
    let mut back = [0; 5];
    c.read_exact(&mut back).unwrap();
    // The first line after our bytes were echoed shows them.
    let line = loop {
        let line = server.wait_for_log("stats:");
        if stat(&line, "bytes_out") == 5 {
            break line;
        }
    };
    assert_eq!(stat(&line, "ESTABLISHED"), 1);
    assert_eq!(stat(&line, "conns"), 1);
    assert_eq!(stat(&line, "bytes_in"), 5);
}

/// A fatal error reaches stderr in the one style whatever RUST_LOG says: logging off, or a
/// filter that names no module of ours.
#[test]
fn fatal_errors_reach_stderr_whatever_rust_log_says() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for filter in ["off", "bogus"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_resound"))
            .args(["serve", "--echo", &addr])
            .env("RUST_LOG", filter)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with(&format!("resound serve: cannot bind echo tcp {addr}: ")),
            "RUST_LOG={filter}: {stderr}"
        );
    }
}

/// The start-up line names the version, the services and the effective limits; a
/// `--max-conns` beyond what the descriptor limit allows is said so.
#[test]
fn startup_line_shows_the_effective_limits_and_warns_when_beyond_the_system() {
    let server = ServerProcess::start(&["--echo", "127.0.0.1:0", "--max-conns", "100m"], 1);
    let line = server.wait_for_log("resound 0.1.0");
    let addr = server.addr("echo");
    assert!(line.contains(&format!("serving echo tcp {addr}")), "{line}");
    for limit in ["max conns ", "fd limit ", "listen backlog ", "max memory "] {
        assert!(line.contains(limit), "no {limit:?} in {line}");
    }
    let warning = server.wait_for_log("--max-conns");
    assert!(warning.contains("clients will be served"), "{warning}");
}
