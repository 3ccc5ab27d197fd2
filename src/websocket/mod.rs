//! Websocket upgrades (OpenCode's terminals, `/pty/{id}/connect`) bridged to the caller's own
//! OpenCode: one `SocketBridge` actor per client socket.
//!
//! The upstream connection is made first, so a failure is an ordinary HTTP error (502, 503,
//! 504, or OpenCode's own status such as 404 for an unknown terminal) instead of a socket
//! that is accepted and then closed.

mod bridge;
mod inbound;
mod outbox;

use std::time::Duration;

use actix_http::ws::{hash_key, Codec};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use awc::error::{SendRequestError, WsClientError};
use futures_util::StreamExt;

use std::sync::Arc;

use chamberlain_actors::{Activity, Upstream};

use crate::connections::ConnectionGuard;
use crate::errors::GatewayError;
use crate::gateway::Gateway;
use crate::upstream::headers::{self, RequestFilter};
use bridge::{BridgeConfig, BridgeParts, CountingSink, SocketBridge};
use inbound::ClientFrames;
use outbox::Outbox;

/// Most time allowed for OpenCode to accept a websocket (OpenCode never answers a handshake
/// for a terminal it does not know); `--upstream-timeout` if shorter.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers of the client's handshake that belong to the client's hop only.
const HANDSHAKE_ONLY: &[&str] = &[
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    "origin",
];

fn upstream_error(e: WsClientError, timeout: Duration) -> GatewayError {
    match e {
        WsClientError::InvalidResponseStatus(status)
            if status.is_client_error() && status != StatusCode::UNAUTHORIZED =>
        {
            GatewayError::UpstreamStatus {
                status,
                message: format!("OpenCode refused the websocket ({status})"),
            }
        }
        WsClientError::SendRequest(
            e @ (SendRequestError::Connect(_) | SendRequestError::Timeout),
        ) => crate::upstream::send_error(e, timeout),
        other => GatewayError::Upstream(format!("websocket handshake failed: {other}")),
    }
}

/// Refuses a malformed handshake before anything is woken or held.
pub fn check_handshake(req: &HttpRequest) -> Result<(), GatewayError> {
    actix_http::ws::verify_handshake(req.head())
        .map_err(|e| GatewayError::BadRequest(format!("invalid websocket handshake: {e}")))
}

/// One client socket to bridge to a ready instance (the proxy's forward phase for a
/// handshake that passed [`check_handshake`]).
pub struct Bridge<'a> {
    pub gateway: &'a Gateway,
    pub client: &'a awc::Client,
    pub upstream: &'a Upstream,
    pub activity: &'a Arc<Activity>,
    pub user: &'a str,
    /// Counts against the user's `--max-user-connections` while the socket is open.
    pub connection: ConnectionGuard,
}

impl Bridge<'_> {
    /// Connects to OpenCode, then answers the client's handshake and starts the bridge.
    pub async fn open(
        self,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<HttpResponse, GatewayError> {
        let Bridge {
            gateway,
            client,
            upstream,
            activity,
            user,
            connection,
        } = self;
        let cfg = &gateway.cfg.ws;
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let mut forwarded = HeaderMap::new();
        headers::for_upstream(
            req,
            &mut forwarded,
            &RequestFilter::new(gateway, false),
            &upstream.authorization,
        );
        let mut request = client
            .ws(format!("ws://{}{path}", upstream.addr))
            .max_frame_size(cfg.max_frame);
        for (name, value) in forwarded.iter() {
            if !HANDSHAKE_ONLY.contains(&name.as_str()) {
                request = request.header(name.clone(), value.clone());
            }
        }
        let timeout = gateway.cfg.upstream_timeout.min(MAX_CONNECT_TIMEOUT);
        let (response, framed) = tokio::time::timeout(timeout, request.connect())
            .await
            .map_err(|_| GatewayError::UpstreamTimeout(timeout))?
            .map_err(|e| upstream_error(e, timeout))?;

        let key = req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| GatewayError::BadRequest("missing Sec-WebSocket-Key".to_owned()))?;
        let accept = hash_key(key.as_bytes());
        let mut reply = HttpResponse::SwitchingProtocols();
        reply.upgrade("websocket").insert_header((
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_bytes(&accept)
                .map_err(|e| GatewayError::Internal(format!("accept key: {e}")))?,
        ));
        if let Some(protocol) = response.headers().get(header::SEC_WEBSOCKET_PROTOCOL) {
            reply.insert_header((header::SEC_WEBSOCKET_PROTOCOL, protocol.clone()));
        }

        let (sink, stream) = framed.split();
        let (sink, upstream_pending) = CountingSink::new(sink);
        let (outbox, body) = Outbox::new();
        SocketBridge::start(
            BridgeParts {
                user: user.to_owned(),
                cfg: BridgeConfig {
                    ping_interval: cfg.ping_interval,
                    client_timeout: cfg.client_timeout,
                    max_buffer: cfg.max_buffer,
                    output_limit: cfg.output_limit,
                },
                activity: activity.clone(),
                outbox,
                upstream: sink,
                upstream_pending,
                metrics: gateway.ws_metrics.clone(),
                stopping: upstream.stopping.clone(),
                shutdown: gateway.shutdown_token(),
                connection,
            },
            ClientFrames::new(payload, Codec::new().max_size(cfg.max_frame)),
            stream,
        );
        tracing::debug!(user, path, "websocket bridged");
        Ok(reply.streaming(body))
    }
}
