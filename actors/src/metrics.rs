//! Lifecycle metrics recorded by the actors. The gateway registers them in its Prometheus
//! registry next to its HTTP metrics; nothing here knows how they are served.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::status::InstanceState;

pub type Label = [(&'static str, &'static str); 1];

#[derive(Clone)]
pub struct InstanceMetrics {
    starts: Family<Label, Counter>,
    spawn_seconds: Histogram,
    culls: Family<Label, Counter>,
    crashes: Counter,
    oom_kills: Counter,
    stop_seconds: Histogram,
    restarts: Counter,
    by_state: Family<Label, Gauge>,
}

impl Default for InstanceMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Outcome of an attempted start, for `starts_total{outcome}`.
#[derive(Clone, Copy, Debug)]
pub enum StartOutcome {
    Ready,
    /// The process exited before it was listening.
    Exited,
    /// No `listening` line within the start timeout.
    Timeout,
    /// The process could not be created at all.
    Error,
    /// Not attempted: no room under the instance limit.
    Refused,
}

impl StartOutcome {
    fn label(self) -> &'static str {
        match self {
            StartOutcome::Ready => "ready",
            StartOutcome::Exited => "exited",
            StartOutcome::Timeout => "timeout",
            StartOutcome::Error => "error",
            StartOutcome::Refused => "refused",
        }
    }
}

/// Why an instance was stopped by the gateway rather than by a person.
#[derive(Clone, Copy, Debug)]
pub enum CullReason {
    Idle,
    Evicted,
}

impl InstanceMetrics {
    pub fn new() -> Self {
        Self {
            starts: Family::default(),
            // 50 ms … ~100 s
            spawn_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            culls: Family::default(),
            crashes: Counter::default(),
            oom_kills: Counter::default(),
            // 10 ms … ~40 s
            stop_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 13)),
            restarts: Counter::default(),
            by_state: Family::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "chamberlain_instance_starts",
            "Instance start attempts by outcome",
            self.starts.clone(),
        );
        registry.register(
            "chamberlain_instance_spawn_duration_seconds",
            "Time from spawning OpenCode to its listening line",
            self.spawn_seconds.clone(),
        );
        registry.register(
            "chamberlain_instance_culls",
            "Instances stopped by the gateway, by reason (idle timeout, eviction)",
            self.culls.clone(),
        );
        registry.register(
            "chamberlain_instance_crashes",
            "OpenCode processes that exited unexpectedly",
            self.crashes.clone(),
        );
        registry.register(
            "chamberlain_instance_stop_seconds",
            "Time from SIGTERM to every process of the instance gone",
            self.stop_seconds.clone(),
        );
        registry.register(
            "chamberlain_instance_oom_kills",
            "OpenCode processes the kernel's OOM killer ended (also counted as crashes)",
            self.oom_kills.clone(),
        );
        registry.register(
            "chamberlain_instance_restarts",
            "Automatic restarts after a crash or failed health checks",
            self.restarts.clone(),
        );
        registry.register(
            "chamberlain_instances",
            "Known instances by state",
            self.by_state.clone(),
        );
    }

    pub fn start(&self, outcome: StartOutcome) {
        self.starts
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }

    pub fn spawn_duration(&self, seconds: f64) {
        self.spawn_seconds.observe(seconds);
    }

    pub fn cull(&self, reason: CullReason) {
        let label = match reason {
            CullReason::Idle => "idle",
            CullReason::Evicted => "evicted",
        };
        self.culls.get_or_create(&[("reason", label)]).inc();
    }

    pub fn crash(&self) {
        self.crashes.inc();
    }

    pub fn stop_duration(&self, seconds: f64) {
        self.stop_seconds.observe(seconds);
    }

    pub fn oom_kill(&self) {
        self.oom_kills.inc();
    }

    pub fn restart(&self) {
        self.restarts.inc();
    }

    /// Sets the per-state gauges from a fresh count (every state, zeros included).
    pub fn set_states(&self, count: impl Fn(InstanceState) -> usize) {
        for state in InstanceState::ALL {
            self.by_state
                .get_or_create(&[("state", state.as_str())])
                .set(count(state) as i64);
        }
    }
}
