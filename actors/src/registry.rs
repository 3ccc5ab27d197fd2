//! `Registry`: which users have an instance, how many may run at once, and shutting them all
//! down.
//!
//! Messages
//! - `Open(UserSpec)` → `InstanceHandle`: get or create the user's instance actor.
//! - `Admit { user }` → `Admission`: an instance asks for room under `max_instances`. When
//!   full, the least recently active instance idle for at least `evict_min_idle` is stopped to
//!   make room, and the answer waits until it has given its room back (its processes are
//!   gone): the limit counts processes, not intentions. If none can be evicted the start is
//!   refused with a retry hint.
//! - `Released { user }`: an instance at rest gives its room back; the first start waiting
//!   for room gets it.
//! - `StopUser { user, reason }` → `bool` (false: no such instance).
//! - `Stats` → `PoolStats`.
//! - `Shutdown`: refuse every further start, stop every instance, resolve when all are at rest.
//!
//! Timer: every minute, instances stopped and unused for `retire_after` are retired.
//!
//! The route cache (`Routes`) is written only here; HTTP handlers read it directly so the hot
//! path never waits in this actor's mailbox.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::watch;

use crate::activity::Activity;
use crate::config::RegistryConfig;
use crate::instance::{
    Admission, Admit, InstanceShared, Released, Retire, Room, Stop, StopReason, UserInstance,
    UserSpec,
};
use crate::procfs;
use crate::status::{InstanceState, InstanceStatus, Refusal};

/// What a handler needs to reach one user's instance.
#[derive(Clone)]
pub struct InstanceHandle {
    pub addr: Addr<UserInstance>,
    pub status: watch::Receiver<InstanceStatus>,
    pub activity: Arc<Activity>,
    pub user: Arc<UserSpec>,
}

pub type Routes = Arc<DashMap<String, InstanceHandle>>;

#[derive(Message)]
#[rtype(result = "InstanceHandle")]
pub struct Open(pub UserSpec);

#[derive(Message)]
#[rtype(result = "bool")]
pub struct StopUser {
    pub user: String,
    pub reason: StopReason,
}

#[derive(Message)]
#[rtype(result = "PoolStats")]
pub struct Stats;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStats {
    pub max_instances: usize,
    pub max_concurrent_starts: usize,
    /// `--disk-quota`, bytes.
    pub disk_quota: Option<u64>,
    /// Processes the kernel's OOM killer ended on this host since boot, any user's or
    /// not (a user's terminal process included); `None` where the kernel does not say.
    pub host_oom_kills: Option<u64>,
    /// Instances holding room under the limit (running, starting or about to).
    pub instances: usize,
    /// Starts waiting for an evicted instance to give its room back.
    pub starts_waiting: usize,
    pub by_state: BTreeMap<&'static str, usize>,
    /// Not serialised: each view shows users with what it knows of them besides (the admin
    /// API adds uids and model use).
    #[serde(skip)]
    pub users: Vec<UserStats>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserStats {
    pub user_id: String,
    pub state: InstanceState,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub started_at: Option<u64>,
    pub last_activity: u64,
    pub restarts: u32,
    pub rss_bytes: Option<u64>,
    /// The home's size as last measured (as the user); `None` before the first look.
    pub disk_bytes: Option<u64>,
    /// OpenCode processes of this user the kernel's OOM killer ended.
    pub oom_kills: u32,
    /// Sessions an agent is working in, as last asked (every health check, and before an
    /// idle stop).
    pub busy_sessions: u32,
    pub message: Option<String>,
}

pub struct Registry {
    cfg: RegistryConfig,
    shared: Rc<InstanceShared>,
    routes: Routes,
    /// Users whose instance holds room under `max_instances` (an evicted one until it is
    /// at rest).
    holders: HashSet<String>,
    /// Instances told to stop to make room, until they are at rest: never chosen twice.
    evicting: HashSet<String>,
    /// Starts waiting for an evicted instance to give its room back, in order.
    waiting: VecDeque<(String, tokio::sync::oneshot::Sender<Admission>)>,
    shutting_down: bool,
}

impl Registry {
    pub fn new(cfg: RegistryConfig, shared: InstanceShared) -> Self {
        Self {
            cfg,
            shared: Rc::new(shared),
            routes: Arc::new(DashMap::new()),
            holders: HashSet::new(),
            evicting: HashSet::new(),
            waiting: VecDeque::new(),
            shutting_down: false,
        }
    }

