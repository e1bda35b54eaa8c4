//! The drift report: what serving answers now, compared with what a fresh
//! recompute of the same log says it should answer.
//!
//! Both sides cover exactly the same log: the recompute reads up to the
//! position serving reflects (the published version's position, or the
//! speed layer's progress where it is further), and speed entries beyond
//! that position (written while verify runs) are left out of the serving
//! side. Both are evaluated at the same `at` with the same core code, so in
//! a healthy deployment every signal of every user agrees; anything else is
//! drift (a lost or doubled write, a corrupted store entry, a speed layer
//! bug). The batch-only corrections (the bot rule) show up as drift until
//! the next batch run applies them. User deletions are taken from the whole
//! log, as `delete-user` erases the store before the speed layer applies
//! the deletion record (one the speed layer has not reached and nobody
//! erased shows as drift until it does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{stream, StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::Value;
use signals_core::{LogPosition, SignalDefinition, UserRecord, UserView};
use signals_schemas::{Millis, RecordBody};
use signals_store::StoreError;

use crate::read::Record;
use crate::recompute::{Keep, Recompute, UserFilter, UserOutcome};
use crate::user_events::UserEvents;
use crate::{read, BatchError, BatchLayer, Phase, Progress, Running};

/// Which users a verify run compares.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    /// Every user seen in the log.
    All,
    /// A stable pseudo-random fraction of them, in `(0, 1]`.
    Fraction(f64),
    /// Exactly these users (seen in the log or not).
    Users(Vec<String>),
}

/// What to verify.
#[derive(Clone, Debug)]
pub struct VerifyRequest {
    pub sample: Sample,
    /// When windows end (default: now).
    pub at: Option<Millis>,
    /// Example mismatches kept per signal.
    pub examples: usize,
}

/// The drift report.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub at: Millis,
    /// The log position both sides cover.
    pub position: LogPosition,
    pub published_version: Option<u64>,
    pub users_compared: u64,
    /// Users the recompute has something for and serving has nothing for.
    pub missing_users: u64,
    /// Users serving has something for and the recompute has nothing for.
    pub extra_users: u64,
    /// Users whose stored data could not be read (corrupt entries).
    pub unreadable_users: u64,
    pub user_examples: Vec<UserProblem>,
    pub signals: Vec<SignalDrift>,
    /// The largest of the signals' mismatch rates and the unreadable rate.
    pub max_mismatch_rate: f64,
}

/// A user missing, extra or unreadable, as an example.
#[derive(Clone, Debug, Serialize)]
pub struct UserProblem {
    pub user_id: String,
    pub problem: String,
}

/// Drift of one signal.
#[derive(Clone, Debug, Serialize)]
pub struct SignalDrift {
    pub name: String,
    pub mismatches: u64,
    pub mismatch_rate: f64,
    /// Users for whom serving reported this signal stale (its definition
    /// changed since the published version).
    pub stale: u64,
    pub examples: Vec<Mismatch>,
}

/// One user's differing value.
#[derive(Clone, Debug, Serialize)]
pub struct Mismatch {
    pub user_id: String,
    pub expected: Value,
    pub actual: Value,
}

/// One user's comparison.
enum Compared {
    Values {
        expected: UserView,
        actual: UserView,
    },
    Unreadable(String),
}

impl BatchLayer {
    /// Compares serving with a fresh recompute for `request`'s users.
    pub async fn verify(
        &self,
        request: VerifyRequest,
        progress: &dyn Progress,
    ) -> Result<VerifyReport, BatchError> {
        let started_at = chrono::Utc::now().timestamp_millis();
        let at = request.at.unwrap_or(started_at);
        let manifest = self.store.published().await?;
        let from = manifest
            .as_ref()
            .map(|m| m.position.clone())
            .unwrap_or_default();
        let mut serving = from.clone();
        for (partition, next) in self.store.speed_progress().await?.position.iter() {
            serving.advance(partition, next);
        }
        // Never past the log's end: a store claiming more is itself drift,
        // and reading would wait for records that do not exist.
        let end = self.log.end().await?;
        let mut covered = LogPosition::new();
        for (partition, next) in serving.iter() {
            covered.advance(partition, next.min(end.next(partition)));
        }
        let running = |phase, done, total| Running {
            version: manifest.as_ref().map_or(0, |m| m.version),
            started_at,
            phase,
            done,
            total,
        };

        let (filter, named) = match &request.sample {
            Sample::All => (None, Vec::new()),
            Sample::Fraction(fraction) => (Some(UserFilter::Fraction(*fraction)), Vec::new()),
            Sample::Users(users) => (
                Some(UserFilter::Ids(users.iter().cloned().collect())),
                users.clone(),
            ),
        };
        let mut recompute = Recompute::new(
            Keep {
                users: filter,
                times: None,
            },
            self.options.dedup_window,
            &self.options.memory(),
        );
        // Deletions count wherever they are: `delete-user` erases the store
        // at once, before the speed layer reaches the deletion record.
        let total = end.total();
        read::read_log(
            self.log.as_ref(),
            &end,
            self.options.read_chunk,
            |partition, offset, record| {
                let deletion = matches!(record, Record::Other(_, RecordBody::UserDeletion(_)));
                if covered.covers(partition, offset) || deletion {
                    recompute.take(record)
                }
            },
            |done| progress.update(&running(Phase::Reading, done, total)),
        )
        .await?;
        // Users are unpacked one by one as they are compared.
        let mut users = recompute.finish(self.options.bot_filter)?;
        // Named users are few: take them at once, to know which ones the
        // log does not hold.
        let mut listed = Vec::new();
        if !named.is_empty() {
            listed = users.by_ref().collect::<Result<Vec<_>, _>>()?;
        }
        let unknown: Vec<(String, UserOutcome)> = named
            .into_iter()
            .filter(|u| !listed.iter().any(|(l, _)| l == u))
            .map(|u| (u, UserOutcome::Events(UserEvents::default())))
            .collect();

        let definitions: Vec<&SignalDefinition> = self.definitions.iter().collect();
        let mut report = VerifyReport {
            at,
            position: covered.clone(),
            published_version: manifest.as_ref().map(|m| m.version),
            users_compared: 0,
            missing_users: 0,
            extra_users: 0,
            unreadable_users: 0,
            user_examples: Vec::new(),
            signals: definitions
                .iter()
                .map(|d| SignalDrift {
                    name: d.name.clone(),
                    mismatches: 0,
                    mismatch_rate: 0.0,
                    stale: 0,
                    examples: Vec::new(),
                })
                .collect(),
            max_mismatch_rate: 0.0,
        };
        // Users are not counted before they are taken: progress goes by
        // the events taken.
        let (taken, entries) = (AtomicU64::new(0), AtomicU64::new(0));
        let version = manifest.as_ref().map(|m| m.version);
        let (from, covered) = (&from, &covered);
        let streamed = std::iter::from_fn(|| {
            let next = users.next();
            let (done, total) = users.progress();
            taken.store(done, Ordering::Relaxed);
            entries.store(total, Ordering::Relaxed);
            next
        });
        let users = listed
            .into_iter()
            .map(Ok)
            .chain(streamed)
            .chain(unknown.into_iter().map(Ok));
        let mut comparisons = stream::iter(users.map(|user| async move {
            let (user, outcome) = user?;
            let compared = self.compare(version, from, covered, &user, outcome).await?;
            Ok::<_, BatchError>((user, compared))
        }))
        .buffered(self.options.read_concurrency.max(1));
        let mut done = 0;
        while let Some((user, compared)) = comparisons.try_next().await? {
            done += 1;
            if done % 1000 == 0 {
                progress.update(&running(
                    Phase::Comparing,
                    taken.load(Ordering::Relaxed),
                    entries.load(Ordering::Relaxed),
                ));
            }
            report.add(user, compared, &definitions, at, request.examples);
        }
        report.finish();
        Ok(report)
    }

