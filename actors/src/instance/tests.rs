//! Every transition of the state machine, driven through a fake backend and a stand-in for
//! the registry: no process, no file, no socket. A test waits on the published status or on
//! what the fake saw, never for a fixed time; the timers under test are set to milliseconds.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt as _;
use tokio::sync::{watch, Notify};

use super::*;
use crate::activity::Activity;
use crate::status::{InstanceState, InstanceStatus};

/// What the fake processes and the fake OpenCode do, and what the machine asked of them.
#[derive(Default)]
struct World {
    /// What the machine did, in order: `prepare`, `launch 1`, `terminate 1`, `kill 1`,
    /// `clean-up 1`, `probe`, `busy`.
    log: RefCell<Vec<String>>,
    events: RefCell<Option<Recipient<ProcessEvent>>>,
    alive: RefCell<HashSet<u64>>,
    /// `prepare` fails with this.
    prepare_error: RefCell<Option<String>>,
    /// `prepare` finds no room (a full cluster) with this message and retry.
    no_room: RefCell<Option<(String, Duration)>>,
    /// `prepare` measures the home at this size.
    disk_bytes: Cell<Option<u64>>,
    /// `prepare` waits for `release` before it answers.
    hold_prepare: Cell<bool>,
    /// The clean-up after an exit during a stop waits for `release` (a uid still has
    /// processes).
    hold_clean_up: Cell<bool>,
    release: Notify,
    /// The process ignores SIGTERM.
    ignores_sigterm: Cell<bool>,
    /// A SIGKILL was the kernel's OOM killer.
    out_of_memory: Cell<bool>,
    /// The process runs on without the gateway (a pod).
    outlives_gateway: Cell<bool>,
    /// What other gateways say of the instance's last use (`None`: there are none).
    idle_elsewhere: RefCell<Option<Result<Option<Duration>, String>>>,
    healthy: Cell<bool>,
    /// What the busy question answers (`None`: zero).
    busy: RefCell<Option<Result<u32, String>>>,
}

impl World {
    fn new() -> Rc<Self> {
        let world = Self::default();
        world.healthy.set(true);
        Rc::new(world)
    }

    fn did(&self, what: impl Into<String>) {
        self.log.borrow_mut().push(what.into());
    }

    fn count(&self, what: &str) -> usize {
        self.log.borrow().iter().filter(|l| *l == what).count()
    }

    fn events(&self) -> Recipient<ProcessEvent> {
        self.events
            .borrow()
            .clone()
            .expect("a process was launched")
    }

    /// OpenCode of `generation` prints its start line.
    fn listen(&self, generation: u64) {
        self.events().do_send(ProcessEvent::Listening {
            generation,
            addr: "127.0.0.1:9".parse().expect("address"),
        });
    }

    /// OpenCode of `generation` exits (once).
    fn exit(&self, generation: u64, status: &str, killed: bool) {
        if self.alive.borrow_mut().remove(&generation) {
            self.events().do_send(ProcessEvent::Exited {
                generation,
                status: status.to_owned(),
                killed,
            });
        }
    }
}

struct FakeBackend(Rc<World>);

impl Backend for FakeBackend {
    fn prepare(
        &self,
        _user: Arc<UserSpec>,
        _measure_disk: bool,
    ) -> LocalBoxFuture<'static, Result<Prepared, PrepareError>> {
        let world = Rc::clone(&self.0);
        world.did("prepare");
        async move {
            if world.hold_prepare.get() {
                world.release.notified().await;
            }
            if let Some(e) = world.prepare_error.borrow().clone() {
                return Err(PrepareError::Failed(e));
            }
            if let Some((message, retry_after)) = world.no_room.borrow().clone() {
                return Err(PrepareError::NoRoom {
                    message,
                    retry_after,
                });
            }
            let disk_bytes = world.disk_bytes.get();
            Ok(Prepared {
                disk_bytes,
                launch: Box::new(move |launch: Launch| {
                    world.did(format!("launch {}", launch.generation));
                    *world.events.borrow_mut() = Some(launch.events);
                    world.alive.borrow_mut().insert(launch.generation);
                    Ok(Box::new(FakeProcess {
                        world,
                        generation: launch.generation,
                    }) as Box<dyn Custody>)
                }),
            })
        }
        .boxed_local()
    }

    fn probe(&self, _upstream: &Upstream) -> LocalBoxFuture<'static, Result<(), String>> {
        self.0.did("probe");
        let healthy = self.0.healthy.get();
        async move {
            if healthy {
                Ok(())
            } else {
                Err("health check answered 503".to_owned())
            }
        }
        .boxed_local()
    }

    fn busy_sessions(&self, _upstream: &Upstream) -> LocalBoxFuture<'static, Result<u32, String>> {
        self.0.did("busy");
        std::future::ready(self.0.busy.borrow().clone().unwrap_or(Ok(0))).boxed_local()
    }

    fn disk_usage(
        &self,
        _user: Arc<UserSpec>,
    ) -> LocalBoxFuture<'static, Result<Option<u64>, String>> {
        std::future::ready(Ok(self.0.disk_bytes.get())).boxed_local()
    }

    fn share_activity(&self, _user: &UserSpec, _idle_for: Duration) {
        self.0.did("shared");
    }

    fn idle_elsewhere(
        &self,
        _user: Arc<UserSpec>,
    ) -> LocalBoxFuture<'static, Result<Option<Duration>, String>> {
        self.0.did("asked elsewhere");
        std::future::ready(self.0.idle_elsewhere.borrow().clone().unwrap_or(Ok(None))).boxed_local()
    }
}

