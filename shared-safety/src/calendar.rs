//! NYSE regular trading hours, holidays and early closes, shipped as data.
//!
//! The calendar lives in `data/nyse_calendar.txt` (compiled in with `include_str!`), covering the
//! years named on its `covers` line. A time outside the covered years is refused with
//! [`CalendarError::Uncovered`] (-> `MARKET_CALENDAR_UNKNOWN`), never guessed.
//!
//! US Eastern time is computed without a tz database, from the US DST rule in force since 2007:
//! daylight time (UTC-4) from the second Sunday of March at 02:00 local standard time (07:00 UTC)
//! to the first Sunday of November at 02:00 local daylight time (06:00 UTC); standard time (UTC-5)
//! otherwise.
//!
//! Regular hours are 09:30 to 16:00 ET on weekdays that are not holidays, or 09:30 to the early
//! close. The open instant is inside the session, the close instant is not.

use std::collections::BTreeMap;

use serde::Serialize;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset, Weekday};

use crate::ErrorCode;

/// The shipped NYSE calendar data.
pub const NYSE_CALENDAR_DATA: &str = include_str!("../data/nyse_calendar.txt");

/// Why the calendar cannot answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// The date (in Eastern time) falls in a year the shipped calendar does not cover.
    #[error("the market calendar does not cover the year {year}")]
    Uncovered { year: i32 },
    /// The calendar data could not be parsed (line number is 1-based; 0 means the whole file).
    #[error("the market calendar data is invalid at line {line}: {reason}")]
    InvalidData { line: usize, reason: String },
}

impl CalendarError {
    /// Always [`ErrorCode::MarketCalendarUnknown`].
    pub fn code(&self) -> ErrorCode {
        ErrorCode::MarketCalendarUnknown
    }
}

/// Whether the market is in its regular session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarketPhase {
    Closed,
    Regular,
}

/// The market's state at one instant. Times are RFC 3339 in Eastern time with their offset
/// (`2026-03-09T09:30:00-04:00`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MarketStatus {
    pub phase: MarketPhase,
    /// `phase == Regular`.
    pub is_open: bool,
    /// The instant asked about, in Eastern time (whole seconds).
    pub now_et: String,
    /// The next regular-session open strictly after now (while open: the next day's open).
    /// `None` when it falls beyond the covered years.
    pub next_open: Option<String>,
    /// While open: today's close. While closed: the close of the next session. `None` when it
    /// falls beyond the covered years.
    pub next_close: Option<String>,
    /// The holiday's name when today (Eastern date) is a full-day holiday.
    pub holiday: Option<String>,
    /// When today is an early-close day: `"13:00 ET (Day after Thanksgiving)"`.
    pub early_close: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum DayRule {
    Holiday(String),
    EarlyClose(Time, String),
}

/// The NYSE calendar: covered years plus holidays and early closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarketCalendar {
    first_year: i32,
    last_year: i32,
    days: BTreeMap<Date, DayRule>,
}

const OPEN: Time = time::macros::time!(09:30);
const CLOSE: Time = time::macros::time!(16:00);
/// How far ahead to look for the next session (longest NYSE closure in the data is 4 days).
const SEARCH_DAYS: usize = 14;

impl MarketCalendar {
    /// The shipped NYSE calendar. If the shipped data ever failed to parse (a test proves it
    /// does not), the result covers no year at all, so every question is refused with
    /// `MARKET_CALENDAR_UNKNOWN` (fail closed).
    pub fn nyse() -> MarketCalendar {
        MarketCalendar::parse(NYSE_CALENDAR_DATA).unwrap_or(MarketCalendar {
            first_year: 1,
            last_year: 0,
            days: BTreeMap::new(),
        })
    }

