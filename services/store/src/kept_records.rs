//! Decoded records of the served version, kept in the process, in front of
//! whatever serves them (Redis, or the CQL store itself).
//!
//! A record of a published version never changes, so a decoded copy is
//! always right. Keeping it saves the read (a Redis round trip, or a CQL
//! partition read) and, above all, the decoding: a heavy user's record is
//! tens of MB, read and decoded in about a second. This layer is what
//! makes that cost once per version and process rather than once per read,
//! with Redis or without it (`cache.redis_url` empty).
//!
//! Readers of a record being loaded share the load: a heavy user read by
//! many clients at once, just after a batch published, is fetched and
//! decoded once (a 1M-event record is ~77 MB read and ~320 MB decoded), not
//! once per reader, which would multiply both the wait and the memory.
//!
//! A heavy user's first read of a new version need not wait for that load
//! either: while it runs, a user whose record of the version just before is
//! kept here, and heavy, is answered from that record and the speed entries
//! past that version's position. The answer is exact (the version before
//! is the one garbage collection lags behind, so its speed entries are all
//! there) and names the version it merges; the new record replaces it as
//! soon as it is loaded, off the reader's path.
//!
//! The embedded store keeps its own records (it reads them in the same
//! transaction as the speed entries) and is not wrapped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use signals_core::UserRecord;
use smol_str::SmolStr;
use tracing::debug;

use crate::cache::RecordCache;
use crate::codec;
use crate::forward::forward_to;
use crate::{BatchManifest, HistorySince, ServingStore, StoreError, StoreReads, TailMark};

/// A kept record of the previous version with at least this many events
/// answers while the served version's record loads: about 4 MB encoded, a
/// tenth of a second or more to read and decode. A lighter one is loaded
/// while the reader waits, which costs it little.
pub const PREVIOUS_ANSWERS_FROM_EVENTS: usize = 50_000;

/// Records loaded in the background at once (see `Shared::background`).
const BACKGROUND_LOADS: usize = 2;

/// The serving path with the served version's records kept decoded in
/// this process, bounded by their encoded bytes.
pub struct KeptRecords {
    /// `shared.inner`, for the calls handed on as they are.
    inner: Arc<dyn ServingStore>,
    shared: Arc<Shared>,
}

/// What loads in the background share with readers.
struct Shared {
    inner: Arc<dyn ServingStore>,
    records: RecordCache,
    /// Records being loaded, by version and user.
    loads: Mutex<Loads>,
    /// The newest served manifest seen, and the one seen before it.
    manifests: Mutex<Manifests>,
    /// Loads in the background, a few at a time: each is a heavy user's
    /// record, hundreds of MB decoded, and its readers are answered
    /// meanwhile.
    background: tokio::sync::Semaphore,
    previous_from_events: usize,
}

#[derive(Default)]
struct Manifests {
    newest: Option<Arc<BatchManifest>>,
    before: Option<Arc<BatchManifest>>,
}

/// One load of a record, shared by every reader that asks for it while it
/// is under way. Should the reader doing the load go away (its client hung
/// up), a waiting one takes it over (`OnceCell::get_or_init`).
type Load = Arc<tokio::sync::OnceCell<Result<Option<Arc<UserRecord>>, StoreError>>>;

type Loads = HashMap<(u64, SmolStr), Load>;

/// A reader's hold on a [`Load`]. The last hold to go takes the load out of
/// the map, done or not: a finished load is not handed to later readers
/// (they find the record kept, or load it again), and one whose readers
/// all hung up leaves nothing behind.
struct LoadTurn<'a> {
    loads: &'a Mutex<Loads>,
    slot: (u64, SmolStr),
    load: Load,
}

impl Drop for LoadTurn<'_> {
    fn drop(&mut self) {
        let mut loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        // Holds are taken under this lock, so the count is exact here: the
        // map's and this one's mean no other reader holds it.
        let last = Arc::strong_count(&self.load) <= 2;
        let finished = self.load.initialized();
        if (last || finished)
            && loads
                .get(&self.slot)
                .is_some_and(|l| Arc::ptr_eq(l, &self.load))
        {
            loads.remove(&self.slot);
        }
    }
}

