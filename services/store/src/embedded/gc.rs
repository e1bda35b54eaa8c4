//! Garbage collection in bounded transactions.
//!
//! Speed keys lead with the user, so covered entries are found by scanning
//! the whole `speed` table in chunks of `gc_chunk` keys, one write
//! transaction per chunk, resuming after the last key scanned. Old versions
//! are a prefix of the `batch` table, deleted `gc_chunk` rows at a time.
//! Writers interleave between chunks; each chunk is durable on its own.

use std::ops::Bound;

use redb::{Durability, ReadableTable};
use signals_core::LogPosition;
use tracing::debug;

use super::tables::{BATCH, EVENT_INDEX, INDEX_EXPIRY, SPEED};
use super::{codec, engine, keys, Inner};
use crate::{GarbageStats, StoreError};

impl Inner {
    /// Drops speed entries `covered` covers and records of versions below
    /// `keep_version`, never beyond what the published manifest covers.
    pub(super) fn collect_garbage(
        &self,
        covered: &LogPosition,
        keep_version: u64,
    ) -> Result<GarbageStats, StoreError> {
        let index_entries = self.collect_index(signals_schemas::now_millis())?;
        let Some(published) = self.published()? else {
            return Ok(GarbageStats {
                index_entries,
                ..GarbageStats::default()
            });
        };
        let covered: LogPosition = covered
            .iter()
            .map(|(partition, next)| (partition, next.min(published.position.next(partition))))
            .collect();
        let keep_version = keep_version.min(published.version);
        let stats = GarbageStats {
            speed_entries: self.collect_speed(&covered)?,
            batch_records: self.collect_versions(keep_version)?,
            index_entries,
        };
        debug!(
            speed_entries = stats.speed_entries,
            batch_records = stats.batch_records,
            index_entries = stats.index_entries,
            keep_version,
            "embedded store collected"
        );
        Ok(stats)
    }

    /// Deletes every speed entry `covered` covers; returns how many.
    fn collect_speed(&self, covered: &LogPosition) -> Result<u64, StoreError> {
        if covered.total() == 0 {
            return Ok(0);
        }
        let mut removed = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
            txn.set_durability(Durability::Immediate);
            let scan = {
                let mut speed = txn.open_table(SPEED).map_err(engine("open table speed"))?;
                let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                let scan = self.scan_covered(&speed, start, covered)?;
                for key in &scan.doomed {
                    speed
                        .remove(key.as_slice())
                        .map_err(engine("delete a speed entry"))?;
                }
                scan
            };
            txn.commit()
                .map_err(engine("commit a garbage collection step"))?;
            removed += scan.doomed.len() as u64;
            if scan.exhausted {
                return Ok(removed);
            }
            after = scan.last;
        }
    }

    /// Scans up to `gc_chunk` keys from `start` on.
    fn scan_covered(
        &self,
        speed: &impl ReadableTable<&'static [u8], &'static [u8]>,
        start: Bound<&[u8]>,
        covered: &LogPosition,
    ) -> Result<Scan, StoreError> {
        let mut doomed = Vec::new();
        let mut last = None;
        let mut scanned = 0;
        let range = speed
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(engine("scan speed entries"))?;
        for item in range.take(self.gc_chunk) {
            let (key, _) = item.map_err(engine("scan speed entries"))?;
            let key = key.value();
            scanned += 1;
            if keys::speed_position(key)
                .is_some_and(|(partition, offset)| covered.covers(partition, offset))
            {
                doomed.push(key.to_vec());
            }
            last = Some(key.to_vec());
        }
        Ok(Scan {
            doomed,
            last,
            exhausted: scanned < self.gc_chunk,
        })
    }

    /// Drops index entries whose expiry is before `now`, in expiry order,
    /// `gc_chunk` keys per transaction; returns how many.
    pub(super) fn collect_index(&self, now: i64) -> Result<u64, StoreError> {
        let end = keys::expiry_key(now, "");
        let mut removed = 0;
        loop {
            let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
            txn.set_durability(Durability::Immediate);
            let scanned = {
                let mut expiry = txn
                    .open_table(INDEX_EXPIRY)
                    .map_err(engine("open table index_expiry"))?;
                let mut index = txn
                    .open_table(EVENT_INDEX)
                    .map_err(engine("open table event_index"))?;
                let due: Vec<Vec<u8>> = expiry
                    .range::<&[u8]>(..end.as_slice())
                    .map_err(engine("scan index expiries"))?
                    .take(self.gc_chunk)
                    .map(|item| item.map(|(key, _)| key.value().to_vec()))
                    .collect::<Result<_, _>>()
                    .map_err(engine("scan index expiries"))?;
                for key in &due {
                    expiry
                        .remove(key.as_slice())
                        .map_err(engine("delete an index expiry"))?;
                    let Some((_, event_id)) = keys::expiry_parts(key) else {
                        continue;
                    };
                    // The entry may have been rewritten with a later expiry.
                    let expired = match index
                        .get(event_id)
                        .map_err(engine("read the event index"))?
                    {
                        Some(value) => codec::decode_index(value.value(), "event_index", || {
                            format!("event id {event_id:?}")
                        })?
                        .expires_at
                        .is_some_and(|at| at < now),
                        None => false,
                    };
                    if expired {
                        index
                            .remove(event_id)
                            .map_err(engine("delete an index entry"))?;
                        removed += 1;
                    }
                }
                due.len()
            };
            txn.commit()
                .map_err(engine("commit a garbage collection step"))?;
            if scanned < self.gc_chunk {
                return Ok(removed);
            }
        }
    }

    /// Deletes every record of a version below `keep_version`; returns how many.
    fn collect_versions(&self, keep_version: u64) -> Result<u64, StoreError> {
        let end = keys::versions_below(keep_version);
        let mut removed = 0;
        loop {
            let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
            txn.set_durability(Durability::Immediate);
            let doomed = {
                let mut batch = txn.open_table(BATCH).map_err(engine("open table batch"))?;
                let doomed = first_keys(&batch, &end, self.gc_chunk)?;
                for key in &doomed {
                    batch
                        .remove(key.as_slice())
                        .map_err(engine("delete a batch record"))?;
                }
                doomed.len()
            };
            txn.commit()
                .map_err(engine("commit a garbage collection step"))?;
            removed += doomed as u64;
            if doomed < self.gc_chunk {
                return Ok(removed);
            }
        }
    }
}

/// One chunk of the speed scan.
struct Scan {
    /// Covered keys, to delete.
    doomed: Vec<Vec<u8>>,
    /// The last key scanned: the next chunk starts after it.
    last: Option<Vec<u8>>,
    /// Whether the scan reached the end of the table.
    exhausted: bool,
}

/// The first `limit` keys of `table` below `end`.
fn first_keys(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    end: &[u8],
    limit: usize,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let range = table
        .range::<&[u8]>(..end)
        .map_err(engine("scan batch records"))?;
    range
        .take(limit)
        .map(|item| {
            item.map(|(key, _)| key.value().to_vec())
                .map_err(engine("scan batch records"))
        })
        .collect()
}
