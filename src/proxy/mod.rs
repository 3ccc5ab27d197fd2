//! Everything outside `/-/` goes to the caller's own OpenCode.

mod clients;
mod forward;
pub mod headers;
pub mod path;
pub mod streams;

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chamberlain_actors::{InstanceState, WakeReply};

use crate::errors::{self, GatewayError};
use crate::gateway::{Access, Gateway};
use crate::identity::Identity;
use crate::pages;
pub use clients::UpstreamClients;
use forward::Forward;
use headers::RequestFilter;

pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    gateway: web::Data<Gateway>,
    clients: web::Data<UpstreamClients>,
) -> HttpResponse {
    match proxy(&req, payload, &gateway, &clients).await {
        Ok(response) => response,
        Err(err) => {
            if err.status().is_server_error() {
                tracing::warn!(path = req.path(), error = %err, "proxy request failed");
            }
            err.respond(&req)
        }
    }
}

async fn proxy(
    req: &HttpRequest,
    payload: web::Payload,
    gateway: &Gateway,
    clients: &UpstreamClients,
) -> Result<HttpResponse, GatewayError> {
    if let Some(why) = path::not_normal(req.path()) {
        return Err(GatewayError::BadRequest(format!(
            "{why}: {:?} (send the path in its plain form)",
            req.path()
        )));
    }
    let identity = match gateway.identify(req).await {
        Ok(identity) => identity,
        Err(GatewayError::Unauthenticated { .. }) if is_app_manifest(req) => {
            return Ok(app_manifest());
        }
        Err(e) => return Err(e),
    };
    // A cookie comes with requests other sites make: a form posted from another page must
    // not create sessions or run commands in this user's OpenCode.
    if identity.credential.is_ambient() && !crate::origin::is_safe(req.method()) {
        crate::origin::check(req, &gateway.cfg.site)?;
    }
    if let Some(landing) = landing(req, gateway, &identity).await {
        return Ok(landing);
    }
    // Every request and websocket holds descriptors of the gateway's until it ends.
    let connection = gateway.connections.open(&identity.user_id)?;
    if headers::is_upgrade(req) {
        return crate::websocket::upgrade(req, payload, gateway, clients, &identity, connection)
            .await;
    }
    if changes_shared_keys(req, gateway) {
        return Err(GatewayError::Forbidden(
            "API keys are provided by your organisation (shared/auth/auth.json) and are \
             read-only here; ask an operator to add or change a provider key"
                .to_owned(),
        ));
    }
    let access = if headers::is_event_stream(req) {
        Access::Passive
    } else {
        Access::Wake
    };
    if access == Access::Wake && errors::is_navigation(req) {
        if let Some(page) = starting_page(gateway, &identity).await? {
            return Ok(page);
        }
    }
    let (handle, upstream) = gateway.upstream(&identity, access).await?;
    let activity = (access == Access::Wake).then(|| handle.activity.begin());
    let client = clients.get(&upstream);
    Forward {
        client: &client,
        upstream: &upstream,
        filter: RequestFilter::new(gateway, access == Access::Passive),
        timeout: gateway.cfg.upstream_timeout,
        sse_keepalive: gateway.cfg.sse_keepalive,
        metrics: &gateway.metrics,
        activity,
        connection,
    }
    .send(req, payload)
    .await
}

/// A person opening the gateway's address lands on the portal, which says what is there
/// and opens the workspace in OpenCode as a project (OpenCode's own start page would show
/// an empty project list). Their OpenCode starts meanwhile, as it did when `/` was OpenCode.
async fn landing(
    req: &HttpRequest,
    gateway: &Gateway,
    identity: &Identity,
) -> Option<HttpResponse> {
    if req.path() != "/" || !req.query_string().is_empty() || !errors::is_navigation(req) {
        return None;
    }
    if !gateway.is_shutting_down() {
        // A failed or refused start shows on the portal; the redirect is the answer here.
        let _ = gateway.wake(identity, false).await;
    }
    Some(
        HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/-/"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
    )
}

fn is_app_manifest(req: &HttpRequest) -> bool {
    req.path() == "/site.webmanifest"
        && (req.method() == actix_web::http::Method::GET
            || req.method() == actix_web::http::Method::HEAD)
}

/// The same for everyone and about no one, so it needs no sign-in (see
/// [`pages::OPENCODE_MANIFEST`]).
fn app_manifest() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/manifest+json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(pages::OPENCODE_MANIFEST)
}

/// OpenCode's `PUT`/`DELETE /auth/{provider}` would write the shared auth file (and fail
/// with an opaque error, since the file is read-only to users): answer clearly instead.
/// The path is in normal form by now (see `path.rs`), so no other spelling reaches it.
fn changes_shared_keys(req: &HttpRequest, gateway: &Gateway) -> bool {
    writes_keys(req.method(), req.path()) && gateway.cfg.shared_auth.is_file()
}

fn writes_keys(method: &actix_web::http::Method, path: &str) -> bool {
    !crate::origin::is_safe(method) && path::is_under(path, "/auth/")
}

/// A browser loading a page while the instance is not ready gets the "starting your
/// workspace" page at once (the start is set off), instead of a blank wait.
async fn starting_page(
    gateway: &Gateway,
    identity: &Identity,
) -> Result<Option<HttpResponse>, GatewayError> {
    if let Some(handle) = gateway.peek(identity) {
        if handle.status.borrow().state == InstanceState::Ready {
            return Ok(None);
        }
    }
    let (_, reply) = gateway.wake(identity, false).await?;
    if matches!(reply, WakeReply::Ready(_)) {
        return Ok(None);
    }
    Ok(Some(
        HttpResponse::ServiceUnavailable()
            .insert_header((
                header::RETRY_AFTER,
                Duration::from_secs(2).as_secs().to_string(),
            ))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .content_type("text/html; charset=utf-8")
            .body(pages::starting()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::Method;

    #[test]
    fn key_writes_are_recognised_in_any_case() {
        assert!(writes_keys(&Method::PUT, "/auth/anthropic"));
        assert!(writes_keys(&Method::DELETE, "/AUTH/anthropic"));
        assert!(writes_keys(&Method::POST, "/Auth/x/"));
        assert!(!writes_keys(&Method::GET, "/auth/anthropic"));
        assert!(!writes_keys(&Method::PUT, "/provider/auth"));
    }
}
