//! The signal store port.
//!
//! Holds three things, all append-only or versioned:
//!
//! * **speed entries**: per user, keyed by the log position that produced
//!   them, written by the speed layer together with its checkpoint;
//! * **the event index**: event id → whether it was seen (and for whom) or
//!   retracted; it makes the speed layer idempotent and routes retractions;
//! * **batch versions**: one immutable [`UserRecord`] per user and version,
//!   made visible only by publishing a [`BatchManifest`], atomically.
//!
//! Serving reads a user's record of the published version and their speed
//! entries at or after the manifest's position, as one consistent snapshot.
//! Garbage collection lags one version behind publishing so that a reader
//! holding the previous manifest never finds its speed entries gone.
//!
//! The port is split by role, so that each layer sees only what it uses:
//!
//! * [`StoreReads`]: the reads several roles make (progress, index,
//!   published version, records, speed entries, readiness);
//! * [`SpeedStore`]: the speed layer's one durable write;
//! * [`ServingStore`]: one user's history for serving and the insights
//!   worker, readiness of the path; the Redis cache wraps this role only;
//! * [`BatchStore`]: versions, publication, garbage collection, erasure and
//!   the checkpoints of resumable runs.
//!
//! A backend (embedded, ScyllaDB) implements all of them, which makes it a
//! [`SignalStore`]; one contract suite runs against each backend.

#[cfg(feature = "redis")]
mod breaker;
mod cache;
mod changes;
mod codec;
pub mod embedded;
mod error;
#[cfg(feature = "scylla")]
pub mod follow;
mod forward;
pub mod insights;
pub mod kept_records;
#[cfg(feature = "redis")]
pub mod redis_cache;
#[cfg(feature = "scylla")]
pub mod scylla;
mod tail_cache;
mod types;

#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
pub use cache::VersionedCache;
pub use codec::EncodedRecord;
pub use error::StoreError;
pub use insights::InsightsStore;
use signals_core::{LogPosition, Offset, Partition, UserRecord};
pub use tail_cache::TailCache;
pub use types::*;

/// Reads of stored data that several roles make: the speed layer's
/// progress, the event index, the published version and its records, a
/// user's speed entries, and whether the store answers.
#[async_trait]
pub trait StoreReads: Send + Sync + 'static {
    /// Where the speed layer resumes, and how far it has got.
    async fn speed_progress(&self) -> Result<SpeedProgress, StoreError>;

    /// What the index knows about each of `event_ids` (absent: never seen).
    async fn lookup_events(
        &self,
        event_ids: &[String],
    ) -> Result<HashMap<String, IndexEntry>, StoreError>;

    /// The published batch version, if any.
    async fn published(&self) -> Result<Option<BatchManifest>, StoreError>;

    /// One user's record of `version`, if the version has one.
    async fn batch_record(
        &self,
        version: u64,
        user_id: &str,
    ) -> Result<Option<Arc<UserRecord>>, StoreError>;

    /// One user's speed entries that `from` does not cover, ordered by
    /// (partition, offset), with their positions.
    async fn speed_entries(
        &self,
        user_id: &str,
        from: &LogPosition,
    ) -> Result<Vec<PositionedEntry>, StoreError>;

    /// Whether the store answers now (readiness).
    async fn check(&self) -> Result<(), StoreError>;
}

/// What the speed layer writes: speed entries, index updates and its
/// progress, together.
#[async_trait]
pub trait SpeedStore: StoreReads {
    /// Makes one batch of speed writes durable, then records `write.progress`.
    /// Applying the same write twice leaves the store as applying it once.
    /// Shared, so that a retry costs no copy of its entries.
    async fn apply_speed(&self, write: Arc<SpeedWrite>) -> Result<(), StoreError>;
}

