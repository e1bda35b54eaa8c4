//! The event index as a log (ADR 010).
//!
//! Layout 1 kept one `event_index` row per event id. Ids are random, so a
//! speed write of 20,000 events dirtied about as many random B-tree leaves,
//! and rewriting and syncing them was most of the write's cost. Now a
//! speed write appends its index updates as a few rows of its own, keyed
//! by the write's sequence number, so they land at the end of the tree:
//!
//! * the updates are split into `2^k` buckets by a stable hash of the id
//!   (k grows with the write's size, so that a row holds about
//!   [`ROW_TARGET`] updates), each bucket one row sorted by id;
//! * an in-memory map from each id's digest to the newest write that
//!   holds it ([`IndexMemo`]) finds an id again: one probe for a new id,
//!   one row read and a binary search for a known one. It is rebuilt from
//!   the rows when the store opens;
//! * older rows may still hold an id's superseded entries; the memo always
//!   points past them.
//!
//! Garbage collection drops whole writes once every update in them has
//! expired (`index_writes` keeps that time per write). An id's entries
//! only ever expire later than its older ones (`Deduplication::sealed`),
//! so dropping an id's newest entry can only leave older entries that have
//! expired as well, and an expired entry decides nothing (ADR 006): a
//! rebuild that finds one answers as if it were absent.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use signals_core::IdDigest;
use signals_schemas::Millis;

use super::tables::{INDEX_LOG, INDEX_WRITES};
use super::{codec, engine, keys};
use crate::{IndexEntry, StoreError};

/// About how many updates one `index_log` row holds: a known id costs a
/// decode of one row, so rows stay small, and a write makes at most 256.
const ROW_TARGET: usize = 128;

/// How many index entries a layout 1 conversion puts in one write.
pub(super) const CONVERSION_CHUNK: usize = 20_000;

/// One write's index updates, encoded and ready to append.
pub(super) struct IndexRows {
    buckets_log2: u8,
    /// (bucket, encoded row), bucket ascending.
    rows: Vec<(u8, Vec<u8>)>,
    summary: Vec<u8>,
}

/// What `index_writes` keeps of one write.
#[derive(Debug, Serialize, Deserialize)]
struct WriteSummary {
    /// When the last of the write's updates expires; `None`: one never does.
    expires_at: Option<Millis>,
    entries: u64,
}

