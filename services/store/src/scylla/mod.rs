//! The ScyllaDB store: the production [`SignalStore`](crate::SignalStore) on CQL (ScyllaDB, or
//! Apache Cassandra as a stand-in), with the `scylla` driver.
//!
//! The schema is `infra/cql/schema.cql` (compiled in, applied by
//! [`ScyllaStore::migrate`]); it explains every table and key. In short:
//! speed entries are one partition per user, in runs of a write's entries
//! clustered by the log position of each run's last entry, the
//! event index is 1,024 partitions clustered by event id (a bucket of the
//! id's hash each), progress is one row per log partition,
//! batch records are one partition per (version, user) (a record over a
//! MiB in pieces of a MiB, in a partition of its own), a bucketed listing
//! enumerates a version's users, and one pointer row holds the published
//! manifest.
//!
//! # Guarantees
//!
//! * **Idempotent writes, effectively-once speed layer.** Every write is
//!   keyed by what produced it (log position, event id, version and user)
//!   and carries its whole value, so a replay or a driver retry rewrites
//!   the same rows. Statements are marked idempotent, and the driver retries
//!   them on timeouts and broken connections. There are no multi-row
//!   transactions in CQL: [`SpeedStore::apply_speed`] writes the entries
//!   and index updates first, waits for all of them, and only then writes
//!   the progress rows. A crash in between leaves progress behind the data,
//!   never ahead; the replay rewrites the same positions (ADR 001), and
//!   where it cuts them into other runs, readers keep each position as
//!   the newest row holds it (`WRITETIME`).
//! * **Progress merges per partition and never moves back.** Each log
//!   partition has its own progress row, written `USING TIMESTAMP
//!   next_offset`: CQL keeps the cell with the highest write timestamp, so
//!   each row is a max-register. Speed processes owning different Kafka
//!   partitions never overwrite each other, and a stale replay or a zombie
//!   writer cannot move a partition back. `last_accepted_at` is the greatest
//!   over the partitions.
//! * **Atomic, forward-only publishing.** The published version and its
//!   manifest live in ONE row, written last with a conditional (Paxos)
//!   update that compares with the version read before: readers see the old
//!   or the new manifest, never a mix, and a lower version (or the same
//!   version with another manifest) is refused with an error naming both.
//!   Records of a version at or below the published one cannot be written.
//! * **Consistent reads.** [`ServingStore::user_history`] takes one manifest
//!   and returns that version's record of the user and exactly the user's
//!   speed entries its position does not cover. Reads and writes use
//!   `LOCAL_QUORUM`: a read sees every write acknowledged before it.
//! * **Garbage collection lags one version, readers may lag two TTLs.**
//!   Serving caches the published manifest for
//!   [`ScyllaOptions::manifest_ttl`] (1 s by default; a publish by this
//!   process replaces it at once), and for up to one TTL more while one
//!   reader refreshes it. [`BatchStore::collect_garbage`] clamps
//!   its arguments to the published manifest, and the batch layer collects
//!   what the *previous* version covered. A reader still holding the
//!   previous manifest therefore finds its record and its speed entries, as
//!   long as two publications are more than two TTLs apart (batch runs are
//!   hours apart).
//!
//! # Costs
//!
//! Statements are prepared once per store (at connect, or right after
//! [`ScyllaStore::migrate`] when the keyspace is new) and routed token-aware.
//! A warm `user_history` is two single-partition reads issued concurrently
//! (the user's record and speed tail); the manifest comes from the cache.
//! Bulk writes (`apply_speed`, `write_batch`, index look-ups) run at most
//! [`ScyllaOptions::max_in_flight`] requests at a time per call. Rows of one
//! partition go together (a user's speed entries, one index bucket's ids:
//! an unlogged single-partition batch is one mutation, an `IN` on the
//! clustering key one read); rows of different partitions are never grouped
//! in a CQL BATCH, which would only add coordinator work.

mod batch;
mod codec;
mod config;
mod erase;
mod gc;
mod insights;
mod schema;
mod speed;
mod store;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod integration_tests;

pub use codec::{user_bucket, USER_BUCKETS};
pub use config::ScyllaOptions;
pub use schema::SCHEMA;
pub use store::ScyllaStore;

use ::scylla::errors::{
    DbError, ExecutionError, MetadataError, NewSessionError, NextPageError, NextRowError,
    PagerExecutionError, PrepareError, RequestAttemptError, RequestError,
};
use ::scylla::response::query_result::{
    FirstRowError, IntoRowsResultError, MaybeFirstRowError, RowsError,
};

use crate::StoreError;
#[cfg(doc)]
use crate::{BatchStore, ServingStore, SpeedStore};

