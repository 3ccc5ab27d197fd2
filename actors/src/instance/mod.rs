//! `UserInstance`: one user's OpenCode process and its lifecycle.
//!
//! Messages
//! - `Wake { explicit }` → `WakeReply`: a client wants the instance; starts it when stopped.
//!   Only an explicit start (a person pressing "start") leaves the `failed` state.
//! - `Stop { reason }` → resolves once the instance is at rest (stopped or failed). A stop by
//!   a person or an operator also resets `failed`.
//! - `Retire { idle_for }` → `bool`: the registry forgets instances stopped for a long time.
//! - internal: `Listening` (start line seen), `Exited` (process reaped); timers for the start
//!   timeout, the stop grace period, health checks and the idle timeout.
//!
//! Transitions
//! ```text
//! stopped ─Wake─▶ queued ─(admitted by the registry, start slot)─▶ starting ─(listening)─▶ ready
//! queued ─(refused: no room, shutting down)─▶ stopped
//! starting ─(start timeout: SIGKILL)─▶ stopping ─▶ failed
//! starting, ready ─(process exits)─▶ stopped (crash: next request restarts it after a backoff)
//!                                    failed  (crash_limit crashes within crash_window)
//! ready ─(health_failures failed checks)─▶ stopping ─▶ queued (restart)
//! ready ─(idle, evicted, Stop)─▶ stopping ─(exit, or SIGKILL after the grace)─▶ stopped
//! failed ─Wake{explicit}─▶ queued        failed ─Stop by a person or operator─▶ stopped
//! ```
//! The actor never blocks: the workspace is prepared on the blocking pool, output and exit are
//! watched by separate tasks that report back with messages tagged by `generation`, so a
//! message about an earlier process is recognised and ignored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use nix::sys::signal::Signal;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::activity::Activity;
use crate::busy;
use crate::clock;
use crate::config::InstanceConfig;
use crate::health;
use crate::isolation::{reaper, Isolation};
use crate::launcher::{self, ChildSpec, Launcher, StderrTail};
use crate::metrics::{CullReason, InstanceMetrics, StartOutcome};
use crate::org::OrgFiles;
use crate::procfs;
use crate::proctree::Descendants;
use crate::provision::{Homes, Profile};
use crate::registry::{Admission, Admit, Registry, Released};
use crate::status::{InstanceState, InstanceStatus, Refusal, Upstream};
use crate::workspace::UserKey;

mod crashes;
mod process;
mod start;

use crashes::Crashes;
use process::{reap_uid, Process};
use start::{child_env, prepare, Prepared};

/// Who an instance belongs to.
#[derive(Clone, Debug)]
pub struct UserSpec {
    pub user_id: String,
    pub key: UserKey,
    pub email: Option<String>,
    pub name: Option<String>,
}

/// What every instance shares: configuration and the means to start processes.
pub struct InstanceShared {
    pub cfg: InstanceConfig,
    pub launcher: Launcher,
    /// Every home, and working in one as its user.
    pub homes: Arc<Homes>,
    /// `--max-concurrent-starts`; fair (FIFO), so queued instances start in order.
    pub start_slots: Arc<Semaphore>,
    pub metrics: InstanceMetrics,
    /// USER/LOGNAME for children without a uid of their own: the gateway's account.
    pub account: String,
    pub isolation: Arc<Isolation>,
    /// The organisation's OpenCode auth file (`shared/auth/auth.json`) and config
    /// (`shared/config/opencode.json`), read by the gateway at every start and handed to
    /// the child in its environment: users cannot read them on disk.
    pub org: OrgFiles,
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

#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop {
    pub reason: StopReason,
}

