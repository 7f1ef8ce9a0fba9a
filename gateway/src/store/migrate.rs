//! Moving an embedded deployment to the shared store: `ibkr-gateway store migrate`.
//!
//! Copies, in one PostgreSQL transaction, what the laptops depend on: every pairing (revoked
//! ones too, with why), the handshake anti-replay timestamps, the gateway key's record and the
//! newest journal entry on record per pairing (from the audit trail). Pairing codes are not
//! copied: they live minutes. The shared store must hold no pairing yet, so a migration never
//! merges two histories; the SQLite file is only read.

use super::StoreError;
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use serde::Serialize;

/// What was copied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    pub pairings: u64,
    pub active_pairings: u64,
    pub handshake_timestamps: u64,
    pub journal_anchors: u64,
    pub gateway_key_recorded: bool,
}

type PairingRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
);

struct Embedded {
    pairings: Vec<PairingRow>,
    handshakes: Vec<(String, i64)>,
    anchors: Vec<(String, i64, String)>,
    gateway_key: Option<(String, i64)>,
}

async fn read_embedded(sqlite: &SqliteStore) -> Result<Embedded, StoreError> {
    sqlite
        .run(|conn| {
            // One snapshot of everything.
            let tx = conn.transaction()?;
            let pairings = tx
                .prepare(
                    "SELECT pairing_id, sidecar_id, sidecar_public_key, user_id, display_name,
                            created_at, revoked_at, revoked_reason
                     FROM pairings ORDER BY created_at, rowid",
                )?
                .query_map([], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                        row.get(7)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let handshakes = tx
                .prepare("SELECT sidecar_public_key, last_timestamp_ms FROM handshake_timestamps")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            let anchors = tx
                .prepare(
                    "SELECT a.pairing_id, a.journal_seq, a.journal_hash FROM audit a
                     JOIN (SELECT pairing_id, MAX(journal_seq) AS seq FROM audit
                           WHERE pairing_id IS NOT NULL AND journal_seq IS NOT NULL
                           GROUP BY pairing_id) newest
                       ON a.pairing_id = newest.pairing_id AND a.journal_seq = newest.seq
                     WHERE a.journal_hash IS NOT NULL
                     GROUP BY a.pairing_id",
                )?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            let gateway_key = {
                let mut statement =
                    tx.prepare("SELECT public_key, recorded_at FROM gateway_key WHERE id = 1")?;
                let mut rows = statement.query([])?;
                match rows.next()? {
                    Some(row) => Some((row.get(0)?, row.get(1)?)),
                    None => None,
                }
            };
            tx.commit()?;
            Ok(Embedded {
                pairings,
                handshakes,
                anchors,
                gateway_key,
            })
        })
        .await
}

/// Copies the embedded store in `sqlite` into the (pairing-free) shared store.
pub async fn migrate_embedded(
    sqlite: &SqliteStore,
    postgres: &PostgresStore,
) -> Result<MigrationReport, StoreError> {
    let embedded = read_embedded(sqlite).await?;
    let mut client = postgres.client().await?;
    let tx = client.transaction().await?;
    tx.batch_execute(
        "LOCK TABLE pairings, handshake_timestamps, journal_anchors, gateway_key IN EXCLUSIVE MODE",
    )
    .await?;
    let existing: i64 = tx
        .query_one("SELECT COUNT(*) FROM pairings", &[])
        .await?
        .get(0);
    if existing > 0 {
        return Err(StoreError::Config(
            "the shared store already holds pairings; a migration never merges two stores",
        ));
    }
    let mut report = MigrationReport::default();
    for row in &embedded.pairings {
        let (pairing_id, sidecar_id, key, user_id, display_name, created_at, revoked_at, reason) =
            row;
        tx.execute(
            "INSERT INTO pairings (pairing_id, sidecar_id, sidecar_public_key, user_id,
                                   display_name, created_at, revoked_at, revoked_reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                pairing_id,
                sidecar_id,
                key,
                user_id,
                display_name,
                created_at,
                revoked_at,
                reason,
            ],
        )
        .await?;
        report.pairings += 1;
        if revoked_at.is_none() {
            report.active_pairings += 1;
        }
    }
    for (key, timestamp) in &embedded.handshakes {
        tx.execute(
            "INSERT INTO handshake_timestamps (sidecar_public_key, last_timestamp_ms)
             VALUES ($1, $2)
             ON CONFLICT (sidecar_public_key) DO UPDATE
                 SET last_timestamp_ms = GREATEST(handshake_timestamps.last_timestamp_ms,
                                                  EXCLUDED.last_timestamp_ms)",
            &[key, timestamp],
        )
        .await?;
        report.handshake_timestamps += 1;
    }
    for (pairing_id, seq, hash) in &embedded.anchors {
        tx.execute(
            "INSERT INTO journal_anchors (pairing_id, seq, hash) VALUES ($1, $2, $3)
             ON CONFLICT (pairing_id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash
                 WHERE EXCLUDED.seq > journal_anchors.seq",
            &[pairing_id, seq, hash],
        )
        .await?;
        report.journal_anchors += 1;
    }
    if let Some((key, recorded_at)) = &embedded.gateway_key {
        tx.execute(
            "INSERT INTO gateway_key (id, public_key, recorded_at) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET public_key = EXCLUDED.public_key,
                                            recorded_at = EXCLUDED.recorded_at",
            &[key, recorded_at],
        )
        .await?;
        report.gateway_key_recorded = true;
    }
    tx.commit().await?;
    Ok(report)
}
