//! The speed layer: log → core rules → store, continuously.
//!
//! Each step reads a batch of records, decodes them (undecodable ones go to
//! the dead-letter sink first), asks the index about their event ids, and
//! applies one [`SpeedWrite`](signals_store::SpeedWrite) that carries the
//! entries, the index updates and the new progress together. Only after that
//! write is durable does it tell the log (`commit`). A crash anywhere replays
//! from the last durable progress; replays are harmless because writes are
//! keyed by log position and the index makes duplicates no-ops.
//!
//! Two steps overlap: a batch is decoded and planned while the one before
//! it is written (the write waits on the disk or the network, planning on
//! the CPU), with that write's index updates standing in for the index's
//! answers about the same ids ([`plan::overlay`]); it is written only once
//! the one before is durable. A property test (`replay_tests`) runs the
//! planning with and without the overlap through kills mid-write.
//!
//! They overlap only while the layer is behind (the batch read was full).
//! Caught up, a batch is written as soon as it is planned: its planning is
//! short, and overlapping would make every record wait for a whole write
//! that does not hold it (the one taken while the write before ran) before
//! its own: one write more of delay between an event's acceptance and its
//! visibility, for no throughput that a caught-up layer needs.
//!
//! Errors that may pass are retried with exponential backoff (bounded by
//! [`SpeedOptions::max_backoff`]) for as long as they last, never ending the
//! layer: the log's (a broker restart: polls fail until it is back, then
//! the consumer resumes from the committed offsets) and the store's
//! (unavailable, timeouts), holding the batch: nothing is skipped, and the
//! log is not read further until the write lands. Each retry is logged and
//! counted (`signals_speed_retries_total{operation}`), and [`SpeedStatus`]
//! says what the layer waits for, for readiness. Only errors that no retry
//! can cure stop it: configuration (a missing topic, an unmigrated
//! keyspace) and corrupt stored data.
//!
//! A record that decodes but cannot be applied (a deletion of an invalid
//! user id, a retraction naming invalid ids, from an outside producer) goes
//! to the dead letters with its reason, like an undecodable one, and its
//! offset is then committed with the rest of the batch (see [`plan::decode`]).

pub mod plan;

mod status;

