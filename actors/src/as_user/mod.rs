//! Work inside a user's home, done *as that user*.
//!
//! The gateway runs as root and a user controls every name in their home: any component of
//! a path under it can become a symlink to `/etc`, another home or `state/` at any moment.
//! So nothing in a home is touched with root's authority. Each task below runs in a helper
//! process — the gateway's own executable started as `chamberlain __as-user` — that puts up
//! the user's walls (groups, gid, uid, parent-death signal, `no_new_privs`, the user's
//! Landlock ruleset; the same steps as their OpenCode) before it reads its task from stdin.
//! The kernel's own permission checks then decide what the task may touch, exactly as they
//! would for the user's shell: a planted symlink leads nowhere the user could not go anyway.
//!
//! Protocol: one JSON [`Task`] on stdin, one JSON [`Reply`] on stdout, exit 0. Anything
//! else (a crash, a signal from the user, garbage) is a [`TaskError::Helper`].
//!
//! Without walls (`--isolation none`) tasks may run in-process ([`Runner::in_process`]):
//! there the user's processes already have the gateway's authority.

mod tasks;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::isolation::ChildSandbox;
use crate::repos::RepoKind;

pub use tasks::{Project, MAX_PROJECTS};

/// The hidden subcommand of the gateway's executable that runs one task.
pub const HELPER_ARG: &str = "__as-user";
/// Most bytes of a reply read from a helper (a project list is the largest).
const MAX_REPLY: u64 = 8 << 20;
/// Most tasks one user may have running at once: a user can stall their own helpers
/// (stop them, feed them a FIFO), and must not tie up the gateway's threads doing so.
pub const MAX_TASKS_PER_USER: u32 = 4;
/// How long a clone may take; its temporary directory is a leftover once this old.
pub const CLONE_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// One piece of work in a home.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "camelCase")]
pub enum Task {
    /// The home's layout, `.gitconfig` unless the user has one, leftovers of interrupted
    /// clones swept, and what older versions left behind undone.
    Prepare {
        home: PathBuf,
        layout: Vec<String>,
        gitconfig: String,
        /// The organisation's auth file: a link to it in the home is an older version's.
        legacy_auth_target: PathBuf,
    },
    /// A copy of a shared repository at `workspace/target`, whole or not at all.
    Clone {
        source: PathBuf,
        kind: RepoKind,
        workspace: PathBuf,
        target: String,
    },
    /// The directories in a workspace.
    Projects { workspace: PathBuf },
    /// Bytes of files under a home (disk usage as the user sees it).
    Usage { home: PathBuf },
}

impl Task {
    /// How long the task may run before its helper (and all it started) is killed. A clone
    /// of a large repository takes long; nothing else should.
    pub fn deadline(&self) -> Duration {
        match self {
            Task::Clone { .. } => CLONE_DEADLINE,
            Task::Usage { .. } => Duration::from_secs(10 * 60),
            Task::Prepare { .. } | Task::Projects { .. } => Duration::from_secs(60),
        }
    }
}

/// What a task produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Done {
    Prepared,
    Cloned(PathBuf),
    Projects(Vec<Project>),
    Usage(u64),
}

/// Why a task failed, in a shape that crosses the process boundary.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "camelCase")]
pub enum TaskError {
    /// The target exists already.
    #[error("{0}")]
    Exists(String),
    /// Another server (a repository's upstream) failed.
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    Failed(String),
    /// The helper itself could not run or did not answer properly.
    #[error("working as the user failed: {0}")]
    Helper(String),
}

pub type Reply = Result<Done, TaskError>;

/// Starts tasks as users.
#[derive(Clone, Debug)]
pub struct Runner {
    /// The gateway's executable; `None` runs tasks in this process (no walls only).
    helper: Option<PathBuf>,
}

impl Runner {
    /// Tasks run in `helper` (the gateway's own executable) as the user.
    pub fn new(helper: PathBuf) -> Self {
        Runner {
            helper: Some(helper),
        }
    }

