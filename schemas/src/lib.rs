//! The records on the event log, owned in one place: the Rust types
//! ([`event`]), the rules every event satisfies ([`rules`]), the JSON the
//! collector accepts ([`json`]), and the Avro encoding on the log ([`avro`]),
//! whose schemas are the `.avsc` files beside this crate
//! (`schemas/EVOLUTION.md` says how they may change).
//!
//! Guarantees: every event that `json` accepts or `avro` decodes passes
//! [`rules::check_event`]; `avro::decode(&avro::encode(r)) == Ok(r)` for
//! every record whose event (if any) passes it; records written with any
//! schema id in `schemas/versions` decode.

mod attributes;
pub mod avro;
pub mod event;
pub mod json;
#[cfg(feature = "registry")]
pub mod registry;
pub mod rules;
pub mod segment_change;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use attributes::Attributes;
pub use avro::{decode, encode, DecodeError};
pub use event::{
    now_millis, Event, EventType, LogRecord, Millis, RecordBody, Retraction, UserDeletion,
};
pub use json::{parse_events, parse_retraction, to_json, BodyError};
pub use rules::EventError;
/// An event's ids and texts: inline up to 23 bytes, so most events decode
/// without allocating them.
pub use smol_str::{format_smolstr, SmolStr};
