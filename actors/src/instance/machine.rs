//! `UserInstance`: the lifecycle state machine of one user's OpenCode.
//!
//! Messages
//! - `Wake { explicit }` → `WakeReply`: a client wants the instance; starts it when stopped.
//!   Only an explicit start (a person pressing "start") leaves the `failed` state.
//! - `Stop { reason }` → resolves once the instance is at rest (stopped or failed). A stop by
//!   a person or an operator also resets `failed`.
//! - `Retire { idle_for }` → `bool`: the registry forgets instances stopped for a long time.
//! - `ProcessEvent` from the backend: `Progress` (a step of the start, shown while
//!   starting), `Listening` (start line seen, or the pod ready), `Exited` (process reaped, or
//!   the pod ended); timers for the start timeout, the stop grace period, health checks (which also
//!   ask whether an agent is at work), the idle timeout and the disk measurement.
//! - sent: `Admit` (→ `Admission`) before a start and `Released` when at rest, to the `Room`.
//!
//! Transitions
//! ```text
//! stopped ─Wake─▶ queued ─(admitted by the registry, start slot)─▶ starting ─(listening)─▶ ready
//! queued ─(refused: no room, shutting down)─▶ stopped
//! starting ─(preparation failed, home over quota)─▶ failed
//! starting ─(start timeout: SIGKILL)─▶ stopping ─▶ failed
//! starting, ready ─(process exits)─▶ stopped (crash: next request restarts it after a backoff)
//!                                    failed  (crash_limit crashes within crash_window)
//! ready ─(health_failures failed checks)─▶ stopping ─▶ queued (restart)
//! ready ─(idle and no agent at work, evicted, Stop)─▶ stopping ─(exit, or SIGKILL after the grace)─▶ stopped
//! failed ─Wake{explicit}─▶ queued        failed ─Stop by a person or operator─▶ stopped
//! starting, ready ─(Stop at shutdown, and the process outlives the gateway: a pod)─▶ stopped
//! ```
//! The actor never blocks and never touches a process, a file or the network itself: the
//! `Backend` does that, off the actor where it is slow, and what it reports carries the
//! process `generation`, so a report about an earlier process is recognised and ignored.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::backend::{Custody, Launch, PrepareError, Prepared, ProcessEvent};
use super::crashes::Crashes;
use super::{
    Admission, Admit, InstanceShared, Released, Retire, Room, Stop, StopReason, UserSpec, Wake,
    WakeReply,
};
use crate::activity::Activity;
use crate::clock;
use crate::config::InstanceConfig;
use crate::metrics::{CullReason, StartOutcome};
use crate::status::{InstanceState, InstanceStatus, Refusal, Upstream};

/// A started process, as the state machine knows it.
struct Running {
    custody: Box<dyn Custody>,
    generation: u64,
    spawned_at: Instant,
    /// Cancelled when it starts stopping: long-lived streams through the gateway end.
    stopping: CancellationToken,
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
        process: Option<Running>,
        task: SpawnHandle,
        timeout: SpawnHandle,
    },
    Ready {
        process: Running,
        upstream: Upstream,
        ready_at_ms: u64,
        health_failures: u32,
        probing: bool,
    },
    Stopping {
        process: Running,
        then: AfterStop,
        kill_timer: Option<SpawnHandle>,
    },
    Failed,
}

pub struct UserInstance {
    user: Arc<UserSpec>,
    shared: Rc<InstanceShared>,
    room: Room,
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
    /// The idle timer wants the answer under way: stop if no agent works and nobody came.
    /// (A question the health check asked may be under way when the idle timer fires; its
    /// answer serves both.)
    cull_if_idle: bool,
    /// The log has said that sessions are busy for longer than `--busy-timeout`.
    busy_overdue: bool,
    /// When the current stop began (for `chamberlain_instance_stop_seconds`).
    stopping_since: Option<Instant>,
}