impl KeptRecords {
    /// Keeps up to about `budget` encoded bytes of records read through
    /// `inner` (a record over half of it is never kept).
    pub fn new(inner: Arc<dyn ServingStore>, budget: usize) -> KeptRecords {
        KeptRecords::answering_from_previous(inner, budget, PREVIOUS_ANSWERS_FROM_EVENTS)
    }

    /// [`KeptRecords::new`], with kept records of the version before of at
    /// least `events` events answering while the served version's loads.
    pub fn answering_from_previous(
        inner: Arc<dyn ServingStore>,
        budget: usize,
        events: usize,
    ) -> KeptRecords {
        KeptRecords {
            inner: inner.clone(),
            shared: Arc::new(Shared {
                inner,
                records: RecordCache::new(budget),
                loads: Mutex::default(),
                manifests: Mutex::default(),
                background: tokio::sync::Semaphore::new(BACKGROUND_LOADS),
                previous_from_events: events,
            }),
        }
    }

    /// What is kept of `user`'s record of `version`.
    #[cfg(test)]
    pub(crate) fn kept(&self, version: u64, user: &str) -> Option<Option<Arc<UserRecord>>> {
        self.shared.records.known(version, user)
    }
}

impl Shared {
    /// `user`'s record of `version` (the served one): kept, or loaded once
    /// for every reader asking meanwhile.
    async fn record_of(
        &self,
        version: u64,
        user: &str,
    ) -> Result<Option<Arc<UserRecord>>, StoreError> {
        if let Some(known) = self.records.known(version, user) {
            metrics::counter!("signals_cache_requests_total", "outcome" => "local").increment(1);
            return Ok(known);
        }
        let slot = (version, SmolStr::new(user));
        let load = self.loads_lock().entry(slot.clone()).or_default().clone();
        let turn = LoadTurn {
            loads: &self.loads,
            slot,
            load,
        };
        let mut loaded_here = false;
        let record = turn
            .load
            .get_or_init(|| {
                loaded_here = true;
                self.load(version, user)
            })
            .await
            .clone();
        if !loaded_here {
            metrics::counter!("signals_cache_requests_total", "outcome" => "joined").increment(1);
        }
        record
    }

    async fn load(&self, version: u64, user: &str) -> Result<Option<Arc<UserRecord>>, StoreError> {
        let record = self.inner.batch_record(version, user).await?;
        match &record {
            Some(record) => {
                // Weighed as stored: the budget reads as the bytes a
                // deployment sees in its store and in Redis.
                if let Ok(weight) = codec::encoded_len(record) {
                    self.records.insert(version, user, record.clone(), weight);
                }
            }
            None => self.records.insert_absent(version, user),
        }
        Ok(record)
    }

    fn loads_lock(&self) -> MutexGuard<'_, Loads> {
        self.loads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The served manifest, and the one published just before it if this
    /// process saw that one served. Versions are published one after the
    /// other (each run's is the published one's plus one, set by
    /// compare-and-set), so the version numbered one less is the one
    /// garbage collection lags behind.
    async fn served_manifests(
        &self,
    ) -> Result<Option<(Arc<BatchManifest>, Option<Arc<BatchManifest>>)>, StoreError> {
        let Some(served) = self.inner.serving_manifest().await? else {
            return Ok(None);
        };
        let mut seen = self
            .manifests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen
            .newest
            .as_ref()
            .is_none_or(|n| n.version < served.version)
        {
            seen.before = seen.newest.replace(served.clone());
        }
        let before = seen
            .before
            .clone()
            .filter(|b| b.version.checked_add(1) == Some(served.version));
        Ok(Some((served, before)))
    }

