//! The operator's changes to the library: adding a repository from a git URL, fetching its
//! upstream, deleting it. Blocking; the actor runs them under the repository's write lock.

use std::fs;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::Path;

use super::catalogue::git_dir;
use super::copy::{git, rename_noreplace, run, upstream_url, CopyError};

/// Where a repository may be added from: an absolute path, a `file://` URL or `https://`.
/// A local path must be a directory that exists.
pub fn check_url(url: &str) -> Result<(), String> {
    check_shape(url)?;
    let local = url.strip_prefix("file://").unwrap_or(url);
    if local.starts_with('/') && !Path::new(local).is_dir() {
        return Err(format!("there is no directory at {local}"));
    }
    Ok(())
}

fn check_shape(url: &str) -> Result<(), String> {
    let ok = url.starts_with("https://") || url.starts_with("file:///") || url.starts_with('/');
    if !ok {
        return Err(format!(
            "{url:?} is not an absolute path, a file:// URL or an https:// URL"
        ));
    }
    if url.chars().any(char::is_control) || url.starts_with('-') {
        return Err("the URL contains control characters".into());
    }
    Ok(())
}

/// `git clone --bare` of `url` as `root/name`, via a temporary name, then readable by the
/// shared group (`shared_gid`) when users have uids.
pub fn add(
    root: &Path,
    name: &str,
    url: &str,
    description: Option<&str>,
    shared_gid: Option<u32>,
) -> Result<(), CopyError> {
    let dest = root.join(name);
    if fs::symlink_metadata(&dest).is_ok() {
        return Err(CopyError::Exists(name.to_owned()));
    }
    let tmp = root.join(format!(".adding-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let result = (|| {
        run(
            git()
                .args(["clone", "--quiet", "--bare", "--"])
                .arg(url)
                .arg(&tmp),
            "cloning the upstream",
        )
        .map_err(|e| match e {
            CopyError::Failed(m) => CopyError::Upstream(m),
            other => other,
        })?;
        if let Some(text) = description {
            let text: String = text.chars().filter(|c| !c.is_control()).take(500).collect();
            fs::write(tmp.join("description"), format!("{text}\n"))
                .map_err(|e| CopyError::Failed(format!("writing the description: {e}")))?;
        }
        if let Some(gid) = shared_gid {
            share(&tmp, gid)?;
        }
        rename_noreplace(&tmp, &dest).map_err(|_| CopyError::Exists(name.to_owned()))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Fetches the repository's upstream (branches and tags, pruned).
pub fn refresh(path: &Path, shared_gid: Option<u32>) -> Result<String, CopyError> {
    let Some(git_dir) = git_dir(path) else {
        return Err(CopyError::Failed(
            "not a git repository: there is no upstream to fetch".into(),
        ));
    };
    let upstream = upstream_url(&git_dir).ok_or_else(|| {
        CopyError::Failed("the repository has no upstream (remote origin)".into())
    })?;
    let bare = git_dir == path;
    let mut cmd = git();
    cmd.arg("--git-dir")
        .arg(&git_dir)
        .args(["fetch", "--quiet", "--prune", "origin"]);
    if bare {
        cmd.args(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]);
    }
    run(&mut cmd, "fetching the upstream").map_err(|e| match e {
        CopyError::Failed(m) => CopyError::Upstream(m),
        other => other,
    })?;
    if let Some(gid) = shared_gid {
        share(path, gid)?;
    }
    Ok(upstream)
}

/// Removes the repository: renamed away first, so it vanishes from the catalogue at once.
pub fn delete(root: &Path, name: &str) -> Result<(), CopyError> {
    let path = root.join(name);
    let gone = root.join(format!(".deleting-{name}-{}", std::process::id()));
    fs::rename(&path, &gone).map_err(|e| CopyError::Failed(format!("removing {name}: {e}")))?;
    fs::remove_dir_all(&gone).map_err(|e| CopyError::Failed(format!("removing {name}: {e}")))
}

/// Root's, readable by the shared group: directories 0750, files 0640 (0750 when
/// executable), symlinks untouched.
pub fn share(path: &Path, gid: u32) -> Result<(), CopyError> {
    let meta = fs::symlink_metadata(path)
        .map_err(|e| CopyError::Failed(format!("reading {}: {e}", path.display())))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let fail = |e: std::io::Error| CopyError::Failed(format!("sharing {}: {e}", path.display()));
    lchown(path, Some(0), Some(gid)).map_err(fail)?;
    let mode = if meta.is_dir() || meta.mode() & 0o100 != 0 {
        0o750
    } else {
        0o640
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(fail)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(fail)? {
            share(&entry.map_err(fail)?.path(), gid)?;
        }
    }
    Ok(())
}
