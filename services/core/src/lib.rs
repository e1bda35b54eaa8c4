//! The pure core of Signals, shared by the speed layer, the batch layer and
//! serving: signal definitions, aggregation state with its merge algebra, and
//! evaluation of a user's merged history at a point in time.
//!
//! Nothing here does I/O or is async; `cargo tree -p signals-core -e normal`
//! must never show tokio or a backend driver.

pub mod aggregate;
pub mod dedup;
pub mod definition;
pub mod operations;
pub mod position;
pub mod segment;
pub mod session;
pub mod tail;
pub mod tiles;
pub mod time;
pub mod view;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use aggregate::State;
pub use dedup::{DedupWindow, Deduplication, IdDigest, IndexEntry, Occurrence};
pub use definition::{
    fnv1a64, DefinitionError, Definitions, EventTypes, SignalDefinition, SignalSpec, Window,
};
pub use position::{LogPosition, Offset, Partition};
pub use segment::{SegmentError, SegmentSpec, Segments};
pub use session::{Session, SessionMeasure, Sessions};
pub use tail::SpeedTail;
pub use tiles::{TileShape, Tiles};
pub use view::{newest_first, BaseStates, SpeedEntry, StaleSignal, UserRecord, UserView};