/// What serving (the API and the insights worker) reads: one user's
/// history as one consistent snapshot, and the place of read-through
/// layers (records kept in the process, [`kept_records::KeptRecords`],
/// over Redis, `CachedStore`, over the store).
#[async_trait]
pub trait ServingStore: StoreReads {
    /// The published version serving merges: [`StoreReads::published`],
    /// or a reading of it at most a moment old where reading it costs a
    /// round trip. Any version whose records are kept answers exactly (the
    /// speed entries are taken from its own position), so a reading that
    /// lags a publication only delays the switch to the new version.
    async fn serving_manifest(&self) -> Result<Option<Arc<BatchManifest>>, StoreError> {
        Ok(self.published().await?.map(Arc::new))
    }

    /// One user's published record and newer speed entries, consistently.
    async fn user_history(&self, user_id: &str) -> Result<UserHistory, StoreError> {
        let history = self.user_history_since(user_id, None).await?;
        Ok(UserHistory {
            manifest: history.manifest,
            record: history.record,
            speed: history.entries.into_iter().map(|p| p.entry).collect(),
        })
    }

    /// One user's published record and the speed entries past `mark`
    /// (all of them when the mark is `None` or of another version),
    /// consistently.
    ///
    /// Here: the record of [`Self::serving_manifest`]'s version and the
    /// entries its position does not cover, read concurrently. Consistent
    /// because that version's records are immutable and kept until a
    /// version after the next is published, and the entries are taken from
    /// its own position. A store that reads both in one snapshot (the
    /// embedded one) answers on its own.
    async fn user_history_since(
        &self,
        user_id: &str,
        mark: Option<&TailMark>,
    ) -> Result<HistorySince, StoreError> {
        let manifest = self.serving_manifest().await?;
        history_of(self, manifest, user_id, mark).await
    }

    /// [`Self::user_history_since`] for a caller that knows no speed entry
    /// of `user` was written past `mark`'s frontier: when the mark applies
    /// to the version served, the record alone (entries come back empty);
    /// otherwise the whole read.
    async fn user_history_unchanged(
        &self,
        user_id: &str,
        mark: &TailMark,
    ) -> Result<HistorySince, StoreError> {
        history_unchanged(self, user_id, mark).await
    }

    /// One user's record and speed tail, prepared for reads. A
    /// [`TailCache`] in front of the store extends a kept tail with the
    /// entries made durable since the last read instead.
    async fn served_history(&self, user_id: &str) -> Result<ServedHistory, StoreError> {
        let history = self.user_history_since(user_id, None).await?;
        let tail = signals_core::SpeedTail::from_entries(
            history.record.as_deref(),
            history.entries.into_iter().map(|p| p.entry),
        );
        Ok(ServedHistory {
            manifest: history.manifest,
            record: history.record,
            tail,
        })
    }

    /// A part that is down without making answers wrong (a cache), if any.
    async fn degraded(&self) -> Option<String> {
        None
    }

    /// The log's end, as a reading of it for an answer's `freshness` just
    /// found it. A store that follows the speed writes polls them at its
    /// fast pace while the log is ahead of what it has followed: a quiet
    /// follower would otherwise see the first write after a quiet spell up
    /// to [`follow::quiet_every`] after it landed.
    fn log_end_seen(&self, _end: &LogPosition) {}

