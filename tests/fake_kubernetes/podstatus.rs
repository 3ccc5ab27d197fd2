//! Pure edits of a pod's `status`, in the shapes the kubelet writes.

use serde_json::{json, Value};

use crate::clock;

/// Sets a condition; `lastTransitionTime` moves only when its status changes.
pub fn set_condition(
    status: &mut Value,
    kind: &str,
    value: bool,
    reason: Option<&str>,
    message: Option<&str>,
) {
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let text = if value { "True" } else { "False" };
    let Some(list) = status["conditions"].as_array_mut() else {
        return;
    };
    let mut condition = json!({"type": kind, "status": text, "lastProbeTime": null, "lastTransitionTime": clock::now()});
    if let Some(r) = reason {
        condition["reason"] = json!(r);
    }
    if let Some(m) = message {
        condition["message"] = json!(m);
    }
    match list.iter_mut().find(|c| c["type"] == kind) {
        Some(old) => {
            if old["status"] == text {
                condition["lastTransitionTime"] = old["lastTransitionTime"].clone();
            }
            *old = condition;
        }
        None => list.push(condition),
    }
    // The kubelet's order, so a diff of two statuses stays readable.
    const ORDER: [&str; 5] = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ];
    list.sort_by_key(|c| {
        ORDER
            .iter()
            .position(|o| c["type"] == *o)
            .unwrap_or(ORDER.len())
    });
}

/// A container's status with the given state (`{"waiting": ...}`, `{"running": ...}`...).
pub fn container(
    spec: &Value,
    state: Value,
    ready: bool,
    started: bool,
    pid: Option<i32>,
) -> Value {
    let mut status = json!({
        "name": spec["name"],
        "image": spec["image"],
        "imageID": format!("fake-registry/{}@sha256:0", spec["image"].as_str().unwrap_or("")),
        "ready": ready,
        "restartCount": 0,
        "started": started,
        "state": state,
        "lastState": {},
    });
    if let Some(pid) = pid {
        status["containerID"] = json!(format!("fake://{pid}"));
    }
    status
}

pub fn waiting(reason: &str, message: Option<&str>) -> Value {
    let mut w = json!({"reason": reason});
    if let Some(m) = message {
        w["message"] = json!(m);
    }
    json!({"waiting": w})
}

/// Replaces (or appends) the status of container `name` in `list`.
pub fn put_container(status: &mut Value, list: &str, entry: Value) {
    if !status[list].is_array() {
        status[list] = json!([]);
    }
    let Some(items) = status[list].as_array_mut() else {
        return;
    };
    match items.iter_mut().find(|c| c["name"] == entry["name"]) {
        Some(slot) => *slot = entry,
        None => items.push(entry),
    }
}

/// Edits the status of container `name` in `list`, if present.
pub fn edit_container(status: &mut Value, list: &str, name: &str, edit: impl FnOnce(&mut Value)) {
    if let Some(c) = status[list]
        .as_array_mut()
        .and_then(|items| items.iter_mut().find(|c| c["name"] == name))
    {
        edit(c);
    }
}
