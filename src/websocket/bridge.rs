//! `SocketBridge`: one actor per bridged websocket, between a client and the user's OpenCode.
//!
//! Messages (all from streams and timers, none from outside)
//! - `FromClient(frame)`: data frames go upstream (and count as the user's activity); pings
//!   are answered here; a close is echoed and passed on.
//! - `FromUpstream(frame)`: data frames are queued for the client byte for byte (and count as
//!   activity, up to `output_limit` without a pause); pings are answered here; a close is
//!   passed on and echoed.
//! - keepalive timer: ping the client every `ping_interval`; no answer for `client_timeout` →
//!   close.
//! - the instance stopping → close 1012 (service restart); the gateway shutting down → 1001.
//!
//! States: open → closing (a close frame has been queued for the client and sent upstream;
//! further data is dropped) → stopped (once the upstream close is flushed, or after a grace).
//! Frames waiting for the client are capped: a client that stops reading is closed with 1013
//! instead of growing the gateway's memory; upstream writes are capped the same way.
//!
//! The actor runs on its own, independent of the response body being polled, so timers and
//! caps keep working while a client is not reading (which is why this is a plain actor and not
//! actix-web-actors' `WebsocketContext`, whose actor only runs inside the body's poll).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use actix_http::ws::{
    CloseCode, CloseReason, Frame, Item, Message as WsMessage, OpCode, Parser, ProtocolError,
};
use bytes::BytesMut;
use bytestring::ByteString;
use chamberlain_actors::Activity;
use futures_util::Sink;
use tokio_util::sync::CancellationToken;

use super::outbox::Outbox;
use crate::connections::ConnectionGuard;
use crate::metrics::{Direction, SocketGauge, WsMetrics};

/// How long a close may take to reach OpenCode before the bridge gives up on it.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct BridgeConfig {
    pub ping_interval: Duration,
    pub client_timeout: Duration,
    /// Bytes that may wait for a slow reader, in either direction, before the socket is closed.
    pub max_buffer: usize,
    /// Output flowing to an open socket (a build in a terminal) is activity for at most this
    /// long without a pause (`--busy-timeout`), so a forgotten `top` cannot hold an
    /// instance for ever.
    pub output_limit: Duration,
}

/// A pause this long in OpenCode's output ends a run of it.
const OUTPUT_GAP: Duration = Duration::from_secs(60);

#[derive(Message)]
#[rtype(result = "()")]
pub struct FromClient(pub Result<Frame, ProtocolError>);

#[derive(Message)]
#[rtype(result = "()")]
pub struct FromUpstream(pub Result<Frame, ProtocolError>);

/// Counts bytes written to the upstream sink but not yet taken by it.
pub struct CountingSink<S> {
    inner: S,
    pending: Rc<Cell<usize>>,
}

impl<S> CountingSink<S> {
    pub fn new(inner: S) -> (Self, Rc<Cell<usize>>) {
        let pending = Rc::new(Cell::new(0));
        (
            Self {
                inner,
                pending: Rc::clone(&pending),
            },
            pending,
        )
    }
}

fn message_len(msg: &WsMessage) -> usize {
    match msg {
        WsMessage::Text(t) => t.len(),
        WsMessage::Binary(b) | WsMessage::Ping(b) | WsMessage::Pong(b) => b.len(),
        WsMessage::Continuation(
            Item::FirstText(b) | Item::FirstBinary(b) | Item::Continue(b) | Item::Last(b),
        ) => b.len(),
        WsMessage::Close(_) | WsMessage::Nop => 0,
    }
}

impl<S: Sink<WsMessage> + Unpin> Sink<WsMessage> for CountingSink<S> {
    type Error = S::Error;

