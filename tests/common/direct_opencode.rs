//! An OpenCode server started directly, not through a gateway, the way a gateway starts one
//! (loopback, a port of its own choosing, a password, a cleared environment and a home of
//! its own): what a test or a benchmark compares the gateway with.
//!
//! Included with `#[path]` by `tests/e2e` and by `bench/`, beside `process_group.rs`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::process_group::ProcessGroup;

pub struct DirectOpenCode {
    /// First, so that the server has ended before its home is removed.
    _process: ProcessGroup,
    pub addr: SocketAddr,
    password: String,
    _home: tempfile::TempDir,
}

impl DirectOpenCode {
    /// `program serve --hostname 127.0.0.1 --port 0 args…` in the `workspace` folder of a new
    /// home, with `password`; waits up to `within` for the line saying where it listens.
    pub fn start(
        program: &Path,
        args: &[&str],
        password: &str,
        within: Duration,
    ) -> Result<DirectOpenCode, String> {
        let home = tempfile::tempdir().map_err(|e| format!("a home: {e}"))?;
        let workspace = home.path().join("workspace");
        std::fs::create_dir_all(&workspace).map_err(|e| format!("a workspace: {e}"))?;
        let mut process = ProcessGroup::spawn(
            Command::new(program)
                .args(["serve", "--hostname", "127.0.0.1", "--port", "0"])
                .args(args)
                .current_dir(&workspace)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", home.path())
                .env("OPENCODE_SERVER_PASSWORD", password)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .map_err(|e| format!("start {}: {e}", program.display()))?;
        let stdout = process
            .child()
            .stdout
            .take()
            .ok_or("no standard output to read")?;
        let (tx, rx) = mpsc::channel();
        // Read to the end, so that the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().trim_end_matches('/').to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(within)
            .map_err(|_| format!("{} did not say where it listens", program.display()))?;
        let addr = addr
            .parse()
            .map_err(|e| format!("{} listens on {addr:?}: {e}", program.display()))?;
        Ok(DirectOpenCode {
            _process: process,
            addr,
            password: password.to_owned(),
            _home: home,
        })
    }

    /// The `Authorization` header it accepts.
    pub fn authorization(&self) -> String {
        use base64::Engine as _;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("opencode:{}", self.password));
        format!("Basic {token}")
    }
}
