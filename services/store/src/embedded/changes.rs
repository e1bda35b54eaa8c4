//! Which users' speed rows may have changed since a read, answered from
//! memory.
//!
//! Serving keeps each user's tail and asks the store only for the entries
//! past it ([`crate::TailCache`]). For most users there are none, and the
//! question still cost a snapshot and two B-tree descents: a quarter of a
//! 100-user multi-get. This process is the file's only writer (redb locks
//! it), so it can tell instead:
//!
//! * Every write transaction that touches speed rows draws a sequence
//!   number and, before it commits, raises the counters of the buckets its
//!   users hash to to that number. After the commit, `committed` rises to it.
//! * A read loads `committed` (its token) before its snapshot: every write
//!   numbered up to the token is in the snapshot.
//! * A later read of the same user whose bucket is still at or below that
//!   token needs nothing from the file: no write since touched them. A
//!   write under way may have raised the bucket already (it is then read,
//!   needlessly), never the other way round. Collisions only cost reads.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError, RwLock};

use crate::BatchManifest;

/// Buckets of users: 512 KiB of counters.
const BUCKETS: usize = 1 << 16;

pub(super) struct UserChanges {
    buckets: Box<[AtomicU64]>,
    /// The last sequence number drawn; writers are serialised by redb, and
    /// this lock keeps the numbers in commit order whatever calls them.
    drawn: Mutex<u64>,
    /// Every write numbered up to this has committed.
    committed: AtomicU64,
}

impl Default for UserChanges {
    fn default() -> Self {
        UserChanges {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            drawn: Mutex::new(0),
            committed: AtomicU64::new(0),
        }
    }
}

impl UserChanges {
    fn bucket(&self, user: &str) -> &AtomicU64 {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(user);
        &self.buckets[hash as usize % BUCKETS]
    }

    /// Marks `users` as changed by a write about to commit (call it inside
    /// the write transaction); the write's number, for [`Self::committed`].
    pub(super) fn writing<'a>(&self, users: impl IntoIterator<Item = &'a str>) -> u64 {
        let mut drawn = self.drawn.lock().unwrap_or_else(PoisonError::into_inner);
        *drawn += 1;
        for user in users {
            self.bucket(user).fetch_max(*drawn, Ordering::Release);
        }
        *drawn
    }

    /// The write numbered `write` committed.
    pub(super) fn committed(&self, write: u64) {
        self.committed.fetch_max(write, Ordering::Release);
    }

    /// A read's token: take it before the read's snapshot.
    pub(super) fn token(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Whether no write after the read that took `token` touched `user`.
    pub(super) fn unchanged_since(&self, user: &str, token: u64) -> bool {
        self.bucket(user).load(Ordering::Acquire) <= token
    }
}

/// The newest manifest this process saw published, never going back to an
/// older one (a reader of an older snapshot may decode the one before).
#[derive(Default)]
pub(super) struct PublishedMirror(RwLock<Option<Arc<BatchManifest>>>);

impl PublishedMirror {
    pub(super) fn get(&self) -> Option<Arc<BatchManifest>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn advance(&self, manifest: &Arc<BatchManifest>) {
        let mut current = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if current
            .as_ref()
            .is_none_or(|c| c.version < manifest.version)
        {
            *current = Some(manifest.clone());
        }
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
}
