//! Container processes: started from one long-lived spawner thread, each in a session (and
//! so a process group) of its own, with `PR_SET_PDEATHSIG` SIGKILL so none outlives the fake.
//!
//! The death signal fires when the *thread* that forked exits, which is why every fork
//! happens on the spawner thread and never on a runtime's worker. Credentials (groups, gid,
//! uid) are changed in the child before exec, and the death signal is set after them because
//! a credential change clears it.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Gid, Pid, Uid};
use tokio::sync::oneshot;

/// What to run, fully resolved (paths already rewritten to host paths).
#[derive(Debug, Clone, Default)]
pub struct ProcSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub groups: Vec<u32>,
    /// Where stdout and stderr go (appended); `None` discards them.
    pub log: Option<PathBuf>,
}

pub struct Running {
    pub pid: i32,
    pub exit: oneshot::Receiver<ExitStatus>,
}

type Request = (ProcSpec, oneshot::Sender<std::io::Result<Running>>);

#[derive(Clone)]
pub struct Spawner {
    tx: mpsc::Sender<Request>,
    live: Arc<Mutex<HashSet<i32>>>,
}

fn command(spec: &ProcSpec) -> std::io::Result<Command> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear().envs(spec.env.iter().cloned());
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let (out, err) = match &spec.log {
        Some(path) => {
            let file = File::options().create(true).append(true).open(path)?;
            (Stdio::from(file.try_clone()?), Stdio::from(file))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let (uid, gid, groups) = (spec.uid, spec.gid, spec.groups.clone());
    let change_user = uid.is_some_and(|u| u != Uid::effective().as_raw())
        || gid.is_some_and(|g| g != Gid::effective().as_raw())
        || !groups.is_empty();
    // SAFETY: between fork and exec this only makes async-signal-safe system calls (no
    // allocation: `groups` was built before the fork).
    unsafe {
        let gids: Vec<Gid> = groups.iter().copied().map(Gid::from_raw).collect();
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if change_user {
                nix::unistd::setgroups(&gids)?;
                if let Some(g) = gid.or(uid) {
                    nix::unistd::setgid(Gid::from_raw(g))?;
                }
                if let Some(u) = uid {
                    nix::unistd::setuid(Uid::from_raw(u))?;
                }
            }
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            Ok(())
        });
    }
    Ok(cmd)
}

impl Spawner {
    /// Starts the spawner thread; it lives as long as the process.
    pub fn start() -> Spawner {
        let (tx, rx) = mpsc::channel::<Request>();
        let live = Arc::new(Mutex::new(HashSet::new()));
        let registry = live.clone();
        let spawned = std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for (spec, reply) in rx {
                    let _ = reply.send(spawn_here(&spec, &registry));
                }
                // Every sender is gone only at exit; parking keeps the children's parent
                // thread alive until the process itself ends.
                loop {
                    std::thread::park();
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the spawner thread: {e}");
        }
        Spawner { tx, live }
    }

    pub async fn spawn(&self, spec: ProcSpec) -> std::io::Result<Running> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((spec, reply))
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
        answer
            .await
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?
    }

    /// SIGKILLs every process group started and waits (up to `patience`) for them to exit.
    pub fn kill_all(&self, patience: Duration) {
        let pids: Vec<i32> = self
            .live
            .lock()
            .map(|l| l.iter().copied().collect())
            .unwrap_or_default();
        for pid in pids {
            signal_group(pid, Signal::SIGKILL);
        }
        let until = std::time::Instant::now() + patience;
        while std::time::Instant::now() < until {
            if self.live.lock().map(|l| l.is_empty()).unwrap_or(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn spawn_here(spec: &ProcSpec, live: &Arc<Mutex<HashSet<i32>>>) -> std::io::Result<Running> {
    let mut child = command(spec)?.spawn()?;
    let pid = child.id() as i32;
    if let Ok(mut l) = live.lock() {
        l.insert(pid);
    }
    let (tx, exit) = oneshot::channel();
    let live = live.clone();
    // Reaping blocks, so each child gets a small waiter thread (waitpid works from any thread).
    std::thread::Builder::new()
        .name(format!("wait-{pid}"))
        .spawn(move || {
            let status = child
                .wait()
                .unwrap_or_else(|_| ExitStatus::from_raw(0xff00));
            // The container's other processes die with its main one, as in a pid namespace.
            signal_group(pid, Signal::SIGKILL);
            if let Ok(mut l) = live.lock() {
                l.remove(&pid);
            }
            let _ = tx.send(status);
        })?;
    Ok(Running { pid, exit })
}

/// Signals a whole process group; a group already gone is not an error.
pub fn signal_group(pgid: i32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// Kubernetes' exit code for a status: the code, or 128 + the signal.
pub fn exit_code(status: &ExitStatus) -> (i32, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (255, None),
    }
}
