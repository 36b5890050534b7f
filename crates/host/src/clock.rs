//! The wall clock, read in one place for the records and events that carry
//! a time. The pure core formats times but never reads the clock.

/// Now as RFC 3339 UTC with second precision, e.g. `2026-11-26T15:04:05Z`.
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    vpsie_lb_core::time::rfc3339(secs as i64)
}
