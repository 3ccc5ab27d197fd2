//! What is in `shared/repos/`: one entry per directory, a git repository (bare or with a
//! work tree) or a plain folder. Reading an entry costs a handful of `stat`s; sizes are not
//! computed here (see `sizes.rs`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoKind {
    Git,
    Folder,
}

/// `SharedRepository` of the API.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedRepository {
    pub name: String,
    pub path: PathBuf,
    pub description: Option<String>,
    /// Milliseconds since the epoch: the latest change seen (for git, of HEAD and refs).
    pub last_modified: u64,
    /// `None` while being computed.
    pub size_bytes: Option<u64>,
    pub kind: RepoKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
}

const GIT_DEFAULT_DESCRIPTION: &str = "Unnamed repository;";

/// The git directory of a repository at `path`: `path` itself when bare, `path/.git` with a
/// work tree.
pub fn git_dir(path: &Path) -> Option<PathBuf> {
    let bare = path.join("HEAD").is_file() && path.join("objects").is_dir();
    if bare {
        return Some(path.to_owned());
    }
    let dot_git = path.join(".git");
    (dot_git.join("HEAD").is_file()).then_some(dot_git)
}

fn mtime_ms(path: &Path) -> Option<u64> {
    let modified = fs::symlink_metadata(path).ok()?.modified().ok()?;
    Some(modified.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// Reads one entry; `None` for what is not a repository (files, hidden names).
pub fn read(root: &Path, name: &str) -> Option<SharedRepository> {
    if name.starts_with('.') {
        return None;
    }
    let path = root.join(name);
    let meta = fs::symlink_metadata(&path).ok()?;
    if !meta.is_dir() {
        return None;
    }
    let git = git_dir(&path);
    let mut last_modified = mtime_ms(&path).unwrap_or(0);
    let mut default_branch = None;
    let mut description = read_description(&path.join(".description"));
    if let Some(git) = &git {
        for p in ["HEAD", "refs", "refs/heads", "packed-refs", "FETCH_HEAD"] {
            last_modified = last_modified.max(mtime_ms(&git.join(p)).unwrap_or(0));
        }
        default_branch = fs::read_to_string(git.join("HEAD")).ok().and_then(|head| {
            head.trim()
                .strip_prefix("ref: refs/heads/")
                .map(str::to_owned)
        });
        if description.is_none() {
            description = read_description(&git.join("description"))
                .filter(|d| !d.starts_with(GIT_DEFAULT_DESCRIPTION));
        }
    }
    Some(SharedRepository {
        name: name.to_owned(),
        path,
        description,
        last_modified,
        size_bytes: None,
        kind: if git.is_some() {
            RepoKind::Git
        } else {
            RepoKind::Folder
        },
        default_branch,
    })
}

fn read_description(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let text: String = text.trim().chars().take(500).collect();
    (!text.is_empty()).then_some(text)
}

/// Every repository under `root`, by name.
pub fn scan(root: &Path) -> Vec<SharedRepository> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut repos: Vec<SharedRepository> = entries
        .flatten()
        .filter_map(|e| read(root, e.file_name().to_str()?))
        .collect();
    repos.sort_by(|a, b| a.name.cmp(&b.name));
    repos
}

/// Total bytes of regular files below `path`, symlinks not followed. Slow for big trees:
/// run it in the background.
pub fn size_of(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}
