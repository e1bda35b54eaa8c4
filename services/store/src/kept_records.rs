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
//! The embedded store keeps its own records (it reads them in the same
//! transaction as the speed entries) and is not wrapped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use signals_core::UserRecord;
use smol_str::SmolStr;

use crate::cache::RecordCache;
use crate::codec;
use crate::forward::forward_to;
use crate::{ServingStore, StoreError, StoreReads};

/// The serving path with the served version's records kept decoded in
/// this process, bounded by their encoded bytes.
pub struct KeptRecords {
    inner: Arc<dyn ServingStore>,
    records: RecordCache,
    /// Records being loaded, by version and user.
    loads: Mutex<Loads>,
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
        KeptRecords {
            inner,
            records: RecordCache::new(budget),
            loads: Mutex::default(),
        }
    }

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

    /// What is kept of `user`'s record of `version`.
    #[cfg(test)]
    pub(crate) fn kept(&self, version: u64, user: &str) -> Option<Option<Arc<UserRecord>>> {
        self.records.known(version, user)
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
            Some(manifest) if manifest.version == version => self.record_of(version, user_id).await,
            _ => self.inner.batch_record(version, user_id).await,
        }
    }
}

/// The default history reads ([`ServingStore::user_history_since`] and
/// [`ServingStore::user_history_unchanged`]) take the record through
/// [`KeptRecords::batch_record`] above.
#[async_trait]
impl ServingStore for KeptRecords {
    forward_to!(inner: serving_manifest, degraded, log_end_seen);

    /// Drops the user's kept record, then whatever the path behind keeps.
    async fn evict_user(&self, user_id: &str) -> Result<(), StoreError> {
        self.records.remove(user_id);
        self.inner.evict_user(user_id).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::{BatchManifest, BatchStore, SignalStore};

    /// Writes `record` as user "u"'s record of version 1 and publishes it.
    async fn publish_one(store: &EmbeddedStore, record: &UserRecord) -> BatchManifest {
        store
            .write_batch(1, vec![("u".into(), record.clone())])
            .await
            .expect("written");
        let manifest = crate::contract::manifest(1, &[(0, 0)]);
        store.publish(&manifest).await.expect("published");
        manifest
    }

    /// The embedded store, whose record reads are counted and take a while.
    struct SlowRecords {
        inner: Arc<EmbeddedStore>,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl StoreReads for SlowRecords {
        forward_to!(inner: speed_progress, lookup_events, published, speed_entries, check);

        async fn batch_record(
            &self,
            version: u64,
            user_id: &str,
        ) -> Result<Option<Arc<UserRecord>>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.inner.batch_record(version, user_id).await
        }
    }

    #[async_trait]
    impl ServingStore for SlowRecords {}

    async fn slow_store(record: &UserRecord) -> (tempfile::TempDir, Arc<SlowRecords>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let raw = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
        publish_one(&raw, record).await;
        let slow = Arc::new(SlowRecords {
            inner: raw,
            reads: AtomicUsize::default(),
        });
        (dir, slow)
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
        assert!(store.loads_lock().is_empty());

        // A reader that hangs up mid-load leaves nothing behind.
        let hung_up = tokio::time::timeout(Duration::from_millis(20), store.batch_record(1, "u"));
        assert!(hung_up.await.is_err(), "still loading when its client went");
        assert!(store.loads_lock().is_empty());
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
        assert_eq!(store.records.weight(), encoded, "weighed as stored");
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