    /// The shipped NYSE calendar, parsed once per process.
    pub fn nyse_shared() -> &'static MarketCalendar {
        static NYSE: std::sync::OnceLock<MarketCalendar> = std::sync::OnceLock::new();
        NYSE.get_or_init(MarketCalendar::nyse)
    }

    /// Parses calendar data in the format of `data/nyse_calendar.txt`.
    pub fn parse(text: &str) -> Result<MarketCalendar, CalendarError> {
        let mut covers: Option<(i32, i32)> = None;
        let mut days = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let bad = |reason: &str| CalendarError::InvalidData {
                line: line_no,
                reason: reason.to_string(),
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.splitn(3, ' ');
            let first = words.next().unwrap_or_default();
            if first == "covers" {
                if covers.is_some() {
                    return Err(bad("more than one covers line"));
                }
                let from = words.next().and_then(|w| w.parse::<i32>().ok());
                let to = words.next().and_then(|w| w.trim().parse::<i32>().ok());
                match (from, to) {
                    (Some(from), Some(to))
                        if (1900..=9998).contains(&from) && from <= to && to <= 9998 =>
                    {
                        covers = Some((from, to))
                    }
                    _ => return Err(bad("covers needs two years, first <= last")),
                }
                continue;
            }
            let date = parse_date(first).ok_or_else(|| bad("expected YYYY-MM-DD"))?;
            if matches!(date.weekday(), Weekday::Saturday | Weekday::Sunday) {
                return Err(bad("a holiday or early close on a weekend"));
            }
            let kind = words.next().unwrap_or_default();
            let rest = words.next().unwrap_or_default().trim();
            let rule = match kind {
                "holiday" => {
                    if rest.is_empty() {
                        return Err(bad("a holiday needs a name"));
                    }
                    DayRule::Holiday(rest.to_string())
                }
                "early_close" => {
                    let (at, name) = rest.split_once(' ').unwrap_or((rest, ""));
                    let at = parse_hh_mm(at).ok_or_else(|| bad("expected HH:MM"))?;
                    if at <= OPEN || at >= CLOSE {
                        return Err(bad("an early close must be between 09:30 and 16:00"));
                    }
                    if name.trim().is_empty() {
                        return Err(bad("an early close needs a name"));
                    }
                    DayRule::EarlyClose(at, name.trim().to_string())
                }
                _ => return Err(bad("expected holiday or early_close")),
            };
            if days.insert(date, rule).is_some() {
                return Err(bad("date listed twice"));
            }
        }
        let (first_year, last_year) = covers.ok_or(CalendarError::InvalidData {
            line: 0,
            reason: "no covers line".to_string(),
        })?;
        if let Some(date) = days
            .keys()
            .find(|d| d.year() < first_year || d.year() > last_year)
        {
            return Err(CalendarError::InvalidData {
                line: 0,
                reason: format!("{date} is outside the covered years"),
            });
        }
        Ok(MarketCalendar {
            first_year,
            last_year,
            days,
        })
    }

    /// The first and last covered years, inclusive (an empty range, first > last, if the data
    /// failed to parse).
    pub fn covered_years(&self) -> (i32, i32) {
        (self.first_year, self.last_year)
    }

    fn covers(&self, year: i32) -> bool {
        (self.first_year..=self.last_year).contains(&year)
    }

    /// The holiday name, if `date` is a full-day holiday in the data.
    pub fn holiday(&self, date: Date) -> Option<&str> {
        match self.days.get(&date) {
            Some(DayRule::Holiday(name)) => Some(name),
            _ => None,
        }
    }

    /// The early close time (ET) and its name, if `date` is an early-close day in the data.
    pub fn early_close(&self, date: Date) -> Option<(Time, &str)> {
        match self.days.get(&date) {
            Some(DayRule::EarlyClose(at, name)) => Some((*at, name)),
            _ => None,
        }
    }

    /// The regular session of an Eastern date as (open, close) instants, `None` on weekends and
    /// holidays. Refuses uncovered years.
    pub fn session(
        &self,
        date: Date,
    ) -> Result<Option<(OffsetDateTime, OffsetDateTime)>, CalendarError> {
        if !self.covers(date.year()) {
            return Err(CalendarError::Uncovered { year: date.year() });
        }
        if matches!(date.weekday(), Weekday::Saturday | Weekday::Sunday) {
            return Ok(None);
        }
        let close = match self.days.get(&date) {
            Some(DayRule::Holiday(_)) => return Ok(None),
            Some(DayRule::EarlyClose(at, _)) => *at,
            None => CLOSE,
        };
        Ok(Some((
            eastern_instant(date, OPEN),
            eastern_instant(date, close),
        )))
    }

    /// The market's state at `now` (any offset). Refuses instants whose Eastern date falls
    /// outside the covered years.
    pub fn status(&self, now: OffsetDateTime) -> Result<MarketStatus, CalendarError> {
        let now_et = to_eastern(now).ok_or(CalendarError::Uncovered { year: now.year() })?;
        let today = now_et.date();
        let today_session = self.session(today)?;
        let is_open = today_session.is_some_and(|(open, close)| open <= now && now < close);

        // Sessions from today onwards, within the covered years.
        let mut upcoming = Vec::new();
        let mut date = today;
        for _ in 0..SEARCH_DAYS {
            match self.session(date) {
                Ok(Some(session)) => upcoming.push(session),
                Ok(None) => {}
                Err(_) => break,
            }
            match date.next_day() {
                Some(next) => date = next,
                None => break,
            }
        }
        let next_open = upcoming
            .iter()
            .map(|(open, _)| *open)
            .find(|open| *open > now);
        let next_close = upcoming
            .iter()
            .map(|(_, close)| *close)
            .find(|close| *close > now);

        Ok(MarketStatus {
            phase: if is_open {
                MarketPhase::Regular
            } else {
                MarketPhase::Closed
            },
            is_open,
            now_et: rfc3339(now_et),
            next_open: next_open.and_then(to_eastern).map(rfc3339),
            next_close: next_close.and_then(to_eastern).map(rfc3339),
            holiday: self.holiday(today).map(str::to_string),
            early_close: self
                .early_close(today)
                .map(|(at, name)| format!("{:02}:{:02} ET ({name})", at.hour(), at.minute())),
        })
    }

    /// Whether `now` is inside a regular session.
    pub fn is_regular_hours(&self, now: OffsetDateTime) -> Result<bool, CalendarError> {
        self.status(now).map(|status| status.is_open)
    }
}

