//! `--auth alb`: the `x-amzn-oidc-data` header an AWS Application Load Balancer adds after
//! its authenticate-cognito (or -oidc) action. The ALB signs it with ES256 and a per-region
//! key published at a URL derived from the key id. It is verified here anyway, because
//! anything that can reach the container without passing the ALB could otherwise claim to
//! be anyone.
//!
//! Order matters for abuse: everything that costs nothing (shape, `alg`, `signer`, kid,
//! expiry) is checked before a key is looked up, and a key is only fetched for a token
//! that names our load balancer.

use jsonwebtoken::Algorithm;

use super::alb_keys::{valid_kid, AlbKeys};
use super::claims::Claims;
use super::token::RawToken;
use super::{accept, rejected, AuthError, Verified};

pub const HEADER: &str = "x-amzn-oidc-data";
/// [`HEADER`] as a name made once (looked up by text, it would be parsed and copied to the
/// heap on every request).
pub const HEADER_NAME: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static(HEADER);
/// Also added by the ALB; never forwarded to OpenCode.
pub const OTHER_HEADERS: [&str; 2] = ["x-amzn-oidc-accesstoken", "x-amzn-oidc-identity"];
/// The ALB's session cookie, sharded as `-0`, `-1`, … when large.
pub const SESSION_COOKIE_PREFIX: &str = "AWSELBAuthSessionCookie";

pub struct AlbVerifier {
    pub arn: String,
    pub leeway: u64,
    pub keys: AlbKeys,
}

impl AlbVerifier {
    pub async fn verify(&self, token: &str, now: u64) -> Result<Verified, AuthError> {
        let raw = RawToken::split(token).map_err(rejected)?;
        let header = raw.header().map_err(rejected)?;
        if header.alg != "ES256" {
            return Err(rejected(format!(
                "token alg {:?} is not ES256",
                truncate(&header.alg)
            )));
        }
        if header.signer.as_deref() != Some(self.arn.as_str()) {
            return Err(rejected("token signer is not the configured load balancer"));
        }
        let kid = header
            .kid
            .as_deref()
            .filter(|k| valid_kid(k))
            .ok_or_else(|| rejected("token kid is missing or malformed"))?;
        let payload = raw.payload_bytes().map_err(rejected)?;
        let claims = Claims::parse(&payload).map_err(rejected)?;
        let valid_until = claims
            .check_time(now, self.leeway, header.exp)
            .map_err(rejected)?
            .saturating_add(self.leeway);
        let key = self.keys.key(kid).await?;
        debug_assert_eq!(key.alg, Algorithm::ES256);
        accept(&key, &raw, &claims, valid_until)
    }
}

/// Header values are attacker-chosen; keep them short in messages and logs.
pub fn truncate(s: &str) -> &str {
    match s.char_indices().nth(32) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
