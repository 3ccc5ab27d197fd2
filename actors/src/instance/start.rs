//! A local start, in two steps. Off the actor: the user's ids, leftovers of an earlier run
//! ended, the home provisioned (as the user), the organisation's files read, the home
//! measured. Then on the actor's thread: the password, the sandbox, the environment, the
//! spawn and the watchers of its output and exit.

use std::sync::Arc;

use super::backend::{Launch, ProcessEvent};
use super::local::Local;
use super::process::Process;
use super::UserSpec;
use crate::isolation::UserIds;
use crate::launcher::{self, ChildSpec, StderrTail};
use crate::llm::{Grant, GrantGuard};
use crate::org::OrgStart;
use crate::procfs;
use crate::proctree::Descendants;
use crate::provision::Leftovers;
use crate::workspace::Workspace;

/// What [`prepare`] made ready for a spawn.
pub(super) struct Ready {
    pub(super) workspace: Workspace,
    pub(super) ids: Option<UserIds>,
    /// The organisation's config, for the child's environment.
    pub(super) org: OrgStart,
    /// The start's token for the relay, in place of the organisation's keys.
    pub(super) relay_token: String,
    /// The home's size, when it was measured for this start.
    pub(super) disk_bytes: Option<u64>,
}

/// Off the actor thread, before a start: the user's ids, leftovers of an earlier run of the
/// same uid ended and the home provisioned (all three by `Homes::prepare`, as for a clone),
/// the organisation's files read.
pub(super) fn prepare(local: &Local, user: &UserSpec, measure: bool) -> Result<Ready, String> {
    let (workspace, ids) = local
        .homes
        .prepare(&user.key, &user.profile(), Leftovers::End)
        .map_err(|e| e.to_string())?;
    let relay_token = launcher::generate_password().map_err(|e| e.to_string())?;
    let org = local
        .org
        .for_start(&local.relay, &relay_token)
        .map_err(|e| e.to_string())?;
    let disk_bytes = if measure {
        local
            .homes
            .usage(&user.key)
            .map_err(|e| format!("measuring the home: {e}"))?
    } else {
        None
    };
    Ok(Ready {
        workspace,
        ids,
        org,
        relay_token,
        disk_bytes,
    })
}

/// On the actor's thread: spawns OpenCode in the prepared home behind the user's walls, and
/// watches its output (for the start line) and its exit.
pub(super) fn spawn(
    local: &Local,
    user: &UserSpec,
    ready: Ready,
    launch: Launch,
) -> Result<Process, String> {
    let Ready {
        workspace,
        ids,
        org,
        relay_token,
        ..
    } = ready;
    let password = launcher::generate_password().map_err(|e| e.to_string())?;
    let sandbox = local
        .isolation
        .child_sandbox(workspace.home(), ids)
        .map_err(|e| e.to_string())?;
    let account = match ids {
        Some(_) => user.key.as_str().to_owned(),
        None => local.account.clone(),
    };
    let marker = launcher::generate_password().map_err(|e| e.to_string())?;
    let mut extra_env = user.profile().git_env();
    extra_env.extend(org.env);
    extra_env.push((launcher::MARKER_VAR.to_owned(), marker.clone()));
    let launched = local.launcher.launch(&ChildSpec {
        workspace: &workspace,
        password: &password,
        account: &account,
        extra_env: &extra_env,
        sandbox: Some(&sandbox),
    });
    drop(sandbox);
    let launched = launched.map_err(|e| e.to_string())?;
    let Launch { generation, events } = launch;
    let grant = (!org.providers.is_empty()).then(|| {
        GrantGuard::new(
            &local.relay.grants,
            relay_token,
            Grant {
                user_id: user.user_id.clone(),
                providers: Arc::new(org.providers),
            },
        )
    });
    let stderr = StderrTail::default();
    let listening = events.clone();
    actix::spawn(launcher::follow_stdout(
        launched.stdout,
        user.user_id.clone(),
        move |addr| listening.do_send(ProcessEvent::Listening { generation, addr }),
    ));
    actix::spawn(launcher::follow_stderr(
        launched.stderr,
        user.user_id.clone(),
        stderr.clone(),
    ));
    let mut child = launched.child;
    actix::spawn(async move {
        let (status, killed) = match child.wait().await {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                (
                    status.to_string(),
                    status.signal() == Some(nix::libc::SIGKILL),
                )
            }
            Err(e) => (format!("wait failed: {e}"), false),
        };
        events.do_send(ProcessEvent::Exited {
            generation,
            status,
            killed,
        });
    });
    tracing::info!(
        user = %user.user_id,
        pid = launched.pid.as_raw(),
        uid = ids.map(|i| i.uid),
        program = %local.launcher.program().display(),
        "spawned OpenCode"
    );
    Ok(Process {
        user: user.user_id.clone(),
        pid: launched.pid,
        stderr,
        password,
        descendants: Descendants::default(),
        uid: ids.map(|i| i.uid),
        marker,
        host_oom_kills_at_spawn: procfs::host_oom_kills(),
        _grant: grant,
    })
}
