//! Making a user's home ready for a start (the plan's `initializeUserWorkspace` and
//! `symlinkSharedAuth`): the layout, a `.gitconfig` with the user's name and email, the
//! organisation's auth file in OpenCode's place, and ownership by the user's uid.
//!
//! Everything is idempotent and repairs what is missing, so a home half-made by a crash,
//! or made before per-user uids were switched on, is put right at the next start.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::isolation::UserIds;
use crate::workspace::{UserKey, UsersRoot, Workspace, WorkspaceError};

/// Who the user is, for git.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub email: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("preparing {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where OpenCode keeps its auth file, under a home.
pub fn auth_file(ws: &Workspace) -> PathBuf {
    ws.data_dir().join("opencode").join("auth.json")
}

/// Prepares the home of `key`. `shared_auth` is the organisation's auth file; it is linked
/// in when it exists. Blocking: run it off the actor thread.
pub fn provision(
    users: &UsersRoot,
    key: &UserKey,
    ids: Option<UserIds>,
    profile: &Profile,
    shared_auth: &Path,
) -> Result<Workspace, ProvisionError> {
    let ws = users.initialize(key)?;
    write_gitconfig(&ws, profile)?;
    if let Some(ids) = ids {
        own(&ws, ids)?;
        // Operators replace the shared file at will; keep it readable by users, and only
        // readable.
        share_read_only(shared_auth, ids.shared_gid)?;
    }
    link_shared_auth(&ws, shared_auth, ids)?;
    Ok(ws)
}

/// Makes an organisation file root's and readable (not writable) by the shared group. A
/// missing file is fine.
pub fn share_read_only(path: &Path, shared_gid: u32) -> Result<(), ProvisionError> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => {
            std::os::unix::fs::chown(path, Some(0), Some(shared_gid)).map_err(at(path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o640)).map_err(at(path))
        }
        _ => Ok(()),
    }
}

/// `~/.gitconfig` with the user's identity, unless the user already has one (it is theirs
/// to change; the child's `GIT_AUTHOR_*`/`GIT_COMMITTER_*` carry the identity regardless).
fn write_gitconfig(ws: &Workspace, profile: &Profile) -> Result<(), ProvisionError> {
    let path = ws.home().join(".gitconfig");
    if fs::symlink_metadata(&path).is_ok() {
        return Ok(());
    }
    let text = format!(
        "# Written by Chamberlain from your sign-in; yours to edit.\n[user]\n\tname = {}\n\temail = {}\n",
        git_value(&profile.name),
        git_value(&profile.email)
    );
    let tmp = ws.home().join(".gitconfig.chamberlain-tmp");
    let write = || -> io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(at(&path))
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

/// Ownership by the user's uid. A home not yet owned by it (made before uids were on) is
/// handed over entirely, once; otherwise only the top-level layout is checked.
fn own(ws: &Workspace, ids: UserIds) -> Result<(), ProvisionError> {
    let home = ws.home();
    let meta = fs::symlink_metadata(home).map_err(at(home))?;
    if meta.uid() != ids.uid {
        tracing::info!(home = %home.display(), uid = ids.uid, "handing the home over to the user's uid");
        chown_tree(home, ids)?;
    } else {
        for path in std::iter::once(home.to_owned())
            .chain(ws.layout().map(|sub| home.join(sub)))
            .chain(std::iter::once(home.join(".gitconfig")))
        {
            match lchown(&path, Some(ids.uid), Some(ids.gid)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(at(&path)(e)),
            }
        }
    }
    fs::set_permissions(home, fs::Permissions::from_mode(0o700)).map_err(at(home))
}

fn chown_tree(path: &Path, ids: UserIds) -> Result<(), ProvisionError> {
    lchown(path, Some(ids.uid), Some(ids.gid)).map_err(at(path))?;
    let meta = fs::symlink_metadata(path).map_err(at(path))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(at(path))? {
            let entry = entry.map_err(at(path))?;
            // The shared auth link stays the gateway's (see `link_shared_auth`).
            if entry.file_name() == "auth.json" && entry.path().is_symlink() {
                continue;
            }
            chown_tree(&entry.path(), ids)?;
        }
    }
    Ok(())
}

