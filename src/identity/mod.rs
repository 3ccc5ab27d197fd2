//! Who is making a request. Every request outside `/-/healthz` and `/-/readyz` is identified
//! before anything else happens; a request that cannot be identified never reaches the
//! registry, never creates a directory and never starts a process.
//!
//! Three ways (`--auth`): `dev` (a name the client states; for development), `alb` (the
//! signed header of an AWS load balancer) and `jwt` (a bearer token). Tokens are verified
//! once and then served from [`cache::VerifiedCache`] until they expire.

pub mod access_tokens;
mod alb;
mod alb_keys;
mod cache;
mod claims;
pub mod cookies;
pub mod dev;
pub(crate) mod fetch;
mod jwks;
mod jwt;
mod keys;
pub mod policy;
pub mod settings;
pub mod token;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::metrics::AuthMetrics;
use alb::AlbVerifier;
use alb_keys::AlbKeys;
use cache::VerifiedCache;
use cookies::CookieNames;
use jwks::JwksStore;
use jwt::{JwtKeys, JwtVerifier};
use keys::VerifyingKey;
pub use settings::AuthMode;
use settings::{AuthSettings, JwtKeySource, JwtSettings, Way};

/// A verified user: the `UserContext` of the API without its directory fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    /// Stable subject (`sub`, or the dev name): the registry key and the source of the home
    /// directory name.
    pub user_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub email_verified: Option<bool>,
    /// Groups the identity provider puts the user in (`cognito:groups` or `groups`), for
    /// `--allowed-groups` and `--admin-groups`.
    pub groups: Vec<String>,
}

/// Who made a request: the person, shared (a verified token's is cached, and every request
/// it identifies holds the same one instead of a copy of its strings and groups), and how
/// this request presented them. Reads as a [`Person`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    person: Arc<Person>,
    /// How the request presented it.
    pub credential: Credential,
}

impl Identity {
    pub fn new(person: Person, credential: Credential) -> Identity {
        Identity::shared(Arc::new(person), credential)
    }

    pub fn shared(person: Arc<Person>, credential: Credential) -> Identity {
        Identity { person, credential }
    }

    /// The same person, presented another way.
    pub fn with_credential(&self, credential: Credential) -> Identity {
        Identity::shared(Arc::clone(&self.person), credential)
    }

    pub fn person(&self) -> &Arc<Person> {
        &self.person
    }
}

impl std::ops::Deref for Identity {
    type Target = Person;

    fn deref(&self) -> &Person {
        &self.person
    }
}

/// How a request presented its identity. Browsers attach cookies, and the load balancer's
/// session behind them, to requests any site makes (a form posted from another page, say),
/// so those identities get the cross-site checks; headers and bearer tokens are set by the
/// client itself and are not ambient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// `X-Chamberlain-Dev-User`.
    Header,
    /// `Authorization: Bearer`.
    Bearer,
    /// A cookie: the dev or `--jwt-cookie` cookie, or the ALB session (its header is made
    /// from the browser's cookie).
    Cookie,
    /// A personal access token (`Authorization: Bearer` or the password of Basic): reaches
    /// the user's own OpenCode, never token management or the admin console.
    AccessToken { basic: bool },
}

impl Credential {
    /// Whether a browser sends it with requests other sites make.
    pub fn is_ambient(self) -> bool {
        // A browser that was once given Basic credentials for a site resends them.
        matches!(
            self,
            Credential::Cookie | Credential::AccessToken { basic: true }
        )
    }
}

/// A token that passed every check, and until when it may be served from the cache.
pub struct Verified {
    pub person: Person,
    pub valid_until: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("not signed in")]
    Missing,
    /// The request names a user in a form that can never be valid (dev mode).
    #[error("{0}")]
    Malformed(String),
    /// A credential was presented and refused.
    #[error("{0}")]
    Rejected(String),
    /// The credential could not be checked right now (key server unreachable).
    #[error("{0}")]
    Unavailable(String),
}

