//! The local [`Backend`]: OpenCode as a child process of the gateway on this machine, behind
//! the user's walls (see `isolation/`), reached on loopback.

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt as _;

use super::backend::{Backend, Custody, Prepared};
use super::start;
use super::UserSpec;
use crate::busy;
use crate::health;
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
    health_timeout: Duration,
    /// The client of health checks and busy questions, made on first use (on the actor
    /// thread, where every instance lives).
    client: OnceCell<awc::Client>,
}

impl LocalBackend {
    pub fn new(local: Local, health_timeout: Duration) -> Self {
        Self {
            local: Arc::new(local),
            health_timeout,
            client: OnceCell::new(),
        }
    }

    fn client(&self) -> awc::Client {
        self.client
            .get_or_init(|| health::client(self.health_timeout))
            .clone()
    }
}

impl Backend for LocalBackend {
    fn prepare(
        &self,
        user: Arc<UserSpec>,
        measure_disk: bool,
    ) -> LocalBoxFuture<'static, Result<Prepared, String>> {
        let local = Arc::clone(&self.local);
        async move {
            let off = {
                let (local, user) = (Arc::clone(&local), Arc::clone(&user));
                tokio::task::spawn_blocking(move || start::prepare(&local, &user, measure_disk))
            };
            let ready = match off.await {
                Ok(result) => result?,
                Err(join) => return Err(format!("preparing the workspace: {join}")),
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
        let (client, upstream) = (self.client(), upstream.clone());
        async move {
            health::probe(&client, &upstream)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed_local()
    }

    fn busy_sessions(&self, upstream: &Upstream) -> LocalBoxFuture<'static, Result<u32, String>> {
        let (client, upstream) = (self.client(), upstream.clone());
        async move {
            busy::busy_sessions(&client, &upstream)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed_local()
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
