//! How users are identified, as the operator chose it: the identity module's own settings,
//! built from the command line by `cli.rs` (`AuthArgs::settings`), so nothing here reads
//! flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

/// The way identities are established (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Development identity: `X-Chamberlain-Dev-User` header or the cookie set by `/-/login`.
    /// Anyone can claim any name; refuses non-loopback listeners unless --allow-insecure-dev.
    Dev,
    /// The `x-amzn-oidc-data` header of an AWS Application Load Balancer, signature verified.
    Alb,
    /// A bearer token (or --jwt-cookie) verified against --jwks-url or --jwt-public-key.
    Jwt,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Dev => "dev",
            AuthMode::Alb => "alb",
            AuthMode::Jwt => "jwt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub way: Way,
    /// Clock skew allowed when checking a token's `exp` and `nbf`.
    pub clock_skew: Duration,
    /// Timeout for fetching a signing key or a key set.
    pub key_timeout: Duration,
    /// Most verified tokens remembered.
    pub cache_entries: usize,
    pub policy: PolicySettings,
    /// Where `/-/logout` sends the browser after clearing the session.
    pub logout_url: Option<String>,
}

/// Each way of identifying people, with what only it needs.
#[derive(Debug, Clone)]
pub enum Way {
    Dev,
    Alb(AlbSettings),
    Jwt(JwtSettings),
}

#[derive(Debug, Clone)]
pub struct AlbSettings {
    /// The load balancer's ARN; tokens signed by any other are refused.
    pub arn: String,
    pub region: String,
    /// Where its public keys are; `{region}` and `{kid}` are filled in.
    pub key_url: String,
    /// How long a key id the key server did not know is not asked for again.
    pub negative_cache: Duration,
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub keys: JwtKeySource,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Accepted app client ids (`client_id`, or `aud` of ID tokens).
    pub client_ids: Vec<String>,
    /// A cookie that may carry the token when there is no `Authorization` header.
    pub cookie: Option<String>,
}

/// Where the keys verifying bearer tokens come from.
#[derive(Debug, Clone)]
pub enum JwtKeySource {
    Jwks {
        url: String,
        /// Least time between refreshes caused by unknown key ids.
        refresh_cooldown: Duration,
        /// Refetched when older than this.
        max_age: Duration,
    },
    Pem {
        path: PathBuf,
        /// The algorithm, when the key's family has several.
        algorithm: Option<String>,
    },
    /// Neither was given: refused at start-up.
    Missing,
}

/// Who may sign in and who is an administrator.
#[derive(Debug, Clone, Default)]
pub struct PolicySettings {
    pub allowed_users: Vec<String>,
    pub allowed_groups: Vec<String>,
    pub admin_users: Vec<String>,
    pub admin_groups: Vec<String>,
}

impl AuthSettings {
    pub fn mode(&self) -> AuthMode {
        match self.way {
            Way::Dev => AuthMode::Dev,
            Way::Alb(_) => AuthMode::Alb,
            Way::Jwt(_) => AuthMode::Jwt,
        }
    }

    /// What personal access tokens are bound to: the way identities are established.
    /// Tokens made under one are void under another (say, made in `--auth dev`, where anyone
    /// is anyone, and then used once the gateway verifies an identity provider's tokens).
    pub fn realm(&self) -> String {
        match &self.way {
            Way::Dev => "dev".to_owned(),
            Way::Alb(alb) => format!("alb {}", alb.arn),
            Way::Jwt(jwt) => format!(
                "jwt {}",
                jwt.issuer
                    .as_deref()
                    .or(match &jwt.keys {
                        JwtKeySource::Jwks { url, .. } => Some(url.as_str()),
                        _ => None,
                    })
                    .unwrap_or("(pem key)")
            ),
        }
    }
}