    pub fn routes(&self) -> Routes {
        Arc::clone(&self.routes)
    }

    fn open(&mut self, spec: UserSpec, ctx: &mut Context<Self>) -> InstanceHandle {
        if let Some(existing) = self.routes.get(&spec.user_id) {
            if existing.addr.connected() {
                return existing.clone();
            }
        }
        let activity = Arc::new(Activity::new());
        let (status_tx, status_rx) = watch::channel(InstanceStatus::default());
        let user = Arc::new(spec);
        let addr = UserInstance::new(
            Arc::clone(&user),
            Rc::clone(&self.shared),
            Room {
                admit: ctx.address().recipient(),
                released: ctx.address().recipient(),
            },
            status_tx,
            Arc::clone(&activity),
        )
        .start();
        let handle = InstanceHandle {
            addr,
            status: status_rx,
            activity,
            user,
        };
        self.routes
            .insert(handle.user.user_id.clone(), handle.clone());
        handle
    }

    /// Room for `user`: at once, after an evicted instance is gone (the receiver), or not.
    fn admit(
        &mut self,
        user: String,
    ) -> Result<Admission, tokio::sync::oneshot::Receiver<Admission>> {
        if self.shutting_down {
            return Ok(Admission::Refused(Refusal::ShuttingDown));
        }
        if self.holders.contains(&user) || self.holders.len() < self.cfg.max_instances {
            self.holders.insert(user);
            return Ok(Admission::Granted);
        }
        match self.eviction_candidate(&user) {
            Some((victim, handle)) => {
                tracing::info!(
                    evicted = %victim,
                    for_user = %user,
                    idle_secs = handle.activity.idle_for().as_secs(),
                    "instance limit reached; evicting the least recently active idle instance"
                );
                // The victim keeps its room until it is at rest (`Released`).
                self.evicting.insert(victim);
                handle.addr.do_send(Stop {
                    reason: StopReason::Evicted,
                });
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.waiting.push_back((user, tx));
                Err(rx)
            }
            None => {
                let retry_after = self.retry_after();
                tracing::warn!(
                    user = %user,
                    max_instances = self.cfg.max_instances,
                    retry_after_secs = retry_after.as_secs(),
                    "instance limit reached and no instance is idle enough to evict"
                );
                Ok(Admission::Refused(Refusal::Capacity { retry_after }))
            }
        }
    }

    /// Gives free room to the starts waiting for it, first come first served. A start that
    /// stopped waiting (its instance was stopped meanwhile) gives the room straight back.
    fn hand_out_room(&mut self) {
        while self.holders.len() < self.cfg.max_instances {
            let Some((user, tx)) = self.waiting.pop_front() else {
                return;
            };
            self.holders.insert(user.clone());
            if tx.send(Admission::Granted).is_err() {
                self.holders.remove(&user);
            }
        }
    }

    fn ready_holders(&self, except: &str) -> Vec<(String, InstanceHandle)> {
        self.holders
            .iter()
            .filter(|u| u.as_str() != except)
            .filter_map(|u| self.routes.get(u).map(|h| (u.clone(), h.clone())))
            .filter(|(_, h)| h.status.borrow().state == InstanceState::Ready)
            .collect()
    }

    fn eviction_candidate(&self, except: &str) -> Option<(String, InstanceHandle)> {
        self.ready_holders(except)
            .into_iter()
            .filter(|(u, _)| !self.evicting.contains(u))
            .map(|(u, h)| (h.activity.idle_for(), u, h))
            .filter(|(idle, _, _)| *idle >= self.cfg.evict_min_idle)
            .max_by_key(|(idle, _, _)| *idle)
            .map(|(_, u, h)| (u, h))
    }

