//! The Kubernetes API: URL routing, authentication and the verbs (create, get, list, watch,
//! replace, patch, delete, deletecollection) with the real server's rules and answers.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::kubelet::PodSignal;
use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::{clock, defaults, logs, patch, pvc, shape, validate, watch};

/// What a URL names.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

enum Route {
    Version,
    Namespace(String),
    Resource(Target),
}

fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["version"] => return Some(Route::Version),
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, plural, tail) = match rest {
        ["namespaces", ns] if group == "v1" => return Some(Route::Namespace((*ns).to_owned())),
        ["namespaces", ns, plural, tail @ ..] => (Some((*ns).to_owned()), *plural, tail),
        [plural] => (None, *plural, &[][..]),
        _ => return None,
    };
    let resource = Resource::find(&group, plural)?;
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some((*name).to_owned()), None),
        [name, sub] => (Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return None,
    };
    if namespace.is_none() && name.is_some() {
        return None;
    }
    Some(Route::Resource(Target {
        resource,
        namespace,
        name,
        subresource,
    }))
}

fn authorized(req: &HttpRequest, cluster: &Cluster) -> bool {
    let Some(token) = &cluster.token else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == token)
}

type Query = HashMap<String, String>;

/// Every API request comes here.
pub async fn dispatch(req: HttpRequest, body: Bytes, cluster: web::Data<Cluster>) -> HttpResponse {
    if !authorized(&req, &cluster) {
        return ApiError::unauthorized().response();
    }
    let query: Query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner().into_iter().collect())
        .unwrap_or_default();
    let result = match route(req.path()) {
        Some(Route::Version) => Ok(HttpResponse::Ok().json(json!({
            "major": "1", "minor": "34", "gitVersion": "v1.34.0-fake", "gitCommit": "fake",
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
            "compiler": "gc", "platform": "linux/amd64"
        }))),
        Some(Route::Namespace(ns)) if req.method() == Method::GET => {
            Ok(HttpResponse::Ok().json(json!({
                "kind": "Namespace", "apiVersion": "v1",
                "metadata": {"name": ns, "uid": format!("ns-{ns}"), "resourceVersion": "1",
                             "creationTimestamp": "2026-01-01T00:00:00Z",
                             "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
            })))
        }
        Some(Route::Namespace(_)) => Err(ApiError::method_not_allowed()),
        Some(Route::Resource(target)) => handle(&req, &body, &query, &cluster, target),
        None => Err(ApiError::no_such_path()),
    };
    let response = result.unwrap_or_else(|e| e.response());
    tracing::debug!("{} {} -> {}", req.method(), req.uri(), response.status());
    response
}

fn handle(
    req: &HttpRequest,
    body: &[u8],
    query: &Query,
    cx: &Cluster,
    t: Target,
) -> Result<HttpResponse, ApiError> {
    let method = req.method().clone();
    let r = t.resource;
    match (
        t.namespace.as_deref(),
        t.name.as_deref(),
        t.subresource.as_deref(),
    ) {
        (ns, None, None) if method == Method::GET => list(cx, r, ns, query),
        (Some(ns), None, None) if method == Method::POST => create(cx, r, ns, body),
        (Some(ns), None, None) if method == Method::DELETE => {
            delete_collection(cx, r, ns, query, body)
        }
        (Some(ns), Some(name), None) => match method {
            Method::GET => cx
                .store
                .get(r, ns, name)
                .map(ok)
                .ok_or_else(|| ApiError::not_found(r, name)),
            Method::PUT => replace(cx, r, ns, name, body, false),
            Method::PATCH => patch_object(cx, r, ns, name, req, body, false),
            Method::DELETE => delete(cx, r, ns, name, query, body),
            _ => Err(ApiError::method_not_allowed()),
        },
        (Some(ns), Some(name), Some("status")) if r.has_status() => match method {
            Method::GET => cx
                .store
                .get(r, ns, name)
                .map(ok)
                .ok_or_else(|| ApiError::not_found(r, name)),
            Method::PUT => replace(cx, r, ns, name, body, true),
            Method::PATCH => patch_object(cx, r, ns, name, req, body, true),
            _ => Err(ApiError::method_not_allowed()),
        },
        (Some(ns), Some(name), Some("log")) if r == Resource::Pods && method == Method::GET => {
            logs::serve(cx, ns, name, query)
        }
        (None, _, _) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::no_such_path()),
    }
}

