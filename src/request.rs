//! What kind of request this is, the question every phase of the public listener asks: a
//! browser loading a page, a client asking for an event stream, a websocket handshake.

use actix_web::http::header::{self, HeaderName};
use actix_web::http::Method;
use actix_web::HttpRequest;

/// Looked up by a `HeaderName` made once: a name given as text is parsed, and a name the
/// `http` crate does not know is copied to the heap, on every lookup.
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");

/// A browser loading a page (as opposed to a script fetching data).
pub fn is_navigation(req: &HttpRequest) -> bool {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return false;
    }
    let headers = req.headers();
    if let Some(mode) = headers.get(SEC_FETCH_MODE) {
        return mode.as_bytes() == b"navigate";
    }
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// A websocket handshake.
pub fn is_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A request for a server-push event stream: passive (see `gateway::Access`).
pub fn wants_event_stream(req: &HttpRequest) -> bool {
    let accepts_events = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    accepts_events || is_event_path(req.path())
}

/// OpenCode's event stream endpoints.
fn is_event_path(path: &str) -> bool {
    matches!(path, "/event" | "/global/event" | "/api/event")
        || (path.starts_with("/api/session/") && path.ends_with("/event"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

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
    fn classifies_event_streams_and_upgrades() {
        let sse = TestRequest::get()
            .uri("/whatever")
            .insert_header(("accept", "text/event-stream"))
            .to_http_request();
        assert!(wants_event_stream(&sse));
        for path in [
            "/event",
            "/global/event",
            "/api/event",
            "/api/session/ses_1/event",
        ] {
            let req = TestRequest::get().uri(path).to_http_request();
            assert!(wants_event_stream(&req), "{path}");
        }
        for path in [
            "/session",
            "/events",
            "/api/session/x/message",
            "/eventually",
        ] {
            let req = TestRequest::get().uri(path).to_http_request();
            assert!(!wants_event_stream(&req), "{path}");
        }
        let ws = TestRequest::get()
            .insert_header(("upgrade", "WebSocket"))
            .to_http_request();
        assert!(is_upgrade(&ws));
    }
}
