//! The speed layer's writes and reads: entries, the event index, progress.

use std::collections::HashMap;
use std::time::Duration;

use ::scylla::response::query_result::QueryRowsResult;
use ::scylla::response::PagingState;
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::batch::{Batch, BatchType};
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::statement::unprepared::Statement;
use ::scylla::value::MaybeUnset;
use futures::{stream, StreamExt, TryStreamExt};
use signals_core::{LogPosition, Offset, Partition};
use signals_schemas::Millis;
use tracing::debug;

use super::codec::{self, from_bigint, index_bucket, partition_from_bigint, to_bigint};
use super::schema::Statements;
use super::store::Inner;
use crate::{IndexEntry, PositionedEntry, SpeedProgress, SpeedWrite, StoreError};

/// Most rows of one partition written as one single-partition batch (one
/// mutation, which Cassandra does not hold to `batch_size_fail_threshold`).
const ROWS_PER_BATCH: usize = 32;

/// Most bytes of rows in one request, unless one row is larger: far below
/// the 16 MiB a CQL server takes in one request (its
/// `native_transport_max_frame_size`) and half its commit log segment per
/// mutation.
const REQUEST_BYTES: usize = 4 << 20;

/// Most entries of one `speed_entries` row: a popular user's entries of one
/// write (thousands) become rows of tens of KiB, not one cell of MiBs.
const ENTRIES_PER_ROW: usize = 64;

/// Most bytes of one `speed_entries` row, unless one entry is larger (a
/// retraction may name 10,000 ids: some 2.5 MiB).
const ROW_BYTES: usize = 1 << 20;

/// The event index's first layout, one partition per id (until session 12).
const LEGACY_INDEX: &str = "event_index";

/// Most ids of one index bucket read by one request.
const IDS_PER_READ: usize = 128;

/// One speed row, encoded: log partition, the offset of its last entry,
/// and its entries (a run of one user's entries of one log partition).
type EntryRow = (i64, i64, Vec<u8>);

/// One index row, encoded: event id, entry, seconds to live (0: for good).
type IndexRow<'a> = (&'a str, Vec<u8>, i32);

/// One request of a speed write, encoded: rows of one CQL partition,
/// written as one unlogged single-partition batch, which the server applies
/// as one mutation. This is the "coalesce per user per flush" of the
/// store's cost model: a popular user's many entries, or many ids of one
/// index bucket, cost one request, not many.
enum Row<'a> {
    /// Runs of entries of one user.
    Entries { user: &'a str, rows: Vec<EntryRow> },
    /// Index entries of one bucket.
    Index {
        bucket: i32,
        rows: Vec<IndexRow<'a>>,
    },
    /// The users the write touched on one log partition, its end there and
    /// the attempt's id.
    Changes {
        partition: i64,
        next: i64,
        write_id: i64,
        users: Vec<u8>,
    },
}

/// `write`'s entries as `speed_entries` rows, per user: each of its runs
/// ([`SpeedWrite::runs`]) cut into rows of at most [`ENTRIES_PER_ROW`],
/// each keyed by the offset of its last entry (as the embedded store keys
/// its rows). A row whose key a position covers is covered whole, so
/// readers and garbage collection skip it by its key.
fn entry_runs(write: &SpeedWrite) -> Result<Vec<(&str, Vec<EntryRow>)>, StoreError> {
    let mut users: Vec<(&str, Vec<EntryRow>)> = Vec::new();
    for same_partition in write.runs() {
        let user = same_partition[0].user_id.as_str();
        non_empty(user, "user id")?;
        if users.last().is_none_or(|(last, _)| *last != user) {
            users.push((user, Vec::new()));
        }
        let at = users.len() - 1;
        let rows = &mut users[at].1;
        for run in same_partition.chunks(ENTRIES_PER_ROW) {
            encode_run(run, rows)?;
        }
    }
    Ok(users)
}