fn ok(object: Value) -> HttpResponse {
    HttpResponse::Ok().json(object)
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("json parse error: {e}")))
}

/// Checks an object body's kind and apiVersion against the URL's resource.
fn check_kind(r: Resource, object: &Value) -> Result<(), ApiError> {
    let kind = object["kind"].as_str().unwrap_or("");
    let version = object["apiVersion"].as_str().unwrap_or("");
    if kind.is_empty() {
        let text = object.to_string();
        let text: String = text.chars().take(200).collect();
        return Err(ApiError::bad_request(format!(
            "Object 'Kind' is missing in '{text}'"
        )));
    }
    if version != r.group_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({version}) does not match the expected API version ({})",
            r.group_version()
        )));
    }
    if kind != r.kind() {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            r.kind()
        )));
    }
    Ok(())
}

/// Moves `stringData` into `data` (base64) and rejects `data` that is not base64.
fn fold_string_data(object: &mut Value) -> Result<(), ApiError> {
    let engine = base64::engine::general_purpose::STANDARD;
    if let Some(data) = object["data"].as_object() {
        for (key, value) in data {
            if let Some(text) = value.as_str() {
                engine.decode(text).map_err(|e| {
                    ApiError::bad_request(format!("Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data[{key}]: {e}"))
                })?;
            }
        }
    }
    let string_data = object.as_object_mut().and_then(|o| o.remove("stringData"));
    if let Some(Value::Object(map)) = string_data {
        if !object["data"].is_object() {
            object["data"] = json!({});
        }
        for (key, value) in map {
            let text = value.as_str().unwrap_or("");
            object["data"][key] = json!(engine.encode(text));
        }
    }
    Ok(())
}

/// The validation every write of `object` gets.
fn validate_object(r: Resource, name: &str, object: &Value) -> Result<(), ApiError> {
    let mut causes = match object["metadata"]["name"].as_str() {
        Some(n) if !n.is_empty() => validate::object_name(r, n),
        _ => Vec::new(),
    };
    causes.extend(validate::metadata(object));
    match r {
        Resource::Pods => causes.extend(validate::pod_spec(object)),
        Resource::Secrets => causes.extend(validate::secret(object)),
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(r, name, &causes))
    }
}

fn create(cx: &Cluster, r: Resource, ns: &str, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let mut object = parse_body(body)?;
    check_kind(r, &object)?;
    shape::check_object(r, &object).map_err(ApiError::bad_request)?;
    if let Some(body_ns) = object["metadata"]["namespace"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        if body_ns != ns {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
    }
    if object["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|v| !v.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if r == Resource::Secrets {
        fold_string_data(&mut object)?;
    }
    if r.has_status() {
        if let Some(o) = object.as_object_mut() {
            o.remove("status");
        }
    }
    if r == Resource::Pods {
        let has_resources = ["containers", "initContainers"].iter().any(|l| {
            object["spec"][*l]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["resources"].as_object().is_some_and(|m| !m.is_empty()))
        });
        let qos = if has_resources {
            "Burstable"
        } else {
            "BestEffort"
        };
        object["status"] = json!({"phase": "Pending", "qosClass": qos});
    }
    if r == Resource::Services {
        object["status"] = json!({"loadBalancer": {}});
        if object["spec"]["clusterIP"].is_null() {
            object["spec"]["clusterIP"] = json!("10.96.0.10");
            object["spec"]["clusterIPs"] = json!(["10.96.0.10"]);
        }
    }
    defaults::apply(r, &mut object);
    let display = object["metadata"]["name"]
        .as_str()
        .or(object["metadata"]["generateName"].as_str())
        .unwrap_or("")
        .to_owned();
    validate_object(r, &display, &object)?;
    let created = cx.store.create(r, ns, object, |o| {
        if r == Resource::PersistentVolumeClaims {
            pvc::bind(o);
        }
    })?;
    let name = created["metadata"]["name"].as_str().unwrap_or("");
    match r {
        Resource::Pods => {
            let uid = created["metadata"]["uid"].as_str().unwrap_or("");
            cx.kubelet.pod_created(ns, name, uid);
        }
        Resource::PersistentVolumeClaims => {
            let dir = cx.claim_dir(ns, name);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::error!("cannot create {}: {e}", dir.display());
            }
        }
        _ => {}
    }
    Ok(HttpResponse::Created().json(created))
}

