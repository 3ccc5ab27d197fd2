//! An instance's recent crashes: how many fell within `crash_window`, and how long the next
//! start waits (`backoff_after`). Pure: every call takes the time it is asked at, so the
//! policy is tested without processes or sleeps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::InstanceConfig;

#[derive(Debug, Default)]
pub(super) struct Crashes {
    at: VecDeque<Instant>,
}

impl Crashes {
    /// Records a crash at `now`; returns how many fell within the window, this one included.
    pub(super) fn record(&mut self, now: Instant, cfg: &InstanceConfig) -> usize {
        self.at.push_back(now);
        self.prune(now, cfg);
        self.at.len()
    }

    /// Whether that many crashes make the instance `failed`.
    pub(super) fn is_loop(count: usize, cfg: &InstanceConfig) -> bool {
        count >= cfg.crash_limit
    }

    /// What is left at `now` of the backoff after the most recent crash.
    pub(super) fn pending_backoff(&mut self, now: Instant, cfg: &InstanceConfig) -> Duration {
        self.prune(now, cfg);
        let Some(last) = self.at.back() else {
            return Duration::ZERO;
        };
        cfg.backoff_after(self.at.len())
            .saturating_sub(now.saturating_duration_since(*last))
    }

    /// Forgets every crash (a person asked for a start, or stopped a failed instance).
    pub(super) fn clear(&mut self) {
        self.at.clear();
    }

    fn prune(&mut self, now: Instant, cfg: &InstanceConfig) {
        while self
            .at
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) > cfg.crash_window)
        {
            self.at.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> InstanceConfig {
        InstanceConfig {
            crash_limit: 3,
            crash_window: Duration::from_secs(60),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            ..InstanceConfig::default()
        }
    }

    #[test]
    fn backoff_doubles_per_crash_in_the_window_and_wears_off() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut crashes = Crashes::default();
        assert_eq!(crashes.pending_backoff(t0, &cfg), Duration::ZERO);
        assert_eq!(crashes.record(t0, &cfg), 1);
        assert_eq!(crashes.pending_backoff(t0, &cfg), Duration::from_secs(1));
        assert_eq!(crashes.record(t0, &cfg), 2);
        assert_eq!(crashes.pending_backoff(t0, &cfg), Duration::from_secs(2));
        // Time passes: the wait shrinks, then it is over.
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(
            crashes.pending_backoff(later, &cfg),
            Duration::from_millis(500)
        );
        assert_eq!(
            crashes.pending_backoff(t0 + Duration::from_secs(5), &cfg),
            Duration::ZERO
        );
    }

    #[test]
    fn a_loop_is_crash_limit_crashes_within_the_window() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut crashes = Crashes::default();
        for (i, secs) in [0, 10, 20].into_iter().enumerate() {
            let n = crashes.record(t0 + Duration::from_secs(secs), &cfg);
            assert_eq!(n, i + 1);
            assert_eq!(Crashes::is_loop(n, &cfg), n == 3);
        }
        // Spread out, crashes fall out of the window and never add up to a loop.
        let mut spread = Crashes::default();
        for k in 0..10 {
            let n = spread.record(t0 + Duration::from_secs(61 * k), &cfg);
            assert_eq!(n, 1);
            assert!(!Crashes::is_loop(n, &cfg));
        }
        spread.clear();
        assert_eq!(spread.pending_backoff(t0, &cfg), Duration::ZERO);
    }
}
