//! The embedded store: redb files on local disk, the default backend: the
//! store's file, and beside it the insights worker's ([`insights`]).
//!
//! # Guarantees
//!
//! * **Exactly-once speed layer.** [`SpeedStore::apply_speed`] writes the
//!   entries, the index updates and the progress in ONE redb write
//!   transaction committed with [`redb::Durability::Immediate`]: after a
//!   crash at any point, progress is never ahead of nor behind the entries
//!   and index updates it describes. An entry is its log position (reads
//!   keep one entry per position, however replays cut rows) and an index
//!   update of a replay supersedes the first, so replaying a write leaves
//!   the store answering as writing it once. Progress only moves forward,
//!   per partition (a replayed older write does not move it back).
//! * **Consistent reads.** [`ServingStore::user_history`] reads the published
//!   manifest, the user's record of that version and the user's speed entries
//!   in ONE read transaction (a snapshot), and returns exactly the entries
//!   whose position the manifest does not cover.
//! * **Atomic, forward-only publishing.** [`BatchStore::publish`] replaces
//!   the published manifest in one transaction and refuses a lower version,
//!   or the same version with another manifest. Records of a published
//!   version are immutable: [`BatchStore::write_batch`] refuses to write
//!   into a version at or below the published one.
//! * **Safe garbage collection.** [`BatchStore::collect_garbage`] never
//!   removes what the published manifest needs: the position and version it
//!   is given are clamped to the published manifest's. It runs in bounded
//!   transactions, so writers and readers are never stalled behind one huge
//!   delete; stopping it midway leaves a store that is merely less collected.
//! * **Durability.** Every write commits with `Durability::Immediate`
//!   (fsync): once a call returns `Ok`, the write survives a crash.
//!
//! # Layout
//!
//! Five tables; keys are described in [`keys`], values in [`codec`]
//! (a format byte, then postcard):
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `speed` | user ‖ partition ‖ last offset | one user's [`signals_core::SpeedEntry`]s of one write, with their offsets |
//! | `index_log` | write ‖ buckets ‖ bucket | one write's [`crate::IndexEntry`]s of one bucket, by event id |
//! | `index_writes` | write | when that write's index entries expire |
//! | `batch` | version ‖ user | [`signals_core::UserRecord`] |
//! | `meta` | `layout`, `speed_progress`, `published`, `batch_checkpoint` | u8, [`crate::SpeedProgress`], [`crate::BatchManifest`], [`crate::BatchCheckpoint`] |
//!
//! # Concurrency and cost
//!
//! One process opens the files (redb takes a file lock; a second opener gets
//! [`StoreError::Unavailable`]). Inside it, readers never block writers and
//! writers of one file are serialised by redb: the insights worker writes a
//! file of its own so that its passes never hold up the speed layer's. Decoded records of published versions
//! and the decoded published manifest are cached in process (see
//! [`cache`]), so a warm read decodes only the user's speed entries; warm
//! reads run on the caller's task, every other redb call on
//! [`tokio::task::spawn_blocking`].
//!
//! Speed keys lead with the user, so one speed write dirties about one B-tree
//! leaf per distinct user in it, and one row per user and partition, however
//! many of their events it holds. The event index is a log (ADR 010): a
//! write appends at most 256 rows at the end of `index_log`, and an
//! in-memory map of id digests (about 28 bytes per live id, rebuilt when the
//! file opens) finds them. Every commit pays an fsync: fewer, larger writes
//! are much cheaper per entry than many small ones. The ignored test
//! `embedded_figures` prints this machine's figures.

mod batch;
mod erase;
mod gc;
mod history;
mod index;
mod insights;
mod keys;
mod published;
mod speed;
mod tables;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::Database;
use signals_core::{LogPosition, Offset, Partition, UserRecord};
use tracing::info;

use crate::cache::{LoadLocks, ManifestCache, RecordCache};
use crate::codec;
use crate::{
    BatchCheckpoint, BatchManifest, BatchPart, BatchStore, EncodedRecord, GarbageStats,
    HistorySince, IndexEntry, PositionedEntry, ServingStore, SpeedProgress, SpeedStore, SpeedWrite,
    StoreError, StoreReads, TailMark,
};

/// Records loaded in the background at once (see `Inner::background`).
const BACKGROUND_LOADS: usize = 2;

