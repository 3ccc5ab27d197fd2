//! The tasks themselves. They run behind the user's walls (see the module above), so they
//! use plain path operations: what the user could not do, they cannot do either.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Done, Reply, Task, TaskError};
use crate::repos::copy;

/// Most projects a listing returns (a workspace is the user's to fill).
pub const MAX_PROJECTS: usize = 5_000;

/// A user's project: a directory in their workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub name: String,
    pub path: PathBuf,
    pub is_git: bool,
    pub last_modified: u64,
}

pub fn execute(task: &Task) -> Reply {
    match task {
        Task::Prepare {
            home,
            layout,
            gitconfig,
            legacy_auth_target,
        } => prepare(home, layout, gitconfig, legacy_auth_target).map(|()| Done::Prepared),
        Task::Clone {
            source,
            kind,
            workspace,
            target,
        } => copy::clone_into(source, *kind, workspace, target)
            .map(Done::Cloned)
            .map_err(|e| match e {
                copy::CopyError::Exists(m) => {
                    TaskError::Exists(format!("{m} already exists in your workspace"))
                }
                copy::CopyError::Upstream(m) => TaskError::Upstream(m),
                copy::CopyError::Failed(m) => TaskError::Failed(m),
            }),
        Task::Projects { workspace } => Ok(Done::Projects(projects(workspace))),
        Task::Usage { home } => usage(home).map(Done::Usage),
    }
}

fn failed<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> TaskError + 'a {
    move |e| TaskError::Failed(format!("{what} {}: {e}", path.display()))
}

fn prepare(
    home: &Path,
    layout: &[String],
    gitconfig: &str,
    legacy: &Path,
) -> Result<(), TaskError> {
    for sub in layout {
        let dir = home.join(sub);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(failed("creating", &dir)(e)),
        }
    }
    write_gitconfig(home, gitconfig)?;
    undo_shared_auth_link(&home.join(".local/share/opencode"), legacy)?;
    copy::sweep(&home.join("workspace"), super::CLONE_DEADLINE);
    Ok(())
}

/// `~/.gitconfig`, unless the user already has one (it is theirs to change; the child's
/// `GIT_AUTHOR_*`/`GIT_COMMITTER_*` carry the identity regardless).
fn write_gitconfig(home: &Path, text: &str) -> Result<(), TaskError> {
    let path = home.join(".gitconfig");
    if fs::symlink_metadata(&path).is_ok() {
        return Ok(());
    }
    let tmp = home.join(format!(
        ".gitconfig.chamberlain-{}",
        crate::workspace::unique_suffix()
    ));
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        copy::rename_noreplace(&tmp, &path)
    };
    let result = write();
    let _ = fs::remove_file(&tmp);
    match result {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map_err(failed("writing", &path)),
    }
}

