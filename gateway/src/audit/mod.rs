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
//! Records are written off the request path: the handler hands the record to a bounded
//! channel with `try_send` and never waits. A writer task drains it in batches (one
//! transaction each) on its own database connection. When the channel is full the record is
//! dropped, `ibkr_gateway_audit_dropped_total` counts it and a warning is logged; the call
//! itself is never blocked or failed by auditing. The tracing event is emitted either way.
//!
//! The same task enforces `audit.retention_days`: at start and then every
//! [`PRUNE_INTERVAL`] it deletes the records older than the retention period.

pub mod log;

use crate::ops::metrics::Metrics;
use hmac::{Hmac, Mac};
use log::{AuditLog, AuditRecord};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// How often records past their retention are deleted (also once at start).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Records waiting for the writer before new ones are dropped.
pub const AUDIT_QUEUE: usize = 4096;
/// Most records committed in one transaction.
const AUDIT_BATCH: usize = 256;
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

    /// A random key (tests).
    pub fn random() -> AuditKey {
        let mut secret = Zeroizing::new(vec![0u8; 32]);
        OsRng.fill_bytes(&mut secret);
        AuditKey { secret }
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

enum Command {
    Record(Box<AuditRecord>),
    /// Answered once every record queued before it is committed (or failed).
    Flush(oneshot::Sender<()>),
    /// Flush, then stop.
    Stop(oneshot::Sender<()>),
}

/// The audit front end the handlers use.
pub struct Audit {
    key: AuditKey,
    sender: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Deletes the records older than `retention`. Returns the log, or `None` if the blocking
/// task died (then nothing more can be stored).
async fn prune(mut log: AuditLog, retention: Duration) -> Option<AuditLog> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff_ms = crate::clock::unix_ms().saturating_sub(retention_ms);
    let (log, result) = tokio::task::spawn_blocking(move || {
        let result = log.prune_before(cutoff_ms);
        (log, result)
    })
    .await
    .ok()?;
    match result {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, "audit records past their retention deleted"),
        // Keeping records longer than asked is the safe failure; the next round retries.
        Err(error) => tracing::error!(%error, "could not delete audit records past retention"),
    }
    Some(log)
}

async fn writer(
    mut log: AuditLog,
    mut receiver: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    retention: Option<Duration>,
) {
    let mut batch: Vec<AuditRecord> = Vec::with_capacity(AUDIT_BATCH);
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut stop = false;
    // The first tick completes at once: records past retention go at start.
    let mut prune_timer = tokio::time::interval(PRUNE_INTERVAL);
    prune_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop {
        let first = tokio::select! {
            biased;
            _ = prune_timer.tick(), if retention.is_some() => {
                let Some(retention) = retention else { continue };
                match prune(log, retention).await {
                    Some(returned) => log = returned,
                    None => {
                        tracing::error!("audit writer task failed; audit records are no longer stored");
                        return;
                    }
                }
                continue;
            }
            received = receiver.recv() => match received {
                Some(command) => command,
                None => break,
            },
        };
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Record(record) => batch.push(*record),
                Command::Flush(done) => waiters.push(done),
                Command::Stop(done) => {
                    waiters.push(done);
                    stop = true;
                    break;
                }
            }
            if batch.len() >= AUDIT_BATCH {
                break;
            }
            next = receiver.try_recv().ok();
        }
        if !batch.is_empty() {
            let records = std::mem::take(&mut batch);
            let count = records.len() as u64;
            let (returned_log, result) = match tokio::task::spawn_blocking(move || {
                let result = log.append(&records);
                (log, result)
            })
            .await
            {
                Ok(done) => done,
                Err(_) => {
                    tracing::error!("audit writer task failed; audit records are no longer stored");
                    return;
                }
            };
            log = returned_log;
            match result {
                Ok(()) => metrics.audit_written(count),
                Err(error) => {
                    for _ in 0..count {
                        metrics.audit_dropped();
                    }
                    tracing::error!(%error, records = count, "could not store audit records");
                }
            }
        }
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
    }
}

