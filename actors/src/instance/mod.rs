//! One user's OpenCode and its lifecycle.
//!
//! - `machine.rs` — the `UserInstance` actor: its phases and every transition (its header
//!   lists the messages and transitions). No fork, no file system, no signals: it acts
//!   through a [`Backend`] and the [`Custody`] of the process it started.
//! - `backend.rs` — that seam.
//! - `local.rs` — the local backend: a child process on this machine.
//! - `start.rs` — a local start: preparation off the actor, then the spawn.
//! - `process.rs` — a running local process: descendants, signalling all of it, reaping.
//! - `crashes.rs` — crash history and backoff, pure.
//!
//! The instance speaks to whoever counts instances (the registry) through recipients of
//! [`Admit`] and [`Released`], so it does not know the registry.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::Semaphore;

use crate::config::InstanceConfig;
use crate::metrics::InstanceMetrics;
use crate::provision::Profile;
use crate::status::{Refusal, Upstream};
use crate::workspace::UserKey;

mod backend;
mod crashes;
mod local;
mod machine;
mod process;
mod start;
#[cfg(test)]
mod tests;

pub use backend::{Backend, Custody, Launch, LaunchFn, PrepareError, Prepared, ProcessEvent};
pub use local::{Local, LocalBackend};
pub use machine::UserInstance;

/// Who an instance belongs to.
#[derive(Clone, Debug)]
pub struct UserSpec {
    pub user_id: String,
    pub key: UserKey,
    pub email: Option<String>,
    pub name: Option<String>,
}

impl UserSpec {
    /// The name and email git records for this user.
    pub fn profile(&self) -> Profile {
        Profile {
            name: self.name.clone().unwrap_or_else(|| self.user_id.clone()),
            email: self
                .email
                .clone()
                .unwrap_or_else(|| format!("{}@users.chamberlain.invalid", self.key)),
        }
    }
}

/// What every instance shares: configuration and where instances run. Lives on the actor
/// thread (the backend keeps thread-bound clients).
pub struct InstanceShared {
    pub cfg: InstanceConfig,
    pub backend: Rc<dyn Backend>,
    /// `--max-concurrent-starts`; fair (FIFO), so queued instances start in order.
    pub start_slots: Arc<Semaphore>,
    pub metrics: InstanceMetrics,
}

/// Where an instance asks for room under the instance limit and gives it back. Both go to
/// the same actor, in order, so the count cannot drift.
#[derive(Clone)]
pub struct Room {
    pub admit: Recipient<Admit>,
    pub released: Recipient<Released>,
}

/// An instance asks for room under `--max-instances` before it starts.
#[derive(Message)]
#[rtype(result = "Admission")]
pub struct Admit {
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Granted,
    Refused(Refusal),
}

/// An instance at rest gives its room back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Released {
    pub user: String,
}

#[derive(Message)]
#[rtype(result = "WakeReply")]
pub struct Wake {
    /// A person asked for a start (not just a request that needs the instance).
    pub explicit: bool,
}

#[derive(Debug)]
pub enum WakeReply {
    Ready(Upstream),
    /// Starting (or about to): watch the status for the outcome.
    Pending,
    /// Failed and not explicitly restarted; the message says why.
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The user asked for it.
    Person,
    /// An operator asked for it (admin API); also resets a failed instance.
    Operator,
    Idle,
    Evicted,
    Shutdown,
}

/// Resolves once the instance is at rest (stopped or failed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop {
    pub reason: StopReason,
}

/// The registry forgets instances stopped and unused for `idle_for`: `true` if this one ended.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Retire {
    pub idle_for: Duration,
}
