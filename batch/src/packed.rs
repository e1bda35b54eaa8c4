//! Events read straight from their Avro bytes into the batch's packed form
//! (postcard, the bytes `postcard::to_stdvec(&event)` gives), with no
//! `Event` built in between: no string or attribute map allocated and
//! dropped per event, which is most of what decoding cost the batch.
//!
//! What is read is [`signals_schemas::avro::direct`]'s: an event of the
//! current schema, as our encoder writes it, that passes the log's rules.
//! Anything else is left to the full decoder
//! ([`signals_schemas::avro::decode`]), which decides it as before; a
//! property test holds the packed bytes to what it reads.

use signals_schemas::avro::direct;
use signals_schemas::Millis;

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
    let event = direct::read_event(bytes)?;
    // postcard's encoding of `Event`, field by field in declaration order.
    string(packed, event.event_id);
    string(packed, event.user_id);
    varint(packed, event.event_type as u64);
    for optional in [event.item_id, event.query] {
        match optional {
            Some(text) => {
                packed.push(1);
                string(packed, text);
            }
            None => packed.push(0),
        }
    }
    let time = event.event_time;
    varint(packed, ((time << 1) ^ (time >> 63)) as u64);
    varint(packed, event.attributes.len() as u64);
    for (key, value) in &event.attributes {
        string(packed, key);
        string(packed, value);
    }
    Some(EventFields {
        accepted_at: event.accepted_at,
        event_id: event.event_id,
        user_id: event.user_id,
        event_time: event.event_time,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use signals_schemas::testing::arb_event_near_the_rules;
    use signals_schemas::{avro, LogRecord, RecordBody};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// Whatever `direct` reads (held to the full decoder in schemas) is
        /// packed as postcard packs the event, and nothing else is read.
        #[test]
        fn packs_what_is_read_as_postcard_packs_it(event in arb_event_near_the_rules(), accepted_at in any::<i64>()) {
            let bytes = avro::encode(&LogRecord { accepted_at, body: RecordBody::Event(event) });
            let mut packed = Vec::new();
            match (read_event(&bytes, &mut packed), direct::read_event(&bytes)) {
                (Some(fields), Some(view)) => {
                    prop_assert_eq!(fields, EventFields {
                        accepted_at,
                        event_id: view.event_id,
                        user_id: view.user_id,
                        event_time: view.event_time,
                    });
                    prop_assert_eq!(packed, postcard::to_stdvec(&view.to_event()).expect("packs"));
                }
                (None, None) => {}
                (fields, view) => prop_assert!(false, "packed: {:?}, read: {:?}", fields, view),
            }
        }
    }
}
