//! Fetching key material (the ALB's PEM keys, a JWKS document) over HTTP(S): one GET with a
//! timeout, no redirects, and a cap on the body. TLS uses rustls with the Mozilla roots
//! compiled in, so the image needs no CA bundle for this.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::http::StatusCode;
use bytes::Bytes;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The server answered that there is no such key; worth remembering.
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
    /// The server could not be asked (refused, DNS, TLS, timeout); worth retrying later.
    #[error("could not fetch {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

impl FetchError {
    /// True when the answer says something about the key itself (4xx), as opposed to the
    /// key server being unwell.
    pub fn is_definitive(&self) -> bool {
        matches!(self, FetchError::Status { status, .. } if status.is_client_error())
    }
}

/// Built once; an error (which ring's defaults cannot produce) fails every HTTPS fetch
/// with a clear reason instead of panicking.
pub(crate) fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("TLS configuration: {e}"))
        })
        .clone()
}

/// GETs `url` and returns its body if the status is 200 and the body is at most `limit`
/// bytes.
pub async fn get(url: &str, timeout: Duration, limit: usize) -> Result<Bytes, FetchError> {
    let unreachable = |reason: String| FetchError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let connector = awc::Connector::new()
        .rustls_0_23(tls_config().map_err(unreachable)?)
        .timeout(timeout);
    let client = awc::Client::builder()
        .connector(connector)
        .timeout(timeout)
        .disable_redirects()
        .finish();
    let fetch = async {
        let mut resp = client
            .get(url)
            .insert_header(("accept", "application/json, application/x-pem-file, */*"))
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: resp.status(),
            });
        }
        resp.body()
            .limit(limit)
            .await
            .map_err(|e| unreachable(format!("reading the body: {e}")))
    };
    // The client timeout covers the head; this one covers the body as well.
    match tokio::time::timeout(timeout, fetch).await {
        Ok(result) => result,
        Err(_) => Err(unreachable(format!("no answer within {timeout:?}"))),
    }
}
