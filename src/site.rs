//! Who the gateway is to browsers: the host names and origins it is reached at.
//!
//! - **Host**: every public request except `/-/healthz` and `/-/readyz` must name one of the
//!   gateway's own hosts, checked before identity (421 otherwise). A page on another site
//!   whose name is rebound to the gateway's address (DNS rebinding) sends its own name, so it
//!   never reaches a handler, and dev identity on loopback cannot be driven from the web.
//! - **Origin**: a browser's `Origin` is the gateway's own when it is one of `--public-url`
//!   (or, without them, names the request's already validated host), or an
//!   `--allowed-origin`. `origin.rs` refuses state changes and sockets from anything else.
//!
//! Which hosts, by configuration:
//! - `--public-url` given: the hosts of those URLs (any port).
//! - none, and the listener is loopback, or any listener with `--auth dev`: loopback names
//!   only (`localhost`, `127.0.0.1`, `[::1]`, any port).
//! - none, a non-loopback listener with a verified identity (`alb`, `jwt`): any host, with a
//!   warning at start. Their credentials are cookies bound to the real host name or bearer
//!   tokens, so a rebound name carries none; `--public-url` turns the check on.
//!
//! Forwarded headers are read through [`TrustedProxies`] only.

use std::borrow::Cow;
use std::net::SocketAddr;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::Uri;
use actix_web::HttpRequest;

use crate::errors::GatewayError;
use crate::forwarded::{TrustedProxies, View};
use crate::identity::AuthMode;
use crate::limits::{answer, pass_on, Answer};

const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// A `--public-url`: `https://gw.example.com` or `http://10.0.0.5:8080`. Only the origin
/// counts; a path is refused so nobody expects the gateway to live under one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl {
    scheme: String,
    /// Lower case; IPv6 in brackets.
    host: String,
    /// Absent when it is the scheme's default.
    port: Option<u16>,
}

impl PublicUrl {
    pub fn parse(text: &str) -> Result<PublicUrl, String> {
        let example = "(example: https://chamberlain.example.com)";
        let uri: Uri = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a URL {example}"))?;
        let scheme = uri
            .scheme_str()
            .map(str::to_ascii_lowercase)
            .filter(|s| s == "http" || s == "https")
            .ok_or_else(|| format!("{text:?} must start with http:// or https:// {example}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?} has no host {example}"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{text:?} must not contain a user name"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{text:?}: the gateway is served at the root of its host; give the origin only {example}"
            ));
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("{text:?} has no host {example}"));
        }
        let default = if scheme == "https" { 443 } else { 80 };
        let port = authority.port_u16().filter(|p| *p != default);
        Ok(PublicUrl { scheme, host, port })
    }

    /// `scheme://host[:port]`, as a browser writes it in `Origin`.
    pub fn origin(&self) -> String {
        match self.port {
            Some(port) => format!("{}://{}:{port}", self.scheme, self.host),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }
}

/// Which `Host` values the public listener serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRule {
    /// The hosts of `--public-url`.
    Listed,
    /// `localhost`, `127.0.0.1`, `[::1]`.
    Loopback,
    /// Anything (no `--public-url` on a non-loopback listener with verified identity).
    Any,
}

/// The gateway's own hosts and origins, and the proxies it believes.
pub struct Site {
    public: Vec<PublicUrl>,
    rule: HostRule,
    allowed_origins: Vec<String>,
    proxies: TrustedProxies,
}

impl Site {
    pub fn new(
        public: Vec<PublicUrl>,
        listen: SocketAddr,
        auth: AuthMode,
        allowed_origins: Vec<String>,
        proxies: TrustedProxies,
    ) -> Site {
        let rule = if !public.is_empty() {
            HostRule::Listed
        } else if listen.ip().is_loopback() || auth == AuthMode::Dev {
            HostRule::Loopback
        } else {
            HostRule::Any
        };
        Site {
            public,
            rule,
            allowed_origins,
            proxies,
        }
    }

    pub fn rule(&self) -> &HostRule {
        &self.rule
    }

    pub fn proxies(&self) -> &TrustedProxies {
        &self.proxies
    }

    /// The public origins, for the start-up log.
    pub fn origins(&self) -> Vec<String> {
        self.public.iter().map(PublicUrl::origin).collect()
    }

    /// The request as its client made it (forwarded headers from trusted proxies only).
    pub fn view(&self, req: &HttpRequest) -> View {
        self.proxies.view(req)
    }

