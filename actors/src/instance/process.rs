//! The running OpenCode process of an instance: who it is, what it started, and signalling
//! all of it. The uid reaper itself lives in `isolation::reaper`.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use crate::isolation::reaper;
use crate::launcher::{self, StderrTail};
use crate::proctree::Descendants;

/// One spawned OpenCode process.
pub(super) struct Process {
    pub(super) pid: Pid,
    pub(super) generation: u64,
    pub(super) stderr: StderrTail,
    pub(super) spawned_at: Instant,
    pub(super) stopping: CancellationToken,
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
}

impl Process {
    /// Remembers processes started below OpenCode since the last look. Only meaningful while
    /// OpenCode itself is alive: once it exits, its orphans are no longer below it.
    pub(super) fn look_for_descendants(&mut self) {
        self.descendants.merge(Descendants::of(self.pid));
    }

    /// When stopping: also everything that carries this process's marker, which finds
    /// what left the tree (a `setsid … &` whose parent exited). With a uid per user the
    /// uid finds everything; this is for the modes without one.
    pub(super) fn look_for_everything(&mut self) {
        self.look_for_descendants();
        if self.uid.is_none() {
            self.descendants
                .merge(Descendants::marked(launcher::MARKER_VAR, &self.marker));
        }
    }

    /// Signals OpenCode's process group and every remembered descendant, and with a uid of
    /// the user's own, every process of that uid (off the actor thread).
    pub(super) fn signal_all(&self, user: &str, signal: Signal) {
        if let Err(e) = launcher::signal_group(self.pid, signal) {
            tracing::error!(user, pid = self.pid.as_raw(), %signal, error = %e, "cannot signal OpenCode");
        }
        self.descendants.signal(signal);
        if let Some(uid) = self.uid {
            let user = user.to_owned();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = reaper::signal_uid(uid, signal) {
                    tracing::error!(user, uid, %signal, error = %e, "cannot signal the user's processes");
                }
            });
        }
    }
}

/// SIGKILL to every process of `uid` until none is left (a process may be forking as it is
/// signalled; each round takes all that exist at that instant). Returns how many remain
/// after the last round. Blocking.
pub(super) fn reap_uid(uid: u32) -> usize {
    let mut left = 0;
    for _ in 0..50 {
        if let Err(e) = reaper::signal_uid(uid, Signal::SIGKILL) {
            tracing::error!(uid, error = %e, "cannot signal the user's processes");
        }
        left = reaper::processes_of(uid).len();
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    left
}