#[cfg(test)]
mod replay_tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signals_core::{Deduplication, LogPosition};
use signals_log::{DeadLetterSink, EventLog, LogError, LogReader};
use signals_schemas::Millis;
use signals_store::{SpeedProgress, SpeedStore, SpeedWrite, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use plan::PlanStats;
pub use status::SpeedStatus;

/// Tuning of the speed layer.
#[derive(Clone, Debug)]
pub struct SpeedOptions {
    /// Consumer group name on logs that have groups.
    pub group: String,
    /// Most records per store write.
    pub max_batch: usize,
    /// Longest wait for the first record of a batch.
    pub poll_wait: Duration,
    /// Backoff between retries of a failed call, doubling up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Where the layer says what it is waiting for (readiness reads it).
    pub status: Arc<SpeedStatus>,
    /// The deduplication window both layers apply, and how long the index
    /// keeps entries beyond it.
    pub deduplication: Deduplication,
}

impl Default for SpeedOptions {
    fn default() -> Self {
        SpeedOptions {
            group: "signals-speed".into(),
            max_batch: 20_000,
            poll_wait: Duration::from_millis(100),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            status: Arc::default(),
            deduplication: Deduplication::default(),
        }
    }
}

/// Why the speed layer stopped.
#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A batch planned and not yet durable.
struct Planned {
    write: Arc<SpeedWrite>,
    stats: PlanStats,
    started: Instant,
}

/// Where the next batch is planned from: where the last batch planned ends,
/// and what planning learned that the store does not say yet.
struct PlanFrom {
    position: LogPosition,
    last_accepted_at: Option<Millis>,
    /// Users this process saw deleted (see `plan::plan`).
    deleted: HashSet<String>,
}

/// The speed layer, wired to its backends.
pub struct SpeedLayer {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn SpeedStore>,
    pub dead_letters: Arc<dyn DeadLetterSink>,
    pub options: SpeedOptions,
}

impl SpeedLayer {
    /// Runs until `shutdown` is cancelled; the batch in hand is finished first.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), SpeedError> {
        let progress = self
            .retry("read the speed progress", &shutdown, || {
                self.store.speed_progress()
            })
            .await?;
        let Some(progress) = progress else {
            return Ok(());
        };
        info!(position = ?progress.position, "speed layer starting");
        let reader = self
            .retry("subscribe to the log", &shutdown, || {
                self.log.subscribe(&self.options.group, &progress.position)
            })
            .await?;
        let Some(mut reader) = reader else {
            return Ok(());
        };
        // `pending` is the last batch planned while it is applied.
        let mut from = PlanFrom {
            position: progress.position,
            last_accepted_at: progress.last_accepted_at,
            deleted: HashSet::new(),
        };
        let mut pending: Option<Planned> = None;
        let mut poll_backoff = self.options.min_backoff;
        loop {
            // With a batch waiting to be written, take only what the log
            // holds already: waiting for more would delay that batch.
            let wait = if pending.is_some() {
                Duration::ZERO
            } else {
                self.options.poll_wait
            };
            let polled = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                polled = reader.next_batch(self.options.max_batch, wait) => polled,
            };
            let entries = match polled {
                Ok(entries) => {
                    poll_backoff = self.options.min_backoff;
                    self.options.status.clear("poll the log");
                    entries
                }
                Err(error) if error.is_transient() => {
                    self.note_retry("poll the log", &error, poll_backoff);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(poll_backoff) => {}
                    }
                    poll_backoff = (poll_backoff * 2).min(self.options.max_backoff);
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            if entries.is_empty() {
                if let Some(planned) = pending.take() {
                    if !self.finish(&mut *reader, planned, &shutdown).await? {
                        break;
                    }
                }
                // The log may have moved past records that are not events
                // (Kafka's transaction markers): record that, or lag never ends.
                let reader_position = reader.position();
                if !from.position.reaches(&reader_position) {
                    let write = Arc::new(SpeedWrite {
                        progress: SpeedProgress {
                            position: reader_position.clone(),
                            last_accepted_at: from.last_accepted_at,
                        },
                        ..SpeedWrite::default()
                    });
                    if self
                        .retry("record progress", &shutdown, || {
                            self.store.apply_speed(write.clone())
                        })
                        .await?
                        .is_none()
                    {
                        break;
                    }
                    self.commit(&mut *reader, &reader_position).await;
                    for (partition, next) in reader_position.iter() {
                        from.position.advance(partition, next);
                    }
                }
                continue;
            }
            // The batch in flight is written while this one is decoded and
            // planned (the store's write waits on the disk, planning on the
            // CPU); this one is written after it, never before.
            let reader_position = reader.position();
            let behind = entries.len() >= self.options.max_batch;
            let (applied, next) = match &pending {
                Some(planned) => {
                    let (applied, next) = tokio::join!(
                        self.apply(planned, &shutdown),
                        self.prepare(
                            entries,
                            &reader_position,
                            &mut from,
                            Some(&planned.write),
                            &shutdown,
                        )
                    );
                    (Some(applied?), next?)
                }
                None => {
                    let next = self
                        .prepare(entries, &reader_position, &mut from, None, &shutdown)
                        .await?;
                    (None, next)
                }
            };
            if let (Some(applied), Some(planned)) = (applied, pending.take()) {
                if !applied {
                    break;
                }
                self.committed(&mut *reader, planned).await;
            }
            let Some(next) = next else {
                break;
            };
            if behind {
                pending = Some(next);
            } else if !self.finish(&mut *reader, next, &shutdown).await? {
                break;
            }
        }
        if let Some(planned) = pending.take() {
            // The batch in hand is finished first.
            self.finish(&mut *reader, planned, &shutdown).await?;
        }
        info!(position = ?from.position, "speed layer stopped");
        Ok(())
    }

    /// Decodes and plans one batch (`None` when shutdown interrupted a
    /// retry). `in_flight`, a write planned before and not yet durable,
    /// answers for the ids it updates in place of the index. A batch
    /// planned moves `from` to where it ends.
    async fn prepare(
        &self,
        entries: Vec<signals_log::LogEntry>,
        reader_position: &LogPosition,
        from: &mut PlanFrom,
        in_flight: Option<&SpeedWrite>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Planned>, SpeedError> {
        let started = Instant::now();
        let mut batch = plan::decode(entries, &from.position);
        for (partition, next) in reader_position.iter() {
            batch.position.advance(partition, next);
        }
        if !batch.dead_letters.is_empty() {
            for letter in &batch.dead_letters {
                warn!(partition = letter.partition, offset = letter.offset, reason = %letter.reason, "record sent to dead letters");
            }
            let letters = std::mem::take(&mut batch.dead_letters);
            let sent = self
                .retry("write dead letters", shutdown, || {
                    self.dead_letters.send(letters.clone())
                })
                .await?;
            if sent.is_none() {
                return Ok(None);
            }
            batch.dead_letters = letters;
        }
        self.note_beyond_grace(&batch.records);
        let ids = plan::ids_to_look_up(&batch.records);
        let Some(mut known) = self
            .retry("look up event ids", shutdown, || {
                self.store.lookup_events(&ids)
            })
            .await?
        else {
            return Ok(None);
        };
        if let Some(write) = in_flight {
            plan::overlay(&mut known, &ids, &write.index);
        }
        let (write, stats) = plan::plan(
            batch,
            known,
            from.last_accepted_at,
            &self.options.deduplication,
            &mut from.deleted,
        );
        from.position = write.progress.position.clone();
        from.last_accepted_at = write.progress.last_accepted_at;
        Ok(Some(Planned {
            write: Arc::new(write),
            stats,
            started,
        }))
    }

    /// Writes a planned batch; `false` when shutdown interrupted a retry
    /// (nothing of it was recorded as progress, so it replays next start).
    async fn apply(
        &self,
        planned: &Planned,
        shutdown: &CancellationToken,
    ) -> Result<bool, SpeedError> {
        let applied = self
            .retry("apply speed write", shutdown, || {
                self.store.apply_speed(planned.write.clone())
            })
            .await?;
        Ok(applied.is_some())
    }

    /// [`Self::apply`], then [`Self::committed`].
    async fn finish(
        &self,
        reader: &mut dyn LogReader,
        planned: Planned,
        shutdown: &CancellationToken,
    ) -> Result<bool, SpeedError> {
        if !self.apply(&planned, shutdown).await? {
            return Ok(false);
        }
        self.committed(reader, planned).await;
        Ok(true)
    }

    /// A planned batch is durable: the log may forget it.
    async fn committed(&self, reader: &mut dyn LogReader, planned: Planned) {
        self.commit(reader, &planned.write.progress.position).await;
        metrics::histogram!("signals_speed_batch_duration_seconds")
            .record(planned.started.elapsed().as_secs_f64());
        record_metrics(&planned.stats);
    }

    /// Tells the log that `position` is durable. A failure only delays
    /// that: progress is in the store, the next commit carries it, and until
    /// then a new owner of the partitions replays a little, idempotently.
    async fn commit(&self, reader: &mut dyn LogReader, position: &signals_core::LogPosition) {
        if let Err(error) = reader.commit(position).await {
            warn!(%error, "offset commit failed; the next commit carries the position");
            metrics::counter!("signals_speed_retries_total", "operation" => "commit offsets")
                .increment(1);
        }
    }

    /// Logs, counts and reports a failed `operation` that will be retried.
    fn note_retry(
        &self,
        operation: &'static str,
        error: &dyn std::fmt::Display,
        backoff: Duration,
    ) {
        warn!(%error, retry_in = ?backoff, "{operation} failed; retrying");
        metrics::counter!("signals_speed_retries_total", "operation" => operation).increment(1);
        self.options.status.waiting(operation, error.to_string());
    }

    /// Calls `call` until it succeeds, backing off on transient errors;
    /// `None` when shutdown came first.
    async fn retry<T, E, F, Fut>(
        &self,
        what: &'static str,
        shutdown: &CancellationToken,
        mut call: F,
    ) -> Result<Option<T>, SpeedError>
    where
        E: Transient + std::fmt::Display + Into<SpeedError>,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut backoff = self.options.min_backoff;
        loop {
            match call().await {
                Ok(value) => {
                    self.options.status.clear(what);
                    return Ok(Some(value));
                }
                Err(error) if error.is_transient() => self.note_retry(what, &error, backoff),
                Err(error) => return Err(error.into()),
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }
}

/// Errors that may pass if the same call is made again.
trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }
}

