//! The newest published manifest this process saw, for serving's reads
//! that skip the file ([`crate::changes`]).

use std::sync::{Arc, PoisonError, RwLock};

use crate::BatchManifest;

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
