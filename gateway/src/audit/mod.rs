//! The audit trail of tool calls: one durable record per call in the store's `audit` table,
//! plus a structured `tracing` event on the `audit` target.
//!
//! The bearer token is never recorded: a call is tied to its token through an HMAC of the
//! token's `jti` (or, without one, of its signature) under a secret, so records link calls
//! made with the same token without letting a reader replay or even recognise it. The secret
//! comes from the environment variable named by `remote_mcp.token_id_hmac_secret_env`; when
//! that is unset, one is generated once and persisted 0600 in `state_dir`
//! ([`crate::store::keys::AUDIT_SECRET_FILE`]), so HMACs stay stable across restarts.
//!
//! Records are chained with a key derived from that secret and checkpointed in
//! `state_dir/audit.head` ([`chain`]), so an edited, removed or reordered record, a cut tail
//! or an older copy of the database is detected by `ibkr-gateway audit verify` ([`verify`]).
//!
//! Two ways in:
//! - [`Audit::record`] (every call except the order calls' first record): the handler hands
//!   the record to a bounded channel with `try_send` and never waits. When the channel is full,
//!   the writer stopped or the store refuses the write, the record is lost:
//!   `ibkr_gateway_audit_dropped_total` counts it and an error is logged. The call itself is
//!   never blocked or failed by this.
//! - [`Audit::record_durable`] (the tools that change broker state): waits, at most
//!   `audit.ack_timeout_ms`, until the record is committed and the head replaced. The handler
//!   writes the order call's `forwarding` record this way *before* forwarding it and refuses
//!   the call (`AUDIT_UNAVAILABLE`) when it is not acknowledged in time, so no order call
//!   reaches a sidecar unaudited; its outcome record (with the sidecar's journal anchor)
//!   follows the same way.
//!
//! On a cluster store, every replica also copies its committed rows, chain columns included,
//! to the shared database under its replica id ([`shared`]), from a task of its own that reads
//! the table on its own connection: the writer never waits for the copy.
//!
//! The writer ([`writer`]) takes the queue in batches and commits each in one transaction on
//! its own database connection (`synchronous=FULL`): one fsync of the database and one
//! replacement of the head for the whole batch. A batch is whatever is queued when the writer
//! takes its first record (at most `audit.batch_max_records`); while nobody waits for any of
//! its records it stays open for `audit.batch_window_ms` after the first one, so read calls
//! close together share a commit, while a batch holding an order call's record is committed at
//! once (order calls that arrive during a commit share the next one). An ack is answered only
//! once its batch is committed and the head replaced. The connection's busy timeout is the ack
//! timeout: a batch that cannot get the write lock by then is lost as a whole (every record
//! counted, every waiter refused), rather than stored long after its call was refused. Should
//! a refused order call's `forwarding` record still land (the lock freed just as the handler
//! gave up), its `AUDIT_UNAVAILABLE` record follows it. Records still queued when the writer
//! stops are counted as lost too. It also enforces `audit.retention_days`: at start and then
//! every [`PRUNE_INTERVAL`] it deletes the oldest records past the retention period, recording
//! the prune point in the head first. The tracing event is emitted either way.

pub mod chain;
pub mod log;
pub mod shared;
pub mod verify;
mod writer;

use crate::ops::metrics::Metrics;
use hmac::{Hmac, Mac};
use log::{AuditLog, AuditRecord};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use writer::Command;
pub use writer::{Batching, PRUNE_INTERVAL};
use zeroize::Zeroizing;

/// Records waiting for the writer before new ones are dropped.
pub const AUDIT_QUEUE: usize = 4096;
/// Shortest secret accepted from the environment.
pub const MIN_SECRET_BYTES: usize = 16;

/// The HMAC key that turns token ids into audit token ids.
pub struct AuditKey {
    secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey { secret: <redacted> }")
    }
}

/// Where the audit key came from (logged at start, never the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    StateDir,
}

/// Why the audit key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("the environment variable {0} is set but shorter than {MIN_SECRET_BYTES} bytes")]
    TooShort(String),
    #[error("{0}")]
    File(#[from] crate::store::keys::KeyError),
}

