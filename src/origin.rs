//! Cross-site request refusal: state-changing API calls and websocket upgrades must come from
//! the gateway's own pages (or an origin the operator allowed). Without this, any web page a
//! signed-in user visits could open their terminal or stop their instance with their cookie.

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::errors::GatewayError;

/// Accepts requests without `Origin` (non-browser clients), from the request's own host, and
/// from `allowed` origins (exact, e.g. `https://ide.example.com`).
pub fn check(req: &HttpRequest, allowed: &[String]) -> Result<(), GatewayError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    let host = origin.split_once("://").map_or("", |(_, rest)| rest);
    if !host.is_empty() && host.eq_ignore_ascii_case(req.connection_info().host()) {
        return Ok(());
    }
    Err(GatewayError::Forbidden(format!(
        "cross-origin request from {origin:?} refused"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn req(origin: Option<&str>) -> HttpRequest {
        let mut r = TestRequest::get().insert_header(("host", "gw.example:8080"));
        if let Some(o) = origin {
            r = r.insert_header(("origin", o));
        }
        r.to_http_request()
    }

    #[test]
    fn same_host_and_absent_origin_pass() {
        assert!(check(&req(None), &[]).is_ok());
        assert!(check(&req(Some("http://gw.example:8080")), &[]).is_ok());
        assert!(check(&req(Some("https://GW.example:8080")), &[]).is_ok());
    }

    #[test]
    fn other_sites_are_refused_unless_allowed() {
        for bad in [
            "https://evil.example",
            "null",
            "http://gw.example",
            "http://gw.example:8080.evil",
        ] {
            assert!(check(&req(Some(bad)), &[]).is_err(), "{bad}");
        }
        let allowed = vec!["https://ide.example.com".to_owned()];
        assert!(check(&req(Some("https://ide.example.com")), &allowed).is_ok());
        assert!(check(&req(Some("https://other.example.com")), &allowed).is_err());
    }
}
