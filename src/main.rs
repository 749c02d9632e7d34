//! The `resound` binary: parse the command line, bind, print where we listen, run.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use resound::Server;
use resound::cli::{Cli, Command, SendArgs, ServeArgs};
use resound::send::{self, SendOptions, Source};

fn main() -> ExitCode {
    // Usage errors exit with status 2 inside `parse`, with clap's message on stderr.
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Send(args) => send(args),
        Command::Bench(args) => resound::bench::main(args),
    }
}

fn send(args: SendArgs) -> ExitCode {
    let source = if args.file.as_os_str() == "-" {
        Source::Stdin
    } else {
        Source::Path(&args.file)
    };
    let opts = SendOptions {
        source,
        to: args.to,
        name: args.name.as_deref(),
        timeout: (!args.timeout.is_zero()).then_some(args.timeout),
        progress: !args.quiet && send::stderr_is_terminal(),
        seed: args.seed,
        sendfile: args.sendfile.use_sendfile(args.to),
    };
    match send::send(&opts) {
        Ok(sent) => {
            println!("{sent}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("resound send: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    // A write past RLIMIT_FSIZE raises SIGXFSZ, whose default action kills the process. Ignored,
    // the write fails with EFBIG instead, and the one transfer that hit it is refused.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    // Fatal errors go to stderr directly, not through the logger: whatever RUST_LOG says
    // (off, a typo, a module filter), the reason a server did not start must be seen.
    let server = match Server::bind(args.into_config()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("resound serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Scripts and tests wait for these lines to learn the ports (port 0 = any free port).
    let mut stdout = std::io::stdout().lock();
    for bound in server.bound() {
        let _ = writeln!(stdout, "{bound}");
    }
    let _ = stdout.flush();
    drop(stdout);

    match server.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resound serve: event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
