//! Batch versions: records, the user listing, publication and serving's read.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::value::{CqlValue, Row};
use futures::{stream, StreamExt, TryStreamExt};
use signals_core::UserRecord;
use tracing::{debug, info};

use super::codec::{
    self, from_bigint, to_bigint, user_bucket, RecordPieces, PIECED_BUCKET, RECORD_PIECE_BYTES,
};
use super::driver;
use super::schema::Statements;
use super::speed::non_empty;
use super::store::Inner;
pub(super) use crate::types::refuse_backwards;
use crate::{BatchManifest, EncodedRecord, StoreError};

/// Conditional writes `publish` tries before giving up on a contended pointer.
const PUBLISH_ATTEMPTS: usize = 5;

impl Inner {
    /// Writes `records` under the unpublished `version`: the version's row,
    /// then per user its listing row and then its record (or, past
    /// [`RECORD_PIECE_BYTES`], its listing among the pieced, its pieces and
    /// then what its record's cell says of them), at most `max_in_flight`
    /// users at a time.
    pub(super) async fn write_batch(
        &self,
        version: u64,
        records: Vec<(String, EncodedRecord)>,
    ) -> Result<(), StoreError> {
        let statements = self.statements().await?;
        if let Some(published) = self.read_pointer(&statements.select_pointer).await? {
            if version <= published.version {
                return Err(StoreError::Backend(format!(
                    "cannot write records of version {version}: version {} is published and published versions are immutable",
                    published.version
                )));
            }
        }
        let v = to_bigint(version, "version")?;
        for (user, _) in &records {
            non_empty(user, "user id")?;
        }
        self.run(
            &statements.register_version,
            (v,),
            "register a batch version",
        )
        .await?;
        let users = records.len();
        stream::iter(records.into_iter().map(Ok))
            .try_for_each_concurrent(self.options.max_in_flight, |(user, record)| async move {
                // Listed before written: garbage collection finds every record.
                self.run(
                    &statements.insert_listing,
                    // A bucket is below USER_BUCKETS (256): it fits.
                    (v, user_bucket(&user) as i32, user.as_str()),
                    "write a batch listing row",
                )
                .await?;
                self.write_record(v, &user, record.as_bytes()).await
            })
            .await?;
        debug!(version, users, "scylla batch records written");
        Ok(())
    }

    /// Writes `user`'s record of version `v`, listed already: in its cell,
    /// or in pieces that its cell then counts.
    async fn write_record(&self, v: i64, user: &str, record: &[u8]) -> Result<(), StoreError> {
        let statements = self.statements().await?;
        if record.len() <= RECORD_PIECE_BYTES {
            return self
                .run(
                    &statements.insert_record,
                    (v, user, record),
                    "write a batch record",
                )
                .await;
        }
        self.run(
            &statements.insert_listing,
            (v, PIECED_BUCKET, user),
            "list a batch record in pieces",
        )
        .await?;
        let pieces = i32::try_from(record.len().div_ceil(RECORD_PIECE_BYTES)).map_err(|_| {
            StoreError::Backend(format!(
                "cannot store a record of {} bytes: more than {} pieces",
                record.len(),
                i32::MAX
            ))
        })?;
        for (piece, bytes) in (0..pieces).zip(record.chunks(RECORD_PIECE_BYTES)) {
            self.run(
                &statements.insert_piece,
                (v, user, piece, bytes),
                "write a batch record's piece",
            )
            .await?;
        }
        let cell = RecordPieces {
            // Not negative: it fits.
            pieces: pieces as u32,
            bytes: record.len() as u64,
        }
        .encode()?;
        self.run(
            &statements.insert_record,
            (v, user, cell),
            "write a batch record in pieces",
        )
        .await
    }

    /// A record's bytes from its pieces, a few read at once (each a MiB:
    /// one at a time, a heavy user's 77 MB took a round trip per 4 MiB
    /// page, one after the other). Only the pieces the cell counts are
    /// read: an earlier attempt's extra ones are ignored.
    async fn record_in_pieces(
        &self,
        version: i64,
        user: &str,
        pieces: RecordPieces,
    ) -> Result<Vec<u8>, StoreError> {
        let statements = self.statements().await?;
        let fetched: Vec<Vec<u8>> = stream::iter(0..pieces.pieces)
            .map(|piece| self.piece(statements, version, user, piece))
            .buffered(PIECES_IN_FLIGHT)
            .try_collect()
            .await?;
        let record = fetched.concat();
        if record.len() as u64 != pieces.bytes {
            return Err(StoreError::Corrupt(format!(
                "table batch_record_pieces, version {version} user {user:?}: {} pieces of {} \
                 bytes, where the record's cell counts {} bytes",
                pieces.pieces,
                record.len(),
                pieces.bytes
            )));
        }
        Ok(record)
    }

