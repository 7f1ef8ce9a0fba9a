//! Wall-clock helpers for the state store. Records are about wall time (when a pairing was made,
//! when a session expires for a person reading `status`); liveness never uses these, it runs on
//! the monotonic clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in whole seconds (0 if the system clock reads before 1970).
pub fn now_unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix time in milliseconds.
pub fn now_unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
