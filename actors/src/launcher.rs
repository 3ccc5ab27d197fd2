//! Launching one `opencode serve` child for a user, and the plumbing around it: its
//! environment, its process group, its output, and signalling it.
//!
//! The instance's state machine never calls this directly: it acts through
//! `instance::Backend`, whose local implementation uses it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use crate::isolation::ChildSandbox;
use crate::workspace::Workspace;

/// `chdir` between fork and exec: a system call on a path made before the fork.
pub(crate) fn change_dir(path: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: chdir on a valid NUL-terminated string; no allocation.
    if unsafe { nix::libc::chdir(path.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gateway environment variables a child may inherit. Everything else (cloud credentials,
/// the gateway's own configuration) is withheld.
pub const DEFAULT_ENV_ALLOW: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TERM",
    "SHELL",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
];

/// Set in every child to a value unique to that start; inherited by everything the child
/// starts, so the gateway can find it all again when stopping (see `proctree`).
pub const MARKER_VAR: &str = "GATEWAY_INSTANCE_ID";

const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The user name OpenCode expects with `OPENCODE_SERVER_PASSWORD`.
pub const BASIC_AUTH_USER: &str = "opencode";
const MAX_LINE: usize = 4096;
const STDERR_TAIL_LINES: usize = 20;

/// Bun's name for the RAM size JavaScriptCore's heap heuristics assume.
pub const GC_RAM_VAR: &str = "BUN_JSC_forceRAMSize";

#[derive(Clone, Debug)]
pub struct LaunchConfig {
    pub program: PathBuf,
    pub extra_args: Vec<String>,
    pub env_allow: Vec<String>,
    /// The memory OpenCode's garbage collector plans for (`BUN_JSC_forceRAMSize`), if not the
    /// machine's: with the machine's, each of many instances grows its heap as if it were
    /// alone on the host.
    pub gc_ram: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("started {program} but it has no pid")]
    NoPid { program: String },
    #[error("no random source for the instance password: {0}")]
    Random(String),
}

/// What differs between two launches: whose workspace, which password.
pub struct ChildSpec<'a> {
    pub workspace: &'a Workspace,
    pub password: &'a str,
    /// Login name for USER/LOGNAME.
    pub account: &'a str,
    /// Additional variables for this child only (e.g. the user's git identity).
    pub extra_env: &'a [(String, String)],
    /// The walls the child puts up between fork and exec (uid, limits, Landlock).
    pub sandbox: Option<&'a ChildSandbox>,
}

pub struct Launched {
    /// The child's pid, which is also its process-group and session id.
    pub pid: Pid,
    pub child: Child,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

pub struct Launcher {
    cfg: LaunchConfig,
    inherited: Vec<(String, OsString)>,
}

impl Launcher {
    /// Takes the allowed variables from the gateway's environment once, at start-up.
    pub fn new(cfg: LaunchConfig) -> Self {
        let inherited = cfg
            .env_allow
            .iter()
            .filter_map(|name| std::env::var_os(name).map(|v| (name.clone(), v)))
            .collect();
        Self { cfg, inherited }
    }

    pub fn program(&self) -> &PathBuf {
        &self.cfg.program
    }

    pub fn arguments(&self) -> Vec<String> {
        let mut args: Vec<String> = ["serve", "--hostname", "127.0.0.1", "--port", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(self.cfg.extra_args.iter().cloned());
        args
    }

    /// The complete environment of a child: nothing else reaches it.
    pub fn environment(&self, spec: &ChildSpec<'_>) -> Vec<(OsString, OsString)> {
        let ws = spec.workspace;
        let mut env: Vec<(OsString, OsString)> = self
            .inherited
            .iter()
            .map(|(k, v)| (k.into(), v.clone()))
            .collect();
        if !self.inherited.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), FALLBACK_PATH.into()));
        }
        let fixed: [(&str, OsString); 10] = [
            ("HOME", ws.home().into()),
            ("USER", spec.account.into()),
            ("LOGNAME", spec.account.into()),
            ("XDG_CONFIG_HOME", ws.config_dir().into()),
            ("XDG_DATA_HOME", ws.data_dir().into()),
            ("XDG_STATE_HOME", ws.state_dir().into()),
            ("XDG_CACHE_HOME", ws.cache_dir().into()),
            ("TMPDIR", ws.tmp_dir().into()),
            ("OPENCODE_SERVER_PASSWORD", spec.password.into()),
            // The gateway pins the OpenCode version; an instance must not replace itself.
            ("OPENCODE_DISABLE_AUTOUPDATE", "1".into()),
        ];
        env.extend(fixed.into_iter().map(|(k, v)| (k.into(), v)));
        if let Some(bytes) = self.cfg.gc_ram {
            env.push((GC_RAM_VAR.into(), bytes.to_string().into()));
        }
        env.extend(spec.extra_env.iter().map(|(k, v)| (k.into(), v.into())));
        env
    }

    /// Starts the child in its own session (so its process group can be signalled as one) with
    /// a parent-death signal (so a killed gateway does not leave it running).
    ///
    /// Must be called on a thread that lives as long as the gateway (an actor's arbiter): the
    /// kernel delivers the parent-death signal when the *thread* that forked the child exits.
    pub fn launch(&self, spec: &ChildSpec<'_>) -> Result<Launched, LaunchError> {
        let program = self.cfg.program.display().to_string();
        // The workspace is the user's: a link there must be followed with the user's
        // authority, so the child changes into it after it has dropped root (std's
        // `current_dir` would do it before `pre_exec`, as root).
        let workdir = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
            spec.workspace.workspace_dir().as_os_str(),
        ))
        .map_err(|e| LaunchError::Spawn {
            program: program.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let mut cmd = Command::new(&self.cfg.program);
        cmd.args(self.arguments())
            .env_clear()
            .envs(self.environment(spec))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let gateway = nix::unistd::getpid();
        let steps = spec.sandbox.map(ChildSandbox::steps);
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls; it does not allocate.
        unsafe {
            cmd.as_std_mut().pre_exec(move || {
                nix::unistd::setsid()?;
                if let Some(steps) = &steps {
                    steps.before_uid_change()?;
                    steps.change_uid()?;
                }
                change_dir(&workdir)?;
                // After the uid change, which clears it.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The gateway may have died between fork and prctl; then nobody would kill us.
                if nix::unistd::getppid() != gateway {
                    return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
                }
                if let Some(steps) = &steps {
                    steps.restrict()?;
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id().ok_or_else(|| LaunchError::NoPid {
            program: program.clone(),
        })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(LaunchError::NoPid { program });
        };
        Ok(Launched {
            pid: Pid::from_raw(pid as i32),
            child,
            stdout,
            stderr,
        })
    }
}

/// Sends `sig` to every process in the group led by `pgid`. A group that no longer exists is
/// not an error: there is nothing left to stop.
pub fn signal_group(pgid: Pid, sig: Signal) -> io::Result<()> {
    match signal::killpg(pgid, sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A fresh random password for one start of one instance.
pub fn generate_password() -> Result<String, LaunchError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| LaunchError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `Authorization` header value that opens an instance started with `password`.
pub fn basic_authorization(password: &str) -> String {
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_AUTH_USER}:{password}"));
    format!("Basic {token}")
}

/// Finds the address in OpenCode's `opencode server listening on http://127.0.0.1:PORT`.
/// Only loopback addresses are accepted: the gateway never proxies off the machine.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on ")?;
    let rest = rest.trim();
    let rest = rest.strip_prefix("http://").unwrap_or(rest);
    let authority = rest.split(|c: char| c == '/' || c.is_whitespace()).next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let ip: IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        other => other.parse().ok()?,
    };
    (ip.is_loopback() && port != 0).then_some(SocketAddr::new(ip, port))
}

/// The last lines a child wrote to stderr, for error messages when it fails.
#[derive(Clone, Debug, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    pub fn push(&self, line: String) {
        let Ok(mut lines) = self.0.lock() else { return };
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The tail joined into one string, or an empty string if the child wrote nothing.
    pub fn joined(&self) -> String {
        self.0
            .lock()
            .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// Reads one line of at most `MAX_LINE` bytes (the rest of a longer line is discarded).
/// Returns `None` at end of stream.
async fn read_bounded_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut saw_any = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(saw_any.then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        saw_any = true;
        let (take, consumed, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i, i + 1, true),
            None => (buf.len(), buf.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        reader.consume(consumed);
        if done {
            let text = String::from_utf8_lossy(&line);
            return Ok(Some(text.trim_end_matches('\r').to_owned()));
        }
    }
}

/// Drains a child's stdout; calls `on_listening` once with the address from the start line.
/// Keeps draining afterwards so the child never blocks on a full pipe.
pub async fn follow_stdout<R, F>(stdout: R, user: String, on_listening: F)
where
    R: AsyncRead + Unpin,
    F: FnOnce(SocketAddr),
{
    let mut reader = BufReader::new(stdout);
    let mut on_listening = Some(on_listening);
    while let Ok(Some(line)) = read_bounded_line(&mut reader).await {
        tracing::debug!(target: "opencode", user = %user, stream = "stdout", "{line}");
        if on_listening.is_some() {
            if let Some(addr) = parse_listening_line(&line) {
                if let Some(callback) = on_listening.take() {
                    callback(addr);
                }
            }
        }
    }
}

/// Drains a child's stderr into `tail` and the log.
pub async fn follow_stderr<R: AsyncRead + Unpin>(stderr: R, user: String, tail: StderrTail) {
    let mut reader = BufReader::new(stderr);
    while let Ok(Some(line)) = read_bounded_line(&mut reader).await {
        tracing::info!(target: "opencode", user = %user, stream = "stderr", "{line}");
        tail.push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::UsersRoot;

    #[test]
    fn parses_opencode_start_line() {
        assert_eq!(
            parse_listening_line("opencode server listening on http://127.0.0.1:4096"),
            Some("127.0.0.1:4096".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line("opencode server listening on http://localhost:39000/\r"),
            Some("127.0.0.1:39000".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line("listening on http://[::1]:8080"),
            Some("[::1]:8080".parse().unwrap())
        );
    }

    #[test]
    fn rejects_non_loopback_and_garbage() {
        for line in [
            "opencode server listening on http://10.0.0.1:4096",
            "opencode server listening on http://example.com:4096",
            "opencode server listening on http://127.0.0.1:0",
            "opencode server listening on http://127.0.0.1:notaport",
            "opencode server listening on",
            "some other output",
        ] {
            assert_eq!(parse_listening_line(line), None, "{line}");
        }
    }

    #[test]
    fn environment_is_cleared_down_to_the_allow_list() {
        let dir = tempfile::tempdir().unwrap();
        let ws = UsersRoot::new(dir.path()).workspace(&crate::workspace::UserKey::derive("al"));
        let launcher = Launcher {
            cfg: LaunchConfig {
                program: "opencode".into(),
                extra_args: vec!["--pure".into()],
                env_allow: vec!["PATH".into()],
                gc_ram: Some(1 << 30),
            },
            inherited: vec![("PATH".into(), "/usr/bin".into())],
        };
        let extra = vec![("GIT_AUTHOR_NAME".to_string(), "Al".to_string())];
        let env = launcher.environment(&ChildSpec {
            workspace: &ws,
            password: "pw",
            account: "al",
            extra_env: &extra,
            sandbox: None,
        });
        let get = |k: &str| {
            env.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("PATH").as_deref(), Some("/usr/bin"));
        assert_eq!(get("HOME"), Some(ws.home().display().to_string()));
        assert_eq!(get("TMPDIR"), Some(ws.tmp_dir().display().to_string()));
        assert_eq!(
            get("XDG_DATA_HOME"),
            Some(ws.data_dir().display().to_string())
        );
        assert_eq!(get("OPENCODE_SERVER_PASSWORD").as_deref(), Some("pw"));
        assert_eq!(get("GIT_AUTHOR_NAME").as_deref(), Some("Al"));
        assert_eq!(get("BUN_JSC_forceRAMSize").as_deref(), Some("1073741824"));
        // PATH, ten fixed variables, the GC's RAM, one extra: nothing else.
        assert_eq!(env.len(), 13);
        assert_eq!(
            launcher.arguments(),
            ["serve", "--hostname", "127.0.0.1", "--port", "0", "--pure"]
        );
    }

    #[test]
    fn passwords_are_fresh_and_long() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 48);
        assert_eq!(
            basic_authorization("pw"),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("opencode:pw")
            )
        );
    }

    #[tokio::test]
    async fn long_lines_are_truncated_not_buffered() {
        let mut input = vec![b'a'; MAX_LINE * 3];
        input.extend_from_slice(b"\nshort\r\nlast");
        let mut reader = BufReader::new(&input[..]);
        let first = read_bounded_line(&mut reader).await.unwrap().unwrap();
        assert_eq!(first.len(), MAX_LINE);
        assert_eq!(
            read_bounded_line(&mut reader).await.unwrap().unwrap(),
            "short"
        );
        assert_eq!(
            read_bounded_line(&mut reader).await.unwrap().unwrap(),
            "last"
        );
        assert_eq!(read_bounded_line(&mut reader).await.unwrap(), None);
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines() {
        let tail = StderrTail::default();
        for i in 0..50 {
            tail.push(format!("line {i}"));
        }
        let joined = tail.joined();
        assert!(joined.starts_with("line 30\n"));
        assert!(joined.ends_with("line 49"));
    }
}
