//! The Unix ids of users, persisted in `state/uids.json` so that a user keeps their uid for
//! as long as the data directory lives (their files on disk are owned by it).
//!
//! The first id of the range is the shared group (read access to the organisation's files);
//! users get the following ids, the lowest free one first, with a group of the same number.
//! Every allocation is written (temporary file, fsync, rename, fsync of the directory)
//! before it is used, so a crash can lose an allocation that was never used, never one that
//! was.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::accounts::AccountFiles;
use crate::workspace::UserKey;

/// A user's ids, as the child runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    /// The one supplementary group: read access to shared files.
    pub shared_gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UidError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a uid map: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("no free uid left in {first}-{last}; widen --uid-range")]
    Exhausted { first: u32, last: u32 },
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    version: u32,
    users: BTreeMap<String, u32>,
}

pub struct UidMap {
    path: PathBuf,
    /// Inclusive; `first` is the shared group.
    first: u32,
    last: u32,
    users: Mutex<BTreeMap<String, u32>>,
    /// `passwd`/`group` files kept in step with the map (`--system-accounts`).
    accounts: Option<AccountFiles>,
}

impl UidMap {
    /// Loads the map (an absent file is an empty map). Refuses a file whose ids fall outside
    /// the range or repeat: silently reusing an id would hand one user another's files.
    pub fn load(path: PathBuf, first: u32, last: u32) -> Result<Self, UidError> {
        let users = match fs::read(&path) {
            Ok(bytes) => {
                let stored: Stored =
                    serde_json::from_slice(&bytes).map_err(|e| UidError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                let mut seen = std::collections::BTreeSet::new();
                let (low, high) = (
                    stored.users.values().min().copied().unwrap_or(0),
                    stored.users.values().max().copied().unwrap_or(0),
                );
                for (key, uid) in &stored.users {
                    if *uid <= first || *uid > last {
                        return Err(UidError::Corrupt {
                            path,
                            reason: format!(
                                "{key} has uid {uid}, outside the user range {}-{last}. The map \
                                 was made with another --uid-range: start with one that holds \
                                 uids {low}-{high} (its first id is the shared group, so it must \
                                 start below {low}), e.g. --uid-range {}-{}",
                                first + 1,
                                low.saturating_sub(1),
                                high.max(last),
                            ),
                        });
                    }
                    if !seen.insert(*uid) {
                        return Err(UidError::Corrupt {
                            path,
                            reason: format!("uid {uid} is given to two users"),
                        });
                    }
                }
                stored.users
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(UidError::Read { path, source }),
        };
        Ok(UidMap {
            path,
            first,
            last,
            users: Mutex::new(users),
            accounts: None,
        })
    }

    /// Keeps `files` listing every user of the map from now on (and at once).
    pub fn with_accounts(mut self, files: AccountFiles) -> Self {
        self.accounts = Some(files);
        let users = self.lock().clone();
        self.sync_accounts(&users);
        self
    }

    /// Names are a convenience in users' shells, not a condition of running: a failure is
    /// logged, never fatal. Called with the map locked, so rewrites never interleave.
    fn sync_accounts(&self, users: &BTreeMap<String, u32>) {
        if let Some(files) = &self.accounts {
            if let Err(e) = files.sync(users, self.first, self.last) {
                tracing::warn!(error = %e, "cannot name users' uids in the account files");
            }
        }
    }

    /// The map; a panic elsewhere while it was held does not make it unreadable (every
    /// change is persisted before it is made in memory).
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u32>> {
        match self.users.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn shared_gid(&self) -> u32 {
        self.first
    }

    pub fn range(&self) -> (u32, u32) {
        (self.first, self.last)
    }

    /// The user's ids, allocating and persisting them on first use. Blocking (file I/O).
    pub fn ids(&self, key: &UserKey) -> Result<UserIds, UidError> {
        let mut users = self.lock();
        let uid = match users.get(key.as_str()) {
            Some(uid) => *uid,
            None => {
                let taken: std::collections::BTreeSet<u32> = users.values().copied().collect();
                let uid = (self.first + 1..=self.last)
                    .find(|u| !taken.contains(u))
                    .ok_or(UidError::Exhausted {
                        first: self.first,
                        last: self.last,
                    })?;
                let mut next = users.clone();
                next.insert(key.as_str().to_owned(), uid);
                self.persist(&next)?;
                self.sync_accounts(&next);
                *users = next;
                tracing::info!(user_key = %key, uid, "allocated a Unix id");
                uid
            }
        };
        Ok(UserIds {
            uid,
            gid: uid,
            shared_gid: self.first,
        })
    }

    /// The uid of a user who has one; never allocates.
    pub fn existing(&self, key: &UserKey) -> Option<u32> {
        let users = self.lock();
        users.get(key.as_str()).copied()
    }

    pub fn all(&self) -> Vec<u32> {
        let users = self.lock();
        users.values().copied().collect()
    }

    fn persist(&self, users: &BTreeMap<String, u32>) -> Result<(), UidError> {
        let stored = Stored {
            version: 1,
            users: users.clone(),
        };
        let text = serde_json::to_vec_pretty(&stored).map_err(|e| UidError::Write {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        crate::state_file::write_atomically(&self.path, &text, 0o600).map_err(|source| {
            UidError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_stable_lowest_first_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uids.json");
        let map = UidMap::load(path.clone(), 1000, 1003).unwrap();
        let a = map.ids(&UserKey::derive("alice")).unwrap();
        let b = map.ids(&UserKey::derive("bob")).unwrap();
        assert_eq!((a.uid, a.gid, a.shared_gid), (1001, 1001, 1000));
        assert_eq!(b.uid, 1002);
        assert_eq!(map.ids(&UserKey::derive("alice")).unwrap(), a);
        let reloaded = UidMap::load(path.clone(), 1000, 1003).unwrap();
        assert_eq!(reloaded.existing(&UserKey::derive("bob")), Some(1002));
        assert_eq!(reloaded.ids(&UserKey::derive("carol")).unwrap().uid, 1003);
        assert!(matches!(
            reloaded.ids(&UserKey::derive("dave")),
            Err(UidError::Exhausted { .. })
        ));
        assert_eq!(reloaded.existing(&UserKey::derive("dave")), None);
    }

    #[test]
    fn a_map_that_could_mix_users_up_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uids.json");
        fs::write(&path, r#"{"version":1,"users":{"a":1001,"b":1001}}"#).unwrap();
        assert!(matches!(
            UidMap::load(path.clone(), 1000, 1010),
            Err(UidError::Corrupt { .. })
        ));
        fs::write(&path, r#"{"version":1,"users":{"a":5000}}"#).unwrap();
        assert!(UidMap::load(path.clone(), 1000, 1010).is_err());
        fs::write(&path, "not json").unwrap();
        assert!(UidMap::load(path, 1000, 1010).is_err());
    }
}
