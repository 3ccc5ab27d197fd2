//! The model-API relay: the organisation's keys never leave the gateway.
//!
//! Each instance's OpenCode is configured to send the calls of every relayed provider to
//! `http://127.0.0.1:<relay>/<provider>/…` with a token of its own start as the key (see
//! `chamberlain_actors::llm`). Here, on a loopback listener of its own: the token is checked
//! (it names the user), the user's daily budget is checked, the real key is put in its place,
//! and the call goes to the provider's real address. The answer streams back chunk by chunk,
//! read on the way for the tokens it reports (`meter.rs`), which are added to the user's day
//! (`usage.rs`) and the metrics.

pub mod meter;
pub mod metrics;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderName};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use chamberlain_actors::llm::{Grants, KeyHeader};
use futures_util::Stream;

use self::meter::Meter;
use self::metrics::LlmMetrics;
use self::usage::UsageBook;

/// Largest request body relayed (a long conversation with its tools and files).
pub const MAX_REQUEST: usize = 32 << 20;

/// How long a provider may take to begin its answer (a call that does not stream answers
/// only once the whole reply is written).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// The provider label of calls that name none of the caller's providers (a client must not
/// be able to make up label values).
const UNKNOWN: &str = "-";

/// What every relay worker shares.
pub struct Relay {
    pub grants: Grants,
    pub usage: Arc<UsageBook>,
    /// `--llm-daily-tokens`; 0: none.
    pub daily_tokens: u64,
    pub metrics: LlmMetrics,
    /// `--llm-price`: model → USD per million input and output tokens.
    pub prices: std::collections::HashMap<String, (f64, f64)>,
    /// Bound on the wait for a provider's answer to begin (its body may take longer).
    pub timeout: Duration,
}

/// One client per worker: providers over TLS (Mozilla roots compiled in) or plain HTTP.
pub struct RelayClient(awc::Client);

impl RelayClient {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = awc::Connector::new().timeout(Duration::from_secs(10));
        if let Ok(tls) = crate::identity::fetch::tls_config() {
            connector = connector.rustls_0_23(tls);
        }
        Self(
            awc::Client::builder()
                .connector(connector)
                .timeout(timeout)
                .disable_redirects()
                .finish(),
        )
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_REQUEST))
        .route("/{provider}/{tail:.*}", web::route().to(relay));
}

/// An error as both OpenAI-style and Anthropic-style clients read it: `error.message`.
fn refuse(status: StatusCode, kind: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({
        "type": "error",
        "error": {"type": kind, "message": message, "code": kind},
    }))
}

