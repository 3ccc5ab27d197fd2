//! The shared repository library over HTTP: the public `/-/api/repos` and
//! `/-/api/workspace` for users, and `/repos` on the admin listener for operators. The
//! `RepoLibrary` actor does the work; this only maps requests and errors.

use std::sync::Arc;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use chamberlain_actors::repos::{
    AddRepo, CloneRepo, Cloner, DeleteRepo, GetRepo, ListRepos, RefreshRepo, RepoError, RepoLibrary,
};
use serde::Deserialize;
use serde_json::json;

use crate::errors::GatewayError;
use crate::gateway::Gateway;

/// Largest JSON body these endpoints read.
const MAX_BODY: usize = 16 * 1024;

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
            .app_data(web::JsonConfig::default().limit(MAX_BODY))
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
            .app_data(web::JsonConfig::default().limit(MAX_BODY))
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

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .json(json!({"error": format!("{} is not allowed on {}", req.method(), req.path())}))
}

fn status(e: &RepoError) -> StatusCode {
    match e {
        RepoError::BadRequest(_) => StatusCode::BAD_REQUEST,
        RepoError::NotFound(_) => StatusCode::NOT_FOUND,
        RepoError::Conflict(_) => StatusCode::CONFLICT,
        RepoError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        RepoError::Upstream(_) => StatusCode::BAD_GATEWAY,
        RepoError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
    }
}

fn repo_error(e: RepoError) -> HttpResponse {
    if matches!(e, RepoError::Failed(_) | RepoError::Upstream(_)) {
        tracing::error!(error = %e, "repository operation failed");
    }
    HttpResponse::build(status(&e)).json(json!({"success": false, "error": e.to_string()}))
}

fn unavailable(e: actix::MailboxError) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .json(json!({"success": false, "error": format!("repository library unavailable: {e}")}))
}

/// Identifies the caller; the error already answered in the shape the request wants.
async fn identify(
    req: &HttpRequest,
    gateway: &Gateway,
) -> Result<crate::identity::Identity, HttpResponse> {
    gateway.identify(req).await.map_err(|e| e.respond(req))
}

async fn list(req: HttpRequest, gateway: web::Data<Gateway>) -> HttpResponse {
    if let Err(resp) = identify(&req, &gateway).await {
        return resp;
    }
    match gateway.repos.send(ListRepos).await {
        Ok(repos) => HttpResponse::Ok().json(repos),
        Err(e) => unavailable(e),
    }
}

async fn get(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
    name: web::Path<String>,
) -> HttpResponse {
    if let Err(resp) = identify(&req, &gateway).await {
        return resp;
    }
    match gateway
        .repos
        .send(GetRepo {
            name: name.into_inner(),
        })
        .await
    {
        Ok(Ok(repo)) => HttpResponse::Ok().json(repo),
        Ok(Err(e)) => repo_error(e),
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CloneRequest {
    target_name: Option<String>,
}

async fn clone(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
    name: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let identity = match identify(&req, &gateway).await {
        Ok(i) => i,
        Err(resp) => return resp,
    };
    if let Err(e) = crate::origin::check(&req, &gateway.cfg.site) {
        return e.respond(&req);
    }
    if body.len() > MAX_BODY {
        return repo_error(RepoError::BadRequest(format!(
            "the request body is larger than {MAX_BODY} bytes"
        )));
    }
    let request: CloneRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CloneRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return repo_error(RepoError::BadRequest(format!(
                    "the body is not {{\"targetName\": \"…\"}}: {e}"
                )))
            }
        }
    };
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
    match sent {
        Ok(Ok(path)) => {
            tracing::info!(user = %identity.user_id, source, target = %path.display(), "repository cloned");
            HttpResponse::Created().json(json!({
                "success": true,
                "targetPath": path,
                "error": null,
            }))
        }
        Ok(Err(e)) => repo_error(e),
        Err(e) => unavailable(e),
    }
}

async fn workspace(req: HttpRequest, gateway: web::Data<Gateway>) -> HttpResponse {
    let identity = match identify(&req, &gateway).await {
        Ok(i) => i,
        Err(resp) => return resp,
    };
    let key = gateway.user_key(&identity);
    let homes = Arc::clone(&gateway.homes);
    // Listed as the user: a workspace that is a link elsewhere shows nothing of elsewhere.
    match web::block(move || homes.projects(&key)).await {
        Ok(Ok(projects)) => HttpResponse::Ok().json(projects),
        Ok(Err(e @ chamberlain_actors::provision::ProvisionError::Busy(_))) => {
            GatewayError::TooManyConnections(e.to_string()).respond(&req)
        }
        Ok(Err(e)) => GatewayError::Internal(e.to_string()).respond(&req),
        Err(e) => GatewayError::Internal(e.to_string()).respond(&req),
    }
}

/// The library, for the admin handlers.
pub struct Library(pub Addr<RepoLibrary>);

async fn admin_list(lib: web::Data<Library>) -> HttpResponse {
    match lib.0.send(ListRepos).await {
        Ok(repos) => HttpResponse::Ok().json(repos),
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    name: String,
    url: String,
    description: Option<String>,
}

async fn add(req: HttpRequest, lib: web::Data<Library>, body: web::Bytes) -> HttpResponse {
    let request: AddRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return repo_error(RepoError::BadRequest(format!(
                "the body is not {{\"name\", \"url\", \"description\"?}}: {e}"
            )))
        }
    };
    // An administrator of the identity provider is not an operator of the host: from the
    // public console only remote repositories (git runs as root, and a local path could be
    // any directory of the host, users' homes included).
    let from_console = req
        .extensions()
        .get::<crate::admin::console::PublicConsole>()
        .is_some();
    if from_console && !request.url.starts_with("https://") {
        return repo_error(RepoError::BadRequest(
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
    match sent {
        Ok(Ok(repo)) => HttpResponse::Created().json(repo),
        Ok(Err(e)) => repo_error(e),
        Err(e) => unavailable(e),
    }
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
) -> HttpResponse {
    let name = name.into_inner();
    let sent = lib.0.send(RefreshRepo { name: name.clone() }).await;
    crate::admin::actions::audit(&req, "refresh repo", &name, &outcome(&sent, "refreshed"));
    match sent {
        Ok(Ok(upstream)) => HttpResponse::Ok().json(json!({"name": name, "upstream": upstream})),
        Ok(Err(e)) => repo_error(e),
        Err(e) => unavailable(e),
    }
}

async fn delete(
    req: HttpRequest,
    lib: web::Data<Library>,
    name: web::Path<String>,
) -> HttpResponse {
    let name = name.into_inner();
    let sent = lib.0.send(DeleteRepo { name: name.clone() }).await;
    crate::admin::actions::audit(&req, "delete repo", &name, &outcome(&sent, "deleted"));
    match sent {
        Ok(Ok(())) => HttpResponse::Ok().json(json!({"name": name, "deleted": true})),
        Ok(Err(e)) => repo_error(e),
        Err(e) => unavailable(e),
    }
}
