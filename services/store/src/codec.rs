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

/// The format byte of a CQL `batch_records` value that stands for a record
/// stored in pieces (`scylla::codec::RecordPieces`); the embedded store
/// keeps every record whole.
#[cfg_attr(not(feature = "scylla"), allow(dead_code))]
pub const PIECES_FORMAT: u8 = 5;

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

/// Records up to this long are decoded where they are read; longer ones on
/// the blocking pool ([`decode_record_apart`]). A heavy user's record takes
/// up to a second to decode, and on one of the runtime's few threads it
/// would hold every request queued behind it for that long.
#[cfg_attr(not(any(feature = "scylla", feature = "redis")), allow(dead_code))]
pub const DECODED_IN_PLACE: usize = 256 << 10;

/// [`decode_record`] of a record read from `table`, on the blocking pool.
#[cfg_attr(not(any(feature = "scylla", feature = "redis")), allow(dead_code))]
pub async fn decode_record_apart(
    bytes: Vec<u8>,
    table: &'static str,
    key: String,
) -> Result<UserRecord, StoreError> {
    tokio::task::spawn_blocking(move || decode_record(&bytes, table, || key))
        .await
        .map_err(|e| StoreError::Backend(format!("decoding a record from {table} stopped: {e}")))?
}

/// How many bytes [`encode_record`] writes for `record`, without writing
/// them.
pub fn encoded_len(record: &UserRecord) -> Result<usize, StoreError> {
    postcard::experimental::serialized_size(record)
        .map(|len| len + 1)
        .map_err(|e| StoreError::Backend(format!("cannot encode a user record: {e}")))
}

/// A user record in its stored form: what [`encode_record`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedRecord(Vec<u8>);

impl EncodedRecord {
    /// The stored form of `record`.
    pub fn of(record: &UserRecord) -> Result<EncodedRecord, StoreError> {
        encode_record(record).map(EncodedRecord)
    }

    /// The stored form of the record (not deleted) of `horizon`, `base`
    /// and `events`, each event given as its postcard bytes (what
    /// `postcard::to_stdvec(&event)` gives), in the record's order (newest
    /// first): the bytes [`EncodedRecord::of`] gives for that record, made
    /// without decoding an event. The caller vouches for the events' bytes:
    /// a malformed one makes a record that reads as corrupt.
    pub fn from_packed<'e, I>(
        horizon: Millis,
        base: &BTreeMap<String, BaseState>,
        events: I,
    ) -> Result<EncodedRecord, StoreError>
    where
        I: ExactSizeIterator<Item = &'e [u8]> + Clone,
    {
        let unencodable =
            |e: postcard::Error| StoreError::Backend(format!("cannot encode a user record: {e}"));
        // `UserRecord`'s fields in order; a sequence is its length, then its
        // elements back to back, and `deleted` is one byte.
        let mut bytes = postcard::to_extend(&horizon, vec![RECORD_FORMAT]).map_err(unencodable)?;
        bytes = postcard::to_extend(base, bytes).map_err(unencodable)?;
        bytes = postcard::to_extend(&events.len(), bytes).map_err(unencodable)?;
        bytes.reserve_exact(events.clone().map(<[u8]>::len).sum::<usize>() + 1);
        for event in events {
            bytes.extend_from_slice(event);
        }
        bytes.push(u8::from(false));
        Ok(EncodedRecord(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The record these bytes hold.
    pub fn decode(&self) -> Result<UserRecord, StoreError> {
        decode_record(&self.0, "batch", || "a record in hand".to_owned())
    }
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
    use proptest::prelude::*;
    use signals_core::testing::{aggregations, arb_events};
    use signals_core::State;

    proptest! {
        #[test]
        fn a_record_from_packed_events_is_that_record_encoded(
            events in arb_events(40),
            horizon in 0i64..200,
        ) {
            let old = || events.iter().filter(|e| e.event_time < horizon);
            let base = aggregations()
                .iter()
                .enumerate()
                .map(|(i, aggregation)| {
                    let mut state = State::empty(aggregation);
                    old().for_each(|e| state.add(aggregation, e));
                    (format!("s{i}"), BaseState { fingerprint: format!("f{i}"), state })
                })
                .collect();
            let record = UserRecord {
                horizon,
                base,
                events: events.clone(),
                ..UserRecord::default()
            };
            let packed: Vec<Vec<u8>> = events
                .iter()
                .map(|e| postcard::to_stdvec(e).expect("packs"))
                .collect();
            let made = EncodedRecord::from_packed(horizon, &record.base, packed.iter().map(Vec::as_slice))?;
            prop_assert_eq!(&made, &EncodedRecord::of(&record)?);
            prop_assert_eq!(decode_record(made.as_bytes(), "batch", String::new)?, record);
        }
    }

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
