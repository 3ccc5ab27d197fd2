//! Every error either listener returns: a status code, one JSON body shape
//! (`{"error": ...}`, plus `login`, `state` or `retryAfter` where they help) and, where
//! waiting helps, `Retry-After`. Handlers return `Result<_, GatewayError>`; actix renders
//! the error through [`ResponseError`], and on the public listener [`pages_for_browsers`]
//! turns it into a page when a browser navigated to the address.

use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use chamberlain_actors::InstanceState;
use serde_json::json;

use crate::identity::AuthError;
use crate::pages;
use crate::request::is_navigation;

/// How long a client is told to wait while an instance is still starting (the JSON answer's
/// `retryAfter`, the header, and the starting page's own `Retry-After`).
pub const RETRY_STARTING: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No credential, or one that was refused; `reason` says which.
    #[error("{reason}")]
    Unauthenticated {
        login: Option<&'static str>,
        reason: String,
    },
    /// A credential could not be checked now (the key server is unreachable).
    #[error("cannot verify your sign-in right now: {0}")]
    AuthUnavailable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    /// The request names a host that is not the gateway's (DNS rebinding, or a missing
    /// `--public-url`).
    #[error("{0}")]
    MisdirectedHost(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A resource already exists or is at its limit (a repository's name, tokens per person).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    /// Too much of one kind at once (clones, listings); try again shortly.
    #[error("{0}")]
    Busy(String),
    /// One user holds as many requests and websockets as `--max-user-connections` allows.
    #[error("{0}")]
    TooManyConnections(String),
    /// The instance cannot serve now; waiting may help.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
        state: InstanceState,
    },
    /// A part of the gateway cannot answer now (an actor gone at shutdown, the cluster's
    /// shared documents unreachable); not about the caller's instance.
    #[error("{message}")]
    TryLater {
        message: String,
        retry_after: Duration,
    },
    /// The instance failed and will not be restarted by a request.
    #[error("{0}")]
    InstanceFailed(String),
    #[error("cannot reach OpenCode: {0}")]
    UpstreamConnect(String),
    #[error("OpenCode did not answer within {}s", .0.as_secs())]
    UpstreamTimeout(Duration),
    #[error("OpenCode request failed: {0}")]
    Upstream(String),
    /// Another server the gateway asked on the caller's behalf failed (a repository's
    /// remote).
    #[error("{0}")]
    Remote(String),
    /// OpenCode answered with an error status where the gateway cannot stream its answer
    /// (a refused websocket handshake, e.g. 404 for an unknown terminal).
    #[error("{message}")]
    UpstreamStatus { status: StatusCode, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    pub fn from_auth(err: AuthError, login: Option<&'static str>) -> Self {
        match err {
            AuthError::Missing => GatewayError::Unauthenticated {
                login,
                reason: "not signed in".to_owned(),
            },
            AuthError::Rejected(reason) => GatewayError::Unauthenticated {
                login,
                reason: format!("sign-in rejected: {reason}"),
            },
            AuthError::Malformed(reason) => GatewayError::BadRequest(reason),
            AuthError::Unavailable(reason) => GatewayError::AuthUnavailable(reason),
        }
    }

    /// `"no such endpoint: /x"`, the answer for a path nothing serves.
    pub fn no_endpoint(req: &HttpRequest) -> Self {
        GatewayError::NotFound(format!("no such endpoint: {}", req.path()))
    }

    /// A path served, but not with this method.
    pub fn method_not_allowed(req: &HttpRequest) -> Self {
        GatewayError::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.path()))
    }

    /// An actor's mailbox refused a message: it has stopped, which happens at shutdown.
    pub fn gone(what: &str, e: actix::MailboxError) -> Self {
        GatewayError::TryLater {
            message: format!("{what} unavailable: {e}"),
            retry_after: Duration::from_secs(10),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::MisdirectedHost(_) => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Conflict(_) => StatusCode::CONFLICT,
            GatewayError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::TooManyConnections(_) | GatewayError::Busy(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::Unavailable { .. }
            | GatewayError::TryLater { .. }
            | GatewayError::InstanceFailed(_)
            | GatewayError::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamConnect(_)
            | GatewayError::Upstream(_)
            | GatewayError::Remote(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::UpstreamStatus { status, .. } => *status,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::Unavailable { retry_after, .. }
            | GatewayError::TryLater { retry_after, .. } => Some(*retry_after),
            GatewayError::AuthUnavailable(_) => Some(Duration::from_secs(5)),
            GatewayError::TooManyConnections(_) | GatewayError::Busy(_) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut body = json!({ "error": self.to_string() });
        match self {
            GatewayError::Unauthenticated { login, .. } => body["login"] = json!(login),
            GatewayError::Unavailable {
                state, retry_after, ..
            } => {
                body["state"] = json!(state);
                body["retryAfter"] = json!(retry_after.as_secs().max(1));
            }
            GatewayError::InstanceFailed(_) => body["state"] = json!(InstanceState::Failed),
            GatewayError::TryLater { retry_after, .. } => {
                body["retryAfter"] = json!(retry_after.as_secs().max(1));
            }
            _ => {}
        }
        body
    }

    /// Status and headers every answer to this error carries, page or JSON.
    fn builder(&self) -> actix_web::HttpResponseBuilder {
        let mut builder = HttpResponse::build(self.status());
        builder.insert_header((header::CACHE_CONTROL, "no-store"));
        if let Some(after) = self.retry_after() {
            builder.insert_header((header::RETRY_AFTER, after.as_secs().max(1).to_string()));
        }
        if let GatewayError::Unauthenticated { .. } = self {
            // Tell API clients how to authenticate; browsers get a link to sign in.
            builder.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        builder
    }

    /// The page a browser that navigated to `req` gets for this error (`None`: JSON is the
    /// answer, e.g. for a malformed request no person made by hand).
    fn page(&self, req: &HttpRequest) -> Option<HttpResponse> {
        if !is_navigation(req) {
            return None;
        }
        let html = match self {
            GatewayError::Unauthenticated { login, reason } => {
                pages::unauthorized(*login, req.uri().path(), reason)
            }
            other => pages::error(
                other.status().as_u16(),
                other.page_title()?,
                &other.to_string(),
            ),
        };
        Some(
            self.builder()
                .content_type("text/html; charset=utf-8")
                .body(html),
        )
    }

    /// The response for `req`: a page for a browser navigation, JSON otherwise. For
    /// middleware that answers by itself; handlers return the error instead.
    pub fn respond(&self, req: &HttpRequest) -> HttpResponse {
        self.page(req).unwrap_or_else(|| self.error_response())
    }

    /// The heading of the page a browser gets for this error (`None`: JSON is the answer,
    /// e.g. for a malformed request no person made by hand).
    fn page_title(&self) -> Option<&'static str> {
        match self {
            GatewayError::Forbidden(_) | GatewayError::MisdirectedHost(_) => Some("Not allowed"),
            GatewayError::NotFound(_) => Some("Not found"),
            GatewayError::Unavailable { .. } | GatewayError::AuthUnavailable(_) => {
                Some("Not available right now")
            }
            GatewayError::InstanceFailed(_) => Some("Your OpenCode could not start"),
            GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamTimeout(_)
            | GatewayError::Upstream(_) => Some("OpenCode did not answer"),
            GatewayError::Internal(_) => Some("Something went wrong"),
            _ => None,
        }
    }
}

impl ResponseError for GatewayError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        self.builder().json(self.to_json())
    }
}

