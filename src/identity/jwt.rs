//! `--auth jwt`: a bearer token (`Authorization: Bearer …` or the `--jwt-cookie` cookie)
//! verified against a JWKS or one PEM public key, then checked for expiry, issuer and
//! audience / client id. The key decides the algorithm; a token whose `alg` differs is
//! refused before any signature work.

use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::Algorithm;

use super::alb::truncate;
use super::claims::Claims;
use super::jwks::JwksStore;
use super::keys::VerifyingKey;
use super::token::RawToken;
use super::{accept, rejected, AuthError, Verified};

pub enum JwtKeys {
    /// `--jwt-public-key`: one key; a token's kid is not consulted.
    Pem(Arc<VerifyingKey>),
    Jwks(Box<JwksStore>),
}

pub struct JwtVerifier {
    pub keys: JwtKeys,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub client_ids: Vec<String>,
    pub cookie: Option<String>,
    pub leeway: u64,
}

impl JwtVerifier {
    pub async fn verify(&self, token: &str, now: u64) -> Result<Verified, AuthError> {
        let raw = RawToken::split(token).map_err(rejected)?;
        let header = raw.header().map_err(rejected)?;
        // Refuse `none` and unknown names by name, before anything else.
        let alg = Algorithm::from_str(&header.alg).map_err(|_| {
            rejected(format!(
                "token alg {:?} is not a supported signature algorithm",
                truncate(&header.alg)
            ))
        })?;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(rejected(format!(
                "token alg {alg:?} is symmetric; only public-key signatures are accepted"
            )));
        }
        let payload = raw.payload_bytes().map_err(rejected)?;
        let claims = Claims::parse(&payload).map_err(rejected)?;
        let valid_until = claims
            .check_time(now, self.leeway, None)
            .map_err(rejected)?
            .saturating_add(self.leeway);
        if let Some(issuer) = &self.issuer {
            claims.check_issuer(issuer).map_err(rejected)?;
        }
        if !self.audiences.is_empty() || !self.client_ids.is_empty() {
            claims
                .check_audience(&self.audiences, &self.client_ids)
                .map_err(rejected)?;
        }
        let key = match &self.keys {
            JwtKeys::Pem(key) => key.clone(),
            JwtKeys::Jwks(store) => {
                let kid = header.kid.as_deref();
                if kid.is_some_and(|k| k.len() > 256) {
                    return Err(rejected("token kid is too long"));
                }
                store.key(kid).await?
            }
        };
        if key.alg != alg {
            return Err(rejected(format!(
                "token alg {alg:?} does not match its key's algorithm {:?}",
                key.alg
            )));
        }
        accept(&key, &raw, &claims, valid_until)
    }
}
