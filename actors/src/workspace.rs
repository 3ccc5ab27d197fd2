//! User workspaces on disk: the user key that names a home directory, and creating that home.
//!
//! Layout under `<data-dir>/users/<key>/` (the child's HOME):
//! `workspace/` (OpenCode's cwd), `.config/`, `.local/share/`, `.local/state/`, `.cache/`
//! (the XDG directories) and `.tmp/` (TMPDIR).
//!
//! Root creates a home empty, owned by the user, in a hidden temporary directory renamed into
//! place (so a crash leaves nothing or a home; leftovers are swept at start-up). The layout
//! inside is made by the user's own helper (see `provision` and `as_user`).

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Prefix of homes being created; never a valid user key (keys never contain `.` at the start).
const PARTIAL_PREFIX: &str = ".init-";

/// The directory name of a user's home, derived from the identity's subject so that no
/// subject can name a path outside `users/`.
///
/// A subject made only of ASCII letters, digits, `-` and `_` (1–64 characters, starting with a
/// letter or digit; Cognito subjects are UUIDs of this form) is used as is. Anything else is
/// replaced by `u.` followed by 32 hex digits of its SHA-256: the `.` cannot occur in a
/// subject used as is, so the two forms never collide.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey(String);

impl UserKey {
    pub fn derive(subject: &str) -> Self {
        if is_plain_subject(subject) {
            return UserKey(subject.to_owned());
        }
        let digest = Sha256::digest(subject.as_bytes());
        let mut key = String::with_capacity(34);
        key.push_str("u.");
        for byte in &digest[..16] {
            key.push_str(&format!("{byte:02x}"));
        }
        UserKey(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_plain_subject(subject: &str) -> bool {
    let bytes = subject.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot create user home {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("user home {path} exists but is not a directory")]
    NotADirectory { path: PathBuf },
}

/// The `users/` directory that holds every user's home.
#[derive(Clone, Debug)]
pub struct UsersRoot {
    root: PathBuf,
}

impl UsersRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn workspace(&self, key: &UserKey) -> Workspace {
        Workspace {
            home: self.root.join(key.as_str()),
        }
    }

    /// Whether the user's home exists (complete: homes appear by an atomic rename).
    pub fn is_initialized(&self, key: &UserKey) -> bool {
        self.workspace(key).home.is_dir()
    }

    /// Creates the user's home, empty, if it does not exist, owned by `owner` (uid, gid)
    /// when given; an existing one must be a directory (never a link). What is inside is
    /// the user's to make (see `provision`). Idempotent and safe to race with itself.
    /// Blocking: run it off the actor thread.
    pub fn initialize(
        &self,
        key: &UserKey,
        owner: Option<(u32, u32)>,
    ) -> Result<Workspace, WorkspaceError> {
        let ws = self.workspace(key);
        match fs::symlink_metadata(&ws.home) {
            Ok(meta) if meta.is_dir() => return Ok(ws),
            Ok(_) => return Err(WorkspaceError::NotADirectory { path: ws.home }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(WorkspaceError::Create {
                    path: ws.home,
                    source,
                })
            }
        }

        // `users/` is the gateway's: nobody else can put anything at this name.
        let partial = self.root.join(format!(
            "{PARTIAL_PREFIX}{}-{}",
            key.as_str(),
            unique_suffix()
        ));
        make_dir(&partial, 0o700)?;
        if let Some((uid, gid)) = owner {
            if let Err(source) = std::os::unix::fs::lchown(&partial, Some(uid), Some(gid)) {
                let _ = fs::remove_dir(&partial);
                return Err(WorkspaceError::Create {
                    path: partial,
                    source,
                });
            }
        }
        match crate::repos::copy::rename_noreplace(&partial, &ws.home) {
            Ok(()) => Ok(ws),
            Err(source) => {
                let _ = fs::remove_dir(&partial);
                // Another initialization won the race: theirs is complete, use it.
                if fs::symlink_metadata(&ws.home).is_ok_and(|m| m.is_dir()) {
                    Ok(ws)
                } else {
                    Err(WorkspaceError::Create {
                        path: ws.home,
                        source,
                    })
                }
            }
        }
    }

    /// Removes homes left half-created by a crash. Returns how many were removed.
    pub fn sweep_partial(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(PARTIAL_PREFIX)
            {
                fs::remove_dir_all(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Twelve random hex digits for temporary names (the pid if the kernel's random source
/// fails; a collision only costs a retry).
pub(crate) fn unique_suffix() -> String {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        return std::process::id().to_string();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn make_dir(path: &Path, mode: u32) -> Result<(), WorkspaceError> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(source) => Err(WorkspaceError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// One user's home directory and the well-known places in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workspace {
    home: PathBuf,
}

/// Subdirectories of a home, relative to it.
const LAYOUT: &[&str] = &[
    "workspace",
    ".config",
    ".local",
    ".local/share",
    ".local/state",
    ".cache",
    ".tmp",
];

impl Workspace {
    /// A home at `home` (a pod's, where the volume is mounted).
    pub fn at(home: impl Into<PathBuf>) -> Self {
        Self { home: home.into() }
    }

    pub fn home(&self) -> &Path {
        &self.home
    }
    pub fn workspace_dir(&self) -> PathBuf {
        self.home.join("workspace")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.home.join(".config")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.home.join(".local/share")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.home.join(".local/state")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.home.join(".cache")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.home.join(".tmp")
    }

    /// The subdirectories of every home, relative to it.
    pub fn layout(&self) -> impl Iterator<Item = &'static str> {
        LAYOUT.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn plain_subjects_are_used_as_is() {
        let uuid = "3f1c2a9e-5b7d-4e1f-9a2b-0c8d7e6f5a4b";
        assert_eq!(UserKey::derive(uuid).as_str(), uuid);
        assert_eq!(UserKey::derive("alice").as_str(), "alice");
        assert_eq!(UserKey::derive("a_b-c9").as_str(), "a_b-c9");
    }

    #[test]
    fn unsafe_subjects_are_hashed_into_one_path_component() {
        let long = "x".repeat(10_000);
        for subject in [
            "..",
            ".",
            "",
            "a/b",
            "../../etc",
            "a\0b",
            "alice.smith",
            "-leading-dash",
            "_leading",
            long.as_str(),
            "ünïcode",
        ] {
            let key = UserKey::derive(subject);
            let s = key.as_str();
            assert!(s.starts_with("u."), "{subject:?} -> {s}");
            assert_eq!(s.len(), 34);
            assert!(s[2..].bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(Path::new(s).components().count(), 1);
        }
    }

    #[test]
    fn derivation_is_stable_and_distinct() {
        assert_eq!(UserKey::derive("a.b"), UserKey::derive("a.b"));
        assert_ne!(UserKey::derive("a.b"), UserKey::derive("a.c"));
        assert_ne!(UserKey::derive("a.b"), UserKey::derive("ab"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        /// Whatever a token's `sub` is, the key is one safe path component under `users/`,
        /// and the two forms (as is, hashed) cannot be confused.
        #[test]
        fn any_subject_is_one_safe_path_component(
            subject in "\\PC{0,80}|[A-Za-z0-9._/-]{0,70}|[\\x00-\\x7f]{0,20}"
        ) {
            let key = UserKey::derive(&subject);
            let s = key.as_str();
            proptest::prop_assert!(!s.is_empty() && s.len() <= 64);
            proptest::prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            proptest::prop_assert!(!s.starts_with('-') && s != "." && s != "..");
            let root = Path::new("/data/users");
            let home = root.join(s);
            proptest::prop_assert_eq!(home.parent(), Some(root));
            proptest::prop_assert_eq!(Path::new(s).components().count(), 1);
            if s == subject {
                proptest::prop_assert!(!s.contains('.'));
            } else {
                proptest::prop_assert!(s.starts_with("u.") && s.len() == 34);
            }
            proptest::prop_assert_eq!(&UserKey::derive(&subject), &key);
        }
    }

    #[test]
    fn initialize_creates_an_empty_private_home_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let users = UsersRoot::new(dir.path());
        let key = UserKey::derive("alice");
        assert!(!users.is_initialized(&key));
        let ws = users.initialize(&key, None).unwrap();
        assert!(users.is_initialized(&key));
        let mode = fs::metadata(ws.home()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::write(ws.home().join("keep.txt"), "x").unwrap();
        let again = users.initialize(&key, None).unwrap();
        assert_eq!(again, ws);
        assert!(ws.home().join("keep.txt").exists(), "content kept");
        // Nothing half-made is left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_link_in_place_of_a_home_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let users = UsersRoot::new(dir.path().join("users"));
        fs::create_dir(users.path()).unwrap();
        std::os::unix::fs::symlink(dir.path(), users.path().join("mallory")).unwrap();
        assert!(matches!(
            users.initialize(&UserKey::derive("mallory"), None),
            Err(WorkspaceError::NotADirectory { .. })
        ));
    }

    #[test]
    fn sweep_removes_half_created_homes_only() {
        let dir = tempfile::tempdir().unwrap();
        let users = UsersRoot::new(dir.path());
        users.initialize(&UserKey::derive("bob"), None).unwrap();
        fs::create_dir_all(dir.path().join(".init-carol-1234/workspace")).unwrap();
        assert_eq!(users.sweep_partial().unwrap(), 1);
        assert!(dir.path().join("bob").is_dir());
        assert!(!dir.path().join(".init-carol-1234").exists());
    }

    #[test]
    fn a_file_in_place_of_a_home_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let users = UsersRoot::new(dir.path());
        fs::write(dir.path().join("eve"), "not a dir").unwrap();
        assert!(matches!(
            users.initialize(&UserKey::derive("eve"), None),
            Err(WorkspaceError::NotADirectory { .. })
        ));
    }
}
