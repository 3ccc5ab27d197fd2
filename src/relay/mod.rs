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
mod rules;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use chamberlain_actors::llm::{GrantLookup, Grants, KeyHeader};
use dashmap::DashMap;
use futures_util::Stream;

use self::meter::{Meter, RequestCheck};
use self::metrics::LlmMetrics;
use self::usage::UsageBook;

/// Made once: looked up by text, an unknown name is parsed and copied on every call.
const X_API_KEY: header::HeaderName = header::HeaderName::from_static("x-api-key");

/// Largest request body relayed (a long conversation with its tools and files).
pub const MAX_REQUEST: usize = 32 << 20;

/// How long a client may take to send its request body.
const BODY_DEADLINE: Duration = Duration::from_secs(120);

/// Model calls one user may have under way at once: more wait for a retry (429), so one
/// user cannot take every connection to a provider, nor run many calls past the budget
/// before their use is known.
pub const MAX_CALLS_PER_USER: u32 = 8;

/// How long a provider may take to begin its answer (a call that does not stream answers
/// only once the whole reply is written).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// The provider label of calls that name none of the caller's providers (a client must not
/// be able to make up label values).
const UNKNOWN: &str = "-";

/// What every relay worker shares.
pub struct Relay {
    pub grants: Grants,
    /// Where grants this gateway does not hold are found (other replicas' starts).
    pub lookup: Option<Arc<dyn GrantLookup>>,
    pub usage: Arc<UsageBook>,
    /// `--llm-daily-tokens`; 0: none.
    pub daily_tokens: u64,
    pub metrics: LlmMetrics,
    /// `--llm-price`: model → USD per million input and output tokens.
    pub prices: std::collections::HashMap<String, (f64, f64)>,
    /// Calls under way per user.
    pub calls: DashMap<String, u32>,
    /// Bound on the wait for a provider's answer to begin (its body may take longer).
    pub timeout: Duration,
}

/// One client per worker: providers over TLS (Mozilla roots compiled in) or plain HTTP.
pub struct RelayClient(awc::Client);

impl RelayClient {
    pub fn new(timeout: Duration) -> Self {
        // No limit of its own on connections: each user's calls are (`MAX_CALLS_PER_USER`).
        let mut connector = awc::Connector::new()
            .timeout(Duration::from_secs(10))
            .limit(0);
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
    cfg.route("/{provider}/{tail:.*}", web::route().to(relay));
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
        .get(X_API_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A call under way, counted against its user's `MAX_CALLS_PER_USER` until dropped.
struct Call {
    relay: Arc<Relay>,
    user: String,
}

impl Call {
    fn begin(relay: &Arc<Relay>, user: &str) -> Option<Call> {
        let mut calls = relay.calls.entry(user.to_owned()).or_insert(0);
        if *calls >= MAX_CALLS_PER_USER {
            return None;
        }
        *calls += 1;
        Some(Call {
            relay: Arc::clone(relay),
            user: user.to_owned(),
        })
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.relay.calls.remove_if_mut(&self.user, |_, calls| {
            *calls = calls.saturating_sub(1);
            *calls == 0
        });
    }
}

/// The request body, read only once the call is known to be allowed (a caller without a
/// token never makes the gateway hold a body), bounded in size and time.
async fn read_body(payload: web::Payload) -> Result<Bytes, HttpResponse> {
    match tokio::time::timeout(BODY_DEADLINE, payload.to_bytes_limited(MAX_REQUEST)).await {
        Ok(Ok(Ok(body))) => Ok(body),
        Ok(Ok(Err(e))) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("the request body could not be read: {e}"),
        )),
        Ok(Err(_)) => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "the request body is larger than the relay takes",
        )),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "the request body did not arrive in time",
        )),
    }
}

