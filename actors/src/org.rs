//! The organisation's OpenCode files under `shared/` — its keys (`auth/auth.json`, in
//! OpenCode's own format) and its config (`config/opencode.json`) — read by the gateway at
//! every start. The config reaches the child as `OPENCODE_CONFIG_CONTENT`, with every
//! relayable provider pointed at the gateway's relay (see `llm.rs`); the keys reach nobody.
//! Nothing of them is placed in homes, and `shared/auth` and `shared/config` are the
//! gateway's alone.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::llm::{self, RelaySettings, RelayedProvider};

/// Largest file accepted: one environment string may hold at most 128 KiB on Linux.
pub const MAX_ORG_FILE: u64 = 100 * 1024;

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

/// What the organisation's files give one start.
#[derive(Default)]
pub struct OrgStart {
    /// Variables for the child (`OPENCODE_CONFIG_CONTENT`).
    pub env: Vec<(String, String)>,
    /// The providers relayed for it, each with the org's key (the gateway's only).
    pub providers: BTreeMap<String, RelayedProvider>,
}

impl std::fmt::Debug for OrgStart {
    /// Names only: the values hold the start's token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("OrgStart")
            .field("env", &names)
            .field("providers", &self.providers)
            .finish()
    }
}

impl OrgFiles {
    /// The organisation's config for one start whose relay token is `token`: every provider
    /// of the org's `auth.json` that can be relayed points at the relay with that token, and
    /// no key is handed over. Blocking.
    pub fn for_start(&self, relay: &RelaySettings, token: &str) -> Result<OrgStart, OrgError> {
        let unusable = |path: &Path, problem: String| OrgError::Unusable {
            path: path.to_owned(),
            problem,
        };
        let auth = match read(&self.auth)? {
            Some(text) => Some(
                serde_json::from_str::<Value>(&text)
                    .map_err(|e| unusable(&self.auth, format!("not JSON: {e}")))?,
            ),
            None => None,
        };
        let config_text = read(&self.config)?;
        let config =
            match &config_text {
                Some(text) => Some(serde_json::from_str::<Value>(&strip_jsonc(text)).map_err(
                    |e| unusable(&self.config, format!("not JSON (comments allowed): {e}")),
                )?),
                None => None,
            };
        let plan = match &auth {
            Some(auth) => llm::plan(auth, config.as_ref(), &relay.upstreams),
            None => llm::Plan::default(),
        };
        for (id, why) in &plan.skipped {
            tracing::warn!(provider = %id, reason = %why, "the organisation's key for this provider is not relayed, and not given to users");
        }
        let mut env = Vec::new();
        if config.is_some() || !plan.providers.is_empty() {
            let config =
                llm::instance_config(config.as_ref(), &plan.providers, &relay.base_url, token);
            env.push((CONFIG_VAR.to_owned(), config.to_string()));
        }
        Ok(OrgStart {
            env,
            providers: plan.providers,
        })
    }
}

/// JSON with comments (`//`, `/* */`) and trailing commas, as OpenCode reads its config,
/// made plain JSON. Text inside strings is kept as it is.
fn strip_jsonc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => {
                    if let Some(escaped) = chars.next() {
                        out.push(escaped);
                    }
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                skip_block_comment(&mut chars);
                out.push(' ');
            }
            (',', _) => {
                // A comma followed only by blanks (and comments) before a closing bracket.
                if matches!(next_significant(chars.clone()), Some('}' | ']')) {
                    continue;
                }
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Past a `/* … */` whose `/` was just taken and whose `*` is next.
fn skip_block_comment(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    chars.next();
    let mut last = ' ';
    for c in chars.by_ref() {
        if last == '*' && c == '/' {
            break;
        }
        last = c;
    }
}

/// The next character that is neither blank nor inside a comment.
fn next_significant(mut chars: std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    loop {
        let c = chars.next()?;
        match (c, chars.peek()) {
            (c, _) if c.is_whitespace() => {}
            ('/', Some('/')) => {
                chars.by_ref().find(|&c| c == '\n')?;
            }
            ('/', Some('*')) => skip_block_comment(&mut chars),
            (c, _) => return Some(c),
        }
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

    fn relay() -> RelaySettings {
        RelaySettings {
            base_url: "http://127.0.0.1:5".into(),
            upstreams: BTreeMap::new(),
            grants: Default::default(),
        }
    }

    #[test]
    fn keys_are_relayed_and_never_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let org = files(dir.path());
        assert!(org.for_start(&relay(), "tok").unwrap().env.is_empty());
        fs::write(
            &org.auth,
            r#"{"anthropic":{"type":"api","key":"sk-secret"}}"#,
        )
        .unwrap();
        fs::write(
            &org.config,
            "{ // jsonc\n \"model\": \"anthropic/x\", /* a note, with a comma */ \"share\": \"disabled\",\n}",
        )
        .unwrap();
        let start = org.for_start(&relay(), "tok").unwrap();
        assert_eq!(start.env.len(), 1);
        assert_eq!(start.env[0].0, CONFIG_VAR);
        let config: Value = serde_json::from_str(&start.env[0].1).unwrap();
        assert_eq!(config["model"], "anthropic/x");
        assert_eq!(config["share"], "disabled");
        assert_eq!(config["provider"]["anthropic"]["options"]["apiKey"], "tok");
        assert!(!start.env[0].1.contains("sk-secret"));
        assert_eq!(start.providers["anthropic"].key, "sk-secret");
    }

    #[test]
    fn jsonc_is_made_json() {
        let text =
            "{\"a\": \"// not a comment\", /* x */ \"b\": [1, 2,], // end\n \"c\": \"\\\" ,}\",\n}";
        let value: Value = serde_json::from_str(&strip_jsonc(text)).unwrap();
        assert_eq!(value["a"], "// not a comment");
        assert_eq!(value["b"], serde_json::json!([1, 2]));
        assert_eq!(value["c"], "\" ,}");
    }

    #[test]
    fn links_huge_files_and_broken_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let org = files(dir.path());
        std::os::unix::fs::symlink("/etc/hostname", &org.auth).unwrap();
        let err = org.for_start(&relay(), "t").unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        fs::remove_file(&org.auth).unwrap();
        fs::write(&org.auth, "{not json").unwrap();
        assert!(org
            .for_start(&relay(), "t")
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
        fs::remove_file(&org.auth).unwrap();
        fs::write(&org.config, vec![b' '; MAX_ORG_FILE as usize + 1]).unwrap();
        assert!(org
            .for_start(&relay(), "t")
            .unwrap_err()
            .to_string()
            .contains("bytes long"));
    }
}