impl AuditKey {
    /// The secret from the environment variable `variable` when it is set (it must then be
    /// at least [`MIN_SECRET_BYTES`]), else the one persisted in `state_dir` (created once).
    pub fn load(
        variable: &str,
        state_dir: &std::path::Path,
    ) -> Result<(AuditKey, KeySource), AuditKeyError> {
        match std::env::var_os(variable) {
            Some(value) => {
                let bytes = Zeroizing::new(value.into_encoded_bytes());
                if bytes.len() < MIN_SECRET_BYTES {
                    return Err(AuditKeyError::TooShort(variable.to_string()));
                }
                Ok((
                    AuditKey {
                        secret: Zeroizing::new(bytes.to_vec()),
                    },
                    KeySource::Environment,
                ))
            }
            None => {
                let secret = crate::store::keys::load_or_create_audit_secret(state_dir)?;
                Ok((AuditKey { secret }, KeySource::StateDir))
            }
        }
    }

    /// The secret the gateway runs with, for checking the chain from the CLI: from the
    /// environment variable when it is set, else the one in `state_dir`; never creates one
    /// (a new secret could verify nothing).
    pub fn load_existing(
        variable: &str,
        state_dir: &std::path::Path,
    ) -> Result<AuditKey, AuditKeyError> {
        match std::env::var_os(variable) {
            Some(_) => AuditKey::load(variable, state_dir).map(|(key, _)| key),
            None => Ok(AuditKey {
                secret: crate::store::keys::read_audit_secret(state_dir)?,
            }),
        }
    }

    /// A key from given bytes (tests).
    pub fn from_secret(secret: &[u8]) -> AuditKey {
        AuditKey {
            secret: Zeroizing::new(secret.to_vec()),
        }
    }

    /// A random key (tests).
    pub fn random() -> AuditKey {
        let mut secret = Zeroizing::new(vec![0u8; 32]);
        OsRng.fill_bytes(&mut secret);
        AuditKey { secret }
    }

    /// The key of the audit chain, derived from this secret under its own label.
    pub fn chain_key(&self) -> chain::ChainKey {
        chain::ChainKey::derive(&self.secret)
    }

    fn mac(&self, domain: &[u8], value: &[u8]) -> Option<String> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).ok()?;
        mac.update(domain);
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        Some(hex::encode(&digest[..16]))
    }

    /// HMAC-SHA256 of the token id, truncated to 128 bits, hex.
    pub fn token_id(&self, jti: &str) -> Option<String> {
        self.mac(b"ibkr-gateway audit jti\0", jti.as_bytes())
    }

    /// For tokens without a `jti`: the HMAC of the token's signature segment, which is just
    /// as unique per token and just as unrecognisable without the key.
    pub fn token_signature_id(&self, signature: &str) -> Option<String> {
        self.mac(b"ibkr-gateway audit sig\0", signature.as_bytes())
    }
}

/// The audit front end the handlers use.
pub struct Audit {
    key: AuditKey,
    sender: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
    /// How long an order call waits for its record to be stored.
    ack_timeout: Duration,
    /// Bumped by the writer after every committed batch.
    commits: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The structured `audit` line of a record (never the token).
fn trace(record: &AuditRecord) {
    tracing::info!(
        target: "audit",
        subject = %record.subject,
        token_id = record.token_id_hmac.as_deref().unwrap_or("-"),
        client_id = record.client_id.as_deref().unwrap_or("-"),
        tool = %record.tool,
        scope = record.scope.as_deref().unwrap_or("-"),
        request_id = record.request_id.as_deref().unwrap_or("-"),
        payload_hash = record.payload_hash.as_deref().unwrap_or("-"),
        sidecar_id = record.sidecar_id.as_deref().unwrap_or("-"),
        outcome = %record.outcome,
        latency_ms = u64::try_from(record.latency_ms).unwrap_or(0),
        journal_seq = record.journal_seq.unwrap_or(0),
        "tool call"
    );
}

impl Audit {
    /// Starts the writer task on `log`; records older than `retention` are deleted at start
    /// and then every [`PRUNE_INTERVAL`] (`None`: kept for ever). `ack_timeout` bounds both
    /// [`Audit::record_durable`] and the writer's wait for the database's write lock;
    /// `batching` says how records are grouped into transactions.
    pub fn start(
        key: AuditKey,
        log: AuditLog,
        metrics: Arc<Metrics>,
        retention: Option<Duration>,
        ack_timeout: Duration,
        batching: Batching,
    ) -> (Audit, JoinHandle<()>) {
        if let Err(error) = log.set_busy_timeout(ack_timeout) {
            tracing::warn!(%error, "could not set the audit writer's lock timeout");
        }
        let (sender, receiver) = mpsc::channel(AUDIT_QUEUE);
        let (commits, _) = tokio::sync::watch::channel(0);
        let task = tokio::spawn(writer::run(
            log,
            receiver,
            Arc::clone(&metrics),
            retention,
            batching,
            commits.clone(),
        ));
        (
            Audit {
                key,
                sender,
                metrics,
                ack_timeout,
                commits,
            },
            task,
        )
    }

