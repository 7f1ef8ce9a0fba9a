//! Pairings in PostgreSQL: the rules of [`crate::store::sqlite::pairings`]. The unique partial
//! indexes keep one active pairing per key and per sidecar id across replicas; a pairing that
//! loses a race to another replica's is refused as the embedded store refuses it.

use super::PostgresStore;
use crate::store::StoreError;
use crate::store::pairing_cache::UserPairings;
use crate::store::records::{
    CompleteOutcome, NewPairing, PairingId, PairingRecord, REVOKED_FOR_KEY_ROTATION,
};
use protocol::identity::PublicKey;
use std::collections::HashSet;
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Row};

// Every pairing query selects these columns, in `pairing_from_row`'s order.
const SELECT_ACTIVE_BY_KEY: &str = "SELECT pairing_id, sidecar_id, sidecar_public_key, user_id,
     display_name, created_at, revoked_at FROM pairings
     WHERE sidecar_public_key = $1 AND revoked_at IS NULL";

const SELECT_ALL: &str = "SELECT pairing_id, sidecar_id, sidecar_public_key, user_id,
     display_name, created_at, revoked_at FROM pairings ORDER BY created_at DESC, seq DESC";

const SELECT_ACTIVE_FOR_USER: &str = "SELECT pairing_id, sidecar_id, sidecar_public_key, user_id,
     display_name, created_at, revoked_at FROM pairings
     WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, seq DESC";

const ACTIVE_KEY_INDEX: &str = "pairings_active_key";
const ACTIVE_SIDECAR_ID_INDEX: &str = "pairings_active_sidecar_id";

/// Turns a row into a record; a corrupt row becomes a typed error. The key is not checked for
/// low order again (see [`PublicKey::from_stored_hex`]).
fn pairing_from_row(row: &Row) -> Result<PairingRecord, StoreError> {
    let pairing_id: String = row.get(0);
    let key: String = row.get(2);
    Ok(PairingRecord {
        pairing_id: PairingId::from_hex(&pairing_id)?,
        sidecar_id: row.get(1),
        sidecar_public_key: PublicKey::from_stored_hex(&key)
            .map_err(|_| StoreError::Corrupt("sidecar public key"))?,
        user_id: row.get(3),
        display_name: row.get(4),
        created_at_ms: row.get(5),
        revoked_at_ms: row.get(6),
    })
}

