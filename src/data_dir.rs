//! The data directory (`--data-dir`): every path the gateway keeps under it and, with a uid
//! per user, who owns each of its directories and who may enter them. This is the one place
//! the layout is written down: the gateway applies it at every start, and
//! `chamberlain prepare-data` (the container's entrypoint) applies the same before the first,
//! so an operator can put keys and repositories in place beforehand.
//!
//! What is inside a home (`users/<key>`) belongs to `chamberlain_actors::workspace`, and the
//! format of each file in `state/` to the code that keeps it; only their places are here.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Whose group a directory of the layout has when users have uids of their own. Its owner
/// is always root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Root,
    /// The group every user's uid is in (the first id of `--uid-range`): it may read.
    Shared,
}

/// One directory of the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dir {
    /// Relative to the data directory; empty for the data directory itself.
    pub path: &'static str,
    pub group: Group,
    pub mode: u32,
}

const USERS: &str = "users";
const STATE: &str = "state";
const SHARED: &str = "shared";
const REPOS: &str = "shared/repos";
const ORG_AUTH: &str = "shared/auth";
const ORG_CONFIG: &str = "shared/config";

/// The layout, parents before children. With a uid per user, root owns everything but the
/// homes; users may pass through the data directory and `users/` but list neither; the
/// repository library is readable by the shared group only; `state/`, `shared/auth` and
/// `shared/config` are root's alone (the organisation's keys and config reach OpenCode in its
/// environment, never through the file system).
pub const LAYOUT: &[Dir] = &[
    Dir {
        path: "",
        group: Group::Root,
        mode: 0o711,
    },
    Dir {
        path: USERS,
        group: Group::Root,
        mode: 0o711,
    },
    Dir {
        path: STATE,
        group: Group::Root,
        mode: 0o700,
    },
    Dir {
        path: SHARED,
        group: Group::Shared,
        mode: 0o750,
    },
    Dir {
        path: REPOS,
        group: Group::Shared,
        mode: 0o750,
    },
    Dir {
        path: ORG_AUTH,
        group: Group::Root,
        mode: 0o700,
    },
    Dir {
        path: ORG_CONFIG,
        group: Group::Root,
        mode: 0o700,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create the data directory {path}: {error}")]
    Create { path: PathBuf, error: io::Error },
    #[error("cannot resolve the data directory {path}: {error}")]
    Resolve { path: PathBuf, error: io::Error },
    #[error(
        "the data directory {root} is not writable by uid {uid} ({probed}: {error}): mount a \
         writable volume there (read-only mounts, and volumes owned by another user, cannot \
         hold users' homes)"
    )]
    NotWritable {
        root: PathBuf,
        probed: PathBuf,
        uid: u32,
        error: io::Error,
    },
    #[error("{path} is a symbolic link; the data directory must hold real directories")]
    Link { path: PathBuf },
    #[error(
        "cannot set the owner of {path}: {error}. Per-user uids need a volume whose owners can \
         be set (on EFS: an access point without an enforced POSIX user, and root access for \
         the task)"
    )]
    Owner { path: PathBuf, error: io::Error },
    #[error("cannot set the mode of {path}: {error}")]
    Mode { path: PathBuf, error: io::Error },
}

