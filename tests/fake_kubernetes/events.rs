//! core/v1 Events about pods, written the way the kubelet and scheduler write them.

use serde_json::{json, Value};

use crate::clock;
use crate::ids;
use crate::resources::Resource;
use crate::store::Store;

#[derive(Clone, Copy)]
pub enum Level {
    Normal,
    Warning,
}

/// Records an event about `pod` from `component` (`kubelet` or `default-scheduler`).
pub fn record(
    store: &Store,
    pod: &Value,
    level: Level,
    component: &str,
    reason: &str,
    message: &str,
) {
    let meta = &pod["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or("default");
    let pod_name = meta["name"].as_str().unwrap_or("");
    let now = clock::now();
    let kind = match level {
        Level::Normal => "Normal",
        Level::Warning => "Warning",
    };
    let mut source = json!({"component": component});
    if component == "kubelet" {
        source["host"] = json!("fake-node");
    }
    let event = json!({
        "metadata": {"name": format!("{pod_name}.{}", ids::hex_suffix())},
        "involvedObject": {
            "kind": "Pod",
            "namespace": ns,
            "name": pod_name,
            "uid": meta["uid"],
            "apiVersion": "v1",
            "resourceVersion": meta["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": source,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": component,
        "reportingInstance": if component == "kubelet" { "fake-node" } else { "" },
    });
    if let Err(e) = store.create(Resource::Events, ns, event, |_| {}) {
        tracing::warn!(
            "cannot record event {reason} for {ns}/{pod_name}: {}",
            e.message
        );
    }
    match level {
        Level::Normal => tracing::info!("event {ns}/{pod_name} {reason}: {message}"),
        Level::Warning => tracing::warn!("event {ns}/{pod_name} {reason}: {message}"),
    }
}
