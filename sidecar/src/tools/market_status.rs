//! `ibkr_market_status`: US regular trading hours now, from the NYSE calendar shipped with the
//! sidecar (holidays and half days). No CPGW call and no broker session needed.

use super::ToolResult;
use protocol::envelope::Outcome;
use shared_safety::ErrorCode;
use shared_safety::calendar::MarketCalendar;
use time::OffsetDateTime;

pub(super) async fn run(clock: &crate::market_clock::MarketClock) -> ToolResult {
    status_at(clock.now())
}

pub(super) fn status_at(now: OffsetDateTime) -> ToolResult {
    let status = MarketCalendar::nyse_shared()
        .status(now)
        .map_err(|error| Outcome::Failed(error.code().body(None)))?;
    serde_json::to_value(status).map_err(|_| Outcome::Failed(ErrorCode::InternalError.body(None)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_on_a_regular_weekday() {
        // Wednesday 2026-03-11 15:00 UTC = 11:00 ET.
        let now = time::macros::datetime!(2026-03-11 15:00 UTC);
        let value = status_at(now).unwrap();
        assert_eq!(value["is_open"], true);
    }
}