/// Older versions linked `auth.json` to the organisation's file and kept the user's own as
/// `auth.json.own`; the keys now reach OpenCode another way. Remove the link and give the
/// user's file back.
fn undo_shared_auth_link(dir: &Path, legacy: &Path) -> Result<(), TaskError> {
    let link = dir.join("auth.json");
    if fs::read_link(&link).is_ok_and(|t| t == legacy) {
        fs::remove_file(&link).map_err(failed("removing", &link))?;
        let own = dir.join("auth.json.own");
        if fs::symlink_metadata(&own).is_ok() {
            copy::rename_noreplace(&own, &link).map_err(failed("restoring", &own))?;
        }
    }
    if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn projects(workspace: &Path) -> Vec<Project> {
    let Ok(entries) = fs::read_dir(workspace) else {
        return Vec::new();
    };
    let mut found: Vec<Project> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .take(MAX_PROJECTS)
        .map(|e| {
            let path = e.path();
            let last_modified = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            Project {
                name: e.file_name().to_string_lossy().into_owned(),
                is_git: path.join(".git").exists(),
                path,
                last_modified,
            }
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Allocated bytes of everything under `home`, symlinks not followed, other file systems
/// not entered. A directory the user made unreadable (to hide what it holds from the
/// quota) makes the measurement fail, naming it.
fn usage(home: &Path) -> Result<u64, TaskError> {
    use std::os::unix::fs::MetadataExt;
    let top = fs::symlink_metadata(home).map_err(failed("measuring", home))?;
    let mut total = 0u64;
    let mut stack = vec![home.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| {
            TaskError::Failed(format!(
                "cannot measure your home: {} cannot be read ({e}); give yourself read \
                 access to it (chmod u+rx) or remove it",
                dir.display()
            ))
        })?;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() && meta.dev() == top.dev() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare_task(home: &Path, legacy: &Path) -> Task {
        Task::Prepare {
            home: home.to_owned(),
            layout: ["workspace", ".local", ".local/share"]
                .map(String::from)
                .to_vec(),
            gitconfig: "[user]\n\tname = \"Ana\"\n".into(),
            legacy_auth_target: legacy.to_owned(),
        }
    }

    #[test]
    fn prepare_makes_the_layout_and_keeps_the_users_gitconfig() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        let legacy = dir.path().join("org-auth.json");
        execute(&prepare_task(&home, &legacy)).unwrap();
        assert!(home.join(".local/share").is_dir());
        assert!(fs::read_to_string(home.join(".gitconfig"))
            .unwrap()
            .contains("Ana"));
        fs::write(home.join(".gitconfig"), "mine").unwrap();
        execute(&prepare_task(&home, &legacy)).unwrap();
        assert_eq!(fs::read_to_string(home.join(".gitconfig")).unwrap(), "mine");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&home)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("chamberlain"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn an_older_versions_auth_link_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let oc = home.join(".local/share/opencode");
        fs::create_dir_all(&oc).unwrap();
        let legacy = dir.path().join("org-auth.json");
        fs::write(&legacy, "{}").unwrap();
        std::os::unix::fs::symlink(&legacy, oc.join("auth.json")).unwrap();
        fs::write(oc.join("auth.json.own"), "{\"mine\":1}").unwrap();
        execute(&prepare_task(&home, &legacy)).unwrap();
        assert_eq!(
            fs::read_to_string(oc.join("auth.json")).unwrap(),
            "{\"mine\":1}"
        );
        assert!(fs::symlink_metadata(oc.join("auth.json.own")).is_err());
        // A link the user made to anything else is theirs.
        fs::remove_file(oc.join("auth.json")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", oc.join("auth.json")).unwrap();
        execute(&prepare_task(&home, &legacy)).unwrap();
        assert!(fs::read_link(oc.join("auth.json")).is_ok());
    }

    #[test]
    fn projects_are_the_visible_directories_and_usage_counts_files() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("workspace");
        fs::create_dir_all(ws.join("b/.git")).unwrap();
        fs::create_dir_all(ws.join("a")).unwrap();
        fs::create_dir_all(ws.join(".hidden")).unwrap();
        fs::write(ws.join("file"), vec![1u8; 10_000]).unwrap();
        let Done::Projects(found) = execute(&Task::Projects {
            workspace: ws.clone(),
        })
        .unwrap() else {
            panic!("not a project list")
        };
        let names: Vec<_> = found.iter().map(|p| (p.name.as_str(), p.is_git)).collect();
        assert_eq!(names, [("a", false), ("b", true)]);
        let Done::Usage(bytes) = execute(&Task::Usage {
            home: dir.path().to_owned(),
        })
        .unwrap() else {
            panic!("not a usage")
        };
        assert!(bytes >= 10_000, "{bytes}");
    }

    #[test]
    fn tasks_and_replies_cross_as_json() {
        let task = prepare_task(Path::new("/h"), Path::new("/a"));
        let back: Task = serde_json::from_slice(&serde_json::to_vec(&task).unwrap()).unwrap();
        assert!(matches!(back, Task::Prepare { .. }));
        let reply: Reply = Err(TaskError::Exists("x".into()));
        let back: Reply = serde_json::from_slice(&serde_json::to_vec(&reply).unwrap()).unwrap();
        assert!(matches!(back, Err(TaskError::Exists(m)) if m == "x"));
    }
}
