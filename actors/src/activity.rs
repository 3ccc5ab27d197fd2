//! Client-originated activity of one instance, shared lock-free between the HTTP handlers
//! (which record it on the hot path) and the instance actor (which reads it for the idle
//! timeout and the registry for eviction).
//!
//! Only activity caused by a person counts: proxied requests and client websocket messages.
//! Server-push streams (`/event`) never touch it, so a forgotten browser tab cannot keep an
//! instance alive. A request that is still running counts as activity for as long as it runs,
//! so a long prompt is not culled halfway. So does an agent the instance last saw at work:
//! the idle timer and the eviction read the same answer, and a slow or failed question to
//! OpenCode (a loaded machine) does not let the time since it was asked make a busy instance
//! look idle.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock;

#[derive(Debug)]
pub struct Activity {
    last_mono_ms: AtomicU64,
    in_flight: AtomicU32,
    at_work: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self {
            last_mono_ms: AtomicU64::new(clock::mono_ms()),
            in_flight: AtomicU32::new(0),
            at_work: AtomicBool::new(false),
        }
    }

    /// Records a moment of activity (e.g. one websocket message from the client).
    pub fn touch(&self) {
        self.last_mono_ms
            .fetch_max(clock::mono_ms(), Ordering::Relaxed);
    }

    /// Records the start of a client request; the instance counts as active until the
    /// returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ActivityGuard(Arc::clone(self))
    }

    /// Whether an agent works in the instance, as its owner last found out. While it does,
    /// the instance is not idle; when the work ends, idleness counts from the last answer.
    pub fn set_at_work(&self, at_work: bool) {
        if self.at_work.swap(at_work, Ordering::Relaxed) != at_work {
            self.touch();
        }
    }

    /// How long the instance has been without client activity; zero while requests run or an
    /// agent is at work.
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 || self.at_work.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let last = self.last_mono_ms.load(Ordering::Relaxed);
        Duration::from_millis(clock::mono_ms().saturating_sub(last))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Unix epoch milliseconds of the last recorded activity.
    pub fn last_epoch_ms(&self) -> u64 {
        clock::to_epoch_ms(self.last_mono_ms.load(Ordering::Relaxed))
    }
}

/// Keeps an instance active while a client request is in flight.
#[derive(Debug)]
pub struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_requests_keep_the_instance_active() {
        let activity = Arc::new(Activity::new());
        let guard = activity.begin();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(activity.idle_for(), Duration::ZERO);
        assert_eq!(activity.in_flight(), 1);
        drop(guard);
        assert_eq!(activity.in_flight(), 0);
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.idle_for() >= Duration::from_millis(20));
    }

    #[test]
    fn an_agent_at_work_keeps_the_instance_active_until_it_is_done() {
        let activity = Activity::new();
        activity.set_at_work(true);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(activity.idle_for(), Duration::ZERO);
        activity.set_at_work(false);
        assert!(activity.idle_for() < Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.idle_for() >= Duration::from_millis(20));
    }

    #[test]
    fn touch_resets_idle_time() {
        let activity = Activity::new();
        std::thread::sleep(Duration::from_millis(20));
        let before = activity.idle_for();
        assert!(before >= Duration::from_millis(20));
        activity.touch();
        assert!(activity.idle_for() < before);
    }
}
