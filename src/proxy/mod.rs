//! Everything outside `/-/` goes to the caller's own OpenCode.

//!
//! A request lives in phases, in this order, each in its own place:
//! 1. **identify** — who is asking (`Gateway::identify`); the app manifest needs no one;
//! 2. **route** — what the request is (`Kind`) and whether it may go on: a path in normal
//!    form, a same-site origin for state changes, no write to the organisation's keys, a
//!    valid websocket handshake, a connection under the user's limit;
//! 3. **wake / wait** — the user's ready OpenCode (`Gateway::upstream`): straight from the
//!    route cache when ready, else woken and waited for; a browser loading a page gets the
//!    starting page instead of a wait;
//! 4. **forward** — one HTTP request (`forward.rs`) or a websocket bridge (`websocket`);
//! 5. **relay** — the answer streamed back (`streams.rs`).

mod forward;
pub mod path;
pub mod streams;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::errors::{GatewayError, RETRY_STARTING};
use crate::gateway::{Access, Gateway, Routed};
use crate::identity::Identity;
use crate::pages;
use crate::request;
use crate::upstream::headers::RequestFilter;
use crate::upstream::UpstreamClients;
use forward::Forward;

pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    gateway: web::Data<Gateway>,
    clients: web::Data<UpstreamClients>,
) -> Result<HttpResponse, GatewayError> {
    let answer = proxy(&req, payload, &gateway, &clients).await;
    if let Err(err) = &answer {
        if err.status().is_server_error() {
            tracing::warn!(path = req.path(), error = %err, "proxy request failed");
        }
    }
    answer
}

/// What a request to OpenCode is, which decides how it waits and how it is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A websocket handshake (a terminal): bridged, and passive (a socket reconnecting by
    /// itself must not restart a stopped instance).
    Socket,
    /// A server-push event stream: passive too.
    Events,
    /// A browser loading a page: wakes the instance, but gets the starting page over a wait.
    Page,
    /// Anything else a person's client sends: wakes the instance and waits for it.
    Call,
}

impl Kind {
    fn of(req: &HttpRequest) -> Self {
        if request::is_upgrade(req) {
            Kind::Socket
        } else if request::wants_event_stream(req) {
            Kind::Events
        } else if request::is_navigation(req) {
            Kind::Page
        } else {
            Kind::Call
        }
    }

    fn access(self) -> Access {
        match self {
            Kind::Socket | Kind::Events => Access::Passive,
            Kind::Page => Access::Navigate,
            Kind::Call => Access::Wake,
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
    // Identify.
    let identity = match gateway.identify(req).await {
        Ok(identity) => identity,
        Err(GatewayError::Unauthenticated { .. }) if is_app_manifest(req) => {
            return Ok(app_manifest());
        }
        Err(e) => return Err(e),
    };
    // Route.
    let kind = Kind::of(req);
    if kind == Kind::Page {
        if let Some(landing) = landing(req, gateway, &identity).await {
            return Ok(landing);
        }
    }
    may_go_on(req, gateway, &identity, kind)?;
    // Every request and websocket holds descriptors of the gateway's until it ends.
    let connection = gateway.connections.open(&identity.user_id)?;
    // Wake and wait.
    let (activity, upstream) = match gateway.upstream(&identity, kind.access()).await? {
        Routed::Ready(activity, upstream) => (activity, upstream),
        Routed::Starting => return Ok(starting_page()),
    };
    // Forward, and relay the answer.
    let client = clients.get(&upstream);
    if kind == Kind::Socket {
        return crate::websocket::Bridge {
            gateway,
            client: &client.client,
            upstream: &upstream,
            activity: &activity,
            user: &identity.user_id,
            connection,
        }
        .open(req, payload)
        .await;
    }
    let passive = kind.access() == Access::Passive;
    Forward {
        client: &client,
        upstream: &upstream,
        filter: RequestFilter::new(gateway, passive),
        timeout: gateway.cfg.upstream_timeout,
        sse_keepalive: gateway.cfg.sse_keepalive,
        metrics: &gateway.metrics,
        activity: (!passive).then(|| activity.begin()),
        connection,
    }
    .send(req, payload)
    .await
}

/// The route phase's refusals, before anything is woken or held.
fn may_go_on(
    req: &HttpRequest,
    gateway: &Gateway,
    identity: &Identity,
    kind: Kind,
) -> Result<(), GatewayError> {
    if kind == Kind::Socket {
        crate::websocket::check_handshake(req)?;
        // Browsers send no CORS preflight for websockets: every handshake is checked.
        return crate::origin::check(req, &gateway.cfg.site);
    }
    // A cookie comes with requests other sites make: a form posted from another page must
    // not create sessions or run commands in this user's OpenCode.
    if identity.credential.is_ambient() && !crate::origin::is_safe(req.method()) {
        crate::origin::check(req, &gateway.cfg.site)?;
    }
    if changes_shared_keys(req, gateway) {
        return Err(GatewayError::Forbidden(
            "API keys are provided by your organisation (shared/auth/auth.json) and are \
             read-only here; ask an operator to add or change a provider key"
                .to_owned(),
        ));
    }
    Ok(())
}

/// A person opening the gateway's address lands on the portal, which says what is there
/// and opens the workspace in OpenCode as a project (OpenCode's own start page would show
/// an empty project list). Their OpenCode starts meanwhile, as it did when `/` was OpenCode.
async fn landing(
    req: &HttpRequest,
    gateway: &Gateway,
    identity: &Identity,
) -> Option<HttpResponse> {
    if req.path() != "/" || !req.query_string().is_empty() {
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
fn starting_page() -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((header::RETRY_AFTER, RETRY_STARTING.as_secs().to_string()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("text/html; charset=utf-8")
        .body(pages::starting())
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
