//! The value format every backend stores (redb values, CQL blobs, Redis
//! cache entries), so that bytes mean the same wherever they sit.
//!
//! Every stored value is one format byte followed by the value encoded with
//! postcard (serde, compact, not self-describing):
//!
//! ```text
//! [FORMAT = 1] [postcard bytes …]
//! ```
//!
//! postcard does not carry field names, so a change to a stored type
//! (`SpeedEntry`, `UserRecord`, `IndexEntry`, `SpeedProgress`,
//! `BatchManifest`) must bump [`FORMAT`] and teach [`decode`] the old one.
//! A value with an unknown format byte is reported as corrupt, never guessed.
//!
//! [`UserRecord`]s are written with format 2 ([`encode_record`]), which
//! added `deleted`; [`decode_record`] still reads format 1 records.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use signals_core::view::BaseState;
use signals_core::{IndexEntry, Offset, SpeedEntry, UserRecord};
use signals_schemas::{Event, Millis};

use crate::StoreError;

/// The format byte written in front of every value.
pub const FORMAT: u8 = 1;

/// Encodes `value` behind the format byte.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![FORMAT])
        .map_err(|e| StoreError::Backend(format!("cannot encode a value: {e}")))
}

/// Decodes a value read from `table` at the key `key` describes.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    table: &str,
    key: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT, body)) => postcard::from_bytes(body).map_err(|e| {
            StoreError::Corrupt(format!("table {table}, {}: undecodable value: {e}", key()))
        }),
        Some((format, _)) => Err(StoreError::Corrupt(format!(
            "table {table}, {}: unknown value format {format} (this build reads format {FORMAT})",
            key()
        ))),
        None => Err(StoreError::Corrupt(format!(
            "table {table}, {}: empty value",
            key()
        ))),
    }
}

/// The format byte of [`UserRecord`] values.
pub const RECORD_FORMAT: u8 = 2;

/// A user record as format 1 stored it (before deletion existed).
#[derive(Deserialize)]
struct UserRecordV1 {
    horizon: Millis,
    base: BTreeMap<String, BaseState>,
    events: Vec<Event>,
}

/// Encodes a user record behind [`RECORD_FORMAT`].
pub fn encode_record(record: &UserRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(record, vec![RECORD_FORMAT])
        .map_err(|e| StoreError::Backend(format!("cannot encode a user record: {e}")))
}

/// Decodes what [`encode_record`] wrote, or a format 1 record.
pub fn decode_record(
    bytes: &[u8],
    table: &str,
    key: impl FnOnce() -> String,
) -> Result<UserRecord, StoreError> {
    let undecodable = |e: postcard::Error, key: String| {
        StoreError::Corrupt(format!(
            "table {table}, {key}: undecodable user record: {e}"
        ))
    };
    match bytes.split_first() {
        Some((&RECORD_FORMAT, body)) => {
            postcard::from_bytes(body).map_err(|e| undecodable(e, key()))
        }
        Some((&FORMAT, body)) => {
            let old: UserRecordV1 = postcard::from_bytes(body).map_err(|e| undecodable(e, key()))?;
            Ok(UserRecord {
                horizon: old.horizon,
                base: old.base,
                events: old.events,
                deleted: false,
                tiles: Default::default(),
                ids: Default::default(),
            })
        }
        Some((format, _)) => Err(StoreError::Corrupt(format!(
            "table {table}, {}: unknown user record format {format} (this build reads formats {FORMAT} and {RECORD_FORMAT})",
            key()
        ))),
        None => Err(StoreError::Corrupt(format!(
            "table {table}, {}: empty value",
            key()
        ))),
    }
}

/// The format byte of a coalesced run of one user's speed entries (the
/// embedded store's `speed` values): their offsets ascending, each with its
/// entry. A value behind [`FORMAT`] there is a single entry, as layout 1
/// wrote one per row.
pub const CHUNK_FORMAT: u8 = 4;

/// Encodes one user's entries of one partition, offsets ascending.
pub fn encode_chunk(entries: &[(Offset, &SpeedEntry)]) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(entries, vec![CHUNK_FORMAT])
        .map_err(|e| StoreError::Backend(format!("cannot encode speed entries: {e}")))
}

/// Decodes what [`encode_chunk`] wrote, or a single entry behind
/// [`FORMAT`] stored at `offset` (the offset its key ends with).
pub fn decode_chunk(
    bytes: &[u8],
    offset: Offset,
    table: &str,
    key: impl FnOnce() -> String,
) -> Result<Vec<(Offset, SpeedEntry)>, StoreError> {
    match bytes.split_first() {
        Some((&CHUNK_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| {
            StoreError::Corrupt(format!(
                "table {table}, {}: undecodable speed entries: {e}",
                key()
            ))
        }),
        Some((&FORMAT, _)) => Ok(vec![(offset, decode(bytes, table, key)?)]),
        Some((format, _)) => Err(StoreError::Corrupt(format!(
            "table {table}, {}: unknown speed value format {format} (this build reads formats {FORMAT} and {CHUNK_FORMAT})",
            key()
        ))),
        None => Err(StoreError::Corrupt(format!(
            "table {table}, {}: empty value",
            key()
        ))),
    }
}

/// How many entries a speed value holds, read from its length prefix
/// without decoding them (`None`: not a speed value).
pub fn chunk_len(bytes: &[u8]) -> Option<u64> {
    match bytes.split_first()? {
        // postcard prefixes a sequence with its length, encoded as a u64 is.
        (&CHUNK_FORMAT, body) => postcard::take_from_bytes::<u64>(body)
            .ok()
            .map(|(len, _)| len),
        (&FORMAT, _) => Some(1),
        _ => None,
    }
}

/// The format byte of [`IndexEntry`] values: format 3 added the
/// acceptance times of the deduplication window and the expiry.
pub const INDEX_FORMAT: u8 = 3;

/// An index entry as format 1 stored it (before the deduplication window).
#[derive(Deserialize)]
struct IndexEntryV1 {
    user_id: Option<String>,
    retracted: bool,
}

/// Encodes an event index entry behind [`INDEX_FORMAT`] (CQL's
/// `event_index` values; the embedded store's layout 1 had them too).
#[cfg_attr(not(any(feature = "scylla", test)), allow(dead_code))]
pub fn encode_index(entry: &IndexEntry) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(entry, vec![INDEX_FORMAT])
        .map_err(|e| StoreError::Backend(format!("cannot encode an index entry: {e}")))
}