/// The data directory, by its absolute path (children run elsewhere, and the path is
/// handed to them and to Landlock).
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates what is missing of the layout under `path` (idempotent), after checking that
    /// this process can write there, and again in `state/` where the gateway keeps its files.
    /// Owners and modes are left as they are: see [`DataDir::secure`].
    pub fn create(path: &Path) -> Result<DataDir, DataDirError> {
        fs::create_dir_all(path).map_err(|error| DataDirError::Create {
            path: path.to_owned(),
            error,
        })?;
        let root = fs::canonicalize(path).map_err(|error| DataDirError::Resolve {
            path: path.to_owned(),
            error,
        })?;
        let dir = DataDir { root };
        // Before anything is created: a read-only volume is named as such, not by the first
        // directory that could not be made. A complete layout needs only `state/` writable.
        if LAYOUT
            .iter()
            .any(|entry| !dir.root.join(entry.path).is_dir())
        {
            dir.probe(&dir.root)?;
        }
        for entry in LAYOUT {
            let path = dir.root.join(entry.path);
            fs::create_dir_all(&path).map_err(|error| DataDirError::Create { path, error })?;
        }
        dir.probe(&dir.state())?;
        Ok(dir)
    }

    /// With a uid per user: every directory of the layout root's, with its group and mode
    /// (see [`LAYOUT`]); `shared_gid` is the group users read the repository library through.
    /// Refuses a symbolic link anywhere below the data directory (the data directory itself
    /// may be reached through one, a mount point say). Needs root.
    pub fn secure(&self, shared_gid: u32) -> Result<(), DataDirError> {
        for entry in LAYOUT {
            let path = self.root.join(entry.path);
            // Owners and modes go through a descriptor of the directory itself, opened
            // without following a link: nothing is changed through a link put in its place.
            let mut options = OpenOptions::new();
            options.read(true);
            let flags = nix::libc::O_DIRECTORY;
            if entry.path.is_empty() {
                options.custom_flags(flags);
            } else {
                options.custom_flags(flags | nix::libc::O_NOFOLLOW);
            }
            let dir = match options.open(&path) {
                Ok(dir) => dir,
                // ELOOP for a link to a directory, ENOTDIR for a link to anything else.
                Err(_) if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) => {
                    return Err(DataDirError::Link { path })
                }
                Err(error) => return Err(DataDirError::Owner { path, error }),
            };
            let gid = match entry.group {
                Group::Root => 0,
                Group::Shared => shared_gid,
            };
            if let Err(error) = std::os::unix::fs::fchown(&dir, Some(0), Some(gid)) {
                return Err(DataDirError::Owner { path, error });
            }
            if let Err(error) = dir.set_permissions(fs::Permissions::from_mode(entry.mode)) {
                return Err(DataDirError::Mode { path, error });
            }
        }
        Ok(())
    }

    /// Writes and removes a file in `dir`, or says why this process cannot write there.
    fn probe(&self, dir: &Path) -> Result<(), DataDirError> {
        let probed = dir.join(format!(".chamberlain-write-probe.{}", std::process::id()));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&probed);
        match written {
            Ok(_) => {
                let _ = fs::remove_file(&probed);
                Ok(())
            }
            Err(error) => Err(DataDirError::NotWritable {
                root: self.root.clone(),
                probed,
                uid: nix::unistd::geteuid().as_raw(),
                error,
            }),
        }
    }

    /// The data directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Users' homes, one directory each.
    pub fn users(&self) -> PathBuf {
        self.root.join(USERS)
    }

    /// The gateway's own files; no user may enter.
    pub fn state(&self) -> PathBuf {
        self.root.join(STATE)
    }

    /// The uid given to each user, for good.
    pub fn uid_map(&self) -> PathBuf {
        self.state().join("uids.json")
    }

    /// Digests of personal access tokens.
    pub fn access_tokens(&self) -> PathBuf {
        self.state().join("access-tokens.json")
    }

    /// Model use per user per day.
    pub fn llm_usage(&self) -> PathBuf {
        self.state().join("llm-usage.json")
    }

    /// The operator token the gateway makes when no `--admin-token-file` is given.
    pub fn admin_token(&self) -> PathBuf {
        self.state().join("admin-token")
    }

    /// The repository library: users read it, through the shared group.
    pub fn repos(&self) -> PathBuf {
        self.root.join(REPOS)
    }

    /// The organisation's OpenCode `auth.json` (its providers' keys).
    pub fn org_auth(&self) -> PathBuf {
        self.root.join(ORG_AUTH).join("auth.json")
    }

    /// The organisation's `opencode.json`.
    pub fn org_config(&self) -> PathBuf {
        self.root.join(ORG_CONFIG).join("opencode.json")
    }
}

/// What `chamberlain prepare-data` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The layout, with the owners and modes of a uid per user.
    Secured,
    /// Only the directories: this uid is not root, so it cannot give users uids of their own.
    DirectoriesOnly { uid: u32 },
}