#[derive(Message)]
#[rtype(result = "bool")]
pub struct Retire {
    pub idle_for: Duration,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Listening {
    generation: u64,
    addr: SocketAddr,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Exited {
    generation: u64,
    status: String,
    /// Ended by SIGKILL (which the gateway did not send, if it was not stopping it).
    killed: bool,
}

enum AfterStop {
    Rest,
    Restart,
    Fail(String),
}

enum Phase {
    Stopped,
    Queued {
        task: SpawnHandle,
    },
    Starting {
        _permit: OwnedSemaphorePermit,
        /// None while the workspace is being prepared.
        process: Option<Process>,
        task: SpawnHandle,
        timeout: SpawnHandle,
    },
    Ready {
        process: Process,
        upstream: Upstream,
        ready_at_ms: u64,
        health_failures: u32,
        probing: bool,
    },
    Stopping {
        process: Process,
        then: AfterStop,
        kill_timer: Option<SpawnHandle>,
    },
    Failed,
}

pub struct UserInstance {
    user: Arc<UserSpec>,
    shared: Arc<InstanceShared>,
    registry: Addr<Registry>,
    status: watch::Sender<InstanceStatus>,
    activity: Arc<Activity>,
    phase: Phase,
    generation: u64,
    /// An `Admit` was sent and not yet matched by a `Released`.
    slot_requested: bool,
    crashes: Crashes,
    /// The last process crashed; the next start is a restart.
    crashed: bool,
    restarts: u32,
    message: Option<String>,
    refusal: Option<Refusal>,
    health_client: Option<awc::Client>,
    /// The home's size as last measured, and when.
    disk: Option<(u64, Instant)>,
    /// A measurement is under way.
    measuring_disk: bool,
    /// OpenCode processes of this user the kernel's OOM killer ended.
    oom_kills: u32,
    /// Sessions at work when last asked, since when without a break, and whether a question
    /// is under way.
    busy: u32,
    busy_since: Option<Instant>,
    asking_busy: bool,
    /// The log has said that sessions are busy for longer than `--busy-timeout`.
    busy_overdue: bool,
    /// When the current stop began (for `chamberlain_instance_stop_seconds`).
    stopping_since: Option<Instant>,
}

impl UserInstance {
    pub fn new(
        user: Arc<UserSpec>,
        shared: Arc<InstanceShared>,
        registry: Addr<Registry>,
        status: watch::Sender<InstanceStatus>,
        activity: Arc<Activity>,
    ) -> Self {
        Self {
            user,
            shared,
            registry,
            status,
            activity,
            phase: Phase::Stopped,
            generation: 0,
            slot_requested: false,
            crashes: Crashes::default(),
            crashed: false,
            restarts: 0,
            message: None,
            refusal: None,
            disk: None,
            measuring_disk: false,
            oom_kills: 0,
            busy: 0,
            busy_since: None,
            asking_busy: false,
            busy_overdue: false,
            stopping_since: None,
            health_client: None,
        }
    }

    fn cfg(&self) -> &InstanceConfig {
        &self.shared.cfg
    }

    fn state(&self) -> InstanceState {
        match self.phase {
            Phase::Stopped => InstanceState::Stopped,
            Phase::Queued { .. } => InstanceState::Queued,
            Phase::Starting { .. } => InstanceState::Starting,
            Phase::Ready { .. } => InstanceState::Ready,
            Phase::Stopping { .. } => InstanceState::Stopping,
            Phase::Failed => InstanceState::Failed,
        }
    }

    fn process(&self) -> Option<&Process> {
        match &self.phase {
            Phase::Starting { process, .. } => process.as_ref(),
            Phase::Ready { process, .. } | Phase::Stopping { process, .. } => Some(process),
            _ => None,
        }
    }

    /// With a quota, a start waits for a measurement unless a recent one was under it
    /// (one over it is always taken again: the operator may have freed space).
    fn must_measure_before_start(&self) -> bool {
        let cfg = self.cfg();
        cfg.disk_quota.is_some()
            && self.disk.is_none_or(|(bytes, at)| {
                cfg.disk_full(bytes) || at.elapsed() >= cfg.disk_check_interval
            })
    }

    /// A running instance's home is measured now and then, as the user, off the actor.
    fn on_disk_tick(&mut self, ctx: &mut Context<Self>) {
        if self.measuring_disk || !matches!(self.phase, Phase::Ready { .. }) {
            return;
        }
        self.measuring_disk = true;
        let shared = Arc::clone(&self.shared);
        let key = self.user.key.clone();
        ctx.spawn(
            async move { tokio::task::spawn_blocking(move || shared.homes.usage(&key)).await }
                .into_actor(self)
                .map(|result, act, _ctx| {
                    act.measuring_disk = false;
                    match result {
                        Ok(Ok(Some(bytes))) => act.on_disk_measured(bytes),
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(user = %act.user.user_id, error = %e, "cannot measure the home")
                        }
                        Err(e) => {
                            tracing::warn!(user = %act.user.user_id, error = %e, "measuring the home was interrupted")
                        }
                    }
                }),
        );
    }

    fn on_disk_measured(&mut self, bytes: u64) {
        self.disk = Some((bytes, Instant::now()));
        if self.cfg().disk_warning(bytes) {
            tracing::warn!(
                user = %self.user.user_id,
                bytes,
                quota = self.cfg().disk_quota,
                full = self.cfg().disk_full(bytes),
                "the home is near or over the disk quota"
            );
        }
        self.publish();
    }

    fn publish(&self) {
        let state = self.state();
        let (upstream, started_at_ms) = match &self.phase {
            Phase::Ready {
                upstream,
                ready_at_ms,
                ..
            } => (Some(upstream.clone()), Some(*ready_at_ms)),
            _ => (None, None),
        };
        let status = InstanceStatus {
            state,
            message: self.message.clone(),
            refusal: self.refusal.clone(),
            upstream,
            pid: self.process().map(|p| p.pid.as_raw() as u32),
            started_at_ms,
            restarts: self.restarts,
            disk_bytes: self.disk.map(|(bytes, _)| bytes),
            disk_quota: self.cfg().disk_quota,
            oom_kills: self.oom_kills,
            busy_sessions: if matches!(self.phase, Phase::Ready { .. }) {
                self.busy
            } else {
                0
            },
        };
        let previous = self.status.send_replace(status);
        if previous.state != state {
            tracing::info!(
                user = %self.user.user_id,
                from = %previous.state,
                to = %state,
                message = self.message.as_deref().unwrap_or(""),
                "instance state changed"
            );
        }
    }

    // ---- starting -------------------------------------------------------------------------

    fn wake(&mut self, explicit: bool, ctx: &mut Context<Self>) -> WakeReply {
        match &mut self.phase {
            Phase::Ready { upstream, .. } => WakeReply::Ready(upstream.clone()),
            Phase::Queued { .. } | Phase::Starting { .. } => WakeReply::Pending,
            Phase::Stopping { then, .. } => match then {
                AfterStop::Rest => {
                    *then = AfterStop::Restart;
                    WakeReply::Pending
                }
                AfterStop::Restart => WakeReply::Pending,
                AfterStop::Fail(_) if explicit => {
                    *then = AfterStop::Restart;
                    WakeReply::Pending
                }
                AfterStop::Fail(message) => WakeReply::Failed(message.clone()),
            },
            Phase::Failed if !explicit => WakeReply::Failed(
                self.message
                    .clone()
                    .unwrap_or_else(|| "instance failed".to_owned()),
            ),
            Phase::Failed => {
                self.crashes.clear();
                self.crashed = false;
                self.begin_queued(Duration::ZERO, ctx);
                WakeReply::Pending
            }
            Phase::Stopped => {
                let delay = self.pending_backoff();
                if self.crashed {
                    self.crashed = false;
                    self.restarts += 1;
                    self.shared.metrics.restart();
                }
                self.begin_queued(delay, ctx);
                WakeReply::Pending
            }
        }
    }

    /// What is left of the backoff after the most recent crash.
    fn pending_backoff(&mut self) -> Duration {
        self.crashes
            .pending_backoff(Instant::now(), &self.shared.cfg)
    }

    fn begin_queued(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        self.refusal = None;
        self.message = Some(if delay.is_zero() {
            "waiting for room to start".to_owned()
        } else {
            format!("restarting after a crash in {:.1}s", delay.as_secs_f64())
        });
        self.slot_requested = true;
        let registry = self.registry.clone();
        let user = self.user.user_id.clone();
        let task = ctx.spawn(
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                registry.send(Admit { user }).await
            }
            .into_actor(self)
            .map(|admission, act, ctx| act.on_admission(admission, ctx)),
        );
        self.phase = Phase::Queued { task };
        self.publish();
    }

