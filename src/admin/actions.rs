//! What an administrator can do, the same on both surfaces: the operator's admin listener
//! (token or kernel credentials, `guard.rs`) and `/-/api/admin` on the public listener
//! (a signed-in administrator, `console.rs`). Every action that changes something writes
//! one audit line (target `audit`) naming who did it.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use chamberlain_actors::{Stats, Stop, StopReason, UserKey, Wake};
use serde_json::{json, Value};

use super::Admin;

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
        .configure(crate::repos::configure_admin);
}

fn unavailable(e: actix::MailboxError) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({"error": format!("registry unavailable: {e}")}))
}

/// `/stats`: the pool, each user, and the gateway's own settings.
async fn stats(admin: web::Data<Admin>) -> HttpResponse {
    let stats = match admin.registry.send(Stats).await {
        Ok(stats) => stats,
        Err(e) => return unavailable(e),
    };
    let mut body = match serde_json::to_value(stats) {
        Ok(v) => v,
        Err(e) => return HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    };
    let auth = &admin.gateway.auth;
    body["version"] = json!(env!("CARGO_PKG_VERSION"));
    body["opencodeVersion"] = json!(admin.opencode_version);
    body["auth"] = json!({
        "mode": auth.mode(),
        "cachedTokens": auth.cached_tokens(),
        "signIn": auth.policy().summary(),
    });
    body["isolation"] = json!(admin.isolation.info());
    body["llmDailyTokens"] = json!(admin.daily_tokens);
    let today = admin.usage.everyone_today();
    if let Some(users) = body["users"].as_array_mut() {
        for user in users {
            let id = user["userId"].as_str().unwrap_or_default().to_owned();
            let uid = admin.isolation.existing_uid(&UserKey::derive(&id));
            user["uid"] = json!(uid);
            user["llm"] = json!(today.get(&id).copied().unwrap_or_default());
            with_time(user, "startedAt");
            with_time(user, "lastActivity");
        }
    }
    HttpResponse::Ok().json(body)
}

/// Beside an epoch-milliseconds field `name`, the same time as RFC 3339 (`nameTime`).
fn with_time(object: &mut Value, name: &str) {
    let time = object[name].as_u64().map(crate::time::rfc3339_ms);
    object[format!("{name}Time")] = json!(time);
}

async fn stop(req: HttpRequest, admin: web::Data<Admin>, user: web::Path<String>) -> HttpResponse {
    let user = user.into_inner();
    let Some(handle) = admin.gateway.routes.get(&user).map(|h| h.clone()) else {
        audit(&req, "stop", &user, "no such instance");
        return HttpResponse::NotFound()
            .json(json!({"error": format!("no instance for user {user:?}")}));
    };
    if let Err(e) = handle
        .addr
        .send(Stop {
            reason: StopReason::Operator,
        })
        .await
    {
        return unavailable(e);
    }
    audit(&req, "stop", &user, "stopped");
    let state = handle.status.borrow().state;
    HttpResponse::Ok().json(json!({"userId": user, "state": state}))
}

/// Stops the instance (waiting until it is at rest), then starts it again.
async fn restart(
    req: HttpRequest,
    admin: web::Data<Admin>,
    user: web::Path<String>,
) -> HttpResponse {
    let user = user.into_inner();
    let Some(handle) = admin.gateway.routes.get(&user).map(|h| h.clone()) else {
        audit(&req, "restart", &user, "no such instance");
        return HttpResponse::NotFound()
            .json(json!({"error": format!("no instance for user {user:?}")}));
    };
    if let Err(e) = handle
        .addr
        .send(Stop {
            reason: StopReason::Operator,
        })
        .await
    {
        return unavailable(e);
    }
    if let Err(e) = handle.addr.send(Wake { explicit: true }).await {
        return unavailable(e);
    }
    audit(&req, "restart", &user, "starting");
    let state = handle.status.borrow().state;
    HttpResponse::Accepted().json(json!({"userId": user, "state": state}))
}

/// Everyone's personal access tokens (never their secrets).
async fn tokens(admin: web::Data<Admin>) -> HttpResponse {
    HttpResponse::Ok().json(admin.gateway.auth.tokens().list(None))
}

async fn revoke_token(
    req: HttpRequest,
    admin: web::Data<Admin>,
    id: web::Path<String>,
) -> HttpResponse {
    let id = id.into_inner();
    let tokens = admin.gateway.auth.tokens().clone();
    let revoked = web::block(move || tokens.revoke(&id, None)).await;
    match revoked {
        Ok(Ok(info)) => {
            audit(
                &req,
                "revoke token",
                &format!("{} of {}", info.id, info.user_id),
                "revoked",
            );
            HttpResponse::Ok().json(json!({"id": info.id, "userId": info.user_id, "revoked": true}))
        }
        Ok(Err(e)) => crate::tokens::error_response(&e),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}