    /// `user`'s history from their record of `before` kept here, if it is
    /// heavy enough to be worth it and their record of `served` is not
    /// kept yet; that one's load is started (or left running) meanwhile.
    async fn history_from_before(
        self: &Arc<Self>,
        user: &str,
        mark: Option<&TailMark>,
        served: &BatchManifest,
        before: Arc<BatchManifest>,
    ) -> Result<Option<HistorySince>, StoreError> {
        let Some(record) = self.record_before(user, served, &before) else {
            return Ok(None);
        };
        let (from, resumed) = TailMark::read_from(mark, Some(&before));
        let entries = self.inner.speed_entries(user, &from).await?;
        // Complete only if the version after `served` was not published
        // before they were read: publishing it is what lets garbage
        // collection drop the entries `before` needs.
        match self.inner.published().await? {
            Some(published) if published.version <= served.version => {}
            _ => return Ok(None),
        }
        metrics::counter!("signals_cache_requests_total", "outcome" => "previous").increment(1);
        Ok(Some(HistorySince {
            manifest: Some(before),
            record: Some(record),
            entries,
            resumed,
            from,
            change_token: None,
        }))
    }

    /// `user`'s kept record of `before` if it is to answer for `served`
    /// (heavy, and their record of `served` not kept yet), with the load
    /// of the latter started unless it is under way.
    fn record_before(
        self: &Arc<Self>,
        user: &str,
        served: &BatchManifest,
        before: &BatchManifest,
    ) -> Option<Arc<UserRecord>> {
        if self.records.known(served.version, user).is_some() {
            return None;
        }
        let record = self
            .records
            .known(before.version, user)
            .flatten()
            .filter(|r| r.events.len() >= self.previous_from_events)?;
        // Claimed now, so that the reads that come while it waits for its
        // turn start no other.
        let slot = (served.version, SmolStr::new(user));
        let claimed = {
            let mut loads = self.loads_lock();
            !loads.contains_key(&slot) && loads.insert(slot, Load::default()).is_none()
        };
        if claimed {
            let (shared, version, user) = (self.clone(), served.version, user.to_owned());
            tokio::spawn(async move {
                // Never closed; the load goes ahead all the same.
                let _turn = shared.background.acquire().await.ok();
                if let Err(error) = shared.record_of(version, &user).await {
                    debug!(%error, version, "a record's load in the background failed; a later read loads it");
                }
            });
        }
        Some(record)
    }
}

/// Reads of stored data, from the store behind, except the served
/// version's records, which are kept.
#[async_trait]
impl StoreReads for KeptRecords {
    forward_to!(inner: speed_progress, lookup_events, published, speed_entries, check);

    async fn batch_record(
        &self,
        version: u64,
        user_id: &str,
    ) -> Result<Option<Arc<UserRecord>>, StoreError> {
        // Only the served version's records: they are published, hence
        // immutable, while an unpublished version may still be rewritten.
        match self.inner.serving_manifest().await? {
            Some(manifest) if manifest.version == version => {
                self.shared.record_of(version, user_id).await
            }
            _ => self.inner.batch_record(version, user_id).await,
        }
    }
}

/// [`ServingStore::user_history_unchanged`] is the port's own: it takes
/// the record through [`KeptRecords::batch_record`] above.
#[async_trait]
impl ServingStore for KeptRecords {
    forward_to!(inner: serving_manifest, degraded, log_end_seen);

    async fn user_history_since(
        &self,
        user_id: &str,
        mark: Option<&TailMark>,
    ) -> Result<HistorySince, StoreError> {
        let Some((served, before)) = self.shared.served_manifests().await? else {
            return self.inner.user_history_since(user_id, mark).await;
        };
        if let Some(before) = before {
            let early = self
                .shared
                .history_from_before(user_id, mark, &served, before)
                .await?;
            if let Some(history) = early {
                return Ok(history);
            }
        }
        crate::history_of(self, Some(served), user_id, mark).await
    }

