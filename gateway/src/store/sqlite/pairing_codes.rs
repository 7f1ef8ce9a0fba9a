//! Pairing codes: single use, short lived, a bounded number of *tested* guesses.
//!
//! A guess is tested when a `/pair/finish` arrives, not when a `/pair/start` does: SPAKE2 gives
//! a client nothing to check a guess against until the gateway verifies its confirmation. So an
//! attempt is counted (durably, before the confirmation is checked) only at finish, and a start
//! that never finishes costs the code nothing. The secret is kept only while the code is live
//! and erased when it is used, expires or runs out of attempts.

use super::{SqliteStore, write_transaction};
use crate::store::StoreError;
use crate::store::records::{
    CodeCheck, CodeRow, CodeState, NewPairingCode, code_check, dead_state,
};
use rusqlite::{Connection, OptionalExtension, params};

fn read_code(conn: &Connection, code_id: &str) -> Result<Option<CodeRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT secret, user_id, expires_at, attempts, max_attempts, used_at
             FROM pairing_codes WHERE code_id = ?1",
            params![code_id],
            |row| {
                Ok(CodeRow {
                    secret: row.get(0)?,
                    user_id: row.get(1)?,
                    expires_at: row.get(2)?,
                    attempts: row.get(3)?,
                    max_attempts: row.get(4)?,
                    used_at: row.get(5)?,
                })
            },
        )
        .optional()?)
}

