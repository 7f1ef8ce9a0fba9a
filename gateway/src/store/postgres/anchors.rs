//! The newest sidecar journal entry on record per pairing, shared by the replicas: whichever
//! replica relayed an order call records the entry its answer named, and whichever replica the
//! sidecar connects to next sends it in the handshake.

use super::PostgresStore;
use crate::store::StoreError;
use crate::store::records::PairingId;
use protocol::envelope::JournalRef;

impl PostgresStore {
    /// See [`crate::store::Store::journal_anchor`].
    pub(crate) async fn journal_anchor(
        &self,
        pairing_id: PairingId,
    ) -> Result<Option<JournalRef>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT seq, hash FROM journal_anchors WHERE pairing_id = $1")
            .await?;
        let Some(row) = client
            .query_opt(&statement, &[&pairing_id.to_hex()])
            .await?
        else {
            return Ok(None);
        };
        let seq: i64 = row.get(0);
        let hash: String = row.get(1);
        crate::store::records::journal_ref(seq, &hash).map(Some)
    }

    /// See [`crate::store::Store::record_journal_anchor`]: only ever moves forward.
    pub(crate) async fn record_journal_anchor(
        &self,
        pairing_id: PairingId,
        journal: JournalRef,
    ) -> Result<(), StoreError> {
        let seq = i64::try_from(journal.seq).map_err(|_| StoreError::Corrupt("journal_seq"))?;
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO journal_anchors (pairing_id, seq, hash) VALUES ($1, $2, $3)
                 ON CONFLICT (pairing_id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash
                     WHERE EXCLUDED.seq > journal_anchors.seq",
            )
            .await?;
        client
            .execute(
                &statement,
                &[&pairing_id.to_hex(), &seq, &hex::encode(journal.hash)],
            )
            .await?;
        Ok(())
    }
}