/// Builds the object a write stores from the current one and the client's version.
fn merge_write(
    r: Resource,
    current: &Value,
    mut next: Value,
    status_only: bool,
    name: &str,
) -> Result<Value, ApiError> {
    if status_only {
        let mut result = current.clone();
        result["status"] = next["status"].take();
        return Ok(result);
    }
    next["kind"] = json!(r.kind());
    next["apiVersion"] = json!(r.group_version());
    for kept in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        let value = current["metadata"][kept].clone();
        match next["metadata"].as_object_mut() {
            Some(meta) if value.is_null() => {
                meta.remove(kept);
            }
            Some(meta) => {
                meta.insert(kept.to_owned(), value);
            }
            None => {}
        }
    }
    if r.has_status() {
        next["status"] = current["status"].clone();
    }
    if r == Resource::Secrets {
        fold_string_data(&mut next)?;
    }
    defaults::apply(r, &mut next);
    if r == Resource::Pods {
        let causes = validate::pod_update(current, &next);
        if !causes.is_empty() {
            return Err(ApiError::invalid(r, name, &causes));
        }
    }
    if r == Resource::Pods && next["spec"] != current["spec"] {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        next["metadata"]["generation"] = json!(generation + 1);
    }
    validate_object(r, name, &next)?;
    Ok(next)
}

/// After a write: an object being deleted goes once its last finalizer is removed.
fn after_write(cx: &Cluster, r: Resource, ns: &str, name: &str, object: &Value) {
    if r == Resource::PersistentVolumeClaims {
        pvc::finalize(cx, ns, name, object);
        return;
    }
    let done = object["metadata"]["finalizers"]
        .as_array()
        .is_none_or(Vec::is_empty);
    if r != Resource::Pods && done && !object["metadata"]["deletionTimestamp"].is_null() {
        let _ = cx.store.remove(r, ns, name, |_| Ok(()));
    }
}

fn replace(
    cx: &Cluster,
    r: Resource,
    ns: &str,
    name: &str,
    body: &[u8],
    status_only: bool,
) -> Result<HttpResponse, ApiError> {
    let object = parse_body(body)?;
    check_kind(r, &object)?;
    shape::check_object(r, &object).map_err(ApiError::bad_request)?;
    let meta = &object["metadata"];
    if meta["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta["name"].as_str().unwrap_or("")
        )));
    }
    if meta["namespace"]
        .as_str()
        .is_some_and(|n| !n.is_empty() && n != ns)
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let wanted_rv = meta["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let updated = cx.store.update(r, ns, name, |current| {
        match &wanted_rv {
            Some(rv) if *rv != current["metadata"]["resourceVersion"] => {
                return Err(ApiError::modified(r, name))
            }
            None if r == Resource::Pods => {
                return Err(ApiError::invalid(
                    r,
                    name,
                    &[(
                        "metadata.resourceVersion".into(),
                        "Invalid value: 0x0: must be specified for an update".into(),
                    )],
                ))
            }
            _ => {}
        }
        *current = merge_write(r, current, object, status_only, name)?;
        Ok(())
    })?;
    after_write(cx, r, ns, name, &updated);
    Ok(ok(updated))
}

