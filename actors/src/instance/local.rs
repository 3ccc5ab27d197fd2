//! The local [`Backend`]: OpenCode as a child process of the gateway on this machine, behind
//! the user's walls (see `isolation/`), reached on loopback.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt as _;

use super::backend::{Backend, Custody, PrepareError, Prepared};
use super::start;
use super::UserSpec;
use crate::health::Questions;
use crate::isolation::Isolation;
use crate::launcher::Launcher;
use crate::llm::RelaySettings;
use crate::org::OrgFiles;
use crate::provision::Homes;
use crate::status::Upstream;

/// What local starts share; used off the actor thread too.
pub struct Local {
    pub launcher: Launcher,
    /// Every home, and working in one as its user.
    pub homes: Arc<Homes>,
    /// USER/LOGNAME for children without a uid of their own: the gateway's account.
    pub account: String,
    pub isolation: Arc<Isolation>,
    /// The organisation's OpenCode auth file (`shared/auth/auth.json`) and config
    /// (`shared/config/opencode.json`), read by the gateway at every start and handed to
    /// the child in its environment: users cannot read them on disk.
    pub org: OrgFiles,
    /// Where instances reach the organisation's providers (the gateway's relay).
    pub relay: RelaySettings,
}

pub struct LocalBackend {
    local: Arc<Local>,
    questions: Questions,
}

impl LocalBackend {
    pub fn new(local: Local, health_timeout: Duration) -> Self {
        Self {
            local: Arc::new(local),
            questions: Questions::new(health_timeout),
        }
    }
}

impl Backend for LocalBackend {
    fn prepare(
        &self,
        user: Arc<UserSpec>,
        measure_disk: bool,
    ) -> LocalBoxFuture<'static, Result<Prepared, PrepareError>> {
        let local = Arc::clone(&self.local);
        async move {
            let off = {
                let (local, user) = (Arc::clone(&local), Arc::clone(&user));
                tokio::task::spawn_blocking(move || start::prepare(&local, &user, measure_disk))
            };
            let ready = match off.await {
                Ok(result) => result?,
                Err(join) => return Err(format!("preparing the workspace: {join}").into()),
            };
            Ok(Prepared {
                disk_bytes: ready.disk_bytes,
                launch: Box::new(move |launch| {
                    start::spawn(&local, &user, ready, launch)
                        .map(|process| Box::new(process) as Box<dyn Custody>)
                }),
            })
        }
        .boxed_local()
    }

    fn probe(&self, upstream: &Upstream) -> LocalBoxFuture<'static, Result<(), String>> {
        self.questions.probe(upstream)
    }

    fn busy_sessions(&self, upstream: &Upstream) -> LocalBoxFuture<'static, Result<u32, String>> {
        self.questions.busy_sessions(upstream)
    }

    fn disk_usage(
        &self,
        user: Arc<UserSpec>,
    ) -> LocalBoxFuture<'static, Result<Option<u64>, String>> {
        let local = Arc::clone(&self.local);
        async move {
            match tokio::task::spawn_blocking(move || local.homes.usage(&user.key)).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(format!("measuring the home was interrupted: {e}")),
            }
        }
        .boxed_local()
    }
}