/// A refusal whose reason is `why`.
fn rejected(why: impl std::fmt::Display) -> AuthError {
    AuthError::Rejected(why.to_string())
}

/// The end both verifiers share: the signature over the token as received, then the
/// identity its claims name.
fn accept(
    key: &keys::VerifyingKey,
    raw: &token::RawToken<'_>,
    claims: &claims::Claims,
    valid_until: u64,
) -> Result<Verified, AuthError> {
    if !key.verifies(raw) {
        return Err(rejected("token signature does not verify"));
    }
    Ok(Verified {
        person: claims.person().map_err(rejected)?,
        valid_until,
    })
}

/// Why a signing key could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// The key server says there is no such key: the token is not ours.
    #[error("{0}")]
    Unknown(String),
    /// The key server could not be asked; the token may be fine.
    #[error("{0}")]
    Unavailable(String),
}

impl From<KeyError> for AuthError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Unknown(reason) => AuthError::Rejected(reason),
            KeyError::Unavailable(reason) => AuthError::Unavailable(reason),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("--alb-key-url must contain {{kid}}: {0}")]
    KeyUrl(String),
    #[error("--alb-arn {0:?} is not an ARN (arn:aws:elasticloadbalancing:…)")]
    Arn(String),
    #[error("--auth jwt needs --jwks-url or --jwt-public-key")]
    NoJwtKey,
    #[error("reading --jwt-public-key {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("--jwt-public-key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error(
        "--jwt-algorithm {0:?} is not a signature algorithm name (RS256, ES256, PS256, EdDSA …)"
    )]
    Algorithm(String),
    #[error("--jwt-cookie {0:?} is not a cookie name")]
    Cookie(String),
}

enum Mode {
    Dev,
    Alb(AlbVerifier),
    Jwt(JwtVerifier),
}

pub struct Authenticator {
    mode: Mode,
    /// Who may sign in, and who is an administrator.
    policy: policy::SignInPolicy,
    /// Personal access tokens, accepted in every mode.
    tokens: Arc<access_tokens::AccessTokens>,
    cache: VerifiedCache,
    metrics: AuthMetrics,
    cookies: CookieNames,
    logout_url: Option<String>,
}

/// Request headers that carry identity to the gateway, in any mode; never forwarded to
/// OpenCode (the `Authorization` header is always replaced as well).
const IDENTITY_HEADERS: [&str; 4] = [
    dev::HEADER,
    alb::HEADER,
    alb::OTHER_HEADERS[0],
    alb::OTHER_HEADERS[1],
];

impl Authenticator {
    pub fn new(
        settings: &AuthSettings,
        metrics: AuthMetrics,
        tokens: Arc<access_tokens::AccessTokens>,
    ) -> Result<Self, AuthConfigError> {
        let leeway = settings.clock_skew.as_secs();
        let mut jwt_cookie = None;
        let mode = match &settings.way {
            Way::Dev => Mode::Dev,
            Way::Alb(alb) => {
                if !alb.arn.starts_with("arn:") {
                    return Err(AuthConfigError::Arn(alb.arn.clone()));
                }
                if !alb.key_url.contains("{kid}") {
                    return Err(AuthConfigError::KeyUrl(alb.key_url.clone()));
                }
                let key_url = alb.key_url.replace("{region}", &alb.region);
                tracing::info!(
                    arn = alb.arn,
                    key_url,
                    "identity: verified ALB header (x-amzn-oidc-data)"
                );
                let keys = AlbKeys::new(
                    key_url,
                    settings.key_timeout,
                    alb.negative_cache,
                    metrics.clone(),
                );
                let arn = alb.arn.clone();
                Mode::Alb(AlbVerifier { arn, leeway, keys })
            }
            Way::Jwt(jwt) => {
                jwt_cookie = jwt.cookie.clone();
                Mode::Jwt(jwt_verifier(jwt, settings.key_timeout, leeway, &metrics)?)
            }
        };
        let dev = settings.mode() == AuthMode::Dev;
        let rules = &settings.policy;
        let policy = policy::SignInPolicy::new(
            &rules.allowed_users,
            &rules.allowed_groups,
            &rules.admin_users,
            &rules.admin_groups,
            dev,
        );
        tracing::info!(policy = policy.summary(), "who may sign in");
        if dev && !(rules.admin_users.is_empty() && rules.admin_groups.is_empty()) {
            tracing::warn!(
                "--auth dev with administrators: anyone who can reach the gateway can claim an \
                 administrator's name"
            );
        }
        let mut auth = Self::with_mode(
            mode,
            settings.cache_entries,
            metrics,
            jwt_cookie,
            settings.logout_url.clone(),
        );
        auth.policy = policy;
        auth.tokens = tokens;
        Ok(auth)
    }

