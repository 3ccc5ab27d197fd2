//! Putting a copy of a shared repository into a user's workspace: `git clone
//! --no-hardlinks` or a plain copy, into a hidden temporary directory, then renamed into
//! place without replacing anything. A clone that fails or is interrupted leaves no target
//! behind; its temporary directory is removed on failure or swept at the next start.
//!
//! This runs as the user (see `as_user`): the copy is theirs because they made it.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::catalogue::{git_dir, RepoKind};

/// Prefix of clones in progress inside a workspace.
pub const PARTIAL_PREFIX: &str = ".chamberlain-clone-";

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0} already exists in your workspace")]
    Exists(String),
    #[error("{0}")]
    Failed(String),
    /// The repository's upstream (another server) could not be cloned or fetched.
    #[error("{0}")]
    Upstream(String),
}

fn failed(what: &str, path: &Path, e: io::Error) -> CopyError {
    CopyError::Failed(format!("{what} {}: {e}", path.display()))
}

/// Copies the repository at `source` into `workspace/target`.
pub fn clone_into(
    source: &Path,
    kind: RepoKind,
    workspace: &Path,
    target: &str,
) -> Result<PathBuf, CopyError> {
    let dest = workspace.join(target);
    if fs::symlink_metadata(&dest).is_ok() {
        return Err(CopyError::Exists(target.to_owned()));
    }
    let tmp = workspace.join(format!(
        "{PARTIAL_PREFIX}{target}-{}",
        crate::workspace::unique_suffix()
    ));
    let result = (|| {
        match kind {
            RepoKind::Git => git_clone(source, &tmp)?,
            RepoKind::Folder => copy_tree(source, &tmp)?,
        }
        rename_noreplace(&tmp, &dest).map_err(|e| match e.raw_os_error() {
            Some(nix::libc::EEXIST) | Some(nix::libc::ENOTEMPTY) => {
                CopyError::Exists(target.to_owned())
            }
            _ => failed("moving the clone to", &dest, e),
        })
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(|()| dest)
}

/// Removes clones left half-made in `workspace` by a crash or a killed task: those not
/// changed for `older_than` (a clone still running is younger: no task outlives its
/// deadline). Returns how many.
pub fn sweep(workspace: &Path, older_than: std::time::Duration) -> usize {
    let Ok(entries) = fs::read_dir(workspace) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX))
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= older_than))
        })
        .filter(|e| fs::remove_dir_all(e.path()).is_ok())
        .count()
}

/// Renames `from` to `to` unless `to` exists (atomically: never replaces anything).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(io::Error::from)
}