/// `chamberlain prepare-data`: the layout under `path` and, as root, its owners and modes,
/// the shared group being the first id of `uid_range` (as in the gateway's uid map).
pub fn prepare(path: &Path, uid_range: (u32, u32)) -> Result<Prepared, DataDirError> {
    let dir = DataDir::create(path)?;
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        return Ok(Prepared::DirectoriesOnly { uid: uid.as_raw() });
    }
    dir.secure(uid_range.0)?;
    Ok(Prepared::Secured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
        let meta = fs::metadata(path).unwrap();
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    }

    #[test]
    fn every_path_is_under_the_absolute_data_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let relative = tmp.path().join("a/../data");
        let dir = DataDir::create(&relative).unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap().join("data");
        assert_eq!(dir.path(), root);
        for (path, expected) in [
            (dir.users(), "users"),
            (dir.state(), "state"),
            (dir.uid_map(), "state/uids.json"),
            (dir.access_tokens(), "state/access-tokens.json"),
            (dir.llm_usage(), "state/llm-usage.json"),
            (dir.admin_token(), "state/admin-token"),
            (dir.repos(), "shared/repos"),
            (dir.org_auth(), "shared/auth/auth.json"),
            (dir.org_config(), "shared/config/opencode.json"),
        ] {
            assert_eq!(path, root.join(expected));
        }
    }

    #[test]
    fn the_layout_is_created_whole_and_leaves_no_probe() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        for entry in LAYOUT {
            assert!(dir.path().join(entry.path).is_dir(), "{}", entry.path);
        }
        // Every file a path method names sits in a directory of the layout.
        for file in [dir.uid_map(), dir.org_auth(), dir.org_config()] {
            assert!(file.parent().unwrap().is_dir(), "{}", file.display());
        }
        let mut found: Vec<String> = Vec::new();
        for entry in LAYOUT {
            for child in fs::read_dir(dir.path().join(entry.path)).unwrap() {
                found.push(child.unwrap().file_name().to_string_lossy().into_owned());
            }
        }
        assert!(
            found.iter().all(|n| !n.contains("probe")),
            "a probe was left: {found:?}"
        );
        // Again, on what is there: nothing changes, nothing fails.
        fs::write(dir.access_tokens(), "{}").unwrap();
        let again = DataDir::create(tmp.path()).unwrap();
        assert_eq!(fs::read_to_string(again.access_tokens()).unwrap(), "{}");
    }

    #[test]
    fn the_modes_of_a_uid_per_user_are_applied() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: owners can be set by root only");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(&tmp.path().join("data")).unwrap();
        fs::set_permissions(dir.state(), fs::Permissions::from_mode(0o777)).unwrap();
        dir.secure(4242).unwrap();
        let found: Vec<_> = LAYOUT
            .iter()
            .map(|e| (e.path, owner_and_mode(&dir.path().join(e.path))))
            .collect();
        assert_eq!(
            found,
            [
                ("", (0, 0, 0o711)),
                ("users", (0, 0, 0o711)),
                ("state", (0, 0, 0o700)),
                ("shared", (0, 4242, 0o750)),
                ("shared/repos", (0, 4242, 0o750)),
                ("shared/auth", (0, 0, 0o700)),
                ("shared/config", (0, 0, 0o700)),
            ]
        );
        assert_eq!(
            prepare(dir.path(), (4343, 4400)).unwrap(),
            Prepared::Secured
        );
        assert_eq!(owner_and_mode(&dir.repos()), (0, 4343, 0o750));
    }

    #[test]
    fn a_link_below_the_data_directory_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: owners can be set by root only");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let data = tmp.path().join("data");
        fs::create_dir_all(data.join("shared")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, data.join("shared/auth")).unwrap();
        let dir = DataDir::create(&data).unwrap();
        let err = dir.secure(4242).unwrap_err();
        assert!(matches!(err, DataDirError::Link { .. }), "{err}");
        assert!(
            err.to_string().contains("shared/auth is a symbolic link"),
            "{err}"
        );
        // The data directory itself may be a link (a mount point, say).
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let through = DataDir::create(&link).unwrap();
        through.secure(4242).unwrap();
        assert_eq!(through.path(), elsewhere);
    }

    #[test]
    fn a_data_directory_that_cannot_be_written_is_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        // A file where the data directory should be: nothing can be made below it.
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        let err = DataDir::create(&file).unwrap_err();
        assert!(matches!(err, DataDirError::Create { .. }), "{err}");
        assert!(
            err.to_string().contains("cannot create the data directory"),
            "{err}"
        );
    }
}
