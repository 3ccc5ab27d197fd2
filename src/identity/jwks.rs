//! A JSON Web Key Set fetched from `--jwks-url` (a Cognito user pool's
//! `/.well-known/jwks.json`, say). The set is fetched on first use and again when a token
//! names a kid the set does not have (key rotation) or the set is older than its maximum
//! age; a refresh happens at most once per cooldown however many unknown kids arrive, and
//! one refresh at a time. Keys that leave the set stop being trusted at the next refresh.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use serde_json::Value;
use tokio::sync::Mutex;

use super::fetch;
use super::keys::VerifyingKey;
use super::KeyError;
use crate::metrics::AuthMetrics;

const MAX_JWKS: usize = 256 * 1024;
const MAX_KEYS: usize = 100;

pub struct JwksStore {
    url: String,
    timeout: Duration,
    cooldown: Duration,
    max_age: Duration,
    state: RwLock<Snapshot>,
    refresh: Mutex<()>,
    metrics: AuthMetrics,
}

#[derive(Default, Clone)]
struct Snapshot {
    keys: Arc<HashMap<String, Arc<VerifyingKey>>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
    /// Why the last attempt failed, if it did.
    failure: Option<String>,
}

impl Snapshot {
    fn lookup(&self, kid: Option<&str>) -> Option<Arc<VerifyingKey>> {
        match kid {
            Some(kid) => self.keys.get(kid).cloned(),
            // A token without a kid is only unambiguous against a one-key set.
            None if self.keys.len() == 1 => self.keys.values().next().cloned(),
            None => None,
        }
    }

    fn fresh(&self, max_age: Duration) -> bool {
        self.fetched.is_some_and(|t| t.elapsed() < max_age)
    }
}

impl JwksStore {
    pub fn new(
        url: String,
        timeout: Duration,
        cooldown: Duration,
        max_age: Duration,
        metrics: AuthMetrics,
    ) -> Self {
        JwksStore {
            url,
            timeout,
            cooldown,
            max_age,
            state: RwLock::new(Snapshot::default()),
            refresh: Mutex::new(()),
            metrics,
        }
    }

    fn snapshot(&self) -> Snapshot {
        match self.state.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn store(&self, snapshot: Snapshot) {
        match self.state.write() {
            Ok(mut s) => *s = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    pub async fn key(&self, kid: Option<&str>) -> Result<Arc<VerifyingKey>, KeyError> {
        let snap = self.snapshot();
        if let Some(key) = snap.lookup(kid).filter(|_| snap.fresh(self.max_age)) {
            return Ok(key);
        }
        let _one_refresh = self.refresh.lock().await;
        let mut snap = self.snapshot();
        if let Some(key) = snap.lookup(kid).filter(|_| snap.fresh(self.max_age)) {
            return Ok(key);
        }
        let cooling = snap.attempted.is_some_and(|t| t.elapsed() < self.cooldown);
        if !cooling {
            snap = self.refresh_now(snap).await;
        }
        if let Some(key) = snap.lookup(kid) {
            return Ok(key);
        }
        let name = kid.unwrap_or("(none)");
        Err(match (&snap.failure, snap.fetched) {
            (Some(failure), None) => {
                KeyError::Unavailable(format!("the JWKS could not be fetched: {failure}"))
            }
            _ => KeyError::Unknown(format!("the JWKS has no signing key for kid {name}")),
        })
    }

    async fn refresh_now(&self, mut snap: Snapshot) -> Snapshot {
        snap.attempted = Some(Instant::now());
        match fetch::get(&self.url, self.timeout, MAX_JWKS).await {
            Ok(body) => match parse_set(&body) {
                Ok(keys) => {
                    self.metrics.key_fetch("ok");
                    tracing::info!(url = %self.url, keys = keys.len(), "fetched JWKS");
                    snap.keys = Arc::new(keys);
                    snap.fetched = Some(Instant::now());
                    snap.failure = None;
                }
                Err(e) => {
                    self.metrics.key_fetch("error");
                    tracing::warn!(url = %self.url, error = %e, "JWKS unusable; keeping the previous keys");
                    snap.failure = Some(e);
                }
            },
            Err(e) => {
                self.metrics.key_fetch("error");
                tracing::warn!(error = %e, "JWKS fetch failed; keeping the previous keys");
                snap.failure = Some(e.to_string());
            }
        }
        self.store(snap.clone());
        snap
    }
}

/// The usable signing keys of a JWKS document, by kid. Keys that cannot verify tokens are
/// skipped (and logged) rather than failing the whole set.
pub fn parse_set(body: &[u8]) -> Result<HashMap<String, Arc<VerifyingKey>>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(Value::Array(items)) = doc.get("keys") else {
        return Err("no \"keys\" array".into());
    };
    let single = items.len() == 1;
    let mut keys = HashMap::new();
    for item in items.iter().take(MAX_KEYS) {
        let jwk: Jwk = match serde_json::from_value(item.clone()) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::warn!(error = %e, "skipping a JWK that does not parse");
                continue;
            }
        };
        let kid = match (&jwk.common.key_id, single) {
            (Some(kid), _) => kid.clone(),
            (None, true) => String::new(),
            (None, false) => {
                tracing::warn!("skipping a JWK without kid in a set of several");
                continue;
            }
        };
        match VerifyingKey::from_jwk(&jwk) {
            Ok(key) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(why) => tracing::warn!(kid, why, "skipping a JWK that cannot verify tokens"),
        }
    }
    if keys.is_empty() {
        return Err("no usable signing keys".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    // An RSA modulus only has to parse here; it is never used to verify.
    const N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn algorithms_come_from_the_keys() {
        let set = json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": N, "e": "AQAB", "use": "sig"},
            {"kty": "RSA", "kid": "r384", "n": N, "e": "AQAB", "alg": "RS384"},
            {"kty": "RSA", "kid": "enc", "n": N, "e": "AQAB", "use": "enc"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "hs", "n": N, "e": "AQAB", "alg": "HS256"},
            {"kty": "RSA", "kid": "es", "n": N, "e": "AQAB", "alg": "ES256"},
            {"kty": "weird", "kid": "w"},
        ]});
        let keys = parse_set(set.to_string().as_bytes()).unwrap();
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["r", "r384"]);
        assert_eq!(keys["r"].alg, Algorithm::RS256);
        assert_eq!(keys["r384"].alg, Algorithm::RS384);
    }

    #[test]
    fn unusable_documents_are_errors() {
        for body in [
            &b"nope"[..],
            b"{}",
            br#"{"keys": []}"#,
            br#"{"keys": [{"kty":"oct","k":"YQ"}]}"#,
        ] {
            assert!(parse_set(body).is_err());
        }
    }
}
