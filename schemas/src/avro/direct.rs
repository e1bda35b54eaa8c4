//! The common record read straight from its Avro bytes, borrowing its
//! strings: no Avro `Value`, no `String` allocated and dropped per field.
//!
//! Only what our own encoder writes for an event is read here: a record of
//! the current schema whose body is an event, with its attributes in
//! positive-count blocks and no key twice, that passes the log's rules
//! ([`crate::rules`]). Anything else (an older schema, a retraction or a
//! deletion, a repeated key, a malformed or refused event) is `None`, left
//! to the full decoder ([`super::decode_in_full`]), which decides it as it
//! always has. So an event read here is one the full decoder reads alike;
//! property tests hold the two to it.

use smol_str::SmolStr;

use super::{CURRENT_SCHEMA_ID, MAGIC_BYTE};
use crate::rules::{
    MAX_ATTRIBUTES, MAX_EVENT_TIME, MAX_ID_BYTES, MAX_KEY_BYTES, MAX_TEXT_BYTES, MIN_EVENT_TIME,
};
use crate::{Attributes, Event, EventType, Millis};

/// An event record's fields, borrowed from its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventView<'a> {
    pub accepted_at: Millis,
    pub event_id: &'a str,
    pub user_id: &'a str,
    pub event_type: EventType,
    pub item_id: Option<&'a str>,
    pub query: Option<&'a str>,
    pub event_time: Millis,
    /// Sorted by key, no key twice.
    pub attributes: Vec<(&'a str, &'a str)>,
}

impl EventView<'_> {
    /// The event, owning its strings (inline up to 23 bytes).
    pub fn to_event(&self) -> Event {
        Event {
            event_id: SmolStr::new(self.event_id),
            user_id: SmolStr::new(self.user_id),
            event_type: self.event_type,
            item_id: self.item_id.map(SmolStr::new),
            query: self.query.map(SmolStr::new),
            event_time: self.event_time,
            attributes: Attributes::from_sorted(
                self.attributes
                    .iter()
                    .map(|&(key, value)| (SmolStr::new(key), SmolStr::new(value)))
                    .collect(),
            ),
        }
    }
}

/// Reads a framed log record that is a valid event of the current schema;
/// `None` when the full decoder must decide it.
pub fn read_event(bytes: &[u8]) -> Option<EventView<'_>> {
    let (&magic, rest) = bytes.split_first()?;
    let (id, datum) = rest.split_first_chunk::<4>()?;
    if magic != MAGIC_BYTE || u32::from_be_bytes(*id) != CURRENT_SCHEMA_ID {
        return None;
    }
    let mut avro = Avro(datum);
    let accepted_at = avro.long()?;
    if avro.long()? != 0 {
        // A retraction or a deletion: rare, decoded in full.
        return None;
    }
    let event_id = avro.string()?;
    let user_id = avro.string()?;
    let event_type = *EventType::ALL.get(usize::try_from(avro.long()?).ok()?)?;
    let item_id = avro.optional_string()?;
    let query = avro.optional_string()?;
    let event_time = avro.long()?;
    let mut attributes: Vec<(&str, &str)> = Vec::new();
    loop {
        let count = avro.long()?;
        if count < 0 {
            return None;
        }
        if count == 0 {
            break;
        }
        for _ in 0..count {
            attributes.push((avro.string()?, avro.string()?));
            if attributes.len() > MAX_ATTRIBUTES {
                return None;
            }
        }
    }
    if !avro.0.is_empty() {
        return None;
    }
    // Our encoder writes keys in order, so one pass finds them sorted and
    // distinct; other producers' are sorted here. A repeated key keeps its
    // last value in an `Event`'s map, which the full decoder decides.
    if !attributes.is_sorted_by(|a, b| a.0 < b.0) {
        attributes.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if attributes.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
    }
    let view = EventView {
        accepted_at,
        event_id,
        user_id,
        event_type,
        item_id,
        query,
        event_time,
        attributes,
    };
    view.follows_the_rules().then_some(view)
}

