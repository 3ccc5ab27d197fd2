//! Cross-site request refusal: state-changing calls and websocket upgrades must come from
//! the gateway's own pages (or an origin the operator allowed). Without this, any web page a
//! signed-in user visits could open their terminal, stop their instance or create sessions
//! in their OpenCode with their cookie.
//!
//! Which origins are the gateway's own is `site.rs`'s answer (`--public-url`, else the
//! validated host), never the raw `Host` or a forwarded header from an untrusted peer.

use actix_web::http::header::{self, HeaderName};
use actix_web::http::Method;
use actix_web::HttpRequest;

use crate::errors::GatewayError;
use crate::site::Site;

/// A name the `http` crate does not know, made once (see `request.rs`).
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Accepts requests without `Origin` (non-browser clients) unless the browser says it is
/// cross-site (`Sec-Fetch-Site`), from the gateway's own origins and from allowed ones.
pub fn check(req: &HttpRequest, site: &Site) -> Result<(), GatewayError> {
    let fetch_site = req
        .headers()
        .get(SEC_FETCH_SITE)
        .and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|v| v.trim().eq_ignore_ascii_case("cross-site")) {
        return Err(GatewayError::Forbidden(
            "cross-site request refused (Sec-Fetch-Site: cross-site)".to_owned(),
        ));
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if site.origin_allowed(origin, req) {
        return Ok(());
    }
    Err(GatewayError::Forbidden(format!(
        "cross-origin request from {origin:?} refused"
    )))
}

/// Methods that change nothing, which a cross-site page may send (it cannot read the
/// answer without CORS, which the gateway never grants).
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarded::TrustedProxies;
    use crate::identity::AuthMode;
    use crate::site::PublicUrl;
    use actix_web::test::TestRequest;

    fn site() -> Site {
        Site::new(
            vec![PublicUrl::parse("http://gw.example:8080").unwrap()],
            "0.0.0.0:8080".parse().unwrap(),
            AuthMode::Jwt,
            vec!["https://ide.example.com".to_owned()],
            TrustedProxies::default(),
        )
    }

    fn req(headers: &[(&str, &str)]) -> HttpRequest {
        let mut r = TestRequest::post().insert_header(("host", "gw.example:8080"));
        for h in headers {
            r = r.insert_header(*h);
        }
        r.to_http_request()
    }

    #[test]
    fn same_site_and_absent_origin_pass() {
        let site = site();
        assert!(check(&req(&[]), &site).is_ok());
        assert!(check(&req(&[("origin", "http://gw.example:8080")]), &site).is_ok());
        assert!(check(&req(&[("origin", "http://GW.example:8080")]), &site).is_ok());
        assert!(check(&req(&[("sec-fetch-site", "same-origin")]), &site).is_ok());
        assert!(check(&req(&[("sec-fetch-site", "none")]), &site).is_ok());
    }

    #[test]
    fn other_sites_are_refused_unless_allowed() {
        let site = site();
        for bad in [
            "https://evil.example",
            "null",
            "http://gw.example",
            "https://gw.example:8080",
            "http://gw.example:8080.evil",
        ] {
            assert!(check(&req(&[("origin", bad)]), &site).is_err(), "{bad}");
        }
        assert!(check(&req(&[("origin", "https://ide.example.com")]), &site).is_ok());
        assert!(check(&req(&[("origin", "https://other.example.com")]), &site).is_err());
        let cross = req(&[("sec-fetch-site", "cross-site")]);
        assert!(check(&cross, &site).is_err(), "no Origin, but cross-site");
    }

    #[test]
    fn safe_methods() {
        assert!(is_safe(&Method::GET) && is_safe(&Method::HEAD) && is_safe(&Method::OPTIONS));
        assert!(!is_safe(&Method::POST) && !is_safe(&Method::PUT) && !is_safe(&Method::DELETE));
    }
}
