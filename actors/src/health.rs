//! The health check of a ready instance: `GET /global/health` with its credentials.

use std::time::Duration;

use crate::status::Upstream;

const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health check request failed: {0}")]
    Request(String),
    #[error("health check answered {0}")]
    Status(u16),
}

pub fn client(timeout: Duration) -> awc::Client {
    awc::Client::builder()
        .timeout(timeout)
        .disable_redirects()
        .finish()
}

pub async fn probe(client: &awc::Client, upstream: &Upstream) -> Result<(), HealthError> {
    let url = format!("http://{}/global/health", upstream.addr);
    // A fresh connection per probe (every few seconds at most): a pooled one would stay open
    // between probes and could be a stale one OpenCode already closed.
    let mut response = client
        .get(url)
        .insert_header(("authorization", &*upstream.authorization))
        .force_close()
        .send()
        .await
        .map_err(|e| HealthError::Request(e.to_string()))?;
    let _ = response.body().limit(MAX_BODY).await;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(HealthError::Status(response.status().as_u16()))
    }
}
