//! A person's personal access tokens: the page `/-/tokens` and `/-/api/tokens` (list,
//! create, revoke). Managing tokens needs a sign-in of the browser kind (a cookie, a dev
//! header, an identity provider's token): a personal access token cannot make or list
//! tokens, so a leaked one cannot mint a longer-lived one.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::errors::GatewayError;
use crate::gateway::Gateway;
use crate::identity::access_tokens::{TokenError, MAX_DAYS};
use crate::identity::{Credential, Identity};
use crate::pages;

/// Largest request body: a name and a number.
const MAX_BODY: usize = 4096;
const DEFAULT_DAYS: u64 = 30;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/tokens", web::get().to(page))
        .route("/static/tokens.js", web::get().to(script))
        .service(
            web::resource("/api/tokens")
                .app_data(web::PayloadConfig::new(MAX_BODY))
                .route(web::get().to(list))
                .route(web::post().to(create))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/api/tokens/{id}")
                .route(web::delete().to(revoke))
                .default_service(web::to(method_not_allowed)),
        );
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    HttpResponse::MethodNotAllowed().json(json!({
        "error": format!("{} is not allowed on {}", req.method(), req.path())
    }))
}

/// The token store's refusals as the API answers them.
pub fn error_response(e: &TokenError) -> HttpResponse {
    let body = json!({ "error": e.to_string() });
    match e {
        TokenError::Invalid(_) => HttpResponse::BadRequest().json(body),
        TokenError::TooMany | TokenError::Full => HttpResponse::Conflict().json(body),
        TokenError::NotFound(_) => HttpResponse::NotFound().json(body),
        TokenError::Write { .. } | TokenError::Read { .. } | TokenError::Random => {
            tracing::error!(error = %e, "personal access tokens");
            HttpResponse::InternalServerError().json(body)
        }
        TokenError::Share(_) => {
            tracing::error!(error = %e, "personal access tokens");
            HttpResponse::ServiceUnavailable()
                .insert_header(("retry-after", "2"))
                .json(body)
        }
    }
}

/// The signed-in person, if they signed in some way other than with a token.
async fn person(req: &HttpRequest, gateway: &Gateway) -> Result<Identity, HttpResponse> {
    let identity = gateway.identify(req).await.map_err(|e| e.respond(req))?;
    if matches!(identity.credential, Credential::AccessToken { .. }) {
        return Err(GatewayError::Forbidden(
            "a personal access token cannot manage tokens: sign in with a browser".into(),
        )
        .respond(req));
    }
    if !crate::origin::is_safe(req.method()) {
        crate::origin::check(req, &gateway.cfg.site).map_err(|e| e.respond(req))?;
    }
    Ok(identity)
}

async fn page(req: HttpRequest, gateway: web::Data<Gateway>) -> HttpResponse {
    if let Err(resp) = person(&req, &gateway).await {
        return resp;
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-frame-options", "DENY"))
        .body(pages::TOKENS)
}

async fn script() -> HttpResponse {
    pages::asset("text/javascript; charset=utf-8", pages::TOKENS_JS)
}

async fn list(req: HttpRequest, gateway: web::Data<Gateway>) -> HttpResponse {
    match person(&req, &gateway).await {
        Ok(identity) => {
            HttpResponse::Ok().json(gateway.auth.tokens().list(Some(&identity.user_id)))
        }
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateRequest {
    name: String,
    expires_in_days: Option<u64>,
}

async fn create(req: HttpRequest, gateway: web::Data<Gateway>, body: web::Bytes) -> HttpResponse {
    let identity = match person(&req, &gateway).await {
        Ok(identity) => identity,
        Err(resp) => return resp,
    };
    let request: CreateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return GatewayError::BadRequest(format!(
                "the body is not {{\"name\", \"expiresInDays\"? (1-{MAX_DAYS})}}: {e}"
            ))
            .respond(&req)
        }
    };
    let tokens = gateway.auth.tokens().clone();
    let days = request.expires_in_days.unwrap_or(DEFAULT_DAYS);
    let owner = identity.clone();
    let made = web::block(move || tokens.create(&owner, &request.name, days)).await;
    match made {
        Ok(Ok(made)) => {
            tracing::info!(
                user = %identity.user_id,
                token = %made.info.id,
                name = %made.info.name,
                expires = %made.info.expires_at,
                "personal access token created"
            );
            HttpResponse::Created()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .json(made)
        }
        Ok(Err(e)) => error_response(&e),
        Err(e) => GatewayError::Internal(e.to_string()).respond(&req),
    }
}

async fn revoke(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
    id: web::Path<String>,
) -> HttpResponse {
    let identity = match person(&req, &gateway).await {
        Ok(identity) => identity,
        Err(resp) => return resp,
    };
    let tokens = gateway.auth.tokens().clone();
    let (id, owner) = (id.into_inner(), identity.user_id.clone());
    match web::block(move || tokens.revoke(&id, Some(&owner))).await {
        Ok(Ok(info)) => {
            tracing::info!(user = %identity.user_id, token = %info.id, "personal access token revoked");
            HttpResponse::Ok().json(json!({"id": info.id, "revoked": true}))
        }
        Ok(Err(e)) => error_response(&e),
        Err(e) => GatewayError::Internal(e.to_string()).respond(&req),
    }
}
