//! Test-only endpoints under `/fake/` (no auth): what a node's operator could see and do.
//!
//! `GET /fake/pods`                         pods with a live process
//! `POST /fake/pods/{ns}/{name}/kill?oom=`  SIGKILL the container (a crash, or an OOM kill)
//! `POST /fake/pods/{ns}/{name}/evict`      a node-pressure eviction
//! `GET /fake/volumes`                      the host directories of the claims

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::kubelet::PodSignal;
use crate::resources::Resource;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/fake/pods", web::get().to(pods))
        .route("/fake/pods/{ns}/{name}/kill", web::post().to(kill))
        .route("/fake/pods/{ns}/{name}/evict", web::post().to(evict))
        .route("/fake/volumes", web::get().to(volumes));
}

async fn pods(cx: web::Data<Cluster>) -> HttpResponse {
    let mut list: Vec<Value> = cx
        .kubelet
        .slots_snapshot()
        .into_iter()
        .filter_map(|(uid, slot)| {
            let pid = slot.pid?;
            let pod = cx.store.get(Resource::Pods, &slot.namespace, &slot.name);
            let pod = pod
                .filter(|p| p["metadata"]["uid"] == uid.as_str())
                .unwrap_or(Value::Null);
            let ready = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            Some(json!({
                "namespace": slot.namespace,
                "name": slot.name,
                "uid": uid,
                "pid": pid,
                "podIP": pod["status"]["podIP"],
                "phase": pod["status"]["phase"],
                "ready": ready,
            }))
        })
        .collect();
    list.sort_by_key(|p| format!("{}/{}", p["namespace"], p["name"]));
    HttpResponse::Ok().json(list)
}

/// The uid of the pod's task, if it has a live process.
fn running_uid(cx: &Cluster, ns: &str, name: &str) -> Option<String> {
    cx.kubelet
        .slots_snapshot()
        .into_iter()
        .find(|(_, s)| s.namespace == ns && s.name == name && s.pid.is_some())
        .map(|(uid, _)| uid)
}

fn not_running(ns: &str, name: &str) -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": format!("no running pod {ns}/{name}")}))
}

async fn kill(
    cx: web::Data<Cluster>,
    path: web::Path<(String, String)>,
    query: web::Query<std::collections::HashMap<String, String>>,
) -> HttpResponse {
    let (ns, name) = path.into_inner();
    let oom = query.get("oom").is_some_and(|v| v == "true" || v == "1");
    match running_uid(&cx, &ns, &name) {
        Some(uid) if cx.kubelet.signal(&uid, PodSignal::Kill { oom }) => {
            HttpResponse::Ok().json(json!({"killed": format!("{ns}/{name}"), "oom": oom}))
        }
        _ => not_running(&ns, &name),
    }
}

async fn evict(cx: web::Data<Cluster>, path: web::Path<(String, String)>) -> HttpResponse {
    let (ns, name) = path.into_inner();
    let uid = cx
        .store
        .get(Resource::Pods, &ns, &name)
        .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_owned));
    match uid {
        Some(uid) if cx.kubelet.signal(&uid, PodSignal::Evict) => {
            HttpResponse::Ok().json(json!({"evicted": format!("{ns}/{name}")}))
        }
        _ => HttpResponse::NotFound().json(json!({"error": format!("no pod {ns}/{name}")})),
    }
}

async fn volumes(cx: web::Data<Cluster>) -> HttpResponse {
    let (claims, _) = cx.store.list(Resource::PersistentVolumeClaims, None);
    let list: Vec<Value> = claims
        .iter()
        .map(|c| {
            let ns = c["metadata"]["namespace"].as_str().unwrap_or("");
            let name = c["metadata"]["name"].as_str().unwrap_or("");
            json!({"namespace": ns, "name": name, "path": cx.claim_dir(ns, name)})
        })
        .collect();
    HttpResponse::Ok().json(list)
}