/// Tuning of an [`EmbeddedStore`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Upper bound of redb's page cache, in bytes.
    pub page_cache_bytes: usize,
    /// Upper bound of the decoded-record cache, in encoded bytes (0 disables it).
    pub record_cache_bytes: usize,
    /// Rows a garbage collection transaction scans (speed) or deletes (batch) at most.
    pub gc_chunk: usize,
    /// A user's kept record of the version before the published one, with
    /// at least this many events, answers while their record of the
    /// published one loads in the background.
    pub previous_answers_from_events: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            page_cache_bytes: 256 << 20,
            // Half of it keeps records too heavy for a shard's share: a
            // user with 1M events encodes to about 42 MiB.
            record_cache_bytes: 256 << 20,
            gc_chunk: 10_000,
            previous_answers_from_events: crate::kept_records::PREVIOUS_ANSWERS_FROM_EVENTS,
        }
    }
}

/// The [`SignalStore`](crate::SignalStore) on one local redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// The blocking half: everything that touches redb.
struct Inner {
    db: Database,
    /// The insights worker's tables, in a file of their own ([`insights`]).
    insights: Database,
    records: RecordCache,
    /// Records being read and decoded, one load per record at a time.
    loading: LoadLocks,
    /// Loads in the background ([`Inner::history_from_before`]), a few at
    /// a time: each is a heavy user's record, hundreds of MB decoded,
    /// and its readers are answered meanwhile.
    background: Arc<tokio::sync::Semaphore>,
    manifest: ManifestCache,
    progress: speed::ProgressMirror,
    /// What serving may skip reading ([`crate::changes`]).
    changes: crate::changes::UserChanges,
    published: published::PublishedMirror,
    index: index::IndexMemo,
    gc_chunk: usize,
    previous_answers_from_events: usize,
    /// Test hook: `apply_speed` fails after inserting its entries.
    #[cfg(test)]
    fail_after_entries: std::sync::atomic::AtomicBool,
}

impl EmbeddedStore {
    /// Opens (or creates, with its directories) the store file at `path`.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(path, EmbeddedOptions::default())
    }

    /// Opens the store file at `path` with `options`.
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = open_file(path, options.page_cache_bytes)?;
        // Membership rows are small and read by user: a quarter of the cache.
        let insights = open_file(&insights::insights_path(path), options.page_cache_bytes / 4)?;
        tables::initialise(&db, &insights)?;
        let index = index::IndexMemo::default();
        let ids = {
            let txn = db.begin_read().map_err(engine("begin a read"))?;
            let log = txn
                .open_table(tables::INDEX_LOG)
                .map_err(engine("open table index_log"))?;
            index.rebuild(&log)?
        };
        info!(path = %path.display(), indexed_ids = ids, "embedded store opened");
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                insights,
                records: RecordCache::new(options.record_cache_bytes),
                loading: LoadLocks::default(),
                background: Arc::new(tokio::sync::Semaphore::new(BACKGROUND_LOADS)),
                manifest: ManifestCache::default(),
                progress: speed::ProgressMirror::default(),
                changes: crate::changes::UserChanges::default(),
                published: published::PublishedMirror::default(),
                index,
                gc_chunk: options.gc_chunk.max(1),
                previous_answers_from_events: options.previous_answers_from_events,
                #[cfg(test)]
                fail_after_entries: Default::default(),
            }),
        })
    }

    /// Runs `op` on the blocking pool.
    async fn blocking<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || op(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("embedded store task failed: {e}")))?
    }
}

/// Opens (or creates) one redb file of the store.
fn open_file(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                "{} is already open in another process or handle",
                path.display()
            )),
            other => engine("open the store file")(other),
        })
}

/// Maps a redb error met while doing `what` to a [`StoreError`].
fn engine<E: Into<redb::Error>>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |error| match error.into() {
        redb::Error::Corrupted(detail) => {
            StoreError::Corrupt(format!("cannot {what}: redb file corrupted: {detail}"))
        }
        other => StoreError::Backend(format!("cannot {what}: {other}")),
    }
}

#[async_trait]
impl StoreReads for EmbeddedStore {
    async fn speed_progress(&self) -> Result<SpeedProgress, StoreError> {
        // Serving asks on every request: answered from memory once known.
        if let Some(progress) = self.inner.progress.get() {
            return Ok(progress);
        }
        self.blocking(Inner::speed_progress).await
    }

    async fn lookup_events(
        &self,
        event_ids: &[String],
    ) -> Result<HashMap<String, IndexEntry>, StoreError> {
        let ids = event_ids.to_vec();
        self.blocking(move |inner| inner.lookup_events(&ids)).await
    }

    async fn published(&self) -> Result<Option<BatchManifest>, StoreError> {
        let manifest = self.blocking(Inner::published).await?;
        Ok(manifest.map(Arc::unwrap_or_clone))
    }

