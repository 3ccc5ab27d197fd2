//! Attacks on the gateway from a signed-in user with a shell, against the real OpenCode:
//! each test does what an attacker at a terminal would, then checks that the victim — other
//! users, `shared/`, `state/`, files outside the home — is unchanged byte for byte and mode
//! for mode. Three classes: `homes` (root acting on paths a user controls),
//! `web` (the admin API from a terminal; browser-side attacks), `resources` (starving the
//! others; gateways sharing uids).

mod homes;
mod resources;
mod web;

use std::collections::BTreeMap;

use crate::support::Gateway;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A gateway as root in front of the real OpenCode with `--isolation <isolation>` and
/// `extra` flags. The attacks need root (uids); they fail, never skip, without it.
pub fn root_gateway(isolation: &str, extra: &[&str]) -> Gateway {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the attack tests run the gateway as root (CI runs them as root)"
    );
    let mut args = vec!["--isolation", isolation];
    args.extend_from_slice(extra);
    Gateway::real_with(&args, &[], None)
}

/// Everything observable about a tree: per path, its kind, owner, mode and content (or
/// link target). Links are recorded, never followed.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let what = if meta.file_type().is_symlink() {
            format!(
                "link -> {}",
                std::fs::read_link(&path)
                    .map_or_else(|e| e.to_string(), |t| t.display().to_string())
            )
        } else if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
            "dir".to_owned()
        } else {
            format!(
                "file {:?}",
                std::fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned())
            )
        };
        seen.insert(
            path.display().to_string(),
            format!(
                "{what} uid={} gid={} mode={:o}",
                meta.uid(),
                meta.gid(),
                meta.mode() & 0o7777
            ),
        );
    }
    seen
}

/// Asserts two snapshots are equal, naming the first difference.
pub fn assert_unchanged(
    what: &str,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) {
    for (path, was) in before {
        assert_eq!(after.get(path), Some(was), "{what}: {path} changed");
    }
    for path in after.keys() {
        assert!(before.contains_key(path), "{what}: {path} appeared");
    }
}
