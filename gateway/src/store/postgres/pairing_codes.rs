//! Pairing codes in PostgreSQL: the rules of [`crate::store::sqlite::pairing_codes`], with the
//! code's row locked by whoever changes it, so replicas take turns on one code.

use super::PostgresStore;
use crate::store::StoreError;
use crate::store::records::{
    CodeCheck, CodeRow, CodeState, NewPairingCode, code_check, dead_state,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

const SELECT_CODE: &str = "SELECT secret, user_id, expires_at, attempts, max_attempts, used_at
     FROM pairing_codes WHERE code_id = $1";

/// [`SELECT_CODE`], locking the row for the rest of the transaction.
const LOCK_CODE: &str = "SELECT secret, user_id, expires_at, attempts, max_attempts, used_at
     FROM pairing_codes WHERE code_id = $1 FOR UPDATE";

fn code_row(row: &Row) -> CodeRow {
    CodeRow {
        secret: row.get(0),
        user_id: row.get(1),
        expires_at: row.get(2),
        attempts: row.get(3),
        max_attempts: row.get(4),
        used_at: row.get(5),
    }
}

impl PostgresStore {
    /// See [`crate::store::Store::insert_pairing_code`].
    pub(crate) async fn insert_pairing_code(
        &self,
        code: NewPairingCode,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Dead codes older than a week carry no information worth keeping.
        tx.execute(
            "DELETE FROM pairing_codes WHERE expires_at < $1",
            &[&(code.created_at_ms - 7 * 86_400_000)],
        )
        .await?;
        if let Some(existing) = tx.query_opt(LOCK_CODE, &[&code.code_id]).await? {
            if dead_state(&code_row(&existing), code.created_at_ms).is_none() {
                return Ok(false);
            }
            tx.execute(
                "DELETE FROM pairing_codes WHERE code_id = $1",
                &[&code.code_id],
            )
            .await?;
        }
        let max_attempts = i64::from(code.max_attempts);
        let params: [&(dyn ToSql + Sync); 6] = [
            &code.code_id,
            &code.secret.as_str(),
            &code.user_id,
            &code.created_at_ms,
            &code.expires_at_ms,
            &max_attempts,
        ];
        // A replica that inserted the same id meanwhile wins; this one draws another.
        let inserted = tx
            .execute(
                "INSERT INTO pairing_codes (code_id, secret, user_id, created_at, expires_at,
                                            attempts, max_attempts, used_at)
                 VALUES ($1, $2, $3, $4, $5, 0, $6, NULL)
                 ON CONFLICT (code_id) DO NOTHING",
                &params,
            )
            .await?;
        tx.commit().await?;
        Ok(inserted == 1)
    }

    /// See [`crate::store::Store::lookup_pairing_code`].
    pub(crate) async fn lookup_pairing_code(
        &self,
        code_id: String,
        now_ms: i64,
    ) -> Result<CodeCheck, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(SELECT_CODE).await?;
        let row = client.query_opt(&statement, &[&code_id]).await?;
        Ok(code_check(row.as_ref().map(code_row), now_ms))
    }

    /// See [`crate::store::Store::count_pairing_attempt`].
    pub(crate) async fn count_pairing_attempt(
        &self,
        code_id: String,
        now_ms: i64,
    ) -> Result<Option<CodeState>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx.query_opt(LOCK_CODE, &[&code_id]).await? else {
            return Ok(Some(CodeState::Unknown));
        };
        let row = code_row(&row);
        let erase = "UPDATE pairing_codes SET secret = NULL WHERE code_id = $1";
        let outcome = match dead_state(&row, now_ms) {
            Some(state) => {
                tx.execute(erase, &[&code_id]).await?;
                Some(state)
            }
            None => {
                tx.execute(
                    "UPDATE pairing_codes SET attempts = attempts + 1 WHERE code_id = $1",
                    &[&code_id],
                )
                .await?;
                if row.attempts + 1 >= row.max_attempts {
                    tx.execute(erase, &[&code_id]).await?;
                }
                None
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }
}
