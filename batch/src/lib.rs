//! The batch layer: recompute every signal from the event log and publish
//! the result as a new immutable version.
//!
//! A run snapshots the log's end, replays the log from the start up to it
//! with the core's rules ([`recompute`]), writes one record per user under a
//! fresh version and only then publishes the version's manifest, atomically,
//! with the log position it covers. Serving switches at that instant: the
//! new version plus speed entries from its position, so nothing is missing
//! or counted twice. A run that dies before publishing leaves the previous
//! version in force; its rows are overwritten by the next run of the same
//! version number.

pub mod recompute;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use signals_core::time::floor_hour;
use signals_core::{Definitions, LogPosition};
use signals_log::{EventLog, LogError};
use signals_schemas::{avro, Millis};
use signals_store::{BatchManifest, SignalStore, StoreError};
use tracing::{info, warn};

pub use recompute::{Corrections, Recompute};

/// Tuning of the batch layer.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// How far back `at` may go; raw events are kept for this plus the
    /// widest window, older ones are pre-aggregated.
    pub retention: Millis,
    /// Users per store write.
    pub write_chunk: usize,
    /// Records per log read.
    pub read_chunk: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            retention: 30 * signals_core::time::DAY,
            write_chunk: 5_000,
            read_chunk: 50_000,
        }
    }
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchSummary {
    pub version: u64,
    pub position: LogPosition,
    pub horizon: Millis,
    pub started_at: Millis,
    pub duration_ms: u64,
    pub records_read: u64,
    pub undecodable: u64,
    pub events: u64,
    pub users: u64,
    pub corrections: Corrections,
    pub published: bool,
}

/// The phase a running batch is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Reading,
    Writing,
    Publishing,
}

/// A run in progress, as the admin endpoint shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Running {
    pub version: u64,
    pub started_at: Millis,
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

/// Observes a run's progress (progress bars, logs, the admin endpoint).
pub trait Progress: Send + Sync {
    fn update(&self, running: &Running);
}

/// Ignores progress.
pub struct Quiet;

impl Progress for Quiet {
    fn update(&self, _: &Running) {}
}

/// Why a run failed; the published version is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("a batch run is already in progress (version {0})")]
    AlreadyRunning(u64),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Default)]
struct Status {
    running: Option<Running>,
    last: Option<BatchSummary>,
}

/// The batch layer, wired to its backends.
pub struct BatchLayer {
    log: Arc<dyn EventLog>,
    store: Arc<dyn SignalStore>,
    definitions: Arc<Definitions>,
    options: BatchOptions,
    status: Mutex<Status>,
}

impl BatchLayer {
    pub fn new(
        log: Arc<dyn EventLog>,
        store: Arc<dyn SignalStore>,
        definitions: Arc<Definitions>,
        options: BatchOptions,
    ) -> BatchLayer {
        BatchLayer {
            log,
            store,
            definitions,
            options,
            status: Mutex::new(Status::default()),
        }
    }

    /// The run in progress, if any.
    pub fn running(&self) -> Option<Running> {
        self.status
            .lock()
            .map(|s| s.running.clone())
            .unwrap_or(None)
    }

    /// The summary of the last run of this process, if any.
    pub fn last(&self) -> Option<BatchSummary> {
        self.status.lock().map(|s| s.last.clone()).unwrap_or(None)
    }

