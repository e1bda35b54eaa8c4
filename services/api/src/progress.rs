//! The speed layer's progress and the log's end, as each answer's
//! `freshness` reports them, read in the background and never waited on
//! for long.
//!
//! Reading them costs a scan of the progress table and, on Kafka, one
//! watermark request per partition, each of which can take the Kafka
//! timeout when a broker is away. Answers only report these positions
//! (values come from the store alone), so they must not queue behind them:
//!
//! * one reading is shared by the answers made within
//!   [`ProgressReadings::MAX_AGE`] of each other;
//! * a new reading is taken by one background task at a time, started
//!   [`ProgressReadings::REFRESH_AHEAD`] into the current one's life, so
//!   that under steady traffic it lands before that one expires and no
//!   answer waits for it. Otherwise an answer waits for it at most
//!   [`ProgressReadings::WAIT`], then goes out with the last reading it has
//!   and says so (`freshness.positions_stale`);
//! * an append acknowledged by this process discards the reading, so a
//!   fresh `log_end` includes every append this process acknowledged before
//!   the request came;
//! * each reading's log end is told to the store
//!   ([`ServingStore::log_end_seen`]): a store that follows the speed
//!   writes, and slows down while they are quiet, is brought back to its
//!   fast pace when answers find the log ahead of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signals_core::LogPosition;
use signals_log::EventLog;
use signals_store::{ServingStore, SpeedProgress};
use tokio::sync::Notify;

/// Shared readings of the speed layer's progress and the log's end.
pub struct ProgressReadings {
    max_age: Duration,
    refresh_ahead: Duration,
    /// Bumped by every append; a reading taken at another one is stale.
    generation: AtomicU64,
    latest: Mutex<Option<Arc<Reading>>>,
    /// Why the last attempt at a reading failed, and when.
    failure: Mutex<Option<(Instant, String)>>,
    refreshing: AtomicBool,
    refreshed: Notify,
}

struct Reading {
    generation: u64,
    taken: Instant,
    progress: SpeedProgress,
    end: LogPosition,
}

/// The log's end as an answer reports it, with the staleness of the
/// reading it comes from (the speed layer's progress is read with it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogEnd {
    pub position: LogPosition,
    /// `None` when read for this answer; else why and how old the reading is.
    pub stale: Option<String>,
}

impl Default for ProgressReadings {
    fn default() -> Self {
        ProgressReadings::with_ages(Self::MAX_AGE, Self::REFRESH_AHEAD)
    }
}

impl ProgressReadings {
    /// How long a reading serves answers.
    pub const MAX_AGE: Duration = Duration::from_millis(20);
    /// How old a reading is when the next one is started. Answers that
    /// came while a reading was under way once it had expired waited for
    /// it: on Kafka and CQL a reading takes a few milliseconds, and more
    /// under load, so every 20 ms a slice of the answers did, and that was
    /// the p99 of serving on the real stack (docs/BENCHMARKS.md, session
    /// 21).
    pub const REFRESH_AHEAD: Duration = Duration::from_millis(12);
    /// Longest an answer waits for a new reading.
    pub const WAIT: Duration = Duration::from_millis(100);

    fn with_ages(max_age: Duration, refresh_ahead: Duration) -> ProgressReadings {
        ProgressReadings {
            max_age,
            refresh_ahead,
            generation: AtomicU64::default(),
            latest: Mutex::default(),
            failure: Mutex::default(),
            refreshing: AtomicBool::default(),
            refreshed: Notify::default(),
        }
    }

