//! The records on the event log, owned in one place: Rust types, the JSON
//! the collector accepts, and the Avro encoding on the log.

pub mod avro;
pub mod event;
pub mod json;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use event::{Event, EventType, LogRecord, Millis, RecordBody, Retraction, UserDeletion};
