//! One `chamberlain serve` process started by a test or a benchmark: its command line, its
//! log, the wait for the addresses it listens on, and its end when it is dropped.
//!
//! Included with `#[path]` by `tests/e2e` and by `bench/` (two crates that start the same
//! binary the same way), so it needs nothing but std and nix. Deciding what the gateway
//! serves (the arguments) and what the caller does with it are not its job.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a gateway may take to say where it listens, or to exit once asked to. Generous:
/// on a loaded 2-core machine a start takes seconds, and only a broken gateway waits it out.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Where a process's gateways take their uids from. A gateway ends every process of the
/// uids it gives out, so concurrent gateways on one host (tests of one run, two checkouts,
/// a benchmark beside a test run) must never share any: each takes the next 100 from a
/// base of its own kind, which `variable` can move.
pub struct UidBlock {
    pub variable: &'static str,
    pub default: u32,
}

impl UidBlock {
    /// The first uid of the block.
    pub fn base(&self) -> u32 {
        std::env::var(self.variable)
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(self.default)
    }

    /// `--uid-range` for the next gateway of this process.
    fn next_range(&self) -> [String; 2] {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let first = self.base() + NEXT.fetch_add(1, Ordering::SeqCst) * 100;
        ["--uid-range".to_owned(), format!("{first}-{}", first + 99)]
    }
}

/// `gateway serve --data-dir data --opencode-bin opencode args…`, plus whatever `args` leave
/// out of: loopback listeners on free ports, uids of its own from `uids`, and
/// `--system-accounts=off` (the host's /etc is shared by every gateway of a run). Returns
/// the command and the arguments it added, which a restart on the same data repeats.
pub fn serve_command(
    gateway: &Path,
    opencode: &Path,
    data: &Path,
    args: &[&str],
    uids: &UidBlock,
) -> (Command, Vec<String>) {
    let mut added = Vec::new();
    for (flag, value) in [
        ("--listen", "127.0.0.1:0"),
        ("--admin-listen", "127.0.0.1:0"),
    ] {
        if !args.contains(&flag) {
            added.extend([flag.to_owned(), value.to_owned()]);
        }
    }
    if !args.contains(&"--uid-range") {
        added.extend(uids.next_range());
    }
    if !args.iter().any(|a| a.starts_with("--system-accounts")) {
        added.push("--system-accounts=off".to_owned());
    }
    let mut command = Command::new(gateway);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .arg("--opencode-bin")
        .arg(opencode)
        .args(&added)
        .args(args);
    (command, added)
}

/// Where a started gateway listens, as its start-up line says (`http://host:port`; the
/// admin listener `none` when it is off).
#[derive(Clone, Debug)]
pub struct Listening {
    pub public: String,
    pub admin: String,
}

/// A running gateway: ended with SIGTERM when dropped (it stops its instances first), and
/// with SIGKILL if it has not exited within [`PATIENCE`], so that neither a failed test nor
/// a failed benchmark leaves it running.
pub struct GatewayProcess {
    child: Child,
    exited: Option<ExitStatus>,
    log: Arc<Mutex<String>>,
    listening: mpsc::Receiver<Listening>,
    reader: Option<JoinHandle<()>>,
}

impl GatewayProcess {
    /// Spawns `command` (from [`serve_command`]) with its standard error read into the log.
    pub fn spawn(mut command: Command) -> std::io::Result<GatewayProcess> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("no standard error to read"));
        };
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, listening) = mpsc::channel();
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || read_log(stderr, &sink, &tx));
        Ok(GatewayProcess {
            child,
            exited: None,
            log,
            listening,
            reader: Some(reader),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it has written to standard error so far, a moment behind it.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits for its start-up line; `Err` carries the log when it never comes (it exited,
    /// or not within `within`).
    pub fn wait_listening(&mut self, within: Duration) -> Result<Listening, String> {
        match self.listening.recv_timeout(within) {
            Ok(listening) => Ok(listening),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "the gateway did not start within {within:?}; log:\n{}",
                self.log()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(format!(
                "the gateway exited before it listened; log:\n{}",
                self.finished_log()
            )),
        }
    }

    /// Whether it has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited.is_some()
    }

    /// Waits up to `within` for it to exit on its own; `Err` carries the log if it does not
    /// (it is then killed).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited {
                return Ok(status);
            }
            match self.child.try_wait() {
                Ok(Some(status)) => self.exited = Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    self.kill();
                    return Err(format!(
                        "the gateway did not exit within {within:?}; log:\n{}",
                        self.log()
                    ));
                }
                Err(e) => return Err(format!("waiting for the gateway: {e}")),
            }
        }
    }

    /// Sends `signal` and waits for it to exit, as [`GatewayProcess::wait_exit`] does.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
        within: Duration,
    ) -> Result<ExitStatus, String> {
        if !self.has_exited() {
            let _ = nix::sys::signal::kill(self.nix_pid(), signal);
        }
        self.wait_exit(within)
    }

    /// Its whole log, once it has exited and the reader has seen the end of its output.
    pub fn finished_log(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.log()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    fn nix_pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // A failing test shows what the gateway said (the harness prints a failed test's
        // output, and only a failed test's).
        if std::thread::panicking() {
            eprintln!("--- the gateway's log ---\n{}", self.log());
        }
        if self
            .signal_and_wait(nix::sys::signal::Signal::SIGTERM, PATIENCE)
            .is_err()
        {
            self.kill();
        }
    }
}

/// Appends every line of `stderr` to `log` (bytes that are not UTF-8 replaced, so an odd
/// line never stops the reading and blocks the gateway on a full pipe) and sends the
/// addresses of the start-up line.
fn read_log(stderr: impl Read, log: &Mutex<String>, listening: &mpsc::Sender<Listening>) {
    let mut stderr = BufReader::new(stderr);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match stderr.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches('\n');
        if line.contains("chamberlain listening") {
            if let (Some(public), Some(admin)) = (field(line, "public="), field(line, "admin=")) {
                let _ = listening.send(Listening {
                    public: public.to_owned(),
                    admin: admin.to_owned(),
                });
            }
        }
        if let Ok(mut log) = log.lock() {
            log.push_str(line);
            log.push('\n');
        }
    }
}

/// The value of `name` (e.g. `pid=`) in a log line: up to the next white space.
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(name)? + name.len();
    line[start..].split_whitespace().next()
}
