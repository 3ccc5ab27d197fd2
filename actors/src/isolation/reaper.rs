//! Ending every process of a user's uid: with a uid per user, "everything that user runs" is
//! exactly "every process with that real uid", wherever it sits in the process tree and
//! whatever session it started.
//!
//! A short-lived helper forks, takes the uid, and calls `kill(-1, sig)`, which the kernel
//! applies to every process the caller may signal — all processes of that uid and no other —
//! atomically with respect to new forks (a fork bomb cannot outrun it).

use std::io;
use std::time::{Duration, Instant};

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

/// How long [`end_uid`] waits, at most, for a uid's processes to be gone.
pub const KILL_WAIT: Duration = Duration::from_secs(1);

/// Between two rounds of [`end_uid`].
const ROUND: Duration = Duration::from_millis(20);

/// What [`end_uid`] found and what it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// Processes of the uid when it began.
    pub found: usize,
    /// Processes of the uid still alive when it gave up: 0 unless one cannot die (stuck in
    /// the kernel) or the uid kept gaining processes.
    pub left: usize,
}

/// Ends every process of `uid`: SIGKILL, and again for as long as any is left within
/// `within` (a process may be taking the uid, a helper of the gateway's say, just as the
/// others are signalled). The one way a uid's processes are ended: at start-up (leftovers of
/// an earlier run), before a start, and when an instance has stopped. Forks nothing when
/// the uid has no process. Blocking: run it off the actor thread.
///
/// A round whose signalling fails (no room to fork the signalling helper, say, while the
/// user's own processes fill the limit) is retried until the deadline: the error is
/// returned only when processes are left.
pub fn end_uid(uid: u32, within: Duration) -> io::Result<Ended> {
    let deadline = Instant::now() + within;
    let found = processes_of(uid).len();
    let mut left = found;
    let mut failure = None;
    while left > 0 && Instant::now() < deadline {
        if let Err(e) = signal_uid(uid, Signal::SIGKILL) {
            failure = Some(e);
        }
        std::thread::sleep(ROUND);
        left = processes_of(uid).len();
    }
    match failure {
        Some(e) if left > 0 => Err(e),
        _ => Ok(Ended { found, left }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// A uid no gateway, test or person gives out.
    const VICTIM: u32 = 3_912_345_678;

    #[test]
    fn every_process_of_a_uid_is_ended_and_nothing_else() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: taking another uid needs root");
            return;
        }
        assert_eq!(
            end_uid(VICTIM, KILL_WAIT).unwrap(),
            Ended { found: 0, left: 0 }
        );
        let spawn = |uid: u32| {
            std::process::Command::new("sleep")
                .arg("60")
                .uid(uid)
                .gid(uid)
                .spawn()
                .unwrap()
        };
        let mut victims = [spawn(VICTIM), spawn(VICTIM)];
        let mut bystander = spawn(VICTIM + 1);
        let ended = end_uid(VICTIM, KILL_WAIT).unwrap();
        assert_eq!(ended, Ended { found: 2, left: 0 });
        for victim in &mut victims {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(victim.wait().unwrap().signal(), Some(nix::libc::SIGKILL));
        }
        assert_eq!(
            bystander.try_wait().unwrap(),
            None,
            "another uid's process lives"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }

    #[test]
    fn root_is_never_signalled_as_a_whole() {
        assert!(signal_uid(0, Signal::SIGCONT).is_err());
        assert!(end_uid(0, KILL_WAIT).is_err(), "root always has processes");
    }
}
