//! Which headers cross to an instance and back, for proxied requests and websocket
//! handshakes alike.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::HttpRequest;

use crate::forwarded::{TrustedProxies, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::gateway::Gateway;
use crate::identity::cookies::{self, CookieNames};

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the framing headers the gateway sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    // Met by the gateway itself (actix-http answers `100 Continue` before the handler
    // runs), as nginx does; passed on, awc refuses a bodiless request that carries it and
    // holds a body back until OpenCode answers one.
    "expect",
    // Never read, and never passed on as the client wrote it: OpenCode gets
    // `X-Forwarded-*` from `add_forwarded` only.
    "forwarded",
];

/// Headers named in `Connection` are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn is_hop_by_hop(name: &HeaderName, listed: &[String]) -> bool {
    let name = name.as_str();
    HOP_BY_HOP.contains(&name) || listed.iter().any(|l| l == name)
}

/// What to drop from a client request besides hop-by-hop headers.
pub struct RequestFilter<'a> {
    /// Headers that carry identity to the gateway.
    pub identity_headers: &'a [&'a str],
    /// Cookies that belong to the gateway.
    pub identity_cookies: &'a CookieNames,
    /// Event streams: no compression, so events are never held back in an encoder.
    pub passive: bool,
    /// Whose `X-Forwarded-*` headers are extended rather than replaced.
    pub proxies: &'a TrustedProxies,
}

impl<'a> RequestFilter<'a> {
    /// The filter for requests to `gateway`'s instances.
    pub fn new(gateway: &'a Gateway, passive: bool) -> Self {
        RequestFilter {
            identity_headers: gateway.auth.identity_headers(),
            identity_cookies: gateway.auth.identity_cookies(),
            passive,
            proxies: gateway.cfg.site.proxies(),
        }
    }
}

/// Everything OpenCode gets as headers of a client's request: the client's own (filtered),
/// `X-Forwarded-*`, and the instance's credentials in place of the client's.
pub fn for_upstream(
    req: &HttpRequest,
    dst: &mut HeaderMap,
    filter: &RequestFilter<'_>,
    authorization: &str,
) {
    copy_request_headers(req.headers(), dst, filter);
    add_forwarded(req, dst, filter.proxies);
    if let Ok(auth) = HeaderValue::from_str(authorization) {
        dst.insert(header::AUTHORIZATION, auth);
    }
}

/// Copies the client's request headers for OpenCode. The client's `Authorization` is never
/// forwarded: the gateway adds the instance's own credentials.
pub fn copy_request_headers(src: &HeaderMap, dst: &mut HeaderMap, filter: &RequestFilter<'_>) {
    let listed = connection_listed(src);
    for (name, value) in src.iter() {
        if is_hop_by_hop(name, &listed)
            || name == header::AUTHORIZATION
            || filter.identity_headers.contains(&name.as_str())
            || (filter.passive && name == header::ACCEPT_ENCODING)
        {
            continue;
        }
        if name == header::COOKIE {
            let kept = value
                .to_str()
                .ok()
                .and_then(|v| cookies::without(v, filter.identity_cookies))
                .and_then(|v| HeaderValue::from_str(&v).ok());
            if let Some(kept) = kept {
                dst.append(name.clone(), kept);
            }
            continue;
        }
        dst.append(name.clone(), value.clone());
    }
}

/// Copies OpenCode's response headers for the client, every value of repeated headers
/// (`Set-Cookie`) included.
pub fn copy_response_headers(src: &HeaderMap, dst: &mut HeaderMap) {
    dst.reserve(src.len());
    let listed = connection_listed(src);
    for (name, value) in src.iter() {
        // OpenCode's Basic challenge is about the gateway's own credentials; passed on, it
        // would have browsers ask for (and then resend) a password for the gateway.
        if !is_hop_by_hop(name, &listed) && name != header::WWW_AUTHENTICATE {
            dst.append(name.clone(), value.clone());
        }
    }
}

/// `X-Forwarded-For`, `-Proto` and `-Host` for OpenCode, extending what a trusted proxy in
/// front of the gateway set, and replacing what anyone else wrote. Runs for every proxied
/// request: each value is made with one copy at most.
pub fn add_forwarded(req: &HttpRequest, dst: &mut HeaderMap, proxies: &TrustedProxies) {
    let parts = proxies.parts(req);
    let pairs = [
        (X_FORWARDED_FOR, parts.forwarded_for()),
        (X_FORWARDED_PROTO, scheme_value(parts.scheme)),
        (
            X_FORWARDED_HOST,
            parts.host.and_then(|h| HeaderValue::from_str(h).ok()),
        ),
    ];
    for (name, value) in pairs {
        match value {
            Some(value) => {
                dst.insert(name, value);
            }
            None => {
                dst.remove(name);
            }
        }
    }
}