    fn poll_ready(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: WsMessage) -> Result<(), Self::Error> {
        self.pending
            .set(self.pending.get().saturating_sub(message_len(&item)));
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

pub struct SocketBridge<S: Sink<WsMessage> + Unpin + 'static> {
    user: String,
    cfg: BridgeConfig,
    activity: Arc<Activity>,
    outbox: Outbox,
    upstream: SinkWrite<WsMessage, CountingSink<S>>,
    upstream_pending: Rc<Cell<usize>>,
    last_heard: Instant,
    /// A close frame has been queued for the client.
    closing: bool,
    upstream_state: UpstreamState,
    metrics: WsMetrics,
    stopping: CancellationToken,
    shutdown: CancellationToken,
    _open: SocketGauge,
    _connection: ConnectionGuard,
    /// The current run of output: when it began, when the last of it came.
    output: Option<(Instant, Instant)>,
}

pub struct BridgeParts<S: Sink<WsMessage> + Unpin + 'static> {
    pub user: String,
    pub cfg: BridgeConfig,
    pub activity: Arc<Activity>,
    pub outbox: Outbox,
    pub upstream: CountingSink<S>,
    pub upstream_pending: Rc<Cell<usize>>,
    pub metrics: WsMetrics,
    /// The instance's `stopping` token.
    pub stopping: CancellationToken,
    /// The gateway's shutdown token.
    pub shutdown: CancellationToken,
    /// Counts against the user's `--max-user-connections` while the socket is open.
    pub connection: ConnectionGuard,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum UpstreamState {
    Open,
    /// A close frame went to OpenCode: waiting for its echo (when the gateway started the
    /// close) or for the flush of our echo (when OpenCode did); the actor stops then.
    Closing,
    /// OpenCode's side is gone (closed, failed, or ended): nothing more can be sent.
    Gone,
}

/// Who ended a socket, for the close metrics and the log.
#[derive(Clone, Copy)]
enum By {
    Client,
    Upstream,
    Gateway,
}

impl By {
    fn as_str(self) -> &'static str {
        match self {
            By::Client => "client",
            By::Upstream => "upstream",
            By::Gateway => "gateway",
        }
    }
}

fn reason(code: CloseCode, text: &str) -> Option<CloseReason> {
    Some(CloseReason {
        code,
        description: Some(text.to_owned()),
    })
}

fn code_label(reason: &Option<CloseReason>) -> String {
    reason
        .as_ref()
        .map_or_else(|| "none".to_owned(), |r| u16::from(r.code).to_string())
}

