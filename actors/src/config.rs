//! Settings of the actor system, filled in from the command line by the gateway.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct InstanceConfig {
    /// No `listening on` line within this → the start failed.
    pub start_timeout: Duration,
    pub health_interval: Duration,
    /// Consecutive failed health checks before the instance is restarted.
    pub health_failures: u32,
    pub health_timeout: Duration,
    /// Between SIGTERM and SIGKILL when stopping.
    pub stop_grace: Duration,
    /// No client activity for this long → stopped.
    pub idle_timeout: Duration,
    /// This many crashes within `crash_window` → failed.
    pub crash_limit: usize,
    pub crash_window: Duration,
    /// First restart delay after a crash; doubles per further crash in the window.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Bytes a home may take before new starts are refused (`--disk-quota`); users are
    /// warned from [`DISK_WARN_PERCENT`] of it.
    pub disk_quota: Option<u64>,
    /// How often a running instance's home is measured (as the user).
    pub disk_check_interval: Duration,
    /// A session busy this long stops keeping its instance alive (a stuck agent).
    pub busy_timeout: Duration,
}

/// Share of `--disk-quota` from which the user and the log are warned.
pub const DISK_WARN_PERCENT: u64 = 90;

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            start_timeout: Duration::from_secs(60),
            health_interval: Duration::from_secs(15),
            health_failures: 3,
            health_timeout: Duration::from_secs(5),
            stop_grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30 * 60),
            crash_limit: 5,
            crash_window: Duration::from_secs(5 * 60),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            disk_quota: None,
            disk_check_interval: Duration::from_secs(10 * 60),
            busy_timeout: Duration::from_secs(4 * 3600),
        }
    }
}

impl InstanceConfig {
    /// Delay before the start that follows the `crashes`-th recent crash (1-based).
    pub fn backoff_after(&self, crashes: usize) -> Duration {
        if crashes == 0 {
            return Duration::ZERO;
        }
        let exp = (crashes - 1).min(16) as u32;
        self.backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max)
    }

    /// Whether `bytes` is at or over the warning share of the quota.
    pub fn disk_warning(&self, bytes: u64) -> bool {
        self.disk_quota
            .is_some_and(|q| bytes.saturating_mul(100) >= q.saturating_mul(DISK_WARN_PERCENT))
    }

    /// Whether `bytes` is at or over the quota: no new starts.
    pub fn disk_full(&self, bytes: u64) -> bool {
        self.disk_quota.is_some_and(|q| bytes >= q)
    }

    /// How often the idle timer looks at activity: fine enough to honour short timeouts
    /// (tests), coarse enough to cost nothing with the default of 30 minutes.
    pub fn idle_check_interval(&self) -> Duration {
        (self.idle_timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }
}

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub max_instances: usize,
    pub max_concurrent_starts: usize,
    /// An instance must have been idle this long before it may be evicted to make room.
    pub evict_min_idle: Duration,
    /// Stopped instances without activity for this long are forgotten (their actor ends).
    pub retire_after: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            max_instances: 15,
            max_concurrent_starts: 3,
            evict_min_idle: Duration::from_secs(60),
            retire_after: Duration::from_secs(3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cfg = InstanceConfig::default();
        let secs: Vec<u64> = (0..8).map(|n| cfg.backoff_after(n).as_secs()).collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(cfg.backoff_after(1000), Duration::from_secs(30));
    }

    #[test]
    fn idle_check_interval_is_bounded() {
        let mut cfg = InstanceConfig::default();
        assert_eq!(cfg.idle_check_interval(), Duration::from_secs(30));
        cfg.idle_timeout = Duration::from_secs(2);
        assert_eq!(cfg.idle_check_interval(), Duration::from_millis(200));
        cfg.idle_timeout = Duration::from_millis(10);
        assert_eq!(cfg.idle_check_interval(), Duration::from_millis(100));
    }
}
