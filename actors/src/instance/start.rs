//! Off the actor, before a start: the user's ids, leftovers of an earlier run ended, the home
//! provisioned (as the user), the organisation's files read, the home measured; and the
//! child's own variables.

use nix::sys::signal::Signal;

use super::{InstanceShared, UserSpec};
use crate::isolation::{reaper, UserIds};
use crate::provision::Profile;
use crate::workspace::Workspace;

/// What [`prepare`] made ready for a start.
pub(super) struct Prepared {
    pub(super) workspace: Workspace,
    pub(super) ids: Option<UserIds>,
    /// The organisation's keys and config, for the child's environment.
    pub(super) org_env: Vec<(String, String)>,
    /// The home's size, when it was measured for this start.
    pub(super) disk_bytes: Option<u64>,
}

/// Off the actor thread, before a start: the user's ids, leftovers of an earlier run of the
/// same uid ended, the home provisioned, the organisation's files read.
pub(super) fn prepare(
    shared: &InstanceShared,
    user: &UserSpec,
    measure: bool,
) -> Result<Prepared, String> {
    let ids = shared.isolation.ids(&user.key).map_err(|e| e.to_string())?;
    if let Some(ids) = ids {
        // A gateway that died leaves terminals and background jobs behind; with a uid per
        // user they are found exactly, and a new start begins from nothing.
        if !reaper::processes_of(ids.uid).is_empty() {
            tracing::warn!(user = %user.user_id, uid = ids.uid, "ending processes left from an earlier run");
            reaper::signal_uid(ids.uid, Signal::SIGKILL).map_err(|e| e.to_string())?;
        }
    }
    let (workspace, ids) = shared
        .homes
        .prepare(&user.key, &user.profile())
        .map_err(|e| e.to_string())?;
    let org_env = shared.org.environment().map_err(|e| e.to_string())?;
    let disk_bytes = if measure {
        shared
            .homes
            .usage(&user.key)
            .map_err(|e| format!("measuring the home: {e}"))?
    } else {
        None
    };
    Ok(Prepared {
        workspace,
        ids,
        org_env,
        disk_bytes,
    })
}

/// Variables for one user's child: their git identity.
pub(super) fn child_env(profile: &Profile) -> Vec<(String, String)> {
    [
        ("GIT_AUTHOR_NAME", &profile.name),
        ("GIT_AUTHOR_EMAIL", &profile.email),
        ("GIT_COMMITTER_NAME", &profile.name),
        ("GIT_COMMITTER_EMAIL", &profile.email),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.clone()))
    .collect()
}
