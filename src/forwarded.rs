//! Which proxies the gateway believes: `X-Forwarded-For`, `-Proto` and `-Host` are taken
//! from a request only when its TCP peer is in `--trusted-proxies`. Anyone else could write
//! them (a page's own host name into `X-Forwarded-Host`, say) to pass the Host and Origin
//! checks of [`crate::site`]. The standard `Forwarded` header is never read.
//!
//! This file owns the list and the one question "what did the client ask for, as far as a
//! trusted proxy says"; it does not decide which hosts are acceptable (that is `site.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::HttpRequest;

// Names the `http` crate does not know, made once: looked up by text, each would be parsed
// and copied to the heap on every request.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// One network, `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    pub fn parse(text: &str) -> Result<Net, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or network (10.0.0.0/8, fd00::/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0–{max}"))?,
        };
        Ok(Net { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack listener reports for
/// an IPv4 client) is that IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn same_prefix(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (whole, rest) = ((prefix / 8) as usize, prefix % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xFFu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// `--trusted-proxies`: the networks whose forwarded headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Net>,
}

impl TrustedProxies {
    /// Trusts no one.
    pub const fn none() -> TrustedProxies {
        TrustedProxies { nets: Vec::new() }
    }

    /// `none`, or a comma-separated list of networks.
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        if text.trim().eq_ignore_ascii_case("none") {
            return Ok(TrustedProxies::default());
        }
        let nets = text
            .split(',')
            .filter(|t| !t.trim().is_empty())
            .map(Net::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if nets.is_empty() {
            return Err("no network given (use `none` to trust no proxy)".to_owned());
        }
        Ok(TrustedProxies { nets })
    }

    /// The private networks (RFC 1918 and unique-local IPv6): where a load balancer in the
    /// same VPC connects from.
    pub fn private_networks() -> TrustedProxies {
        let nets = [
            (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8),
            (IpAddr::V4(Ipv4Addr::new(172, 16, 0, 0)), 12),
            (IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)), 16),
            (IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)), 7),
        ]
        .into_iter()
        .map(|(addr, prefix)| Net { addr, prefix })
        .collect();
        TrustedProxies { nets }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(peer))
    }

    /// What the client asked for, as this connection or a trusted proxy in front of it says.
    pub fn view(&self, req: &HttpRequest) -> View {
        let parts = self.parts(req);
        View {
            host: parts.host.map(str::to_owned),
            scheme: parts.scheme.to_ascii_lowercase(),
        }
    }

    /// [`View`]'s parts, borrowed from the request (for every proxied request's
    /// `X-Forwarded-*`, which need no copies of them).
    pub fn parts<'r>(&self, req: &'r HttpRequest) -> ViewParts<'r> {
        let peer = req.peer_addr().map(|a| canonical(a.ip()));
        let trusted = peer.is_some_and(|ip| self.trusts(ip));
        let (scheme, prior_for) = if trusted {
            (
                first_value(req, X_FORWARDED_PROTO).unwrap_or("http"),
                req.headers()
                    .get(X_FORWARDED_FOR)
                    .and_then(|v| v.to_str().ok()),
            )
        } else {
            ("http", None)
        };
        ViewParts {
            host: self.host_of(req, trusted),
            scheme,
            prior_for,
            peer,
        }
    }

    /// The host of [`View`], borrowed: the Host check runs on every request, and needs
    /// nothing else.
    pub fn host<'r>(&self, req: &'r HttpRequest) -> Option<&'r str> {
        let trusted = req
            .peer_addr()
            .is_some_and(|a| self.trusts(canonical(a.ip())));
        self.host_of(req, trusted)
    }

    fn host_of<'r>(&self, req: &'r HttpRequest, trusted: bool) -> Option<&'r str> {
        let own = || {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
        };
        match trusted {
            true => first_value(req, X_FORWARDED_HOST).or_else(own),
            false => own(),
        }
    }
}

/// The first value of a forwarded header: a proxy chain appends, so it is what the client
/// sent.
fn first_value(req: &HttpRequest, name: HeaderName) -> Option<&str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.nets.is_empty() {
            return f.write_str("none");
        }
        let list: Vec<String> = self.nets.iter().map(Net::to_string).collect();
        f.write_str(&list.join(","))
    }
}

