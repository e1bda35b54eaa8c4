//! The batch layer's writes: records of a version, then its publication.

use std::sync::Arc;

use redb::Durability;

use super::tables::{BATCH, META, PUBLISHED_KEY};
use super::{codec, engine, keys, Inner};
use crate::types::refuse_backwards;
use crate::{BatchManifest, EncodedRecord, StoreError};

impl Inner {
    /// Writes `records` under the unpublished `version`, in one durable transaction.
    pub(super) fn write_batch(
        &self,
        version: u64,
        records: &[(String, EncodedRecord)],
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
        txn.set_durability(Durability::Immediate);
        {
            let meta = txn.open_table(META).map_err(engine("open table meta"))?;
            if let Some(published) = self.published_in(&meta)? {
                if version <= published.version {
                    return Err(StoreError::Backend(format!(
                        "cannot write records of version {version}: version {} is published and published versions are immutable",
                        published.version
                    )));
                }
            }
            let mut batch = txn.open_table(BATCH).map_err(engine("open table batch"))?;
            for (user, record) in records {
                let key = keys::batch_key(version, user);
                batch
                    .insert(key.as_slice(), record.as_bytes())
                    .map_err(engine("write a batch record"))?;
            }
        }
        txn.commit().map_err(engine("commit a batch write"))
    }

    /// Makes `manifest` the published one, refusing to go back.
    pub(super) fn publish(&self, manifest: BatchManifest) -> Result<(), StoreError> {
        let bytes = codec::encode(&manifest)?;
        let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut meta = txn.open_table(META).map_err(engine("open table meta"))?;
            if let Some(current) = self.published_in(&meta)? {
                refuse_backwards(&current, &manifest)?;
            }
            meta.insert(PUBLISHED_KEY, bytes.as_slice())
                .map_err(engine("write the published manifest"))?;
        }
        txn.commit().map_err(engine("commit a publication"))?;
        let manifest = Arc::new(manifest);
        self.published.advance(&manifest);
        self.manifest.set(&bytes, manifest);
        Ok(())
    }
}
