//! The newest published manifest this process saw, for serving's reads
//! that skip the file ([`crate::changes`]).

use std::sync::{Arc, PoisonError, RwLock};

use crate::BatchManifest;

/// The newest manifest this process saw published, never going back to an
/// older one (a reader of an older snapshot may decode the one before),
/// and the one it saw published before it.
#[derive(Default)]
pub(super) struct PublishedMirror(RwLock<Seen>);

#[derive(Default)]
struct Seen {
    newest: Option<Arc<BatchManifest>>,
    before: Option<Arc<BatchManifest>>,
}

impl PublishedMirror {
    pub(super) fn get(&self) -> Option<Arc<BatchManifest>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .newest
            .clone()
    }

    /// The manifest published just before `version`, if this process saw
    /// it. Each run's version is the published one's plus one, so that is
    /// the one numbered one less.
    pub(super) fn before(&self, version: u64) -> Option<Arc<BatchManifest>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .before
            .clone()
            .filter(|b| b.version.checked_add(1) == Some(version))
    }

    pub(super) fn advance(&self, manifest: &Arc<BatchManifest>) {
        let mut seen = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if seen
            .newest
            .as_ref()
            .is_none_or(|c| c.version < manifest.version)
        {
            seen.before = seen.newest.replace(manifest.clone());
        }
    }
}
