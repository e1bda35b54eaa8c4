//! The worker's loop: poll the log, wait for the speed layer, fire timers,
//! evaluate, write once, commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use signals_core::{Definitions, LogPosition, Segments, SignalDefinition, UserView};
use signals_log::{EventLog, LogError};
use signals_schemas::{now_millis, Millis, RecordBody};
use signals_store::insights::{
    Change, FeedEntry, InsightsProgress, Membership, MembershipUpdate, Transition,
};
use signals_store::{InsightsStore, ServingStore, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum InsightsError {
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The feed's other destination (Kafka) failed; retried from its own
    /// record of what it holds.
    #[error("{0}")]
    Sink(String),
    /// The worker was given segments and definitions that cannot work
    /// together; no retry or restart can cure it.
    #[error("configuration: {0}")]
    Configuration(String),
}

impl InsightsError {
    /// Whether retrying later may succeed (a backend that is down).
    pub fn is_transient(&self) -> bool {
        match self {
            InsightsError::Log(e) => e.is_retryable(),
            InsightsError::Store(e) => e.is_retryable(),
            InsightsError::Sink(_) => true,
            InsightsError::Configuration(_) => false,
        }
    }

    /// Whether the worker's configuration is at fault, so restarting it
    /// cannot help (everything else may be cured by a restart: a replay
    /// from the durable progress, a new subscription, new connections).
    pub fn is_configuration(&self) -> bool {
        matches!(self, InsightsError::Configuration(_))
    }
}

/// Tuning of the worker.
#[derive(Clone, Debug)]
pub struct InsightsOptions {
    /// The worker's consumer group on the log (not the speed layer's).
    pub group: String,
    /// Most log records per pass.
    pub max_batch: usize,
    /// Longest wait for a record when no timer is due sooner (the worker
    /// wakes at the next timer due within it).
    pub poll_wait: Duration,
    /// Most due timers fired per pass (the rest fire in the next passes).
    pub max_due: usize,
    /// Most instants one user's walk visits per pass.
    pub max_steps: usize,
    /// Pause before retrying after a backend failure.
    pub retry_pause: Duration,
}

impl Default for InsightsOptions {
    fn default() -> Self {
        InsightsOptions {
            group: "signals-insights".into(),
            max_batch: 5_000,
            poll_wait: Duration::from_millis(200),
            max_due: 10_000,
            max_steps: 10_000,
            retry_pause: Duration::from_secs(1),
        }
    }
}

/// Published transitions go here too (Kafka's `signals.segments`), from the
/// durable feed, in cursor order.
#[async_trait::async_trait]
pub trait ChangeSink: Send + Sync {
    /// The cursor of the last entry this sink durably holds (0: none).
    async fn published_until(&self) -> Result<u64, InsightsError>;
    /// Publishes `entries` (consecutive cursors) durably, all or none.
    async fn publish(&self, entries: &[FeedEntry]) -> Result<(), InsightsError>;
}

/// The worker; cheap to clone.
#[derive(Clone)]
pub struct InsightsWorker {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn ServingStore>,
    pub insights: Arc<dyn InsightsStore>,
    pub definitions: Arc<Definitions>,
    pub segments: Arc<Segments>,
    pub sink: Option<Arc<dyn ChangeSink>>,
    pub options: InsightsOptions,
}

impl InsightsWorker {
    /// Runs until `shutdown`; backend failures are retried after a pause.
    /// Any other error ends the run: the caller may run it again (it
    /// resumes from the durable progress), except after a
    /// [`InsightsError::Configuration`].
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), InsightsError> {
        self.check_configuration()?;
        if self.segments.is_empty() {
            info!("no segments configured; the insights worker has nothing to do");
            shutdown.cancelled().await;
            return Ok(());
        }
        loop {
            match self.run_once(&shutdown).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_transient() => {
                    warn!(%error, "insights worker waits for a backend");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(self.options.retry_pause) => {}
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One subscription's life: resume from the durable progress, then pass
    /// after pass until `shutdown` or an error.
    async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), InsightsError> {
        let progress = self.insights.insights_progress().await?;
        info!(position = ?progress.position, next_cursor = progress.next_cursor, "insights worker starting");
        let mut reader = self
            .log
            .subscribe(&self.options.group, &progress.position)
            .await?;
        let mut sink_cursor = match &self.sink {
            Some(sink) => Some(sink.published_until().await?),
            None => None,
        };
        self.drain_to_sink(&mut sink_cursor).await?;
        let mut wake = None;
        while !shutdown.is_cancelled() {
            // Records end the wait at once; otherwise the next timer does.
            let wait = wake.map_or(self.options.poll_wait, |at: Millis| {
                let until = u64::try_from(at.saturating_sub(now_millis())).unwrap_or(0);
                self.options.poll_wait.min(Duration::from_millis(until))
            });
            let entries = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                polled = reader.next_batch(self.options.max_batch, wait) => polled?,
            };
            let position = reader.position();
            let touched = self.touched_users(&entries).await?;
            if !self.wait_for_speed(&position, shutdown).await? {
                break;
            }
            let (published, next_wake) = self.pass(touched, &position).await?;
            wake = next_wake;
            if published > 0 {
                self.drain_to_sink(&mut sink_cursor).await?;
            }
            reader.commit(&position).await?;
        }
        Ok(())
    }

    /// The users whose history `entries` change.
    async fn touched_users(
        &self,
        entries: &[signals_log::LogEntry],
    ) -> Result<BTreeSet<String>, InsightsError> {
        let mut users = BTreeSet::new();
        let mut retracted = Vec::new();
        for entry in entries {
            // Undecodable records are the speed layer's to dead-letter.
            let Ok(record) = signals_schemas::avro::decode(&entry.bytes) else {
                continue;
            };
            match record.body {
                RecordBody::Event(event) => {
                    users.insert(event.user_id.to_string());
                }
                RecordBody::UserDeletion(deletion) => {
                    users.insert(deletion.user_id);
                }
                RecordBody::Retraction(retraction) => retracted.extend(retraction.event_ids),
            }
        }
        if !retracted.is_empty() {
            let index = self.store.lookup_events(&retracted).await?;
            users.extend(index.into_values().filter_map(|entry| entry.user_id));
        }
        Ok(users)
    }

    /// Waits until the speed layer has durably applied everything before
    /// `position`; false when shut down meanwhile.
    async fn wait_for_speed(
        &self,
        position: &LogPosition,
        shutdown: &CancellationToken,
    ) -> Result<bool, InsightsError> {
        // The speed layer usually applies a batch within milliseconds of
        // the worker reading it: look again soon, then less often.
        let mut pause = Duration::from_millis(1);
        loop {
            if self
                .store
                .speed_progress()
                .await?
                .position
                .reaches(position)
            {
                return Ok(true);
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Evaluates the `touched` users and every user whose timer is due, and
    /// writes the result with `position` in one durable step. Returns the
    /// number of transitions published and when the next timer known to
    /// this pass is due, if before the next `poll_wait` ends.
    async fn pass(
        &self,
        touched: BTreeSet<String>,
        position: &LogPosition,
    ) -> Result<(usize, Option<Millis>), InsightsError> {
        let now = now_millis();
        // The timers due by now fire; the earliest of the others due
        // within the next poll wait is when to wake (the same read).
        let horizon = now.saturating_add(
            Millis::try_from(self.options.poll_wait.as_millis()).unwrap_or(Millis::MAX),
        );
        let mut due = self.insights.due(horizon, self.options.max_due).await?;
        let later = due.partition_point(|(at, _)| *at <= now);
        let mut wake = if later == due.len() && due.len() == self.options.max_due {
            // More are due by now than one pass fires: go on at once.
            Some(now)
        } else {
            due.get(later).map(|(at, _)| *at)
        };
        due.truncate(later);
        let mut users: BTreeMap<String, ()> = touched.into_iter().map(|u| (u, ())).collect();
        let timers_fired = due.len();
        users.extend(due.into_iter().map(|(_, user)| (user, ())));
        if users.is_empty() {
            let progress = self.insights.insights_progress().await?;
            if progress.position.reaches(position) {
                return Ok((0, wake));
            }
        }
        let users: Vec<String> = users.into_keys().collect();
        let recorded = self.insights.memberships(&users).await?;
        let definitions = self.segment_definitions();
        let mut updates = Vec::new();
        for user in users {
            let history = self.store.served_history(&user).await?;
            let view = UserView::with_tail(history.record, history.tail);
            let previous = recorded.get(&user).cloned();
            let before = previous
                .as_ref()
                .map(|m| m.segments.clone())
                .unwrap_or_default();
            // Never evaluate a user before the instant they were last
            // evaluated at: that would undo transitions already published.
            let floor = previous.as_ref().map_or(Millis::MIN, |m| m.evaluated_at);
            let due = previous.as_ref().and_then(|m| m.due).filter(|d| *d > floor);
            let until = now.max(floor);
            let walk = self.segments.walk(
                &view,
                &definitions,
                &before,
                due,
                until,
                self.options.max_steps,
            );
            let next = Membership {
                segments: walk.segments,
                evaluated_at: walk.at,
                due: walk.next_due,
            };
            if previous.as_ref() == Some(&next) {
                continue;
            }
            let transitions = walk
                .transitions
                .into_iter()
                .map(|(at, segment, entered)| Transition {
                    user_id: user.clone(),
                    segment,
                    change: if entered {
                        Change::Entered
                    } else {
                        Change::Left
                    },
                    at,
                })
                .collect();
            updates.push(MembershipUpdate {
                user_id: user,
                previous,
                next,
                transitions,
            });
        }
        // Timers this pass sets may be due before the next poll ends.
        for update in &updates {
            if let Some(at) = update.next.due.filter(|at| *at <= horizon) {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        let users_updated = updates.len();
        let applied = self
            .insights
            .apply_insights(
                updates,
                InsightsProgress {
                    position: position.clone(),
                    evaluated_until: Some(now),
                    next_cursor: 0,
                },
            )
            .await?;
        metrics::counter!("signals_insights_transitions_total")
            .increment(applied.published.len() as u64);
        metrics::counter!("signals_insights_timers_fired_total").increment(timers_fired as u64);
        if applied.conflicts > 0 {
            warn!(
                conflicts = applied.conflicts,
                "memberships changed under the worker; another worker is running"
            );
        }
        if let Some(last) = applied.published.last() {
            metrics::gauge!("signals_insights_publish_delay_seconds")
                .set((now - last.transition.at).max(0) as f64 / 1000.0);
        }
        tracing::debug!(
            users_updated,
            published = applied.published.len(),
            "insights pass"
        );
        Ok((applied.published.len(), wake))
    }

    /// Every signal a segment rule reads has a definition (segments are
    /// compiled against the same definitions at start-up; this catches a
    /// worker wired with another set, which would evaluate rules on
    /// missing values).
    fn check_configuration(&self) -> Result<(), InsightsError> {
        let missing: Vec<&str> = self
            .segments
            .signals()
            .into_iter()
            .filter(|name| self.definitions.get(name).is_none())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(InsightsError::Configuration(format!(
                "the segment rules read signals that have no definition: {}",
                missing.join(", ")
            )))
        }
    }

    /// The definitions the segment rules read.
    fn segment_definitions(&self) -> Vec<&SignalDefinition> {
        self.segments
            .signals()
            .into_iter()
            .filter_map(|name| self.definitions.get(name))
            .collect()
    }

    /// Sends the feed from the sink's cursor on.
    async fn drain_to_sink(&self, cursor: &mut Option<u64>) -> Result<(), InsightsError> {
        let (Some(sink), Some(from)) = (&self.sink, cursor.as_mut()) else {
            return Ok(());
        };
        loop {
            let entries = self.insights.segment_changes(*from, 1_000).await?;
            let Some(last) = entries.last() else {
                return Ok(());
            };
            let last = last.cursor;
            sink.publish(&entries).await?;
            *from = last;
        }
    }
}
