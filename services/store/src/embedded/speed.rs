//! The speed layer's writes and reads: entries, the event index, progress.

use std::collections::HashMap;

use redb::{Durability, ReadableTable};
use signals_core::LogPosition;

use super::tables::{INDEX_LOG, META, PROGRESS_KEY, SPEED};
use super::{codec, engine, index, keys, Inner};
use crate::{IndexEntry, PositionedEntry, SpeedProgress, SpeedWrite, StoreError};

impl Inner {
    /// Writes entries, index updates and progress in one durable transaction.
    ///
    /// Each user's entries of one partition become one row (a chunk), keyed
    /// by the offset of its last entry; the index updates are appended as
    /// the write's own rows ([`index`]). Rows are encoded and sorted before
    /// the transaction begins: the write lock is held only for the inserts,
    /// which go in key order.
    pub(super) fn apply_speed(&self, write: &SpeedWrite) -> Result<(), StoreError> {
        let chunks = chunks(write)?;
        let index_rows = index::IndexRows::of(&write.index)?;

        let progress;
        let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
        txn.set_durability(Durability::Immediate);
        let index_write = self.index.next_write();
        {
            let mut speed = txn.open_table(SPEED).map_err(engine("open table speed"))?;
            for (key, value) in &chunks {
                speed
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(engine("write speed entries"))?;
            }
            #[cfg(test)]
            if self
                .fail_after_entries
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(StoreError::Backend(
                    "injected fault after the entries".into(),
                ));
            }
            index::append(&txn, index_write, &index_rows)?;
            let mut meta = txn.open_table(META).map_err(engine("open table meta"))?;
            progress = forward(read_progress(&meta)?, &write.progress);
            meta.insert(PROGRESS_KEY, codec::encode(&progress)?.as_slice())
                .map_err(engine("write the speed progress"))?;
        }
        let changed = self
            .changes
            .writing(write.entries.iter().map(|e| e.user_id.as_str()));
        // Dropping `txn` on any error above aborts it: nothing of the write lands.
        txn.commit().map_err(engine("commit a speed write"))?;
        self.changes.committed(changed);
        self.index.appended(index_write, &index_rows, &write.index);
        self.progress.advance(&progress);
        Ok(())
    }

    /// The recorded progress, or the start of the log.
    pub(super) fn speed_progress(&self) -> Result<SpeedProgress, StoreError> {
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
        let meta = txn.open_table(META).map_err(engine("open table meta"))?;
        let progress = read_progress(&meta)?;
        self.progress.advance(&progress);
        Ok(progress)
    }

    /// What the index holds for each of `event_ids`, in one snapshot.
    pub(super) fn lookup_events(
        &self,
        event_ids: &[String],
    ) -> Result<HashMap<String, IndexEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
        let log = txn
            .open_table(INDEX_LOG)
            .map_err(engine("open table index_log"))?;
        self.index
            .lookup(&log, event_ids, signals_schemas::now_millis())
    }
}

/// An encoded key and value.
type Row = (Vec<u8>, Vec<u8>);

/// `entries` as speed rows: one per (user, partition), keyed by its last
/// offset, in key order (keys lead with the user's length, so the order of
/// the rows is not the order of the user ids).
fn chunks(write: &SpeedWrite) -> Result<Vec<Row>, StoreError> {
    let mut rows = Vec::new();
    for run in write.runs() {
        let last = run[run.len() - 1];
        let chunk: Vec<_> = run.iter().map(|e| (e.offset, &e.entry)).collect();
        rows.push((
            keys::speed_key(&last.user_id, last.partition, last.offset)?,
            codec::encode_chunk(&chunk)?,
        ));
    }
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(rows)
}

