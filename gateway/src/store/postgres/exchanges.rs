//! Pairing exchanges in progress, shared by the replicas: `/pair/start` on one replica and
//! `/pair/finish` on another meet here. Taking an exchange deletes it in the same statement,
//! so it is single use across replicas.

use super::PostgresStore;
use crate::store::StoreError;
use crate::store::records::{CodeState, PairingExchange};
use zeroize::Zeroizing;

/// Limits on exchanges in progress, checked when one is added.
#[derive(Clone, Copy, Debug)]
pub struct ExchangeLimits {
    /// Exchanges started before this are expired (and deleted).
    pub started_after_ms: i64,
    pub max_total: i64,
    pub max_per_peer: i64,
}

impl PostgresStore {
    /// Adds an exchange unless the limits are reached (then `false`). Expired exchanges are
    /// deleted first.
    pub(crate) async fn add_pairing_exchange(
        &self,
        exchange_id: &[u8; 16],
        exchange: &PairingExchange,
        limits: ExchangeLimits,
    ) -> Result<bool, StoreError> {
        let start =
            postcard::to_allocvec(&exchange.start).map_err(|_| StoreError::Corrupt("start"))?;
        let client = self.client().await?;
        let expire = client
            .prepare_cached("DELETE FROM pairing_exchanges WHERE started_at <= $1")
            .await?;
        client.execute(&expire, &[&limits.started_after_ms]).await?;
        // The counts and the insert are one statement, but two adds at the same moment may
        // each miss the other's row: the bound may be passed by the number of adds running
        // at once (every replica's pooled connections), never more.
        let insert = client
            .prepare_cached(
                "INSERT INTO pairing_exchanges
                     (exchange_id, code_id, peer, start, seed, decoy, started_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7
                 WHERE (SELECT COUNT(*) FROM pairing_exchanges) < $8
                   AND (SELECT COUNT(*) FROM pairing_exchanges WHERE peer = $3) < $9",
            )
            .await?;
        let decoy = exchange.decoy.map(CodeState::as_str);
        let added = client
            .execute(
                &insert,
                &[
                    &exchange_id.as_slice(),
                    &exchange.code_id,
                    &exchange.peer,
                    &start,
                    &exchange.seed.as_slice(),
                    &decoy,
                    &exchange.started_at_ms,
                    &limits.max_total,
                    &limits.max_per_peer,
                ],
            )
            .await?;
        Ok(added == 1)
    }

    /// Takes (reads and deletes) an exchange; `None` when no replica holds it any more.
    pub(crate) async fn take_pairing_exchange(
        &self,
        exchange_id: &[u8; 16],
    ) -> Result<Option<PairingExchange>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "DELETE FROM pairing_exchanges WHERE exchange_id = $1
                 RETURNING code_id, peer, start, seed, decoy, started_at",
            )
            .await?;
        let Some(row) = client
            .query_opt(&statement, &[&exchange_id.as_slice()])
            .await?
        else {
            return Ok(None);
        };
        let start: Vec<u8> = row.get(2);
        let seed: Zeroizing<Vec<u8>> = Zeroizing::new(row.get(3));
        let decoy: Option<String> = row.get(4);
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt("pairing exchange seed"))?;
        Ok(Some(PairingExchange {
            code_id: row.get(0),
            peer: row.get(1),
            start: postcard::from_bytes(&start)
                .map_err(|_| StoreError::Corrupt("pairing exchange start"))?,
            seed: Zeroizing::new(seed),
            decoy: match decoy {
                None => None,
                Some(name) => Some(
                    CodeState::from_stored(&name)
                        .ok_or(StoreError::Corrupt("pairing exchange decoy"))?,
                ),
            },
            started_at_ms: row.get(5),
        }))
    }
}