/// Decodes what [`encode_index`] wrote, or a format 1 entry: it reserves
/// its id for good, and a retraction it records reaches every occurrence.
pub fn decode_index(
    bytes: &[u8],
    table: &str,
    key: impl FnOnce() -> String,
) -> Result<IndexEntry, StoreError> {
    let undecodable = |e: postcard::Error, key: String| {
        StoreError::Corrupt(format!(
            "table {table}, {key}: undecodable index entry: {e}"
        ))
    };
    match bytes.split_first() {
        Some((&INDEX_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| undecodable(e, key())),
        Some((&FORMAT, body)) => {
            let old: IndexEntryV1 = postcard::from_bytes(body).map_err(|e| undecodable(e, key()))?;
            Ok(IndexEntry {
                user_id: old.user_id,
                accepted_at: None,
                retracted_at: old.retracted.then_some(Millis::MAX),
                expires_at: None,
            })
        }
        Some((format, _)) => Err(StoreError::Corrupt(format!(
            "table {table}, {}: unknown index entry format {format} (this build reads formats {FORMAT} and {INDEX_FORMAT})",
            key()
        ))),
        None => Err(StoreError::Corrupt(format!(
            "table {table}, {}: empty value",
            key()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IndexEntry;

    #[test]
    fn values_round_trip_and_foreign_bytes_are_corrupt_with_context() {
        let entry = IndexEntry {
            user_id: Some("u".into()),
            accepted_at: Some(5),
            retracted_at: Some(7),
            expires_at: Some(9),
        };
        let bytes = encode(&entry).expect("encodes");
        assert_eq!(bytes[0], FORMAT);
        let back: IndexEntry =
            decode(&bytes, "event_index", || "event e1".into()).expect("decodes");
        assert_eq!(back, entry);

        let mut future = bytes.clone();
        future[0] = 9;
        let error = decode::<IndexEntry>(&future, "event_index", || "event e1".into())
            .expect_err("unknown format");
        assert!(
            matches!(&error, StoreError::Corrupt(m) if m.contains("event_index") && m.contains("e1") && m.contains("format 9"))
        );
        assert!(matches!(
            decode::<IndexEntry>(&[], "t", String::new),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode::<IndexEntry>(&[FORMAT, 7], "t", String::new),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn index_entries_round_trip_and_format_1_ones_still_decode() {
        let entry = IndexEntry {
            user_id: Some("u".into()),
            accepted_at: Some(5),
            retracted_at: None,
            expires_at: Some(9),
        };
        let bytes = encode_index(&entry).expect("encodes");
        assert_eq!(bytes[0], INDEX_FORMAT);
        assert_eq!(
            decode_index(&bytes, "t", String::new).expect("decodes"),
            entry
        );

        #[derive(Serialize)]
        struct V1 {
            user_id: Option<String>,
            retracted: bool,
        }
        let old = encode(&V1 {
            user_id: Some("u".into()),
            retracted: true,
        })
        .expect("encodes");
        let read = decode_index(&old, "t", String::new).expect("decodes");
        assert_eq!(
            read,
            IndexEntry {
                user_id: Some("u".into()),
                accepted_at: None,
                retracted_at: Some(Millis::MAX),
                expires_at: None,
            }
        );
        let error =
            decode_index(&[9, 0], "event_index", || "event e1".into()).expect_err("unknown");
        assert!(matches!(&error, StoreError::Corrupt(m) if m.contains("format 9")));
    }

    #[test]
    fn records_of_format_1_still_decode() {
        #[derive(Serialize)]
        struct V1<'a> {
            horizon: Millis,
            base: &'a BTreeMap<String, BaseState>,
            events: &'a [Event],
        }
        let event = signals_core::testing::event("e1", signals_schemas::EventType::View, "a", 5);
        let record = UserRecord {
            horizon: 3,
            events: vec![event],
            ..UserRecord::default()
        };
        let old = encode(&V1 {
            horizon: record.horizon,
            base: &record.base,
            events: &record.events,
        })
        .expect("encodes");
        assert_eq!(old[0], FORMAT);
        assert_eq!(
            decode_record(&old, "batch", String::new).expect("decodes"),
            record
        );

        let erased = UserRecord::erased(7);
        let bytes = encode_record(&erased).expect("encodes");
        assert_eq!(bytes[0], RECORD_FORMAT);
        assert_eq!(
            decode_record(&bytes, "batch", String::new).expect("decodes"),
            erased
        );
        assert!(matches!(
            decode_record(&[9, 0], "batch", String::new),
            Err(StoreError::Corrupt(m)) if m.contains("format 9")
        ));
    }
}