/// [`View`], borrowed from the request.
pub struct ViewParts<'r> {
    pub host: Option<&'r str>,
    /// As sent: `http`, or a trusted proxy's `X-Forwarded-Proto` in any case.
    pub scheme: &'r str,
    /// A trusted proxy's `X-Forwarded-For` chain.
    pub prior_for: Option<&'r str>,
    pub peer: Option<IpAddr>,
}

impl ViewParts<'_> {
    /// The `X-Forwarded-For` chain to pass on: a trusted proxy's, then the peer. A direct
    /// client's (every request without a proxy in front) is written without a heap copy.
    pub fn forwarded_for(&self) -> Option<HeaderValue> {
        match (self.prior_for, self.peer) {
            (None, Some(peer)) => ip_value(peer),
            (Some(prior), Some(peer)) => HeaderValue::try_from(format!("{prior}, {peer}")).ok(),
            (prior, None) => prior.and_then(|p| HeaderValue::from_str(p).ok()),
        }
    }
}

/// An address as a header value, written on the stack rather than into a `String` first.
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    use std::io::Write;
    // An address is at most 39 characters as Rust writes it (45 in the longest notation).
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    write!(cursor, "{ip}").ok()?;
    let len = usize::try_from(cursor.position()).ok()?;
    HeaderValue::from_bytes(&buf[..len]).ok()
}

/// A request as the client made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The `Host` the client sent (with its port, as sent), if any.
    pub host: Option<String>,
    /// `http`, or what a trusted proxy says (`https` behind a TLS-terminating one).
    pub scheme: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_contain() {
        let net = Net::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.200.3.4")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        let net = Net::parse("172.16.0.0/12").unwrap();
        assert!(net.contains(ip("172.31.255.255")));
        assert!(!net.contains(ip("172.32.0.0")));
        let one = Net::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Net::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(Net::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x", ""] {
            assert!(Net::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_parse() {
        assert!(TrustedProxies::parse("none").unwrap().is_empty());
        let list = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").unwrap();
        assert!(list.trusts(ip("10.9.9.9")) && list.trusts(ip("192.168.1.1")));
        assert!(!list.trusts(ip("127.0.0.1")));
        assert_eq!(list.to_string(), "10.0.0.0/8,192.168.1.1/32");
        assert!(TrustedProxies::parse("").is_err());
        assert!(TrustedProxies::parse("10.0.0.0/8,nope").is_err());
        let private = TrustedProxies::private_networks();
        assert!(private.trusts(ip("10.0.1.2")) && private.trusts(ip("fd00::2")));
        assert!(!private.trusts(ip("127.0.0.1")) && !private.trusts(ip("203.0.113.1")));
    }

    fn forged(peer: &str) -> HttpRequest {
        TestRequest::get()
            .peer_addr(peer.parse().unwrap())
            .insert_header(("host", "127.0.0.1:8080"))
            .insert_header(("x-forwarded-host", "evil.example, other"))
            .insert_header(("x-forwarded-proto", "HTTPS"))
            .insert_header(("x-forwarded-for", "203.0.113.9"))
            .to_http_request()
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let req = forged("10.1.2.3:5000");
        let view = trusted.view(&req);
        assert_eq!(view.host.as_deref(), Some("evil.example"));
        assert_eq!(view.scheme, "https");
        let chain = trusted.parts(&req).forwarded_for();
        assert_eq!(chain.unwrap(), "203.0.113.9, 10.1.2.3");

        for proxies in [TrustedProxies::default(), trusted] {
            let req = forged("127.0.0.1:5000");
            let view = proxies.view(&req);
            assert_eq!(view.host.as_deref(), Some("127.0.0.1:8080"));
            assert_eq!(view.scheme, "http");
            assert_eq!(proxies.parts(&req).forwarded_for().unwrap(), "127.0.0.1");
        }
    }

    #[test]
    fn addresses_are_written_as_text_would_be() {
        for ip in [
            "10.1.2.3",
            "255.255.255.255",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "1111:2222:3333:4444:5555:6666:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).unwrap(), ip.to_string().as_str());
        }
    }
}
