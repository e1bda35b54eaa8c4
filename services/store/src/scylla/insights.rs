//! The insights port on CQL.
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `insights_state` | `id` (0) | `progress` ([`InsightsProgress`]), `pending` (a journal) |
//! | `segment_membership` | user | [`Membership`] |
//! | `segment_members` | segment, user | — |
//! | `segment_timers` | shard (of the user), due, user | — |
//! | `segment_changes` | bucket (cursor / 10 000), cursor | [`Transition`] |
//!
//! CQL has no multi-partition transaction, so a pass is journalled: the
//! pass's updates (with their feed cursors) and its progress are written as
//! ONE cell of the single `insights_state` row with a lightweight
//! transaction (`IF pending = null`, which also fences a second worker),
//! then applied — idempotent writes keyed by user, segment and cursor — and
//! the journal is cleared together with the new progress. A crash in
//! between leaves the journal, which the next call applies again before
//! anything else, with the same cursors and contents: a feed entry that is
//! readable never changes. The tables are created on first use (`IF NOT
//! EXISTS`), in the store's keyspace.

use std::collections::HashMap;

use ::scylla::statement::unprepared::Statement;
use ::scylla::statement::SerialConsistency;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use signals_schemas::Millis;

use super::store::ScyllaStore;
use crate::codec;
use crate::insights::{
    Applied, Change, FeedEntry, InsightsProgress, InsightsStore, Membership, MembershipUpdate,
};
use crate::StoreError;

/// Timer partitions: users spread over them by a stable hash.
const TIMER_SHARDS: i32 = 16;
/// Feed entries per partition.
const FEED_BUCKET: u64 = 10_000;

const TABLES: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS {ks}.insights_state (id int PRIMARY KEY, progress blob, pending blob)",
    "CREATE TABLE IF NOT EXISTS {ks}.segment_membership (user_id text PRIMARY KEY, membership blob)",
    "CREATE TABLE IF NOT EXISTS {ks}.segment_members (segment text, user_id text, PRIMARY KEY (segment, user_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.segment_timers (shard int, due bigint, user_id text, PRIMARY KEY (shard, due, user_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.segment_changes (bucket bigint, cursor bigint, transition blob, PRIMARY KEY (bucket, cursor))",
];

/// One pass, as journalled.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Journal {
    /// (user, timer to remove, new membership, feed entries)
    users: Vec<(String, Option<Millis>, Membership, Vec<FeedEntry>)>,
    progress: InsightsProgress,
}

fn shard(user: &str) -> i32 {
    (signals_core::fnv1a64(user.as_bytes()) % TIMER_SHARDS as u64) as i32
}

fn bucket(cursor: u64) -> i64 {
    (cursor / FEED_BUCKET) as i64
}

fn cursor_of(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("table segment_changes: negative cursor {value}")))
}