/// `run` as one row, or, past [`ROW_BYTES`], as the rows of its halves.
fn encode_run(run: &[&PositionedEntry], rows: &mut Vec<EntryRow>) -> Result<(), StoreError> {
    let entries: Vec<_> = run.iter().map(|e| (e.offset, &e.entry)).collect();
    let value = codec::encode_chunk(&entries)?;
    if value.len() > ROW_BYTES && run.len() > 1 {
        let (older, newer) = run.split_at(run.len() / 2);
        encode_run(older, rows)?;
        return encode_run(newer, rows);
    }
    let last = run[run.len() - 1];
    rows.push((
        i64::from(last.partition),
        to_bigint(last.offset, "log offset")?,
        value,
    ));
    Ok(())
}

/// One `speed_changes` row per log partition `write` wrote entries on: the
/// write's end there and its users' hashes, sorted and distinct, under one
/// random id for this attempt.
fn touched_users(write: &SpeedWrite) -> Result<Vec<Row<'static>>, StoreError> {
    let write_id = attempt_id();
    let mut by_partition: HashMap<Partition, Vec<u64>> = HashMap::new();
    for e in &write.entries {
        by_partition
            .entry(e.partition)
            .or_default()
            .push(crate::changes::user_hash(&e.user_id));
    }
    by_partition
        .into_iter()
        .map(|(partition, mut hashes)| {
            hashes.sort_unstable();
            hashes.dedup();
            let next = write.progress.position.next(partition);
            Ok(Row::Changes {
                partition: i64::from(partition),
                next: to_bigint(next, "log offset")?,
                write_id,
                users: hashes.iter().flat_map(|h| h.to_le_bytes()).collect(),
            })
        })
        .collect()
}

/// A random id for one attempt at a write: two attempts at the same write
/// (a retry, a replay) leave two rows, never one overwriting the other.
pub(super) fn attempt_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() as i64
}

/// `rows` in chunks of at most [`ROWS_PER_BATCH`] rows and
/// [`REQUEST_BYTES`] (as `bytes` weighs a row; a larger row alone), each
/// made a request.
fn chunked<'a, R>(
    rows: Vec<R>,
    bytes: impl Fn(&R) -> usize,
    request: impl Fn(Vec<R>) -> Row<'a>,
    requests: &mut Vec<Row<'a>>,
) {
    let mut chunk = Vec::new();
    let mut weight = 0;
    for row in rows {
        let size = bytes(&row);
        if !chunk.is_empty() && (chunk.len() == ROWS_PER_BATCH || weight + size > REQUEST_BYTES) {
            requests.push(request(std::mem::take(&mut chunk)));
            weight = 0;
        }
        weight += size;
        chunk.push(row);
    }
    if !chunk.is_empty() {
        requests.push(request(chunk));
    }
}

/// The CQL time to live of an index entry that may go at `expires_at`: at
/// least a second (0 would mean for good), at most CQL's twenty years.
fn index_ttl(expires_at: Option<Millis>, now: Millis) -> i32 {
    const MAX_TTL: i64 = 20 * 365 * 24 * 3600;
    match expires_at {
        None => 0,
        Some(at) => {
            let seconds = at.saturating_sub(now).div_euclid(1000).saturating_add(1);
            i32::try_from(seconds.clamp(1, MAX_TTL)).unwrap_or(1)
        }
    }
}