    /// A mark of the version before the served one, for a user answered
    /// from it while their new record loads: nothing past the mark, and no
    /// read at all (a heavy user is read the most, and during the load
    /// each read would otherwise read their speed entries and the
    /// published pointer). The entries a reader keeps past that version's
    /// position were complete when read. Anything else: the port's way.
    async fn user_history_unchanged(
        &self,
        user_id: &str,
        mark: &TailMark,
    ) -> Result<HistorySince, StoreError> {
        if let Some((served, Some(before))) = self.shared.served_manifests().await? {
            let record = (mark.version == Some(before.version))
                .then(|| self.shared.record_before(user_id, &served, &before))
                .flatten();
            if let Some(record) = record {
                let (from, resumed) = TailMark::read_from(Some(mark), Some(&before));
                metrics::counter!("signals_cache_requests_total", "outcome" => "previous")
                    .increment(1);
                return Ok(HistorySince {
                    manifest: Some(before),
                    record: Some(record),
                    entries: Vec::new(),
                    resumed,
                    from,
                    change_token: None,
                });
            }
        }
        crate::history_unchanged(self, user_id, mark).await
    }

    /// Drops the user's kept record, then whatever the path behind keeps.
    async fn evict_user(&self, user_id: &str) -> Result<(), StoreError> {
        self.shared.records.remove(user_id);
        self.inner.evict_user(user_id).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::{BatchStore, SignalStore, SpeedStore};

    /// Writes `record` as user "u"'s record of version 1 and publishes it.
    async fn publish_one(store: &EmbeddedStore, record: &UserRecord) -> BatchManifest {
        let records = vec![("u".into(), record.clone())];
        crate::contract::publish_version(store, 1, &[(0, 0)], records).await
    }

    /// The embedded store, whose record reads are counted and take a while.
    struct SlowRecords {
        inner: Arc<EmbeddedStore>,
        reads: AtomicUsize,
        speed_reads: AtomicUsize,
        lagging: Mutex<Option<Arc<BatchManifest>>>,
    }

    #[async_trait]
    impl StoreReads for SlowRecords {
        forward_to!(inner: speed_progress, lookup_events, published, check);

        async fn speed_entries(
            &self,
            user_id: &str,
            from: &signals_core::LogPosition,
        ) -> Result<Vec<crate::PositionedEntry>, StoreError> {
            self.speed_reads.fetch_add(1, Ordering::SeqCst);
            self.inner.speed_entries(user_id, from).await
        }

        async fn batch_record(
            &self,
            version: u64,
            user_id: &str,
        ) -> Result<Option<Arc<UserRecord>>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            // Long enough for a test's reads to come while it lasts, on a
            // busy machine too.
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.inner.batch_record(version, user_id).await
        }
    }

    #[async_trait]
    impl ServingStore for SlowRecords {
        /// The published manifest, unless a test made the reading lag.
        async fn serving_manifest(&self) -> Result<Option<Arc<BatchManifest>>, StoreError> {
            if let Some(lagging) = self.lagging.lock().expect("lock").clone() {
                return Ok(Some(lagging));
            }
            self.inner.serving_manifest().await
        }
    }

    async fn slow_store(record: &UserRecord) -> (tempfile::TempDir, Arc<SlowRecords>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let raw = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
        publish_one(&raw, record).await;
        let slow = Arc::new(SlowRecords {
            inner: raw,
            reads: AtomicUsize::default(),
            speed_reads: AtomicUsize::default(),
            lagging: Mutex::default(),
        });
        (dir, slow)
    }

    /// Writes `records` as version `version`, covering offsets of log
    /// partition 0 before `covers`, and publishes it.
    async fn publish(
        store: &EmbeddedStore,
        version: u64,
        covers: u64,
        records: Vec<(String, UserRecord)>,
    ) -> BatchManifest {
        crate::contract::publish_version(store, version, &[(0, covers)], records).await
    }

    /// Offsets of the speed entries a history holds.
    fn offsets(history: &HistorySince) -> Vec<u64> {
        history.entries.iter().map(|e| e.offset).collect()
    }

