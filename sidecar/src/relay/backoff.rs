//! Full-jitter exponential backoff: `delay = random(0, min(max, initial * 2^attempt))`.
//!
//! Full jitter spreads a fleet of sidecars that lost the gateway at the same moment, so they do
//! not all come back in the same millisecond. The math is pure; the caller injects randomness.

use rand_core::RngCore;
use std::time::Duration;

/// The cap for `attempt` (0-based): `min(max, initial * 2^attempt)`, saturating.
pub fn backoff_ceiling(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 1u128.checked_shl(attempt).unwrap_or(u128::MAX);
    let ceiling = initial
        .as_millis()
        .saturating_mul(factor)
        .min(max.as_millis());
    Duration::from_millis(u64::try_from(ceiling).unwrap_or(u64::MAX))
}

/// A uniformly drawn delay in `[0, ceiling]` (millisecond resolution).
pub fn full_jitter(ceiling: Duration, random: u64) -> Duration {
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    match ceiling_ms.checked_add(1) {
        Some(span) => Duration::from_millis(random % span),
        None => Duration::from_millis(random),
    }
}

/// `base` plus up to a tenth of it (at least 100 ms) of jitter: for a gateway's `GoAway`, so
/// the sidecars it sent away do not all return at the same instant.
pub fn delay_with_spread(base: Duration, random: u64) -> Duration {
    let spread = (base / 10).max(Duration::from_millis(100));
    base.saturating_add(full_jitter(spread, random))
}

/// Backoff state across reconnect attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The next delay; each call raises the ceiling until it reaches `max`.
    pub fn next_delay(&mut self, rng: &mut impl RngCore) -> Duration {
        let ceiling = backoff_ceiling(self.attempt, self.initial, self.max);
        self.attempt = self.attempt.saturating_add(1);
        full_jitter(ceiling, rng.next_u64())
    }

    /// After a healthy session: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceiling_doubles_and_caps() {
        let (initial, max) = (ms(500), ms(30_000));
        assert_eq!(backoff_ceiling(0, initial, max), ms(500));
        assert_eq!(backoff_ceiling(1, initial, max), ms(1000));
        assert_eq!(backoff_ceiling(5, initial, max), ms(16_000));
        assert_eq!(backoff_ceiling(6, initial, max), ms(30_000));
        assert_eq!(backoff_ceiling(200, initial, max), ms(30_000));
        assert_eq!(backoff_ceiling(u32::MAX, initial, max), ms(30_000));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let ceiling = ms(1000);
        for random in [0, 1, 999, 1000, 1001, u64::MAX, 123_456_789] {
            assert!(full_jitter(ceiling, random) <= ceiling);
        }
        assert_eq!(full_jitter(ms(0), u64::MAX), ms(0));
        assert_eq!(full_jitter(ms(1000), 1000), ms(1000));
        assert_eq!(full_jitter(ms(1000), 1001), ms(0));
    }

    #[test]
    fn backoff_sequence_is_bounded_and_resets() {
        struct Max;
        impl RngCore for Max {
            fn next_u32(&mut self) -> u32 {
                u32::MAX
            }
            fn next_u64(&mut self) -> u64 {
                u64::MAX
            }
            fn fill_bytes(&mut self, dest: &mut [u8]) {
                dest.fill(0xff);
            }
            fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
                dest.fill(0xff);
                Ok(())
            }
        }
        let mut backoff = Backoff::new(ms(500), ms(30_000));
        let mut rng = rand_core::OsRng;
        for attempt in 0..20u32 {
            let delay = backoff.next_delay(&mut rng);
            assert!(delay <= backoff_ceiling(attempt, ms(500), ms(30_000)));
            assert!(delay <= ms(30_000));
        }
        assert_eq!(backoff.attempt(), 20);
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        assert!(backoff.next_delay(&mut Max) <= ms(500));
    }

    #[test]
    fn go_away_delay_is_at_least_the_base() {
        for random in [0, 7, u64::MAX] {
            let delay = delay_with_spread(ms(5000), random);
            assert!(delay >= ms(5000) && delay <= ms(5500));
        }
        let delay = delay_with_spread(ms(0), u64::MAX);
        assert!(delay <= ms(100));
    }
}
