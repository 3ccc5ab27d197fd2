//! Names for users' uids in `passwd` and `group` files (`--system-accounts`), so that shells,
//! `ssh`, `id` and `ls -l` in a user's terminal show a name instead of "I have no name!".
//!
//! Meant for a container the gateway owns (its own `/etc`): every rewrite keeps each line whose
//! id lies outside `--uid-range` exactly as it was and replaces the ones inside it with the
//! current map, so entries are never duplicated and an account the image brought is never
//! touched. Files are replaced atomically (temporary file, rename), keeping their mode.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the entries go, and where users' homes are.
#[derive(Clone, Debug)]
pub struct AccountFiles {
    pub passwd: PathBuf,
    pub group: PathBuf,
    /// The directory holding each user's home, named by user key.
    pub homes: PathBuf,
}

/// The shared group's name.
const SHARED_GROUP: &str = "chamberlain";

impl AccountFiles {
    /// Makes both files list exactly `users` (user key → uid) within `first..=last`, `first`
    /// being the shared group.
    pub fn sync(&self, users: &BTreeMap<String, u32>, first: u32, last: u32) -> io::Result<()> {
        let ours = |id: u32| (first..=last).contains(&id);
        let passwd = read(&self.passwd)?;
        let kept_users = kept(&passwd, 2, ours);
        let taken: BTreeSet<&str> = kept_users.iter().filter_map(|l| name_of(l)).collect();
        let group = read(&self.group)?;
        let kept_groups = kept(&group, 2, ours);
        let taken_groups: BTreeSet<&str> = kept_groups.iter().filter_map(|l| name_of(l)).collect();

        let shell = ["/bin/bash", "/bin/sh"]
            .into_iter()
            .find(|s| Path::new(s).exists())
            .unwrap_or("/bin/sh");
        let mut by_uid: Vec<(u32, &str)> = users.iter().map(|(k, u)| (*u, k.as_str())).collect();
        by_uid.sort();
        let mut passwd_out: Vec<String> = kept_users.iter().map(|l| l.to_string()).collect();
        let mut group_out: Vec<String> = kept_groups.iter().map(|l| l.to_string()).collect();
        let shared = if taken_groups.contains(SHARED_GROUP) {
            format!("g{first}")
        } else {
            SHARED_GROUP.to_owned()
        };
        group_out.push(format!("{shared}:x:{first}:"));
        for (uid, key) in by_uid {
            let name = if valid_name(key) && !taken.contains(key) && !taken_groups.contains(key) {
                key.to_owned()
            } else {
                format!("u{uid}")
            };
            let home = self.homes.join(key);
            passwd_out.push(format!(
                "{name}:x:{uid}:{uid}::{}:{shell}",
                home.to_string_lossy().replace([':', '\n'], "_")
            ));
            group_out.push(format!("{name}:x:{uid}:"));
        }
        replace(&self.passwd, &passwd_out)?;
        replace(&self.group, &group_out)
    }
}

/// A name every tool accepts: a lowercase letter, then lowercase letters, digits, `.`, `-`
/// and `_`, at most 32 bytes.
fn valid_name(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some('a'..='z'))
        && key.len() <= 32
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
}

fn read(path: &Path) -> io::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading {}: {e}", path.display()),
        )),
    }
}

/// The lines to keep: everything but entries whose id (field `field`) is ours.
fn kept(text: &str, field: usize, ours: impl Fn(u32) -> bool) -> Vec<&str> {
    text.lines()
        .filter(|line| {
            let id = line
                .split(':')
                .nth(field)
                .and_then(|f| f.parse::<u32>().ok());
            !id.is_some_and(&ours)
        })
        .collect()
}

fn name_of(line: &str) -> Option<&str> {
    line.split(':').next().filter(|n| !n.is_empty())
}

fn replace(path: &Path, lines: &[String]) -> io::Result<()> {
    let context =
        |e: io::Error| io::Error::new(e.kind(), format!("writing {}: {e}", path.display()));
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.chamberlain.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        for line in lines {
            writeln!(file, "{line}")?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        context(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                          alice:x:1000:1000::/home/alice:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:\nnogroup:x:65534:\n";

    fn files(dir: &Path) -> AccountFiles {
        fs::write(dir.join("passwd"), PASSWD).unwrap();
        fs::write(dir.join("group"), GROUP).unwrap();
        fs::set_permissions(dir.join("passwd"), fs::Permissions::from_mode(0o644)).unwrap();
        AccountFiles {
            passwd: dir.join("passwd"),
            group: dir.join("group"),
            homes: PathBuf::from("/data/users"),
        }
    }

    fn map(entries: &[(&str, u32)]) -> BTreeMap<String, u32> {
        entries.iter().map(|(k, u)| (k.to_string(), *u)).collect()
    }

    #[test]
    fn users_get_names_and_the_image_accounts_stay_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let users = map(&[
            ("bob", 200002),
            ("alice", 200001),
            ("3f2a1c9e-5b7d-4e0a-9c1f-2a3b4c5d6e7f", 200003),
            ("Root", 200004),
        ]);
        files.sync(&users, 200000, 265535).unwrap();
        let passwd = fs::read_to_string(&files.passwd).unwrap();
        assert!(passwd.starts_with(PASSWD), "{passwd}");
        let added: Vec<&str> = passwd.lines().skip(4).collect();
        assert_eq!(
            added,
            [
                // "alice" is the image's own account: the user gets a uid-based name.
                "u200001:x:200001:200001::/data/users/alice:/bin/bash",
                "bob:x:200002:200002::/data/users/bob:/bin/bash",
                "u200003:x:200003:200003::/data/users/3f2a1c9e-5b7d-4e0a-9c1f-2a3b4c5d6e7f:/bin/bash",
                "u200004:x:200004:200004::/data/users/Root:/bin/bash",
            ]
        );
        let group = fs::read_to_string(&files.group).unwrap();
        assert!(group.starts_with(GROUP));
        assert!(group.contains("\nchamberlain:x:200000:\n"), "{group}");
        assert!(group.contains("\nbob:x:200002:\n"), "{group}");
        let mode = fs::metadata(&files.passwd).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn a_second_sync_replaces_rather_than_appends() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        files
            .sync(&map(&[("bob", 200002)]), 200000, 265535)
            .unwrap();
        let once = fs::read_to_string(&files.passwd).unwrap();
        files
            .sync(&map(&[("bob", 200002)]), 200000, 265535)
            .unwrap();
        assert_eq!(fs::read_to_string(&files.passwd).unwrap(), once);
        files
            .sync(&map(&[("bob", 200002), ("carol", 200003)]), 200000, 265535)
            .unwrap();
        let passwd = fs::read_to_string(&files.passwd).unwrap();
        let bobs = passwd.lines().filter(|l| l.starts_with("bob:")).count();
        assert_eq!(bobs, 1, "{passwd}");
        assert!(passwd.contains("carol:x:200003:"), "{passwd}");
        let group = fs::read_to_string(&files.group).unwrap();
        let shared = group
            .lines()
            .filter(|l| l.starts_with("chamberlain:"))
            .count();
        assert_eq!(shared, 1, "{group}");
        assert!(
            !dir.path().read_dir().unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')),
            "a temporary file was left behind"
        );
    }

    #[test]
    fn names_tools_accept() {
        assert!(valid_name("alice"));
        assert!(valid_name("a-b_c9"));
        assert!(valid_name("alice.smith"));
        for bad in [
            "",
            "Alice",
            "9lives",
            "-x",
            ".a",
            "a:b",
            "a b",
            &"a".repeat(33),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
