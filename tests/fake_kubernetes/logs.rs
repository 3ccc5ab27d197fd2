//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: a container's output from its log file
//! (`container`, `tailLines`, `limitBytes`; `follow` and `previous` are not supported).

use std::collections::HashMap;

use actix_web::HttpResponse;

use crate::cluster::Cluster;
use crate::resources::Resource;
use crate::status::ApiError;

pub fn serve(
    cx: &Cluster,
    ns: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<HttpResponse, ApiError> {
    let pod = cx
        .store
        .get(Resource::Pods, ns, name)
        .ok_or_else(|| ApiError::not_found(Resource::Pods, name))?;
    let names = |list: &str| -> Vec<String> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (main, init) = (names("containers"), names("initContainers"));
    let container = match query.get("container") {
        Some(c) => c.clone(),
        None if main.len() == 1 => main[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                main.join(" ")
            )))
        }
    };
    let path = if init.contains(&container) {
        cx.log_path(ns, name, Some(&container))
    } else if main.first() == Some(&container) {
        cx.log_path(ns, name, None)
    } else {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    };
    let Ok(bytes) = std::fs::read(&path) else {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
    };
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if let Some(n) = query.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        text = lines[start..].iter().map(|l| format!("{l}\n")).collect();
    }
    if let Some(n) = query
        .get("limitBytes")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let mut cut = n.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Ok(HttpResponse::Ok().content_type("text/plain").body(text))
}
