//! Which users' speed rows may have changed since a read, answered from
//! memory.
//!
//! Serving keeps each user's tail and asks the store only for the entries
//! past it ([`crate::TailCache`]). For most users there are none, and the
//! question still cost a read of the store: a snapshot and two B-tree
//! descents embedded, a round trip and a partition read on CQL. Whoever
//! learns of every write (the embedded store, its file's only writer; a
//! serving process following CQL's change feed, [`crate::follow`]) can tell
//! instead:
//!
//! * Every write (or every batch of writes learned at once) draws a
//!   sequence number and, before its rows can be read, raises the counters
//!   of the buckets its users hash to to that number. Then `committed`
//!   rises to it.
//! * A read loads `committed` (its token) before it reads: every write
//!   numbered up to the token is in what it reads.
//! * A later read of the same user whose bucket is still at or below that
//!   token needs nothing from the store: no write since touched them. A
//!   write under way may have raised the bucket already (it is then read,
//!   needlessly), never the other way round. Collisions only cost reads.
//! * [`UserChanges::forget`] voids every token given out so far, for a
//!   follower that may have missed writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Buckets of users: 512 KiB of counters.
const BUCKETS: usize = 1 << 16;

/// The hash a user's bucket is drawn from: FNV-1a (64 bit) of the id, the
/// same in every process and build, so that a writer can name the users it
/// touched by hash to processes that follow it.
pub fn user_hash(user: &str) -> u64 {
    signals_core::fnv1a64(user.as_bytes())
}

pub struct UserChanges {
    buckets: Box<[AtomicU64]>,
    /// The last sequence number drawn; this lock keeps the numbers in
    /// commit order whatever calls them.
    drawn: Mutex<u64>,
    /// Every write numbered up to this has committed.
    committed: AtomicU64,
    /// Tokens below this say nothing ([`Self::forget`]).
    floor: AtomicU64,
}

impl Default for UserChanges {
    fn default() -> Self {
        UserChanges {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            drawn: Mutex::new(0),
            committed: AtomicU64::new(0),
            floor: AtomicU64::new(0),
        }
    }
}

impl UserChanges {
    fn bucket(&self, hash: u64) -> &AtomicU64 {
        &self.buckets[(hash % BUCKETS as u64) as usize]
    }

    /// Marks `users` as changed by a write about to commit (call it before
    /// the write can be read); the write's number, for [`Self::committed`].
    pub fn writing<'a>(&self, users: impl IntoIterator<Item = &'a str>) -> u64 {
        self.writing_hashes(users.into_iter().map(user_hash))
    }

    /// [`Self::writing`], the users named by [`user_hash`].
    pub fn writing_hashes(&self, hashes: impl IntoIterator<Item = u64>) -> u64 {
        let mut drawn = self.drawn.lock().unwrap_or_else(PoisonError::into_inner);
        *drawn += 1;
        for hash in hashes {
            self.bucket(hash).fetch_max(*drawn, Ordering::Release);
        }
        *drawn
    }

    /// The write numbered `write` committed.
    pub fn committed(&self, write: u64) {
        self.committed.fetch_max(write, Ordering::Release);
    }

    /// A read's token: take it before the read.
    pub fn token(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Whether no write after the read that took `token` touched `user`.
    pub fn unchanged_since(&self, user: &str, token: u64) -> bool {
        token >= self.floor.load(Ordering::Acquire)
            && self.bucket(user_hash(user)).load(Ordering::Acquire) <= token
    }

    /// Voids every token given out so far: reads that hold one read the
    /// store again. Tokens taken after this call count. (Only a follower
    /// of CQL writes forgets.)
    #[cfg(any(test, feature = "scylla"))]
    pub fn forget(&self) {
        let mut drawn = self.drawn.lock().unwrap_or_else(PoisonError::into_inner);
        *drawn += 1;
        self.floor.fetch_max(*drawn, Ordering::Release);
        self.committed.fetch_max(*drawn, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_unchanged_until_a_write_touches_them() {
        let changes = UserChanges::default();
        let before = changes.token();
        assert!(changes.unchanged_since("u", before));

        let write = changes.writing(["u"]);
        // Under way: already changed, though the token has not moved.
        assert!(!changes.unchanged_since("u", before));
        assert_eq!(changes.token(), before);
        changes.committed(write);
        let after = changes.token();
        assert_eq!(after, write);
        assert!(changes.unchanged_since("u", after));
        assert!(
            changes.unchanged_since("v", before),
            "another user (in another bucket) is untouched"
        );
    }

    #[test]
    fn writes_named_by_hash_are_the_same_writes() {
        let changes = UserChanges::default();
        let before = changes.token();
        changes.committed(changes.writing_hashes([user_hash("u")]));
        assert!(!changes.unchanged_since("u", before));
        assert!(changes.unchanged_since("v", before));
    }

    #[test]
    fn forgetting_voids_every_earlier_token_and_no_later_one() {
        let changes = UserChanges::default();
        changes.committed(changes.writing(["u"]));
        let before = changes.token();
        assert!(changes.unchanged_since("v", before));
        changes.forget();
        assert!(!changes.unchanged_since("v", before));
        assert!(!changes.unchanged_since("u", before));
        let after = changes.token();
        assert!(after > before);
        assert!(changes.unchanged_since("v", after));
        assert!(changes.unchanged_since("u", after));
    }
}
