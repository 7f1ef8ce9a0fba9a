//! Heartbeat liveness, judged on the caller's own monotonic clock.
//!
//! Time is a `Duration` since any fixed point the caller chooses (e.g. a `tokio::time::Instant`
//! taken at connection start). Only frames that authenticated count as signs of life, and the
//! peer's own timestamps are never trusted.
//!
//! Silence counts only while this side was running. The driver polls at least once per
//! interval (see [`Liveness::next_deadline`]); a poll that comes later than that means this
//! side's own task did not run (a stalled process, a loaded machine, a paused VM), and during
//! that time it could not have read the peer's frames either. That lateness is not charged to
//! the peer: a stall of our own must not end a healthy session.

use std::time::Duration;

/// Validated heartbeat settings: `timeout > interval > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatConfig {
    interval: Duration,
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatConfigError {
    #[error("heartbeat interval must be greater than zero")]
    ZeroInterval,
    #[error("heartbeat timeout must be greater than the heartbeat interval")]
    TimeoutNotAboveInterval,
}

impl HeartbeatConfig {
    pub fn new(interval: Duration, timeout: Duration) -> Result<Self, HeartbeatConfigError> {
        if interval.is_zero() {
            return Err(HeartbeatConfigError::ZeroInterval);
        }
        if timeout <= interval {
            return Err(HeartbeatConfigError::TimeoutNotAboveInterval);
        }
        Ok(HeartbeatConfig { interval, timeout })
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// What the connection driver should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LivenessAction {
    /// Nothing until [`Liveness::next_deadline`].
    Wait,
    /// Send `Frame::Ping { seq }`.
    SendPing { seq: u64 },
    /// Nothing authentic arrived within the timeout: close the connection.
    PeerDead,
}

#[derive(Clone, Debug)]
pub struct Liveness {
    config: HeartbeatConfig,
    last_received: Duration,
    last_ping_sent: Duration,
    /// When [`Liveness::poll`] last ran.
    last_polled: Duration,
    next_seq: u64,
}

impl Liveness {
    pub fn new(config: HeartbeatConfig, now: Duration) -> Self {
        Liveness {
            config,
            last_received: now,
            last_ping_sent: now,
            last_polled: now,
            next_seq: 0,
        }
    }

    /// Record an authenticated frame from the peer.
    pub fn on_authentic_frame(&mut self, now: Duration) {
        if now > self.last_received {
            self.last_received = now;
        }
    }

    /// True while the peer has been heard from within the timeout.
    pub fn is_alive(&self, now: Duration) -> bool {
        now.saturating_sub(self.last_received) < self.config.timeout
    }

    /// Time since the peer was last heard from.
    pub fn silence(&self, now: Duration) -> Duration {
        now.saturating_sub(self.last_received)
    }

    pub fn poll(&mut self, now: Duration) -> LivenessAction {
        // Polled later than the interval allows: this side was not running for the excess.
        let late = now
            .saturating_sub(self.last_polled)
            .saturating_sub(self.config.interval);
        self.last_polled = self.last_polled.max(now);
        if !late.is_zero() {
            self.last_received = (self.last_received + late).min(now);
        }
        if !self.is_alive(now) {
            return LivenessAction::PeerDead;
        }
        if now.saturating_sub(self.last_ping_sent) >= self.config.interval {
            self.last_ping_sent = now;
            let seq = self.next_seq;
            self.next_seq += 1;
            return LivenessAction::SendPing { seq };
        }
        LivenessAction::Wait
    }

    /// When [`Liveness::poll`] next has something to do.
    pub fn next_deadline(&self) -> Duration {
        let next_ping = self.last_ping_sent + self.config.interval;
        let death = self.last_received + self.config.timeout;
        next_ping.min(death)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn config_requires_timeout_above_interval() {
        assert!(HeartbeatConfig::new(secs(10), secs(10)).is_err());
        assert!(HeartbeatConfig::new(secs(0), secs(10)).is_err());
        assert!(HeartbeatConfig::new(secs(10), secs(30)).is_ok());
    }

    #[test]
    fn pings_on_interval_and_dies_after_timeout() {
        let config = HeartbeatConfig::new(secs(10), secs(30)).unwrap();
        let mut liveness = Liveness::new(config, secs(0));
        assert_eq!(liveness.poll(secs(5)), LivenessAction::Wait);
        assert_eq!(liveness.poll(secs(10)), LivenessAction::SendPing { seq: 0 });
        assert_eq!(liveness.poll(secs(15)), LivenessAction::Wait);
        assert_eq!(liveness.poll(secs(20)), LivenessAction::SendPing { seq: 1 });
        liveness.on_authentic_frame(secs(21));
        assert_eq!(liveness.poll(secs(30)), LivenessAction::SendPing { seq: 2 });
        assert_eq!(liveness.poll(secs(40)), LivenessAction::SendPing { seq: 3 });
        assert_eq!(liveness.poll(secs(50)), LivenessAction::SendPing { seq: 4 });
        assert_eq!(liveness.poll(secs(51)), LivenessAction::PeerDead);
        assert_eq!(liveness.next_deadline(), secs(51));
    }

    #[test]
    fn a_stall_of_our_own_is_not_charged_to_the_peer() {
        let config = HeartbeatConfig::new(secs(1), secs(3)).unwrap();
        let mut liveness = Liveness::new(config, secs(0));
        assert_eq!(liveness.poll(secs(1)), LivenessAction::SendPing { seq: 0 });
        liveness.on_authentic_frame(secs(1));
        // Our task did not run from 1 s to 6 s: 5 s of "silence", 4 s of it ours.
        assert_eq!(liveness.poll(secs(6)), LivenessAction::SendPing { seq: 1 });
        // The peer answers the ping: the session lives on.
        liveness.on_authentic_frame(secs(6));
        assert_eq!(liveness.poll(secs(7)), LivenessAction::SendPing { seq: 2 });
    }

    #[test]
    fn a_dead_peer_is_still_found_after_a_stall_of_our_own() {
        let config = HeartbeatConfig::new(secs(1), secs(3)).unwrap();
        let mut liveness = Liveness::new(config, secs(0));
        assert_eq!(liveness.poll(secs(1)), LivenessAction::SendPing { seq: 0 });
        // Stalled from 1 s to 11 s, and the peer never speaks again.
        assert_eq!(liveness.poll(secs(11)), LivenessAction::SendPing { seq: 1 });
        // Three seconds of silence while we could listen: 0-1 s, the one interval a poll may
        // take, and 11-12 s.
        assert_eq!(liveness.poll(secs(12)), LivenessAction::PeerDead);
    }

    #[test]
    fn polls_on_time_never_extend_the_timeout() {
        let config = HeartbeatConfig::new(secs(1), secs(3)).unwrap();
        let mut liveness = Liveness::new(config, secs(0));
        for now in 1..3 {
            assert!(matches!(
                liveness.poll(secs(now)),
                LivenessAction::SendPing { .. }
            ));
        }
        assert_eq!(liveness.poll(secs(3)), LivenessAction::PeerDead);
    }
}
