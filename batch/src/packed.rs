//! Events read straight from their Avro bytes into the batch's packed form
//! (postcard, the bytes `postcard::to_stdvec(&event)` gives), with no
//! `Event` built in between: no string or attribute map allocated and
//! dropped per event, which is most of what decoding cost the batch.
//!
//! Only the common case is read here: a record of the current schema whose
//! body is an event, in the encoding our own encoder writes, that passes
//! the log's rules ([`signals_schemas::rules`]). Anything else (an older
//! schema, a retraction, a map with duplicate keys or in negative-count
//! blocks, a malformed or refused event) is left to the full decoder
//! ([`signals_schemas::avro::decode`]), which decides it as before. So an
//! event read here is one the full decoder reads alike; a property test
//! holds the two to it.

use signals_schemas::avro::{CURRENT_SCHEMA_ID, MAGIC_BYTE};
use signals_schemas::rules::{
    MAX_ATTRIBUTES, MAX_EVENT_TIME, MAX_ID_BYTES, MAX_KEY_BYTES, MAX_TEXT_BYTES, MIN_EVENT_TIME,
};
use signals_schemas::{EventType, Millis};

/// What the recompute decides on, read from an event's bytes; its packed
/// form is in the buffer [`read_event`] filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventFields<'a> {
    pub accepted_at: Millis,
    pub event_id: &'a str,
    pub user_id: &'a str,
    pub event_time: Millis,
}

/// Reads a framed log record that is an event of the current schema into
/// `packed` (cleared first); `None` when the full decoder must decide it.
pub fn read_event<'a>(bytes: &'a [u8], packed: &mut Vec<u8>) -> Option<EventFields<'a>> {
    packed.clear();
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
    // The map of an `Event` is ordered by key; a repeated key would keep
    // its last value there, which the full decoder decides.
    attributes.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if attributes.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    let valid = valid_id(event_id)
        && valid_id(user_id)
        && match item_id {
            Some(item) => valid_id(item),
            None => !event_type.requires_item(),
        }
        && match query {
            Some(query) => {
                query.len() <= MAX_TEXT_BYTES
                    && !(query.trim().is_empty() && event_type.requires_query())
            }
            None => !event_type.requires_query(),
        }
        && (MIN_EVENT_TIME..MAX_EVENT_TIME).contains(&event_time)
        && attributes.iter().all(|(key, value)| {
            !key.is_empty() && key.len() <= MAX_KEY_BYTES && value.len() <= MAX_TEXT_BYTES
        });
    if !valid {
        return None;
    }

    // postcard's encoding of `Event`, field by field in declaration order.
    string(packed, event_id);
    string(packed, user_id);
    varint(packed, event_type as u64);
    for optional in [item_id, query] {
        match optional {
            Some(text) => {
                packed.push(1);
                string(packed, text);
            }
            None => packed.push(0),
        }
    }
    varint(packed, ((event_time << 1) ^ (event_time >> 63)) as u64);
    varint(packed, attributes.len() as u64);
    for (key, value) in attributes {
        string(packed, key);
        string(packed, value);
    }
    Some(EventFields {
        accepted_at,
        event_id,
        user_id,
        event_time,
    })
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

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn string(out: &mut Vec<u8>, text: &str) {
    varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
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
    use super::*;
    use proptest::prelude::*;
    use signals_schemas::{avro, Attributes, Event, LogRecord, RecordBody};

    fn text() -> impl Strategy<Value = String> {
        // Mostly plain ids; sometimes empty, blank, with a control
        // character, or long enough to break a limit.
        prop_oneof![
            6 => "[a-z0-9-]{1,12}",
            1 => Just(String::new()),
            1 => Just("  ".to_owned()),
            1 => Just("a\u{7}b".to_owned()),
            1 => Just("é\u{85}".to_owned()),
            1 => Just("a\u{7f}".to_owned()),
            1 => "é[a-z]{0,3}",
            1 => (250usize..1_100).prop_map(|n| "x".repeat(n)),
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        (
            (text(), text(), 0usize..5),
            (proptest::option::of(text()), proptest::option::of(text())),
            prop_oneof![
                8 => MIN_EVENT_TIME..MAX_EVENT_TIME,
                1 => any::<i64>(),
                1 => Just(MAX_EVENT_TIME),
            ],
            proptest::collection::btree_map(text(), text(), 0..4),
            0usize..70,
        )
            .prop_map(
                |(
                    (event_id, user_id, kind),
                    (item_id, query),
                    event_time,
                    mut attributes,
                    many,
                )| {
                    if many > 62 {
                        for i in 0..many {
                            attributes.insert(format!("k{i}"), "v".to_owned());
                        }
                    }
                    Event {
                        event_id: event_id.into(),
                        user_id: user_id.into(),
                        event_type: EventType::ALL[kind],
                        item_id: item_id.map(Into::into),
                        query: query.map(Into::into),
                        event_time,
                        attributes: attributes.into(),
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// What is read here is what the full decoder reads, packed as
        /// postcard packs it; a valid event of our encoder is always read
        /// here, an invalid one never.
        #[test]
        fn reads_what_the_full_decoder_reads(event in event(), accepted_at in any::<i64>()) {
            let bytes = avro::encode(&LogRecord { accepted_at, body: RecordBody::Event(event.clone()) });
            let full = avro::decode(&bytes);
            let mut packed = Vec::new();
            match (read_event(&bytes, &mut packed), full) {
                (Some(fields), Ok(record)) => {
                    prop_assert_eq!(record.accepted_at, accepted_at);
                    prop_assert_eq!(&record.body, &RecordBody::Event(event.clone()));
                    prop_assert_eq!(fields, EventFields {
                        accepted_at,
                        event_id: &event.event_id,
                        user_id: &event.user_id,
                        event_time: event.event_time,
                    });
                    prop_assert_eq!(packed, postcard::to_stdvec(&event).expect("packs"));
                }
                (None, Err(_)) => {}
                (fast, full) => prop_assert!(false, "read here: {:?}, full decoder: {:?}", fast, full),
            }
        }

        /// Whatever the bytes, what is read here the full decoder reads alike.
        #[test]
        fn garbage_is_left_to_the_full_decoder(event in event(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
            let mut bytes = avro::encode(&LogRecord { accepted_at: 1, body: RecordBody::Event(event) });
            let at = flip.0.index(bytes.len());
            bytes[at] ^= flip.1;
            bytes.truncate(cut.index(bytes.len() + 1));
            let mut packed = Vec::new();
            if let Some(fields) = read_event(&bytes, &mut packed) {
                let record = avro::decode(&bytes);
                prop_assert!(record.is_ok(), "read here, refused in full: {:?}", record);
                if let Ok(LogRecord { accepted_at, body: RecordBody::Event(e) }) = record {
                    prop_assert_eq!(accepted_at, fields.accepted_at);
                    prop_assert_eq!(packed, postcard::to_stdvec(&e).expect("packs"));
                } else {
                    prop_assert!(false, "not an event in full");
                }
            }
        }
    }

    #[test]
    fn other_bodies_and_schemas_go_to_the_full_decoder() {
        let retraction = avro::encode(&LogRecord {
            accepted_at: 5,
            body: RecordBody::Retraction(signals_schemas::Retraction {
                event_ids: vec!["e".into()],
                reason: String::new(),
            }),
        });
        assert_eq!(read_event(&retraction, &mut Vec::new()), None);
        let mut event = avro::encode(&LogRecord {
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
        assert!(read_event(&event, &mut Vec::new()).is_some());
        event[4] = 1;
        assert_eq!(read_event(&event, &mut Vec::new()), None);
    }
}