    async fn batch_record(
        &self,
        version: u64,
        user_id: &str,
    ) -> Result<Option<Arc<UserRecord>>, StoreError> {
        let user = user_id.to_owned();
        self.blocking(move |inner| inner.batch_record(version, &user))
            .await
    }

    async fn speed_entries(
        &self,
        user_id: &str,
        from: &LogPosition,
    ) -> Result<Vec<PositionedEntry>, StoreError> {
        let (user, from) = (user_id.to_owned(), from.clone());
        self.blocking(move |inner| inner.speed_entries(&user, &from))
            .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.blocking(Inner::check).await
    }
}

#[async_trait]
impl SpeedStore for EmbeddedStore {
    async fn apply_speed(&self, write: Arc<SpeedWrite>) -> Result<(), StoreError> {
        self.blocking(move |inner| inner.apply_speed(&write)).await
    }
}

#[async_trait]
impl ServingStore for EmbeddedStore {
    async fn user_history_since(
        &self,
        user_id: &str,
        mark: Option<&TailMark>,
    ) -> Result<HistorySince, StoreError> {
        // A warm read is a read transaction and a scan of the speed tail
        // past the mark: microseconds for a typical user, cheaper here than
        // the hop to the blocking pool and back (a sixth of serving's time).
        // Reading and decoding a record from the file goes to the pool.
        if let Some(history) = self.inner.warm_user_history(user_id, mark)? {
            return Ok(history);
        }
        // A heavy user's record of the published version is not decoded
        // yet: answered from the version before while it loads.
        if let Some((history, version)) = self.inner.history_from_before(user_id, mark)? {
            if self.inner.loading.claim(version, user_id) {
                let (inner, user) = (self.inner.clone(), user_id.to_owned());
                tokio::spawn(async move {
                    // Never closed; the load goes ahead all the same.
                    let _turn = inner.background.clone().acquire_owned().await.ok();
                    let load = tokio::task::spawn_blocking(move || {
                        let loaded = inner.batch_record(version, &user);
                        // However it went: the next read claims it again.
                        inner.loading.release(version, &user);
                        loaded
                    });
                    if let Ok(Err(error)) = load.await {
                        tracing::debug!(%error, version, "a record's load in the background failed; a later read loads it");
                    }
                });
            }
            return Ok(history);
        }
        let (user, mark) = (user_id.to_owned(), mark.cloned());
        self.blocking(move |inner| inner.user_history(&user, mark.as_ref()))
            .await
    }
}

#[async_trait]
impl BatchStore for EmbeddedStore {
    async fn write_records(
        &self,
        version: u64,
        records: Vec<(String, EncodedRecord)>,
    ) -> Result<(), StoreError> {
        self.blocking(move |inner| inner.write_batch(version, &records))
            .await
    }

    async fn publish(&self, manifest: &BatchManifest) -> Result<(), StoreError> {
        let manifest = manifest.clone();
        self.blocking(move |inner| inner.publish(manifest)).await
    }

    async fn collect_garbage(
        &self,
        covered: &LogPosition,
        keep_version: u64,
    ) -> Result<GarbageStats, StoreError> {
        let covered = covered.clone();
        self.blocking(move |inner| inner.collect_garbage(&covered, keep_version))
            .await
    }

    async fn erase_user(
        &self,
        user_id: &str,
        marker: (Partition, Offset),
    ) -> Result<(), StoreError> {
        let user = user_id.to_owned();
        self.blocking(move |inner| inner.erase_user(&user, marker))
            .await
    }

    async fn batch_checkpoint(&self) -> Result<Option<BatchCheckpoint>, StoreError> {
        self.blocking(Inner::batch_checkpoint).await
    }

    async fn save_batch_checkpoint(
        &self,
        checkpoint: Option<&BatchCheckpoint>,
    ) -> Result<(), StoreError> {
        let checkpoint = checkpoint.cloned();
        self.blocking(move |inner| inner.save_batch_checkpoint(checkpoint.as_ref()))
            .await
    }

    async fn claim_batch_checkpoint(
        &self,
        candidate: &BatchCheckpoint,
    ) -> Result<BatchCheckpoint, StoreError> {
        let candidate = candidate.clone();
        self.blocking(move |inner| inner.claim_batch_checkpoint(&candidate))
            .await
    }

    async fn save_batch_part(&self, version: u64, part: &BatchPart) -> Result<(), StoreError> {
        let part = part.clone();
        self.blocking(move |inner| inner.save_batch_part(version, &part))
            .await
    }

    async fn batch_parts(&self, version: u64) -> Result<Vec<BatchPart>, StoreError> {
        self.blocking(move |inner| inner.batch_parts(version)).await
    }
}
