//! In-process caches of decoded values; correct by construction.
//!
//! * [`RecordCache`]: decoded [`UserRecord`]s keyed by (version, user), in
//!   the embedded store and in front of Redis. Records of a version are
//!   immutable once written and only published versions are read, so a
//!   cached record is never stale (an erasure replaces records in place,
//!   and its speed-entry marker voids whatever record is merged with it).
//!   For the same reason a version's *lack* of a record of a user is kept
//!   too ([`VersionedCache::insert_absent`]). One slot per user holds one
//!   version: a newer version replaces the older one. The cache is bounded
//!   by the encoded size of its records and evicts with the second-chance
//!   (CLOCK) rule, per shard.
//! * [`LoadLocks`]: one load of a record at a time, the others waiting
//!   for it (blocking readers; the async path has `KeptRecords`).
//! * [`ManifestCache`]: the decoded published manifest together with the
//!   bytes it was decoded from. A reader compares the bytes it read in its own
//!   transaction with the cached ones, so it never uses a manifest other than
//!   the one its snapshot holds, and publishing needs no invalidation step.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use foldhash::fast::RandomState;
use smol_str::SmolStr;

use signals_core::UserRecord;

use crate::BatchManifest;

const SHARDS: usize = 16;

/// What a slot saying "no record" holds in memory, beside the user's id.
const ABSENT_WEIGHT: usize = 64;

/// Values leaving together that weigh this much are freed on a thread of
/// their own.
const FREED_APART: usize = 1 << 20;

/// Frees values that left a cache, after its locks are released. Heavy
/// ones are freed on a thread of their own: the read that replaces a heavy
/// user's record with the next version's is that user's first read of it,
/// already the slowest, and freeing the old one (a decoded 1M-event record
/// with its tiles) took it a tenth of a second more.
fn free<V: Send + Sync + 'static>(leaving: Vec<Slot<V>>) {
    if leaving.iter().map(|slot| slot.weight).sum::<usize>() < FREED_APART {
        return;
    }
    // Should the thread not start, the closure and the values with it are
    // dropped here: freed on this thread after all.
    let _ = std::thread::Builder::new()
        .name("cache-free".into())
        .spawn(move || drop(leaving));
}

/// Decoded user records of published versions, bounded in bytes.
pub type RecordCache = VersionedCache<UserRecord>;

/// One value per user, of one version, bounded by the values' weights.
///
/// Half the budget is split among shards by user; the other half is one
/// more shard for values heavier than a shard's share. Those are the
/// heaviest users' records and tails, whose reads cost the most to redo
/// and who are read the most: without it a record over 1/32 of the budget
/// could never be kept at all.
pub struct VersionedCache<V> {
    /// Picks a user's shard: foldhash, seeded per cache (user ids are
    /// client input).
    hasher: RandomState,
    shards: Vec<Mutex<Shard<V>>>,
    shard_budget: usize,
    large: Mutex<Shard<V>>,
    large_budget: usize,
}

/// Users are `SmolStr`s: an id of up to 23 bytes sits in the table itself,
/// so a lookup compares it without a miss on a heap string (a multi-get
/// looks up each of its users in three caches).
struct Shard<V> {
    slots: HashMap<SmolStr, Slot<V>, RandomState>,
    /// Users in insertion order, for the CLOCK hand.
    queue: VecDeque<SmolStr>,
    weight: usize,
}

impl<V> Default for Shard<V> {
    fn default() -> Self {
        Shard {
            slots: HashMap::default(),
            queue: VecDeque::new(),
            weight: 0,
        }
    }
}

struct Slot<V> {
    version: u64,
    /// None: the version has no value for the user ([`VersionedCache::insert_absent`]).
    record: Option<Arc<V>>,
    weight: usize,
    referenced: bool,
}

