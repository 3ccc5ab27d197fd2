//! A person's personal access tokens: the page `/-/tokens` and `/-/api/tokens` (list,
//! create, revoke). Managing tokens needs a sign-in of the browser kind (a cookie, a dev
//! header, an identity provider's token): a personal access token cannot make or list
//! tokens, so a leaked one cannot mint a longer-lived one.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::api::method_not_allowed;
use crate::errors::GatewayError;
use crate::gateway::Gateway;
use crate::identity::access_tokens::TokenError;
use crate::identity::{Credential, Identity};
use crate::json_body::{self, Shape};
use crate::pages;

const DEFAULT_DAYS: u64 = 30;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/tokens", web::get().to(page))
        .route("/static/tokens.js", web::get().to(script))
        .service(
            web::resource("/api/tokens")
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

/// The token store's refusals as the API answers them.
impl From<TokenError> for GatewayError {
    fn from(e: TokenError) -> Self {
        let message = e.to_string();
        match e {
            TokenError::Invalid(_) => GatewayError::BadRequest(message),
            TokenError::TooMany | TokenError::Full => GatewayError::Conflict(message),
            TokenError::NotFound(_) => GatewayError::NotFound(message),
            TokenError::Write { .. } | TokenError::Read { .. } | TokenError::Random => {
                tracing::error!(error = %message, "personal access tokens");
                GatewayError::Internal(message)
            }
            TokenError::Share(_) => {
                tracing::error!(error = %message, "personal access tokens");
                GatewayError::TryLater {
                    message,
                    retry_after: std::time::Duration::from_secs(2),
                }
            }
        }
    }
}

/// The signed-in person, if they signed in some way other than with a token.
async fn person(req: &HttpRequest, gateway: &Gateway) -> Result<Identity, GatewayError> {
    let identity = gateway.identify(req).await?;
    if matches!(identity.credential, Credential::AccessToken { .. }) {
        return Err(GatewayError::Forbidden(
            "a personal access token cannot manage tokens: sign in with a browser".into(),
        ));
    }
    if !crate::origin::is_safe(req.method()) {
        crate::origin::check(req, &gateway.cfg.site)?;
    }
    Ok(identity)
}

async fn page(req: HttpRequest, gateway: web::Data<Gateway>) -> Result<HttpResponse, GatewayError> {
    person(&req, &gateway).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-frame-options", "DENY"))
        .body(pages::TOKENS))
}

async fn script() -> HttpResponse {
    pages::asset("text/javascript; charset=utf-8", pages::TOKENS_JS)
}

async fn list(req: HttpRequest, gateway: web::Data<Gateway>) -> Result<HttpResponse, GatewayError> {
    let identity = person(&req, &gateway).await?;
    Ok(HttpResponse::Ok().json(gateway.auth.tokens().list(Some(&identity.user_id))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateRequest {
    name: String,
    expires_in_days: Option<u64>,
}

impl Shape for CreateRequest {
    const SHAPE: &'static str = "{\"name\", \"expiresInDays\"? (1-365)}";
}

async fn create(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
    payload: web::Payload,
) -> Result<HttpResponse, GatewayError> {
    let identity = person(&req, &gateway).await?;
    let request: CreateRequest = json_body::read(payload).await?;
    let tokens = gateway.auth.tokens().clone();
    let days = request.expires_in_days.unwrap_or(DEFAULT_DAYS);
    let owner = identity.clone();
    let made = web::block(move || tokens.create(&owner, &request.name, days))
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))??;
    tracing::info!(
        user = %identity.user_id,
        token = %made.info.id,
        name = %made.info.name,
        expires = %made.info.expires_at,
        "personal access token created"
    );
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(made))
}

async fn revoke(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
    id: web::Path<String>,
) -> Result<HttpResponse, GatewayError> {
    let identity = person(&req, &gateway).await?;
    let tokens = gateway.auth.tokens().clone();
    let (id, owner) = (id.into_inner(), identity.user_id.clone());
    let info = web::block(move || tokens.revoke(&id, Some(&owner)))
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))??;
    tracing::info!(user = %identity.user_id, token = %info.id, "personal access token revoked");
    Ok(HttpResponse::Ok().json(json!({"id": info.id, "revoked": true})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_names_the_longest_life() {
        let most = crate::identity::access_tokens::MAX_DAYS.to_string();
        assert!(CreateRequest::SHAPE.contains(&format!("(1-{most})")));
    }
}
