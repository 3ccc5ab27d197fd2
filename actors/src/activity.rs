//! Client-originated activity of one instance, shared lock-free between the HTTP handlers
//! (which record it on the hot path) and the instance actor (which reads it for the idle
//! timeout and the registry for eviction).
//!
//! Only activity caused by a person counts: proxied requests and client websocket messages.
//! Server-push streams (`/event`) never touch it, so a forgotten browser tab cannot keep an
//! instance alive. A request that is still running counts as activity for as long as it runs,
//! so a long prompt is not culled halfway.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock;

#[derive(Debug)]
pub struct Activity {
    last_mono_ms: AtomicU64,
    in_flight: AtomicU32,
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

    /// How long the instance has been without client activity; zero while requests run.
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
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
    fn touch_resets_idle_time() {
        let activity = Activity::new();
        std::thread::sleep(Duration::from_millis(20));
        let before = activity.idle_for();
        assert!(before >= Duration::from_millis(20));
        activity.touch();
        assert!(activity.idle_for() < before);
    }
}