fn patch_object(
    cx: &Cluster,
    r: Resource,
    ns: &str,
    name: &str,
    req: &HttpRequest,
    body: &[u8],
    status_only: bool,
) -> Result<HttpResponse, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let merge = match content_type.as_str() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => true,
        "application/json-patch+json" => false,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let patch_body = parse_body(body)?;
    if merge && !patch_body.is_object() {
        return Err(ApiError::bad_request(
            "json: cannot unmarshal non-object into Go value of type map[string]interface {}",
        ));
    }
    let updated = cx.store.update(r, ns, name, |current| {
        let mut next = current.clone();
        if merge {
            patch::merge(&mut next, &patch_body);
        } else {
            patch::json_patch(&mut next, &patch_body)
                .map_err(|e| ApiError::invalid(r, name, &[("".into(), e)]))?;
        }
        if next["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|v| v != current["metadata"]["resourceVersion"])
        {
            return Err(ApiError::modified(r, name));
        }
        shape::check_object(r, &next).map_err(ApiError::bad_request)?;
        *current = merge_write(r, current, next, status_only, name)?;
        Ok(())
    })?;
    after_write(cx, r, ns, name, &updated);
    Ok(ok(updated))
}

/// `DeleteOptions` from the body and the query (the body wins).
struct DeleteOptions {
    grace: Option<u64>,
    uid: Option<String>,
    rv: Option<String>,
}

fn delete_options(query: &Query, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        parse_body(body)?
    };
    let grace = body["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()))
        .map(|g| g.max(0) as u64);
    Ok(DeleteOptions {
        grace,
        uid: body["preconditions"]["uid"].as_str().map(str::to_owned),
        rv: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_owned),
    })
}

fn delete(
    cx: &Cluster,
    r: Resource,
    ns: &str,
    name: &str,
    query: &Query,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    let options = delete_options(query, body)?;
    delete_one(cx, r, ns, name, &options).map(ok)
}