impl<V: Send + Sync + 'static> VersionedCache<V> {
    /// A cache holding values of about `budget` bytes in total (0 disables it).
    pub fn new(budget: usize) -> VersionedCache<V> {
        VersionedCache {
            hasher: RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_budget: budget / 2 / SHARDS,
            large: Mutex::new(Shard::default()),
            large_budget: budget / 2,
        }
    }

    fn shard(&self, user: &str) -> &Mutex<Shard<V>> {
        &self.shards[self.hasher.hash_one(user) as usize % SHARDS]
    }

    /// The user's slot, wherever it is, marked referenced.
    fn find<T>(&self, user: &str, read: impl Fn(&Slot<V>) -> Option<T>) -> Option<T> {
        [self.shard(user), &self.large]
            .into_iter()
            .find_map(|tier| {
                let mut tier = tier.lock().unwrap_or_else(PoisonError::into_inner);
                let slot = tier.slots.get_mut(user)?;
                let found = read(slot)?;
                slot.referenced = true;
                Some(found)
            })
    }

    /// `user`'s record of `version`, if cached.
    pub fn get(&self, version: u64, user: &str) -> Option<Arc<V>> {
        self.known(version, user).flatten()
    }

    /// What is known here of `user`'s record of `version`: `None` when
    /// nothing is, `Some(None)` when the version has no record of them.
    pub fn known(&self, version: u64, user: &str) -> Option<Option<Arc<V>>> {
        self.find(user, |slot| {
            (slot.version == version).then(|| slot.record.clone())
        })
    }

    /// `user`'s value of whichever version is cached.
    pub fn latest(&self, user: &str) -> Option<Arc<V>> {
        self.find(user, |slot| slot.record.clone())
    }

    /// Caches `record` (encoded in `weight` bytes) as `user`'s record of `version`.
    pub fn insert(&self, version: u64, user: &str, record: Arc<V>, weight: usize) {
        self.insert_slot(version, user, Some(record), weight);
    }

    /// Caches that `version` has no record of `user`. Users without one
    /// are a tenth of a Zipf workload's: each of their reads went to the
    /// store (a blocking-pool hop, or a Redis round trip) to find nothing.
    pub fn insert_absent(&self, version: u64, user: &str) {
        self.insert_slot(version, user, None, ABSENT_WEIGHT + user.len());
    }

    fn insert_slot(&self, version: u64, user: &str, record: Option<Arc<V>>, weight: usize) {
        let (tier, budget, other) = if weight <= self.shard_budget {
            (self.shard(user), self.shard_budget, &self.large)
        } else if weight <= self.large_budget {
            (&self.large, self.large_budget, self.shard(user))
        } else {
            // Too heavy to keep; an older version's value is superseded
            // all the same (it must not stand in for this one).
            return self.remove_older(user, version);
        };
        // Values leave under the locks but are freed after them: freeing a
        // heavy user's decoded record takes a tenth of a second, and every
        // reader of its tier would wait on the lock meanwhile.
        let mut leaving = Vec::new();
        {
            // A user's value lives in one tier: the one its weight picks now.
            let mut other = other.lock().unwrap_or_else(PoisonError::into_inner);
            if other
                .slots
                .get(user)
                .is_some_and(|old| old.version > version)
            {
                return;
            }
            leaving.extend(other.remove(user));
        }
        let mut shard = tier.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = Slot {
            version,
            record,
            weight,
            referenced: false,
        };
        match shard.slots.get_mut(user) {
            Some(old) if old.version > version => return,
            Some(old) => {
                let old = std::mem::replace(old, slot);
                shard.weight -= old.weight;
                leaving.push(old);
            }
            None => {
                let user = SmolStr::new(user);
                shard.slots.insert(user.clone(), slot);
                shard.queue.push_back(user);
            }
        }
        shard.weight += weight;
        shard.evict(budget, &mut leaving);
        drop(shard);
        free(leaving);
    }

    /// Forgets `user`'s value of any version before `version`.
    fn remove_older(&self, user: &str, version: u64) {
        let leaving: Vec<Slot<V>> = [self.shard(user), &self.large]
            .into_iter()
            .filter_map(|tier| {
                let mut tier = tier.lock().unwrap_or_else(PoisonError::into_inner);
                match tier.slots.get(user) {
                    Some(slot) if slot.version < version => tier.remove(user),
                    _ => None,
                }
            })
            .collect();
        free(leaving);
    }

    /// Forgets `user`'s record (their records were erased).
    pub fn remove(&self, user: &str) {
        let leaving: Vec<Slot<V>> = [self.shard(user), &self.large]
            .into_iter()
            .filter_map(|tier| {
                tier.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(user)
            })
            .collect();
        free(leaving);
    }

    /// Whether no lock of the cache is held.
    #[cfg(test)]
    fn unlocked(&self) -> bool {
        self.shards
            .iter()
            .chain([&self.large])
            .all(|tier| tier.try_lock().is_ok())
    }

    /// Encoded bytes of the records held now.
    #[cfg(test)]
    pub fn weight(&self) -> usize {
        self.shards
            .iter()
            .chain([&self.large])
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).weight)
            .sum()
    }
}

