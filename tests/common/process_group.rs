//! A helper process that a test or a benchmark starts (chromedriver, an OpenCode started
//! directly, the OpenCode CLI): the leader of a process group of its own, so that dropping
//! it — at the end, or while a failing test unwinds — kills everything it started that is
//! still in the group, and reaps it.
//!
//! Included with `#[path]` by `tests/e2e` and by `bench/`; std and nix only.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};

pub struct ProcessGroup {
    child: Child,
}

impl ProcessGroup {
    /// Spawns `command` as the leader of a new process group.
    pub fn spawn(command: &mut Command) -> std::io::Result<ProcessGroup> {
        let child = command.process_group(0).spawn()?;
        Ok(ProcessGroup { child })
    }

    /// The leader, to read its output or see whether it has exited (killing it is this
    /// guard's job).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