    /// Changes after every committed batch (what the shared copy waits on).
    pub fn subscribe_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    pub fn key(&self) -> &AuditKey {
        &self.key
    }

    /// Audits one call: the tracing event now, the durable record through the queue. Never
    /// waits; a record that cannot be queued is counted as dropped.
    pub fn record(&self, record: AuditRecord) {
        trace(&record);
        match self
            .sender
            .try_send(Command::Record(Box::new(record), None))
        {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.audit_dropped();
                tracing::warn!("audit queue full; an audit record was dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.audit_dropped();
                tracing::warn!("audit writer stopped; an audit record was dropped");
            }
        }
    }

    /// Audits one call and waits, at most the ack timeout, until its record is committed and
    /// the head replaced. Returns whether that happened; on `false` the record is not known
    /// to be stored and the caller must not act as if it were.
    pub async fn record_durable(&self, record: AuditRecord) -> bool {
        trace(&record);
        let (ack, acked) = oneshot::channel();
        let stored = tokio::time::timeout(self.ack_timeout, async {
            self.sender
                .send(Command::Record(Box::new(record), Some(ack)))
                .await
                .is_ok()
                && acked.await == Ok(true)
        })
        .await
        .unwrap_or(false);
        if !stored {
            tracing::error!(
                timeout_ms = u64::try_from(self.ack_timeout.as_millis()).unwrap_or(u64::MAX),
                "an audit record could not be stored in time"
            );
        }
        stored
    }

