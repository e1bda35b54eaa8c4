//! The records on the event log, owned in one place: Rust types, the JSON
//! the collector accepts, and the Avro encoding on the log.

pub mod event;

pub use event::{Event, EventType, LogRecord, Millis, RecordBody, Retraction, UserDeletion};
