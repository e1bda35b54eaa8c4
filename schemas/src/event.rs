//! The records that travel on the event log.
//!
//! Times are epoch milliseconds (UTC) everywhere inside the platform; RFC 3339
//! exists only at the HTTP edge.
//!
//! The serde derives here are also the Avro mapping ([`crate::avro`]): field
//! names are the schema's field names, [`EventType`]'s variants are the enum's
//! symbols in order, and [`RecordBody`]'s variants are the branches of the
//! `body` union in order. Change them only together with the schema.

use std::fmt;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::Attributes;

/// Epoch milliseconds, UTC.
pub type Millis = i64;

/// The wall clock in [`Millis`]: the one reading every part of the
/// platform takes (acceptance times, index expiry, serving's default `at`).
pub fn now_millis() -> Millis {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Millis::try_from(since_epoch.as_millis()).unwrap_or(Millis::MAX)
}

/// The kinds of user action the platform understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    View,
    Click,
    Search,
    WishlistAdd,
    WishlistRemove,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::View,
        EventType::Click,
        EventType::Search,
        EventType::WishlistAdd,
        EventType::WishlistRemove,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::View => "view",
            EventType::Click => "click",
            EventType::Search => "search",
            EventType::WishlistAdd => "wishlist_add",
            EventType::WishlistRemove => "wishlist_remove",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether events of this type must name an item (`item_id`).
    pub fn requires_item(self) -> bool {
        !matches!(self, EventType::Search)
    }

    /// Whether events of this type must carry a search `query`.
    pub fn requires_query(self) -> bool {
        matches!(self, EventType::Search)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One user action, as accepted by the collector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Idempotency key: the same id twice counts once.
    pub event_id: SmolStr,
    pub user_id: SmolStr,
    pub event_type: EventType,
    pub item_id: Option<SmolStr>,
    pub query: Option<SmolStr>,
    pub event_time: Millis,
    pub attributes: Attributes,
}

/// "These events are wrong and must stop counting."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retraction {
    pub event_ids: Vec<String>,
    pub reason: String,
}

/// "Forget this user": every layer drops the user's data, and events of the
/// user at log positions before this record never count again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDeletion {
    pub user_id: String,
    pub reason: String,
}

/// What a log record says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordBody {
    Event(Event),
    Retraction(Retraction),
    UserDeletion(UserDeletion),
}

/// One record of the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// When the collector accepted the record; drives freshness measurements.
    pub accepted_at: Millis,
    pub body: RecordBody,
}

impl LogRecord {
    /// The partitioning key on the log: records of one user stay in order.
    pub fn key(&self) -> &str {
        match &self.body {
            RecordBody::Event(e) => &e.user_id,
            RecordBody::UserDeletion(d) => &d.user_id,
            // A retraction names events, not users; its first id spreads them.
            RecordBody::Retraction(r) => r.event_ids.first().map(String::as_str).unwrap_or(""),
        }
    }
}
