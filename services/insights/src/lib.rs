//! The insights worker: keeps every user's segment membership current and
//! publishes each transition (`entered`, `left`) exactly once.
//!
//! # What moves membership
//! * **Events.** The worker is a member of its own consumer group on the
//!   event log. For each batch it reads, it waits until the speed layer has
//!   durably applied the same records (so the user's served history holds
//!   them), then re-evaluates the users the records touch — events, the
//!   users of retracted events, deleted users — at the worker's clock.
//! * **Time.** After every evaluation the core names the next instant at
//!   which time alone may change a signal the rules read (an event leaving
//!   or entering a window, a session ending:
//!   [`signals_core::UserView::next_change`]); the store keeps it as the
//!   user's timer. Each pass fires every timer due by now, evaluating the
//!   user *at the due instant*, so a transition caused by time carries the
//!   instant it happened, however late the worker runs.
//!
//! # Exactly once
//! One pass = one [`InsightsStore::apply_insights`]: membership updates
//! (each a compare-and-set against what the pass read), the feed entries
//! they publish, the timers and the log position, durable together; only
//! then is the log offset committed. A SIGKILL at any point replays from
//! the last durable position: re-evaluating a user whose update already
//! landed finds no difference (or the compare-and-set refuses a stale one),
//! so nothing is published twice and nothing is lost. Transitions go to the
//! optional [`ChangeSink`] (Kafka) only from the durable feed, tracked by
//! the sink's own cursor.
//!
//! # Timeliness
//! A transition is published within one pass of the moment it happens. An
//! event-caused one: the worker reads the records as they arrive and waits
//! for the speed layer to apply them. A time-caused one: the worker's wait
//! for records ends at the next timer due (each pass reads the timers due
//! within the next `poll_wait`, default 200 ms, and sleeps only until the
//! earliest). `signals-bench suite --only insights` measures both delays.

#[cfg(feature = "kafka")]
pub mod kafka;
mod worker;

pub use worker::{ChangeSink, InsightsError, InsightsOptions, InsightsWorker};
