//! Personal access tokens: a person makes one on `/-/tokens` for the OpenCode CLI or an IDE,
//! and presents it as `Authorization: Bearer <token>` or as the password of HTTP Basic (what
//! `opencode attach` sends; the user name is ignored). Only SHA-256 digests are kept, in
//! `state/access-tokens.json` (mode 0600), or, with several gateway replicas, as objects of
//! the cluster every replica watches (`crate::shared`); the token itself is shown once.
//!
//! A token carries the identity its owner had when making it (subject, email, groups): the
//! sign-in policy is applied to that at every request, so removing a person from
//! `--allowed-users` voids their tokens, but a group they leave at the identity provider
//! stays in their tokens until those expire (`--access-token-max-days`) or are revoked. A
//! token never makes its bearer an administrator (see `policy.rs`), and is accepted only
//! under the `--auth` setting it was made under. Revoking one takes effect at the next
//! request (a stream or terminal already open with it stays open).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Credential, Identity, Person};
use crate::shared::{SharedChange, SharedDocuments};

/// What every token starts with, so the gateway (and secret scanners) can tell one from a
/// JWT at a glance.
pub const PREFIX: &str = "chpat_";
/// Most live tokens one person may hold, and in all (the file stays small).
pub const MAX_PER_USER: usize = 20;
const MAX_TOTAL: usize = 20_000;
/// Longest name, and the longest life, in days.
pub const MAX_NAME: usize = 64;
pub const MAX_DAYS: u64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("you hold {MAX_PER_USER} tokens already; revoke one first")]
    TooMany,
    #[error("the gateway holds {MAX_TOTAL} tokens already")]
    Full,
    #[error("no token {0:?} of yours")]
    NotFound(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("no randomness for a token")]
    Random,
    #[error("cannot share the change with the other gateways: {0}")]
    Share(String),
}

/// Where the tokens are kept besides this gateway's memory.
enum Store {
    File(PathBuf),
    Shared(std::sync::Arc<dyn SharedDocuments>),
}

/// A token as stored: its digest and whose it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    id: String,
    /// Hex SHA-256 of the token.
    digest: String,
    name: String,
    user_id: String,
    email: Option<String>,
    display_name: Option<String>,
    email_verified: Option<bool>,
    #[serde(default)]
    groups: Vec<String>,
    /// Which identity made it (see [`realm`]): a token is accepted only in the realm it was
    /// made in, so one made under `--auth dev` is void once the gateway verifies identities.
    #[serde(default)]
    realm: String,
    /// Seconds since the epoch.
    created_at: u64,
    expires_at: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    version: u32,
    tokens: Vec<Stored>,
}

/// A token as its owner and the admins see it (never the secret or its digest).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub user_id: String,
    pub created_at: String,
    pub expires_at: String,
}

/// A token just made: the only time its secret exists outside the client.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

#[derive(Default)]
struct Book {
    by_id: BTreeMap<String, Stored>,
    by_digest: HashMap<String, String>,
}

pub struct AccessTokens {
    store: Store,
    realm: String,
    max_days: u64,
    book: Mutex<Book>,
    /// Held while the file is written, so two writes never interleave.
    writing: Mutex<()>,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = match &self.store {
            Store::File(path) => path.display().to_string(),
            Store::Shared(_) => "shared".to_owned(),
        };
        f.debug_struct("AccessTokens")
            .field("store", &store)
            .finish()
    }
}

