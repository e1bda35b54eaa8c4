//! Serving's speed tails, kept between reads.
//!
//! Between batch runs a popular user's speed tail grows to thousands of
//! entries, and those users are read most. Reading, decoding and folding
//! the whole tail on every read made their reads the slowest ones.
//! [`TailCache`] keeps each user's [`SpeedTail`] (sorted, tiled runs) with
//! the log position up to which it holds every entry, and asks the store
//! only for the entries past it ([`ServingStore::user_history_since`]).
//!
//! Correct by construction:
//!
//! * **Complete up to the frontier.** The frontier moves only up to the
//!   speed layer's recorded progress, read *before* the entries: progress
//!   is recorded once a write is durable, so every entry below it was in
//!   the store when the entries were read. Entries past it (a write still
//!   landing, on CQL row by row) are used for this read only and read
//!   again next time. A progress reading of any age is a lower bound, so
//!   it is refreshed at most every `progress_refresh`.
//! * **One version.** A kept tail belongs to the published version it was
//!   read over; a new version starts a new tail from its position (and
//!   garbage collection keeps the entries of the version in use).
//! * **Erasure.** An erased user's deletion marker is a speed entry at or
//!   past the published position, so it reaches the kept tail like any
//!   other entry; [`ServingStore::evict_user`] also drops the tail at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use signals_core::{LogPosition, SpeedTail, UserRecord};
use tracing::debug;

use crate::cache::VersionedCache;
use crate::forward::forward_to;
use crate::{PositionedEntry, ServedHistory, ServingStore, StoreError, StoreReads, TailMark};

/// What one kept event weighs, roughly, decoded and in its run's tiles.
const EVENT_WEIGHT: usize = 384;

/// A serving store that keeps users' speed tails between reads.
pub struct TailCache {
    inner: Arc<dyn ServingStore>,
    tails: VersionedCache<KeptTail>,
    progress: ProgressReading,
}

/// A user's tail over one version, complete up to `frontier`.
struct KeptTail {
    version: Option<u64>,
    frontier: Arc<LogPosition>,
    /// The store's name for the read it was kept from.
    change_token: Option<u64>,
    tail: SpeedTail,
}

/// The speed layer's progress as last read: a lower bound of what is durable.
struct ProgressReading {
    refresh: Duration,
    last: Mutex<Option<(Instant, Arc<LogPosition>)>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl TailCache {
    /// Keeps tails of about `budget` bytes in front of `inner`, reading the
    /// speed layer's progress at most every `progress_refresh`.
    pub fn new(
        inner: Arc<dyn ServingStore>,
        budget: usize,
        progress_refresh: Duration,
    ) -> TailCache {
        TailCache {
            inner,
            tails: VersionedCache::new(budget),
            progress: ProgressReading {
                refresh: progress_refresh,
                last: Mutex::new(None),
                refreshing: tokio::sync::Mutex::new(()),
            },
        }
    }

    /// Everything before this position is durable in the store.
    async fn durable(&self) -> Arc<LogPosition> {
        let last = self
            .progress
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some((at, position)) = &last {
            if at.elapsed() < self.progress.refresh {
                return position.clone();
            }
        }
        // One reader refreshes; the others go on with the older reading,
        // which is still a lower bound.
        let stale = || last.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
        let Ok(_refreshing) = self.progress.refreshing.try_lock() else {
            return stale();
        };
        match self.inner.speed_progress().await {
            Ok(progress) => {
                let position = Arc::new(progress.position);
                *self
                    .progress
                    .last
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) =
                    Some((Instant::now(), position.clone()));
                position
            }
            Err(error) => {
                // Nothing is wrong with a tail that stops growing for a
                // while: entries past it are read on every request.
                debug!(%error, "cannot read the speed layer's progress");
                stale()
            }
        }
    }
}

/// The cache's key for a version: `None` (nothing published) below all.
fn slot_version(version: Option<u64>) -> u64 {
    version.map_or(0, |v| v.saturating_add(1))
}

#[async_trait]
impl StoreReads for TailCache {
    forward_to!(inner: speed_progress, lookup_events, published, batch_record, speed_entries, check);
}

#[async_trait]
impl ServingStore for TailCache {
    forward_to!(inner: serving_manifest, user_history_since, degraded, log_end_seen);

