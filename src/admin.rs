//! The admin listener: pool statistics, Prometheus metrics and stopping a user's instance.
//! It has no authentication of its own; bind it to loopback or a private interface.

use std::sync::Arc;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use chamberlain_actors::{Registry, Stats, StopReason, StopUser};
use serde_json::json;

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use chamberlain_actors::isolation::Isolation;
use chamberlain_actors::UserKey;

pub struct Admin {
    pub registry: Addr<Registry>,
    pub metrics: Arc<Metrics>,
    pub gateway: web::Data<Gateway>,
    pub isolation: Arc<Isolation>,
}

/// Refuses admin requests from users' processes: with a uid per user, the client socket's
/// owner tells them apart from the operator's (the admin API has no authentication of its
/// own and listens on loopback by default, where users' terminals can reach it).
pub fn refuse_users<S, B>(req: actix_web::dev::ServiceRequest, srv: &S) -> crate::limits::Answer<B>
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    S::Future: 'static,
    B: 'static,
{
    let from_user = req
        .app_data::<web::Data<Admin>>()
        .and_then(|admin| {
            let (first, last) = admin.isolation.uid_range()?;
            let owner = crate::peer::socket_owner(req.peer_addr()?)?;
            Some((first..=last).contains(&owner).then_some(owner))
        })
        .flatten();
    if let Some(uid) = from_user {
        tracing::warn!(
            uid,
            path = req.path(),
            "admin request from a user's process refused"
        );
        let resp = HttpResponse::Forbidden()
            .json(json!({"error": "the admin API does not serve users' processes"}));
        return Box::pin(std::future::ready(Ok(req
            .into_response(resp)
            .map_into_right_body())));
    }
    let call = srv.call(req);
    Box::pin(async move { Ok(call.await?.map_into_left_body()) })
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
    if let Some(users) = body["users"].as_array_mut() {
        for user in users {
            let uid = user["userId"]
                .as_str()
                .and_then(|id| admin.isolation.existing_uid(&UserKey::derive(id)));
            user["uid"] = json!(uid);
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
