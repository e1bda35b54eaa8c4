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
//! Store errors that may pass (unavailable, timeouts) are retried with
//! backoff forever, holding the batch: nothing is skipped, and the log is not
//! read further until the write lands.

pub mod plan;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signals_log::{DeadLetterSink, EventLog, LogError, LogReader};
use signals_store::{SignalStore, SpeedProgress, SpeedWrite, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use plan::PlanStats;

/// Tuning of the speed layer.
#[derive(Clone, Debug)]
pub struct SpeedOptions {
    /// Consumer group name on logs that have groups.
    pub group: String,
    /// Most records per store write.
    pub max_batch: usize,
    /// Longest wait for the first record of a batch.
    pub poll_wait: Duration,
    /// Backoff between retries of a failed write, doubling up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for SpeedOptions {
    fn default() -> Self {
        SpeedOptions {
            group: "signals-speed".into(),
            max_batch: 20_000,
            poll_wait: Duration::from_millis(100),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
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

/// The speed layer, wired to its backends.
pub struct SpeedLayer {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn SignalStore>,
    pub dead_letters: Arc<dyn DeadLetterSink>,
    pub options: SpeedOptions,
}

impl SpeedLayer {
    /// Runs until `shutdown` is cancelled; the batch in hand is finished first.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), SpeedError> {
        let progress = self
            .retry("read speed progress", &shutdown, || {
                self.store.speed_progress()
            })
            .await?;
        let Some(progress) = progress else {
            return Ok(());
        };
        info!(position = ?progress.position, "speed layer starting");
        let mut reader = self
            .log
            .subscribe(&self.options.group, &progress.position)
            .await?;
        let mut position = progress.position;
        let mut last_accepted_at = progress.last_accepted_at;
        // Users this process saw deleted (see `plan::plan`).
        let mut deleted = HashSet::new();
        loop {
            let entries = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                entries = reader.next_batch(self.options.max_batch, self.options.poll_wait) => entries?,
            };
            if entries.is_empty() {
                // The log may have moved past records that are not events
                // (Kafka's transaction markers): record that, or lag never ends.
                let reader_position = reader.position();
                if !position.reaches(&reader_position) {
                    let write = SpeedWrite {
                        progress: SpeedProgress {
                            position: reader_position.clone(),
                            last_accepted_at,
                        },
                        ..SpeedWrite::default()
                    };
                    if self
                        .retry("record progress", &shutdown, || {
                            self.store.apply_speed(write.clone())
                        })
                        .await?
                        .is_none()
                    {
                        break;
                    }
                    reader.commit(&reader_position).await?;
                    for (partition, next) in reader_position.iter() {
                        position.advance(partition, next);
                    }
                }
                continue;
            }
            let Some(stats) = self
                .step(
                    &mut *reader,
                    entries,
                    &mut position,
                    &mut last_accepted_at,
                    &mut deleted,
                    &shutdown,
                )
                .await?
            else {
                break;
            };
            record_metrics(&stats);
        }
        info!(position = ?position, "speed layer stopped");
        Ok(())
    }

    /// Applies one batch; `None` when shutdown interrupted a retry (nothing
    /// of the batch was recorded as progress, so it replays next start).
    async fn step(
        &self,
        reader: &mut dyn LogReader,
        entries: Vec<signals_log::LogEntry>,
        position: &mut signals_core::LogPosition,
        last_accepted_at: &mut Option<signals_schemas::Millis>,
        deleted: &mut HashSet<String>,
        shutdown: &CancellationToken,
    ) -> Result<Option<PlanStats>, SpeedError> {
        let started = Instant::now();
        let mut batch = plan::decode(entries, position);
        for (partition, next) in reader.position().iter() {
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
        let ids = plan::ids_to_look_up(&batch.records);
        let Some(known) = self
            .retry("look up event ids", shutdown, || {
                self.store.lookup_events(&ids)
            })
            .await?
        else {
            return Ok(None);
        };
        let (write, stats) = plan::plan(&batch, known, *last_accepted_at, deleted);
        let progress = write.progress.clone();
        if self
            .retry("apply speed write", shutdown, || {
                self.store.apply_speed(write.clone())
            })
            .await?
            .is_none()
        {
            return Ok(None);
        }
        // Durable now: the log may forget the batch.
        reader.commit(&progress.position).await?;
        *position = progress.position;
        *last_accepted_at = progress.last_accepted_at;
        metrics::histogram!("signals_speed_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(Some(stats))
    }

    /// Calls `call` until it succeeds, backing off on transient errors;
    /// `None` when shutdown came first.
    async fn retry<T, E, F, Fut>(
        &self,
        what: &str,
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
                Ok(value) => return Ok(Some(value)),
                Err(error) if error.is_transient() => {
                    warn!(%error, retry_in = ?backoff, "{what} failed; retrying");
                    metrics::counter!("signals_speed_retries_total").increment(1);
                }
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

fn record_metrics(stats: &PlanStats) {
    let outcomes = [
        ("applied", stats.events),
        ("duplicate", stats.duplicates),
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
