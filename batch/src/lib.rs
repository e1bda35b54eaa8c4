//! The batch layer: recompute signals from the event log and publish the
//! result as a new immutable version.
//!
//! A [`Job::Run`] snapshots the log's end, replays the log from the start
//! up to it with the core's rules ([`recompute`]), writes one record per
//! user under a fresh version and only then publishes the version's
//! manifest, atomically, with the log position it covers. Serving switches
//! at that instant: the new version plus speed entries from its position,
//! so nothing is missing or counted twice. A [`Job::Backfill`] makes the
//! new version from the published one instead, recomputing part of it
//! ([`backfill`]) at the same log position.
//!
//! Runs are resumable: a checkpoint in the store records the version, what
//! the run computes, the log position and start time it fixed, and the last
//! user written. A rerun after a crash with the same plan reads the log up
//! to the same position, skips the users already written and publishes the
//! same version with the same result; a run that dies leaves the previous
//! version in force.

pub mod backfill;
pub mod bots;
pub mod packed;
pub mod read;
pub mod recompute;
mod run;
pub mod spill;
pub mod user_events;
pub mod verify;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use signals_core::{DedupWindow, Definitions, Partition};
use signals_log::{Append, EventLog, LogError};
use signals_schemas::{LogRecord, Millis, RecordBody, UserDeletion};
use signals_store::{BatchStore, StoreError};
use tracing::{info, warn};

pub use bots::BotFilter;
pub use recompute::{Keep, Memory, Recompute, RecomputeError, UserFilter, UserOutcome};
pub use signals_core::operations::{
    Backfill, BatchSummary, Corrections, DeletionReceipt, Job, Phase, Running,
};
pub use verify::{Sample, VerifyReport, VerifyRequest};

/// Tuning of the batch layer.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// How far back `at` may go; raw events are kept for this plus the
    /// widest window, older ones are pre-aggregated.
    pub retention: Millis,
    /// Users per store write (and per checkpoint).
    pub write_chunk: usize,
    /// Records per log read.
    pub read_chunk: usize,
    /// Store reads in flight at once (backfills, verify, dry runs).
    pub read_concurrency: usize,
    /// The bot rule, if any.
    pub bot_filter: Option<BotFilter>,
    /// The deduplication window, the speed layer's own.
    pub dedup_window: DedupWindow,
    /// Bytes of the log a recompute holds while it reads; beyond it, it
    /// spills sorted runs to disk (ADR 012).
    pub memory_budget: usize,
    /// Where spill directories are made (`None`: the system's temporary
    /// directory).
    pub spill_dir: Option<PathBuf>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            retention: 30 * signals_core::time::DAY,
            write_chunk: 5_000,
            read_chunk: 50_000,
            read_concurrency: 64,
            bot_filter: None,
            dedup_window: DedupWindow::DEFAULT,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            spill_dir: None,
        }
    }
}

/// The default of [`BatchOptions::memory_budget`]: with the write path's
/// own memory (the store's cache, a chunk of decoded users) a run stays
/// under 1 GiB whatever the log's size.
pub const DEFAULT_MEMORY_BUDGET: usize = 512 << 20;

