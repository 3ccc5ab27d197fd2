//! The admin listener: pool statistics, Prometheus metrics, stopping a user's instance and
//! the repository library's operator endpoints. Who may call it is `guard.rs`'s business
//! (operator token over TCP, kernel credentials on the Unix socket); `token.rs` is the
//! token, `socket.rs` the Unix socket.

pub mod guard;
pub mod socket;
pub mod token;

use std::sync::Arc;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use chamberlain_actors::{Registry, Stats, StopReason, StopUser};
use serde_json::json;

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use chamberlain_actors::isolation::Isolation;
use chamberlain_actors::UserKey;
pub use token::AdminToken;

pub struct Admin {
    pub registry: Addr<Registry>,
    pub metrics: Arc<Metrics>,
    pub gateway: web::Data<Gateway>,
    pub isolation: Arc<Isolation>,
    /// The operator token TCP clients must present (`None`: no TCP listener, and any TCP
    /// request is refused).
    pub token: Option<Arc<AdminToken>>,
    /// Model use through the relay, per user per UTC day.
    pub usage: Arc<crate::relay::usage::UsageBook>,
    /// `--llm-daily-tokens` (0: none).
    pub daily_tokens: u64,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/healthz",
        web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }),
    )
    .route("/stats", web::get().to(stats))
    .route("/metrics", web::get().to(metrics))
    .route("/instances/{user}/stop", web::post().to(stop))
    .configure(crate::repos::configure_admin)
    .default_service(web::to(|req: HttpRequest| async move {
        HttpResponse::NotFound()
            .json(json!({"error": format!("no such endpoint: {} {}", req.method(), req.path())}))
    }));
}

fn unavailable(e: actix::MailboxError) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({"error": format!("registry unavailable: {e}")}))
}

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
    body["auth"] = json!({
        "mode": auth.mode(),
        "cachedTokens": auth.cached_tokens(),
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
        }
    }
    HttpResponse::Ok().json(body)
}

async fn metrics(admin: web::Data<Admin>) -> HttpResponse {
    // Refreshes the per-state gauges before they are read.
    if let Err(e) = admin.registry.send(Stats).await {
        return unavailable(e);
    }
    match admin.metrics.encode() {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

async fn stop(admin: web::Data<Admin>, user: web::Path<String>) -> HttpResponse {
    let user = user.into_inner();
    let found = admin
        .registry
        .send(StopUser {
            user: user.clone(),
            reason: StopReason::Operator,
        })
        .await;
    match found {
        Ok(true) => {
            tracing::info!(user = %user, "instance stopped by an operator");
            HttpResponse::Ok().json(json!({"userId": user, "state": "stopped"}))
        }
        Ok(false) => HttpResponse::NotFound()
            .json(json!({"error": format!("no instance for user {user:?}")})),
        Err(e) => unavailable(e),
    }
}
