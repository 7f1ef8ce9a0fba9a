//! Refresh tokens of the built-in authorization server, shared by the replicas: the token's
//! row is locked while it is spent and its successor stored, so two replicas presented one
//! token at once see it one after the other, and the second finds it spent and revokes the
//! family, successor included.

use super::PostgresStore;
use crate::store::StoreError;
use crate::store::records::{NewRefreshToken, RefreshGrant, RefreshSuccessor, RefreshUse};

impl PostgresStore {
    pub(crate) async fn insert_refresh_token(
        &self,
        token: NewRefreshToken,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO refresh_tokens (digest, family_id, client_id, subject, scopes,
                     resource, approval_id, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .await?;
        client
            .execute(
                &statement,
                &[
                    &token.digest.as_slice(),
                    &token.family_id,
                    &token.client_id,
                    &token.subject,
                    &token.scopes,
                    &token.resource,
                    &token.approval_id,
                    &token.created_at_ms,
                    &token.expires_at_ms,
                ],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn use_refresh_token(
        &self,
        digest: [u8; 32],
        now_ms: i64,
        successor: RefreshSuccessor,
    ) -> Result<RefreshUse, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT family_id, client_id, subject, scopes, resource, approval_id,
                        expires_at, used_at, revoked_at
                 FROM refresh_tokens WHERE digest = $1 FOR UPDATE",
                &[&digest.as_slice()],
            )
            .await?;
        let Some(row) = row else {
            return Ok(RefreshUse::Unknown);
        };
        let grant = RefreshGrant {
            family_id: row.get(0),
            client_id: row.get(1),
            subject: row.get(2),
            scopes: row.get(3),
            resource: row.get(4),
            approval_id: row.get(5),
        };
        let expires_at: i64 = row.get(6);
        let used_at: Option<i64> = row.get(7);
        let revoked_at: Option<i64> = row.get(8);
        let outcome = if revoked_at.is_some() {
            RefreshUse::Revoked
        } else if used_at.is_some() {
            tx.execute(
                "UPDATE refresh_tokens SET revoked_at = $2
                 WHERE family_id = $1 AND revoked_at IS NULL",
                &[&grant.family_id, &now_ms],
            )
            .await?;
            RefreshUse::Reused {
                family_id: grant.family_id,
            }
        } else if expires_at <= now_ms {
            RefreshUse::Expired
        } else {
            tx.execute(
                "UPDATE refresh_tokens SET used_at = $2 WHERE digest = $1",
                &[&digest.as_slice(), &now_ms],
            )
            .await?;
            tx.execute(
                "INSERT INTO refresh_tokens (digest, family_id, client_id, subject, scopes,
                     resource, approval_id, created_at, expires_at)
                 SELECT $1, family_id, client_id, subject, scopes, resource, approval_id, $2, $3
                 FROM refresh_tokens WHERE digest = $4",
                &[
                    &successor.digest.as_slice(),
                    &now_ms,
                    &successor.expires_at_ms,
                    &digest.as_slice(),
                ],
            )
            .await?;
            RefreshUse::Rotated(grant)
        };
        tx.commit().await?;
        Ok(outcome)
    }

    pub(crate) async fn revoke_refresh_tokens_of_approval(
        &self,
        approval_id: String,
        subject: Option<String>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE refresh_tokens SET revoked_at = $2
                 WHERE approval_id = $1 AND revoked_at IS NULL
                   AND ($3::text IS NULL OR subject = $3::text)",
            )
            .await?;
        Ok(client
            .execute(&statement, &[&approval_id, &now_ms, &subject])
            .await?)
    }
}