    fn on_admission(
        &mut self,
        admission: Result<Admission, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(self.phase, Phase::Queued { .. }) {
            return;
        }
        match admission {
            Ok(Admission::Granted) => {
                self.message = Some("waiting for a start slot".to_owned());
                self.publish();
                let slots = Arc::clone(&self.shared.start_slots);
                let task = ctx.spawn(
                    async move { slots.acquire_owned().await }
                        .into_actor(self)
                        .map(|permit, act, ctx| match permit {
                            Ok(permit) => act.begin_starting(permit, ctx),
                            Err(_) => act.rest(
                                InstanceState::Stopped,
                                Some("the gateway is shutting down".to_owned()),
                            ),
                        }),
                );
                self.phase = Phase::Queued { task };
            }
            Ok(Admission::Refused(refusal)) => {
                self.shared.metrics.start(StartOutcome::Refused);
                let message = match &refusal {
                    Refusal::Capacity { .. } => {
                        "the gateway is at its instance limit; try again shortly"
                    }
                    Refusal::ShuttingDown => "the gateway is shutting down",
                };
                self.refusal = Some(refusal);
                self.rest(InstanceState::Stopped, Some(message.to_owned()));
            }
            Err(_) => {
                self.refusal = Some(Refusal::ShuttingDown);
                self.rest(
                    InstanceState::Stopped,
                    Some("the gateway is shutting down".to_owned()),
                );
            }
        }
    }