impl<S: Sink<WsMessage> + Unpin + 'static> SocketBridge<S> {
    /// Starts the bridge; `client` and `upstream` are the two frame streams.
    pub fn start<C, U>(parts: BridgeParts<S>, client: C, upstream: U) -> Addr<Self>
    where
        C: futures_util::Stream<Item = Result<Frame, ProtocolError>> + 'static,
        U: futures_util::Stream<Item = Result<Frame, ProtocolError>> + 'static,
    {
        use futures_util::StreamExt;
        SocketBridge::create(move |ctx| {
            ctx.add_stream(client.map(FromClient));
            ctx.add_stream(upstream.map(FromUpstream));
            let open = parts.metrics.open_socket();
            SocketBridge {
                user: parts.user,
                cfg: parts.cfg,
                activity: parts.activity,
                outbox: parts.outbox,
                upstream: SinkWrite::new(parts.upstream, ctx),
                upstream_pending: parts.upstream_pending,
                last_heard: Instant::now(),
                closing: false,
                upstream_state: UpstreamState::Open,
                metrics: parts.metrics,
                stopping: parts.stopping,
                shutdown: parts.shutdown,
                _open: open,
                _connection: parts.connection,
                output: None,
            }
        })
    }

    /// Queues one frame for the client, byte for byte as OpenCode framed it.
    fn send_client(&mut self, payload: &[u8], op: OpCode, fin: bool, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        let mut buf = BytesMut::with_capacity(payload.len() + 10);
        Parser::write_message(&mut buf, payload, op, fin, false);
        let buffered = self.outbox.push(buf.freeze());
        if buffered > self.cfg.max_buffer {
            tracing::warn!(
                user = %self.user,
                buffered,
                "websocket client is not reading; closing it"
            );
            // What the client has not taken yet is dropped: it is being disconnected anyway.
            self.outbox.discard();
            self.shut(
                reason(CloseCode::Again, "client too slow"),
                reason(CloseCode::Away, "client too slow"),
                By::Gateway,
                ctx,
            );
        }
    }

    fn send_upstream(&mut self, msg: WsMessage, ctx: &mut Context<Self>) {
        if self.upstream_state != UpstreamState::Open {
            return;
        }
        let len = message_len(&msg);
        self.upstream_pending.set(self.upstream_pending.get() + len);
        if self.upstream.write(msg).is_err() {
            self.upstream_state = UpstreamState::Gone;
            return;
        }
        if self.upstream_pending.get() > self.cfg.max_buffer {
            tracing::warn!(user = %self.user, "OpenCode is not reading its websocket; closing it");
            self.shut(
                reason(CloseCode::Again, "OpenCode too slow"),
                reason(CloseCode::Away, "not reading"),
                By::Gateway,
                ctx,
            );
        }
    }

    /// Ends the socket: a close frame to the client (unless one went already), a close frame
    /// to OpenCode (unless one is on its way or OpenCode is gone), and the actor stops once
    /// that close is flushed (or after a grace period).
    fn shut(
        &mut self,
        to_client: Option<CloseReason>,
        to_upstream: Option<CloseReason>,
        by: By,
        ctx: &mut Context<Self>,
    ) {
        if !self.closing {
            self.metrics.close(&code_label(&to_client), by.as_str());
            tracing::debug!(user = %self.user, by = by.as_str(), code = %code_label(&to_client), "websocket closing");
            let mut buf = BytesMut::new();
            Parser::write_close(&mut buf, to_client, false);
            self.outbox.push(buf.freeze());
            self.outbox.finish();
            self.closing = true;
        }
        match self.upstream_state {
            UpstreamState::Gone => ctx.stop(),
            UpstreamState::Closing => {}
            UpstreamState::Open => {
                self.upstream_state = UpstreamState::Closing;
                let _ = self.upstream.write(WsMessage::Close(to_upstream));
                if matches!(by, By::Upstream) {
                    // Our close answers OpenCode's: the handshake is complete once it is sent.
                    self.upstream.close();
                }
                ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
            }
        }
    }

    fn on_client(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        self.last_heard = Instant::now();
        let data = |len: usize, this: &mut Self| {
            this.activity.touch();
            this.metrics.bytes(Direction::ClientToUpstream, len);
        };
        match frame {
            Frame::Text(bytes) => {
                data(bytes.len(), self);
                match ByteString::try_from(bytes) {
                    Ok(text) => self.send_upstream(WsMessage::Text(text), ctx),
                    Err(_) => self.shut(
                        reason(CloseCode::Invalid, "text frame is not UTF-8"),
                        reason(CloseCode::Away, "client sent invalid text"),
                        By::Gateway,
                        ctx,
                    ),
                }
            }
            Frame::Binary(bytes) => {
                data(bytes.len(), self);
                self.send_upstream(WsMessage::Binary(bytes), ctx);
            }
            Frame::Continuation(item) => {
                let len = match &item {
                    Item::FirstText(b)
                    | Item::FirstBinary(b)
                    | Item::Continue(b)
                    | Item::Last(b) => b.len(),
                };
                data(len, self);
                self.send_upstream(WsMessage::Continuation(item), ctx);
            }
            Frame::Ping(payload) => self.send_client(&payload, OpCode::Pong, true, ctx),
            Frame::Pong(_) => {}
            Frame::Close(close) => {
                let echo = close.clone();
                self.shut(echo, close, By::Client, ctx);
            }
        }
    }

    /// Output reaching an open socket is the user's work going on (a terminal running a
    /// build), for up to `output_limit` of output without a pause.
    fn on_output(&mut self) {
        let now = Instant::now();
        let start = match self.output {
            Some((start, last)) if now.duration_since(last) < OUTPUT_GAP => start,
            _ => now,
        };
        self.output = Some((start, now));
        if now.duration_since(start) < self.cfg.output_limit {
            self.activity.touch();
        }
    }

    fn on_upstream(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        let data = |len: usize, this: &mut Self| {
            this.metrics.bytes(Direction::UpstreamToClient, len);
            this.on_output();
        };
        match frame {
            Frame::Text(bytes) => {
                data(bytes.len(), self);
                self.send_client(&bytes, OpCode::Text, true, ctx);
            }
            Frame::Binary(bytes) => {
                data(bytes.len(), self);
                self.send_client(&bytes, OpCode::Binary, true, ctx);
            }
            Frame::Continuation(item) => {
                let (op, fin, bytes) = match item {
                    Item::FirstText(b) => (OpCode::Text, false, b),
                    Item::FirstBinary(b) => (OpCode::Binary, false, b),
                    Item::Continue(b) => (OpCode::Continue, false, b),
                    Item::Last(b) => (OpCode::Continue, true, b),
                };
                data(bytes.len(), self);
                self.send_client(&bytes, op, fin, ctx);
            }
            Frame::Ping(payload) => self.send_upstream(WsMessage::Pong(payload), ctx),
            Frame::Pong(_) => {}
            // OpenCode's answer to the close we sent: the handshake is complete.
            Frame::Close(_) if self.upstream_state == UpstreamState::Closing => {
                self.upstream.close();
            }
            Frame::Close(close) => {
                let echo = close.clone();
                self.shut(close, echo, By::Upstream, ctx);
            }
        }
    }

    fn on_keepalive(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        if self.last_heard.elapsed() >= self.cfg.client_timeout {
            tracing::info!(user = %self.user, "websocket client stopped answering pings; closing it");
            self.shut(
                reason(CloseCode::Away, "no answer to pings"),
                reason(CloseCode::Away, "client gone"),
                By::Gateway,
                ctx,
            );
            return;
        }
        self.send_client(b"", OpCode::Ping, true, ctx);
    }
}

