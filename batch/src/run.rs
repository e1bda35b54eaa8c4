//! One run of a version, step by step: check the job, claim or resume its
//! checkpoint, read the log, write every user's record, and publish (for a
//! split run: once the last share is done).

use std::sync::Arc;

use futures::{stream, StreamExt, TryStreamExt};
use signals_core::time::floor_hour;
use signals_core::{LogPosition, Partition, SignalDefinition, UserRecord};
use signals_schemas::Millis;
use signals_store::{BatchCheckpoint, BatchManifest, BatchPart, EncodedRecord, StoreError};
use tracing::info;

use crate::recompute::{Keep, Recompute, RecomputeError, Recomputed, UserOutcome};
use crate::user_events::UnpackError;
use crate::{
    backfill, read, Backfill, BatchError, BatchLayer, BatchSummary, Job, Phase, Progress, Running,
    WRITE_CHUNK_PACKED_BYTES,
};

/// What a run is, fixed before anything is read.
struct Run<'a> {
    job: Job,
    version: u64,
    dry_run: bool,
    previous: Option<BatchManifest>,
    /// The signals a backfill recomputes.
    named: Vec<&'a SignalDefinition>,
    /// The log position covered, the start time and the run's horizon.
    position: LogPosition,
    started_at: Millis,
    horizon: Millis,
    progress: &'a dyn Progress,
}

/// Where a run records how far its writing got: the run's own checkpoint,
/// or one worker's share of a split run.
enum Marker {
    Whole(BatchCheckpoint),
    Share(BatchPart),
    /// A dry run records nothing.
    Nowhere,
}

impl Marker {
    fn written_through(&self) -> Option<String> {
        match self {
            Marker::Whole(checkpoint) => checkpoint.written_through.clone(),
            Marker::Share(part) => part.written_through.clone(),
            Marker::Nowhere => None,
        }
    }
}