/// `http` and `https` (the only schemes a proxy in front sends) without a copy.
fn scheme_value(scheme: &str) -> Option<HeaderValue> {
    for known in ["http", "https"] {
        if scheme.eq_ignore_ascii_case(known) {
            return Some(HeaderValue::from_static(known));
        }
    }
    HeaderValue::from_str(&scheme.to_ascii_lowercase()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn dev_cookies() -> CookieNames {
        CookieNames {
            exact: vec!["chamberlain_dev_user".into()],
            prefixes: Vec::new(),
        }
    }

    static NO_PROXIES: TrustedProxies = TrustedProxies::none();

    fn filter(cookies: &CookieNames, passive: bool) -> RequestFilter<'_> {
        RequestFilter {
            identity_headers: &["x-chamberlain-dev-user"],
            identity_cookies: cookies,
            passive,
            proxies: &NO_PROXIES,
        }
    }

    #[test]
    fn request_drops_hop_by_hop_identity_and_authorization() {
        let src = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("expect", "100-continue"),
            ("host", "gateway"),
            ("content-length", "3"),
            ("authorization", "Bearer user-token"),
            ("x-chamberlain-dev-user", "alice"),
            ("cookie", "chamberlain_dev_user=alice; theme=dark"),
            ("accept-encoding", "gzip"),
            ("x-custom", "a"),
            ("x-custom", "b"),
        ]);
        let mut dst = HeaderMap::new();
        copy_request_headers(&src, &mut dst, &filter(&dev_cookies(), false));
        let names: Vec<&str> = dst.keys().map(|k| k.as_str()).collect();
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "expect",
            "host",
            "content-length",
            "authorization",
            "x-chamberlain-dev-user",
        ] {
            assert!(!names.contains(&gone), "{gone} forwarded");
        }
        assert_eq!(dst.get("cookie").unwrap(), "theme=dark");
        assert_eq!(dst.get("accept-encoding").unwrap(), "gzip");
        assert_eq!(dst.get_all("x-custom").count(), 2);
    }

    #[test]
    fn passive_requests_ask_for_no_compression_and_lone_gateway_cookie_vanishes() {
        let src = map(&[
            ("accept-encoding", "gzip, br"),
            ("cookie", "chamberlain_dev_user=alice"),
        ]);
        let mut dst = HeaderMap::new();
        copy_request_headers(&src, &mut dst, &filter(&dev_cookies(), true));
        assert!(dst.is_empty());
    }

    #[test]
    fn response_keeps_every_set_cookie_and_drops_framing() {
        let src = map(&[
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("location", "/elsewhere"),
        ]);
        let mut dst = HeaderMap::new();
        copy_response_headers(&src, &mut dst);
        assert_eq!(dst.get_all("set-cookie").count(), 2);
        assert!(dst.get("transfer-encoding").is_none());
        assert!(dst.get("content-length").is_none());
        assert_eq!(dst.get("content-encoding").unwrap(), "gzip");
        assert_eq!(dst.get("location").unwrap(), "/elsewhere");
    }

    #[test]
    fn forwarded_headers_extend_a_trusted_chain_only() {
        let req = TestRequest::get()
            .peer_addr("10.1.2.3:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "203.0.113.9"))
            .insert_header(("x-forwarded-host", "gw.example"))
            .insert_header(("host", "10.0.0.9:8080"))
            .to_http_request();
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let mut dst = HeaderMap::new();
        add_forwarded(&req, &mut dst, &trusted);
        assert_eq!(dst.get("x-forwarded-for").unwrap(), "203.0.113.9, 10.1.2.3");
        assert_eq!(dst.get("x-forwarded-host").unwrap(), "gw.example");
        assert_eq!(dst.get("x-forwarded-proto").unwrap(), "http");

        let mut dst = HeaderMap::new();
        dst.insert(
            HeaderName::from_static("x-forwarded-host"),
            HeaderValue::from_static("copied"),
        );
        add_forwarded(&req, &mut dst, &TrustedProxies::default());
        assert_eq!(dst.get("x-forwarded-for").unwrap(), "10.1.2.3");
        assert_eq!(dst.get("x-forwarded-host").unwrap(), "10.0.0.9:8080");
    }

    #[test]
    fn schemes_are_written_as_text_would_be() {
        assert_eq!(scheme_value("HTTPS").unwrap(), "https");
        assert_eq!(scheme_value("http").unwrap(), "http");
        assert_eq!(scheme_value("Wss").unwrap(), "wss");
        assert!(scheme_value("bad\nvalue").is_none());
        assert!(scheme_value("bad\u{7f}").is_none());
    }
}
