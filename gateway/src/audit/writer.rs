//! The audit writer task: takes records from the queue in batches and commits each batch in
//! one transaction on the audit log's own connection (`synchronous=FULL`: one fsync of the
//! database, then one replacement of `audit.head`, for the whole batch), answers the acks of a
//! batch once it is committed and the head replaced, and runs retention rounds between batches.
//!
//! A batch is what is queued when the writer takes its first record, up to
//! [`Batching::max_records`]. A batch of records nobody waits for (read calls) is then held
//! open for [`Batching::window`] after its first record, so that calls arriving close together
//! share one fsync; a batch holding a record somebody waits for (an order call's, or a flush)
//! is committed at once: an order call never waits for the window, and order calls arriving
//! while a commit is under way share the next one.
//!
//! A batch that fails is lost as a whole, never stored late or retried: every record in it is
//! counted as dropped and every ack in it answered `false`. The chain's tip moves only when a
//! batch commits, so the next batch chains on from the last committed row.
//!
//! A retention round first records its prune point in the head, then deletes the old prefix
//! in batches; between two delete batches the writer takes any queued records first, so a
//! large backlog never keeps an order call waiting for its ack. A flush or stop finishes a
//! round in progress before it is answered.
//!
//! Each committed batch bumps a `watch` counter, which the shared copy on a cluster store
//! ([`super::shared`]) waits on; the writer itself never waits for the copy.

use super::log::{AUDIT_PRUNE_BATCH, AuditError, AuditLog, AuditRecord};
use crate::ops::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often records past their retention are deleted (also once at start).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// How the writer groups records into transactions (`audit.batch_window_ms`,
/// `audit.batch_max_records`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// How long a batch of records nobody waits for stays open for more after its first
    /// record. Zero: committed as soon as the writer takes it.
    pub window: Duration,
    /// Most records in one transaction (at least 1).
    pub max_records: usize,
}

impl Default for Batching {
    fn default() -> Batching {
        Batching {
            window: Duration::from_millis(2),
            max_records: 256,
        }
    }
}

pub(super) enum Command {
    /// A record, with an ack answered `true` once it is committed (and the head replaced),
    /// `false` when it could not be stored.
    Record(Box<AuditRecord>, Option<oneshot::Sender<bool>>),
    /// Answered once every record queued before it is committed (or failed).
    Flush(oneshot::Sender<()>),
    /// Flush, then stop.
    Stop(oneshot::Sender<()>),
}

/// The commands taken for one transaction.
#[derive(Default)]
struct Batch {
    records: Vec<(AuditRecord, Option<oneshot::Sender<bool>>)>,
    /// Somebody waits for one of the records.
    durable: bool,
    /// Flushes (and the stop) answered once the batch is done.
    waiters: Vec<oneshot::Sender<()>>,
    stop: bool,
}

impl Batch {
    fn take(&mut self, command: Command) {
        match command {
            Command::Record(record, ack) => {
                self.durable |= ack.is_some();
                self.records.push((*record, ack));
            }
            Command::Flush(done) => self.waiters.push(done),
            Command::Stop(done) => {
                self.waiters.push(done);
                self.stop = true;
            }
        }
    }

    /// Nothing more goes in: the batch is full, or a stop was taken (nothing after a stop is
    /// served).
    fn closed(&self, max_records: usize) -> bool {
        self.stop || self.records.len() >= max_records
    }

    /// Somebody waits for this batch: it is committed without holding it open.
    fn awaited(&self) -> bool {
        self.durable || !self.waiters.is_empty()
    }
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
    batching: Batching,
    round: Option<Round>,
    /// Bumped after every committed batch.
    commits: tokio::sync::watch::Sender<u64>,
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

    /// Counts records that will never be stored.
    fn lost(&self, records: u64) {
        for _ in 0..records {
            self.metrics.audit_dropped();
        }
    }