struct FakeProcess {
    world: Rc<World>,
    generation: u64,
}

impl Custody for FakeProcess {
    fn pid(&self) -> Option<u32> {
        Some(1000 + self.generation as u32)
    }

    fn authorization(&self) -> String {
        format!("Basic fake-{}", self.generation)
    }

    fn look(&mut self) {}

    fn terminate(&mut self) {
        self.world.did(format!("terminate {}", self.generation));
        if !self.world.ignores_sigterm.get() {
            self.world
                .exit(self.generation, "signal: 15 (SIGTERM)", false);
        }
    }

    fn kill(&mut self) {
        self.world.did(format!("kill {}", self.generation));
        self.world
            .exit(self.generation, "signal: 9 (SIGKILL)", true);
    }

    fn clean_up(&mut self) -> Option<LocalBoxFuture<'static, ()>> {
        self.world.did(format!("clean-up {}", self.generation));
        if !self.world.hold_clean_up.get() {
            return None;
        }
        let world = Rc::clone(&self.world);
        Some(async move { world.release.notified().await }.boxed_local())
    }

    fn still_running(&self) -> String {
        format!("{} (opencode)", 1000 + self.generation)
    }

    fn last_output(&self) -> String {
        "stuck before listening".to_owned()
    }

    fn out_of_memory(&self) -> bool {
        self.world.out_of_memory.get()
    }

    fn outlives_gateway(&self) -> bool {
        self.world.outlives_gateway.get()
    }
}

/// How the stand-in registry answers `Admit`.
#[derive(Clone)]
enum Answer {
    Grant,
    Refuse(Refusal),
    /// Never answers (no room yet).
    Hold,
}

/// Stands in for the registry: answers `Admit` and records both messages in order.
struct FakeRoom {
    answer: Rc<RefCell<Answer>>,
    log: Rc<RefCell<Vec<&'static str>>>,
}

impl Actor for FakeRoom {
    type Context = Context<Self>;
}

impl Handler<Admit> for FakeRoom {
    type Result = ResponseFuture<Admission>;

    fn handle(&mut self, _: Admit, _: &mut Self::Context) -> Self::Result {
        self.log.borrow_mut().push("admit");
        match self.answer.borrow().clone() {
            Answer::Grant => Box::pin(std::future::ready(Admission::Granted)),
            Answer::Refuse(refusal) => Box::pin(std::future::ready(Admission::Refused(refusal))),
            Answer::Hold => Box::pin(std::future::pending()),
        }
    }
}

impl Handler<Released> for FakeRoom {
    type Result = ();

    fn handle(&mut self, _: Released, _: &mut Self::Context) {
        self.log.borrow_mut().push("released");
    }
}

struct Harness {
    world: Rc<World>,
    answer: Rc<RefCell<Answer>>,
    room: Rc<RefCell<Vec<&'static str>>>,
    shared: Rc<InstanceShared>,
    addr: Addr<UserInstance>,
    status: watch::Receiver<InstanceStatus>,
    activity: Arc<Activity>,
}

/// Timers that never fire unless a test shortens them.
fn cfg() -> InstanceConfig {
    InstanceConfig {
        start_timeout: Duration::from_secs(3600),
        health_interval: Duration::from_secs(3600),
        health_failures: 2,
        stop_grace: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(3600),
        crash_limit: 3,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        disk_check_interval: Duration::from_secs(3600),
        ..InstanceConfig::default()
    }
}