/// The token a call presents, in either way SDKs send a key.
fn presented_token(req: &HttpRequest) -> Option<&str> {
    let headers = req.headers();
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Whether the call is a model call. The org key opens much more at a provider (files,
/// batches, fine-tuning, an organisation's admin endpoints, what other users stored there):
/// the relay lends it for model calls only. `tail` is the path under the provider's base URL.
fn is_model_call(method: &actix_web::http::Method, tail: &str) -> bool {
    use actix_web::http::Method;
    let tail = tail.trim_end_matches('/');
    if *method == Method::GET {
        return tail == "models"
            || tail
                .strip_prefix("models/")
                .is_some_and(|id| !id.is_empty() && !id.contains(".."));
    }
    *method == Method::POST
        && matches!(
            tail,
            "chat/completions"
                | "completions"
                | "responses"
                | "embeddings"
                | "messages"
                | "messages/count_tokens"
        )
}

/// Request headers that are the connection's, the key's or ours to set.
fn crosses(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "authorization"
            | "x-api-key"
            | "connection"
            | "keep-alive"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "accept-encoding"
    )
}

async fn relay(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: Bytes,
    relay: web::Data<Relay>,
    client: web::Data<RelayClient>,
) -> HttpResponse {
    let (provider_id, tail) = path.into_inner();
    let Some(token) = presented_token(&req) else {
        relay.metrics.request(UNKNOWN, "unauthorized");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "this relay takes only the gateway's per-instance token",
        );
    };
    let Some(grant) = relay.grants.get(token).map(|g| g.clone()) else {
        relay.metrics.request(UNKNOWN, "unauthorized");
        tracing::warn!(provider = %provider_id, "model call with an unknown or expired relay token");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "unknown or expired instance token",
        );
    };
    let Some(provider) = grant.providers.get(&provider_id) else {
        relay.metrics.request(UNKNOWN, "unknown_provider");
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!("the organisation has no key for provider {provider_id:?}"),
        );
    };
    if !is_model_call(req.method(), &tail) {
        relay.metrics.request(&provider_id, "refused");
        tracing::warn!(user = %grant.user_id, provider = %provider_id, method = %req.method(), path = %tail, "a call through the relay that is not a model call was refused");
        return refuse(
            StatusCode::FORBIDDEN,
            "permission_error",
            "the gateway lends the organisation's key for model calls only",
        );
    }
    if let Err(over) = relay.usage.check(&grant.user_id, relay.daily_tokens) {
        relay.metrics.request(&provider_id, "over_budget");
        tracing::info!(user = %grant.user_id, provider = %provider_id, used = over.used, budget = over.budget, "model call refused: daily budget reached");
        // 403: OpenCode ends the turn and shows the message (a 429 would be retried).
        return refuse(StatusCode::FORBIDDEN, "permission_error", &over.message());
    }

    let mut url = format!("{}/{}", provider.upstream, tail);
    if let Some(query) = req.uri().query() {
        url.push('?');
        url.push_str(query);
    }
    let body =
        if req.method() == actix_web::http::Method::POST && tail.ends_with("chat/completions") {
            meter::ask_for_usage(&body).map_or(body, Bytes::from)
        } else {
            body
        };
    let mut upstream = client
        .0
        .request(req.method().clone(), &url)
        .timeout(relay.timeout);
    for (name, value) in req.headers() {
        if crosses(name) {
            upstream = upstream.append_header((name.clone(), value.clone()));
        }
    }
    // The answer is read on the way: it must come as the provider wrote it, uncompressed.
    upstream = upstream.insert_header((header::ACCEPT_ENCODING, "identity"));
    upstream = match provider.header {
        KeyHeader::Bearer => {
            upstream.insert_header((header::AUTHORIZATION, format!("Bearer {}", provider.key)))
        }
        KeyHeader::XApiKey => upstream.insert_header(("x-api-key", provider.key.as_str())),
    };
    let response = match upstream.send_body(body).await {
        Ok(r) => r,
        Err(e) => {
            relay.metrics.request(&provider_id, "unreachable");
            tracing::warn!(user = %grant.user_id, provider = %provider_id, error = %e, "the provider could not be reached");
            return refuse(
                StatusCode::BAD_GATEWAY,
                "api_error",
                &format!("the gateway could not reach provider {provider_id}: {e}"),
            );
        }
    };
    let status = response.status();
    relay.metrics.request(
        &provider_id,
        if status.is_success() {
            "ok"
        } else {
            "upstream_error"
        },
    );
    let event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut answer = HttpResponse::build(status);
    for (name, value) in response.headers() {
        if !matches!(
            name.as_str(),
            "connection" | "keep-alive" | "transfer-encoding" | "content-length" | "te" | "trailer"
        ) {
            answer.append_header((name.clone(), value.clone()));
        }
    }
    let tally = Tally {
        relay: relay.into_inner(),
        user: grant.user_id.clone(),
        provider: provider_id,
        meter: Some(Meter::new(event_stream)),
        counted: status.is_success(),
    };
    answer.streaming(Metered {
        inner: response,
        tally,
    })
}

/// Adds what an answer used to the user's day when it ends (or its reader goes away).
struct Tally {
    relay: Arc<Relay>,
    user: String,
    provider: String,
    meter: Option<Meter>,
    /// Only answers that succeeded count as a request.
    counted: bool,
}

impl Drop for Tally {
    fn drop(&mut self) {
        let Some(meter) = self.meter.take() else {
            return;
        };
        let used = meter.finish();
        if !self.counted && !used.seen {
            return;
        }
        let model = used.model.as_deref().unwrap_or("unknown");
        self.relay
            .metrics
            .tokens(&self.provider, model, used.input_tokens, used.output_tokens);
        let cost = self.relay.prices.get(model).map(|(input, output)| {
            (used.input_tokens as f64 * input + used.output_tokens as f64 * output) / 1e6
        });
        self.relay
            .usage
            .record(&self.user, used.input_tokens, used.output_tokens, cost);
        tracing::debug!(user = %self.user, provider = %self.provider, model, input = used.input_tokens, output = used.output_tokens, "model call counted");
    }
}

/// The provider's answer on its way to OpenCode, read as it passes.
struct Metered<S> {
    inner: S,
    tally: Tally,
}

impl<S, E> Stream for Metered<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &polled {
            if let Some(meter) = self.tally.meter.as_mut() {
                meter.feed(chunk);
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::Method;

    #[test]
    fn only_model_calls_are_relayed() {
        for (method, tail) in [
            (Method::POST, "chat/completions"),
            (Method::POST, "responses"),
            (Method::POST, "messages"),
            (Method::POST, "messages/count_tokens"),
            (Method::POST, "embeddings"),
            (Method::GET, "models"),
            (Method::GET, "models/gpt-4o"),
        ] {
            assert!(is_model_call(&method, tail), "{method} {tail}");
        }
        for (method, tail) in [
            (Method::GET, "files"),
            (Method::POST, "files"),
            (Method::POST, "batches"),
            (Method::POST, "fine_tuning/jobs"),
            (Method::GET, "organization/users"),
            (Method::DELETE, "models/ft-x"),
            (Method::GET, "chat/completions"),
            (Method::GET, "models/../files"),
            (Method::POST, "chat/completions/../../files"),
        ] {
            assert!(!is_model_call(&method, tail), "{method} {tail}");
        }
    }
}
