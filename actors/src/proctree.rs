//! The descendants of a process, found through `/proc`.
//!
//! Killing an instance's process group is not enough: OpenCode's terminals run their shells in
//! sessions of their own, outside the group. While OpenCode runs, those shells (and whatever
//! they start) are still its descendants, so the instance remembers them and signals each one
//! when it stops. Each pid is kept with its start time, so a pid reused by an unrelated process
//! after an exit is never signalled.

use std::collections::HashMap;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Descendants(Vec<(i32, u64)>);

/// `(ppid, start time)` from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Fields after the command name (which may itself contain spaces and parentheses): state is
/// field 3, ppid field 4, start time field 22.
fn parse_stat(text: &str) -> Option<(i32, u64)> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

impl Descendants {
    /// Every process below `root` right now (not `root` itself).
    pub fn of(root: Pid) -> Descendants {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Descendants::default();
        };
        let mut children: HashMap<i32, Vec<(i32, u64)>> = HashMap::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some((ppid, start)) = stat(pid) {
                children.entry(ppid).or_default().push((pid, start));
            }
        }
        let mut found = Vec::new();
        let mut queue = vec![root.as_raw()];
        while let Some(parent) = queue.pop() {
            for &(pid, start) in children.get(&parent).map(Vec::as_slice).unwrap_or(&[]) {
                found.push((pid, start));
                queue.push(pid);
            }
        }
        Descendants(found)
    }

    /// Every process whose initial environment holds `name=value` (those the gateway may
    /// read: its own uid's). A child's marker variable is inherited by everything it starts,
    /// in whatever session, even after its parent has gone.
    pub fn marked(name: &str, value: &str) -> Descendants {
        let needle = format!("{name}={value}");
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Descendants::default();
        };
        let found = entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
            })
            .filter_map(|pid| stat(pid).map(|(_, start)| (pid, start)))
            .collect();
        Descendants(found)
    }

    /// Adds processes found later (started since the last look) to those remembered.
    pub fn merge(&mut self, newer: Descendants) {
        for entry in newer.0 {
            if !self.0.contains(&entry) {
                self.0.push(entry);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Signals every remembered process that is still the same process.
    pub fn signal(&self, sig: Signal) {
        for &(pid, start) in &self.0 {
            if stat(pid).is_some_and(|(_, now)| now == start) {
                let _ = signal::kill(Pid::from_raw(pid), sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line = "1234 (we ird) (name)) S 99 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 555 1000 10";
        assert_eq!(parse_stat(line), Some((99, 555)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn finds_grandchildren_in_other_sessions_and_kills_them() {
        // sh starts a sleep in a session of its own, then waits: the sleep is a grandchild
        // outside the shell's process group.
        let mut shell = Command::new("sh")
            .args(["-c", "setsid sleep 1000 & wait"])
            .spawn()
            .unwrap();
        let root = Pid::from_raw(shell.id() as i32);
        let mut tree = Descendants::default();
        for _ in 0..200 {
            tree = Descendants::of(root);
            if !tree.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!tree.is_empty(), "the sleep was found");
        let pids: Vec<i32> = tree.0.iter().map(|(p, _)| *p).collect();
        tree.signal(Signal::SIGKILL);
        shell.wait().unwrap();
        for pid in pids {
            let mut gone = false;
            for _ in 0..200 {
                let state =
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if state.is_empty() || state.contains(") Z ") {
                    gone = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert!(gone, "pid {pid} survived");
        }
    }

    #[test]
    fn finds_processes_by_their_inherited_marker() {
        let mut child = Command::new("sh")
            .args(["-c", "setsid sleep 1000 & wait"])
            .env("CHAMBERLAIN_TEST_MARK", "m-42")
            .spawn()
            .unwrap();
        let mut found = Descendants::default();
        for _ in 0..200 {
            found = Descendants::marked("CHAMBERLAIN_TEST_MARK", "m-42");
            if found.len() >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(found.len(), 2, "the shell and its sleep");
        assert!(Descendants::marked("CHAMBERLAIN_TEST_MARK", "m-4").is_empty());
        found.signal(Signal::SIGKILL);
        child.wait().unwrap();
    }

    #[test]
    fn a_reused_pid_is_not_signalled() {
        // A remembered start time that does not match means "someone else now".
        let me = std::process::id() as i32;
        let stale = Descendants(vec![(me, 1)]);
        stale.signal(Signal::SIGKILL); // would kill this test if it matched
        assert!(stat(me).is_some());
    }
}
