//! Small documents every gateway replica shares, one Secret each (a personal access token's
//! digest and owner, say): written and deleted by any replica, watched by all, so each keeps
//! a copy in memory that its hot path reads. Secrets, not ConfigMaps: what they hold is
//! worth as much as a password's digest.

use futures_util::stream::{BoxStream, StreamExt as _};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt as _;
use serde_json::json;

use crate::names;
use crate::pod::{already_exists, is_gone};

const LABEL_DOCUMENT: &str = "chamberlain.dev/document";
const ANNOTATION_ID: &str = "chamberlain.dev/id";
const KEY: &str = "document.json";

/// One kind of document, e.g. `access-token`.
#[derive(Clone)]
pub struct SecretSet {
    api: Api<Secret>,
    kind: &'static str,
}

/// What changed in the set, as a watcher of it sees it.
pub enum Change {
    /// Everything there is (at the start, and after the watch was lost).
    Reset(Vec<Vec<u8>>),
    Put(Vec<u8>),
    Removed(String),
}

impl SecretSet {
    pub fn new(client: &kube::Client, namespace: &str, kind: &'static str) -> Self {
        Self {
            api: Api::namespaced(client.clone(), namespace),
            kind,
        }
    }

    fn name(&self, id: &str) -> String {
        format!("chamberlain-{}-{id}", self.kind)
    }

    fn selector(&self) -> String {
        format!("{LABEL_DOCUMENT}={}", self.kind)
    }

    /// Writes document `id` (DNS-label characters only), made or replaced.
    pub async fn put(&self, id: &str, document: Vec<u8>) -> Result<(), String> {
        let mut secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.name(id),
                "labels": {
                    names::LABEL_NAME: names::APP,
                    names::LABEL_MANAGED_BY: names::APP,
                    LABEL_DOCUMENT: self.kind,
                },
                "annotations": {ANNOTATION_ID: id},
            },
            "type": "Opaque",
        }))
        .map_err(|e| e.to_string())?;
        secret.data = Some([(KEY.to_owned(), ByteString(document))].into());
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => {
                let current = self
                    .api
                    .get(&self.name(id))
                    .await
                    .map_err(|e| format!("reading {}: {e}", self.name(id)))?;
                secret.metadata.resource_version = current.metadata.resource_version;
                self.api
                    .replace(&self.name(id), &PostParams::default(), &secret)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("writing {}: {e}", self.name(id)))
            }
            Err(e) => Err(format!("writing {}: {e}", self.name(id))),
        }
    }

    /// Deletes document `id`; one that is not there is deleted already.
    pub async fn delete(&self, id: &str) -> Result<(), String> {
        match self
            .api
            .delete(&self.name(id), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(format!("deleting {}: {e}", self.name(id))),
        }
    }

    /// Every document there is now.
    pub async fn list(&self) -> Result<Vec<Vec<u8>>, String> {
        let list = self
            .api
            .list(&ListParams::default().labels(&self.selector()))
            .await
            .map_err(|e| format!("listing the {} documents: {e}", self.kind))?;
        Ok(list.items.iter().filter_map(document).collect())
    }

    /// The set's changes, for as long as the stream is polled (a lost watch is taken up
    /// again, and answers a `Reset`).
    pub fn changes(&self) -> BoxStream<'static, Change> {
        let config = watcher::Config::default().labels(&self.selector());
        let mut initial: Option<Vec<Vec<u8>>> = None;
        watcher::watcher(self.api.clone(), config)
            .default_backoff()
            .filter_map(move |event| {
                let change = match event {
                    Ok(watcher::Event::Init) => {
                        initial = Some(Vec::new());
                        None
                    }
                    Ok(watcher::Event::InitApply(secret)) => {
                        if let (Some(all), Some(doc)) = (initial.as_mut(), document(&secret)) {
                            all.push(doc);
                        }
                        None
                    }
                    Ok(watcher::Event::InitDone) => initial.take().map(Change::Reset),
                    Ok(watcher::Event::Apply(secret)) => document(&secret).map(Change::Put),
                    Ok(watcher::Event::Delete(secret)) => secret
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ANNOTATION_ID))
                        .cloned()
                        .map(Change::Removed),
                    Err(e) => {
                        tracing::warn!(error = %e, "watching shared documents");
                        None
                    }
                };
                std::future::ready(change)
            })
            .boxed()
    }
}

fn document(secret: &Secret) -> Option<Vec<u8>> {
    Some(secret.data.as_ref()?.get(KEY)?.0.clone())
}