impl Default for MarketCalendar {
    /// [`MarketCalendar::nyse`].
    fn default() -> Self {
        MarketCalendar::nyse()
    }
}

fn parse_date(text: &str) -> Option<Date> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let year: i32 = text.get(0..4)?.parse().ok()?;
    let month: u8 = text.get(5..7)?.parse().ok()?;
    let day: u8 = text.get(8..10)?.parse().ok()?;
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

fn parse_hh_mm(text: &str) -> Option<Time> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    Time::from_hms(h.parse().ok()?, m.parse().ok()?, 0).ok()
}

const EST: UtcOffset = time::macros::offset!(-5);
const EDT: UtcOffset = time::macros::offset!(-4);

/// The `n`-th (1-based) Sunday of a month.
fn nth_sunday(year: i32, month: Month, n: u8) -> Option<Date> {
    let first = Date::from_calendar_date(year, month, 1).ok()?;
    let offset = (7 - first.weekday().number_days_from_sunday()) % 7;
    Date::from_calendar_date(year, month, 1 + offset + 7 * (n - 1)).ok()
}

/// The UTC instants daylight time starts and ends in `year` (US rule since 2007).
pub fn dst_bounds_utc(year: i32) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let start = nth_sunday(year, Month::March, 2)?;
    let end = nth_sunday(year, Month::November, 1)?;
    Some((
        PrimitiveDateTime::new(start, time::macros::time!(07:00)).assume_utc(),
        PrimitiveDateTime::new(end, time::macros::time!(06:00)).assume_utc(),
    ))
}

/// The US Eastern offset in force at an instant: UTC-4 in daylight time, UTC-5 otherwise.
pub fn eastern_offset(now: OffsetDateTime) -> UtcOffset {
    let Some(utc) = now.checked_to_offset(UtcOffset::UTC) else {
        return EST;
    };
    match dst_bounds_utc(utc.year()) {
        Some((start, end)) if start <= utc && utc < end => EDT,
        _ => EST,
    }
}

