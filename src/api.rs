//! The gateway's own endpoints under `/-/`: health, dev sign-in, who am I, and the caller's
//! instance (status, start, stop, progress stream).

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use chamberlain_actors::{
    InstanceHandle, InstanceState, InstanceStatus, Refusal, Stop, StopReason,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::errors::GatewayError;
use crate::gateway::Gateway;
use crate::identity::dev;
use crate::identity::AuthMode;
use crate::pages;
use crate::proxy::streams::Held;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/", web::get().to(portal)))
        .service(resource("/static/base.css", web::get().to(base_css)))
        .service(resource("/static/portal.css", web::get().to(portal_css)))
        .service(resource("/static/portal.js", web::get().to(portal_js)))
        .service(resource("/healthz", web::get().to(healthz)))
        .service(resource("/readyz", web::get().to(readyz)))
        .service(resource("/login", web::get().to(login)))
        .service(resource("/logout", web::get().to(logout)))
        .service(resource("/api/me", web::get().to(me)))
        .service(resource("/api/instance", web::get().to(instance)))
        .service(resource("/api/instance/start", web::post().to(start)))
        .service(resource("/api/instance/stop", web::post().to(stop)))
        .service(resource("/api/instance/progress", web::get().to(progress)))
        .configure(crate::repos::configure_public)
        .configure(crate::tokens::configure)
        .configure(crate::admin::console::configure_public)
        .default_service(web::to(not_found));
}

/// One path, one method; any other method is a JSON 405.
fn resource(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

/// The answer of every `/-/` path for a method it does not serve.
pub async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, GatewayError> {
    Err(GatewayError::method_not_allowed(&req))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, GatewayError> {
    Err(GatewayError::no_endpoint(&req))
}

/// The portal page; a browser that is not signed in gets the sign-in page instead.
async fn portal(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
) -> Result<HttpResponse, GatewayError> {
    gateway.identify(&req).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(pages::PORTAL))
}

/// No identity: the sign-in, signed-out, 401 and error pages link it too.
async fn base_css() -> HttpResponse {
    pages::asset("text/css; charset=utf-8", pages::BASE_CSS)
}

async fn portal_css() -> HttpResponse {
    pages::asset("text/css; charset=utf-8", pages::PORTAL_CSS)
}

async fn portal_js() -> HttpResponse {
    pages::asset("text/javascript; charset=utf-8", pages::PORTAL_JS)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(gateway: web::Data<Gateway>) -> HttpResponse {
    if gateway.is_shutting_down() {
        HttpResponse::ServiceUnavailable().json(json!({ "status": "shutting down" }))
    } else {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    }
}

/// The instance as the API shows it.
pub fn instance_json(status: &InstanceStatus, last_activity: Option<u64>) -> Value {
    let retry_after = match &status.refusal {
        Some(Refusal::Capacity { retry_after }) => Some(retry_after.as_secs().max(1)),
        _ => None,
    };
    json!({
        "state": status.state,
        "message": status.message,
        "startedAt": status.started_at_ms,
        "lastActivity": last_activity,
        "restarts": status.restarts,
        "retryAfter": retry_after,
        "diskBytes": status.disk_bytes,
        "diskQuota": status.disk_quota,
        "busySessions": status.busy_sessions,
    })
}

fn handle_json(handle: Option<&InstanceHandle>) -> Value {
    match handle {
        Some(h) => instance_json(&h.status.borrow(), Some(h.activity.last_epoch_ms())),
        None => instance_json(&InstanceStatus::default(), None),
    }
}

/// The instance with the user's model use today (UTC) and their daily budget.
fn with_usage(mut instance: Value, gateway: &Gateway, user_id: &str) -> Value {
    instance["llm"] = json!(gateway.cfg.llm_usage.today(user_id));
    instance["llmDailyTokens"] = json!(gateway.cfg.llm_daily_tokens);
    instance
}

async fn me(req: HttpRequest, gateway: web::Data<Gateway>) -> Result<HttpResponse, GatewayError> {
    let identity = gateway.identify(&req).await?;
    let key = gateway.user_key(&identity);
    let ws = gateway.homes.users().workspace(&key);
    let handle = gateway.peek(&identity);
    let org_auth = gateway.cfg.shared_auth.clone();
    let models_configured = web::block(move || has_org_keys(&org_auth))
        .await
        .unwrap_or(false);
    Ok(HttpResponse::Ok().json(json!({
        "userId": identity.user_id,
        "admin": gateway.auth.policy().is_admin(&identity),
        "modelsConfigured": models_configured,
        "email": identity.email,
        "emailVerified": identity.email_verified,
        "name": identity.name,
        "homeDirectory": ws.home(),
        "workspaceDirectory": ws.workspace_dir(),
        "isInitialized": gateway.homes.users().is_initialized(&key),
        "instance": with_usage(handle_json(handle.as_ref()), &gateway, &identity.user_id),
    })))
}

/// Whether the organisation's `auth.json` holds any provider's key. Blocking.
fn has_org_keys(path: &std::path::Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|v| v.as_object().map(|o| !o.is_empty()))
        .unwrap_or(false)
}

async fn instance(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
) -> Result<HttpResponse, GatewayError> {
    let identity = gateway.identify(&req).await?;
    let instance = handle_json(gateway.peek(&identity).as_ref());
    Ok(HttpResponse::Ok().json(with_usage(instance, &gateway, &identity.user_id)))
}

async fn start(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
) -> Result<HttpResponse, GatewayError> {
    let identity = gateway.identify(&req).await?;
    crate::origin::check(&req, &gateway.cfg.site)?;
    if gateway.is_shutting_down() {
        return Err(GatewayError::Unavailable {
            message: "the gateway is shutting down".to_owned(),
            retry_after: Duration::from_secs(10),
            state: InstanceState::Stopped,
        });
    }
    let (handle, _) = gateway.wake(&identity, true).await?;
    Ok(HttpResponse::Accepted().json(handle_json(Some(&handle))))
}

async fn stop(req: HttpRequest, gateway: web::Data<Gateway>) -> Result<HttpResponse, GatewayError> {
    let identity = gateway.identify(&req).await?;
    crate::origin::check(&req, &gateway.cfg.site)?;
    let handle = gateway.peek(&identity);
    if let Some(handle) = &handle {
        handle
            .addr
            .send(Stop {
                reason: StopReason::Person,
            })
            .await
            .map_err(|e| GatewayError::gone("the instance", e))?;
    }
    Ok(HttpResponse::Ok().json(handle_json(handle.as_ref())))
}

/// Server-sent events of the caller's instance state: the current state first, then every
/// change, ending once the instance is ready, has failed, or was stopped (or refused).
async fn progress(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
) -> Result<HttpResponse, GatewayError> {
    let identity = gateway.identify(&req).await?;
    let handle = gateway.open(&identity).await?;
    let stream = progress_events(handle.status.clone(), gateway.cfg.sse_keepalive);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(Held::new(stream, gateway.metrics.open_stream())))
}

