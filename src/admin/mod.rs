//! The admin listener: what it serves (`/`), Prometheus metrics, the console page and the
//! administrative actions (`actions.rs`, shared with `/-/api/admin`). Who may call it is `guard.rs`'s business
//! (operator token over TCP, kernel credentials on the Unix socket); `token.rs` is the
//! token, `socket.rs` the Unix socket.

pub mod actions;
pub mod console;
pub mod guard;
pub mod repos;
pub mod socket;
pub mod token;

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use chamberlain_actors::Stats;
use serde_json::json;

use crate::errors::GatewayError;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use chamberlain_actors::isolation::Isolation;
pub use token::AdminToken;

pub struct Admin {
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
    /// The version of the OpenCode package the gateway runs, when it can be told.
    pub opencode_version: Option<String>,
}

/// The admin listener's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/healthz",
        web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }),
    )
    .route("/", web::get().to(index))
    .route("/metrics", web::get().to(metrics))
    .configure(console::configure_operator)
    .configure(actions::configure)
    .default_service(web::to(|req: HttpRequest| async move {
        Err::<HttpResponse, _>(GatewayError::NotFound(format!(
            "no such endpoint: {} {}",
            req.method(),
            req.path()
        )))
    }));
}

/// What the admin listener serves, for an operator who asks it.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET /healthz", "liveness (no token needed)"),
    (
        "GET /console",
        "the admin console, a page (no token needed to load it)",
    ),
    ("GET /stats", "instances, users, isolation, model use today"),
    ("GET /metrics", "Prometheus metrics (OpenMetrics text)"),
    ("POST /instances/{user}/stop", "stop a user's OpenCode"),
    (
        "POST /instances/{user}/restart",
        "stop, then start a user's OpenCode",
    ),
    (
        "GET /tokens",
        "everyone's personal access tokens (never the secrets)",
    ),
    ("DELETE /tokens/{id}", "revoke a personal access token"),
    ("GET /repos", "the shared repository library"),
    (
        "POST /repos",
        "add a shared repository: {\"name\", \"url\", \"description\"?}",
    ),
    (
        "POST /repos/{name}/refresh",
        "fetch a shared repository's upstream",
    ),
    ("DELETE /repos/{name}", "remove a shared repository"),
];

async fn index() -> HttpResponse {
    let endpoints: serde_json::Map<String, serde_json::Value> = ENDPOINTS
        .iter()
        .map(|(route, what)| ((*route).to_owned(), json!(what)))
        .collect();
    HttpResponse::Ok().json(json!({
        "service": "chamberlain admin",
        "version": env!("CARGO_PKG_VERSION"),
        "endpoints": endpoints,
    }))
}

async fn metrics(admin: web::Data<Admin>) -> Result<HttpResponse, GatewayError> {
    // Refreshes the per-state gauges before they are read.
    admin
        .gateway
        .registry
        .send(Stats)
        .await
        .map_err(actions::registry_gone)?;
    let text = admin
        .metrics
        .encode()
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text))
}
