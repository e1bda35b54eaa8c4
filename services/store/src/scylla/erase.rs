//! Erasing a deleted user, and the batch layer's run checkpoint and shares.
//!
//! The checkpoint and the shares of a partitioned run are rows of the tiny
//! `batch_pointer` table: `checkpoint`, and `part:<version>:<partitions>`.

use signals_core::{Offset, Partition, SpeedEntry, UserRecord};

use super::codec::{self, to_bigint};
use super::driver;
use super::store::Inner;
use crate::{BatchCheckpoint, BatchPart, StoreError};

/// Attempts of a contended claim before giving up.
const CLAIM_ATTEMPTS: usize = 5;

impl Inner {
    /// Deletes `user`'s speed partition, writes the deletion marker after
    /// it, and replaces the user's record in every registered version (and
    /// drops its pieces, if it was stored in pieces).
    ///
    /// The delete and the marker carry explicit write timestamps, one apart,
    /// so the marker always outlives the partition tombstone.
    pub(super) async fn erase_user(
        &self,
        user: &str,
        (partition, offset): (Partition, Offset),
    ) -> Result<(), StoreError> {
        super::speed::non_empty(user, "user id")?;
        let statements = self.statements().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        self.run(
            &statements.delete_user_entries,
            (now, user),
            "delete a user's speed entries",
        )
        .await?;
        let marker = codec::encode(&SpeedEntry::Deleted)?;
        self.run(
            &statements.insert_entry_at,
            (
                user,
                i64::from(partition),
                to_bigint(offset, "log offset")?,
                marker,
                now + 1,
            ),
            "write a deletion marker",
        )
        .await?;
        // Serving processes that follow the speed writes read the user again
        // (and find the marker): a row at the marker's offset is past every
        // follower's cursor unless a speed write past it named the user.
        let row = (
            i64::from(partition),
            to_bigint(offset.saturating_add(1), "log offset")?,
            super::speed::attempt_id(),
            crate::changes::user_hash(user).to_le_bytes().to_vec(),
        );
        self.run(
            &statements.insert_change,
            row,
            "name the erased user to serving",
        )
        .await?;

        for (stored, version) in self.versions(statements).await? {
            // An unreadable record is replaced all the same.
            let horizon = match self.batch_record(version, user).await {
                Ok(Some(record)) => record.horizon,
                Ok(None) => continue,
                Err(StoreError::Corrupt(_)) => 0,
                Err(other) => return Err(other),
            };
            let erased = codec::encode_record(&UserRecord::erased(horizon))?;
            self.run(
                &statements.insert_record,
                (stored, user, erased),
                "erase a batch record",
            )
            .await?;
            // After the cell that pointed at them, if it did: a reader
            // then finds the erased record, never a count of missing pieces.
            self.run(
                &statements.delete_pieces,
                (stored, user),
                "erase a batch record's pieces",
            )
            .await?;
        }
        Ok(())
    }

    pub(super) async fn batch_checkpoint(&self) -> Result<Option<BatchCheckpoint>, StoreError> {
        let statements = self.statements().await?;
        let what = "read the batch checkpoint";
        let result = self
            .session
            .execute_unpaged(&statements.select_checkpoint, ())
            .await
            .map_err(driver(what))?
            .into_rows_result()
            .map_err(driver(what))?;
        let Some((bytes,)) = result
            .maybe_first_row::<(Option<&[u8]>,)>()
            .map_err(driver(what))?
        else {
            return Ok(None);
        };
        let bytes = bytes.ok_or_else(|| {
            StoreError::Corrupt("table batch_pointer, row checkpoint: no value".into())
        })?;
        codec::decode(bytes, "batch_pointer", || "row checkpoint".into()).map(Some)
    }

