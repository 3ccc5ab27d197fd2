//! Chamberlain's actor system: the `Registry` of users, one `UserInstance` actor per user
//! owning one OpenCode process, the launcher that starts those processes, and user
//! workspaces on disk.
//!
//! This crate knows nothing of HTTP serving: the gateway (`src/`) turns requests into
//! messages and reads the status each instance publishes.

mod clock;
mod procfs;
mod proctree;

pub mod activity;
pub mod as_user;
pub mod busy;
pub mod config;
pub mod encode;
pub mod handover;
pub mod health;
pub mod instance;
pub mod isolation;
pub mod launcher;
pub mod llm;
pub mod metrics;
pub mod org;
pub mod provision;
pub mod registry;
pub mod repos;
pub mod state_file;
pub mod status;
pub mod workspace;

pub use activity::{Activity, ActivityGuard};
pub use config::{InstanceConfig, RegistryConfig};
pub use instance::{
    Admission, InstanceShared, Local, LocalBackend, Stop, StopReason, UserInstance, UserSpec, Wake,
    WakeReply,
};
pub use launcher::{LaunchConfig, Launcher};
pub use metrics::InstanceMetrics;
pub use org::OrgFiles;
pub use provision::Homes;
pub use registry::{
    InstanceHandle, Open, PoolStats, Registry, Routes, Shutdown, Stats, StopUser, UserStats,
};
pub use status::{InstanceState, InstanceStatus, Refusal, Upstream};
pub use workspace::{UserKey, UsersRoot, Workspace};