impl UserInstance {
    pub fn new(
        user: Arc<UserSpec>,
        shared: Rc<InstanceShared>,
        room: Room,
        status: watch::Sender<InstanceStatus>,
        activity: Arc<Activity>,
    ) -> Self {
        Self {
            user,
            shared,
            room,
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
            cull_if_idle: false,
            busy_overdue: false,
            stopping_since: None,
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

    fn process(&self) -> Option<&Running> {
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
        ctx.spawn(
            self.shared
                .backend
                .disk_usage(Arc::clone(&self.user))
                .into_actor(self)
                .map(|result, act, _ctx| {
                    act.measuring_disk = false;
                    match result {
                        Ok(Some(bytes)) => act.on_disk_measured(bytes),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(user = %act.user.user_id, error = %e, "cannot measure the home")
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
            pid: self.process().and_then(|p| p.custody.pid()),
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
        // The registry's eviction reads this too: an agent at work is not idle, whatever
        // the time since the last answer about it.
        self.activity.set_at_work(self.agent_at_work());
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
                let delay = self
                    .crashes
                    .pending_backoff(Instant::now(), &self.shared.cfg);
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

    fn begin_queued(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        self.refusal = None;
        self.message = Some(if delay.is_zero() {
            "waiting for room to start".to_owned()
        } else {
            format!("restarting after a crash in {:.1}s", delay.as_secs_f64())
        });
        self.slot_requested = true;
        let admit = self.room.admit.clone();
        let user = self.user.user_id.clone();
        let task = ctx.spawn(
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                admit.send(Admit { user }).await
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
        let measure = self.must_measure_before_start();
        let timeout = ctx.run_later(self.cfg().start_timeout, |act, ctx| {
            act.on_start_timeout(ctx)
        });
        let task = ctx.spawn(
            self.shared
                .backend
                .prepare(Arc::clone(&self.user), measure)
                .into_actor(self)
                .map(|result, act, ctx| act.on_prepared(result, ctx)),
        );
        // The starting page says where the time goes: a quota's measurement can take a
        // while in a large home; the rest of the preparation is milliseconds locally.
        self.message = Some(
            if measure {
                "measuring your home for the disk quota"
            } else {
                "preparing your home"
            }
            .to_owned(),
        );
        self.phase = Phase::Starting {
            _permit: permit,
            process: None,
            task,
            timeout,
        };
        self.publish();
    }

    fn on_prepared(&mut self, result: Result<Prepared, PrepareError>, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::Starting { process: None, .. }) {
            return;
        }
        let prepared = match result {
            Ok(prepared) => prepared,
            Err(PrepareError::Failed(e)) => return self.fail_start(StartOutcome::Error, e, ctx),
            Err(PrepareError::NoRoom {
                message,
                retry_after,
            }) => {
                if let Phase::Starting { timeout, .. } = &self.phase {
                    ctx.cancel_future(*timeout);
                }
                self.shared.metrics.start(StartOutcome::Refused);
                tracing::warn!(user = %self.user.user_id, reason = %message, "start refused");
                self.refusal = Some(Refusal::Capacity { retry_after });
                return self.rest(InstanceState::Stopped, Some(message));
            }
        };
        if let Some(bytes) = prepared.disk_bytes {
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
        self.generation += 1;
        let generation = self.generation;
        let launched = (prepared.launch)(Launch {
            generation,
            events: ctx.address().recipient(),
        });
        let custody = match launched {
            Ok(custody) => custody,
            Err(e) => return self.fail_start(StartOutcome::Error, e, ctx),
        };
        if let Phase::Starting { process, .. } = &mut self.phase {
            *process = Some(Running {
                custody,
                generation,
                spawned_at: Instant::now(),
                stopping: CancellationToken::new(),
            });
        }
        self.message = Some("starting OpenCode".to_owned());
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

    /// A step of the start, for the starting page.
    fn on_progress(&mut self, generation: u64, message: String) {
        let Phase::Starting {
            process: Some(process),
            ..
        } = &self.phase
        else {
            return;
        };
        if process.generation == generation {
            self.message = Some(message);
            self.publish();
        }
    }

    fn on_listening(
        &mut self,
        generation: u64,
        addr: std::net::SocketAddr,
        ctx: &mut Context<Self>,
    ) {
        let Phase::Starting {
            process: Some(process),
            timeout,
            ..
        } = &self.phase
        else {
            return;
        };
        if process.generation != generation {
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
        process.custody.look();
        let spawn_time = process.spawned_at.elapsed();
        self.shared.metrics.spawn_duration(spawn_time.as_secs_f64());
        self.shared.metrics.start(StartOutcome::Ready);
        let upstream = Upstream {
            addr,
            authorization: process.custody.authorization().into(),
            generation: process.generation,
            stopping: process.stopping.clone(),
        };
        tracing::info!(
            user = %self.user.user_id,
            addr = %addr,
            spawn_ms = spawn_time.as_millis() as u64,
            "OpenCode is listening"
        );
        // A fresh idle window: the start itself may have taken a while.
        self.activity.touch();
        self.busy = 0;
        self.busy_since = None;
        self.busy_overdue = false;
        self.cull_if_idle = false;
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
                    &*process.custody,
                );
                tracing::error!(user = %self.user.user_id, error = %message, "instance start timed out");
                process.stopping.cancel();
                process.custody.kill();
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
        process.custody.look();
        self.shared
            .backend
            .share_activity(&self.user, self.activity.idle_for());
        if *probing {
            return;
        }
        *probing = true;
        let generation = upstream.generation;
        let probe = self.shared.backend.probe(upstream);
        ctx.spawn(
            probe
                .into_actor(self)
                .map(move |result, act, ctx| act.on_health(generation, result, ctx)),
        );
        // Keeps `busySessions` current, and a working instance from looking idle to the
        // eviction.
        self.ask_busy(ctx);
    }

    fn on_health(&mut self, generation: u64, result: Result<(), String>, ctx: &mut Context<Self>) {
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

    /// Whether the last answer found an agent at work that still counts (within
    /// --busy-timeout), in a ready instance.
    fn agent_at_work(&self) -> bool {
        matches!(self.phase, Phase::Ready { .. }) && self.busy > 0 && !self.busy_overdue
    }

    /// No client for the idle timeout: ask OpenCode whether an agent is at work before
    /// stopping (work in progress is activity).
    fn on_idle_tick(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::Ready { .. }) {
            return;
        }
        // An agent last seen at work keeps `idle_for` at zero: ask again to learn that it
        // ended (or overran --busy-timeout).
        if self.agent_at_work() || self.activity.idle_for() >= self.cfg().idle_timeout {
            self.cull_if_idle = true;
            self.ask_busy(ctx);
        }
    }

    /// Asks OpenCode how many sessions are at work (one question at a time).
    fn ask_busy(&mut self, ctx: &mut Context<Self>) {
        let Phase::Ready { upstream, .. } = &self.phase else {
            return;
        };
        if self.asking_busy {
            return;
        }
        self.asking_busy = true;
        let generation = upstream.generation;
        let question = self.shared.backend.busy_sessions(upstream);
        ctx.spawn(
            question
                .into_actor(self)
                .map(move |result, act, ctx| act.on_busy(generation, result, ctx)),
        );
    }

    fn on_busy(&mut self, generation: u64, result: Result<u32, String>, ctx: &mut Context<Self>) {
        self.asking_busy = false;
        let then_cull = std::mem::take(&mut self.cull_if_idle);
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
                self.publish();
            }
        }
        if busy != was {
            tracing::debug!(user = %self.user.user_id, busy, "sessions at work");
            self.publish();
        }
        if then_cull && self.activity.idle_for() >= self.cfg().idle_timeout {
            // Idle here; other gateways serving the same instance may know better.
            let question = self.shared.backend.idle_elsewhere(Arc::clone(&self.user));
            ctx.spawn(
                question
                    .into_actor(self)
                    .map(move |answer, act, ctx| act.on_idle_elsewhere(generation, answer, ctx)),
            );
        }
    }

    /// The last step before an idle stop: nobody came here, no agent works, and no other
    /// gateway saw the instance used within the idle timeout.
    fn on_idle_elsewhere(
        &mut self,
        generation: u64,
        answer: Result<Option<Duration>, String>,
        ctx: &mut Context<Self>,
    ) {
        let Phase::Ready { upstream, .. } = &self.phase else {
            return;
        };
        let idle = self.activity.idle_for();
        if upstream.generation != generation || idle < self.cfg().idle_timeout {
            return;
        }
        match answer {
            Ok(Some(elsewhere)) if elsewhere < self.cfg().idle_timeout => {
                tracing::debug!(user = %self.user.user_id, used_s_ago = elsewhere.as_secs(), "idle here, in use through another gateway");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                // Not knowing is not "idle": the next tick asks again.
                tracing::warn!(user = %self.user.user_id, error = %e, "cannot tell whether another gateway serves the instance; not stopping now");
                return;
            }
        }
        self.shared.metrics.cull(CullReason::Idle);
        self.message = Some(format!(
            "stopped after {}s without activity",
            idle.as_secs()
        ));
        self.begin_stopping(AfterStop::Rest, ctx);
    }

    fn on_exited(
        &mut self,
        generation: u64,
        status: String,
        killed: bool,
        ctx: &mut Context<Self>,
    ) {
        let Some(process) = self.process() else {
            return;
        };
        if process.generation != generation {
            return;
        }
        let how = if killed && process.custody.out_of_memory() {
            self.oom_kills += 1;
            self.shared.metrics.oom_kill();
            format!("{status}: killed by the kernel's OOM killer (the machine ran out of memory)")
        } else {
            status
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
                let Some(cleaned) = process.custody.clean_up() else {
                    return self.finish_stop(then, ctx);
                };
                // Stay `stopping` until nothing of the process is left.
                let generation = process.generation;
                self.phase = Phase::Stopping {
                    process,
                    then,
                    kill_timer: None,
                };
                ctx.spawn(
                    cleaned
                        .into_actor(self)
                        .map(move |(), act, ctx| act.on_cleaned_up(generation, ctx)),
                );
            }
            other => self.phase = other,
        }
    }

    fn on_cleaned_up(&mut self, generation: u64, ctx: &mut Context<Self>) {
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

    fn crash(&mut self, mut process: Running, what: String) {
        self.shared.metrics.crash();
        process.stopping.cancel();
        process.custody.kill();
        let message = with_output(what, &*process.custody);
        let crashes = self.crashes.record(Instant::now(), &self.shared.cfg);
        if Crashes::is_loop(crashes, self.cfg()) {
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
            Phase::Starting {
                process: Some(process),
                timeout,
                ..
            } if reason == StopReason::Shutdown && process.custody.outlives_gateway() => {
                let timeout = *timeout;
                ctx.cancel_future(timeout);
                self.let_go();
            }
            Phase::Ready { process, .. }
                if reason == StopReason::Shutdown && process.custody.outlives_gateway() =>
            {
                self.let_go();
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

    /// The gateway shuts down and the process runs on without it (a pod): the next gateway
    /// adopts it, so it is neither stopped nor counted here any more.
    fn let_go(&mut self) {
        if let Some(process) = self.process() {
            process.stopping.cancel();
            tracing::info!(user = %self.user.user_id, "left running for the next gateway");
        }
        self.rest(
            InstanceState::Stopped,
            Some("left running while the gateway restarts".to_owned()),
        );
    }

    /// SIGTERM to everything of the process now, SIGKILL after the grace period.
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
        tracing::info!(
            user = %self.user.user_id,
            pid = process.custody.pid(),
            "stopping OpenCode"
        );
        process.custody.terminate();
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
                tracing::warn!(
                    user = %self.user.user_id,
                    pid = process.custody.pid(),
                    still_running = %process.custody.still_running(),
                    "processes did not stop within the grace period; sending SIGKILL"
                );
                process.custody.kill();
            }
        }
    }

    /// Gives the instance's room under the limit back. Sent before any new `Admit` from
    /// this instance, to the same actor, so it sees them in order.
    fn release_slot(&mut self) {
        if self.slot_requested {
            self.slot_requested = false;
            self.room.released.do_send(Released {
                user: self.user.user_id.clone(),
            });
        }
    }

    /// Enters `stopped` or `failed` and gives the instance's room back.
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

fn with_output(message: String, custody: &dyn Custody) -> String {
    let tail = custody.last_output();
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
        if let Phase::Starting {
            process: Some(process),
            ..
        }
        | Phase::Ready { process, .. }
        | Phase::Stopping { process, .. } = &mut self.phase
        {
            process.custody.kill();
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

impl Handler<ProcessEvent> for UserInstance {
    type Result = ();

    fn handle(&mut self, msg: ProcessEvent, ctx: &mut Self::Context) {
        match msg {
            ProcessEvent::Progress {
                generation,
                message,
            } => self.on_progress(generation, message),
            ProcessEvent::Listening { generation, addr } => {
                self.on_listening(generation, addr, ctx)
            }
            ProcessEvent::Exited {
                generation,
                status,
                killed,
            } => self.on_exited(generation, status, killed, ctx),
        }
    }
}
