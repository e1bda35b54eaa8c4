//! One user's events that count, kept packed from the recompute to the
//! stored record.
//!
//! A record stores its events as postcard bytes back to back, and the
//! batch reads them from the log into exactly those bytes
//! ([`packed`](crate::packed)). So the events that will be stored raw
//! (those at or after the record's horizon) are never decoded: they are
//! ordered by their event time and id, read from the head of their bytes,
//! and copied into the record. Only the events before the horizon are
//! decoded, one at a time, into the record's base states.
//!
//! A user's events cost about their packed size (some 65 bytes of a view),
//! not the half KiB a decoded `Event` with an attribute map holds: the
//! heaviest user of a log is what bounds the batch's memory.

use serde::Deserialize;
use signals_core::{BaseStates, Definitions};
use signals_schemas::{Event, EventType, Millis};
use signals_store::{EncodedRecord, StoreError};

/// A user's events, each as its packed bytes, in the order they were pushed.
#[derive(Clone, Debug, Default)]
pub struct UserEvents {
    bytes: Vec<u8>,
    events: Vec<Packed>,
}

/// Where one event's bytes sit, and its time (what records order by and
/// the bot rule reads).
#[derive(Clone, Copy, Debug)]
struct Packed {
    event_time: Millis,
    start: usize,
    len: u32,
}

/// The fields a packed event starts with, up to its time: read without
/// allocating (`Event`'s fields, in order, as postcard lays them out).
/// Strings are read as the bytes they are: postcard writes both alike, and
/// the batch packed them from valid strings.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    _event_id: &'a [u8],
    #[serde(borrow)]
    _user_id: &'a [u8],
    _event_type: EventType,
    #[serde(borrow)]
    _item_id: Option<&'a [u8]>,
    #[serde(borrow)]
    _query: Option<&'a [u8]>,
    event_time: Millis,
}

/// A record made of packed events, and what a run's summary counts of it.
pub struct PackedRecord {
    pub record: EncodedRecord,
    /// Raw events it keeps.
    pub events: u64,
    /// Whether it keeps base states (of events before its horizon).
    pub has_base: bool,
}

/// A record was asked of events that do not read as events.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UserEvents {
    /// Packs `events` (tests and callers holding decoded events).
    pub fn of(events: &[Event]) -> Result<UserEvents, postcard::Error> {
        let mut packed = UserEvents::default();
        for event in events {
            packed.push(&postcard::to_stdvec(event)?)?;
        }
        Ok(packed)
    }

    /// Adds an event given as its packed bytes; refused when they do not
    /// start like an event's.
    pub fn push(&mut self, packed: &[u8]) -> Result<(), postcard::Error> {
        let (head, _) = postcard::take_from_bytes::<Head>(packed)?;
        let len =
            u32::try_from(packed.len()).map_err(|_| postcard::Error::DeserializeBadEncoding)?;
        self.events.push(Packed {
            event_time: head.event_time,
            start: self.bytes.len(),
            len,
        });
        self.bytes.extend_from_slice(packed);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events' times, in order.
    pub fn times(&self) -> impl Iterator<Item = Millis> + '_ {
        self.events.iter().map(|e| e.event_time)
    }

    /// Keeps the events whose time `keep` accepts; how many went.
    pub fn retain_times(&mut self, mut keep: impl FnMut(Millis) -> bool) -> u64 {
        let before = self.events.len();
        self.events.retain(|e| keep(e.event_time));
        // The dropped events' bytes stay in the buffer, unreferenced: the
        // user is written and dropped next.
        (before - self.events.len()) as u64
    }

    /// The events, decoded, in order.
    pub fn decode(&self) -> Result<Vec<Event>, postcard::Error> {
        self.events
            .iter()
            .map(|e| postcard::from_bytes(self.bytes_of(e)))
            .collect()
    }

    /// The stored form of the user's record at `horizon`: the events before
    /// it folded into base states, the others raw and newest first. The
    /// same record as [`signals_core::UserRecord::compact`] makes of the
    /// decoded events.
    pub fn into_record(
        mut self,
        definitions: &Definitions,
        horizon: Millis,
    ) -> Result<PackedRecord, UnpackError> {
        let bytes = &self.bytes;
        // Newest first by (time, id) as records are; an id reused past the
        // deduplication window can tie, then log order decides, so that the
        // same events always make the same bytes.
        self.events.sort_unstable_by(|a, b| {
            b.event_time
                .cmp(&a.event_time)
                .then_with(|| id_of(bytes, b).cmp(id_of(bytes, a)))
                .then(a.start.cmp(&b.start))
        });
        let recent = self.events.partition_point(|e| e.event_time >= horizon);
        let mut base = BaseStates::new(definitions);
        for old in &self.events[recent..] {
            base.add(&postcard::from_bytes(self.bytes_of(old))?);
        }
        let base = base.finish();
        let kept = &self.events[..recent];
        let record =
            EncodedRecord::from_packed(horizon, &base, kept.iter().map(|e| self.bytes_of(e)))?;
        Ok(PackedRecord {
            record,
            events: kept.len() as u64,
            has_base: !base.is_empty(),
        })
    }

    fn bytes_of(&self, event: &Packed) -> &[u8] {
        &self.bytes[event.start..event.start + event.len as usize]
    }
}