    /// One piece of a record's bytes.
    async fn piece(
        &self,
        statements: &Statements,
        version: i64,
        user: &str,
        piece: u32,
    ) -> Result<Vec<u8>, StoreError> {
        let what = "read a batch record's piece";
        let number = i32::try_from(piece).map_err(|_| {
            StoreError::Corrupt(format!(
                "table batch_records, version {version} user {user:?}: {piece} pieces do not fit a CQL int"
            ))
        })?;
        let result = self
            .session
            .execute_unpaged(&statements.select_piece, (version, user, number))
            .await
            .map_err(driver(what))?
            .into_rows_result()
            .map_err(driver(what))?;
        match result
            .maybe_first_row::<(Option<&[u8]>,)>()
            .map_err(driver(what))?
        {
            Some((bytes,)) => Ok(bytes.unwrap_or_default().to_vec()),
            None => Err(StoreError::Corrupt(format!(
                "table batch_record_pieces, version {version} user {user:?}: piece {piece} is missing"
            ))),
        }
    }

    /// Makes `manifest` the published one with a compare-and-set of the
    /// pointer row on the version read before, refusing to go back.
    pub(super) async fn publish(&self, manifest: &BatchManifest) -> Result<(), StoreError> {
        let statements = self.statements().await?;
        let bytes = codec::encode(manifest)?;
        let version = to_bigint(manifest.version, "version")?;
        for attempt in 1..=PUBLISH_ATTEMPTS {
            let started = Instant::now();
            // A Paxos read: sees any publication in progress, and our own
            // if a retried conditional write applied twice.
            let current = self.read_pointer(&statements.select_pointer_serial).await?;
            if let Some(current) = &current {
                refuse_backwards(current, manifest)?;
                if current.version == manifest.version {
                    // Published already, with this very manifest.
                    self.manifest.store(Some(current.clone()), started);
                    return Ok(());
                }
            }
            // The version's history row first; the pointer row is the last write.
            self.run(
                &statements.set_version_manifest,
                (bytes.as_slice(), version),
                "record a version's manifest",
            )
            .await?;
            let applied = match &current {
                None => {
                    self.conditional(&statements.create_pointer, (version, bytes.as_slice()))
                        .await?
                }
                Some(current) => {
                    let expected = to_bigint(current.version, "version")?;
                    self.conditional(
                        &statements.advance_pointer,
                        (version, bytes.as_slice(), expected),
                    )
                    .await?
                }
            };
            if applied {
                self.manifest
                    .store(Some(Arc::new(manifest.clone())), started);
                info!(version = manifest.version, "scylla batch version published");
                return Ok(());
            }
            debug!(
                attempt,
                "publication raced with another; reading the pointer again"
            );
        }
        Err(StoreError::Unavailable(format!(
            "cannot publish version {}: the published pointer changed under {PUBLISH_ATTEMPTS} attempts in a row",
            manifest.version
        )))
    }

    /// Runs a conditional (lightweight transaction) write; whether it applied.
    pub(super) async fn conditional(
        &self,
        statement: &PreparedStatement,
        values: impl ::scylla::serialize::row::SerializeRow,
    ) -> Result<bool, StoreError> {
        let what = "publish (conditional write of the published pointer)";
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(driver(what))?
            .into_rows_result()
            .map_err(driver(what))?;
        let row: Option<Row> = result.maybe_first_row().map_err(driver(what))?;
        match row.as_ref().and_then(|r| r.columns.first()) {
            Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
            other => Err(StoreError::Corrupt(format!(
                "cannot {what}: the answer has no [applied] flag: {other:?}"
            ))),
        }
    }

    /// The published manifest, read now (and remembered for serving).
    pub(super) async fn read_published(&self) -> Result<Option<Arc<BatchManifest>>, StoreError> {
        let statements = self.statements().await?;
        let started = Instant::now();
        metrics::counter!("signals_store_manifest_reads_total").increment(1);
        let manifest = self.read_pointer(&statements.select_pointer).await?;
        Ok(self.manifest.store(manifest, started))
    }

    /// The manifest serving merges with: the cached one while fresh, or
    /// while another reader refreshes it.
    pub(super) async fn serving_manifest(&self) -> Result<Option<Arc<BatchManifest>>, StoreError> {
        match self.manifest.for_serving() {
            ForServing::Use(manifest) => Ok(manifest),
            ForServing::Read(_refreshing) => self.read_published().await,
        }
    }

    /// Reads and decodes the pointer row with `statement`.
    async fn read_pointer(
        &self,
        statement: &PreparedStatement,
    ) -> Result<Option<Arc<BatchManifest>>, StoreError> {
        let what = "read the published pointer";
        let result = self
            .session
            .execute_unpaged(statement, ())
            .await
            .map_err(driver(what))?
            .into_rows_result()
            .map_err(driver(what))?;
        let Some((version, bytes)) = result
            .maybe_first_row::<(Option<i64>, Option<&[u8]>)>()
            .map_err(driver(what))?
        else {
            return Ok(None);
        };
        let (Some(version), Some(bytes)) = (version, bytes) else {
            return Err(StoreError::Corrupt(
                "table batch_pointer, row published: version or manifest missing".into(),
            ));
        };
        let manifest: BatchManifest =
            codec::decode(bytes, "batch_pointer", || "row published".into())?;
        if manifest.version != from_bigint(version, "batch_pointer", "version")? {
            return Err(StoreError::Corrupt(format!(
                "table batch_pointer, row published: version {version} holds the manifest of version {}",
                manifest.version
            )));
        }
        Ok(Some(Arc::new(manifest)))
    }