    /// Discards the current reading (call after an append).
    pub fn appended(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A reading no older than [`Self::MAX_AGE`] and no older than the
    /// last append, or, if none comes within [`Self::WAIT`], the last one
    /// marked stale with the reason.
    pub async fn read(
        self: &Arc<Self>,
        store: &Arc<dyn ServingStore>,
        log: &Arc<dyn EventLog>,
    ) -> (SpeedProgress, LogEnd) {
        let asked = Instant::now();
        let generation = self.generation.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Self::WAIT;
        loop {
            if let Some(reading) = self.usable(generation, asked) {
                if reading.taken.elapsed() >= self.refresh_ahead {
                    self.refresh(store, log);
                }
                let end = LogEnd {
                    position: reading.end.clone(),
                    stale: None,
                };
                return (reading.progress.clone(), end);
            }
            let refreshed = self.refreshed.notified();
            tokio::pin!(refreshed);
            refreshed.as_mut().enable();
            self.refresh(store, log);
            // A reading may have landed between the check and `enable`.
            if self.usable(generation, asked).is_some() {
                continue;
            }
            let failed_since =
                |f: &Option<(Instant, String)>| f.as_ref().is_some_and(|(at, _)| *at >= asked);
            if self.failure.lock().is_ok_and(|f| failed_since(&f)) {
                return self.stale();
            }
            if tokio::time::timeout_at(deadline, refreshed).await.is_err() {
                return self.stale();
            }
        }
    }

    /// The latest reading, if it may serve an answer asked at `asked`
    /// after the append numbered `generation`: taken after both, or at
    /// most `max_age` old ([`Self::MAX_AGE`] outside tests).
    fn usable(&self, generation: u64, asked: Instant) -> Option<Arc<Reading>> {
        let latest = self.latest.lock().ok()?.clone()?;
        let recent = latest.taken >= asked || latest.taken.elapsed() < self.max_age;
        (latest.generation >= generation && recent).then_some(latest)
    }

    /// Starts a reading in the background unless one is under way.
    fn refresh(self: &Arc<Self>, store: &Arc<dyn ServingStore>, log: &Arc<dyn EventLog>) {
        if self
            .refreshing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        let (readings, store, log) = (self.clone(), store.clone(), log.clone());
        tokio::spawn(async move {
            let generation = readings.generation.load(Ordering::SeqCst);
            let taken = Instant::now();
            let (progress, end) = tokio::join!(store.speed_progress(), log.end());
            match (progress, end) {
                (Ok(progress), Ok(end)) => {
                    store.log_end_seen(&end);
                    if let Ok(mut latest) = readings.latest.lock() {
                        *latest = Some(Arc::new(Reading {
                            generation,
                            taken,
                            progress,
                            end,
                        }));
                    }
                    if let Ok(mut failure) = readings.failure.lock() {
                        *failure = None;
                    }
                }
                (progress, end) => {
                    let reason = match (progress.err(), end.err()) {
                        (Some(p), Some(e)) => format!("{p}; {e}"),
                        (Some(p), None) => p.to_string(),
                        (None, Some(e)) => e.to_string(),
                        (None, None) => String::new(),
                    };
                    metrics::counter!("signals_freshness_reading_failures_total").increment(1);
                    if let Ok(mut failure) = readings.failure.lock() {
                        *failure = Some((Instant::now(), reason));
                    }
                }
            }
            readings.refreshing.store(false, Ordering::SeqCst);
            readings.refreshed.notify_waiters();
        });
    }

    /// The last reading, marked stale.
    fn stale(&self) -> (SpeedProgress, LogEnd) {
        metrics::counter!("signals_freshness_stale_answers_total").increment(1);
        let latest = self.latest.lock().ok().and_then(|l| l.clone());
        let why = match self.failure.lock().ok().and_then(|f| f.clone()) {
            Some((_, reason)) => format!("the last reading failed: {reason}"),
            None => format!(
                "a new reading did not come within {} ms",
                Self::WAIT.as_millis()
            ),
        };
        match latest {
            Some(reading) => {
                let end = LogEnd {
                    position: reading.end.clone(),
                    stale: Some(format!(
                        "speed_position and log_end were read {} ms ago; {why}",
                        reading.taken.elapsed().as_millis()
                    )),
                };
                (reading.progress.clone(), end)
            }
            None => {
                let end = LogEnd {
                    position: LogPosition::new(),
                    stale: Some(format!(
                        "speed_position and log_end are unknown (never read yet); {why}"
                    )),
                };
                (SpeedProgress::default(), end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use async_trait::async_trait;
    use signals_core::UserRecord;
    use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions};
    use signals_log::{Append, LogError, LogReader, Offset, Partition};
    use signals_store::embedded::EmbeddedStore;
    use signals_store::{
        BatchManifest, HistorySince, IndexEntry, PositionedEntry, StoreError, StoreReads, TailMark,
    };

    use super::*;

    /// A log whose end hangs (like Kafka watermark requests to a broker
    /// that is away), around a real embedded log.
    struct HangingEnd(EmbeddedLog, Arc<AtomicBool>);

    #[async_trait]
    impl EventLog for HangingEnd {
        async fn append(&self, records: Vec<Append>) -> Result<Vec<(Partition, Offset)>, LogError> {
            self.0.append(records).await
        }
        async fn end(&self) -> Result<LogPosition, LogError> {
            while self.1.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.0.end().await
        }
        async fn read_from(&self, from: &LogPosition) -> Result<Box<dyn LogReader>, LogError> {
            self.0.read_from(from).await
        }
        async fn subscribe(
            &self,
            group: &str,
            at: &LogPosition,
        ) -> Result<Box<dyn LogReader>, LogError> {
            self.0.subscribe(group, at).await
        }
        async fn check(&self) -> Result<(), LogError> {
            self.0.check().await
        }
    }

    /// An embedded log whose end hangs while the flag is set, and a store.
    fn hanging_log_and_store() -> (
        tempfile::TempDir,
        Arc<AtomicBool>,
        Arc<dyn EventLog>,
        Arc<dyn ServingStore>,
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let hang = Arc::new(AtomicBool::new(false));
        let embedded =
            EmbeddedLog::open(&dir.path().join("log"), EmbeddedLogOptions::default()).expect("log");
        let log: Arc<dyn EventLog> = Arc::new(HangingEnd(embedded, hang.clone()));
        let store: Arc<dyn ServingStore> =
            Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
        (dir, hang, log, store)
    }

    /// An append acknowledged by this process, as the collector makes one.
    async fn append_one(log: &Arc<dyn EventLog>, readings: &ProgressReadings) {
        log.append(vec![Append {
            key: "u".into(),
            bytes: vec![1],
        }])
        .await
        .expect("appended");
        readings.appended();
    }

    #[tokio::test]
    async fn answers_do_not_wait_for_a_log_that_hangs_and_say_so() {
        let (_dir, hang, log, store) = hanging_log_and_store();
        let readings = Arc::new(ProgressReadings::default());

        let (_, fresh) = readings.read(&store, &log).await;
        assert_eq!(fresh.stale, None);
        assert_eq!(fresh.position.next(0), 0);

        // An append: the next answer needs a new reading, which hangs.
        append_one(&log, &readings).await;
        hang.store(true, Ordering::SeqCst);
        let answers = futures::future::join_all((0..20).map(|_| readings.read(&store, &log))).await;
        for (_, answer) in answers {
            let stale = answer.stale.expect("stale");
            assert!(
                stale.starts_with("speed_position and log_end were read"),
                "{stale}"
            );
            assert!(
                stale.ends_with("a new reading did not come within 100 ms"),
                "{stale}"
            );
            assert_eq!(answer.position.next(0), 0, "the last reading");
        }
        assert!(
            readings.refreshing.load(Ordering::SeqCst),
            "one reading under way, not twenty"
        );

        // Once the log answers again, the reading under way lands and
        // includes the append.
        hang.store(false, Ordering::SeqCst);
        while readings.refreshing.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (_, fresh) = readings.read(&store, &log).await;
        assert_eq!(fresh.stale, None);
        assert_eq!(fresh.position.next(0), 1);
    }

    /// A store that remembers the log ends it is told of, around a real
    /// embedded one.
    struct TellingStore(EmbeddedStore, Mutex<Vec<LogPosition>>);

    #[async_trait]
    impl StoreReads for TellingStore {
        async fn speed_progress(&self) -> Result<SpeedProgress, StoreError> {
            self.0.speed_progress().await
        }
        async fn lookup_events(
            &self,
            ids: &[String],
        ) -> Result<HashMap<String, IndexEntry>, StoreError> {
            self.0.lookup_events(ids).await
        }
        async fn published(&self) -> Result<Option<BatchManifest>, StoreError> {
            self.0.published().await
        }
        async fn batch_record(
            &self,
            version: u64,
            user: &str,
        ) -> Result<Option<Arc<UserRecord>>, StoreError> {
            self.0.batch_record(version, user).await
        }
        async fn speed_entries(
            &self,
            user: &str,
            from: &LogPosition,
        ) -> Result<Vec<PositionedEntry>, StoreError> {
            self.0.speed_entries(user, from).await
        }
        async fn check(&self) -> Result<(), StoreError> {
            self.0.check().await
        }
    }

    #[async_trait]
    impl ServingStore for TellingStore {
        async fn user_history_since(
            &self,
            user: &str,
            mark: Option<&TailMark>,
        ) -> Result<HistorySince, StoreError> {
            self.0.user_history_since(user, mark).await
        }
        fn log_end_seen(&self, end: &LogPosition) {
            self.1.lock().expect("lock").push(end.clone());
        }
    }

    /// A follower of the speed writes slows down while they are quiet;
    /// each reading's log end is what brings it back to its pace.
    #[tokio::test]
    async fn every_reading_tells_the_store_the_log_end_it_found() {
        let (dir, _hang, log, _) = hanging_log_and_store();
        let store = Arc::new(TellingStore(
            EmbeddedStore::open(&dir.path().join("telling.redb")).expect("store"),
            Mutex::default(),
        ));
        let serving: Arc<dyn ServingStore> = store.clone();
        let readings = Arc::new(ProgressReadings::default());
        readings.read(&serving, &log).await;
        append_one(&log, &readings).await;
        let (_, end) = readings.read(&serving, &log).await;
        assert_eq!(end.position.next(0), 1);
        let told = store.1.lock().expect("lock").clone();
        let told: Vec<u64> = told.iter().map(|end| end.next(0)).collect();
        // A stalled box may add a refresh ahead of time; never another end.
        assert_eq!(told.first(), Some(&0), "{told:?}");
        assert!(told.contains(&1), "{told:?}");
        assert!(told.iter().all(|&end| end <= 1), "{told:?}");
    }

    #[tokio::test]
    async fn the_next_reading_is_started_while_the_current_one_serves() {
        let (_dir, hang, log, store) = hanging_log_and_store();
        // Ages far apart, so that the box's speed cannot blur them.
        let refresh_ahead = Duration::from_millis(50);
        let readings = Arc::new(ProgressReadings::with_ages(
            Duration::from_secs(60),
            refresh_ahead,
        ));
        readings.read(&store, &log).await;
        hang.store(true, Ordering::SeqCst);

        readings.read(&store, &log).await;
        assert!(
            !readings.refreshing.load(Ordering::SeqCst),
            "a young reading serves alone"
        );
        tokio::time::sleep(refresh_ahead).await;
        let started = Instant::now();
        let (_, answer) = readings.read(&store, &log).await;
        assert_eq!(answer.stale, None, "the current reading still serves");
        assert!(started.elapsed() < ProgressReadings::WAIT, "no wait");
        assert!(
            readings.refreshing.load(Ordering::SeqCst),
            "and the next one is under way"
        );
        hang.store(false, Ordering::SeqCst);
    }
}