    /// Tasks run in this process, with this process's authority. Refused for a walled
    /// user (see [`Runner::run`]).
    pub fn in_process() -> Self {
        Runner { helper: None }
    }

    /// Runs `task` behind `walls`. Blocking: call it on the blocking pool. The helper runs
    /// in a session of its own and is killed with everything it started when the task's
    /// [`Task::deadline`] passes.
    pub fn run(&self, walls: &ChildSandbox, task: &Task) -> Reply {
        let Some(helper) = &self.helper else {
            if walls.is_walled() {
                return Err(TaskError::Helper(
                    "no helper executable to run as the user; refusing to work as the gateway"
                        .into(),
                ));
            }
            return tasks::execute(task);
        };
        let input = serde_json::to_vec(task)
            .map_err(|e| TaskError::Helper(format!("encoding the task: {e}")))?;
        let mut cmd = Command::new(helper);
        cmd.arg(HELPER_ARG)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let steps = walls.steps();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls; it does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                // Away from the gateway's terminal, and one process group to kill.
                nix::unistd::setsid()?;
                steps.before_uid_change()?;
                steps.change_uid()?;
                // After the uid change, which clears it. The forking thread waits for the
                // helper, so it outlives it.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                steps.restrict()
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| TaskError::Helper(format!("cannot start {}: {e}", helper.display())))?;
        let watchdog = Watchdog::start(child.id(), task.deadline());
        // The task is small; the helper reads all of it before it writes anything.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input);
        }
        let mut out = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = stdout.take(MAX_REPLY).read_to_end(&mut out);
        }
        let mut err = Vec::new();
        if let Some(stderr) = child.stderr.take() {
            let _ = stderr.take(4096).read_to_end(&mut err);
        }
        let status = child
            .wait()
            .map_err(|e| TaskError::Helper(format!("waiting for the helper: {e}")))?;
        if watchdog.finish() {
            return Err(TaskError::Helper(format!(
                "the task took longer than {}s and was ended",
                task.deadline().as_secs()
            )));
        }
        if !status.success() {
            let err = String::from_utf8_lossy(&err);
            return Err(TaskError::Helper(format!(
                "the helper {status}: {}",
                err.trim()
            )));
        }
        serde_json::from_slice::<Reply>(&out)
            .map_err(|e| TaskError::Helper(format!("unreadable answer from the helper: {e}")))?
    }
}

/// Kills a helper's process group when its deadline passes (the helper is a session
/// leader, so the group is it and everything it started that did not leave).
struct Watchdog {
    done: mpsc::Sender<()>,
    fired: std::thread::JoinHandle<bool>,
}

impl Watchdog {
    fn start(pid: u32, deadline: Duration) -> Self {
        let (done, finished) = mpsc::channel::<()>();
        let fired = std::thread::spawn(move || match finished.recv_timeout(deadline) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let group = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                tracing::warn!(
                    pid,
                    deadline_s = deadline.as_secs(),
                    "a task in a home ran past its deadline and was killed"
                );
                true
            }
            _ => false,
        });
        Watchdog { done, fired }
    }

    /// Stops the watchdog; whether it had killed the helper.
    fn finish(self) -> bool {
        let _ = self.done.send(());
        self.fired.join().unwrap_or(false)
    }
}

/// The helper's side: one task from stdin, its reply on stdout. Called by the gateway's
/// `main` for [`HELPER_ARG`], already behind the user's walls. Returns the exit code.
pub fn serve_helper() -> i32 {
    // Not dumpable: the user's other processes may not attach to it (it has nothing of
    // theirs to gain, but nothing to offer either).
    let _ = nix::sys::prctl::set_dumpable(false);
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().take(1 << 20).read_to_end(&mut input) {
        eprintln!("reading the task: {e}");
        return 2;
    }
    let reply: Reply = match serde_json::from_slice::<Task>(&input) {
        Ok(task) => tasks::execute(&task),
        Err(e) => {
            eprintln!("unreadable task: {e}");
            return 2;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match serde_json::to_writer(&mut stdout, &reply) {
        Ok(()) if stdout.flush().is_ok() => 0,
        _ => 1,
    }
}
