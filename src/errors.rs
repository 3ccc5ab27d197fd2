//! Every error the public listener returns: a status code, a JSON body `{"error": ...}` and,
//! where waiting helps, `Retry-After`. Browser navigations get a page instead of JSON.

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use chamberlain_actors::InstanceState;
use serde_json::json;

use crate::identity::AuthError;
use crate::pages;

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
    #[error("no such endpoint: {0}")]
    NotFound(String),
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
    /// The instance failed and will not be restarted by a request.
    #[error("{0}")]
    InstanceFailed(String),
    #[error("cannot reach OpenCode: {0}")]
    UpstreamConnect(String),
    #[error("OpenCode did not answer within {}s", .0.as_secs())]
    UpstreamTimeout(Duration),
    #[error("OpenCode request failed: {0}")]
    Upstream(String),
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

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::MisdirectedHost(_) => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Unavailable { .. }
            | GatewayError::InstanceFailed(_)
            | GatewayError::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamConnect(_) | GatewayError::Upstream(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::UpstreamStatus { status, .. } => *status,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::Unavailable { retry_after, .. } => Some(*retry_after),
            GatewayError::AuthUnavailable(_) => Some(Duration::from_secs(5)),
            GatewayError::TooManyConnections(_) => Some(Duration::from_secs(1)),
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
            _ => {}
        }
        body
    }

    /// The response for `req`: a page for a browser navigation that is not signed in, JSON
    /// otherwise.
    pub fn respond(&self, req: &HttpRequest) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status());
        builder.insert_header((header::CACHE_CONTROL, "no-store"));
        if let Some(after) = self.retry_after() {
            builder.insert_header((header::RETRY_AFTER, after.as_secs().max(1).to_string()));
        }
        if let GatewayError::Unauthenticated { login, reason } = self {
            // Tell API clients how to authenticate; browsers get a link to sign in.
            builder.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            if is_navigation(req) {
                return builder
                    .content_type("text/html; charset=utf-8")
                    .body(pages::unauthorized(*login, req.uri().path(), reason));
            }
        }
        if is_navigation(req) {
            if let Some(title) = self.page_title() {
                return builder
                    .content_type("text/html; charset=utf-8")
                    .body(pages::error(
                        self.status().as_u16(),
                        title,
                        &self.to_string(),
                    ));
            }
        }
        builder.json(self.to_json())
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

/// A browser loading a page (as opposed to a script fetching data).
pub fn is_navigation(req: &HttpRequest) -> bool {
    if !matches!(
        *req.method(),
        actix_web::http::Method::GET | actix_web::http::Method::HEAD
    ) {
        return false;
    }
    let headers = req.headers();
    if let Some(mode) = headers.get("sec-fetch-mode") {
        return mode.as_bytes() == b"navigate";
    }
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
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
    fn navigations_are_recognised() {
        let nav = TestRequest::get()
            .insert_header(("accept", "text/html,application/xhtml+xml"))
            .to_http_request();
        assert!(is_navigation(&nav));
        let fetch = TestRequest::get()
            .insert_header(("accept", "text/html"))
            .insert_header(("sec-fetch-mode", "cors"))
            .to_http_request();
        assert!(!is_navigation(&fetch));
        let post = TestRequest::post()
            .insert_header(("accept", "text/html"))
            .to_http_request();
        assert!(!is_navigation(&post));
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
