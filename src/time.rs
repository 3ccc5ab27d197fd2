//! Times as people and programs read them: RFC 3339 in UTC, to the second.

use std::time::{Duration, UNIX_EPOCH};

/// `secs` since the epoch as `2026-12-02T05:04:03Z`.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// `ms` since the epoch, to the second.
pub fn rfc3339_ms(ms: u64) -> String {
    rfc3339(ms / 1000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_to_the_second() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339_ms(1_796_187_843_999), "2026-12-02T05:04:03Z");
    }
}