    fn with_mode(
        mode: Mode,
        cache_entries: usize,
        metrics: AuthMetrics,
        jwt_cookie: Option<String>,
        logout_url: Option<String>,
    ) -> Self {
        let cookies = CookieNames {
            exact: std::iter::once(dev::COOKIE.to_owned())
                .chain(jwt_cookie)
                .collect(),
            prefixes: vec![alb::SESSION_COOKIE_PREFIX],
        };
        Authenticator {
            mode,
            policy: policy::SignInPolicy::default(),
            tokens: Arc::new(access_tokens::AccessTokens::empty()),
            cache: VerifiedCache::new(cache_entries),
            metrics,
            cookies,
            logout_url,
        }
    }

    pub fn mode(&self) -> AuthMode {
        match self.mode {
            Mode::Dev => AuthMode::Dev,
            Mode::Alb(_) => AuthMode::Alb,
            Mode::Jwt(_) => AuthMode::Jwt,
        }
    }

    pub async fn identify(&self, req: &HttpRequest) -> Result<Identity, AuthError> {
        let result = match access_token(req) {
            Some(Ok((token, basic))) => self.tokens.identify(&token, basic).ok_or_else(|| {
                AuthError::Rejected("the access token is unknown, revoked or expired".into())
            }),
            Some(Err(e)) => Err(e),
            None => self.identify_by_mode(req).await,
        };
        match &result {
            Ok(_) => {}
            Err(AuthError::Missing) => self.metrics.outcome("missing"),
            Err(AuthError::Malformed(_) | AuthError::Rejected(_)) => {
                self.metrics.outcome("rejected")
            }
            Err(AuthError::Unavailable(_)) => self.metrics.outcome("unavailable"),
        }
        result
    }

    async fn identify_by_mode(&self, req: &HttpRequest) -> Result<Identity, AuthError> {
        match &self.mode {
            Mode::Dev => dev::identify(req),
            Mode::Alb(_) | Mode::Jwt(_) => match self.credential(req) {
                Ok((token, credential)) => self
                    .verify(token)
                    .await
                    .map(|person| Identity::shared(person, credential)),
                Err(e) => Err(e),
            },
        }
    }

    /// Who may sign in, and who is an administrator.
    pub fn policy(&self) -> &policy::SignInPolicy {
        &self.policy
    }

    /// Personal access tokens.
    pub fn tokens(&self) -> &Arc<access_tokens::AccessTokens> {
        &self.tokens
    }