    /// Drops what this path keeps of `user_id` beside the store (a cached
    /// record), once the batch layer has erased them. Returns once no
    /// serving process can answer for the user from what it kept before
    /// the erasure (the deletion's promise: from then on, an unknown user).
    async fn evict_user(&self, _user_id: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// `user_id`'s history over `manifest`: their record of its version and
/// the speed entries past `mark` (at least its position), read
/// concurrently.
pub(crate) async fn history_of<S: ServingStore + ?Sized>(
    store: &S,
    manifest: Option<Arc<BatchManifest>>,
    user_id: &str,
    mark: Option<&TailMark>,
) -> Result<HistorySince, StoreError> {
    let (from, resumed) = TailMark::read_from(mark, manifest.as_deref());
    let (record, entries) = match &manifest {
        Some(m) => tokio::try_join!(
            store.batch_record(m.version, user_id),
            store.speed_entries(user_id, &from)
        )?,
        None => (None, store.speed_entries(user_id, &from).await?),
    };
    Ok(HistorySince {
        manifest,
        record,
        entries,
        resumed,
        from,
        change_token: None,
    })
}

/// [`ServingStore::user_history_unchanged`] as the port does it, for a
/// store that does it otherwise only in some cases.
pub(crate) async fn history_unchanged<S: ServingStore + ?Sized>(
    store: &S,
    user_id: &str,
    mark: &TailMark,
) -> Result<HistorySince, StoreError> {
    let manifest = store.serving_manifest().await?;
    let (from, resumed) = TailMark::read_from(Some(mark), manifest.as_deref());
    if !resumed {
        return store.user_history_since(user_id, Some(mark)).await;
    }
    let record = match &manifest {
        Some(m) => store.batch_record(m.version, user_id).await?,
        None => None,
    };
    Ok(HistorySince {
        manifest,
        record,
        entries: Vec::new(),
        resumed,
        from,
        change_token: None,
    })
}

/// What the batch layer writes: versions, their publication, garbage
/// collection, erasures and the checkpoints of resumable runs.
#[async_trait]
pub trait BatchStore: StoreReads {
    /// Writes records of an unpublished version (idempotent per user), in
    /// their stored form: a batch can make it without decoding a user's
    /// events ([`EncodedRecord::from_packed`]).
    async fn write_records(
        &self,
        version: u64,
        records: Vec<(String, EncodedRecord)>,
    ) -> Result<(), StoreError>;

    /// [`BatchStore::write_records`] of records in hand.
    async fn write_batch(
        &self,
        version: u64,
        records: Vec<(String, UserRecord)>,
    ) -> Result<(), StoreError> {
        let encoded = records
            .into_iter()
            .map(|(user, record)| Ok((user, EncodedRecord::of(&record)?)))
            .collect::<Result<_, StoreError>>()?;
        self.write_records(version, encoded).await
    }

    /// Makes `manifest` the published version in one atomic step.
    async fn publish(&self, manifest: &BatchManifest) -> Result<(), StoreError>;

    /// Drops speed entries before `covered` and versions older than `keep_version`.
    async fn collect_garbage(
        &self,
        covered: &LogPosition,
        keep_version: u64,
    ) -> Result<GarbageStats, StoreError>;

    /// Erases a deleted user: writes the deletion marker at `marker` (the
    /// log position of their `UserDeletion` record, the same entry the speed
    /// layer writes when it applies that record), removes every other speed
    /// entry of theirs, and replaces their record in every stored version,
    /// published ones included, by [`UserRecord::erased`]. Idempotent.
    async fn erase_user(
        &self,
        user_id: &str,
        marker: (Partition, Offset),
    ) -> Result<(), StoreError>;

    /// The checkpoint of a batch run that has not published yet, if any.
    async fn batch_checkpoint(&self) -> Result<Option<BatchCheckpoint>, StoreError>;

    /// Records the checkpoint of the batch run in progress (`Some`), or
    /// clears it and every share of a partitioned run (`None`). Durable
    /// once it returns.
    async fn save_batch_checkpoint(
        &self,
        checkpoint: Option<&BatchCheckpoint>,
    ) -> Result<(), StoreError>;

    /// The checkpoint of the run of `candidate.version`: `candidate` itself
    /// if there was none or only one of an older version (then recorded),
    /// otherwise the one already there, unchanged. Atomic: of several
    /// workers claiming at once, all get the same checkpoint.
    async fn claim_batch_checkpoint(
        &self,
        candidate: &BatchCheckpoint,
    ) -> Result<BatchCheckpoint, StoreError>;

    /// Records one worker's share of the partitioned run of `version`.
    async fn save_batch_part(&self, version: u64, part: &BatchPart) -> Result<(), StoreError>;

    /// Every share recorded for the run of `version`.
    async fn batch_parts(&self, version: u64) -> Result<Vec<BatchPart>, StoreError>;
}

/// A backend that plays every role: what the binary opens and the contract
/// suite tests. Implemented for every type that implements the three roles.
pub trait SignalStore: SpeedStore + ServingStore + BatchStore {}

impl<T: SpeedStore + ServingStore + BatchStore + ?Sized> SignalStore for T {}
