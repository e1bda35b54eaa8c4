//! Garbage collection: covered speed entries and old batch versions.
//!
//! Speed entries: the users come from `SELECT DISTINCT user_id` (a paged
//! token-range scan of partition keys only). For each user, one read of
//! their rows counts the entries covered per log partition (a row is keyed
//! by its last entry, so a covered key is a covered row; the count is read
//! from each value's length prefix, nothing decoded), and only partitions
//! with covered rows get a range delete (`log_offset < next`): users with
//! nothing to collect cost one read and leave no tombstone.
//!
//! Versions: `batch_manifests` lists them; for each version below the kept
//! one, the listing is read bucket by bucket, every listed record deleted,
//! then the bucket; then the pieces of the records stored in pieces (the
//! users bucket -1 lists), and the version's row last. An interrupted collection
//! is simply resumed by the next one (it may then count some records twice).

use std::collections::BTreeMap;

use futures::{stream, TryStreamExt};
use signals_core::LogPosition;
use tracing::debug;

use ::scylla::statement::prepared::PreparedStatement;

use super::codec::{self, from_bigint, partition_from_bigint, PIECED_BUCKET, USER_BUCKETS};
use super::driver;
use super::schema::Statements;
use super::store::Inner;
use crate::{GarbageStats, StoreError};

impl Inner {
    /// Drops speed entries `covered` covers and records of versions below
    /// `keep_version`, never beyond what the published manifest covers.
    pub(super) async fn collect_garbage(
        &self,
        covered: &LogPosition,
        keep_version: u64,
    ) -> Result<GarbageStats, StoreError> {
        let Some(published) = self.read_published().await? else {
            return Ok(GarbageStats::default());
        };
        let covered: LogPosition = covered
            .iter()
            .map(|(partition, next)| (partition, next.min(published.position.next(partition))))
            .filter(|(_, next)| *next > 0)
            .collect();
        let keep_version = keep_version.min(published.version);
        let statements = self.statements().await?;
        let stats = GarbageStats {
            speed_entries: self.collect_speed(statements, &covered).await?,
            batch_records: self.collect_versions(statements, keep_version).await?,
            index_entries: 0,
        };
        debug!(
            speed_entries = stats.speed_entries,
            batch_records = stats.batch_records,
            keep_version,
            "scylla store collected"
        );
        Ok(stats)
    }

    /// Deletes every speed entry `covered` covers; returns how many.
    async fn collect_speed(
        &self,
        statements: &Statements,
        covered: &LogPosition,
    ) -> Result<u64, StoreError> {
        if covered.total() == 0 {
            return Ok(0);
        }
        let what = "list the users with speed entries";
        self.session
            .execute_iter(statements.select_speed_users.clone(), ())
            .await
            .map_err(driver(what))?
            .rows_stream::<(String,)>()
            .map_err(driver(what))?
            .map_err(driver(what))
            .map_ok(|(user,)| self.collect_user(statements, user, covered))
            .try_buffer_unordered(self.options.max_in_flight)
            .try_fold(0, |total, removed| async move { Ok(total + removed) })
            .await
    }

    /// Deletes `user`'s covered entries: one range delete per log partition
    /// that has any.
    async fn collect_user(
        &self,
        statements: &Statements,
        user: String,
        covered: &LogPosition,
    ) -> Result<u64, StoreError> {
        let what = "read a user's speed rows";
        let mut doomed: BTreeMap<u32, u64> = BTreeMap::new();
        self.pages(
            &statements.select_entry_runs,
            &(user.as_str(),),
            what,
            |page| {
                for row in page
                    .rows::<(i64, i64, Option<&[u8]>)>()
                    .map_err(driver(what))?
                {
                    let (partition, offset, value) = row.map_err(driver(what))?;
                    let partition = partition_from_bigint(partition, "speed_entries")?;
                    let offset = from_bigint(offset, "speed_entries", "log offset")?;
                    if covered.covers(partition, offset) {
                        let entries = value.and_then(codec::chunk_len).unwrap_or(1);
                        *doomed.entry(partition).or_default() += entries;
                    }
                }
                Ok(())
            },
        )
        .await?;
        for partition in doomed.keys() {
            let next = codec::to_bigint(covered.next(*partition), "log offset")?;
            self.run(
                &statements.delete_entries_before,
                (user.as_str(), i64::from(*partition), next),
                "delete covered speed entries",
            )
            .await?;
        }
        Ok(doomed.values().sum())
    }

    /// Every registered version, as stored (bigint) and as a number.
    pub(super) async fn versions(
        &self,
        statements: &Statements,
    ) -> Result<Vec<(i64, u64)>, StoreError> {
        let what = "list the batch versions";
        let mut versions = Vec::new();
        self.pages(&statements.select_versions, &(), what, |page| {
            for row in page.rows::<(i64,)>().map_err(driver(what))? {
                let (version,) = row.map_err(driver(what))?;
                versions.push((version, from_bigint(version, "batch_manifests", "version")?));
            }
            Ok(())
        })
        .await?;
        Ok(versions)
    }

    /// Deletes every version below `keep_version`; returns the records removed.
    async fn collect_versions(
        &self,
        statements: &Statements,
        keep_version: u64,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        for (stored, version) in self.versions(statements).await? {
            if version >= keep_version {
                continue;
            }
            for bucket in 0..USER_BUCKETS {
                // Below 256: always fits.
                removed += self
                    .collect_bucket(statements, stored, bucket as i32, &statements.delete_record)
                    .await?;
            }
            // After the records that point at them.
            self.collect_bucket(statements, stored, PIECED_BUCKET, &statements.delete_pieces)
                .await?;
            self.run(
                &statements.delete_version,
                (stored,),
                "delete a batch version's row",
            )
            .await?;
            debug!(version, "scylla batch version collected");
        }
        Ok(removed)
    }

    /// The users one bucket of `version`'s listing holds.
    pub(super) async fn listed_users(
        &self,
        statements: &Statements,
        version: i64,
        bucket: i32,
    ) -> Result<Vec<String>, StoreError> {
        let what = "read a batch version's user listing";
        let mut users = Vec::new();
        self.pages(
            &statements.select_listing,
            &(version, bucket),
            what,
            |page| {
                for row in page.rows::<(String,)>().map_err(driver(what))? {
                    users.push(row.map_err(driver(what))?.0);
                }
                Ok(())
            },
        )
        .await?;
        Ok(users)
    }

    /// Deletes with `delete` (records, or pieces of records) what one
    /// bucket of `version` lists, then the bucket; returns how many users
    /// it listed.
    async fn collect_bucket(
        &self,
        statements: &Statements,
        version: i64,
        bucket: i32,
        delete: &PreparedStatement,
    ) -> Result<u64, StoreError> {
        let users = self.listed_users(statements, version, bucket).await?;
        if users.is_empty() {
            return Ok(0);
        }
        let count = users.len() as u64;
        stream::iter(users.into_iter().map(Ok))
            .try_for_each_concurrent(self.options.max_in_flight, |user| async move {
                self.run(delete, (version, user.as_str()), "delete a batch record")
                    .await
            })
            .await?;
        self.run(
            &statements.delete_listing,
            (version, bucket),
            "delete a batch listing bucket",
        )
        .await?;
        Ok(count)
    }
}
