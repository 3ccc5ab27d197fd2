//! Forwarding one HTTP request to an instance and streaming the answer back.
//!
//! Bodies stream in both directions with the client's and OpenCode's pace (no whole-body
//! buffering); nothing is decompressed; redirects are passed through, not followed.

use std::time::{Duration, Instant};

use actix_web::body::{BodyStream, BoxBody, MessageBody, SizedStream};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use awc::error::SendRequestError;
use chamberlain_actors::{ActivityGuard, Upstream};

use super::streams::{Held, SseRelay};
use crate::connections::ConnectionGuard;
use crate::errors::GatewayError;
use crate::metrics::HttpMetrics;
use crate::upstream::headers::{self, RequestFilter};
use crate::upstream::InstanceClient;

pub struct Forward<'a> {
    pub client: &'a InstanceClient,
    pub upstream: &'a Upstream,
    pub filter: RequestFilter<'a>,
    pub timeout: Duration,
    pub sse_keepalive: Duration,
    pub metrics: &'a HttpMetrics,
    /// Held while the response body streams; dropped early for event streams, which must
    /// not count as activity.
    pub activity: Option<ActivityGuard>,
    /// Counts against the user's `--max-user-connections` until the body is done.
    pub connection: ConnectionGuard,
}

fn content_length(headers: &header::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn answers_with_event_stream(headers: &header::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

impl Forward<'_> {
    fn request(&self, req: &HttpRequest) -> awc::ClientRequest {
        let uri = self.client.uri(req.uri().path_and_query());
        let mut request = self
            .client
            .client
            .request(req.method().clone(), uri)
            .timeout(self.timeout);
        headers::for_upstream(
            req,
            request.headers_mut(),
            &self.filter,
            &self.upstream.authorization,
        );
        request
    }

    pub async fn send(
        self,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<HttpResponse, GatewayError> {
        let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
        let length = content_length(req.headers());
        let bodiless = !chunked && length.unwrap_or(0) == 0;
        // A kept-alive connection OpenCode has just closed fails before anything is answered;
        // a request that can be sent again (no body, safe method) then gets a fresh one.
        let retryable =
            bodiless && matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        let started = Instant::now();
        let mut payload = Some(payload);
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let request = self.request(req);
            let sending = match (length, payload.take()) {
                (Some(len), Some(body)) if len > 0 => {
                    request.send_body(SizedStream::new(len, body))
                }
                (None, Some(body)) if chunked => request.send_stream(body),
                _ => request.send(),
            };
            let result = tokio::select! {
                result = sending => result,
                _ = self.upstream.stopping.cancelled() => {
                    return Err(GatewayError::Unavailable {
                        message: "the instance is stopping".to_owned(),
                        retry_after: crate::errors::RETRY_STARTING,
                        state: chamberlain_actors::InstanceState::Stopping,
                    });
                }
            };
            match result {
                Err(SendRequestError::Send(_) | SendRequestError::Response(_))
                    if retryable && attempt == 1 =>
                {
                    tracing::debug!(path = req.path(), "reused connection failed; retrying");
                }
                other => break other,
            }
        };
        let response = response.map_err(|e| match e {
            SendRequestError::Connect(e) => GatewayError::UpstreamConnect(e.to_string()),
            SendRequestError::Timeout => GatewayError::UpstreamTimeout(self.timeout),
            other => GatewayError::Upstream(other.to_string()),
        })?;
        self.metrics
            .upstream_latency(started.elapsed().as_secs_f64());

        let status = response.status();
        let no_body = req.method() == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status.is_informational();
        let event_stream = answers_with_event_stream(response.headers());
        let length = content_length(response.headers());
        // Copied before the response becomes the body.
        let mut out_headers = header::HeaderMap::new();
        headers::copy_response_headers(response.headers(), &mut out_headers);

        let body: BoxBody = if event_stream && !no_body {
            drop(self.activity);
            let relay = SseRelay::new(
                response,
                self.sse_keepalive,
                self.upstream.stopping.clone(),
                self.metrics.open_stream(),
            );
            BodyStream::new(Held::new(relay, self.connection)).boxed()
        } else {
            match (no_body, length) {
                (true, Some(len)) if req.method() == Method::HEAD => SizedStream::new(
                    len,
                    futures_util::stream::empty::<Result<_, GatewayError>>(),
                )
                .boxed(),
                (true, _) => actix_web::body::None::new().boxed(),
                (false, Some(len)) => {
                    SizedStream::new(len, Held::new(response, (self.activity, self.connection)))
                        .boxed()
                }
                (false, None) => {
                    BodyStream::new(Held::new(response, (self.activity, self.connection))).boxed()
                }
            }
        };

        if event_stream {
            out_headers.insert(
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            );
            if !out_headers.contains_key(header::CACHE_CONTROL) {
                out_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            }
        }
        let mut out = HttpResponse::with_body(status, body);
        *out.headers_mut() = out_headers;
        Ok(out)
    }
}