impl Inner {
    /// Writes entries, then index updates, then advances the progress rows,
    /// each step (at most `max_in_flight` requests at a time) only once the
    /// one before is wholly acknowledged.
    ///
    /// Entries strictly before the index: a write cut short (the store dies,
    /// a connection is reset, this process is killed) must never leave an
    /// event id in the index without its entry, because a retry plans the
    /// batch again from the index and would take such an id for a duplicate
    /// and never write its entry (docs/RELIABILITY.md, finding 1). An entry
    /// without its index row is harmless: the retry writes it again under
    /// the same (partition, offset) key.
    pub(super) async fn apply_speed(&self, write: &SpeedWrite) -> Result<(), StoreError> {
        let statements = self.statements().await?;
        // Encoded up front: a value that cannot be encoded fails the call
        // before anything is written.
        let mut rows = Vec::new();
        for (user, runs) in entry_runs(write)? {
            chunked(
                runs,
                |(_, _, value)| value.len(),
                |rows| Row::Entries { user, rows },
                &mut rows,
            );
        }
        let now = signals_schemas::now_millis();
        let mut by_bucket: HashMap<i32, Vec<IndexRow>> = HashMap::new();
        for (event_id, entry) in &write.index {
            non_empty(event_id, "event id")?;
            by_bucket.entry(index_bucket(event_id)).or_default().push((
                event_id,
                crate::codec::encode_index(entry)?,
                index_ttl(entry.expires_at, now),
            ));
        }
        let mut index_rows = Vec::with_capacity(by_bucket.len());
        for (bucket, entries) in by_bucket {
            chunked(
                entries,
                |(id, value, _)| id.len() + value.len(),
                |rows| Row::Index { bucket, rows },
                &mut index_rows,
            );
        }
        // Whom the write touched, after its entries (a follower that sees a
        // row may skip reading the users it does not name) and before its
        // index (a replay takes indexed events as written and names no one
        // for them) and its progress (a follower reads the progress first).
        let changes = touched_users(write)?;
        let count = rows.len() + changes.len() + index_rows.len();
        for step in [rows, changes, index_rows] {
            stream::iter(step.into_iter().map(Ok))
                .try_for_each_concurrent(self.options.max_in_flight, |row| {
                    self.write_row(statements, row)
                })
                .await?;
        }

        // Only now, with every row above acknowledged: the progress rows.
        let last_accepted_at = match write.progress.last_accepted_at {
            Some(at) => MaybeUnset::Set(at),
            None => MaybeUnset::Unset,
        };
        let progress = write
            .progress
            .position
            .iter()
            .map(|(partition, next)| Ok((i64::from(partition), to_bigint(next, "log offset")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        stream::iter(progress.into_iter().map(Ok))
            .try_for_each_concurrent(self.options.max_in_flight, |(partition, next)| {
                self.run(
                    &statements.insert_progress,
                    (partition, next, last_accepted_at, next),
                    "write the speed progress",
                )
            })
            .await?;
        debug!(requests = count, "scylla speed write applied");
        Ok(())
    }

    async fn write_row(&self, statements: &Statements, row: Row<'_>) -> Result<(), StoreError> {
        match row {
            Row::Entries { user, rows } => {
                let values = rows
                    .iter()
                    .map(|(partition, offset, value)| (user, partition, offset, value));
                self.write_partition(&statements.insert_entry, values, "write speed entries")
                    .await
            }
            Row::Index { bucket, rows } => {
                let values = rows
                    .iter()
                    .map(|(event_id, value, ttl)| (bucket, event_id, value, ttl));
                self.write_partition(
                    &statements.insert_index,
                    values,
                    "write event index entries",
                )
                .await
            }
            Row::Changes {
                partition,
                next,
                write_id,
                users,
            } => {
                self.run(
                    &statements.insert_change,
                    (partition, next, write_id, users),
                    "write the speed changes",
                )
                .await
            }
        }
    }

    /// Runs `statement` for each of `values`, rows of one partition: one
    /// row alone, more as one unlogged batch.
    async fn write_partition<V: SerializeRow>(
        &self,
        statement: &PreparedStatement,
        values: impl Iterator<Item = V>,
        what: &str,
    ) -> Result<(), StoreError> {
        let values = match <[V; 1]>::try_from(values.collect::<Vec<V>>()) {
            Ok([row]) => return self.run(statement, row, what).await,
            Err(values) => values,
        };
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        for _ in &values {
            batch.append_statement(statement.clone());
        }
        self.session
            .batch(&batch, values)
            .await
            .map_err(super::driver(what))?;
        Ok(())
    }

    /// The writes on log `partition` that end past `after`, in log order:
    /// each one's end and the hashes of the users it touched there.
    pub(super) async fn speed_changes(
        &self,
        partition: Partition,
        after: Offset,
    ) -> Result<Vec<(Offset, Vec<u64>)>, StoreError> {
        let statements = self.statements().await?;
        let what = "read the speed changes";
        let mut changes = Vec::new();
        let values = (i64::from(partition), to_bigint(after, "log offset")?);
        self.pages(&statements.select_changes, &values, what, |page| {
            for row in page
                .rows::<(i64, Option<&[u8]>)>()
                .map_err(super::driver(what))?
            {
                let (next, users) = row.map_err(super::driver(what))?;
                let next = from_bigint(next, "speed_changes", "next offset")?;
                let users = users.unwrap_or_default();
                if users.len() % 8 != 0 {
                    return Err(StoreError::Corrupt(format!(
                        "table speed_changes, partition {partition}, next offset {next}: \
                         {} bytes of user hashes, not a multiple of 8",
                        users.len()
                    )));
                }
                let hashes = users
                    .chunks_exact(8)
                    .map(|h| u64::from_le_bytes(h.try_into().unwrap_or_default()))
                    .collect();
                changes.push((next, hashes));
            }
            Ok(())
        })
        .await?;
        Ok(changes)
    }

    /// Progress merged over the partitions' rows.
    pub(super) async fn speed_progress(&self) -> Result<SpeedProgress, StoreError> {
        let statements = self.statements().await?;
        let mut progress = SpeedProgress::default();
        self.pages(
            &statements.select_progress,
            &(),
            "read the speed progress",
            |page| {
                for row in page
                    .rows::<(i64, Option<i64>, Option<i64>)>()
                    .map_err(super::driver("read the speed progress"))?
                {
                    let (partition, next, accepted) =
                        row.map_err(super::driver("decode the speed progress"))?;
                    let partition = partition_from_bigint(partition, "speed_progress")?;
                    if let Some(next) = next {
                        let next = from_bigint(next, "speed_progress", "next offset")?;
                        progress.position.advance(partition, next);
                    }
                    progress.last_accepted_at = progress.last_accepted_at.max(accepted);
                }
                Ok(())
            },
        )
        .await?;
        Ok(progress)
    }

    /// What the index holds for each of `event_ids`: one read per bucket
    /// (of at most [`IDS_PER_READ`] ids), at most `max_in_flight` at a time.
    pub(super) async fn lookup_events(
        &self,
        event_ids: &[String],
    ) -> Result<HashMap<String, IndexEntry>, StoreError> {
        let statements = self.statements().await?;
        let mut by_bucket: HashMap<i32, Vec<&str>> = HashMap::new();
        for id in event_ids.iter().filter(|id| !id.is_empty()) {
            by_bucket.entry(index_bucket(id)).or_default().push(id);
        }
        let mut reads = Vec::with_capacity(by_bucket.len());
        for (bucket, mut ids) in by_bucket {
            ids.sort_unstable();
            ids.dedup();
            // Owned: a stream of futures borrowing `event_ids` is not
            // `Send` for every lifetime, as the port's futures must be.
            reads.extend(ids.chunks(IDS_PER_READ).map(|ids| {
                let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
                (bucket, ids)
            }));
        }
        let found: Vec<Vec<(String, IndexEntry)>> = stream::iter(reads)
            .map(|(bucket, ids)| self.lookup_bucket(statements, bucket, ids))
            .buffer_unordered(self.options.max_in_flight)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn lookup_bucket(
        &self,
        statements: &Statements,
        bucket: i32,
        ids: Vec<String>,
    ) -> Result<Vec<(String, IndexEntry)>, StoreError> {
        let what = "read the event index";
        let result = self
            .session
            .execute_unpaged(&statements.select_index, (bucket, &ids))
            .await
            .map_err(super::driver(what))?
            .into_rows_result()
            .map_err(super::driver(what))?;
        let mut found = Vec::with_capacity(ids.len());
        for row in result
            .rows::<(&str, Option<&[u8]>)>()
            .map_err(super::driver(what))?
        {
            let (event_id, bytes) = row.map_err(super::driver(what))?;
            let Some(bytes) = bytes else { continue };
            let key = || format!("event id {event_id:?}");
            let entry = crate::codec::decode_index(bytes, "event_index_buckets", key)?;
            found.push((event_id.to_owned(), entry));
        }
        Ok(found)
    }

    /// Moves the entries of the event index's first layout (`event_index`,
    /// one partition per id) into its buckets, with the time each had left
    /// to live, then drops that table. Idempotent, and harmless beside
    /// another process doing the same: a row copied twice is the same row,
    /// and a table another process dropped mid-copy was copied by it.
    /// Returns how many entries it moved.
    pub(super) async fn adopt_legacy_index(
        &self,
        ddl_timeout: Duration,
    ) -> Result<u64, StoreError> {
        if !self.has_table(LEGACY_INDEX).await? {
            return Ok(0);
        }
        let keyspace = &self.options.keyspace;
        match self.copy_legacy_index().await {
            Ok(moved) => {
                let mut drop =
                    Statement::new(format!("DROP TABLE IF EXISTS {keyspace}.{LEGACY_INDEX}"));
                drop.set_request_timeout(Some(ddl_timeout));
                self.session
                    .query_unpaged(drop, &[])
                    .await
                    .map_err(super::driver("drop the event index's first layout"))?;
                Ok(moved)
            }
            Err(_) if !self.has_table(LEGACY_INDEX).await? => Ok(0),
            Err(error) => Err(error),
        }
    }

    async fn copy_legacy_index(&self) -> Result<u64, StoreError> {
        let statements = self.statements().await?;
        let what = "copy the event index's first layout";
        let keyspace = &self.options.keyspace;
        let mut scan = Statement::new(format!(
            "SELECT event_id, entry, TTL(entry) FROM {keyspace}.{LEGACY_INDEX}"
        ));
        scan.set_page_size(1000);
        let mut paging = PagingState::start();
        let mut moved = 0;
        loop {
            let (page, next) = self
                .session
                .query_single_page(scan.clone(), &[], paging)
                .await
                .map_err(super::driver(what))?;
            let page = page.into_rows_result().map_err(super::driver(what))?;
            let mut by_bucket: HashMap<i32, Vec<IndexRow>> = HashMap::new();
            for row in page
                .rows::<(&str, Option<&[u8]>, Option<i32>)>()
                .map_err(super::driver(what))?
            {
                let (event_id, entry, ttl) = row.map_err(super::driver(what))?;
                let Some(entry) = entry.filter(|_| !event_id.is_empty()) else {
                    continue;
                };
                let row = (event_id, entry.to_vec(), ttl.unwrap_or(0));
                by_bucket
                    .entry(index_bucket(event_id))
                    .or_default()
                    .push(row);
                moved += 1;
            }
            let mut requests = Vec::new();
            for (bucket, rows) in by_bucket {
                chunked(
                    rows,
                    |(id, value, _)| id.len() + value.len(),
                    |rows| Row::Index { bucket, rows },
                    &mut requests,
                );
            }
            stream::iter(requests.into_iter().map(Ok))
                .try_for_each_concurrent(self.options.max_in_flight, |row| {
                    self.write_row(statements, row)
                })
                .await?;
            match next.into_paging_control_flow() {
                std::ops::ControlFlow::Break(()) => return Ok(moved),
                std::ops::ControlFlow::Continue(state) => paging = state,
            }
        }
    }

    /// Whether the keyspace has `table`.
    pub(super) async fn has_table(&self, table: &str) -> Result<bool, StoreError> {
        let what = "list the keyspace's tables";
        let result = self
            .session
            .query_unpaged(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
                (&self.options.keyspace, table),
            )
            .await
            .map_err(super::driver(what))?
            .into_rows_result()
            .map_err(super::driver(what))?;
        Ok(result.rows_num() > 0)
    }

    /// `user`'s speed entries that `covered` does not cover, in (partition,
    /// offset) order; covered rows are skipped undecoded.
    ///
    /// A user's rows sit in clustering order (log partition, offset of the
    /// row's last entry), and mostly on one log partition (the log is keyed
    /// by user). The first page, of [`HEAD_ROWS`](super::schema::HEAD_ROWS)
    /// rows, is all of a light user: one round trip, as before. Past it the
    /// read seeks instead of paging through rows a reader already holds (a
    /// popular user's kept tail, ADR 009): it finds the first row after a
    /// cursor, jumps over that log partition's covered rows, and reads from
    /// the first that is not. A few round trips, whatever the tail's length.
    pub(super) async fn speed_entries(
        &self,
        user: &str,
        covered: Option<&LogPosition>,
    ) -> Result<Vec<PositionedEntry>, StoreError> {
        let statements = self.statements().await?;
        let what = "read speed entries";
        let mut entries = Written::default();
        if user.is_empty() {
            return Ok(Vec::new());
        }
        let nothing_covered = LogPosition::default();
        let covered = covered.unwrap_or(&nothing_covered);
        let (head, more) = self
            .session
            .execute_single_page(
                &statements.select_entries_head,
                (user,),
                PagingState::start(),
            )
            .await
            .map_err(super::driver(what))?;
        let head = head.into_rows_result().map_err(super::driver(what))?;
        let last = take_entries(user, covered, &head, &mut entries)?;
        if more.into_paging_control_flow().is_break() {
            return Ok(entries.resolve());
        }
        // A page may hold fewer rows than asked for, even none (the server
        // cuts pages short past tombstones): go on after the last row seen.
        let mut cursor = match last {
            Some((partition, offset)) => (
                i64::from(partition),
                to_bigint(offset, "log offset")?.saturating_add(1),
            ),
            None => (0, 0),
        };
        while let Some((partition, offset)) = self.next_entry(user, cursor).await? {
            // A row is keyed by its last entry: covered key, covered row.
            let from = covered.next(partition);
            if offset < from {
                cursor = (i64::from(partition), to_bigint(from, "log offset")?);
                continue;
            }
            let values = (user, i64::from(partition), to_bigint(offset, "log offset")?);
            self.pages(&statements.select_entries_from, &values, what, |page| {
                take_entries(user, covered, page, &mut entries).map(|_| ())
            })
            .await?;
            cursor = (i64::from(partition) + 1, 0);
        }
        Ok(entries.resolve())
    }

    /// The key of `user`'s first speed row at or after `cursor`.
    async fn next_entry(
        &self,
        user: &str,
        (partition, offset): (i64, i64),
    ) -> Result<Option<(u32, u64)>, StoreError> {
        let statements = self.statements().await?;
        let what = "seek speed entries";
        let result = self
            .session
            .execute_unpaged(&statements.select_next_entry, (user, partition, offset))
            .await
            .map_err(super::driver(what))?
            .into_rows_result()
            .map_err(super::driver(what))?;
        let Some((partition, offset)) = result
            .maybe_first_row::<(i64, i64)>()
            .map_err(super::driver(what))?
        else {
            return Ok(None);
        };
        Ok(Some((
            partition_from_bigint(partition, "speed_entries")?,
            from_bigint(offset, "speed_entries", "log offset")?,
        )))
    }
}

/// Entries read from `speed_entries` rows, each with the write time of its
/// row.
///
/// Two attempts at one write (a speed process killed between a write's
/// entries and its progress, then the replay) may cut a user's entries
/// into different runs, and a replay may plan a position differently from
/// the attempt it replays (RELIABILITY.md, finding 1): then two rows hold
/// the same position. The row written last holds what the speed layer
/// decided last, which is what one row per position kept when a later
/// write replaced it; CQL orders the writes by their write times.
#[derive(Default)]
struct Written(Vec<(PositionedEntry, i64)>);

impl Written {
    /// Each position once, as its newest row holds it, in log order.
    fn resolve(mut self) -> Vec<PositionedEntry> {
        let position = |e: &PositionedEntry| (e.partition, e.offset);
        let in_order = self
            .0
            .windows(2)
            .all(|w| position(&w[0].0) < position(&w[1].0));
        if !in_order {
            self.0.sort_by(|(a, written_a), (b, written_b)| {
                position(a).cmp(&position(b)).then(written_b.cmp(written_a))
            });
            self.0
                .dedup_by(|later, kept| position(&later.0) == position(&kept.0));
        }
        self.0.into_iter().map(|(entry, _)| entry).collect()
    }
}

/// Appends the entries of the rows of `page` that `covered` does not cover
/// to `entries`; returns the key of the page's last row, covered or not.
fn take_entries(
    user: &str,
    covered: &LogPosition,
    page: &QueryRowsResult,
    entries: &mut Written,
) -> Result<Option<(u32, u64)>, StoreError> {
    let what = "read speed entries";
    let mut last = None;
    for row in page
        .rows::<(i64, i64, Option<&[u8]>, Option<i64>)>()
        .map_err(super::driver(what))?
    {
        let (partition, offset, value, written) = row.map_err(super::driver(what))?;
        let partition = partition_from_bigint(partition, "speed_entries")?;
        let offset = from_bigint(offset, "speed_entries", "log offset")?;
        last = Some((partition, offset));
        if covered.covers(partition, offset) {
            continue;
        }
        let key = || format!("user {user:?} partition {partition} offset {offset}");
        let value = value.ok_or_else(|| {
            StoreError::Corrupt(format!("table speed_entries, {}: no entry", key()))
        })?;
        let run = codec::decode_chunk(value, offset, "speed_entries", key)?;
        let written = written.unwrap_or(i64::MIN);
        entries.0.extend(
            run.into_iter()
                .filter(|(offset, _)| !covered.covers(partition, *offset))
                .map(|(offset, entry)| {
                    let entry = PositionedEntry {
                        user_id: user.to_owned(),
                        partition,
                        offset,
                        entry,
                    };
                    (entry, written)
                }),
        );
    }
    Ok(last)
}

/// Refuses an empty key: CQL partition keys must not be empty.
pub(super) fn non_empty(key: &str, what: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Backend(format!(
            "cannot store an empty {what}: CQL partition keys must not be empty"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{at, write};
    use signals_core::SpeedEntry;

    /// A retraction entry of about `bytes` bytes.
    fn retraction(user: &str, offset: Offset, bytes: usize) -> PositionedEntry {
        PositionedEntry {
            entry: SpeedEntry::Retracted {
                event_ids: (0..bytes / 100).map(|i| format!("{i:0>99}")).collect(),
            },
            ..at(user, 0, offset)
        }
    }

    #[test]
    fn rows_and_requests_stay_within_their_bytes_and_keep_every_entry_in_order() {
        let mut entries: Vec<_> = (0..20).map(|o| retraction("big", o, 300_000)).collect();
        entries.extend((20..200).map(|o| at("big", 0, o)));
        entries.push(retraction("huge", 0, 2_500_000));
        let write = write(entries, &[]);
        let users = entry_runs(&write).expect("encodes");
        for (user, rows) in &users {
            let mut offsets = Vec::new();
            for (partition, key, value) in rows {
                let run = codec::decode_chunk(value, 0, "t", String::new).expect("decodes");
                assert!(run.len() <= ENTRIES_PER_ROW);
                assert!(
                    value.len() <= ROW_BYTES || run.len() == 1,
                    "{user}: a row too big"
                );
                assert_eq!(*key, run[run.len() - 1].0 as i64, "keyed by its last entry");
                assert_eq!(*partition, 0);
                offsets.extend(run.iter().map(|(offset, _)| *offset));
            }
            let expected: Vec<Offset> = match *user {
                "big" => (0..200).collect(),
                _ => vec![0],
            };
            assert_eq!(offsets, expected, "{user}");
        }
        let (_, big) = users.into_iter().next().expect("big's rows");
        let rows = big.len();
        assert!(
            rows < 200 / 8,
            "small entries go many to a row: {rows} rows"
        );
        let mut requests = Vec::new();
        chunked(
            big,
            |(_, _, v)| v.len(),
            |rows| Row::Entries { user: "big", rows },
            &mut requests,
        );
        let sizes: Vec<(usize, usize)> = requests
            .iter()
            .map(|r| match r {
                Row::Entries { rows, .. } => (rows.len(), rows.iter().map(|r| r.2.len()).sum()),
                _ => (0, 0),
            })
            .collect();
        assert!(
            sizes
                .iter()
                .all(|&(n, bytes)| n == 1 || bytes <= REQUEST_BYTES),
            "{sizes:?}"
        );
        assert_eq!(sizes.iter().map(|&(n, _)| n).sum::<usize>(), rows);
        assert!(
            sizes.len() > 1,
            "3 MB of rows in more than one request: {sizes:?}"
        );
    }
}
