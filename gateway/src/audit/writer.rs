//! The audit writer task: drains the queue in batches (one transaction each, on the audit
//! log's own connection), answers acks once a batch is committed and the head replaced, and
//! runs retention rounds between batches.
//!
//! A retention round first records its prune point in the head, then deletes the old prefix
//! in batches; between two delete batches the writer takes any queued records first, so a
//! large backlog never keeps an order call waiting for its ack. A flush or stop finishes a
//! round in progress before it is answered.

use super::log::{AUDIT_PRUNE_BATCH, AuditError, AuditLog, AuditRecord};
use crate::ops::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often records past their retention are deleted (also once at start).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Most records committed in one transaction.
const AUDIT_BATCH: usize = 256;

pub(super) enum Command {
    /// A record, with an ack answered `true` once it is committed (and the head replaced),
    /// `false` when it could not be stored.
    Record(Box<AuditRecord>, Option<oneshot::Sender<bool>>),
    /// Answered once every record queued before it is committed (or failed).
    Flush(oneshot::Sender<()>),
    /// Flush, then stop.
    Stop(oneshot::Sender<()>),
}

/// Runs `work` on the blocking pool with the log; `None` if that task died (then nothing
/// more can be stored).
async fn blocking<T: Send + 'static>(
    mut log: AuditLog,
    work: impl FnOnce(&mut AuditLog) -> T + Send + 'static,
) -> Option<(AuditLog, T)> {
    tokio::task::spawn_blocking(move || {
        let result = work(&mut log);
        (log, result)
    })
    .await
    .ok()
}

/// A retention round in progress.
struct Round {
    through: i64,
    deleted: usize,
}

struct Writer {
    metrics: Arc<Metrics>,
    retention: Option<Duration>,
    round: Option<Round>,
}

impl Writer {
    /// Records the prune point of a new round. Keeping records longer than asked is the safe
    /// failure: an error is logged and the next round retries.
    async fn begin_round(&mut self, log: AuditLog) -> Option<AuditLog> {
        let Some(retention) = self.retention else {
            return Some(log);
        };
        if log.broken().is_some() {
            return Some(log);
        }
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff_ms = crate::clock::unix_ms().saturating_sub(retention_ms);
        let (log, result) = blocking(log, move |log| log.begin_prune(cutoff_ms)).await?;
        match result {
            Ok(through) if through > 0 => {
                self.round = Some(Round {
                    through,
                    deleted: 0,
                })
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "could not start deleting audit records past retention")
            }
        }
        Some(log)
    }

    /// Deletes one batch of the round in progress.
    async fn prune_batch(&mut self, log: AuditLog) -> Option<AuditLog> {
        let Some(round) = self.round.as_mut() else {
            return Some(log);
        };
        let through = round.through;
        let (log, result) = blocking(log, move |log| log.prune_batch(through)).await?;
        match result {
            Ok(deleted) => {
                round.deleted += deleted;
                if deleted < AUDIT_PRUNE_BATCH {
                    if round.deleted > 0 {
                        tracing::info!(
                            deleted = round.deleted,
                            "audit records past their retention deleted"
                        );
                    }
                    self.round = None;
                }
            }
            Err(error) => {
                tracing::error!(%error, "could not delete audit records past retention");
                self.round = None;
            }
        }
        Some(log)
    }

    /// Stores one batch and answers its acks.
    async fn store(
        &self,
        log: AuditLog,
        batch: Vec<(AuditRecord, Option<oneshot::Sender<bool>>)>,
    ) -> Option<AuditLog> {
        let (records, acks): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let count = records.len() as u64;
        let (log, result) = blocking(log, move |log| log.append(&records)).await?;
        let stored = match result {
            Ok(()) => {
                self.metrics.audit_written(count);
                true
            }
            Err(AuditError::Head(error)) => {
                // The rows are committed; only the checkpoint lags. Order calls waiting on
                // them are refused all the same: their tamper evidence is not complete.
                self.metrics.audit_written(count);
                tracing::error!(%error, "audit records stored but audit.head not replaced");
                false
            }
            Err(error) => {
                for _ in 0..count {
                    self.metrics.audit_dropped();
                }
                tracing::error!(%error, records = count, "could not store audit records; they are lost");
                false
            }
        };
        for ack in acks.into_iter().flatten() {
            let _ = ack.send(stored);
        }
        Some(log)
    }
}

pub(super) async fn run(
    log: AuditLog,
    receiver: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    retention: Option<Duration>,
) {
    let mut writer = Writer {
        metrics,
        retention,
        round: None,
    };
    // `None`: a blocking task died with the log, so nothing more can be stored.
    if writer.drive(log, receiver).await.is_none() {
        tracing::error!("audit writer task failed; audit records are no longer stored");
    }
}

impl Writer {
    /// Serves commands until a stop or until every sender is gone.
    async fn drive(
        &mut self,
        mut log: AuditLog,
        mut receiver: mpsc::Receiver<Command>,
    ) -> Option<()> {
        // The first tick completes at once: records past retention go at start.
        let mut prune_timer = tokio::time::interval(PRUNE_INTERVAL);
        prune_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = if self.round.is_some() {
                // Queued records first; a delete batch only when nobody waits.
                match receiver.try_recv() {
                    Ok(command) => Some(command),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => return Some(()),
                }
            } else {
                tokio::select! {
                    biased;
                    _ = prune_timer.tick(), if self.retention.is_some() => {
                        log = self.begin_round(log).await?;
                        continue;
                    }
                    received = receiver.recv() => match received {
                        Some(command) => Some(command),
                        None => return Some(()),
                    },
                }
            };
            let Some(first) = first else {
                log = self.prune_batch(log).await?;
                continue;
            };
            let mut batch = Vec::new();
            let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
            let mut stop = false;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Record(record, ack) => batch.push((*record, ack)),
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
                log = self.store(log, batch).await?;
            }
            if !waiters.is_empty() {
                while self.round.is_some() {
                    log = self.prune_batch(log).await?;
                }
            }
            for done in waiters.drain(..) {
                let _ = done.send(());
            }
            if stop {
                return Some(());
            }
        }
    }
}
