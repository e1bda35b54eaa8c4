//! Erasing a deleted user, and the batch layer's run checkpoint and shares.

use redb::{Durability, ReadableTable};
use signals_core::{Offset, Partition, SpeedEntry, UserRecord};

use super::tables::{BATCH, CHECKPOINT_KEY, META, SPEED};
use super::{codec, engine, keys, Inner};
use crate::{BatchCheckpoint, BatchPart, StoreError};

impl Inner {
    /// Replaces everything the store holds of `user` by one deletion marker
    /// and an erased record per version, in one durable transaction.
    pub(super) fn erase_user(
        &self,
        user: &str,
        (partition, offset): (Partition, Offset),
    ) -> Result<(), StoreError> {
        let marker = codec::encode_chunk(&[(offset, &SpeedEntry::Deleted)])?;
        let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut speed = txn.open_table(SPEED).map_err(engine("open table speed"))?;
            let (start, end) = keys::user_range(user)?;
            speed
                .retain_in(start.as_slice()..=end.as_slice(), |_, _| false)
                .map_err(engine("remove speed entries"))?;
            let key = keys::speed_key(user, partition, offset)?;
            speed
                .insert(key.as_slice(), marker.as_slice())
                .map_err(engine("write a deletion marker"))?;

            let mut batch = txn.open_table(BATCH).map_err(engine("open table batch"))?;
            for version in versions(&batch)? {
                let key = keys::batch_key(version, user);
                let horizon = match batch.get(key.as_slice()).map_err(engine("read a record"))? {
                    Some(value) => {
                        codec::decode_record(value.value(), "batch", || {
                            keys::describe_batch_key(&key)
                        })
                        .map(|r| r.horizon)
                        // An unreadable record is replaced all the same.
                        .unwrap_or_default()
                    }
                    None => continue,
                };
                let erased = codec::encode_record(&UserRecord::erased(horizon))?;
                batch
                    .insert(key.as_slice(), erased.as_slice())
                    .map_err(engine("erase a record"))?;
            }
        }
        let changed = self.changes.writing([user]);
        txn.commit().map_err(engine("commit an erasure"))?;
        self.changes.committed(changed);
        self.records.remove(user);
        Ok(())
    }

    pub(super) fn batch_checkpoint(&self) -> Result<Option<BatchCheckpoint>, StoreError> {
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
        let meta = txn.open_table(META).map_err(engine("open table meta"))?;
        let value = meta
            .get(CHECKPOINT_KEY)
            .map_err(engine("read the batch checkpoint"))?;
        value
            .map(|v| codec::decode(v.value(), "meta", || format!("key {CHECKPOINT_KEY}")))
            .transpose()
    }

    pub(super) fn save_batch_checkpoint(
        &self,
        checkpoint: Option<&BatchCheckpoint>,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut meta = txn.open_table(META).map_err(engine("open table meta"))?;
            match checkpoint {
                Some(checkpoint) => {
                    let bytes = codec::encode(checkpoint)?;
                    meta.insert(CHECKPOINT_KEY, bytes.as_slice())
                        .map_err(engine("write the batch checkpoint"))?;
                }
                None => {
                    meta.remove(CHECKPOINT_KEY)
                        .map_err(engine("clear the batch checkpoint"))?;
                    let (start, end) = part_range(None);
                    meta.retain_in(start.as_str()..end.as_str(), |_, _| false)
                        .map_err(engine("clear the batch shares"))?;
                }
            }
        }
        txn.commit().map_err(engine("commit the batch checkpoint"))
    }

    pub(super) fn claim_batch_checkpoint(
        &self,
        candidate: &BatchCheckpoint,
    ) -> Result<BatchCheckpoint, StoreError> {
        let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
        txn.set_durability(Durability::Immediate);
        let claimed = {
            let mut meta = txn.open_table(META).map_err(engine("open table meta"))?;
            let current: Option<BatchCheckpoint> = meta
                .get(CHECKPOINT_KEY)
                .map_err(engine("read the batch checkpoint"))?
                .map(|v| codec::decode(v.value(), "meta", || format!("key {CHECKPOINT_KEY}")))
                .transpose()?;
            match current {
                Some(current) if current.version >= candidate.version => current,
                _ => {
                    let bytes = codec::encode(candidate)?;
                    meta.insert(CHECKPOINT_KEY, bytes.as_slice())
                        .map_err(engine("write the batch checkpoint"))?;
                    candidate.clone()
                }
            }
        };
        txn.commit()
            .map_err(engine("commit the batch checkpoint"))?;
        Ok(claimed)
    }

    pub(super) fn save_batch_part(&self, version: u64, part: &BatchPart) -> Result<(), StoreError> {
        let key = format!("{}{}", part_range(Some(version)).0, part.name());
        let bytes = codec::encode(part)?;
        let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut meta = txn.open_table(META).map_err(engine("open table meta"))?;
            meta.insert(key.as_str(), bytes.as_slice())
                .map_err(engine("write a batch share"))?;
        }
        txn.commit().map_err(engine("commit a batch share"))
    }

    pub(super) fn batch_parts(&self, version: u64) -> Result<Vec<BatchPart>, StoreError> {
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
        let meta = txn.open_table(META).map_err(engine("open table meta"))?;
        let (start, end) = part_range(Some(version));
        let mut parts = Vec::new();
        for item in meta
            .range(start.as_str()..end.as_str())
            .map_err(engine("scan batch shares"))?
        {
            let (key, value) = item.map_err(engine("scan batch shares"))?;
            parts.push(codec::decode(value.value(), "meta", || {
                format!("key {}", key.value())
            })?);
        }
        Ok(parts)
    }
}

/// The `meta` key range of the shares of `version` (of every version: `None`).
fn part_range(version: Option<u64>) -> (String, String) {
    match version {
        // Fixed-width versions: the range of one version never holds another's.
        Some(version) => (
            format!("batch_part:{version:020}:"),
            format!("batch_part:{version:020};"),
        ),
        None => ("batch_part:".into(), "batch_part;".into()),
    }
}

/// The versions that have records, found by seeking from one to the next.
fn versions(
    batch: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<Vec<u64>, StoreError> {
    let mut versions = Vec::new();
    let mut from = 0u64;
    loop {
        let start = from.to_be_bytes();
        let Some(first) = batch
            .range(start.as_slice()..)
            .map_err(engine("scan versions"))?
            .next()
        else {
            return Ok(versions);
        };
        let (key, _) = first.map_err(engine("scan versions"))?;
        let Some(version) = key
            .value()
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return Err(StoreError::Corrupt(format!(
                "table batch: {}",
                keys::describe_batch_key(key.value())
            )));
        };
        versions.push(version);
        match version.checked_add(1) {
            Some(next) => from = next,
            None => return Ok(versions),
        }
    }
}