    /// Whether `host` (a `Host` header value, port and all) is one of the gateway's own.
    pub fn host_allowed(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        match self.rule {
            HostRule::Listed => self.public.iter().any(|p| p.host == *name),
            HostRule::Loopback => LOOPBACK_NAMES.contains(&&*name),
            HostRule::Any => true,
        }
    }

    /// Refuses a request whose host is not the gateway's own.
    pub fn check_host(&self, req: &HttpRequest) -> Result<(), GatewayError> {
        match self.proxies.host(req) {
            Some(host) if self.host_allowed(host) => Ok(()),
            // Browsers always send Host; an HTTP/1.0 tool without it cannot be a rebound page.
            None if self.rule != HostRule::Listed => Ok(()),
            other => Err(GatewayError::MisdirectedHost(format!(
                "this gateway does not serve the host {:?}{}",
                other.unwrap_or(""),
                match self.rule {
                    HostRule::Listed => "; it serves its --public-url hosts only",
                    _ => "; it serves loopback names only (set --public-url to serve another)",
                }
            ))),
        }
    }

    /// Whether `origin` (an `Origin` header value) is the gateway's own or an allowed one.
    pub fn origin_allowed(&self, origin: &str, req: &HttpRequest) -> bool {
        if self
            .allowed_origins
            .iter()
            .any(|a| a.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        if !self.public.is_empty() {
            return PublicUrl::parse(origin).is_ok_and(|o| self.public.contains(&o));
        }
        // Without --public-url, the origin must name the host the request was made to,
        // which the Host check has already limited (loopback names, say).
        let named = origin.split_once("://").map_or("", |(_, rest)| rest);
        let view = self.view(req);
        !named.is_empty()
            && view
                .host
                .is_some_and(|host| named.eq_ignore_ascii_case(&host) && self.host_allowed(&host))
    }
}

/// The name part of a `Host` value, lower case (`[::1]:8080` → `[::1]`), if it is well formed.
fn host_name(host: &str) -> Option<Cow<'_, str>> {
    let host = host.trim();
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        (&host[..=end], &host[end + 1..])
    } else {
        match host.rfind(':') {
            Some(colon) => (&host[..colon], &host[colon..]),
            None => (host, ""),
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => {
            !v6.is_empty()
                && v6
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
        }
        None => {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        }
    };
    (port_ok && name_ok).then(|| match name.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Cow::Owned(name.to_ascii_lowercase()),
        false => Cow::Borrowed(name),
    })
}

/// Paths answered whatever the host: load balancers' and orchestrators' health checks
/// address the task by its IP, and these say nothing about anyone.
fn host_exempt(path: &str) -> bool {
    matches!(path, "/-/healthz" | "/-/readyz")
}