/// Makes `~/.local/share/opencode/auth.json` a link to the organisation's auth file, so
/// every user's OpenCode sees the shared API keys. The shared file is read-only to users
/// (root's, group-readable with uids; a read-only Landlock rule otherwise), so writing
/// through the link fails. With uids the directory holding the link is root's, group-
/// writable for the user and sticky, so the user's processes can create their own files
/// there but cannot remove or replace the link. A user's own auth file found in its place
/// is kept beside it as `auth.json.own`. When the organisation has no auth file, a link
/// left from before is removed and the user may keep keys of their own.
fn link_shared_auth(
    ws: &Workspace,
    shared_auth: &Path,
    ids: Option<UserIds>,
) -> Result<(), ProvisionError> {
    let link = auth_file(ws);
    let dir = link.parent().unwrap_or(ws.home()).to_owned();
    fs::create_dir_all(&dir).map_err(at(&dir))?;
    if let Some(ids) = ids {
        lchown(&dir, Some(0), Some(ids.gid)).map_err(at(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1770)).map_err(at(&dir))?;
    }
    let current = fs::symlink_metadata(&link);
    let points_at_shared = fs::read_link(&link).is_ok_and(|t| t == shared_auth);
    if !shared_auth.is_file() {
        if points_at_shared {
            fs::remove_file(&link).map_err(at(&link))?;
        }
        return Ok(());
    }
    match current {
        Ok(_) if points_at_shared => return Ok(()),
        Ok(meta) if meta.is_file() => {
            let kept = dir.join("auth.json.own");
            tracing::info!(path = %link.display(), "keeping a user's own auth file as auth.json.own");
            fs::rename(&link, &kept).map_err(at(&link))?;
        }
        _ => {}
    }
    let tmp = dir.join(".auth.json.chamberlain-tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(shared_auth, &tmp).map_err(at(&tmp))?;
    fs::rename(&tmp, &link).map_err(at(&link))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile {
            name: "Ana \"A\" \\ B\n[core]".into(),
            email: "ana@example.com".into(),
        }
    }

    #[test]
    fn git_values_cannot_inject_configuration() {
        assert_eq!(git_value("Ana"), "\"Ana\"");
        let v = git_value("x\"\n[core]\n\tpager = evil");
        assert!(!v.contains('\n'));
        assert_eq!(v, "\"x\\\" [core]  pager = evil\"");
    }

    #[test]
    fn provisioning_writes_gitconfig_once_and_links_the_shared_auth() {
        let dir = tempfile::tempdir().unwrap();
        let users = UsersRoot::new(dir.path().join("users"));
        fs::create_dir_all(users.path()).unwrap();
        let shared = dir.path().join("auth.json");
        let key = UserKey::derive("ana");

        // No shared file yet: nothing is linked.
        let ws = provision(&users, &key, None, &profile(), &shared).unwrap();
        let gitconfig = fs::read_to_string(ws.home().join(".gitconfig")).unwrap();
        assert!(
            gitconfig.contains("email = \"ana@example.com\""),
            "{gitconfig}"
        );
        assert_eq!(
            gitconfig.matches("[core]").count(),
            1,
            "only inside the quoted name"
        );
        assert!(fs::symlink_metadata(auth_file(&ws)).is_err());

        // The user logged in on their own, then the organisation adds keys.
        fs::write(auth_file(&ws), "{\"mine\":1}").unwrap();
        fs::write(&shared, "{\"org\":1}").unwrap();
        fs::write(ws.home().join(".gitconfig"), "[user]\n\tname = edited\n").unwrap();
        provision(&users, &key, None, &profile(), &shared).unwrap();
        assert_eq!(fs::read_link(auth_file(&ws)).unwrap(), shared);
        assert_eq!(fs::read_to_string(auth_file(&ws)).unwrap(), "{\"org\":1}");
        let own = auth_file(&ws).with_file_name("auth.json.own");
        assert_eq!(fs::read_to_string(own).unwrap(), "{\"mine\":1}");
        assert!(fs::read_to_string(ws.home().join(".gitconfig"))
            .unwrap()
            .contains("edited"));

        // Idempotent; and the link goes when the organisation's file does.
        provision(&users, &key, None, &profile(), &shared).unwrap();
        assert_eq!(fs::read_link(auth_file(&ws)).unwrap(), shared);
        fs::remove_file(&shared).unwrap();
        provision(&users, &key, None, &profile(), &shared).unwrap();
        assert!(fs::symlink_metadata(auth_file(&ws)).is_err());
    }
}
