//! The state shared by the public handlers, and the one question they all ask: where is this
//! user's OpenCode, ready to serve?

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{HttpMessage, HttpRequest};
use chamberlain_actors::{
    Activity, Homes, InstanceHandle, InstanceState, InstanceStatus, Open, Refusal, Registry,
    Routes, Upstream, UserKey, UserSpec, Wake, WakeReply,
};

use crate::errors::{GatewayError, RETRY_STARTING};
use crate::identity::{AuthError, Authenticator, Identity, Person};
use crate::metrics::{HttpMetrics, WsMetrics};
use tokio_util::sync::CancellationToken;

/// How long to tell a passive client (an event stream) to wait for a stopped instance.
const RETRY_STOPPED: Duration = Duration::from_secs(10);

/// The websocket bridges' limits and timers.
#[derive(Clone, Debug)]
pub struct WsConfig {
    pub max_frame: usize,
    pub max_buffer: usize,
    pub ping_interval: Duration,
    pub client_timeout: Duration,
    /// `--busy-timeout`: how long output alone may keep an instance alive.
    pub output_limit: Duration,
}

pub struct GatewayConfig {
    pub wait_timeout: Duration,
    pub upstream_timeout: Duration,
    pub sse_keepalive: Duration,
    /// The gateway's own hosts and origins (and those allowed besides), and the proxies
    /// whose forwarded headers count.
    pub site: std::sync::Arc<crate::site::Site>,
    pub ws: WsConfig,
    /// The organisation's OpenCode auth file; while it exists, users' keys are read-only.
    pub shared_auth: std::path::PathBuf,
    /// Model use through the relay, and `--llm-daily-tokens` (0: none).
    pub llm_usage: Arc<crate::relay::usage::UsageBook>,
    pub llm_daily_tokens: u64,
}

pub struct Gateway {
    pub auth: Authenticator,
    pub registry: Addr<Registry>,
    pub routes: Routes,
    /// Every home; work in one is done as its user.
    pub homes: Arc<Homes>,
    pub cfg: GatewayConfig,
    pub metrics: HttpMetrics,
    pub ws_metrics: WsMetrics,
    pub repos: Addr<chamberlain_actors::repos::RepoLibrary>,
    /// Requests and websockets each user holds open.
    pub connections: Arc<crate::connections::UserConnections>,
    pub shutdown: ShutdownSignal,
}

/// Whether the gateway is shutting down: new work is refused, bridged websockets close.
#[derive(Default)]
pub struct ShutdownSignal {
    started: AtomicBool,
    token: CancellationToken,
}

/// Whether a request may start a stopped instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A person's request: counts as activity and starts the instance if needed.
    Wake,
    /// A browser loading a page: starts the instance if needed but does not wait for it
    /// (the answer is then [`Routed::Starting`], and the page shows the start).
    Navigate,
    /// A server-push stream reconnecting: served only by an instance that is running or
    /// already starting, so a forgotten tab cannot keep restarting it.
    Passive,
}

/// Who a request was from, for the access log.
pub struct LoggedUser(pub Arc<Person>);

/// Where a request goes.
pub enum Routed {
    /// To this instance (its activity, which the request counts in), ready at this address.
    Ready(Arc<Activity>, Upstream),
    /// Nowhere yet: the instance is starting (or could not start), and the request was a
    /// page load ([`Access::Navigate`]), which does not wait.
    Starting,
}

/// What the route cache says of a user's instance, for [`Gateway::upstream`].
enum Found {
    Ready(Arc<Activity>, Upstream),
    /// Queued or starting, and the request waits for it (passive access only).
    Starting(InstanceHandle),
}

impl Gateway {
    /// Refuses new work and closes every bridged websocket (1001, going away).
    pub fn begin_shutdown(&self) {
        self.shutdown.started.store(true, Ordering::SeqCst);
        self.shutdown.token.cancel();
    }