    async fn compare(
        &self,
        version: Option<u64>,
        from: &LogPosition,
        covered: &LogPosition,
        user: &str,
        outcome: UserOutcome,
    ) -> Result<Compared, StoreError> {
        let expected = match outcome {
            UserOutcome::Deleted => UserView::default(),
            UserOutcome::Events(events) => UserView::merge(
                Some(Arc::new(UserRecord {
                    horizon: Millis::MIN,
                    events: events.decode().map_err(|e| {
                        StoreError::Backend(format!(
                            "cannot unpack the events of user {user:?}: {e}"
                        ))
                    })?,
                    ..UserRecord::default()
                })),
                [],
            ),
        };
        let record = async {
            match version {
                Some(version) => self.store.batch_record(version, user).await,
                None => Ok(None),
            }
        };
        let (record, speed) = tokio::join!(record, self.store.speed_entries(user, from));
        let (record, speed) = match (record, speed) {
            (Ok(record), Ok(speed)) => (record, speed),
            (Err(StoreError::Corrupt(why)), _) | (_, Err(StoreError::Corrupt(why))) => {
                return Ok(Compared::Unreadable(why))
            }
            (Err(error), _) | (_, Err(error)) => return Err(error),
        };
        let speed = speed
            .into_iter()
            .filter(|p| covered.covers(p.partition, p.offset))
            .map(|p| p.entry);
        Ok(Compared::Values {
            expected,
            actual: UserView::merge(record, speed),
        })
    }
}

impl VerifyReport {
    fn add(
        &mut self,
        user: String,
        compared: Compared,
        definitions: &[&SignalDefinition],
        at: Millis,
        examples: usize,
    ) {
        self.users_compared += 1;
        let (expected, actual) = match compared {
            Compared::Unreadable(why) => {
                self.unreadable_users += 1;
                self.example(user, format!("unreadable: {why}"), examples);
                return;
            }
            Compared::Values { expected, actual } => (expected, actual),
        };
        match (expected.is_empty(), actual.is_empty()) {
            (false, true) => {
                self.missing_users += 1;
                self.example(user.clone(), "missing from serving".into(), examples);
            }
            (true, false) => {
                self.extra_users += 1;
                self.example(
                    user.clone(),
                    "served but absent from the log".into(),
                    examples,
                );
            }
            _ => {}
        }
        let (want, _) = expected.evaluate(definitions, at);
        let (got, stale) = actual.evaluate(definitions, at);
        for (drift, (want, got)) in self.signals.iter_mut().zip(want.into_iter().zip(got)) {
            if stale.iter().any(|s| s.0 == drift.name) {
                drift.stale += 1;
            }
            if want != got {
                drift.mismatches += 1;
                if drift.examples.len() < examples {
                    drift.examples.push(Mismatch {
                        user_id: user.clone(),
                        expected: want,
                        actual: got,
                    });
                }
            }
        }
    }

    fn example(&mut self, user_id: String, problem: String, examples: usize) {
        if self.user_examples.len() < examples {
            self.user_examples.push(UserProblem { user_id, problem });
        }
    }

    fn finish(&mut self) {
        let compared = self.users_compared.max(1) as f64;
        let mut max = self.unreadable_users as f64 / compared;
        for drift in &mut self.signals {
            drift.mismatch_rate = drift.mismatches as f64 / compared;
            max = max.max(drift.mismatch_rate);
        }
        self.max_mismatch_rate = max;
    }
}
