//! Pairings: which sidecar key serves which OAuth subject.
//!
//! A pairing is made once, from a verified pairing exchange, and stays where it was made: it
//! is never moved to another user, another sidecar id or another key. A key or a sidecar id that
//! is already in an active pairing cannot be paired again until an operator revokes that
//! pairing. The database enforces "at most one active pairing per key and per sidecar id" with
//! unique partial indexes, so no code path (or a second process) can break it. Revoked
//! pairings are kept as history.

use super::{SELECT_PAIRINGS_GENERATION, SqliteStore, write_transaction};
use crate::store::StoreError;
use crate::store::pairing_cache::UserPairings;
use crate::store::records::{
    CompleteOutcome, NewPairing, PairingId, PairingRecord, REVOKED_FOR_KEY_ROTATION,
};
use protocol::identity::PublicKey;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashSet;

/// The columns every pairing query selects, in [`raw_pairing`]'s order. The statements are
/// constant strings (prepared once per connection and cached); `PAIRING_COLUMNS` is kept
/// for the test that writes rows by hand.
#[cfg(test)]
const PAIRING_COLUMNS: &str =
    "pairing_id, sidecar_id, sidecar_public_key, user_id, display_name, created_at, revoked_at";

const SELECT_ACTIVE_BY_KEY: &str = "SELECT pairing_id, sidecar_id, sidecar_public_key, user_id,
     display_name, created_at, revoked_at FROM pairings
     WHERE sidecar_public_key = ?1 AND revoked_at IS NULL";

const SELECT_ACTIVE_FOR_USER: &str = "SELECT pairing_id, sidecar_id, sidecar_public_key, user_id,
     display_name, created_at, revoked_at FROM pairings
     WHERE user_id = ?1 AND revoked_at IS NULL ORDER BY created_at DESC";

const SELECT_ALL: &str = "SELECT pairing_id, sidecar_id, sidecar_public_key, user_id,
     display_name, created_at, revoked_at FROM pairings ORDER BY created_at DESC, rowid DESC";

const SELECT_NEWEST_REVOCATION: &str = "SELECT revoked_at, revoked_reason FROM pairings
     WHERE user_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1";

const SELECT_ACTIVE_KEY: &str =
    "SELECT 1 FROM pairings WHERE sidecar_public_key = ?1 AND revoked_at IS NULL";

const SELECT_ACTIVE_SIDECAR_ID: &str =
    "SELECT 1 FROM pairings WHERE sidecar_id = ?1 AND revoked_at IS NULL";

const INSERT_PAIRING: &str = "INSERT INTO pairings (pairing_id, sidecar_id, sidecar_public_key,
     user_id, display_name, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)";

type RawPairing = (String, String, String, String, String, i64, Option<i64>);

fn raw_pairing(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawPairing> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

/// Turns a raw row into a record; a corrupt row becomes a typed error, not a panic. The key
/// is not checked for low order again: it was validated before it was written (a pairing is
/// only recorded from a verified pairing exchange, which refuses low-order keys), and a
/// stored key is only ever compared with a key the handshake validated. See
/// [`PublicKey::from_stored_hex`].
fn pairing_from_raw(raw: RawPairing) -> Result<PairingRecord, StoreError> {
    let (pairing_id, sidecar_id, key, user_id, display_name, created_at_ms, revoked_at_ms) = raw;
    Ok(PairingRecord {
        pairing_id: PairingId::from_hex(&pairing_id)?,
        sidecar_id,
        sidecar_public_key: PublicKey::from_stored_hex(&key)
            .map_err(|_| StoreError::Corrupt("sidecar public key"))?,
        user_id,
        display_name,
        created_at_ms,
        revoked_at_ms,
    })
}

fn query_pairings(
    conn: &Connection,
    sql: &'static str,
    params: impl rusqlite::Params,
) -> Result<Vec<PairingRecord>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map(params, raw_pairing)?;
    let mut records = Vec::new();
    for row in rows {
        records.push(pairing_from_raw(row?)?);
    }
    Ok(records)
}

