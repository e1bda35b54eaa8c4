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
mod read;
pub mod recompute;
pub mod verify;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{stream, StreamExt, TryStreamExt};
use serde::Serialize;
use signals_core::time::floor_hour;
use signals_core::{Definitions, LogPosition, Partition, SignalDefinition, UserRecord};
use signals_log::{Append, EventLog, LogError};
use signals_schemas::{LogRecord, Millis, RecordBody, UserDeletion};
use signals_store::{BatchCheckpoint, BatchManifest, BatchPart, SignalStore, StoreError};
use tracing::{info, warn};

pub use backfill::Backfill;
pub use bots::BotFilter;
pub use recompute::{Corrections, Keep, Recompute, UserFilter, UserOutcome};
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
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            retention: 30 * signals_core::time::DAY,
            write_chunk: 5_000,
            read_chunk: 50_000,
            read_concurrency: 64,
            bot_filter: None,
        }
    }
}

/// What a run computes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// Everything, from the whole log up to its current end.
    Run,
    /// Part of the published version, at its log position.
    Backfill(Backfill),
}

/// What one run did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchSummary {
    pub job: Job,
    pub version: u64,
    pub position: LogPosition,
    pub horizon: Millis,
    pub started_at: Millis,
    pub duration_ms: u64,
    pub records_read: u64,
    pub undecodable: u64,
    /// Raw events kept in the version's records.
    pub events: u64,
    /// Users with something that counts.
    pub users: u64,
    /// Records (one per user seen in the log) written by this process.
    pub records_written: u64,
    /// Users whose record differs from the published version's (backfills
    /// and dry runs, which read the published records).
    pub changed_users: Option<u64>,
    /// A resumed run skipped the users up to this one, already written.
    pub resumed_after: Option<String>,
    /// The log partitions this process recomputed, when the run was split
    /// (`--partitions`); its counts are then those of its share.
    pub partitions: Option<Vec<Partition>>,
    /// Partitions whose share is not done yet: the version publishes when
    /// the last share is done, by whichever worker finishes it.
    pub waiting_for: Vec<Partition>,
    pub corrections: Corrections,
    pub dry_run: bool,
    pub published: bool,
}