fn harness(cfg: InstanceConfig) -> Harness {
    let world = World::new();
    let answer = Rc::new(RefCell::new(Answer::Grant));
    let room_log = Rc::new(RefCell::new(Vec::new()));
    let room = FakeRoom {
        answer: Rc::clone(&answer),
        log: Rc::clone(&room_log),
    }
    .start();
    let shared = Rc::new(InstanceShared {
        cfg,
        backend: Rc::new(FakeBackend(Rc::clone(&world))),
        start_slots: Arc::new(tokio::sync::Semaphore::new(1)),
        metrics: crate::metrics::InstanceMetrics::new(),
    });
    let (tx, status) = watch::channel(InstanceStatus::default());
    let activity = Arc::new(Activity::new());
    let user = Arc::new(UserSpec {
        user_id: "alice".into(),
        key: crate::workspace::UserKey::derive("alice"),
        email: None,
        name: None,
    });
    let addr = UserInstance::new(
        user,
        Rc::clone(&shared),
        Room {
            admit: room.clone().recipient(),
            released: room.recipient(),
        },
        tx,
        Arc::clone(&activity),
    )
    .start();
    Harness {
        world,
        answer,
        room: room_log,
        shared,
        addr,
        status,
        activity,
    }
}

const DEADLINE: Duration = Duration::from_secs(20);

impl Harness {
    async fn wake(&self, explicit: bool) -> WakeReply {
        self.addr
            .send(Wake { explicit })
            .await
            .expect("instance alive")
    }

    /// Sends `Stop` and waits for its answer (the instance at rest).
    async fn stop(&self, reason: StopReason) {
        tokio::time::timeout(DEADLINE, self.addr.send(Stop { reason }))
            .await
            .expect("the stop resolved in time")
            .expect("instance alive");
    }