    async fn served_history(&self, user_id: &str) -> Result<ServedHistory, StoreError> {
        let durable = self.durable().await;
        let kept = self.tails.latest(user_id);
        let mark = kept.as_ref().map(|k| TailMark {
            version: k.version,
            frontier: k.frontier.clone(),
            change_token: k.change_token,
        });
        let history = self
            .inner
            .user_history_since(user_id, mark.as_ref())
            .await?;
        let version = history.manifest.as_ref().map(|m| m.version);
        let base = match &kept {
            Some(kept) if history.resumed => kept.tail.clone(),
            _ => SpeedTail::default(),
        };
        let (settled, landing): (Vec<PositionedEntry>, Vec<PositionedEntry>) = history
            .entries
            .into_iter()
            .partition(|e| durable.covers(e.partition, e.offset));
        let record = &history.record;
        // Shared with the kept tail while it is complete past what is
        // durable, as it is for a user with nothing new.
        let frontier = if history.from.reaches(&durable) {
            history.from
        } else {
            let mut frontier = (*history.from).clone();
            for (partition, next) in durable.iter() {
                frontier.advance(partition, next);
            }
            Arc::new(frontier)
        };
        // The store's token says "nothing since this read" only of a tail
        // that keeps all the read saw: entries still landing are read again.
        let change_token = history.change_token.filter(|_| landing.is_empty());
        let moved = !history.resumed
            || !settled.is_empty()
            || kept
                .as_ref()
                .is_none_or(|k| *k.frontier != *frontier || k.change_token != change_token);
        let tail = if settled.is_empty() {
            base
        } else {
            extended(base, record, settled).await?
        };
        if moved {
            let weight = EVENT_WEIGHT * (tail.len() + 1);
            let kept = KeptTail {
                version,
                frontier,
                change_token,
                tail: tail.clone(),
            };
            self.tails
                .insert(slot_version(version), user_id, Arc::new(kept), weight);
        }
        let tail = if landing.is_empty() {
            tail
        } else {
            extended(tail, record, landing).await?
        };
        Ok(ServedHistory {
            manifest: history.manifest,
            record: history.record,
            tail,
        })
    }

    async fn evict_user(&self, user_id: &str) -> Result<(), StoreError> {
        self.tails.remove(user_id);
        self.inner.evict_user(user_id).await
    }
}

/// Extensions of this many entries or more run on the blocking pool, and
/// so does the first over a record of [`DIGESTED_APART_FROM`] events or
/// more, which digests the record's ids first: a heavy user's first read
/// of a version sorts a day of entries and digests a million ids, some
/// 100 ms that every request queued on a runtime thread would wait for.
const EXTENDED_APART_FROM: usize = 4_096;
const DIGESTED_APART_FROM: usize = 16_384;