impl<V> Shard<V> {
    fn remove(&mut self, user: &str) -> Option<Slot<V>> {
        let slot = self.slots.remove(user)?;
        self.weight -= slot.weight;
        Some(slot)
    }

    /// Moves unreferenced slots at the hand into `leaving` until the shard
    /// fits `budget`.
    fn evict(&mut self, budget: usize, leaving: &mut Vec<Slot<V>>) {
        while self.weight > budget {
            let Some(user) = self.queue.pop_front() else {
                return;
            };
            match self.slots.get_mut(&user) {
                Some(slot) if slot.referenced => {
                    slot.referenced = false;
                    self.queue.push_back(user);
                }
                Some(_) => leaving.extend(self.remove(&user)),
                None => {}
            }
        }
    }
}

/// Loads of records under way on blocking threads, by version and user: a
/// reader of a record being loaded waits for that load, then finds the
/// record kept, instead of reading and decoding it beside it (a heavy
/// user's first reads after a batch: once, not once per reader, in time
/// and in memory).
#[derive(Default)]
pub struct LoadLocks {
    locks: Mutex<HashMap<RecordSlot, Arc<Mutex<()>>>>,
}

/// A record's version and user.
type RecordSlot = (u64, SmolStr);

impl LoadLocks {
    /// Runs `load` of `user`'s record of `version` once no other load of it
    /// is under way.
    pub fn one_at_a_time<T>(&self, version: u64, user: &str, load: impl FnOnce() -> T) -> T {
        let slot = (version, SmolStr::new(user));
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(slot.clone())
            .or_default()
            .clone();
        let loaded = {
            let _turn = lock.lock().unwrap_or_else(PoisonError::into_inner);
            load()
        };
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        // Holds are taken under this lock: the map's and this one's mean
        // nobody waits.
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(&slot);
        }
        loaded
    }

    /// Claims the load of `user`'s record of `version` for a caller that
    /// runs it later ([`Self::one_at_a_time`]): `false` if a load of it is
    /// under way or claimed already.
    pub fn claim(&self, version: u64, user: &str) -> bool {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = (version, SmolStr::new(user));
        if locks.contains_key(&slot) {
            return false;
        }
        locks.insert(slot, Arc::default());
        true
    }

    /// Gives up a [`Self::claim`] once its load ran (or failed): the
    /// claim leaves unless a load of it is under way or waited for.
    pub fn release(&self, version: u64, user: &str) {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = (version, SmolStr::new(user));
        if locks
            .get(&slot)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&slot);
        }
    }

    /// Whether no load is under way or waited for.
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// The decoded published manifest and the bytes it came from.
#[derive(Default)]
pub struct ManifestCache {
    current: RwLock<Option<Decoded>>,
}

struct Decoded {
    bytes: Box<[u8]>,
    manifest: Arc<BatchManifest>,
}