async fn relay(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    relay: web::Data<Relay>,
    client: web::Data<RelayClient>,
) -> HttpResponse {
    let relay = relay.into_inner();
    let (provider_id, tail) = path.into_inner();
    if !rules::is_provider_id(&provider_id) {
        relay.metrics.request(UNKNOWN, "unknown_provider");
        return refuse(StatusCode::NOT_FOUND, "not_found_error", "no such provider");
    }
    let Some(token) = presented_token(&req) else {
        relay.metrics.request(UNKNOWN, "unauthorized");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "this relay takes only the gateway's per-instance token",
        );
    };
    let mut grant = relay.grants.get(token).map(|g| g.clone());
    if let (None, Some(lookup)) = (&grant, &relay.lookup) {
        match lookup
            .find(token, req.peer_addr().map(|peer| peer.ip()))
            .await
        {
            Ok(found) => grant = found,
            Err(e) => {
                relay.metrics.request(UNKNOWN, "unavailable");
                tracing::warn!(provider = %provider_id, error = %e, "cannot look up a relay token");
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "api_error",
                    "the gateway cannot check this token now; try again",
                );
            }
        }
    }
    let Some(grant) = grant else {
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
    if !rules::is_model_call(req.method(), &tail) {
        relay.metrics.request(&provider_id, "refused");
        tracing::warn!(user = %grant.user_id, provider = %provider_id, method = %req.method(), path = ?tail, "a call through the relay that is not a model call was refused");
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
    let Some(call) = Call::begin(&relay, &grant.user_id) else {
        relay.metrics.request(&provider_id, "too_many");
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "too many model calls under way at once for this user; retry shortly",
        );
    };
    let body = match read_body(payload).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let body = match meter::check_request(&tail, &body) {
        RequestCheck::Keep => body,
        RequestCheck::Replace(changed) => Bytes::from(changed),
        RequestCheck::Refuse(why) => {
            relay.metrics.request(&provider_id, "refused");
            return refuse(StatusCode::FORBIDDEN, "permission_error", why);
        }
    };
    let request_bytes = body.len();

    let mut url = format!("{}/{}", provider.upstream, tail);
    if let Some(query) = req.uri().query() {
        url.push('?');
        url.push_str(query);
    }
    let mut upstream = client
        .0
        .request(req.method().clone(), &url)
        .timeout(relay.timeout);
    for (name, value) in req.headers() {
        if rules::crosses(name) {
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
        call,
        user: grant.user_id.clone(),
        provider: provider_id,
        meter: Some(Meter::new(event_stream)),
        succeeded: status.is_success(),
        request_bytes,
        answer_bytes: 0,
    };
    answer.streaming(Metered {
        inner: response,
        tally,
    })
}

/// Adds what an answer used to the user's day when it ends (or its reader goes away).
struct Tally {
    /// Holds the user's place among their calls under way until the answer is done.
    call: Call,
    user: String,
    provider: String,
    meter: Option<Meter>,
    succeeded: bool,
    request_bytes: usize,
    answer_bytes: usize,
}

/// Bytes per token when an answer reports no use (a common rule of thumb for English text
/// and JSON; the estimate only keeps a budget from being dodged).
const BYTES_PER_TOKEN: usize = 4;

impl Drop for Tally {
    fn drop(&mut self) {
        let Some(meter) = self.meter.take() else {
            return;
        };
        let mut used = meter.finish();
        if !used.seen {
            if !self.succeeded {
                return;
            }
            // Cut short, too large to read, or a provider that does not say: charged by size.
            used.input_tokens = (self.request_bytes / BYTES_PER_TOKEN) as u64;
            used.output_tokens = (self.answer_bytes / BYTES_PER_TOKEN) as u64;
            tracing::info!(user = %self.user, provider = %self.provider, input = used.input_tokens, output = used.output_tokens, "a model answer reported no use; charged an estimate from its size");
        }
        let relay = &self.call.relay;
        let model = used.model.as_deref().unwrap_or("unknown");
        relay
            .metrics
            .tokens(&self.provider, model, used.input_tokens, used.output_tokens);
        let cost = relay.prices.get(model).map(|(input, output)| {
            (used.input_tokens as f64 * input + used.output_tokens as f64 * output) / 1e6
        });
        relay
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
            let tally = &mut self.tally;
            tally.answer_bytes += chunk.len();
            if let Some(meter) = tally.meter.as_mut() {
                meter.feed(chunk);
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> (tempfile::TempDir, Arc<Relay>) {
        let dir = tempfile::tempdir().unwrap();
        let usage = Arc::new(UsageBook::open(dir.path().join("u.json")).unwrap());
        let relay = Arc::new(Relay {
            grants: Grants::default(),
            lookup: None,
            usage,
            daily_tokens: 0,
            metrics: LlmMetrics::default(),
            prices: [("m".to_owned(), (1.0, 2.0))].into(),
            calls: DashMap::new(),
            timeout: ANSWER_TIMEOUT,
        });
        (dir, relay)
    }

    #[test]
    fn calls_under_way_are_bounded_per_user() {
        let (_dir, relay) = relay();
        let held: Vec<Call> = (0..MAX_CALLS_PER_USER)
            .map(|_| Call::begin(&relay, "alice").expect("room"))
            .collect();
        assert!(Call::begin(&relay, "alice").is_none());
        assert!(Call::begin(&relay, "bob").is_some(), "others unaffected");
        drop(held);
        assert!(relay.calls.get("alice").is_none(), "forgotten at zero");
        assert!(Call::begin(&relay, "alice").is_some());
    }

    fn tally(relay: &Arc<Relay>, succeeded: bool, answer: &[u8]) {
        let mut tally = Tally {
            call: Call::begin(relay, "alice").expect("room"),
            user: "alice".into(),
            provider: "p".into(),
            meter: Some(Meter::new(true)),
            succeeded,
            request_bytes: 400,
            answer_bytes: 0,
        };
        tally.answer_bytes += answer.len();
        if let Some(meter) = tally.meter.as_mut() {
            meter.feed(answer);
        }
    }

    #[test]
    fn use_is_what_the_answer_reports_or_an_estimate_from_sizes() {
        let (_dir, relay) = relay();
        tally(
            &relay,
            true,
            b"data: {\"model\":\"m\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
        );
        let day = relay.usage.today("alice");
        assert_eq!(
            (day.requests, day.input_tokens, day.output_tokens),
            (1, 3, 4)
        );
        assert_eq!(day.cost_usd, Some(11e-6));
        // No usage reported (cut short, say): 400 request bytes, 40 answer bytes.
        tally(&relay, true, &[b'x'; 40]);
        let day = relay.usage.today("alice");
        assert_eq!(
            (day.requests, day.input_tokens, day.output_tokens),
            (2, 103, 14)
        );
        // A failed call that reports nothing costs nothing.
        tally(&relay, false, b"{\"error\":{}}");
        assert_eq!(relay.usage.today("alice").requests, 2);
    }
}