/// Middleware of the public listener: a `GatewayError` a handler returned becomes a page
/// when a browser navigated to the address; every other answer passes untouched.
pub async fn pages_for_browsers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let res = next.call(req).await?;
    let page = res
        .response()
        .error()
        .and_then(|e| e.as_error::<GatewayError>())
        .and_then(|e| e.page(res.request()));
    Ok(match page {
        Some(page) => res.into_response(page).map_into_right_body(),
        None => res.map_into_left_body(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn unavailable_carries_retry_after_and_state() {
        let err = GatewayError::Unavailable {
            message: "full".into(),
            retry_after: Duration::from_secs(7),
            state: InstanceState::Stopped,
        };
        let resp = err.respond(&TestRequest::default().to_http_request());
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "7");
        let body = err.to_json();
        assert_eq!(body["state"], "stopped");
        assert_eq!(body["retryAfter"], 7);
        assert_eq!(body["error"], "full");
    }

    fn content_type(resp: &HttpResponse) -> &str {
        resp.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[test]
    fn browsers_get_pages_and_scripts_get_json() {
        let err = GatewayError::Unavailable {
            message: "the gateway is shutting down".into(),
            retry_after: Duration::from_secs(10),
            state: InstanceState::Stopped,
        };
        let nav = TestRequest::get()
            .insert_header(("accept", "text/html"))
            .to_http_request();
        let page = err.respond(&nav);
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(content_type(&page).starts_with("text/html"));
        assert!(page.headers().get(header::RETRY_AFTER).is_some());
        let api = err.respond(&TestRequest::get().to_http_request());
        assert_eq!(content_type(&api), "application/json");
    }

    #[test]
    fn unauthenticated_navigation_gets_a_page() {
        let err = GatewayError::Unauthenticated {
            login: Some("/-/login"),
            reason: "sign-in rejected: token expired 5 s ago".into(),
        };
        let nav = TestRequest::get()
            .insert_header(("accept", "text/html"))
            .to_http_request();
        let resp = err.respond(&nav);
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(content_type(&resp).starts_with("text/html"));
        let api = err.respond(&TestRequest::get().to_http_request());
        assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            err.to_json()["error"],
            "sign-in rejected: token expired 5 s ago"
        );
    }
}
