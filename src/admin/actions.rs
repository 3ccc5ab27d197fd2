//! What an administrator can do, the same on both surfaces: the operator's admin listener
//! (token or kernel credentials, `guard.rs`) and `/-/api/admin` on the public listener
//! (a signed-in administrator, `console.rs`). Every action that changes something writes
//! one audit line (target `audit`) naming who did it.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use chamberlain_actors::isolation::IsolationInfo;
use chamberlain_actors::{
    InstanceHandle, PoolStats, Stats, Stop, StopReason, UserKey, UserStats, Wake,
};
use serde::Serialize;
use serde_json::json;

use super::Admin;
use crate::errors::GatewayError;
use crate::identity::AuthMode;
use crate::relay::usage::Use;

/// Who is calling, for the audit log: set by the surface's guard.
#[derive(Clone, Debug)]
pub struct Caller(pub String);

/// The caller `req` carries (`operator` when a guard did not say).
pub fn caller(req: &HttpRequest) -> String {
    req.extensions()
        .get::<Caller>()
        .map(|c| c.0.clone())
        .unwrap_or_else(|| "operator".to_owned())
}

/// One line per administrative action.
pub fn audit(req: &HttpRequest, action: &str, target: &str, outcome: &str) {
    // A target comes from a request path and may hold anything: control characters are
    // escaped so no one can forge a line.
    tracing::info!(
        target: "audit",
        by = %caller(req).escape_debug(),
        action,
        target_name = %target.escape_debug(),
        outcome = %outcome.escape_debug(),
        "admin action"
    );
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/stats", web::get().to(stats))
        .route("/instances/{user}/stop", web::post().to(stop))
        .route("/instances/{user}/restart", web::post().to(restart))
        .route("/tokens", web::get().to(tokens))
        .route("/tokens/{id}", web::delete().to(revoke_token))
        .configure(super::repos::configure);
}

/// The registry's mailbox refused a message: it has stopped (the gateway is shutting down).
pub fn registry_gone(e: actix::MailboxError) -> GatewayError {
    GatewayError::gone("the registry", e)
}

/// What `/stats` shows: the registry's pool, each user with what the gateway knows of them
/// besides, and the gateway's own settings.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatsView<'a> {
    #[serde(flatten)]
    pool: PoolStats,
    users: Vec<UserView>,
    version: &'static str,
    opencode_version: Option<&'a str>,
    auth: AuthView,
    isolation: IsolationInfo,
    llm_daily_tokens: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthView {
    mode: AuthMode,
    cached_tokens: usize,
    sign_in: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserView {
    #[serde(flatten)]
    stats: UserStats,
    uid: Option<u32>,
    /// Model use today (UTC).
    llm: Use,
    started_at_time: Option<String>,
    last_activity_time: String,
}

/// `/stats`: the pool, each user, and the gateway's own settings.
async fn stats(admin: web::Data<Admin>) -> Result<HttpResponse, GatewayError> {
    let mut pool = admin
        .gateway
        .registry
        .send(Stats)
        .await
        .map_err(registry_gone)?;
    let today = admin.usage.everyone_today();
    let users = std::mem::take(&mut pool.users)
        .into_iter()
        .map(|stats| UserView {
            uid: admin
                .isolation
                .existing_uid(&UserKey::derive(&stats.user_id)),
            llm: today.get(&stats.user_id).copied().unwrap_or_default(),
            started_at_time: stats.started_at.map(crate::time::rfc3339_ms),
            last_activity_time: crate::time::rfc3339_ms(stats.last_activity),
            stats,
        })
        .collect();
    let auth = &admin.gateway.auth;
    Ok(HttpResponse::Ok().json(StatsView {
        pool,
        users,
        version: env!("CARGO_PKG_VERSION"),
        opencode_version: admin.opencode_version.as_deref(),
        auth: AuthView {
            mode: auth.mode(),
            cached_tokens: auth.cached_tokens(),
            sign_in: auth.policy().summary(),
        },
        isolation: admin.isolation.info(),
        llm_daily_tokens: admin.daily_tokens,
    }))
}

/// The instance of `user`, or a 404 the audit log records.
fn instance_of(
    req: &HttpRequest,
    admin: &Admin,
    action: &str,
    user: &str,
) -> Result<InstanceHandle, GatewayError> {
    admin
        .gateway
        .routes
        .get(user)
        .map(|h| h.clone())
        .ok_or_else(|| {
            audit(req, action, user, "no such instance");
            GatewayError::NotFound(format!("no instance for user {user:?}"))
        })
}

async fn stop(
    req: HttpRequest,
    admin: web::Data<Admin>,
    user: web::Path<String>,
) -> Result<HttpResponse, GatewayError> {
    let user = user.into_inner();
    let handle = instance_of(&req, &admin, "stop", &user)?;
    let stop = Stop {
        reason: StopReason::Operator,
    };
    handle.addr.send(stop).await.map_err(registry_gone)?;
    audit(&req, "stop", &user, "stopped");
    let state = handle.status.borrow().state;
    Ok(HttpResponse::Ok().json(json!({"userId": user, "state": state})))
}

/// Stops the instance (waiting until it is at rest), then starts it again.
async fn restart(
    req: HttpRequest,
    admin: web::Data<Admin>,
    user: web::Path<String>,
) -> Result<HttpResponse, GatewayError> {
    let user = user.into_inner();
    let handle = instance_of(&req, &admin, "restart", &user)?;
    let stop = Stop {
        reason: StopReason::Operator,
    };
    handle.addr.send(stop).await.map_err(registry_gone)?;
    let wake = Wake { explicit: true };
    handle.addr.send(wake).await.map_err(registry_gone)?;
    audit(&req, "restart", &user, "starting");
    let state = handle.status.borrow().state;
    Ok(HttpResponse::Accepted().json(json!({"userId": user, "state": state})))
}

/// Everyone's personal access tokens (never their secrets).
async fn tokens(admin: web::Data<Admin>) -> HttpResponse {
    HttpResponse::Ok().json(admin.gateway.auth.tokens().list(None))
}

async fn revoke_token(
    req: HttpRequest,
    admin: web::Data<Admin>,
    id: web::Path<String>,
) -> Result<HttpResponse, GatewayError> {
    let id = id.into_inner();
    let tokens = admin.gateway.auth.tokens().clone();
    let info = web::block(move || tokens.revoke(&id, None))
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))??;
    audit(
        &req,
        "revoke token",
        &format!("{} of {}", info.id, info.user_id),
        "revoked",
    );
    Ok(HttpResponse::Ok().json(json!({"id": info.id, "userId": info.user_id, "revoked": true})))
}
