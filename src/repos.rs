//! The shared repository library over HTTP for users: `/-/api/repos` and
//! `/-/api/workspace` (the operators' `/repos` is `admin/repos.rs`). The `RepoLibrary` actor
//! does the work; this only maps requests, and the library's errors to `GatewayError`.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use chamberlain_actors::provision::ProvisionError;
use chamberlain_actors::repos::{CloneRepo, Cloner, GetRepo, ListRepos, RepoError};
use serde::Deserialize;
use serde_json::json;

use crate::api::method_not_allowed;
use crate::errors::GatewayError;
use crate::gateway::Gateway;
use crate::json_body::{self, Shape};

pub fn configure_public(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/repos")
            .route(web::get().to(list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/repos/{name}")
            .route(web::get().to(get))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/repos/{name}/clone")
            .route(web::post().to(clone))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/workspace")
            .route(web::get().to(workspace))
            .default_service(web::to(method_not_allowed)),
    );
}

impl From<RepoError> for GatewayError {
    fn from(e: RepoError) -> Self {
        if matches!(e, RepoError::Failed(_) | RepoError::Upstream(_)) {
            tracing::error!(error = %e, "repository operation failed");
        }
        let message = e.to_string();
        match e {
            RepoError::BadRequest(_) => GatewayError::BadRequest(message),
            RepoError::NotFound(_) => GatewayError::NotFound(message),
            RepoError::Conflict(_) => GatewayError::Conflict(message),
            RepoError::Failed(_) => GatewayError::Internal(message),
            RepoError::Upstream(_) => GatewayError::Remote(message),
            RepoError::Busy(_) => GatewayError::Busy(message),
        }
    }
}

/// The library's answer, or why there is none.
pub(crate) fn answered<T>(
    sent: Result<Result<T, RepoError>, actix::MailboxError>,
) -> Result<T, GatewayError> {
    Ok(sent.map_err(library_gone)??)
}

pub(crate) fn library_gone(e: actix::MailboxError) -> GatewayError {
    GatewayError::gone("the repository library", e)
}

async fn list(req: HttpRequest, gateway: web::Data<Gateway>) -> Result<HttpResponse, GatewayError> {
    gateway.identify(&req).await?;
    let repos = gateway.repos.send(ListRepos).await.map_err(library_gone)?;
    Ok(HttpResponse::Ok().json(repos))
}

async fn get(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
    name: web::Path<String>,
) -> Result<HttpResponse, GatewayError> {
    gateway.identify(&req).await?;
    let name = name.into_inner();
    let repo = answered(gateway.repos.send(GetRepo { name }).await)?;
    Ok(HttpResponse::Ok().json(repo))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CloneRequest {
    target_name: Option<String>,
}

impl Shape for CloneRequest {
    const SHAPE: &'static str = "{\"targetName\": \"…\"}";
}

async fn clone(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, GatewayError> {
    let identity = gateway.identify(&req).await?;
    crate::origin::check(&req, &gateway.cfg.site)?;
    let request: CloneRequest = json_body::read(payload).await?;
    let spec = gateway.user_spec(&identity);
    let user = Cloner {
        profile: spec.profile(),
        key: spec.key,
    };
    let source = name.into_inner();
    let sent = gateway
        .repos
        .send(CloneRepo {
            source: source.clone(),
            target: request.target_name,
            user,
        })
        .await;
    let path = answered(sent)?;
    tracing::info!(user = %identity.user_id, source, target = %path.display(), "repository cloned");
    Ok(HttpResponse::Created().json(json!({
        "success": true,
        "targetPath": path,
        "error": null,
    })))
}

async fn workspace(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
) -> Result<HttpResponse, GatewayError> {
    let identity = gateway.identify(&req).await?;
    let key = gateway.user_key(&identity);
    let homes = Arc::clone(&gateway.homes);
    // Listed as the user: a workspace that is a link elsewhere shows nothing of elsewhere.
    match web::block(move || homes.projects(&key)).await {
        Ok(Ok(projects)) => Ok(HttpResponse::Ok().json(projects)),
        Ok(Err(e @ ProvisionError::Busy(_))) => Err(GatewayError::Busy(e.to_string())),
        Ok(Err(e)) => Err(GatewayError::Internal(e.to_string())),
        Err(e) => Err(GatewayError::Internal(e.to_string())),
    }
}