struct Progress {
    status: watch::Receiver<InstanceStatus>,
    keepalive: Duration,
    first: bool,
    last: Option<(InstanceState, Option<String>)>,
    done: bool,
}

fn is_final(status: &InstanceStatus, first: bool) -> bool {
    match status.state {
        InstanceState::Ready | InstanceState::Failed => true,
        // A stopped instance at the start of the stream is waiting to be started.
        InstanceState::Stopped => !first || status.refusal.is_some(),
        _ => false,
    }
}

fn progress_event(status: &InstanceStatus) -> Bytes {
    Bytes::from(format!("data: {}\n\n", instance_json(status, None)))
}

fn progress_events(
    status: watch::Receiver<InstanceStatus>,
    keepalive: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Unpin {
    let state = Progress {
        status,
        keepalive,
        first: true,
        last: None,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if !st.first {
                match tokio::time::timeout(st.keepalive, st.status.changed()).await {
                    Err(_) => return Some((Ok(Bytes::from_static(b": keepalive\n\n")), st)),
                    Ok(Err(_)) => return None,
                    Ok(Ok(())) => {}
                }
            }
            let current = st.status.borrow_and_update().clone();
            let key = (current.state, current.message.clone());
            if !st.first && st.last.as_ref() == Some(&key) {
                continue;
            }
            st.done = is_final(&current, st.first);
            st.first = false;
            st.last = Some(key);
            return Some((Ok(progress_event(&current)), st));
        }
    }))
}

#[derive(Deserialize)]
struct LoginQuery {
    user: Option<String>,
    next: Option<String>,
}

/// Only same-site paths: never `//host` or an absolute URL (an open redirect).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(char::is_control) =>
        {
            n
        }
        _ => "/",
    }
}