    /// When the next instance becomes evictable, clamped to a sensible client retry delay.
    fn retry_after(&self) -> Duration {
        self.ready_holders("")
            .iter()
            .map(|(_, h)| {
                self.cfg
                    .evict_min_idle
                    .saturating_sub(h.activity.idle_for())
            })
            .min()
            .unwrap_or(Duration::from_secs(5))
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    fn stats(&self) -> PoolStats {
        let mut by_state: BTreeMap<&'static str, usize> =
            InstanceState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let mut users: Vec<UserStats> = self
            .routes
            .iter()
            .map(|entry| {
                let handle = entry.value();
                let status = handle.status.borrow().clone();
                *by_state.entry(status.state.as_str()).or_default() += 1;
                UserStats {
                    user_id: entry.key().clone(),
                    state: status.state,
                    pid: status.pid,
                    port: status.port(),
                    started_at: status.started_at_ms,
                    last_activity: handle.activity.last_epoch_ms(),
                    restarts: status.restarts,
                    rss_bytes: status.pid.and_then(procfs::rss_bytes),
                    disk_bytes: status.disk_bytes,
                    oom_kills: status.oom_kills,
                    busy_sessions: status.busy_sessions,
                    message: status.message,
                }
            })
            .collect();
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        self.shared
            .metrics
            .set_states(|s| by_state.get(s.as_str()).copied().unwrap_or(0));
        PoolStats {
            max_instances: self.cfg.max_instances,
            max_concurrent_starts: self.cfg.max_concurrent_starts,
            disk_quota: self.shared.cfg.disk_quota,
            host_oom_kills: procfs::host_oom_kills(),
            instances: self.holders.len(),
            starts_waiting: self.waiting.len(),
            by_state,
            users,
        }
    }

    fn retire_unused(&mut self, ctx: &mut Context<Self>) {
        let idle_for = self.cfg.retire_after;
        for entry in self.routes.iter() {
            let handle = entry.value();
            if handle.status.borrow().state != InstanceState::Stopped
                || handle.activity.idle_for() < idle_for
            {
                continue;
            }
            let user = entry.key().clone();
            let addr = handle.addr.clone();
            let routes = Arc::clone(&self.routes);
            ctx.spawn(handle.addr.send(Retire { idle_for }).into_actor(self).map(
                move |retired, _, _| {
                    if matches!(retired, Ok(true)) {
                        routes.remove_if(&user, |_, h| h.addr == addr);
                        tracing::debug!(user = %user, "retired unused instance");
                    }
                },
            ));
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(60), |act, ctx| act.retire_unused(ctx));
    }
}

impl Handler<Open> for Registry {
    type Result = MessageResult<Open>;

    fn handle(&mut self, msg: Open, ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.open(msg.0, ctx))
    }
}

impl Handler<Admit> for Registry {
    type Result = ResponseFuture<Admission>;

    fn handle(&mut self, msg: Admit, _: &mut Self::Context) -> Self::Result {
        match self.admit(msg.user) {
            Ok(admission) => Box::pin(std::future::ready(admission)),
            Err(room) => Box::pin(async move {
                room.await
                    .unwrap_or(Admission::Refused(Refusal::ShuttingDown))
            }),
        }
    }
}

impl Handler<Released> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Released, _: &mut Self::Context) {
        self.holders.remove(&msg.user);
        self.evicting.remove(&msg.user);
        if self.shutting_down {
            for (_, tx) in self.waiting.drain(..) {
                let _ = tx.send(Admission::Refused(Refusal::ShuttingDown));
            }
        } else {
            self.hand_out_room();
        }
    }
}

impl Handler<StopUser> for Registry {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: StopUser, _: &mut Self::Context) -> Self::Result {
        let addr = self.routes.get(&msg.user).map(|h| h.addr.clone());
        Box::pin(async move {
            match addr {
                Some(addr) => addr.send(Stop { reason: msg.reason }).await.is_ok(),
                None => false,
            }
        })
    }
}

impl Handler<Stats> for Registry {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.stats())
    }
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        for (_, tx) in self.waiting.drain(..) {
            let _ = tx.send(Admission::Refused(Refusal::ShuttingDown));
        }
        let addrs: Vec<_> = self.routes.iter().map(|e| e.addr.clone()).collect();
        tracing::info!(instances = addrs.len(), "stopping every instance");
        Box::pin(async move {
            let stops = addrs.iter().map(|a| {
                a.send(Stop {
                    reason: StopReason::Shutdown,
                })
            });
            futures_util::future::join_all(stops).await;
        })
    }
}

#[cfg(test)]
mod tests {
    //! The registry and instances with stand-in `opencode` shell scripts.

    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;
    use crate::config::InstanceConfig;
    use crate::instance::{Wake, WakeReply};
    use crate::launcher::{LaunchConfig, Launcher};
    use crate::metrics::InstanceMetrics;
    use crate::workspace::UserKey;

    /// Prints the start line (for a port nothing listens on) and sleeps.
    const LISTENS: &str =
        "echo 'opencode server listening on http://127.0.0.1:9'\nexec sleep 1000\n";
    const NEVER_LISTENS: &str = "echo 'stuck before listening' >&2\nexec sleep 1000\n";
    const CRASHES: &str =
        "echo 'opencode server listening on http://127.0.0.1:9'\necho 'oh no' >&2\nexit 7\n";