impl EventView<'_> {
    /// [`crate::rules::check_event`], as a yes or no.
    fn follows_the_rules(&self) -> bool {
        valid_id(self.event_id)
            && valid_id(self.user_id)
            && match self.item_id {
                Some(item) => valid_id(item),
                None => !self.event_type.requires_item(),
            }
            && match self.query {
                Some(query) => {
                    query.len() <= MAX_TEXT_BYTES
                        && !(query.trim().is_empty() && self.event_type.requires_query())
                }
                None => !self.event_type.requires_query(),
            }
            && (MIN_EVENT_TIME..MAX_EVENT_TIME).contains(&self.event_time)
            && self.attributes.iter().all(|(key, value)| {
                !key.is_empty() && key.len() <= MAX_KEY_BYTES && value.len() <= MAX_TEXT_BYTES
            })
    }
}

/// The rules' `check_id`, as a yes or no.
fn valid_id(id: &str) -> bool {
    let control = if id.is_ascii() {
        // The ASCII control characters are exactly these bytes.
        id.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        id.chars().any(char::is_control)
    };
    !id.is_empty() && id.len() <= MAX_ID_BYTES && !control
}

/// Avro binary, read from the front.
struct Avro<'a>(&'a [u8]);

impl<'a> Avro<'a> {
    /// A zig-zag varint of at most 10 bytes.
    fn long(&mut self) -> Option<i64> {
        let mut value = 0u64;
        for (i, &byte) in self.0.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if i == 9 && byte > 1 {
                    return None;
                }
                self.0 = &self.0[i + 1..];
                return Some((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        None
    }

    fn string(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.long()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(text).ok()
    }

    /// `["null", "string"]`.
    fn optional_string(&mut self) -> Option<Option<&'a str>> {
        match self.long()? {
            0 => Some(None),
            1 => self.string().map(Some),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::avro::{decode_in_full, encode};
    use crate::testing::arb_event_near_the_rules;
    use crate::{LogRecord, RecordBody, Retraction};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// What is read here is what the full decoder reads; a valid event
        /// of our encoder is always read here, an invalid one never.
        #[test]
        fn reads_what_the_full_decoder_reads(event in arb_event_near_the_rules(), accepted_at in any::<i64>()) {
            let bytes = encode(&LogRecord { accepted_at, body: RecordBody::Event(event.clone()) });
            match (read_event(&bytes), decode_in_full(&bytes)) {
                (Some(view), Ok(record)) => {
                    prop_assert_eq!(view.accepted_at, accepted_at);
                    prop_assert_eq!(&record.body, &RecordBody::Event(event.clone()));
                    prop_assert_eq!(view.to_event(), event);
                }
                (None, Err(_)) => {}
                (direct, full) => prop_assert!(false, "read here: {:?}, full decoder: {:?}", direct, full),
            }
        }

        /// Whatever the bytes, what is read here the full decoder reads alike.
        #[test]
        fn garbage_is_left_to_the_full_decoder(event in arb_event_near_the_rules(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
            let mut bytes = encode(&LogRecord { accepted_at: 1, body: RecordBody::Event(event) });
            let at = flip.0.index(bytes.len());
            bytes[at] ^= flip.1;
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Some(view) = read_event(&bytes) {
                let record = decode_in_full(&bytes);
                prop_assert_eq!(record.ok(), Some(LogRecord {
                    accepted_at: view.accepted_at,
                    body: RecordBody::Event(view.to_event()),
                }));
            }
        }
    }

    #[test]
    fn other_bodies_and_schemas_go_to_the_full_decoder() {
        let retraction = encode(&LogRecord {
            accepted_at: 5,
            body: RecordBody::Retraction(Retraction {
                event_ids: vec!["e".into()],
                reason: String::new(),
            }),
        });
        assert_eq!(read_event(&retraction), None);
        let mut event = encode(&LogRecord {
            accepted_at: 5,
            body: RecordBody::Event(Event {
                event_id: "e".into(),
                user_id: "u".into(),
                event_type: EventType::Search,
                item_id: None,
                query: Some("q".into()),
                event_time: MIN_EVENT_TIME,
                attributes: Attributes::new(),
            }),
        });
        assert!(read_event(&event).is_some());
        event[4] = 1;
        assert_eq!(read_event(&event), None);
    }
}
