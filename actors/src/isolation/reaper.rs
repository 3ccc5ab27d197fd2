//! Ending every process of a user's uid: with a uid per user, "everything that user runs" is
//! exactly "every process with that real uid", wherever it sits in the process tree and
//! whatever session it started.
//!
//! A short-lived helper forks, takes the uid, and calls `kill(-1, sig)`, which the kernel
//! applies to every process the caller may signal — all processes of that uid and no other —
//! atomically with respect to new forks (a fork bomb cannot outrun it).

use std::io;

use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Gid, Uid};

/// Sends `sig` to every process whose real uid is `uid`. Blocking (fork and wait): run it
/// off the actor thread. Refuses uid 0, which would be every root process.
pub fn signal_uid(uid: u32, sig: Signal) -> io::Result<()> {
    if uid == 0 {
        return Err(io::Error::other(
            "refusing to signal every process of uid 0",
        ));
    }
    // SAFETY: the child makes only async-signal-safe system calls and leaves with _exit.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let code = (|| -> nix::Result<()> {
                nix::unistd::setgroups(&[])?;
                nix::unistd::setresgid(Gid::from_raw(uid), Gid::from_raw(uid), Gid::from_raw(uid))?;
                nix::unistd::setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))?;
                // kill(-1) as this uid: every process of the uid except this helper. ESRCH
                // means there was nothing to signal.
                match nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), sig) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                    Err(e) => Err(e),
                }
            })()
            .map_or(1, |()| 0);
            // SAFETY: leaves the forked child without running the parent's destructors.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None)? {
            nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
            other => Err(io::Error::other(format!(
                "signalling uid {uid} failed: helper ended with {other:?}"
            ))),
        },
    }
}

/// Pids of live (non-zombie) processes whose real uid is `uid`, from `/proc`.
pub fn processes_of(uid: u32) -> Vec<u32> {
    live_processes()
        .filter(|(_, real)| *real == uid)
        .map(|(pid, _)| pid)
        .collect()
}

/// (pid, real uid) of live processes whose real uid lies in `first..=last`.
pub fn processes_in(first: u32, last: u32) -> Vec<(u32, u32)> {
    live_processes()
        .filter(|(_, real)| (first..=last).contains(real))
        .collect()
}

/// (pid, real uid) of every live (non-zombie) process, from `/proc`.
fn live_processes() -> impl Iterator<Item = (u32, u32)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let real_uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|u| u.parse::<u32>().ok())?;
            let zombie = status
                .lines()
                .find_map(|l| l.strip_prefix("State:"))
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            (!zombie).then_some((pid, real_uid))
        })
}