impl SqliteStore {
    /// Stores a new code. Returns `false` when a live code already uses this id (the caller
    /// draws a new one). A dead code (used, expired or out of attempts) with the same id is
    /// replaced; old dead codes are purged on the way.
    pub(crate) async fn insert_pairing_code(
        &self,
        code: NewPairingCode,
    ) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let tx = write_transaction(conn)?;
            // Dead codes older than a week carry no information worth keeping.
            tx.execute(
                "DELETE FROM pairing_codes WHERE expires_at < ?1",
                params![code.created_at_ms - 7 * 86_400_000],
            )?;
            if let Some(existing) = read_code(&tx, &code.code_id)? {
                if dead_state(&existing, code.created_at_ms).is_none() {
                    return Ok(false);
                }
                tx.execute(
                    "DELETE FROM pairing_codes WHERE code_id = ?1",
                    params![code.code_id],
                )?;
            }
            tx.execute(
                "INSERT INTO pairing_codes (code_id, secret, user_id, created_at, expires_at, attempts, max_attempts, used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, NULL)",
                params![
                    code.code_id,
                    code.secret.as_str(),
                    code.user_id,
                    code.created_at_ms,
                    code.expires_at_ms,
                    i64::from(code.max_attempts)
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// Looks a code up for `/pair/start`. Reads only: a start spends nothing.
    pub(crate) async fn lookup_pairing_code(
        &self,
        code_id: String,
        now_ms: i64,
    ) -> Result<CodeCheck, StoreError> {
        self.run(move |conn| Ok(code_check(read_code(conn, &code_id)?, now_ms)))
            .await
    }

    /// Counts one tested guess against a code, durably, before the gateway checks it. `Ok(None)`:
    /// counted, go ahead. `Ok(Some(state))`: the code died since the start (used, expired or out
    /// of attempts); nothing was counted. The secret is erased when a code is found dead or when
    /// this was its last attempt.
    pub(crate) async fn count_pairing_attempt(
        &self,
        code_id: String,
        now_ms: i64,
    ) -> Result<Option<CodeState>, StoreError> {
        self.run(move |conn| {
            let tx = write_transaction(conn)?;
            let Some(row) = read_code(&tx, &code_id)? else {
                return Ok(Some(CodeState::Unknown));
            };
            let erase = |tx: &rusqlite::Transaction<'_>| -> Result<(), StoreError> {
                tx.execute(
                    "UPDATE pairing_codes SET secret = NULL WHERE code_id = ?1",
                    params![code_id],
                )?;
                Ok(())
            };
            let outcome = match dead_state(&row, now_ms) {
                Some(state) => {
                    erase(&tx)?;
                    Some(state)
                }
                None => {
                    tx.execute(
                        "UPDATE pairing_codes SET attempts = attempts + 1 WHERE code_id = ?1",
                        params![code_id],
                    )?;
                    if row.attempts + 1 >= row.max_attempts {
                        erase(&tx)?;
                    }
                    None
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use zeroize::Zeroizing;

    pub(crate) fn code(id: &str, now: i64, ttl_ms: i64, max_attempts: u32) -> NewPairingCode {
        NewPairingCode {
            code_id: id.into(),
            secret: Zeroizing::new("3XW9PT4R".into()),
            user_id: "alice".into(),
            created_at_ms: now,
            expires_at_ms: now + ttl_ms,
            max_attempts,
        }
    }

    fn secret_column(store: &Store, id: &str) -> Option<String> {
        let conn = store.sqlite().unwrap().conn.lock().unwrap();
        conn.query_row(
            "SELECT secret FROM pairing_codes WHERE code_id = ?1",
            params![id],
            |row| row.get(0),
        )
        .unwrap()
    }

    fn state(check: CodeCheck) -> Option<CodeState> {
        match check {
            CodeCheck::Live { .. } => None,
            CodeCheck::Dead(state) => Some(state),
        }
    }

    #[tokio::test]
    async fn lookups_spend_nothing_and_expiry_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(
            store
                .insert_pairing_code(code("K7QM", 1_000, 60_000, 1))
                .await
                .unwrap()
        );
        for _ in 0..10 {
            match store
                .lookup_pairing_code("K7QM".into(), 2_000)
                .await
                .unwrap()
            {
                CodeCheck::Live { user_id, secret } => {
                    assert_eq!((user_id.as_str(), secret.as_str()), ("alice", "3XW9PT4R"));
                }
                CodeCheck::Dead(state) => panic!("{state:?}"),
            }
        }
        assert_eq!(
            state(
                store
                    .lookup_pairing_code("NOPE".into(), 2_000)
                    .await
                    .unwrap()
            ),
            Some(CodeState::Unknown)
        );
        assert_eq!(
            state(
                store
                    .lookup_pairing_code("K7QM".into(), 61_000)
                    .await
                    .unwrap()
            ),
            Some(CodeState::Expired)
        );
        // Counting on an expired code counts nothing and erases the secret.
        assert_eq!(
            store
                .count_pairing_attempt("K7QM".into(), 61_000)
                .await
                .unwrap(),
            Some(CodeState::Expired)
        );
        assert_eq!(secret_column(&store, "K7QM"), None);
    }

    #[tokio::test]
    async fn tested_guesses_are_limited_and_counted_durably() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .insert_pairing_code(code("K7QM", 0, 60_000, 2))
                .await
                .unwrap();
            assert_eq!(
                store.count_pairing_attempt("K7QM".into(), 1).await.unwrap(),
                None
            );
        }
        // Reopen: the first attempt was persisted.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.count_pairing_attempt("K7QM".into(), 2).await.unwrap(),
            None
        );
        // The last attempt erased the secret already.
        assert_eq!(secret_column(&store, "K7QM"), None);
        assert_eq!(
            store.count_pairing_attempt("K7QM".into(), 3).await.unwrap(),
            Some(CodeState::AttemptsExceeded)
        );
        assert_eq!(
            state(store.lookup_pairing_code("K7QM".into(), 3).await.unwrap()),
            Some(CodeState::AttemptsExceeded)
        );
    }

    #[tokio::test]
    async fn a_live_code_id_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(
            store
                .insert_pairing_code(code("K7QM", 0, 60_000, 5))
                .await
                .unwrap()
        );
        assert!(
            !store
                .insert_pairing_code(code("K7QM", 1, 60_000, 5))
                .await
                .unwrap()
        );
        // Once expired, the id can be reused.
        assert!(
            store
                .insert_pairing_code(code("K7QM", 70_000, 60_000, 5))
                .await
                .unwrap()
        );
    }
}
