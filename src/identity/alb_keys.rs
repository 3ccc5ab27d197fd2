//! The ALB's public keys, one PEM per `kid` at `--alb-key-url`. A key never changes for its
//! kid, so found keys are kept (up to a bound). Because the kid comes from an unverified
//! header, fetching is guarded: only kids of a safe shape are asked for, at most a few
//! fetches run at once, each with a timeout, one fetch per kid at a time, and a kid that
//! failed is not asked for again for a while (the negative cache).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use jsonwebtoken::Algorithm;
use tokio::sync::{Mutex, Semaphore};

use super::fetch::{self, FetchError};
use super::keys::VerifyingKey;
use super::KeyError;
use crate::metrics::AuthMetrics;

/// Most keys kept. An ALB uses a handful of keys per region over its life.
const MAX_KEYS: usize = 64;
/// Most remembered failures; past it, expired ones are dropped, then all.
const MAX_MISSES: usize = 4096;
/// Fetches in flight at once, across all kids.
const MAX_CONCURRENT_FETCHES: usize = 4;
/// A PEM public key is a few hundred bytes.
const MAX_PEM: usize = 16 * 1024;
/// How long a key server that could not be reached is left alone for a kid.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(10);

pub struct AlbKeys {
    /// `--alb-key-url` with `{region}` already filled in.
    url_template: String,
    timeout: Duration,
    negative_ttl: Duration,
    keys: DashMap<String, Arc<VerifyingKey>>,
    misses: DashMap<String, Miss>,
    in_flight: DashMap<String, Arc<Mutex<()>>>,
    permits: Semaphore,
    metrics: AuthMetrics,
}

#[derive(Clone)]
struct Miss {
    until: Instant,
    error: KeyError,
}

/// ALB kids are UUIDs; allowing only this shape keeps a kid from steering the URL.
pub fn valid_kid(kid: &str) -> bool {
    (1..=128).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl AlbKeys {
    pub fn new(
        url_template: String,
        timeout: Duration,
        negative_ttl: Duration,
        metrics: AuthMetrics,
    ) -> Self {
        AlbKeys {
            url_template,
            timeout,
            negative_ttl,
            keys: DashMap::new(),
            misses: DashMap::new(),
            in_flight: DashMap::new(),
            permits: Semaphore::new(MAX_CONCURRENT_FETCHES),
            metrics,
        }
    }

    fn cached(&self, kid: &str) -> Option<Result<Arc<VerifyingKey>, KeyError>> {
        if let Some(key) = self.keys.get(kid) {
            return Some(Ok(key.clone()));
        }
        let miss = self.misses.get(kid)?;
        if Instant::now() < miss.until {
            return Some(Err(miss.error.clone()));
        }
        None
    }

    /// The key for `kid` (already checked with [`valid_kid`]).
    pub async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>, KeyError> {
        if let Some(found) = self.cached(kid) {
            return found;
        }
        let lock = self
            .in_flight
            .entry(kid.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone();
        // Removed however this call ends, even if the request is dropped mid-fetch, so
        // the map holds only kids being fetched right now.
        let _forget = Forget(&self.in_flight, kid);
        let _one_per_kid = lock.lock().await;
        // Whoever held the lock before us may have settled it.
        if let Some(found) = self.cached(kid) {
            return found;
        }
        self.fetch(kid).await
    }

    async fn fetch(&self, kid: &str) -> Result<Arc<VerifyingKey>, KeyError> {
        let Ok(Ok(_permit)) = tokio::time::timeout(self.timeout, self.permits.acquire()).await
        else {
            self.metrics.key_fetch("busy");
            return Err(KeyError::Unavailable(
                "too many signing-key fetches in progress".into(),
            ));
        };
        let url = self.url_template.replace("{kid}", kid);
        let outcome = match fetch::get(&url, self.timeout, MAX_PEM).await {
            Ok(pem) => VerifyingKey::from_pem(&pem, Some(Algorithm::ES256))
                .map_err(|e| (true, format!("key {kid} from {url} is unusable: {e}"))),
            Err(e) => Err((e.is_definitive(), describe(&e))),
        };
        match outcome {
            Ok(key) => {
                self.metrics.key_fetch("ok");
                tracing::info!(kid, url, "fetched ALB signing key");
                let key = Arc::new(key);
                if self.keys.len() >= MAX_KEYS {
                    let victim = self.keys.iter().next().map(|e| e.key().clone());
                    if let Some(victim) = victim {
                        self.keys.remove(&victim);
                    }
                }
                self.keys.insert(kid.to_owned(), key.clone());
                self.misses.remove(kid);
                Ok(key)
            }
            Err((definitive, reason)) => {
                tracing::warn!(kid, reason, "ALB signing key not available");
                let (error, ttl) = if definitive {
                    self.metrics.key_fetch("not_found");
                    (KeyError::Unknown(reason), self.negative_ttl)
                } else {
                    self.metrics.key_fetch("error");
                    (KeyError::Unavailable(reason), UNREACHABLE_RETRY)
                };
                self.remember_miss(kid, error.clone(), ttl);
                Err(error)
            }
        }
    }

    fn remember_miss(&self, kid: &str, error: KeyError, ttl: Duration) {
        let now = Instant::now();
        if self.misses.len() >= MAX_MISSES {
            self.misses.retain(|_, m| m.until > now);
            if self.misses.len() >= MAX_MISSES {
                self.misses.clear();
            }
        }
        self.misses.insert(
            kid.to_owned(),
            Miss {
                until: now + ttl,
                error,
            },
        );
    }
}

struct Forget<'a>(&'a DashMap<String, Arc<Mutex<()>>>, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

fn describe(e: &FetchError) -> String {
    match e {
        FetchError::Status { status, .. } if status.as_u16() == 404 => {
            "no such signing key at the key server".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_shape() {
        assert!(valid_kid("3f9a1c2e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"));
        for bad in ["", "../x", "a/b", "a?b", "a b", "%2e", &"k".repeat(129)] {
            assert!(!valid_kid(bad), "{bad:?}");
        }
    }
}