/// Keyspaces whose insights tables this process has created.
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl ScyllaStore {
    fn keyspace(&self) -> &str {
        &self.inner.options.keyspace
    }

    fn statement(&self, cql: &str) -> Statement {
        let mut statement = Statement::new(cql.replace("{ks}", self.keyspace()));
        statement.set_serial_consistency(Some(SerialConsistency::Serial));
        statement
    }

    async fn ensure_tables(&self) -> Result<(), StoreError> {
        let created = |keyspace: &str| {
            CREATED
                .lock()
                .map(|done| done.iter().any(|k| k == keyspace))
                .unwrap_or(false)
        };
        if created(self.keyspace()) {
            return Ok(());
        }
        for cql in TABLES {
            self.inner
                .session
                .query_unpaged(self.statement(cql), ())
                .await
                .map_err(super::driver("create an insights table"))?;
        }
        self.inner
            .session
            .await_schema_agreement()
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot agree on the insights tables: {e}"))
            })?;
        if let Ok(mut done) = CREATED.lock() {
            done.push(self.keyspace().to_owned());
        }
        Ok(())
    }

    /// The state row: progress and the pending journal, if any.
    async fn state(&self) -> Result<(InsightsProgress, Option<Vec<u8>>), StoreError> {
        self.ensure_tables().await?;
        let what = "read the insights state";
        let result = self
            .inner
            .session
            .query_unpaged(
                self.statement("SELECT progress, pending FROM {ks}.insights_state WHERE id = 0"),
                (),
            )
            .await
            .map_err(super::driver(what))?
            .into_rows_result()
            .map_err(super::driver(what))?;
        let Some((progress, pending)) = result
            .maybe_first_row::<(Option<Vec<u8>>, Option<Vec<u8>>)>()
            .map_err(super::driver(what))?
        else {
            return Ok((InsightsProgress::default(), None));
        };
        let progress = match progress {
            Some(bytes) => codec::decode(&bytes, "insights_state", || "progress".into())?,
            None => InsightsProgress::default(),
        };
        Ok((progress, pending))
    }

    /// Applies a journalled pass (idempotent), then clears it with its progress.
    async fn finish(&self, bytes: Vec<u8>) -> Result<InsightsProgress, StoreError> {
        let journal: Journal = codec::decode(&bytes, "insights_state", || "pending".into())?;
        let session = &self.inner.session;
        let what = "apply an insights pass";
        for (user, old_due, next, entries) in &journal.users {
            if let Some(due) = old_due {
                session
                    .query_unpaged(
                        self.statement("DELETE FROM {ks}.segment_timers WHERE shard = ? AND due = ? AND user_id = ?"),
                        (shard(user), *due, user.as_str()),
                    )
                    .await
                    .map_err(super::driver(what))?;
            }
            if let Some(due) = next.due {
                session
                    .query_unpaged(
                        self.statement("INSERT INTO {ks}.segment_timers (shard, due, user_id) VALUES (?, ?, ?)"),
                        (shard(user), due, user.as_str()),
                    )
                    .await
                    .map_err(super::driver(what))?;
            }
            for entry in entries {
                let t = &entry.transition;
                let cql = match t.change {
                    Change::Entered => {
                        "INSERT INTO {ks}.segment_members (segment, user_id) VALUES (?, ?)"
                    }
                    Change::Left => {
                        "DELETE FROM {ks}.segment_members WHERE segment = ? AND user_id = ?"
                    }
                };
                session
                    .query_unpaged(self.statement(cql), (t.segment.as_str(), user.as_str()))
                    .await
                    .map_err(super::driver(what))?;
                session
                    .query_unpaged(
                        self.statement("INSERT INTO {ks}.segment_changes (bucket, cursor, transition) VALUES (?, ?, ?)"),
                        (bucket(entry.cursor), entry.cursor as i64, codec::encode(t)?),
                    )
                    .await
                    .map_err(super::driver(what))?;
            }
            session
                .query_unpaged(
                    self.statement(
                        "INSERT INTO {ks}.segment_membership (user_id, membership) VALUES (?, ?)",
                    ),
                    (user.as_str(), codec::encode(next)?),
                )
                .await
                .map_err(super::driver(what))?;
        }
        let progress = codec::encode(&journal.progress)?;
        self.conditional(
            "UPDATE {ks}.insights_state SET progress = ?, pending = null WHERE id = 0 IF pending = ?",
            (progress, bytes),
            "clear the insights journal",
        )
        .await?;
        Ok(journal.progress)
    }

    /// Runs a lightweight transaction; whether it applied.
    async fn conditional(
        &self,
        cql: &str,
        values: impl ::scylla::serialize::row::SerializeRow,
        what: &str,
    ) -> Result<bool, StoreError> {
        let result = self
            .inner
            .session
            .query_unpaged(self.statement(cql), values)
            .await
            .map_err(super::driver(what))?
            .into_rows_result()
            .map_err(super::driver(what))?;
        // `[applied]` first; a refused condition adds the columns it read.
        let row = result
            .first_row::<::scylla::value::Row>()
            .map_err(super::driver(what))?;
        match row.columns.first() {
            Some(Some(::scylla::value::CqlValue::Boolean(applied))) => Ok(*applied),
            _ => Err(StoreError::Backend(format!(
                "cannot {what}: the answer has no [applied]"
            ))),
        }
    }

    /// The progress after applying a journal left by a crash, if any.
    async fn recovered(&self) -> Result<InsightsProgress, StoreError> {
        match self.state().await? {
            (_, Some(pending)) => self.finish(pending).await,
            (progress, None) => Ok(progress),
        }
    }
}

#[async_trait]
impl InsightsStore for ScyllaStore {
    async fn insights_progress(&self) -> Result<InsightsProgress, StoreError> {
        self.recovered().await
    }

    async fn memberships(
        &self,
        users: &[String],
    ) -> Result<HashMap<String, Membership>, StoreError> {
        self.ensure_tables().await?;
        let what = "read a membership";
        let mut found = HashMap::new();
        for user in users {
            let result = self
                .inner
                .session
                .query_unpaged(
                    self.statement(
                        "SELECT membership FROM {ks}.segment_membership WHERE user_id = ?",
                    ),
                    (user.as_str(),),
                )
                .await
                .map_err(super::driver(what))?
                .into_rows_result()
                .map_err(super::driver(what))?;
            if let Some((Some(bytes),)) = result
                .maybe_first_row::<(Option<Vec<u8>>,)>()
                .map_err(super::driver(what))?
            {
                let membership =
                    codec::decode(&bytes, "segment_membership", || format!("user {user}"))?;
                found.insert(user.clone(), membership);
            }
        }
        Ok(found)
    }