    /// Waits until the published status is `state`.
    async fn reach(&self, state: InstanceState) -> InstanceStatus {
        let mut rx = self.status.clone();
        let reached = tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.state == state)).await;
        match reached {
            Ok(Ok(status)) => status.clone(),
            _ => panic!(
                "never reached {state}; last {:?}, did {:?}",
                self.status.borrow().state,
                self.world.log.borrow()
            ),
        }
    }

    /// Waits until the fake has seen `what` `times` times.
    async fn saw(&self, what: &str, times: usize) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.world.count(what) < times {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never saw {what} {times} times: {:?}",
                self.world.log.borrow()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Wakes a stopped instance and brings generation `generation` to ready.
    async fn ready(&self, generation: u64) -> InstanceStatus {
        assert!(matches!(self.wake(false).await, WakeReply::Pending));
        self.saw(&format!("launch {generation}"), 1).await;
        self.world.listen(generation);
        self.reach(InstanceState::Ready).await
    }

    fn message(&self) -> String {
        self.status.borrow().message.clone().unwrap_or_default()
    }

    fn room(&self) -> Vec<&'static str> {
        self.room.borrow().clone()
    }

    /// A line of the lifecycle metrics, e.g. `chamberlain_instance_crashes_total`.
    fn metric(&self, name: &str) -> f64 {
        let mut registry = prometheus_client::registry::Registry::default();
        self.shared.metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

#[actix::test]
async fn start_and_ready() {
    let h = harness(cfg());
    assert!(matches!(h.wake(false).await, WakeReply::Pending));
    let starting = h.reach(InstanceState::Starting).await;
    assert_eq!(h.room(), ["admit"]);
    h.saw("launch 1", 1).await;
    assert_eq!(h.status.borrow().pid, Some(1001), "{starting:?}");
    h.world.listen(1);
    let ready = h.reach(InstanceState::Ready).await;
    let upstream = ready.upstream.expect("an upstream when ready");
    assert_eq!(upstream.addr.port(), 9);
    assert_eq!(&*upstream.authorization, "Basic fake-1");
    assert_eq!(upstream.generation, 1);
    assert!(matches!(h.wake(false).await, WakeReply::Ready(u) if u.generation == 1));
    assert_eq!(
        h.metric("chamberlain_instance_starts_total{outcome=\"ready\"}"),
        1.0
    );
}

#[actix::test]
async fn a_start_line_of_an_earlier_process_is_ignored() {
    let h = harness(cfg());
    h.ready(1).await;
    h.world.exit(1, "exit status: 1", false);
    h.reach(InstanceState::Stopped).await;
    h.wake(false).await;
    h.saw("launch 2", 1).await;
    // The crashed generation's late line changes nothing; the current one's does.
    h.world.listen(1);
    h.world.events().do_send(ProcessEvent::Exited {
        generation: 1,
        status: "exit status: 1".into(),
        killed: false,
    });
    assert!(matches!(h.wake(false).await, WakeReply::Pending));
    assert_eq!(h.status.borrow().state, InstanceState::Starting);
    h.world.listen(2);
    assert_eq!(
        h.reach(InstanceState::Ready)
            .await
            .upstream
            .unwrap()
            .generation,
        2
    );
}

#[actix::test]
async fn a_crash_stops_and_the_next_wake_restarts_after_a_backoff() {
    let h = harness(InstanceConfig {
        backoff_base: Duration::from_millis(300),
        backoff_max: Duration::from_millis(300),
        ..cfg()
    });
    h.ready(1).await;
    h.world.exit(1, "exit status: 7", false);
    let stopped = h.reach(InstanceState::Stopped).await;
    let message = stopped.message.unwrap_or_default();
    assert!(
        message.contains("OpenCode exited unexpectedly (exit status: 7)"),
        "{message}"
    );
    assert!(
        message.contains("last output:\nstuck before listening"),
        "{message}"
    );
    assert!(h.world.count("kill 1") >= 1, "what it started is killed");
    assert_eq!(h.room(), ["admit", "released"]);
    assert_eq!(h.metric("chamberlain_instance_crashes_total"), 1.0);

    assert!(matches!(h.wake(false).await, WakeReply::Pending));
    let queued = h.reach(InstanceState::Queued).await;
    assert!(
        queued
            .message
            .as_deref()
            .unwrap_or("")
            .starts_with("restarting after a crash in 0."),
        "{queued:?}"
    );
    assert_eq!(queued.restarts, 1);
    h.saw("launch 2", 1).await;
    assert_eq!(h.room(), ["admit", "released", "admit"]);
    assert_eq!(h.metric("chamberlain_instance_restarts_total"), 1.0);
}

#[actix::test]
async fn a_crash_while_starting_is_a_failed_start() {
    let h = harness(cfg());
    h.wake(false).await;
    h.saw("launch 1", 1).await;
    h.world.exit(1, "exit status: 2", false);
    let stopped = h.reach(InstanceState::Stopped).await;
    assert!(stopped
        .message
        .unwrap()
        .contains("OpenCode exited while starting (exit status: 2)"));
    assert_eq!(
        h.metric("chamberlain_instance_starts_total{outcome=\"exited\"}"),
        1.0
    );
}

#[actix::test]
async fn crashes_within_the_window_fail_and_only_an_explicit_wake_leaves_failed() {
    let h = harness(cfg());
    for generation in 1..=3 {
        h.ready(generation).await;
        h.world.exit(generation, "exit status: 1", false);
        if generation < 3 {
            h.reach(InstanceState::Stopped).await;
        }
    }
    let failed = h.reach(InstanceState::Failed).await;
    let message = failed.message.unwrap();
    assert!(
        message.starts_with("OpenCode crashed 3 times within 300s; giving up."),
        "{message}"
    );
    assert!(matches!(h.wake(false).await, WakeReply::Failed(m) if m == message));
    assert_eq!(h.world.count("launch 4"), 0);
    assert!(matches!(h.wake(true).await, WakeReply::Pending));
    h.saw("launch 4", 1).await;
}

#[actix::test]
async fn a_person_stopping_a_failed_instance_resets_it() {
    let h = harness(cfg());
    *h.world.prepare_error.borrow_mut() = Some("no uid left".into());
    h.wake(false).await;
    h.reach(InstanceState::Failed).await;
    assert_eq!(h.message(), "no uid left");
    h.stop(StopReason::Idle).await;
    assert_eq!(
        h.status.borrow().state,
        InstanceState::Failed,
        "only a person resets"
    );
    h.stop(StopReason::Person).await;
    assert_eq!(h.status.borrow().state, InstanceState::Stopped);
    *h.world.prepare_error.borrow_mut() = None;
    h.ready(1).await;
}

#[actix::test]
async fn a_failed_preparation_fails_the_start_and_gives_the_room_back() {
    let h = harness(cfg());
    *h.world.prepare_error.borrow_mut() = Some("cannot create the home".into());
    h.wake(false).await;
    let failed = h.reach(InstanceState::Failed).await;
    assert_eq!(failed.message.as_deref(), Some("cannot create the home"));
    assert_eq!(h.world.count("launch 1"), 0);
    assert_eq!(h.room(), ["admit", "released"]);
    assert_eq!(
        h.metric("chamberlain_instance_starts_total{outcome=\"error\"}"),
        1.0
    );
}

#[actix::test]
async fn a_full_cluster_refuses_the_start_like_a_full_gateway() {
    let h = harness(cfg());
    *h.world.no_room.borrow_mut() = Some((
        "the cluster runs its limit of 3 OpenCode pods".into(),
        Duration::from_secs(5),
    ));
    assert!(matches!(h.wake(false).await, WakeReply::Pending));
    h.saw("prepare", 1).await;
    let stopped = h.reach(InstanceState::Stopped).await;
    assert_eq!(
        stopped.refusal,
        Some(Refusal::Capacity {
            retry_after: Duration::from_secs(5)
        })
    );
    assert_eq!(h.message(), "the cluster runs its limit of 3 OpenCode pods");
    assert_eq!(h.world.count("launch 1"), 0);
    assert_eq!(h.room(), ["admit", "released"]);
    // Room again: the next wake starts.
    *h.world.no_room.borrow_mut() = None;
    h.ready(1).await;
}

#[actix::test]
async fn a_home_over_the_quota_is_not_started() {
    let h = harness(InstanceConfig {
        disk_quota: Some(1 << 30),
        ..cfg()
    });
    h.world.disk_bytes.set(Some(3 << 29));
    h.wake(false).await;
    let failed = h.reach(InstanceState::Failed).await;
    let message = failed.message.unwrap();
    assert!(
        message.starts_with("your home takes 1.5 GiB, over this gateway's disk quota of 1.0 GiB"),
        "{message}"
    );
    assert_eq!(failed.disk_bytes, Some(3 << 29));
    assert_eq!(h.world.count("launch 1"), 0);
}

#[actix::test]
async fn a_start_that_never_listens_is_killed_and_fails() {
    let h = harness(InstanceConfig {
        start_timeout: Duration::from_millis(200),
        ..cfg()
    });
    h.wake(false).await;
    h.saw("launch 1", 1).await;
    let failed = h.reach(InstanceState::Failed).await;
    assert_eq!(
        failed.message.as_deref(),
        Some("OpenCode did not report listening within 0.2s; last output:\nstuck before listening")
    );
    assert!(h.world.count("kill 1") >= 1);
    assert_eq!(
        h.world.count("terminate 1"),
        0,
        "no grace for a failed start"
    );
    assert_eq!(
        h.metric("chamberlain_instance_starts_total{outcome=\"timeout\"}"),
        1.0
    );
    // Failed, yet an explicit start tries again.
    assert!(matches!(h.wake(true).await, WakeReply::Pending));
    h.saw("launch 2", 1).await;
}

#[actix::test]
async fn a_preparation_that_takes_too_long_fails() {
    let h = harness(InstanceConfig {
        start_timeout: Duration::from_millis(200),
        ..cfg()
    });
    h.world.hold_prepare.set(true);
    h.wake(false).await;
    let failed = h.reach(InstanceState::Failed).await;
    assert_eq!(
        failed.message.as_deref(),
        Some("preparing the workspace took longer than 0.2s")
    );
    h.world.release.notify_one();
    assert_eq!(h.world.count("launch 1"), 0);
}

#[actix::test]
async fn a_stop_while_preparing_never_launches() {
    let h = harness(cfg());
    h.world.hold_prepare.set(true);
    h.wake(false).await;
    h.saw("prepare", 1).await;
    h.stop(StopReason::Person).await;
    assert_eq!(h.status.borrow().state, InstanceState::Stopped);
    assert_eq!(h.message(), "stopped by the user");
    // The abandoned preparation is dropped: a new start prepares again.
    h.world.hold_prepare.set(false);
    h.ready(1).await;
    assert_eq!(h.world.count("prepare"), 2);
}

#[actix::test]
async fn idle_with_no_agent_at_work_stops() {
    let h = harness(InstanceConfig {
        idle_timeout: Duration::from_millis(200),
        ..cfg()
    });
    h.ready(1).await;
    let stopped = h.reach(InstanceState::Stopped).await;
    assert!(h.world.count("busy") >= 1, "asked before stopping");
    assert!(
        h.world.count("asked elsewhere") >= 1,
        "asked other gateways too"
    );
    assert_eq!(h.world.count("terminate 1"), 1);
    assert!(stopped
        .message
        .unwrap()
        .starts_with("stopped after 0s without activity"));
    assert_eq!(
        h.metric("chamberlain_instance_culls_total{reason=\"idle\"}"),
        1.0
    );
    assert_eq!(h.metric("chamberlain_instance_stop_seconds_count"), 1.0);
    assert_eq!(h.room(), ["admit", "released"]);
}

#[actix::test]
async fn a_client_request_in_flight_keeps_an_idle_timer_from_stopping() {
    let h = harness(InstanceConfig {
        idle_timeout: Duration::from_millis(200),
        health_interval: Duration::from_millis(50),
        ..cfg()
    });
    h.ready(1).await;
    let request = h.activity.begin();
    // Ten health checks, 50 ms apart: well past the idle timeout.
    h.saw("probe", 10).await;
    assert_eq!(h.status.borrow().state, InstanceState::Ready);
    assert_eq!(h.world.count("terminate 1"), 0);
    drop(request);
    h.reach(InstanceState::Stopped).await;
}

#[actix::test]
async fn an_agent_at_work_keeps_an_idle_instance_running() {
    let h = harness(InstanceConfig {
        idle_timeout: Duration::from_millis(200),
        ..cfg()
    });
    *h.world.busy.borrow_mut() = Some(Ok(2));
    h.ready(1).await;
    // Asked again and again after the timeout, and each answer is "at work".
    h.saw("busy", 4).await;
    let status = h.status.borrow().clone();
    assert_eq!(status.state, InstanceState::Ready);
    assert_eq!(status.busy_sessions, 2);
    assert_eq!(h.world.count("terminate 1"), 0);
    // The work ends: one idle timeout later it stops.
    *h.world.busy.borrow_mut() = Some(Ok(0));
    h.reach(InstanceState::Stopped).await;
    assert_eq!(h.status.borrow().busy_sessions, 0);
}

#[actix::test]
async fn an_instance_used_through_another_gateway_is_not_idle() {
    let h = harness(InstanceConfig {
        idle_timeout: Duration::from_millis(200),
        health_interval: Duration::from_millis(20),
        ..cfg()
    });
    *h.world.idle_elsewhere.borrow_mut() = Some(Ok(Some(Duration::from_millis(10))));
    h.ready(1).await;
    h.saw("asked elsewhere", 3).await;
    assert_eq!(h.status.borrow().state, InstanceState::Ready);
    assert_eq!(h.world.count("terminate 1"), 0);
    assert!(
        h.world.count("shared") >= 1,
        "tells the others at health checks"
    );
    // Not knowing is not idle either.
    *h.world.idle_elsewhere.borrow_mut() = Some(Err("the API server does not answer".into()));
    let asked = h.world.count("asked elsewhere");
    h.saw("asked elsewhere", asked + 3).await;
    assert_eq!(h.world.count("terminate 1"), 0);
    // Once the others saw it unused for the idle timeout too, it stops.
    *h.world.idle_elsewhere.borrow_mut() = Some(Ok(Some(Duration::from_secs(60))));
    h.reach(InstanceState::Stopped).await;
    assert_eq!(h.world.count("terminate 1"), 1);
}

#[actix::test]
async fn not_knowing_whether_an_agent_works_is_not_idle() {
    let h = harness(InstanceConfig {
        idle_timeout: Duration::from_millis(200),
        ..cfg()
    });
    *h.world.busy.borrow_mut() = Some(Err("asking OpenCode what is running: timeout".into()));
    h.ready(1).await;
    h.saw("busy", 4).await;
    assert_eq!(h.status.borrow().state, InstanceState::Ready);
    assert_eq!(h.world.count("terminate 1"), 0);
}

#[actix::test]
async fn an_agent_last_seen_at_work_is_not_idle_while_the_question_fails() {
    // The registry evicts by `idle_for`. On a loaded machine the question to OpenCode fails
    // or answers late; the time since the last answer must not make a busy instance idle.
    let h = harness(InstanceConfig {
        health_interval: Duration::from_millis(20),
        ..cfg()
    });
    *h.world.busy.borrow_mut() = Some(Ok(1));
    h.ready(1).await;
    let mut rx = h.status.clone();
    tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.busy_sessions == 1))
        .await
        .expect("busySessions published")
        .expect("alive");
    *h.world.busy.borrow_mut() = Some(Err("asking OpenCode what is running: timeout".into()));
    let asked = h.world.count("busy");
    h.saw("busy", asked + 5).await;
    assert_eq!(h.activity.idle_for(), Duration::ZERO);
    // The work ends: idle from then on.
    *h.world.busy.borrow_mut() = Some(Ok(0));
    tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.busy_sessions == 0))
        .await
        .expect("the end of the work published")
        .expect("alive");
    let asked = h.world.count("busy");
    h.saw("busy", asked + 3).await;
    assert!(h.activity.idle_for() > Duration::ZERO);
}