/// The time the user's newest pairing was revoked, if a gateway key rotation revoked it.
fn ended_by_key_rotation(conn: &Connection, user_id: &str) -> Result<Option<i64>, StoreError> {
    let newest: Option<(Option<i64>, Option<String>)> = conn
        .prepare_cached(SELECT_NEWEST_REVOCATION)?
        .query_row(params![user_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(match newest {
        Some((Some(revoked_at), Some(reason))) if reason == REVOKED_FOR_KEY_ROTATION => {
            Some(revoked_at)
        }
        _ => None,
    })
}

/// A user's pairings and the generation they were read at, from one snapshot.
fn read_user_pairings(
    conn: &mut Connection,
    user_id: &str,
) -> Result<(i64, UserPairings), StoreError> {
    // A deferred transaction only reads: one snapshot for the generation and the rows.
    let tx = conn.transaction()?;
    let generation: i64 = tx
        .prepare_cached(SELECT_PAIRINGS_GENERATION)?
        .query_row([], |row| row.get(0))?;
    let active = query_pairings(&tx, SELECT_ACTIVE_FOR_USER, params![user_id])?;
    let ended_by_key_rotation = if active.is_empty() {
        ended_by_key_rotation(&tx, user_id)?
    } else {
        None
    };
    tx.commit()?;
    Ok((
        generation,
        UserPairings {
            active,
            ended_by_key_rotation,
        },
    ))
}

impl SqliteStore {
    /// Commits a verified pairing in one transaction: refuses a key or a sidecar id that is in
    /// an active pairing, records the new pairing, and marks the code used (erasing its
    /// secret). Nothing existing is changed when it refuses. The key must come from a verified
    /// pairing exchange, which refuses low-order keys: it is not checked again when read.
    pub(crate) async fn complete_pairing(
        &self,
        pairing: NewPairing,
    ) -> Result<CompleteOutcome, StoreError> {
        self.run(move |conn| {
            let tx = write_transaction(conn)?;
            let code: Option<(String, Option<i64>)> = tx
                .query_row(
                    "SELECT user_id, used_at FROM pairing_codes WHERE code_id = ?1",
                    params![pairing.code_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((user_id, used_at)) = code else {
                return Ok(CompleteOutcome::UnknownCode);
            };
            if used_at.is_some() {
                return Ok(CompleteOutcome::CodeUsed);
            }
            let key_text = pairing.sidecar_public_key.to_hex();
            let active = |sql: &'static str, value: &str| -> Result<bool, StoreError> {
                let found: Option<i64> = tx
                    .prepare_cached(sql)?
                    .query_row(params![value], |row| row.get(0))
                    .optional()?;
                Ok(found.is_some())
            };
            if active(SELECT_ACTIVE_KEY, &key_text)? {
                return Ok(CompleteOutcome::KeyAlreadyPaired);
            }
            if active(SELECT_ACTIVE_SIDECAR_ID, &pairing.sidecar_id)? {
                return Ok(CompleteOutcome::SidecarIdConflict);
            }
            tx.execute(
                "UPDATE pairing_codes SET used_at = ?2, secret = NULL WHERE code_id = ?1",
                params![pairing.code_id, pairing.now_ms],
            )?;
            tx.prepare_cached(INSERT_PAIRING)?.execute(params![
                pairing.pairing_id.to_hex(),
                pairing.sidecar_id,
                key_text,
                user_id,
                pairing.display_name,
                pairing.now_ms
            ])?;
            tx.commit()?;
            Ok(CompleteOutcome::Paired(pairing.into_record(user_id)))
        })
        .await
    }

    /// The active pairing of a sidecar key, if any (at most one: the database enforces it).
    pub(crate) async fn active_pairing_by_key(
        &self,
        key: PublicKey,
    ) -> Result<Option<PairingRecord>, StoreError> {
        self.run(move |conn| {
            let mut records = query_pairings(conn, SELECT_ACTIVE_BY_KEY, params![key.to_hex()])?;
            Ok(records.pop())
        })
        .await
    }

    /// The active pairings serving an OAuth subject, newest first, read from the database.
    pub(crate) async fn active_pairings_for_user(
        &self,
        user_id: String,
    ) -> Result<Vec<PairingRecord>, StoreError> {
        self.run(move |conn| query_pairings(conn, SELECT_ACTIVE_FOR_USER, params![user_id]))
            .await
    }

    /// A user's active pairings (and, when there is none, whether a key rotation ended the
    /// last one) and the pairings generation they were read at, from one snapshot.
    pub(crate) async fn read_user_pairings(
        &self,
        user_id: String,
    ) -> Result<(i64, UserPairings), StoreError> {
        self.run(move |conn| read_user_pairings(conn, &user_id))
            .await
    }

    /// Whether this pairing exists and is not revoked.
    pub(crate) async fn pairing_is_active(
        &self,
        pairing_id: PairingId,
    ) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let found: Option<i64> = conn
                .prepare_cached(
                    "SELECT 1 FROM pairings WHERE pairing_id = ?1 AND revoked_at IS NULL",
                )?
                .query_row(params![pairing_id.to_hex()], |row| row.get(0))
                .optional()?;
            Ok(found.is_some())
        })
        .await
    }

    /// Every pairing, newest first, revoked ones included.
    pub(crate) async fn list_pairings(&self) -> Result<Vec<PairingRecord>, StoreError> {
        self.run(|conn| query_pairings(conn, SELECT_ALL, [])).await
    }

    /// Revokes the active pairing with this sidecar id. Returns `false` if there is none.
    pub(crate) async fn revoke_pairing(
        &self,
        sidecar_id: String,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE pairings SET revoked_at = ?2
                     WHERE sidecar_id = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![sidecar_id, now_ms])?;
            Ok(changed > 0)
        })
        .await
    }

    /// Revokes every active pairing because the gateway's key is being replaced, in one
    /// transaction, and records that reason so each user is told why. Returns how many.
    pub(crate) async fn revoke_all_for_key_rotation(
        &self,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        self.run(move |conn| {
            let tx = write_transaction(conn)?;
            let changed = tx.execute(
                "UPDATE pairings SET revoked_at = ?1, revoked_reason = ?2 WHERE revoked_at IS NULL",
                params![now_ms, REVOKED_FOR_KEY_ROTATION],
            )?;
            tx.commit()?;
            Ok(changed)
        })
        .await
    }

    /// When the user has no active pairing: the time their newest pairing was revoked, if a
    /// gateway key rotation revoked it (a later operator revoke or pairing supersedes it).
    pub(crate) async fn pairing_ended_by_key_rotation(
        &self,
        user_id: String,
    ) -> Result<Option<i64>, StoreError> {
        self.run(move |conn| ended_by_key_rotation(conn, &user_id))
            .await
    }

    /// For the revocation poll: when the pairings changed since `seen_generation` (a pairing,
    /// revoke or rotation by this process or another, the `pairing` CLI), the ids of the active
    /// pairings. Returns the generation either way. Keyed on the pairings generation, not on
    /// `PRAGMA data_version`, which the audit trail's commits move on nearly every call.
    pub(crate) async fn active_pairings_if_changed(
        &self,
        seen_generation: Option<i64>,
    ) -> Result<(i64, Option<HashSet<PairingId>>), StoreError> {
        let generation = self.pairings_generation()?;
        if seen_generation == Some(generation) {
            return Ok((generation, None));
        }
        self.run(move |conn| {
            // One snapshot for the generation and the rows, so a change after it is seen on
            // the next poll.
            let tx = conn.transaction()?;
            let generation: i64 = tx
                .prepare_cached(super::SELECT_PAIRINGS_GENERATION)?
                .query_row([], |row| row.get(0))?;
            let mut active = HashSet::new();
            {
                let mut statement =
                    tx.prepare_cached("SELECT pairing_id FROM pairings WHERE revoked_at IS NULL")?;
                let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
                for row in rows {
                    active.insert(PairingId::from_hex(&row?)?);
                }
            }
            tx.commit()?;
            Ok((generation, Some(active)))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::{NewPairingCode, connect};
    use protocol::identity::StaticKeypair;
    use std::sync::Arc;
    use zeroize::Zeroizing;

    fn key(byte: u8) -> PublicKey {
        StaticKeypair::from_secret_bytes([byte; 32]).public()
    }

    async fn issue(store: &Store, id: &str, user: &str, now: i64) {
        assert!(
            store
                .insert_pairing_code(NewPairingCode {
                    code_id: id.into(),
                    secret: Zeroizing::new("3XW9PT4R".into()),
                    user_id: user.into(),
                    created_at_ms: now,
                    expires_at_ms: now + 60_000,
                    max_attempts: 5,
                })
                .await
                .unwrap()
        );
    }

    async fn pair(
        store: &Store,
        code_id: &str,
        sidecar_id: &str,
        key: PublicKey,
        now: i64,
    ) -> CompleteOutcome {
        store
            .complete_pairing(NewPairing {
                pairing_id: PairingId::random(),
                code_id: code_id.into(),
                sidecar_id: sidecar_id.into(),
                sidecar_public_key: key,
                display_name: "laptop".into(),
                now_ms: now,
            })
            .await
            .unwrap()
    }

    fn ids(pairings: &UserPairings) -> Vec<String> {
        pairings
            .active
            .iter()
            .map(|record| record.sidecar_id.clone())
            .collect()
    }

    /// The sidecar ids of the user's active pairings, through the per-call lookup.
    async fn active_ids(store: &Store, user: &str) -> Vec<String> {
        ids(&store.user_pairings(user).await.unwrap())
    }

    #[tokio::test]
    #[allow(clippy::await_holding_lock)] // on purpose: a lookup needing the lock cannot finish
    async fn a_warm_lookup_touches_neither_the_main_connection_nor_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        issue(&store, "AAAA", "alice", 0).await;
        pair(&store, "AAAA", "laptop-a", key(1), 1).await;
        let warm = store.user_pairings("alice").await.unwrap();
        assert_eq!(ids(&warm), vec!["laptop-a"]);
        // With the main connection held, only a lookup served from memory can finish.
        let held = store.sqlite().unwrap().conn.lock().unwrap();
        let hit = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            store.user_pairings("alice"),
        )
        .await
        .expect("a warm lookup waited for the main connection")
        .unwrap();
        assert!(Arc::ptr_eq(&hit, &warm), "the same cached entry");
        drop(held);
    }

    #[tokio::test]
    async fn a_revoke_in_this_process_counts_from_the_very_next_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        issue(&store, "AAAA", "alice", 0).await;
        pair(&store, "AAAA", "laptop-a", key(1), 1).await;
        for _ in 0..3 {
            assert_eq!(active_ids(&store, "alice").await, vec!["laptop-a"]);
        }
        assert!(store.revoke_pairing("laptop-a".into(), 2).await.unwrap());
        assert_eq!(store.pairing_cache.len(), 0, "the write emptied the cache");
        let after = store.user_pairings("alice").await.unwrap();
        assert!(after.active.is_empty());
        assert_eq!(after.ended_by_key_rotation, None);
        // A new pairing counts at once too, and so does a key rotation's revoke.
        issue(&store, "BBBB", "alice", 3).await;
        pair(&store, "BBBB", "laptop-b", key(2), 4).await;
        assert_eq!(active_ids(&store, "alice").await, vec!["laptop-b"]);
        assert_eq!(store.revoke_all_for_key_rotation(5).await.unwrap(), 1);
        let rotated = store.user_pairings("alice").await.unwrap();
        assert!(rotated.active.is_empty());
        assert_eq!(rotated.ended_by_key_rotation, Some(5));
    }

    #[tokio::test]
    async fn a_revoke_from_another_process_counts_from_the_very_next_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        issue(&store, "AAAA", "alice", 0).await;
        pair(&store, "AAAA", "laptop-a", key(1), 1).await;
        issue(&store, "BBBB", "bob", 2).await;
        pair(&store, "BBBB", "laptop-b", key(2), 3).await;
        for _ in 0..3 {
            assert_eq!(active_ids(&store, "alice").await, vec!["laptop-a"]);
            assert_eq!(active_ids(&store, "bob").await, vec!["laptop-b"]);
        }
        // The CLI: its own Store (own connections, own cache) on the same file.
        let cli = Store::open(dir.path()).unwrap();
        assert!(cli.revoke_pairing("laptop-a".into(), 4).await.unwrap());
        assert_eq!(store.pairing_cache.len(), 2, "nothing told this process");
        assert!(active_ids(&store, "alice").await.is_empty());
        assert_eq!(active_ids(&store, "bob").await, vec!["laptop-b"]);
        // A pairing made by the other process counts at once as well.
        issue(&cli, "CCCC", "alice", 5).await;
        pair(&cli, "CCCC", "laptop-c", key(3), 6).await;
        assert_eq!(active_ids(&store, "alice").await, vec!["laptop-c"]);
        // So does a write that bypasses every Store method (the trigger sees any change).
        connect(dir.path().join("gateway.sqlite3").as_path())
            .unwrap()
            .execute("DELETE FROM pairings WHERE sidecar_id = 'laptop-b'", [])
            .unwrap();
        assert!(active_ids(&store, "bob").await.is_empty());
    }

    /// What a missing lookup reads, as it reads it (before it stores it).
    fn snapshot(store: &Store, user: &str) -> (i64, UserPairings) {
        let mut conn = store.sqlite().unwrap().conn.lock().unwrap();
        read_user_pairings(&mut conn, user).unwrap()
    }

    #[tokio::test]
    async fn a_lookup_that_read_before_a_revoke_never_leaves_a_stale_entry_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        issue(&store, "AAAA", "alice", 0).await;
        pair(&store, "AAAA", "laptop-a", key(1), 1).await;
        // A lookup misses and reads its snapshot (the pairing still active) ...
        let (read_at, before) = snapshot(&store, "alice");
        assert_eq!(ids(&before), vec!["laptop-a"]);
        // ... the revoke commits and empties the cache, from this process ...
        assert!(store.revoke_pairing("laptop-a".into(), 2).await.unwrap());
        // ... and only then does the slow lookup store what it read.
        store
            .pairing_cache
            .insert("alice", read_at, Arc::new(before.clone()));
        assert!(active_ids(&store, "alice").await.is_empty());

        // The same with the revoke made by another process (nothing emptied the cache), and
        // the stale entry stored after a fresh lookup already cached the revoke.
        issue(&store, "BBBB", "alice", 3).await;
        pair(&store, "BBBB", "laptop-b", key(2), 4).await;
        let (read_at, before) = snapshot(&store, "alice");
        assert_eq!(ids(&before), vec!["laptop-b"]);
        let cli = Store::open(dir.path()).unwrap();
        assert!(cli.revoke_pairing("laptop-b".into(), 5).await.unwrap());
        assert!(active_ids(&store, "alice").await.is_empty());
        store
            .pairing_cache
            .insert("alice", read_at, Arc::new(before));
        for _ in 0..3 {
            assert!(active_ids(&store, "alice").await.is_empty());
        }
    }

    #[tokio::test]
    async fn a_key_rotation_is_remembered_as_the_reason_until_the_user_pairs_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        issue(&store, "AAAA", "alice", 0).await;
        pair(&store, "AAAA", "laptop-a", key(1), 1).await;
        issue(&store, "BBBB", "bob", 2).await;
        pair(&store, "BBBB", "laptop-b", key(2), 3).await;
        store.revoke_pairing("laptop-b".into(), 4).await.unwrap();
        assert_eq!(store.revoke_all_for_key_rotation(5).await.unwrap(), 1);
        assert_eq!(
            store
                .pairing_ended_by_key_rotation("alice".into())
                .await
                .unwrap(),
            Some(5)
        );
        // Bob's pairing was revoked by the operator before the rotation: no rotation story.
        assert_eq!(
            store
                .pairing_ended_by_key_rotation("bob".into())
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .pairing_ended_by_key_rotation("nobody".into())
                .await
                .unwrap(),
            None
        );
        // A new pairing, even one later revoked by hand, supersedes the rotation.
        issue(&store, "CCCC", "alice", 6).await;
        pair(&store, "CCCC", "laptop-a2", key(3), 7).await;
        store.revoke_pairing("laptop-a2".into(), 8).await.unwrap();
        assert_eq!(
            store
                .pairing_ended_by_key_rotation("alice".into())
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_pairing_is_never_moved_and_a_paired_key_never_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        issue(&store, "AAAA", "alice", 0).await;
        let CompleteOutcome::Paired(alice) = pair(&store, "AAAA", "laptop-a", key(1), 1).await
        else {
            panic!("alice could not pair");
        };
        // Bob, with his own code: alice's key (with and without her sidecar id), or alice's id.
        issue(&store, "BBBB", "bob", 2).await;
        assert_eq!(
            pair(&store, "BBBB", "laptop-a", key(1), 3).await,
            CompleteOutcome::KeyAlreadyPaired
        );
        assert_eq!(
            pair(&store, "BBBB", "laptop-b", key(1), 4).await,
            CompleteOutcome::KeyAlreadyPaired
        );
        assert_eq!(
            pair(&store, "BBBB", "laptop-a", key(2), 5).await,
            CompleteOutcome::SidecarIdConflict
        );
        // Alice's pairing is untouched, and bob's code is still his to use.
        let kept = store.active_pairing_by_key(key(1)).await.unwrap().unwrap();
        assert_eq!(kept, alice);
        assert!(matches!(
            pair(&store, "BBBB", "laptop-b", key(2), 6).await,
            CompleteOutcome::Paired(_)
        ));
        // The same user re-pairing the same key is refused too, until an operator revokes.
        issue(&store, "CCCC", "alice", 7).await;
        assert_eq!(
            pair(&store, "CCCC", "laptop-a", key(1), 8).await,
            CompleteOutcome::KeyAlreadyPaired
        );
        assert!(store.revoke_pairing("laptop-a".into(), 9).await.unwrap());
        assert!(!store.revoke_pairing("laptop-a".into(), 10).await.unwrap());
        assert!(!store.pairing_is_active(alice.pairing_id).await.unwrap());
        let CompleteOutcome::Paired(again) = pair(&store, "CCCC", "laptop-a", key(1), 11).await
        else {
            panic!("re-pairing after a revoke failed");
        };
        assert_ne!(again.pairing_id, alice.pairing_id);
        // History is kept: alice's first pairing, bob's, alice's second.
        assert_eq!(store.list_pairings().await.unwrap().len(), 3);
        assert_eq!(
            store
                .active_pairings_for_user("alice".into())
                .await
                .unwrap(),
            vec![again]
        );
    }

    #[tokio::test]
    async fn codes_are_single_use_and_pairings_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            issue(&store, "K7QM", "alice", 0).await;
            assert!(matches!(
                pair(&store, "K7QM", "laptop-1", key(1), 5).await,
                CompleteOutcome::Paired(_)
            ));
            assert_eq!(
                pair(&store, "K7QM", "laptop-2", key(2), 6).await,
                CompleteOutcome::CodeUsed
            );
            assert_eq!(
                pair(&store, "ZZZZ", "laptop-2", key(2), 6).await,
                CompleteOutcome::UnknownCode
            );
        }
        let store = Store::open(dir.path()).unwrap();
        let record = store.active_pairing_by_key(key(1)).await.unwrap().unwrap();
        assert_eq!(
            (record.sidecar_id.as_str(), record.user_id.as_str()),
            ("laptop-1", "alice")
        );
        assert!(store.pairing_is_active(record.pairing_id).await.unwrap());
    }

    #[tokio::test]
    async fn the_database_refuses_a_second_active_row_whatever_the_code_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        issue(&store, "K7QM", "alice", 0).await;
        pair(&store, "K7QM", "laptop-1", key(1), 1).await;
        let conn = store.sqlite().unwrap().conn.lock().unwrap();
        for (id, sidecar, key_text) in [
            ("00", "laptop-1", key(9).to_hex()),
            ("01", "laptop-9", key(1).to_hex()),
        ] {
            let inserted = conn.execute(
                &format!("INSERT INTO pairings ({PAIRING_COLUMNS}) VALUES (?1, ?2, ?3, 'x', 'x', 2, NULL)"),
                params![id, sidecar, key_text],
            );
            assert!(inserted.is_err(), "{sidecar} {key_text}");
        }
    }
}
