//! `chamberlain`: a multi-user gateway for OpenCode. See README.md and ARCHITECTURE.md.

use std::process::ExitCode;

use chamberlain::{cli, data_dir, logging, server};
use chamberlain_actors::as_user;
use clap::Parser;

fn main() -> ExitCode {
    // Work in a user's home, started by the gateway behind that user's walls (see
    // `chamberlain_actors::as_user`); not a command for people.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(as_user::HELPER_ARG)) {
        return ExitCode::from(as_user::serve_helper() as u8);
    }
    // What the gateway's binary does inside a user's pod (see `chamberlain_kubernetes::in_pod`).
    if let Some(code) = in_pod() {
        return code;
    }
    let args = match cli::Cli::parse().command {
        cli::Command::Serve(args) => args,
        cli::Command::PrepareData(args) => return prepare_data(&args),
    };
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

/// `prepare-data`: one line on stderr when users cannot get uids here, the reason when the
/// data directory cannot be prepared.
fn prepare_data(args: &cli::PrepareDataArgs) -> ExitCode {
    match data_dir::prepare(&args.data_dir, args.uid_range) {
        Ok(data_dir::Prepared::Secured) => ExitCode::SUCCESS,
        Ok(data_dir::Prepared::DirectoriesOnly { uid }) => {
            eprintln!(
                "chamberlain: running as uid {uid}, not root: users cannot get their own uids \
                 (Landlock only); the data directory's owners and modes are left as they are"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chamberlain: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `__prepare-home <dir>` (a pod's init container) and `__probe-opencode` (its readiness
/// probe); `None` for every other command line.
fn in_pod() -> Option<ExitCode> {
    use chamberlain_kubernetes::in_pod;
    let mut args = std::env::args_os().skip(1);
    let command = args.next()?;
    let result = match command.to_str()? {
        "__prepare-home" => {
            let home = std::path::PathBuf::from(args.next()?);
            in_pod::prepare_home(&home).map_err(|e| e.to_string())
        }
        "__probe-opencode" => {
            in_pod::probe_opencode(std::time::Duration::from_secs(2)).map_err(|e| e.to_string())
        }
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chamberlain: {e}");
            ExitCode::FAILURE
        }
    })
}