    /// Commits one batch and answers its acks: `true` only once the batch is committed and
    /// the head replaced. `None` when the blocking task died (its records are counted as
    /// lost, its acks answered `false`).
    async fn store(
        &self,
        log: AuditLog,
        batch: Vec<(AuditRecord, Option<oneshot::Sender<bool>>)>,
    ) -> Option<AuditLog> {
        let (records, acks): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let count = records.len() as u64;
        let answer = |stored: bool| {
            for ack in acks.into_iter().flatten() {
                let _ = ack.send(stored);
            }
        };
        let Some((log, result)) = blocking(log, move |log| log.append(&records)).await else {
            self.metrics.audit_batch_failed();
            self.lost(count);
            tracing::error!(
                records = count,
                "the audit writer's task failed while storing audit records; they are lost"
            );
            answer(false);
            return None;
        };
        let stored = match result {
            Ok(()) => {
                self.metrics.audit_batch_committed(count);
                self.commits.send_modify(|commits| *commits += 1);
                true
            }
            Err(AuditError::Head(error)) => {
                // The rows are committed; only the checkpoint lags. Order calls waiting on
                // them are refused all the same: their tamper evidence is not complete.
                self.metrics.audit_batch_committed(count);
                self.commits.send_modify(|commits| *commits += 1);
                tracing::error!(%error, "audit records stored but audit.head not replaced");
                false
            }
            Err(error) => {
                self.metrics.audit_batch_failed();
                self.lost(count);
                tracing::error!(%error, records = count, "could not store audit records; they are lost");
                false
            }
        };
        answer(stored);
        Some(log)
    }

    /// Takes the commands of one batch, `first` first: whatever is queued, up to the bound;
    /// then, while nobody waits for the batch, whatever arrives within the window after
    /// `first`.
    async fn gather(&self, first: Command, receiver: &mut mpsc::Receiver<Command>) -> Batch {
        let max_records = self.batching.max_records.max(1);
        let deadline = tokio::time::Instant::now() + self.batching.window;
        let mut batch = Batch::default();
        batch.take(first);
        loop {
            while !batch.closed(max_records) {
                match receiver.try_recv() {
                    Ok(command) => batch.take(command),
                    Err(_) => break,
                }
            }
            if batch.closed(max_records)
                || batch.awaited()
                || batch.records.is_empty()
                || self.batching.window.is_zero()
            {
                return batch;
            }
            tokio::select! {
                biased;
                received = receiver.recv() => match received {
                    Some(command) => batch.take(command),
                    None => return batch,
                },
                () = tokio::time::sleep_until(deadline) => return batch,
            }
        }
    }
}

pub(super) async fn run(
    log: AuditLog,
    mut receiver: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    retention: Option<Duration>,
    batching: Batching,
    commits: tokio::sync::watch::Sender<u64>,
) {
    let mut writer = Writer {
        metrics,
        retention,
        batching,
        round: None,
        commits,
    };
    // `None`: a blocking task died with the log, so nothing more can be stored.
    if writer.drive(log, &mut receiver).await.is_none() {
        tracing::error!("audit writer task failed; audit records are no longer stored");
    }
    // Whatever is still queued will never be stored: counted as lost, its acks answered
    // `false`, flushes left unanswered (their records were not all committed).
    receiver.close();
    let mut lost = 0u64;
    while let Ok(command) = receiver.try_recv() {
        if let Command::Record(_, ack) = command {
            lost += 1;
            if let Some(ack) = ack {
                let _ = ack.send(false);
            }
        }
    }
    if lost > 0 {
        writer.lost(lost);
        tracing::warn!(
            records = lost,
            "audit writer stopped; queued audit records were dropped"
        );
    }
}

impl Writer {
    /// Serves commands until a stop or until every sender is gone.
    async fn drive(
        &mut self,
        mut log: AuditLog,
        receiver: &mut mpsc::Receiver<Command>,
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
            let batch = self.gather(first, receiver).await;
            if !batch.records.is_empty() {
                log = self.store(log, batch.records).await?;
            }
            if !batch.waiters.is_empty() {
                while self.round.is_some() {
                    log = self.prune_batch(log).await?;
                }
            }
            for done in batch.waiters {
                let _ = done.send(());
            }
            if batch.stop {
                return Some(());
            }
        }
    }
}