/// `tail` followed by `entries`, for a user whose record is `record`.
async fn extended(
    tail: SpeedTail,
    record: &Option<Arc<UserRecord>>,
    entries: Vec<PositionedEntry>,
) -> Result<SpeedTail, StoreError> {
    let entries = entries.into_iter().map(|e| e.entry);
    let digests = record
        .as_ref()
        .is_some_and(|r| r.events.len() >= DIGESTED_APART_FROM && !r.ids.is_built());
    if entries.len() < EXTENDED_APART_FROM && !digests {
        return Ok(tail.extended(record.as_deref(), entries));
    }
    let record = record.clone();
    tokio::task::spawn_blocking(move || tail.extended(record.as_deref(), entries))
        .await
        .map_err(|e| StoreError::Backend(format!("extending a speed tail stopped: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{at, served_ids, write};
    use crate::embedded::EmbeddedStore;
    use crate::{BatchStore, SpeedStore};

    #[tokio::test]
    async fn entries_past_the_recorded_progress_count_but_are_read_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("opens"));
        let cached = TailCache::new(store.clone(), 1 << 20, Duration::ZERO);
        // A write whose progress stops short of its entries, as a CQL
        // reader sees a write still landing: offsets 20..40 are not settled.
        let entries = (0..40).map(|o| at("u", 0, o)).collect();
        store
            .apply_speed(write(entries, &[(0, 20)]).into())
            .await
            .expect("apply");
        let first = served_ids(cached.served_history("u").await.expect("read"));
        assert_eq!(first.len(), 40, "landing entries count in this answer");
        let kept = cached.tails.latest("u").expect("kept");
        assert_eq!(kept.frontier.next(0), 20, "but are not kept");
        assert_eq!(kept.tail.len(), 20);

        let entries = (40..50).map(|o| at("u", 0, o)).collect();
        store
            .apply_speed(write(entries, &[(0, 50)]).into())
            .await
            .expect("apply");
        let second = served_ids(cached.served_history("u").await.expect("read"));
        let mut expected: Vec<String> = (0..50).map(|o| format!("p0-{o}")).collect();
        expected.sort();
        assert_eq!(second, expected, "each entry once");
        let kept = cached.tails.latest("u").expect("kept");
        assert_eq!((kept.frontier.next(0), kept.tail.len()), (50, 50));
    }

    /// A heavy user's extensions run apart (a first one digests the
    /// record's ids, a long one sorts many entries) and answer as inline
    /// ones do: the speed layer's copies of the record's events dropped.
    #[tokio::test]
    async fn a_heavy_users_tail_extended_apart_drops_the_records_own_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("opens"));
        let events = DIGESTED_APART_FROM + 100;
        let mut record = crate::contract::record("u", "unused");
        record.events = (0..events)
            .rev()
            .map(|i| crate::contract::event(&format!("b-{i}"), "u", i as i64))
            .collect();
        crate::contract::publish_version(&*store, 1, &[(0, 0)], vec![("u".into(), record)]).await;
        let cached = TailCache::new(store.clone(), 1 << 30, Duration::ZERO);
        let copy = |id: &str, offset| PositionedEntry {
            entry: signals_core::SpeedEntry::Event(crate::contract::event(id, "u", 7)),
            ..at("u", 0, offset)
        };
        let long = EXTENDED_APART_FROM as u64;
        let mut entries: Vec<PositionedEntry> = (0..long).map(|o| at("u", 0, o)).collect();
        entries.push(copy("b-7", long));
        store
            .apply_speed(write(entries, &[(0, long + 1)]).into())
            .await
            .expect("apply");
        let first = cached.served_history("u").await.expect("read");
        assert!(first.record.as_ref().is_some_and(|r| r.ids.is_built()));
        assert_eq!(first.tail.len(), EXTENDED_APART_FROM, "the copy is dropped");
        assert_eq!(served_ids(first).len(), events + EXTENDED_APART_FROM);

        // A short extension over the digested record runs inline, alike.
        let entries = vec![at("u", 0, long + 1), copy("b-8", long + 2)];
        store
            .apply_speed(write(entries, &[(0, long + 3)]).into())
            .await
            .expect("apply");
        let second = cached.served_history("u").await.expect("read");
        assert_eq!(second.tail.len(), EXTENDED_APART_FROM + 1);
        assert_eq!(served_ids(second).len(), events + EXTENDED_APART_FROM + 1);
    }

    /// The embedded store answers "nothing new" from memory for a user no
    /// write touched since the kept read; a tail that left entries landing
    /// must still read them again once the progress covers them, even when
    /// the write that moves the progress is another user's.
    #[tokio::test]
    async fn entries_left_landing_are_read_again_when_another_users_write_settles_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("opens"));
        store
            .write_batch(1, vec![("u".into(), crate::contract::record("u", "b-1"))])
            .await
            .expect("batch");
        store
            .publish(&crate::contract::manifest(1, &[(0, 0)]))
            .await
            .expect("publish");
        let cached = TailCache::new(store.clone(), 1 << 20, Duration::ZERO);
        let entries = (0..4).map(|o| at("u", 0, o)).collect();
        store
            .apply_speed(write(entries, &[(0, 2)]).into())
            .await
            .expect("apply");
        assert_eq!(
            served_ids(cached.served_history("u").await.expect("read")).len(),
            5
        );
        assert_eq!(
            served_ids(cached.served_history("u").await.expect("read")).len(),
            5
        );

        store
            .apply_speed(write(vec![at("v", 0, 4)], &[(0, 5)]).into())
            .await
            .expect("apply");
        let expected = ["b-1", "p0-0", "p0-1", "p0-2", "p0-3"];
        assert_eq!(
            served_ids(cached.served_history("u").await.expect("read")),
            expected
        );
        let kept = cached.tails.latest("u").expect("kept");
        assert_eq!((kept.frontier.next(0), kept.tail.len()), (5, 4));
        assert!(kept.change_token.is_some(), "nothing is landing any more");
        assert_eq!(
            served_ids(cached.served_history("u").await.expect("read")),
            expected,
            "and a read from memory holds the same"
        );
    }
}
