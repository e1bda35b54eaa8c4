//! Garbage collection in bounded transactions.
//!
//! Speed keys lead with the user, so covered rows are found by scanning
//! the whole `speed` table in chunks of `gc_chunk` keys, one write
//! transaction per chunk, resuming after the last key scanned; a row goes
//! once its last entry is covered. Old versions
//! are a prefix of the `batch` table, deleted `gc_chunk` rows at a time.
//! Writers interleave between chunks; each chunk is durable on its own.

use std::ops::Bound;

use redb::{Durability, ReadableTable};
use signals_core::LogPosition;
use tracing::debug;

use super::tables::{BATCH, SPEED};
use super::{codec, engine, index, keys, Inner};
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
            removed += scan.entries;
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
        let mut entries = 0;
        let mut last = None;
        let mut scanned = 0;
        let range = speed
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(engine("scan speed entries"))?;
        for item in range.take(self.gc_chunk) {
            let (key, value) = item.map_err(engine("scan speed entries"))?;
            let key = key.value();
            scanned += 1;
            if keys::speed_position(key)
                .is_some_and(|(partition, last)| covered.covers(partition, last))
            {
                doomed.push(key.to_vec());
                entries += codec::chunk_len(value.value()).unwrap_or(1);
            }
            last = Some(key.to_vec());
        }
        Ok(Scan {
            doomed,
            entries,
            last,
            exhausted: scanned < self.gc_chunk,
        })
    }

    /// Drops the index writes whose entries have all expired before
    /// `now`, `gc_chunk` writes scanned per transaction; returns how many
    /// entries went.
    pub(super) fn collect_index(&self, now: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
            txn.set_durability(Durability::Immediate);
            let (scanned, dropped) = index::collect(&txn, &self.index, now, self.gc_chunk)?;
            txn.commit()
                .map_err(engine("commit a garbage collection step"))?;
            removed += dropped;
            if scanned < self.gc_chunk || dropped == 0 {
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
    /// How many entries their rows hold.
    entries: u64,
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