    /// `user`'s record of `version`, if the version has one.
    pub(super) async fn batch_record(
        &self,
        version: u64,
        user: &str,
    ) -> Result<Option<Arc<UserRecord>>, StoreError> {
        let statements = self.statements().await?;
        let what = "read a batch record";
        let v = to_bigint(version, "version")?;
        if user.is_empty() {
            return Ok(None);
        }
        let result = self
            .session
            .execute_unpaged(&statements.select_record, (v, user))
            .await
            .map_err(driver(what))?
            .into_rows_result()
            .map_err(driver(what))?;
        let Some((Some(cell),)) = result
            .maybe_first_row::<(Option<&[u8]>,)>()
            .map_err(driver(what))?
        else {
            return Ok(None);
        };
        let key = || format!("version {version} user {user:?}");
        let record = match RecordPieces::of_cell(cell, key)? {
            None if cell.len() <= crate::codec::DECODED_IN_PLACE => {
                codec::decode_record(cell, "batch_records", key)?
            }
            None => {
                crate::codec::decode_record_apart(cell.to_vec(), "batch_records", key()).await?
            }
            Some(pieces) => {
                let record = self.record_in_pieces(v, user, pieces).await?;
                crate::codec::decode_record_apart(record, "batch_record_pieces", key()).await?
            }
        };
        Ok(Some(Arc::new(record)))
    }
}

/// Pieces of one record read at once: a few MiB in flight, far below a
/// frame, enough to overlap the node's reads with the transfers.
const PIECES_IN_FLIGHT: usize = 4;

/// The published manifest as last read, for at most a TTL, or two while
/// one reader refreshes it.
///
/// Monotone: it never goes back to an older version (a slow read that
/// started before a publication cannot undo it), and a publish by this
/// process replaces it at once.
///
/// One reader refreshes an expired manifest; the others go on with it
/// meanwhile, for up to another TTL. Every reader that came while the
/// read was under way used to read the pointer too: at 20k requests a
/// second, 13–16 reads of one row at once, every second, all waited on
/// (docs/BENCHMARKS.md, session 21).
pub(super) struct ManifestCache {
    ttl: Duration,
    current: RwLock<Option<Cached>>,
    pub(super) refreshing: tokio::sync::Mutex<()>,
}

/// What a serving read does for its manifest.
pub(super) enum ForServing<'a> {
    Use(Option<Arc<BatchManifest>>),
    /// Read the pointer; holding the guard, as the one reader refreshing
    /// an expired manifest (none: nothing usable is cached).
    Read(Option<tokio::sync::MutexGuard<'a, ()>>),
}

struct Cached {
    /// When the read that produced it started.
    read_at: Instant,
    manifest: Option<Arc<BatchManifest>>,
}

impl ManifestCache {
    pub(super) fn new(ttl: Duration) -> ManifestCache {
        ManifestCache {
            ttl,
            current: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether serving uses the cached manifest or reads the pointer.
    pub(super) fn for_serving(&self) -> ForServing<'_> {
        let (age, manifest) = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            match current.as_ref() {
                Some(cached) => (cached.read_at.elapsed(), cached.manifest.clone()),
                None => return ForServing::Read(None),
            }
        };
        if age < self.ttl {
            return ForServing::Use(manifest);
        }
        if age >= self.ttl * 2 {
            // Not refreshed for a whole TTL: reads failed or none came.
            // Waiting for another reader's read would queue them all
            // behind it when the store hangs.
            return ForServing::Read(None);
        }
        match self.refreshing.try_lock() {
            Ok(refreshing) => ForServing::Read(Some(refreshing)),
            Err(_) => ForServing::Use(manifest),
        }
    }

    /// Remembers `manifest` as read at `read_at`, unless a newer one is
    /// cached; returns the one to use.
    pub(super) fn store(
        &self,
        manifest: Option<Arc<BatchManifest>>,
        read_at: Instant,
    ) -> Option<Arc<BatchManifest>> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let version = |m: &Option<Arc<BatchManifest>>| m.as_ref().map(|m| m.version);
        let keep = match current.as_ref() {
            Some(cached) if version(&cached.manifest) > version(&manifest) => {
                Some(cached.manifest.clone())
            }
            _ => None,
        };
        let manifest = keep.unwrap_or(manifest);
        let read_at = current.as_ref().map_or(read_at, |c| c.read_at.max(read_at));
        *current = Some(Cached {
            read_at,
            manifest: manifest.clone(),
        });
        manifest
    }
}