    fn begin_starting(&mut self, permit: OwnedSemaphorePermit, ctx: &mut Context<Self>) {
        let shared = Arc::clone(&self.shared);
        let user = Arc::clone(&self.user);
        let measure = self.must_measure_before_start();
        let timeout = ctx.run_later(self.cfg().start_timeout, |act, ctx| {
            act.on_start_timeout(ctx)
        });
        let task = ctx.spawn(
            async move {
                match tokio::task::spawn_blocking(move || prepare(&shared, &user, measure)).await {
                    Ok(result) => result,
                    Err(join) => Err(format!("preparing the workspace: {join}")),
                }
            }
            .into_actor(self)
            .map(|result, act, ctx| act.on_workspace(result, ctx)),
        );
        self.message = Some("starting OpenCode".to_owned());
        self.phase = Phase::Starting {
            _permit: permit,
            process: None,
            task,
            timeout,
        };
        self.publish();
    }

    fn on_workspace(&mut self, result: Result<Prepared, String>, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::Starting { process: None, .. }) {
            return;
        }
        let Prepared {
            workspace,
            ids,
            org_env,
            disk_bytes,
        } = match result {
            Ok(prepared) => prepared,
            Err(e) => return self.fail_start(StartOutcome::Error, e, ctx),
        };
        if let Some(bytes) = disk_bytes {
            self.disk = Some((bytes, Instant::now()));
            if self.cfg().disk_full(bytes) {
                tracing::warn!(user = %self.user.user_id, bytes, quota = self.cfg().disk_quota, "start refused: the home is over the disk quota");
                let message = format!(
                    "your home takes {}, over this gateway's disk quota of {}: an operator must \
                     free space in it before OpenCode can start again",
                    human_bytes(bytes),
                    human_bytes(self.cfg().disk_quota.unwrap_or(0))
                );
                return self.fail_start(StartOutcome::Error, message, ctx);
            }
        }
        let password = match launcher::generate_password() {
            Ok(p) => p,
            Err(e) => return self.fail_start(StartOutcome::Error, e.to_string(), ctx),
        };
        let sandbox = match self.shared.isolation.child_sandbox(workspace.home(), ids) {
            Ok(s) => s,
            Err(e) => return self.fail_start(StartOutcome::Error, e.to_string(), ctx),
        };
        let account = match ids {
            Some(_) => self.user.key.as_str().to_owned(),
            None => self.shared.account.clone(),
        };
        let marker = match launcher::generate_password() {
            Ok(m) => m,
            Err(e) => return self.fail_start(StartOutcome::Error, e.to_string(), ctx),
        };
        let mut extra_env = child_env(&self.user.profile());
        extra_env.extend(org_env);
        extra_env.push((launcher::MARKER_VAR.to_owned(), marker.clone()));
        let launched = self.shared.launcher.launch(&ChildSpec {
            workspace: &workspace,
            password: &password,
            account: &account,
            extra_env: &extra_env,
            sandbox: Some(&sandbox),
        });
        drop(sandbox);
        let launched = match launched {
            Ok(l) => l,
            Err(e) => return self.fail_start(StartOutcome::Error, e.to_string(), ctx),
        };
        self.generation += 1;
        let generation = self.generation;
        let stderr = StderrTail::default();
        let user = self.user.user_id.clone();
        let me = ctx.address();
        actix::spawn(launcher::follow_stdout(
            launched.stdout,
            user.clone(),
            move |addr| me.do_send(Listening { generation, addr }),
        ));
        actix::spawn(launcher::follow_stderr(
            launched.stderr,
            user,
            stderr.clone(),
        ));
        let me = ctx.address();
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
            me.do_send(Exited {
                generation,
                status,
                killed,
            });
        });
        tracing::info!(
            user = %self.user.user_id,
            pid = launched.pid.as_raw(),
            uid = ids.map(|i| i.uid),
            program = %self.shared.launcher.program().display(),
            "spawned OpenCode"
        );
        if let Phase::Starting { process, .. } = &mut self.phase {
            *process = Some(Process {
                pid: launched.pid,
                generation,
                stderr,
                spawned_at: Instant::now(),
                stopping: CancellationToken::new(),
                password,
                descendants: Descendants::default(),
                uid: ids.map(|i| i.uid),
                marker,
                host_oom_kills_at_spawn: procfs::host_oom_kills(),
            });
        }
        self.publish();
    }

    /// A start that never produced a process.
    fn fail_start(&mut self, outcome: StartOutcome, message: String, ctx: &mut Context<Self>) {
        if let Phase::Starting { timeout, .. } = &self.phase {
            ctx.cancel_future(*timeout);
        }
        self.shared.metrics.start(outcome);
        tracing::error!(user = %self.user.user_id, error = %message, "instance start failed");
        self.rest(InstanceState::Failed, Some(message));
    }

    fn on_listening(&mut self, msg: Listening, ctx: &mut Context<Self>) {
        let Phase::Starting {
            process: Some(process),
            timeout,
            ..
        } = &self.phase
        else {
            return;
        };
        if process.generation != msg.generation {
            return;
        }
        ctx.cancel_future(*timeout);
        let Phase::Starting {
            process: Some(mut process),
            ..
        } = std::mem::replace(&mut self.phase, Phase::Stopped)
        else {
            return;
        };
        process.look_for_descendants();
        let spawn_time = process.spawned_at.elapsed();
        self.shared.metrics.spawn_duration(spawn_time.as_secs_f64());
        self.shared.metrics.start(StartOutcome::Ready);
        let upstream = Upstream {
            addr: msg.addr,
            authorization: launcher::basic_authorization(&process.password).into(),
            generation: process.generation,
            stopping: process.stopping.clone(),
        };
        tracing::info!(
            user = %self.user.user_id,
            addr = %msg.addr,
            spawn_ms = spawn_time.as_millis() as u64,
            "OpenCode is listening"
        );
        // A fresh idle window: the start itself may have taken a while.
        self.activity.touch();
        self.busy = 0;
        self.busy_since = None;
        self.busy_overdue = false;
        self.message = None;
        self.phase = Phase::Ready {
            process,
            upstream,
            ready_at_ms: clock::to_epoch_ms(clock::mono_ms()),
            health_failures: 0,
            probing: false,
        };
        self.publish();
        // The first size of a home is known soon after its first start, not an interval on.
        if self.disk.is_none() {
            self.on_disk_tick(ctx);
        }
    }

    fn on_start_timeout(&mut self, ctx: &mut Context<Self>) {
        let secs = self.cfg().start_timeout.as_secs_f64();
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Starting {
                process: Some(mut process),
                ..
            } => {
                self.shared.metrics.start(StartOutcome::Timeout);
                let message = with_output(
                    format!("OpenCode did not report listening within {secs}s"),
                    &process.stderr,
                );
                tracing::error!(user = %self.user.user_id, error = %message, "instance start timed out");
                process.stopping.cancel();
                process.look_for_everything();
                process.signal_all(&self.user.user_id, Signal::SIGKILL);
                self.message = Some("stopping OpenCode after a failed start".to_owned());
                self.phase = Phase::Stopping {
                    process,
                    then: AfterStop::Fail(message),
                    kill_timer: None,
                };
                self.publish();
            }
            Phase::Starting {
                process: None,
                task,
                ..
            } => {
                ctx.cancel_future(task);
                self.shared.metrics.start(StartOutcome::Timeout);
                self.rest(
                    InstanceState::Failed,
                    Some(format!("preparing the workspace took longer than {secs}s")),
                );
            }
            other => self.phase = other,
        }
    }

    // ---- running --------------------------------------------------------------------------

    fn on_health_tick(&mut self, ctx: &mut Context<Self>) {
        let Phase::Ready {
            process,
            upstream,
            probing,
            ..
        } = &mut self.phase
        else {
            return;
        };
        // Keep the list of terminals and tools current, so that even a crash (after which
        // they are orphans no longer below OpenCode) leaves nothing behind.
        process.look_for_descendants();
        if *probing {
            return;
        }
        *probing = true;
        let upstream = upstream.clone();
        let generation = upstream.generation;
        let client = self.health_client();
        ctx.spawn(
            async move { health::probe(&client, &upstream).await }
                .into_actor(self)
                .map(move |result, act, ctx| act.on_health(generation, result, ctx)),
        );
        // Keeps `busySessions` current, and a working instance from looking idle to the
        // eviction.
        self.ask_busy(false, ctx);
    }

    /// The client of health checks and busy questions (one per instance, made on first use).
    fn health_client(&mut self) -> awc::Client {
        self.health_client
            .get_or_insert_with(|| health::client(self.shared.cfg.health_timeout))
            .clone()
    }

    fn on_health(
        &mut self,
        generation: u64,
        result: Result<(), health::HealthError>,
        ctx: &mut Context<Self>,
    ) {
        let limit = self.cfg().health_failures;
        let Phase::Ready {
            upstream,
            health_failures,
            probing,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if upstream.generation != generation {
            return;
        }
        *probing = false;
        match result {
            Ok(()) => *health_failures = 0,
            Err(e) => {
                *health_failures += 1;
                let failures = *health_failures;
                tracing::warn!(user = %self.user.user_id, failures, error = %e, "health check failed");
                if failures >= limit {
                    self.restarts += 1;
                    self.shared.metrics.restart();
                    self.message = Some(format!(
                        "restarting after {failures} failed health checks ({e})"
                    ));
                    self.begin_stopping(AfterStop::Restart, ctx);
                }
            }
        }
    }

    /// No client for the idle timeout: ask OpenCode whether an agent is at work before
    /// stopping (work in progress is activity).
    fn on_idle_tick(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::Ready { .. }) {
            return;
        }
        if self.activity.idle_for() >= self.cfg().idle_timeout {
            self.ask_busy(true, ctx);
        }
    }

    /// Asks OpenCode how many sessions are at work; with `then_cull`, stops the instance
    /// if none is and nobody came in the meantime.
    fn ask_busy(&mut self, then_cull: bool, ctx: &mut Context<Self>) {
        let Phase::Ready { upstream, .. } = &self.phase else {
            return;
        };
        if self.asking_busy {
            return;
        }
        self.asking_busy = true;
        let upstream = upstream.clone();
        let generation = upstream.generation;
        let client = self.health_client();
        ctx.spawn(
            async move { busy::busy_sessions(&client, &upstream).await }
                .into_actor(self)
                .map(move |result, act, ctx| act.on_busy(generation, result, then_cull, ctx)),
        );
    }

    fn on_busy(
        &mut self,
        generation: u64,
        result: Result<u32, busy::BusyError>,
        then_cull: bool,
        ctx: &mut Context<Self>,
    ) {
        self.asking_busy = false;
        let Phase::Ready { upstream, .. } = &self.phase else {
            return;
        };
        if upstream.generation != generation {
            return;
        }
        let busy = match result {
            Ok(n) => n,
            Err(e) => {
                // Not knowing is not "idle": the next tick asks again, and a hung OpenCode
                // is the health check's to restart.
                tracing::warn!(user = %self.user.user_id, error = %e, "cannot tell whether an agent is at work; not stopping now");
                return;
            }
        };
        let was = self.busy;
        self.busy = busy;
        if busy == 0 {
            self.busy_since = None;
            self.busy_overdue = false;
        } else {
            let since = *self.busy_since.get_or_insert_with(Instant::now);
            if since.elapsed() < self.cfg().busy_timeout {
                self.activity.touch();
            } else if !self.busy_overdue {
                self.busy_overdue = true;
                tracing::warn!(user = %self.user.user_id, busy, busy_for_s = since.elapsed().as_secs(), "sessions busy for longer than --busy-timeout no longer keep the instance running");
            }
        }
        if busy != was {
            tracing::debug!(user = %self.user.user_id, busy, "sessions at work");
            self.publish();
        }
        let idle = self.activity.idle_for();
        if then_cull && idle >= self.cfg().idle_timeout {
            self.shared.metrics.cull(CullReason::Idle);
            self.message = Some(format!(
                "stopped after {}s without activity",
                idle.as_secs()
            ));
            self.begin_stopping(AfterStop::Rest, ctx);
        }
    }

    fn on_exited(&mut self, msg: Exited, ctx: &mut Context<Self>) {
        let Some(process) = self.process() else {
            return;
        };
        if process.generation != msg.generation {
            return;
        }
        let out_of_memory = msg.killed
            && process
                .host_oom_kills_at_spawn
                .zip(procfs::host_oom_kills())
                .is_some_and(|(then, now)| now > then);
        let how = if out_of_memory {
            self.oom_kills += 1;
            self.shared.metrics.oom_kill();
            format!(
                "{}: killed by the kernel's OOM killer (the machine ran out of memory)",
                msg.status
            )
        } else {
            msg.status.clone()
        };
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Starting {
                process: Some(process),
                timeout,
                ..
            } => {
                ctx.cancel_future(timeout);
                self.shared.metrics.start(StartOutcome::Exited);
                self.crash(process, format!("OpenCode exited while starting ({how})"));
            }
            Phase::Ready { process, .. } => {
                self.crash(process, format!("OpenCode exited unexpectedly ({how})"));
            }
            Phase::Stopping {
                mut process,
                then,
                kill_timer,
            } => {
                if let Some(timer) = kill_timer {
                    ctx.cancel_future(timer);
                }
                // OpenCode is gone; whatever is left of its group or below it is an orphan.
                process.look_for_everything();
                process.signal_all(&self.user.user_id, Signal::SIGKILL);
                let Some(uid) = process.uid else {
                    return self.finish_stop(then, ctx);
                };
                // With a uid of the user's own, stay `stopping` until no process of that uid
                // is left: `stopped` then means nothing of the user runs.
                let generation = process.generation;
                let user = self.user.user_id.clone();
                self.phase = Phase::Stopping {
                    process,
                    then,
                    kill_timer: None,
                };
                ctx.spawn(
                    async move {
                        let reaped =
                            tokio::task::spawn_blocking(move || reap_uid(uid)).await;
                        match reaped {
                            Ok(0) => {}
                            Ok(left) => tracing::error!(user, uid, left, "processes of the user survived SIGKILL"),
                            Err(e) => tracing::error!(user, uid, error = %e, "reaping the user's processes failed"),
                        }
                    }
                    .into_actor(self)
                    .map(move |(), act, ctx| act.on_reaped(generation, ctx)),
                );
            }
            other => self.phase = other,
        }
    }

    fn on_reaped(&mut self, generation: u64, ctx: &mut Context<Self>) {
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Stopping { process, then, .. } if process.generation == generation => {
                self.finish_stop(then, ctx)
            }
            other => self.phase = other,
        }
    }

    /// The process is gone (and everything of the user with it): rest, fail or restart.
    fn finish_stop(&mut self, then: AfterStop, ctx: &mut Context<Self>) {
        if let Some(since) = self.stopping_since.take() {
            self.shared
                .metrics
                .stop_duration(since.elapsed().as_secs_f64());
        }
        match then {
            AfterStop::Rest => {
                let message = self.message.take();
                self.rest(InstanceState::Stopped, message);
            }
            AfterStop::Fail(message) => self.rest(InstanceState::Failed, Some(message)),
            AfterStop::Restart => {
                // Straight from stopping to queued: waiters must never see a
                // `stopped` in between and take it for the outcome.
                self.release_slot();
                self.begin_queued(Duration::ZERO, ctx);
            }
        }
    }

    fn crash(&mut self, mut process: Process, what: String) {
        self.shared.metrics.crash();
        process.stopping.cancel();
        process.look_for_everything();
        process.signal_all(&self.user.user_id, Signal::SIGKILL);
        let message = with_output(what, &process.stderr);
        let crashes = self.crashes.record(Instant::now(), &self.shared.cfg);
        if Crashes::is_loop(crashes, &self.shared.cfg) {
            let window = self.cfg().crash_window.as_secs();
            tracing::error!(user = %self.user.user_id, crashes, error = %message, "instance crash loop");
            self.rest(
                InstanceState::Failed,
                Some(format!(
                    "OpenCode crashed {crashes} times within {window}s; giving up. Last: {message}"
                )),
            );
        } else {
            tracing::warn!(user = %self.user.user_id, crashes, error = %message, "instance crashed");
            self.crashed = true;
            self.rest(InstanceState::Stopped, Some(message));
        }
    }

    // ---- stopping -------------------------------------------------------------------------

    fn stop(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
        match &mut self.phase {
            Phase::Stopped => {}
            Phase::Failed => {
                if matches!(reason, StopReason::Person | StopReason::Operator) {
                    self.crashes.clear();
                    self.crashed = false;
                    self.rest(InstanceState::Stopped, None);
                }
            }
            Phase::Queued { task } => {
                let task = *task;
                ctx.cancel_future(task);
                self.rest(
                    InstanceState::Stopped,
                    Some(stop_message(reason).to_owned()),
                );
            }
            Phase::Starting {
                process: None,
                task,
                timeout,
                ..
            } => {
                let (task, timeout) = (*task, *timeout);
                ctx.cancel_future(task);
                ctx.cancel_future(timeout);
                self.rest(
                    InstanceState::Stopped,
                    Some(stop_message(reason).to_owned()),
                );
            }
            Phase::Starting { timeout, .. } => {
                let timeout = *timeout;
                ctx.cancel_future(timeout);
                self.message = Some(stop_message(reason).to_owned());
                self.begin_stopping(AfterStop::Rest, ctx);
            }
            Phase::Ready { .. } => {
                match reason {
                    StopReason::Idle => self.shared.metrics.cull(CullReason::Idle),
                    StopReason::Evicted => self.shared.metrics.cull(CullReason::Evicted),
                    _ => {}
                }
                self.message = Some(stop_message(reason).to_owned());
                self.begin_stopping(AfterStop::Rest, ctx);
            }
            Phase::Stopping { then, .. } => {
                if matches!(then, AfterStop::Restart) {
                    *then = AfterStop::Rest;
                }
            }
        }
    }

    /// SIGTERM to the whole process group now, SIGKILL after the grace period.
    fn begin_stopping(&mut self, then: AfterStop, ctx: &mut Context<Self>) {
        let mut process = match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Starting {
                process: Some(process),
                ..
            }
            | Phase::Ready { process, .. } => process,
            other => {
                self.phase = other;
                return;
            }
        };
        process.stopping.cancel();
        process.look_for_everything();
        tracing::info!(
            user = %self.user.user_id,
            pid = process.pid.as_raw(),
            descendants = process.descendants.len(),
            "stopping OpenCode"
        );
        process.signal_all(&self.user.user_id, Signal::SIGTERM);
        self.stopping_since = Some(Instant::now());
        let generation = process.generation;
        let grace = self.cfg().stop_grace;
        let kill_timer = ctx.run_later(grace, move |act, _| act.on_grace_expired(generation));
        self.phase = Phase::Stopping {
            process,
            then,
            kill_timer: Some(kill_timer),
        };
        self.publish();
    }

    fn on_grace_expired(&mut self, generation: u64) {
        if let Phase::Stopping {
            process,
            kill_timer,
            ..
        } = &mut self.phase
        {
            if process.generation == generation {
                *kill_timer = None;
                // Which processes outlived SIGTERM (OpenCode itself exits at once; a
                // shell or a tool it started may not).
                let left = match process.uid {
                    Some(uid) => reaper::processes_of(uid),
                    None => vec![process.pid.as_raw() as u32],
                };
                tracing::warn!(
                    user = %self.user.user_id,
                    pid = process.pid.as_raw(),
                    still_running = %procfs::describe(&left),
                    "processes did not stop within the grace period; sending SIGKILL"
                );
                process.look_for_everything();
                process.signal_all(&self.user.user_id, Signal::SIGKILL);
            }
        }
    }

    /// Gives the instance's room under the limit back to the registry. Sent before any new
    /// `Admit` from this instance, so the registry sees them in order.
    fn release_slot(&mut self) {
        if self.slot_requested {
            self.slot_requested = false;
            self.registry.do_send(Released {
                user: self.user.user_id.clone(),
            });
        }
    }

    /// Enters `stopped` or `failed` and gives the instance's room back to the registry.
    fn rest(&mut self, state: InstanceState, message: Option<String>) {
        self.release_slot();
        self.message = message;
        self.phase = if state == InstanceState::Failed {
            Phase::Failed
        } else {
            Phase::Stopped
        };
        self.publish();
    }
}

