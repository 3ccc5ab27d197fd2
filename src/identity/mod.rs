//! Who is making a request. Every request outside `/-/healthz` and `/-/readyz` is identified
//! before anything else happens; a request that cannot be identified never reaches the
//! registry, never creates a directory and never starts a process.

pub mod cookies;
pub mod dev;

use actix_web::HttpRequest;

use crate::cli::AuthMode;

/// A verified user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Stable subject: the registry key and the source of the home directory name.
    pub user_id: String,
    pub email: String,
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("not signed in")]
    Missing,
    /// The request names a user in a form that can never be valid (dev mode).
    #[error("{0}")]
    Malformed(String),
}

pub enum Authenticator {
    Dev,
}

impl Authenticator {
    pub fn new(mode: AuthMode) -> Self {
        match mode {
            AuthMode::Dev => Authenticator::Dev,
        }
    }

    pub async fn identify(&self, req: &HttpRequest) -> Result<Identity, AuthError> {
        match self {
            Authenticator::Dev => dev::identify(req),
        }
    }

    /// Where a person signs in, for the 401 page.
    pub fn login_path(&self) -> &'static str {
        match self {
            Authenticator::Dev => dev::LOGIN_PATH,
        }
    }

    /// Request headers that carry identity to the gateway; never forwarded to OpenCode.
    pub fn identity_headers(&self) -> &'static [&'static str] {
        match self {
            Authenticator::Dev => &[dev::HEADER],
        }
    }

    /// Cookies that belong to the gateway; never forwarded to OpenCode.
    pub fn identity_cookies(&self) -> &'static [&'static str] {
        match self {
            Authenticator::Dev => &[dev::COOKIE],
        }
    }
}
