//! Keyed token-bucket rate limits (per OAuth subject, per peer address).
//!
//! Each key gets a bucket of `per_minute` tokens refilled continuously, so a client can burst
//! up to a minute's allowance and then proceeds at the steady rate. Time is
//! `tokio::time::Instant` (monotonic; pausable in tests). The map is bounded: full buckets
//! carry no information and are dropped first when it grows too large.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

const MAX_TRACKED_KEYS: usize = 100_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_minute", &self.per_minute)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_minute / 60.0).min(self.per_minute);
        bucket.updated = now;
    }

    /// Takes one token for `key`; on refusal returns how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        // A poisoned map only holds counters; keep using it rather than failing every request.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_KEYS && !buckets.contains_key(key) {
            let per_minute = self.per_minute;
            buckets.retain(|_, bucket| {
                let elapsed = now.duration_since(bucket.updated).as_secs_f64();
                bucket.tokens + elapsed * per_minute / 60.0 < per_minute
            });
            if buckets.len() >= MAX_TRACKED_KEYS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.per_minute,
            updated: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            let seconds = missing * 60.0 / self.per_minute;
            Err(Duration::from_secs_f64(seconds.max(0.001)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refills_at_the_steady_rate() {
        let limiter = RateLimiter::new(60);
        for _ in 0..60 {
            assert!(limiter.check("alice").is_ok());
        }
        let wait = limiter.check("alice").unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        // Another key is independent.
        assert!(limiter.check("bob").is_ok());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.check("alice").is_ok());
        assert!(limiter.check("alice").is_err());
    }
}