impl Audit {
    /// Starts the writer task on `log`; records older than `retention` are deleted at start
    /// and then every [`PRUNE_INTERVAL`] (`None`: kept for ever).
    pub fn start(
        key: AuditKey,
        log: AuditLog,
        metrics: Arc<Metrics>,
        retention: Option<Duration>,
    ) -> (Audit, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(AUDIT_QUEUE);
        let task = tokio::spawn(writer(log, receiver, Arc::clone(&metrics), retention));
        (
            Audit {
                key,
                sender,
                metrics,
            },
            task,
        )
    }

    pub fn key(&self) -> &AuditKey {
        &self.key
    }

    /// Audits one call: the tracing event now, the durable record through the queue. Never
    /// waits.
    pub fn record(&self, record: AuditRecord) {
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
            "tool call"
        );
        match self.sender.try_send(Command::Record(Box::new(record))) {
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
            token_id_hmac: None,
            client_id: None,
            tool: "ibkr_health".into(),
            scope: Some("ibkr:health:read".into()),
            request_id: None,
            payload_hash: None,
            sidecar_id: None,
            outcome: "ok".into(),
            latency_ms: 1,
        }
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
        // (A short secret in the environment is refused at start: tests/integration/operations.rs runs
        // the binary with one, since tests cannot set variables in their own process.)
    }

    #[tokio::test]
    async fn records_reach_the_store_and_a_full_queue_drops_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (audit, task) = Audit::start(
            AuditKey::random(),
            AuditLog::open(&store).unwrap(),
            Arc::clone(&metrics),
            None,
        );
        for n in 0..10 {
            audit.record(record(n));
        }
        assert!(audit.flush(Duration::from_secs(10)).await);
        assert_eq!(log::tail(&store, 100).await.unwrap().len(), 10);
        assert!(audit.stop(Duration::from_secs(10)).await);
        task.await.unwrap();
        // The writer is gone: records are counted as dropped, and recording never blocks.
        audit.record(record(11));
        assert_eq!(metrics.audit_dropped_total(), 1);

        // A queue nobody drains fills up and drops.
        let (sender, _receiver) = mpsc::channel(2);
        let stuck = Audit {
            key: AuditKey::random(),
            sender,
            metrics: Arc::clone(&metrics),
        };
        for n in 0..5 {
            stuck.record(record(n));
        }
        assert_eq!(metrics.audit_dropped_total(), 1 + 3);
    }

    #[tokio::test(start_paused = true)]
    async fn records_past_retention_are_deleted_at_start_and_then_hourly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let day_ms = 86_400_000;
        let now = crate::clock::unix_ms();
        let mut direct = AuditLog::open(&store).unwrap();
        direct
            .append(&[record(now - 3 * day_ms), record(now - day_ms / 2)])
            .unwrap();

        let (audit, task) = Audit::start(
            AuditKey::random(),
            AuditLog::open(&store).unwrap(),
            Arc::new(Metrics::new()),
            Some(Duration::from_millis(2 * day_ms as u64)),
        );
        audit.record(record(now));
        assert!(audit.flush(Duration::from_secs(10)).await);
        let kept: Vec<i64> = log::tail(&store, 10)
            .await
            .unwrap()
            .iter()
            .map(|stored| stored.record.time_ms)
            .collect();
        assert_eq!(kept, vec![now - day_ms / 2, now]);

        // A record that is already too old when it arrives goes at the next hourly round.
        direct.append(&[record(now - 5 * day_ms)]).unwrap();
        assert_eq!(log::tail(&store, 10).await.unwrap().len(), 3);
        tokio::time::advance(PRUNE_INTERVAL).await;
        assert!(audit.flush(Duration::from_secs(10)).await);
        assert_eq!(log::tail(&store, 10).await.unwrap().len(), 2);

        // Without a retention nothing is ever deleted.
        assert!(audit.stop(Duration::from_secs(10)).await);
        task.await.unwrap();
        let (keeper, task) = Audit::start(
            AuditKey::random(),
            AuditLog::open(&store).unwrap(),
            Arc::new(Metrics::new()),
            None,
        );
        direct.append(&[record(0)]).unwrap();
        tokio::time::advance(PRUNE_INTERVAL).await;
        assert!(keeper.flush(Duration::from_secs(10)).await);
        assert_eq!(log::tail(&store, 10).await.unwrap().len(), 3);
        assert!(keeper.stop(Duration::from_secs(10)).await);
        task.await.unwrap();
    }
}