impl IndexRows {
    /// Splits `updates` (each id at most once) into bucket rows.
    pub(super) fn of(updates: &[(String, IndexEntry)]) -> Result<IndexRows, StoreError> {
        let buckets_log2 = buckets_log2(updates.len());
        let mut buckets: Vec<Vec<&(String, IndexEntry)>> = vec![Vec::new(); 1 << buckets_log2];
        for update in updates {
            buckets[bucket(&update.0, buckets_log2) as usize].push(update);
        }
        let mut rows = Vec::with_capacity(buckets.len());
        for (number, mut row) in buckets.into_iter().enumerate() {
            if row.is_empty() {
                continue;
            }
            row.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            rows.push((number as u8, codec::encode(&row)?));
        }
        let expires_at = updates
            .iter()
            .map(|(_, entry)| entry.expires_at)
            .try_fold(Millis::MIN, |latest, at| at.map(|at| latest.max(at)));
        let summary = codec::encode(&WriteSummary {
            expires_at,
            entries: updates.len() as u64,
        })?;
        Ok(IndexRows {
            buckets_log2,
            rows,
            summary,
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Appends `rows` as write `write` inside `txn`.
pub(super) fn append(
    txn: &WriteTransaction,
    write: u64,
    rows: &IndexRows,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut log = txn
        .open_table(INDEX_LOG)
        .map_err(engine("open table index_log"))?;
    for (bucket, value) in &rows.rows {
        log.insert(
            keys::index_log_key(write, rows.buckets_log2, *bucket).as_slice(),
            value.as_slice(),
        )
        .map_err(engine("write an index row"))?;
    }
    let mut writes = txn
        .open_table(INDEX_WRITES)
        .map_err(engine("open table index_writes"))?;
    writes
        .insert(write, rows.summary.as_slice())
        .map_err(engine("write an index summary"))?;
    Ok(())
}

/// The smallest k with about [`ROW_TARGET`] updates per bucket, at most 8.
fn buckets_log2(updates: usize) -> u8 {
    let buckets = updates.div_ceil(ROW_TARGET).next_power_of_two();
    buckets.trailing_zeros().min(8) as u8
}

/// The bucket of `event_id` among `2^buckets_log2`: stable across
/// processes and builds, since rows are found by it after a restart.
fn bucket(event_id: &str, buckets_log2: u8) -> u8 {
    if buckets_log2 == 0 {
        return 0;
    }
    let mixed = signals_core::fnv1a64(event_id.as_bytes()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> (64 - u32::from(buckets_log2))) as u8
}

/// Where an id's newest entry is: its write and that write's bucket count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    write: u64,
    buckets_log2: u8,
}

/// Event id digest → the write holding the id's newest entry.
///
/// Digests are [`IdDigest`]s drawn when the store opens (ids come from
/// clients: see there). About 28 bytes per id.
pub(super) struct IndexMemo {
    digest: IdDigest,
    slots: RwLock<HashMap<u128, Slot, PassThrough>>,
    next_write: AtomicU64,
}

impl Default for IndexMemo {
    fn default() -> Self {
        IndexMemo {
            digest: IdDigest::default(),
            slots: RwLock::new(HashMap::default()),
            next_write: AtomicU64::new(0),
        }
    }
}

impl IndexMemo {
    fn digest(&self, event_id: &str) -> u128 {
        self.digest.of(event_id)
    }

    /// The number the next write appends under. Writes are serialised by
    /// redb's write lock, and [`Self::appended`] moves it on after commit.
    pub(super) fn next_write(&self) -> u64 {
        self.next_write.load(Ordering::Acquire)
    }

    /// Takes note of committed write `write`.
    pub(super) fn appended(&self, write: u64, rows: &IndexRows, updates: &[(String, IndexEntry)]) {
        if rows.is_empty() {
            return;
        }
        let slot = Slot {
            write,
            buckets_log2: rows.buckets_log2,
        };
        let digests: Vec<u128> = updates.iter().map(|(id, _)| self.digest(id)).collect();
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        slots.reserve(digests.len());
        for digest in digests {
            slots.insert(digest, slot);
        }
        drop(slots);
        self.next_write.store(write + 1, Ordering::Release);
    }

    /// Rebuilds the memo from every row of `log`, oldest write first so
    /// that newer entries win.
    pub(super) fn rebuild(
        &self,
        log: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ) -> Result<usize, StoreError> {
        let mut slots = HashMap::default();
        let mut next_write = 0;
        for item in log.iter().map_err(engine("scan the index log"))? {
            let (key, value) = item.map_err(engine("scan the index log"))?;
            let key = key.value();
            let (write, buckets_log2) = keys::index_log_parts(key).ok_or_else(|| {
                StoreError::Corrupt(format!("table index_log: malformed key {key:02x?}"))
            })?;
            let row = decode_row(value.value(), key)?;
            let slot = Slot {
                write,
                buckets_log2,
            };
            for (id, _) in row {
                slots.insert(self.digest(&id), slot);
            }
            next_write = write + 1;
        }
        let ids = slots.len();
        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = slots;
        self.next_write.store(next_write, Ordering::Release);
        Ok(ids)
    }

    /// What the index holds for each of `event_ids`, read from `log`; an
    /// entry whose expiry is before `now` is absent, whether or not garbage
    /// collection has dropped its write yet.
    pub(super) fn lookup(
        &self,
        log: &impl ReadableTable<&'static [u8], &'static [u8]>,
        event_ids: &[String],
        now: Millis,
    ) -> Result<HashMap<String, IndexEntry>, StoreError> {
        let mut wanted: HashMap<[u8; 10], Vec<&str>> = HashMap::new();
        {
            let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
            for id in event_ids {
                if let Some(slot) = slots.get(&self.digest(id)) {
                    let bucket = bucket(id, slot.buckets_log2);
                    let key = keys::index_log_key(slot.write, slot.buckets_log2, bucket);
                    wanted.entry(key).or_default().push(id);
                }
            }
        }
        let mut found = HashMap::new();
        for (key, ids) in wanted {
            // A row garbage collection dropped meanwhile held only expired
            // entries, which decide nothing: absent is the same answer.
            let Some(value) = log
                .get(key.as_slice())
                .map_err(engine("read the index log"))?
            else {
                continue;
            };
            let row = decode_row(value.value(), &key)?;
            for id in ids {
                if let Ok(at) = row.binary_search_by(|(other, _)| other.as_str().cmp(id)) {
                    let entry = &row[at].1;
                    if entry.expires_at.is_none_or(|expiry| expiry >= now) {
                        found.insert(id.to_owned(), entry.clone());
                    }
                }
            }
        }
        Ok(found)
    }

    /// Drops the slots of `row`'s ids that still point at `write`.
    fn forget(&self, write: u64, row: &[(String, IndexEntry)]) {
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        for (id, _) in row {
            let digest = self.digest(id);
            if slots.get(&digest).is_some_and(|slot| slot.write == write) {
                slots.remove(&digest);
            }
        }
    }

    /// How many ids the memo holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn decode_row(bytes: &[u8], key: &[u8]) -> Result<Vec<(String, IndexEntry)>, StoreError> {
    codec::decode(bytes, "index_log", || match keys::index_log_parts(key) {
        Some((write, _)) => format!("write {write}"),
        None => format!("malformed key {key:02x?}"),
    })
}

/// Drops up to `limit` writes whose updates have all expired before `now`,
/// oldest first, inside `txn`; returns (writes scanned, entries dropped).
///
/// Writes are appended in roughly the order their entries expire, so the
/// scan stops at the first write that has not expired yet, skipping writes
/// that never expire (layout 1's entries from before the window).
pub(super) fn collect(
    txn: &WriteTransaction,
    memo: &IndexMemo,
    now: Millis,
    limit: usize,
) -> Result<(usize, u64), StoreError> {
    let mut writes = txn
        .open_table(INDEX_WRITES)
        .map_err(engine("open table index_writes"))?;
    let mut doomed = Vec::new();
    let mut scanned = 0;
    for item in writes.iter().map_err(engine("scan index writes"))? {
        let (write, value) = item.map_err(engine("scan index writes"))?;
        let write = write.value();
        let summary: WriteSummary =
            codec::decode(value.value(), "index_writes", || format!("write {write}"))?;
        match summary.expires_at {
            Some(at) if at < now => doomed.push((write, summary.entries)),
            Some(_) => break,
            None => {}
        }
        scanned += 1;
        if scanned == limit {
            break;
        }
    }
    let mut log = txn
        .open_table(INDEX_LOG)
        .map_err(engine("open table index_log"))?;
    let mut dropped = 0;
    for (write, entries) in &doomed {
        let (start, end) = keys::index_log_range(*write);
        let rows: Vec<(Vec<u8>, Vec<u8>)> = log
            .range(start.as_slice()..=end.as_slice())
            .map_err(engine("scan the index log"))?
            .map(|item| item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
            .collect::<Result<_, _>>()
            .map_err(engine("scan the index log"))?;
        for (key, value) in rows {
            memo.forget(*write, &decode_row(&value, &key)?);
            log.remove(key.as_slice())
                .map_err(engine("delete an index row"))?;
        }
        writes
            .remove(*write)
            .map_err(engine("delete an index summary"))?;
        dropped += entries;
    }
    Ok((scanned, dropped))
}

/// A hasher for keys that are already uniform random digests.
#[derive(Clone, Copy, Default)]
struct PassThrough;

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64 ^ (value >> 64) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_with_the_write_and_stay_stable() {
        assert_eq!(buckets_log2(0), 0);
        assert_eq!(buckets_log2(ROW_TARGET), 0);
        assert_eq!(buckets_log2(ROW_TARGET + 1), 1);
        assert_eq!(buckets_log2(20_000), 8);
        assert_eq!(buckets_log2(10_000_000), 8);
        // Rows are found by the bucket after a restart: it must not move.
        assert_eq!(bucket("e-1", 8), bucket("e-1", 8));
        let spread: std::collections::HashSet<u8> =
            (0..2_000).map(|i| bucket(&format!("e-{i}"), 4)).collect();
        assert_eq!(spread.len(), 16);
        assert!((0..100).all(|i| bucket(&format!("e-{i}"), 3) < 8));
    }
}
