//! Serving's read: manifest, record and speed tail from one snapshot.

use std::sync::Arc;

use redb::{ReadTransaction, ReadableTable};
use signals_core::{LogPosition, UserRecord};

use super::tables::{BATCH, META, PUBLISHED_KEY, SPEED};
use super::{codec, engine, keys, speed, Inner};
use crate::{BatchManifest, HistorySince, PositionedEntry, StoreError, TailMark};

impl Inner {
    /// `user`'s published record and the speed entries past `mark`, from
    /// one read transaction.
    pub(super) fn user_history(
        &self,
        user: &str,
        mark: Option<&TailMark>,
    ) -> Result<HistorySince, StoreError> {
        let token = self.changes.token();
        let (txn, manifest) = self.snapshot()?;
        let record = match &manifest {
            Some(manifest) => match self.records.known(manifest.version, user) {
                Some(known) => known,
                None => {
                    let batch = txn.open_table(BATCH).map_err(engine("open table batch"))?;
                    self.read_record(&batch, manifest.version, user)?
                }
            },
            None => None,
        };
        history(&txn, user, manifest, record, mark, token)
    }

    /// [`Self::user_history`] if a version is published and the user's
    /// record of it is decoded in memory already (or known not to exist);
    /// `None` otherwise (reading and decoding the record, or, with nothing
    /// published, scanning the user's whole history, belongs on the
    /// blocking pool).
    pub(super) fn warm_user_history(
        &self,
        user: &str,
        mark: Option<&TailMark>,
    ) -> Result<Option<HistorySince>, StoreError> {
        let token = self.changes.token();
        if let Some(history) = self.unchanged_history(user, mark, token) {
            return Ok(Some(history));
        }
        let (txn, manifest) = self.snapshot()?;
        let Some(record) = manifest
            .as_ref()
            .and_then(|manifest| self.records.known(manifest.version, user))
        else {
            return Ok(None);
        };
        history(&txn, user, manifest, record, mark, token).map(Some)
    }

    /// `user`'s history from their record of the version published just
    /// before the one in this snapshot, if this process keeps it decoded,
    /// it holds at least `previous_answers_from_events` events and their
    /// record of the published version is not decoded yet; with the
    /// version to load. Exact: the snapshot publishes the version after
    /// it, so garbage collection has not dropped what it needs (that
    /// waits for the next publication).
    pub(super) fn history_from_before(
        &self,
        user: &str,
        mark: Option<&TailMark>,
    ) -> Result<Option<(HistorySince, u64)>, StoreError> {
        let Some(newest) = self.published.get() else {
            return Ok(None);
        };
        let Some(before) = self.published.before(newest.version) else {
            return Ok(None);
        };
        let heavy =
            |record: &Arc<UserRecord>| record.events.len() >= self.previous_answers_from_events;
        let Some(record) = self
            .records
            .known(before.version, user)
            .flatten()
            .filter(heavy)
        else {
            return Ok(None);
        };
        let token = self.changes.token();
        let (txn, manifest) = self.snapshot()?;
        let Some(manifest) = manifest.filter(|m| m.version == newest.version) else {
            return Ok(None);
        };
        if self.records.known(manifest.version, user).is_some() {
            return Ok(None);
        }
        let history = history(&txn, user, Some(before), Some(record), mark, token)?;
        Ok(Some((history, manifest.version)))
    }

    /// Nothing past `mark`, known from memory ([`super::changes`]): the
    /// mark is of the newest published version, whose record of `user` is
    /// decoded (or known not to exist), and no write touched `user` since
    /// the mark's read.
    fn unchanged_history(
        &self,
        user: &str,
        mark: Option<&TailMark>,
        token: u64,
    ) -> Option<HistorySince> {
        let mark = mark?;
        let seen = mark.change_token?;
        let manifest = self.published.get()?;
        if mark.version != Some(manifest.version) || !self.changes.unchanged_since(user, seen) {
            return None;
        }
        let record = self.records.known(manifest.version, user)?;
        let (from, resumed) = TailMark::read_from(Some(mark), Some(&manifest));
        Some(HistorySince {
            manifest: Some(manifest),
            record,
            entries: Vec::new(),
            resumed,
            from,
            change_token: Some(token),
        })
    }

