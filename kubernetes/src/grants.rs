//! Relay grants from the cluster: a replica relays a pod's model calls even when another
//! replica started the pod. The start's secret carries a digest of its relay token as a
//! label; the relay, missing a token, finds the secret by it, checks the token itself, and
//! names the user from the secret's annotation. Answers are kept briefly (a revoked start's
//! secret is gone within `FOUND_FOR`), and lookups are bounded so that made-up tokens cannot
//! hammer the API server or crowd out real ones: only a token of the shape the gateway makes
//! is looked up, each caller (a pod's address) has a few lookups per window, refusals are
//! kept apart from grants (a flood of them never evicts a grant), and a lookup waits for a
//! slot only briefly.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use tokio::sync::Semaphore;

use chamberlain_actors::llm::{Grant, GrantLookup, RelaySettings};
use chamberlain_actors::OrgFiles;

use crate::names::{self, UserNames};
use crate::objects::KEY_RELAY_TOKEN;

/// How long a found grant is used without asking again.
const FOUND_FOR: Duration = Duration::from_secs(30);
/// How long a token nobody granted is refused without asking again.
const MISSING_FOR: Duration = Duration::from_secs(10);
/// Lookups under way at once; more wait, for `SLOT_WAIT` at most.
const CONCURRENT: usize = 4;
const SLOT_WAIT: Duration = Duration::from_secs(2);
/// Answers kept, grants and refusals each; past it that cache starts afresh.
const MAX_CACHED: usize = 10_000;
/// Lookups one caller may cause per window (a pod has one token, looked up twice a minute).
const PER_CALLER: u32 = 10;
const CALLER_WINDOW: Duration = Duration::from_secs(60);
/// The length of a relay token (`launcher::generate_password`: 24 random bytes in hex).
const TOKEN_LEN: usize = 48;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ClusterGrants {
    secrets: Api<Secret>,
    org: OrgFiles,
    relay: RelaySettings,
    found: DashMap<String, (Grant, Instant)>,
    missing: DashMap<String, Instant>,
    /// Lookups per caller in the current window, and when it began.
    callers: DashMap<IpAddr, (u32, Instant)>,
    slots: Semaphore,
}

impl ClusterGrants {
    pub(crate) fn new(secrets: Api<Secret>, org: OrgFiles, relay: RelaySettings) -> Self {
        Self {
            secrets,
            org,
            relay,
            found: DashMap::new(),
            missing: DashMap::new(),
            callers: DashMap::new(),
            slots: Semaphore::new(CONCURRENT),
        }
    }

    fn cached(&self, digest: &str) -> Option<Option<Grant>> {
        if let Some(entry) = self.found.get(digest) {
            let (grant, at) = entry.value();
            if at.elapsed() < FOUND_FOR {
                return Some(Some(grant.clone()));
            }
        }
        let refused = self.missing.get(digest)?;
        (refused.value().elapsed() < MISSING_FOR).then_some(None)
    }

    /// Whether `caller` may cause another lookup in this window.
    fn admit(&self, caller: Option<IpAddr>) -> bool {
        let Some(caller) = caller else {
            return true;
        };
        if self.callers.len() >= MAX_CACHED {
            self.callers
                .retain(|_, (_, began)| began.elapsed() < CALLER_WINDOW);
        }
        let mut entry = self.callers.entry(caller).or_insert((0, Instant::now()));
        let (count, began) = entry.value_mut();
        if began.elapsed() >= CALLER_WINDOW {
            (*count, *began) = (0, Instant::now());
        }
        *count += 1;
        *count <= PER_CALLER
    }

    async fn look_up(
        self: Arc<Self>,
        token: String,
        caller: Option<IpAddr>,
    ) -> Result<Option<Grant>, String> {
        // Not a token the gateway makes: nobody granted it, and nothing is asked.
        let shaped = token.len() == TOKEN_LEN
            && token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !shaped {
            return Ok(None);
        }
        let digest = UserNames::relay(&token);
        if let Some(answer) = self.cached(&digest) {
            return Ok(answer);
        }
        if !self.admit(caller) {
            tracing::warn!(caller = ?caller, "too many unknown relay tokens from one caller; refused without a lookup");
            return Ok(None);
        }
        let _slot = tokio::time::timeout(SLOT_WAIT, self.slots.acquire())
            .await
            .map_err(|_| "too many relay tokens are being looked up".to_owned())?
            .map_err(|_| "the relay is shutting down".to_owned())?;
        // Another lookup of the same token may have answered while this one waited.
        if let Some(answer) = self.cached(&digest) {
            return Ok(answer);
        }
        let params = ListParams::default().labels(&format!("{}={digest}", names::LABEL_RELAY));
        let list = tokio::time::timeout(LOOKUP_TIMEOUT, self.secrets.list(&params))
            .await
            .map_err(|_| "no answer from the Kubernetes API".to_owned())?
            .map_err(|e| format!("looking up a relay token: {e}"))?;
        let found = list.items.into_iter().find_map(|secret| {
            let held = secret.data.as_ref()?.get(KEY_RELAY_TOKEN)?;
            // The label is a digest; the token itself must match too.
            if held.0 != token.as_bytes() {
                return None;
            }
            secret
                .metadata
                .annotations
                .as_ref()?
                .get(names::ANNOTATION_USER_ID)
                .cloned()
        });
        let grant = match found {
            None => None,
            Some(user_id) => {
                let this = Arc::clone(&self);
                let token = token.clone();
                let start =
                    tokio::task::spawn_blocking(move || this.org.for_start(&this.relay, &token))
                        .await
                        .map_err(|e| format!("reading the organisation's files: {e}"))?
                        .map_err(|e| e.to_string())?;
                Some(Grant {
                    user_id,
                    providers: Arc::new(start.providers),
                })
            }
        };
        match &grant {
            Some(grant) => {
                if self.found.len() >= MAX_CACHED {
                    self.found.clear();
                }
                self.found.insert(digest, (grant.clone(), Instant::now()));
            }
            None => {
                if self.missing.len() >= MAX_CACHED {
                    self.missing.clear();
                }
                self.missing.insert(digest, Instant::now());
            }
        }
        Ok(grant)
    }
}

/// Looked up through an `Arc`, so that a lookup outlives the request that asked.
pub struct SharedGrants(pub Arc<ClusterGrants>);

impl GrantLookup for SharedGrants {
    fn find(
        &self,
        token: &str,
        caller: Option<IpAddr>,
    ) -> LocalBoxFuture<'static, Result<Option<Grant>, String>> {
        Arc::clone(&self.0)
            .look_up(token.to_owned(), caller)
            .boxed_local()
    }
}