    /// Waits (bounded by `limit`) until every record queued so far is committed. Returns
    /// whether that happened.
    pub async fn flush(&self, limit: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        tokio::time::timeout(limit, async {
            self.sender.send(Command::Flush(done)).await.is_ok() && wait.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Commits what is queued and stops the writer (bounded by `limit`).
    pub async fn stop(&self, limit: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        tokio::time::timeout(limit, async {
            self.sender.send(Command::Stop(done)).await.is_ok() && wait.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn record(n: i64) -> AuditRecord {
        AuditRecord {
            time_ms: n,
            subject: "alice".into(),
            tool: "ibkr_health".into(),
            scope: Some("ibkr:health:read".into()),
            outcome: "ok".into(),
            latency_ms: 1,
            ..AuditRecord::default()
        }
    }

    const LIMIT: Duration = Duration::from_secs(10);

    fn start(store: &Store, retention: Option<Duration>, ack: Duration) -> (Audit, JoinHandle<()>) {
        let key = AuditKey::from_secret(SECRET);
        let log = AuditLog::open(store.sqlite().unwrap(), &key).unwrap();
        Audit::start(
            key,
            log,
            Arc::new(Metrics::new()),
            retention,
            ack,
            Batching::default(),
        )
    }

    const SECRET: &[u8] = b"a test secret of 32 bytes length";

    fn start_batching(
        store: &Store,
        metrics: &Arc<Metrics>,
        batching: Batching,
    ) -> (Audit, JoinHandle<()>) {
        let key = AuditKey::from_secret(SECRET);
        let log = AuditLog::open(store.sqlite().unwrap(), &key).unwrap();
        Audit::start(key, log, Arc::clone(metrics), None, LIMIT, batching)
    }

    fn verified(store: &Store) -> verify::VerifyReport {
        let mut conn = rusqlite::Connection::open(store.path().unwrap()).unwrap();
        let state_dir = store.path().unwrap().parent().unwrap();
        let key = AuditKey::from_secret(SECRET).chain_key();
        verify::verify(&mut conn, state_dir, &key).unwrap()
    }

    /// Whether a record with this `time_ms` is committed, as another connection sees it.
    fn committed(probe: &rusqlite::Connection, time_ms: i64) -> bool {
        probe
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE time_ms = ?1",
                [time_ms],
                |row| row.get::<_, i64>(0),
            )
            .unwrap()
            == 1
    }

    /// Records `times` at once: every third without waiting (a read call), the others durably
    /// (order calls). For each durable one: its time, its answer, and whether `probe` saw it
    /// committed the moment its waiter was released, before anything else ran. All are queued
    /// before the writer runs (the test runtime has one thread).
    async fn concurrent_calls(
        audit: &Audit,
        probe: &rusqlite::Connection,
        times: std::ops::Range<i64>,
    ) -> Vec<(i64, bool, bool)> {
        let calls = times.map(|n| async move {
            if n % 3 == 2 {
                audit.record(record(n));
                return None;
            }
            let stored = audit.record_durable(record(n)).await;
            Some((n, stored, committed(probe, n)))
        });
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    #[tokio::test]
    async fn concurrent_durable_records_share_transactions_and_each_waiter_is_released_after_its_commit()
     {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (audit, task) = start_batching(&store, &metrics, Batching::default());
        let probe = rusqlite::Connection::open(store.path().unwrap()).unwrap();
        // 64 order calls at once, with a read call's record between every two of them.
        let answers = concurrent_calls(&audit, &probe, 0..96).await;
        assert_eq!(answers.len(), 64);
        for (n, stored, was_committed) in answers {
            assert!(stored, "record {n} was not acknowledged");
            assert!(
                was_committed,
                "record {n} was acknowledged before its commit"
            );
        }
        assert!(audit.flush(LIMIT).await);
        assert_eq!(metrics.audit_written_total(), 96);
        let commits = metrics.audit_batches_committed_total();
        assert!(
            commits < 64,
            "64 concurrent durable records took {commits} transactions"
        );
        assert_eq!(metrics.audit_dropped_total(), 0);
        let report = verified(&store);
        assert!(report.ok, "{report:?}");
        assert_eq!(report.records, 96);
        assert!(audit.stop(LIMIT).await);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn records_nobody_waits_for_share_a_transaction_within_the_window_and_durable_ones_never_wait()
     {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let window = Duration::from_secs(3600);
        let batching = Batching {
            window,
            max_records: 256,
        };
        let (audit, task) = start_batching(&store, &metrics, batching);
        // The writer takes the first record and holds its batch open; the second, sent within
        // the window, joins it; the flush (somebody waits) closes it.
        audit.record(record(1));
        tokio::time::advance(window / 4).await;
        audit.record(record(2));
        assert!(audit.flush(LIMIT).await);
        assert_eq!(metrics.audit_batches_committed_total(), 1);
        assert_eq!(metrics.audit_written_total(), 2);

        // A durable record closes an open batch at once: an order call never waits for the
        // window (it would have waited past its ack timeout, far shorter than the window).
        audit.record(record(3));
        tokio::time::advance(window / 4).await;
        assert!(audit.record_durable(record(4)).await);
        assert_eq!(metrics.audit_batches_committed_total(), 2);
        assert_eq!(metrics.audit_written_total(), 4);

        // With no window, the first record is committed alone.
        assert!(audit.stop(LIMIT).await);
        task.await.unwrap();
        let batching = Batching {
            window: Duration::ZERO,
            max_records: 256,
        };
        let (audit, task) = start_batching(&store, &metrics, batching);
        audit.record(record(5));
        tokio::time::advance(window / 4).await;
        audit.record(record(6));
        assert!(audit.flush(LIMIT).await);
        assert_eq!(metrics.audit_batches_committed_total(), 4);
        assert_eq!(metrics.audit_written_total(), 6);
        assert!(audit.stop(LIMIT).await);
        task.await.unwrap();
        assert!(verified(&store).ok);
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_max_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let batching = Batching {
            window: Duration::from_secs(3600),
            max_records: 3,
        };
        let (audit, task) = start_batching(&store, &metrics, batching);
        // Queued before the writer runs: taken 3, 3, then 1 with the flush.
        for n in 0..7 {
            audit.record(record(n));
        }
        assert!(audit.flush(LIMIT).await);
        assert_eq!(metrics.audit_batches_committed_total(), 3);
        assert_eq!(metrics.audit_written_total(), 7);
        assert!(audit.stop(LIMIT).await);
        task.await.unwrap();
        assert!(verified(&store).ok);
    }

    #[tokio::test]
    async fn a_failed_batch_refuses_every_waiter_in_it_counts_its_records_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (audit, task) = start_batching(&store, &metrics, Batching::default());
        for n in 0..3 {
            assert!(audit.record_durable(record(n)).await);
        }
        // The store refuses the batch holding record 1000, as a full disk would refuse its
        // transaction.
        let probe = rusqlite::Connection::open(store.path().unwrap()).unwrap();
        probe
            .execute_batch(
                "CREATE TRIGGER audit_fault BEFORE INSERT ON audit WHEN NEW.time_ms = 1000
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
            )
            .unwrap();
        let answers = concurrent_calls(&audit, &probe, 1000..1015).await;
        assert_eq!(answers.len(), 10);
        for (n, stored, was_committed) in answers {
            assert!(!stored, "record {n} of the failed batch was acknowledged");
            assert!(!was_committed, "record {n} of the failed batch was stored");
        }
        assert_eq!(metrics.audit_batches_failed_total(), 1);
        // Every record of the batch, waited for or not, is counted as lost.
        assert_eq!(metrics.audit_dropped_total(), 15);
        assert_eq!(metrics.audit_written_total(), 3);

        // Once the store takes writes again, the chain goes on from the last committed row.
        probe.execute_batch("DROP TRIGGER audit_fault").unwrap();
        audit.record(record(2000));
        assert!(audit.record_durable(record(2001)).await);
        assert!(audit.flush(LIMIT).await);
        let ids: Vec<(i64, i64)> = log::tail(store.sqlite().unwrap(), 100)
            .await
            .unwrap()
            .iter()
            .map(|stored| (stored.id, stored.record.time_ms))
            .collect();
        assert_eq!(ids, vec![(1, 0), (2, 1), (3, 2), (4, 2000), (5, 2001)]);
        let report = verified(&store);
        assert!(report.ok, "{report:?}");
        assert_eq!(report.records, 5);
        assert!(audit.stop(LIMIT).await);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn records_queued_behind_a_stop_are_counted_as_lost_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (audit, task) = start_batching(&store, &metrics, Batching::default());
        audit.record(record(1));
        let (stopped, durable) = tokio::join!(audit.stop(LIMIT), async {
            audit.record(record(2));
            audit.record_durable(record(3)).await
        });
        assert!(stopped);
        assert!(!durable);
        task.await.unwrap();
        assert_eq!(metrics.audit_written_total(), 1);
        assert_eq!(metrics.audit_dropped_total(), 2);
    }

    #[test]
    fn token_ids_are_stable_per_secret_and_hide_the_jti() {
        let key = AuditKey::random();
        let first = key.token_id("jti-123").unwrap();
        assert_eq!(first, key.token_id("jti-123").unwrap());
        assert_ne!(first, key.token_id("jti-124").unwrap());
        assert_ne!(first, key.token_signature_id("jti-123").unwrap());
        assert!(!first.contains("jti"));
        assert_ne!(first, AuditKey::random().token_id("jti-123").unwrap());
        assert_eq!(first.len(), 32);
    }

    #[test]
    fn a_missing_secret_is_generated_once_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        // A variable name no other test uses; the process environment is shared.
        let variable = "IBKR_GATEWAY_AUDIT_TEST_SECRET_UNSET_4F2A";
        let (first, source) = AuditKey::load(variable, dir.path()).unwrap();
        assert_eq!(source, KeySource::StateDir);
        let (second, _) = AuditKey::load(variable, dir.path()).unwrap();
        assert_eq!(first.token_id("x"), second.token_id("x"));
        assert_eq!(first.chain_key().key_id(), second.chain_key().key_id());
        // (A short secret in the environment is refused at start: tests/integration/operations.rs runs
        // the binary with one, since tests cannot set variables in their own process.)
    }

    #[tokio::test]
    async fn records_reach_the_store_and_a_full_queue_drops_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = AuditKey::random();
        let metrics = Arc::new(Metrics::new());
        let (audit, task) = Audit::start(
            AuditKey::random(),
            AuditLog::open(store.sqlite().unwrap(), &key).unwrap(),
            Arc::clone(&metrics),
            None,
            LIMIT,
            Batching::default(),
        );
        for n in 0..10 {
            audit.record(record(n));
        }
        assert!(audit.record_durable(record(10)).await);
        assert!(audit.flush(LIMIT).await);
        assert_eq!(
            log::tail(store.sqlite().unwrap(), 100).await.unwrap().len(),
            11
        );
        assert!(audit.stop(LIMIT).await);
        task.await.unwrap();
        // The writer is gone: records are counted as dropped, recording never blocks, and a
        // durable record is refused.
        audit.record(record(11));
        assert_eq!(metrics.audit_dropped_total(), 1);
        assert!(!audit.record_durable(record(12)).await);

        // A queue nobody drains fills up and drops.
        let (sender, _receiver) = mpsc::channel(2);
        let stuck = Audit {
            key: AuditKey::random(),
            sender,
            metrics: Arc::clone(&metrics),
            ack_timeout: LIMIT,
            commits: tokio::sync::watch::channel(0).0,
        };
        for n in 0..5 {
            stuck.record(record(n));
        }
        assert_eq!(metrics.audit_dropped_total(), 1 + 3);
    }

    #[tokio::test]
    async fn a_durable_record_is_refused_while_another_connection_holds_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ack = Duration::from_millis(200);
        let (audit, task) = start(&store, None, ack);
        let holder = rusqlite::Connection::open(store.path().unwrap()).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(!audit.record_durable(record(1)).await);
        // Once the writer gave up on the batch it is lost, never stored late.
        audit.record(record(2));
        assert!(audit.flush(LIMIT).await);
        holder.execute_batch("ROLLBACK").unwrap();
        assert!(audit.record_durable(record(3)).await);
        let kept: Vec<i64> = log::tail(store.sqlite().unwrap(), 10)
            .await
            .unwrap()
            .iter()
            .map(|stored| stored.record.time_ms)
            .collect();
        assert_eq!(kept, vec![3]);
        assert!(audit.stop(LIMIT).await);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn records_past_retention_are_deleted_at_start_and_then_hourly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let day_ms = 86_400_000;
        let now = crate::clock::unix_ms();
        let times = |store: Store| async move {
            log::tail(store.sqlite().unwrap(), 10)
                .await
                .unwrap()
                .iter()
                .map(|stored| stored.record.time_ms)
                .collect::<Vec<i64>>()
        };
        // Written while retention was off.
        let (audit, task) = start(&store, None, LIMIT);
        for time in [now - 3 * day_ms, now - day_ms / 2] {
            audit.record(record(time));
        }
        assert!(audit.stop(LIMIT).await);
        task.await.unwrap();

        let retention = Some(Duration::from_millis(2 * day_ms as u64));
        let (audit, task) = start(&store, retention, LIMIT);
        audit.record(record(now));
        assert!(audit.flush(LIMIT).await);
        assert_eq!(times(store.clone()).await, vec![now - day_ms / 2, now]);
        // The prune point is in the head, so verify tells retention from a removed prefix.
        let head = chain::Head::read(dir.path()).unwrap().unwrap();
        assert_eq!(head.pruned.map(|pruned| pruned.id), Some(1));

        // A shorter retention: the record of half a day ago goes at start too.
        assert!(audit.stop(LIMIT).await);
        task.await.unwrap();
        let retention = Some(Duration::from_millis(day_ms as u64 / 4));
        let (audit, task) = start(&store, retention, LIMIT);
        assert!(audit.flush(LIMIT).await);
        assert_eq!(times(store.clone()).await, vec![now]);
        audit.record(record(now - 5 * day_ms));
        tokio::time::advance(PRUNE_INTERVAL).await;
        assert!(audit.flush(LIMIT).await);
        // Behind a younger record an old one stays: only a prefix is ever deleted.
        assert_eq!(times(store.clone()).await, vec![now, now - 5 * day_ms]);
        assert!(audit.stop(LIMIT).await);
        task.await.unwrap();

        // Without a retention nothing is ever deleted.
        let (keeper, task) = start(&store, None, LIMIT);
        keeper.record(record(0));
        tokio::time::advance(PRUNE_INTERVAL).await;
        assert!(keeper.flush(LIMIT).await);
        assert_eq!(times(store.clone()).await.len(), 3);
        assert!(keeper.stop(LIMIT).await);
        task.await.unwrap();

        // What was kept still verifies.
        let mut conn = rusqlite::Connection::open(store.path().unwrap()).unwrap();
        let key = AuditKey::from_secret(b"a test secret of 32 bytes length").chain_key();
        let report = verify::verify(&mut conn, dir.path(), &key).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.pruned_through, Some(2));
    }
}
