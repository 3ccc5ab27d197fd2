//! The running OpenCode process of an instance: who it is, what it started, and signalling
//! all of it — its [`Custody`] for the state machine. The uid reaper itself lives in
//! `isolation::reaper`.

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt as _;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::backend::Custody;
use crate::isolation::reaper;
use crate::launcher::{self, StderrTail};
use crate::llm::GrantGuard;
use crate::procfs;
use crate::proctree::Descendants;

/// One spawned OpenCode process.
pub(super) struct Process {
    /// The user's id, for the log.
    pub(super) user: String,
    pub(super) pid: Pid,
    pub(super) stderr: StderrTail,
    pub(super) password: String,
    /// Processes below it last time we looked (terminal shells live outside its group).
    pub(super) descendants: Descendants,
    /// The user's own uid, when users have one: then every process of that uid is theirs.
    pub(super) uid: Option<u32>,
    /// The value of [`launcher::MARKER_VAR`] in this process's environment, which all it
    /// starts inherits.
    pub(super) marker: String,
    /// The host's OOM-kill count when it was spawned: a SIGKILL nobody here sent, with the
    /// count grown since, was the kernel's OOM killer.
    pub(super) host_oom_kills_at_spawn: Option<u64>,
    /// Its relay token, valid while this lives.
    pub(super) _grant: Option<GrantGuard>,
}

impl Process {
    /// Remembers processes started below OpenCode since the last look. Only meaningful while
    /// OpenCode itself is alive: once it exits, its orphans are no longer below it.
    fn look_for_descendants(&mut self) {
        self.descendants.merge(Descendants::of(self.pid));
    }

    /// When stopping: also everything that carries this process's marker, which finds
    /// what left the tree (a `setsid … &` whose parent exited). With a uid per user the
    /// uid finds everything; this is for the modes without one.
    fn look_for_everything(&mut self) {
        self.look_for_descendants();
        if self.uid.is_none() {
            self.descendants
                .merge(Descendants::marked(launcher::MARKER_VAR, &self.marker));
        }
    }

    /// Signals OpenCode's process group and every remembered descendant, and with a uid of
    /// the user's own, every process of that uid (off the actor thread).
    fn signal_all(&self, signal: Signal) {
        let user = &self.user;
        if let Err(e) = launcher::signal_group(self.pid, signal) {
            tracing::error!(user, pid = self.pid.as_raw(), %signal, error = %e, "cannot signal OpenCode");
        }
        self.descendants.signal(signal);
        if let Some(uid) = self.uid {
            let user = user.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = reaper::signal_uid(uid, signal) {
                    tracing::error!(user, uid, %signal, error = %e, "cannot signal the user's processes");
                }
            });
        }
    }
}

impl Custody for Process {
    fn pid(&self) -> Option<u32> {
        Some(self.pid.as_raw() as u32)
    }

    fn authorization(&self) -> String {
        launcher::basic_authorization(&self.password)
    }

    fn look(&mut self) {
        self.look_for_descendants();
    }

    fn terminate(&mut self) {
        self.look_for_everything();
        tracing::debug!(
            user = %self.user,
            pid = self.pid.as_raw(),
            descendants = self.descendants.len(),
            "SIGTERM to OpenCode and what it started"
        );
        self.signal_all(Signal::SIGTERM);
    }

    fn kill(&mut self) {
        self.look_for_everything();
        self.signal_all(Signal::SIGKILL);
    }

    fn clean_up(&mut self) -> Option<LocalBoxFuture<'static, ()>> {
        // OpenCode is gone; whatever is left of its group or below it is an orphan.
        self.kill();
        // With a uid of the user's own, the stop lasts until no process of that uid is
        // left: `stopped` then means nothing of the user runs.
        let uid = self.uid?;
        let user = self.user.clone();
        Some(
            async move {
                let ended =
                    tokio::task::spawn_blocking(move || reaper::end_uid(uid, reaper::KILL_WAIT));
                match ended.await {
                    Ok(Ok(ended)) if ended.left == 0 => {}
                    Ok(Ok(ended)) => tracing::error!(
                        user,
                        uid,
                        left = ended.left,
                        "processes of the user survived SIGKILL"
                    ),
                    Ok(Err(e)) => {
                        tracing::error!(user, uid, error = %e, "cannot signal the user's processes")
                    }
                    Err(e) => {
                        tracing::error!(user, uid, error = %e, "reaping the user's processes failed")
                    }
                }
            }
            .boxed_local(),
        )
    }

    fn still_running(&self) -> String {
        let left = match self.uid {
            Some(uid) => reaper::processes_of(uid),
            None => vec![self.pid.as_raw() as u32],
        };
        procfs::describe(&left)
    }

    fn last_output(&self) -> String {
        self.stderr.joined()
    }

    fn out_of_memory(&self) -> bool {
        self.host_oom_kills_at_spawn
            .zip(procfs::host_oom_kills())
            .is_some_and(|(then, now)| now > then)
    }
}
