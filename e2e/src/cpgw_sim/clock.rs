//! The simulator's clock and the exchange calendar it implies.
//!
//! Every time-dependent quirk (pacing windows, the penalty box, positions
//! lag, the orders-list warm-up, idle lapse, the nightly reset, DAY-order
//! expiry) reads [`SimClock`], never the system clock directly, so tests move
//! time with [`SimClock::advance`] instead of sleeping.
//!
//! The calendar is deliberately independent of the product's own market
//! calendar (a witness must not share the code it checks): US equity hours in
//! America/New_York, pre-market 04:00-09:30, regular 09:30-16:00, after hours
//! 16:00-20:00, Monday to Friday, US daylight-saving rules. Exchange holidays
//! and half days are not modelled (see docs/cpgw-simulator.md).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use time::{Date, Month, OffsetDateTime, Time, UtcOffset, Weekday};

/// Tuesday 1 December 2026, 10:00 New York time (15:00 UTC): an ordinary
/// trading day inside regular hours, so a default simulator trades.
pub const DEFAULT_START: OffsetDateTime = time::macros::datetime!(2026-12-01 15:00 UTC);

/// The simulator's notion of "now".
///
/// `flowing` clocks add the real time elapsed since they were made (so
/// request bursts are judged at their real pace); `manual` clocks stand still
/// until [`SimClock::advance`] moves them. Both can be advanced. Clones share
/// one clock.
#[derive(Clone, Debug)]
pub struct SimClock {
    inner: Arc<Mutex<ClockInner>>,
}

#[derive(Debug)]
struct ClockInner {
    start_ms: i64,
    /// Set for a flowing clock: real elapsed time since then is added.
    flowing_since: Option<Instant>,
    offset_ms: i64,
}

impl SimClock {
    /// A clock that stands at `start` until advanced.
    pub fn manual(start: OffsetDateTime) -> SimClock {
        SimClock::new(start, None)
    }

    /// A clock that starts at `start` and runs at real speed from now on.
    pub fn flowing(start: OffsetDateTime) -> SimClock {
        SimClock::new(start, Some(Instant::now()))
    }

    fn new(start: OffsetDateTime, flowing_since: Option<Instant>) -> SimClock {
        let start_ms = i64::try_from(start.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        SimClock {
            inner: Arc::new(Mutex::new(ClockInner {
                start_ms,
                flowing_since,
                offset_ms: 0,
            })),
        }
    }

    /// Milliseconds since the Unix epoch, now.
    pub fn now_ms(&self) -> i64 {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let flowed = inner.flowing_since.map_or(0, |since| {
            i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX / 4)
        });
        inner
            .start_ms
            .saturating_add(flowed)
            .saturating_add(inner.offset_ms)
    }

    /// Now, as a UTC date-time.
    pub fn now(&self) -> OffsetDateTime {
        utc(self.now_ms())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
        inner.offset_ms = inner.offset_ms.saturating_add(by_ms);
    }
}

impl Default for SimClock {
    /// A flowing clock starting at [`DEFAULT_START`].
    fn default() -> Self {
        SimClock::flowing(DEFAULT_START)
    }
}

/// Where the US equity session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionPhase {
    /// Overnight and weekends: nothing executes.
    Closed,
    /// 04:00-09:30 New York: only orders with `outsideRTH` work.
    PreMarket,
    /// 09:30-16:00 New York: everything works.
    Regular,
    /// 16:00-20:00 New York: only orders with `outsideRTH` work.
    AfterHours,
}

impl SessionPhase {
    /// Whether an order with (or without) `outsideRTH` may execute now.
    pub fn executes(self, outside_rth: bool) -> bool {
        match self {
            SessionPhase::Regular => true,
            SessionPhase::PreMarket | SessionPhase::AfterHours => outside_rth,
            SessionPhase::Closed => false,
        }
    }
}

