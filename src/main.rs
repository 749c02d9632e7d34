//! The `resound` binary: parse the command line, bind, print where we listen, run.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use log::error;
use resound::Server;
use resound::cli::{Cli, Command, ServeArgs};

fn main() -> ExitCode {
    // Usage errors exit with status 2 inside `parse`, with clap's message on stderr.
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench(args) => resound::bench::main(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let server = match Server::bind(args.into_config()) {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
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
            error!("event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