    /// A read snapshot and the manifest published in it.
    fn snapshot(&self) -> Result<(ReadTransaction, Option<Arc<BatchManifest>>), StoreError> {
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
        let manifest =
            self.published_in(&txn.open_table(META).map_err(engine("open table meta"))?)?;
        Ok((txn, manifest))
    }

    /// `user`'s record of `version`, from the cache or one read.
    pub(super) fn batch_record(
        &self,
        version: u64,
        user: &str,
    ) -> Result<Option<Arc<UserRecord>>, StoreError> {
        if let Some(known) = self.records.known(version, user) {
            return Ok(known);
        }
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
        let batch = txn.open_table(BATCH).map_err(engine("open table batch"))?;
        self.read_record(&batch, version, user)
    }

    /// `user`'s speed entries not covered by `from`.
    pub(super) fn speed_entries(
        &self,
        user: &str,
        from: &LogPosition,
    ) -> Result<Vec<PositionedEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
        let speed_table = txn.open_table(SPEED).map_err(engine("open table speed"))?;
        speed::read_tail(&speed_table, user, Some(from))
    }

    /// The published manifest, from its own snapshot.
    pub(super) fn published(&self) -> Result<Option<Arc<BatchManifest>>, StoreError> {
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
        let meta = txn.open_table(META).map_err(engine("open table meta"))?;
        self.published_in(&meta)
    }

    /// The manifest `meta` holds, decoded at most once per published value.
    pub(super) fn published_in(
        &self,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Option<Arc<BatchManifest>>, StoreError> {
        let Some(value) = meta
            .get(PUBLISHED_KEY)
            .map_err(engine("read the published manifest"))?
        else {
            return Ok(None);
        };
        let bytes = value.value();
        if let Some(manifest) = self.manifest.get(bytes) {
            return Ok(Some(manifest));
        }
        let manifest: Arc<BatchManifest> = Arc::new(codec::decode(bytes, "meta", || {
            format!("key {PUBLISHED_KEY}")
        })?);
        self.manifest.set(bytes, manifest.clone());
        self.published.advance(&manifest);
        Ok(Some(manifest))
    }

    /// `user`'s record of `version`, decoded and cached; a reader that
    /// comes while another loads it waits for that load.
    fn read_record(
        &self,
        batch: &impl ReadableTable<&'static [u8], &'static [u8]>,
        version: u64,
        user: &str,
    ) -> Result<Option<Arc<UserRecord>>, StoreError> {
        self.loading
            .one_at_a_time(version, user, || match self.records.known(version, user) {
                Some(known) => Ok(known),
                None => self.load_record(batch, version, user),
            })
    }

    fn load_record(
        &self,
        batch: &impl ReadableTable<&'static [u8], &'static [u8]>,
        version: u64,
        user: &str,
    ) -> Result<Option<Arc<UserRecord>>, StoreError> {
        let key = keys::batch_key(version, user);
        let Some(value) = batch
            .get(key.as_slice())
            .map_err(engine("read a batch record"))?
        else {
            // Only of the published version: an unpublished one is still
            // being written (a resumed batch run reads its own records).
            if self.published.get().is_some_and(|m| m.version == version) {
                self.records.insert_absent(version, user);
            }
            return Ok(None);
        };
        let bytes = value.value();
        let record: Arc<UserRecord> = Arc::new(codec::decode_record(bytes, "batch", || {
            format!("version {version} user {user:?}")
        })?);
        self.records
            .insert(version, user, record.clone(), bytes.len());
        Ok(Some(record))
    }
}

/// The history of `user` given their record: the speed entries past `mark`
/// (at least the manifest's position), from the same snapshot.
fn history(
    txn: &ReadTransaction,
    user: &str,
    manifest: Option<Arc<BatchManifest>>,
    record: Option<Arc<UserRecord>>,
    mark: Option<&TailMark>,
    change_token: u64,
) -> Result<HistorySince, StoreError> {
    let speed_table = txn.open_table(SPEED).map_err(engine("open table speed"))?;
    let (from, resumed) = TailMark::read_from(mark, manifest.as_deref());
    let entries = speed::read_tail(&speed_table, user, Some(&from))?;
    Ok(HistorySince {
        manifest,
        record,
        entries,
        resumed,
        from,
        change_token: Some(change_token),
    })
}