#[actix::test]
async fn work_longer_than_the_busy_timeout_no_longer_counts() {
    let h = harness(InstanceConfig {
        idle_timeout: Duration::from_millis(200),
        busy_timeout: Duration::from_millis(500),
        ..cfg()
    });
    *h.world.busy.borrow_mut() = Some(Ok(1));
    h.ready(1).await;
    h.saw("busy", 2).await;
    // Still "busy", but for longer than allowed: stopped all the same.
    h.reach(InstanceState::Stopped).await;
    assert_eq!(h.world.count("terminate 1"), 1);
}

#[actix::test]
async fn health_checks_ask_whether_an_agent_works_and_failures_restart() {
    let h = harness(InstanceConfig {
        health_interval: Duration::from_millis(50),
        ..cfg()
    });
    *h.world.busy.borrow_mut() = Some(Ok(1));
    h.ready(1).await;
    h.saw("probe", 2).await;
    let mut rx = h.status.clone();
    tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.busy_sessions == 1))
        .await
        .expect("busySessions published")
        .expect("alive");
    h.world.healthy.set(false);
    // Two failed checks: stopped politely, then queued again without a `stopped` between.
    h.saw("terminate 1", 1).await;
    h.saw("launch 2", 1).await;
    assert_eq!(h.status.borrow().restarts, 1);
    // Room given back before it was asked for again, in that order.
    assert_eq!(h.room(), ["admit", "released", "admit"]);
    h.world.healthy.set(true);
    h.world.listen(2);
    h.reach(InstanceState::Ready).await;
}

