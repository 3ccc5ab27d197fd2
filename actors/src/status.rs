//! What an instance publishes about itself. Handlers, the progress stream and the registry read
//! it from a `watch` channel without going through the actor's mailbox.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// No process. The next client request starts one.
    Stopped,
    /// Waiting for a start slot, for room under the instance limit, or for a crash backoff.
    Queued,
    /// The process is starting; waiting for its `listening on` line.
    Starting,
    /// Serving requests.
    Ready,
    /// Being stopped: SIGTERM sent, SIGKILL after the grace period.
    Stopping,
    /// Gave up (start timeout, crash loop, unusable binary). Stays failed until a person
    /// starts it explicitly or an operator stops it.
    Failed,
}

impl InstanceState {
    pub const ALL: [InstanceState; 6] = [
        InstanceState::Stopped,
        InstanceState::Queued,
        InstanceState::Starting,
        InstanceState::Ready,
        InstanceState::Stopping,
        InstanceState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Stopped => "stopped",
            InstanceState::Queued => "queued",
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Stopping => "stopping",
            InstanceState::Failed => "failed",
        }
    }

    /// No process and nothing in progress.
    pub fn is_at_rest(self) -> bool {
        matches!(self, InstanceState::Stopped | InstanceState::Failed)
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a start was not attempted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-instances` are running and none has been idle long enough to evict.
    Capacity { retry_after: Duration },
    /// The gateway is shutting down.
    ShuttingDown,
}

/// Where a ready instance can be reached. Valid for one start of the process (`generation`).
#[derive(Clone, Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// `Authorization` header value for this start's password.
    pub authorization: Arc<str>,
    pub generation: u64,
    /// Cancelled when this process starts stopping: long-lived streams end cleanly.
    pub stopping: CancellationToken,
}

#[derive(Clone, Debug)]
pub struct InstanceStatus {
    pub state: InstanceState,
    /// A person-readable explanation: why it failed, what it is waiting for.
    pub message: Option<String>,
    pub refusal: Option<Refusal>,
    pub upstream: Option<Upstream>,
    pub pid: Option<u32>,
    /// Unix epoch milliseconds when the current process became ready.
    pub started_at_ms: Option<u64>,
    /// Automatic restarts (after a crash or failed health checks) over the instance's life.
    pub restarts: u32,
    /// Bytes the user's home takes, as last measured (as the user).
    pub disk_bytes: Option<u64>,
    /// `--disk-quota`, so clients can warn before starts are refused.
    pub disk_quota: Option<u64>,
    /// OpenCode processes of this user the kernel's OOM killer ended.
    pub oom_kills: u32,
    /// Sessions an agent is working in (busy or retrying), as last asked.
    pub busy_sessions: u32,
}

impl Default for InstanceStatus {
    fn default() -> Self {
        Self {
            state: InstanceState::Stopped,
            message: None,
            refusal: None,
            upstream: None,
            pid: None,
            started_at_ms: None,
            restarts: 0,
            disk_bytes: None,
            disk_quota: None,
            oom_kills: 0,
            busy_sessions: 0,
        }
    }
}

impl InstanceStatus {
    pub fn port(&self) -> Option<u16> {
        self.upstream.as_ref().map(|u| u.addr.port())
    }
}