/// An event's id, read from its bytes (checked when it was pushed).
fn id_of<'b>(bytes: &'b [u8], event: &Packed) -> &'b [u8] {
    let packed = &bytes[event.start..event.start + event.len as usize];
    match postcard::take_from_bytes::<&[u8]>(packed) {
        Ok((id, _)) => id,
        Err(_) => &[],
    }
}

/// The same events in the same order, however their bytes are laid out.
impl PartialEq for UserEvents {
    fn eq(&self, other: &UserEvents) -> bool {
        self.len() == other.len()
            && self
                .events
                .iter()
                .zip(&other.events)
                .all(|(a, b)| self.bytes_of(a) == other.bytes_of(b))
    }
}

impl Eq for UserEvents {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use signals_core::testing::{arb_events, event};
    use signals_core::UserRecord;

    /// Lifetime signals of each kind that keeps a base state, beside
    /// windowed ones that keep none.
    fn definitions() -> Definitions {
        let specs = serde_json::json!([
            {"name": "views_ever", "events": ["view"], "aggregation": "count"},
            {"name": "first_view", "events": ["view", "click"], "aggregation": "first_seen"},
            {"name": "items_ever", "aggregation": "distinct_count", "field": "item_id"},
            {"name": "cities", "aggregation": "top_k", "field": "attributes.city", "limit": 2},
            {"name": "wishlist", "aggregation": "set", "field": "item_id", "limit": 5,
             "add": ["wishlist_add"], "remove": ["wishlist_remove"]},
            {"name": "sessions", "aggregation": "session_count", "gap": "7ms", "window": "50ms"},
            {"name": "views_1h", "events": ["view"], "aggregation": "count", "window": "40ms"},
        ]);
        let specs: Vec<signals_core::definition::SignalSpec> =
            serde_json::from_value(specs).expect("specs");
        Definitions::compile(&specs).expect("valid")
    }

    proptest! {
        /// The record made without decoding is the compacted one, whatever
        /// the horizon splits off into base states.
        #[test]
        fn a_record_of_packed_events_is_the_compacted_record(
            events in arb_events(60),
            horizon in 0i64..220,
        ) {
            let definitions = definitions();
            let made = UserEvents::of(&events)?.into_record(&definitions, horizon).expect("makes");
            let expected = UserRecord::compact(&definitions, events, horizon);
            prop_assert_eq!(made.events, expected.events.len() as u64);
            prop_assert_eq!(made.has_base, !expected.base.is_empty());
            // Equal as records: the bytes of base states that hold hash maps
            // differ from one encoding to the next.
            prop_assert_eq!(made.record.decode()?, expected);
        }
    }

    #[test]
    fn events_tied_on_time_and_id_keep_log_order() {
        let definitions = definitions();
        let first = event("e", EventType::View, "a", 5);
        let again = event("e", EventType::View, "b", 5);
        for (log, items) in [
            ([first.clone(), again.clone()], ["a", "b"]),
            ([again, first], ["b", "a"]),
        ] {
            let made = UserEvents::of(&log)
                .expect("packs")
                .into_record(&definitions, 0)
                .expect("makes");
            let record = made.record.decode().expect("decodes");
            let got: Vec<_> = record.events.iter().map(|e| e.item_id.as_deref()).collect();
            assert_eq!(got, items.map(Some));
        }
    }

    #[test]
    fn bytes_that_are_not_an_event_are_refused() {
        let mut events = UserEvents::default();
        assert!(events.push(&[0xff, 0xff]).is_err());
        assert!(events.is_empty());
    }
}