    /// Recomputes everything up to the log's current end and publishes it
    /// (unless `dry_run`). One run at a time per process.
    pub async fn run(
        &self,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<BatchSummary, BatchError> {
        let started = Instant::now();
        let started_at = chrono::Utc::now().timestamp_millis();
        let previous = self.store.published().await?;
        let version = previous.as_ref().map_or(1, |m| m.version + 1);
        {
            let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(running) = &status.running {
                return Err(BatchError::AlreadyRunning(running.version));
            }
            status.running = Some(Running {
                version,
                started_at,
                phase: Phase::Reading,
                done: 0,
                total: 0,
            });
        }
        let result = self
            .run_version(version, started_at, dry_run, previous, progress)
            .await;
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.running = None;
        match result {
            Ok(mut summary) => {
                summary.duration_ms = started.elapsed().as_millis() as u64;
                info!(
                    version,
                    events = summary.events,
                    users = summary.users,
                    duration_ms = summary.duration_ms,
                    published = summary.published,
                    "batch run finished"
                );
                metrics::counter!("signals_batch_runs_total", "outcome" => "ok").increment(1);
                metrics::histogram!("signals_batch_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                status.last = Some(summary.clone());
                Ok(summary)
            }
            Err(error) => {
                warn!(version, %error, "batch run failed; the published version is unchanged");
                metrics::counter!("signals_batch_runs_total", "outcome" => "error").increment(1);
                Err(error)
            }
        }
    }

    fn report(&self, progress: &dyn Progress, running: Running) {
        progress.update(&running);
        if let Ok(mut status) = self.status.lock() {
            status.running = Some(running);
        }
    }

    async fn run_version(
        &self,
        version: u64,
        started_at: Millis,
        dry_run: bool,
        previous: Option<BatchManifest>,
        progress: &dyn Progress,
    ) -> Result<BatchSummary, BatchError> {
        let end = self.log.end().await?;
        let total = end.total();
        let mut summary = BatchSummary {
            version,
            position: end.clone(),
            started_at,
            ..BatchSummary::default()
        };
        let running = |phase, done, total| Running {
            version,
            started_at,
            phase,
            done,
            total,
        };

        // Read the log up to the snapshot of its end.
        let mut recompute = Recompute::default();
        let mut reader = self.log.read_from(&LogPosition::new()).await?;
        let mut read = LogPosition::new();
        // The reader's own position also passes offsets that hold no record
        // (Kafka's transaction markers).
        while !reader.position().reaches(&end) {
            let entries = reader
                .next_batch(self.options.read_chunk, Duration::from_millis(50))
                .await?;
            for entry in entries {
                if !end.covers(entry.partition, entry.offset) {
                    continue;
                }
                read.advance(entry.partition, entry.offset + 1);
                summary.records_read += 1;
                match avro::decode(&entry.bytes) {
                    Ok(record) => recompute.add(record.body),
                    // The speed layer dead-letters these; the batch skips them alike.
                    Err(_) => summary.undecodable += 1,
                }
            }
            self.report(progress, running(Phase::Reading, read.total(), total));
        }

        // Write every user's record under the new version.
        let horizon =
            floor_hour(started_at - self.options.retention - self.definitions.max_window());
        summary.horizon = horizon;
        let user_count = recompute.users() as u64;
        let (records, corrections) = recompute.finish(&self.definitions, horizon);
        let mut chunk = Vec::with_capacity(self.options.write_chunk);
        let mut written = 0u64;
        for (user, record) in records {
            if !record.events.is_empty() || !record.base.is_empty() {
                summary.users += 1;
            }
            summary.events += record.events.len() as u64;
            written += 1;
            chunk.push((user, record));
            if chunk.len() >= self.options.write_chunk {
                if !dry_run {
                    self.store
                        .write_batch(version, std::mem::take(&mut chunk))
                        .await?;
                }
                chunk.clear();
                self.report(progress, running(Phase::Writing, written, user_count));
            }
        }
        if !chunk.is_empty() && !dry_run {
            self.store.write_batch(version, chunk).await?;
        }
        summary.corrections = corrections;
        if dry_run {
            return Ok(summary);
        }

        // Publish, then collect what the previous version no longer needs.
        self.report(
            progress,
            running(Phase::Publishing, summary.users, user_count),
        );
        let manifest = BatchManifest {
            version,
            position: end,
            horizon,
            created_at: started_at,
            definitions: self
                .definitions
                .iter()
                .map(|d| (d.name.clone(), d.fingerprint()))
                .collect(),
            users: summary.users,
            events: summary.events,
        };
        self.store.publish(&manifest).await?;
        summary.published = true;
        if let Some(previous) = previous {
            // Lag one version: readers holding `previous` still find its data.
            let removed = self
                .store
                .collect_garbage(&previous.position, previous.version)
                .await?;
            info!(
                speed_entries = removed.speed_entries,
                batch_records = removed.batch_records,
                "garbage collected"
            );
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signals_core::testing::event;
    use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions};
    use signals_log::Append;
    use signals_schemas::{EventType, LogRecord, RecordBody, Retraction};
    use signals_store::embedded::EmbeddedStore;

    fn append(body: RecordBody) -> Append {
        let record = LogRecord {
            accepted_at: 0,
            body,
        };
        Append {
            key: record.key().to_owned(),
            bytes: avro::encode(&record),
        }
    }

    /// A run that died after writing rows leaves them under the version the
    /// next run reuses; the next run must overwrite every one of them.
    #[tokio::test]
    async fn a_rerun_overwrites_what_a_crashed_run_wrote() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Arc::new(
            EmbeddedLog::open(&dir.path().join("log"), EmbeddedLogOptions::default()).expect("log"),
        );
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
        let now = chrono::Utc::now().timestamp_millis();
        let mut view = event("e1", EventType::View, "i", now - 1000);
        view.user_id = "x".into();
        log.append(vec![append(RecordBody::Event(view.clone()))])
            .await
            .expect("appended");

        // The crashed run of version 1 wrote x's record, then died.
        let definitions = Arc::new(Definitions::default());
        let stale = signals_core::UserRecord::compact(&definitions, vec![view], 0);
        store
            .write_batch(1, vec![("x".into(), stale)])
            .await
            .expect("written");

        // Meanwhile x's only event is retracted; the rerun publishes version 1.
        let retraction = Retraction {
            event_ids: vec!["e1".into()],
            reason: String::new(),
        };
        log.append(vec![append(RecordBody::Retraction(retraction))])
            .await
            .expect("appended");
        let batch = BatchLayer::new(log, store.clone(), definitions, BatchOptions::default());
        let summary = batch.run(false, &Quiet).await.expect("runs");
        assert_eq!(summary.version, 1);
        assert_eq!(summary.users, 0);
        let history = store.user_history("x").await.expect("history");
        let record = history.record.expect("the rerun wrote x again");
        assert!(record.events.is_empty(), "{record:?}");
    }
}
