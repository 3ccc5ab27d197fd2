//! Tokens already verified, so a signature is checked once per token rather than once per
//! request. Keyed by SHA-256 of the token (the token itself is not kept), valid until the
//! token's own expiry, and bounded.

use std::sync::Arc;

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::Person;

pub type TokenKey = [u8; 32];

pub struct VerifiedCache {
    entries: DashMap<TokenKey, Entry>,
    capacity: usize,
}

struct Entry {
    person: Arc<Person>,
    /// Seconds since the epoch after which the entry is no longer used.
    valid_until: u64,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            entries: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn key(token: &str) -> TokenKey {
        Sha256::digest(token.as_bytes()).into()
    }

    pub fn get(&self, key: &TokenKey, now: u64) -> Option<Arc<Person>> {
        let hit = self.entries.get(key)?;
        if now <= hit.valid_until {
            return Some(Arc::clone(&hit.person));
        }
        drop(hit);
        self.entries.remove_if(key, |_, e| now > e.valid_until);
        None
    }

    /// Remembers a verified token. When full, expired entries go first; if every entry is
    /// still valid the cache starts over, which costs each holder one more verification.
    pub fn insert(&self, key: TokenKey, person: Arc<Person>, valid_until: u64, now: u64) {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, e| now <= e.valid_until);
            if self.entries.len() >= self.capacity {
                tracing::info!(
                    capacity = self.capacity,
                    "verified-token cache full of live tokens; clearing it"
                );
                self.entries.clear();
            }
        }
        self.entries.insert(
            key,
            Entry {
                person,
                valid_until,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: &str) -> Arc<Person> {
        Arc::new(Person {
            user_id: n.to_owned(),
            email: None,
            name: None,
            email_verified: None,
            groups: Vec::new(),
        })
    }

    #[test]
    fn entries_live_until_their_expiry() {
        let cache = VerifiedCache::new(10);
        let k = VerifiedCache::key("t1");
        cache.insert(k, id("a"), 100, 50);
        assert_eq!(cache.get(&k, 100).unwrap().user_id, "a");
        assert!(cache.get(&k, 101).is_none());
        assert_eq!(cache.len(), 0, "an expired entry is dropped when seen");
        assert!(cache.get(&VerifiedCache::key("t2"), 0).is_none());
    }

    #[test]
    fn stays_within_capacity() {
        let cache = VerifiedCache::new(3);
        for i in 0..3 {
            cache.insert(VerifiedCache::key(&i.to_string()), id("x"), 10 + i, 0);
        }
        // At t=12 two entries have expired and make room.
        cache.insert(VerifiedCache::key("new"), id("y"), 100, 12);
        assert_eq!(cache.len(), 2);
        for i in 0..10 {
            cache.insert(VerifiedCache::key(&format!("n{i}")), id("z"), 100, 12);
            assert!(cache.len() <= 3);
        }
    }
}