    /// Cancelled when the gateway starts shutting down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.token.clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.started.load(Ordering::SeqCst)
    }

    /// Identifies the request and records who it was for the access log.
    pub async fn identify(&self, req: &HttpRequest) -> Result<Identity, GatewayError> {
        let identity = self.auth.identify(req).await.map_err(|e| {
            let peer = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
            match &e {
                AuthError::Missing => {
                    tracing::debug!(path = req.path(), peer, "request not identified")
                }
                AuthError::Unavailable(_) => {
                    tracing::warn!(path = req.path(), peer, reason = %e, "identity could not be checked")
                }
                _ => tracing::info!(path = req.path(), peer, reason = %e, "request refused"),
            }
            GatewayError::from_auth(e, self.auth.login_path())
        })?;
        if !self.auth.policy().allows(&identity) {
            tracing::info!(
                user = %identity.user_id,
                email = identity.email.as_deref().unwrap_or_default(),
                path = req.path(),
                "sign-in refused: not on --allowed-users or --allowed-groups"
            );
            return Err(GatewayError::Forbidden(format!(
                "You are signed in as {}, but this gateway is not open to you. Ask an \
                 administrator to add you.",
                identity.email.as_deref().unwrap_or(&identity.user_id)
            )));
        }
        // For the access log, which needs the name only (a whole identity's copy is several
        // allocations, on every request).
        req.extensions_mut()
            .insert(LoggedUser(Arc::clone(identity.person())));
        Ok(identity)
    }

    /// Who an instance (or a clone) belongs to.
    pub fn user_spec(&self, identity: &Identity) -> UserSpec {
        UserSpec {
            user_id: identity.user_id.clone(),
            key: self.user_key(identity),
            email: identity.email.clone(),
            name: identity.name.clone(),
        }
    }

    pub fn user_key(&self, identity: &Identity) -> UserKey {
        UserKey::derive(&identity.user_id)
    }

    /// The user's instance if it exists; never creates one.
    pub fn peek(&self, identity: &Identity) -> Option<InstanceHandle> {
        self.routes
            .get(&identity.user_id)
            .map(|h| h.clone())
            .filter(|h| h.addr.connected())
    }

    /// The user's instance, created (stopped) if it does not exist yet.
    pub async fn open(&self, identity: &Identity) -> Result<InstanceHandle, GatewayError> {
        if let Some(handle) = self.peek(identity) {
            return Ok(handle);
        }
        let spec = self.user_spec(identity);
        self.registry
            .send(Open(spec))
            .await
            .map_err(|e| GatewayError::Internal(format!("registry unavailable: {e}")))
    }

    /// Asks the instance to start; an explicit start also leaves `failed`.
    pub async fn wake(
        &self,
        identity: &Identity,
        explicit: bool,
    ) -> Result<(InstanceHandle, WakeReply), GatewayError> {
        // One retry: the instance may have been retired between lookup and send.
        for _ in 0..2 {
            let handle = self.open(identity).await?;
            if let Ok(reply) = handle.addr.send(Wake { explicit }).await {
                return Ok((handle, reply));
            }
        }
        Err(GatewayError::Internal(
            "the user's instance is not answering".to_owned(),
        ))
    }

    /// Where to send this user's request: from the route cache when the instance is ready,
    /// else — if `access` allows — woken, and waited for (up to `--wait-timeout`).
    pub async fn upstream(
        &self,
        identity: &Identity,
        access: Access,
    ) -> Result<Routed, GatewayError> {
        // Read in place: of the handle, a ready route needs its activity only (copying the
        // whole handle, its actor address included, would allocate on every request).
        let found = self
            .routes
            .get(&identity.user_id)
            .filter(|handle| handle.addr.connected())
            .and_then(|handle| {
                let state = {
                    let status = handle.status.borrow();
                    if let Some(upstream) = ready_upstream(&status) {
                        return Some(Found::Ready(Arc::clone(&handle.activity), upstream));
                    }
                    status.state
                };
                let starting = matches!(state, InstanceState::Queued | InstanceState::Starting);
                (starting && access == Access::Passive).then(|| Found::Starting(handle.clone()))
            });
        match found {
            Some(Found::Ready(activity, upstream)) => return Ok(Routed::Ready(activity, upstream)),
            Some(Found::Starting(handle)) => {
                let upstream = self.wait_ready(&handle).await?;
                return Ok(Routed::Ready(handle.activity, upstream));
            }
            None => {}
        }
        if access == Access::Passive {
            return Err(GatewayError::Unavailable {
                message: "the instance is not running; it starts with the next request".to_owned(),
                retry_after: RETRY_STOPPED,
                state: InstanceState::Stopped,
            });
        }
        let (handle, reply) = self.wake(identity, false).await?;
        match (reply, access) {
            (WakeReply::Ready(upstream), _) => Ok(Routed::Ready(handle.activity, upstream)),
            // The starting page shows the start, and a failure, as they happen.
            (_, Access::Navigate) => Ok(Routed::Starting),
            (WakeReply::Failed(message), _) => Err(GatewayError::InstanceFailed(message)),
            (WakeReply::Pending, _) => {
                let upstream = self.wait_ready(&handle).await?;
                Ok(Routed::Ready(handle.activity, upstream))
            }
        }
    }

    async fn wait_ready(&self, handle: &InstanceHandle) -> Result<Upstream, GatewayError> {
        let mut status = handle.status.clone();
        let outcome = tokio::time::timeout(
            self.cfg.wait_timeout,
            status.wait_for(|s| {
                matches!(
                    s.state,
                    InstanceState::Ready | InstanceState::Failed | InstanceState::Stopped
                )
            }),
        )
        .await;
        let status = match outcome {
            Err(_) => {
                let state = handle.status.borrow().state;
                return Err(GatewayError::Unavailable {
                    message: format!(
                        "the instance is still {state} after {}s",
                        self.cfg.wait_timeout.as_secs()
                    ),
                    retry_after: RETRY_STARTING,
                    state,
                });
            }
            Ok(Err(_)) => {
                return Err(GatewayError::Internal(
                    "the user's instance went away".to_owned(),
                ))
            }
            Ok(Ok(status)) => status.clone(),
        };
        if let Some(upstream) = ready_upstream(&status) {
            return Ok(upstream);
        }
        Err(not_ready_error(&status))
    }
}

fn ready_upstream(status: &InstanceStatus) -> Option<Upstream> {
    (status.state == InstanceState::Ready)
        .then(|| status.upstream.clone())
        .flatten()
}

fn not_ready_error(status: &InstanceStatus) -> GatewayError {
    let message = status
        .message
        .clone()
        .unwrap_or_else(|| format!("the instance is {}", status.state));
    match (&status.state, &status.refusal) {
        (InstanceState::Failed, _) => GatewayError::InstanceFailed(message),
        (_, Some(Refusal::Capacity { retry_after })) => GatewayError::Unavailable {
            message,
            retry_after: *retry_after,
            state: status.state,
        },
        _ => GatewayError::Unavailable {
            message,
            retry_after: RETRY_STARTING,
            state: status.state,
        },
    }
}