/// `1.5 GiB`, for people.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn stop_message(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Person => "stopped by the user",
        StopReason::Operator => "stopped by an operator",
        StopReason::Idle => "stopped after the idle timeout",
        StopReason::Evicted => "stopped to make room for another user",
        StopReason::Shutdown => "stopped because the gateway is shutting down",
    }
}

fn with_output(message: String, stderr: &StderrTail) -> String {
    let tail = stderr.joined();
    if tail.is_empty() {
        message
    } else {
        format!("{message}; last output:\n{tail}")
    }
}

impl Actor for UserInstance {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.cfg().health_interval, |act, ctx| {
            act.on_health_tick(ctx)
        });
        ctx.run_interval(self.cfg().idle_check_interval(), |act, ctx| {
            act.on_idle_tick(ctx)
        });
        ctx.run_interval(self.cfg().disk_check_interval, |act, ctx| {
            act.on_disk_tick(ctx)
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Only retired (stopped) instances end; this is a safety net, not the way to stop.
        if let Some(process) = self.process() {
            process.signal_all(&self.user.user_id, Signal::SIGKILL);
        }
    }
}

impl Handler<Wake> for UserInstance {
    type Result = MessageResult<Wake>;

    fn handle(&mut self, msg: Wake, ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.wake(msg.explicit, ctx))
    }
}

impl Handler<Stop> for UserInstance {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Stop, ctx: &mut Self::Context) -> Self::Result {
        self.stop(msg.reason, ctx);
        let mut status = self.status.subscribe();
        Box::pin(async move {
            let _ = status.wait_for(|s| s.state.is_at_rest()).await;
        })
    }
}

impl Handler<Retire> for UserInstance {
    type Result = bool;

    fn handle(&mut self, msg: Retire, ctx: &mut Self::Context) -> bool {
        let retire =
            matches!(self.phase, Phase::Stopped) && self.activity.idle_for() >= msg.idle_for;
        if retire {
            ctx.stop();
        }
        retire
    }
}

impl Handler<Listening> for UserInstance {
    type Result = ();

    fn handle(&mut self, msg: Listening, ctx: &mut Self::Context) {
        self.on_listening(msg, ctx);
    }
}

impl Handler<Exited> for UserInstance {
    type Result = ();

    fn handle(&mut self, msg: Exited, ctx: &mut Self::Context) {
        self.on_exited(msg, ctx);
    }
}