async fn login(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
) -> Result<HttpResponse, GatewayError> {
    let query = web::Query::<LoginQuery>::from_query(req.query_string())
        .map_err(|e| GatewayError::BadRequest(format!("invalid query: {e}")))?
        .into_inner();
    let next = safe_next(query.next.as_deref()).to_owned();
    match gateway.auth.mode() {
        AuthMode::Dev => {}
        // The load balancer signs the browser in on its way to `next`.
        AuthMode::Alb => return Ok(see_other(&next).finish()),
        AuthMode::Jwt => {
            return Err(GatewayError::NotFound(
                "/-/login: this gateway takes bearer tokens and has no sign-in page".into(),
            ))
        }
    }
    let Some(user) = query.user.filter(|u| !u.is_empty()) else {
        return Ok(HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(pages::login(&next, None)));
    };
    if let Err(reason) = dev::validate_name(&user) {
        return Ok(HttpResponse::BadRequest()
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(pages::login(&next, Some(&reason))));
    }
    tracing::info!(user = %user, "dev sign-in");
    Ok(see_other(&next)
        .insert_header((
            header::SET_COOKIE,
            format!("{}={user}; Path=/; HttpOnly; SameSite=Lax", dev::COOKIE),
        ))
        .finish())
}

fn see_other(location: &str) -> actix_web::HttpResponseBuilder {
    let mut builder = HttpResponse::SeeOther();
    builder
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    builder
}

/// Expires the gateway's and the load balancer's session cookies, then goes to
/// `--logout-url` (the identity provider's logout, which ends its session too) or shows a
/// signed-out page. Behind an ALB, going anywhere on the gateway instead would sign the
/// browser straight back in while the identity provider's session lasts.
async fn logout(req: HttpRequest, gateway: web::Data<Gateway>) -> HttpResponse {
    let auth = &gateway.auth;
    let mut builder = match (auth.logout_url(), auth.mode()) {
        (Some(url), _) => see_other(url),
        (None, AuthMode::Dev) => see_other(dev::LOGIN_PATH),
        (None, _) => {
            let mut b = HttpResponse::Ok();
            b.content_type("text/html; charset=utf-8")
                .insert_header((header::CACHE_CONTROL, "no-store"));
            b
        }
    };
    for name in auth.logout_cookies(&req) {
        builder.append_header((
            header::SET_COOKIE,
            format!(
                "{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; \
                 Expires=Thu, 01 Jan 1970 00:00:00 GMT"
            ),
        ));
    }
    match (auth.logout_url(), auth.mode()) {
        (None, AuthMode::Alb | AuthMode::Jwt) => builder.body(pages::signed_out(auth.login_path())),
        _ => builder.finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn next_must_stay_on_this_site() {
        assert_eq!(safe_next(Some("/session/1?x=2")), "/session/1?x=2");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "evil",
            "/a\nb",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[tokio::test]
    async fn progress_reports_changes_and_ends_at_ready() {
        let (tx, rx) = watch::channel(InstanceStatus::default());
        let mut events = progress_events(rx, Duration::from_secs(60));
        let first = events.next().await.unwrap().unwrap();
        assert!(std::str::from_utf8(&first)
            .unwrap()
            .contains("\"state\":\"stopped\""));
        for state in [
            InstanceState::Queued,
            InstanceState::Starting,
            InstanceState::Ready,
        ] {
            tx.send_replace(InstanceStatus {
                state,
                ..Default::default()
            });
            let event = events.next().await.unwrap().unwrap();
            let text = std::str::from_utf8(&event).unwrap();
            assert!(text.starts_with("data: {"), "{text}");
            assert!(text.contains(&format!("\"state\":\"{state}\"")), "{text}");
        }
        assert!(events.next().await.is_none());
    }

    #[tokio::test]
    async fn progress_ends_at_a_capacity_refusal() {
        let (tx, rx) = watch::channel(InstanceStatus {
            state: InstanceState::Queued,
            ..Default::default()
        });
        let mut events = progress_events(rx, Duration::from_secs(60));
        events.next().await.unwrap().unwrap();
        tx.send_replace(InstanceStatus {
            state: InstanceState::Stopped,
            refusal: Some(Refusal::Capacity {
                retry_after: Duration::from_secs(9),
            }),
            ..Default::default()
        });
        let event = events.next().await.unwrap().unwrap();
        assert!(std::str::from_utf8(&event)
            .unwrap()
            .contains("\"retryAfter\":9"));
        assert!(events.next().await.is_none());
    }
}
