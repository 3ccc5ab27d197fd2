//! `chamberlain`: a multi-user gateway for OpenCode. See README.md and ARCHITECTURE.md.

use std::process::ExitCode;

use chamberlain::{cli, logging, server};
use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let cli::Command::Serve(args) = cli.command;
    if let Err(e) = logging::init(args.log_format, &args.log) {
        eprintln!("chamberlain: {e:#}");
        return ExitCode::from(2);
    }
    let result = actix_web::rt::System::new().block_on(server::run(*args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("chamberlain: {e:#}");
            ExitCode::FAILURE
        }
    }
}