impl ManifestCache {
    /// The cached manifest if it was decoded from exactly `bytes`.
    pub fn get(&self, bytes: &[u8]) -> Option<Arc<BatchManifest>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|d| *d.bytes == *bytes)
            .map(|d| d.manifest.clone())
    }

    /// Remembers `manifest` as decoded from `bytes`.
    pub fn set(&self, bytes: &[u8], manifest: Arc<BatchManifest>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Decoded {
            bytes: bytes.into(),
            manifest,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{OnceLock, Weak};
    use std::time::{Duration, Instant};

    use super::*;

    /// Eight readers of a record at once load it once: the others wait
    /// and find it kept; the locks leave nothing behind.
    #[test]
    fn readers_of_a_record_being_loaded_wait_for_that_load() {
        let locks = LoadLocks::default();
        // What a store does: look for the record kept, else load and keep it.
        let kept = Mutex::new(None);
        let loads = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    locks.one_at_a_time(1, "u", || {
                        if kept.lock().expect("lock").is_none() {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            *kept.lock().expect("lock") = Some("record");
                        }
                    })
                });
            }
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(locks.is_idle());
        // A claimed load starts no other until it ran, however it went.
        assert!(locks.claim(2, "u"));
        assert!(!locks.claim(2, "u"));
        locks.one_at_a_time(2, "u", || ());
        assert!(locks.is_idle(), "the load takes its claim with it");
        assert!(locks.claim(2, "u"));
        locks.release(2, "u");
        assert!(locks.is_idle(), "a load that never ran gives its claim up");
        // Another user's load does not wait for this one's.
        let started = Instant::now();
        std::thread::scope(|scope| {
            let locks = &locks;
            scope.spawn(move || {
                locks.one_at_a_time(1, "slow", || std::thread::sleep(Duration::from_millis(500)))
            });
            std::thread::sleep(Duration::from_millis(20));
            locks.one_at_a_time(1, "quick", || ());
            assert!(started.elapsed() < Duration::from_millis(400));
        });
        assert!(locks.is_idle());
    }

    fn record(horizon: i64) -> Arc<UserRecord> {
        Arc::new(UserRecord {
            horizon,
            ..UserRecord::default()
        })
    }

    #[test]
    fn one_version_per_user_and_newer_versions_win() {
        let cache = RecordCache::new(SHARDS * 1000);
        cache.insert(1, "u", record(1), 10);
        assert_eq!(cache.get(1, "u").map(|r| r.horizon), Some(1));
        assert!(cache.get(2, "u").is_none());
        cache.insert(2, "u", record(2), 10);
        assert!(cache.get(1, "u").is_none());
        cache.insert(1, "u", record(1), 10);
        assert_eq!(cache.get(2, "u").map(|r| r.horizon), Some(2));
        assert_eq!(cache.weight(), 10);
        // A newer version too heavy to keep still supersedes the one kept.
        cache.insert(3, "u", record(3), SHARDS * 1000);
        assert!(cache.latest("u").is_none());
        assert_eq!(cache.weight(), 0);
    }

    #[test]
    fn a_version_without_a_record_of_a_user_is_known_until_a_newer_one() {
        let cache = RecordCache::new(SHARDS * 1000);
        assert!(cache.known(1, "u").is_none(), "nothing known yet");
        cache.insert_absent(1, "u");
        assert!(matches!(cache.known(1, "u"), Some(None)));
        assert!(cache.get(1, "u").is_none() && cache.latest("u").is_none());
        assert!(
            cache.known(2, "u").is_none(),
            "of another version nothing is known"
        );
        cache.insert(2, "u", record(2), 10);
        assert_eq!(cache.get(2, "u").map(|r| r.horizon), Some(2));
        cache.insert_absent(1, "u");
        assert_eq!(cache.get(2, "u").map(|r| r.horizon), Some(2), "older loses");
        cache.insert_absent(3, "u");
        assert!(matches!(cache.known(3, "u"), Some(None)));
        assert_eq!(cache.weight(), ABSENT_WEIGHT + 1);
        cache.remove("u");
        assert!(cache.known(3, "u").is_none());
    }

    /// A value whose drop records whether the cache's locks were free.
    struct Probe {
        cache: Arc<OnceLock<Weak<VersionedCache<Probe>>>>,
        freed: Arc<AtomicUsize>,
        freed_unlocked: Arc<AtomicUsize>,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.freed.fetch_add(1, Ordering::Relaxed);
            if let Some(cache) = self.cache.get().and_then(Weak::upgrade) {
                if cache.unlocked() {
                    self.freed_unlocked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    #[test]
    fn values_are_freed_outside_the_locks() {
        let cache = Arc::new(VersionedCache::<Probe>::new(SHARDS * 100));
        let slot = Arc::new(OnceLock::new());
        let _ = slot.set(Arc::downgrade(&cache));
        let (freed, freed_unlocked) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let probe = || {
            Arc::new(Probe {
                cache: slot.clone(),
                freed: freed.clone(),
                freed_unlocked: freed_unlocked.clone(),
            })
        };
        // Replaced in the large tier, moved between tiers, evicted from a
        // shard, removed.
        cache.insert(1, "heavy", probe(), 300);
        cache.insert(2, "heavy", probe(), 300);
        cache.insert(3, "heavy", probe(), 20);
        for i in 0..100 {
            cache.insert(1, &format!("user-{i}"), probe(), 30);
        }
        cache.remove("heavy");
        let freed = freed.load(Ordering::Relaxed);
        assert!(freed > 50, "{freed} freed");
        assert_eq!(freed_unlocked.load(Ordering::Relaxed), freed);
    }

    /// A value that notes the thread it is freed on.
    struct FreedOn(Arc<Mutex<Vec<std::thread::ThreadId>>>);

    impl Drop for FreedOn {
        fn drop(&mut self) {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(std::thread::current().id());
        }
    }

    #[test]
    fn heavy_values_are_freed_on_a_thread_of_their_own() {
        let cache = VersionedCache::new(8 * FREED_APART);
        let threads = Arc::new(Mutex::new(Vec::new()));
        let value = || Arc::new(FreedOn(threads.clone()));
        let freed = || {
            threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        let here = std::thread::current().id();

        cache.insert(1, "light", value(), 10);
        cache.insert(2, "light", value(), 10);
        assert_eq!(freed(), vec![here], "a light value is freed by its caller");

        cache.insert(1, "heavy", value(), 2 * FREED_APART);
        cache.insert(2, "heavy", value(), 2 * FREED_APART);
        let deadline = Instant::now() + Duration::from_secs(10);
        while freed().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let freed = freed();
        assert_eq!(freed.len(), 2, "the replaced heavy value is freed");
        assert_ne!(freed[1], here, "on a thread of its own");
    }

    #[test]
    fn the_bound_holds_and_referenced_records_get_a_second_chance() {
        let cache = RecordCache::new(SHARDS * 100);
        let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        cache.insert(1, "hot", record(0), 30);
        for user in &users {
            let _ = cache.get(1, "hot");
            cache.insert(1, user, record(0), 30);
            assert!(cache.weight() <= SHARDS * 100);
        }
        assert!(cache.get(1, "hot").is_some());
        assert!(users.iter().filter(|u| cache.get(1, u).is_some()).count() > 0);
        // Over half the budget: never kept.
        cache.insert(1, "huge", record(0), SHARDS * 50 + 1);
        assert!(cache.get(1, "huge").is_none());
    }

    /// Values heavier than a shard's share (a heavy user's record) are kept
    /// in the large tier, one value per user across both tiers, within the
    /// budget.
    #[test]
    fn heavy_values_are_kept_and_a_user_has_one_value_across_tiers() {
        let cache = RecordCache::new(SHARDS * 100);
        // A shard's share is 50; the large tier holds up to 800.
        cache.insert(1, "heavy", record(1), 300);
        assert_eq!(cache.get(1, "heavy").map(|r| r.horizon), Some(1));
        cache.insert(2, "heavy", record(2), 20);
        assert_eq!(cache.latest("heavy").map(|r| r.horizon), Some(2));
        assert_eq!(cache.weight(), 20, "the heavy version left the large tier");
        cache.insert(1, "heavy", record(1), 300);
        assert_eq!(
            cache.latest("heavy").map(|r| r.horizon),
            Some(2),
            "older loses"
        );
        cache.insert(3, "heavy", record(3), 300);
        assert_eq!(cache.weight(), 300);
        for i in 0..10 {
            cache.insert(1, &format!("big-{i}"), record(0), 300);
            assert!(cache.weight() <= SHARDS * 100);
        }
        cache.remove("big-9");
        assert!(cache.get(1, "big-9").is_none());
    }

    #[test]
    fn the_manifest_is_reused_only_for_identical_bytes() {
        let cache = ManifestCache::default();
        assert!(cache.get(b"m1").is_none());
        let manifest = Arc::new(BatchManifest {
            version: 1,
            position: Default::default(),
            horizon: 0,
            created_at: 0,
            definitions: Default::default(),
            users: 0,
            events: 0,
        });
        cache.set(b"m1", manifest.clone());
        assert!(cache.get(b"m1").is_some_and(|m| Arc::ptr_eq(&m, &manifest)));
        assert!(cache.get(b"m2").is_none());
    }
}
