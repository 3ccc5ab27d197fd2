//! Monotonic time for idle accounting, convertible to wall-clock milliseconds for display.
//!
//! Idle and eviction decisions must not jump when the wall clock is adjusted, so activity is
//! stored as milliseconds on a process-wide monotonic base; only what is shown to people
//! (`lastActivity`, `startedAt`) is converted to Unix epoch milliseconds.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Base {
    instant: Instant,
    epoch_ms: u64,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| Base {
        instant: Instant::now(),
        epoch_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    })
}

/// Milliseconds since the process-wide monotonic base.
pub fn mono_ms() -> u64 {
    base().instant.elapsed().as_millis() as u64
}

/// Converts a `mono_ms` reading to Unix epoch milliseconds.
pub fn to_epoch_ms(mono: u64) -> u64 {
    base().epoch_ms + mono
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_conversion_is_monotonic_with_base() {
        let a = mono_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = mono_ms();
        assert!(b >= a + 5);
        assert_eq!(to_epoch_ms(b) - to_epoch_ms(a), b - a);
        assert!(to_epoch_ms(0) > 1_600_000_000_000);
    }
}