/// The progress stored in `meta`, or the default.
fn read_progress(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<SpeedProgress, StoreError> {
    match meta
        .get(PROGRESS_KEY)
        .map_err(engine("read the speed progress"))?
    {
        Some(value) => codec::decode(value.value(), "meta", || format!("key {PROGRESS_KEY}")),
        None => Ok(SpeedProgress::default()),
    }
}

/// The committed speed progress, mirrored in memory so that serving (which
/// asks for it on every request) needs no read transaction and no hop to the
/// blocking pool. Exact because this process is the file's only writer (redb
/// locks it) and progress only moves forward: every commit folds its
/// progress in with [`forward`], so commits finishing in any order leave the
/// newest.
#[derive(Default)]
pub(super) struct ProgressMirror(std::sync::RwLock<Option<SpeedProgress>>);

impl ProgressMirror {
    /// The committed progress, once read or written by this process.
    pub(super) fn get(&self) -> Option<SpeedProgress> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Folds committed `progress` in.
    fn advance(&self, progress: &SpeedProgress) {
        let mut mirror = self.0.write().unwrap_or_else(|e| e.into_inner());
        let current = mirror.take().unwrap_or_default();
        *mirror = Some(forward(current, progress));
    }
}

/// `stored` moved forward to `next`, per partition; never back.
fn forward(mut stored: SpeedProgress, next: &SpeedProgress) -> SpeedProgress {
    for (partition, offset) in next.position.iter() {
        stored.position.advance(partition, offset);
    }
    stored.last_accepted_at = stored.last_accepted_at.max(next.last_accepted_at);
    stored
}

/// `user`'s speed entries that `covered` does not cover, in (partition, offset) order.
///
/// A row is keyed by its last entry: a row whose last entry is covered is
/// covered whole, so a covered run of a partition is skipped with one seek
/// to the first row that is not, not walked key by key: serving asks for
/// the few entries past what it already holds (ADR 009), whatever the
/// length of the tail. A replay may have cut the same entries into other
/// rows: an entry is its position, kept once.
pub(super) fn read_tail(
    speed: &impl ReadableTable<&'static [u8], &'static [u8]>,
    user: &str,
    covered: Option<&LogPosition>,
) -> Result<Vec<PositionedEntry>, StoreError> {
    let (mut start, end) = keys::user_range(user)?;
    let mut entries = Vec::new();
    'seek: loop {
        for item in speed
            .range(start.as_slice()..=end.as_slice())
            .map_err(engine("scan speed entries"))?
        {
            let (key, value) = item.map_err(engine("scan speed entries"))?;
            let key = key.value();
            let (partition, last) = keys::speed_position(key).ok_or_else(|| {
                StoreError::Corrupt(format!("table speed: {}", keys::describe_speed_key(key)))
            })?;
            if let Some(position) = covered.filter(|p| p.covers(partition, last)) {
                start = keys::speed_key(user, partition, position.next(partition))?;
                continue 'seek;
            }
            let chunk = codec::decode_chunk(value.value(), last, "speed", || {
                keys::describe_speed_key(key)
            })?;
            entries.extend(
                chunk
                    .into_iter()
                    .filter(|(offset, _)| !covered.is_some_and(|p| p.covers(partition, *offset)))
                    .map(|(offset, entry)| PositionedEntry {
                        user_id: user.to_owned(),
                        partition,
                        offset,
                        entry,
                    }),
            );
        }
        break;
    }
    let position = |e: &PositionedEntry| (e.partition, e.offset);
    if !entries.is_sorted_by_key(position) {
        entries.sort_by_key(position);
    }
    entries.dedup_by_key(|e| position(e));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_moves_forward_per_partition_only() {
        let stored = SpeedProgress {
            position: [(0, 10), (1, 5)].into_iter().collect(),
            last_accepted_at: Some(9),
        };
        let older = SpeedProgress {
            position: [(0, 4), (2, 1)].into_iter().collect(),
            last_accepted_at: Some(3),
        };
        let merged = forward(stored, &older);
        assert_eq!(
            merged.position,
            [(0, 10), (1, 5), (2, 1)].into_iter().collect()
        );
        assert_eq!(merged.last_accepted_at, Some(9));
    }
}