impl AccessTokens {
    /// The store at `path`; a missing file is an empty store, an unreadable one an error
    /// (starting without the tokens would lock everyone's CLI out silently).
    pub fn load(path: &Path, realm: &str, max_days: u64) -> Result<Self, TokenError> {
        let file: File = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TokenError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => File::default(),
            Err(e) => {
                return Err(TokenError::Read {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
            }
        };
        Ok(AccessTokens {
            store: Store::File(path.to_owned()),
            realm: realm.to_owned(),
            max_days,
            book: Mutex::new(Book::of(file.tokens, realm)),
            writing: Mutex::new(()),
        })
    }

    /// Tokens kept in common by several gateways (`documents`: every token there is now);
    /// the watch of them feeds [`AccessTokens::apply`].
    pub fn shared(
        store: std::sync::Arc<dyn SharedDocuments>,
        documents: Vec<Vec<u8>>,
        realm: &str,
        max_days: u64,
    ) -> Self {
        AccessTokens {
            store: Store::Shared(store),
            realm: realm.to_owned(),
            max_days,
            book: Mutex::new(Book::of(parse_all(documents), realm)),
            writing: Mutex::new(()),
        }
    }

    /// A change another replica (or this one) made, as the watch of the shared tokens saw it.
    pub fn apply(&self, change: SharedChange) {
        let mut book = self.lock();
        match change {
            SharedChange::Reset(documents) => *book = Book::of(parse_all(documents), &self.realm),
            SharedChange::Put(document) => {
                if let Some(token) = parse(&document).filter(|t| t.realm == self.realm) {
                    book.insert(token);
                }
            }
            SharedChange::Removed(id) => book.remove(&id),
        }
    }

    /// A store that holds nothing and cannot be written (unit tests of other parts).
    pub fn empty() -> Self {
        AccessTokens {
            store: Store::File(PathBuf::new()),
            realm: String::new(),
            max_days: MAX_DAYS,
            book: Mutex::new(Book::default()),
            writing: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The identity a presented token stands for, if it is live.
    pub fn identify(&self, presented: &str, basic: bool) -> Option<Identity> {
        let digest = digest(presented);
        let book = self.lock();
        let stored = book.by_id.get(book.by_digest.get(&digest)?)?;
        if stored.expires_at <= now_secs() {
            return None;
        }
        let person = Person {
            user_id: stored.user_id.clone(),
            email: stored.email.clone(),
            name: stored.display_name.clone(),
            email_verified: stored.email_verified,
            groups: stored.groups.clone(),
        };
        Some(Identity::new(person, Credential::AccessToken { basic }))
    }

    /// Makes a token for `owner`, named `name`, living `days` days. Blocking (writes the file).
    pub fn create(&self, owner: &Identity, name: &str, days: u64) -> Result<NewToken, TokenError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control)
        {
            return Err(TokenError::Invalid(format!(
                "a token's name is 1 to {MAX_NAME} characters, without control characters"
            )));
        }
        if !(1..=self.max_days).contains(&days) {
            return Err(TokenError::Invalid(format!(
                "a token lives 1 to {} days",
                self.max_days
            )));
        }
        let secret = format!("{PREFIX}{}", random_hex(32)?);
        let now = now_secs();
        let stored = Stored {
            id: random_hex(8)?,
            digest: digest(&secret),
            name: name.to_owned(),
            user_id: owner.user_id.clone(),
            email: owner.email.clone(),
            display_name: owner.name.clone(),
            email_verified: owner.email_verified,
            groups: owner.groups.clone(),
            realm: self.realm.clone(),
            created_at: now,
            expires_at: now + days * 86_400,
        };
        let info = info(&stored);
        self.change(|book| {
            book.drop_expired(now);
            if book.by_id.len() >= MAX_TOTAL {
                return Err(TokenError::Full);
            }
            if book.of_user(&owner.user_id).count() >= MAX_PER_USER {
                return Err(TokenError::TooMany);
            }
            book.insert(stored);
            Ok(())
        })?;
        Ok(NewToken {
            info,
            token: secret,
        })
    }

    /// Revokes token `id`, if it is `owner`'s (`None`: anyone's, for an admin). Blocking.
    pub fn revoke(&self, id: &str, owner: Option<&str>) -> Result<TokenInfo, TokenError> {
        self.change(|book| {
            let found = book
                .by_id
                .get(id)
                .filter(|t| owner.is_none_or(|o| o == t.user_id))
                .ok_or_else(|| TokenError::NotFound(id.to_owned()))?;
            let info = info(found);
            book.remove(id);
            Ok(info)
        })
    }

    /// Live tokens of `owner` (`None`: everyone's), oldest first.
    pub fn list(&self, owner: Option<&str>) -> Vec<TokenInfo> {
        let now = now_secs();
        let book = self.lock();
        let mut tokens: Vec<&Stored> = book
            .by_id
            .values()
            .filter(|t| t.expires_at > now && owner.is_none_or(|o| o == t.user_id))
            .collect();
        tokens.sort_by_key(|t| (t.created_at, t.id.clone()));
        tokens.into_iter().map(info).collect()
    }

    /// Applies `f` to the book and keeps it (the file, or the shared documents); a change
    /// that cannot be kept is undone.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Book) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        // Lookups wait for the change only, not for the file: it is written unlocked (the
        // `writing` lock keeps other changes out meanwhile).
        let (out, after, before) = {
            let mut book = self.lock();
            let before = (book.by_id.clone(), book.by_digest.clone());
            let out = f(&mut book)?;
            (out, book.by_id.clone(), before)
        };
        let kept = match &self.store {
            Store::File(path) => {
                let tokens: Vec<Stored> = after.values().cloned().collect();
                serde_json::to_vec_pretty(&File { version: 1, tokens })
                    .map_err(io::Error::other)
                    .and_then(|text| {
                        chamberlain_actors::state_file::write_atomically(path, &text, 0o600)
                    })
                    .map_err(|source| TokenError::Write {
                        path: path.clone(),
                        source,
                    })
            }
            Store::Shared(shared) => share(shared.as_ref(), &before.0, &after),
        };
        if let Err(e) = kept {
            let mut book = self.lock();
            (book.by_id, book.by_digest) = before;
            return Err(e);
        }
        Ok(out)
    }
}