/// Waits until the published message is `expected`.
async fn says(h: &Harness, expected: &str) {
    let mut rx = h.status.clone();
    tokio::time::timeout(
        DEADLINE,
        rx.wait_for(|s| s.message.as_deref() == Some(expected)),
    )
    .await
    .unwrap_or_else(|_| panic!("never said {expected:?}; says {:?}", h.message()))
    .expect("instance alive");
}

#[actix::test]
async fn the_start_says_which_part_it_is_in() {
    for (quota, preparing) in [
        (None, "preparing your home"),
        (Some(1 << 30), "measuring your home for the disk quota"),
    ] {
        let h = harness(InstanceConfig {
            disk_quota: quota,
            ..cfg()
        });
        h.world.hold_prepare.set(true);
        h.world.disk_bytes.set(quota.map(|_| 1 << 20));
        assert!(matches!(h.wake(false).await, WakeReply::Pending));
        h.saw("prepare", 1).await;
        says(&h, preparing).await;
        h.world.release.notify_one();
        h.saw("launch 1", 1).await;
        says(&h, "starting OpenCode").await;
        h.world.listen(1);
        h.reach(InstanceState::Ready).await;
    }
}

#[actix::test]
async fn progress_of_the_current_start_is_shown_and_an_earlier_ones_ignored() {
    let h = harness(cfg());
    assert!(matches!(h.wake(false).await, WakeReply::Pending));
    h.saw("launch 1", 1).await;
    h.world.events().do_send(ProcessEvent::Progress {
        generation: 0,
        message: "from an earlier start".into(),
    });
    h.world.events().do_send(ProcessEvent::Progress {
        generation: 1,
        message: "pulling the image".into(),
    });
    let mut rx = h.status.clone();
    tokio::time::timeout(
        DEADLINE,
        rx.wait_for(|s| s.message.as_deref() == Some("pulling the image")),
    )
    .await
    .expect("the progress is published")
    .expect("instance alive");
    h.world.listen(1);
    let ready = h.reach(InstanceState::Ready).await;
    assert_eq!(ready.message, None, "ready clears the progress");
    // Progress after ready changes nothing.
    h.world.events().do_send(ProcessEvent::Progress {
        generation: 1,
        message: "late".into(),
    });
    h.stop(StopReason::Person).await;
    assert_eq!(h.message(), "stopped by the user");
}