    /// Until a heavy user's record of a new version is loaded, their reads
    /// are answered from the version before with the speed entries past
    /// its position (exact, and saying so); then from the new one. A light
    /// user's read waits for their load.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_heavy_users_reads_during_a_new_versions_load_come_from_the_one_before() {
        let heavy = crate::contract::large_record("u", 3);
        let (_dir, slow) = slow_store(&heavy).await;
        let light = crate::contract::record("l", "l1");
        slow.inner
            .apply_speed(Arc::new(crate::contract::write(
                vec![
                    crate::contract::at("u", 0, 2),
                    crate::contract::at("u", 0, 7),
                ],
                &[(0, 8)],
            )))
            .await
            .expect("speed write");
        let store = KeptRecords::answering_from_previous(slow.clone(), 1 << 20, 3);
        assert_eq!(
            store
                .user_history("u")
                .await
                .expect("history")
                .record
                .as_deref(),
            Some(&heavy)
        );
        assert!(store
            .user_history("l")
            .await
            .expect("history")
            .record
            .is_none());

        let newer = crate::contract::large_record("u", 4);
        publish(
            &slow.inner,
            2,
            5,
            vec![("u".into(), newer.clone()), ("l".into(), light.clone())],
        )
        .await;
        let early = store.user_history_since("u", None).await.expect("history");
        assert_eq!(early.manifest.as_ref().map(|m| m.version), Some(1));
        assert_eq!(early.record.as_deref(), Some(&heavy));
        assert_eq!(
            offsets(&early),
            [2, 7],
            "every entry past version 1's position"
        );
        // A reader that keeps those entries and knows nothing was written
        // since (a follower said so) reads nothing more.
        let mut frontier = signals_core::LogPosition::default();
        frontier.advance(0, 8);
        let mark = TailMark {
            version: Some(1),
            frontier: Arc::new(frontier),
            change_token: None,
        };
        let speed_reads = slow.speed_reads.load(Ordering::SeqCst);
        let unchanged = store
            .user_history_unchanged("u", &mark)
            .await
            .expect("history");
        assert_eq!(unchanged.manifest.as_ref().map(|m| m.version), Some(1));
        assert_eq!(unchanged.record.as_deref(), Some(&heavy));
        assert!(unchanged.resumed && unchanged.entries.is_empty());
        assert_eq!(slow.speed_reads.load(Ordering::SeqCst), speed_reads);
        let light_read = store.user_history_since("l", None).await.expect("history");
        assert_eq!(light_read.manifest.as_ref().map(|m| m.version), Some(2));
        assert_eq!(light_read.record.as_deref(), Some(&light));