pub(crate) fn utc(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The `n`-th Sunday (1-based) of a month.
fn nth_sunday(year: i32, month: Month, n: u8) -> Option<Date> {
    let first = Date::from_calendar_date(year, month, 1).ok()?;
    let to_sunday = (7 - first.weekday().number_days_from_sunday()) % 7;
    Date::from_calendar_date(year, month, 1 + to_sunday + 7 * (n - 1)).ok()
}

/// US daylight saving time: from the second Sunday of March, 02:00 local, to
/// the first Sunday of November, 02:00 local (Energy Policy Act of 2005).
fn is_dst(date: Date, hour: u8) -> bool {
    let year = date.year();
    let (Some(start), Some(end)) = (
        nth_sunday(year, Month::March, 2),
        nth_sunday(year, Month::November, 1),
    ) else {
        return false;
    };
    let after_start = date > start || (date == start && hour >= 2);
    let before_end = date < end || (date == end && hour < 2);
    after_start && before_end
}

fn offset_for(date: Date, hour: u8) -> UtcOffset {
    let hours = if is_dst(date, hour) { -4 } else { -5 };
    UtcOffset::from_hms(hours, 0, 0).unwrap_or(UtcOffset::UTC)
}

/// New York local date-time of an instant.
pub(crate) fn new_york(ms: i64) -> OffsetDateTime {
    let at = utc(ms);
    // Decide DST from the UTC date shifted by standard time; exact except in
    // the hour of the switch itself, where no market is open anyway.
    let standard = at.to_offset(offset_for(at.date(), 12));
    at.to_offset(offset_for(standard.date(), standard.hour()))
}

/// Epoch milliseconds of a New York wall-clock time.
pub(crate) fn new_york_instant(date: Date, hour: u8, minute: u8) -> i64 {
    let wall = Time::from_hms(hour, minute, 0).unwrap_or(Time::MIDNIGHT);
    let at = date.with_time(wall).assume_offset(offset_for(date, hour));
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn is_weekday(date: Date) -> bool {
    !matches!(date.weekday(), Weekday::Saturday | Weekday::Sunday)
}

/// The session phase at an instant.
pub fn phase_at(ms: i64) -> SessionPhase {
    let local = new_york(ms);
    if !is_weekday(local.date()) {
        return SessionPhase::Closed;
    }
    let minutes = u32::from(local.hour()) * 60 + u32::from(local.minute());
    match minutes {
        240..570 => SessionPhase::PreMarket,
        570..960 => SessionPhase::Regular,
        960..1200 => SessionPhase::AfterHours,
        _ => SessionPhase::Closed,
    }
}

/// The first regular-session close (16:00 New York on a weekday) strictly
/// after `ms`: when a DAY order placed at `ms` expires.
pub(crate) fn next_regular_close(ms: i64) -> i64 {
    next_local_time_after(ms, 16, 0, true)
}

/// The first New York wall-clock `hour:minute` strictly after `ms`
/// (weekdays only if asked).
pub(crate) fn next_local_time_after(ms: i64, hour: u8, minute: u8, weekdays_only: bool) -> i64 {
    let mut date = new_york(ms).date();
    for _ in 0..10 {
        let candidate = new_york_instant(date, hour, minute);
        if candidate > ms && (!weekdays_only || is_weekday(date)) {
            return candidate;
        }
        match date.next_day() {
            Some(next) => date = next,
            None => break,
        }
    }
    i64::MAX
}

/// Midnight New York of the day `ms` falls on.
pub(crate) fn start_of_new_york_day(ms: i64) -> i64 {
    new_york_instant(new_york(ms).date(), 0, 0)
}

/// A `Duration` as milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn ms(at: OffsetDateTime) -> i64 {
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or_default()
    }

    #[test]
    fn phases_follow_new_york_hours_across_daylight_saving() {
        let cases = [
            // Winter (EST, UTC-5): 09:30 New York is 14:30 UTC.
            (datetime!(2026-12-01 14:29 UTC), SessionPhase::PreMarket),
            (datetime!(2026-12-01 14:30 UTC), SessionPhase::Regular),
            (datetime!(2026-12-01 21:00 UTC), SessionPhase::AfterHours),
            (datetime!(2026-12-02 01:00 UTC), SessionPhase::Closed),
            // Summer (EDT, UTC-4): 09:30 New York is 13:30 UTC.
            (datetime!(2026-07-07 13:30 UTC), SessionPhase::Regular),
            (datetime!(2026-07-07 20:00 UTC), SessionPhase::AfterHours),
            // Saturday.
            (datetime!(2026-12-05 16:00 UTC), SessionPhase::Closed),
        ];
        for (at, phase) in cases {
            assert_eq!(phase_at(ms(at)), phase, "{at}");
        }
    }

    #[test]
    fn day_orders_expire_at_the_next_weekday_close() {
        // Tuesday 10:00 EST: today's 16:00 EST = 21:00 UTC.
        let tuesday = ms(datetime!(2026-12-01 15:00 UTC));
        assert_eq!(
            next_regular_close(tuesday),
            ms(datetime!(2026-12-01 21:00 UTC))
        );
        // Friday after the close: Monday's close.
        let friday_evening = ms(datetime!(2026-12-04 22:00 UTC));
        assert_eq!(
            next_regular_close(friday_evening),
            ms(datetime!(2026-12-07 21:00 UTC))
        );
    }

    #[test]
    fn manual_clocks_stand_still_until_advanced() {
        let clock = SimClock::manual(DEFAULT_START);
        let before = clock.now_ms();
        assert_eq!(clock.now_ms(), before);
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.now_ms(), before + 5_000);
        assert_eq!(clock.now(), DEFAULT_START + Duration::from_secs(5));
    }
}