async fn query_pairings(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<PairingRecord>, StoreError> {
    client
        .query(sql, params)
        .await?
        .iter()
        .map(pairing_from_row)
        .collect()
}

async fn ended_by_key_rotation(
    client: &impl GenericClient,
    user_id: &str,
) -> Result<Option<i64>, StoreError> {
    let newest = client
        .query_opt(
            "SELECT revoked_at, revoked_reason FROM pairings WHERE user_id = $1
             ORDER BY created_at DESC, seq DESC LIMIT 1",
            &[&user_id],
        )
        .await?;
    Ok(newest.and_then(|row| {
        let revoked_at: Option<i64> = row.get(0);
        let reason: Option<String> = row.get(1);
        match (revoked_at, reason) {
            (Some(at), Some(reason)) if reason == REVOKED_FOR_KEY_ROTATION => Some(at),
            _ => None,
        }
    }))
}

/// A read-only transaction on one snapshot, and the pairings generation it sees: what is read
/// in it is what the pairings were at that generation.
async fn snapshot(
    client: &mut deadpool_postgres::Client,
) -> Result<(deadpool_postgres::Transaction<'_>, i64), StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let generation: i64 = tx.query_one(super::SELECT_GENERATION, &[]).await?.get(0);
    Ok((tx, generation))
}

impl PostgresStore {
    /// See [`crate::store::Store::complete_pairing`].
    pub(crate) async fn complete_pairing(
        &self,
        pairing: NewPairing,
    ) -> Result<CompleteOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(code) = tx
            .query_opt(
                "SELECT user_id, used_at FROM pairing_codes WHERE code_id = $1 FOR UPDATE",
                &[&pairing.code_id],
            )
            .await?
        else {
            return Ok(CompleteOutcome::UnknownCode);
        };
        let user_id: String = code.get(0);
        let used_at: Option<i64> = code.get(1);
        if used_at.is_some() {
            return Ok(CompleteOutcome::CodeUsed);
        }
        let key_text = pairing.sidecar_public_key.to_hex();
        let active = |sql: &'static str, value: String| {
            let tx = &tx;
            async move { Ok::<_, StoreError>(tx.query_opt(sql, &[&value]).await?.is_some()) }
        };
        if active(
            "SELECT 1 FROM pairings WHERE sidecar_public_key = $1 AND revoked_at IS NULL",
            key_text.clone(),
        )
        .await?
        {
            return Ok(CompleteOutcome::KeyAlreadyPaired);
        }
        if active(
            "SELECT 1 FROM pairings WHERE sidecar_id = $1 AND revoked_at IS NULL",
            pairing.sidecar_id.clone(),
        )
        .await?
        {
            return Ok(CompleteOutcome::SidecarIdConflict);
        }
        tx.execute(
            "UPDATE pairing_codes SET used_at = $2, secret = NULL WHERE code_id = $1",
            &[&pairing.code_id, &pairing.now_ms],
        )
        .await?;
        let inserted = tx
            .execute(
                "INSERT INTO pairings (pairing_id, sidecar_id, sidecar_public_key, user_id,
                                       display_name, created_at, revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, NULL)",
                &[
                    &pairing.pairing_id.to_hex(),
                    &pairing.sidecar_id,
                    &key_text,
                    &user_id,
                    &pairing.display_name,
                    &pairing.now_ms,
                ],
            )
            .await;
        if let Err(error) = &inserted
            && let Some(db) = error.as_db_error()
            && *db.code() == SqlState::UNIQUE_VIOLATION
        {
            // Another replica paired this key or id with another code since the checks above
            // (the transaction rolls back: this code stays unused).
            return Ok(match db.constraint() {
                Some(ACTIVE_SIDECAR_ID_INDEX) => CompleteOutcome::SidecarIdConflict,
                Some(ACTIVE_KEY_INDEX) => CompleteOutcome::KeyAlreadyPaired,
                _ => return Err(StoreError::Corrupt("unexpected unique constraint")),
            });
        }
        inserted?;
        tx.commit().await?;
        Ok(CompleteOutcome::Paired(pairing.into_record(user_id)))
    }

    /// See [`crate::store::Store::active_pairing_by_key`].
    pub(crate) async fn active_pairing_by_key(
        &self,
        key: PublicKey,
    ) -> Result<Option<PairingRecord>, StoreError> {
        let client = self.client().await?;
        Ok(
            query_pairings(&**client, SELECT_ACTIVE_BY_KEY, &[&key.to_hex()])
                .await?
                .pop(),
        )
    }

    /// See [`crate::store::Store::active_pairings_for_user`].
    pub(crate) async fn active_pairings_for_user(
        &self,
        user_id: String,
    ) -> Result<Vec<PairingRecord>, StoreError> {
        let client = self.client().await?;
        query_pairings(&**client, SELECT_ACTIVE_FOR_USER, &[&user_id]).await
    }

    /// A user's active pairings (and, when there is none, whether a key rotation ended the
    /// last one) and the pairings generation they were read at, from one snapshot.
    pub(crate) async fn read_user_pairings(
        &self,
        user_id: String,
    ) -> Result<(i64, UserPairings), StoreError> {
        let mut client = self.client().await?;
        let (tx, generation) = snapshot(&mut client).await?;
        let active = query_pairings(&*tx, SELECT_ACTIVE_FOR_USER, &[&user_id]).await?;
        let ended_by_key_rotation = if active.is_empty() {
            ended_by_key_rotation(&*tx, &user_id).await?
        } else {
            None
        };
        tx.commit().await?;
        Ok((
            generation,
            UserPairings {
                active,
                ended_by_key_rotation,
            },
        ))
    }

    /// See [`crate::store::Store::pairing_is_active`].
    pub(crate) async fn pairing_is_active(
        &self,
        pairing_id: PairingId,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT 1 FROM pairings WHERE pairing_id = $1 AND revoked_at IS NULL",
                &[&pairing_id.to_hex()],
            )
            .await?
            .is_some())
    }

    /// See [`crate::store::Store::list_pairings`].
    pub(crate) async fn list_pairings(&self) -> Result<Vec<PairingRecord>, StoreError> {
        let client = self.client().await?;
        query_pairings(&**client, SELECT_ALL, &[]).await
    }

    /// See [`crate::store::Store::revoke_pairing`].
    pub(crate) async fn revoke_pairing(
        &self,
        sidecar_id: String,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE pairings SET revoked_at = $2 WHERE sidecar_id = $1 AND revoked_at IS NULL",
                &[&sidecar_id, &now_ms],
            )
            .await?;
        Ok(changed > 0)
    }

    /// See [`crate::store::Store::revoke_all_for_key_rotation`].
    pub(crate) async fn revoke_all_for_key_rotation(
        &self,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE pairings SET revoked_at = $1, revoked_reason = $2 WHERE revoked_at IS NULL",
                &[&now_ms, &REVOKED_FOR_KEY_ROTATION],
            )
            .await?;
        Ok(usize::try_from(changed).unwrap_or(usize::MAX))
    }

    /// See [`crate::store::Store::pairing_ended_by_key_rotation`].
    pub(crate) async fn pairing_ended_by_key_rotation(
        &self,
        user_id: String,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        ended_by_key_rotation(&**client, &user_id).await
    }

    /// See [`crate::store::Store::active_pairings_if_changed`].
    pub(crate) async fn active_pairings_if_changed(
        &self,
        seen_generation: Option<i64>,
    ) -> Result<(i64, Option<HashSet<PairingId>>), StoreError> {
        let mut client = self.client().await?;
        let (tx, generation) = snapshot(&mut client).await?;
        if seen_generation == Some(generation) {
            tx.commit().await?;
            return Ok((generation, None));
        }
        let mut active = HashSet::new();
        for row in tx
            .query(
                "SELECT pairing_id FROM pairings WHERE revoked_at IS NULL",
                &[],
            )
            .await?
        {
            let id: String = row.get(0);
            active.insert(PairingId::from_hex(&id)?);
        }
        tx.commit().await?;
        Ok((generation, Some(active)))
    }
}