#[actix::test]
async fn at_shutdown_a_process_that_outlives_the_gateway_is_let_go_not_stopped() {
    let h = harness(cfg());
    h.world.outlives_gateway.set(true);
    h.ready(1).await;
    h.stop(StopReason::Shutdown).await;
    assert_eq!(h.status.borrow().state, InstanceState::Stopped);
    assert_eq!(h.world.count("terminate 1"), 0);
    assert_eq!(h.world.count("kill 1"), 0);
    assert_eq!(h.room(), ["admit", "released"]);
    // Any other stop of such a process stops it.
    h.ready(2).await;
    h.stop(StopReason::Idle).await;
    assert_eq!(h.world.count("terminate 2"), 1);
}

#[actix::test]
async fn a_stop_terminates_waits_for_the_exit_and_rests() {
    let h = harness(cfg());
    h.ready(1).await;
    h.stop(StopReason::Person).await;
    let stopped = h.status.borrow().clone();
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert_eq!(stopped.message.as_deref(), Some("stopped by the user"));
    assert!(stopped.upstream.is_none() && stopped.pid.is_none());
    assert_eq!(h.world.count("terminate 1"), 1);
    assert_eq!(h.world.count("clean-up 1"), 1);
    assert_eq!(h.metric("chamberlain_instance_stop_seconds_count"), 1.0);
    assert_eq!(h.room(), ["admit", "released"]);
}

#[actix::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace() {
    let h = harness(InstanceConfig {
        stop_grace: Duration::from_millis(200),
        ..cfg()
    });
    h.world.ignores_sigterm.set(true);
    h.ready(1).await;
    h.stop(StopReason::Operator).await;
    assert_eq!(h.message(), "stopped by an operator");
    let log = h.world.log.borrow().clone();
    let term = log
        .iter()
        .position(|l| l == "terminate 1")
        .expect("SIGTERM first");
    let kill = log
        .iter()
        .position(|l| l == "kill 1")
        .expect("then SIGKILL");
    assert!(term < kill, "{log:?}");
}