    async fn due(&self, until: Millis, limit: usize) -> Result<Vec<(Millis, String)>, StoreError> {
        self.ensure_tables().await?;
        let what = "read due timers";
        let mut due = Vec::new();
        for shard in 0..TIMER_SHARDS {
            let result = self
                .inner
                .session
                .query_unpaged(
                    self.statement("SELECT due, user_id FROM {ks}.segment_timers WHERE shard = ? AND due <= ? LIMIT ?"),
                    (shard, until, i32::try_from(limit).unwrap_or(i32::MAX)),
                )
                .await
                .map_err(super::driver(what))?
                .into_rows_result()
                .map_err(super::driver(what))?;
            for row in result
                .rows::<(i64, String)>()
                .map_err(super::driver(what))?
            {
                due.push(row.map_err(super::driver(what))?);
            }
        }
        due.sort();
        due.truncate(limit);
        Ok(due)
    }

    async fn apply_insights(
        &self,
        updates: Vec<MembershipUpdate>,
        progress: InsightsProgress,
    ) -> Result<Applied, StoreError> {
        let stored = self.recovered().await?;
        let users: Vec<String> = updates.iter().map(|u| u.user_id.clone()).collect();
        let current = self.memberships(&users).await?;
        let mut next_cursor = stored.next_cursor.max(progress.next_cursor).max(1);
        let mut applied = Applied::default();
        let mut journal = Journal {
            users: Vec::new(),
            progress: InsightsProgress::default(),
        };
        for update in updates {
            if current.get(&update.user_id) != update.previous.as_ref() {
                applied.conflicts += 1;
                continue;
            }
            let entries: Vec<FeedEntry> = update
                .transitions
                .into_iter()
                .map(|transition| {
                    let entry = FeedEntry {
                        cursor: next_cursor,
                        transition,
                    };
                    next_cursor += 1;
                    entry
                })
                .collect();
            applied.published.extend(entries.iter().cloned());
            let old_due = update.previous.as_ref().and_then(|m| m.due);
            journal
                .users
                .push((update.user_id, old_due, update.next, entries));
        }
        let mut position = stored.position;
        for (partition, next) in progress.position.iter() {
            position.advance(partition, next);
        }
        journal.progress = InsightsProgress {
            position,
            evaluated_until: stored.evaluated_until.max(progress.evaluated_until),
            next_cursor,
        };
        let bytes = codec::encode(&journal)?;
        // The row may not exist yet: create it empty first (idempotent).
        self.conditional(
            "INSERT INTO {ks}.insights_state (id) VALUES (0) IF NOT EXISTS",
            (),
            "create the insights state",
        )
        .await?;
        if !self
            .conditional(
                "UPDATE {ks}.insights_state SET pending = ? WHERE id = 0 IF pending = null",
                (bytes.clone(),),
                "journal an insights pass",
            )
            .await?
        {
            // Retryable: the other pass finishes, or the next call applies it.
            return Err(StoreError::Unavailable(
                "another insights worker is writing (a journalled pass is pending)".into(),
            ));
        }
        self.finish(bytes).await?;
        Ok(applied)
    }

    async fn segment_members(
        &self,
        segment: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.ensure_tables().await?;
        let what = "read segment members";
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let result = self
            .inner
            .session
            .query_unpaged(
                self.statement("SELECT user_id FROM {ks}.segment_members WHERE segment = ? AND user_id > ? LIMIT ?"),
                (segment, after.unwrap_or(""), limit),
            )
            .await
            .map_err(super::driver(what))?
            .into_rows_result()
            .map_err(super::driver(what))?;
        result
            .rows::<(String,)>()
            .map_err(super::driver(what))?
            .map(|row| row.map(|(user,)| user).map_err(super::driver(what)))
            .collect()
    }

    async fn segment_changes(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<FeedEntry>, StoreError> {
        let (progress, _) = self.state().await?;
        let what = "read segment changes";
        let mut entries = Vec::new();
        let last = progress.next_cursor.saturating_sub(1);
        let mut from = after.saturating_add(1);
        while entries.len() < limit && from <= last {
            let result = self
                .inner
                .session
                .query_unpaged(
                    self.statement("SELECT cursor, transition FROM {ks}.segment_changes WHERE bucket = ? AND cursor >= ? LIMIT ?"),
                    (bucket(from), from as i64, i32::try_from(limit - entries.len()).unwrap_or(i32::MAX)),
                )
                .await
                .map_err(super::driver(what))?
                .into_rows_result()
                .map_err(super::driver(what))?;
            for row in result
                .rows::<(i64, Vec<u8>)>()
                .map_err(super::driver(what))?
            {
                let (cursor, bytes) = row.map_err(super::driver(what))?;
                let cursor = cursor_of(cursor)?;
                if cursor > last {
                    break;
                }
                let transition =
                    codec::decode(&bytes, "segment_changes", || format!("cursor {cursor}"))?;
                entries.push(FeedEntry { cursor, transition });
            }
            from = (bucket(from) as u64 + 1) * FEED_BUCKET;
        }
        Ok(entries)
    }
}