        // The load started by the early read lands in the background.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.kept(2, "u").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the load never landed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let late = store.user_history_since("u", None).await.expect("history");
        assert_eq!(late.manifest.as_ref().map(|m| m.version), Some(2));
        assert_eq!(late.record.as_deref(), Some(&newer));
        assert_eq!(offsets(&late), [7]);
    }

    /// The version before answers only while the version after the served
    /// one is unpublished: once that one is, garbage collection may drop
    /// the speed entries the version before needs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_version_before_never_answers_once_a_later_one_is_published() {
        let heavy = crate::contract::large_record("u", 3);
        let (_dir, slow) = slow_store(&heavy).await;
        let store = KeptRecords::answering_from_previous(slow.clone(), 1 << 20, 3);
        store.user_history("u").await.expect("history");
        let second = publish(&slow.inner, 2, 0, vec![("u".into(), heavy.clone())]).await;
        publish(&slow.inner, 3, 0, vec![("u".into(), heavy.clone())]).await;
        // This process still reads version 2 as the served one.
        *slow.lagging.lock().expect("lock") = Some(Arc::new(second));
        let read = store.user_history_since("u", None).await.expect("history");
        assert_eq!(read.manifest.as_ref().map(|m| m.version), Some(2));

        // Nor does a version two before the served one.
        *slow.lagging.lock().expect("lock") = None;
        let dir = tempfile::tempdir().expect("temp dir");
        let raw = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
        publish_one(&raw, &heavy).await;
        let fresh = KeptRecords::answering_from_previous(raw.clone(), 1 << 20, 3);
        fresh.user_history("u").await.expect("history");
        publish(&raw, 2, 0, vec![("u".into(), heavy.clone())]).await;
        publish(&raw, 3, 0, vec![("u".into(), heavy.clone())]).await;
        let read = fresh.user_history_since("u", None).await.expect("history");
        assert_eq!(read.manifest.as_ref().map(|m| m.version), Some(3));
    }

    /// Readers of a user whose record is being loaded wait for that load:
    /// with nothing kept, eight readers at once read the store once, and a
    /// reader after them reads it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_of_a_record_being_loaded_share_its_load() {
        let record = crate::contract::record("u", "e1");
        let (_dir, slow) = slow_store(&record).await;
        let store = Arc::new(KeptRecords::new(slow.clone(), 0));
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.batch_record(1, "u").await })
            })
            .collect();
        for reader in readers {
            let read = reader.await.expect("joined").expect("read");
            assert_eq!(read.as_deref(), Some(&record));
        }
        let reads = || slow.reads.load(Ordering::SeqCst);
        assert_eq!(reads(), 1, "one load for the eight readers");
        let read = store.batch_record(1, "u").await.expect("read");
        assert_eq!(read.as_deref(), Some(&record));
        assert_eq!(reads(), 2, "a finished load is not handed to later readers");
        assert!(store.shared.loads_lock().is_empty());

        // A reader that hangs up mid-load leaves nothing behind.
        let hung_up = tokio::time::timeout(Duration::from_millis(20), store.batch_record(1, "u"));
        assert!(hung_up.await.is_err(), "still loading when its client went");
        assert!(store.shared.loads_lock().is_empty());
    }

    /// A kept record answers later reads, whole histories included, without
    /// a read behind; a user without a record is kept as such; an evicted
    /// user is read again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_record_answers_without_a_read_until_evicted() {
        let record = crate::contract::record("u", "e1");
        let (_dir, slow) = slow_store(&record).await;
        let store = KeptRecords::new(slow.clone(), 1 << 20);
        let reads = || slow.reads.load(Ordering::SeqCst);

        let first = store.user_history("u").await.expect("history");
        assert_eq!(first.record.as_deref(), Some(&record));
        let encoded = codec::encode_record(&record).expect("encodes").len();
        assert_eq!(store.shared.records.weight(), encoded, "weighed as stored");
        for _ in 0..3 {
            let again = store.user_history("u").await.expect("history");
            assert_eq!(again.record.as_deref(), Some(&record));
        }
        assert_eq!(reads(), 1);

        assert!(store
            .user_history("nobody")
            .await
            .expect("history")
            .record
            .is_none());
        assert!(store
            .user_history("nobody")
            .await
            .expect("history")
            .record
            .is_none());
        assert_eq!(reads(), 2, "no record, kept as such");

        store.evict_user("u").await.expect("evicted");
        assert_eq!(store.kept(1, "u"), None);
        store.user_history("u").await.expect("history");
        assert_eq!(reads(), 3);
    }

    /// Only the served version's records are kept: another version's
    /// (still being written, or collected soon) is read each time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_served_versions_records_are_kept() {
        let record = crate::contract::record("u", "e1");
        let (_dir, slow) = slow_store(&record).await;
        slow.inner
            .write_batch(2, vec![("u".into(), crate::contract::record("u", "e2"))])
            .await
            .expect("written");
        let store = KeptRecords::new(slow.clone(), 1 << 20);
        for _ in 0..2 {
            let unpublished = store.batch_record(2, "u").await.expect("read");
            assert_eq!(
                unpublished.as_deref(),
                Some(&crate::contract::record("u", "e2"))
            );
        }
        assert_eq!(slow.reads.load(Ordering::SeqCst), 2);
        assert_eq!(store.kept(2, "u"), None);
    }

    /// The store contract, with serving through kept records over the
    /// embedded store (whose own record cache is then a second layer).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_contract_holds_with_serving_through_kept_records() {
        crate::contract::run_all(|| async {
            let dir = tempfile::tempdir().expect("temp dir");
            let store =
                Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
            let kept = KeptRecords::new(store.clone(), 1 << 20);
            let wired: Box<dyn SignalStore> =
                Box::new(crate::contract::ServedThrough::new(store, Arc::new(kept)));
            (wired, dir)
        })
        .await;
    }
}