    pub(super) async fn save_batch_checkpoint(
        &self,
        checkpoint: Option<&BatchCheckpoint>,
    ) -> Result<(), StoreError> {
        let statements = self.statements().await?;
        match checkpoint {
            Some(checkpoint) => {
                let version = to_bigint(checkpoint.version, "version")?;
                self.run(
                    &statements.upsert_checkpoint,
                    (version, codec::encode(checkpoint)?),
                    "write the batch checkpoint",
                )
                .await
            }
            None => {
                for (name, _) in self.pointer_rows("part:").await? {
                    self.run(
                        &statements.delete_pointer_row,
                        (name.as_str(),),
                        "clear a batch share",
                    )
                    .await?;
                }
                self.run(
                    &statements.delete_checkpoint,
                    (),
                    "clear the batch checkpoint",
                )
                .await
            }
        }
    }

    /// Claims with Paxos: a serial read, then a conditional create (none
    /// there) or replace (an older version's).
    pub(super) async fn claim_batch_checkpoint(
        &self,
        candidate: &BatchCheckpoint,
    ) -> Result<BatchCheckpoint, StoreError> {
        let statements = self.statements().await?;
        let what = "claim the batch checkpoint";
        let bytes = codec::encode(candidate)?;
        let version = to_bigint(candidate.version, "version")?;
        for _ in 0..CLAIM_ATTEMPTS {
            let result = self
                .session
                .execute_unpaged(&statements.select_checkpoint_serial, ())
                .await
                .map_err(driver(what))?
                .into_rows_result()
                .map_err(driver(what))?;
            let current = result
                .maybe_first_row::<(Option<i64>, Option<&[u8]>)>()
                .map_err(driver(what))?;
            let applied = match current {
                Some((_, Some(current))) => {
                    let current: BatchCheckpoint =
                        codec::decode(current, "batch_pointer", || "row checkpoint".into())?;
                    if current.version >= candidate.version {
                        return Ok(current);
                    }
                    let expected = to_bigint(current.version, "version")?;
                    self.conditional(
                        &statements.replace_checkpoint,
                        (version, bytes.as_slice(), expected),
                    )
                    .await?
                }
                _ => {
                    self.conditional(&statements.create_checkpoint, (version, bytes.as_slice()))
                        .await?
                }
            };
            if applied {
                return Ok(candidate.clone());
            }
        }
        Err(StoreError::Unavailable(format!(
            "cannot {what}: it changed under {CLAIM_ATTEMPTS} attempts in a row"
        )))
    }

    pub(super) async fn save_batch_part(
        &self,
        version: u64,
        part: &BatchPart,
    ) -> Result<(), StoreError> {
        let statements = self.statements().await?;
        self.run(
            &statements.upsert_pointer_row,
            (
                format!("{}{}", part_prefix(version), part.name()),
                to_bigint(version, "version")?,
                codec::encode(part)?,
            ),
            "write a batch share",
        )
        .await
    }

    pub(super) async fn batch_parts(&self, version: u64) -> Result<Vec<BatchPart>, StoreError> {
        self.pointer_rows(&part_prefix(version))
            .await?
            .into_iter()
            .map(|(name, bytes)| codec::decode(&bytes, "batch_pointer", || format!("row {name}")))
            .collect()
    }

    /// The rows of the pointer table whose name starts with `prefix`.
    async fn pointer_rows(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let statements = self.statements().await?;
        let what = "list the batch pointer rows";
        let mut rows = Vec::new();
        self.pages(&statements.select_pointer_rows, &(), what, |page| {
            for row in page
                .rows::<(String, Option<&[u8]>)>()
                .map_err(driver(what))?
            {
                let (name, bytes) = row.map_err(driver(what))?;
                if let (true, Some(bytes)) = (name.starts_with(prefix), bytes) {
                    rows.push((name, bytes.to_vec()));
                }
            }
            Ok(())
        })
        .await?;
        Ok(rows)
    }
}

/// The row name prefix of the shares of `version`.
fn part_prefix(version: u64) -> String {
    format!("part:{version:020}:")
}