/// Writes the tokens `after` has and `before` had not, and deletes the ones it lost.
fn share(
    shared: &dyn SharedDocuments,
    before: &BTreeMap<String, Stored>,
    after: &BTreeMap<String, Stored>,
) -> Result<(), TokenError> {
    for id in before.keys().filter(|id| !after.contains_key(*id)) {
        shared.delete(id).map_err(TokenError::Share)?;
    }
    for (id, token) in after.iter().filter(|(id, _)| !before.contains_key(*id)) {
        let document = serde_json::to_vec(token).map_err(|e| TokenError::Share(e.to_string()))?;
        shared.put(id, document).map_err(TokenError::Share)?;
    }
    Ok(())
}

fn parse(document: &[u8]) -> Option<Stored> {
    serde_json::from_slice(document).ok()
}

fn parse_all(documents: Vec<Vec<u8>>) -> Vec<Stored> {
    documents.iter().filter_map(|d| parse(d)).collect()
}

impl Book {
    /// The live tokens of `realm` among `tokens`.
    fn of(tokens: Vec<Stored>, realm: &str) -> Book {
        let now = now_secs();
        let mut book = Book::default();
        let mut other_realm = 0;
        for token in tokens.into_iter().filter(|t| t.expires_at > now) {
            if token.realm != realm {
                other_realm += 1;
                continue;
            }
            book.insert(token);
        }
        if other_realm > 0 {
            tracing::warn!(
                tokens = other_realm,
                realm,
                "personal access tokens made under another --auth setting are void (removed at the next change)"
            );
        }
        book
    }

    fn insert(&mut self, token: Stored) {
        if let Some(old) = self.by_id.get(&token.id) {
            self.by_digest.remove(&old.digest);
        }
        self.by_digest
            .insert(token.digest.clone(), token.id.clone());
        self.by_id.insert(token.id.clone(), token);
    }

    fn remove(&mut self, id: &str) {
        if let Some(token) = self.by_id.remove(id) {
            self.by_digest.remove(&token.digest);
        }
    }

    fn of_user<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a Stored> + 'a {
        self.by_id.values().filter(move |t| t.user_id == user)
    }

    fn drop_expired(&mut self, now: u64) {
        let expired: Vec<(String, String)> = self
            .by_id
            .values()
            .filter(|t| t.expires_at <= now)
            .map(|t| (t.id.clone(), t.digest.clone()))
            .collect();
        for (id, digest) in expired {
            self.by_id.remove(&id);
            self.by_digest.remove(&digest);
        }
    }
}

