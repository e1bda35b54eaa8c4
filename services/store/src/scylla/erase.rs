//! Erasing a deleted user, and the batch layer's run checkpoint.

use signals_core::{Offset, Partition, SpeedEntry, UserRecord};

use super::codec::{self, from_bigint, to_bigint};
use super::driver;
use super::store::Inner;
use crate::{BatchCheckpoint, StoreError};

impl Inner {
    /// Deletes `user`'s speed partition, writes the deletion marker after
    /// it, and replaces the user's record in every registered version.
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

        let what = "list the batch versions";
        let mut versions = Vec::new();
        self.pages(&statements.select_versions, &(), what, |page| {
            for row in page.rows::<(i64,)>().map_err(driver(what))? {
                versions.push(row.map_err(driver(what))?.0);
            }
            Ok(())
        })
        .await?;
        for v in versions {
            let version = from_bigint(v, "batch_manifests", "version")?;
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
                (v, user, erased),
                "erase a batch record",
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
                self.run(
                    &statements.delete_checkpoint,
                    (),
                    "clear the batch checkpoint",
                )
                .await
            }
        }
    }
}
