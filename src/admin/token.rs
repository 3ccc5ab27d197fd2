//! The operator token of the TCP admin listener: read from `--admin-token-file`, or made at
//! every start (32 random bytes, hex) and written to `state/admin-token`, mode 0600, where
//! only the gateway's uid and root can read it (users' uids cannot enter `state/`, and
//! Landlock keeps `state/` from users who share the gateway's uid).
//!
//! Only a SHA-256 digest of the token is kept in memory, and a presented token is compared
//! digest to digest in constant time.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// A token shorter than this is refused: it could be guessed.
const MIN_LEN: usize = 16;
const MAX_LEN: usize = 4096;

pub struct AdminToken {
    digest: [u8; 32],
    /// The file it is in, for the start-up log and refusals.
    pub path: PathBuf,
}

impl AdminToken {
    /// The token in `path`, which must be a regular file that group and others cannot
    /// read or write when the gateway runs as root (refused) or otherwise (warned).
    pub fn read(path: &Path) -> anyhow::Result<AdminToken> {
        let shown = path.display();
        let mut file =
            std::fs::File::open(path).with_context(|| format!("--admin-token-file {shown}"))?;
        let meta = file
            .metadata()
            .with_context(|| format!("--admin-token-file {shown}"))?;
        if !meta.is_file() {
            bail!("--admin-token-file {shown} is not a regular file");
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let why = format!(
                "--admin-token-file {shown} has mode {mode:04o}: other users could read the admin \
                 token. Make it 0600 (chmod 600 {shown})"
            );
            if nix::unistd::geteuid().is_root() {
                bail!("{why}");
            }
            tracing::warn!("{why}");
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() && meta.uid() != 0 {
            tracing::warn!(
                owner = meta.uid(),
                "--admin-token-file {shown} belongs to another user, who can change it"
            );
        }
        let mut text = String::new();
        Read::by_ref(&mut file)
            .take(MAX_LEN as u64 + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("--admin-token-file {shown} is not text"))?;
        let token = text.trim();
        if token.len() > MAX_LEN {
            bail!("--admin-token-file {shown}: the token is longer than {MAX_LEN} bytes");
        }
        if token.len() < MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "--admin-token-file {shown}: the token must be at least {MIN_LEN} printable ASCII \
                 characters without spaces (e.g. `openssl rand -hex 32`)"
            );
        }
        Ok(AdminToken {
            digest: digest(token),
            path: path.to_owned(),
        })
    }

    /// A new random token, written to `path` (`state/admin-token`, mode 0600) through a
    /// temporary file and a rename, so a reader never sees half of it.
    pub fn generate(path: &Path) -> anyhow::Result<AdminToken> {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| anyhow::anyhow!("no randomness for the admin token"))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        chamberlain_actors::state_file::write_atomically(
            path,
            format!("{token}\n").as_bytes(),
            0o600,
        )
        .with_context(|| format!("cannot write the admin token {}", path.display()))?;
        Ok(AdminToken {
            digest: digest(&token),
            path: path.to_owned(),
        })
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn accepts(&self, presented: &str) -> bool {
        let other = digest(presented.trim());
        self.digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Removes the token an earlier run generated at `path` (none is in force now).
pub fn remove_generated(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed the admin token of an earlier run")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an old admin token")
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    let value = headers
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_private_and_accepted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let path = dir.path().join("state/admin-token");
        let first = AdminToken::generate(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(first.accepts(text.trim()));
        assert!(first.accepts(&text), "a trailing newline is fine");
        assert!(!first.accepts(""));
        assert!(!first.accepts(&text.trim()[..63]));
        // Each start makes a new one; no temporary file is left.
        let second = AdminToken::generate(&path).unwrap();
        assert!(!second.accepts(text.trim()));
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["admin-token"]);
        remove_generated(&path);
        assert!(!path.exists());
    }

    #[test]
    fn a_token_file_must_be_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let token = AdminToken::read(&path).unwrap();
        assert!(token.accepts("0123456789abcdef0123"));
        assert!(!token.accepts("0123456789abcdef0124"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        if nix::unistd::geteuid().is_root() {
            let err = AdminToken::read(&path).err().unwrap().to_string();
            assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "short").unwrap();
        assert!(AdminToken::read(&path).is_err());
        std::fs::write(&path, "has a space in the middle!!").unwrap();
        assert!(AdminToken::read(&path).is_err());
        assert!(AdminToken::read(dir.path()).is_err(), "a directory");
        assert!(AdminToken::read(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn bearer_tokens_are_read_from_authorization() {
        use actix_web::http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc "));
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
    }
}