    /// The token a request presents, and how, by the rules of the mode.
    fn credential<'r>(&self, req: &'r HttpRequest) -> Result<(&'r str, Credential), AuthError> {
        let headers = req.headers();
        let text = |v: &'r header::HeaderValue, what: &str| {
            v.to_str()
                .map_err(|_| AuthError::Rejected(format!("{what} is not valid text")))
        };
        match &self.mode {
            Mode::Alb(_) => {
                let mut values = headers.get_all(alb::HEADER_NAME);
                let first = values.next().ok_or(AuthError::Missing)?;
                if values.next().is_some() {
                    return Err(AuthError::Rejected(format!(
                        "{} appears more than once",
                        alb::HEADER
                    )));
                }
                Ok((text(first, alb::HEADER)?, Credential::Cookie))
            }
            Mode::Jwt(v) => {
                if let Some(value) = headers.get(header::AUTHORIZATION) {
                    let value = text(value, "Authorization")?;
                    return match value.split_once(' ') {
                        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                            Ok((token.trim(), Credential::Bearer))
                        }
                        _ => Err(AuthError::Rejected(
                            "Authorization is not a Bearer token".into(),
                        )),
                    };
                }
                let name = v.cookie.as_deref().ok_or(AuthError::Missing)?;
                headers
                    .get_all(header::COOKIE)
                    .filter_map(|v| v.to_str().ok())
                    .find_map(|h| cookies::find(h, name))
                    .map(|token| (token, Credential::Cookie))
                    .ok_or(AuthError::Missing)
            }
            Mode::Dev => Err(AuthError::Missing),
        }
    }

    /// Checks a token, or finds it already checked.
    pub async fn verify(&self, token: &str) -> Result<Arc<Person>, AuthError> {
        let now = epoch_secs();
        let key = VerifiedCache::key(token);
        if let Some(person) = self.cache.get(&key, now) {
            self.metrics.outcome("cache_hit");
            return Ok(person);
        }
        let verified = match &self.mode {
            Mode::Alb(v) => v.verify(token, now).await?,
            Mode::Jwt(v) => v.verify(token, now).await?,
            Mode::Dev => return Err(AuthError::Missing),
        };
        self.metrics.outcome("verified");
        let person = Arc::new(verified.person);
        self.cache
            .insert(key, Arc::clone(&person), verified.valid_until, now);
        Ok(person)
    }

    /// Where a person signs in, for the 401 page: the dev form, or behind an ALB a
    /// redirect that passes through the load balancer's own sign-in. A bearer-token
    /// deployment has no sign-in flow of its own.
    pub fn login_path(&self) -> Option<&'static str> {
        match self.mode {
            Mode::Dev | Mode::Alb(_) => Some(dev::LOGIN_PATH),
            Mode::Jwt(_) => None,
        }
    }

    /// Request headers that carry identity to the gateway; never forwarded to OpenCode.
    pub fn identity_headers(&self) -> &'static [&'static str] {
        &IDENTITY_HEADERS
    }

    /// Cookies that belong to the gateway or the load balancer; never forwarded to OpenCode.
    pub fn identity_cookies(&self) -> &CookieNames {
        &self.cookies
    }

    /// Cookies `/-/logout` expires: the dev cookie, the JWT cookie and, behind an ALB, every
    /// shard of its session cookie the browser sent (at least `-0` … `-3`).
    pub fn logout_cookies(&self, req: &HttpRequest) -> Vec<String> {
        let mut names: Vec<String> = self.cookies.exact.clone();
        if matches!(self.mode, Mode::Alb(_)) {
            names.extend((0..4).map(|i| format!("{}-{i}", alb::SESSION_COOKIE_PREFIX)));
            for value in req.headers().get_all(header::COOKIE) {
                let Ok(value) = value.to_str() else { continue };
                for name in cookies::names(value) {
                    if name.starts_with(alb::SESSION_COOKIE_PREFIX)
                        && name.len() <= 64
                        && !names.iter().any(|n| n == name)
                    {
                        names.push(name.to_owned());
                    }
                }
            }
        }
        names
    }

    pub fn logout_url(&self) -> Option<&str> {
        self.logout_url.as_deref()
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }
}

/// A personal access token the request presents in `Authorization`: `Bearer <token>` or
/// Basic with the token as the password (any user name), and whether it came as Basic.
/// `None` when the header holds something else (a JWT, in `--auth jwt`).
fn access_token(req: &HttpRequest) -> Option<Result<(String, bool), AuthError>> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return rest
            .starts_with(access_tokens::PREFIX)
            .then(|| Ok((rest.to_owned(), false)));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    use base64::Engine;
    let decoded = match base64::engine::general_purpose::STANDARD.decode(rest) {
        Ok(d) => d,
        Err(_) => {
            return Some(Err(AuthError::Rejected(
                "Basic credentials are not base64".into(),
            )))
        }
    };
    // Basic without a token is someone else's (a proxy in front, say): the mode decides.
    let password = String::from_utf8(decoded)
        .ok()
        .and_then(|text| text.split_once(':').map(|(_, p)| p.to_owned()))
        .filter(|p| p.starts_with(access_tokens::PREFIX))?;
    Some(Ok((password, true)))
}