/// The instant in US Eastern time, or `None` at the very ends of the representable range.
pub fn to_eastern(now: OffsetDateTime) -> Option<OffsetDateTime> {
    let utc = now.checked_to_offset(UtcOffset::UTC)?;
    utc.checked_to_offset(eastern_offset(utc))
}

/// The Eastern calendar date of an instant (the trading day a daily cap counts against).
pub fn eastern_date(now: OffsetDateTime) -> Option<Date> {
    to_eastern(now).map(|et| et.date())
}

/// The instant of a local Eastern wall-clock time. Times in the skipped hour resolve as
/// standard time, times in the repeated hour as daylight time (never used for session times).
fn eastern_instant(date: Date, at: Time) -> OffsetDateTime {
    let local = PrimitiveDateTime::new(date, at);
    let as_daylight = local.assume_offset(EDT);
    if eastern_offset(as_daylight) == EDT {
        as_daylight
    } else {
        local.assume_offset(EST)
    }
}

/// RFC 3339 with offset, whole seconds: `2026-03-09T09:30:00-04:00`.
fn rfc3339(at: OffsetDateTime) -> String {
    let offset = at.offset();
    let (hours, minutes, _) = offset.as_hms();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}{:02}:{:02}",
        at.year(),
        at.month() as u8,
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        if offset.is_negative() { '-' } else { '+' },
        hours.unsigned_abs(),
        minutes.unsigned_abs(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn cal() -> MarketCalendar {
        MarketCalendar::nyse()
    }

    fn open(at: OffsetDateTime) -> bool {
        cal().is_regular_hours(at).unwrap()
    }

    #[test]
    fn shipped_data_parses_and_covers_2025_to_2028() {
        let parsed = MarketCalendar::parse(NYSE_CALENDAR_DATA).unwrap();
        assert_eq!(parsed.covered_years(), (2025, 2028));
        assert_eq!(parsed, cal());
        let holidays = parsed
            .days
            .values()
            .filter(|r| matches!(r, DayRule::Holiday(_)))
            .count();
        let early = parsed.days.len() - holidays;
        // 2025: 11 (incl. Carter day of mourning), 2026: 10, 2027: 10, 2028: 9 (no New Year).
        assert_eq!(holidays, 40);
        // 2025: 3, 2026: 2, 2027: 1, 2028: 2.
        assert_eq!(early, 8);
    }

    #[test]
    fn the_2026_dates_from_the_brief() {
        let c = cal();
        for (m, d) in [
            (Month::January, 1),
            (Month::January, 19),
            (Month::February, 16),
            (Month::April, 3),
            (Month::May, 25),
            (Month::June, 19),
            (Month::July, 3),
            (Month::September, 7),
            (Month::November, 26),
            (Month::December, 25),
        ] {
            let date = Date::from_calendar_date(2026, m, d).unwrap();
            assert!(c.holiday(date).is_some(), "{date}");
        }
        for (m, d) in [(Month::November, 27), (Month::December, 24)] {
            let date = Date::from_calendar_date(2026, m, d).unwrap();
            assert_eq!(c.early_close(date).unwrap().0, time::macros::time!(13:00));
        }
        assert_eq!(c.holiday(time::macros::date!(2028 - 01 - 01)), None);
        assert!(c.holiday(time::macros::date!(2025 - 01 - 09)).is_some());
    }

    #[test]
    fn every_holiday_is_closed_all_day() {
        let c = cal();
        for (date, rule) in &c.days {
            if let DayRule::Holiday(name) = rule {
                for hour in 0..24 {
                    let at = eastern_instant(*date, Time::from_hms(hour, 0, 0).unwrap());
                    let status = c.status(at).unwrap();
                    assert!(!status.is_open, "{date} {hour}:00");
                    assert_eq!(status.holiday.as_deref(), Some(name.as_str()));
                }
                let mid = eastern_instant(*date, time::macros::time!(12:00));
                assert_eq!(c.status(mid).unwrap().phase, MarketPhase::Closed);
            }
        }
    }

    #[test]
    fn every_early_close_day_closes_at_13_00() {
        let c = cal();
        for (date, rule) in &c.days {
            if let DayRule::EarlyClose(at, _) = rule {
                assert_eq!(*at, time::macros::time!(13:00));
                let before = eastern_instant(*date, time::macros::time!(12:59:59));
                let at_close = eastern_instant(*date, time::macros::time!(13:00));
                let status = c.status(before).unwrap();
                assert!(status.is_open, "{date}");
                assert!(
                    status
                        .early_close
                        .as_deref()
                        .unwrap()
                        .starts_with("13:00 ET (")
                );
                assert!(status.next_close.unwrap().contains("T13:00:00-0"));
                assert!(!c.is_regular_hours(at_close).unwrap(), "{date}");
                let after = eastern_instant(*date, time::macros::time!(15:00));
                assert!(!c.is_regular_hours(after).unwrap(), "{date}");
            }
        }
        // The July 3 2025 early close is in daylight time.
        let s = c.status(datetime!(2025-07-03 12:00 -4)).unwrap();
        assert_eq!(s.next_close.as_deref(), Some("2025-07-03T13:00:00-04:00"));
    }

    #[test]
    fn session_boundaries() {
        // Monday 2026-03-16, daylight time.
        assert!(!open(datetime!(2026-03-16 09:29:59 -4)));
        assert!(open(datetime!(2026-03-16 09:30:00 -4)));
        assert!(open(datetime!(2026-03-16 15:59:59 -4)));
        assert!(!open(datetime!(2026-03-16 16:00:00 -4)));
        // Same instants in UTC, standard time (Tuesday 2026-01-06: ET = UTC-5).
        assert!(!open(datetime!(2026-01-06 14:29:59 UTC)));
        assert!(open(datetime!(2026-01-06 14:30:00 UTC)));
        assert!(open(datetime!(2026-01-06 20:59:59 UTC)));
        assert!(!open(datetime!(2026-01-06 21:00:00 UTC)));
        // Nanoseconds before the open.
        assert!(!open(datetime!(2026-01-06 14:29:59.999999999 UTC)));
        // Any input offset works.
        assert!(open(datetime!(2026-01-06 23:30:00 +9)));
    }

    #[test]
    fn weekends_are_closed() {
        for at in [
            datetime!(2026-01-10 12:00 -5),
            datetime!(2026-01-11 12:00 -5),
            datetime!(2027-07-03 12:00 -4),
            datetime!(2028-01-01 12:00 -5),
        ] {
            let status = cal().status(at).unwrap();
            assert!(!status.is_open);
            assert_eq!(status.holiday, None);
        }
    }

    #[test]
    fn dst_transitions() {
        // 2026: starts Sunday March 8, ends Sunday November 1.
        let (start, end) = dst_bounds_utc(2026).unwrap();
        assert_eq!(start, datetime!(2026-03-08 07:00 UTC));
        assert_eq!(end, datetime!(2026-11-01 06:00 UTC));
        assert_eq!(eastern_offset(datetime!(2026-03-08 06:59:59 UTC)), EST);
        assert_eq!(eastern_offset(datetime!(2026-03-08 07:00:00 UTC)), EDT);
        assert_eq!(eastern_offset(datetime!(2026-11-01 05:59:59 UTC)), EDT);
        assert_eq!(eastern_offset(datetime!(2026-11-01 06:00:00 UTC)), EST);
        // Other years' transition dates.
        for (year, s, e) in [(2025, 9, 2), (2027, 14, 7), (2028, 12, 5)] {
            let (start, end) = dst_bounds_utc(year).unwrap();
            assert_eq!((start.month(), start.day()), (Month::March, s), "{year}");
            assert_eq!((end.month(), end.day()), (Month::November, e), "{year}");
            assert_eq!(start.weekday(), Weekday::Sunday);
            assert_eq!(end.weekday(), Weekday::Sunday);
        }
        // Monday after the spring change: 09:30 EDT is 13:30 UTC.
        assert!(!open(datetime!(2026-03-09 13:29:59 UTC)));
        assert!(open(datetime!(2026-03-09 13:30:00 UTC)));
        // Friday before it: 09:30 EST is 14:30 UTC.
        assert!(!open(datetime!(2026-03-06 14:29:59 UTC)));
        assert!(open(datetime!(2026-03-06 14:30:00 UTC)));
        // Monday after the autumn change: back to 14:30 UTC.
        assert!(!open(datetime!(2026-11-02 13:30:00 UTC)));
        assert!(open(datetime!(2026-11-02 14:30:00 UTC)));
        assert!(!open(datetime!(2026-11-02 21:00:00 UTC)));
        // Friday before it: closes 20:00 UTC.
        assert!(open(datetime!(2026-10-30 19:59:59 UTC)));
        assert!(!open(datetime!(2026-10-30 20:00:00 UTC)));
        // The Sunday of the change itself is a weekend and shows its offset.
        let s = cal().status(datetime!(2026-03-08 07:00 UTC)).unwrap();
        assert_eq!(s.now_et, "2026-03-08T03:00:00-04:00");
        assert_eq!(s.next_open.as_deref(), Some("2026-03-09T09:30:00-04:00"));
        let s = cal().status(datetime!(2026-03-08 06:59:59 UTC)).unwrap();
        assert_eq!(s.now_et, "2026-03-08T01:59:59-05:00");
        let s = cal().status(datetime!(2026-11-01 05:30 UTC)).unwrap();
        assert_eq!(s.now_et, "2026-11-01T01:30:00-04:00");
        let s = cal().status(datetime!(2026-11-01 06:30 UTC)).unwrap();
        assert_eq!(s.now_et, "2026-11-01T01:30:00-05:00");
        assert_eq!(s.next_open.as_deref(), Some("2026-11-02T09:30:00-05:00"));
    }

    #[test]
    fn next_open_across_a_long_weekend() {
        // Thursday 2026-04-02 after the close; Good Friday; weekend; opens Monday 2026-04-06.
        let s = cal().status(datetime!(2026-04-02 17:00 -4)).unwrap();
        assert!(!s.is_open);
        assert_eq!(s.next_open.as_deref(), Some("2026-04-06T09:30:00-04:00"));
        assert_eq!(s.next_close.as_deref(), Some("2026-04-06T16:00:00-04:00"));
        // Thanksgiving 2026: the Friday is an early close.
        let s = cal().status(datetime!(2026-11-26 10:00 -5)).unwrap();
        assert_eq!(s.holiday.as_deref(), Some("Thanksgiving Day"));
        assert_eq!(s.next_open.as_deref(), Some("2026-11-27T09:30:00-05:00"));
        assert_eq!(s.next_close.as_deref(), Some("2026-11-27T13:00:00-05:00"));
        // Christmas Eve 2026 (early close) after the close: next open is Monday 2026-12-28.
        let s = cal().status(datetime!(2026-12-24 13:30 -5)).unwrap();
        assert_eq!(s.next_open.as_deref(), Some("2026-12-28T09:30:00-05:00"));
        // Before the open on a trading day: today's open and close.
        let s = cal().status(datetime!(2026-01-06 08:00 -5)).unwrap();
        assert_eq!(s.next_open.as_deref(), Some("2026-01-06T09:30:00-05:00"));
        assert_eq!(s.next_close.as_deref(), Some("2026-01-06T16:00:00-05:00"));
        // While open: today's close, tomorrow's open.
        let s = cal().status(datetime!(2026-01-06 10:00 -5)).unwrap();
        assert_eq!(s.phase, MarketPhase::Regular);
        assert_eq!(s.next_close.as_deref(), Some("2026-01-06T16:00:00-05:00"));
        assert_eq!(s.next_open.as_deref(), Some("2026-01-07T09:30:00-05:00"));
        // New Year 2027 -> 2028: Dec 31 2027 (Friday) is a trading day, Jan 1 2028 Saturday.
        let s = cal().status(datetime!(2027-12-30 17:00 -5)).unwrap();
        assert_eq!(s.next_open.as_deref(), Some("2027-12-31T09:30:00-05:00"));
        let s = cal().status(datetime!(2027-12-31 17:00 -5)).unwrap();
        assert_eq!(s.next_open.as_deref(), Some("2028-01-03T09:30:00-05:00"));
    }

    #[test]
    fn uncovered_years_are_refused() {
        let c = cal();
        for at in [
            datetime!(2024-12-31 12:00 -5),
            datetime!(2029-01-02 12:00 -5),
            datetime!(1970-01-01 00:00 UTC),
        ] {
            let err = c.status(at).unwrap_err();
            assert!(matches!(err, CalendarError::Uncovered { .. }));
            assert_eq!(err.code(), ErrorCode::MarketCalendarUnknown);
            assert!(c.is_regular_hours(at).is_err());
        }
        // The year is the Eastern year: 2029-01-01 03:00 UTC is still 2028 in New York.
        assert!(c.status(datetime!(2029-01-01 03:00 UTC)).is_ok());
        assert_eq!(
            c.status(datetime!(2025-01-01 04:59 UTC)).unwrap_err(),
            CalendarError::Uncovered { year: 2024 }
        );
        // After the last session of the covered years there is no next open (no guessing).
        let s = c.status(datetime!(2028-12-29 17:00 -5)).unwrap();
        assert_eq!(s.next_open, None);
        assert_eq!(s.next_close, None);
        // Extreme instants do not panic.
        assert!(
            c.status(OffsetDateTime::new_utc(Date::MAX, Time::MIDNIGHT))
                .is_err()
        );
        assert!(
            c.status(OffsetDateTime::new_utc(Date::MIN, Time::MIDNIGHT))
                .is_err()
        );
    }

    #[test]
    fn bad_data_is_refused_and_an_unparsed_calendar_covers_nothing() {
        for bad in [
            "",
            "2026-01-01 holiday New Year",
            "covers 2026 2026\n2026-01-03 holiday Saturday",
            "covers 2026 2026\n2026-01-02 holiday",
            "covers 2026 2026\n2026-01-02 early_close 17:00 Late",
            "covers 2026 2026\n2026-01-02 early_close 1pm Late",
            "covers 2026 2026\n2026-13-02 holiday X",
            "covers 2026 2026\n2027-01-04 holiday X",
            "covers 2026 2026\n2026-01-02 holiday X\n2026-01-02 holiday Y",
            "covers 2026 2026\ncovers 2026 2026",
            "covers 2027 2026",
            "covers 2026 2026\n2026-01-02 closed X",
        ] {
            assert!(MarketCalendar::parse(bad).is_err(), "{bad:?}");
        }
        let empty = MarketCalendar {
            first_year: 1,
            last_year: 0,
            days: BTreeMap::new(),
        };
        assert!(empty.status(datetime!(2026-01-06 10:00 -5)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn open_only_on_weekdays_between_09_30_and_the_close(secs in 1_735_707_600i64..1_861_937_999i64) {
            // 2025-01-01T05:00:00Z ..= 2028-12-31T23:59:59-05:00: every instant is covered.
            let now = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            let c = cal();
            let status = c.status(now).unwrap();
            let et = to_eastern(now).unwrap();
            let minutes = u32::from(et.hour()) * 60 + u32::from(et.minute());
            if status.is_open {
                proptest::prop_assert!(!matches!(et.weekday(), Weekday::Saturday | Weekday::Sunday));
                proptest::prop_assert!(c.holiday(et.date()).is_none());
                proptest::prop_assert!((570..960).contains(&minutes));
                proptest::prop_assert!(status.next_close.is_some());
            } else if !matches!(et.weekday(), Weekday::Saturday | Weekday::Sunday)
                && c.holiday(et.date()).is_none()
                && c.early_close(et.date()).is_none()
            {
                proptest::prop_assert!(!(570..960).contains(&minutes));
            }
            proptest::prop_assert_eq!(et.offset(), eastern_offset(now));
            proptest::prop_assert_eq!(status.phase == MarketPhase::Regular, status.is_open);
        }
    }

    #[test]
    fn status_serializes_snake_case() {
        let s = cal().status(datetime!(2026-01-06 10:00 -5)).unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["phase"], "regular");
        assert_eq!(json["is_open"], true);
        assert_eq!(json["now_et"], "2026-01-06T10:00:00-05:00");
    }
}
