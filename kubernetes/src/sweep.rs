//! The sweep, on every replica, once a minute: what no gateway holds any more is deleted.
//!
//! - a user's pod no replica has seen used for `sweep_after` (twice the idle timeout: its
//!   holder, if any, would have stopped it long ago): a pod a gateway let go of at shutdown
//!   whose user never came back, say. Without this it would run, and count under
//!   `--max-instances`, for ever;
//! - a pod that ended and nobody cleared;
//! - a start's secret without its pod, older than `orphan_after` (a start abandoned between
//!   the secret and the pod; in a cluster the owner reference deletes the others).
//!
//! Any replica may delete: deletes carry the pod's uid as a precondition, and a holder that
//! sees its pod go reports it as ended.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};

use crate::names;
use crate::pod;

pub(crate) struct Sweep {
    pub pods: Api<Pod>,
    pub secrets: Api<Secret>,
    pub sweep_after: Duration,
    pub orphan_after: Duration,
    pub grace: u32,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Milliseconds since the epoch at which the object was made (0 when not told).
fn created_ms(meta: &ObjectMeta) -> u64 {
    meta.creation_timestamp
        .as_ref()
        .map_or(0, |t| u64::try_from(t.0.as_millisecond()).unwrap_or(0))
}

/// When the pod was last used through any gateway, else when it was made.
fn last_used_ms(pod: &Pod) -> u64 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_LAST_USED))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| created_ms(&pod.metadata))
}

/// What the sweep does with one pod.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Nobody used it for this long.
    Unused(Duration),
    /// It ended and has been there this long.
    Ended(Duration),
}

fn verdict(pod: &Pod, now_ms: u64, sweep_after: Duration, orphan_after: Duration) -> Verdict {
    if pod.metadata.deletion_timestamp.is_some() {
        return Verdict::Keep;
    }
    let quiet = Duration::from_millis(now_ms.saturating_sub(last_used_ms(pod)));
    if !pod::adoptable(pod) {
        return if quiet >= orphan_after {
            Verdict::Ended(quiet)
        } else {
            Verdict::Keep
        };
    }
    if quiet >= sweep_after {
        Verdict::Unused(quiet)
    } else {
        Verdict::Keep
    }
}

impl Sweep {
    pub(crate) async fn run(&self) -> Result<(), kube::Error> {
        let now = now_ms();
        let pods = self
            .pods
            .list(&ListParams::default().labels(&names::opencode_pods()))
            .await?;
        let mut starts = HashSet::new();
        for found in &pods.items {
            let labels = found.metadata.labels.as_ref();
            if let Some(start) = labels.and_then(|l| l.get(names::LABEL_START)) {
                starts.insert(start.clone());
            }
            let name = found.metadata.name.clone().unwrap_or_default();
            let user = found
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(names::ANNOTATION_USER_ID))
                .cloned()
                .unwrap_or_default();
            let grace = match verdict(found, now, self.sweep_after, self.orphan_after) {
                Verdict::Keep => continue,
                Verdict::Unused(quiet) => {
                    tracing::warn!(
                        user,
                        pod = name,
                        unused_s = quiet.as_secs(),
                        "deleting a pod no gateway has used for twice the idle timeout"
                    );
                    self.grace
                }
                Verdict::Ended(quiet) => {
                    tracing::info!(
                        user,
                        pod = name,
                        ended_s = quiet.as_secs(),
                        "deleting a pod that ended and nobody cleared"
                    );
                    0
                }
            };
            let uid = found.metadata.uid.as_deref().unwrap_or_default();
            pod::delete(&self.pods, &name, uid, grace, &user).await;
        }
        let secrets = self
            .secrets
            .list(&ListParams::default().labels(&format!(
                "{},{}",
                names::opencode_pods(),
                names::LABEL_START
            )))
            .await?;
        for secret in &secrets.items {
            let start = secret
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(names::LABEL_START));
            let age = Duration::from_millis(now.saturating_sub(created_ms(&secret.metadata)));
            if start.is_some_and(|s| !starts.contains(s)) && age >= self.orphan_after {
                let name = secret.metadata.name.clone().unwrap_or_default();
                tracing::info!(secret = name, "deleting a start's secret whose pod is gone");
                pod::delete_secret(&self.secrets, &name, "").await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MINUTE: u64 = 60_000;

    fn pod(phase: &str, created_min: u64, used_min: Option<u64>) -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some(used) = used_min {
            annotations.insert(
                names::ANNOTATION_LAST_USED.into(),
                json!((used * MINUTE).to_string()),
            );
        }
        let created =
            k8s_openapi::jiff::Timestamp::from_millisecond((created_min * MINUTE) as i64).unwrap();
        serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u", "annotations": annotations,
                         "creationTimestamp": created.to_string()},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn only_what_nobody_used_for_long_is_swept() {
        let (after, orphan) = (Duration::from_secs(3600), Duration::from_secs(120));
        let now = 1000 * MINUTE;
        // Used 10 minutes ago through some replica: kept.
        assert_eq!(
            verdict(&pod("Running", 0, Some(990)), now, after, orphan),
            Verdict::Keep
        );
        // Used 2 hours ago: swept.
        assert!(matches!(
            verdict(&pod("Running", 0, Some(880)), now, after, orphan),
            Verdict::Unused(_)
        ));
        // Never said to be used, made long ago (a start that never became ready).
        assert!(matches!(
            verdict(&pod("Pending", 0, None), now, after, orphan),
            Verdict::Unused(_)
        ));
        // Just made: kept.
        assert_eq!(
            verdict(&pod("Pending", 999, None), now, after, orphan),
            Verdict::Keep
        );
        // Ended a while ago and nobody cleared it.
        assert!(matches!(
            verdict(&pod("Failed", 0, Some(990)), now, after, orphan),
            Verdict::Ended(_)
        ));
        assert_eq!(
            verdict(&pod("Failed", 0, Some(999)), now, after, orphan),
            Verdict::Keep
        );
        let mut deleting = pod("Running", 0, Some(0));
        deleting.metadata.deletion_timestamp =
            serde_json::from_value(json!("2026-12-02T08:00:00Z")).unwrap();
        assert_eq!(verdict(&deleting, now, after, orphan), Verdict::Keep);
    }
}