    struct Setup {
        dir: tempfile::TempDir,
        registry: Addr<Registry>,
        routes: Routes,
    }

    fn setup(script: &str, reg: RegistryConfig, inst: InstanceConfig) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("opencode");
        std::fs::write(&program, format!("#!/bin/sh\n{script}")).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let users = dir.path().join("users");
        std::fs::create_dir(&users).unwrap();
        let isolation = Arc::new(
            crate::isolation::Isolation::new(crate::isolation::IsolationConfig {
                mode: crate::isolation::IsolationMode::None,
                uid_range: (0, 0),
                uid_map: dir.path().join("uids.json"),
                accounts: None,
                read_only: vec![],
                limits: Default::default(),
            })
            .unwrap(),
        );
        let local = crate::instance::Local {
            launcher: Launcher::new(LaunchConfig {
                program,
                extra_args: vec![],
                env_allow: vec!["PATH".into()],
                gc_ram: None,
            }),
            homes: Arc::new(crate::provision::Homes::new(
                crate::workspace::UsersRoot::new(&users),
                Arc::clone(&isolation),
                crate::as_user::Runner::in_process(),
                dir.path().join("shared-auth.json"),
            )),
            account: "test".into(),
            isolation,
            org: crate::org::OrgFiles {
                auth: dir.path().join("shared-auth.json"),
                config: dir.path().join("shared-opencode.json"),
            },
            relay: crate::llm::RelaySettings {
                base_url: "http://127.0.0.1:9".into(),
                upstreams: Default::default(),
                grants: Default::default(),
            },
        };
        let shared = InstanceShared {
            backend: Rc::new(crate::instance::LocalBackend::new(
                local,
                inst.health_timeout,
            )),
            cfg: inst,
            start_slots: Arc::new(tokio::sync::Semaphore::new(reg.max_concurrent_starts)),
            metrics: InstanceMetrics::new(),
        };
        let registry = Registry::new(reg, shared);
        let routes = registry.routes();
        Setup {
            dir,
            registry: registry.start(),
            routes,
        }
    }

    fn quiet() -> InstanceConfig {
        InstanceConfig {
            health_interval: Duration::from_secs(3600),
            stop_grace: Duration::from_secs(2),
            ..InstanceConfig::default()
        }
    }

    fn spec(user: &str) -> UserSpec {
        UserSpec {
            user_id: user.into(),
            key: UserKey::derive(user),
            email: Some(format!("{user}@localhost")),
            name: None,
        }
    }

    async fn settle(handle: &InstanceHandle, states: &[InstanceState]) -> InstanceStatus {
        let mut rx = handle.status.clone();
        let status = tokio::time::timeout(
            Duration::from_secs(30),
            rx.wait_for(|s| states.contains(&s.state)),
        )
        .await
        .expect("state reached in time")
        .expect("instance alive");
        status.clone()
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    #[actix::test]
    async fn wake_starts_a_process_and_stop_ends_it() {
        let s = setup(LISTENS, RegistryConfig::default(), quiet());
        let handle = s.registry.send(Open(spec("alice"))).await.unwrap();
        assert!(s.routes.contains_key("alice"));
        assert!(matches!(
            handle.addr.send(Wake { explicit: false }).await.unwrap(),
            WakeReply::Pending
        ));
        let ready = settle(&handle, &[InstanceState::Ready]).await;
        let pid = ready.pid.unwrap();
        assert!(alive(pid));
        assert_eq!(ready.port(), Some(9));
        assert!(Path::new(&s.dir.path().join("users/alice/workspace")).is_dir());
        assert!(matches!(
            handle.addr.send(Wake { explicit: false }).await.unwrap(),
            WakeReply::Ready(_)
        ));

        handle
            .addr
            .send(Stop {
                reason: StopReason::Person,
            })
            .await
            .unwrap();
        let stopped = handle.status.borrow().clone();
        assert_eq!(stopped.state, InstanceState::Stopped);
        assert!(stopped.upstream.is_none());
        // `sleep` replaced the shell; SIGTERM to the group ended it.
        for _ in 0..200 {
            if !alive(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive(pid));
        let stats = s.registry.send(Stats).await.unwrap();
        assert_eq!(stats.instances, 0, "room given back");
        assert_eq!(stats.by_state["stopped"], 1);
    }

    #[actix::test]
    async fn full_registry_refuses_until_an_instance_is_idle_enough_to_evict() {
        let reg = RegistryConfig {
            max_instances: 1,
            evict_min_idle: Duration::from_millis(300),
            ..RegistryConfig::default()
        };
        let s = setup(LISTENS, reg, quiet());
        let alice = s.registry.send(Open(spec("alice"))).await.unwrap();
        alice.addr.send(Wake { explicit: false }).await.unwrap();
        settle(&alice, &[InstanceState::Ready]).await;

        let bob = s.registry.send(Open(spec("bob"))).await.unwrap();
        bob.addr.send(Wake { explicit: false }).await.unwrap();
        let refused = settle(&bob, &[InstanceState::Stopped]).await;
        assert!(
            matches!(refused.refusal, Some(Refusal::Capacity { retry_after }) if retry_after >= Duration::from_secs(1)),
            "{refused:?}"
        );

        tokio::time::sleep(Duration::from_millis(400)).await;
        bob.addr.send(Wake { explicit: false }).await.unwrap();
        settle(&bob, &[InstanceState::Ready]).await;
        let evicted = settle(&alice, &[InstanceState::Stopped]).await;
        assert!(evicted.message.unwrap_or_default().contains("make room"));
        assert_eq!(s.registry.send(Stats).await.unwrap().instances, 1);
    }

    #[actix::test]
    async fn a_crash_is_noticed_and_the_stderr_tail_kept() {
        let s = setup(CRASHES, RegistryConfig::default(), quiet());
        let handle = s.registry.send(Open(spec("carol"))).await.unwrap();
        handle.addr.send(Wake { explicit: false }).await.unwrap();
        let crashed = settle(&handle, &[InstanceState::Stopped, InstanceState::Failed]).await;
        let message = crashed.message.unwrap_or_default();
        assert!(message.contains("exit status: 7"), "{message}");
        assert!(message.contains("oh no"), "{message}");
        assert_eq!(
            crashed.state,
            InstanceState::Stopped,
            "one crash is not a crash loop"
        );
    }

    #[actix::test]
    async fn a_start_without_a_listening_line_fails_at_the_timeout() {
        let inst = InstanceConfig {
            start_timeout: Duration::from_millis(500),
            ..quiet()
        };
        let s = setup(NEVER_LISTENS, RegistryConfig::default(), inst);
        let handle = s.registry.send(Open(spec("dave"))).await.unwrap();
        handle.addr.send(Wake { explicit: false }).await.unwrap();
        let starting = settle(&handle, &[InstanceState::Starting]).await;
        let failed = settle(&handle, &[InstanceState::Failed]).await;
        let message = failed.message.unwrap_or_default();
        assert!(message.contains("did not report listening"), "{message}");
        assert!(message.contains("stuck before listening"), "{message}");
        if let Some(pid) = starting.pid {
            assert!(!alive(pid));
        }
        // A request does not restart a failed instance; an explicit start does.
        assert!(matches!(
            handle.addr.send(Wake { explicit: false }).await.unwrap(),
            WakeReply::Failed(_)
        ));
        assert!(matches!(
            handle.addr.send(Wake { explicit: true }).await.unwrap(),
            WakeReply::Pending
        ));
    }

    #[actix::test]
    async fn shutdown_stops_everything_and_refuses_new_starts() {
        let s = setup(LISTENS, RegistryConfig::default(), quiet());
        let mut pids = Vec::new();
        for user in ["a", "b", "c"] {
            let h = s.registry.send(Open(spec(user))).await.unwrap();
            h.addr.send(Wake { explicit: false }).await.unwrap();
            pids.push(settle(&h, &[InstanceState::Ready]).await.pid.unwrap());
        }
        s.registry.send(Shutdown).await.unwrap();
        for entry in s.routes.iter() {
            assert_eq!(entry.status.borrow().state, InstanceState::Stopped);
        }
        for pid in pids {
            for _ in 0..200 {
                if !alive(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(!alive(pid), "pid {pid} outlived the shutdown");
        }
        let late = s.registry.send(Open(spec("late"))).await.unwrap();
        late.addr.send(Wake { explicit: false }).await.unwrap();
        let refused = settle(&late, &[InstanceState::Stopped]).await;
        assert_eq!(refused.refusal, Some(Refusal::ShuttingDown));
    }
}
