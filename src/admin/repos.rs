//! The repository library for operators: `/repos` on the admin listener, and
//! `/-/api/admin/repos` for the public console's administrators (remote URLs only there).
//! Every change writes an audit line.

use actix::Addr;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use chamberlain_actors::repos::{
    AddRepo, DeleteRepo, ListRepos, RefreshRepo, RepoError, RepoLibrary,
};
use serde::Deserialize;
use serde_json::json;

use crate::api::method_not_allowed;
use crate::errors::GatewayError;
use crate::json_body::{self, Shape};
use crate::repos::{answered, library_gone};

pub fn configure(cfg: &mut web::ServiceConfig) {
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
    payload: web::Payload,
) -> Result<HttpResponse, GatewayError> {
    let request: AddRequest = json_body::read(payload).await?;
    // An administrator of the identity provider is not an operator of the host: from the
    // public console only remote repositories (git runs as root, and a local path could be
    // any directory of the host, users' homes included).
    let from_console = req
        .extensions()
        .get::<super::console::PublicConsole>()
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
    super::actions::audit(&req, "add repo", &name, &outcome(&sent, "added"));
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
    super::actions::audit(&req, "refresh repo", &name, &outcome(&sent, "refreshed"));
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
    super::actions::audit(&req, "delete repo", &name, &outcome(&sent, "deleted"));
    answered(sent)?;
    Ok(HttpResponse::Ok().json(json!({"name": name, "deleted": true})))
}
