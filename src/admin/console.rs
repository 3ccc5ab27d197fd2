//! The admin console: one page (`static/admin.html`), served to operators on the admin
//! listener at `/console` (the page asks for the operator token and sends it with each
//! call) and to signed-in administrators on the public listener at `/-/admin`, where its
//! calls go to `/-/api/admin/…` through [`require_admin`]. The page holds no data; every
//! figure comes from the same actions (`actions.rs`) on either surface.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};

use super::actions::{self, Caller};
use crate::errors::GatewayError;
use crate::gateway::Gateway;
use crate::pages;

/// The page and its assets on the admin listener (no token needed to load them).
pub fn configure_operator(cfg: &mut web::ServiceConfig) {
    cfg.route("/console", web::get().to(page))
        .route("/static/admin.js", web::get().to(script))
        .route("/static/admin.css", web::get().to(style))
        .route("/static/base.css", web::get().to(base_style))
        .route("/static/portal.css", web::get().to(portal_style));
}

/// Under `/-` on the public listener.
pub fn configure_public(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin", web::get().to(public_page))
        .route("/static/admin.js", web::get().to(script))
        .route("/static/admin.css", web::get().to(style))
        .service(
            web::scope("/api/admin")
                .wrap(from_fn(require_admin))
                .configure(actions::configure)
                .default_service(web::to(|req: HttpRequest| async move {
                    Err::<HttpResponse, _>(GatewayError::no_endpoint(&req))
                })),
        );
}

/// Marks a request that came through the public console (an identity provider's
/// administrator, not the host's operator).
#[derive(Clone, Copy, Debug)]
pub struct PublicConsole;

/// Paths of the admin listener anyone who reaches it may load: the page and its assets.
pub fn is_public_asset(path: &str) -> bool {
    matches!(
        path,
        "/console"
            | "/static/admin.js"
            | "/static/admin.css"
            | "/static/base.css"
            | "/static/portal.css"
    )
}

async fn page() -> HttpResponse {
    html(pages::ADMIN)
}

/// The console for a signed-in administrator; anyone else gets a 403 page.
async fn public_page(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
) -> Result<HttpResponse, GatewayError> {
    let identity = gateway.identify(&req).await?;
    if !gateway.auth.policy().is_admin(&identity) {
        return Err(GatewayError::Forbidden(
            "The admin console is for administrators (--admin-users, --admin-groups).".into(),
        ));
    }
    Ok(html(pages::ADMIN))
}

fn html(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-frame-options", "DENY"))
        .body(body)
}

async fn script() -> HttpResponse {
    pages::asset("text/javascript; charset=utf-8", pages::ADMIN_JS)
}

async fn style() -> HttpResponse {
    pages::asset("text/css; charset=utf-8", pages::ADMIN_CSS)
}

async fn base_style() -> HttpResponse {
    pages::asset("text/css; charset=utf-8", pages::BASE_CSS)
}

async fn portal_style() -> HttpResponse {
    pages::asset("text/css; charset=utf-8", pages::PORTAL_CSS)
}

/// Lets through signed-in administrators only; a change must come from the gateway's own
/// pages (the admin's cookie is ambient). Records who they are for the audit log.
async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(gateway) = req.app_data::<web::Data<Gateway>>().cloned() else {
        let resp = GatewayError::Internal("no gateway".into()).respond(req.request());
        return Ok(req.into_response(resp).map_into_right_body());
    };
    let identity = match gateway.identify(req.request()).await {
        Ok(identity) => identity,
        Err(e) => {
            let resp = e.respond(req.request());
            return Ok(req.into_response(resp).map_into_right_body());
        }
    };
    if !gateway.auth.policy().is_admin(&identity) {
        tracing::warn!(
            target: "audit",
            by = %identity.user_id,
            path = req.path(),
            "admin API refused: not an administrator"
        );
        let resp = GatewayError::Forbidden("administrators only".into()).respond(req.request());
        return Ok(req.into_response(resp).map_into_right_body());
    }
    if !crate::origin::is_safe(req.method()) {
        if let Err(e) = crate::origin::check(req.request(), &gateway.cfg.site) {
            let resp = e.respond(req.request());
            return Ok(req.into_response(resp).map_into_right_body());
        }
    }
    let who = match &identity.email {
        Some(email) => format!("{} <{email}>", identity.user_id),
        None => identity.user_id.clone(),
    };
    req.extensions_mut().insert(Caller(who));
    req.extensions_mut().insert(PublicConsole);
    Ok(next.call(req).await?.map_into_left_body())
}