/// A `git` command with a clean environment: no system or global configuration, no
/// prompts, and any owner's repository accepted (shared repos are the operator's).
pub fn git() -> Command {
    let mut cmd = Command::new("git");
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("HOME", "/nonexistent")
        .args(["-c", "safe.directory=*"])
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd`; an error carries git's own message.
pub fn run(cmd: &mut Command, what: &str) -> Result<String, CopyError> {
    let out = cmd
        .output()
        .map_err(|e| CopyError::Failed(format!("{what}: cannot run git: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(CopyError::Failed(format!(
            "{what}: git failed ({}): {}",
            out.status,
            stderr.trim().chars().take(500).collect::<String>()
        )))
    }
}

/// `git clone --no-hardlinks`; the clone's `origin` is the shared repo's own upstream when
/// it has one (so the user pulls from where the template comes from), else the shared path.
fn git_clone(source: &Path, dest: &Path) -> Result<(), CopyError> {
    run(
        git()
            // The shared repository is root's and the clone runs as the user: git checks
            // ownership in `upload-pack` too, which does not inherit `-c` options.
            // No hooks and no template: nothing of the user's runs inside the gateway's
            // task (a hook dropped into the clone while it is made would).
            .args(["-c", "core.hooksPath=/dev/null"])
            .args([
                "clone",
                "--quiet",
                "--no-hardlinks",
                "--template=",
                "--upload-pack",
                "git -c safe.directory='*' upload-pack",
                "--",
            ])
            .arg(source)
            .arg(dest),
        "cloning",
    )?;
    let git_dir = git_dir(source).unwrap_or_else(|| source.to_owned());
    if let Some(url) = upstream_url(&git_dir) {
        run(
            git()
                .arg("-C")
                .arg(dest)
                .args(["remote", "set-url", "origin", &url]),
            "setting origin",
        )?;
    }
    Ok(())
}

/// The `origin` URL of the repository whose git directory is `git_dir`, if it has one.
pub fn upstream_url(git_dir: &Path) -> Option<String> {
    run(
        git()
            .arg("--git-dir")
            .arg(git_dir)
            .args(["config", "--get", "remote.origin.url"]),
        "reading the upstream",
    )
    .ok()
    .filter(|u| !u.is_empty())
}

/// Copies one file's content and mode into a new file: never into something already there
/// (a FIFO or a link the user put in the temporary directory while the copy runs).
fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = fs::File::open(from)?;
    let mode = source.metadata()?.permissions().mode() & 0o7777;
    let mut dest = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(to)?;
    io::copy(&mut source, &mut dest)?;
    dest.set_permissions(fs::Permissions::from_mode(mode))
}

/// Copies a tree: modes kept, ownership not, symlinks copied as symlinks (never followed),
/// special files (pipes, sockets, devices) skipped.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), CopyError> {
    let meta = fs::symlink_metadata(from).map_err(|e| failed("reading", from, e))?;
    fs::create_dir(to).map_err(|e| failed("creating", to, e))?;
    for entry in fs::read_dir(from).map_err(|e| failed("reading", from, e))? {
        let entry = entry.map_err(|e| failed("reading", from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(|e| failed("reading", &src, e))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&src).map_err(|e| failed("reading", &src, e))?;
            symlink(&target, &dst).map_err(|e| failed("creating", &dst, e))?;
        } else if kind.is_file() {
            copy_file(&src, &dst).map_err(|e| failed("copying", &src, e))?;
        } else {
            tracing::debug!(path = %src.display(), "not copying a special file");
        }
    }
    // Last, so a read-only directory can still be filled.
    fs::set_permissions(
        to,
        fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
    )
    .map_err(|e| failed("setting the mode of", to, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repos::catalogue;

    #[test]
    fn a_clone_lands_whole_or_not_at_all_and_leftovers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repos");
        let ws = dir.path().join("ws");
        fs::create_dir_all(root.join("kit/sub")).unwrap();
        fs::create_dir_all(&ws).unwrap();
        fs::write(root.join("kit/sub/f"), "x").unwrap();
        let repo = catalogue::read(&root, "kit").unwrap();
        let dest = clone_into(&repo.path, repo.kind, &ws, "kit").unwrap();
        assert_eq!(fs::read_to_string(dest.join("sub/f")).unwrap(), "x");
        assert!(matches!(
            clone_into(&repo.path, repo.kind, &ws, "kit"),
            Err(CopyError::Exists(_))
        ));
        // Only the finished clone is there: no temporary directory was left.
        let names: Vec<_> = fs::read_dir(&ws)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["kit"]);

        fs::create_dir_all(ws.join(format!("{PARTIAL_PREFIX}kit-dead"))).unwrap();
        // A clone that may still be running is left alone.
        assert_eq!(sweep(&ws, std::time::Duration::from_secs(3600)), 0);
        assert_eq!(sweep(&ws, std::time::Duration::ZERO), 1);
        assert!(ws.join("kit").is_dir());
    }

    #[test]
    fn a_failed_clone_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        fs::create_dir_all(&ws).unwrap();
        assert!(matches!(
            clone_into(&dir.path().join("gone"), RepoKind::Folder, &ws, "gone"),
            Err(CopyError::Failed(_))
        ));
        assert_eq!(fs::read_dir(&ws).unwrap().count(), 0);
    }
}
