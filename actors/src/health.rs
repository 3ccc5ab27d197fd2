//! The health check of a ready instance: `GET /global/health` with its credentials.

use std::cell::OnceCell;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt as _;

use crate::busy;
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

/// What every backend asks a ready OpenCode (is it healthy, is an agent at work), on one
/// client made on first use (on the actor thread, where every instance lives).
pub struct Questions {
    timeout: Duration,
    client: OnceCell<awc::Client>,
}

impl Questions {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            client: OnceCell::new(),
        }
    }

    fn client(&self) -> awc::Client {
        self.client.get_or_init(|| client(self.timeout)).clone()
    }

    pub fn probe(&self, upstream: &Upstream) -> LocalBoxFuture<'static, Result<(), String>> {
        let (client, upstream) = (self.client(), upstream.clone());
        async move { probe(&client, &upstream).await.map_err(|e| e.to_string()) }.boxed_local()
    }

    pub fn busy_sessions(
        &self,
        upstream: &Upstream,
    ) -> LocalBoxFuture<'static, Result<u32, String>> {
        let (client, upstream) = (self.client(), upstream.clone());
        async move {
            busy::busy_sessions(&client, &upstream)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed_local()
    }
}