impl Transient for LogError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }
}

impl SpeedLayer {
    /// Warns about records accepted longer ago than the index's grace: an
    /// entry that would make one of them a copy may be gone already, so it
    /// may count here until the next batch run decides it from the log.
    fn note_beyond_grace(&self, records: &[plan::Decoded]) {
        let now = signals_schemas::now_millis();
        let grace = self.options.deduplication.grace;
        let late = records
            .iter()
            .filter(|r| r.accepted_at.saturating_add(grace) < now)
            .count();
        if late > 0 {
            warn!(
                records = late,
                grace_ms = grace,
                "the speed layer is further behind the collector than the event index's grace: copies among these records may count until the next batch run"
            );
            metrics::counter!("signals_speed_beyond_dedup_grace_total").increment(late as u64);
        }
    }
}

fn record_metrics(stats: &PlanStats) {
    let outcomes = [
        ("applied", stats.events),
        ("duplicate", stats.duplicates),
        ("withdrawn", stats.withdrawn),
        ("retraction", stats.retractions),
        ("deletion", stats.deletions),
        ("deleted_user_event", stats.deleted_user_events),
        ("dead_letter", stats.dead_letters),
    ];
    for (outcome, n) in outcomes {
        if n > 0 {
            metrics::counter!("signals_speed_records_total", "outcome" => outcome).increment(n);
        }
    }
}
