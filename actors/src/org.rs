//! The organisation's OpenCode files under `shared/` — its keys (`auth/auth.json`, in
//! OpenCode's own format) and its config (`config/opencode.json`) — and how they reach
//! each user's OpenCode: read by the gateway at every start and put into the child's
//! environment (`OPENCODE_AUTH_CONTENT`, `OPENCODE_CONFIG_CONTENT`). Nothing of them is
//! placed in homes, and `shared/auth` and `shared/config` are the gateway's alone.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest file accepted: one environment string may hold at most 128 KiB on Linux.
pub const MAX_ORG_FILE: u64 = 100 * 1024;

pub const AUTH_VAR: &str = "OPENCODE_AUTH_CONTENT";
pub const CONFIG_VAR: &str = "OPENCODE_CONFIG_CONTENT";

#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error("cannot read the organisation's file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the organisation's file {path} is {problem}")]
    Unusable { path: PathBuf, problem: String },
}

#[derive(Clone, Debug)]
pub struct OrgFiles {
    pub auth: PathBuf,
    pub config: PathBuf,
}

impl OrgFiles {
    /// The variables for a child: one per file that exists. Blocking.
    pub fn environment(&self) -> Result<Vec<(String, String)>, OrgError> {
        let mut env = Vec::new();
        if let Some(auth) = read(&self.auth)? {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&auth) {
                return Err(OrgError::Unusable {
                    path: self.auth.clone(),
                    problem: format!("not JSON: {e}"),
                });
            }
            env.push((AUTH_VAR.to_owned(), auth));
        }
        if let Some(config) = read(&self.config)? {
            env.push((CONFIG_VAR.to_owned(), config));
        }
        Ok(env)
    }
}

/// The file's text, or `None` when there is none. Never follows a symlink; only a regular
/// file of at most [`MAX_ORG_FILE`] bytes of UTF-8 without NUL is accepted.
fn read(path: &Path) -> Result<Option<String>, OrgError> {
    let unusable = |problem: String| OrgError::Unusable {
        path: path.to_owned(),
        problem,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(unusable(
                "a symbolic link; put the file itself there".into(),
            ))
        }
        Err(source) => {
            return Err(OrgError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let meta = file.metadata().map_err(|source| OrgError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(unusable("not a regular file".into()));
    }
    if meta.len() > MAX_ORG_FILE {
        return Err(unusable(format!(
            "{} bytes long; at most {MAX_ORG_FILE} are supported",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_ORG_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| OrgError::Read {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_ORG_FILE {
        return Err(unusable("growing while read".into()));
    }
    let text = String::from_utf8(bytes).map_err(|_| unusable("not UTF-8".into()))?;
    if text.contains('\0') {
        return Err(unusable("holding a NUL byte".into()));
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> OrgFiles {
        OrgFiles {
            auth: dir.join("auth.json"),
            config: dir.join("opencode.json"),
        }
    }

    #[test]
    fn files_that_exist_become_variables() {
        let dir = tempfile::tempdir().unwrap();
        let org = files(dir.path());
        assert!(org.environment().unwrap().is_empty());
        fs::write(&org.auth, r#"{"anthropic":{"type":"api","key":"k"}}"#).unwrap();
        fs::write(&org.config, "{ // jsonc\n}").unwrap();
        let env = org.environment().unwrap();
        assert_eq!(env[0].0, AUTH_VAR);
        assert!(env[0].1.contains("\"k\""));
        assert_eq!(env[1], (CONFIG_VAR.to_owned(), "{ // jsonc\n}".to_owned()));
    }

    #[test]
    fn links_huge_files_and_broken_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let org = files(dir.path());
        std::os::unix::fs::symlink("/etc/hostname", &org.auth).unwrap();
        let err = org.environment().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        fs::remove_file(&org.auth).unwrap();
        fs::write(&org.auth, "{not json").unwrap();
        assert!(org
            .environment()
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
        fs::remove_file(&org.auth).unwrap();
        fs::write(&org.config, vec![b' '; MAX_ORG_FILE as usize + 1]).unwrap();
        assert!(org
            .environment()
            .unwrap_err()
            .to_string()
            .contains("bytes long"));
    }
}
