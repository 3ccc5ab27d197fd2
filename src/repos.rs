//! The shared repository library over HTTP: the public `/-/api/repos` and
//! `/-/api/workspace` for users, and `/repos` on the admin listener for operators. The
//! `RepoLibrary` actor does the work; this only maps requests and errors.

use std::sync::Arc;

use actix::Addr;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use chamberlain_actors::provision::ProvisionError;
use chamberlain_actors::repos::{
    AddRepo, CloneRepo, Cloner, DeleteRepo, GetRepo, ListRepos, RefreshRepo, RepoError, RepoLibrary,
};
use serde::Deserialize;
use serde_json::json;

use crate::api::method_not_allowed;
use crate::errors::GatewayError;
use crate::gateway::Gateway;
use crate::json_body::{JsonBody, Shape};

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

pub fn configure_admin(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/repos")
            .route(web::get().to(admin_list))
            .route(web::post().to(add))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/repos/{name}")
            .route(web::delete().to(delete))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/repos/{name}/refresh")
            .route(web::post().to(refresh))
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
fn answered<T>(sent: Result<Result<T, RepoError>, actix::MailboxError>) -> Result<T, GatewayError> {
    Ok(sent.map_err(library_gone)??)
}

fn library_gone(e: actix::MailboxError) -> GatewayError {
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
    body: JsonBody<CloneRequest>,
) -> Result<HttpResponse, GatewayError> {
    let identity = gateway.identify(&req).await?;
    crate::origin::check(&req, &gateway.cfg.site)?;
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
            target: body.0.target_name,
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

/// The library, for the admin handlers.
pub struct Library(pub Addr<RepoLibrary>);

async fn admin_list(lib: web::Data<Library>) -> Result<HttpResponse, GatewayError> {
    let repos = lib.0.send(ListRepos).await.map_err(library_gone)?;
    Ok(HttpResponse::Ok().json(repos))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    name: String,
    url: String,
    description: Option<String>,
}

impl Shape for AddRequest {
    const SHAPE: &'static str = "{\"name\", \"url\", \"description\"?}";
}

async fn add(
    req: HttpRequest,
    lib: web::Data<Library>,
    body: JsonBody<AddRequest>,
) -> Result<HttpResponse, GatewayError> {
    let JsonBody(request) = body;
    // An administrator of the identity provider is not an operator of the host: from the
    // public console only remote repositories (git runs as root, and a local path could be
    // any directory of the host, users' homes included).
    let from_console = req
        .extensions()
        .get::<crate::admin::console::PublicConsole>()
        .is_some();
    if from_console && !request.url.starts_with("https://") {
        return Err(GatewayError::BadRequest(
            "from the admin console a repository is added from an https:// URL; local paths \
             are for the operator's admin listener"
                .into(),
        ));
    }
    let name = request.name.clone();
    let sent = lib
        .0
        .send(AddRepo {
            name: request.name,
            url: request.url,
            description: request.description,
        })
        .await;
    crate::admin::actions::audit(&req, "add repo", &name, &outcome(&sent, "added"));
    Ok(HttpResponse::Created().json(answered(sent)?))
}

/// The outcome of an operator's repository change, for the audit line.
fn outcome<T>(sent: &Result<Result<T, RepoError>, actix::MailboxError>, done: &str) -> String {
    match sent {
        Ok(Ok(_)) => done.to_owned(),
        Ok(Err(e)) => format!("refused: {e}"),
        Err(e) => format!("failed: {e}"),
    }
}

async fn refresh(
    req: HttpRequest,
    lib: web::Data<Library>,
    name: web::Path<String>,
) -> Result<HttpResponse, GatewayError> {
    let name = name.into_inner();
    let sent = lib.0.send(RefreshRepo { name: name.clone() }).await;
    crate::admin::actions::audit(&req, "refresh repo", &name, &outcome(&sent, "refreshed"));
    let upstream = answered(sent)?;
    Ok(HttpResponse::Ok().json(json!({"name": name, "upstream": upstream})))
}

async fn delete(
    req: HttpRequest,
    lib: web::Data<Library>,
    name: web::Path<String>,
) -> Result<HttpResponse, GatewayError> {
    let name = name.into_inner();
    let sent = lib.0.send(DeleteRepo { name: name.clone() }).await;
    crate::admin::actions::audit(&req, "delete repo", &name, &outcome(&sent, "deleted"));
    answered(sent)?;
    Ok(HttpResponse::Ok().json(json!({"name": name, "deleted": true})))
}