fn info(t: &Stored) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        user_id: t.user_id.clone(),
        created_at: crate::time::rfc3339(t.created_at),
        expires_at: crate::time::rfc3339(t.expires_at),
    }
}

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_hex(bytes: usize) -> Result<String, TokenError> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| TokenError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ana() -> Identity {
        let person = Person {
            user_id: "ana".into(),
            email: Some("ana@example.com".into()),
            name: Some("Ana".into()),
            email_verified: Some(true),
            groups: vec!["staff".into()],
        };
        Identity::new(person, Credential::Cookie)
    }

    #[test]
    fn a_token_identifies_its_owner_until_revoked_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access-tokens.json");
        let store = AccessTokens::load(&path, "dev", MAX_DAYS).unwrap();
        let made = store.create(&ana(), "laptop", 30).unwrap();
        assert!(made.token.starts_with(PREFIX) && made.token.len() == PREFIX.len() + 64);
        let id = store.identify(&made.token, false).unwrap();
        assert_eq!(
            (id.user_id.as_str(), id.groups.as_slice()),
            ("ana", &["staff".to_owned()][..])
        );
        assert_eq!(id.credential, Credential::AccessToken { basic: false });
        assert!(store.identify("chpat_wrong", false).is_none());

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&made.token), "only the digest is stored");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let again = AccessTokens::load(&path, "dev", MAX_DAYS).unwrap();
        assert!(again.identify(&made.token, true).is_some());
        assert_eq!(again.list(Some("ana")).len(), 1);
        assert!(again.list(Some("bob")).is_empty());
        assert!(matches!(
            again.revoke(&made.info.id, Some("bob")),
            Err(TokenError::NotFound(_))
        ));
        again.revoke(&made.info.id, Some("ana")).unwrap();
        assert!(again.identify(&made.token, false).is_none());
        assert!(AccessTokens::load(&path, "dev", MAX_DAYS)
            .unwrap()
            .list(None)
            .is_empty());
    }

    #[test]
    fn names_lives_and_counts_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccessTokens::load(&dir.path().join("t.json"), "dev", MAX_DAYS).unwrap();
        for (name, days) in [
            ("", 30),
            ("a\nb", 30),
            (&"x".repeat(65)[..], 30),
            ("ok", 0),
            ("ok", 366),
        ] {
            assert!(
                matches!(
                    store.create(&ana(), name, days),
                    Err(TokenError::Invalid(_))
                ),
                "{name:?} {days}"
            );
        }
        for i in 0..MAX_PER_USER {
            store.create(&ana(), &format!("t{i}"), 1).unwrap();
        }
        assert!(matches!(
            store.create(&ana(), "one more", 1),
            Err(TokenError::TooMany)
        ));
    }

    #[test]
    fn a_token_is_void_under_another_auth_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let dev = AccessTokens::load(&path, "dev", MAX_DAYS).unwrap();
        let made = dev.create(&ana(), "x", 1).unwrap();
        let jwt = AccessTokens::load(&path, "jwt https://issuer", 30).unwrap();
        assert!(jwt.identify(&made.token, false).is_none());
        assert!(jwt.list(None).is_empty());
        assert!(matches!(
            jwt.create(&ana(), "long", 31),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn a_token_that_cannot_be_written_does_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/t.json");
        let store = AccessTokens::load(&path, "dev", MAX_DAYS).unwrap();
        assert!(matches!(
            store.create(&ana(), "x", 1),
            Err(TokenError::Write { .. })
        ));
        assert!(store.list(None).is_empty());
    }

    #[test]
    fn an_expired_token_is_refused_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let store = AccessTokens::load(&path, "dev", MAX_DAYS).unwrap();
        let made = store.create(&ana(), "old", 1).unwrap();
        store
            .lock()
            .by_id
            .values_mut()
            .for_each(|t| t.expires_at = 1);
        assert!(store.identify(&made.token, false).is_none());
        assert!(store.list(None).is_empty());
    }

    /// Records what a replica shares, and fails when told to.
    #[derive(Default)]
    struct Cluster {
        documents: Mutex<BTreeMap<String, Vec<u8>>>,
        down: std::sync::atomic::AtomicBool,
    }

    impl SharedDocuments for Cluster {
        fn put(&self, id: &str, document: Vec<u8>) -> Result<(), String> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("the API server does not answer".into());
            }
            self.documents.lock().unwrap().insert(id.into(), document);
            Ok(())
        }

        fn delete(&self, id: &str) -> Result<(), String> {
            self.documents.lock().unwrap().remove(id);
            Ok(())
        }
    }

    #[test]
    fn shared_tokens_are_written_for_the_others_and_taken_from_them() {
        let cluster = std::sync::Arc::new(Cluster::default());
        let here = AccessTokens::shared(cluster.clone(), Vec::new(), "dev", MAX_DAYS);
        let made = here.create(&ana(), "laptop", 7).unwrap();
        let documents: Vec<Vec<u8>> = cluster
            .documents
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        assert_eq!(documents.len(), 1);
        let text = String::from_utf8(documents[0].clone()).unwrap();
        assert!(!text.contains(&made.token), "the digest only");
        // Another replica starts from what the cluster holds, and follows its changes.
        let there = AccessTokens::shared(cluster.clone(), documents.clone(), "dev", MAX_DAYS);
        assert_eq!(there.identify(&made.token, true).unwrap().user_id, "ana");
        let other_realm = AccessTokens::shared(cluster.clone(), documents.clone(), "jwt", MAX_DAYS);
        assert!(other_realm.identify(&made.token, true).is_none());
        there.apply(SharedChange::Removed(made.info.id.clone()));
        assert!(there.identify(&made.token, true).is_none());
        there.apply(SharedChange::Put(documents[0].clone()));
        assert!(there.identify(&made.token, true).is_some());
        there.apply(SharedChange::Reset(Vec::new()));
        assert!(there.identify(&made.token, true).is_none());
        // A change the cluster does not take is undone.
        cluster
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(
            here.create(&ana(), "phone", 7),
            Err(TokenError::Share(_))
        ));
        assert_eq!(here.list(None).len(), 1);
        cluster
            .down
            .store(false, std::sync::atomic::Ordering::SeqCst);
        here.revoke(&made.info.id, Some("ana")).unwrap();
        assert!(cluster.documents.lock().unwrap().is_empty());
    }
}
