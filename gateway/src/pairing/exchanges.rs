//! Where pairing exchanges wait between `/pair/start` and `/pair/finish`: in this process's
//! memory on the embedded store (a restart voids them, which costs the user one retry), in
//! the shared database on the cluster store, so the finish may reach any replica.
//!
//! Either way an exchange is taken once (the second finish of one exchange finds nothing),
//! lives [`super::EXCHANGE_TTL`], and the number in progress is bounded overall and per client
//! address.

use super::{EXCHANGE_TTL, MAX_EXCHANGES, MAX_EXCHANGES_PER_PEER};
use crate::store::postgres::exchanges::ExchangeLimits;
use crate::store::{PairingExchange, PostgresStore, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;

pub(crate) enum ExchangeBook {
    Local(Mutex<HashMap<[u8; 16], PairingExchange>>),
    Shared(PostgresStore),
}

fn ttl_ms() -> i64 {
    i64::try_from(EXCHANGE_TTL.as_millis()).unwrap_or(i64::MAX)
}

/// Whether an exchange started at `started_at_ms` is still live at `now_ms`.
pub(crate) fn is_live(started_at_ms: i64, now_ms: i64) -> bool {
    now_ms.saturating_sub(started_at_ms) < ttl_ms()
}

impl ExchangeBook {
    pub(crate) fn local() -> ExchangeBook {
        ExchangeBook::Local(Mutex::new(HashMap::new()))
    }

    fn lock(
        map: &Mutex<HashMap<[u8; 16], PairingExchange>>,
    ) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], PairingExchange>> {
        // Entries are independent; a panic elsewhere leaves the map usable.
        map.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `peer` may start another exchange, checked before the store is touched (the
    /// shared book checks when adding).
    pub(crate) fn has_room(&self, peer: &str, now_ms: i64) -> bool {
        match self {
            ExchangeBook::Local(map) => {
                let mut map = Self::lock(map);
                map.retain(|_, exchange| is_live(exchange.started_at_ms, now_ms));
                let from_peer = map.values().filter(|e| e.peer == peer).count();
                map.len() < MAX_EXCHANGES && from_peer < MAX_EXCHANGES_PER_PEER
            }
            ExchangeBook::Shared(_) => true,
        }
    }

    /// Keeps an exchange; `false` when the limits are reached.
    pub(crate) async fn add(
        &self,
        exchange_id: [u8; 16],
        exchange: PairingExchange,
    ) -> Result<bool, StoreError> {
        match self {
            ExchangeBook::Local(map) => {
                let mut map = Self::lock(map);
                let from_peer = map.values().filter(|e| e.peer == exchange.peer).count();
                if map.len() >= MAX_EXCHANGES || from_peer >= MAX_EXCHANGES_PER_PEER {
                    return Ok(false);
                }
                map.insert(exchange_id, exchange);
                Ok(true)
            }
            ExchangeBook::Shared(store) => {
                let limits = ExchangeLimits {
                    started_after_ms: exchange.started_at_ms.saturating_sub(ttl_ms()),
                    max_total: i64::try_from(MAX_EXCHANGES).unwrap_or(i64::MAX),
                    max_per_peer: i64::try_from(MAX_EXCHANGES_PER_PEER).unwrap_or(i64::MAX),
                };
                store
                    .add_pairing_exchange(&exchange_id, &exchange, limits)
                    .await
            }
        }
    }

    /// Takes an exchange: whatever happens next, it cannot be finished again.
    pub(crate) async fn take(
        &self,
        exchange_id: &[u8; 16],
    ) -> Result<Option<PairingExchange>, StoreError> {
        match self {
            ExchangeBook::Local(map) => Ok(Self::lock(map).remove(exchange_id)),
            ExchangeBook::Shared(store) => store.take_pairing_exchange(exchange_id).await,
        }
    }
}
