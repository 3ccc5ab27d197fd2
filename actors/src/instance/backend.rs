//! The seam between the state machine and the world: everything an instance does to a
//! process, a directory or the network goes through a [`Backend`] (where and how OpenCode
//! runs) and the [`Custody`] of one started process. `local.rs` is the real one; the state
//! machine's unit tests drive every transition through a fake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;

use super::UserSpec;
use crate::status::Upstream;

/// Where and how an instance's OpenCode runs. Called on the actor's thread; the futures run
/// there too, so the slow work inside them must go to the blocking pool.
pub trait Backend {
    /// Everything before a spawn: the user's ids, leftovers of an earlier run ended, the home
    /// made ready, the organisation's files read, and, with `measure_disk`, the home measured.
    fn prepare(
        &self,
        user: Arc<UserSpec>,
        measure_disk: bool,
    ) -> LocalBoxFuture<'static, Result<Prepared, PrepareError>>;

    /// One health check of a ready instance.
    fn probe(&self, upstream: &Upstream) -> LocalBoxFuture<'static, Result<(), String>>;

    /// How many sessions an agent is working in.
    fn busy_sessions(&self, upstream: &Upstream) -> LocalBoxFuture<'static, Result<u32, String>>;

    /// The home's size in bytes (`None` where it cannot be told).
    fn disk_usage(
        &self,
        user: Arc<UserSpec>,
    ) -> LocalBoxFuture<'static, Result<Option<u64>, String>>;

    /// Where several gateways serve one user's instance (replicas in front of a pod), tells
    /// the others that this one saw it used `idle_for` ago. Called at every health check of
    /// a ready instance; nothing to do where one gateway is all there is.
    fn share_activity(&self, _user: &UserSpec, _idle_for: Duration) {}

    /// How long ago the instance was used through any gateway, where others may serve it
    /// too (`None`: this gateway is all there is). Asked before an idle stop.
    fn idle_elsewhere(
        &self,
        _user: Arc<UserSpec>,
    ) -> LocalBoxFuture<'static, Result<Option<Duration>, String>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// Why a start was not made ready.
#[derive(Debug)]
pub enum PrepareError {
    /// The start failed (the message says why).
    Failed(String),
    /// Where instances run is full (a cluster holds `--max-instances` pods): the start is
    /// refused like one the registry has no room for, and may be tried again shortly.
    NoRoom {
        message: String,
        retry_after: Duration,
    },
}

impl From<String> for PrepareError {
    fn from(message: String) -> Self {
        PrepareError::Failed(message)
    }
}

/// A start made ready by [`Backend::prepare`].
pub struct Prepared {
    /// The home's size, when it was measured for this start.
    pub disk_bytes: Option<u64>,
    /// Spawns OpenCode. Called on the actor's thread (the parent-death signal belongs to the
    /// thread that forked), at most once, and not at all when the start is abandoned.
    pub launch: LaunchFn,
}

/// Spawns the prepared start; see [`Prepared::launch`].
pub type LaunchFn = Box<dyn FnOnce(Launch) -> Result<Box<dyn Custody>, String>>;

/// What a launched process reports to, and under which generation.
pub struct Launch {
    pub generation: u64,
    pub events: Recipient<ProcessEvent>,
}

/// What a launched process reports, tagged with its generation so that a report about an
/// earlier process is recognised and ignored.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ProcessEvent {
    /// A step of the start the person waiting should see (a pod scheduled, an image pulled).
    Progress { generation: u64, message: String },
    /// OpenCode answers at `addr` (it printed its start line, or its pod became ready).
    Listening { generation: u64, addr: SocketAddr },
    /// OpenCode exited and was reaped.
    Exited {
        generation: u64,
        status: String,
        /// Ended by SIGKILL (which the gateway did not send, if it was not stopping it).
        killed: bool,
    },
}

/// One started OpenCode process and everything it started.
pub trait Custody {
    fn pid(&self) -> Option<u32>;
    /// The `Authorization` header value of this process's OpenCode.
    fn authorization(&self) -> String;
    /// Remembers what runs below OpenCode now (terminal shells leave its process group), so
    /// that even a crash leaves nothing behind.
    fn look(&mut self);
    /// Asks everything of the process to end (SIGTERM).
    fn terminate(&mut self);
    /// Ends everything of the process at once (SIGKILL).
    fn kill(&mut self);
    /// After OpenCode exited during a stop: ends whatever is left of it and resolves once
    /// nothing is; `None` when there is nothing to wait for.
    fn clean_up(&mut self) -> Option<LocalBoxFuture<'static, ()>>;
    /// What still runs, for the log when the grace period is over.
    fn still_running(&self) -> String;
    /// The last lines OpenCode wrote to stderr, joined.
    fn last_output(&self) -> String;
    /// Whether a SIGKILL nobody here sent was the kernel's OOM killer.
    fn out_of_memory(&self) -> bool;
    /// Whether the process runs on without this gateway (a pod), so that a gateway shutting
    /// down lets it go instead of stopping it, for the next gateway to adopt.
    fn outlives_gateway(&self) -> bool {
        false
    }
}