fn delete_one(
    cx: &Cluster,
    r: Resource,
    ns: &str,
    name: &str,
    options: &DeleteOptions,
) -> Result<Value, ApiError> {
    let current = cx
        .store
        .get(r, ns, name)
        .ok_or_else(|| ApiError::not_found(r, name))?;
    let meta = &current["metadata"];
    if let Some(uid) = &options.uid {
        if meta["uid"] != uid.as_str() {
            let why = format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta["uid"].as_str().unwrap_or("")
            );
            return Err(ApiError::conflict(r, name, &why));
        }
    }
    if let Some(rv) = &options.rv {
        if meta["resourceVersion"] != rv.as_str() {
            let why = format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", meta["resourceVersion"].as_str().unwrap_or(""));
            return Err(ApiError::conflict(r, name, &why));
        }
    }
    let uid = meta["uid"].as_str().unwrap_or("").to_owned();
    let same = |o: &Value| {
        if o["metadata"]["uid"] == uid.as_str() {
            Ok(())
        } else {
            Err(ApiError::modified(r, name))
        }
    };
    if r == Resource::Pods {
        let spec_grace = current["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        let mut grace = options.grace.unwrap_or(spec_grace);
        // Like the API server: a pod no kubelet runs, or one that has finished, goes at once.
        let unscheduled = current["spec"]["nodeName"]
            .as_str()
            .is_none_or(str::is_empty);
        let finished = matches!(
            current["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        if unscheduled || finished {
            grace = 0;
        }
        if let Some(existing) = current["metadata"]["deletionGracePeriodSeconds"].as_u64() {
            grace = grace.min(existing);
        }
        let result = if grace == 0 {
            cx.store.remove(r, ns, name, same)?
        } else {
            let deadline = clock::format_unix(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    + grace,
            );
            cx.store.update(r, ns, name, |pod| {
                same(pod)?;
                pod["metadata"]["deletionTimestamp"] = json!(deadline);
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                Ok(())
            })?
        };
        cx.kubelet.signal(&uid, PodSignal::Delete(grace));
        return Ok(result);
    }
    let has_finalizers = meta["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    if has_finalizers {
        let updated = cx.store.update(r, ns, name, |o| {
            same(o)?;
            if o["metadata"]["deletionTimestamp"].is_null() {
                o["metadata"]["deletionTimestamp"] = json!(clock::now());
                o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            Ok(())
        })?;
        if r == Resource::PersistentVolumeClaims {
            pvc::sweep(cx, ns);
        }
        return Ok(updated);
    }
    cx.store.remove(r, ns, name, same)
}

fn delete_collection(
    cx: &Cluster,
    r: Resource,
    ns: &str,
    query: &Query,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    let options = delete_options(query, body)?;
    let (labels, fields) = selectors(r, query)?;
    let (items, rv) = cx.store.list(r, Some(ns));
    let mut deleted = Vec::new();
    for item in items
        .iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
    {
        let name = item["metadata"]["name"].as_str().unwrap_or("");
        match delete_one(cx, r, ns, name, &options) {
            Ok(o) => deleted.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ok(list_body(r, deleted, rv, None, None)))
}

fn selectors(r: Resource, query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str), r)
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn list_body(
    r: Resource,
    items: Vec<Value>,
    rv: u64,
    next: Option<String>,
    remaining: Option<usize>,
) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(token) = next {
        meta["continue"] = json!(token);
        meta["remainingItemCount"] = json!(remaining.unwrap_or(0));
    }
    json!({"kind": format!("{}List", r.kind()), "apiVersion": r.group_version(), "metadata": meta, "items": items})
}

fn flag(query: &Query, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true" || v == "1")
}

fn list(
    cx: &Cluster,
    r: Resource,
    ns: Option<&str>,
    query: &Query,
) -> Result<HttpResponse, ApiError> {
    let (labels, fields) = selectors(r, query)?;
    if flag(query, "watch") {
        return start_watch(cx, r, ns, labels, fields, query);
    }
    let (items, rv) = cx.store.list(r, ns);
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    };
    let after = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .map_err(|_| ApiError::bad_request("continue key is not valid: invalid token"))?;
            Some(String::from_utf8_lossy(&raw).into_owned())
        }
        None => None,
    };
    let mut matching: Vec<Value> = items
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .filter(|o| after.as_ref().is_none_or(|a| key(o) > *a))
        .collect();
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (mut next, mut remaining) = (None, None);
    if let Some(limit) = limit {
        if matching.len() > limit {
            remaining = Some(matching.len() - limit);
            matching.truncate(limit);
            next = matching
                .last()
                .map(|o| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key(o)));
        }
    }
    Ok(ok(list_body(r, matching, rv, next, remaining)))
}

fn start_watch(
    cx: &Cluster,
    r: Resource,
    ns: Option<&str>,
    labels: LabelSelector,
    fields: FieldSelector,
    query: &Query,
) -> Result<HttpResponse, ApiError> {
    let initial_events = flag(query, "sendInitialEvents");
    let since = match query.get("resourceVersion").map(String::as_str) {
        _ if initial_events => None,
        None | Some("") | Some("0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}")))?,
        ),
    };
    let timeout = match query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
    {
        Some(t) => Duration::from_secs(t),
        // The API server's default is its request timeout with jitter.
        None => Duration::from_secs(300) + Duration::from_millis(crate::ids::random_u64() % 60_000),
    };
    let filter = watch::Filter {
        namespace: ns.map(str::to_owned),
        labels,
        fields,
    };
    let options = watch::Options {
        bookmarks: flag(query, "allowWatchBookmarks"),
        timeout,
        initial_events_end: initial_events,
    };
    let builder = || {
        let mut b = HttpResponse::Ok();
        b.content_type("application/json");
        b.insert_header((header::CACHE_CONTROL, "no-cache, private"));
        b
    };
    match cx.store.watch(r, since) {
        Ok(start) => Ok(builder().streaming(watch::stream(r, start, filter, options))),
        Err(e) => Ok(builder().streaming(watch::error_stream(e))),
    }
}
