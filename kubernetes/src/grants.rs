//! Relay grants from the cluster: a replica relays a pod's model calls even when another
//! replica started the pod. The start's secret carries a digest of its relay token as a
//! label; the relay, missing a token, finds the secret by it, checks the token itself, and
//! names the user from the secret's annotation. Answers are kept briefly (a revoked start's
//! secret is gone within `FOUND_FOR`), and lookups are bounded so that made-up tokens cannot
//! hammer the API server.

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
/// Lookups under way at once; more wait.
const CONCURRENT: usize = 4;
/// Answers kept; past it the cache starts afresh.
const MAX_CACHED: usize = 10_000;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ClusterGrants {
    secrets: Api<Secret>,
    org: OrgFiles,
    relay: RelaySettings,
    cache: DashMap<String, (Option<Grant>, Instant)>,
    slots: Semaphore,
}

impl ClusterGrants {
    pub(crate) fn new(secrets: Api<Secret>, org: OrgFiles, relay: RelaySettings) -> Self {
        Self {
            secrets,
            org,
            relay,
            cache: DashMap::new(),
            slots: Semaphore::new(CONCURRENT),
        }
    }

    fn cached(&self, digest: &str) -> Option<Option<Grant>> {
        let entry = self.cache.get(digest)?;
        let (grant, at) = entry.value();
        let fresh_for = if grant.is_some() {
            FOUND_FOR
        } else {
            MISSING_FOR
        };
        (at.elapsed() < fresh_for).then(|| grant.clone())
    }

    async fn look_up(self: Arc<Self>, token: String) -> Result<Option<Grant>, String> {
        let digest = UserNames::relay(&token);
        if let Some(answer) = self.cached(&digest) {
            return Ok(answer);
        }
        let _slot = self
            .slots
            .acquire()
            .await
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
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(digest, (grant.clone(), Instant::now()));
        Ok(grant)
    }
}

/// Looked up through an `Arc`, so that a lookup outlives the request that asked.
pub struct SharedGrants(pub Arc<ClusterGrants>);

impl GrantLookup for SharedGrants {
    fn find(&self, token: &str) -> LocalBoxFuture<'static, Result<Option<Grant>, String>> {
        Arc::clone(&self.0).look_up(token.to_owned()).boxed_local()
    }
}
