//! The clock the sidecar judges US trading hours by.
//!
//! The daemon uses the system clock. A simulation (the one-command demo and the end-to-end
//! tests, which run against the CPGW simulator on any day of the week) can pin a simulated
//! exchange time instead. This is deliberately not configuration: no YAML key reaches it, so a
//! deployed sidecar always trades by the real calendar.

use std::sync::Arc;
use time::OffsetDateTime;

#[derive(Clone, Default)]
pub struct MarketClock {
    simulated: Option<Arc<dyn Fn() -> OffsetDateTime + Send + Sync>>,
}

impl MarketClock {
    /// The real wall clock.
    pub fn system() -> Self {
        MarketClock { simulated: None }
    }

    /// A simulated exchange clock that always reads `at` (for simulations only).
    pub fn simulated_at(at: OffsetDateTime) -> Self {
        MarketClock {
            simulated: Some(Arc::new(move || at)),
        }
    }

    pub fn now(&self) -> OffsetDateTime {
        match &self.simulated {
            Some(clock) => clock(),
            None => OffsetDateTime::now_utc(),
        }
    }

    pub fn is_simulated(&self) -> bool {
        self.simulated.is_some()
    }
}

impl std::fmt::Debug for MarketClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_simulated() {
            write!(f, "MarketClock(simulated, now {})", self.now())
        } else {
            f.write_str("MarketClock(system)")
        }
    }
}