impl BatchLayer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_version(
        &self,
        job: Job,
        share: Option<Vec<Partition>>,
        version: u64,
        now: Millis,
        dry_run: bool,
        previous: Option<BatchManifest>,
        progress: &dyn Progress,
    ) -> Result<BatchSummary, BatchError> {
        let named = self.check(&job, previous.as_ref(), now)?;
        let checkpoint = self
            .claim(
                &job,
                share.is_some(),
                version,
                now,
                dry_run,
                previous.as_ref(),
            )
            .await?;
        let horizon = match (&job, &previous) {
            (Job::Backfill(_), Some(published)) => published.horizon,
            _ => floor_hour(
                checkpoint.started_at - self.options.retention - self.definitions.max_window(),
            ),
        };
        let run = Run {
            job,
            version,
            dry_run,
            previous,
            named,
            position: checkpoint.position.clone(),
            started_at: checkpoint.started_at,
            horizon,
            progress,
        };
        let mut marker = match share {
            Some(partitions) => Marker::Share(self.share(version, partitions).await?),
            None if dry_run => Marker::Nowhere,
            None => Marker::Whole(checkpoint),
        };

        let (users, mut summary) = self.read(&run, &marker).await?;
        let user_count = self.write(&run, users, &mut marker, &mut summary).await?;
        if dry_run {
            return Ok(summary);
        }
        let (users, events) = match &mut marker {
            Marker::Share(part) => match self.complete_share(&run, part, &mut summary).await? {
                Some(totals) => totals,
                None => return Ok(summary),
            },
            _ => (summary.users, summary.events),
        };
        self.report(
            progress,
            run.running(Phase::Publishing, user_count, user_count),
        );
        self.publish(run, users, events).await?;
        summary.published = true;
        Ok(summary)
    }

    /// Checks the job before anything is read or written; the signals a
    /// backfill names.
    fn check(
        &self,
        job: &Job,
        previous: Option<&BatchManifest>,
        now: Millis,
    ) -> Result<Vec<&SignalDefinition>, BatchError> {
        let Job::Backfill(backfill) = job else {
            return Ok(Vec::new());
        };
        let published = previous.ok_or(BatchError::NothingPublished)?;
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
        Ok(named)
    }

    /// The run's checkpoint: the same plan's, resumed, or a new one fixing
    /// the log position and the start time (saved unless `dry_run`). All
    /// workers of a split run share one, claimed atomically by the first.
    async fn claim(
        &self,
        job: &Job,
        split: bool,
        version: u64,
        now: Millis,
        dry_run: bool,
        previous: Option<&BatchManifest>,
    ) -> Result<BatchCheckpoint, BatchError> {
        let plan = serde_json::to_string(&(
            job,
            self.fingerprints(),
            self.options.bot_filter,
            self.options.retention,
            split,
        ))
        .map_err(|e| BatchError::Invalid(format!("cannot describe the run: {e}")))?;
        if !dry_run && !split {
            if let Some(resumed) = self
                .store
                .batch_checkpoint()
                .await?
                .filter(|c| c.version == version && c.plan == plan)
            {
                info!(version, after = ?resumed.written_through, "resuming a batch run");
                return Ok(resumed);
            }
        }
        let position = match (job, previous) {
            (Job::Backfill(_), Some(published)) => published.position.clone(),
            _ => self.log.end().await?,
        };
        let candidate = BatchCheckpoint {
            version,
            plan,
            position,
            started_at: now,
            written_through: None,
        };
        if dry_run {
            return Ok(candidate);
        }
        if !split {
            self.store.save_batch_checkpoint(Some(&candidate)).await?;
            return Ok(candidate);
        }
        let claimed = self.store.claim_batch_checkpoint(&candidate).await?;
        if claimed.version != version || claimed.plan != candidate.plan {
            return Err(BatchError::Invalid(format!(
                "version {version} is already being computed by a run of another plan (another command or configuration, or an unsplit run); finish it with the same command, or start afresh with `signals batch run` without --partitions"
            )));
        }
        Ok(claimed)
    }

    /// This worker's share of a split run, resumed from its own record.
    async fn share(
        &self,
        version: u64,
        mut partitions: Vec<Partition>,
    ) -> Result<BatchPart, BatchError> {
        partitions.sort_unstable();
        partitions.dedup();
        let parts = self.store.batch_parts(version).await?;
        if let Some(other) = parts.iter().find(|p| {
            p.partitions != partitions && p.partitions.iter().any(|x| partitions.contains(x))
        }) {
            return Err(BatchError::Invalid(format!(
                "partitions {} overlap the share {} of this run: give each worker its own partitions",
                partitions
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                other.name()
            )));
        }
        Ok(parts
            .into_iter()
            .find(|p| p.partitions == partitions)
            .unwrap_or(BatchPart {
                partitions,
                written_through: None,
                done: false,
                users: 0,
                events: 0,
            }))
    }

    /// Reads the log up to the run's position: every user of the run (or
    /// of this worker's share), and a summary of what was read.
    async fn read(
        &self,
        run: &Run<'_>,
        marker: &Marker,
    ) -> Result<(Recomputed, BatchSummary), BatchError> {
        let keep = match &run.job {
            Job::Backfill(Backfill {
                range: Some(range),
                signals,
            }) if signals.is_empty() => Keep {
                users: None,
                times: Some(*range),
            },
            _ => Keep::default(),
        };
        let mine = match marker {
            Marker::Share(part) => Some(part.partitions.clone()),
            _ => None,
        };
        let mut recompute = Recompute::new(keep, self.options.dedup_window, &self.options.memory());
        let total = run.position.total();
        let read = read::read_log(
            self.log.as_ref(),
            &run.position,
            self.options.read_chunk,
            |partition, _, record| match (&mine, record.event_id()) {
                // Another share's user: only the id matters here (dedup).
                (Some(mine), Some(event_id)) if !mine.contains(&partition) => {
                    recompute.see(event_id, record.accepted_at())
                }
                _ => recompute.take(record),
            },
            |done| self.report(run.progress, run.running(Phase::Reading, done, total)),
        )
        .await?;
        let spilled_runs = recompute.spilled_runs();
        let users = recompute.finish(self.options.bot_filter)?;
        if spilled_runs > 0 {
            info!(
                version = run.version,
                spilled_runs,
                budget = self.options.memory_budget,
                "the log did not fit the batch's memory budget: merged from sorted runs on disk"
            );
        }
        let summary = BatchSummary {
            job: run.job.clone(),
            version: run.version,
            position: run.position.clone(),
            horizon: run.horizon,
            started_at: run.started_at,
            duration_ms: 0,
            records_read: read.records,
            undecodable: read.undecodable,
            events: 0,
            users: 0,
            records_written: 0,
            changed_users: (run.dry_run || matches!(run.job, Job::Backfill(_))).then_some(0),
            resumed_after: marker.written_through(),
            partitions: mine,
            waiting_for: Vec::new(),
            corrections: users.corrections(),
            dry_run: run.dry_run,
            published: false,
        };
        Ok((users, summary))
    }

    /// Builds and writes every user's record, chunk by chunk, recording in
    /// `marker` the last user of each chunk written; the number of users.
    async fn write(
        &self,
        run: &Run<'_>,
        mut users: Recomputed,
        marker: &mut Marker,
        summary: &mut BatchSummary,
    ) -> Result<u64, BatchError> {
        let written_before = marker.written_through();
        let mut user_count = 0u64;
        loop {
            let chunk = users.next_chunk(self.options.write_chunk, WRITE_CHUNK_PACKED_BYTES)?;
            if chunk.is_empty() {
                break;
            }
            user_count += chunk.len() as u64;
            let (skipped, fresh): (Vec<_>, Vec<_>) = chunk.into_iter().partition(|(user, _)| {
                written_before
                    .as_deref()
                    .is_some_and(|last| user.as_str() <= last)
            });

            // Users a crashed run already wrote count as they were written.
            for record in self
                .records(run.version, skipped.into_iter().map(|(u, _)| u).collect())
                .await?
                .into_iter()
                .flatten()
            {
                Tally::of(&record).count(summary);
            }
            let published = match (&run.previous, &summary.changed_users) {
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
                let (record, tally) = self.record(run, &user, before.as_deref(), outcome)?;
                if let Some(changed) = summary.changed_users.as_mut() {
                    let record = record.decode()?;
                    if before.as_deref().is_none_or(|b| !same_content(b, &record)) {
                        *changed += 1;
                    }
                }
                tally.count(summary);
                records.push((user, record));
            }
            if !run.dry_run && !records.is_empty() {
                let last = records.last().map(|(user, _)| user.clone());
                summary.records_written += records.len() as u64;
                self.store.write_records(run.version, records).await?;
                match marker {
                    Marker::Whole(checkpoint) => {
                        checkpoint.written_through = last;
                        self.store.save_batch_checkpoint(Some(checkpoint)).await?;
                    }
                    Marker::Share(part) => {
                        part.written_through = last;
                        self.store.save_batch_part(run.version, part).await?;
                    }
                    Marker::Nowhere => {}
                }
            }
            // Users are not counted before they are taken: progress goes by
            // the events taken.
            let (taken, entries) = users.progress();
            self.report(run.progress, run.running(Phase::Writing, taken, entries));
        }
        summary.corrections = users.corrections();
        Ok(user_count)
    }

    /// A user's record in the new version, stored form, and what it counts.
    fn record(
        &self,
        run: &Run<'_>,
        user: &str,
        published: Option<&UserRecord>,
        outcome: UserOutcome,
    ) -> Result<(EncodedRecord, Tally), BatchError> {
        let unpack = |source| RecomputeError::Unpack {
            user: user.to_owned(),
            source,
        };
        let record = match (&run.job, outcome) {
            (Job::Run, UserOutcome::Events(events)) => {
                // Straight from the packed events: a heavy user is never
                // held decoded.
                let made = events
                    .into_record(&self.definitions, run.horizon)
                    .map_err(|error| match error {
                        UnpackError::Postcard(source) => BatchError::from(unpack(source)),
                        UnpackError::Store(error) => BatchError::from(error),
                    })?;
                let tally = Tally::new(made.events, made.has_base, false);
                return Ok((made.record, tally));
            }
            (Job::Run, UserOutcome::Deleted) => UserRecord::erased(run.horizon),
            (Job::Backfill(backfill), outcome) => {
                backfill::merge(published, outcome, backfill, &run.named, run.horizon)
                    .map_err(unpack)?
            }
        };
        Ok((EncodedRecord::of(&record)?, Tally::of(&record)))
    }

    /// Marks this worker's share done; the whole run's users and events
    /// once every share is done, or `None` (and the shares it waits for in
    /// `summary`) while some are not.
    async fn complete_share(
        &self,
        run: &Run<'_>,
        part: &mut BatchPart,
        summary: &mut BatchSummary,
    ) -> Result<Option<(u64, u64)>, BatchError> {
        part.done = true;
        part.users = summary.users;
        part.events = summary.events;
        self.store.save_batch_part(run.version, part).await?;
        let done: Vec<BatchPart> = self
            .store
            .batch_parts(run.version)
            .await?
            .into_iter()
            .filter(|p| p.done)
            .collect();
        summary.waiting_for = run
            .position
            .iter()
            .filter(|&(p, next)| next > 0 && !done.iter().any(|d| d.partitions.contains(&p)))
            .map(|(p, _)| p)
            .collect();
        if !summary.waiting_for.is_empty() {
            info!(version = run.version, waiting_for = ?summary.waiting_for, "share done; the version publishes with the last share");
            return Ok(None);
        }
        Ok(Some((
            done.iter().map(|p| p.users).sum(),
            done.iter().map(|p| p.events).sum(),
        )))
    }

    /// Publishes the version, then collects what the previous one no
    /// longer needs.
    async fn publish(&self, run: Run<'_>, users: u64, events: u64) -> Result<(), BatchError> {
        let definitions = match (&run.job, &run.previous) {
            (Job::Backfill(_), Some(published)) => {
                backfill::definitions_after(&published.definitions, &run.named)
            }
            _ => self.fingerprints(),
        };
        let manifest = BatchManifest {
            version: run.version,
            position: run.position,
            horizon: run.horizon,
            created_at: run.started_at,
            definitions,
            users,
            events,
        };
        self.store.publish(&manifest).await?;
        self.store.save_batch_checkpoint(None).await?;
        if let Some(previous) = run.previous {
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
        Ok(())
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

impl Run<'_> {
    fn running(&self, phase: Phase, done: u64, total: u64) -> Running {
        Running {
            version: self.version,
            started_at: self.started_at,
            phase,
            done,
            total,
        }
    }
}

/// Counts `record`, if any, in `summary`'s users and events.
/// What a run's summary counts of one user's record.
struct Tally {
    /// 1 if the record holds anything that counts.
    users: u64,
    /// Raw events it keeps.
    events: u64,
}

impl Tally {
    /// A record of `events` raw events, with base states or not: a user
    /// counts if it holds anything and is not deleted.
    fn new(events: u64, has_base: bool, deleted: bool) -> Tally {
        Tally {
            users: u64::from((events > 0 || has_base) && !deleted),
            events,
        }
    }

    fn of(record: &UserRecord) -> Tally {
        let events = record.events.len() as u64;
        Tally::new(events, !record.base.is_empty(), record.deleted)
    }

    fn count(self, summary: &mut BatchSummary) {
        summary.users += self.users;
        summary.events += self.events;
    }
}

/// Whether two records of a user hold the same history: their pre-aggregated
/// states are compared only when they share a horizon.
fn same_content(a: &UserRecord, b: &UserRecord) -> bool {
    a.deleted == b.deleted && a.events == b.events && (a.horizon != b.horizon || a.base == b.base)
}
