//! PersistentVolumeClaims: a claim is bound at once to a host directory
//! `<state-dir>/volumes/<ns>/<claim>`, and deleting it waits, like the
//! `kubernetes.io/pvc-protection` finalizer, until no pod that is not finished uses it.

use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::resources::Resource;

pub const PROTECTION: &str = "kubernetes.io/pvc-protection";

/// Fills in what binding sets on a new claim (it has its uid by now).
pub fn bind(claim: &mut Value) {
    let uid = claim["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    claim["metadata"]["finalizers"] = json!([PROTECTION]);
    let spec = &mut claim["spec"];
    spec["volumeName"] = json!(format!("pvc-{uid}"));
    let access = spec["accessModes"].clone();
    let capacity = spec["resources"]["requests"].clone();
    claim["status"] = json!({"phase": "Bound", "accessModes": access, "capacity": capacity});
}

/// Whether a pod that is not finished mounts the claim.
pub fn in_use(cluster: &Cluster, namespace: &str, claim: &str) -> bool {
    let (pods, _) = cluster.store.list(Resource::Pods, Some(namespace));
    pods.iter().any(|pod| {
        let finished = matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        !finished
            && pod["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["persistentVolumeClaim"]["claimName"] == claim)
    })
}

/// Removes terminating claims no pod uses any more, and their directories.
pub fn sweep(cluster: &Cluster, namespace: &str) {
    let (claims, _) = cluster
        .store
        .list(Resource::PersistentVolumeClaims, Some(namespace));
    for claim in claims {
        if claim["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let name = claim["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if in_use(cluster, namespace, &name) {
            continue;
        }
        let removed =
            cluster
                .store
                .update(Resource::PersistentVolumeClaims, namespace, &name, |c| {
                    if let Some(list) = c["metadata"]["finalizers"].as_array_mut() {
                        list.retain(|f| f != PROTECTION);
                    }
                    Ok(())
                });
        if let Ok(claim) = removed {
            finalize(cluster, namespace, &name, &claim);
        }
    }
}

/// Removes a terminating claim once it has no finalizers left.
pub fn finalize(cluster: &Cluster, namespace: &str, name: &str, claim: &Value) {
    let done = claim["metadata"]["finalizers"]
        .as_array()
        .is_none_or(Vec::is_empty);
    if !done || claim["metadata"]["deletionTimestamp"].is_null() {
        return;
    }
    let uid = claim["metadata"]["uid"].clone();
    let removed = cluster
        .store
        .remove(Resource::PersistentVolumeClaims, namespace, name, |c| {
            if c["metadata"]["uid"] == uid {
                Ok(())
            } else {
                Err(crate::status::ApiError::internal("claim replaced"))
            }
        });
    if removed.is_ok() {
        let dir = cluster.claim_dir(namespace, name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
        tracing::info!("claim {namespace}/{name} deleted with its directory");
    }
}