/// How a driver error counts for retry decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Cannot reach enough replicas, or not in time: retrying may succeed.
    Unavailable,
    /// Bytes or rows that do not decode as this build expects.
    Corrupt,
    /// Anything else: a bad statement, a missing table, a refused request.
    Backend,
}

/// A driver error whose retry class is known.
trait Classify: std::fmt::Display {
    fn class(&self) -> Class;
}

/// Maps a driver error met while doing `what` to a [`StoreError`] with context.
fn driver<E: Classify>(what: impl std::fmt::Display) -> impl Fn(E) -> StoreError {
    move |error| {
        let message = format!("cannot {what}: {error}");
        match error.class() {
            Class::Unavailable => StoreError::Unavailable(message),
            Class::Corrupt => StoreError::Corrupt(message),
            Class::Backend => StoreError::Backend(message),
        }
    }
}

fn db_error_class(error: &DbError) -> Class {
    match error {
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::ReadTimeout { .. }
        | DbError::WriteTimeout { .. }
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. }
        | DbError::RateLimitReached { .. }
        // A node-side failure (out of memory, a restart in progress).
        | DbError::ServerError
        | DbError::TruncateError => Class::Unavailable,
        _ => Class::Backend,
    }
}

impl Classify for RequestAttemptError {
    fn class(&self) -> Class {
        match self {
            RequestAttemptError::BrokenConnectionError(_)
            | RequestAttemptError::UnableToAllocStreamId => Class::Unavailable,
            RequestAttemptError::DbError(db, _) => db_error_class(db),
            RequestAttemptError::CqlResultParseError(_)
            | RequestAttemptError::CqlErrorParseError(_)
            | RequestAttemptError::BodyExtensionsParseError(_) => Class::Corrupt,
            _ => Class::Backend,
        }
    }
}

impl Classify for ExecutionError {
    fn class(&self) -> Class {
        match self {
            ExecutionError::ConnectionPoolError(_)
            | ExecutionError::RequestTimeout(_)
            | ExecutionError::EmptyPlan
            | ExecutionError::SchemaAgreementError(_)
            | ExecutionError::MetadataError(_) => Class::Unavailable,
            ExecutionError::LastAttemptError(attempt) => attempt.class(),
            ExecutionError::PrepareError(prepare) => prepare.class(),
            _ => Class::Backend,
        }
    }
}

impl Classify for PrepareError {
    fn class(&self) -> Class {
        match self {
            PrepareError::ConnectionPoolError(_) => Class::Unavailable,
            PrepareError::AllAttemptsFailed { first_attempt } => first_attempt.class(),
            _ => Class::Backend,
        }
    }
}

impl Classify for RequestError {
    fn class(&self) -> Class {
        match self {
            RequestError::EmptyPlan
            | RequestError::ConnectionPoolError(_)
            | RequestError::RequestTimeout(_) => Class::Unavailable,
            RequestError::LastAttemptError(attempt) => attempt.class(),
            _ => Class::Backend,
        }
    }
}

impl Classify for NextPageError {
    fn class(&self) -> Class {
        match self {
            NextPageError::RequestFailure(request) => request.class(),
            NextPageError::ResultMetadataParseError(_) | NextPageError::TypeCheckError(_) => {
                Class::Corrupt
            }
            _ => Class::Backend,
        }
    }
}

impl Classify for NextRowError {
    fn class(&self) -> Class {
        match self {
            NextRowError::NextPageError(page) => page.class(),
            NextRowError::RowDeserializationError(_) => Class::Corrupt,
            _ => Class::Backend,
        }
    }
}

impl Classify for PagerExecutionError {
    fn class(&self) -> Class {
        match self {
            PagerExecutionError::PrepareError(prepare) => prepare.class(),
            PagerExecutionError::NextPageError(page) => page.class(),
            PagerExecutionError::SchemaAgreementError(_)
            | PagerExecutionError::MetadataError(_) => Class::Unavailable,
            _ => Class::Backend,
        }
    }
}

impl Classify for NewSessionError {
    fn class(&self) -> Class {
        match self {
            NewSessionError::FailedToResolveAnyHostname(_) | NewSessionError::MetadataError(_) => {
                Class::Unavailable
            }
            _ => Class::Backend,
        }
    }
}

impl Classify for MetadataError {
    fn class(&self) -> Class {
        Class::Unavailable
    }
}

/// Rows of a result that do not have the expected shape or values.
macro_rules! corrupt {
    ($($error:ty),*) => {$(
        impl Classify for $error {
            fn class(&self) -> Class {
                Class::Corrupt
            }
        }
    )*};
}
corrupt!(
    IntoRowsResultError,
    RowsError,
    MaybeFirstRowError,
    FirstRowError,
    ::scylla::deserialize::DeserializationError,
    ::scylla::deserialize::TypeCheckError
);