/// Middleware (for `wrap_fn`, with the site captured): 421 for a host that is not the
/// gateway's own, before identity or anything else.
pub fn check_host<S, B>(site: &Site, req: ServiceRequest, srv: &S) -> Answer<S::Future, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    if !host_exempt(req.path()) {
        if let Err(e) = site.check_host(req.request()) {
            tracing::warn!(
                path = req.path(),
                peer = req
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default(),
                host = site.view(req.request()).host.unwrap_or_default(),
                "request for a host that is not the gateway's refused (DNS rebinding?)"
            );
            let resp = e.respond(req.request());
            return answer(req, resp);
        }
    }
    pass_on(srv.call(req))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn site(public: &[&str], listen: &str, auth: AuthMode) -> Site {
        Site::new(
            public
                .iter()
                .map(|u| PublicUrl::parse(u).unwrap())
                .collect(),
            listen.parse().unwrap(),
            auth,
            vec!["https://ide.example.com".to_owned()],
            TrustedProxies::parse("10.0.0.0/8").unwrap(),
        )
    }

    fn req(peer: &str, headers: &[(&str, &str)]) -> HttpRequest {
        let mut r = TestRequest::get().peer_addr(peer.parse().unwrap());
        for h in headers {
            r = r.insert_header(*h);
        }
        r.to_http_request()
    }

    #[test]
    fn public_urls_parse_to_origins() {
        let url = PublicUrl::parse("HTTPS://GW.Example.com/").unwrap();
        assert_eq!(url.origin(), "https://gw.example.com");
        assert_eq!(
            PublicUrl::parse("https://gw.example.com:443").unwrap(),
            url,
            "default port"
        );
        assert_eq!(
            PublicUrl::parse("http://10.0.0.5:8080").unwrap().origin(),
            "http://10.0.0.5:8080"
        );
        assert_eq!(
            PublicUrl::parse("http://[::1]:8080").unwrap().origin(),
            "http://[::1]:8080"
        );
        for bad in [
            "gw.example.com",
            "ftp://gw.example.com",
            "https://gw.example.com/app",
            "https://user@gw.example.com",
            "https://gw.example.com/?x=1",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_by_rule() {
        let dev = site(&[], "127.0.0.1:8080", AuthMode::Dev);
        assert_eq!(dev.rule(), &HostRule::Loopback);
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "LOCALHOST",
        ] {
            assert!(dev.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.2",
            "127.0.0.1:80:80",
            "127.0.0.1:x",
            "[::1]x",
            "",
            "local host",
        ] {
            assert!(!dev.host_allowed(bad), "{bad}");
        }
        // Dev identity on a wider listener (a container published on the host's loopback).
        let container = site(&[], "0.0.0.0:8080", AuthMode::Dev);
        assert_eq!(container.rule(), &HostRule::Loopback);
        let alb = site(&[], "0.0.0.0:8080", AuthMode::Alb);
        assert_eq!(alb.rule(), &HostRule::Any);
        assert!(alb.host_allowed("anything.example"));
        let listed = site(&["https://gw.example.com"], "0.0.0.0:8080", AuthMode::Alb);
        assert!(listed.host_allowed("gw.example.com") && listed.host_allowed("GW.example.com:443"));
        assert!(!listed.host_allowed("localhost") && !listed.host_allowed("evil.example"));
    }

    #[test]
    fn host_checks_use_forwarded_host_only_from_trusted_proxies() {
        let listed = site(&["https://gw.example.com"], "0.0.0.0:8080", AuthMode::Alb);
        let from_alb = req(
            "10.0.3.4:1234",
            &[
                ("host", "10.0.9.9:8080"),
                ("x-forwarded-host", "gw.example.com"),
            ],
        );
        assert!(listed.check_host(&from_alb).is_ok());
        let forged = req(
            "203.0.113.5:1234",
            &[
                ("host", "evil.example"),
                ("x-forwarded-host", "gw.example.com"),
            ],
        );
        assert!(listed.check_host(&forged).is_err());
        let dev = site(&[], "127.0.0.1:8080", AuthMode::Dev);
        let forged = req(
            "127.0.0.1:1234",
            &[("host", "evil.example"), ("x-forwarded-host", "localhost")],
        );
        let err = dev.check_host(&forged).unwrap_err();
        assert_eq!(err.status().as_u16(), 421);
        assert!(dev.check_host(&req("127.0.0.1:1", &[])).is_ok(), "no Host");
        assert!(listed.check_host(&req("127.0.0.1:1", &[])).is_err());
    }

    #[test]
    fn own_origins() {
        let dev = site(&[], "127.0.0.1:8080", AuthMode::Dev);
        let r = req("127.0.0.1:1", &[("host", "localhost:8080")]);
        assert!(dev.origin_allowed("http://localhost:8080", &r));
        assert!(dev.origin_allowed("https://ide.example.com", &r), "allowed");
        for bad in ["http://localhost:8081", "http://evil.example", "null", ""] {
            assert!(!dev.origin_allowed(bad, &r), "{bad}");
        }
        // A rebound host names itself in both: still not the gateway's.
        let rebound = req("127.0.0.1:1", &[("host", "evil.example")]);
        assert!(!dev.origin_allowed("http://evil.example", &rebound));

        let listed = site(&["https://gw.example.com"], "0.0.0.0:8080", AuthMode::Alb);
        let r = req("10.0.0.1:1", &[("host", "gw.example.com")]);
        assert!(listed.origin_allowed("https://gw.example.com", &r));
        assert!(listed.origin_allowed("https://GW.example.com:443", &r));
        assert!(
            !listed.origin_allowed("http://gw.example.com", &r),
            "scheme"
        );
        assert!(!listed.origin_allowed("https://gw.example.com:8443", &r));
        assert!(!listed.origin_allowed("https://evil.example", &r));
    }

    #[test]
    fn health_checks_are_exempt() {
        assert!(host_exempt("/-/healthz") && host_exempt("/-/readyz"));
        assert!(!host_exempt("/-/api/me") && !host_exempt("/"));
    }
}