impl BatchOptions {
    /// The memory a recompute may use, and where it spills.
    fn memory(&self) -> Memory {
        Memory {
            budget: self.memory_budget,
            spill_in: self.spill_dir.clone().unwrap_or_else(std::env::temp_dir),
        }
    }
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
    #[error("nothing is published yet: run `signals batch run` before a backfill")]
    NothingPublished,
    #[error("{0}")]
    Invalid(String),
    /// A fault of the batch itself, not of its input or backends.
    #[error("internal error: {0}")]
    Internal(String),
    /// The recompute's own files (spilled runs) failed it.
    #[error(transparent)]
    Recompute(#[from] RecomputeError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Packed events decoded at once while writing (about ten times as much
/// decoded), whatever `write_chunk` says: Zipf-heavy users would otherwise
/// make one chunk hold most of the log decoded.
const WRITE_CHUNK_PACKED_BYTES: usize = 8 << 20;

/// Runs the admin endpoint lists.
const HISTORY: usize = 20;

#[derive(Default)]
struct Status {
    running: Option<Running>,
    history: VecDeque<BatchSummary>,
}

/// The batch layer, wired to its backends.
pub struct BatchLayer {
    log: Arc<dyn EventLog>,
    store: Arc<dyn BatchStore>,
    definitions: Arc<Definitions>,
    options: BatchOptions,
    status: Mutex<Status>,
}

impl BatchLayer {
    pub fn new(
        log: Arc<dyn EventLog>,
        store: Arc<dyn BatchStore>,
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
        self.status
            .lock()
            .map(|s| s.history.back().cloned())
            .unwrap_or(None)
    }

    /// The last runs of this process, newest first.
    pub fn history(&self) -> Vec<BatchSummary> {
        self.status
            .lock()
            .map(|s| s.history.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Runs `job` and publishes its version (unless `dry_run`). One run at
    /// a time per process.
    pub async fn run(
        &self,
        job: Job,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<BatchSummary, BatchError> {
        self.run_share(job, None, dry_run, progress).await
    }

    /// Runs one share of `job` split over several workers by log
    /// partition: this process recomputes the users of `partitions` (users
    /// are keyed to partitions), all workers agree on the version, log
    /// position and start time through the store's checkpoint, and the
    /// worker that completes the last share publishes the version.
    pub async fn run_partitions(
        &self,
        job: Job,
        partitions: Vec<Partition>,
        progress: &dyn Progress,
    ) -> Result<BatchSummary, BatchError> {
        if partitions.is_empty() {
            return Err(BatchError::Invalid(
                "--partitions names no partition".into(),
            ));
        }
        self.run_share(job, Some(partitions), false, progress).await
    }

    async fn run_share(
        &self,
        job: Job,
        share: Option<Vec<Partition>>,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<BatchSummary, BatchError> {
        let started = Instant::now();
        let started_at = chrono::Utc::now().timestamp_millis();
        let previous = self.store.published().await?;
        let version = previous.as_ref().map_or(1, |m| m.version + 1);
        self.begin(version, started_at)?;
        let result = self
            .run_version(job, share, version, started_at, dry_run, previous, progress)
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
                if status.history.len() == HISTORY {
                    status.history.pop_front();
                }
                status.history.push_back(summary.clone());
                Ok(summary)
            }
            Err(error) => {
                warn!(version, %error, "batch run failed; the published version is unchanged");
                metrics::counter!("signals_batch_runs_total", "outcome" => "error").increment(1);
                Err(error)
            }
        }
    }

    /// Records a user's deletion in the log (so both layers skip their
    /// events, now and later) and erases them from the store (and cache).
    /// Afterwards the user answers as an unknown user.
    pub async fn delete_user(
        &self,
        user_id: &str,
        reason: &str,
    ) -> Result<DeletionReceipt, BatchError> {
        signals_schemas::rules::check_id("user_id", user_id)
            .map_err(|e| BatchError::Invalid(e.to_string()))?;
        let record = LogRecord {
            accepted_at: chrono::Utc::now().timestamp_millis(),
            body: RecordBody::UserDeletion(UserDeletion {
                user_id: user_id.to_owned(),
                reason: reason.to_owned(),
            }),
        };
        let appended = self.log.append(vec![Append::record(&record)]).await?;
        let Some(&(partition, offset)) = appended.first() else {
            return Err(BatchError::Log(LogError::Unavailable(
                "the log acknowledged no position for the deletion".into(),
            )));
        };
        self.store.erase_user(user_id, (partition, offset)).await?;
        info!(user_id, partition, offset, "user deleted");
        metrics::counter!("signals_users_deleted_total").increment(1);
        Ok(DeletionReceipt {
            user_id: user_id.to_owned(),
            partition,
            offset,
        })
    }

    fn begin(&self, version: u64, started_at: Millis) -> Result<(), BatchError> {
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
        Ok(())
    }

    fn report(&self, progress: &dyn Progress, running: Running) {
        progress.update(&running);
        if let Ok(mut status) = self.status.lock() {
            status.running = Some(running);
        }
    }

    /// Signal name → fingerprint of every definition in force.
    fn fingerprints(&self) -> BTreeMap<String, String> {
        self.definitions
            .iter()
            .map(|d| (d.name.clone(), d.fingerprint()))
            .collect()
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
    use signals_store::{ServingStore, StoreReads};

    fn append(body: RecordBody) -> Append {
        let record = LogRecord {
            accepted_at: 0,
            body,
        };
        Append::record(&record)
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
        let summary = batch.run(Job::Run, false, &Quiet).await.expect("runs");
        assert_eq!(summary.version, 1);
        assert_eq!(summary.users, 0);
        let history = store.user_history("x").await.expect("history");
        let record = history.record.expect("the rerun wrote x again");
        assert!(record.events.is_empty(), "{record:?}");
    }

    /// A dry run publishes nothing and counts what would change; a range
    /// backfill with a new bot rule changes that range only, at the same
    /// log position.
    #[tokio::test]
    async fn dry_runs_and_range_backfills_change_what_they_say() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Arc::new(
            EmbeddedLog::open(&dir.path().join("log"), EmbeddedLogOptions::default()).expect("log"),
        );
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
        let now = chrono::Utc::now().timestamp_millis();
        let minute = (now / 60_000 - 120) * 60_000;
        let of = |user: &str, id: String, time| {
            let mut e = event(&id, EventType::View, "i", time);
            e.user_id = user.into();
            append(RecordBody::Event(e))
        };
        // A bot's burst two hours ago, and an hour later; a person's events.
        let mut records: Vec<Append> = (0..8)
            .map(|i| of("bot", format!("b{i}"), minute + i))
            .collect();
        records.extend((0..8).map(|i| of("bot", format!("c{i}"), minute + 3_600_000 + i)));
        records.extend((0..3).map(|i| of("person", format!("p{i}"), minute + i)));
        log.append(records).await.expect("appended");
        let definitions = Arc::new(Definitions::default());
        let lenient = BatchLayer::new(
            log.clone(),
            store.clone(),
            definitions.clone(),
            BatchOptions::default(),
        );
        let v1 = lenient.run(Job::Run, false, &Quiet).await.expect("runs");
        assert_eq!((v1.version, v1.events), (1, 19));

        let strict = BatchLayer::new(
            log,
            store.clone(),
            definitions,
            BatchOptions {
                bot_filter: Some(BotFilter {
                    max_events_per_minute: 5,
                }),
                ..BatchOptions::default()
            },
        );
        let dry = strict.run(Job::Run, true, &Quiet).await.expect("dry run");
        assert!(!dry.published && dry.dry_run);
        assert_eq!(dry.changed_users, Some(1));
        assert_eq!(dry.corrections.bot_events, 16);
        assert_eq!(
            store.published().await.expect("read").map(|m| m.version),
            Some(1)
        );

        // Only the first burst lies in the range.
        let range = (minute - 60_000, minute + 60_000);
        let backfill = Job::Backfill(Backfill {
            range: Some(range),
            signals: Vec::new(),
        });
        let v2 = strict.run(backfill, false, &Quiet).await.expect("backfill");
        assert_eq!(v2.version, 2);
        assert_eq!(v2.position, v1.position);
        assert_eq!(v2.changed_users, Some(1));
        assert_eq!(v2.events, 11);
        let bot = store
            .batch_record(2, "bot")
            .await
            .expect("read")
            .expect("record");
        assert!(
            bot.events.iter().all(|e| e.event_id.starts_with('c')),
            "{bot:?}"
        );
        let person = store
            .batch_record(2, "person")
            .await
            .expect("read")
            .expect("record");
        assert_eq!(person.events.len(), 3);
    }
}
