//! Forwarding one HTTP request to an instance and streaming the answer back.
//!
//! Bodies stream in both directions with the client's and OpenCode's pace (no whole-body
//! buffering); nothing is decompressed; redirects are passed through, not followed.

use std::time::{Duration, Instant};

use actix_web::body::{BodyStream, BoxBody, MessageBody, SizedStream};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use awc::error::{ConnectError, SendRequestError};
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
                // A reset shows as a failed send or read; a close as the end of the stream
                // before an answer, which awc reports as `Connect(Disconnected)`.
                Err(
                    SendRequestError::Send(_)
                    | SendRequestError::Response(_)
                    | SendRequestError::Connect(ConnectError::Disconnected),
                ) if retryable && attempt == 1 => {
                    tracing::debug!(path = req.path(), "reused connection failed; retrying");
                }
                other => break other,
            }
        };
        let response = response.map_err(|e| crate::upstream::send_error(e, self.timeout))?;
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use actix_web::test::TestRequest;
    use actix_web::FromRequest;
    use chamberlain_actors::InstanceMetrics;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::connections::UserConnections;
    use crate::forwarded::TrustedProxies;
    use crate::identity::cookies::CookieNames;
    use crate::metrics::Metrics;
    use crate::upstream::UpstreamClients;

    /// How the upstream ends a kept-alive connection on its second request, unanswered:
    /// the race a reused connection loses when OpenCode closes it just as the gateway sends.
    #[derive(Clone, Copy, Debug)]
    enum Ending {
        /// Reads the request, then closes (the client reads end of file).
        Close,
        /// Resets the connection without reading (the client's read fails).
        Reset,
    }

    /// Reads one request head; `None` at end of file.
    async fn read_head(stream: &mut TcpStream) -> Option<String> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return None,
            }
        }
        Some(String::from_utf8_lossy(&head).into_owned())
    }

    /// A request that reached the upstream and was reset unread.
    const UNREAD: &str = "(unread)";

    /// What the upstream was sent: each request head with the number of its connection
    /// (from 1).
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<(usize, String)>>>);

    impl Seen {
        fn record(&self, connection: usize, head: String) {
            self.0.lock().unwrap().push((connection, head));
        }

        /// The heads a connection was sent.
        fn on(&self, connection: usize) -> Vec<String> {
            let seen = self.0.lock().unwrap();
            let heads = seen.iter().filter(|(c, _)| *c == connection);
            heads.map(|(_, head)| head.clone()).collect()
        }

        fn connections(&self) -> usize {
            let seen = self.0.lock().unwrap();
            seen.iter().map(|(c, _)| *c).max().unwrap_or(0)
        }
    }

    /// Answers each connection's first request with the connection's number, then ends the
    /// connection on its next request as `ending` says.
    async fn upstream(ending: Ending) -> (SocketAddr, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let record = seen.clone();
        actix_web::rt::spawn(async move {
            let mut number = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                number += 1;
                let seen = record.clone();
                actix_web::rt::spawn(async move {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    seen.record(number, head);
                    let body = number.to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    match ending {
                        Ending::Close => {
                            if let Some(head) = read_head(&mut stream).await {
                                seen.record(number, head);
                            }
                        }
                        Ending::Reset => {
                            // Waits for the request's bytes, leaves them unread: closing
                            // then sends a reset.
                            if stream.peek(&mut [0u8; 1]).await.is_ok_and(|n| n > 0) {
                                seen.record(number, UNREAD.to_owned());
                            }
                            let _ =
                                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    struct Setup {
        clients: UpstreamClients,
        upstream: Upstream,
        metrics: Metrics,
        connections: Arc<UserConnections>,
        cookies: CookieNames,
        proxies: TrustedProxies,
    }

    impl Setup {
        fn new(addr: SocketAddr) -> Setup {
            Setup {
                clients: UpstreamClients::new(Duration::from_secs(10)),
                upstream: Upstream {
                    addr,
                    authorization: Arc::from("Basic b3BlbmNvZGU6dGVzdA=="),
                    generation: 1,
                    stopping: CancellationToken::new(),
                },
                metrics: Metrics::new(&InstanceMetrics::default()),
                connections: UserConnections::new(16),
                cookies: CookieNames::default(),
                proxies: TrustedProxies::none(),
            }
        }

        /// Forwards `req` (with `body`) and reads the whole answer.
        async fn forward(
            &self,
            req: TestRequest,
            body: &'static [u8],
        ) -> Result<(StatusCode, web::Bytes), GatewayError> {
            let mut req = req
                .peer_addr("127.0.0.1:40000".parse().unwrap())
                .set_payload(body)
                .to_srv_request();
            if req.headers().contains_key(header::TRANSFER_ENCODING) {
                // Sent in chunks, without the length `set_payload` puts in.
                req.headers_mut().remove(header::CONTENT_LENGTH);
            }
            let (req, mut payload) = req.into_parts();
            let payload = web::Payload::from_request(&req, &mut payload)
                .await
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
            let client = self.clients.get(&self.upstream);
            let forward = Forward {
                client: &client,
                upstream: &self.upstream,
                filter: RequestFilter {
                    identity_headers: &[],
                    identity_cookies: &self.cookies,
                    passive: false,
                    proxies: &self.proxies,
                },
                timeout: Duration::from_secs(10),
                sse_keepalive: Duration::from_secs(30),
                metrics: &self.metrics.http,
                activity: None,
                connection: self.connections.open("someone")?,
            };
            let response = forward.send(&req, payload).await?;
            let status = response.status();
            let body = actix_web::body::to_bytes(response.into_body())
                .await
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
            Ok((status, body))
        }
    }

    #[actix_web::test]
    async fn a_safe_request_on_a_connection_the_instance_just_closed_is_sent_again() {
        for ending in [Ending::Close, Ending::Reset] {
            let (addr, seen) = upstream(ending).await;
            let setup = Setup::new(addr);
            let first = setup.forward(TestRequest::get().uri("/a"), b"").await;
            assert_eq!(first.unwrap(), (StatusCode::OK, web::Bytes::from("1")));
            let second = setup.forward(TestRequest::get().uri("/b"), b"").await;
            let second = second.unwrap_or_else(|e| panic!("{ending:?}: {e}"));
            assert_eq!(
                second,
                (StatusCode::OK, web::Bytes::from("2")),
                "{ending:?}"
            );
            // It went on the kept-alive connection first, which ended it unanswered, and
            // then on a new one.
            assert_eq!(seen.on(1).len(), 2, "{ending:?}: {:?}", seen.on(1));
            let retried = seen.on(2);
            assert!(
                retried.len() == 1 && retried[0].starts_with("GET /b "),
                "{ending:?}: {retried:?}"
            );
        }
    }

    #[actix_web::test]
    async fn a_request_with_a_body_is_never_sent_twice() {
        for ending in [Ending::Close, Ending::Reset] {
            let with_bodies = [
                TestRequest::post()
                    .uri("/b")
                    .insert_header((header::CONTENT_LENGTH, "4")),
                TestRequest::get()
                    .uri("/b")
                    .insert_header((header::CONTENT_LENGTH, "4")),
                TestRequest::get()
                    .uri("/b")
                    .insert_header((header::TRANSFER_ENCODING, "chunked")),
            ];
            for req in with_bodies {
                let (addr, seen) = upstream(ending).await;
                let setup = Setup::new(addr);
                let first = setup.forward(TestRequest::get().uri("/a"), b"").await;
                assert_eq!(first.unwrap().0, StatusCode::OK);
                let err = setup.forward(req, b"body").await.expect_err("sent twice");
                assert!(
                    matches!(err, GatewayError::Upstream(_)),
                    "{ending:?}: {err}"
                );
                assert_eq!(seen.on(1).len(), 2, "{ending:?}: {:?}", seen.on(1));
                assert_eq!(seen.connections(), 1, "{ending:?}: sent again");
            }
        }
    }

    #[actix_web::test]
    async fn a_clients_expectation_is_met_by_the_gateway_not_passed_on() {
        let get = TestRequest::get()
            .uri("/a")
            .insert_header((header::EXPECT, "100-continue"));
        let post = TestRequest::post()
            .uri("/b")
            .insert_header((header::EXPECT, "100-continue"))
            .insert_header((header::CONTENT_LENGTH, "4"));
        // Each the first request of an upstream: its connection answers one.
        for (req, body) in [(get, &b""[..]), (post, &b"body"[..])] {
            let (addr, seen) = upstream(Ending::Close).await;
            let answer = Setup::new(addr).forward(req, body).await;
            assert_eq!(answer.unwrap(), (StatusCode::OK, web::Bytes::from("1")));
            let head = &seen.on(1)[0];
            assert!(!head.to_ascii_lowercase().contains("\r\nexpect:"), "{head}");
        }
    }
}
