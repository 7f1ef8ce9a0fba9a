//! Refresh tokens of the built-in authorization server, by digest, in families: a token is
//! spent when it is rotated, and a spent token presented again revokes its whole family.

use super::{SqliteStore, write_transaction};
use crate::store::StoreError;
use crate::store::records::{NewRefreshToken, RefreshGrant, RefreshSuccessor, RefreshUse};
use rusqlite::{OptionalExtension, params};

impl SqliteStore {
    pub(crate) async fn insert_refresh_token(
        &self,
        token: NewRefreshToken,
    ) -> Result<(), StoreError> {
        self.run(move |conn| {
            conn.prepare_cached(
                "INSERT INTO refresh_tokens (digest, family_id, client_id, subject, scopes,
                     resource, approval_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                token.digest.as_slice(),
                token.family_id,
                token.client_id,
                token.subject,
                token.scopes,
                token.resource,
                token.approval_id,
                token.created_at_ms,
                token.expires_at_ms,
            ])?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn use_refresh_token(
        &self,
        digest: [u8; 32],
        now_ms: i64,
        successor: RefreshSuccessor,
    ) -> Result<RefreshUse, StoreError> {
        self.run(move |conn| {
            let tx = write_transaction(conn)?;
            let row = tx
                .query_row(
                    "SELECT family_id, client_id, subject, scopes, resource, approval_id,
                            expires_at, used_at, revoked_at
                     FROM refresh_tokens WHERE digest = ?1",
                    params![digest.as_slice()],
                    |row| {
                        Ok((
                            RefreshGrant {
                                family_id: row.get(0)?,
                                client_id: row.get(1)?,
                                subject: row.get(2)?,
                                scopes: row.get(3)?,
                                resource: row.get(4)?,
                                approval_id: row.get(5)?,
                            },
                            row.get::<_, i64>(6)?,
                            row.get::<_, Option<i64>>(7)?,
                            row.get::<_, Option<i64>>(8)?,
                        ))
                    },
                )
                .optional()?;
            let Some((grant, expires_at, used_at, revoked_at)) = row else {
                return Ok(RefreshUse::Unknown);
            };
            let outcome = if revoked_at.is_some() {
                RefreshUse::Revoked
            } else if used_at.is_some() {
                tx.execute(
                    "UPDATE refresh_tokens SET revoked_at = ?2
                     WHERE family_id = ?1 AND revoked_at IS NULL",
                    params![grant.family_id, now_ms],
                )?;
                RefreshUse::Reused {
                    family_id: grant.family_id,
                }
            } else if expires_at <= now_ms {
                RefreshUse::Expired
            } else {
                tx.execute(
                    "UPDATE refresh_tokens SET used_at = ?2 WHERE digest = ?1",
                    params![digest.as_slice(), now_ms],
                )?;
                tx.execute(
                    "INSERT INTO refresh_tokens (digest, family_id, client_id, subject, scopes,
                         resource, approval_id, created_at, expires_at)
                     SELECT ?1, family_id, client_id, subject, scopes, resource, approval_id,
                            ?2, ?3
                     FROM refresh_tokens WHERE digest = ?4",
                    params![
                        successor.digest.as_slice(),
                        now_ms,
                        successor.expires_at_ms,
                        digest.as_slice()
                    ],
                )?;
                RefreshUse::Rotated(grant)
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    pub(crate) async fn revoke_refresh_tokens_of_approval(
        &self,
        approval_id: String,
        subject: Option<String>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        self.run(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE refresh_tokens SET revoked_at = ?2
                     WHERE approval_id = ?1 AND revoked_at IS NULL
                       AND (?3 IS NULL OR subject = ?3)",
                )?
                .execute(params![approval_id, now_ms, subject])?;
            Ok(changed as u64)
        })
        .await
    }
}