/// The phase a running batch is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Reading,
    Writing,
    Publishing,
    Comparing,
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
    #[error("nothing is published yet: run `signals batch run` before a backfill")]
    NothingPublished,
    #[error("{0}")]
    Invalid(String),
    /// A fault of the batch itself, not of its input or backends.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a user's deletion was recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeletionReceipt {
    pub user_id: String,
    /// The log position of the `UserDeletion` record.
    pub partition: u32,
    pub offset: u64,
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

    #[allow(clippy::too_many_arguments)]
    async fn run_version(
        &self,
        job: Job,
        share: Option<Vec<Partition>>,
        version: u64,
        now: Millis,
        dry_run: bool,
        previous: Option<BatchManifest>,
        progress: &dyn Progress,
    ) -> Result<BatchSummary, BatchError> {
        // Check the job before anything is read or written.
        let named: Vec<&SignalDefinition> = match &job {
            Job::Run => Vec::new(),
            Job::Backfill(backfill) => {
                let published = previous.as_ref().ok_or(BatchError::NothingPublished)?;
                let named = self
                    .definitions
                    .select(&backfill.signals)
                    .map_err(|name| BatchError::Invalid(format!("unknown signal `{name}`")))?;
                backfill::check(
                    backfill,
                    &named,
                    published.horizon,
                    self.options.retention,
                    now,
                )
                .map_err(BatchError::Invalid)?;
                named
            }
        };
        let plan = serde_json::to_string(&(
            &job,
            self.fingerprints(),
            self.options.bot_filter,
            self.options.retention,
            share.is_some(),
        ))
        .map_err(|e| BatchError::Invalid(format!("cannot describe the run: {e}")))?;

        // Resume the same plan's checkpoint, or fix position and start time.
        let checkpoint = match (dry_run, &share) {
            (true, _) => None,
            (false, None) => self
                .store
                .batch_checkpoint()
                .await?
                .filter(|c| c.version == version && c.plan == plan),
            (false, Some(_)) => {
                // All workers of a split run share one checkpoint: the first
                // claim fixes position and start time for every share.
                let position = match (&job, &previous) {
                    (Job::Backfill(_), Some(published)) => published.position.clone(),
                    _ => self.log.end().await?,
                };
                let candidate = BatchCheckpoint {
                    version,
                    plan: plan.clone(),
                    position,
                    started_at: now,
                    written_through: None,
                };
                let claimed = self.store.claim_batch_checkpoint(&candidate).await?;
                if claimed.version != version || claimed.plan != plan {
                    return Err(BatchError::Invalid(format!(
                        "version {version} is already being computed by a run of another plan (another command or configuration, or an unsplit run); finish it with the same command, or start afresh with `signals batch run` without --partitions"
                    )));
                }
                Some(claimed)
            }
        };
        let mut checkpoint = match checkpoint {
            Some(checkpoint) => {
                info!(version, after = ?checkpoint.written_through, "resuming a batch run");
                checkpoint
            }
            None => {
                let position = match (&job, &previous) {
                    (Job::Backfill(_), Some(published)) => published.position.clone(),
                    _ => self.log.end().await?,
                };
                let checkpoint = BatchCheckpoint {
                    version,
                    plan,
                    position,
                    started_at: now,
                    written_through: None,
                };
                if !dry_run {
                    self.store.save_batch_checkpoint(Some(&checkpoint)).await?;
                }
                checkpoint
            }
        };
        let started_at = checkpoint.started_at;
        let position = checkpoint.position.clone();
        let horizon = match (&job, &previous) {
            (Job::Backfill(_), Some(published)) => published.horizon,
            _ => floor_hour(started_at - self.options.retention - self.definitions.max_window()),
        };
        let running = |phase, done, total| Running {
            version,
            started_at,
            phase,
            done,
            total,
        };

        // A worker's share: resumed from its own record.
        let mut part = match &share {
            None => None,
            Some(partitions) => {
                let mut partitions = partitions.clone();
                partitions.sort_unstable();
                partitions.dedup();
                let parts = self.store.batch_parts(version).await?;
                if let Some(other) = parts.iter().find(|p| {
                    p.partitions != partitions
                        && p.partitions.iter().any(|x| partitions.contains(x))
                }) {
                    return Err(BatchError::Invalid(format!(
                        "partitions {} overlap the share {} of this run: give each worker its own partitions",
                        partitions.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","),
                        other.name()
                    )));
                }
                Some(
                    parts
                        .into_iter()
                        .find(|p| p.partitions == partitions)
                        .unwrap_or(BatchPart {
                            partitions,
                            written_through: None,
                            done: false,
                            users: 0,
                            events: 0,
                        }),
                )
            }
        };
        let written_before = match &part {
            Some(part) => part.written_through.clone(),
            None => checkpoint.written_through.clone(),
        };

        // Read the log up to the run's position.
        let keep = match &job {
            Job::Backfill(Backfill {
                range: Some(range),
                signals,
            }) if signals.is_empty() => Keep {
                users: None,
                times: Some(*range),
            },
            _ => Keep::default(),
        };
        let mut recompute = Recompute::new(keep);
        let total = position.total();
        let mine = part.as_ref().map(|p| p.partitions.clone());
        let read = read::read_log(
            self.log.as_ref(),
            &position,
            self.options.read_chunk,
            |partition, _, body| match (&mine, body) {
                // Another share's user: only the id matters here (dedup).
                (Some(mine), RecordBody::Event(event)) if !mine.contains(&partition) => {
                    recompute.see(&event.event_id)
                }
                (_, body) => recompute.add(body),
            },
            |done| self.report(progress, running(Phase::Reading, done, total)),
        )
        .await?;
        let mut users = recompute
            .finish(self.options.bot_filter)
            .map_err(BatchError::Internal)?;

        let mut summary = BatchSummary {
            job: job.clone(),
            version,
            position: position.clone(),
            horizon,
            started_at,
            duration_ms: 0,
            records_read: read.records,
            undecodable: read.undecodable,
            events: 0,
            users: 0,
            records_written: 0,
            changed_users: (dry_run || matches!(job, Job::Backfill(_))).then_some(0),
            resumed_after: written_before.clone(),
            partitions: mine.clone(),
            waiting_for: Vec::new(),
            corrections: users.corrections(),
            dry_run,
            published: false,
        };

        // Build and write every user's record, chunk by chunk.
        let user_count = users.remaining() as u64;
        let mut done = 0u64;
        while users.remaining() > 0 {
            let chunk = users
                .next_chunk(self.options.write_chunk, WRITE_CHUNK_PACKED_BYTES)
                .map_err(BatchError::Internal)?;
            done += chunk.len() as u64;
            let (skipped, fresh): (Vec<_>, Vec<_>) = chunk.into_iter().partition(|(user, _)| {
                written_before
                    .as_deref()
                    .is_some_and(|last| user.as_str() <= last)
            });

            // Users a crashed run already wrote count as they were written.
            for record in self
                .records(version, skipped.into_iter().map(|(u, _)| u).collect())
                .await?
            {
                summary.count(record.as_deref());
            }
            let published = match (&previous, &summary.changed_users) {
                (Some(published), Some(_)) => Some(
                    self.records(
                        published.version,
                        fresh.iter().map(|(u, _)| u.clone()).collect(),
                    )
                    .await?,
                ),
                _ => None,
            };
            let mut records = Vec::with_capacity(fresh.len());
            for (i, (user, outcome)) in fresh.into_iter().enumerate() {
                let before = published.as_ref().and_then(|p| p[i].clone());
                let record = match &job {
                    Job::Run => match outcome {
                        UserOutcome::Deleted => UserRecord::erased(horizon),
                        UserOutcome::Events(events) => {
                            UserRecord::compact(&self.definitions, events, horizon)
                        }
                    },
                    Job::Backfill(backfill) => {
                        backfill::merge(before.as_deref(), outcome, backfill, &named, horizon)
                    }
                };
                if let Some(changed) = summary.changed_users.as_mut() {
                    if before.as_deref().is_none_or(|b| !same_content(b, &record)) {
                        *changed += 1;
                    }
                }
                summary.count(Some(&record));
                records.push((user, record));
            }
            if !dry_run && !records.is_empty() {
                let last = records.last().map(|(user, _)| user.clone());
                summary.records_written += records.len() as u64;
                self.store.write_batch(version, records).await?;
                match part.as_mut() {
                    Some(part) => {
                        part.written_through = last;
                        self.store.save_batch_part(version, part).await?;
                    }
                    None => {
                        checkpoint.written_through = last;
                        self.store.save_batch_checkpoint(Some(&checkpoint)).await?;
                    }
                }
            }
            self.report(progress, running(Phase::Writing, done, user_count));
        }
        summary.corrections = users.corrections();
        if dry_run {
            return Ok(summary);
        }
        // A share publishes only once every share is done.
        let (mut users_total, mut events_total) = (summary.users, summary.events);
        if let Some(part) = part.as_mut() {
            part.done = true;
            part.users = summary.users;
            part.events = summary.events;
            self.store.save_batch_part(version, part).await?;
            let done: Vec<BatchPart> = self
                .store
                .batch_parts(version)
                .await?
                .into_iter()
                .filter(|p| p.done)
                .collect();
            summary.waiting_for = position
                .iter()
                .filter(|&(p, next)| next > 0 && !done.iter().any(|d| d.partitions.contains(&p)))
                .map(|(p, _)| p)
                .collect();
            if !summary.waiting_for.is_empty() {
                info!(version, waiting_for = ?summary.waiting_for, "share done; the version publishes with the last share");
                return Ok(summary);
            }
            users_total = done.iter().map(|p| p.users).sum();
            events_total = done.iter().map(|p| p.events).sum();
        }

        // Publish, then collect what the previous version no longer needs.
        self.report(progress, running(Phase::Publishing, done, user_count));
        let definitions = match (&job, &previous) {
            (Job::Backfill(_), Some(published)) => {
                backfill::definitions_after(&published.definitions, &named)
            }
            _ => self.fingerprints(),
        };
        let manifest = BatchManifest {
            version,
            position,
            horizon,
            created_at: started_at,
            definitions,
            users: users_total,
            events: events_total,
        };
        self.store.publish(&manifest).await?;
        self.store.save_batch_checkpoint(None).await?;
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

    /// The records of `users` in `version`, in their order.
    async fn records(
        &self,
        version: u64,
        users: Vec<String>,
    ) -> Result<Vec<Option<Arc<UserRecord>>>, StoreError> {
        let reads = users.into_iter().map(|user| {
            let store = self.store.clone();
            async move { store.batch_record(version, &user).await }
        });
        stream::iter(reads)
            .buffered(self.options.read_concurrency.max(1))
            .try_collect()
            .await
    }
}

impl BatchSummary {
    fn count(&mut self, record: Option<&UserRecord>) {
        if let Some(record) = record {
            let counts = !record.events.is_empty() || !record.base.is_empty();
            if counts && !record.deleted {
                self.users += 1;
            }
            self.events += record.events.len() as u64;
        }
    }
}

/// Whether two records of a user hold the same history: their pre-aggregated
/// states are compared only when they share a horizon.
fn same_content(a: &UserRecord, b: &UserRecord) -> bool {
    a.deleted == b.deleted && a.events == b.events && (a.horizon != b.horizon || a.base == b.base)
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