fn jwt_verifier(
    jwt: &JwtSettings,
    key_timeout: std::time::Duration,
    leeway: u64,
    metrics: &AuthMetrics,
) -> Result<JwtVerifier, AuthConfigError> {
    let (keys, shown_keys) = match &jwt.keys {
        JwtKeySource::Jwks {
            url,
            refresh_cooldown,
            max_age,
        } => (
            JwtKeys::Jwks(Box::new(JwksStore::new(
                url.clone(),
                key_timeout,
                *refresh_cooldown,
                *max_age,
                metrics.clone(),
            ))),
            url.clone(),
        ),
        JwtKeySource::Pem { path, algorithm } => {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| AuthConfigError::ReadKey {
                path: shown.clone(),
                source,
            })?;
            let alg = match algorithm {
                Some(name) => Some(
                    name.parse()
                        .map_err(|_| AuthConfigError::Algorithm(name.clone()))?,
                ),
                None => None,
            };
            let key = VerifyingKey::from_pem(&pem, alg).map_err(|e| AuthConfigError::Key {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            (JwtKeys::Pem(Arc::new(key)), shown)
        }
        JwtKeySource::Missing => return Err(AuthConfigError::NoJwtKey),
    };
    if let Some(cookie) = &jwt.cookie {
        if cookie.is_empty()
            || !cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(AuthConfigError::Cookie(cookie.clone()));
        }
    }
    if jwt.issuer.is_none() {
        tracing::warn!(
            "--auth jwt without --jwt-issuer: any issuer signing with these keys is accepted"
        );
    }
    if jwt.audiences.is_empty() && jwt.client_ids.is_empty() {
        tracing::warn!("--auth jwt without --jwt-audience or --jwt-client-id: tokens for any audience are accepted");
    }
    tracing::info!(
        keys = shown_keys,
        issuer = jwt.issuer.as_deref().unwrap_or("(any)"),
        cookie = jwt.cookie.as_deref().unwrap_or("(none)"),
        "identity: verified bearer tokens"
    );
    Ok(JwtVerifier {
        keys,
        issuer: jwt.issuer.clone(),
        audiences: jwt.audiences.clone(),
        client_ids: jwt.client_ids.clone(),
        cookie: jwt.cookie.clone(),
        leeway,
    })
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn jwt_with_cookie() -> Authenticator {
        let pem = include_bytes!("../../tests/fixtures/ed25519-test-public.pem");
        let key = VerifyingKey::from_pem(pem, None).unwrap();
        let verifier = JwtVerifier {
            keys: JwtKeys::Pem(Arc::new(key)),
            issuer: None,
            audiences: Vec::new(),
            client_ids: Vec::new(),
            cookie: Some("session".to_owned()),
            leeway: 30,
        };
        Authenticator::with_mode(
            Mode::Jwt(verifier),
            10,
            AuthMetrics::default(),
            Some("session".to_owned()),
            None,
        )
    }

    #[test]
    fn a_token_from_a_cookie_is_ambient_and_a_bearer_token_is_not() {
        let auth = jwt_with_cookie();
        let bearer = TestRequest::default()
            .insert_header(("authorization", "Bearer abc"))
            .insert_header(("cookie", "session=def"))
            .to_http_request();
        assert_eq!(
            auth.credential(&bearer).unwrap(),
            ("abc", Credential::Bearer)
        );
        let cookie = TestRequest::default()
            .insert_header(("cookie", "session=def"))
            .to_http_request();
        assert_eq!(
            auth.credential(&cookie).unwrap(),
            ("def", Credential::Cookie)
        );
        assert!(Credential::Cookie.is_ambient() && !Credential::Bearer.is_ambient());
    }
}