impl<S: Sink<WsMessage> + Unpin + 'static> Actor for SocketBridge<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.cfg.ping_interval, |act, ctx| act.on_keepalive(ctx));
        let stopping = self.stopping.clone().cancelled_owned();
        ctx.spawn(stopping.into_actor(self).map(|(), act, ctx| {
            // During a gateway shutdown both tokens fire; the client should hear "going away".
            let to_client = if act.shutdown.is_cancelled() {
                reason(CloseCode::Away, "gateway shutting down")
            } else {
                reason(CloseCode::Restart, "OpenCode instance stopped")
            };
            act.shut(
                to_client,
                reason(CloseCode::Away, "instance stopping"),
                By::Gateway,
                ctx,
            );
        }));
        let shutdown = self.shutdown.clone().cancelled_owned();
        ctx.spawn(shutdown.into_actor(self).map(|(), act, ctx| {
            act.shut(
                reason(CloseCode::Away, "gateway shutting down"),
                reason(CloseCode::Away, "gateway shutting down"),
                By::Gateway,
                ctx,
            );
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.outbox.finish();
    }
}

impl<S: Sink<WsMessage> + Unpin + 'static> StreamHandler<FromClient> for SocketBridge<S> {
    fn handle(&mut self, FromClient(frame): FromClient, ctx: &mut Self::Context) {
        match frame {
            Ok(frame) => self.on_client(frame, ctx),
            // After the close handshake the client drops the connection; that is no error.
            Err(_) if self.closing => self.shut(None, None, By::Client, ctx),
            Err(e) => {
                let code = match e {
                    ProtocolError::Overflow => CloseCode::Size,
                    _ => CloseCode::Protocol,
                };
                tracing::info!(user = %self.user, error = %e, "websocket client error");
                self.shut(
                    reason(code, &e.to_string()),
                    reason(CloseCode::Away, "client error"),
                    By::Gateway,
                    ctx,
                );
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The client went away without a close frame.
        self.shut(
            None,
            reason(CloseCode::Away, "client gone"),
            By::Client,
            ctx,
        );
    }
}

impl<S: Sink<WsMessage> + Unpin + 'static> StreamHandler<FromUpstream> for SocketBridge<S> {
    fn handle(&mut self, FromUpstream(frame): FromUpstream, ctx: &mut Self::Context) {
        match frame {
            Ok(frame) => self.on_upstream(frame, ctx),
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e, "OpenCode websocket error");
                self.shut(
                    reason(CloseCode::Other(1014), "bad frame from OpenCode"),
                    reason(CloseCode::Protocol, "protocol error"),
                    By::Gateway,
                    ctx,
                );
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // OpenCode's side ended: after its close frame, or without one (stopped or crashed).
        self.upstream_state = UpstreamState::Gone;
        self.shut(
            reason(CloseCode::Restart, "OpenCode went away"),
            None,
            By::Upstream,
            ctx,
        );
    }
}

impl<S: Sink<WsMessage> + Unpin + 'static> WriteHandler<S::Error> for SocketBridge<S> {
    fn error(&mut self, _err: S::Error, _ctx: &mut Self::Context) -> Running {
        self.upstream_state = UpstreamState::Gone;
        Running::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn close_labels() {
        assert_eq!(code_label(&None), "none");
        assert_eq!(code_label(&reason(CloseCode::Again, "x")), "1013");
        assert_eq!(code_label(&reason(CloseCode::Other(1014), "x")), "1014");
    }

    #[test]
    fn message_lengths_count_payload_bytes() {
        assert_eq!(message_len(&WsMessage::Text("héllo".into())), 6);
        assert_eq!(
            message_len(&WsMessage::Binary(Bytes::from_static(b"abc"))),
            3
        );
        assert_eq!(message_len(&WsMessage::Close(None)), 0);
        assert_eq!(
            message_len(&WsMessage::Continuation(Item::Last(Bytes::from_static(
                b"zz"
            )))),
            2
        );
    }
}