#[actix::test]
async fn stopping_lasts_until_nothing_of_the_user_is_left() {
    let h = harness(cfg());
    h.world.hold_clean_up.set(true);
    h.ready(1).await;
    let stop = h.addr.send(Stop {
        reason: StopReason::Person,
    });
    let stop = actix::spawn(stop);
    h.saw("clean-up 1", 1).await;
    assert_eq!(h.status.borrow().state, InstanceState::Stopping);
    assert_eq!(h.room(), ["admit"], "room held while processes remain");
    h.world.release.notify_one();
    h.reach(InstanceState::Stopped).await;
    stop.await.expect("stop answered").expect("alive");
    assert_eq!(h.room(), ["admit", "released"]);
}

#[actix::test]
async fn an_eviction_stops_and_says_why() {
    let h = harness(cfg());
    h.ready(1).await;
    h.stop(StopReason::Evicted).await;
    assert_eq!(h.message(), "stopped to make room for another user");
    assert_eq!(
        h.metric("chamberlain_instance_culls_total{reason=\"evicted\"}"),
        1.0
    );
}

#[actix::test]
async fn a_wake_during_a_stop_starts_again_once_stopped() {
    let h = harness(cfg());
    h.world.ignores_sigterm.set(true);
    h.ready(1).await;
    h.addr.do_send(Stop {
        reason: StopReason::Person,
    });
    h.reach(InstanceState::Stopping).await;
    assert!(matches!(h.wake(false).await, WakeReply::Pending));
    h.world.exit(1, "signal: 15 (SIGTERM)", false);
    h.saw("launch 2", 1).await;
    assert_eq!(h.room(), ["admit", "released", "admit"]);
}

#[actix::test]
async fn a_kill_by_the_oom_killer_is_counted_and_named() {
    let h = harness(cfg());
    h.world.out_of_memory.set(true);
    h.ready(1).await;
    h.world.exit(1, "signal: 9 (SIGKILL)", true);
    let stopped = h.reach(InstanceState::Stopped).await;
    assert_eq!(stopped.oom_kills, 1);
    assert!(stopped
        .message
        .unwrap()
        .contains("killed by the kernel's OOM killer"));
    assert_eq!(h.metric("chamberlain_instance_oom_kills_total"), 1.0);
}

#[actix::test]
async fn shutdown_while_waiting_for_room_rests_at_once() {
    let h = harness(cfg());
    *h.answer.borrow_mut() = Answer::Hold;
    h.wake(false).await;
    h.reach(InstanceState::Queued).await;
    h.stop(StopReason::Shutdown).await;
    assert_eq!(h.status.borrow().state, InstanceState::Stopped);
    assert_eq!(h.message(), "stopped because the gateway is shutting down");
    assert_eq!(h.room(), ["admit", "released"]);
    assert_eq!(h.world.count("prepare"), 0);
}

#[actix::test]
async fn a_refused_admission_rests_with_the_refusal() {
    let h = harness(cfg());
    let retry_after = Duration::from_secs(5);
    *h.answer.borrow_mut() = Answer::Refuse(Refusal::Capacity { retry_after });
    h.wake(false).await;
    let stopped = h.reach(InstanceState::Stopped).await;
    assert_eq!(stopped.refusal, Some(Refusal::Capacity { retry_after }));
    assert_eq!(
        stopped.message.as_deref(),
        Some("the gateway is at its instance limit; try again shortly")
    );
    *h.answer.borrow_mut() = Answer::Refuse(Refusal::ShuttingDown);
    h.wake(false).await;
    let mut rx = h.status.clone();
    let refused = tokio::time::timeout(
        DEADLINE,
        rx.wait_for(|s| s.refusal == Some(Refusal::ShuttingDown)),
    )
    .await
    .expect("refused in time")
    .expect("alive")
    .clone();
    assert_eq!(refused.state, InstanceState::Stopped);
    assert_eq!(h.world.count("prepare"), 0);
    assert_eq!(h.room(), ["admit", "released", "admit", "released"]);
}

#[actix::test]
async fn only_a_long_stopped_instance_retires() {
    let h = harness(cfg());
    h.ready(1).await;
    let retire = |idle_for| h.addr.send(Retire { idle_for });
    assert!(
        !retire(Duration::ZERO).await.expect("alive"),
        "ready: not retired"
    );
    h.stop(StopReason::Person).await;
    assert!(!retire(Duration::from_secs(3600)).await.expect("alive"));
    assert!(retire(Duration::ZERO).await.expect("alive"));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while h.addr.connected() {
        assert!(tokio::time::Instant::now() < deadline, "the actor ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
