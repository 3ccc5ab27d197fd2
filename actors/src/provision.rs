//! Making a user's home ready, and the other work the gateway does in homes, through one
//! owner: [`Homes`].
//!
//! Root does only what needs root, without following any name the user controls: create
//! the home in `users/` (root's) and hand it to the user's uid ([`crate::handover`]).
//! Everything inside the home — layout, `.gitconfig`, clones, listings, sizes — is a task
//! run as the user ([`crate::as_user`]). Everything is idempotent and repairs what is
//! missing, so a home half-made by a crash, or made before per-user uids were switched on,
//! is put right at the next start.
//!
//! The organisation's keys and config no longer live in homes: they reach OpenCode in its
//! environment (see [`crate::org`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dashmap::DashMap;

use crate::as_user::{Done, Project, Runner, Task, TaskError, MAX_TASKS_PER_USER};
use crate::handover::{self, HandoverError};
use crate::isolation::{reaper, Isolation, IsolationError, UidError, UserIds};
use crate::repos::RepoKind;
use crate::workspace::{UserKey, UsersRoot, Workspace, WorkspaceError};

/// Who the user is, for git.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub email: String,
}

impl Profile {
    /// Variables for one user's OpenCode: their git identity.
    pub fn git_env(&self) -> Vec<(String, String)> {
        [
            ("GIT_AUTHOR_NAME", &self.name),
            ("GIT_AUTHOR_EMAIL", &self.email),
            ("GIT_COMMITTER_NAME", &self.name),
            ("GIT_COMMITTER_EMAIL", &self.email),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Uids(#[from] UidError),
    #[error("handing the home over: {0}")]
    Handover(#[from] HandoverError),
    #[error(transparent)]
    Walls(#[from] IsolationError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("{0} operations in your home are running already; try again when they are done")]
    Busy(u32),
    #[error("ending processes left from an earlier run: {0}")]
    Leftovers(std::io::Error),
}

/// What becomes of the processes a user's uid still runs when the home is prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leftovers {
    /// Beside a running OpenCode (a clone): they are the user's work.
    Keep,
    /// Before a start: what an earlier run left (a gateway that died leaves terminals and
    /// background jobs behind) ends first, so the start begins from nothing and a fork bomb
    /// among them cannot keep the home's work from running as the user (`RLIMIT_NPROC`).
    End,
}

/// Every home, and the means to work in one as its user.
pub struct Homes {
    users: UsersRoot,
    isolation: Arc<Isolation>,
    runner: Runner,
    /// The organisation's auth file: older versions linked it into homes.
    legacy_auth: PathBuf,
    /// Tasks running per user (at most [`MAX_TASKS_PER_USER`]).
    running: DashMap<UserKey, u32>,
}

impl Homes {
    pub fn new(
        users: UsersRoot,
        isolation: Arc<Isolation>,
        runner: Runner,
        legacy_auth: PathBuf,
    ) -> Self {
        Homes {
            users,
            isolation,
            runner,
            legacy_auth,
            running: DashMap::new(),
        }
    }

    pub fn users(&self) -> &UsersRoot {
        &self.users
    }

    pub fn isolation(&self) -> &Arc<Isolation> {
        &self.isolation
    }

    /// Prepares the home of `key` for a start or a clone: the user's ids (allocated on first
    /// use), `leftovers` of the uid, then the home. The one way to both, for starts and
    /// clones alike. Returns the home and the ids. Blocking: run it off the actor thread.
    pub fn prepare(
        &self,
        key: &UserKey,
        profile: &Profile,
        leftovers: Leftovers,
    ) -> Result<(Workspace, Option<UserIds>), ProvisionError> {
        // Where a start's own time goes, for whoever asks why one was slow (debug).
        let began = std::time::Instant::now();
        let ids = self.isolation.ids(key)?;
        let ids_done = began.elapsed();
        // A task of the gateway's running as the user (a workspace listing, a clone) is no
        // leftover: the start lets the uid be rather than end it mid-work. Whatever an
        // earlier run left ended when this gateway started, and ends at the next stop.
        let tasks_running = self.running.get(key).is_some_and(|n| *n > 0);
        if let (Leftovers::End, Some(ids), false) = (leftovers, ids, tasks_running) {
            end_leftovers(key, ids.uid)?;
        }
        let leftovers_done = began.elapsed();
        let ws = self.users.initialize(key, ids.map(|i| (i.uid, i.gid)))?;
        if let (Some(ids), Some(range)) = (ids, self.isolation.uid_range()) {
            if let Some(done) = handover::ensure_owned(ws.home(), ids, range)? {
                tracing::info!(
                    home = %ws.home().display(),
                    uid = ids.uid,
                    entries = done.entries,
                    hard_links_left = done.skipped_links,
                    too_deep = done.too_deep,
                    devices_removed = done.removed_devices,
                    "handed a home over to the user's uid"
                );
            }
        }
        self.run(
            key,
            &ws,
            ids,
            &Task::Prepare {
                home: ws.home().to_owned(),
                layout: ws.layout().map(String::from).collect(),
                gitconfig: gitconfig(profile),
                legacy_auth_target: self.legacy_auth.clone(),
            },
        )?;
        tracing::debug!(
            user_key = %key,
            ids_us = ids_done.as_micros() as u64,
            leftovers_us = (leftovers_done - ids_done).as_micros() as u64,
            home_us = (began.elapsed() - leftovers_done).as_micros() as u64,
            "prepared the home"
        );
        Ok((ws, ids))
    }

    /// Copies the shared repository at `source` into the user's workspace as `target`, as
    /// the user. Prepares the home first (a first clone may come before a first start).
    pub fn clone_repo(
        &self,
        key: &UserKey,
        profile: &Profile,
        source: &Path,
        kind: RepoKind,
        target: &str,
    ) -> Result<PathBuf, ProvisionError> {
        let (ws, ids) = self.prepare(key, profile, Leftovers::Keep)?;
        let task = Task::Clone {
            source: source.to_owned(),
            kind,
            workspace: ws.workspace_dir(),
            target: target.to_owned(),
        };
        match self.run(key, &ws, ids, &task)? {
            Done::Cloned(path) => Ok(path),
            other => Err(unexpected(&other)),
        }
    }

    /// The user's projects, listed as the user. Nothing for a user without a home.
    pub fn projects(&self, key: &UserKey) -> Result<Vec<Project>, ProvisionError> {
        let Some((ws, ids)) = self.existing(key)? else {
            return Ok(Vec::new());
        };
        match self.run(
            key,
            &ws,
            ids,
            &Task::Projects {
                workspace: ws.workspace_dir(),
            },
        )? {
            Done::Projects(found) => Ok(found),
            other => Err(unexpected(&other)),
        }
    }

    /// Bytes the user's home takes, measured as the user; `None` without a home.
    pub fn usage(&self, key: &UserKey) -> Result<Option<u64>, ProvisionError> {
        let Some((ws, ids)) = self.existing(key)? else {
            return Ok(None);
        };
        match self.run(
            key,
            &ws,
            ids,
            &Task::Usage {
                home: ws.home().to_owned(),
            },
        )? {
            Done::Usage(bytes) => Ok(Some(bytes)),
            other => Err(unexpected(&other)),
        }
    }

    /// A home that exists, with the uid it belongs to (never allocates one).
    fn existing(
        &self,
        key: &UserKey,
    ) -> Result<Option<(Workspace, Option<UserIds>)>, ProvisionError> {
        if !self.users.is_initialized(key) {
            return Ok(None);
        }
        let ids = match self.isolation.existing_uid(key) {
            Some(_) => self.isolation.ids(key)?,
            None if self.isolation.uid_range().is_some() => return Ok(None),
            None => None,
        };
        Ok(Some((self.users.workspace(key), ids)))
    }

    fn run(
        &self,
        key: &UserKey,
        ws: &Workspace,
        ids: Option<UserIds>,
        task: &Task,
    ) -> Result<Done, ProvisionError> {
        {
            let mut running = self.running.entry(key.clone()).or_insert(0);
            if *running >= MAX_TASKS_PER_USER {
                return Err(ProvisionError::Busy(MAX_TASKS_PER_USER));
            }
            *running += 1;
        }
        let result = self
            .isolation
            .child_sandbox(ws.home(), ids)
            .map_err(ProvisionError::from)
            .and_then(|walls| Ok(self.runner.run(&walls, task)?));
        self.running.remove_if_mut(key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
        result
    }
}

/// Every process of the user's uid, ended (see [`Leftovers::End`]).
fn end_leftovers(key: &UserKey, uid: u32) -> Result<(), ProvisionError> {
    let ended = reaper::end_uid(uid, reaper::KILL_WAIT).map_err(ProvisionError::Leftovers)?;
    if ended.found > 0 {
        tracing::warn!(user_key = %key, uid, found = ended.found, "ended processes left from an earlier run");
    }
    if ended.left > 0 {
        // A process stuck in the kernel: it dies when it leaves it, and holds nothing the
        // start needs.
        tracing::error!(user_key = %key, uid, left = ended.left, "processes left from an earlier run survived SIGKILL");
    }
    Ok(())
}

fn unexpected(done: &Done) -> ProvisionError {
    ProvisionError::Task(TaskError::Helper(format!("unexpected answer {done:?}")))
}

/// `~/.gitconfig` with the user's identity.
fn gitconfig(profile: &Profile) -> String {
    format!(
        "# Written by Chamberlain from your sign-in; yours to edit.\n[user]\n\tname = {}\n\temail = {}\n",
        git_value(&profile.name),
        git_value(&profile.email)
    )
}

/// A git config value: quoted, with `\` and `"` escaped and line breaks flattened, so a
/// name from an identity provider cannot add configuration of its own.
pub fn git_value(value: &str) -> String {
    let flat: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("\"{}\"", flat.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::{IsolationConfig, IsolationMode, Limits};
    use std::fs;

    fn homes(dir: &Path) -> Homes {
        let users = UsersRoot::new(dir.join("users"));
        fs::create_dir_all(users.path()).unwrap();
        let isolation = Isolation::new(IsolationConfig {
            mode: IsolationMode::None,
            uid_range: (1, 2),
            uid_map: dir.join("uids.json"),
            accounts: None,
            read_only: Vec::new(),
            limits: Limits::default(),
        })
        .unwrap();
        Homes::new(
            users,
            Arc::new(isolation),
            Runner::in_process(),
            dir.join("auth.json"),
        )
    }

    #[test]
    fn git_values_cannot_inject_configuration() {
        assert_eq!(git_value("Ana"), "\"Ana\"");
        let v = git_value("x\"\n[core]\n\tpager = evil");
        assert!(!v.contains('\n'));
        assert_eq!(v, "\"x\\\" [core]  pager = evil\"");
    }

    #[test]
    fn a_home_is_prepared_idempotently_and_lists_its_projects() {
        let dir = tempfile::tempdir().unwrap();
        let homes = homes(dir.path());
        let key = UserKey::derive("ana");
        assert!(homes.projects(&key).unwrap().is_empty());
        let profile = Profile {
            name: "Ana \"A\" \\ B\n[core]".into(),
            email: "ana@example.com".into(),
        };
        let (ws, ids) = homes.prepare(&key, &profile, Leftovers::End).unwrap();
        assert!(ids.is_none());
        let text = fs::read_to_string(ws.home().join(".gitconfig")).unwrap();
        assert!(text.contains("email = \"ana@example.com\""), "{text}");
        assert_eq!(
            text.matches("[core]").count(),
            1,
            "only inside the quoted name"
        );
        homes.prepare(&key, &profile, Leftovers::Keep).unwrap();
        fs::create_dir(ws.workspace_dir().join("proj")).unwrap();
        let names: Vec<_> = homes
            .projects(&key)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["proj"]);
        assert!(homes.usage(&key).unwrap().is_some());
    }

    #[test]
    fn the_runner_refuses_to_work_in_process_behind_walls() {
        let dir = tempfile::tempdir().unwrap();
        let homes = homes(dir.path());
        let walls = crate::isolation::ChildSandbox::for_test(Some(UserIds {
            uid: 1,
            gid: 1,
            shared_gid: 1,
        }));
        let err = homes
            .runner
            .run(
                &walls,
                &Task::Usage {
                    home: dir.path().to_owned(),
                },
            )
            .unwrap_err();
        assert!(matches!(err, TaskError::Helper(_)), "{err}");
    }
}
